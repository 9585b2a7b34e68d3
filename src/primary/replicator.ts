/**
 * The primary's write path: the counterpart of standby/applier.ts.
 *
 * `put` / `delete` go to the local store and into the open write batch; full batches become
 * write frames published at once, many in flight (seed claim 18: writes are sent
 * asynchronously, not one round trip each). `checkpoint(state)` closes the open checkpoint:
 * it flushes the batch, ships the image (keyframe or delta) and a seal naming how many frames
 * the checkpoint holds, and resolves when the relay has acked every frame up to the seal and
 * the lease was still valid at that moment.
 *
 * Frames that failed to publish are kept and sent again (same dedupe id) before the next seal,
 * so a later checkpoint can only be acknowledged once every earlier frame is durable.
 */
import { FencedError, ReplicationError, RestartpointError, StorageError } from '../errors.js';
import { FrameKind, type Frame } from '../protocol/frame.js';
import { IMAGE_HEADER_BYTES, WritesBuilder, encodeImage, encodeSeal } from '../protocol/records.js';
import type { EncodedImage, ImageEncoder, ImagePath } from '../image/chain.js';
import type { StorageAdapter, WriteOp } from '../storage/adapter.js';
import { DEFAULT_LIMITS, limitError, type Limits } from '../limits.js';
/** Where the replicator sends frames: a relay set, or one relay's publisher. */
export interface FrameSink {
  /** Resolves when the frame is durable under the ack policy; rejects with `ReplicationError`. */
  publish(frame: Frame): Promise<unknown>;
  /** Resolves when there is room for more frames in flight. */
  ready(): Promise<void>;
  /** Sends nothing more, re-sends included (a demoted or closed primary). */
  halt?(): void;
}

/** A restart point the relay acknowledged. */
export interface CheckpointAck {
  readonly epoch: number;
  readonly checkpoint: number;
}

/** Figures of the last checkpoint, for metrics and the drill. */
export interface CheckpointStats {
  readonly checkpoint: number;
  /** Image payload bytes as shipped (after compression). */
  readonly imageBytes: number;
  /** Image payload bytes before compression. */
  readonly imageRawBytes: number;
  readonly keyframe: boolean;
  /** How the image was found: a keyframe, or a delta by the tracked, identity or diff path. */
  readonly imagePath: ImagePath;
  readonly writeOps: number;
  readonly writeFrames: number;
  /** Bytes of the write frames' bodies (keys and values as encoded). */
  readonly writeBytes: number;
  readonly ms: number;
}

/** Options of a replicator. */
export interface ReplicatorOptions {
  readonly epoch: number;
  /** The checkpoint number the first `checkpoint()` gets. */
  readonly firstCheckpoint: number;
  /** Sequence number of the first frame (the fence took 1). */
  readonly firstSeq: number;
  readonly adapter: StorageAdapter;
  readonly publisher: FrameSink;
  readonly images: ImageEncoder;
  /** Flush the write batch once it holds this many bytes. */
  readonly batchBytes: number;
  /** Whether the lease still allows acknowledging; checked after the acks arrive. */
  readonly leaseValid: () => boolean;
  /** The error explaining why this node is no longer primary. */
  readonly fencedError: () => FencedError;
  /** Called with the figures of every acknowledged checkpoint, in acknowledgement order. */
  readonly onAck?: (stats: CheckpointStats) => void;
  /**
   * The local store refused a write with a `StorageError` (its data lost, a timeout, unreachable):
   * the owner steps down. Called once per failed group, before the writes' promises reject.
   */
  readonly onStoreFailure?: (err: StorageError) => void;
  /** Writes per checkpoint, image and frame sizes refused with `LimitError`. Default: `DEFAULT_LIMITS`. */
  readonly limits?: Pick<Limits, 'maxWritesPerCheckpoint' | 'maxImageBytes' | 'maxFrameBytes'>;
}

/**
 * A write frame being filled. Its body is built as the writes are called (each value copied
 * once, into the body); it goes out once it is closed and the store answered every op in it.
 */
interface Staged {
  /** The checkpoint its writes belong to. */
  readonly checkpoint: number;
  readonly body: WritesBuilder;
  /** Sum of the appended ops' encoded sizes (ops refused later included). */
  size: number;
  /** Ops appended that the local store has not answered yet. */
  unsettled: number;
  /** Takes no more ops: full, its checkpoint was called, or the writes paused. */
  closed: boolean;
}

type QueueItem =
  | {
      readonly kind: 'write';
      /** The op, its value a view of its copy in the frame body. */
      readonly op: WriteOp;
      readonly staged: Staged;
      /** Where the op's record is in the body (cut out if the store refuses the op). */
      readonly start: number;
      readonly end: number;
      /** Settle the caller's promise (after the publisher's `ready()` of the write's group). */
      resolve(): void;
      reject(err: unknown): void;
    }
  | { readonly kind: 'mark'; run(): void };

/** A store call that took this long went over the network (see `#drain`). */
const REMOTE_STORE_MS = 0.1;

/** A settled frame goes out at once while the relay is idle from 1/EAGER_SHARE of `batchBytes`. */
const EAGER_SHARE = 8;

/** Most ops handed to the store in one `apply` call. */
const MAX_APPLY_OPS = 1000;

interface Pending {
  /** A promise while the frame's body is still being made (an image compressed off-thread). */
  readonly frame: Frame | Promise<Frame>;
  ack: Promise<unknown>;
  failed: boolean;
}

/** One primary's run, from takeover to demotion or close. */
export class Replicator {
  readonly #o: ReplicatorOptions;
  #seq: number;
  /** Next checkpoint number `checkpoint()` hands out (call side). */
  #next: number;
  /** Checkpoint the writes now flowing through the chain belong to (chain side). */
  #open: number;
  /** Write frames not sent yet, in call order; the last may be `#staging`. */
  readonly #staged: Staged[] = [];
  /** The write frame new writes go into, if one is open. */
  #staging: Staged | undefined;
  /** Body bytes the next write frame is allocated with (follows the write rate). */
  #capacity = 16 * 1024;
  #openWriteFrames = 0;
  #openWriteOps = 0;
  #openWriteBytes = 0;
  #flushTimer: NodeJS.Timeout | undefined;
  /** A `#sendGroup` waiting for the next turn of the event loop (a remote store's group). */
  #sendTimer: NodeJS.Immediate | undefined;
  /** Frames not yet acked. */
  readonly #pending = new Set<Pending>();
  /**
   * Every write and every seal passes through this one queue, in call order: a checkpoint
   * seals exactly the writes called before it, whatever the app awaits or not. Writes queued
   * together reach the store in one `adapter.apply` call when the adapter has it (a Redis
   * pipeline, a multi-row insert), so an app that does not await each put gets group commits.
   */
  readonly #queue: QueueItem[] = [];
  #draining: Promise<void> | undefined;
  #stopped: RestartpointError | undefined;
  lastStats: CheckpointStats | undefined;
  readonly #limits: NonNullable<ReplicatorOptions['limits']>;

  constructor(opts: ReplicatorOptions) {
    this.#o = opts;
    this.#limits = opts.limits ?? DEFAULT_LIMITS;
    this.#seq = opts.firstSeq;
    this.#next = opts.firstCheckpoint;
    this.#open = opts.firstCheckpoint;
  }

  /** The number the next `checkpoint()` call gets. */
  get nextCheckpoint(): number {
    return this.#next;
  }

  /** Frames published and not yet acknowledged. */
  get unacked(): number {
    return this.#pending.size;
  }

  /** Stops accepting work; later calls reject with `err`. */
  stop(err: RestartpointError): void {
    this.#stopped ??= err;
    clearTimeout(this.#flushTimer);
    clearImmediate(this.#sendTimer);
    this.#sendTimer = undefined;
    // A deposed primary must not keep re-sending its backlog to relays that missed frames.
    this.#o.publisher.halt?.();
  }

  /** `write` copies a put's value (into the frame) before it returns: callers need not. */
  readonly copiesValues = true;

  /**
   * Queues a write: applied to the local store in call order, then batched for the relay.
   * Resolves when the local store has it (not the relay: only `checkpoint()` waits for that).
   * A write the local store refuses is rejected and not replicated. A put's value is copied
   * into its write frame now, once; the store gets that copy, so a caller may reuse its buffer
   * as soon as this returns.
   */
  write(op: WriteOp): Promise<void> {
    if (this.#stopped) return Promise.reject(this.#stopped);
    const keyBytes = Buffer.byteLength(op.key, 'utf8');
    const size = op.op === 'put' ? 9 + keyBytes + op.value.byteLength : 5 + keyBytes;
    if (size + 4 > this.#limits.maxFrameBytes) {
      return Promise.reject(
        limitError('maxFrameBytes', 'a write frame of this one op', size + 4, this.#limits.maxFrameBytes),
      );
    }
    const s = this.#staging ?? this.#stage(size);
    const { op: staged, start, end } = s.body.append(op, keyBytes);
    s.size += size;
    s.unsettled++;
    if (s.size >= this.#o.batchBytes) this.#close(s);
    // One promise per write: it settles once the store has the write and the publisher's
    // `ready()`, taken once for the whole group of writes drained together, resolved.
    const applied = new Promise<void>((resolve, reject) =>
      this.#queue.push({ kind: 'write', op: staged, staged: s, start, end, resolve, reject }),
    );
    this.#kick();
    return applied;
  }

  /** Opens a write frame for the checkpoint being called, with room for at least `size`. */
  #stage(size: number): Staged {
    const s: Staged = {
      checkpoint: this.#next,
      body: new WritesBuilder(Math.max(size + 4, this.#capacity)),
      size: 0,
      unsettled: 0,
      closed: false,
    };
    this.#staging = s;
    this.#staged.push(s);
    return s;
  }

  /** Closes a write frame to new writes; the next one is sized after it. */
  #close(s: Staged): void {
    s.closed = true;
    if (this.#staging === s) this.#staging = undefined;
    // A full frame may pass `batchBytes` by its last op: leave room for a small one.
    const full = this.#o.batchBytes + 4096;
    this.#capacity = Math.min(full, Math.max(4096, 2 * s.body.bytes));
  }

  /** Runs `run` after every write queued before it reached the store; resolves with its result. */
  #mark<T>(run: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#queue.push({
        kind: 'mark',
        run: () => {
          try {
            resolve(run());
          } catch (err) {
            reject(err);
          }
        },
      });
      this.#kick();
    });
  }

  #kick(): void {
    // Started a microtask later, not at once: the writes an app calls in one synchronous run
    // (a loop of puts) then reach the store as one group. Started at once, the first write of
    // such a run went to the store alone, and the rest followed as a second group: one more
    // store round trip per burst (Redis: 1 + 99 ops for a burst of 100).
    this.#draining ??= Promise.resolve()
      .then(() => this.#drain())
      .finally(() => {
        this.#draining = undefined;
        if (this.#queue.length > 0) this.#kick();
      });
  }

  async #drain(): Promise<void> {
    while (this.#queue.length > 0) {
      const head = this.#queue[0]!;
      if (head.kind === 'mark') {
        this.#queue.shift();
        // Frames a remote store's group left for the next turn go first: a mark (a checkpoint's
        // seal, `drain()`) finds every frame the store answered before it sent.
        if (this.#sendTimer !== undefined) {
          clearImmediate(this.#sendTimer);
          this.#sendGroup();
        }
        head.run();
        continue;
      }
      let n = 0;
      while (n < this.#queue.length && n < MAX_APPLY_OPS && this.#queue[n]!.kind === 'write') n++;
      let group = this.#queue.splice(0, n) as Extract<QueueItem, { kind: 'write' }>[];
      // Writes past the checkpoint's limit are refused before they reach the local store, so the
      // store never holds a write the standbys will not get. A mark (checkpoint) ends the group,
      // so the count of the open checkpoint is exact here.
      const room = this.#limits.maxWritesPerCheckpoint - this.#openWriteOps;
      if (group.length > room) {
        const max = this.#limits.maxWritesPerCheckpoint;
        for (const g of group.slice(Math.max(0, room))) {
          this.#refuse(g, limitError('maxWritesPerCheckpoint', 'write ops in this checkpoint', max + 1, max));
        }
        group = group.slice(0, Math.max(0, room));
        if (group.length === 0) {
          this.#sendSettled();
          continue;
        }
      }
      const ops = new Array<WriteOp>(group.length);
      for (let i = 0; i < group.length; i++) ops[i] = group[i]!.op;
      const appliedFrom = performance.now();
      const ok = await this.#applyLocally(ops);
      const remote = performance.now() - appliedFrom >= REMOTE_STORE_MS;
      const accepted: typeof group = [];
      for (let i = 0; i < group.length; i++) {
        const g = group[i]!;
        const err = this.#stopped ?? ok[i];
        if (err !== undefined) {
          this.#refuse(g, err);
          continue;
        }
        g.staged.unsettled--;
        this.#openWriteOps++;
        accepted.push(g);
      }
      // The local store failed (lost its data, timed out, unreachable): this node must not go on
      // acknowledging checkpoints whose writes its own store does not hold. (After the writes got
      // the store's own error.)
      if (accepted.length < group.length) {
        const failed = ok.find((e) => e instanceof StorageError);
        if (failed !== undefined && !this.#stopped) this.#o.onStoreFailure?.(failed as StorageError);
      }
      // A store that answered over the network (Redis, PostgreSQL): the frames go out in the next
      // turn of the event loop, once the writes settled below let the app send its next group to
      // the store, so that publishing overlaps the store's next round trip. A store in memory
      // answers at once: its frames go now, or the relay would idle until the next checkpoint.
      if (remote) this.#sendTimer ??= setImmediate(() => this.#sendGroup());
      else this.#sendGroup();
      if (accepted.length > 0) {
        // One `then` for the group: the writes settle with the publisher's `ready()`.
        this.#o.publisher.ready().then(
          () => {
            for (const g of accepted) g.resolve();
          },
          (err: unknown) => {
            for (const g of accepted) g.reject(err);
          },
        );
      }
    }
  }

  /** Sends the frames the store has answered, and the open one too while the relay is idle. */
  #sendGroup(): void {
    this.#sendTimer = undefined;
    this.#sendSettled();
    const open = this.#staging;
    if (open === undefined || open.unsettled > 0 || open.body.count === 0) return;
    // Group commit: with nothing of ours in flight the relay is idle, and a frame of at least an
    // eighth of `batchBytes` goes now (a store's next round trip then overlaps the relay's ack of
    // this one); otherwise it fills up to `batchBytes`, or goes once the writes pause. The floor
    // keeps a writer that awaits each put from sending a frame per write: with Redis, one every
    // 1–2 writes, +18 % stream bytes for 16-byte values, and no gain.
    if (this.#pending.size === 0 && open.size >= this.#o.batchBytes / EAGER_SHARE) {
      this.#close(open);
      this.#sendSettled();
    } else {
      this.#flushTimer ??= setTimeout(() => this.#flushIdle(), 5);
    }
  }

  /** A write the store (or a limit) refused: out of its frame, its caller rejected. */
  #refuse(g: Extract<QueueItem, { kind: 'write' }>, err: unknown): void {
    g.staged.unsettled--;
    g.staged.body.exclude(g.start, g.end);
    g.reject(err);
  }

  /**
   * Applies ops to the local store in order; returns, per op, `undefined` or the error that
   * refused it. A failed group call is retried op by op, so each op gets its own answer.
   */
  async #applyLocally(ops: WriteOp[]): Promise<(unknown | undefined)[]> {
    const adapter = this.#o.adapter;
    if (adapter.apply && ops.length > 1) {
      try {
        await adapter.apply(ops);
        return new Array<undefined>(ops.length);
      } catch {
        // fall through: find out which op the store refuses
      }
    }
    const out: (unknown | undefined)[] = [];
    for (const op of ops) {
      try {
        await (op.op === 'put' ? adapter.put(op.key, op.value) : adapter.delete(op.key));
        out.push(undefined);
      } catch (err) {
        out.push(err);
      }
    }
    return out;
  }

  /** The writes paused: the open write frame goes out as it is, once the store has its ops. */
  #flushIdle(): void {
    this.#flushTimer = undefined;
    const open = this.#staging;
    if (open === undefined || open.unsettled > 0) return;
    this.#close(open);
    this.#sendSettled();
  }

  /**
   * Publishes, in order, the write frames that are closed and whose every op the store
   * answered (the ops it refused are left out; a frame left empty is not sent).
   */
  #sendSettled(): void {
    const staged = this.#staged;
    while (staged.length > 0) {
      const s = staged[0]!;
      if (!s.closed || s.unsettled > 0) return;
      staged.shift();
      if (s.body.count === 0 || this.#stopped) continue;
      if (s.checkpoint !== this.#open) {
        throw new Error(`internal: write frame of checkpoint ${s.checkpoint} while ${this.#open} is open`);
      }
      const body = s.body.finish();
      this.#openWriteFrames++;
      this.#openWriteBytes += body.byteLength;
      this.#send({
        kind: FrameKind.Writes,
        epoch: this.#o.epoch,
        seq: this.#seq++,
        checkpoint: s.checkpoint,
        body,
      });
    }
  }

  #send(frame: Frame | Promise<Frame>): void {
    const p: Pending = { frame, ack: Promise.resolve(), failed: false };
    this.#publish(p);
    this.#pending.add(p);
  }

  #publish(p: Pending): void {
    p.failed = false;
    const frame = p.frame;
    // Frames ready now are handed to the publisher now, in call order.
    const published =
      frame instanceof Promise
        ? frame.then((f) => this.#o.publisher.publish(f))
        : this.#o.publisher.publish(frame);
    p.ack = published.then(
      () => {
        this.#pending.delete(p);
      },
      (err: unknown) => {
        p.failed = true;
        throw err;
      },
    );
    // Handled when a checkpoint awaits it; keep Node from reporting it as unhandled meanwhile.
    p.ack.catch(() => undefined);
  }

  /**
   * Closes the open checkpoint with `state` as its image; see the class comment. The image is
   * taken from `state` now, synchronously, so later mutations of `state` are not part of it.
   */
  checkpoint(state: unknown): Promise<CheckpointAck> {
    if (this.#stopped) return Promise.reject(this.#stopped);
    if (!this.#o.leaseValid()) return Promise.reject(this.#o.fencedError());
    const t0 = performance.now();
    const n = this.#next;
    let image: EncodedImage;
    try {
      // A state that cannot be serialized leaves everything as it was: no number is used up.
      image = this.#o.images.encode(state, n);
    } catch (err) {
      return Promise.reject(err);
    }
    // Refused before a number is used up; the encoder forgets the image it just took as a base,
    // so the next checkpoint is a keyframe and no delta is ever made against an unsent image.
    const tooBig =
      image.rawBytes > this.#limits.maxImageBytes
        ? limitError(
            'maxImageBytes',
            `the image of checkpoint ${n} (bytes)`,
            image.rawBytes,
            this.#limits.maxImageBytes,
          )
        : image.rawBytes + IMAGE_HEADER_BYTES > this.#limits.maxFrameBytes
          ? limitError(
              'maxFrameBytes',
              `the image frame of checkpoint ${n} (bytes)`,
              image.rawBytes + IMAGE_HEADER_BYTES,
              this.#limits.maxFrameBytes,
            )
          : undefined;
    if (tooBig) {
      this.#o.images.reset();
      return Promise.reject(tooBig);
    }
    this.#next = n + 1;
    // Writes called from now on belong to the next checkpoint: they go into a new frame.
    if (this.#staging) this.#close(this.#staging);
    const sealed = this.#mark(() => {
      if (this.#stopped) throw this.#stopped;
      clearTimeout(this.#flushTimer);
      this.#flushTimer = undefined;
      // Every write called before this checkpoint has its answer from the store now.
      this.#sendSettled();
      if (this.#staged[0] !== undefined && this.#staged[0].checkpoint <= n) {
        throw new Error(`internal: writes of checkpoint ${n} not sent at its seal`);
      }
      const counts = { writeFrames: this.#openWriteFrames, writeOps: this.#openWriteOps, imageFrames: 1 };
      const writeBytes = this.#openWriteBytes;
      // Re-send what failed before, with the same ids: the stream drops copies that did land.
      for (const p of this.#pending) if (p.failed) this.#publish(p);
      const epoch = this.#o.epoch;
      // A large image is still being compressed off the event loop: its frame keeps its number
      // and goes out when ready (the standby waits for every frame a seal names).
      const imageHeader = { kind: FrameKind.Image, epoch, seq: this.#seq++, checkpoint: n } as const;
      const record = image.record;
      // An off-thread keyframe comes with its record body made in the worker (no copy here).
      this.#send(
        image.body !== undefined
          ? image.body.then((body) => ({ ...imageHeader, body }))
          : record instanceof Promise
            ? record.then((r) => ({ ...imageHeader, body: encodeImage(r) }))
            : { ...imageHeader, body: encodeImage(record) },
      );
      this.#send({ kind: FrameKind.Seal, epoch, seq: this.#seq++, checkpoint: n, body: encodeSeal(counts) });
      this.#open = n + 1;
      this.#openWriteFrames = 0;
      this.#openWriteOps = 0;
      this.#openWriteBytes = 0;
      return { counts, writeBytes, acks: [...this.#pending].map((p) => p.ack) };
    });
    return sealed.then(async ({ counts, writeBytes, acks }) => {
      try {
        await Promise.all(acks);
      } catch (err) {
        throw err instanceof RestartpointError
          ? err
          : new ReplicationError(`checkpoint ${n} not acknowledged: ${(err as Error).message}`, {
              cause: err,
            });
      }
      if (this.#stopped) throw this.#stopped;
      // The lease must still be ours now: an ack that arrives after it ran out may sit behind the
      // new primary's fence, and acknowledging it would promise what failover will not keep.
      if (!this.#o.leaseValid()) throw this.#o.fencedError();
      this.lastStats = {
        checkpoint: n,
        imageBytes: (await image.record).payload.byteLength,
        imageRawBytes: image.rawBytes,
        keyframe: image.keyframe,
        imagePath: image.path,
        writeOps: counts.writeOps,
        writeFrames: counts.writeFrames,
        writeBytes,
        ms: performance.now() - t0,
      };
      this.#o.onAck?.(this.lastStats);
      return { epoch: this.#o.epoch, checkpoint: n };
    });
  }

  /**
   * Waits until every write and checkpoint called so far has been handed to the relay and every
   * frame sent has been acknowledged or has failed. Never rejects.
   */
  async drain(): Promise<void> {
    await this.#mark(() => undefined);
    await Promise.allSettled([...this.#pending].map((p) => p.ack));
  }
}
