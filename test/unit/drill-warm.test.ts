/**
 * The drill's warm standby (src/drill/checks.ts) and the nodes' lag budget
 * (src/primary/lag-budget.ts) agree: the drill never asks a standby to be closer than the budget
 * keeps it, or each kill at a short lease waits 10 s for a standby that is where the budget wants.
 */
import { describe, expect, it } from 'vitest';
import { WARM_LAG_MS, warmLagMs } from '../../src/drill/checks.js';
import { defaultLagBudget } from '../../src/primary/lag-budget.js';

describe('warmLagMs', () => {
  it('is never stricter than the default lag budget, and at least WARM_LAG_MS', () => {
    for (const ttl of [100, 250, 300, 500, 1_000, 3_000, 10_000]) {
      expect(warmLagMs(ttl)).toBeGreaterThanOrEqual(defaultLagBudget(ttl).ms);
      expect(warmLagMs(ttl)).toBeGreaterThanOrEqual(WARM_LAG_MS);
    }
    expect(warmLagMs(300)).toBe(300);
    expect(warmLagMs(100)).toBe(WARM_LAG_MS);
  });
});
