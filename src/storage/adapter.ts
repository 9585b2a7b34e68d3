/**
 * The one interface every store is reached through. Adapters (`adapters/<name>/index.ts`) are
 * factories returning a plain object of this shape; they import nothing of the core but this
 * file and `src/errors.ts`. The memory adapter is the reference implementation: read it as the
 * executable form of this contract. docs/adapters.md explains it for adapter authors.
 *
 * Two paths use an adapter:
 * - the **primary** writes through `put` / `delete` as the app calls `rp.store.put`; these need
 *   not be atomic together nor durable on their own (the relay is the durability point);
 * - the **standby** applies whole checkpoints through `commit(ops, meta)`, which must be atomic:
 *   after any crash, SIGKILL included, the store shows either all of the batch and its meta, or
 *   none of it.
 */
import { InvalidArgumentError } from '../errors.js';

/** One store write, as carried in write frames and applied by `commit`. */
export type WriteOp =
  | { readonly op: 'put'; readonly key: string; readonly value: Uint8Array }
  | { readonly op: 'delete'; readonly key: string };

/** Options of `open()`. */
export interface OpenOptions {
  /**
   * The node opening the store. Written into the store's identity token when the token is
   * created; a store whose token names another node is refused (`StoreLostError`): it is some
   * other node's store.
   */
  readonly nodeId?: string;
}

/**
 * The identity token an adapter writes into its store at the first `open()` and checks after:
 * at every reconnect, and (where the adapter says so) inside its writes. A missing or foreign
 * token is a `StoreLostError` on that call and every later one.
 */
export interface StoreIdentity {
  /** Random, made when the token is created (a new or emptied store, or one adopted from an older format). */
  readonly storeId: string;
  /** `OpenOptions.nodeId` of the open that created the token, when it was given. */
  readonly nodeId?: string;
  /** The adapter's store format, like `restartpoint-redis 1`. */
  readonly format: string;
}

/** Options of `verify()`. */
export interface VerifyOptions {
  /**
   * `true`: the cheap check only, identity and key count (O(1) on memory, file and redis; one
   * index-only count on postgres). Default `false`: rescan the visible content (O(store)).
   */
  readonly quick?: boolean;
}

/**
 * What `verify()` found. It compares the store's visible content (what `get` / `keys` show)
 * with what the adapter recorded while committing: a key count and an order-independent
 * digest (src/storage/digest.ts), kept atomically by every `commit`, `formSnapshot` and
 * `clear`. Direct `put` / `delete` / `apply` make the record **unrecorded** until the next
 * `clear()`: they are the primary's writes, checked against the relay, not the store.
 */
export interface VerifyResult {
  /**
   * `'ok'`: content and record agree. `'mismatch'`: they do not; `detail` says how. The store
   * must not be trusted. `'unrecorded'`: direct writes (or an adopted older-format store) left
   * no record to compare with; the identity was checked, nothing else.
   */
  readonly status: 'ok' | 'mismatch' | 'unrecorded';
  /** `status === 'ok'`. */
  readonly ok: boolean;
  /** The token checked (every call of `verify` checks it first, rejecting `StoreLostError`). */
  readonly identity: StoreIdentity;
  /** Visible keys found. */
  readonly keys: number;
  /** Visible keys recorded; `undefined` when unrecorded. */
  readonly expectedKeys: number | undefined;
  /** Digest of the content found (32 hex digits); `undefined` for a quick check, or where the adapter checks otherwise (file: see its page). */
  readonly digest: string | undefined;
  /** Digest recorded; `undefined` when unrecorded or not kept by this adapter. */
  readonly expectedDigest: string | undefined;
  /** Whether this was the quick check. */
  readonly quick: boolean;
  /** Human-readable: what was compared, and on a mismatch what differs. */
  readonly detail: string;
}

/** What an adapter can do beyond the required contract. Declared, never thrown as "not implemented". */
export interface AdapterCapabilities {
  /** Committed data survives a process crash (file, redis with persistence, postgres). */
  readonly durable: boolean;
  /** The adapter implements `SnapshotStore` (mode `'snapshot'`). */
  readonly snapshot?: boolean;
}

/**
 * Snapshot mode (seed claims 20–23), an optional capability: the standby writes each
 * checkpoint's writes as they arrive into a **version area** of that checkpoint, invisible to
 * `get` / `keys`, never overwriting the data of a formed snapshot (redirect-on-write). A seal
 * **forms** the snapshot; a takeover **releases** the areas written after the last snapshot.
 *
 * Visible content (what `get` / `keys` return) is always exactly the last formed snapshot, plus
 * direct `put` / `delete` calls (which only a primary makes, and a primary has no areas).
 */
export interface SnapshotStore {
  /**
   * Writes `ops` into the version area of checkpoint `area`, after what earlier calls wrote
   * there (later ops on the same key win). `area` is above the last formed snapshot. Invisible
   * until `formSnapshot(area)`. Not required to be durable before `formSnapshot` resolves.
   */
  writeArea(area: number, ops: readonly WriteOp[]): Promise<void>;
  /**
   * Forms the snapshot of checkpoint `area`, atomically and (when durable) durably: visible
   * content becomes the previous snapshot with the area's writes applied, and the meta becomes
   * `meta`. Every area below `area` was formed before. Forming an area with no writes is valid
   * (only the meta changes). Old versions no newer snapshot needs are reclaimed.
   */
  formSnapshot(area: number, meta: Uint8Array): Promise<void>;
  /**
   * Releases every area above the last formed snapshot (the rollback on takeover): afterwards
   * the store is exactly the last snapshot. Idempotent. `clear()` also drops every area.
   */
  releaseAreas(): Promise<void>;
}

/** The storage adapter contract. */
export interface StorageAdapter extends Partial<SnapshotStore> {
  /** Short adapter name, like `memory` or `file`, used in logs and the drill. */
  readonly kind: string;
  /** Optional capabilities. */
  readonly capabilities: AdapterCapabilities;
  /**
   * Prepares the store. Idempotent. Finishes or undoes a commit that a crash interrupted, so that
   * after `open()` the store is exactly at the last completed commit (plus any direct writes).
   *
   * Identity: the first `open()` of an empty store writes a new identity token (`StoreIdentity`,
   * with `opts.nodeId`); a store with a token keeps it, and is refused with `StoreLostError`
   * when the token names another node than `opts.nodeId` (both given). A store with data or a
   * meta but no token (written by an older version) adopts a new token, with its digest record
   * `unrecorded`. From then on the adapter checks the token (see `verify` and each adapter's
   * page); a missing or foreign one makes that call and every later one reject with
   * `StoreLostError`. Repeated `open()` calls after the first ignore `opts`.
   */
  open(opts?: OpenOptions): Promise<void>;
  /**
   * Checks the store against what this adapter committed to it: the identity token, then (full
   * check) the visible content against the recorded key count and digest, or (`quick`) the key
   * count only. Rejects `StoreLostError` for a missing or foreign token (and marks the adapter
   * lost), a retryable `StorageError` when the store cannot be reached; resolves a
   * `VerifyResult` otherwise, `status: 'mismatch'` included (the adapter stays usable: the
   * caller decides, normally `clear()` and a rebuild). Safe beside other calls (a concurrent
   * commit makes a rescan retry, or report on a consistent snapshot).
   */
  verify(opts?: VerifyOptions): Promise<VerifyResult>;
  /**
   * Optional: makes an instance that found its store lost (`StoreLostError`) usable again, for a
   * rebuild from the relays (src/standby/rebuild.ts). It opens the store as a first `open()`
   * would: a store whose token is gone (wiped, restarted empty, truncated) gets a new token, and
   * whatever is left of it is emptied by the `clear()` that follows; a store whose token names
   * another node is still refused (`StoreLostError`): never clear someone else's store. A no-op
   * on an instance that is not lost. Without it, a lost store needs a new adapter instance (a
   * restart of the node).
   */
  reclaim?(): Promise<void>;
  /** The value of `key`, or `undefined` when it is absent. Never throws for a missing key. */
  get(key: string): Promise<Uint8Array | undefined>;
  /** Sets `key` (primary path). Not required to be durable or atomic with other calls. */
  put(key: string, value: Uint8Array): Promise<void>;
  /** Removes `key` (primary path). Deleting a missing key is not an error. */
  delete(key: string): Promise<void>;
  /**
   * Optional, primary path: applies `ops` in order, like the same `put` / `delete` calls one
   * after the other, in one round trip where the store allows (a pipeline, a multi-row
   * statement). Not atomic, not necessarily durable. The primary uses it to group writes the
   * app did not await one by one; without it, the ops go through `put` / `delete`.
   */
  apply?(ops: readonly WriteOp[]): Promise<void>;
  /** Every key present, in ascending code-unit order. */
  keys(): Promise<string[]>;
  /**
   * Applies `ops` in order and replaces the store's meta with `meta`, atomically and (when
   * `capabilities.durable`) durably before resolving. Applying the same batch twice leaves the
   * same store. An empty `ops` just replaces the meta.
   */
  commit(ops: readonly WriteOp[], meta: Uint8Array): Promise<void>;
  /** The meta of the last commit, or `undefined` on a store never committed to (or cleared). */
  readMeta(): Promise<Uint8Array | undefined>;
  /** Removes every key and the meta, durably. */
  clear(): Promise<void>;
  /** Releases resources. Idempotent. Other calls after `close()` reject. */
  close(): Promise<void>;
}

/** Largest key accepted, in UTF-8 bytes. */
export const MAX_KEY_BYTES = 1024;
/** Largest value accepted, in bytes. */
export const MAX_VALUE_BYTES = 64 * 1024 * 1024;

/** A high surrogate not followed by a low one, or a low surrogate not preceded by a high one. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * Throws `InvalidArgumentError` unless `key` is a non-empty, well-formed (no lone surrogate)
 * string of at most 1 KiB of UTF-8.
 */
export function assertValidKey(key: unknown): asserts key is string {
  if (typeof key !== 'string') {
    throw new InvalidArgumentError(`store key must be a string, got ${typeof key}`);
  }
  if (key.length === 0) throw new InvalidArgumentError('store key must not be empty');
  const bytes = Buffer.byteLength(key, 'utf8');
  // Keys travel and rest as UTF-8 (frames, file names, Redis, Postgres). A lone surrogate has no
  // UTF-8 form and would silently become U+FFFD on the standby: a different key than the primary's.
  // (A key of as many UTF-8 bytes as UTF-16 units is ASCII: no surrogate to look for.)
  if (bytes !== key.length && LONE_SURROGATE.test(key)) {
    throw new InvalidArgumentError(
      'store key must be well-formed Unicode; it holds a lone surrogate (U+D800-U+DFFF)',
    );
  }
  if (bytes > MAX_KEY_BYTES) {
    throw new InvalidArgumentError(`store key is ${bytes} bytes; keys are limited to ${MAX_KEY_BYTES} bytes`);
  }
}

/** Throws `InvalidArgumentError` unless `value` is a `Uint8Array` of at most `MAX_VALUE_BYTES`. */
export function assertValidValue(value: unknown): asserts value is Uint8Array {
  if (!(value instanceof Uint8Array)) {
    throw new InvalidArgumentError(
      `store value must be a Uint8Array (or a string through rp.store.put), got ${value === null ? 'null' : typeof value}`,
    );
  }
  if (value.byteLength > MAX_VALUE_BYTES) {
    throw new InvalidArgumentError(
      `store value is ${value.byteLength} bytes; values are limited to ${MAX_VALUE_BYTES} bytes`,
    );
  }
}

/**
 * Throws `InvalidArgumentError` unless `area` is a version area number: a non-negative safe
 * integer (a checkpoint number). `what` names the call for the message.
 */
export function assertValidArea(area: unknown, what = 'snapshot area'): asserts area is number {
  if (typeof area !== 'number' || !Number.isSafeInteger(area) || area < 0) {
    const shown = typeof area === 'number' ? String(area) : area === null ? 'null' : typeof area;
    throw new InvalidArgumentError(
      `${what}: the area must be a non-negative safe integer (a checkpoint number), got ${shown}`,
    );
  }
}

/**
 * Throws `InvalidArgumentError` unless `ops` is an array of well-formed `WriteOp`s (valid keys and
 * values). Adapters call it before touching the store, so that a batch with one bad op is
 * rejected whole and leaves no trace.
 */
export function assertValidOps(ops: unknown): asserts ops is readonly WriteOp[] {
  if (!Array.isArray(ops)) {
    throw new InvalidArgumentError(
      `commit ops must be an array of write ops, got ${ops === null ? 'null' : typeof ops}`,
    );
  }
  for (let i = 0; i < ops.length; i++) {
    const op: unknown = ops[i];
    const kind = typeof op === 'object' && op !== null ? (op as { op?: unknown }).op : undefined;
    if (kind !== 'put' && kind !== 'delete') {
      throw new InvalidArgumentError(
        `commit ops[${i}] must be { op: 'put', key, value } or { op: 'delete', key }`,
      );
    }
    try {
      assertValidKey((op as { key?: unknown }).key);
      if (kind === 'put') assertValidValue((op as { value?: unknown }).value);
    } catch (err) {
      throw new InvalidArgumentError(`commit ops[${i}]: ${(err as Error).message}`, { cause: err });
    }
  }
}
