/**
 * The primary's write path (issue 16): each put's record is written into its write frame's body
 * when `write` is called, the local store gets a view of that copy, and a one-part frame is
 * framed where its body is. What must hold: a caller reusing its buffer right after `write`
 * returns changes neither the frame nor the local store; an op the store refuses is cut out of
 * its frame; writes called after a checkpoint go into the next checkpoint's frames; the bytes
 * are exactly those of `encodeWrites` / `encodeFrame`.
 */
import { describe, expect, it } from 'vitest';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { FencedError, StorageError } from '../../src/errors.js';
import { ImageEncoder } from '../../src/image/chain.js';
import { Replicator } from '../../src/primary/replicator.js';
import {
  FrameKind,
  PartAssembler,
  decodePart,
  encodeFrame,
  encodeFramePart,
  frameLayout,
  type Frame,
} from '../../src/protocol/frame.js';
import { WritesBuilder, decodeSeal, decodeWrites, encodeWrites } from '../../src/protocol/records.js';
import type { StorageAdapter, WriteOp } from '../../src/storage/adapter.js';

/** A sink that acks every frame at once and keeps it, encoded the way the relay set does. */
class Sink {
  readonly frames: Frame[] = [];
  readonly parts: Buffer[] = [];

  /** `maxPartBytes`: the largest message (the server's max payload). */
  constructor(readonly maxPartBytes = 1 << 20) {}

  publish(frame: Frame): Promise<unknown> {
    this.frames.push(frame);
    // What the codec does: the part bytes, made now (in place for a builder's body).
    const layout = frameLayout('app', frame, this.maxPartBytes);
    for (let i = 0; i < layout.parts; i++) this.parts.push(encodeFramePart(layout, frame, i));
    return Promise.resolve();
  }

  ready(): Promise<void> {
    return Promise.resolve();
  }

  /** The ops of every write frame, with the checkpoint each frame names. */
  writes(): { checkpoint: number; ops: WriteOp[] }[] {
    return this.frames
      .filter((f) => f.kind === FrameKind.Writes)
      .map((f) => ({ checkpoint: f.checkpoint, ops: decodeWrites(f.body) }));
  }
}

async function primary(
  adapter: StorageAdapter = memoryAdapter(),
  batchBytes = 1 << 20,
  sink = new Sink(),
): Promise<{ rep: Replicator; sink: Sink; store: StorageAdapter }> {
  await adapter.open();
  const rep = new Replicator({
    epoch: 1,
    firstCheckpoint: 1,
    firstSeq: 2,
    adapter,
    publisher: sink,
    images: new ImageEncoder({ compress: false }),
    batchBytes,
    leaseValid: () => true,
    fencedError: () => new FencedError('fenced'),
  });
  return { rep, sink, store: adapter };
}

const put = (key: string, value: string): WriteOp => ({ op: 'put', key, value: Buffer.from(value) });
/** A 20-byte value: a put of a 2-byte key takes 31 bytes of a frame. */
const V20 = 'v'.repeat(20);
const text = (v: Uint8Array | undefined): string | undefined =>
  v === undefined ? undefined : Buffer.from(v).toString();

describe('replicator write path', () => {
  it('a caller reusing its buffer right after write() changes neither the frame nor the local store', async () => {
    const { rep, sink, store } = await primary();
    const buf = Buffer.from('first');
    const p1 = rep.write({ op: 'put', key: 'a', value: buf });
    // The app reuses its buffer at once, before the store or the network saw the write.
    buf.write('XXXXX');
    const p2 = rep.write({ op: 'put', key: 'b', value: buf });
    buf.write('YYYYY');
    await Promise.all([p1, p2]);
    await rep.checkpoint({ n: 1 });
    expect(text(await store.get('a'))).toBe('first');
    expect(text(await store.get('b'))).toBe('XXXXX');
    const [w] = sink.writes();
    expect(w!.ops.map((o) => [o.key, o.op === 'put' ? text(o.value) : null])).toEqual([
      ['a', 'first'],
      ['b', 'XXXXX'],
    ]);
  });

  it('an op the local store refuses is rejected and cut out of its frame; the seal counts the rest', async () => {
    const inner = memoryAdapter();
    // A store that refuses one key (a group call fails whole, then each op is tried alone).
    const refusing: StorageAdapter = {
      ...inner,
      put: (key, value) =>
        key === 'bad' ? Promise.reject(new Error('refused by the store')) : inner.put(key, value),
      apply: async (ops) => {
        if (ops.some((o) => o.key === 'bad')) throw new Error('refused by the store');
        return inner.apply!(ops);
      },
    };
    const { rep, sink, store } = await primary(refusing);
    const keys = ['bad', 'k1', 'bad', 'k2', 'k3', 'bad'];
    const results = await Promise.allSettled(keys.map((k, i) => rep.write(put(k, `v${i}`))));
    expect(results.map((r) => r.status)).toEqual([
      'rejected',
      'fulfilled',
      'rejected',
      'fulfilled',
      'fulfilled',
      'rejected',
    ]);
    await rep.checkpoint({});
    const [w, ...more] = sink.writes();
    expect(more).toEqual([]);
    expect(w!.ops.map((o) => [o.key, o.op === 'put' ? text(o.value) : null])).toEqual([
      ['k1', 'v1'],
      ['k2', 'v3'],
      ['k3', 'v4'],
    ]);
    const seal = decodeSeal(sink.frames.find((f) => f.kind === FrameKind.Seal)!.body);
    expect(seal).toEqual({ writeFrames: 1, writeOps: 3, imageFrames: 1 });
    expect(await store.get('bad')).toBeUndefined();
  });

  it('a frame whose every op was refused is not sent', async () => {
    const inner = memoryAdapter();
    const refusing: StorageAdapter = {
      ...inner,
      put: () => Promise.reject(new StorageError('store gone', { retryable: true })),
      apply: () => Promise.reject(new StorageError('store gone', { retryable: true })),
    };
    const { rep, sink } = await primary(refusing);
    const r = await Promise.allSettled([rep.write(put('a', '1')), rep.write(put('b', '2'))]);
    expect(r.every((x) => x.status === 'rejected')).toBe(true);
    await rep.checkpoint({});
    expect(sink.writes()).toEqual([]);
    expect(decodeSeal(sink.frames.find((f) => f.kind === FrameKind.Seal)!.body).writeOps).toBe(0);
  });

  it('writes called after checkpoint() go into the next checkpoint, even before the first is sealed', async () => {
    const { rep, sink } = await primary();
    // Nothing is awaited between the calls: the order of calls decides.
    const w1 = rep.write(put('a', '1'));
    const c1 = rep.checkpoint({ at: 1 });
    const w2 = rep.write(put('b', '2'));
    const w3 = rep.write({ op: 'delete', key: 'a' });
    const c2 = rep.checkpoint({ at: 2 });
    await Promise.all([w1, c1, w2, w3, c2]);
    expect(sink.writes().map((w) => [w.checkpoint, w.ops.map((o) => `${o.op}:${o.key}`)])).toEqual([
      [1, ['put:a']],
      [2, ['put:b', 'delete:a']],
    ]);
    // Frame order on the wire: checkpoint 1's writes, image, seal; then checkpoint 2's.
    expect(sink.frames.map((f) => `${f.checkpoint}:${f.kind}`)).toEqual([
      '1:1',
      '1:2',
      '1:3',
      '2:1',
      '2:2',
      '2:3',
    ]);
    expect(sink.frames.map((f) => f.seq)).toEqual([2, 3, 4, 5, 6, 7]);
  });

  it('a frame closes once its ops reach batchBytes (the op that passes it included), as before', async () => {
    const { rep, sink } = await primary(memoryAdapter(), 3000);
    const value = 'x'.repeat(1000);
    // Each op: 9 + 2 (key) + 1000 = 1011 bytes: three reach 3033 >= 3000.
    await Promise.all(Array.from({ length: 7 }, (_, i) => rep.write(put(`k${i}`, value))));
    await rep.checkpoint({});
    expect(sink.writes().map((w) => w.ops.map((o) => o.key))).toEqual([
      ['k0', 'k1', 'k2'],
      ['k3', 'k4', 'k5'],
      ['k6'],
    ]);
  });

  it('an idle write frame goes out without a checkpoint (after the flush delay)', async () => {
    const { rep, sink } = await primary();
    await rep.write(put('a', '1'));
    await new Promise((r) => setTimeout(r, 50));
    expect(sink.writes().map((w) => w.ops.map((o) => o.key))).toEqual([['a']]);
  });

  it('parts framed in place are the bytes of encodeFrame over a copy, and decode', async () => {
    const { rep, sink } = await primary();
    const ops = Array.from({ length: 50 }, (_, i) => put(`key-${i}-ü`, `value ${i} `.repeat(i)));
    await Promise.all(ops.map((o) => rep.write(o)));
    await rep.checkpoint({});
    const f = sink.frames[0]!;
    expect(f.kind).toBe(FrameKind.Writes);
    const copy = { ...f, body: Buffer.from(f.body) };
    const [expected] = encodeFrame('app', copy, 1 << 20);
    expect(Buffer.compare(sink.parts[0]!, expected!)).toBe(0);
    expect(sink.parts[0]!.buffer).toBe(f.body.buffer); // framed where the body is: no copy
    const part = decodePart(sink.parts[0]!, 'app');
    expect(decodeWrites(part.body)).toEqual(decodeWrites(encodeWrites(ops)));
  });

  it('a frame larger than one part is cut into parts that join to the same body', async () => {
    const { rep, sink } = await primary(memoryAdapter(), 1 << 20, new Sink(4096));
    const ops = [put('small', 'x'), put('big', 'y'.repeat(10_000)), put('after', 'z')];
    await Promise.all(ops.map((o) => rep.write(o)));
    await rep.checkpoint({});
    const joiner = new PartAssembler();
    const frames = sink.parts.map((p) => joiner.add(decodePart(p, 'app'))).filter((f) => f !== undefined);
    const writes = frames.filter((f) => f.kind === FrameKind.Writes);
    expect(writes.length).toBe(1);
    expect(sink.parts.length).toBeGreaterThan(4);
    expect(Buffer.compare(Buffer.from(writes[0]!.body), encodeWrites(ops))).toBe(0);
  });

  it('writes called in one synchronous run reach the store in one apply call', async () => {
    const store = memoryAdapter();
    const groups: number[] = [];
    const apply = store.apply!.bind(store);
    store.apply = (ops) => {
      groups.push(ops.length);
      return apply(ops);
    };
    const { rep } = await primary(store);
    const run = (n: number, from: number): Promise<void>[] =>
      Array.from({ length: n }, (_, i) => rep.write(put(`k${from + i}`, 'v')));
    await Promise.all(run(100, 0));
    await Promise.all(run(40, 100));
    // Not 1 + 99: the first write of a run used to go to the store alone.
    expect(groups).toEqual([100, 40]);
  });

  it("a store that answers over the network: its group's frame goes in the next turn, after the writes settle", async () => {
    const store = memoryAdapter();
    const apply = store.apply!.bind(store);
    // A round trip, as Redis or PostgreSQL take.
    store.apply = async (ops) => {
      await new Promise((r) => setTimeout(r, 2));
      return apply(ops);
    };
    // Frames of 1 KiB: a group of 10 ops of 31 bytes is over the eighth that goes out at once.
    const { rep, sink } = await primary(store, 1024);
    await Promise.all(Array.from({ length: 10 }, (_, i) => rep.write(put(`k${i}`, V20))));
    // Settled, and the app may send its next group to the store before the frame is published.
    expect(sink.writes()).toEqual([]);
    await new Promise((r) => setImmediate(r));
    expect(sink.writes().map((w) => w.ops.length)).toEqual([10]);
    await rep.checkpoint({ n: 10 });
    // A mark (here `drain()`, right behind the group) finds the group's frame sent.
    const more = Array.from({ length: 5 }, (_, i) => rep.write(put(`m${i}`, V20)));
    const drained = rep.drain();
    await Promise.all(more);
    await drained;
    expect(sink.writes().map((w) => w.ops.length)).toEqual([10, 5]);
  });

  it('group commit: a settled frame goes at once while the relay is idle, and fills while one is in flight', async () => {
    const acks: (() => void)[] = [];
    const sink = new Sink();
    const publish = sink.publish.bind(sink);
    sink.publish = (frame) => {
      void publish(frame);
      return new Promise<void>((resolve) => acks.push(resolve));
    };
    const { rep } = await primary(memoryAdapter(), 1024, sink);
    const run = (n: number, from: number): Promise<void>[] =>
      Array.from({ length: n }, (_, i) => rep.write(put(`k${from + i}`, V20)));
    await Promise.all(run(10, 0));
    // Nothing was in flight: the first group went out as soon as the store had it.
    expect(sink.writes().map((w) => w.ops.length)).toEqual([10]);
    await Promise.all(run(10, 10));
    await Promise.all(run(10, 20));
    // Its ack has not come: the next groups wait in one frame (no timer has run yet).
    expect(sink.writes().map((w) => w.ops.length)).toEqual([10]);
    const cp = rep.checkpoint({ n: 30 });
    await new Promise((r) => setImmediate(r));
    expect(sink.writes().map((w) => w.ops.length)).toEqual([10, 20]);
    while (acks.length > 0) acks.shift()!();
    await cp;
  });

  it('group commit: a group under an eighth of batchBytes waits, so a writer that awaits each put sends no frame per write', async () => {
    const { rep, sink } = await primary(memoryAdapter(), 1024);
    for (let i = 0; i < 3; i++) {
      await rep.write(put(`k${i}`, V20));
      await new Promise((r) => setImmediate(r));
    }
    // Idle relay, but 93 bytes: the frame fills (or goes with the checkpoint, or the 5 ms timer).
    expect(sink.writes()).toEqual([]);
    await rep.checkpoint({ n: 3 });
    expect(sink.writes().map((w) => w.ops.length)).toEqual([3]);
  });
});

describe('WritesBuilder', () => {
  const ops: WriteOp[] = [
    put('a', 'one'),
    { op: 'delete', key: 'gone' },
    put('ключ', 'два'),
    put('c', ''),
    { op: 'delete', key: 'x' },
    put('d', 'z'.repeat(300)),
  ];

  it('builds the bytes of encodeWrites, growing past its first capacity', () => {
    const b = new WritesBuilder(8);
    for (const op of ops) b.append(op, Buffer.byteLength(op.key));
    expect(Buffer.compare(b.finish(), encodeWrites(ops))).toBe(0);
  });

  it('leaves out excluded ops: first, middle, last, several, all', () => {
    for (const cut of [[0], [2], [5], [0, 1, 5], [1, 2, 3], [0, 1, 2, 3, 4, 5]]) {
      const b = new WritesBuilder(64);
      const appended = ops.map((op) => b.append(op, Buffer.byteLength(op.key)));
      for (const i of cut) b.exclude(appended[i]!.start, appended[i]!.end);
      const kept = ops.filter((_, i) => !cut.includes(i));
      expect(Buffer.compare(b.finish(), encodeWrites(kept)), `cut ${cut.join(',')}`).toBe(0);
      expect(b.count).toBe(kept.length);
    }
  });
});
