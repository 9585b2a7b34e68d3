/**
 * `StoreRebuilder` (src/standby/rebuild.ts), the decision part of rebuilding a lost store in
 * place: only `StoreLostError` is rebuilt, the adapter's `reclaim()` runs first (a foreign store
 * it refuses is not rebuilt), and a store that keeps getting lost is given up after 3 rebuilds
 * within the window. The rebuild itself runs against real stores in
 * test/integration/store-rebuild.test.ts and the store-loss drill.
 */
import { describe, expect, it } from 'vitest';
import { StorageError, StoreLostError } from '../../src/errors.js';
import { StoreRebuilder } from '../../src/standby/rebuild.js';
import type { StorageAdapter } from '../../src/storage/adapter.js';

function setup(reclaim?: () => Promise<void>) {
  const calls: string[] = [];
  const reasons: string[] = [];
  const storage = {
    kind: 'fake',
    reclaim: reclaim ?? (async () => void calls.push('reclaim')),
  } as unknown as StorageAdapter;
  const r = new StoreRebuilder({
    storage,
    log: (e) => calls.push(String(e.msg)),
    transition: (reason) => reasons.push(reason),
  });
  return { r, calls, reasons };
}

describe('StoreRebuilder', () => {
  it('rebuilds on StoreLostError only, reclaiming the store first and reporting the transition', async () => {
    const { r, calls, reasons } = setup();
    expect(await r.recover(new StorageError('down', { retryable: true }))).toBe(false);
    expect(await r.recover(new Error('other'))).toBe(false);
    expect(calls).toEqual([]);
    expect(await r.recover(new StoreLostError('store x is lost: wiped'))).toBe(true);
    expect(calls).toEqual(['reclaim', 'store rebuild']);
    expect(reasons).toEqual(['rebuilding its fake store from the relays: store x is lost: wiped']);
    expect(r.rebuilds).toBe(1);
  });

  it('gives up after 3 rebuilds within the window', async () => {
    const { r, calls } = setup();
    for (let i = 0; i < 3; i++) expect(await r.recover(new StoreLostError('lost'))).toBe(true);
    expect(await r.recover(new StoreLostError('lost'))).toBe(false);
    expect(calls.at(-1)).toBe('store lost again: not rebuilding it any more');
    expect(r.rebuilds).toBe(3);
  });

  it("does not rebuild a store reclaim() refuses (another node's)", async () => {
    const { r, calls } = setup(async () => {
      throw new StoreLostError('it belongs to node "a"');
    });
    expect(await r.recover(new StoreLostError('lost'))).toBe(false);
    expect(calls).toEqual(['store lost and cannot be reclaimed for a rebuild']);
    expect(r.rebuilds).toBe(0);
  });
});
