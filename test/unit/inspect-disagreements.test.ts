/** `disagreements()` of `restartpoint inspect`: which relays count as missing a fence or seal. */
import { describe, expect, it } from 'vitest';
import { disagreements, type InspectFrame, type InspectRelay } from '../../src/cli/commands/inspect.js';

const frame = (epoch: number, seq: number, kind: InspectFrame['kind'], checkpoint = seq): InspectFrame => ({
  streamSeq: seq,
  streamSeqs: [seq],
  bytes: 50,
  epoch,
  seq,
  kind,
  checkpoint,
  parts: 1,
  complete: true,
  bodyBytes: 10,
});

const relay = (frames: InspectFrame[], o: Partial<InspectRelay> = {}): InspectRelay => ({
  servers: 'nats://x',
  reachable: true,
  stream: { messages: frames.length, bytes: 0, firstSeq: 1, lastSeq: frames.length },
  from: 1,
  read: frames.length,
  lastRead: frames.length,
  truncated: false,
  frames,
  rejected: [],
  counts: {},
  ...o,
});

describe('inspect disagreements', () => {
  const full = [frame(1, 1, 'fence', 0), frame(1, 2, 'writes'), frame(1, 3, 'seal'), frame(2, 1, 'fence', 3)];

  it('names a fence or seal one fully read relay misses', () => {
    const d = disagreements([relay(full), relay([full[0]!, full[1]!, full[3]!])]);
    expect(d).toEqual([{ kind: 'seal', epoch: 1, seq: 3, checkpoint: 3, presentOn: [0], missingOn: [1] }]);
  });

  it('does not blame a relay for what lies outside its window', () => {
    // Truncated after frame 1/2: the seal 1/3 and fence 2/1 are past what it read.
    const truncated = relay([full[0]!, full[1]!], { truncated: true });
    expect(disagreements([relay(full), truncated])).toEqual([]);
    // Read from a later sequence, starting at the fence of epoch 2: the seal 1/3 came before.
    const late = relay([full[3]!], { from: 4 });
    expect(disagreements([relay(full), late])).toEqual([]);
    // ... but a frame inside its window is still missing.
    const lateGap = relay([full[1]!, full[3]!], { from: 2 });
    expect(disagreements([relay(full), lateGap]).map((x) => [x.kind, x.epoch, x.seq])).toEqual([
      ['seal', 1, 3],
    ]);
  });

  it('leaves out unreachable relays, relays without the stream, and frames of unknown kind', () => {
    const down = relay([], { reachable: false, stream: null, error: 'unreachable: connection refused' });
    const none = relay([], { stream: null, error: 'no stream' });
    expect(disagreements([relay(full), down, none])).toEqual([]);
    const unknown = [frame(1, 1, null), ...full.slice(1)];
    expect(disagreements([relay(unknown), relay(full.slice(1))])).toEqual([]);
  });
});
