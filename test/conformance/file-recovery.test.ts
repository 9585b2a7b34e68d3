/**
 * What the file adapter promises beyond the shared suite: its options, its refusal to take over a
 * directory that is not a store, its on-disk layout (docs/adapters.md), and each branch of crash
 * recovery, driven deterministically. These run with the default `fsync: true`.
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { fileAdapter } from '../../adapters/file/index.js';
import { ConfigError, StorageError } from '../../src/errors.js';
import type { StorageAdapter, WriteOp } from '../../src/storage/adapter.js';

const text = (s: string): Uint8Array => new TextEncoder().encode(s);
const str = (b: Uint8Array | undefined): string | undefined => (b === undefined ? undefined : Buffer.from(b).toString());

/** The path the layout gives `key` (see the header of adapters/file/index.ts). */
function keyPath(dir: string, key: string): string {
  const k = Buffer.from(key, 'utf8');
  const hash = createHash('sha256').update(k).digest('hex');
  return join(dir, 'data', hash.slice(0, 2), k.length <= 100 ? `k${k.toString('hex')}` : `h${hash}`);
}

function batch(gen: string, n = 50): WriteOp[] {
  return Array.from({ length: n }, (_, i) => ({ op: 'put', key: `k${i}`, value: text(`${gen}-${i}`) }));
}

async function expectGeneration(a: StorageAdapter, gen: string, n = 50): Promise<void> {
  expect(str(await a.readMeta())).toBe(gen);
  for (let i = 0; i < n; i++) expect(str(await a.get(`k${i}`)), `k${i}`).toBe(`${gen}-${i}`);
}

describe('file adapter: options and layout', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rp-file-recovery-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('rejects a missing or empty dir, and a non-boolean fsync, with ConfigError naming the option', () => {
    for (const bad of [undefined, {}, { dir: '' }, { dir: 42 }]) {
      expect(() => fileAdapter(bad as never)).toThrow(ConfigError);
      try {
        fileAdapter(bad as never);
      } catch (err) {
        expect((err as ConfigError).option).toBe('storage.dir');
        expect((err as Error).message).toContain('fileAdapter({ dir: "./data/a" })');
      }
    }
    expect(() => fileAdapter({ dir, fsync: 'yes' as never })).toThrow(/'storage.fsync'/);
  });

  it('creates a missing directory, and refuses one that holds files of its own', async () => {
    const fresh = fileAdapter({ dir: join(dir, 'a', 'b') });
    await fresh.open();
    await fresh.close();

    const foreign = join(dir, 'foreign');
    await mkdir(foreign);
    await writeFile(join(foreign, 'notes.txt'), 'keep me');
    const a = fileAdapter({ dir: foreign });
    await expect(a.open()).rejects.toThrow(ConfigError);
    await expect(a.get('x')).rejects.toThrow(/not a restartpoint file store/);
    expect(await readdir(foreign)).toEqual(['notes.txt']);
    await a.close();
  });

  it('refuses a store of another format version', async () => {
    const a = fileAdapter({ dir });
    await a.open();
    await a.close();
    await writeFile(join(dir, 'FORMAT'), 'restartpoint-file-store 999\n');
    const b = fileAdapter({ dir });
    await expect(b.open()).rejects.toThrow(StorageError);
    await b.close();
  });

  it('stores a key as data/<sha256 prefix>/k<hex key> (or h<sha256> when long), with the key in a header', async () => {
    const a = fileAdapter({ dir });
    await a.open();
    const long = 'L'.repeat(101);
    await a.put('a/b', text('v1'));
    await a.put(long, text('v2'));
    await a.commit([], text('meta'));
    await a.close();
    const short = await readFile(keyPath(dir, 'a/b'));
    expect(short.readUInt32BE(0)).toBe(3);
    expect(short.subarray(4).toString()).toBe('a/bv1');
    expect((await readFile(keyPath(dir, long))).subarray(4).toString()).toBe(`${long}v2`);
    expect(keyPath(dir, long)).toMatch(/[/\\]h[0-9a-f]{64}$/);
    expect((await readdir(dir)).sort()).toEqual(['FORMAT', 'data', 'meta', 'tmp']);
    expect(await readFile(join(dir, 'FORMAT'), 'utf8')).toBe('restartpoint-file-store 1\n');
  });
});

describe('file adapter: crash recovery', () => {
  let dir: string;
  let a: StorageAdapter;
  /** The journal of batch('gen-2') plus meta 'gen-2', captured from a commit made to fail. */
  let committedJournal: Buffer;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rp-file-recovery-'));
    a = fileAdapter({ dir });
    await a.open();
    await a.commit(batch('gen-1'), text('gen-1'));
  });
  afterEach(async () => {
    await a.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** Makes the next commit fail after its commit point: a directory sits where a value file goes. */
  async function blockKey(key: string): Promise<() => Promise<void>> {
    const path = keyPath(dir, key);
    await mkdir(path);
    await writeFile(join(path, 'obstacle'), '');
    return () => rm(path, { recursive: true, force: true });
  }

  async function failAfterCommitPoint(): Promise<void> {
    const unblock = await blockKey('blocked');
    await expect(a.commit([...batch('gen-2'), { op: 'put', key: 'blocked', value: text('b') }], text('gen-2'))).rejects.toThrow(
      StorageError,
    );
    expect(await readdir(dir)).toContain('journal');
    committedJournal = await readFile(join(dir, 'journal'));
    // Until the batch is finished the meta still names the old checkpoint.
    expect(str(await a.readMeta())).toBe('gen-1');
    await unblock();
  }

  it('a commit that failed after its commit point is finished by the next mutating call', async () => {
    await failAfterCommitPoint();
    await a.put('later', text('x'));
    await expectGeneration(a, 'gen-2');
    expect(str(await a.get('blocked'))).toBe('b');
    expect(await readdir(dir)).not.toContain('journal');
  });

  it('a commit that failed after its commit point is finished by open() after a restart', async () => {
    await failAfterCommitPoint();
    await a.close();
    a = fileAdapter({ dir });
    await a.open();
    await expectGeneration(a, 'gen-2');
    expect(await readdir(dir)).not.toContain('journal');
  });

  it('a journal.tmp (never committed) is discarded, even when complete', async () => {
    await failAfterCommitPoint();
    await a.close();
    // Back to gen-1, then plant the complete gen-2 journal as journal.tmp: it never got renamed,
    // so it is not committed, however whole it looks.
    await rm(dir, { recursive: true, force: true });
    a = fileAdapter({ dir });
    await a.commit(batch('gen-1'), text('gen-1'));
    await a.close();
    await writeFile(join(dir, 'journal.tmp'), committedJournal);
    await writeFile(join(dir, 'tmp', 'leftover'), 'half a value');
    a = fileAdapter({ dir });
    await a.open();
    await expectGeneration(a, 'gen-1');
    expect(await readdir(dir)).not.toContain('journal.tmp');
    expect(await readdir(join(dir, 'tmp'))).toEqual([]);
  });

  it('a truncated or corrupt journal is set aside and the store stays at the previous checkpoint', async () => {
    await failAfterCommitPoint();
    await a.close();
    for (const damage of [
      (j: Buffer) => j.subarray(0, j.length - 1),
      (j: Buffer) => j.subarray(0, 40),
      (j: Buffer) => {
        const c = Buffer.from(j);
        c[Math.floor(c.length / 2)] ^= 0xff;
        return c;
      },
      () => Buffer.alloc(0),
    ]) {
      await rm(dir, { recursive: true, force: true });
      a = fileAdapter({ dir });
      await a.commit(batch('gen-1'), text('gen-1'));
      await a.close();
      await writeFile(join(dir, 'journal'), damage(committedJournal));
      a = fileAdapter({ dir });
      await a.open();
      await expectGeneration(a, 'gen-1');
      expect(await a.get('blocked')).toBeUndefined();
      const names = await readdir(dir);
      expect(names).not.toContain('journal');
      expect(names).toContain('journal.corrupt');
      await a.close();
    }
    a = fileAdapter({ dir });
  });

  it('the captured journal itself replays: the corruption test above damages a valid one', async () => {
    await failAfterCommitPoint();
    await a.close();
    await rm(dir, { recursive: true, force: true });
    a = fileAdapter({ dir });
    await a.commit(batch('gen-1'), text('gen-1'));
    await a.close();
    await writeFile(join(dir, 'journal'), committedJournal);
    a = fileAdapter({ dir });
    await a.open();
    await expectGeneration(a, 'gen-2');
  });
});
