/**
 * Types that several layers share (the SDK facade, the sidecar client, observability), kept in
 * a leaf file that imports nothing, so that no layer has to import another's entry point for a
 * type. The SDK re-exports them under their usual names.
 */

/** Where a resumed app came from. */
export interface ResumedFrom {
  readonly epoch: number;
  readonly checkpoint: number;
}

/** How the takeover that made this node primary went (milliseconds). */
export interface TakeoverStats {
  /** From the lease going quiet (last renewal seen) to the claim. */
  readonly detectMs: number;
  /** From the claim to every complete checkpoint applied (catch-up with a read quorum of relays). */
  readonly catchUpMs: number;
  /**
   * Rolling the store back to the resumed checkpoint: discarding staged writes (delay-write) or
   * releasing the areas written after the last formed snapshot (snapshot mode).
   */
  readonly rollbackMs: number;
  /** Publishing the fence until it was durable (longer while too many relays are down). */
  readonly fenceMs: number;
  /** Turning the materialized image into the live state. */
  readonly restoreMs: number;
  /** The primary whose lease ran out; `undefined` when the lease was released (a clean close) or never held. */
  readonly previous: string | undefined;
}

/** A structured log event. */
export interface LogEvent {
  readonly level: 'debug' | 'info' | 'warn' | 'error';
  readonly msg: string;
  readonly [field: string]: unknown;
}
