/**
 * The reference storage adapter: a `Map` in the process's memory.
 *
 * Read it as the executable form of the `StorageAdapter` contract (src/storage/adapter.ts): every
 * other adapter must be indistinguishable from this one through the conformance suite
 * (test/conformance/suite.ts), except for what `capabilities` declares. Nothing survives the
 * process, so `capabilities.durable` is `false`; use it for tests, demos, and standbys that
 * rebuild their store from the relay.
 *
 * Snapshot mode is the `SnapshotStore` contract at its plainest: each version area is a map of
 * key → its last op in that checkpoint (a value, or `null` for a delete), kept beside the
 * visible data; forming one applies it to the data and sets the meta in one synchronous step.
 */
import { ClosedError } from '../../src/errors.js';
import {
  assertValidArea,
  assertValidKey,
  assertValidOps,
  assertValidValue,
  type SnapshotStore,
  type StorageAdapter,
  type StoreIdentity,
} from '../../src/storage/adapter.js';
import { addEntry, emptyDigest, entryLanes } from '../../src/storage/digest.js';
import { newIdentity, verifyResult } from '../../src/storage/identity.js';

/** Options of `memoryAdapter`. There are none yet; the parameter keeps the factory shape uniform. */
export type MemoryAdapterOptions = Record<string, never>;

/**
 * Creates an empty in-memory store.
 *
 * Contract, beyond `StorageAdapter` and `SnapshotStore`: `capabilities` is
 * `{ durable: false, snapshot: true }`; values are copied on the way in (`writeArea` included)
 * and on the way out, so a caller mutating a buffer it passed or received never changes the
 * store; each instance has its own data (two `memoryAdapter()` calls never share keys).
 */
export function memoryAdapter(_opts: MemoryAdapterOptions = {}): StorageAdapter & SnapshotStore {
  const data = new Map<string, Uint8Array>();
  let meta: Uint8Array | undefined;
  /** Version areas not formed yet: area → key → its last op there (`null` is a delete). */
  const areas = new Map<number, Map<string, Uint8Array | null>>();
  let closed = false;
  // Nothing outside this process can change the Map, so the token only records who opened it,
  // and the Map is its own content record: no digest is kept per commit (that would only cost
  // commit time); `verify` reports the content's digest as found and as recorded, and
  // `unrecorded` after direct writes, like the other adapters.
  let identity: StoreIdentity | undefined;
  let recorded = true;

  function assertOpen(): void {
    if (closed) throw new ClosedError('the memory adapter is closed');
  }

  // `new Uint8Array(v)` always copies; `v.slice()` would not, because `Buffer#slice` is a view.
  const copy = (v: Uint8Array): Uint8Array => new Uint8Array(v);

  /** Sets (value) or deletes (`null`) a committed key. */
  function setCommitted(key: string, value: Uint8Array | null): void {
    if (value === null) data.delete(key);
    else data.set(key, value);
  }

  return {
    kind: 'memory',
    capabilities: { durable: false, snapshot: true },

    async open(openOpts) {
      assertOpen();
      identity ??= newIdentity('restartpoint-memory 1', openOpts?.nodeId);
    },

    async verify(verifyOpts) {
      assertOpen();
      identity ??= newIdentity('restartpoint-memory 1', undefined);
      const quick = verifyOpts?.quick === true;
      const found = emptyDigest();
      if (quick) found.keys = data.size;
      else for (const [key, value] of data) addEntry(found, entryLanes('sha1', key, value));
      return verifyResult(identity, found, recorded ? found : undefined, quick);
    },

    async get(key) {
      assertOpen();
      assertValidKey(key);
      const value = data.get(key);
      return value === undefined ? undefined : copy(value);
    },

    async put(key, value) {
      assertOpen();
      assertValidKey(key);
      assertValidValue(value);
      recorded = false;
      data.set(key, copy(value));
    },

    async delete(key) {
      assertOpen();
      assertValidKey(key);
      recorded = false;
      data.delete(key);
    },

    async apply(ops) {
      assertOpen();
      assertValidOps(ops);
      recorded = false;
      for (const op of ops) {
        if (op.op === 'put') data.set(op.key, copy(op.value));
        else data.delete(op.key);
      }
    },

    async keys() {
      assertOpen();
      // The default sort compares UTF-16 code units: exactly the order the contract names.
      return [...data.keys()].sort();
    },

    async commit(ops, newMeta) {
      assertOpen();
      // Everything is checked before the first change, so a rejected batch leaves no trace; the
      // loop below never awaits, so no other call can observe the batch half-applied.
      assertValidOps(ops);
      assertValidValue(newMeta);
      for (const op of ops) setCommitted(op.key, op.op === 'put' ? copy(op.value) : null);
      meta = copy(newMeta);
    },

    async readMeta() {
      assertOpen();
      return meta === undefined ? undefined : copy(meta);
    },

    async clear() {
      assertOpen();
      data.clear();
      areas.clear();
      meta = undefined;
      recorded = true;
    },

    async close() {
      closed = true;
      data.clear();
      areas.clear();
      meta = undefined;
    },

    async writeArea(area, ops) {
      assertOpen();
      assertValidArea(area);
      assertValidOps(ops);
      const writes = areas.get(area) ?? new Map<string, Uint8Array | null>();
      for (const op of ops) writes.set(op.key, op.op === 'put' ? copy(op.value) : null);
      areas.set(area, writes);
    },

    async formSnapshot(area, newMeta) {
      assertOpen();
      assertValidArea(area);
      assertValidValue(newMeta);
      // One synchronous step: no reader can see the area half applied, or the data without its meta.
      for (const [key, value] of areas.get(area) ?? []) setCommitted(key, value);
      meta = copy(newMeta);
      // This area is formed now and those below it were formed before: nothing of them is needed.
      for (const id of areas.keys()) if (id <= area) areas.delete(id);
    },

    async releaseAreas() {
      assertOpen();
      areas.clear();
    },
  };
}
