/**
 * restartpoint: keep a stateful Node.js service alive when its host dies.
 * Explicit named re-exports only.
 */
export { Restartpoint } from './sdk/restartpoint.js';
export type { ResumedFrom, TakeoverStats, ReplicatedStore } from './sdk/restartpoint.js';
export type { StartOptions, LogEvent } from './sdk/options.js';
export type { CheckpointAck, CheckpointStats } from './primary/replicator.js';
export type { ImagePath } from './image/chain.js';
export type { StorageAdapter, WriteOp, AdapterCapabilities, SnapshotStore } from './storage/adapter.js';
export type { RelaySpec, AckPolicy, FaultHook } from './transport/relays.js';
export type { FecScheme } from './fec/shard.js';
export type { ClusterKeyOption } from './protocol/envelope.js';
export type {
  Observer,
  Transition,
  NodeState,
  RelayLagSample,
  CheckpointObservation,
  TakeoverObservation,
} from './observability/observer.js';
export { NodeStates } from './observability/observer.js';
export {
  ErrorCode,
  RestartpointError,
  ConfigError,
  InvalidArgumentError,
  FencedError,
  ClosedError,
  ReplicationError,
  NatsUnavailableError,
  SerializationError,
  ImageError,
  FrameError,
  FrameRejectReason,
  StorageError,
  LimitError,
} from './errors.js';
