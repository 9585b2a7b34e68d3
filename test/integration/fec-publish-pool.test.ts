/**
 * `RelaySet.publish` with FEC takes its shard buffers from a pool and gives each part's buffer
 * back only once every shard of the part was acked without a failure (issue 16). The NATS client
 * keeps a reference to a payload until it flushes it, and a relay's backlog re-sends the same
 * bytes later, so a buffer reused too early would put other bytes on the wire under the old
 * message id. Here the pool poisons every buffer it takes back: a stored message that is not
 * exactly the shard its id names, or fails its CRC-32, shows a reuse bug.
 *
 * Three real nats-servers; one is SIGKILLed mid-run, so its shards wait in the backlog (and are
 * re-sent from the very buffers) while the other relays' acks let frames through and the pool
 * keeps reusing the buffers of clean parts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { TestRelay } from '../../src/drill/nats-servers.js';
import { BufferPool } from '../../src/fec/pool.js';
import { FrameCodec } from '../../src/protocol/codec.js';
import { FrameKind, type Frame } from '../../src/protocol/frame.js';
import { appNames } from '../../src/protocol/subjects.js';
import { RelaySet } from '../../src/transport/relays.js';
import { freshApp } from '../helpers/nats.js';

let relays: TestRelay[] = [];

beforeAll(async () => {
  relays = await Promise.all([0, 1, 2].map(() => TestRelay.single()));
});
afterAll(async () => {
  await Promise.all(relays.map((r) => r.destroy()));
});

const FEC = { scheme: { data: 2, parity: 1 }, tolerate: 0 };

/**
 * Frame `seq`: small bodies on odd seqs (their shards stay under the client's 32 KiB flush
 * threshold: referenced, uncopied, until a microtask later), large ones on even seqs.
 */
function frame(seq: number): Frame {
  const body = Buffer.allocUnsafe(seq % 2 ? 1_500 + seq * 11 : 200_000 + seq * 1_013);
  let s = seq * 2654435761;
  for (let i = 0; i < body.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    body[i] = s & 0xff;
  }
  return { kind: FrameKind.Writes, epoch: 1, seq, checkpoint: 0, body };
}

/** Publishes frames `from..to`, `inFlight` at a time. */
async function publish(set: RelaySet, from: number, to: number, inFlight: number): Promise<void> {
  const running = new Set<Promise<void>>();
  for (let seq = from; seq <= to; seq++) {
    const p = set.publish(frame(seq));
    running.add(p);
    void p.finally(() => running.delete(p)).catch(() => undefined);
    if (running.size >= inFlight) await Promise.race(running);
  }
  await Promise.all(running);
}

/** Polls `cond` (no event tells when a backlog is empty) for up to 20 s. */
async function until(cond: () => boolean, what: string, errors: string[]): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${errors.join('; ')}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Every relay's stored messages: how many are not, byte for byte, the message their id names. */
async function badMessages(app: string, frames: number, maxPayload: number): Promise<number[]> {
  // The expected bytes, from a codec without a pool (fresh buffers, nothing reused).
  const codec = new FrameCodec({ app, relays: 3, maxPayload, fec: FEC.scheme });
  const want = new Map<string, Uint8Array>();
  for (let seq = 1; seq <= frames; seq++) {
    for (const p of await codec.encode(frame(seq))) for (const m of p.messages) want.set(m.msgId, m.bytes);
  }
  const bad: number[] = [];
  for (const [r, relay] of relays.entries()) {
    const nc = await connect({ servers: relay.urls, timeout: 3_000 });
    try {
      const jsm = await jetstreamManager(nc);
      const stream = appNames(app).stream;
      const info = await jsm.streams.info(stream);
      let n = 0;
      let seen = 0;
      for (let seq = 1; seq <= info.state.last_seq; seq++) {
        const m = await jsm.streams.getMessage(stream, { seq });
        if (!m) continue;
        seen++;
        const id = m.header.get('Nats-Msg-Id');
        let ok = false;
        try {
          codec.open(m.data, r); // CRC-32 and header checks
          ok = Buffer.compare(Buffer.from(m.data), Buffer.from(want.get(id)!)) === 0;
        } catch {
          ok = false;
        }
        if (!ok) n++;
      }
      // Each part has one shard per relay (2 + 1 over 3): every frame reached every relay. Relay
      // 2 was SIGKILLed: nats-server acknowledges a message before its file store has written it
      // out, so the last shard it acknowledged before the kill may be gone (seen once in a loaded
      // suite run: 69 of 70). What it holds must still be exactly what its id names.
      if (r === 2) expect(seen).toBeGreaterThanOrEqual(frames - 1);
      else expect(seen).toBe(frames);
      bad.push(n);
    } finally {
      await nc.close();
    }
  }
  return bad;
}

describe('RelaySet.publish with pooled FEC shard buffers (real nats-servers)', () => {
  it('reuses buffers, yet every stored shard is the one its id names, through a relay kill and its backlog', async () => {
    const app = freshApp('fecpub');
    const pool = new BufferPool({ poison: true, minPooledBytes: 0 });
    const errors: string[] = [];
    const set = await RelaySet.open({
      specs: relays.map((r) => ({ servers: r.urls })),
      names: appNames(app),
      clientName: `test:${app}`,
      ack: 'all',
      app,
      timeoutMs: 3_000,
      fec: FEC,
      shardPool: pool,
      onError: (msg) => errors.push(msg),
    });
    try {
      await publish(set, 1, 30, 6);
      const reused = pool.stats.hits;
      expect(reused).toBeGreaterThan(10); // the production path reuses its buffers

      // Relay 2 dies: its shards go to its backlog (never released), the frames still resolve
      // with the shards of relays 0 and 1, whose clean parts keep being released and reused.
      await relays[2]!.servers[0]!.kill();
      await until(() => !set.stats()[2]!.connected, 'relay 2 seen down', errors);
      await publish(set, 31, 50, 6);
      expect(set.stats()[2]!.backlog).toBeGreaterThanOrEqual(20);
      await relays[2]!.servers[0]!.start();
      await publish(set, 51, 60, 6);
      await until(
        () => set.stats()[2]!.backlog === 0 && set.stats()[2]!.connected,
        'relay 2 caught up from its backlog',
        errors,
      );
      await publish(set, 61, 70, 6);
      expect(pool.stats.hits).toBeGreaterThan(reused);
    } finally {
      await set.close();
    }
    expect(await badMessages(app, 70, set.codec.maxPayload)).toEqual([0, 0, 0]);
  }, 90_000);
});
