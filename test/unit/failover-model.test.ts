/**
 * Model test of failover across several relays (issue 11): fast-check drives a world of N relays
 * with independent outages, a primary whose frames reach each relay on its own schedule (a
 * relay that is down gets them from the primary's backlog once it returns, unless the primary
 * dies first), takeovers by brand-new nodes that replay a read quorum of relays from the start
 * (the production path: `Intake` → `Applier`, then the takeover's own steps: relax, the stuck
 * check, re-publishing kept checkpoints, the fence — all through the relays, like any frame), a
 * deposed primary that keeps publishing (a zombie), and a long-lived standby that reads each
 * relay at its own pace (so fences arrive late and out of epoch order).
 *
 * Invariants, after every command:
 * - **no acknowledged checkpoint is lost**: every checkpoint whose frames all reached as many
 *   relays as the ack policy needs, while its primary held the lease, is in every later
 *   takeover's resumed history, with the epoch that sealed it;
 * - the agreed history below a fence's cut never changes;
 * - the lagging standby's store and image equal its committed checkpoint of the agreed history,
 *   and it never hits a divergence error;
 * - a takeover never refuses while a read quorum and the policy's acks are reachable.
 * Liveness, at the end (every relay up, everything read): the lagging standby has committed the
 * last checkpoint of the agreed history and is not stuck.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { ImageChain, ImageEncoder } from '../../src/image/chain.js';
import { FrameCodec } from '../../src/protocol/codec.js';
import { FrameKind, encodeFrame, type Frame } from '../../src/protocol/frame.js';
import {
  encodeFence,
  encodeImage,
  encodeSeal,
  encodeWrites,
  type ImageRecord,
} from '../../src/protocol/records.js';
import { messageId } from '../../src/protocol/subjects.js';
import { Intake } from '../../src/standby/intake.js';
import { mulberry } from '../../src/drill/types.js';
import type { StorageAdapter, WriteOp } from '../../src/storage/adapter.js';

const APP = 'fmodel';
const FUZZ_RUNS = Number(process.env.FUZZ_RUNS ?? '') || 0;
const RUNS = FUZZ_RUNS > 0 ? Math.max(50, Math.round(FUZZ_RUNS / 20)) : 300;

interface Snap {
  readonly store: ReadonlyMap<string, string>;
  readonly state: { cp: number; kv: Record<string, string> };
}

/** One message as published: stored on the relays in `on`. */
interface Msg {
  readonly id: string;
  readonly bytes: Buffer;
  readonly on: Set<number>;
}

interface Relay {
  up: boolean;
  readonly stream: Msg[];
  readonly ids: Set<string>;
}

/** A node applying the relays' streams: the production message path over a memory store. */
class Node {
  readonly adapter = memoryAdapter();
  readonly chain = new ImageChain();
  readonly intake: Intake;
  readonly cursor: number[];
  /** checkpoint → epoch, as committed. */
  readonly committed = new Map<number, number>();
  fatal: unknown;
  streamSeq = 0;

  constructor(relays: number, need: number) {
    this.cursor = Array.from({ length: relays }, () => 0);
    this.intake = new Intake({
      app: APP,
      codec: new FrameCodec({ app: APP, relays, maxPayload: 1 << 20 }),
      relays,
      need,
      adapter: this.adapter,
      images: this.chain,
      onCommit: (pos) => this.committed.set(pos.checkpoint, pos.epoch),
    });
  }

  get applier(): Intake['applier'] {
    return this.intake.applier;
  }

  /** Reads up to `n` more messages of relay `r`'s stream. */
  async read(world: World, r: number, n = Infinity): Promise<void> {
    const stream = world.relays[r]!.stream;
    while (n-- > 0 && this.cursor[r]! < stream.length) {
      const m = stream[this.cursor[r]!++]!;
      try {
        await this.intake.take(r, ++this.streamSeq, m.bytes);
      } catch (err) {
        this.fatal ??= err;
        return;
      }
    }
  }

  caughtUp(world: World, r: number): boolean {
    return this.cursor[r] === world.relays[r]!.stream.length;
  }
}

/** A primary: makes frames for its epoch and publishes them to every relay. */
class Primary {
  seq = 1;
  store: Map<string, string>;
  encoder = new ImageEncoder({ keyframeEvery: 3, maxChainShare: 10, compress: false });
  batch: WriteOp[] = [];
  openFrames = 0;
  openOps = 0;
  /** Per relay: messages it has not stored yet, in order (lost if this primary dies). */
  readonly backlog: Msg[][];
  /** Checkpoints sealed and not yet acknowledged: their messages. */
  readonly pending = new Map<number, Msg[]>();
  current: Msg[] = [];
  alive = true;

  constructor(
    readonly epoch: number,
    public nextCp: number,
    store: ReadonlyMap<string, string>,
    relays: number,
  ) {
    this.store = new Map(store);
    this.backlog = Array.from({ length: relays }, () => []);
  }
}

class World {
  readonly relays: Relay[];
  readonly need: number;
  readonly readQuorum: number;
  /** (epoch, checkpoint) → what it holds. */
  readonly snaps = new Map<string, Snap>([['0:0', { store: new Map(), state: { cp: 0, kv: {} } }]]);
  /** The agreed history below the last cut: checkpoint → epoch. */
  readonly history = new Map<number, number>();
  lastCut = 0;
  readonly acked: { epoch: number; checkpoint: number }[] = [];
  primary: Primary;
  zombie: Primary | undefined;
  observer: Node;
  takeovers = 0;
  /** The part size each frame was cut with (the republished copy is cut the same way). */
  readonly partBytes = new Map<string, number>();
  maxEpoch = 1;

  constructor(relays: number, need: number) {
    this.relays = Array.from({ length: relays }, () => ({ up: true, stream: [], ids: new Set() }));
    this.need = need;
    this.readQuorum = relays - need + 1;
    this.primary = new Primary(1, 1, new Map(), relays);
    this.observer = new Node(relays, need);
    this.publish(
      this.primary,
      this.frame(this.primary, FrameKind.Fence, 0, encodeFence({ nodeId: 'n1', cutoffEpoch: 0 })),
    );
    // A primary acts only once its fence is durable: `need` relays hold it, the rest lag.
    for (let r = 0; r < need; r++) this.land(this.primary, r);
  }

  frame(p: Primary, kind: FrameKind, checkpoint: number, body: Uint8Array): Frame {
    return { kind, epoch: p.epoch, seq: p.seq++, checkpoint, body };
  }

  /** Publishes a frame's parts to every relay (or that relay's backlog), dedupe ids as the relays do. */
  publish(p: Primary, f: Frame, maxPart = 1 << 20): Msg[] {
    this.partBytes.set(`${f.epoch}:${f.seq}`, maxPart);
    const msgs = encodeFrame(APP, f, maxPart).map((bytes, i): Msg => ({
      id: messageId(APP, f.epoch, f.seq, i),
      bytes,
      on: new Set(),
    }));
    for (const m of msgs) for (let r = 0; r < this.relays.length; r++) this.#send(p, r, m);
    return msgs;
  }

  /** Queues `m` for relay `r`: it lands there when the relay takes it (`land`), in order. */
  #send(p: Primary, r: number, m: Msg): void {
    p.backlog[r]!.push(m);
  }

  #store(r: number, m: Msg): void {
    const relay = this.relays[r]!;
    if (relay.ids.has(m.id)) {
      m.on.add(r); // a duplicate id inside the dedupe window: the relay keeps its first copy
      return;
    }
    relay.ids.add(m.id);
    relay.stream.push(m);
    m.on.add(r);
  }

  /**
   * Relay `r`, if up, takes the `k`-th message a live primary queued for it, ahead of the ones
   * before it (a publish that timed out is re-sent from the backlog after later ones landed).
   */
  landOne(p: Primary | undefined, r: number, k: number): void {
    const q = p?.backlog[r];
    if (!p || !q || q.length === 0 || !this.relays[r]!.up || !p.alive) return;
    const [m] = q.splice(k % q.length, 1);
    this.#store(r, m!);
  }

  /** Relay `r`, if up, takes up to `n` of the messages a live primary queued for it. */
  land(p: Primary | undefined, r: number, n = Infinity): void {
    if (!p || !this.relays[r]!.up || !p.alive) return;
    for (const m of p.backlog[r]!.splice(0, n)) this.#store(r, m);
  }

  /** Acks: a checkpoint is acknowledged once every message of it is on `need` relays. */
  noteAcks(): void {
    const p = this.primary;
    // Cumulative, like the replicator: a checkpoint resolves once every frame sent before its
    // seal is acknowledged, its own and every earlier checkpoint's.
    for (const [cp, msgs] of [...p.pending].sort((a, b) => a[0] - b[0])) {
      if (!msgs.every((m) => m.on.size >= this.need)) return;
      p.pending.delete(cp);
      this.acked.push({ epoch: p.epoch, checkpoint: cp });
    }
  }

  write(p: Primary, key: string, value: string | undefined): void {
    if (value === undefined) {
      p.store.delete(key);
      p.batch.push({ op: 'delete', key });
    } else {
      p.store.set(key, value);
      p.batch.push({ op: 'put', key, value: Buffer.from(value) });
    }
    p.openOps++;
  }

  flushWrites(p: Primary, maxPart: number): void {
    if (p.batch.length === 0) return;
    p.current.push(
      ...this.publish(p, this.frame(p, FrameKind.Writes, p.nextCp, encodeWrites(p.batch)), maxPart),
    );
    p.batch = [];
    p.openFrames++;
  }

  seal(p: Primary, maxPart: number): void {
    this.flushWrites(p, maxPart);
    const cp = p.nextCp++;
    const state = { cp, kv: Object.fromEntries([...p.store].sort()) };
    const { record } = p.encoder.encode(state, cp);
    const msgs = [
      ...p.current,
      ...this.publish(p, this.frame(p, FrameKind.Image, cp, encodeImage(record as ImageRecord)), maxPart),
      ...this.publish(
        p,
        this.frame(
          p,
          FrameKind.Seal,
          cp,
          encodeSeal({ writeFrames: p.openFrames, writeOps: p.openOps, imageFrames: 1 }),
        ),
        maxPart,
      ),
    ];
    p.current = [];
    p.openFrames = 0;
    p.openOps = 0;
    this.snaps.set(`${p.epoch}:${cp}`, { store: new Map(p.store), state });
    if (p === this.primary) p.pending.set(cp, msgs);
  }

  /**
   * A takeover by a brand-new node: it replays `reads` (a read quorum of the relays that are up,
   * or more) from the start, interleaved by `seed`, then runs the takeover's steps.
   */
  async takeover(seed: number, keepZombie: boolean): Promise<void> {
    const up = this.relays.flatMap((r, i) => (r.up ? [i] : []));
    // The real takeover waits for a read quorum and for the fence (and kept frames) to be durable.
    if (up.length < Math.max(this.readQuorum, this.need)) return;
    const rnd = mulberry(seed);
    const extra = up.length - this.readQuorum;
    const reads = shuffle(up, rnd).slice(0, this.readQuorum + Math.floor(rnd() * (extra + 1)));
    // The old primary is gone: its acknowledgements stop here; its backlog dies with it, unless it
    // lives on as a zombie (paused, not dead) that still sends what it had.
    this.noteAcks();
    const old = this.primary;
    const claimant = new Node(this.relays.length, this.need);
    await interleave(claimant, this, reads, rnd);
    await claimant.applier.relax();
    if (claimant.intake.stuck()) {
      // Reads every relay it can reach (the real one waits a while longer for them).
      await interleave(claimant, this, up, rnd);
      await claimant.applier.relax();
    }
    expect(claimant.fatal).toBeUndefined();
    // With a read quorum and the policy's relays up, everything agreed is there: refusing (or
    // resuming short of a fence's cut) would stop failover for good.
    expect(claimant.intake.stuck()).toBeUndefined();
    if (this.zombie) this.zombie.alive = false;
    this.zombie = undefined;
    if (keepZombie) this.zombie = old;
    else old.alive = false;
    const pos = claimant.applier.position;
    // No acknowledged checkpoint is lost, and the history below the last cut does not change.
    for (const a of this.acked) {
      expect(
        claimant.committed.get(a.checkpoint),
        `acknowledged checkpoint ${a.epoch}:${a.checkpoint} lost`,
      ).toBe(a.epoch);
    }
    for (const [cp, epoch] of this.history) {
      if (cp <= pos.checkpoint) expect(claimant.committed.get(cp), `history changed at ${cp}`).toBe(epoch);
    }
    expect(pos.checkpoint).toBeGreaterThanOrEqual(this.lastCut);
    // The new primary: kept frames it never saw durable are published again, then the fence.
    this.maxEpoch = Math.max(this.maxEpoch, claimant.applier.fenceEpoch) + 1;
    const next = new Primary(
      this.maxEpoch,
      pos.checkpoint + 1,
      this.snaps.get(`${pos.epoch}:${pos.checkpoint}`)!.store,
      this.relays.length,
    );
    for (const f of claimant.applier.takeUnconfirmed()) {
      // Same nodes, same settings: the codec cuts a frame into the same parts, under the same ids.
      const msgs = encodeFrame(APP, f, this.partBytes.get(`${f.epoch}:${f.seq}`)!).map((bytes, i): Msg => ({
        id: messageId(APP, f.epoch, f.seq, i),
        bytes,
        on: new Set(),
      }));
      for (const m of msgs) for (let r = 0; r < this.relays.length; r++) this.#send(next, r, m);
    }
    this.publish(
      next,
      this.frame(
        next,
        FrameKind.Fence,
        pos.checkpoint,
        encodeFence({ nodeId: `n${next.epoch}`, cutoffEpoch: pos.epoch }),
      ),
    );
    // The takeover waits until the policy's relays acknowledged all of it: exactly those take it
    // now (a random set of `need` relays that are up); the others lag behind.
    for (const r of shuffle(up, rnd).slice(0, this.need)) this.land(next, r);
    for (const cp of [...this.history.keys()]) if (cp > pos.checkpoint) this.history.delete(cp);
    for (const [cp, epoch] of claimant.committed) this.history.set(cp, epoch);
    this.lastCut = pos.checkpoint;
    this.primary = next;
    this.takeovers++;
  }

  /** The lagging standby's committed checkpoint is on the agreed history, store and image equal it. */
  async checkObserver(): Promise<void> {
    const o = this.observer;
    expect(o.fatal).toBeUndefined();
    const pos = o.applier.position;
    if (pos.checkpoint <= this.lastCut && pos.checkpoint > 0) {
      expect(
        this.history.get(pos.checkpoint),
        `standby committed ${pos.epoch}:${pos.checkpoint} off the agreed history`,
      ).toBe(pos.epoch);
    }
    const snap = this.snaps.get(`${pos.epoch}:${pos.checkpoint}`)!;
    expect(await dump(o.adapter)).toEqual(Object.fromEntries([...snap.store].sort()));
    if (pos.checkpoint === 0) expect(o.chain.materialize()).toBeUndefined();
    else expect(o.chain.materialize()).toEqual(snap.state);
  }
}

async function interleave(node: Node, world: World, relays: number[], rnd: () => number): Promise<void> {
  for (;;) {
    const open = relays.filter((r) => !node.caughtUp(world, r));
    if (open.length === 0 || node.fatal) return;
    await node.read(world, open[Math.floor(rnd() * open.length)]!, 1 + Math.floor(rnd() * 4));
  }
}

function shuffle<T>(xs: T[], rnd: () => number): T[] {
  const a = xs.slice();
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

async function dump(adapter: StorageAdapter): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const k of await adapter.keys()) out[k] = Buffer.from((await adapter.get(k))!).toString();
  return out;
}

type Model = Record<string, never>;
type Cmd = fc.AsyncCommand<Model, World>;

const cmd = (name: string, run: (w: World) => void | Promise<void>): Cmd => ({
  check: () => true,
  run: async (_m, w) => {
    await run(w);
    w.noteAcks();
    await w.checkObserver();
  },
  toString: () => name,
});

const keyArb = fc.constantFrom('a', 'b', 'c', 'd');
const partSize = fc.constantFrom(1 << 20, 1 << 20, 70);

const commands = fc.commands(
  [
    fc
      .tuple(keyArb, fc.option(fc.string({ maxLength: 4 }), { nil: undefined }))
      .map(([k, v]) => cmd(`write(${k}=${v ?? '∅'})`, (w) => w.write(w.primary, k, v))),
    partSize.map((p) => cmd(`seal(${p})`, (w) => w.seal(w.primary, p))),
    partSize.map((p) => cmd(`seal(${p})`, (w) => w.seal(w.primary, p))),
    fc.nat(7).map((r) =>
      cmd(`down(${r})`, (w) => {
        const relay = w.relays[r % w.relays.length]!;
        relay.up = false;
      }),
    ),
    fc.nat(7).map((r) =>
      cmd(`up(${r})`, (w) => {
        w.relays[r % w.relays.length]!.up = true;
      }),
    ),
    fc.tuple(fc.nat(7), fc.integer({ min: 1, max: 8 })).map(([r, n]) =>
      cmd(`land(${r},${n})`, (w) => {
        w.land(w.primary, r % w.relays.length, n);
        w.land(w.zombie, r % w.relays.length, n);
      }),
    ),
    fc
      .tuple(fc.nat(7), fc.integer({ min: 1, max: 8 }))
      .map(([r, n]) => cmd(`land(${r},${n})`, (w) => w.land(w.primary, r % w.relays.length, n))),
    fc
      .tuple(fc.nat(7), fc.nat(9))
      .map(([r, k]) => cmd(`landOne(${r},${k})`, (w) => w.landOne(w.primary, r % w.relays.length, k))),
    fc
      .tuple(fc.nat(7), fc.integer({ min: 1, max: 6 }))
      .map(([r, n]) => cmd(`read(${r},${n})`, (w) => w.observer.read(w, r % w.relays.length, n))),
    fc
      .tuple(fc.nat(), fc.boolean())
      .map(([seed, zombie]) =>
        cmd(`takeover(${seed},${zombie ? 'zombie' : 'killed'})`, (w) => w.takeover(seed, zombie)),
      ),
    fc.tuple(keyArb, fc.string({ maxLength: 4 })).map(([k, v]) =>
      cmd(`zombie(${k}=${v})`, (w) => {
        // A deposed primary that was paused, not dead, writes and seals on: void everywhere.
        const z = w.zombie;
        if (!z) return;
        w.write(z, k, v);
        w.seal(z, 1 << 20);
      }),
    ),
    fc.constant(cmd('restartStandby', (w) => void (w.observer = new Node(w.relays.length, w.need)))),
  ],
  { maxCommands: 80, size: 'large' },
);

const shapes = [
  { relays: 3, need: 2, name: '3 relays, quorum' },
  { relays: 3, need: 3, name: "3 relays, 'all'" },
  { relays: 2, need: 1, name: '2 relays, { count: 1 }' },
] as const;

describe.each(shapes)('failover model ($name)', ({ relays, need }) => {
  it(
    'no acknowledged checkpoint is lost across takeovers; a lagging standby stays on the agreed history and catches up',
    async () => {
      const stats = { runs: 0, takeovers: 0, acked: 0, committed: 0 };
      await fc.assert(
        fc.asyncProperty(commands, async (cmds) => {
          const w = new World(relays, need);
          await w.observer.adapter.open();
          await fc.asyncModelRun(() => ({ model: {}, real: w }), cmds);
          // Liveness: every relay back, the primary's backlog flushed, one more checkpoint, and
          // everything read: the standby commits the last checkpoint and is not stuck.
          for (let r = 0; r < w.relays.length; r++) {
            w.relays[r]!.up = true;
            w.land(w.primary, r);
            w.land(w.zombie, r);
          }
          w.seal(w.primary, 1 << 20);
          for (let r = 0; r < w.relays.length; r++) w.land(w.primary, r);
          w.noteAcks();
          for (let round = 0; round < 3; round++) {
            for (let r = 0; r < w.relays.length; r++) await w.observer.read(w, r);
          }
          await w.checkObserver();
          expect(w.observer.intake.stuck()).toBeUndefined();
          expect(w.observer.applier.position.checkpoint).toBe(w.primary.nextCp - 1);
          stats.runs++;
          stats.takeovers += w.takeovers;
          stats.acked += w.acked.length;
          stats.committed += w.observer.applier.position.checkpoint;
        }),
        { numRuns: RUNS },
      );
      // The runs exercised what they are meant to: takeovers and acknowledged checkpoints.
      expect(stats.takeovers).toBeGreaterThan(stats.runs / 2);
      expect(stats.acked).toBeGreaterThan(stats.runs);
      console.log(relays, need, stats);
    },
    FUZZ_RUNS > 0 ? 3_600_000 : 120_000,
  );
});
