/**
 * Reused shard buffers against a real NATS server (issue 16). The NATS client does not copy a
 * payload when `publish` is called: it keeps a reference until its outbound buffer is flushed.
 * These tests publish pooled shard sets, many in flight, and read back what the server stored:
 *
 * - releasing a set once every shard's publish was acked (the rule in src/fec/pool.ts) stores
 *   every message exactly as encoded, while the buffers are reused all along;
 * - the negative control releases right after `publish()` returned, before the ack: the pool
 *   poisons released buffers, and the server then stores corrupt shards. So a reuse bug in a
 *   caller is caught by a test like the first one.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JetStreamClient } from '@nats-io/jetstream';
import { BufferPool } from '../../src/fec/pool.js';
import { decodeShard, encodeShards, encodeShardsPooled, shardMessageId } from '../../src/fec/shard.js';
import { deleteApp, freshApp, requireNats } from '../helpers/nats.js';

let nc: NatsConnection;
let js: JetStreamClient;
const apps: string[] = [];
const SCHEME = { data: 4, parity: 2 };

beforeAll(async () => {
  nc = await requireNats();
  js = jetstream(nc);
});
afterAll(async () => {
  for (const app of apps) await deleteApp(nc, app);
  await nc?.close();
});

/**
 * Part `seq`: small parts on odd seqs (the client keeps their shards, under its 32 KiB flush
 * threshold, uncopied until a microtask later), larger ones on even seqs (packed, copied, when
 * a later publish crosses the threshold).
 */
function partBytes(seq: number): Buffer {
  const b = Buffer.allocUnsafe(seq % 2 ? 2_000 + seq * 13 : 300_000 + seq * 1_017);
  let s = seq * 2654435761;
  for (let i = 0; i < b.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    b[i] = s & 0xff;
  }
  return b;
}

async function stream(): Promise<{ app: string; subject: string }> {
  const app = freshApp('fecpool');
  apps.push(app);
  const jsm = await jetstreamManager(nc);
  const subject = `rp.${app}.t`;
  await jsm.streams.add({ name: `RP_${app}`, subjects: [subject] });
  return { app, subject };
}

/** Publishes `parts` parts, `inFlight` at a time; `early` releases before the acks. */
async function publishAll(
  app: string,
  subject: string,
  pool: BufferPool,
  parts: number,
  inFlight: number,
  early: boolean,
): Promise<void> {
  const running = new Set<Promise<void>>();
  for (let seq = 1; seq <= parts; seq++) {
    const set = await encodeShardsPooled(app, { epoch: 1, seq, part: 0 }, partBytes(seq), SCHEME, pool);
    const acks = set.shards.map((bytes, i) =>
      js.publish(subject, bytes, { msgID: shardMessageId(app, 1, seq, 0, i) }),
    );
    if (early) set.release(); // wrong: the client still holds the buffers
    const p = Promise.all(acks).then(() => set.release());
    running.add(p);
    void p.finally(() => running.delete(p));
    if (running.size >= inFlight) await Promise.race(running);
  }
  await Promise.all(running);
}

/** Reads the stream back: how many stored messages are not the shard their id names. */
async function badMessages(app: string, parts: number): Promise<number> {
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(`RP_${app}`);
  expect(info.state.messages).toBe(parts * 6);
  const want = new Map<string, Buffer>();
  for (let seq = 1; seq <= parts; seq++) {
    const shards = await encodeShards(app, { epoch: 1, seq, part: 0 }, partBytes(seq), SCHEME);
    shards.forEach((s, i) => want.set(shardMessageId(app, 1, seq, 0, i), s));
  }
  let bad = 0;
  for (let seq = 1; seq <= info.state.last_seq; seq++) {
    const m = await jsm.streams.getMessage(`RP_${app}`, { seq });
    if (!m) continue;
    const id = m.header.get('Nats-Msg-Id');
    let ok = false;
    try {
      const shard = decodeShard(m.data, app);
      ok = shardMessageId(app, shard.epoch, shard.seq, shard.part, shard.index) === id;
    } catch {
      ok = false;
    }
    if (!ok || Buffer.compare(Buffer.from(m.data), want.get(id)!) !== 0) bad++;
  }
  return bad;
}

describe('pooled shard buffers over a real NATS server', () => {
  it('released after the acks: every stored message is the shard it names', async () => {
    const { app, subject } = await stream();
    const pool = new BufferPool({ poison: true, minPooledBytes: 0 });
    await publishAll(app, subject, pool, 30, 4, false);
    expect(pool.stats.hits).toBeGreaterThan(10); // the buffers were reused
    expect(await badMessages(app, 30)).toBe(0);
  }, 60_000);

  it('negative control: released before the acks, the server stores corrupt shards', async () => {
    const { app, subject } = await stream();
    const pool = new BufferPool({ poison: true, minPooledBytes: 0 });
    await publishAll(app, subject, pool, 6, 2, true);
    expect(await badMessages(app, 6)).toBeGreaterThan(0);
  }, 60_000);
});
