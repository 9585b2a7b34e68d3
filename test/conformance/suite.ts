/**
 * The one conformance suite every storage adapter runs: the `StorageAdapter` contract
 * (src/storage/adapter.ts) as executable cases. An adapter's test file is a few lines:
 *
 * ```ts
 * testAdapter('memory', async () => ({ adapter: memoryAdapter(), cleanup: async () => {} }));
 * ```
 *
 * A case an adapter cannot pass is listed by its exact title in `gaps` with the reason; it then
 * shows as skipped with the reason in its title, so gaps stay visible in every run. A gap naming
 * no case fails the run (titles change; stale gaps must not hide anything). Cases about
 * surviving a restart run only when the adapter declares `capabilities.durable`, and say so in
 * their titles: a non-durable adapter needs no gap for them.
 *
 * The `SnapshotStore` cases (group `'snapshot mode'`) run for an adapter declaring
 * `capabilities.snapshot`. An adapter without that capability lists the whole group as one gap,
 * `gaps: { 'snapshot mode': 'why' }` (or single cases by title, like any gap); unlisted, each
 * case fails saying so, so that a missing capability is always a visible, explained choice.
 */
import { randomBytes } from 'node:crypto';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it, type TestContext } from 'vitest';
import { ClosedError, ErrorCode, InvalidArgumentError, StorageError } from '../../src/errors.js';
import type { SnapshotStore, StorageAdapter, WriteOp } from '../../src/storage/adapter.js';

/** What an adapter's `make` returns: a fresh, empty store (not opened yet). */
export interface AdapterUnderTest {
  /** The store under test. The suite calls `open()` first and `close()` at the end. */
  readonly adapter: StorageAdapter;
  /**
   * A new instance over the same underlying store, as a restarted process would create.
   * Required when `capabilities.durable` is true. The suite closes the old instance first.
   */
  readonly reopen?: () => Promise<StorageAdapter>;
  /** Deletes the store (directory, database schema, key prefix). Runs after `close()`. */
  readonly cleanup: () => Promise<void>;
  /**
   * Faults injected into the store underneath the adapter, for the `store faults` cases. Each
   * case needs its hook; an adapter without one lists the case (or the group) as a gap.
   */
  readonly faults?: StoreFaults;
}

/**
 * Real faults in the real store, done from outside the adapter (another client, the files).
 * Keys are store keys as the adapter was given them.
 */
export interface StoreFaults {
  /** Wipes the whole store (FLUSHALL, TRUNCATE of the table, the files replaced by another store). */
  wipe?(): Promise<void>;
  /** Loses the data of some keys (HDEL of fields, DELETE of rows, a log cut short). */
  deleteSome?(keys: readonly string[]): Promise<void>;
  /** Restarts the server: `'empty'` when it comes back without the data (no persistence), else `'kept'`. */
  restart?(): Promise<'empty' | 'kept'>;
  /** Kills the adapter's connections to the server (CLIENT KILL, pg_terminate_backend). */
  killConnections?(): Promise<void>;
  /**
   * Makes the store stop answering (a network black hole) until the returned function is
   * called. The adapter in `make()` must be set up with timeouts of at most 5 s.
   */
  cutOff?(): Promise<() => Promise<void>>;
}

/** Options of `testAdapter`. */
export interface ConformanceOptions {
  /** Case title (or the group `'snapshot mode'`) → why this adapter cannot pass it. */
  readonly gaps?: Readonly<Record<string, string>>;
}

/** Gap key naming every snapshot-mode case at once. */
export const SNAPSHOT_MODE = 'snapshot mode';

/** Gap key naming every store-fault case at once. */
export const STORE_FAULTS = 'store faults';

/** An adapter with snapshot mode. */
type SnapshotAdapter = StorageAdapter & SnapshotStore;

/**
 * Registers the conformance cases for one adapter under `describe('storage adapter <name>')`.
 * `make` is called before every case and must return an empty store.
 */
export function testAdapter(
  name: string,
  make: () => Promise<AdapterUnderTest>,
  opts: ConformanceOptions = {},
): void {
  const gaps = new Map(Object.entries(opts.gaps ?? {}));
  const titles = new Set<string>([SNAPSHOT_MODE, STORE_FAULTS]);

  describe(`storage adapter ${name}`, () => {
    let under: AdapterUnderTest;
    let a: StorageAdapter;

    beforeEach(async () => {
      under = await make();
      a = under.adapter;
      await a.open();
    });

    afterEach(async () => {
      await a.close();
      await under.cleanup();
    });

    /**
     * Registers a case, or its skipped stand-in when the adapter lists it (or its `group`) as a
     * gap.
     */
    function kase(title: string, fn: (ctx: TestContext) => Promise<void>, group?: string): void {
      if (titles.has(title))
        throw new Error(`conformance suite: duplicate case title ${JSON.stringify(title)}`);
      titles.add(title);
      const gap = gaps.get(title) ?? (group === undefined ? undefined : gaps.get(group));
      if (gap !== undefined) it.skip(`${title} [gap: ${gap}]`, fn);
      else it(title, fn);
    }

    /** The `reopen` of a durable adapter, as the cases use it: closes `a`, then replaces it. */
    function reopener(ctx: TestContext): () => Promise<StorageAdapter> {
      if (!a.capabilities.durable) ctx.skip(`${name} declares capabilities.durable = false`);
      const reopenFn = under.reopen;
      if (reopenFn === undefined) {
        throw new Error(`${name} declares capabilities.durable but its make() returns no reopen()`);
      }
      return async () => {
        await a.close();
        a = await reopenFn();
        await a.open();
        return a;
      };
    }

    /** A case about restarts; skipped (with the reason) unless the adapter is durable. */
    function durableCase(title: string, fn: (reopen: () => Promise<StorageAdapter>) => Promise<void>): void {
      kase(`${title} (runs when capabilities.durable)`, async (ctx) => fn(reopener(ctx)));
    }

    /** `x` as a snapshot-mode adapter; fails the case when it does not declare the capability. */
    function snap(x: StorageAdapter): SnapshotAdapter {
      if (!x.capabilities.snapshot) {
        throw new Error(
          `${name} does not declare capabilities.snapshot: list ${JSON.stringify(SNAPSHOT_MODE)} in its gaps with the reason`,
        );
      }
      for (const m of ['writeArea', 'formSnapshot', 'releaseAreas'] as const) {
        if (typeof x[m] !== 'function') {
          throw new Error(`${name} declares capabilities.snapshot but has no ${m}()`);
        }
      }
      return x as SnapshotAdapter;
    }

    /** A snapshot-mode case (group `'snapshot mode'`). */
    function snapshotCase(title: string, fn: (s: SnapshotAdapter) => Promise<void>): void {
      kase(title, async () => fn(snap(a)), SNAPSHOT_MODE);
    }

    /** A snapshot-mode case about restarts, for adapters that are durable too. */
    function durableSnapshotCase(
      title: string,
      fn: (s: SnapshotAdapter, reopen: () => Promise<SnapshotAdapter>) => Promise<void>,
    ): void {
      kase(
        `${title} (runs when capabilities.durable)`,
        async (ctx) => {
          const reopen = reopener(ctx);
          await fn(snap(a), async () => snap(await reopen()));
        },
        SNAPSHOT_MODE,
      );
    }

    // -- basic reads and writes ---------------------------------------------------------------

    kase('get of a missing key resolves undefined', async () => {
      expect(await a.get('missing')).toBeUndefined();
      expect(await a.keys()).toEqual([]);
    });

    kase('put then get returns the bytes; put overwrites', async () => {
      await a.put('k', bytes('one'));
      expectBytes(await a.get('k'), bytes('one'));
      await a.put('k', bytes('two, longer'));
      expectBytes(await a.get('k'), bytes('two, longer'));
      await a.put('k', bytes('3'));
      expectBytes(await a.get('k'), bytes('3'));
    });

    kase('get returns a Uint8Array even when a Buffer was put', async () => {
      await a.put('buf', Buffer.from('from a Buffer'));
      const got = await a.get('buf');
      expect(got).toBeInstanceOf(Uint8Array);
      expectBytes(got, bytes('from a Buffer'));
    });

    kase('delete removes a key; deleting a missing key is not an error', async () => {
      await a.put('k', bytes('v'));
      await a.put('other', bytes('w'));
      await a.delete('k');
      expect(await a.get('k')).toBeUndefined();
      await a.delete('k');
      await a.delete('never-written');
      expect(await a.keys()).toEqual(['other']);
    });

    kase('keys() lists every key once, in ascending UTF-16 code-unit order', async () => {
      // U+FF5E sorts after U+1F600 by code unit (0xFF5E > 0xD83D) but before it by code point or
      // UTF-8 bytes: an adapter sorting bytes (a C-collated database) gets this wrong.
      const keys = ['b', 'a', 'B', 'a/b', 'a:b', 'ab', '\uFF5E', '😀', 'é', 'e', 'z', '10', '9', ' '];
      for (const k of keys) await a.put(k, bytes(k));
      await a.put('a', bytes('again'));
      expect(await a.keys()).toEqual([...new Set(keys)].sort());
      expect((await a.keys()).indexOf('😀')).toBeLessThan((await a.keys()).indexOf('\uFF5E'));
    });

    kase('values are copied on the way in and on the way out', async () => {
      const input = bytes('original');
      await a.put('k', input);
      input.fill(0);
      expectBytes(await a.get('k'), bytes('original'));

      const out = await a.get('k');
      out!.fill(1);
      expectBytes(await a.get('k'), bytes('original'));

      const value = bytes('committed');
      const meta = bytes('meta-1');
      await a.commit([{ op: 'put', key: 'c', value }], meta);
      value.fill(0);
      meta.fill(0);
      expectBytes(await a.get('c'), bytes('committed'));
      const readBack = await a.readMeta();
      expectBytes(readBack, bytes('meta-1'));
      readBack!.fill(2);
      expectBytes(await a.readMeta(), bytes('meta-1'));
    });

    // -- commit -------------------------------------------------------------------------------

    kase('readMeta() is undefined on a fresh store', async () => {
      expect(await a.readMeta()).toBeUndefined();
      await a.put('direct', bytes('x'));
      expect(await a.readMeta()).toBeUndefined();
    });

    kase('commit applies ops in order and sets the meta', async () => {
      await a.put('pre-deleted', bytes('old'));
      await a.put('pre-kept', bytes('kept'));
      await a.put('pre-replaced', bytes('old'));
      const ops: WriteOp[] = [
        put('put-then-delete', 'x'),
        del('put-then-delete'),
        del('delete-then-put'),
        put('delete-then-put', 'back'),
        put('thrice', '1'),
        put('thrice', '2'),
        put('thrice', '3'),
        del('pre-deleted'),
        put('pre-replaced', 'new'),
        del('never-existed'),
        put('fresh', 'f'),
      ];
      await a.commit(ops, bytes('cp-1'));
      expect(await dump(a)).toEqual({
        data: {
          'delete-then-put': 'back',
          fresh: 'f',
          'pre-kept': 'kept',
          'pre-replaced': 'new',
          thrice: '3',
        },
        meta: 'cp-1',
      });
    });

    kase('committing the same batch twice leaves the same store', async () => {
      await a.put('p', bytes('before'));
      const ops = [put('a', '1'), del('p'), put('b', '2'), del('a'), put('a', '3')];
      await a.commit(ops, bytes('cp-7'));
      const once = await dump(a);
      await a.commit(ops, bytes('cp-7'));
      expect(await dump(a)).toEqual(once);
      expect(once).toEqual({ data: { a: '3', b: '2' }, meta: 'cp-7' });
    });

    kase('a commit with no ops replaces only the meta', async () => {
      await a.commit([put('a', '1')], bytes('cp-1'));
      await a.commit([], bytes('cp-2'));
      expect(await dump(a)).toEqual({ data: { a: '1' }, meta: 'cp-2' });
      await a.commit([], new Uint8Array(0));
      expect(await dump(a)).toEqual({ data: { a: '1' }, meta: '' });
    });

    kase('clear() removes every key and the meta; clearing an empty store is fine', async () => {
      await a.commit([put('a', '1'), put('b', '2')], bytes('cp-1'));
      await a.put('c', bytes('3'));
      await a.clear();
      expect(await dump(a)).toEqual({ data: {}, meta: undefined });
      await a.clear();
      expect(await dump(a)).toEqual({ data: {}, meta: undefined });
      // The store stays usable.
      await a.commit([put('d', '4')], bytes('cp-2'));
      await a.put('e', bytes('5'));
      expect(await dump(a)).toEqual({ data: { d: '4', e: '5' }, meta: 'cp-2' });
    });

    // -- values and keys ----------------------------------------------------------------------

    kase('0-byte, binary and 8 MiB values round-trip through put and commit', async () => {
      const empty = new Uint8Array(0);
      const everyByte = Uint8Array.from({ length: 512 }, (_, i) => i % 256);
      const big = new Uint8Array(randomBytes(8 * 1024 * 1024));
      const big2 = new Uint8Array(randomBytes(8 * 1024 * 1024 - 1));
      await a.put('empty', empty);
      await a.put('every-byte', everyByte);
      await a.put('big', big);
      await a.commit(
        [
          { op: 'put', key: 'c-empty', value: empty },
          { op: 'put', key: 'c-big', value: big2 },
          { op: 'put', key: 'c-every-byte', value: everyByte },
        ],
        everyByte,
      );
      const gotEmpty = await a.get('empty');
      expect(gotEmpty).toBeInstanceOf(Uint8Array);
      expect(gotEmpty!.byteLength).toBe(0);
      expect((await a.get('c-empty'))?.byteLength).toBe(0);
      expectBytes(await a.get('every-byte'), everyByte);
      expectBytes(await a.get('c-every-byte'), everyByte);
      expectBytes(await a.get('big'), big);
      expectBytes(await a.get('c-big'), big2);
      expectBytes(await a.readMeta(), everyByte);
      expect(await a.keys()).toEqual(['big', 'c-big', 'c-empty', 'c-every-byte', 'empty', 'every-byte']);
    });

    kase('awkward keys round-trip: separators, dots, case, non-ASCII, up to 1024 bytes', async () => {
      const keys = awkwardKeys();
      for (const k of keys.slice(0, keys.length / 2)) await a.put(k, bytes(`v:${k}`));
      await a.commit(
        keys.slice(keys.length / 2).map((k) => put(k, `v:${k}`)),
        bytes('cp'),
      );
      expect(await a.keys()).toEqual([...keys].sort());
      for (const k of keys) expectBytes(await a.get(k), bytes(`v:${k}`), k);
      for (const k of keys) await a.delete(k);
      expect(await a.keys()).toEqual([]);
    });

    kase('100 000 keys written by batched commits are all listed and readable', async () => {
      const total = 100_000;
      const batch = 10_000;
      const keyOf = (i: number): string => `bulk/${i.toString(36)}`;
      for (let start = 0; start < total; start += batch) {
        const ops: WriteOp[] = [];
        for (let i = start; i < start + batch; i++) ops.push({ op: 'put', key: keyOf(i), value: u32(i) });
        await a.commit(ops, u32(start));
      }
      const listed = await a.keys();
      expect(listed.length).toBe(total);
      const expected = Array.from({ length: total }, (_, i) => keyOf(i)).sort();
      expect(firstDifference(listed, expected)).toBeUndefined();
      for (let n = 0; n < 500; n++) {
        const i = Math.floor(Math.random() * total);
        expectBytes(await a.get(keyOf(i)), u32(i), keyOf(i));
      }
      expectBytes(await a.readMeta(), u32(total - batch));
    });

    kase(
      'apply(ops) acts as the same puts and deletes in order (runs when the adapter has apply)',
      async (ctx) => {
        if (a.apply === undefined) ctx.skip(`${name} has no apply()`);
        await a.commit([put('pre-deleted', 'old'), put('pre-kept', 'kept')], bytes('cp-1'));
        const value = bytes('copied');
        await a.apply!([
          put('put-then-delete', 'x'),
          del('put-then-delete'),
          del('delete-then-put'),
          { op: 'put', key: 'delete-then-put', value },
          put('twice', '1'),
          put('twice', '2'),
          del('pre-deleted'),
          del('never-existed'),
        ]);
        value.fill(0);
        const after = { data: { 'delete-then-put': 'copied', 'pre-kept': 'kept', twice: '2' }, meta: 'cp-1' };
        expect(await dump(a)).toEqual(after);
        await a.apply!([]);
        await expectInvalid(
          a.apply!([put('z', '1'), { op: 'put', key: '', value: bytes('x') }]),
          'apply with an empty key',
        );
        expect(await dump(a)).toEqual(after);
      },
    );

    // -- bad input ----------------------------------------------------------------------------

    kase('invalid keys are rejected with InvalidArgumentError and change nothing', async () => {
      await a.commit([put('a', '1')], bytes('cp-1'));
      const before = await dump(a);
      for (const key of invalidKeys()) {
        const what = describeValue(key);
        await expectInvalid(a.get(key as string), `get(${what})`);
        await expectInvalid(a.put(key as string, bytes('x')), `put(${what})`);
        await expectInvalid(a.delete(key as string), `delete(${what})`);
        await expectInvalid(
          a.commit([{ op: 'put', key: key as string, value: bytes('x') }], bytes('m')),
          `commit put ${what}`,
        );
        await expectInvalid(
          a.commit([{ op: 'delete', key: key as string }], bytes('m')),
          `commit delete ${what}`,
        );
      }
      expect(await dump(a)).toEqual(before);
    });

    kase('invalid values are rejected with InvalidArgumentError and change nothing', async () => {
      await a.commit([put('a', '1')], bytes('cp-1'));
      const before = await dump(a);
      for (const value of invalidValues()) {
        const what = describeValue(value);
        await expectInvalid(a.put('a', value as Uint8Array), `put(a, ${what})`);
        await expectInvalid(a.put('new', value as Uint8Array), `put(new, ${what})`);
        await expectInvalid(
          a.commit([{ op: 'put', key: 'a', value: value as Uint8Array }], bytes('m')),
          `commit ${what}`,
        );
        await expectInvalid(a.commit([put('b', '2')], value as Uint8Array), `commit with meta ${what}`);
      }
      expect(await dump(a)).toEqual(before);
    });

    kase('a commit with one bad op anywhere is rejected whole', async () => {
      await a.commit([put('a', '1')], bytes('cp-1'));
      const before = await dump(a);
      const good = [put('a', 'changed'), del('a'), put('b', '2')];
      const badOps: unknown[] = [
        null,
        'put',
        {},
        { op: 'merge', key: 'a', value: bytes('x') },
        { op: 'put', key: 'a' },
        { op: 'put', value: bytes('x') },
        { op: 'delete' },
        { op: 'delete', key: '' },
      ];
      for (const bad of badOps) {
        for (const ops of [
          [bad, ...good],
          [...good, bad],
          [good[0], bad, good[2]],
        ]) {
          await expectInvalid(a.commit(ops as WriteOp[], bytes('cp-2')), `commit with ${describeValue(bad)}`);
        }
      }
      for (const notOps of [undefined, null, 'ops', { length: 1, 0: put('a', 'x') }]) {
        await expectInvalid(
          a.commit(notOps as unknown as WriteOp[], bytes('cp-2')),
          `commit(${describeValue(notOps)})`,
        );
      }
      expect(await dump(a)).toEqual(before);
    });

    // -- lifecycle ----------------------------------------------------------------------------

    kase('open() is idempotent and keeps the data', async () => {
      await a.commit([put('a', '1')], bytes('cp-1'));
      await a.open();
      await a.open();
      expect(await dump(a)).toEqual({ data: { a: '1' }, meta: 'cp-1' });
    });

    kase('after close() every call rejects with ClosedError; close() is idempotent', async () => {
      await a.put('a', bytes('1'));
      await a.close();
      await a.close();
      const calls: [string, () => Promise<unknown>][] = [
        ['open', () => a.open()],
        ['get', () => a.get('a')],
        ['put', () => a.put('a', bytes('2'))],
        ['delete', () => a.delete('a')],
        ['keys', () => a.keys()],
        ['commit', () => a.commit([put('a', '3')], bytes('m'))],
        ['readMeta', () => a.readMeta()],
        ['clear', () => a.clear()],
      ];
      const apply = a.apply?.bind(a);
      if (apply !== undefined) calls.push(['apply', () => apply([put('a', '4')])]);
      if (a.capabilities.snapshot) {
        const s = snap(a);
        calls.push(
          ['writeArea', () => s.writeArea(1, [put('a', '5')])],
          ['formSnapshot', () => s.formSnapshot(1, bytes('m'))],
          ['releaseAreas', () => s.releaseAreas()],
        );
      }
      for (const [what, call] of calls) {
        await expect(call(), what).rejects.toBeInstanceOf(ClosedError);
      }
    });

    // -- concurrency --------------------------------------------------------------------------

    kase('reads during a commit see each key old or new, never torn', async () => {
      const n = 400;
      const size = 16 * 1024;
      const key = (i: number): string => `rw/${i}`;
      // Old and new differ in every byte, so any mix of the two is detected.
      const value = (i: number, gen: number): Uint8Array => new Uint8Array(size).fill((i * 2 + gen) % 251);
      await a.commit(
        Array.from({ length: n }, (_, i) => ({ op: 'put', key: key(i), value: value(i, 0) })),
        bytes('gen-0'),
      );
      // The new batch rewrites every even key, deletes every odd one and adds n/2 new keys.
      const ops: WriteOp[] = [];
      for (let i = 0; i < n; i++)
        ops.push(i % 2 === 0 ? { op: 'put', key: key(i), value: value(i, 1) } : del(key(i)));
      for (let i = n; i < n + n / 2; i++) ops.push({ op: 'put', key: key(i), value: value(i, 1) });

      const seen = (i: number, got: Uint8Array | undefined): boolean => {
        const old = i < n ? value(i, 0) : undefined;
        const neu = i < n && i % 2 === 1 ? undefined : value(i, 1);
        return sameBytes(got, old) || sameBytes(got, neu);
      };
      let committing = true;
      const torn: string[] = [];
      let reads = 0;
      const reader = async (): Promise<void> => {
        while (committing) {
          // Yield to I/O each round: reads answered from memory alone would starve the commit.
          await nextTurn();
          const i = Math.floor(Math.random() * (n + n / 2));
          try {
            const got = await a.get(key(i));
            reads++;
            if (!seen(i, got)) torn.push(`${key(i)}: ${got?.byteLength} bytes starting ${got?.[0]}`);
            const meta = decode(await a.readMeta());
            if (meta !== 'gen-0' && meta !== 'gen-1') torn.push(`meta ${meta}`);
          } catch (err) {
            // Recorded, not thrown: a rejection here would go unobserved until the commit ends.
            torn.push(`${key(i)}: ${String(err)}`);
          }
        }
      };
      const readers = Array.from({ length: 4 }, reader);
      await a.commit(ops, bytes('gen-1')).finally(() => {
        committing = false;
      });
      await Promise.all(readers);
      expect(torn).toEqual([]);
      expect(reads).toBeGreaterThan(0);
      for (let i = 0; i < n + n / 2; i++) {
        expectBytes(await a.get(key(i)), i < n && i % 2 === 1 ? undefined : value(i, 1), key(i));
      }
      expect(decode(await a.readMeta())).toBe('gen-1');
    });

    kase('direct writes issued without awaiting apply in call order', async () => {
      const pending: Promise<void>[] = [];
      for (let i = 0; i < 50; i++) pending.push(a.put('k', bytes(`v${i}`)));
      pending.push(a.delete('gone'), a.put('gone', bytes('x')), a.delete('gone'));
      await Promise.all(pending);
      expectBytes(await a.get('k'), bytes('v49'));
      expect(await a.get('gone')).toBeUndefined();
    });

    // -- durability ---------------------------------------------------------------------------

    durableCase('a commit and its meta survive close and reopen', async (reopen) => {
      const big = new Uint8Array(randomBytes(3 * 1024 * 1024));
      await a.commit([put('a', '1'), put('b', '2'), { op: 'put', key: 'big', value: big }], bytes('cp-1'));
      await a.commit([del('a'), put('c', '3')], bytes('cp-2'));
      const before = await dump(a);
      const again = await reopen();
      expect(await dump(again)).toEqual(before);
      expectBytes(await again.get('big'), big);
      expect(before.meta).toBe('cp-2');
    });

    durableCase('direct puts and deletes survive close and reopen', async (reopen) => {
      await a.put('a', bytes('1'));
      await a.put('b', bytes('2'));
      await a.delete('a');
      const again = await reopen();
      expect(await dump(again)).toEqual({ data: { b: '2' }, meta: undefined });
    });

    durableCase('clear survives close and reopen', async (reopen) => {
      await a.commit([put('a', '1')], bytes('cp-1'));
      await a.clear();
      const again = await reopen();
      expect(await dump(again)).toEqual({ data: {}, meta: undefined });
    });

    durableCase('awkward keys and 0-byte values survive close and reopen', async (reopen) => {
      const keys = awkwardKeys();
      await a.commit(
        keys.map((k) => ({ op: 'put', key: k, value: new Uint8Array(0) })),
        bytes('cp'),
      );
      const again = await reopen();
      expect(await again.keys()).toEqual([...keys].sort());
      for (const k of keys) expect((await again.get(k))?.byteLength, k).toBe(0);
    });

    // -- snapshot mode (SnapshotStore) --------------------------------------------------------

    describe(SNAPSHOT_MODE, () => {
      snapshotCase('area writes are invisible to get, keys and readMeta until formSnapshot', async (s) => {
        await s.commit([put('base', '0'), put('kept', 'k')], bytes('cp-0'));
        await s.writeArea(1, [put('new', '1'), put('base', '1'), del('kept')]);
        const before = { data: { base: '0', kept: 'k' }, meta: 'cp-0' };
        expect(await dump(s)).toEqual(before);
        expect(await s.get('new')).toBeUndefined();
        await s.formSnapshot(1, bytes('cp-1'));
        expect(await dump(s)).toEqual({ data: { base: '1', new: '1' }, meta: 'cp-1' });
        // Forming an area that holds no writes is valid: only the meta changes.
        await s.formSnapshot(2, bytes('cp-2'));
        expect(await dump(s)).toEqual({ data: { base: '1', new: '1' }, meta: 'cp-2' });
      });

      snapshotCase('the later op on a key wins, within an area and across writeArea calls', async (s) => {
        await s.commit([put('base', '0'), put('gone', 'g'), put('stays', 's')], bytes('cp-0'));
        await s.writeArea(1, [
          put('k', '1'),
          put('k', '2'),
          del('gone'),
          put('back', 'x'),
          put('twice', 'a'),
          del('stays'),
        ]);
        await s.writeArea(1, [
          del('back'),
          put('back', 'again'),
          put('dead', 'd'),
          del('dead'),
          put('base', '1'),
          del('twice'),
          put('stays', 'returned'),
        ]);
        // The same frame delivered twice writes the same ops again: nothing changes.
        await s.writeArea(1, [put('k', '2')]);
        expect(await dump(s)).toEqual({ data: { base: '0', gone: 'g', stays: 's' }, meta: 'cp-0' });
        await s.formSnapshot(1, bytes('cp-1'));
        expect(await dump(s)).toEqual({
          data: { back: 'again', base: '1', k: '2', stays: 'returned' },
          meta: 'cp-1',
        });
      });

      snapshotCase('deletes in an area (tombstones) hide snapshot keys only once formed', async (s) => {
        await s.commit([put('a', '1'), put('b', '1'), put('c', '1')], bytes('cp-0'));
        await s.writeArea(1, [del('a'), del('b'), del('never-existed'), put('c', '2')]);
        expect(await s.keys()).toEqual(['a', 'b', 'c']);
        expectBytes(await s.get('a'), bytes('1'));
        await s.releaseAreas();
        expect(await dump(s)).toEqual({ data: { a: '1', b: '1', c: '1' }, meta: 'cp-0' });
        await s.writeArea(1, [del('a'), del('b'), del('never-existed'), put('c', '2')]);
        await s.formSnapshot(1, bytes('cp-1'));
        expect(await dump(s)).toEqual({ data: { c: '2' }, meta: 'cp-1' });
        expect(await s.get('a')).toBeUndefined();
        // A key deleted in one snapshot and put back in the next.
        await s.writeArea(2, [put('a', 'back')]);
        await s.formSnapshot(2, bytes('cp-2'));
        expect(await dump(s)).toEqual({ data: { a: 'back', c: '2' }, meta: 'cp-2' });
      });

      snapshotCase('forming an area leaves a later, unformed area invisible', async (s) => {
        // The applier writes checkpoint n+1's frames while n waits for its seal.
        await s.writeArea(1, [put('a', '1'), put('b', '1')]);
        await s.writeArea(2, [put('a', '2'), del('b'), put('c', '2')]);
        await s.writeArea(1, [put('d', '1')]);
        await s.formSnapshot(1, bytes('cp-1'));
        expect(await dump(s)).toEqual({ data: { a: '1', b: '1', d: '1' }, meta: 'cp-1' });
        await s.writeArea(2, [put('e', '2')]);
        await s.formSnapshot(2, bytes('cp-2'));
        expect(await dump(s)).toEqual({ data: { a: '2', c: '2', d: '1', e: '2' }, meta: 'cp-2' });
      });

      snapshotCase(
        'releaseAreas restores the last snapshot exactly, byte for byte, listing included; idempotent',
        async (s) => {
          const everyByte = Uint8Array.from({ length: 512 }, (_, i) => (i * 7) % 256);
          await s.writeArea(1, [
            put('a', '1'),
            put('b', '1'),
            { op: 'put', key: 'empty', value: new Uint8Array(0) },
            { op: 'put', key: 'binary', value: everyByte },
            { op: 'put', key: 'mid', value: new Uint8Array(randomBytes(256 * 1024)) },
            put('emoji 🔑/with space', 'x'),
          ]);
          await s.formSnapshot(1, everyByte.subarray(0, 77));
          const before = await rawDump(s);
          await s.writeArea(2, [
            del('a'),
            put('b', '2'),
            put('c', '2'),
            { op: 'put', key: 'empty', value: bytes('no longer empty') },
            { op: 'put', key: 'binary', value: new Uint8Array(0) },
            del('emoji 🔑/with space'),
          ]);
          await s.writeArea(3, [put('d', '3'), del('mid')]);
          await s.releaseAreas();
          expectSameStore(await rawDump(s), before);
          await s.releaseAreas();
          expectSameStore(await rawDump(s), before);
          // Released writes are gone for good: forming the same area number again applies only
          // what was written to it after the release.
          await s.writeArea(2, [put('e', '2')]);
          await s.formSnapshot(2, bytes('cp-2'));
          const after = await dump(s);
          expect(Object.keys(after.data)).toEqual([
            'a',
            'b',
            'binary',
            'e',
            'emoji 🔑/with space',
            'empty',
            'mid',
          ]);
          expect([after.data.a, after.data.b, after.data.e, after.meta]).toEqual(['1', '1', '2', 'cp-2']);
        },
      );

      snapshotCase(
        'a promoted standby writes directly over its last snapshot after releaseAreas',
        async (s) => {
          await s.writeArea(1, [put('a', '1'), put('b', '1')]);
          await s.formSnapshot(1, bytes('cp-1'));
          await s.writeArea(2, [put('a', 'unformed'), put('z', 'unformed')]);
          await s.releaseAreas();
          await s.put('a', bytes('direct'));
          await s.delete('b');
          await s.put('c', bytes('grouped'));
          await s.put('d', bytes('x'));
          await s.delete('d');
          await s.releaseAreas();
          expect(await dump(s)).toEqual({ data: { a: 'direct', c: 'grouped' }, meta: 'cp-1' });
          await s.commit([put('e', 'committed')], bytes('cp-x'));
          expect(await dump(s)).toEqual({
            data: { a: 'direct', c: 'grouped', e: 'committed' },
            meta: 'cp-x',
          });
        },
      );

      snapshotCase('0-byte, binary and 8 MiB values pass through an area whole', async (s) => {
        const big = new Uint8Array(randomBytes(8 * 1024 * 1024));
        const everyByte = Uint8Array.from({ length: 256 }, (_, i) => i);
        await s.commit([put('empty', 'was not empty')], bytes('cp-0'));
        await s.writeArea(1, [
          { op: 'put', key: 'big', value: big },
          { op: 'put', key: 'empty', value: new Uint8Array(0) },
          { op: 'put', key: 'every-byte', value: everyByte },
        ]);
        await s.writeArea(1, [{ op: 'put', key: 'fresh-empty', value: new Uint8Array(0) }]);
        expect(await s.get('big')).toBeUndefined();
        await s.formSnapshot(1, new Uint8Array([0, 255, 0]));
        expectBytes(await s.get('big'), big);
        const empty = await s.get('empty');
        expect(empty).toBeInstanceOf(Uint8Array);
        expect(empty?.byteLength).toBe(0);
        expect((await s.get('fresh-empty'))?.byteLength).toBe(0);
        expectBytes(await s.get('every-byte'), everyByte);
        expectBytes(await s.readMeta(), new Uint8Array([0, 255, 0]));
        expect(await s.keys()).toEqual(['big', 'empty', 'every-byte', 'fresh-empty']);
      });

      snapshotCase('an area of 10 000 keys written in ten calls is formed whole', async (s) => {
        const total = 10_000;
        const keyOf = (i: number): string => `area/${i.toString(36)}`;
        await s.commit([put('base', '0')], bytes('cp-0'));
        for (let start = 0; start < total; start += 1000) {
          const ops: WriteOp[] = [];
          for (let i = start; i < start + 1000; i++) ops.push({ op: 'put', key: keyOf(i), value: u32(i) });
          await s.writeArea(1, ops);
        }
        expect(await s.keys()).toEqual(['base']);
        await s.formSnapshot(1, bytes('cp-1'));
        const listed = await s.keys();
        const expected = [...Array.from({ length: total }, (_, i) => keyOf(i)), 'base'].sort();
        expect(firstDifference(listed, expected)).toBeUndefined();
        for (let n = 0; n < 300; n++) {
          const i = Math.floor(Math.random() * total);
          expectBytes(await s.get(keyOf(i)), u32(i), keyOf(i));
        }
        expect(decode(await s.readMeta())).toBe('cp-1');
      });

      snapshotCase(
        'formSnapshot is atomic with its meta: readers see the old or the new snapshot, never a mix',
        async (s) => {
          const n = 2000;
          const key = (i: number): string => `f/${String(i).padStart(4, '0')}`;
          await s.writeArea(
            1,
            Array.from({ length: n }, (_, i) => put(key(i), '1')),
          );
          await s.formSnapshot(1, bytes('1'));
          // Snapshot 2 rewrites the even keys, deletes the odd ones and adds n/4 new keys.
          const ops: WriteOp[] = [];
          for (let i = 0; i < n; i++) ops.push(i % 2 === 0 ? put(key(i), '2') : del(key(i)));
          for (let i = n; i < n + n / 4; i++) ops.push(put(key(i), '2'));
          await s.writeArea(2, ops);
          const expected = (gen: string, i: number): string | undefined =>
            gen === '1' ? (i < n ? '1' : undefined) : i % 2 === 0 || i >= n ? '2' : undefined;
          const listing = (gen: string): string =>
            Array.from({ length: n + n / 4 }, (_, i) => i)
              .filter((i) => expected(gen, i) !== undefined)
              .map(key)
              .join('\n');
          const listings = new Set([listing('1'), listing('2')]);

          let forming = true;
          let reads = 0;
          const torn: string[] = [];
          const reader = async (): Promise<void> => {
            while (forming) {
              await nextTurn();
              try {
                // Separate calls, one after the other: with the meta the same on both sides of a
                // read, that read must match the meta's snapshot.
                const i = Math.floor(Math.random() * (n + n / 4));
                const m1 = decode(await s.readMeta())!;
                const v = decode(await s.get(key(i)));
                const listed = (await s.keys()).join('\n');
                const m2 = decode(await s.readMeta())!;
                reads++;
                if (!['1', '2'].includes(m1) || !['1', '2'].includes(m2)) torn.push(`meta ${m1} ${m2}`);
                if (m1 === m2 && v !== expected(m1, i)) torn.push(`meta ${m1}, ${key(i)} = ${v}`);
                if (!listings.has(listed)) torn.push(`a listing of ${listed.split('\n').length} keys`);
              } catch (err) {
                torn.push(String(err));
              }
            }
          };
          const readers = Array.from({ length: 4 }, reader);
          await s.formSnapshot(2, bytes('2')).finally(() => {
            forming = false;
          });
          await Promise.all(readers);
          expect(torn).toEqual([]);
          expect(reads).toBeGreaterThan(0);
          expect((await s.keys()).join('\n')).toBe(listing('2'));
          expect(decode(await s.readMeta())).toBe('2');
        },
      );

      snapshotCase('clear() drops unformed areas along with the data and meta', async (s) => {
        await s.commit([put('a', '1')], bytes('cp'));
        await s.writeArea(5, [put('b', '2'), del('a')]);
        await s.clear();
        expect(await dump(s)).toEqual({ data: {}, meta: undefined });
        await s.formSnapshot(5, bytes('cp-5'));
        expect(await dump(s)).toEqual({ data: {}, meta: 'cp-5' });
      });

      snapshotCase(
        'bad areas, ops and metas are rejected with InvalidArgumentError and change nothing',
        async (s) => {
          await s.writeArea(1, [put('a', '1')]);
          await s.formSnapshot(1, bytes('cp-1'));
          for (const area of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53, '2', null, undefined]) {
            const what = describeValue(area);
            await expectInvalid(s.writeArea(area as number, [put('a', 'x')]), `writeArea(${what})`);
            await expectInvalid(s.formSnapshot(area as number, bytes('m')), `formSnapshot(${what})`);
          }
          for (const bad of [null, { op: 'put', key: '', value: bytes('x') }, { op: 'put', key: 'a' }]) {
            await expectInvalid(
              s.writeArea(2, [put('b', 'x'), bad as WriteOp]),
              `writeArea with ${describeValue(bad)}`,
            );
          }
          await expectInvalid(s.writeArea(2, 'ops' as unknown as WriteOp[]), 'writeArea(2, "ops")');
          for (const meta of invalidValues()) {
            await expectInvalid(
              s.formSnapshot(2, meta as Uint8Array),
              `formSnapshot(2, ${describeValue(meta)})`,
            );
          }
          expect(await dump(s)).toEqual({ data: { a: '1' }, meta: 'cp-1' });
          // The rejected area writes left nothing behind to be formed.
          await s.formSnapshot(2, bytes('cp-2'));
          expect(await dump(s)).toEqual({ data: { a: '1' }, meta: 'cp-2' });
        },
      );

      durableSnapshotCase('a formed snapshot survives close and reopen', async (s, reopen) => {
        const big = new Uint8Array(randomBytes(3 * 1024 * 1024));
        await s.writeArea(1, [put('a', '1'), put('b', '1'), { op: 'put', key: 'big', value: big }]);
        await s.formSnapshot(1, bytes('cp-1'));
        await s.writeArea(2, [del('a'), put('c', '2')]);
        await s.formSnapshot(2, bytes('cp-2'));
        const before = await rawDump(s);
        const again = await reopen();
        expectSameStore(await rawDump(again), before);
        expect(decode(await again.readMeta())).toBe('cp-2');
        expect(await again.keys()).toEqual(['b', 'big', 'c']);
      });

      durableSnapshotCase(
        'after close and reopen an unformed area stays invisible; releaseAreas and clear still work',
        async (s, reopen) => {
          await s.writeArea(1, [put('a', '1'), put('b', '1')]);
          await s.formSnapshot(1, bytes('cp-1'));
          const snapshot = await rawDump(s);
          await s.writeArea(2, [del('a'), put('b', '2'), put('c', '2')]);
          let again = await reopen();
          expectSameStore(await rawDump(again), snapshot);
          await again.releaseAreas();
          expectSameStore(await rawDump(again), snapshot);
          await again.writeArea(2, [put('d', '2')]);
          await again.formSnapshot(2, bytes('cp-2'));
          expect(await dump(again)).toEqual({ data: { a: '1', b: '1', d: '2' }, meta: 'cp-2' });
          // Released before the restart: still released after it.
          await again.writeArea(3, [put('released', '3')]);
          await again.releaseAreas();
          again = await reopen();
          await again.formSnapshot(3, bytes('cp-3'));
          expect(await dump(again)).toEqual({ data: { a: '1', b: '1', d: '2' }, meta: 'cp-3' });

          await again.writeArea(4, [put('e', '4')]);
          again = await reopen();
          await again.clear();
          expect(await dump(again)).toEqual({ data: {}, meta: undefined });
          again = await reopen();
          expect(await dump(again)).toEqual({ data: {}, meta: undefined });
          await again.formSnapshot(4, bytes('cp-4'));
          expect(await dump(again)).toEqual({ data: {}, meta: 'cp-4' });
        },
      );
    });

    // -- store faults (issue 12): a store that lost data is detected, never trusted ------------

    describe(STORE_FAULTS, () => {
      /** The fault hook `name`; fails the case asking for a gap when the adapter has none. */
      function hook<K extends keyof StoreFaults>(k: K): NonNullable<StoreFaults[K]> {
        const f = under.faults?.[k];
        if (f === undefined) {
          throw new Error(
            `${name} has no faults.${k} hook: add it to make(), or list the case (or ${JSON.stringify(STORE_FAULTS)}) in its gaps with the reason`,
          );
        }
        return f.bind(under.faults) as NonNullable<StoreFaults[K]>;
      }
      function faultCase(title: string, fn: () => Promise<void>): void {
        kase(title, fn, STORE_FAULTS);
      }
      const twenty = (gen: string): WriteOp[] =>
        Array.from({ length: 20 }, (_, i) => put(`k${i}`, `${gen}-${i}`));

      faultCase('verify() on an untouched store is ok, quick and full, and names the store', async () => {
        await a.commit(twenty('g1'), bytes('cp-1'));
        const full = await a.verify();
        expect(full, full.detail).toMatchObject({
          status: 'ok',
          ok: true,
          keys: 20,
          expectedKeys: 20,
          quick: false,
        });
        expect(full.identity.storeId).toMatch(/^\w{8,}$/);
        const quick = await a.verify({ quick: true });
        expect(quick, quick.detail).toMatchObject({ status: 'ok', ok: true, keys: 20, quick: true });
        await a.commit([del('k0'), put('k1', 'changed')], bytes('cp-2'));
        expect((await a.verify()).ok).toBe(true);
        await a.clear();
        expect(await a.verify()).toMatchObject({ ok: true, keys: 0 });
      });

      faultCase(
        'a store wiped underneath is detected: StoreLostError on every call, or a verify mismatch',
        async () => {
          await a.commit(twenty('g1'), bytes('cp-1'));
          await hook('wipe')();
          const seen = await detect(a);
          expect(seen, 'a wiped store must never verify ok').not.toBe('ok');
          if (seen === 'lost') {
            await expectLostEverywhere(a);
          } else {
            // Never silently healed: later commits keep the mismatch, until a clear().
            expect((await a.verify({ quick: true })).ok).toBe(false);
            await a.commit([put('k1', 'again')], bytes('cp-2'));
            expect((await a.verify()).status).toBe('mismatch');
            await a.clear();
            expect((await a.verify()).ok).toBe(true);
          }
        },
      );

      faultCase('a few keys lost underneath are detected, by the quick check too', async () => {
        await a.commit(twenty('g1'), bytes('cp-1'));
        await a.commit(twenty('g2').slice(0, 10), bytes('cp-2'));
        await hook('deleteSome')(['k3', 'k7', 'k11']);
        const quick = await detect(a, true);
        expect(quick, 'the quick check must see lost keys').not.toBe('ok');
        const full = await detect(a);
        expect(full).not.toBe('ok');
        if (full === 'lost' || quick === 'lost') await expectLostEverywhere(a);
      });

      faultCase(
        'a server restart: an emptied store is lost on the next call; a kept one carries on',
        async () => {
          await a.commit(twenty('g1'), bytes('cp-1'));
          const how = await hook('restart')();
          if (how === 'empty') {
            // At most a few retryable errors (the connection was cut), then StoreLostError.
            const err = await untilNotRetryable(() => a.get('k1'));
            expect(err, 'a get on an emptied store must not resolve').toBeInstanceOf(StorageError);
            expect((err as StorageError).code).toBe(ErrorCode.StoreLost);
            await expectLostEverywhere(a);
          } else {
            const err = await untilNotRetryable(() => a.commit([put('k1', 'after')], bytes('cp-2')));
            expect(err).toBeUndefined();
            expect(decode(await a.get('k1'))).toBe('after');
            expect((await a.verify()).ok).toBe(true);
          }
        },
      );

      faultCase(
        'a connection killed mid-commit: a retryable error at most, never a partial commit',
        async () => {
          await a.commit(twenty('g1'), bytes('cp-1'));
          const big = Array.from({ length: 20_000 }, (_, i) => put(`big${i}`, `v${i}-${'x'.repeat(200)}`));
          const committing = a.commit(big, bytes('cp-2')).then(
            () => undefined,
            (e: unknown) => e,
          );
          await new Promise((r) => setTimeout(r, 5));
          await hook('killConnections')();
          const err = await committing;
          if (err !== undefined) {
            expect(err).toBeInstanceOf(StorageError);
            expect((err as StorageError).retryable, String(err)).toBe(true);
          }
          // All of it or none of it, whatever the kill hit.
          const firstRead = await untilNotRetryable(() => a.keys());
          expect(firstRead).toBeUndefined();
          const n = (await a.keys()).length;
          expect([20, 20_020]).toContain(n);
          expect((await a.verify()).ok).toBe(true);
          // The same batch again is safe and completes the commit.
          expect(await untilNotRetryable(() => a.commit(big, bytes('cp-2')))).toBeUndefined();
          expect((await a.keys()).length).toBe(20_020);
          expect(decode(await a.readMeta())).toBe('cp-2');
          expect((await a.verify()).ok).toBe(true);
        },
      );

      faultCase(
        'a store that stops answering: calls reject retryable within the timeouts, never hang',
        async () => {
          await a.commit(twenty('g1'), bytes('cp-1'));
          const reconnect = await hook('cutOff')();
          try {
            const t0 = Date.now();
            const err = await a.commit([put('k1', 'cut')], bytes('cp-2')).then(
              () => undefined,
              (e: unknown) => e,
            );
            const ms = Date.now() - t0;
            expect(err, 'a commit to a store that does not answer must fail').toBeInstanceOf(StorageError);
            expect((err as StorageError).retryable, String(err)).toBe(true);
            expect(ms, 'bounded by the adapter timeouts (set to at most 5 s in make())').toBeLessThan(12_000);
            const read = await a.get('k1').then(
              () => undefined,
              (e: unknown) => e,
            );
            expect(read).toBeInstanceOf(StorageError);
            expect((read as StorageError).retryable).toBe(true);
          } finally {
            await reconnect();
          }
          // Back: the same commit again goes through, and the store is whole.
          expect(await untilNotRetryable(() => a.commit([put('k1', 'cut')], bytes('cp-2')))).toBeUndefined();
          expect(decode(await a.get('k1'))).toBe('cut');
          expect(decode(await a.readMeta())).toBe('cp-2');
          expect((await a.verify()).ok).toBe(true);
        },
      );
    });

    // Gaps must name cases that exist: a renamed case must not leave a stale gap hiding nothing.
    // Checked when the case runs: nested groups register their titles after this line.
    it('gaps name existing cases', () => {
      const unknown = [...gaps.keys()].filter((g) => !titles.has(g));
      if (unknown.length > 0) {
        throw new Error(
          `gaps name no case of the suite: ${unknown.map((g) => JSON.stringify(g)).join(', ')}`,
        );
      }
    });
  });
}

// -----------------------------------------------------------------------------------------------
// Helpers

/** How a store with a fault looks to the adapter: `'lost'` (StoreLostError) or a verify status. */
async function detect(a: StorageAdapter, quick = false): Promise<'lost' | 'ok' | 'mismatch' | 'unrecorded'> {
  try {
    return (await a.verify({ quick })).status;
  } catch (err) {
    if (err instanceof StorageError && err.code === ErrorCode.StoreLost) {
      expect(err.retryable).toBe(false);
      return 'lost';
    }
    throw err;
  }
}

/** Once lost, every call of the instance rejects with StoreLostError: never a silent continue. */
async function expectLostEverywhere(a: StorageAdapter): Promise<void> {
  const calls: [string, () => Promise<unknown>][] = [
    ['get', () => a.get('k1')],
    ['put', () => a.put('k1', bytes('x'))],
    ['delete', () => a.delete('k1')],
    ['keys', () => a.keys()],
    ['commit', () => a.commit([put('k1', 'y')], bytes('m'))],
    ['readMeta', () => a.readMeta()],
    ['verify', () => a.verify()],
    ['clear', () => a.clear()],
  ];
  for (const [what, call] of calls) {
    const err = await call().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err, `${what} on a lost store must reject`).toBeInstanceOf(StorageError);
    expect((err as StorageError).code, `${what}: ${String(err)}`).toBe(ErrorCode.StoreLost);
  }
}

/**
 * Calls `fn` until it does not reject with a retryable error (at most 10 tries, 100 ms apart):
 * resolves `undefined` when it resolved, else the non-retryable error.
 */
async function untilNotRetryable(fn: () => Promise<unknown>): Promise<unknown> {
  let last: unknown;
  for (let i = 0; i < 10; i++) {
    try {
      await fn();
      return undefined;
    } catch (err) {
      last = err;
      if (!(err instanceof StorageError && err.retryable)) return err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`still retryable after 10 tries: ${String(last)}`);
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

function bytes(s: string): Uint8Array {
  return encoder.encode(s);
}

function decode(b: Uint8Array | undefined): string | undefined {
  return b === undefined ? undefined : decoder.decode(b);
}

function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n);
  return b;
}

function put(key: string, value: string): WriteOp {
  return { op: 'put', key, value: bytes(value) };
}

function del(key: string): WriteOp {
  return { op: 'delete', key };
}

function sameBytes(x: Uint8Array | undefined, y: Uint8Array | undefined): boolean {
  if (x === undefined || y === undefined) return x === y;
  return Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(
    Buffer.from(y.buffer, y.byteOffset, y.byteLength),
  );
}

/** Byte equality without vitest's element-by-element diff, which is slow on 8 MiB. */
function expectBytes(got: Uint8Array | undefined, want: Uint8Array | undefined, what = 'value'): void {
  if (sameBytes(got, want)) return;
  const show = (b: Uint8Array | undefined): string =>
    b === undefined
      ? 'undefined'
      : `${b.byteLength} bytes ${Buffer.from(b.subarray(0, 24)).toString('hex')}…`;
  expect.fail(`${what}: got ${show(got)}, want ${show(want)}`);
}

/** The whole store as plain JSON: keys in order with UTF-8 values, and the meta. */
async function dump(a: StorageAdapter): Promise<{ data: Record<string, string>; meta: string | undefined }> {
  const data: Record<string, string> = {};
  for (const k of await a.keys()) {
    const v = await a.get(k);
    data[k] = v === undefined ? '<listed but missing>' : Buffer.from(v).toString('utf8');
  }
  const meta = await a.readMeta();
  return { data, meta: meta === undefined ? undefined : Buffer.from(meta).toString('utf8') };
}

/** The whole store as bytes: every key in listing order with its value, and the meta. */
interface RawStore {
  readonly keys: string[];
  readonly values: (Uint8Array | undefined)[];
  readonly meta: Uint8Array | undefined;
}

async function rawDump(a: StorageAdapter): Promise<RawStore> {
  const keys = await a.keys();
  const values: (Uint8Array | undefined)[] = [];
  for (const k of keys) values.push(await a.get(k));
  return { keys, values, meta: await a.readMeta() };
}

/** Byte-for-byte equality of two stores, listing order included. */
function expectSameStore(got: RawStore, want: RawStore): void {
  expect(got.keys, 'listing').toEqual(want.keys);
  for (let i = 0; i < want.keys.length; i++) expectBytes(got.values[i], want.values[i], want.keys[i]);
  expectBytes(got.meta, want.meta, 'meta');
}

function firstDifference(x: readonly string[], y: readonly string[]): string | undefined {
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    if (x[i] !== y[i]) return `at ${i}: ${JSON.stringify(x[i])} vs ${JSON.stringify(y[i])}`;
  }
  return undefined;
}

async function expectInvalid(call: Promise<unknown>, what: string): Promise<void> {
  await expect(call, what).rejects.toBeInstanceOf(InvalidArgumentError);
}

function describeValue(v: unknown): string {
  if (typeof v === 'string') return v.length > 20 ? `string(${v.length})` : JSON.stringify(v);
  if (v instanceof Uint8Array || v instanceof ArrayBuffer) return `${v.constructor.name}(${v.byteLength})`;
  if (typeof v === 'object' && v !== null) return v.constructor?.name ?? 'object';
  return String(v);
}

/** Keys that break naive path, URL or byte handling; all valid. */
function awkwardKeys(): string[] {
  return [
    'with space',
    ' leading and trailing ',
    'a:b:c',
    'a/b/c',
    '/leading/slash',
    'trailing/',
    '..',
    '.',
    '../../etc/passwd',
    'back\\slash',
    'CaseSensitive',
    'casesensitive',
    'nul\u0000inside',
    'new\nline',
    'tab\there',
    '?query=1&x=2#hash',
    '%2F%2e%2E',
    '*',
    'ключ',
    '键',
    'emoji 🔑',
    'combining e\u0301',
    'precomposed \u00e9',
    'x'.repeat(100),
    'x'.repeat(101),
    'x'.repeat(255),
    'x'.repeat(256),
    'y'.repeat(1024),
    'é'.repeat(512),
    '😀'.repeat(256),
  ];
}

function invalidKeys(): unknown[] {
  return [
    undefined,
    null,
    42,
    { toString: () => 'k' },
    '',
    'z'.repeat(1025),
    'é'.repeat(513),
    'lone \uD800 high surrogate',
    'lone \uDC00 low surrogate',
  ];
}

function invalidValues(): unknown[] {
  return [
    undefined,
    null,
    'a string',
    42,
    [1, 2, 3],
    new ArrayBuffer(4),
    new Uint16Array(2),
    new Int8Array(2),
    new DataView(new ArrayBuffer(2)),
    { byteLength: 0 },
  ];
}
