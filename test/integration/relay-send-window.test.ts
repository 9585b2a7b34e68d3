/**
 * `RelaySet.publish` hands a large frame's parts to a relay's client a window at a time
 * (`SEND_WINDOW_BYTES`, issue 14): a keyframe of a 100 MB state is ~54 parts of 1 MB, and handing
 * them all over in one tick held the event loop for up to a second and put the lease renewals
 * (which share relay 0's connection) behind tens of MB. The frame must still arrive whole, its
 * parts in order, and a halt must fail what waits for the window at once.
 *
 * One real nats-server of the test's own (max_payload 1 MB, so parts of ~1 MB). Also: a single
 * relay is never backfilled (a new primary read its whole stream, over the lease's connection,
 * to find nothing to copy).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { TestRelay } from '../../src/drill/nats-servers.js';
import { FrameDecoder } from '../../src/protocol/codec.js';
import { FrameKind, type Frame } from '../../src/protocol/frame.js';
import { appNames } from '../../src/protocol/subjects.js';
import type { NatsLink } from '../../src/transport/connection.js';
import { RelaySet, SEND_WINDOW_BYTES } from '../../src/transport/relays.js';
import { freshApp } from '../helpers/nats.js';

let relay: TestRelay;

beforeAll(async () => {
  relay = await TestRelay.single();
});
afterAll(async () => {
  await relay?.destroy();
});

function frame(seq: number, bytes: number): Frame {
  const body = Buffer.allocUnsafe(bytes);
  for (let i = 0; i < bytes; i += 4) body.writeUInt32LE((i * 2654435761 + seq) >>> 0, i);
  return { kind: FrameKind.Writes, epoch: 1, seq, checkpoint: 0, body };
}

/** Counts the bytes handed to `link`'s client and not yet settled; keeps the most seen. */
function watchInFlight(link: NatsLink): { max: () => number; calls: () => number } {
  const js = link.js;
  const publish = js.publish.bind(js);
  let now = 0;
  let max = 0;
  let calls = 0;
  js.publish = ((subject: string, data: Uint8Array, opts: unknown) => {
    now += data.byteLength;
    max = Math.max(max, now);
    calls++;
    const p = publish(subject, data, opts as never);
    void p.then(
      () => (now -= data.byteLength),
      () => (now -= data.byteLength),
    );
    return p;
  }) as typeof js.publish;
  return { max: () => max, calls: () => calls };
}

async function open(app: string, errors: string[]): Promise<RelaySet> {
  return RelaySet.open({
    specs: [{ servers: relay.urls }],
    names: appNames(app),
    clientName: `test:${app}`,
    ack: 'all',
    app,
    timeoutMs: 5_000,
    onError: (msg) => errors.push(msg),
  });
}

describe('RelaySet.publish: the send window (real nats-server)', () => {
  it('hands a 24 MB frame over a window at a time; the frame arrives whole, parts in order, with a small frame behind it', async () => {
    const app = freshApp('window');
    const errors: string[] = [];
    const set = await open(app, errors);
    const big = frame(1, 24 * 1024 * 1024);
    const small = frame(2, 3_000);
    try {
      const seen = watchInFlight(set.links[0]!);
      let turns = 0;
      let publishing = true;
      const spin = (): void => {
        turns++;
        if (publishing) setImmediate(spin);
      };
      setImmediate(spin);
      await Promise.all([set.publish(big), set.publish(small)]);
      publishing = false;
      const parts = Math.ceil(big.body.byteLength / set.codec.partBytes) + 1;
      expect(seen.calls()).toBe(parts);
      // Never more than a window (plus the one part that may go when there is any room) handed
      // over at once; without the window all 25 parts (~24 MB) are.
      expect(seen.max()).toBeLessThanOrEqual(SEND_WINDOW_BYTES + set.codec.partBytes + 1024);
      expect(turns).toBeGreaterThan(3);
    } finally {
      await set.close();
    }
    expect(errors).toEqual([]);

    // What the relay stored: the big frame's parts in order, then the small frame, and both
    // frames decode to their bodies.
    const nc = await connect({ servers: relay.urls, timeout: 3_000 });
    try {
      const jsm = await jetstreamManager(nc);
      const stream = appNames(app).stream;
      const info = await jsm.streams.info(stream);
      const decoder = new FrameDecoder({ app, maxFrameBytes: 64 * 1024 * 1024 });
      const order: string[] = [];
      const frames: Frame[] = [];
      for (let seq = 1; seq <= info.state.last_seq; seq++) {
        const m = await jsm.streams.getMessage(stream, { seq });
        if (!m) continue;
        const decoded = set.codec.open(m.data, 0);
        order.push(`${decoded.key.seq}.${decoded.key.part}`);
        const f = await decoder.add(decoded);
        if (f) frames.push(f);
      }
      const bigParts = order.filter((o) => o.startsWith('1.'));
      expect(bigParts).toEqual(bigParts.map((_, i) => `1.${i}`));
      expect(frames.map((f) => f.seq).sort()).toEqual([1, 2]);
      expect(Buffer.compare(Buffer.from(frames.find((f) => f.seq === 1)!.body), big.body)).toBe(0);
      expect(Buffer.compare(Buffer.from(frames.find((f) => f.seq === 2)!.body), small.body)).toBe(0);
    } finally {
      await nc.close();
    }
  }, 30_000);

  it('a halt fails the parts still waiting for the window at once, with the relay frozen', async () => {
    const app = freshApp('window-halt');
    const set = await open(app, []);
    const server = relay.servers[0]!;
    try {
      // The relay freezes (its acks cannot come before the publish timeout, 5 s), the first
      // window goes out to it, and the primary is demoted and halts: what waits for the window
      // was never handed over and fails now, so the publish rejects without waiting for the relay.
      server.signal('SIGSTOP');
      const seen = watchInFlight(set.links[0]!);
      const p = set.publish(frame(1, 24 * 1024 * 1024));
      p.catch(() => undefined);
      await new Promise<void>((resolve) => {
        const poll = (): void => (seen.calls() > 0 ? resolve() : void setImmediate(poll));
        poll();
      });
      const t0 = performance.now();
      set.halt();
      await expect(p).rejects.toThrow(/ack\(s\) of the 1 the policy needs/);
      expect(performance.now() - t0).toBeLessThan(2_000);
      expect(seen.calls()).toBeLessThan(Math.ceil((24 * 1024 * 1024) / set.codec.partBytes));
    } finally {
      server.signal('SIGCONT');
      await set.close();
    }
  }, 30_000);

  it('a single relay is not backfilled: there is nothing to copy from, and its stream is not read', async () => {
    const app = freshApp('window-backfill');
    const set = await open(app, []);
    try {
      await set.publish(frame(1, 3 * 1024 * 1024));
      const js = set.links[0]!.js;
      const get = js.consumers.get.bind(js.consumers);
      let reads = 0;
      js.consumers.get = ((...a: Parameters<typeof get>) => {
        reads++;
        return get(...a);
      }) as typeof get;
      expect(await set.backfill(0, 1)).toBeUndefined();
      expect(reads).toBe(0);
    } finally {
      await set.close();
    }
  }, 30_000);
});
