/**
 * What the file adapter promises beyond the shared suite: its options, its refusal to take over a
 * directory that is not a store, its on-disk layout (docs/adapters-file.md), compaction, and each
 * branch of crash recovery, driven deterministically by cutting and damaging real log files.
 * These run with the default `fsync: true`.
 */
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { fileAdapter, type FileAdapterOptions } from '../../adapters/file/index.js';
import { ConfigError, StorageError } from '../../src/errors.js';
import type { StorageAdapter, WriteOp } from '../../src/storage/adapter.js';

const text = (s: string): Uint8Array => new TextEncoder().encode(s);
const str = (b: Uint8Array | undefined): string | undefined =>
  b === undefined ? undefined : Buffer.from(b).toString();

function sameBytes(x: Uint8Array, y: Uint8Array | undefined): boolean {
  return y !== undefined && Buffer.from(x).equals(y);
}

function batch(gen: string, n = 50): WriteOp[] {
  return Array.from({ length: n }, (_, i) => ({ op: 'put', key: `k${i}`, value: text(`${gen}-${i}`) }));
}

async function expectGeneration(a: StorageAdapter, gen: string, n = 50): Promise<void> {
  expect(str(await a.readMeta())).toBe(gen);
  expect((await a.keys()).filter((k) => /^k\d+$/.test(k))).toHaveLength(n);
  for (let i = 0; i < n; i++) expect(str(await a.get(`k${i}`)), `k${i}`).toBe(`${gen}-${i}`);
}

let dir: string;
const opened: StorageAdapter[] = [];

/** Opens an adapter over `dir` (closed after the test). */
async function openStore(options: Partial<FileAdapterOptions> = {}): Promise<StorageAdapter> {
  const a = fileAdapter({ dir, ...options });
  opened.push(a);
  await a.open();
  return a;
}

async function logFiles(): Promise<string[]> {
  return (await readdir(dir)).filter((n) => n.startsWith('log-')).sort();
}

async function onlyLog(): Promise<string> {
  const logs = await logFiles();
  expect(logs).toHaveLength(1);
  return join(dir, logs[0]!);
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'rp-file-recovery-'));
});

afterEach(async () => {
  for (const a of opened.splice(0)) await a.close();
  await rm(dir, { recursive: true, force: true });
});

describe('file adapter: options and layout', () => {
  it('rejects a bad dir, fsync or compactBytes with ConfigError naming the option', () => {
    for (const bad of [undefined, {}, { dir: '' }, { dir: 42 }]) {
      let caught: unknown;
      try {
        fileAdapter(bad as never);
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(ConfigError);
      expect((caught as ConfigError).option).toBe('storage.dir');
      expect((caught as Error).message).toContain('fileAdapter({ dir: "./data/a" })');
    }
    expect(() => fileAdapter({ dir, fsync: 'yes' as never })).toThrow(/'storage.fsync'/);
    for (const compactBytes of [0, -1, 1.5, Number.NaN, '1' as never]) {
      expect(() => fileAdapter({ dir, compactBytes })).toThrow(/'storage.compactBytes'/);
    }
  });

  it('creates a missing directory, and refuses one holding files that are not a store', async () => {
    const nested = fileAdapter({ dir: join(dir, 'a', 'b') });
    await nested.open();
    await nested.close();

    const foreign = join(dir, 'foreign');
    await mkdir(foreign);
    await writeFile(join(foreign, 'notes.txt'), 'keep me');
    const a = fileAdapter({ dir: foreign });
    await expect(a.open()).rejects.toThrow(ConfigError);
    await expect(a.get('x')).rejects.toThrow(/not a restartpoint file store/);
    await a.close();
    expect(await readdir(foreign)).toEqual(['notes.txt']);
  });

  it('refuses a store of another format version', async () => {
    await (await openStore()).close();
    await writeFile(join(dir, 'FORMAT'), 'restartpoint-file-store 999\n');
    await expect(fileAdapter({ dir }).open()).rejects.toThrow(StorageError);
  });

  it('opens a format 1 store (no snapshot-mode records) and marks it format 2', async () => {
    const a = await openStore();
    await a.commit(batch('gen-1'), text('gen-1'));
    await a.close();
    await writeFile(join(dir, 'FORMAT'), 'restartpoint-file-store 1\n');
    await expectGeneration(await openStore(), 'gen-1');
    expect(await readFile(join(dir, 'FORMAT'), 'utf8')).toBe('restartpoint-file-store 2\n');
  });

  it('keeps FORMAT and one log, which starts with the log magic', async () => {
    const a = await openStore();
    await a.put('a/b', text('v1'));
    await a.commit(batch('gen-1'), text('gen-1'));
    expect((await readdir(dir)).sort()).toEqual(['FORMAT', 'IDENT', 'log-0000000001']);
    expect(await readFile(join(dir, 'FORMAT'), 'utf8')).toBe('restartpoint-file-store 2\n');
    const log = await readFile(await onlyLog());
    expect(log.subarray(0, 8).toString('latin1')).toBe('RPLOG\0\0\x01');
    // Type 1 (snapshot) comes first, in every log.
    expect(log[8]).toBe(1);
  });
});

describe('file adapter: crash recovery', () => {
  /** A log holding gen-1 (complete), then the gen-2 commit record, and where that record starts. */
  async function twoGenerations(): Promise<{ path: string; full: Buffer; gen1End: number }> {
    const a = await openStore();
    await a.commit(batch('gen-1'), text('gen-1'));
    const path = await onlyLog();
    const gen1End = (await stat(path)).size;
    await a.commit(batch('gen-2'), text('gen-2'));
    await a.close();
    return { path, full: await readFile(path), gen1End };
  }

  it('a commit record cut anywhere (as SIGKILL would) leaves the previous commit, and is cut off', async () => {
    const { path, full, gen1End } = await twoGenerations();
    const cuts = new Set([gen1End + 1, gen1End + 9, gen1End + 10, full.length - 4, full.length - 1]);
    while (cuts.size < 25) cuts.add(gen1End + 1 + Math.floor(Math.random() * (full.length - gen1End - 1)));
    for (const cut of cuts) {
      await writeFile(path, full.subarray(0, cut));
      const a = await openStore();
      await expectGeneration(a, 'gen-1');
      expect((await stat(path)).size, `cut at ${cut}`).toBe(gen1End);
      await a.close();
    }
    await writeFile(path, full);
    await expectGeneration(await openStore(), 'gen-2');
  });

  it('a damaged byte in the last record, or garbage after it, is detected by the CRC', async () => {
    const { path, full, gen1End } = await twoGenerations();
    for (const at of [
      gen1End,
      gen1End + 3,
      gen1End + 20,
      Math.floor((gen1End + full.length) / 2),
      full.length - 2,
    ]) {
      const damaged = Buffer.from(full);
      damaged[at]! ^= 0x5a;
      await writeFile(path, damaged);
      const a = await openStore();
      await expectGeneration(a, 'gen-1');
      await a.close();
    }
    await writeFile(path, Buffer.concat([full, Buffer.from('garbage after the last record')]));
    const a = await openStore();
    await expectGeneration(a, 'gen-2');
    expect((await stat(path)).size).toBe(full.length);
  });

  it('a direct put cut short is lost alone; earlier writes stay', async () => {
    const a = await openStore();
    await a.commit(batch('gen-1'), text('gen-1'));
    await a.put('direct', text('first'));
    const path = await onlyLog();
    const before = (await stat(path)).size;
    await a.put('direct', text('second, longer value'));
    await a.close();
    const full = await readFile(path);
    await writeFile(path, full.subarray(0, full.length - 3));
    const b = await openStore();
    expect(str(await b.get('direct'))).toBe('first');
    expect((await stat(path)).size).toBe(before);
    await expectGeneration(b, 'gen-1');
  });

  it('a leftover log-*.tmp (a compaction or clear that never reached its rename) is ignored and deleted', async () => {
    const a = await openStore();
    await a.clear(); // log-0000000002: an empty snapshot
    await a.commit(batch('gen-2'), text('gen-2'));
    await a.close();
    const gen2Log = await readFile(await onlyLog());
    await rm(dir, { recursive: true, force: true });

    const b = await openStore();
    await b.commit(batch('gen-1'), text('gen-1'));
    await b.close();
    // Complete and valid, but never renamed: not committed.
    await writeFile(join(dir, 'log-0000000002.tmp'), gen2Log);
    await expectGeneration(await openStore(), 'gen-1');
    expect(await logFiles()).toEqual(['log-0000000001']);
  });

  it('two logs (a crash between a compaction rename and the old log delete): the newer wins', async () => {
    const a = await openStore();
    await a.commit(batch('gen-1'), text('gen-1'));
    await a.clear();
    await a.commit(batch('gen-2'), text('gen-2'));
    await a.close();
    const gen2Log = await readFile(join(dir, 'log-0000000002'));
    await rm(dir, { recursive: true, force: true });

    const b = await openStore();
    await b.commit(batch('gen-1'), text('gen-1'));
    await b.close();
    await writeFile(join(dir, 'log-0000000002'), gen2Log);
    await expectGeneration(await openStore(), 'gen-2');
    expect(await logFiles()).toEqual(['log-0000000002']);
  });

  it('an unreadable newest log is set aside when an older one is whole; with none whole, open fails', async () => {
    const a = await openStore();
    await a.commit(batch('gen-1'), text('gen-1'));
    await a.close();
    await writeFile(join(dir, 'log-0000000002'), 'not a log');
    await expectGeneration(await openStore(), 'gen-1');
    expect(await logFiles()).toEqual(['log-0000000001', 'log-0000000002.corrupt']);
    for (const a of opened.splice(0)) await a.close();

    const log = await readFile(join(dir, 'log-0000000001'));
    log[2]! ^= 0xff; // the magic
    await writeFile(join(dir, 'log-0000000001'), log);
    await expect(fileAdapter({ dir }).open()).rejects.toThrow(/no readable log/);
    // Nothing was moved or deleted: the operator decides.
    expect(await logFiles()).toEqual(['log-0000000001', 'log-0000000002.corrupt']);
  });
});

describe('file adapter: snapshot-mode records', () => {
  /**
   * A log holding gen-1 (committed), then area 2 (gen-2's keys in two area records), then the
   * form record of area 2; with where the area records start and end.
   */
  async function areaThenForm(): Promise<{ path: string; full: Buffer; gen1End: number; areaEnd: number }> {
    const a = await openStore();
    await a.commit(batch('gen-1'), text('gen-1'));
    const path = await onlyLog();
    const gen1End = (await stat(path)).size;
    const ops = batch('gen-2');
    await a.writeArea!(2, ops.slice(0, 25));
    await a.writeArea!(2, ops.slice(25));
    const areaEnd = (await stat(path)).size;
    await a.formSnapshot!(2, text('gen-2'));
    await a.close();
    return { path, full: await readFile(path), gen1End, areaEnd };
  }

  it('an area or form record cut anywhere leaves the last snapshot; whole area records stay formable', async () => {
    const { path, full, gen1End, areaEnd } = await areaThenForm();
    const cuts = new Set([gen1End + 1, areaEnd - 1, areaEnd, areaEnd + 1, full.length - 4, full.length - 1]);
    while (cuts.size < 30) cuts.add(gen1End + 1 + Math.floor(Math.random() * (full.length - gen1End - 1)));
    for (const cut of cuts) {
      await writeFile(path, full.subarray(0, cut));
      const a = await openStore();
      await expectGeneration(a, 'gen-1');
      if (cut >= areaEnd) {
        // Both area records are whole: the area waits, unformed, and forms as it would have.
        await a.formSnapshot!(2, text('gen-2'));
        await expectGeneration(a, 'gen-2');
      } else {
        // Part of the area is lost, so forming it now would form a part: roll it back instead.
        await a.releaseAreas!();
        await expectGeneration(a, 'gen-1');
      }
      await a.close();
    }
    await writeFile(path, full);
    await expectGeneration(await openStore(), 'gen-2');
  });

  it('a release record keeps released writes out of a later form of the same area, across reopen', async () => {
    const a = await openStore();
    await a.commit(batch('gen-1'), text('gen-1'));
    await a.writeArea!(2, [
      { op: 'put', key: 'released', value: text('x') },
      { op: 'delete', key: 'k0' },
    ]);
    await a.releaseAreas!();
    await a.writeArea!(2, [{ op: 'put', key: 'k1', value: text('gen-2-1') }]);
    await a.close();
    const b = await openStore();
    await b.formSnapshot!(2, text('gen-2'));
    await b.close();
    const c = await openStore();
    expect(str(await c.readMeta())).toBe('gen-2');
    expect(await c.get('released')).toBeUndefined();
    expect(str(await c.get('k0'))).toBe('gen-1-0');
    expect(str(await c.get('k1'))).toBe('gen-2-1');
  });

  it('compaction keeps unformed areas (puts and deletes) and drops released ones', async () => {
    const a = await openStore({ compactBytes: 32 * 1024 });
    await a.commit(batch('gen-1'), text('gen-1'));
    await a.writeArea!(5, [{ op: 'put', key: 'released', value: text('x') }]);
    await a.releaseAreas!();
    const big = new Uint8Array(300 * 1024).fill(7);
    await a.writeArea!(5, [
      { op: 'delete', key: 'k0' },
      { op: 'put', key: 'k1', value: text('area-5') },
      { op: 'put', key: 'big', value: big },
    ]);
    await a.writeArea!(6, [{ op: 'put', key: 'k2', value: text('area-6') }]);
    // Stale commits until the log is compacted, with both areas unformed.
    const stale = new Uint8Array(64 * 1024);
    for (let g = 0; (await logFiles())[0] === 'log-0000000001' && g < 100; g++) {
      await a.commit([{ op: 'put', key: 'stale', value: stale }], text('gen-1'));
    }
    await a.close();
    expect(await logFiles()).not.toContain('log-0000000001');

    const b = await openStore({ compactBytes: 32 * 1024 });
    await expectGeneration(b, 'gen-1');
    expect(await b.get('big')).toBeUndefined();
    await b.formSnapshot!(5, text('cp-5'));
    expect(await b.get('k0')).toBeUndefined();
    expect(str(await b.get('k1'))).toBe('area-5');
    expect(sameBytes(big, await b.get('big'))).toBe(true);
    expect(await b.get('released')).toBeUndefined();
    expect(str(await b.get('k2'))).toBe('gen-1-2');
    await b.formSnapshot!(6, text('cp-6'));
    expect(str(await b.get('k2'))).toBe('area-6');
    expect(str(await b.readMeta())).toBe('cp-6');
  });
});

describe('file adapter: compaction', () => {
  it('rewrites a mostly stale log into a new one, keeping data and meta, reads staying whole', async () => {
    const a = await openStore({ compactBytes: 64 * 1024 });
    const value = (gen: number, i: number): Uint8Array => new Uint8Array(512).fill((gen * 7 + i) % 251);
    const commitGeneration = (g: number): Promise<void> =>
      a.commit(
        Array.from({ length: 40 }, (_, i) => ({ op: 'put', key: `c${i}`, value: value(g, i) })),
        text(`gen-${g}`),
      );
    await commitGeneration(0);
    let gen = 0;
    let reading = true;
    const bad: string[] = [];
    const reader = async (): Promise<void> => {
      while (reading) {
        // Yield to I/O: a get answered from memory alone would otherwise starve the commits.
        await nextTurn();
        const i = Math.floor(Math.random() * 40);
        try {
          const got = await a.get(`c${i}`);
          // A value must be whole and of some generation committed so far.
          const whole = Array.from({ length: gen + 1 }, (_, g) => value(g, i)).some((v) => sameBytes(v, got));
          if (!whole) bad.push(`c${i}: ${got?.byteLength} bytes`);
        } catch (err) {
          bad.push(`c${i}: ${String(err)}`);
        }
      }
    };
    const readers = [reader(), reader()];
    for (gen = 1; gen < 60; gen++) await commitGeneration(gen);
    gen--;
    reading = false;
    await Promise.all(readers);
    expect(bad).toEqual([]);
    await a.close();
    const logs = await logFiles();
    expect(logs).toHaveLength(1);
    expect(logs[0]).not.toBe('log-0000000001');
    expect((await stat(join(dir, logs[0]!))).size).toBeLessThan(3 * 64 * 1024);

    const b = await openStore();
    expect(str(await b.readMeta())).toBe(`gen-${gen}`);
    for (let i = 0; i < 40; i++) expect(sameBytes(value(gen, i), await b.get(`c${i}`)), `c${i}`).toBe(true);
  });
});
