/**
 * What a drill reports (the `drill --json` contract, docs/cli.md and docs/drill.md), its options,
 * and the small pure helpers the drills share: medians, the JSON form, the seeded generator.
 */

/** Stores the drill can run the sample app on. */
export const DrillStores = ['file', 'memory', 'redis', 'postgres'] as const;
export type DrillStore = (typeof DrillStores)[number];

/** Where a kill lands. */
export const KillPoints = ['between-writes', 'inside-checkpoint', 'after-checkpoint'] as const;
export type KillPoint = (typeof KillPoints)[number];

/** Default pause of the sample app after each step, ms (`--step-ms`). */
export const DEFAULT_STEP_MS = 2;

/** Largest `stateMb` the drill accepts. */
export const MAX_STATE_MB = 1024;

/** Options of a drill run. */
export interface DrillOptions {
  kills: number;
  store: DrillStore;
  /** Standby mode of the nodes. Default `'delay-write'`. */
  mode?: 'delay-write' | 'snapshot';
  /** Redis for `store: 'redis'`. Default `redis://127.0.0.1:6379`. */
  redisUrl?: string;
  /** PostgreSQL for `store: 'postgres'`. Default `postgres://postgres@127.0.0.1:5432/test`. */
  postgresUrl?: string;
  seed: number;
  nats: string;
  leaseTtlMs: number;
  /** Called with one line of progress per event worth telling. */
  progress?: (line: string) => void;
  /** Called after each takeover was checked (for a progress bar). */
  onTakeover?: (t: TakeoverReport) => void;
  /** Keep the temp folder and the NATS stream (for debugging). */
  keep?: boolean;
  /** Kill points to use in turn; default: chosen at random from the seed. */
  points?: readonly KillPoint[];
  /**
   * What fails: `kill` (the primary is SIGKILLed), `pause` (the primary is SIGSTOPped, and
   * SIGCONTed after the takeover: a zombie that must find itself fenced), `partition` (the
   * primary's NATS link is blackholed through a proxy, then healed after the takeover; the
   * process keeps running and must demote itself), `relay-loss` (three relays with a quorum
   * policy; one relay is SIGKILLed before each primary kill and restarted after the takeover),
   * `shard-loss` (six relays, FEC 4+2 tolerating one lost relay, 2 % of shards dropped on the
   * way, and one relay SIGKILLed before each primary kill), `upgrade` (a rolling upgrade of the
   * sample app to a build with a new state shape, a node killed mid-upgrade: src/drill/upgrade.ts;
   * `kills` does not apply). Default `kill`.
   */
  scenario?: Scenario;
  /**
   * Cluster key of the nodes (signed mode, docs/security.md): every message on the relays is
   * signed with it and the standby rejects anything else. Default: unsigned.
   */
  key?: string;
  /**
   * With `key`: publish this many forged messages (unsigned, or signed with another key) and as
   * many corrupted ones (genuine signed messages from the stream, damaged) onto the app's subject
   * while the primary works, before the first kill. The report's `rejected` counts what the
   * standby nodes rejected.
   */
  injectForged?: number;
  /** Ballast in the sample app's state, in MB (0–1024). Default 0. */
  stateMb?: number;
  /** Checkpoints the primary makes before the first fault (`drill --history N`); default 0. */
  history?: number;
  /**
   * Pause of the sample app after each acknowledged step, ms (0–10 000). Default
   * {@link DEFAULT_STEP_MS}: a standby that rejoins replays the whole stream, and on a small
   * machine it never catches up with a primary checkpointing flat out (0).
   */
  stepMs?: number;
  /** chaos: how many relays (nats-servers the drill starts), 1-7. Default 3. */
  relays?: number;
  /**
   * 3: `nats` is a three-node JetStream cluster the drill starts (lease bucket and stream at R3);
   * one of its nodes is SIGKILLed mid-run and restarted after the next takeover.
   */
  natsCluster?: number;
  /** `store-loss`: the faults to run (names of `StoreFaultReport.fault`); default every fault of the store kind. */
  storeFaults?: readonly string[];
}

/** Drill scenarios, in the order `--scenario all` runs them. */
export const Scenarios = ['kill', 'pause', 'partition', 'relay-loss', 'shard-loss'] as const;
/**
 * Scenarios that only run on their own (`--scenario NAME`), never in `all`: `chaos` and `upgrade`
 * are long; `store-loss` injects faults into a node's own store (src/drill/store-loss.ts) and
 * needs a file, redis or postgres store.
 */
export const SoloScenarios = ['chaos', 'upgrade', 'store-loss'] as const;
export type Scenario = (typeof Scenarios)[number] | (typeof SoloScenarios)[number];

/** One fault the drill injected (`faults` in `--json`), with evidence that it took effect. */
export interface FaultRecord {
  /** Milliseconds since the run started. */
  atMs: number;
  /**
   * `primary-kill`, `primary-pause`, `primary-partition`, `relay-kill`, `relay-pause`,
   * `nats-node-kill`.
   */
  kind: string;
  /** The node id (`a`, `b`…), `relay N`, or the NATS cluster node's name. */
  target: string;
  /**
   * What shows it took effect, read after the fault: `pid 123 gone (SIGKILL)`, `pid 123 state T
   * (/proc/123/stat)`, `connect 127.0.0.1:4301: ECONNREFUSED`, `proxy cut: 3 connection(s)
   * blackholed`.
   */
  evidence: string;
  /** When it was undone (relay restarted or SIGCONTed, link healed), ms since the start. */
  restoredAtMs?: number;
  /** The kill (takeover round) during which it was injected. */
  round: number;
}

/** One fault of `--scenario store-loss` and how it ended (docs/drill.md). */
export interface StoreFaultReport {
  /** The fault's name, like `standby-flushall` (`--store-fault` selects by it). */
  fault: string;
  /** Whose store was hit. */
  target: 'standby' | 'primary';
  /** What was done to the store. */
  what: string;
  /** The correct ending for this fault. */
  expected: 'rebuilt' | 'took-over' | 'refused' | 'survived';
  /**
   * `rebuilt`: the node found its store lost, rebuilt it from the relays and went on (took over
   * with it); `took-over`: the node stepped down and the other took over; `refused`: the node
   * refused the takeover and released the lease, another took over; `survived`: the fault was
   * retried away; `failed`: no node took over (a violation).
   */
  outcome: 'rebuilt' | 'took-over' | 'refused' | 'survived' | 'failed';
  detail: string;
  /** `store rebuild` events of the node whose store was hit, in this round. */
  rebuilds: number;
  newPrimary: string | null;
  resumed: number | null;
  lastAcked: number | null;
  /** Acknowledged checkpoints not resumed: must be 0. */
  checkpointsLost: number | null;
  /** The resumed store is exactly the writes up to the resumed checkpoint (no divergence). */
  storeMatches: boolean | null;
  imageMatches: boolean | null;
  /** From the fault to the new primary's first acknowledged checkpoint. */
  ms: number;
}

/** What a deposed primary that kept running (pause, partition) did after the takeover. */
export interface ZombieReport {
  /** It reported the `demoted` event (its lease keeper saw the lease lost). */
  demoted: boolean;
  /** Milliseconds from the takeover (new primary resumed) to `demoted`; negative: before it. */
  demotedAfterTakeoverMs: number | null;
  /** Its own next write or checkpoint was refused with `ERR_FENCED`. */
  refused: boolean;
  /** A checkpoint the drill asked it for afterwards (`probe`) was refused with `ERR_FENCED`. */
  probeRefused: boolean;
  /** Checkpoints it acknowledged at or after the takeover: must be 0. */
  acksAfterTakeover: number;
  /** Writes it made after the fault (SIGSTOP or cut), all of them discarded. */
  writesAfterFault: number;
  /** Entries of the new primary's store written by an older epoch after the resumed step: must be 0. */
  foreignWrites: number;
}

/** One takeover as the `--json` contract reports it (docs/cli.md, docs/drill.md). */
export interface TakeoverReport {
  kill: number;
  point: KillPoint;
  killed: string;
  newPrimary: string;
  /** From the fault (SIGKILL, SIGSTOP, cut) to the new primary's `Restartpoint.start()` resolving. */
  takeoverMs: number;
  lastAcked: number;
  resumed: number;
  epoch: number;
  storeMatches: boolean;
  imageMatches: boolean;
  /** With `--scenario all`: the scenario this takeover belongs to. */
  scenario?: Scenario;
  /** SDK `takeover.detectMs`: from the lease going quiet (as the standby saw it) to the claim. */
  detectMs: number;
  /** SDK `takeover.catchUpMs`: applying every complete checkpoint after the claim. */
  catchUpMs: number;
  /** SDK `takeover.fenceMs`: the fence published until durable. */
  fenceMs: number;
  /** SDK `takeover.rollbackMs`: the store rolled back to the resumed checkpoint. */
  rollbackMs: number;
  /** SDK `takeover.restoreMs`: the materialized image turned into the live state. */
  restoreMs: number;
  /** From `start()` resolving to the resumed app's first acknowledged checkpoint. */
  resumeMs: number;
  /** From the fault to the resumed app's first acknowledged checkpoint: the RTO. */
  killToServingMs: number;
  /** Acknowledged checkpoints the new primary did not resume (RPO in checkpoints): must be 0. */
  checkpointsLost: number;
  /** Writes the deposed primary made after the resumed checkpoint: rolled back, by design. */
  writesDiscarded: number;
  /** pause, partition: what the deposed primary did afterwards. */
  zombie?: ZombieReport;
  /** chaos: the primary's fault of this takeover. */
  fault?: 'kill' | 'pause' | 'partition';
  /**
   * Sidecar mode (`--config`): the resumed app's own report that its store and image agree
   * (the verification hook, docs/drill.md); `null` when the app printed none.
   */
  verified?: boolean | null;
}

/** Medians over a drill's takeovers (milliseconds). */
export interface DrillMedians {
  takeoverMs: number;
  detectMs: number;
  rollbackMs: number;
  restoreMs: number;
  resumeMs: number;
  /** rollbackMs + restoreMs + resumeMs, per takeover, then the median. */
  rollbackRestoreResumeMs: number;
  killToServingMs: number;
}

/** The moments of a run, for the HTML report (`--report`); not part of `--json`. */
export interface DrillTimeline {
  /** Wall-clock ms (Date.now()) when the run started and ended. */
  startedAt: number;
  endedAt: number;
  /** Acknowledged checkpoints (down-sampled to at most 2 000). */
  acks: { t: number; checkpoint: number; node: string }[];
  /** Standby lag: when a standby applied a checkpoint, and how long after its ack. */
  lag: { t: number; node: string; checkpoint: number; lagMs: number }[];
  /** The faults, one per kill. */
  faults: { t: number; kill: number; kind: 'kill' | 'pause' | 'partition'; node: string }[];
  /** Takeovers: resumed (`start()` resolved) and serving (first acknowledged checkpoint). */
  takeovers: { t: number; servingAt: number; kill: number; node: string }[];
  /** Relay servers killed and restarted. */
  relays: { t: number; kind: 'relay-kill' | 'relay-start'; relay: number }[];
}

/** The drill's result, as printed by `--json`. */
export interface DrillReport {
  ok: boolean;
  kills: number;
  seed: number;
  store: string;
  mode: string;
  scenario: Scenario;
  /** Relay servers SIGKILLed during the run (relay-loss, shard-loss). */
  relaysKilled: number;
  takeovers: TakeoverReport[];
  /**
   * Messages the standby nodes rejected, distinct by stream sequence: `forged` (reasons
   * `forged`, `unsigned`) and `corrupt` (`checksum`, `magic`, `truncated`, `malformed`,
   * `version`). Other reasons (duplicates, late shards) are routine and not counted here.
   */
  rejected: { forged: number; corrupt: number };
  violations: string[];
  /** Lease TTL of the nodes. */
  leaseTtlMs: number;
  /** Ballast in the sample app's state, MB. */
  stateMb: number;
  /** The sample app's pause after each step, ms. */
  stepMs: number;
  /** Medians over `takeovers` (0 when there is none). */
  medians: DrillMedians;
  /** Wall-clock duration of the run. */
  durationMs: number;
  /**
   * The lease check of every takeover, from the lease record's server timestamps: claims judged,
   * claims sooner than the TTL, takeovers the record could not judge, smallest gap (ms).
   */
  leaseChecks?: {
    judged: number;
    early: number;
    unjudged: number;
    minGapMs: number | null;
    /** Per takeover, in order: ms from the deposed primary's last renewal to the claim (null: not judged). */
    gapsMs: (number | null)[];
  };
  /** chaos, --nats-cluster: every fault injected, in order (docs/drill.md). */
  faults?: FaultRecord[];
  /** chaos: relays, the ack policy and how many relays may be down at once. */
  chaos?: {
    relays: number;
    ack: string;
    tolerate: number;
    freshJoins: number;
    freshTakeovers: number;
    /** Standbys still behind (but advancing) after `CATCH_UP_MS`: slow, not stuck. */
    slowCatchUps: number;
  };
  /** `store-loss`: each fault injected and how it ended. */
  storeFaults?: StoreFaultReport[];
  /** For the HTML report; left out of `--json` (see {@link reportJson}). */
  timeline?: DrillTimeline;
}

/** The median of `xs` (0 for none). */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0
    ? 0
    : s.length % 2
      ? s[(s.length - 1) / 2]!
      : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/** Medians of the RTO figures over `takeovers`. */
export function drillMedians(takeovers: readonly TakeoverReport[]): DrillMedians {
  const m = (f: (t: TakeoverReport) => number): number => median(takeovers.map(f));
  return {
    takeoverMs: m((t) => t.takeoverMs),
    detectMs: m((t) => t.detectMs),
    rollbackMs: m((t) => t.rollbackMs),
    restoreMs: m((t) => t.restoreMs),
    resumeMs: m((t) => t.resumeMs),
    rollbackRestoreResumeMs: m((t) => t.rollbackMs + t.restoreMs + t.resumeMs),
    killToServingMs: m((t) => t.killToServingMs),
  };
}

/** The report as `--json` prints it: everything but the timelines. */
export function reportJson<R extends DrillReport & { runs?: DrillReport[] }>(report: R): string {
  return JSON.stringify(report, (k, v: unknown) => (k === 'timeline' ? undefined : v));
}

/** A timeline with nothing on it yet. */
export function emptyTimeline(startedAt: number): DrillTimeline {
  return { startedAt, endedAt: startedAt, acks: [], lag: [], faults: [], takeovers: [], relays: [] };
}

/** A small deterministic PRNG (mulberry32): drills are reproducible from their seed. */
export function mulberry(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
