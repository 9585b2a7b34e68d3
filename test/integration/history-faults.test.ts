/**
 * Issue 13, faults, on the shared nats-server with real file stores:
 * - a node restarts on its own store whose last checkpoint a later fence discarded: it starts
 *   from its store, reads the fence, rolls back by rebuilding, and ends on the agreed history;
 * - a forged newer base (a chunk that does not hash to its manifest) and a base left half-built
 *   (chunks, no manifest: the builder died mid-build) are passed over for the older intact base;
 * - with the only base corrupted and the history purged below it, a joining node fails with an
 *   error that names the base, what is wrong with it, and the fix (nothing is written to its store).
 *
 * Frames of the "history" are made with the production codec and published as a primary would;
 * what is checked is what the real node does with them.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { afterAll, describe, expect, it } from 'vitest';
import { fileAdapter } from '../../adapters/file/index.js';
import type { LogEvent, StartOptions } from '../../src/index.js';
import { FrameCodec } from '../../src/protocol/codec.js';
import { FrameKind, type Frame } from '../../src/protocol/frame.js';
import { encodeFence, encodeImage, encodeSeal, encodeWrites } from '../../src/protocol/records.js';
import { appNames, baseMessageId, messageId } from '../../src/protocol/subjects.js';
import { serializeImage } from '../../src/image/serialize.js';
import { baseFrames } from '../../src/history/base.js';
import { closeLink, ensureStream, openLeaseBucket, openLink } from '../../src/transport/connection.js';
import { liveNodes, nodeOptions } from '../helpers/live.js';
import { NATS_URL } from '../helpers/nats.js';
import { watchStandby } from '../helpers/standby.js';
import { rawFullImage } from '../helpers/image-records.js';

interface S {
  n: number;
  epoch: number;
}

const dirs: string[] = [];
const tmp = (): string => {
  const d = mkdtempSync(join(tmpdir(), 'rp-hfault-'));
  dirs.push(d);
  return d;
};
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Publishes frames as a primary of this app would (one relay, no FEC, unsigned). */
async function publisher(nc: Parameters<typeof jetstream>[0], app: string) {
  const link = await openLink({ servers: NATS_URL }, `test:${app}`);
  await ensureStream(link, appNames(app), 1);
  const kv = await openLeaseBucket(link, appNames(app));
  /** Writes the lease record as a primary would (holder null: released). */
  const lease = async (holder: string | null, epoch: number): Promise<void> => {
    await kv.put(appNames(app).leaseKey, Buffer.from(JSON.stringify({ holder, epoch })));
  };
  const close = () => closeLink(link);
  const codec = new FrameCodec({ app, relays: 1, maxPayload: 1 << 20 });
  const js = jetstream(nc);
  const names = appNames(app);
  const send = async (f: Frame): Promise<void> => {
    for (const p of await codec.encode(f)) {
      for (const m of p.messages) await js.publish(names.subject, m.bytes, { msgID: m.msgId });
    }
  };
  const fence = (epoch: number, cutoff: number, cutoffEpoch: number) =>
    send({
      kind: FrameKind.Fence,
      epoch,
      seq: 1,
      checkpoint: cutoff,
      body: encodeFence({ nodeId: `p${epoch}`, cutoffEpoch }),
    });
  /** Checkpoint `cp` of `epoch` at frame seq `seq` (3 frames): key `k` = `${epoch}:${cp}`. */
  const checkpoint = async (epoch: number, seq: number, cp: number): Promise<void> => {
    const raw = serializeImage({ n: cp, epoch } satisfies S);
    await send({
      kind: FrameKind.Writes,
      epoch,
      seq,
      checkpoint: cp,
      body: encodeWrites([{ op: 'put', key: `k${cp}`, value: Buffer.from(`${epoch}:${cp}`) }]),
    });
    await send({
      kind: FrameKind.Image,
      epoch,
      seq: seq + 1,
      checkpoint: cp,
      body: encodeImage(rawFullImage(raw)),
    });
    await send({
      kind: FrameKind.Seal,
      epoch,
      seq: seq + 2,
      checkpoint: cp,
      body: encodeSeal({ writeFrames: 1, writeOps: 1, imageFrames: 1 }),
    });
  };
  return { codec, js, names, send, fence, checkpoint, messageId, lease, close };
}

/** A standby whose events can be awaited (20 s at most); `stop` also closes its store. */
function node(o: StartOptions<S>) {
  const w = watchStandby<S>(o);
  return {
    events: w.events,
    primary: w.primary,
    stop: async () => {
      await w.stop();
      await o.storage.close();
    },
    waitFor: (pred: (e: LogEvent) => boolean): Promise<LogEvent> => w.waitFor(pred, 20_000),
  };
}

describe('history faults', () => {
  const live = liveNodes();

  it('a restart whose own checkpoint a later fence discarded rolls back to the agreed history', async () => {
    const app = live.app('hdiv');
    const pub = await publisher(live.nc, app);
    const opts = (storage: ReturnType<typeof fileAdapter>, leaseTtlMs: number): StartOptions<S> =>
      nodeOptions<S>(app, 'b', {
        storage,
        initialState: () => ({ n: 0, epoch: 0 }),
        leaseTtlMs,
        base: { build: false },
      });
    const dir = tmp();
    // Epoch 1, whose primary holds the lease (b, with a long TTL, does not claim): checkpoints 1..5.
    await pub.lease('p1', 1);
    await pub.fence(1, 0, 0);
    for (let cp = 1; cp <= 5; cp++) await pub.checkpoint(1, 2 + 3 * (cp - 1), cp);
    // b applies 1..5 as a standby and stops.
    const b1 = node(opts(fileAdapter({ dir }), 60_000));
    await b1.waitFor((e) => e.msg === 'checkpoint applied' && e.checkpoint === 5);
    await b1.stop();

    // 4 and 5 were never acknowledged: with several relays they were on one that is gone now.
    // Here, one relay: their messages (seqs 11..16, after the fence and 3 × 3 frames) go.
    const jsm = await jetstreamManager(live.nc);
    for (let seq = 11; seq <= 16; seq++) await jsm.streams.deleteMessage(pub.names.stream, seq);
    // Epoch 2 resumed from checkpoint 3 of epoch 1 and made 4..6.
    await pub.fence(2, 3, 1);
    for (let cp = 4; cp <= 6; cp++) await pub.checkpoint(2, 2 + 3 * (cp - 4), cp);
    await pub.lease(null, 2);
    await pub.close();

    // b restarts on its own store (at 5 of epoch 1): it starts from it, the fence of epoch 2
    // discards it, and b rebuilds; it then takes over (the lease is vacant) from 6 of epoch 2.
    const b2 = node(opts(fileAdapter({ dir }), 600));
    const first = await b2.waitFor((e) => e.msg === 'start path');
    expect(first.from).toBe('own-store');
    expect(first.own).toBe(5);
    const rebuilt = await b2.waitFor((e) => e.msg === 'start path' && String(e.why).startsWith('rebuild'));
    expect(String(rebuilt.why)).toMatch(/epoch 2/);
    const rp = live.keep(
      await Promise.race([
        b2.primary,
        new Promise<never>((_, rej) =>
          setTimeout(() => rej(new Error(b2.events.map((e) => JSON.stringify(e)).join('\n'))), 20_000),
        ),
      ]),
    );
    expect(rp.resumedFrom).toEqual({ epoch: 2, checkpoint: 6 });
    expect(rp.state).toEqual({ n: 6, epoch: 2 });
    for (const [cp, want] of [
      [3, '1:3'],
      [4, '2:4'],
      [5, '2:5'],
      [6, '2:6'],
    ] as const) {
      expect(Buffer.from((await rp.store.get(`k${cp}`))!).toString()).toBe(want);
    }
  }, 60_000);

  it('a forged newer base and a half-built one are passed over for the older intact base', async () => {
    const app = live.app('hforge');
    const pub = await publisher(live.nc, app);
    await pub.fence(1, 0, 0);
    for (let cp = 1; cp <= 10; cp++) await pub.checkpoint(1, 2 + 3 * (cp - 1), cp);
    await pub.close();
    const image = (cp: number) => {
      const raw = serializeImage({ n: cp, epoch: 1 } satisfies S);
      return rawFullImage(raw);
    };
    const entries = (cp: number) =>
      Array.from({ length: cp }, (_, i) => ({
        op: 'put' as const,
        key: `k${i + 1}`,
        value: Buffer.from(`1:${i + 1}`),
      }));
    const history = [{ epoch: 1, cutoff: 0, cutoffEpoch: 0 }];
    const sendBase = async (frames: Frame[]): Promise<void> => {
      for (const f of frames) {
        for (const p of await pub.codec.encode(f)) {
          for (const m of p.messages) {
            await pub.js.publish(pub.names.baseSubject, m.bytes, {
              msgID: baseMessageId(f.checkpoint, m.msgId),
            });
          }
        }
      }
    };
    // The intact base at 8.
    const good = baseFrames(
      { checkpoint: 8, epoch: 1, entries: entries(8), image: image(8), history },
      { builder: 'x', retainFrom: 1, builtAt: 1 },
    );
    await sendBase(good.frames);
    // A forged base at 10: its entries chunk was changed after the manifest was made.
    const forged = baseFrames(
      { checkpoint: 10, epoch: 1, entries: entries(10), image: image(10), history },
      { builder: 'y', retainFrom: 1, builtAt: 2 },
    );
    const chunk0 = Buffer.from(forged.frames[0]!.body);
    chunk0[chunk0.length - 1] ^= 0xff;
    await sendBase([{ ...forged.frames[0]!, body: chunk0 }, ...forged.frames.slice(1)]);
    // A base at 9 whose builder died mid-build: chunks, no manifest.
    const half = baseFrames(
      { checkpoint: 9, epoch: 1, entries: entries(9), image: image(9), history },
      { builder: 'z', retainFrom: 1, builtAt: 3 },
    );
    await sendBase(half.frames.slice(0, -1));

    const b = node(
      nodeOptions<S>(app, 'j', {
        storage: fileAdapter({ dir: tmp() }),
        initialState: () => ({ n: 0, epoch: 0 }),
        leaseTtlMs: 600,
        base: { build: false },
      }),
    );
    const start = await b.waitFor((e) => e.msg === 'start path');
    expect(start.from).toBe('base');
    expect(start.base).toBe(8);
    const rp = live.keep(await b.primary);
    expect(rp.resumedFrom).toEqual({ epoch: 1, checkpoint: 10 });
    expect(rp.state).toEqual({ n: 10, epoch: 1 });
    expect(Buffer.from((await rp.store.get('k9'))!).toString()).toBe('1:9');
  }, 60_000);

  it('the only base corrupted and the history purged: a clear error, the store left empty', async () => {
    const app = live.app('hcorrupt');
    const pub = await publisher(live.nc, app);
    await pub.fence(1, 0, 0);
    for (let cp = 1; cp <= 10; cp++) await pub.checkpoint(1, 2 + 3 * (cp - 1), cp);
    await pub.close();
    const raw = serializeImage({ n: 8, epoch: 1 } satisfies S);
    const base = baseFrames(
      {
        checkpoint: 8,
        epoch: 1,
        entries: Array.from({ length: 8 }, (_, i) => ({
          op: 'put' as const,
          key: `k${i + 1}`,
          value: Buffer.from(`1:${i + 1}`),
        })),
        image: rawFullImage(raw),
        history: [{ epoch: 1, cutoff: 0, cutoffEpoch: 0 }],
      },
      { builder: 'x', retainFrom: 9, builtAt: 1 },
    );
    // A bit flipped in the entries chunk after the manifest named its hash.
    const chunk0 = Buffer.from(base.frames[0]!.body);
    chunk0[chunk0.length - 1] ^= 0x01;
    for (const f of [{ ...base.frames[0]!, body: chunk0 }, ...base.frames.slice(1)]) {
      for (const p of await pub.codec.encode(f)) {
        for (const m of p.messages) {
          await pub.js.publish(pub.names.baseSubject, m.bytes, {
            msgID: baseMessageId(f.checkpoint, m.msgId),
          });
        }
      }
    }
    // The frames of checkpoints 1..8 purged (the fence and 8 × 3 frames: seqs 1..25).
    const jsm = await jetstreamManager(live.nc);
    await jsm.streams.purge(pub.names.stream, { seq: 26 });

    const dir = tmp();
    const storage = fileAdapter({ dir });
    const j = node(
      nodeOptions<S>(app, 'j', {
        storage,
        initialState: () => ({ n: 0, epoch: 0 }),
        leaseTtlMs: 600,
        base: { build: false },
      }),
    );
    const err = await j.primary.then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/history was trimmed and no intact base was found/);
    expect(err?.message).toMatch(/base 8: chunk 0 of 2 is missing or does not hash/);
    expect(err?.message).toMatch(/bring back a relay that holds a base/);
    await storage.close().catch(() => undefined);
    const check = fileAdapter({ dir });
    await check.open({ nodeId: 'j' });
    expect(await check.keys()).toEqual([]);
    await check.close();
  }, 30_000);
});
