import { describe, expect, it } from 'vitest';
import { LagBudget, defaultLagBudget, type Lag, type StandbyPosition } from '../../src/primary/lag-budget.js';

/** A budget over a fake clock and a presence list the test moves. */
function setup(budget: Partial<ReturnType<typeof defaultLagBudget>>) {
  let now = 1_000_000;
  let standbys: StandbyPosition[] = [];
  const overruns: { lag: Lag; waited: number }[] = [];
  const b = new LagBudget({
    budget: { ...defaultLagBudget(1000), ...budget },
    read: () => Promise.resolve(standbys),
    onOverrun: (lag, waited) => overruns.push({ lag, waited }),
    now: () => now,
  });
  return {
    b,
    overruns,
    tick: (ms: number) => (now += ms),
    at: () => now,
    set: (s: StandbyPosition[]) => (standbys = s),
  };
}

describe('lag budget', () => {
  it('measures the slowest standby in checkpoints, ms (as of its record) and bytes', async () => {
    const t = setup({});
    for (let cp = 1; cp <= 10; cp++) {
      t.b.acknowledged(cp, 100 * cp);
      t.tick(50);
    }
    // Checkpoint 4 was acknowledged 150 ms after the start; 7 at 300 ms.
    t.set([
      { nodeId: 'fast', checkpoint: 10, updatedAt: t.at() },
      { nodeId: 'slow', checkpoint: 3, updatedAt: t.at() },
    ]);
    await t.b.wait(() => false);
    const lag = t.b.slowest()!;
    expect(lag.nodeId).toBe('slow');
    expect(lag.checkpoints).toBe(7);
    expect(lag.ms).toBe(500 - 150);
    expect(lag.bytes).toBe([4, 5, 6, 7, 8, 9, 10].reduce((a, c) => a + 100 * c, 0));
    expect(t.overruns).toEqual([]);
  });

  it('waits while a standby is over budget, resolves when it catches up, and reports an overrun after waitMs', async () => {
    const t = setup({ checkpoints: 2, waitMs: 10_000 });
    for (let cp = 1; cp <= 10; cp++) t.b.acknowledged(cp, 1);
    t.set([{ nodeId: 'b', checkpoint: 5, updatedAt: t.at() }]);
    let done = false;
    const w = t.b.wait(() => false).then(() => (done = true));
    await new Promise((r) => setTimeout(r, 300));
    expect(done).toBe(false);
    t.tick(1000);
    t.set([{ nodeId: 'b', checkpoint: 9, updatedAt: t.at() }]);
    await w;
    expect(t.overruns).toEqual([]);

    const u = setup({ checkpoints: 2, waitMs: 500 });
    for (let cp = 1; cp <= 10; cp++) u.b.acknowledged(cp, 1);
    u.set([{ nodeId: 'b', checkpoint: 1, updatedAt: u.at() }]);
    const waiting = u.b.wait(() => false);
    // Time passes (the fake clock) while the standby stays behind.
    const timer = setInterval(() => u.tick(100), 5);
    await waiting;
    clearInterval(timer);
    expect(u.overruns).toHaveLength(1);
    expect(u.overruns[0]!.lag).toMatchObject({ nodeId: 'b', checkpoints: 9 });
    expect(u.overruns[0]!.waited).toBeGreaterThanOrEqual(500);
  });

  it('does not wait without a live standby, or when stopped', async () => {
    const t = setup({ checkpoints: 1, waitMs: 60_000 });
    for (let cp = 1; cp <= 5; cp++) t.b.acknowledged(cp, 1);
    await t.b.wait(() => false);
    t.set([{ nodeId: 'b', checkpoint: 0, updatedAt: t.at() }]);
    await t.b.wait(() => true);
    expect(t.overruns).toEqual([]);
  });
});
