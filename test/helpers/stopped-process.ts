/**
 * Helpers of the zombie tests: a process frozen with SIGSTOP, races of waits on app processes,
 * and a node's running count of stale rejections.
 */
import { readFileSync } from 'node:fs';
import { expect } from 'vitest';
import type { AppProcess } from '../../src/drill/drill.js';

/** The state letter of a process in /proc (`T`: stopped). */
export function procState(pid: number): string {
  return /\) (\S) /.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.[1] ?? '?';
}

/** Resolves once the kernel shows `pid` stopped (after a SIGSTOP). */
export async function stopped(pid: number): Promise<void> {
  for (let i = 0; i < 10_000 && procState(pid) !== 'T'; i++) await new Promise((r) => setImmediate(r));
  expect(procState(pid)).toBe('T');
}

/** The first of several waits; the others may reject later (a timeout, a kill) unobserved. */
export function first<T>(waits: Promise<T>[]): Promise<T> {
  for (const w of waits) w.catch(() => undefined);
  return Promise.race(waits);
}

export type AppEvent = Parameters<Parameters<AppProcess['on']>[0]>[0];

/** The node's running count of frames rejected as `stale` (on its `frame rejected` lines). */
export const staleCount = (e: AppEvent): number =>
  Number((e.rejected as Record<string, number> | undefined)?.stale ?? 0);

/**
 * Waits for `b` or `c` to take over from a primary of epoch `after`: the winner (with its
 * `primary` event, checked for a newer epoch and a store that equals its image's mirror) and the
 * other one.
 */
export async function takeover(
  b: AppProcess,
  c: AppProcess,
  after: number,
): Promise<readonly [{ p: AppProcess; ev: AppEvent }, AppProcess]> {
  const [w, o, ev] = await first([
    b.waitFor((e) => e.ev === 'primary', 'b takes over', 20_000).then((e) => [b, c, e] as const),
    c.waitFor((e) => e.ev === 'primary', 'c takes over', 20_000).then((e) => [c, b, e] as const),
  ]);
  expect(Number(ev.epoch)).toBeGreaterThan(after);
  expect(ev.storeDigest).toBe(ev.mirrorDigest);
  return [{ p: w, ev }, o] as const;
}
