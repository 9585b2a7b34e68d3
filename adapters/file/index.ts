/**
 * A durable storage adapter over a directory of plain files.
 *
 * On-disk layout (docs/adapters.md has the full argument):
 *
 * ```text
 * <dir>/FORMAT             "restartpoint-file-store 1": marks the directory as ours
 * <dir>/data/<xx>/<name>   one file per key: u32 BE keyLen | key UTF-8 | value
 *                          xx   = first 2 hex digits of sha256(key), to keep directories small
 *                          name = "k" + hex(key UTF-8) when the key has at most 100 bytes,
 *                                 else "h" + hex(sha256(key)) (file names are capped at 255 bytes)
 * <dir>/meta               the meta of the last commit (absent on a fresh or cleared store)
 * <dir>/journal            a committed batch not yet fully applied (exists only during a commit)
 * <dir>/journal.tmp        a batch being written; not committed, deleted by open()
 * <dir>/tmp/               files being written, renamed into data/ or onto meta when complete
 * ```
 *
 * Commit protocol: the whole batch and its meta are written to `journal.tmp` with a SHA-256 of
 * its bytes at the end, fsynced, renamed to `journal`, and the directory fsynced. That rename
 * is the commit point. Then each key's final value is written to a temporary file and renamed
 * over the key's file, the meta likewise, and the journal is deleted. `open()` deletes a
 * `journal.tmp` and replays a complete `journal` (replay writes final values, so it can run any
 * number of times). A SIGKILL before the rename leaves the previous checkpoint; after it, the
 * next `open()` finishes the new one. Readers never see a half-written file because every file
 * is replaced by rename, never written in place.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { ClosedError, ConfigError, RestartpointError, StorageError } from '../../src/errors.js';
import {
  assertValidKey,
  assertValidOps,
  assertValidValue,
  MAX_KEY_BYTES,
  type StorageAdapter,
} from '../../src/storage/adapter.js';

/** Options of `fileAdapter`. */
export interface FileAdapterOptions {
  /**
   * Directory of the store, created if missing. It must be empty or hold a store written by
   * this adapter, and only one adapter instance (in any process) may use it at a time.
   */
  readonly dir: string;
  /**
   * Whether `commit` and `clear` fsync (default `true`). With `true` a resolved commit survives
   * power loss and kernel crashes as well as process crashes. With `false` nothing is fsynced:
   * a resolved commit survives the process being killed (the data sits in the kernel's page
   * cache) but not the machine going down. Direct `put`/`delete` never fsync either way.
   */
  readonly fsync?: boolean;
}

/**
 * Creates a store in the directory `opts.dir`. Throws `ConfigError` for a missing or empty
 * `dir`.
 *
 * Contract, beyond `StorageAdapter`: `capabilities.durable` is `true`; `commit` and `clear` are
 * atomic against SIGKILL at any instant (and against power loss with `fsync: true`); a `get`
 * running beside a `commit` returns each key's old or new value, never a mix; `keys()` beside a
 * commit may list some keys of the batch and not others. Mutating calls run one at a time in
 * call order; reads run at once. Buffers passed to `commit` must not be changed until it
 * settles (its values are streamed to the journal, not copied up front); `put` copies its value
 * before returning. If a `commit` rejects after its commit point (disk full while applying),
 * the batch is finished by the next mutating call or `open()`. POSIX filesystems only.
 */
export function fileAdapter(opts: FileAdapterOptions): StorageAdapter {
  const l = layout(opts);
  let closed = false;
  let initialized = false;
  // Set when a mutation failed half-way: the next one first replays or discards its journal.
  let needsRecovery = false;
  let tail: Promise<unknown> = Promise.resolve();
  // Deleting the files of a cleared store runs after clear() resolves; close() waits for it.
  let sweeping: Promise<void> = Promise.resolve();

  function assertOpen(): void {
    if (closed) throw new ClosedError(`the file store at ${l.root} is closed`);
  }

  /** Runs `fn` after every earlier mutation, opening the store first if nobody did yet. */
  function mutate<T>(fn: () => Promise<T>): Promise<T> {
    const run = tail.then(async () => {
      if (!initialized) {
        await initialize(l);
        initialized = true;
        needsRecovery = false;
      } else if (needsRecovery) {
        await recover(l);
        needsRecovery = false;
      }
      try {
        return await fn();
      } catch (err) {
        needsRecovery = true;
        throw err;
      }
    });
    tail = run.catch(() => undefined);
    return run.catch((err: unknown) => {
      throw storageError(l, err);
    });
  }

  /** Reads need no queue, but they must not see a store that `open()` has not recovered yet. */
  async function readable(): Promise<void> {
    assertOpen();
    if (!initialized) await mutate(async () => undefined);
  }

  return {
    kind: 'file',
    capabilities: { durable: true },

    async open() {
      assertOpen();
      await mutate(async () => undefined);
    },

    async get(key) {
      assertValidKey(key);
      await readable();
      const at = locate(l, key);
      let bytes: Buffer;
      try {
        bytes = await readFile(at.file);
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw storageError(l, err);
      }
      return decodeValueFile(at.file, bytes, at.keyBytes);
    },

    async put(key, value) {
      assertOpen();
      assertValidKey(key);
      assertValidValue(value);
      const at = locate(l, key);
      // Encoded (so copied) now: the caller may reuse its buffer as soon as this returns.
      const record = encodeValueFile(at.keyBytes, value);
      await mutate(() => replaceFile(l, at.file, record, false));
    },

    async delete(key) {
      assertOpen();
      assertValidKey(key);
      const at = locate(l, key);
      await mutate(() => removeIfExists(at.file));
    },

    async keys() {
      await readable();
      try {
        return await listKeys(l);
      } catch (err) {
        throw storageError(l, err);
      }
    },

    async commit(ops, meta) {
      assertOpen();
      assertValidOps(ops);
      assertValidValue(meta);
      await mutate(() =>
        runJournal(l, async (j) => {
          for (const op of ops) {
            if (op.op === 'put') await j.put(op.key, op.value);
            else await j.delete(op.key);
          }
          await j.meta(meta);
        }),
      );
    },

    async readMeta() {
      await readable();
      try {
        return new Uint8Array(await readFile(l.meta));
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw storageError(l, err);
      }
    },

    async clear() {
      assertOpen();
      await mutate(() => runJournal(l, async (j) => j.clear()));
      // The store is already empty (the old data directory was renamed aside). A failed sweep
      // only leaves garbage that the next open() removes.
      sweeping = sweeping.then(() => sweepTrash(l)).catch(() => undefined);
    },

    async close() {
      if (closed) return;
      closed = true;
      // Let queued mutations finish: a caller that did not await a put still expects it done.
      await tail;
      await sweeping;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Layout

/** Content of `<dir>/FORMAT`; bump the number when the layout changes incompatibly. */
const FORMAT = 'restartpoint-file-store 1\n';
/** Keys up to this many UTF-8 bytes are named by their hex form: 1 + 200 chars fits in 255. */
const NAMED_KEY_BYTES = 100;
/** Unit of journal I/O and of copying large values: bounds memory per worker. */
const CHUNK = 1024 * 1024;
/** Value files written in parallel while applying a batch (reads and writes overlap in libuv). */
const APPLY_CONCURRENCY = 16;
/** errno codes after which the same call may succeed later unchanged. */
const RETRYABLE_CODES = new Set(['ENOSPC', 'EMFILE', 'ENFILE', 'EAGAIN', 'EBUSY', 'EINTR']);

interface Layout {
  readonly root: string;
  readonly fsync: boolean;
  readonly format: string;
  readonly meta: string;
  readonly journal: string;
  readonly journalTmp: string;
  readonly journalCorrupt: string;
  readonly data: string;
  readonly tmp: string;
  /** A fresh path under `tmp/`, unique within this instance. */
  tmpName(): string;
}

function layout(opts: FileAdapterOptions): Layout {
  const dir: unknown = (opts as Partial<FileAdapterOptions> | undefined)?.dir;
  if (typeof dir !== 'string' || dir.length === 0) {
    throw new ConfigError('storage.dir', 'must be a non-empty path, e.g. fileAdapter({ dir: "./data/a" })');
  }
  const fsync: unknown = opts.fsync ?? true;
  if (typeof fsync !== 'boolean') {
    throw new ConfigError('storage.fsync', `must be true or false, got ${typeof fsync}`);
  }
  const root = resolve(dir);
  const tmp = join(root, 'tmp');
  // Random per instance so that a leftover from a killed process can never be renamed by us.
  const prefix = randomBytes(4).toString('hex');
  let seq = 0;
  return {
    root,
    fsync,
    format: join(root, 'FORMAT'),
    meta: join(root, 'meta'),
    journal: join(root, 'journal'),
    journalTmp: join(root, 'journal.tmp'),
    journalCorrupt: join(root, 'journal.corrupt'),
    data: join(root, 'data'),
    tmp,
    tmpName: () => join(tmp, `${prefix}-${seq++}`),
  };
}

/** Names the store itself creates at its root; anything else means `dir` is someone else's. */
function isOwnName(name: string): boolean {
  return (
    ['FORMAT', 'meta', 'journal', 'journal.tmp', 'journal.corrupt', 'data', 'tmp'].includes(name) ||
    name.startsWith('trash-')
  );
}

/** Where `key` lives. Hex names make keys with '/', '..', NUL or mixed case safe on any filesystem. */
function locate(l: Layout, key: string): { file: string; keyBytes: Buffer } {
  const keyBytes = Buffer.from(key, 'utf8');
  const hash = createHash('sha256').update(keyBytes).digest('hex');
  const name = keyBytes.length <= NAMED_KEY_BYTES ? `k${keyBytes.toString('hex')}` : `h${hash}`;
  return { file: join(l.data, hash.slice(0, 2), name), keyBytes };
}

function encodeValueFile(keyBytes: Buffer, value: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(4 + keyBytes.length + value.length);
  out.writeUInt32BE(keyBytes.length, 0);
  keyBytes.copy(out, 4);
  out.set(value, 4 + keyBytes.length);
  return out;
}

function decodeValueFile(file: string, bytes: Buffer, keyBytes: Buffer): Uint8Array {
  const keyLen = bytes.length >= 4 ? bytes.readUInt32BE(0) : -1;
  if (keyLen !== keyBytes.length || !bytes.subarray(4, 4 + keyLen).equals(keyBytes)) {
    throw new StorageError(`file store: ${file} does not hold the key it is named for; the store is damaged`);
  }
  // A plain Uint8Array the caller owns, not a view that would keep the header alive.
  return new Uint8Array(bytes.subarray(4 + keyLen));
}

/** Every key, read from file names (short keys) or file headers (long keys). */
async function listKeys(l: Layout): Promise<string[]> {
  const keys: string[] = [];
  const hashed: string[] = [];
  const fanout = await readdir(l.data);
  await forEachLimit(fanout, 8, async (sub) => {
    let names: string[];
    try {
      names = await readdir(join(l.data, sub));
    } catch (err) {
      if (isNotFound(err)) return; // a clear() swapped the data directory out meanwhile
      throw err;
    }
    for (const name of names) {
      if (name.startsWith('k')) keys.push(Buffer.from(name.slice(1), 'hex').toString('utf8'));
      else if (name.startsWith('h')) hashed.push(join(l.data, sub, name));
    }
  });
  await forEachLimit(hashed, APPLY_CONCURRENCY, async (file) => {
    const key = await readKeyHeader(file);
    if (key !== undefined) keys.push(key);
  });
  // Code-unit order, as the contract says: the default string sort.
  return keys.sort();
}

async function readKeyHeader(file: string): Promise<string | undefined> {
  let fh: FileHandle;
  try {
    fh = await open(file, 'r');
  } catch (err) {
    if (isNotFound(err)) return undefined; // deleted since readdir
    throw err;
  }
  try {
    const head = Buffer.alloc(4 + MAX_KEY_BYTES);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    const keyLen = bytesRead >= 4 ? head.readUInt32BE(0) : -1;
    if (keyLen < 1 || 4 + keyLen > bytesRead) {
      throw new StorageError(`file store: ${file} has no valid key header; the store is damaged`);
    }
    return head.toString('utf8', 4, 4 + keyLen);
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Opening and recovery

async function initialize(l: Layout): Promise<void> {
  await mkdir(l.root, { recursive: true });
  const names = await readdir(l.root);
  if (names.includes('FORMAT')) {
    const format = await readFile(l.format, 'utf8');
    if (format !== FORMAT) {
      throw new StorageError(
        `file store: ${l.root} holds format ${JSON.stringify(format.trim())}; this version reads ${JSON.stringify(FORMAT.trim())}`,
      );
    }
  } else {
    // clear() deletes everything under data/: refuse a directory that holds anything of someone else.
    const foreign = names.filter((n) => !isOwnName(n));
    if (foreign.length > 0) {
      throw new ConfigError(
        'storage.dir',
        `is ${l.root}, which is not empty and is not a restartpoint file store (it holds ${foreign
          .slice(0, 3)
          .map((n) => JSON.stringify(n))
          .join(', ')}); use an empty or new directory`,
      );
    }
    await mkdir(l.tmp, { recursive: true });
    await replaceFile(l, l.format, Buffer.from(FORMAT), l.fsync);
    if (l.fsync) await syncDir(l.root);
  }
  await recover(l);
}

/**
 * Brings the directory to the last completed commit: drops an uncommitted `journal.tmp` and
 * temporary files, replays a committed `journal`, and removes what an interrupted clear left.
 */
async function recover(l: Layout): Promise<void> {
  await removeIfExists(l.journalTmp);
  await rm(l.tmp, { recursive: true, force: true });
  await mkdir(l.tmp, { recursive: true });
  await makeDataDirs(l);
  let fh: FileHandle | undefined;
  try {
    fh = await open(l.journal, 'r');
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  if (fh !== undefined) {
    let intact: boolean;
    try {
      const { size } = await fh.stat();
      intact = await verifyJournal(fh, size);
      if (intact) await applyPlan(l, await parseJournal(l, fh, size), fh);
    } finally {
      await fh.close();
    }
    // A journal whose checksum fails never reached the commit point intact (or the disk damaged
    // it): the store is still at the previous checkpoint. Kept aside for whoever investigates.
    if (intact) await unlink(l.journal);
    else await rename(l.journal, l.journalCorrupt);
  }
  await sweepTrash(l);
}

/** Creates `data/` and its 256 fan-out directories, skipping those that exist. */
async function makeDataDirs(l: Layout): Promise<void> {
  await mkdir(l.data, { recursive: true });
  const have = new Set(await readdir(l.data));
  for (let i = 0; i < 256; i++) {
    const sub = i.toString(16).padStart(2, '0');
    if (!have.has(sub)) await mkdir(join(l.data, sub), { recursive: true });
  }
}

/** Deletes data directories that a clear() moved aside. */
async function sweepTrash(l: Layout): Promise<void> {
  for (const name of await readdir(l.root)) {
    if (name.startsWith('trash-')) await rm(join(l.root, name), { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// Journal
//
//   "RPJ1"
//   records, each:  u8 type | body
//     1 put     u32 keyLen | key | u32 valueLen | value
//     2 delete  u32 keyLen | key
//     3 meta    u32 len | meta
//     4 clear   (no body)
//   255 end     u32 record count
//   sha256 of every byte above (32 bytes)
//
// All integers are big-endian. Replaying needs the last op per key only, so a journal is read
// into a Plan: for each key its final value's position in the journal (or null for deleted).

const JOURNAL_MAGIC = Buffer.from('RPJ1', 'latin1');
const REC_PUT = 1;
const REC_DELETE = 2;
const REC_META = 3;
const REC_CLEAR = 4;
const REC_END = 255;
const DIGEST_BYTES = 32;

/** A byte range of the journal. */
interface Range {
  readonly offset: number;
  readonly length: number;
}

/** What a journal does to the store once the last op per key is known. */
interface Plan {
  clear: boolean;
  /** Final state per key: the value's range in the journal, or `null` for deleted. */
  readonly entries: Map<string, Range | null>;
  /** The new meta's range, `null` to delete it, `undefined` to leave it. */
  meta: Range | null | undefined;
}

function emptyPlan(): Plan {
  return { clear: false, entries: new Map(), meta: undefined };
}

function planClear(plan: Plan): void {
  plan.clear = true;
  plan.entries.clear();
  plan.meta = null;
}

/** Streams records into `journal.tmp`, buffering small ones, hashing every byte written. */
class JournalWriter {
  readonly plan = emptyPlan();
  readonly #fh: FileHandle;
  readonly #hash = createHash('sha256');
  #pending: Uint8Array[] = [];
  #pendingBytes = 0;
  /** Bytes on disk so far. */
  #written = 0;
  #records = 0;

  constructor(fh: FileHandle) {
    this.#fh = fh;
    this.#pending.push(JOURNAL_MAGIC);
    this.#pendingBytes = JOURNAL_MAGIC.length;
  }

  async put(key: string, value: Uint8Array): Promise<void> {
    const keyBytes = Buffer.from(key, 'utf8');
    const head = Buffer.allocUnsafe(1 + 4 + keyBytes.length + 4);
    head[0] = REC_PUT;
    head.writeUInt32BE(keyBytes.length, 1);
    keyBytes.copy(head, 5);
    head.writeUInt32BE(value.length, 5 + keyBytes.length);
    await this.#append(head);
    this.plan.entries.set(key, { offset: this.#end(), length: value.length });
    await this.#append(value);
    this.#records++;
  }

  async delete(key: string): Promise<void> {
    const keyBytes = Buffer.from(key, 'utf8');
    const head = Buffer.allocUnsafe(1 + 4 + keyBytes.length);
    head[0] = REC_DELETE;
    head.writeUInt32BE(keyBytes.length, 1);
    keyBytes.copy(head, 5);
    await this.#append(head);
    this.plan.entries.set(key, null);
    this.#records++;
  }

  async meta(meta: Uint8Array): Promise<void> {
    const head = Buffer.allocUnsafe(1 + 4);
    head[0] = REC_META;
    head.writeUInt32BE(meta.length, 1);
    await this.#append(head);
    this.plan.meta = { offset: this.#end(), length: meta.length };
    await this.#append(meta);
    this.#records++;
  }

  async clear(): Promise<void> {
    await this.#append(Uint8Array.of(REC_CLEAR));
    planClear(this.plan);
    this.#records++;
  }

  /** Writes the end record and the checksum; the journal is then complete (not yet durable). */
  async finish(): Promise<Plan> {
    const end = Buffer.allocUnsafe(1 + 4);
    end[0] = REC_END;
    end.writeUInt32BE(this.#records, 1);
    await this.#append(end);
    await this.#flush();
    await writeFully(this.#fh, this.#hash.digest(), this.#written);
    return this.plan;
  }

  /** Offset at which the next appended byte will land. */
  #end(): number {
    return this.#written + this.#pendingBytes;
  }

  async #append(bytes: Uint8Array): Promise<void> {
    if (bytes.length >= CHUNK) {
      // Large values go straight from the caller's buffer to disk: no second copy in memory.
      await this.#flush();
      await this.#write(bytes);
      return;
    }
    this.#pending.push(bytes);
    this.#pendingBytes += bytes.length;
    if (this.#pendingBytes >= CHUNK) await this.#flush();
  }

  async #flush(): Promise<void> {
    if (this.#pendingBytes === 0) return;
    const chunk = Buffer.concat(this.#pending, this.#pendingBytes);
    this.#pending = [];
    this.#pendingBytes = 0;
    await this.#write(chunk);
  }

  async #write(bytes: Uint8Array): Promise<void> {
    this.#hash.update(bytes);
    await writeFully(this.#fh, bytes, this.#written);
    this.#written += bytes.length;
  }
}

/** True when the journal is complete: long enough and its trailing SHA-256 matches. */
async function verifyJournal(fh: FileHandle, size: number): Promise<boolean> {
  if (size < JOURNAL_MAGIC.length + 5 + DIGEST_BYTES) return false;
  const end = size - DIGEST_BYTES;
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(Math.min(CHUNK, end));
  for (let pos = 0; pos < end; ) {
    const n = Math.min(buf.length, end - pos);
    await readFully(fh, buf.subarray(0, n), pos);
    hash.update(buf.subarray(0, n));
    pos += n;
  }
  const want = Buffer.allocUnsafe(DIGEST_BYTES);
  await readFully(fh, want, end);
  return hash.digest().equals(want);
}

/** Reads a verified journal into a Plan. Values are skipped, not read: the Plan points at them. */
async function parseJournal(l: Layout, fh: FileHandle, size: number): Promise<Plan> {
  const end = size - DIGEST_BYTES;
  const damaged = (why: string): StorageError =>
    new StorageError(`file store: ${l.journal} has a valid checksum but ${why}; it was written by another version?`);
  let buf = Buffer.alloc(0);
  let bufAt = 0;
  let pos = 0;
  const take = async (n: number): Promise<Buffer> => {
    if (pos + n > end) throw damaged('a record runs past its end');
    if (pos < bufAt || pos + n > bufAt + buf.length) {
      buf = Buffer.allocUnsafe(Math.min(Math.max(n, CHUNK), end - pos));
      await readFully(fh, buf, pos);
      bufAt = pos;
    }
    const out = buf.subarray(pos - bufAt, pos - bufAt + n);
    pos += n;
    return out;
  };
  const u32 = async (): Promise<number> => (await take(4)).readUInt32BE(0);
  const range = async (): Promise<Range> => {
    const length = await u32();
    if (pos + length > end) throw damaged('a value runs past its end');
    const r = { offset: pos, length };
    pos += length;
    return r;
  };

  if (!(await take(JOURNAL_MAGIC.length)).equals(JOURNAL_MAGIC)) throw damaged('does not start with RPJ1');
  const plan = emptyPlan();
  for (let records = 0; ; records++) {
    const type = (await take(1))[0];
    switch (type) {
      case REC_PUT: {
        const key = (await take(await u32())).toString('utf8');
        plan.entries.set(key, await range());
        break;
      }
      case REC_DELETE:
        plan.entries.set((await take(await u32())).toString('utf8'), null);
        break;
      case REC_META:
        plan.meta = await range();
        break;
      case REC_CLEAR:
        planClear(plan);
        break;
      case REC_END:
        if ((await u32()) !== records || pos !== end) throw damaged('its end record does not match its records');
        return plan;
      default:
        throw damaged(`it holds an unknown record type ${type}`);
    }
  }
}

/**
 * Writes a batch as a journal and applies it. Called only from the mutation queue.
 * The rename of `journal.tmp` to `journal` (made durable by the directory fsync) is the commit
 * point: before it `recover` discards the batch, after it `recover` finishes it.
 */
async function runJournal(l: Layout, write: (j: JournalWriter) => Promise<void>): Promise<void> {
  // 'w+' so that applying can read the values back from the very file just written.
  const fh = await open(l.journalTmp, 'w+');
  try {
    const journal = new JournalWriter(fh);
    await write(journal);
    const plan = await journal.finish();
    if (l.fsync) await fh.sync();
    await rename(l.journalTmp, l.journal);
    if (l.fsync) await syncDir(l.root);
    // Committed. Values are applied from the journal rather than from the caller's ops so that
    // this path and crash recovery are one and the same.
    await applyPlan(l, plan, fh);
  } finally {
    await fh.close();
  }
  await unlink(l.journal);
}

/**
 * Makes the store match `plan`, reading values from `journal`. Idempotent: it writes final
 * states, so running it again after a crash half-way leaves the same store. With fsync, every
 * file and directory it changed is durable when it resolves, so the journal may then go.
 */
async function applyPlan(l: Layout, plan: Plan, journal: FileHandle): Promise<void> {
  if (plan.clear) {
    // One rename empties the store; deleting the old files can then take its time (sweepTrash).
    try {
      await rename(l.data, join(l.root, `trash-${randomBytes(6).toString('hex')}`));
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    await makeDataDirs(l);
    await removeIfExists(l.meta);
    if (l.fsync) await syncDir(l.root);
  }
  const touched = new Set<string>();
  const written: string[] = [];
  await forEachLimit(plan.entries, APPLY_CONCURRENCY, async ([key, value]) => {
    const at = locate(l, key);
    touched.add(dirname(at.file));
    if (value === null) {
      await removeIfExists(at.file);
    } else {
      await writeValueFromJournal(l, at.file, at.keyBytes, journal, value);
      written.push(at.file);
    }
  });
  if (l.fsync) {
    // fsync after all files are written, not as each is: the kernel then writes them back in
    // large batches (measured ~7x faster for 10 000 small files on ext4).
    await forEachLimit(written, APPLY_CONCURRENCY, syncFile);
    await forEachLimit(touched, APPLY_CONCURRENCY, syncDir);
  }
  if (plan.meta === null) {
    await removeIfExists(l.meta);
  } else if (plan.meta !== undefined) {
    const meta = Buffer.allocUnsafe(plan.meta.length);
    await readFully(journal, meta, plan.meta.offset);
    await replaceFile(l, l.meta, meta, l.fsync);
  }
  if (l.fsync) await syncDir(l.root);
}

/** Writes a value file into tmp/ from the journal, at most CHUNK bytes in memory, then renames it. */
async function writeValueFromJournal(
  l: Layout,
  file: string,
  keyBytes: Buffer,
  journal: FileHandle,
  value: Range,
): Promise<void> {
  const head = 4 + keyBytes.length;
  const tmp = l.tmpName();
  const out = await open(tmp, 'w');
  try {
    if (value.length <= CHUNK) {
      const buf = Buffer.allocUnsafe(head + value.length);
      buf.writeUInt32BE(keyBytes.length, 0);
      keyBytes.copy(buf, 4);
      await readFully(journal, buf.subarray(head), value.offset);
      await writeFully(out, buf, 0);
    } else {
      const header = Buffer.allocUnsafe(head);
      header.writeUInt32BE(keyBytes.length, 0);
      keyBytes.copy(header, 4);
      await writeFully(out, header, 0);
      const chunk = Buffer.allocUnsafe(CHUNK);
      for (let done = 0; done < value.length; ) {
        const n = Math.min(CHUNK, value.length - done);
        await readFully(journal, chunk.subarray(0, n), value.offset + done);
        await writeFully(out, chunk.subarray(0, n), head + done);
        done += n;
      }
    }
  } finally {
    await out.close();
  }
  await rename(tmp, file);
}

// ---------------------------------------------------------------------------------------------
// Small file helpers

/** Replaces `file` by writing a temporary file and renaming it over: readers see old or new. */
async function replaceFile(l: Layout, file: string, bytes: Uint8Array, sync: boolean): Promise<void> {
  const tmp = l.tmpName();
  const fh = await open(tmp, 'w');
  try {
    await writeFully(fh, bytes, 0);
    if (sync) await fh.datasync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
}

async function removeIfExists(file: string): Promise<void> {
  try {
    await unlink(file);
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
}

/** Makes a file's content durable. A read-only descriptor suffices: fsync acts on the inode. */
async function syncFile(file: string): Promise<void> {
  const fh = await open(file, 'r');
  try {
    await fh.datasync();
  } finally {
    await fh.close();
  }
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

async function readFully(fh: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < buf.length; ) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) throw new StorageError('file store: the journal is shorter than its records say');
    done += bytesRead;
  }
}

async function writeFully(fh: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < buf.length; ) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done);
    done += bytesWritten;
  }
}

/** Runs `fn` over `items` with at most `limit` in flight; waits for all, then throws the first error. */
async function forEachLimit<T>(items: Iterable<T>, limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  const it = items[Symbol.iterator]();
  let failure: { error: unknown } | undefined;
  const worker = async (): Promise<void> => {
    while (failure === undefined) {
      const next = it.next();
      if (next.done === true) return;
      try {
        await fn(next.value);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: limit }, worker));
  if (failure !== undefined) throw failure.error;
}

function isNotFound(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

/** Our own errors pass through; filesystem errors become `StorageError`s naming the store. */
function storageError(l: Layout, err: unknown): Error {
  if (err instanceof RestartpointError) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const message = err instanceof Error ? err.message : String(err);
  return new StorageError(`file store ${l.root}: ${message}`, {
    cause: err,
    retryable: code !== undefined && RETRYABLE_CODES.has(code),
  });
}
