/**
 * Fuzzing of every decoder that reads bytes off the wire (issue 7, DESIGN.md guarantee 4): with
 * arbitrary and mutated inputs they throw only their typed errors, return within a time bound,
 * never allocate from a length they were told rather than bytes they were given, and never crash
 * the process.
 *
 * | decoder                                   | may throw                                   |
 * | ----------------------------------------- | ------------------------------------------- |
 * | decodePart, PartAssembler.add             | FrameError                                  |
 * | decodeWrites / Image / Seal / Fence       | FrameError                                  |
 * | decodeShard, ShardAssembler.add           | FrameError                                  |
 * | deserializeImage, decodeDelta, unpackImage | ImageError                                 |
 * | ImageChain.check                          | ImageError (and `apply` after it: nothing)  |
 *
 * Mutations start from valid encodings (flip, set, insert, delete, truncate, overwrite a u32
 * with a hostile length) and, half of the time, repair the length field and the CRC-32 so the
 * body decoders behind the checksum are reached too.
 *
 * Bounded here (the file runs in a few seconds); `npm run fuzz` runs the same properties with
 * FUZZ_RUNS (default 20 000) runs each.
 */
import { brotliCompressSync, crc32 as crc } from 'node:zlib';
import fc from 'fast-check';
import { describe, expect, it, vi } from 'vitest';
import { FrameError, ImageError } from '../../src/errors.js';
import { ShardAssembler } from '../../src/fec/assembler.js';
import { decodeShard, encodeShards, type FecScheme } from '../../src/fec/shard.js';
import { ImageChain, ImageEncoder } from '../../src/image/chain.js';
import { unpackImage } from '../../src/image/compression.js';
import { decodeDelta, diffTrees, encodeDelta } from '../../src/image/delta.js';
import { deserializeImage, serializeImage } from '../../src/image/serialize.js';
import { toTree } from '../../src/image/typed-tree.js';
import { FrameKind, PartAssembler, decodePart, encodeFrame, type Frame } from '../../src/protocol/frame.js';
import {
  ImageCodec,
  ImageFormat,
  decodeFence,
  decodeImage,
  decodeSeal,
  decodeWrites,
  encodeFence,
  encodeImage,
  encodeSeal,
  encodeWrites,
  type ImageRecord,
} from '../../src/protocol/records.js';
import type { WriteOp } from '../../src/storage/adapter.js';

const APP = 'fuzz-app';
const FUZZ_RUNS = Number(process.env.FUZZ_RUNS ?? '') || 0;
/** Runs per property: `n` in the suite, FUZZ_RUNS under `npm run fuzz`. */
const runs = (n: number): number => (FUZZ_RUNS > 0 ? FUZZ_RUNS : n);
/** No single decoder call may take longer (a hang shows up as a slow call long before). */
const MAX_CALL_MS = Number(process.env.FUZZ_MAX_CALL_MS ?? '') || 1_000;
/** No single call may leave more than this many new bytes of ArrayBuffers behind. */
const MAX_CALL_BYTES = 64 * 1024 * 1024;
/** Nor may a whole property grow the resident set by more. */
const MAX_RSS_GROWTH = 512 * 1024 * 1024;
// `npm run fuzz` runs for minutes per property.
if (FUZZ_RUNS > 0) vi.setConfig({ testTimeout: 3_600_000 });

type ErrorClass = abstract new (...args: never[]) => Error;

/**
 * Runs `fn`, allowing only errors of the classes in `allowed`; fails on a slow call or a call
 * that allocated far more than any input here holds.
 */
function bounded<T>(name: string, allowed: readonly ErrorClass[], fn: () => T): T | undefined {
  const ab0 = process.memoryUsage().arrayBuffers;
  const t0 = performance.now();
  let out: T | undefined;
  try {
    out = fn();
  } catch (err) {
    if (!allowed.some((c) => err instanceof c)) {
      throw new Error(`${name} threw an untyped error: ${String(err)}`, { cause: err });
    }
  }
  check(name, t0, ab0);
  return out;
}

async function boundedAsync<T>(
  name: string,
  allowed: readonly ErrorClass[],
  fn: () => Promise<T>,
): Promise<T | undefined> {
  const ab0 = process.memoryUsage().arrayBuffers;
  const t0 = performance.now();
  let out: T | undefined;
  try {
    out = await fn();
  } catch (err) {
    if (!allowed.some((c) => err instanceof c)) {
      throw new Error(`${name} threw an untyped error: ${String(err)}`, { cause: err });
    }
  }
  check(name, t0, ab0);
  return out;
}

function check(name: string, t0: number, ab0: number): void {
  const ms = performance.now() - t0;
  if (ms > MAX_CALL_MS) throw new Error(`${name} took ${ms.toFixed(0)} ms (bound ${MAX_CALL_MS} ms)`);
  const grew = process.memoryUsage().arrayBuffers - ab0;
  if (grew > MAX_CALL_BYTES) throw new Error(`${name} left ${grew} new bytes of ArrayBuffers behind`);
}

/** Runs a property and checks that the process's resident set stayed bounded over all its runs. */
async function withinMemory(run: () => void | Promise<void>): Promise<void> {
  const rss0 = process.memoryUsage.rss();
  await run();
  const grew = process.memoryUsage.rss() - rss0;
  expect(grew, `RSS grew by ${(grew / 2 ** 20).toFixed(0)} MiB`).toBeLessThan(MAX_RSS_GROWTH);
}

// ---------------------------------------------------------------------------------------------
// Mutations

type Mutation =
  | { readonly m: 'flip'; readonly at: number; readonly bit: number }
  | { readonly m: 'set'; readonly at: number; readonly byte: number }
  | { readonly m: 'insert'; readonly at: number; readonly bytes: Uint8Array }
  | { readonly m: 'delete'; readonly at: number; readonly n: number }
  | { readonly m: 'truncate'; readonly at: number }
  | { readonly m: 'u32'; readonly at: number; readonly value: number };

/** Lengths a hostile header would claim. */
const hostileU32 = fc.oneof(
  fc.constantFrom(0, 1, 0xff, 0xffff, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff),
  fc.nat({ max: 0xffffffff }),
);

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ m: fc.constant('flip' as const), at: fc.nat(), bit: fc.nat(7) }),
  fc.record({ m: fc.constant('set' as const), at: fc.nat(), byte: fc.nat(255) }),
  fc.record({
    m: fc.constant('insert' as const),
    at: fc.nat(),
    bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }),
  }),
  fc.record({ m: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 16 }) }),
  fc.record({ m: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ m: fc.constant('u32' as const), at: fc.nat(), value: hostileU32 }),
);
const mutations = fc.array(mutation, { minLength: 1, maxLength: 4 });

function mutate(input: Uint8Array, ms: readonly Mutation[]): Buffer {
  let b = Buffer.from(input);
  for (const mu of ms) {
    const at = b.length === 0 ? 0 : mu.at % (b.length + 1);
    switch (mu.m) {
      case 'flip':
        if (b.length > 0) b[at % b.length]! ^= 1 << mu.bit;
        break;
      case 'set':
        if (b.length > 0) b[at % b.length] = mu.byte;
        break;
      case 'insert':
        b = Buffer.concat([b.subarray(0, at), mu.bytes, b.subarray(at)]);
        break;
      case 'delete':
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + mu.n)]);
        break;
      case 'truncate':
        b = b.subarray(0, at);
        break;
      case 'u32':
        if (b.length >= 4) b.writeUInt32BE(mu.value, Math.min(at, b.length - 4));
        break;
    }
  }
  return b;
}

/** Makes a mutated part's body length field and CRC-32 agree with its bytes again. */
function repairPart(b: Buffer): Buffer {
  if (b.length < 37) return b;
  const appLen = b[6]!;
  const body = b.length - 32 - appLen - 4;
  if (body < 0) return b;
  b.writeUInt32BE(body, 28);
  b.writeUInt32BE(crc(b.subarray(0, b.length - 4)), b.length - 4);
  return b;
}

/** The same for a shard (payload length at 32, header 36 bytes). */
function repairShard(b: Buffer): Buffer {
  if (b.length < 41) return b;
  const appLen = b[7]!;
  const payload = b.length - 36 - appLen - 4;
  if (payload < 0) return b;
  b.writeUInt32BE(payload, 32);
  b.writeUInt32BE(crc(b.subarray(0, b.length - 4)), b.length - 4);
  return b;
}

// ---------------------------------------------------------------------------------------------
// Valid encodings to start from

const key = fc.string({ minLength: 1, maxLength: 12, unit: 'grapheme' });
const writeOp: fc.Arbitrary<WriteOp> = fc.oneof(
  fc.record({ op: fc.constant('put' as const), key, value: fc.uint8Array({ maxLength: 32 }) }),
  fc.record({ op: fc.constant('delete' as const), key }),
);

/** Values node:v8 images hold (and the typed tree can express). */
const stateValue: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  leaf: fc.oneof(
    fc.string({ maxLength: 8 }),
    fc.double(),
    fc.integer(),
    fc.boolean(),
    fc.constant(null),
    fc.constant(undefined),
    fc.bigInt(),
    fc.date({ noInvalidDate: true }),
    fc.uint8Array({ maxLength: 8 }),
    fc.float64Array({ maxLength: 4 }),
  ),
  node: fc.oneof(
    { depthSize: 'small' },
    tie('leaf'),
    fc.array(tie('node'), { maxLength: 4 }),
    fc.dictionary(fc.string({ maxLength: 6 }), tie('node'), { maxKeys: 4 }),
    fc.array(fc.tuple(fc.string({ maxLength: 4 }), tie('node')), { maxLength: 3 }).map((e) => new Map(e)),
    fc.array(fc.integer(), { maxLength: 4 }).map((e) => new Set(e)),
    fc.sparseArray(tie('node'), { maxLength: 6 }),
  ),
})).node;

const imageRecord: fc.Arbitrary<ImageRecord> = fc
  .tuple(stateValue, stateValue, fc.boolean(), fc.boolean(), fc.integer({ min: 1, max: 3 }))
  .map(([a, b, delta, brotli, stateVersion]) => {
    const raw = delta ? encodeDelta(diffTrees(toTree(a), toTree(b)) ?? {}) : serializeImage(a);
    const payload = brotli ? brotliCompressSync(raw) : raw;
    return {
      format: delta ? ImageFormat.Delta : ImageFormat.Full,
      codec: brotli ? ImageCodec.Brotli : ImageCodec.None,
      base: delta ? 1 : 0,
      stateVersion,
      rawLength: raw.byteLength,
      payload,
    };
  });

const frameArb: fc.Arbitrary<Frame> = fc
  .tuple(
    fc.oneof(
      fc.array(writeOp, { maxLength: 6 }).map((ops) => ({ kind: FrameKind.Writes, body: encodeWrites(ops) })),
      imageRecord.map((r) => ({ kind: FrameKind.Image, body: encodeImage(r) })),
      fc
        .record({ writeFrames: fc.nat(9), writeOps: fc.nat(99), imageFrames: fc.constant(1) })
        .map((r) => ({ kind: FrameKind.Seal, body: encodeSeal(r) })),
      fc
        .string({ minLength: 1, maxLength: 20 })
        .map((nodeId) => ({ kind: FrameKind.Fence, body: encodeFence({ nodeId }) })),
    ),
    fc.integer({ min: 1, max: 0xffffffff }),
    fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
    fc.nat({ max: 0xffffffff }),
  )
  .map(([{ kind, body }, epoch, seq, checkpoint]) => ({ kind, body, epoch, seq, checkpoint }) as Frame);

/** Decodes a joined frame's body with its kind's decoder. */
function decodeBody(f: Frame): void {
  switch (f.kind) {
    case FrameKind.Writes:
      bounded('decodeWrites', [FrameError], () => decodeWrites(f.body));
      break;
    case FrameKind.Image: {
      const rec = bounded('decodeImage', [FrameError], () => decodeImage(f.body));
      if (rec) imageThroughChain(rec);
      break;
    }
    case FrameKind.Seal:
      bounded('decodeSeal', [FrameError], () => decodeSeal(f.body));
      break;
    case FrameKind.Fence:
      bounded('decodeFence', [FrameError], () => decodeFence(f.body));
      break;
  }
}

/** A chain holding checkpoint 1's image (a keyframe), for deltas to apply to. */
function chainAtOne(): ImageChain {
  const chain = new ImageChain();
  const enc = new ImageEncoder();
  const { record } = enc.encode({ a: 1, list: [1, 2, 3], m: new Map([['k', { x: 1 }]]) }, 1);
  chain.check(1, record as ImageRecord);
  chain.apply(1, record as ImageRecord);
  return chain;
}

/**
 * Feeds an image record to a chain as checkpoint 2. `check` may refuse it with `ImageError`;
 * once it accepted, `apply` must not throw (the applier calls it after the store commit).
 */
function imageThroughChain(rec: ImageRecord): void {
  const chain = chainAtOne();
  const before = JSON.stringify(chain.tree, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v));
  let ok = false;
  bounded('ImageChain.check', [ImageError], () => {
    chain.check(2, rec);
    ok = true;
  });
  if (!ok) {
    // A refused image leaves the image held untouched.
    expect(JSON.stringify(chain.tree, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v))).toBe(
      before,
    );
    return;
  }
  // Contract wanted: nothing after a passed check throws (see the `fails` test below). Today a
  // delta that does not fit its base passes check and fails in apply or materialize.
  bounded('ImageChain.apply after check', [ImageError], () => chain.apply(2, rec));
  bounded('ImageChain.materialize', [ImageError], () => chain.materialize());
}

// ---------------------------------------------------------------------------------------------

describe('fuzz: frame parts and record bodies', () => {
  it('decodePart and the body decoders throw only FrameError on arbitrary bytes', async () => {
    await withinMemory(() =>
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 300 }), (junk) => {
          bounded('decodePart', [FrameError], () => decodePart(junk, APP));
          bounded('decodeWrites', [FrameError], () => decodeWrites(junk));
          bounded('decodeImage', [FrameError], () => decodeImage(junk));
          bounded('decodeSeal', [FrameError], () => decodeSeal(junk));
          bounded('decodeFence', [FrameError], () => decodeFence(junk));
        }),
        { numRuns: runs(1000) },
      ),
    );
  });

  it('mutated parts (CRC repaired or not) reach the assembler and body decoders, which throw only FrameError', async () => {
    await withinMemory(() =>
      fc.assert(
        fc.property(
          frameArb,
          fc.integer({ min: 48, max: 400 }),
          fc.nat(),
          mutations,
          fc.boolean(),
          (f, maxPart, which, ms, repair) => {
            const parts = encodeFrame(APP, f, maxPart);
            const asm = new PartAssembler();
            const target = which % parts.length;
            let whole: Frame | undefined;
            parts.forEach((bytes, i) => {
              let input: Buffer = bytes;
              if (i === target) {
                input = mutate(bytes, ms);
                if (repair) input = repairPart(input);
              }
              const p = bounded('decodePart', [FrameError], () => decodePart(input, APP));
              if (!p) return;
              whole = bounded('PartAssembler.add', [FrameError], () => asm.add(p)) ?? whole;
            });
            if (whole) decodeBody(whole);
          },
        ),
        { numRuns: runs(600) },
      ),
    );
  });

  it('unmutated frames round-trip through parts and assembler, in any order', () => {
    fc.assert(
      fc.property(frameArb, fc.integer({ min: 48, max: 400 }), fc.nat(), (f, maxPart, seed) => {
        const parts = encodeFrame(APP, f, maxPart);
        const order = parts
          .map((_, i) => i)
          .sort((a, b) => ((a * 7919 + seed) % 97) - ((b * 7919 + seed) % 97));
        const asm = new PartAssembler();
        let whole: Frame | undefined;
        for (const i of order) whole = asm.add(decodePart(parts[i]!, APP)) ?? whole;
        expect(whole).toMatchObject({ kind: f.kind, epoch: f.epoch, seq: f.seq, checkpoint: f.checkpoint });
        expect(Buffer.compare(Buffer.from(whole!.body), Buffer.from(f.body))).toBe(0);
        expect(asm.pending).toBe(0);
      }),
      { numRuns: runs(200) },
    );
  });

  it('mutated bodies (behind a valid checksum) throw only FrameError', async () => {
    await withinMemory(() =>
      fc.assert(
        fc.property(frameArb, mutations, (f, ms) => {
          decodeBody({ ...f, body: mutate(f.body, ms) });
        }),
        { numRuns: runs(800) },
      ),
    );
  });

  it('an assembler fed headers claiming 65 535 parts holds memory for the parts that came, within its caps', () => {
    const asm = new PartAssembler({ maxPendingFrames: 100 });
    const heap0 = process.memoryUsage().heapUsed;
    for (let seq = 1; seq <= 5000; seq++) {
      asm.add({
        kind: FrameKind.Writes,
        epoch: 1,
        seq,
        checkpoint: 1,
        part: 0,
        parts: 0xffff,
        body: new Uint8Array(1),
      });
    }
    expect(asm.pending).toBe(100);
    expect(asm.evicted).toBe(4900);
    // A pre-sized array per frame would hold 5000 × 65 535 slots (2.5 GB); a few MB is the bound.
    expect(process.memoryUsage().heapUsed - heap0).toBeLessThan(32 * 2 ** 20);
    const byBytes = new PartAssembler({ maxPendingBytes: 1000 });
    for (let seq = 1; seq <= 100; seq++) {
      byBytes.add({
        kind: FrameKind.Writes,
        epoch: 1,
        seq,
        checkpoint: 1,
        part: 0,
        parts: 2,
        body: new Uint8Array(100),
      });
    }
    expect(byBytes.pendingBytes).toBeLessThanOrEqual(1000);
  });

  it('lengths claiming 4 GiB are refused before anything is allocated for them', () => {
    const [good] = encodeFrame(
      APP,
      { kind: FrameKind.Writes, epoch: 1, seq: 2, checkpoint: 1, body: encodeWrites([]) },
      1 << 20,
    );
    const part = Buffer.from(good!);
    part.writeUInt32BE(0xffffffff, 28);
    const ab0 = process.memoryUsage().arrayBuffers;
    expect(() => decodePart(part, APP)).toThrow(/truncated/);
    const writes = Buffer.alloc(16);
    writes.writeUInt32BE(0xffffffff, 0);
    expect(() => decodeWrites(writes)).toThrow(/claims/);
    const one = Buffer.alloc(16);
    one.writeUInt32BE(1, 0);
    one[4] = 1;
    one.writeUInt32BE(0xffffffff, 5); // key length
    expect(() => decodeWrites(one)).toThrow(/truncated|key/);
    const image = encodeImage({
      format: 1,
      codec: ImageCodec.None,
      base: 0,
      stateVersion: 1,
      rawLength: 0,
      payload: new Uint8Array(0),
    });
    image.writeUInt32BE(0xffffffff, 10);
    expect(() => decodeImage(image)).toThrow(FrameError);
    expect(process.memoryUsage().arrayBuffers - ab0).toBeLessThan(2 ** 20);
  });
});

describe('fuzz: FEC shards', () => {
  const schemes: FecScheme[] = [
    { data: 1, parity: 0 },
    { data: 2, parity: 1 },
    { data: 4, parity: 2 },
    { copies: 3 },
  ];

  it('decodeShard throws only FrameError on arbitrary bytes', async () => {
    await withinMemory(() =>
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 300 }), (junk) => {
          bounded('decodeShard', [FrameError], () => decodeShard(junk, APP));
        }),
        { numRuns: runs(1000) },
      ),
    );
  });

  it('mutated shards (CRC repaired or not) make the assembler reject only with FrameError; a rebuilt part decodes only to FrameError', async () => {
    await withinMemory(() =>
      fc.assert(
        fc.asyncProperty(
          frameArb,
          fc.constantFrom(...schemes),
          fc.array(fc.tuple(fc.nat(), mutations, fc.boolean()), { minLength: 1, maxLength: 3 }),
          fc.boolean(),
          async (f, scheme, hits, shuffle) => {
            const [part] = encodeFrame(APP, f, 1 << 20);
            const shards = await encodeShards(APP, { epoch: f.epoch, seq: f.seq, part: 0 }, part!, scheme);
            const inputs: Buffer[] = [...shards];
            for (const [at, ms, repair] of hits) {
              const i = at % inputs.length;
              const m = mutate(inputs[i]!, ms);
              inputs[i] = repair ? repairShard(m) : m;
            }
            if (shuffle) inputs.reverse();
            const asm = new ShardAssembler({ app: APP, maxPendingBytes: 1 << 20 });
            for (const bytes of inputs) {
              const rebuilt = await boundedAsync('ShardAssembler.add', [FrameError], () => asm.add(bytes));
              if (rebuilt) {
                const p = bounded('decodePart of a rebuilt part', [FrameError], () =>
                  decodePart(rebuilt, APP),
                );
                if (p && p.parts === 1) decodeBody({ ...p });
              }
            }
          },
        ),
        { numRuns: runs(300) },
      ),
    );
  });
});

describe('fuzz: execution images and deltas', () => {
  it('deserializeImage, decodeDelta and unpackImage throw only ImageError on arbitrary bytes', async () => {
    await withinMemory(() =>
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 200 }), fc.nat({ max: 1 << 20 }), (junk, rawLength) => {
          bounded('deserializeImage', [ImageError], () => deserializeImage(junk));
          bounded('deserializeImage 0xff', [ImageError], () =>
            deserializeImage(Buffer.concat([Buffer.from([0xff]), junk])),
          );
          bounded('decodeDelta', [ImageError], () => decodeDelta(junk));
          bounded('unpackImage', [ImageError], () => unpackImage(ImageCodec.Brotli, junk, rawLength));
        }),
        { numRuns: runs(1000) },
      ),
    );
  });

  it('mutated v8 images throw only ImageError, and whatever they decode to becomes a typed tree', async () => {
    await withinMemory(() =>
      fc.assert(
        fc.property(stateValue, mutations, (v, ms) => {
          const bytes = mutate(serializeImage(v), ms);
          const out = bounded('deserializeImage', [ImageError], () => ({ v: deserializeImage(bytes) }));
          if (out) bounded('toTree of a decoded image', [], () => toTree(out.v));
        }),
        { numRuns: runs(1000) },
      ),
    );
  });

  it('mutated deltas throw only ImageError', async () => {
    await withinMemory(() =>
      fc.assert(
        fc.property(stateValue, stateValue, mutations, (a, b, ms) => {
          const d = diffTrees(toTree(a), toTree(b)) ?? {};
          bounded('decodeDelta', [ImageError], () => decodeDelta(mutate(encodeDelta(d), ms)));
        }),
        { numRuns: runs(600) },
      ),
    );
  });

  it('ImageChain.check refuses mutated images with ImageError only, and apply never fails after check accepted', async () => {
    await withinMemory(() =>
      fc.assert(
        fc.property(imageRecord, mutations, fc.boolean(), (rec, ms, headerToo) => {
          const payload = mutate(rec.payload, ms);
          let mutated: ImageRecord = {
            ...rec,
            payload,
            rawLength: rec.codec === ImageCodec.None ? payload.byteLength : rec.rawLength,
          };
          if (headerToo) {
            const body = bounded('decodeImage', [FrameError], () =>
              decodeImage(mutate(encodeImage(mutated), ms.slice(0, 1))),
            );
            if (!body) return;
            mutated = body;
          }
          imageThroughChain(mutated);
        }),
        { numRuns: runs(600) },
      ),
    );
  });

  it('a compressed image announcing more bytes than maxImageBytes is refused before it is decompressed', () => {
    const bomb = brotliCompressSync(Buffer.alloc(8 * 2 ** 20)); // 8 MiB of zeros in a few bytes
    expect(bomb.byteLength).toBeLessThan(1024);
    const chain = new ImageChain({ maxImageBytes: 2 ** 20 });
    const rec: ImageRecord = {
      format: ImageFormat.Full,
      codec: ImageCodec.Brotli,
      base: 0,
      stateVersion: 1,
      rawLength: 8 * 2 ** 20,
      payload: bomb,
    };
    const ab0 = process.memoryUsage().arrayBuffers;
    expect(() => chain.check(1, rec)).toThrow(/limits\.maxImageBytes/);
    // A record that lies low about its size: decompression stops at the announced length.
    expect(() => chain.check(1, { ...rec, rawLength: 1000 })).toThrow(/does not decode/);
    expect(process.memoryUsage().arrayBuffers - ab0).toBeLessThan(2 ** 20);
  });

  // FINDING (issue 7): ImageChain.check accepts a delta that does not fit the image held; apply
  // (which the applier calls after the store commit) then throws with the tree partly patched,
  // or materialize fails on the tree the patch left. Flip to \`it\` once check proves the patch.
  it.fails(
    'a delta that does not fit its base is refused by check, not by apply after the store commit',
    () => {
      const chain = chainAtOne();
      const delta = Buffer.from(JSON.stringify({ _t: 'a', _0: [0, 0, 0] })); // an array change on an object root
      const rec: ImageRecord = {
        format: ImageFormat.Delta,
        codec: ImageCodec.None,
        base: 1,
        stateVersion: 1,
        rawLength: delta.byteLength,
        payload: delta,
      };
      let refusedByCheck = false;
      try {
        chain.check(2, rec);
      } catch (err) {
        refusedByCheck = err instanceof ImageError;
      }
      expect(refusedByCheck).toBe(true);
    },
  );
});
