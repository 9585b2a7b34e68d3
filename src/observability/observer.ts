/**
 * What a node reports about itself as it runs: the hook metrics (and anything else that wants
 * figures, not log lines) attach to. `StartOptions.observer` receives these calls; every method
 * is optional and a throwing observer never disturbs the node (the SDK catches and logs it).
 *
 * The SDK calls:
 * - `transition` once per state change of the failover controller
 *   (starting → standby → claiming → catching-up → fencing → restoring → primary, and
 *   primary → handing-over → standby | demoted | closed);
 * - `checkpoint` once per acknowledged checkpoint on the primary;
 * - `applied` once per checkpoint a standby committed to its store;
 * - `rejected` once per frame a standby refused (reason as in `FrameRejectReason`);
 * - `lag` every `presenceEveryMs` on a standby, one entry per relay;
 * - `takeover` once, when this node became primary.
 */
import type { CheckpointStats } from '../primary/replicator.js';
import type { TakeoverStats } from '../types.js';

/** States of a node's failover controller. */
export const NodeStates = [
  'starting',
  'standby',
  'claiming',
  'catching-up',
  'fencing',
  'restoring',
  'primary',
  'handing-over',
  'demoted',
  'closed',
] as const;
export type NodeState = (typeof NodeStates)[number];

/** A state change of a node's failover controller. */
export interface Transition {
  readonly nodeId: string;
  readonly app: string;
  readonly from: NodeState | undefined;
  readonly to: NodeState;
  /** The node's epoch (0 until it has claimed one). */
  readonly epoch: number;
  /** Why, in a few words (e.g. `lease vacant`, `switchover`, `lease lost`). */
  readonly reason?: string;
}

/** How far a standby is behind one relay. */
export interface RelayLagSample {
  /** The relay's servers, comma-separated. */
  readonly servers: string;
  /** Whether this node's connection to the relay is up. */
  readonly connected: boolean;
  /** Stream messages not yet applied (undefined while the relay is unreachable). */
  readonly frames: number | undefined;
  /** Bytes of those messages (undefined while the relay is unreachable). */
  readonly bytes: number | undefined;
  /** Age of the oldest message not yet applied, in seconds (0 when caught up). */
  readonly seconds: number | undefined;
  /** Checkpoints the primary sealed that this standby has not committed (from the primary's presence). */
  readonly checkpoints: number | undefined;
}

/** Figures of one acknowledged checkpoint. */
export interface CheckpointObservation extends CheckpointStats {
  readonly epoch: number;
  /** Bytes of store writes the checkpoint sealed (keys + values as encoded). */
  readonly writeBytes: number;
}

/** Figures of a takeover: `rp.takeover`, with the new epoch and the checkpoint resumed from. */
export interface TakeoverObservation extends TakeoverStats {
  readonly epoch: number;
  readonly resumedFrom: number;
}

/** A base snapshot made durable by this node (the base builder), and the purge after it. */
export interface BaseObservation {
  readonly checkpoint: number;
  /** Body bytes of the base's chunks and manifest. */
  readonly bytes: number;
  readonly keys: number;
  /** From reading the store to the base being durable. */
  readonly buildMs: number;
  /** Relays keep every frame of checkpoints from here on. */
  readonly retainFrom: number;
  /** Per relay, the first stream seq kept (`null`: not purged yet). */
  readonly relays: readonly { readonly servers: string; readonly purgedBelow: number | null }[];
}

/** Receives a node's figures. Every method is optional. */
export interface Observer {
  /** A base snapshot made durable and the relays purged below its window (docs/history.md). */
  base?(b: BaseObservation): void;
  transition?(t: Transition): void;
  checkpoint?(c: CheckpointObservation): void;
  applied?(pos: { readonly epoch: number; readonly checkpoint: number }): void;
  rejected?(reason: string): void;
  lag?(relays: readonly RelayLagSample[]): void;
  takeover?(t: TakeoverObservation): void;
  /**
   * Primary: a checkpoint waited out `maxStandbyLag.waitMs` because the slowest standby stayed
   * over the lag budget (docs/failover.md, "The lag budget").
   */
  lagOverrun?(o: LagOverrunObservation): void;
  /**
   * Standby: it fell behind the purge point (its next frames gone from every relay) and rebuilds
   * from the newer base in place (docs/history.md, "A standby behind the purge").
   */
  behindPurge?(o: BehindPurgeObservation): void;
}

/** What `Observer.behindPurge` is told. */
export interface BehindPurgeObservation {
  /** The standby's committed checkpoint when it was found stuck. */
  readonly checkpoint: number;
  /** The base it rebuilds from. */
  readonly base: number;
  /** The first checkpoint that base's window keeps. */
  readonly retainFrom: number;
}

/** What `Observer.lagOverrun` is told. */
export interface LagOverrunObservation {
  readonly nodeId: string;
  readonly behindCheckpoints: number;
  readonly behindMs: number;
  readonly behindBytes: number;
  readonly waitedMs: number;
}
