/**
 * Issue 11, defect 10a: how many relays a node needs at start, per policy: enough to acknowledge
 * checkpoints (need) and to read a read quorum at takeover (N − need + 1; FEC: N − tolerate).
 */
import { describe, expect, it } from 'vitest';
import { RelaySet, isPending, pendingLink, resolveFec } from '../../src/transport/relays.js';
import { ReplicationError } from '../../src/errors.js';

describe('relays needed at start', () => {
  it('is the larger of the ack count and the read quorum', () => {
    const cases: [Parameters<typeof RelaySet.relaysNeededAtStart>[0], number, number][] = [
      ['quorum', 3, 2],
      ['quorum', 5, 3],
      ['quorum', 1, 1],
      ['all', 3, 3],
      [{ count: 1 }, 3, 3], // one ack, so a takeover must read all three
      [{ count: 2 }, 4, 3], // read quorum 3
      [{ count: 3 }, 4, 3],
    ];
    for (const [ack, n, want] of cases) {
      expect([ack, n, RelaySet.relaysNeededAtStart(ack, n)]).toEqual([ack, n, want]);
    }
    const fec = resolveFec({ scheme: { data: 4, parity: 2 }, tolerate: 1 }, 6);
    expect(RelaySet.relaysNeededAtStart('all', 6, fec)).toBe(5);
  });

  it('a relay down at start has a stand-in that is never connected and says why when used', () => {
    const l = pendingLink('nats://10.0.0.9:4222');
    expect(isPending(l)).toBe(true);
    expect(l.connected()).toBe(false);
    expect(l.servers).toBe('nats://10.0.0.9:4222');
    expect(() => l.js).toThrow(ReplicationError);
    expect(() => l.nc).toThrow(/relay nats:\/\/10\.0\.0\.9:4222 is not connected yet/);
  });
});
