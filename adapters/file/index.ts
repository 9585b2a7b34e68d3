/**
 * A durable storage adapter: one append-only log file in a directory, indexed in memory.
 *
 * ```text
 * <dir>/FORMAT                "restartpoint-file-store 2": marks the directory as a store
 * <dir>/log-0000000007        the live log: a snapshot record, then commit, put, delete, area,
 *                             form and release records
 * <dir>/log-0000000008.tmp    a compaction or clear being written; open() deletes it
 * <dir>/log-0000000006.corrupt  an unreadable log set aside when an older one could be used
 * ```
 *
 * The record layout is in ./log-format.ts. Every write appends one record; a commit is one
 * record holding all its ops and the meta, closed by a CRC. A commit counts once its record is
 * complete in the file (and fsynced, with `fsync: true`): that is the commit point. `open()`
 * scans the log, keeps every complete record, and cuts the file at the first incomplete or
 * damaged one, so a SIGKILL at any instant leaves the store at the previous commit or the new
 * one. The in-memory index (key → value's place in the log) is updated only after the commit
 * point, all at once, so a concurrent `get` sees every key of a batch old or every key new.
 *
 * When most of the log is superseded data, it is compacted: the live keys and meta are copied
 * into `log-<n+1>.tmp` as one snapshot record, fsynced, and renamed to `log-<n+1>` (the commit
 * point of the compaction); then the old log is deleted. `clear()` is a compaction to nothing.
 *
 * Snapshot mode is redirect-on-write inside the same log. `writeArea` appends an **area**
 * record (the area number and its ops); its values land in the log but enter only a per-area
 * index, never the visible one. `formSnapshot` appends a **form** record (the area number and
 * the meta) and fsyncs: that is the commit point, exactly as for a commit record, and only then
 * is the area's index merged into the visible one, in one synchronous step. `releaseAreas`
 * appends a **release** record that drops every unformed area. The scanner replays the same
 * rules, so a log cut anywhere shows the last form record it holds whole: the last snapshot or
 * the new one. Nothing is overwritten, so a formed snapshot's data is never touched by the next
 * area's writes. Compaction keeps unformed areas: they are copied into the new log as one area
 * record each, after its snapshot record, and survive it unchanged (a compaction can run
 * between any two calls, and the applier forms what it wrote before). `clear()` drops them.
 * docs/adapters-file.md has the crash-safety argument in full.
 */
import { mkdir, open, readdir, readFile, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { crc32 } from 'node:zlib';
import {
  ClosedError,
  ConfigError,
  RestartpointError,
  StorageError,
  StoreLostError,
} from '../../src/errors.js';
import {
  assertValidArea,
  assertValidKey,
  assertValidOps,
  assertValidValue,
  type SnapshotStore,
  type StorageAdapter,
  type StoreIdentity,
  type VerifyResult,
  type WriteOp,
} from '../../src/storage/adapter.js';
import {
  decodeIdentity,
  encodeIdentity,
  foreignAtOpen,
  newIdentity,
  storeLost,
  tokenProblem,
} from '../../src/storage/identity.js';
import {
  batchBodyLength,
  CHUNK,
  encodeArea,
  encodeBatchCount,
  encodeBatchMetaHead,
  encodeBatchOp,
  encodeDeleteRecord,
  encodeFormHead,
  encodePutRecord,
  encodeReleaseRecord,
  formBodyLength,
  LOG_MAGIC,
  readFully,
  RecordType,
  RecordWriter,
  scanLog,
  writeFully,
  type Change,
  type Range,
  type ScannedRecord,
} from './log-format.js';

/** Options of `fileAdapter`. */
export interface FileAdapterOptions {
  /**
   * Directory of the store, created if missing. It must be empty or hold a store written by
   * this adapter, and only one adapter instance (in any process) may use it at a time.
   */
  readonly dir: string;
  /**
   * Whether `commit` and `clear` fsync before resolving (default `true`). With `true` a resolved
   * commit survives power loss and kernel crashes as well as process crashes. With `false` it
   * survives the process being killed (the data is in the kernel's page cache) but not the
   * machine going down. Direct `put`/`delete` never fsync either way.
   */
  readonly fsync?: boolean;
  /**
   * The log is compacted once it is at least this many bytes and more than half of it is
   * superseded data (default 64 MiB). Lower values trade write bandwidth for disk space.
   */
  readonly compactBytes?: number;
}

/**
 * Creates a store in the directory `opts.dir`. Throws `ConfigError` for a missing or empty `dir`
 * or a bad option.
 *
 * Contract, beyond `StorageAdapter` and `SnapshotStore`: `capabilities` is
 * `{ durable: true, snapshot: true }`; `commit`, `formSnapshot`, `releaseAreas` and `clear` are
 * atomic against SIGKILL at any instant (and against power loss with `fsync: true`), and fsync
 * before resolving when `fsync` is on; `writeArea` does not fsync (the form record's fsync
 * covers it). Reads running beside a `commit` or `formSnapshot` see all of it or none of it.
 * Unformed areas survive close and reopen as far as they reached the log (after a crash, a
 * prefix of the `writeArea` calls), still invisible. Mutating calls run one at a time in call
 * order, reads run at once. `put` copies its value before returning; buffers passed to `commit`
 * or `writeArea` must not change until the call settles (large values are streamed to disk,
 * not copied). Every key is held in memory (the index, and one per unformed area); values stay
 * on disk. POSIX filesystems only.
 */
export function fileAdapter(opts: FileAdapterOptions): StorageAdapter & SnapshotStore {
  const o = checkOptions(opts);
  let store: Store | undefined;
  let closed = false;
  let closing: Promise<void> | undefined;
  // Set when a mutation failed: the file may hold a partial record, so re-read it before the next.
  let needsRecovery = false;
  let tail: Promise<unknown> = Promise.resolve();
  // Log size at the last failed compaction; none is tried again before the log doubles.
  let compactFailedAt = 0;
  /** The token this instance opened with (set by the first load). */
  let identity: StoreIdentity | undefined;
  let nodeId: string | undefined;
  /** Set once the store was found lost: every later call rejects with it. */
  let lost: StoreLostError | undefined;

  function assertOpen(): void {
    if (closed) throw new ClosedError(`the file store at ${o.root} is closed`);
    if (lost !== undefined) throw lost;
  }

  const lostHere = (why: string, cause?: unknown): StoreLostError => storeLost(`file ${o.root}`, why, cause);

  /**
   * The live log is still the file this adapter wrote: same inode at its path, same size.
   * Two stats (a few µs), run before every mutation.
   */
  async function checkLog(s: Store): Promise<void> {
    const at = await stat(s.log.path).catch(() => undefined);
    if (at === undefined)
      throw lostHere(`${s.log.path} is gone: the store was removed underneath the adapter`);
    if (at.ino !== s.log.ino) {
      throw lostHere(
        `${s.log.path} is another file than the one the adapter opened: the store was replaced underneath it`,
      );
    }
    const { size } = await s.log.fh.stat();
    if (size !== s.log.size) {
      throw lostHere(
        `${s.log.path} is ${size} bytes, the adapter wrote ${s.log.size}: it was ${size < s.log.size ? 'truncated' : 'appended to'} underneath the adapter`,
      );
    }
  }

  /** The store's IDENT file against the token this instance opened with (or claims it the first time). */
  async function checkIdentity(s: Store): Promise<void> {
    const path = join(o.root, 'IDENT');
    const found = await readFile(path, 'utf8').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (identity !== undefined) {
      const problem = tokenProblem(found, identity);
      if (problem !== undefined) throw lostHere(problem);
      return;
    }
    if (found !== undefined) {
      const id = decodeIdentity(found);
      if (id === undefined || encodeIdentity(id) !== found)
        throw lostHere(`${path} holds no identity token this build writes`);
      const foreign = foreignAtOpen(id, FORMAT.trim(), nodeId);
      if (foreign !== undefined) throw lostHere(foreign);
      identity = id;
      return;
    }
    // No token: a new store, or one of an older version (adopted: the index is rebuilt from the
    // log at every load, so there is nothing else to record).
    void s;
    const id = newIdentity(FORMAT.trim(), nodeId);
    await writeSmallFile(o, 'IDENT', encodeIdentity(id));
    identity = id;
  }

  /** Runs `fn` after every earlier mutation, loading (or reloading) the store first if needed. */
  function mutate<T>(fn: (s: Store) => Promise<T>): Promise<T> {
    const run = tail.then(async () => {
      assertOpen();
      if (store === undefined || needsRecovery) {
        const before = store?.log;
        if (store !== undefined) retire(store.log);
        store = undefined;
        const loaded = await load(o);
        // A reload after a failed mutation may cut that mutation's partial record, never more:
        // a log that went back behind what this adapter had completed lost data underneath it.
        if (
          before !== undefined &&
          (loaded.log.id < before.id || (loaded.log.id === before.id && loaded.log.size < before.size))
        ) {
          retire(loaded.log);
          throw lostHere(
            `${before.path} went back from ${before.size} bytes to ${loaded.log.path} at ${loaded.log.size}: data was lost underneath the adapter`,
          );
        }
        try {
          await checkIdentity(loaded);
        } catch (err) {
          retire(loaded.log);
          throw err;
        }
        store = loaded;
        needsRecovery = false;
      } else {
        await checkLog(store);
      }
      const log = store.log;
      const at = log.size;
      const tail = await tailBytes(log, at);
      try {
        const result = await fn(store);
        // A log truncated between the size check above and this mutation's write: the write
        // landed past the new end, leaving a hole of zeros where the record before it was.
        if (log.size > at && tail !== undefined && !(await tailBytes(log, at))?.equals(tail)) {
          throw lostHere(
            `${log.path} changed underneath the adapter while it wrote (the bytes before offset ${at} are no longer the last record's): it was truncated or overwritten`,
          );
        }
        return result;
      } catch (err) {
        if (!(err instanceof StoreLostError)) needsRecovery = true;
        throw err;
      }
    });
    tail = run.catch(() => undefined);
    return run.catch((err: unknown) => {
      const e = storageError(o.root, err);
      if (e instanceof StoreLostError) lost ??= e;
      throw e;
    });
  }

  /** Reads that check what they read (CRC, file length) mark the adapter lost when they fail. */
  async function reading<T>(p: Promise<T>): Promise<T> {
    try {
      return await p;
    } catch (err) {
      if (err instanceof StoreLostError) lost ??= err;
      throw err;
    }
  }

  /**
   * Full check: the log at its path, scanned again from disk, must say exactly what the index
   * says (every key at the same place with the same CRC, the same meta), end where the adapter
   * last wrote, and be the same file. Runs in the mutation queue: no write moves under it.
   */
  async function verify(quick: boolean): Promise<VerifyResult> {
    return mutate(async (s) => {
      // mutate() has checked the file's inode and size; the token is read again here.
      await checkIdentity(s);
      const base = { identity: identity!, keys: s.index.size, expectedKeys: s.index.size, quick };
      const none = { digest: undefined, expectedDigest: undefined };
      if (quick) {
        return {
          ...base,
          ...none,
          status: 'ok',
          ok: true,
          detail: `identity ok, ${s.log.path} is the file written (inode and size), ${s.index.size} keys`,
        };
      }
      const fh = await open(s.log.path, 'r');
      let scanned: Store;
      let end: number | undefined;
      try {
        const { size, ino } = await fh.stat();
        scanned = emptyStore({ ...s.log, fh, size, ino });
        end = await scanLog(fh, size, (record) => {
          applyRecord(scanned, record);
          return true;
        });
      } finally {
        await fh.close();
      }
      const differ: string[] = [];
      if (end !== s.log.size)
        differ.push(`the log's valid records end at ${String(end)}, the adapter wrote ${s.log.size} bytes`);
      for (const [key, at] of s.index) {
        const got = scanned.index.get(key);
        if (got === undefined) differ.push(`key ${JSON.stringify(key)} is missing`);
        else if (got.offset !== at.offset || got.length !== at.length || got.crc !== at.crc)
          differ.push(`key ${JSON.stringify(key)} changed`);
        if (differ.length > 5) break;
      }
      for (const key of scanned.index.keys()) {
        if (differ.length > 5) break;
        if (!s.index.has(key)) differ.push(`key ${JSON.stringify(key)} appeared`);
      }
      if (
        (s.meta === undefined) !== (scanned.meta === undefined) ||
        (s.meta !== undefined && (s.meta.offset !== scanned.meta!.offset || s.meta.crc !== scanned.meta!.crc))
      ) {
        differ.push('the meta changed');
      }
      const found = { ...base, keys: scanned.index.size, ...none };
      if (differ.length > 0) {
        return {
          ...found,
          status: 'mismatch',
          ok: false,
          detail: `the log on disk disagrees with what the adapter wrote: ${differ.slice(0, 5).join('; ')}`,
        };
      }
      return {
        ...found,
        status: 'ok',
        ok: true,
        detail: `identity ok; ${s.log.path} rescanned: every record's CRC, ${scanned.index.size} keys at the places and with the CRCs written`,
      };
    });
  }

  function shouldCompact(s: Store): boolean {
    const size = s.log.size;
    return size >= o.compactBytes && size > 2 * (s.liveBytes + s.areaBytes) && size >= 2 * compactFailedAt;
  }

  /**
   * Makes a freshly written log the live one, then retires and deletes the old. In this order: a
   * read that takes the store in the meantime must find a log that is still open.
   */
  async function install(next: Store): Promise<void> {
    const old = store;
    store = next;
    if (old === undefined) return;
    retire(old.log);
    // Best effort: a leftover older log is superseded by the new one and deleted by the next load.
    await unlink(old.log.path).catch(() => undefined);
  }

  /** Queues a compaction when the log has grown mostly stale. Runs after the caller's call resolves. */
  function maybeCompact(s: Store): void {
    if (closed || !shouldCompact(s)) return;
    // Queued like any mutation, so close() waits for it. Its failure is not the caller's (their
    // write is already durable): the store is reloaded from disk, which holds either log whole.
    void mutate(async (current) => {
      if (!shouldCompact(current)) return;
      try {
        await install(await rewrite(o, current, true));
        compactFailedAt = 0;
      } catch {
        compactFailedAt = current.log.size;
        needsRecovery = true;
      }
    }).catch(() => undefined);
  }

  /**
   * Runs a read against the loaded store. Reads need no queue, but `fn` must start its file
   * reads in the same turn as it is given the store (readRange counts them at once): a turn
   * later, a compaction may have retired that store's log.
   */
  async function withStore<T>(fn: (s: Store) => T): Promise<T> {
    assertOpen();
    // Not loaded yet, or reloading after a failed mutation: wait behind the load.
    while (store === undefined) await mutate(async () => undefined);
    assertOpen();
    return fn(store);
  }

  /** A read of a value: checked by its CRC and the file's length (readRange). */
  async function readValue(
    fn: (s: Store) => Promise<Uint8Array> | undefined,
  ): Promise<Uint8Array | undefined> {
    return reading(withStore(fn));
  }

  return {
    kind: 'file',
    capabilities: { durable: true, snapshot: true },

    async open(openOpts) {
      assertOpen();
      nodeId ??= openOpts?.nodeId;
      await mutate(async () => undefined);
    },

    async verify(verifyOpts) {
      assertOpen();
      return verify(verifyOpts?.quick === true);
    },

    async reclaim() {
      if (closed) throw new ClosedError(`the file store at ${o.root} is closed`);
      if (lost === undefined) return;
      const was = lost;
      const run = tail.then(async () => {
        // Another node's store is never emptied.
        const found = await readFile(join(o.root, 'IDENT'), 'utf8').catch(() => undefined);
        const id = found === undefined ? undefined : decodeIdentity(found);
        const foreign = id === undefined ? undefined : foreignAtOpen(id, FORMAT.trim(), nodeId);
        if (foreign !== undefined) throw lostHere(foreign);
        // What is left of a damaged store cannot be trusted: drop its logs and token; the next
        // call starts an empty store with a new token (FORMAT stays: the directory stays ours).
        if (store !== undefined) retire(store.log);
        store = undefined;
        const names = await readdir(o.root).catch(() => [] as string[]);
        for (const name of names) {
          if (name !== 'FORMAT' && isOwnName(name)) await rm(join(o.root, name), { force: true });
        }
        identity = undefined;
        needsRecovery = false;
        lost = undefined;
      });
      tail = run.catch(() => undefined);
      try {
        await run;
      } catch (err) {
        lost = err instanceof StoreLostError ? err : was;
        throw err;
      }
      await mutate(async () => undefined);
    },

    async get(key) {
      assertValidKey(key);
      return readValue((s) => {
        const at = s.index.get(key);
        return at === undefined ? undefined : readRange(o.root, s.log, at);
      });
    },

    async put(key, value) {
      assertOpen();
      assertValidKey(key);
      assertValidValue(value);
      // Encoded (so copied) now: the caller may reuse its buffer as soon as this returns.
      const { record, valueOffset } = encodePutRecord(Buffer.from(key, 'utf8'), value);
      await mutate(async (s) => {
        const at = await append(s.log, record);
        setKey(s, key, { offset: at + valueOffset, length: value.length, crc: crc32(value) });
        maybeCompact(s);
      });
    },

    async delete(key) {
      assertOpen();
      assertValidKey(key);
      await mutate(async (s) => {
        if (!s.index.has(key)) return;
        await append(s.log, encodeDeleteRecord(Buffer.from(key, 'utf8')));
        setKey(s, key, null);
        maybeCompact(s);
      });
    },

    async apply(ops) {
      assertOpen();
      assertValidOps(ops);
      // One append for the whole group, encoded (so copied) now like put.
      const records = ops.map((op) => {
        const key = Buffer.from(op.key, 'utf8');
        return op.op === 'put'
          ? encodePutRecord(key, op.value)
          : { record: encodeDeleteRecord(key), valueOffset: 0 };
      });
      const all = Buffer.concat(records.map((r) => r.record));
      await mutate(async (s) => {
        let at = await append(s.log, all);
        for (let i = 0; i < ops.length; i++) {
          const op = ops[i]!;
          const { record, valueOffset } = records[i]!;
          setKey(
            s,
            op.key,
            op.op === 'put'
              ? { offset: at + valueOffset, length: op.value.length, crc: crc32(op.value) }
              : null,
          );
          at += record.length;
        }
        maybeCompact(s);
      });
    },

    async keys() {
      // Code-unit order, as the contract says: the default string sort.
      return withStore((s) => [...s.index.keys()].sort());
    },

    async commit(ops, meta) {
      assertOpen();
      assertValidOps(ops);
      assertValidValue(meta);
      await mutate(async (s) => {
        await appendCommit(o, s, ops, meta);
        maybeCompact(s);
      });
    },

    async readMeta() {
      return readValue((s) => (s.meta === undefined ? undefined : readRange(o.root, s.log, s.meta)));
    },

    async writeArea(area, ops) {
      assertOpen();
      assertValidArea(area);
      assertValidOps(ops);
      if (ops.length === 0) return;
      await mutate(async (s) => {
        // No fsync: an area needs to be durable only once formed, and the form record's fsync
        // covers every byte before it.
        const { end, changes } = await writeBatch(s, RecordType.Area, area, ops, undefined);
        s.log.size = end;
        for (const [key, at] of changes) setAreaKey(s, area, key, at);
        maybeCompact(s);
      });
    },

    async formSnapshot(area, meta) {
      assertOpen();
      assertValidArea(area);
      assertValidValue(meta);
      await mutate(async (s) => {
        const w = new RecordWriter(s.log.fh, s.log.size, RecordType.Form, formBodyLength(meta.length));
        await w.add(encodeFormHead(area, meta.length));
        const metaAt = { offset: await w.add(meta), length: meta.length, crc: crc32(meta) };
        await w.finish();
        if (o.fsync) await s.log.fh.datasync();
        s.log.size = w.end;
        // The commit point has passed. No await from here on: a concurrent get() sees all of the
        // area or none of it, and the meta that goes with what it sees.
        formArea(s, area, metaAt);
        maybeCompact(s);
      });
    },

    async releaseAreas() {
      assertOpen();
      await mutate(async (s) => {
        // The in-memory areas mirror the log's: none here means none there to release.
        if (s.areas.size === 0) return;
        await append(s.log, encodeReleaseRecord());
        // Durable, so that released writes can never come back and be formed with later ones.
        if (o.fsync) await s.log.fh.datasync();
        dropAreas(s, Infinity);
      });
    },

    async clear() {
      assertOpen();
      await mutate(async (s) => install(await rewrite(o, s, false)));
    },

    close() {
      closed = true;
      closing ??= (async () => {
        // Let queued mutations finish (a caller that did not await a put still expects it done),
        // including work one of them queues on its way out.
        for (let t = tail; ; t = tail) {
          await t;
          if (t === tail) break;
        }
        if (store !== undefined) retire(store.log);
      })();
      return closing;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// State

/**
 * Content of `<dir>/FORMAT`; the number changes when the layout changes incompatibly. Format 2
 * added the snapshot-mode records (area, form, release); a format 1 store is a valid format 2
 * store, and is marked 2 when opened (so that an older build, which would cut the log at the
 * first record type it does not know, refuses it instead).
 */
const FORMAT = 'restartpoint-file-store 2\n';
const FORMAT_1 = 'restartpoint-file-store 1\n';
const DEFAULT_COMPACT_BYTES = 64 * 1024 * 1024;
/** Values at most this large are read ahead in parallel while compacting. */
const PREFETCH_BYTES = 256 * 1024;
const PREFETCH_COUNT = 32;
/** errno codes after which the same call may succeed later unchanged. */
const RETRYABLE_CODES = new Set(['ENOSPC', 'EMFILE', 'ENFILE', 'EAGAIN', 'EBUSY', 'EINTR']);
const LOG_NAME = /^log-(\d{10})$/;

interface Options {
  readonly root: string;
  readonly fsync: boolean;
  readonly compactBytes: number;
}

/** One open log file. */
interface Log {
  readonly id: number;
  readonly path: string;
  readonly fh: FileHandle;
  /** Offset of the next append: the end of the last complete record. */
  size: number;
  /** Reads in flight; a retired log is closed when they reach 0. */
  reads: number;
  retired: boolean;
  /** Inode of the file, to tell it from a file put in its place. */
  ino: number;
}

/** The loaded store: its live log and what that log says. */
interface Store {
  readonly log: Log;
  /** Every key, with its current value's place in the log. */
  readonly index: Map<string, Range>;
  meta: Range | undefined;
  /** Approximate bytes of live data, to decide on compaction. */
  liveBytes: number;
  /** Unformed version areas: area → key → its last write there (`null`: deleted). */
  readonly areas: Map<number, Map<string, Range | null>>;
  /** Approximate bytes held by unformed areas; compaction copies them too. */
  areaBytes: number;
}

/** A store with nothing in it, over `log`. */
function emptyStore(log: Log): Store {
  return { log, index: new Map(), meta: undefined, liveBytes: 0, areas: new Map(), areaBytes: 0 };
}

function checkOptions(opts: FileAdapterOptions): Options {
  const dir: unknown = (opts as Partial<FileAdapterOptions> | undefined)?.dir;
  if (typeof dir !== 'string' || dir.length === 0) {
    throw new ConfigError('storage.dir', 'must be a non-empty path, e.g. fileAdapter({ dir: "./data/a" })');
  }
  const fsync: unknown = opts.fsync ?? true;
  if (typeof fsync !== 'boolean') {
    throw new ConfigError('storage.fsync', `must be true or false, got ${typeof fsync}`);
  }
  const compactBytes: unknown = opts.compactBytes ?? DEFAULT_COMPACT_BYTES;
  if (typeof compactBytes !== 'number' || !Number.isSafeInteger(compactBytes) || compactBytes < 1) {
    throw new ConfigError(
      'storage.compactBytes',
      `must be a positive integer (bytes), got ${String(compactBytes)}`,
    );
  }
  return { root: resolve(dir), fsync, compactBytes };
}

const logPath = (o: Options, id: number): string => join(o.root, `log-${String(id).padStart(10, '0')}`);

/** Bytes a live entry is counted for: enough to tell a log that is mostly garbage. */
const entryBytes = (key: string, at: Range): number => key.length + at.length + 16;

function setKey(s: Store, key: string, at: Range | null): void {
  const old = s.index.get(key);
  if (old !== undefined) s.liveBytes -= entryBytes(key, old);
  if (at === null) {
    s.index.delete(key);
  } else {
    s.index.set(key, at);
    s.liveBytes += entryBytes(key, at);
  }
}

function setMeta(s: Store, at: Range | undefined): void {
  if (s.meta !== undefined) s.liveBytes -= s.meta.length;
  s.meta = at;
  if (at !== undefined) s.liveBytes += at.length;
}

const areaEntryBytes = (key: string, at: Range | null): number => key.length + (at?.length ?? 0) + 16;

/** Records `key`'s latest write in the unformed `area`. */
function setAreaKey(s: Store, area: number, key: string, at: Range | null): void {
  let writes = s.areas.get(area);
  if (writes === undefined) s.areas.set(area, (writes = new Map()));
  const old = writes.get(key);
  if (old !== undefined) s.areaBytes -= areaEntryBytes(key, old);
  writes.set(key, at);
  s.areaBytes += areaEntryBytes(key, at);
}

/** Drops every unformed area numbered `upTo` or less. */
function dropAreas(s: Store, upTo: number): void {
  for (const [area, writes] of s.areas) {
    if (area > upTo) continue;
    for (const [key, at] of writes) s.areaBytes -= areaEntryBytes(key, at);
    s.areas.delete(area);
  }
}

/**
 * Makes `area` the visible snapshot: its writes applied, the meta replaced, and every area at
 * or below it dropped (those checkpoints are formed; what is left of them is garbage). Never
 * awaits, so no reader sees it half done. The scanner calls it for each form record too.
 */
function formArea(s: Store, area: number, meta: Range): void {
  for (const [key, at] of s.areas.get(area) ?? []) setKey(s, key, at);
  setMeta(s, meta);
  dropAreas(s, area);
}

// ---------------------------------------------------------------------------------------------
// Reading

async function readRange(root: string, log: Log, at: Range): Promise<Uint8Array> {
  log.reads++;
  try {
    // A fresh Uint8Array per call: the caller owns it, and nothing else can see it.
    const out = new Uint8Array(at.length);
    try {
      await readFully(log.fh, out, at.offset);
    } catch (err) {
      if ((err as Error).message.startsWith('unexpected end of log file')) {
        throw storeLost(
          `file ${root}`,
          `${log.path} is shorter than the adapter wrote it (a value at ${at.offset} is past its end): it was truncated underneath the adapter`,
          err,
        );
      }
      throw err;
    }
    // Checked on every read: damaged or replaced bytes are an error, never returned as data.
    if (at.crc !== undefined && crc32(out) !== at.crc) {
      throw storeLost(
        `file ${root}`,
        `the ${at.length} bytes at ${at.offset} of ${log.path} fail their CRC: the file was changed underneath the adapter`,
      );
    }
    return out;
  } catch (err) {
    throw storageError(root, err);
  } finally {
    log.reads--;
    if (log.retired && log.reads === 0) closeLog(log);
  }
}

/** Stops new use of a log; its file closes once the reads already running on it are done. */
function retire(log: Log): void {
  log.retired = true;
  if (log.reads === 0) closeLog(log);
}

function closeLog(log: Log): void {
  // Closing can only fail for a handle already closed; nothing to do about it either way.
  log.fh.close().catch(() => undefined);
}

// ---------------------------------------------------------------------------------------------
// Writing

/** Appends a whole record; resolves to its offset. A failed append leaves recovery to `load`. */
/** The 4 bytes ending at `end` (the CRC of the record that ends there), or `undefined` for a log too short. */
async function tailBytes(log: Log, end: number): Promise<Buffer | undefined> {
  if (end < 8) return undefined;
  const b = Buffer.alloc(4);
  const { bytesRead } = await log.fh.read(b, 0, 4, end - 4);
  return bytesRead === 4 ? b : b.subarray(0, bytesRead);
}

async function append(log: Log, record: Buffer): Promise<number> {
  const at = log.size;
  await writeFully(log.fh, record, at);
  log.size = at + record.length;
  return at;
}

/**
 * Streams `ops` (and `meta` when given) as one batch record of `type` (commit, or area `area`)
 * at the end of the log. Resolves to where the record ends and where each value and the meta
 * landed; the caller moves `s.log.size` and, past its commit point, the index.
 */
async function writeBatch(
  s: Store,
  type: typeof RecordType.Commit | typeof RecordType.Area,
  area: number | undefined,
  ops: readonly WriteOp[],
  meta: Uint8Array | undefined,
): Promise<{ end: number; changes: Change[]; metaAt: Range | undefined }> {
  const keys = ops.map((op) => Buffer.from(op.key, 'utf8'));
  const sizes = ops.map((op, i) => [keys[i]!.length, op.op === 'put' ? op.value.length : null] as const);
  const head = area === undefined ? 0 : 8;
  const w = new RecordWriter(s.log.fh, s.log.size, type, head + batchBodyLength(sizes, meta?.length));
  if (area !== undefined) await w.add(encodeArea(area));
  await w.add(encodeBatchCount(ops.length));
  const changes: Change[] = [];
  for (let i = 0; i < ops.length; i++) {
    const op = ops[i]!;
    await w.add(encodeBatchOp(keys[i]!, op.op === 'put' ? op.value.length : null));
    if (op.op === 'put') {
      changes.push([
        op.key,
        { offset: await w.add(op.value), length: op.value.length, crc: crc32(op.value) },
      ]);
    } else changes.push([op.key, null]);
  }
  await w.add(encodeBatchMetaHead(meta?.length));
  const metaAt =
    meta === undefined ? undefined : { offset: await w.add(meta), length: meta.length, crc: crc32(meta) };
  await w.finish();
  return { end: w.end, changes, metaAt };
}

/** Writes `ops` and `meta` as one commit record, then publishes them to the index at once. */
async function appendCommit(o: Options, s: Store, ops: readonly WriteOp[], meta: Uint8Array): Promise<void> {
  const { end, changes, metaAt } = await writeBatch(s, RecordType.Commit, undefined, ops, meta);
  if (o.fsync) await s.log.fh.datasync();
  s.log.size = end;
  // The commit point has passed. No await from here on: a concurrent get() sees all of it or none.
  for (const [key, at] of changes) setKey(s, key, at);
  setMeta(s, metaAt);
}

/**
 * Writes a new log holding a snapshot record (of `s` when `keep`, else empty) and, when `keep`,
 * one area record per unformed area of `s`; renames it into place; the caller then installs it
 * and drops the old one. The rename is the commit point: a crash before it leaves a `.tmp` that
 * `load` deletes, a crash after it leaves the new log in use.
 */
async function rewrite(o: Options, s: Store | undefined, keep: boolean): Promise<Store> {
  const id = (s?.log.id ?? 0) + 1;
  const path = logPath(o, id);
  const tmp = `${path}.tmp`;
  const from = keep ? s : undefined;
  const entries = from === undefined ? [] : [...from.index];
  const areas = from === undefined ? [] : [...from.areas].sort(([x], [y]) => x - y);
  const meta = from?.meta;
  const fh = await open(tmp, 'w+');
  let next: Store;
  try {
    await writeFully(fh, LOG_MAGIC, 0);
    const log: Log = {
      id,
      path,
      fh,
      size: LOG_MAGIC.length,
      reads: 0,
      retired: false,
      ino: (await fh.stat()).ino,
    };
    next = emptyStore(log);

    const keys = entries.map(([key]) => Buffer.from(key, 'utf8'));
    const sizes = entries.map(([, at], i) => [keys[i]!.length, at.length] as const);
    let w = new RecordWriter(fh, log.size, RecordType.Snapshot, batchBodyLength(sizes, meta?.length));
    for (const [key, at] of await copyOps(o.root, w, from?.log, entries, keys)) setKey(next, key, at);
    await w.add(encodeBatchMetaHead(meta?.length));
    if (meta !== undefined) {
      setMeta(next, {
        offset: await copyValue(o.root, w, from!.log, meta, undefined),
        length: meta.length,
        crc: meta.crc,
      });
    }
    await w.finish();
    log.size = w.end;

    for (const [area, writes] of areas) {
      const ops = [...writes];
      const opKeys = ops.map(([key]) => Buffer.from(key, 'utf8'));
      const opSizes = ops.map(([, at], i) => [opKeys[i]!.length, at?.length ?? null] as const);
      w = new RecordWriter(fh, log.size, RecordType.Area, 8 + batchBodyLength(opSizes, undefined));
      await w.add(encodeArea(area));
      for (const [key, at] of await copyOps(o.root, w, from!.log, ops, opKeys))
        setAreaKey(next, area, key, at);
      await w.add(encodeBatchMetaHead(undefined));
      await w.finish();
      log.size = w.end;
    }

    if (o.fsync) await fh.sync();
    await rename(tmp, path);
    if (o.fsync) await syncDir(o.root);
  } catch (err) {
    await fh.close();
    await rm(tmp, { force: true });
    throw err;
  }
  return next;
}

/**
 * Appends the op count and `ops` (values read from `from`, `null` for a delete) to the batch
 * being written by `w`; resolves to where each value landed.
 */
async function copyOps(
  root: string,
  w: RecordWriter,
  from: Log | undefined,
  ops: readonly (readonly [string, Range | null])[],
  keys: readonly Buffer[],
): Promise<Change[]> {
  await w.add(encodeBatchCount(ops.length));
  const out: Change[] = [];
  for (let i = 0; i < ops.length; i += PREFETCH_COUNT) {
    // Small values are read ahead in parallel: one by one, a compaction of 100 000 keys would
    // wait for 100 000 sequential reads.
    const group = ops.slice(i, i + PREFETCH_COUNT);
    const ahead = await Promise.all(
      group.map(([, at]) =>
        at !== null && at.length <= PREFETCH_BYTES ? readRange(root, from!, at) : undefined,
      ),
    );
    for (let j = 0; j < group.length; j++) {
      const [key, at] = group[j]!;
      await w.add(encodeBatchOp(keys[i + j]!, at?.length ?? null));
      if (at === null) out.push([key, null]);
      else {
        const offset = await copyValue(root, w, from!, at, ahead[j]);
        out.push([key, { offset, length: at.length, crc: at.crc }]);
      }
    }
  }
  return out;
}

/** Appends a value read from `from` to `w`, at most CHUNK bytes in memory; resolves to its offset. */
async function copyValue(
  root: string,
  w: RecordWriter,
  from: Log,
  at: Range,
  prefetched: Uint8Array | undefined,
): Promise<number> {
  if (prefetched !== undefined) return w.add(prefetched);
  let offset: number | undefined;
  for (let done = 0; done < at.length || offset === undefined;) {
    const n = Math.min(CHUNK, at.length - done);
    const piece = await readRange(root, from, { offset: at.offset + done, length: n });
    const landed = await w.add(piece);
    offset ??= landed;
    done += n;
  }
  return offset;
}

// ---------------------------------------------------------------------------------------------
// Loading and recovery

/**
 * Opens the store: checks the directory is ours, picks the newest readable log, cuts it after
 * its last complete record, and deletes leftovers. Creates an empty store in an empty directory.
 */
async function load(o: Options): Promise<Store> {
  await mkdir(o.root, { recursive: true });
  const names = await readdir(o.root);
  if (names.includes('FORMAT')) {
    const format = await readFile(join(o.root, 'FORMAT'), 'utf8');
    if (format === FORMAT_1) {
      await writeSmallFile(o, 'FORMAT', FORMAT);
    } else if (format !== FORMAT) {
      throw new StorageError(
        `file store: ${o.root} holds format ${JSON.stringify(format.trim())}; this version reads ${JSON.stringify(FORMAT.trim())}`,
      );
    }
  } else {
    // clear() replaces the whole store: refuse a directory holding anything of someone else's.
    const foreign = names.filter((n) => !isOwnName(n));
    if (foreign.length > 0) {
      throw new ConfigError(
        'storage.dir',
        `is ${o.root}, which is not empty and is not a restartpoint file store (it holds ${foreign
          .slice(0, 3)
          .map((n) => JSON.stringify(n))
          .join(', ')}); use an empty or new directory`,
      );
    }
    await writeSmallFile(o, 'FORMAT', FORMAT);
  }
  for (const name of names) if (name.endsWith('.tmp')) await rm(join(o.root, name), { force: true });

  const ids = names
    .map((n) => LOG_NAME.exec(n)?.[1])
    .filter((n): n is string => n !== undefined)
    .map(Number)
    .sort((a, b) => b - a);
  const unreadable: number[] = [];
  let store: Store | undefined;
  for (const id of ids) {
    store = await loadLog(o, id);
    if (store !== undefined) break;
    unreadable.push(id);
  }
  if (store === undefined) {
    if (ids.length > 0) {
      throw new StorageError(
        `file store: ${o.root} has no readable log (${ids.map((id) => logPath(o, id)).join(', ')})`,
      );
    }
    return rewrite(o, undefined, false);
  }
  // A newer log that cannot be read lost its snapshot to disk damage (or to power loss with
  // fsync: false); the older one is complete. Kept aside for whoever investigates.
  for (const id of unreadable) await rename(logPath(o, id), `${logPath(o, id)}.corrupt`);
  for (const id of ids) if (id < store.log.id) await rm(logPath(o, id), { force: true });
  return store;
}

/** Applies a scanned record to `s`: the same rules as the live calls. */
function applyRecord(s: Store, record: ScannedRecord): void {
  // Area writes wait in their area until a form record.
  if (record.type === RecordType.Area) {
    for (const [key, at] of record.changes) setAreaKey(s, record.area!, key, at);
  } else if (record.type === RecordType.Form) {
    formArea(s, record.area!, record.meta!);
  } else if (record.type === RecordType.Release) {
    dropAreas(s, Infinity);
  } else {
    for (const [key, at] of record.changes) setKey(s, key, at);
    if (record.meta !== undefined) setMeta(s, record.meta ?? undefined);
  }
}

/** Loads one log, or `undefined` when it does not start with a complete snapshot record. */
async function loadLog(o: Options, id: number): Promise<Store | undefined> {
  const path = logPath(o, id);
  const fh = await open(path, 'r+');
  try {
    const { size, ino } = await fh.stat();
    const s = emptyStore({ id, path, fh, size: 0, reads: 0, retired: false, ino });
    let records = 0;
    const end = await scanLog(fh, size, (record) => {
      // Exactly one snapshot, first; anything else is not a log this adapter wrote.
      if ((records === 0) !== (record.type === RecordType.Snapshot)) return false;
      records++;
      applyRecord(s, record);
      return true;
    });
    if (end === undefined || records === 0) {
      await fh.close();
      return undefined;
    }
    if (end < size) {
      // Whatever follows the last complete record never reached its commit point.
      await fh.truncate(end);
      if (o.fsync) await fh.sync();
    }
    s.log.size = end;
    return s;
  } catch (err) {
    await fh.close();
    throw err;
  }
}

/** Names the store creates at its root; anything else means `dir` belongs to someone else. */
function isOwnName(name: string): boolean {
  return /^(FORMAT|IDENT)(\.tmp)?$/.test(name) || /^log-\d{10}(\.tmp|\.corrupt)?$/.test(name);
}

/** Writes a small file at the store's root atomically (temporary file, fsync, rename). */
async function writeSmallFile(o: Options, name: string, content: string): Promise<void> {
  const tmp = join(o.root, `${name}.tmp`);
  const fh = await open(tmp, 'w');
  try {
    await writeFully(fh, Buffer.from(content), 0);
    if (o.fsync) await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, join(o.root, name));
  if (o.fsync) await syncDir(o.root);
}

/** Makes a directory's entries (creates, renames, unlinks) durable. */
async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Our own errors pass through; filesystem errors become `StorageError`s naming the store. */
function storageError(root: string, err: unknown): Error {
  if (err instanceof RestartpointError) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const message = err instanceof Error ? err.message : String(err);
  return new StorageError(`file store ${root}: ${message}`, {
    cause: err,
    retryable: code !== undefined && RETRYABLE_CODES.has(code),
  });
}

/** What `inspectFileStore` found, without changing anything. */
export interface FileStoreInspection {
  /** `<dir>/FORMAT` names this adapter's store format. */
  readonly isStore: boolean;
  /** The live (newest) log's path, when there is one. */
  readonly log: string | undefined;
  /** Its size in bytes. */
  readonly size: number | undefined;
  /** Where its last complete, CRC-checked record ends; `undefined` when it does not start like a log. */
  readonly end: number | undefined;
}

/**
 * Reads a file store's directory and newest log **read-only** (no recovery, no truncation, no
 * leftover deleted, no token written), for `restartpoint verify` on a stopped node: `end < size`
 * means bytes after the last complete record (a torn tail after a crash mid-write, or a log cut
 * or damaged underneath), which the next `open()` would cut away.
 */
export async function inspectFileStore(dir: string): Promise<FileStoreInspection> {
  const root = resolve(dir);
  const names = await readdir(root).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [] as string[];
    throw err;
  });
  const format = names.includes('FORMAT') ? await readFile(join(root, 'FORMAT'), 'utf8') : undefined;
  const isStore = format === FORMAT || format === FORMAT_1;
  const ids = names
    .map((n) => LOG_NAME.exec(n)?.[1])
    .filter((n): n is string => n !== undefined)
    .map(Number)
    .sort((a, b) => b - a);
  if (!isStore || ids.length === 0) return { isStore, log: undefined, size: undefined, end: undefined };
  const path = join(root, `log-${String(ids[0]).padStart(10, '0')}`);
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    const end = await scanLog(fh, size, () => true);
    return { isStore, log: path, size, end };
  } finally {
    await fh.close();
  }
}
