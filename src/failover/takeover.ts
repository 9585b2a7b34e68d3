/**
 * Promotion: how a hot standby becomes the primary, as named steps, each timed.
 *
 * ```text
 * standby ─► claim ─► catch up ─► roll back ─► fence ─► restore ─► primary
 *            (CAS,    (read       (drop what   (publish (image →
 *            epoch+1)  quorum)     never       the cut,  live state)
 *                                  sealed)     durable)
 * ```
 *
 * 1. **claim** — wait until the lease is vacant, catch up once (so the new epoch is above every
 *    fence in the relays), then take the lease by compare-and-set with the next epoch;
 * 2. **catch up** — everything acknowledged was stored before the claim (the old primary acks
 *    only while its lease holds): read a read quorum of relays to the end;
 * 3. **roll back** — commit every complete sealed checkpoint seen, durable-looking or not
 *    (nothing can be added to the old epoch now), then drop what never sealed (delay-write) or
 *    release the areas written after the last formed snapshot (snapshot mode);
 * 4. **fence** — publish the fence naming the cut, until it is durable under the policy;
 * 5. **restore** — turn the materialized image into the live state.
 *
 * Each step reports its duration (`TakeoverStats`). A step that fails releases the lease so
 * another node can take over, and rejects.
 */
import {
  FencedError,
  ReplicationError,
  StorageError,
  StoreLostError,
  type RestartpointError,
} from '../errors.js';
import { FrameKind } from '../protocol/frame.js';
import { encodeFence } from '../protocol/records.js';
import type { StandbyRunner } from '../standby/runner.js';
import { encodeMeta, type AppliedPosition, type ApplyMode } from '../standby/applier.js';
import type { StorageAdapter } from '../storage/adapter.js';
import type { LeaseStore } from '../transport/lease-store.js';
import { readSwitchover } from '../transport/presence.js';
import type { Frame } from '../protocol/frame.js';
import type { TakeoverStats } from '../types.js';
import { claimWhenVacant, LeaseKeeper, now, type Claim } from './lease.js';

/** The states a takeover moves through, as the reporter names them. */
export type TakeoverState = 'standby' | 'claiming' | 'catching-up' | 'fencing' | 'restoring';

/** What a takeover needs: the standby it promotes and the parts around it. */
export interface TakeoverOptions<S> {
  readonly app: string;
  readonly nodeId: string;
  readonly leaseTtlMs: number;
  readonly mode: ApplyMode;
  readonly storage: StorageAdapter;
  readonly standby: StandbyRunner;
  /** Relays this many read have seen every acknowledged frame. */
  readonly readQuorum: number;
  /** Publishes a frame under the ack policy (the fence). */
  readonly publish: (frame: Frame) => Promise<void>;
  readonly lease: LeaseStore;
  /** The lease bucket (a switchover request lives beside the lease). */
  readonly kv: Parameters<typeof readSwitchover>[0];
  /** Refuses to resume from `checkpoint` (an image this node cannot read): checked before the fence. */
  readonly resumeProblem: (checkpoint: number) => RestartpointError | undefined;
  /**
   * Why this node must not take over at all (a rolling upgrade: its image or the relays' frames
   * are newer than its build), or undefined. Checked before the claim: while it says why, the
   * node stays a standby and never claims, fences or rolls anything back.
   */
  readonly resumeBlocked?: () => string | undefined;
  /** The live state to resume `checkpoint` from. */
  readonly restore: (checkpoint: number) => Promise<S>;
  readonly transition: (to: TakeoverState, reason?: string) => void;
  readonly log: (e: {
    level: 'debug' | 'info' | 'warn' | 'error';
    msg: string;
    [k: string]: unknown;
  }) => void;
  /**
   * How the store is checked before this node resumes from it: `'quick'` (identity token and key
   * count, O(1)), `'full'` (every key and value against the digest of what was committed, O(store)),
   * or `'off'`.
   */
  readonly verifyStore: 'quick' | 'full' | 'off';
  /** Deadline of each store step of the takeover (verify, rollback, the final commit, restore). */
  readonly storeTimeoutMs: number;
  /** Aborts the wait for the lease (the standby is being stopped). */
  readonly signal?: AbortSignal;
  /** Called once the lease is ours, with its epoch (before catch-up). */
  readonly onClaimed?: (claim: Claim) => void;
  /** Called when the lease is lost after the claim (the keeper's `onLost`). */
  readonly onLost: (err: FencedError) => void;
}

/** A finished takeover: the lease, where the app resumes, and how long each step took. */
export interface Promotion<S> {
  readonly claim: Claim;
  readonly keeper: LeaseKeeper;
  readonly position: AppliedPosition;
  readonly state: S;
  readonly stats: TakeoverStats;
}

/**
 * Runs the takeover steps in order and resolves once this node may act as primary. Rejects when
 * aborted (`signal`), when the standby fails, or when a step fails (the lease is then released).
 */
export async function takeOver<S>(o: TakeoverOptions<S>): Promise<Promotion<S>> {
  const claim = await claimStep(o);
  const claimedAt = now();
  o.onClaimed?.(claim);
  let lost: FencedError | undefined;
  const keeper = new LeaseKeeper(o.lease, claim, o.leaseTtlMs, (err) => {
    lost = err;
    o.onLost(err);
  });
  try {
    o.transition('catching-up', claim.previous ? `lease of ${claim.previous} ran out` : 'lease vacant');
    await catchUpStep(o);
    const caughtUpAt = now();
    const position = await deadline(o, 'rolling the store back', rollBackStep(o));
    await deadline(o, 'verifying the store', verifyStep(o, position));
    const rolledBackAt = now();
    const problem = o.resumeProblem(position.checkpoint);
    if (problem) throw problem;
    if (o.signal?.aborted) throw o.signal.reason;
    o.transition('fencing');
    await confirmStep(o, keeper);
    await fenceStep(o, claim.epoch, position, keeper);
    const fencedAt = now();
    o.transition('restoring');
    const state = await deadline(o, 'restoring the image', o.restore(position.checkpoint));
    const restoredAt = now();
    await deadline(
      o,
      'recording the new role in the store',
      o.storage.commit(
        [],
        encodeMeta({
          app: o.app,
          epoch: claim.epoch,
          checkpoint: position.checkpoint,
          streamSeq: 0,
          role: 'primary',
        }),
      ),
    );
    if (lost) throw lost;
    return {
      claim,
      keeper,
      position,
      state,
      stats: {
        detectMs: Math.max(0, claimedAt - claim.vacantSince),
        catchUpMs: caughtUpAt - claimedAt,
        rollbackMs: rolledBackAt - caughtUpAt,
        fenceMs: fencedAt - rolledBackAt,
        restoreMs: restoredAt - fencedAt,
        previous: claim.previous,
      },
    };
  } catch (err) {
    // Whatever failed, the lease must not stay with a node that will not serve.
    await keeper.stop(true);
    throw err;
  }
}

/**
 * Step 1: waits until the lease is vacant and takes it, racing a standby failure and the abort
 * signal. Before the claim, the standby catches up once so that the new epoch is above every
 * fence in the relays.
 */
async function claimStep<S>(o: TakeoverOptions<S>): Promise<Claim> {
  const stop = new AbortController();
  const onAbort = (): void => stop.abort(o.signal?.reason);
  o.signal?.addEventListener('abort', onAbort, { once: true });
  if (o.signal?.aborted) onAbort();
  try {
    return await Promise.race([
      claimWhenVacant({
        store: o.lease,
        holder: o.nodeId,
        ttlMs: o.leaseTtlMs,
        knownEpoch: () => o.standby.applier.fenceEpoch,
        beforeClaim: async () => {
          // A node that just handed its role over lets the standby it handed to claim first.
          await yieldAfterSwitchover(o.kv, o.lease, o.nodeId, o.leaseTtlMs, stop.signal);
          for (;;) {
            await waitWhileBlocked(o, stop.signal);
            o.transition('claiming', 'lease vacant');
            // Taking over: pacing ends here, the catch-up runs at full speed.
            o.standby.unpace();
            await o.standby.catchUp(o.readQuorum);
            // What the catch-up brought in may be newer than this build: then it does not claim.
            if (!o.resumeBlocked?.()) return;
          }
        },
        signal: stop.signal,
        onError: (err) => o.log({ level: 'warn', msg: 'lease read failed', error: String(err) }),
        onLostRace: () => o.transition('standby', 'another node claimed the lease first'),
      }),
      o.standby.failed(),
    ]);
  } finally {
    stop.abort();
    o.signal?.removeEventListener('abort', onAbort);
  }
}

/**
 * Step 2: reads a read quorum of relays to the end and commits every complete sealed checkpoint
 * seen, durable-looking or not (nothing can be added to the old epoch now). If that leaves this
 * node short of what it knows was agreed (`Applier.stuck()`: a fence whose cut it never reached, a
 * gap), it reads every relay it can reach for a while longer; still stuck, it refuses (the lease
 * is released, so a node that has the frames can take over) rather than cut the history short.
 */
async function catchUpStep<S>(o: TakeoverOptions<S>): Promise<void> {
  const { standby } = o;
  standby.unpace();
  await standby.catchUp(o.readQuorum);
  // A read quorum is enough to miss nothing acknowledged; the relays beyond it, read briefly too,
  // add the witnesses that spare re-publishing checkpoints which are durable already.
  // Only relays whose connection is up: one that is down is not waited for at all.
  const up = standby.connectedRelays;
  if (up > o.readQuorum) await boundedCatchUp(standby, up, Math.min(500, o.leaseTtlMs / 2));
  await standby.relax();
  let stuck = standby.intake.stuck();
  if (stuck) {
    o.log({ level: 'warn', msg: 'missing frames after catch-up, reading every relay', reason: stuck });
    const all = standby.relayCount;
    const waitMs = Math.max(2_000, 2 * o.leaseTtlMs);
    await boundedCatchUp(standby, all, waitMs);
    stuck = standby.intake.stuck();
  }
  await standby.stop();
  if (stuck) {
    throw new ReplicationError(
      `node '${o.nodeId}' cannot take over: ${stuck}. It released the lease; a node that read the missing frames can take over (restart this one to rebuild from the relays, and check that no relay lost data)`,
    );
  }
}

/**
 * Step 3a: the store must hold exactly what this node committed before it resumes from it (a
 * flushed Redis, a truncated table, a damaged file are caught here, not after the app resumed).
 * A mismatch refuses the takeover with a `StoreLostError`: the lease is released so another node
 * can take over, and the SDK rebuilds this node's store from the relays and stands by again
 * (src/standby/rebuild.ts).
 */
async function verifyStep<S>(o: TakeoverOptions<S>, position: AppliedPosition): Promise<void> {
  if (o.verifyStore === 'off') return;
  const v = await o.storage.verify({ quick: o.verifyStore === 'quick' });
  if (v.status === 'mismatch') {
    throw new StoreLostError(
      `node '${o.nodeId}' cannot take over: its ${o.storage.kind} store does not hold what it committed up to checkpoint ${position.checkpoint} (${v.detail}). It released the lease so another node can take over, and rebuilds its store from the relays; find out what changed the store underneath it`,
    );
  }
  if (v.status === 'unrecorded') {
    o.log({ level: 'warn', msg: 'store not verifiable (no digest recorded)', detail: v.detail });
  }
}

/** Rejects with a retryable `StorageError` when `step` takes longer than `storeTimeoutMs`. */
async function deadline<S, T>(o: TakeoverOptions<S>, what: string, step: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new StorageError(
            `takeover step '${what}' took longer than storeTimeoutMs (${o.storeTimeoutMs} ms): the ${o.storage.kind} store does not answer; the lease is released so another node can take over`,
            { retryable: true },
          ),
        ),
      o.storeTimeoutMs,
    );
  });
  try {
    return await Promise.race([step, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Catches up with `relays` relays for at most `ms` (relays that are down are not waited for longer). */
async function boundedCatchUp(standby: StandbyRunner, relays: number, ms: number): Promise<void> {
  const give = new AbortController();
  const timer = setTimeout(() => give.abort(), ms);
  try {
    await Promise.race([
      standby.catchUp(relays, give.signal),
      standby.failed(),
      new Promise<void>((r) => give.signal.addEventListener('abort', () => r(), { once: true })),
    ]);
  } finally {
    clearTimeout(timer);
    give.abort();
  }
}

/**
 * Step 3: drops what never sealed: staged writes (delay-write, dropped with the standby), or the
 * areas written after the last formed snapshot (snapshot mode), so the store is exactly the
 * resumed checkpoint.
 */
async function rollBackStep<S>(o: TakeoverOptions<S>): Promise<AppliedPosition> {
  if (o.mode === 'snapshot') await o.storage.releaseAreas!();
  return o.standby.applier.position;
}

/**
 * Step 4a: checkpoints this node keeps but never saw durable (complete on one relay of the read
 * quorum; one of them may have been acknowledged) are published again, same ids, under the
 * policy, before the fence names them as the cut: a later takeover reading other relays must find
 * every checkpoint below the cut. Relays that hold them already drop the copies (dedupe ids).
 */
async function confirmStep<S>(o: TakeoverOptions<S>, keeper: LeaseKeeper): Promise<void> {
  const frames = o.standby.applier.takeUnconfirmed();
  if (frames.length === 0) return;
  o.log({ level: 'info', msg: 're-publishing checkpoints kept but not seen durable', frames: frames.length });
  for (const frame of frames) await publishDurably(o, frame, keeper, 'kept checkpoint');
}

/**
 * Step 4: the fence names the cut: frames of older epochs for checkpoints after it are void. It
 * must be durable under the policy before this node acts as primary: while too many relays are
 * down for that, the takeover waits (the lease stays ours meanwhile).
 */
async function fenceStep<S>(
  o: TakeoverOptions<S>,
  epoch: number,
  position: AppliedPosition,
  keeper: LeaseKeeper,
): Promise<void> {
  const fence: Frame = {
    kind: FrameKind.Fence,
    epoch,
    seq: 1,
    checkpoint: position.checkpoint,
    // The cut by identity: a standby tells this history's checkpoint from a deposed primary's.
    body: encodeFence({ nodeId: o.nodeId, cutoffEpoch: position.epoch }),
  };
  await publishDurably(o, fence, keeper, 'fence');
}

/** Publishes `frame` until it is durable under the policy, while the lease is ours. */
async function publishDurably<S>(
  o: TakeoverOptions<S>,
  frame: Frame,
  keeper: LeaseKeeper,
  what: string,
): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    // Checked before every attempt: a claimant that was paused (or partitioned) past its lease
    // must not publish a fence after its successor's.
    if (!keeper.isValid()) throw keeper.lostError ?? new FencedError(`node '${o.nodeId}' lost the lease`);
    try {
      await o.publish(frame);
      return;
    } catch (err) {
      // Only a relay that did not acknowledge is worth another try; anything else is a bug or bad
      // input, and retrying it would hold the lease forever.
      if (!(err instanceof ReplicationError)) throw err;
      if (keeper.lostError) throw keeper.lostError;
      o.log({ level: 'warn', msg: `${what} not durable yet, retrying`, attempt, error: err.message });
      await new Promise((r) => setTimeout(r, Math.min(2_000, 100 * attempt)));
    }
  }
}

/**
 * Refusal path of a rolling upgrade (docs/upgrades.md): while `resumeBlocked` says why this node
 * cannot resume, it stays a standby (it goes on applying what it can) and does not claim. Polls
 * the condition, which only the standby's progress changes, until it clears or `signal` aborts.
 */
async function waitWhileBlocked<S>(o: TakeoverOptions<S>, signal: AbortSignal): Promise<void> {
  let why = o.resumeBlocked?.();
  if (why === undefined) return;
  o.transition('standby', `cannot resume: ${why}`);
  o.log({ level: 'warn', msg: 'lease vacant, but this node cannot resume: it does not claim', reason: why });
  while (why !== undefined) {
    if (signal.aborted) throw signal.reason ?? new Error('stopped');
    await new Promise<void>((resolve) => {
      const t = setTimeout(done, 250);
      function done(): void {
        clearTimeout(t);
        signal.removeEventListener('abort', done);
        resolve();
      }
      signal.addEventListener('abort', done, { once: true });
    });
    why = o.resumeBlocked?.();
  }
}

/**
 * Before claiming a vacant lease: if this node is the one a switchover just took the role from
 * (the request names it and is recent), wait until another node claimed the lease, or a few
 * TTLs passed (no standby came), so the handover goes where the operator meant it to.
 */
async function yieldAfterSwitchover(
  kv: Parameters<typeof readSwitchover>[0],
  lease: LeaseStore,
  nodeId: string,
  ttlMs: number,
  signal: AbortSignal,
): Promise<void> {
  const req = await readSwitchover(kv).catch(() => undefined);
  if (!req || req.from !== nodeId || Date.now() - req.requestedAt > 60_000) return;
  const until = now() + 3 * ttlMs;
  while (now() < until && !signal.aborted) {
    const read = await lease.read().catch(() => undefined);
    if (read?.value?.holder && read.value.holder !== nodeId) return;
    await new Promise((r) => setTimeout(r, Math.max(20, ttlMs / 10)));
  }
}
