/**
 * Model-based test of the standby's applier (issue 7, DESIGN.md guarantee 4): fast-check
 * commands drive an `Applier` over `memoryAdapter()` in both modes with random interleavings of
 * writes, write-frame flushes, seals (checkpoints), out-of-order delivery of single parts (gaps
 * filled later, multi-part frames reassembled in any order), duplicates, replays of any earlier
 * part (older epochs included) and takeovers (a fence of the next epoch with a cutoff between
 * this standby's committed checkpoint and the last sealed one).
 *
 * The model is the agreed history: per checkpoint, the store (keys and values) and the state its
 * image carries. After every command:
 * - safety: with `c` the applier's committed checkpoint, the store and the materialized image
 *   equal checkpoint `c` of the agreed history exactly, from the epoch that sealed it, and `c`
 *   never goes down;
 * - liveness (after "deliver everything"): `c` is the last sealed checkpoint of the agreed history.
 *
 * The batched runs deliver as the standby runner does when messages queue up (issue 14): while
 * more parts of a burst wait, the applier may hold ready checkpoints back and commit several in
 * one store commit; once the burst is delivered it is told to commit what waits. Safety is
 * checked after every part all the same: a batch is never seen half-done.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { ImageChain, ImageEncoder } from '../../src/image/chain.js';
import { FrameKind, encodeFrame, type Frame } from '../../src/protocol/frame.js';
import {
  encodeFence,
  encodeImage,
  encodeSeal,
  encodeWrites,
  type ImageRecord,
} from '../../src/protocol/records.js';
import type { Applier, ApplyMode } from '../../src/standby/applier.js';
import { Intake } from '../../src/standby/intake.js';
import { FrameCodec } from '../../src/protocol/codec.js';
import type { StorageAdapter, WriteOp } from '../../src/storage/adapter.js';

const APP = 'model';
const FUZZ_RUNS = Number(process.env.FUZZ_RUNS ?? '') || 0;
const RUNS = FUZZ_RUNS > 0 ? Math.max(50, Math.round(FUZZ_RUNS / 20)) : 60;

type Store = ReadonlyMap<string, string>;

interface Snap {
  readonly epoch: number;
  readonly store: Store;
  readonly state: { cp: number; kv: Record<string, string> };
}

/** The world: a primary publishing parts, the parts in flight, and the standby under test. */
class World {
  readonly adapter = memoryAdapter();
  readonly chain = new ImageChain();
  readonly intake: Intake;
  readonly applier: Applier;
  /** Agreed history: checkpoint → what the standby must show once it committed it. */
  readonly snaps = new Map<number, Snap>([[0, { epoch: 0, store: new Map(), state: { cp: 0, kv: {} } }]]);
  lastSealed = 0;
  // The primary.
  epoch = 1;
  seq = 1;
  nextCp = 1;
  encoder = new ImageEncoder({ keyframeEvery: 3, maxChainShare: 10, compress: false });
  store = new Map<string, string>();
  batch: WriteOp[] = [];
  openFrames = 0;
  openOps = 0;
  // Parts published and not yet delivered, and every part ever delivered (for duplicates).
  outbox: Buffer[] = [];
  delivered: Buffer[] = [];
  streamSeq = 0;
  lastCommitted = 0;
  /** The cutoff of the newest fence: a later primary resumes from at least there. */
  floor = 0;
  /** Applier errors that are not bad input (must never happen here). */
  fatal: unknown;

  /** Batched runs: parts of the current burst still to deliver after this one. */
  pending = 0;

  constructor(
    readonly mode: ApplyMode,
    readonly batched = false,
  ) {
    this.intake = new Intake({
      more: () => this.batched && this.pending > 0,
      app: APP,
      codec: new FrameCodec({ app: APP, relays: 1, maxPayload: 1 << 20 }),
      relays: 1,
      adapter: this.adapter,
      images: this.chain,
      mode,
    });
    this.applier = this.intake.applier;
    this.#publish(this.#frame(FrameKind.Fence, 0, encodeFence({ nodeId: 'n1' })), 1 << 20, true);
  }

  #frame(kind: FrameKind, checkpoint: number, body: Uint8Array): Frame {
    return { kind, epoch: this.epoch, seq: this.seq++, checkpoint, body };
  }

  /** Puts a frame's parts in flight (or delivers them at once). */
  #publish(f: Frame, maxPart: number, now = false): void {
    const parts = encodeFrame(APP, f, maxPart);
    if (now) this.#now.push(...parts);
    else this.outbox.push(...parts);
  }

  readonly #now: Buffer[] = [];

  async settle(): Promise<void> {
    while (this.#now.length > 0) {
      this.pending = this.#now.length - 1;
      await this.deliver(this.#now.shift()!);
    }
  }

  async deliver(part: Buffer): Promise<void> {
    this.delivered.push(part);
    try {
      await this.intake.take(0, ++this.streamSeq, part);
      // As the standby runner does: the burst is over, what waited for a batch is committed.
      while (this.pending === 0 && this.applier.deferred) await this.applier.recheck();
    } catch (err) {
      this.fatal ??= err;
      throw err;
    }
  }

  write(key: string, value: string | undefined): void {
    if (value === undefined) {
      this.store.delete(key);
      this.batch.push({ op: 'delete', key });
    } else {
      this.store.set(key, value);
      this.batch.push({ op: 'put', key, value: Buffer.from(value) });
    }
    this.openOps++;
  }

  flush(maxPart: number): void {
    if (this.batch.length === 0) return;
    this.#publish(this.#frame(FrameKind.Writes, this.nextCp, encodeWrites(this.batch)), maxPart);
    this.batch = [];
    this.openFrames++;
  }

  seal(maxPart: number, imageFirst: boolean): void {
    this.flush(maxPart);
    const cp = this.nextCp++;
    const state = { cp, kv: Object.fromEntries([...this.store].sort()) };
    const { record } = this.encoder.encode(state, cp);
    const image = this.#frame(FrameKind.Image, cp, encodeImage(record as ImageRecord));
    const seal = this.#frame(
      FrameKind.Seal,
      cp,
      encodeSeal({ writeFrames: this.openFrames, writeOps: this.openOps, imageFrames: 1 }),
    );
    // The seal's number is after the image's; the order they are put in flight varies.
    for (const f of imageFirst ? [image, seal] : [seal, image]) this.#publish(f, maxPart);
    this.openFrames = 0;
    this.openOps = 0;
    this.snaps.set(cp, { epoch: this.epoch, store: new Map(this.store), state });
    this.lastSealed = cp;
  }

  /**
   * A takeover: the new primary resumed from `cutoff`, somewhere between what this standby
   * committed and the last sealed checkpoint. Its fence reaches this standby now; frames of the
   * old epoch for later checkpoints are void from here on (those in flight arrive as replays).
   */
  takeover(pick: number): void {
    const lo = Math.max(this.floor, this.applier.position.checkpoint);
    const cutoff = lo + (pick % (this.lastSealed - lo + 1));
    this.epoch++;
    this.seq = 1;
    for (const cp of [...this.snaps.keys()]) if (cp > cutoff) this.snaps.delete(cp);
    this.lastSealed = cutoff;
    this.floor = cutoff;
    this.nextCp = cutoff + 1;
    this.store = new Map(this.snaps.get(cutoff)!.store);
    this.encoder = new ImageEncoder({ keyframeEvery: 3, maxChainShare: 10, compress: false });
    this.batch = [];
    this.openFrames = 0;
    this.openOps = 0;
    this.#publish(
      this.#frame(FrameKind.Fence, cutoff, encodeFence({ nodeId: `n${this.epoch}` })),
      1 << 20,
      true,
    );
  }

  /** Safety, after every command. */
  async checkSafety(): Promise<void> {
    expect(this.fatal).toBeUndefined();
    expect(this.applier.stagedBytes).toBeGreaterThanOrEqual(0);
    const pos = this.applier.position;
    expect(pos.checkpoint).toBeGreaterThanOrEqual(this.lastCommitted);
    this.lastCommitted = pos.checkpoint;
    const snap = this.snaps.get(pos.checkpoint);
    expect(snap, `committed checkpoint ${pos.checkpoint} is not in the agreed history`).toBeDefined();
    expect(pos.epoch).toBe(snap!.epoch);
    expect(await dump(this.adapter)).toEqual(Object.fromEntries([...snap!.store].sort()));
    if (pos.checkpoint === 0) expect(this.chain.materialize()).toBeUndefined();
    else expect(this.chain.materialize()).toEqual(snap!.state);
  }
}

async function dump(adapter: StorageAdapter): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const k of await adapter.keys()) out[k] = Buffer.from((await adapter.get(k))!).toString();
  return out;
}

type Model = Record<string, never>;
type Cmd = fc.AsyncCommand<Model, World>;

const keyArb = fc.constantFrom('a', 'b', 'c', 'd', 'e');
const partSize = fc.constantFrom(1 << 20, 1 << 20, 60, 90);

class Write implements Cmd {
  constructor(
    readonly key: string,
    readonly value: string | undefined,
  ) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    w.write(this.key, this.value);
    await w.checkSafety();
  }
  toString = (): string => `write(${this.key}=${this.value ?? '∅'})`;
}

class Flush implements Cmd {
  constructor(readonly maxPart: number) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    w.flush(this.maxPart);
    await w.checkSafety();
  }
  toString = (): string => `flush(${this.maxPart})`;
}

class Seal implements Cmd {
  constructor(
    readonly maxPart: number,
    readonly imageFirst: boolean,
  ) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    w.seal(this.maxPart, this.imageFirst);
    await w.checkSafety();
  }
  toString = (): string => `seal(${this.maxPart},${this.imageFirst ? 'image-first' : 'seal-first'})`;
}

/** Delivers one part in flight, chosen by index: reorders within and across checkpoints, gaps. */
class Deliver implements Cmd {
  constructor(
    readonly pick: number,
    readonly count: number,
  ) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    for (let n = 0; n < this.count && w.outbox.length > 0; n++) {
      w.pending = Math.min(this.count - n, w.outbox.length) - 1;
      const [part] = w.outbox.splice(this.pick % w.outbox.length, 1);
      await w.deliver(part!);
      await w.checkSafety();
    }
  }
  toString = (): string => `deliver(${this.pick},×${this.count})`;
}

/** Delivers every part in flight, oldest first: afterwards all that was sealed is committed. */
class DeliverAll implements Cmd {
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    while (w.outbox.length > 0) {
      w.pending = w.outbox.length - 1;
      await w.deliver(w.outbox.shift()!);
      await w.checkSafety();
    }
    expect(w.applier.position.checkpoint).toBe(w.lastSealed);
  }
  toString = (): string => 'deliverAll';
}

/** Delivers a part delivered before again: a duplicate, or a replay of an older epoch's frame. */
class Replay implements Cmd {
  constructor(readonly pick: number) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    if (w.delivered.length === 0) return;
    w.pending = 0;
    await w.deliver(w.delivered[this.pick % w.delivered.length]!);
    await w.checkSafety();
  }
  toString = (): string => `replay(${this.pick})`;
}

class Takeover implements Cmd {
  constructor(readonly pick: number) {}
  check = (): boolean => true;
  async run(_m: Model, w: World): Promise<void> {
    w.takeover(this.pick);
    await w.settle();
    await w.checkSafety();
  }
  toString = (): string => `takeover(${this.pick})`;
}

const commands = fc.commands(
  [
    fc
      .tuple(keyArb, fc.option(fc.string({ maxLength: 6 }), { nil: undefined }))
      .map(([k, v]) => new Write(k, v)),
    fc.tuple(keyArb, fc.string({ maxLength: 6 })).map(([k, v]) => new Write(k, v)),
    partSize.map((p) => new Flush(p)),
    fc.tuple(partSize, fc.boolean()).map(([p, f]) => new Seal(p, f)),
    fc.tuple(partSize, fc.boolean()).map(([p, f]) => new Seal(p, f)),
    fc.tuple(fc.nat(), fc.integer({ min: 1, max: 4 })).map(([p, c]) => new Deliver(p, c)),
    fc.tuple(fc.nat(), fc.integer({ min: 1, max: 4 })).map(([p, c]) => new Deliver(p, c)),
    fc.constant(new DeliverAll()),
    fc.nat().map((p) => new Replay(p)),
    fc.nat().map((p) => new Takeover(p)),
  ],
  { maxCommands: 80, size: 'large' },
);

describe.each([
  ['delay-write', false],
  ['snapshot', false],
  ['delay-write', true],
] as const)('applier model (%s, batched: %s)', (mode, batched) => {
  const stats = { runs: 0, committed: 0, epochs: 0, rejected: 0, batches: 0 };
  it(
    'store and image always equal the committed checkpoint of the agreed history; everything sealed commits once delivered',
    async () => {
      await fc.assert(
        fc.asyncProperty(commands, async (cmds) => {
          const w = new World(mode, batched);
          await w.adapter.open();
          await w.settle();
          await fc.asyncModelRun(() => ({ model: {}, real: w }), cmds);
          await new DeliverAll().run({}, w);
          // With nothing open and everything delivered, nothing may stay held: replays of older
          // epochs and stale frames must not pile up in memory.
          w.seal(1 << 20, true);
          await new DeliverAll().run({}, w);
          expect(w.applier.stagedBytes).toBe(0);
          stats.runs++;
          stats.committed += w.applier.counters.checkpointsCommitted;
          stats.batches += w.applier.counters.batches;
          stats.epochs += w.epoch - 1;
          stats.rejected += Object.values(w.intake.counters.rejected).reduce((a, b) => a + b, 0);
        }),
        { numRuns: RUNS },
      );
      // The runs exercised what they are meant to: checkpoints, takeovers and refused frames.
      expect(stats.committed).toBeGreaterThan(stats.runs);
      expect(stats.epochs).toBeGreaterThan(0);
      expect(stats.rejected).toBeGreaterThan(0);
      // Batched runs committed several checkpoints per store commit; the others one each.
      if (batched) expect(stats.batches).toBeLessThan(0.9 * stats.committed);
      else expect(stats.batches).toBeLessThanOrEqual(stats.committed);
      console.log(mode, batched ? 'batched' : '', stats);
    },
    FUZZ_RUNS > 0 ? 3_600_000 : 60_000,
  );
});
