/**
 * SIGKILL during `commit` and during `formSnapshot`: the atomicity half of the `StorageAdapter`
 * and `SnapshotStore` contracts, tested with real processes. Any durable adapter plugs in with
 * a few lines:
 *
 * ```ts
 * testCrashDuringCommit('file', async () => {
 *   const dir = await mkdtemp(join(tmpdir(), 'rp-file-'));
 *   return { adapter: 'file', options: { dir }, open: () => fileAdapter({ dir }), cleanup: () => rm(...) };
 * });
 * ```
 *
 * A child process (test/helpers/adapter-commit-child.mjs, running the compiled adapter from
 * dist/) commits generation g+1 of every key over a store holding generation g, printing
 * "committing" just before `commit()`, "committed" when it resolves and "closed" when `close()`
 * (which waits for work queued behind the commit, like a compaction) resolves. The test kills it
 * with SIGKILL: once after "closed" (this run measures the time T from "committing" to
 * "closed"), once right at "committed", then at random delays after "committing" spread over
 * [0, T]. After each kill it reopens the store in this process and requires every key to be of
 * one generation, the same one the meta names.
 *
 * The second test (for adapters declaring `capabilities.snapshot`) runs the child in snapshot
 * mode: after `releaseAreas()` (a restarted standby's rollback, which also drops what a killed
 * predecessor left in its area) it writes generation g+1 into area g+1 in ten `writeArea` calls,
 * prints "forming", and forms the snapshot. Half the random kills are spread over the whole run
 * (mostly area writes), half over the time from "forming" to "closed", counted from the
 * "forming" line, so that forming is hit however long the area writes took.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import type { StorageAdapter, WriteOp } from '../../src/storage/adapter.js';

/** One store that a child process and this process can both open. */
export interface CrashTarget {
  /** Folder under `dist/adapters/`; the child calls its `<adapter>Adapter(options)`. */
  readonly adapter: string;
  /** Options for that factory, as JSON. */
  readonly options: Readonly<Record<string, unknown>>;
  /** A new, unopened instance over the same store, in this process. */
  readonly open: () => Promise<StorageAdapter>;
  /**
   * Optional: called before each child starts, and again after it was killed, before the store
   * is inspected: a networked store may still run what the killed child had already written to
   * its socket (the kernel delivers those bytes after the process is gone), so the inspection
   * waits until the server has dropped the child's connection (Redis: `CLIENT LIST`).
   */
  readonly settle?: { before(): Promise<void>; after(): Promise<void> };
  /** Optional: a short description of the store's leftovers after a kill, for the run log. */
  readonly inspect?: () => Promise<string>;
  /** Deletes the store. */
  readonly cleanup: () => Promise<void>;
}

/** Options of `testCrashDuringCommit`. */
export interface CrashOptions {
  /** Keys per generation (default 10 000). */
  readonly keys?: number;
  /** Bytes per value (default 1024). */
  readonly valueBytes?: number;
  /**
   * Kills at random delays after the calibration run in the commit test (default 2 in
   * `npm test`, or `RESTARTPOINT_TEST_CRASH_KILLS`: `npm run test:crash` runs 12).
   */
  readonly kills?: number;
  /** The same in the snapshot test (half over the whole run, half aimed at the forming). */
  readonly snapshotKills?: number;
}

/**
 * `RESTARTPOINT_TEST_CRASH_KILLS`: random kills per test. `npm test` keeps to a few per run (every
 * run lands them at new instants); the long loop is `npm run test:crash`.
 */
function crashKillsFromEnv(): number | undefined {
  const raw = process.env.RESTARTPOINT_TEST_CRASH_KILLS;
  if (raw === undefined || raw === '') return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > 1000) {
    throw new Error(
      `RESTARTPOINT_TEST_CRASH_KILLS must be a whole number from 1 to 1000, got ${JSON.stringify(raw)}`,
    );
  }
  return n;
}

/** What the child does: one `commit`, or area writes and a `formSnapshot`. */
type ChildMode = 'commit' | 'snapshot';

/** Time limit of each SIGKILL test. */
const CRASH_TEST_MS = 180_000;

const CHILD = fileURLToPath(new URL('../helpers/adapter-commit-child.mjs', import.meta.url));

/**
 * Registers the SIGKILL tests for one durable adapter: during `commit`, and (when the adapter
 * declares `capabilities.snapshot`) during area writes and `formSnapshot`.
 */
export function testCrashDuringCommit(
  name: string,
  make: () => Promise<CrashTarget>,
  opts: CrashOptions = {},
): void {
  const keys = opts.keys ?? 10_000;
  const valueBytes = opts.valueBytes ?? 1024;
  const kills = opts.kills ?? crashKillsFromEnv() ?? 2;
  const snapshotKills = opts.snapshotKills ?? crashKillsFromEnv() ?? 2;

  describe(`storage adapter ${name}: SIGKILL during commit and formSnapshot`, () => {
    // Ten child processes each, every one opening, committing 10 000 keys and being checked:
    // on a loaded 2-core machine that passes the default 60 s.
    it(
      `a commit of ${keys} keys killed at any instant reopens all-old or all-new`,
      () => killRuns(name, make, 'commit', keys, valueBytes, kills),
      CRASH_TEST_MS,
    );

    it(
      `a formSnapshot of a ${keys}-key area killed at any instant reopens at the old or the new snapshot (runs when capabilities.snapshot)`,
      (ctx) =>
        killRuns(name, make, 'snapshot', keys, valueBytes, snapshotKills, () =>
          ctx.skip(`${name} declares capabilities.snapshot = false`),
        ),
      CRASH_TEST_MS,
    );
  });
}

/** Seeds generation 0, then runs the child again and again, killing it as planned. */
async function killRuns(
  name: string,
  make: () => Promise<CrashTarget>,
  mode: ChildMode,
  keys: number,
  valueBytes: number,
  kills: number,
  skip?: () => void,
): Promise<void> {
  const target = await make();
  try {
    const seed = await target.open();
    await seed.open();
    if (mode === 'snapshot' && !seed.capabilities.snapshot) {
      await seed.close();
      skip?.();
      return;
    }
    await seed.commit(generationOps(0, keys, valueBytes), generationMeta(0));
    await seed.close();

    const log: string[] = [];
    let gen = 0;
    const runOnce = async (kill: KillPlan): Promise<ChildRun> => {
      const run = await runChild(target, mode, gen + 1, keys, valueBytes, kill);
      const leftovers = target.inspect === undefined ? '' : `, left ${await target.inspect()}`;
      const found = await expectOneGeneration(target, [gen, gen + 1], keys, valueBytes);
      log.push(`${run.killedAfter}${leftovers} → ${found === gen ? 'old' : 'new'} (gen ${found})`);
      gen = found;
      return run;
    };

    // Calibration: everything finishes; T spreads the later kills over the whole commit and
    // whatever follows it before close() resolves.
    const calibration = await runOnce({ at: 'closed' });
    expect(gen, `an uninterrupted ${mode} must be all there`).toBe(1);
    const spanMs = Math.max(1, calibration.closedMs ?? 1);
    await runOnce({ at: 'committed' });
    expect(gen, `a resolved ${mode} must survive SIGKILL`).toBe(2);
    const delay = (slot: number, slots: number, ms: number): number =>
      Math.floor(((slot + Math.random()) / slots) * ms);
    // In snapshot mode the second half of the kills aims at the forming: over twice the time it
    // took in the calibration run, counted from the "forming" line.
    const formingMs = Math.min(calibration.formingMs ?? spanMs, spanMs);
    const formMs = Math.max(2, 2 * ((calibration.commitMs ?? spanMs) - formingMs));
    const spread = mode === 'snapshot' ? Math.ceil(kills / 2) : kills;
    for (let k = 0; k < kills; k++) {
      await runOnce(
        k < spread
          ? { delayMs: delay(k, spread, spanMs), from: 'committing' }
          : { delayMs: delay(k - spread, kills - spread, formMs), from: 'forming' },
      );
    }
    const forming = mode === 'snapshot' ? `forming from ${formingMs} ms, ` : '';
    console.log(
      `${name}: SIGKILL runs in ${mode} mode (uninterrupted: ${forming}committed ${calibration.commitMs} ms, closed ${spanMs} ms after committing)\n  ${log.join('\n  ')}`,
    );
  } finally {
    await target.cleanup();
  }
}

type KillPlan =
  | { readonly at: 'committed' | 'closed' }
  | { readonly delayMs: number; readonly from: 'committing' | 'forming' };

interface ChildRun {
  /** "killed 3 ms (planned 2) after committing", "killed at committed", … */
  readonly killedAfter: string;
  /** Time from "committing" to "forming" (snapshot mode), when the child got that far. */
  readonly formingMs: number | undefined;
  /** Time from "committing" to "committed", when the child got that far. */
  readonly commitMs: number | undefined;
  /** Time from "committing" to "closed", when the child got that far. */
  readonly closedMs: number | undefined;
}

/** Starts the child, kills it with SIGKILL as planned, and resolves once it is dead. */
async function runChild(
  target: CrashTarget,
  mode: ChildMode,
  gen: number,
  keys: number,
  valueBytes: number,
  kill: KillPlan,
): Promise<ChildRun> {
  await target.settle?.before();
  const child = spawn(
    process.execPath,
    [
      CHILD,
      target.adapter,
      JSON.stringify(target.options),
      String(gen),
      String(keys),
      String(valueBytes),
      mode,
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  const pid = child.pid;
  if (pid === undefined) throw new Error('could not start the commit child');
  let committingAt = 0;
  let formingMs: number | undefined;
  let commitMs: number | undefined;
  let closedMs: number | undefined;
  let killedAfter = '';
  const killNow = (): void => {
    const phase =
      mode === 'commit' || commitMs !== undefined
        ? ''
        : formingMs === undefined
          ? ', writing areas'
          : ', forming';
    killedAfter =
      'delayMs' in kill
        ? `killed ${Math.round(performance.now() - committingAt)} ms after committing (planned ${kill.delayMs} ms after ${kill.from})${phase}`
        : `killed at ${kill.at}`;
    // A child that died by itself is reported below, from its exit; do not kill a reused pid.
    if (child.exitCode === null && child.signalCode === null) process.kill(pid, 'SIGKILL');
  };
  let timer: NodeJS.Timeout | undefined;
  const lines = createInterface({ input: child.stdout });
  lines.on('line', (line) => {
    if (line === 'committing') {
      committingAt = performance.now();
      // The random delay is the point of the test; the "committing" line is the event it counts from.
      if ('delayMs' in kill && kill.from === 'committing') timer = setTimeout(killNow, kill.delayMs);
    } else if (line === 'forming') {
      formingMs = Math.round(performance.now() - committingAt);
      if ('delayMs' in kill && kill.from === 'forming') timer = setTimeout(killNow, kill.delayMs);
    } else if (line === 'committed') {
      commitMs = Math.round(performance.now() - committingAt);
      if (!('delayMs' in kill) && kill.at === 'committed') killNow();
    } else if (line === 'closed') {
      closedMs = Math.round(performance.now() - committingAt);
      if (!('delayMs' in kill) && kill.at === 'closed') killNow();
    }
  });
  const [code, signal] = await exited;
  clearTimeout(timer);
  await target.settle?.after();
  lines.close();
  child.stdin.destroy();
  if (signal !== 'SIGKILL') {
    throw new Error(
      `the commit child exited by itself (code ${code}, signal ${signal}) instead of being killed`,
    );
  }
  return { killedAfter, formingMs, commitMs, closedMs };
}

/** Reopens the store and asserts that every key and the meta are of one of `gens`; returns it. */
async function expectOneGeneration(
  target: CrashTarget,
  gens: readonly number[],
  keys: number,
  valueBytes: number,
): Promise<number> {
  const a = await target.open();
  await a.open();
  try {
    const meta = await a.readMeta();
    const gen = Number(/^gen:(\d+)$/.exec(meta === undefined ? '' : Buffer.from(meta).toString('utf8'))?.[1]);
    expect(gens, `meta names a generation it should not: ${String(meta && Buffer.from(meta))}`).toContain(
      gen,
    );

    const listed = await a.keys();
    expect(listed.length, 'number of keys after the kill').toBe(keys);
    const counts = new Map<string, number>();
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < keys) {
        const key = `crash/${next++}`;
        const got = await a.get(key);
        const which =
          gens.find(
            (g) => got !== undefined && Buffer.from(generationValue(g, key, valueBytes)).equals(got),
          ) ?? 'torn or missing';
        counts.set(String(which), (counts.get(String(which)) ?? 0) + 1);
      }
    };
    await Promise.all(Array.from({ length: 64 }, worker));
    expect(Object.fromEntries(counts), `every key must be of generation ${gen}, as the meta says`).toEqual({
      [String(gen)]: keys,
    });
    return gen;
  } finally {
    await a.close();
  }
}

function generationOps(gen: number, keys: number, valueBytes: number): WriteOp[] {
  return Array.from({ length: keys }, (_, i) => {
    const key = `crash/${i}`;
    return { op: 'put', key, value: generationValue(gen, key, valueBytes) };
  });
}

function generationMeta(gen: number): Uint8Array {
  return new TextEncoder().encode(`gen:${gen}`);
}

/** Must produce the bytes of generationValue() in test/helpers/adapter-commit-child.mjs. */
function generationValue(gen: number, key: string, size: number): Uint8Array {
  const out = Buffer.alloc(size, 97 + (gen % 26));
  out.write(`${gen}|${key}|`, 0, 'utf8');
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}
