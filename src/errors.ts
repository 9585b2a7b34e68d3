/**
 * Every error restartpoint throws, in one file.
 *
 * Each class has a stable string `code` (match on it, never on the message) and a `retryable`
 * flag: `true` means the same call may succeed later without changing anything (the network came
 * back, a relay caught up); `false` means something must change first (an option, the input,
 * the node's role). Messages name the option or field at fault and say how to fix it.
 */

/** Stable error codes. Programs outside the repo match on these: add, never rename. */
export const ErrorCode = {
  Config: 'ERR_CONFIG',
  Fenced: 'ERR_FENCED',
  Closed: 'ERR_CLOSED',
  Replication: 'ERR_REPLICATION',
  NatsUnavailable: 'ERR_NATS_UNAVAILABLE',
  Serialize: 'ERR_SERIALIZE',
  Image: 'ERR_IMAGE',
  Frame: 'ERR_FRAME',
  Storage: 'ERR_STORAGE',
  InvalidArgument: 'ERR_INVALID_ARGUMENT',
  Usage: 'ERR_USAGE',
  Limit: 'ERR_LIMIT',
  StoreLost: 'ERR_STORE_LOST',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Base class of every restartpoint error. */
export class RestartpointError extends Error {
  /** Stable machine-readable code. */
  readonly code: ErrorCode;
  /** Whether retrying the same call, unchanged, may succeed. */
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, retryable: boolean, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.retryable = retryable;
  }
}

/** An option passed to `Restartpoint.start()` (or a config value) is missing or invalid. */
export class ConfigError extends RestartpointError {
  /** The option at fault, dotted (`nats.servers`). */
  readonly option: string;
  constructor(option: string, message: string, options?: ErrorOptions) {
    super(ErrorCode.Config, `'${option}' ${message}`, false, options);
    this.option = option;
  }
}

/** A call received a value it cannot accept (wrong type, too large, empty key). */
export class InvalidArgumentError extends RestartpointError {
  constructor(message: string, options?: ErrorOptions) {
    super(ErrorCode.InvalidArgument, message, false, options);
  }
}

/**
 * This node is no longer the primary: its lease was taken or could not be renewed in time.
 * Every later `checkpoint()` and store write rejects with it; stop work and exit or rejoin.
 */
export class FencedError extends RestartpointError {
  constructor(message: string, options?: ErrorOptions) {
    super(ErrorCode.Fenced, message, false, options);
  }
}

/** The instance was closed. */
export class ClosedError extends RestartpointError {
  constructor(message = 'this restartpoint instance is closed', options?: ErrorOptions) {
    super(ErrorCode.Closed, message, false, options);
  }
}

/** Frames could not be made durable on the relay (timeout, relay down). Retrying may succeed. */
export class ReplicationError extends RestartpointError {
  constructor(message: string, options?: ErrorOptions) {
    super(ErrorCode.Replication, message, true, options);
  }
}

/** The NATS server could not be reached or has no JetStream. */
export class NatsUnavailableError extends RestartpointError {
  constructor(message: string, options?: ErrorOptions) {
    super(ErrorCode.NatsUnavailable, message, true, options);
  }
}

/** The state passed to `checkpoint()` cannot be serialized; `path` names the offending value. */
export class SerializationError extends RestartpointError {
  /** Path of the first value that cannot be serialized, like `state.handlers.onTick`. */
  readonly path: string;
  constructor(path: string, message: string, options?: ErrorOptions) {
    super(ErrorCode.Serialize, message, false, options);
    this.path = path;
  }
}

/** An execution image or delta could not be decoded or applied. */
export class ImageError extends RestartpointError {
  constructor(message: string, options?: ErrorOptions) {
    super(ErrorCode.Image, message, false, options);
  }
}

/** Why a frame was rejected. Counted per reason by the standby. */
export const FrameRejectReason = {
  Truncated: 'truncated',
  Magic: 'magic',
  Version: 'version',
  Kind: 'kind',
  Checksum: 'checksum',
  Foreign: 'foreign',
  Malformed: 'malformed',
  Stale: 'stale',
  Duplicate: 'duplicate',
  Gap: 'gap',
  /** A shard of a part that was already rebuilt from k others: expected with parity, never thrown. */
  Late: 'late',
  /** A held shard dropped because too many incomplete parts were pending (memory cap). */
  Evicted: 'evicted',
  /** Taking the frame would pass a configured limit (`limits.*`): refused, not held. */
  Limit: 'limit',
  /** A bare part or shard where a cluster key requires a signed envelope. */
  Unsigned: 'unsigned',
  /** An envelope whose key id is not configured or whose MAC (or GCM tag) does not verify. */
  Forged: 'forged',
} as const;
export type FrameRejectReason = (typeof FrameRejectReason)[keyof typeof FrameRejectReason];

/** A frame off the wire is malformed, truncated, corrupt, foreign, stale or out of place. */
export class FrameError extends RestartpointError {
  readonly reason: FrameRejectReason;
  constructor(reason: FrameRejectReason, message: string, options?: ErrorOptions) {
    super(ErrorCode.Frame, `frame rejected (${reason}): ${message}`, false, options);
    this.reason = reason;
  }
}

/**
 * A configured limit was hit (`limits.maxImageBytes` and the others of `Restartpoint.start()`,
 * see src/limits.ts). `limit` names the option that raises it; the message says by how much.
 */
export class LimitError extends RestartpointError {
  /** The option at fault, dotted (`limits.maxImageBytes`). */
  readonly limit: string;
  constructor(limit: string, message: string, options?: ErrorOptions) {
    super(ErrorCode.Limit, `${message} (limit '${limit}'; raise it in the start options)`, false, options);
    this.limit = limit;
  }
}

/** The storage adapter failed. */
export class StorageError extends RestartpointError {
  constructor(
    message: string,
    options?: ErrorOptions & { retryable?: boolean },
    /** Subclasses only: a more precise stable code (`ERR_STORE_LOST`). */
    code: ErrorCode = ErrorCode.Storage,
  ) {
    super(code, message, options?.retryable ?? false, options);
  }
}

/**
 * The store under an adapter is not the one it opened: its identity token is missing or belongs
 * to another store (a flushed or restarted-empty Redis, a replaced file, a dropped table), or a
 * check found it damaged underneath the adapter. Never retryable: once raised, every later call
 * of that adapter instance rejects with it. The node must not trust the store: clear it and
 * rebuild from the relays, or refuse. `code` is `ERR_STORE_LOST`; it is a `StorageError`.
 */
export class StoreLostError extends StorageError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, { ...options, retryable: false }, ErrorCode.StoreLost);
  }
}

/** A command-line usage error: bad flag or value. The CLI prints it with a hint and exits 2. */
export class UsageError extends RestartpointError {
  readonly hint: string | undefined;
  constructor(message: string, hint?: string) {
    super(ErrorCode.Usage, message, false);
    this.hint = hint;
  }
}
