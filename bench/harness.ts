/**
 * The benchmark harness behind `npm run bench`. Every suite measures its subject next to a
 * baseline in the same run and reports named ratios (`"ratios"` in `--json`). Figures are
 * medians of `repeat` runs.
 */

/** One row of the printed table. */
export interface BenchRow {
  readonly name: string;
  readonly value: number;
  readonly unit: string;
  readonly note?: string;
}

/** What a suite returns. */
export interface SuiteResult {
  readonly rows: BenchRow[];
  /** Headline ratios by stable dotted name: add, never rename. */
  readonly ratios: Record<string, number>;
  /** A table for people, printed before the rows in human output (never in `--json`). */
  readonly table?: string;
}

/** A suite: a name prefix (for `--only`) and a run function. */
export interface Suite {
  readonly prefix: string;
  readonly description: string;
  run(ctx: BenchContext): Promise<SuiteResult>;
}

/** Shared settings. */
export interface BenchContext {
  readonly nats: string;
  readonly redisUrl: string;
  readonly postgresUrl: string;
  readonly repeat: number;
  /** The `--only` prefix, if any: suites skip their parts whose names it excludes. */
  readonly only: string | undefined;
  /** Whether a measurement named `name` is wanted under `--only`. */
  wants(name: string): boolean;
  /** Progress on stderr (never stdout: `--json` owns it). */
  progress(line: string): void;
}

/** Median of a list of numbers. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Runs `fn` `n` times and returns the median of what it returns. */
export async function medianOf(n: number, fn: () => Promise<number>): Promise<number> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(await fn());
  return median(out);
}

/**
 * Medians of `n` rounds of several measurements taken in turn: each round runs every one of `fns`
 * once, in an order that rotates from round to round, so a drift of the host's load during the
 * suite reaches all of them alike instead of whichever ran last.
 */
export async function mediansInterleaved<K extends string>(
  n: number,
  fns: Record<K, () => Promise<number>>,
): Promise<Record<K, number>> {
  const keys = Object.keys(fns) as K[];
  const out = Object.fromEntries(keys.map((k) => [k, [] as number[]])) as Record<K, number[]>;
  for (let round = 0; round < n; round++) {
    for (let i = 0; i < keys.length; i++) {
      const k = keys[(i + round) % keys.length]!;
      out[k].push(await fns[k]());
    }
  }
  return Object.fromEntries(keys.map((k) => [k, median(out[k])])) as Record<K, number>;
}

/** Rounds for display and JSON: 3 significant digits. */
export function round(x: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const d = Math.max(0, 2 - Math.floor(Math.log10(Math.abs(x))));
  return Number(x.toFixed(Math.min(d, 6)));
}
