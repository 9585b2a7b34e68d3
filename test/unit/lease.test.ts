/**
 * The lease timing on a fake clock (issue 11, "Tests that let real bugs through"): vitest's
 * fake timers drive `setTimeout` and `performance.now()` (the monotonic clock `now()` of
 * src/failover/lease.ts), and a fake `LeaseStore` answers reads and compare-and-sets when the
 * test says so. Each test steps the clock 1 ms at a time and checks the rule at every step:
 *
 * - a primary never counts its lease valid at or after `sent + LEASE_SAFETY × TTL`, where
 *   `sent` is when it sent its last successful claim or renewal (not when the reply came);
 * - a renewal that meets another node's write demotes at once;
 * - a standby never claims a held lease before it has seen the same revision for a full TTL.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FencedError } from '../../src/errors.js';
import { LeaseKeeper, claimWhenVacant, now } from '../../src/failover/lease.js';
import {
  LeaseConflict,
  LeaseStore,
  type LeaseRead,
  type LeaseValue,
} from '../../src/transport/lease-store.js';

const TTL = 1000;

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'performance'] });
});
afterEach(() => {
  vi.useRealTimers();
});

/** One compare-and-set the fake store received, answered when the test decides. */
interface Write {
  readonly value: LeaseValue;
  readonly revision: number;
  readonly at: number;
  resolve(revision: number): void;
  reject(err: unknown): void;
}

/** A `LeaseStore` whose reads return `current` and whose writes wait for the test. */
class FakeStore {
  current: LeaseRead = { value: undefined, revision: 0 };
  readonly writes: Write[] = [];
  reads = 0;
  /** When set, writes are answered at once with this policy. */
  auto: ((w: Write) => void) | undefined;

  read(): Promise<LeaseRead> {
    this.reads++;
    return Promise.resolve(this.current);
  }

  write(value: LeaseValue, revision: number): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const w: Write = { value, revision, at: now(), resolve, reject };
      this.writes.push(w);
      this.auto?.(w);
    });
  }

  /** The real `writeOrAdopt` (a lost reply read back), over this store's `write` and `read`. */
  writeOrAdopt(value: LeaseValue, revision: number): Promise<number> {
    return LeaseStore.prototype.writeOrAdopt.call(this.asStore(), value, revision);
  }

  release(): Promise<void> {
    return Promise.resolve();
  }

  asStore(): LeaseStore {
    return this as unknown as LeaseStore;
  }
}

describe('LeaseKeeper', () => {
  it('never counts the lease valid at or after sent + 0.75 TTL when renewals hang', async () => {
    const store = new FakeStore();
    const lost: FencedError[] = [];
    const sentAt = now();
    const keeper = new LeaseKeeper(
      store.asStore(),
      { holder: 'a', epoch: 1, revision: 1, sentAt },
      TTL,
      (e) => lost.push(e),
    );
    for (let t = 0; t < 2 * TTL; t++) {
      const valid = keeper.isValid();
      if (now() >= sentAt + 0.75 * TTL) expect(valid, `valid at +${now() - sentAt} ms`).toBe(false);
      else expect(valid).toBe(true);
      await vi.advanceTimersByTimeAsync(1);
    }
    // The keeper did try to renew (at TTL/4; that renewal hangs), and its own timer reported
    // the loss on time.
    expect(store.writes.length).toBeGreaterThanOrEqual(1);
    expect(lost).toHaveLength(1);
    expect(lost[0]).toBeInstanceOf(FencedError);
    expect(keeper.remainingMs()).toBeLessThan(0);
    await keeper.stop(false);
  });

  it('reports the loss by its own timer at sent + 0.75 TTL, with nobody asking', async () => {
    const store = new FakeStore();
    const lost: number[] = [];
    // The claim was sent 100 ms before the keeper starts (the takeover's catch-up and fence):
    // the deadline falls between two renewal ticks.
    await vi.advanceTimersByTimeAsync(1000);
    const sentAt = now() - 100;
    const keeper = new LeaseKeeper(store.asStore(), { holder: 'a', epoch: 1, revision: 1, sentAt }, TTL, () =>
      lost.push(now()),
    );
    await vi.advanceTimersByTimeAsync(0.75 * TTL - 100 - 1);
    expect(lost).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(lost).toEqual([sentAt + 0.75 * TTL]);
    await keeper.stop(false);
  });

  it('counts from when a renewal was sent, not from when its reply came', async () => {
    const store = new FakeStore();
    const lost: FencedError[] = [];
    const keeper = new LeaseKeeper(
      store.asStore(),
      { holder: 'a', epoch: 1, revision: 1, sentAt: now() },
      TTL,
      (e) => lost.push(e),
    );
    // Each renewal is answered 200 ms after it was sent; the third and later ones never are.
    let lastGoodSent = 0;
    let answered = 0;
    for (let t = 0; t < 3 * TTL; t++) {
      for (const w of store.writes) {
        if (answered < 2 && w.at + 200 === now() && (w as { done?: boolean }).done !== true) {
          (w as { done?: boolean }).done = true;
          answered++;
          lastGoodSent = w.at;
          w.resolve(w.revision + 1);
        }
      }
      await vi.advanceTimersByTimeAsync(0);
      const valid = keeper.isValid();
      if (now() >= lastGoodSent + 0.75 * TTL)
        expect(valid, `valid at +${now() - lastGoodSent} ms after the send`).toBe(false);
      await vi.advanceTimersByTimeAsync(1);
    }
    expect(answered).toBe(2);
    expect(lastGoodSent).toBeGreaterThan(0);
    expect(lost).toHaveLength(1);
    await keeper.stop(false);
  });

  it('demotes at once when a renewal meets another node’s write', async () => {
    const store = new FakeStore();
    const lost: { err: FencedError; at: number }[] = [];
    const keeper = new LeaseKeeper(
      store.asStore(),
      { holder: 'a', epoch: 1, revision: 1, sentAt: now() },
      TTL,
      (err) => lost.push({ err, at: now() }),
    );
    // Node b claimed: the key holds b's record at a later revision.
    store.current = { value: { holder: 'b', epoch: 2 }, revision: 2 };
    store.auto = (w) => w.reject(new LeaseConflict('lease changed under revision 1'));
    await vi.advanceTimersByTimeAsync(TTL / 4);
    expect(store.writes).toHaveLength(1);
    // No time passes between the refused renewal and the demotion: valid until then, lost after.
    expect(lost).toHaveLength(1);
    expect(lost[0]!.at).toBe(store.writes[0]!.at);
    expect(lost[0]!.err.message).toMatch(/another node took the lease/);
    expect(keeper.isValid()).toBe(false);
    expect(keeper.lostError).toBe(lost[0]!.err);
    // And it does not renew again.
    await vi.advanceTimersByTimeAsync(TTL);
    expect(store.writes).toHaveLength(1);
    await keeper.stop(false);
  });
});

describe('claimWhenVacant', () => {
  function claim(store: FakeStore, signal: AbortSignal, knownEpoch = 0) {
    const claimed: { at: number; epoch: number }[] = [];
    const p = claimWhenVacant({
      store: store.asStore(),
      holder: 'b',
      ttlMs: TTL,
      knownEpoch: () => knownEpoch,
      signal,
    }).then((c) => {
      claimed.push({ at: now(), epoch: c.epoch });
      return c;
    });
    p.catch(() => undefined);
    return { p, claimed };
  }

  it('never claims a held lease before it saw the same revision for a full TTL', async () => {
    const store = new FakeStore();
    store.current = { value: { holder: 'a', epoch: 3 }, revision: 7 };
    store.auto = (w) => w.resolve(w.revision + 1);
    const stop = new AbortController();
    const start = now();
    // The holder renews twice, then dies: the standby notes when it first sees each revision.
    let seenAt = start;
    let seenRevision = 7;
    const { claimed } = claim(store, stop.signal);
    for (let t = 0; t < 4 * TTL && claimed.length === 0; t++) {
      if (now() === start + 300) store.current = { value: { holder: 'a', epoch: 3 }, revision: 8 };
      if (now() === start + 900) store.current = { value: { holder: 'a', epoch: 3 }, revision: 9 };
      const reads = store.reads;
      await vi.advanceTimersByTimeAsync(1);
      if (store.reads > reads && store.current.revision !== seenRevision) {
        seenRevision = store.current.revision;
        seenAt = now();
      }
      // Before a full TTL since the standby saw the last revision: no write may have been sent.
      if (now() < seenAt + TTL) expect(store.writes, `claim at +${now() - seenAt} ms`).toHaveLength(0);
    }
    expect(claimed).toHaveLength(1);
    expect(store.writes).toHaveLength(1);
    const w = store.writes[0]!;
    expect(w.revision).toBe(9);
    expect(w.at - seenAt).toBeGreaterThanOrEqual(TTL);
    // And not much later either: within one poll interval (TTL/10, at most 250 ms).
    expect(w.at - seenAt).toBeLessThanOrEqual(TTL + TTL / 10 + 1);
    expect(w.value).toEqual({ holder: 'b', epoch: 4 });
    stop.abort();
  });

  it('claims an absent or released lease at once, above every epoch it knows', async () => {
    const store = new FakeStore();
    store.auto = (w) => w.resolve(w.revision + 1);
    store.current = { value: { holder: null, epoch: 5 }, revision: 12 };
    const stop = new AbortController();
    const start = now();
    const { p } = claim(store, stop.signal, 9);
    await vi.advanceTimersByTimeAsync(0);
    const c = await p;
    expect(c.epoch).toBe(10);
    expect(store.writes[0]!.at).toBe(start);
    expect(store.writes[0]!.revision).toBe(12);
    stop.abort();
  });

  it('after losing the race, waits a full TTL on the winner', async () => {
    const store = new FakeStore();
    store.current = { value: undefined, revision: 0 };
    const stop = new AbortController();
    // The first claim loses: another node wrote revision 1 meanwhile.
    store.auto = (w) => {
      if (store.writes.length === 1) {
        store.current = { value: { holder: 'c', epoch: 1 }, revision: 1 };
        w.reject(new LeaseConflict('lease changed'));
      } else w.resolve(w.revision + 1);
    };
    const lostAt = now();
    const { claimed } = claim(store, stop.signal);
    for (let t = 0; t < 3 * TTL && claimed.length === 0; t++) {
      await vi.advanceTimersByTimeAsync(1);
      if (now() < lostAt + TTL) expect(store.writes).toHaveLength(1);
    }
    expect(claimed).toHaveLength(1);
    expect(store.writes[1]!.at - lostAt).toBeGreaterThanOrEqual(TTL);
    stop.abort();
  });
});
