/**
 * Limits: the most a node accepts of each thing that costs memory, so that a large or hostile
 * input is refused with an error naming the limit instead of running the process out of memory.
 * Set them with the `limits` option of `Restartpoint.start()`; give the primary and its standbys
 * the same values (a standby refuses what its own limits refuse, even from a primary that
 * allowed it).
 *
 * | option                        | default  | primary                              | standby                                   |
 * | ----------------------------- | -------- | ------------------------------------ | ----------------------------------------- |
 * | `limits.maxImageBytes`        | 256 MiB  | `checkpoint()` rejects (`LimitError`) | refuses the image before decompressing it |
 * | `limits.maxFrameBytes`        | 320 MiB  | `checkpoint()` / a put rejects        | drops a frame growing past it (`limit`)   |
 * | `limits.maxKeyBytes`          | 1 KiB    | `store.put` / `delete` reject         | (the adapter contract's 1 KiB)            |
 * | `limits.maxValueBytes`        | 64 MiB   | `store.put` rejects                   | (the adapter contract's 64 MiB)           |
 * | `limits.maxWritesPerCheckpoint` | 1 000 000 | the write over it rejects, unapplied | refuses the write frame (`limit`)         |
 * | `limits.maxStagedBytes`       | 512 MiB  | —                                    | refuses frames past it (`limit`)          |
 * | `limits.maxDepth`             | 1 000    | `checkpoint()` rejects (`LimitError`) | refuses the image frame (`limit`)         |
 *
 * `maxDepth` counts containers nested in one another (objects, arrays, Maps, Sets, an error's
 * `cause`): `{ a: [1] }` is 2 deep. It is at most 1 500 because node:v8 reads an image on the
 * call stack and fails ("Maximum call stack size exceeded") near 1 900 levels of objects with
 * Node's default stack; a standby could never restore a deeper image. Every walk of the state
 * (typed tree, delta, tracked and identity paths) refuses a deeper one with a `LimitError`; the
 * sidecar answers 413 `LIMIT`.
 *
 * Key and value limits may only be lowered: every adapter refuses more than 1 KiB keys and 64 MiB
 * values (src/storage/adapter.ts). A standby that refuses a frame counts it under the reject
 * reason `limit` and logs it; the checkpoint it belongs to then cannot commit, so the standby
 * stops advancing until it is restarted with a higher limit (the relays still hold the frames).
 */
import { ConfigError, LimitError } from './errors.js';
import { MAX_KEY_BYTES, MAX_VALUE_BYTES } from './storage/adapter.js';

/** Resolved limits (every field set). */
export interface Limits {
  /** Largest execution image, raw bytes before compression. */
  readonly maxImageBytes: number;
  /** Largest frame body (all of its parts joined). */
  readonly maxFrameBytes: number;
  /** Largest store key, UTF-8 bytes (at most 1 024). */
  readonly maxKeyBytes: number;
  /** Largest store value, bytes (at most 64 MiB). */
  readonly maxValueBytes: number;
  /** Most write ops in one checkpoint. */
  readonly maxWritesPerCheckpoint: number;
  /** Most bytes a standby holds for checkpoints not committed yet (write bodies and waiting frames). */
  readonly maxStagedBytes: number;
  /** Most containers nested in one another in the state (at most 1 500). */
  readonly maxDepth: number;
}

const MiB = 1024 * 1024;

/** The limits when none are given. */
export const DEFAULT_LIMITS: Limits = Object.freeze({
  maxImageBytes: 256 * MiB,
  maxFrameBytes: 320 * MiB,
  maxKeyBytes: MAX_KEY_BYTES,
  maxValueBytes: MAX_VALUE_BYTES,
  maxWritesPerCheckpoint: 1_000_000,
  maxStagedBytes: 512 * MiB,
  maxDepth: 1_000,
});

const RANGES: Record<keyof Limits, readonly [min: number, max: number, unit: string]> = {
  maxImageBytes: [1024, 4 * 1024 * MiB - 1, 'bytes'],
  maxFrameBytes: [64 * 1024, 4 * 1024 * MiB - 1, 'bytes'],
  maxKeyBytes: [1, MAX_KEY_BYTES, 'bytes (the adapter contract allows at most 1024)'],
  maxValueBytes: [1, MAX_VALUE_BYTES, 'bytes (the adapter contract allows at most 64 MiB)'],
  maxWritesPerCheckpoint: [1, 1e9, 'write ops'],
  maxStagedBytes: [MiB, 2 ** 50, 'bytes'],
  maxDepth: [1, 1_500, 'levels (node:v8 cannot read images much deeper)'],
};

/** Validates the `limits` start option and fills in defaults. Throws `ConfigError` naming the field. */
export function resolveLimits(input: unknown): Limits {
  if (input === undefined) return DEFAULT_LIMITS;
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw new ConfigError(
      'limits',
      `must be an object like { maxImageBytes: 268435456 }, got ${String(input)}`,
    );
  }
  const out: Record<string, number> = { ...DEFAULT_LIMITS };
  for (const [k, v] of Object.entries(input)) {
    const range = RANGES[k as keyof Limits];
    if (!range) {
      throw new ConfigError(`limits.${k}`, `is not a limit; known: ${Object.keys(RANGES).join(', ')}`);
    }
    if (v === undefined) continue;
    const [min, max, unit] = range;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
      throw new ConfigError(
        `limits.${k}`,
        `must be an integer from ${min} to ${max} ${unit}, got ${String(v)}`,
      );
    }
    out[k] = v;
  }
  return Object.freeze(out) as unknown as Limits;
}

/** A `LimitError` for `what` of `size` over `limits.<name>` = `max`. */
export function limitError(name: keyof Limits, what: string, size: number, max: number): LimitError {
  return new LimitError(`limits.${name}`, `${what} is ${size}, over the limit of ${max}`);
}

/**
 * Each limit's range: `[min, max, unit]`. The option schema (src/sdk/option-schema.ts) builds
 * the `limits` fields from it, so a limit added above needs no edit anywhere else.
 */
export const LIMIT_RANGES: Readonly<Record<keyof Limits, readonly [min: number, max: number, unit: string]>> =
  RANGES;
