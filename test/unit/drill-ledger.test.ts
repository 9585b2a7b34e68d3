/**
 * The drills' ledger (src/drill/ledger.ts) and takeover record, fed with sample-app events by
 * hand: pure bookkeeping, no process is started.
 */
import { describe, expect, it } from 'vitest';
import { AppProcess, type AppEvent } from '../../src/drill/app-process.js';
import { DrillLedger, takeoverRecord } from '../../src/drill/ledger.js';

const ev = (ev: string, t: number, fields: Record<string, unknown> = {}): AppEvent => ({ ev, t, ...fields });

describe('DrillLedger', () => {
  it('keys declarations by epoch:checkpoint from the primary event on, and keeps the acks', () => {
    const l = new DrillLedger();
    const a = new AppProcess('a');
    l.record(a, ev('cp-begin', 1, { digest: 'x', mirrorDigest: 'y', wt: 1 })); // not primary yet
    l.record(a, ev('primary', 2, { epoch: 3, resumed: 7 }));
    l.record(a, ev('cp-begin', 3, { digest: 'd8', mirrorDigest: 'm8', wt: 20 }));
    l.record(a, ev('step', 4, { wt: 25 }));
    l.record(a, ev('cp-begin', 5, { digest: 'd9', mirrorDigest: 'm9', wt: 40 }));
    l.record(a, ev('acked', 6, { epoch: 3, checkpoint: 8, digest: 'd8' }));
    l.record(a, ev('acked', 7, { epoch: 3, checkpoint: 9, digest: 'd9' }));
    l.record(a, ev('acked', 8, { epoch: 3, checkpoint: 8, digest: 'd8' }));
    expect(l.declared(3, 7)).toBeUndefined();
    expect(l.declared(3, 8)).toEqual({ digest: 'd8', mirrorDigest: 'm8', wt: 20 });
    expect(l.declared(3, 9)).toEqual({ digest: 'd9', mirrorDigest: 'm9', wt: 40 });
    expect(l.role(a)).toEqual({ epoch: 3, nextCp: 10, wt: 40 });
    expect(l.lastAcked).toBe(9);
    expect(l.ackedBy(a)).toBe(9);
    expect(l.ackAt.get(8)).toBe(6); // the first ack of 8, not the repeat
    expect(l.acks.map((x) => x.checkpoint)).toEqual([8, 9, 8]);
    expect(l.acks[0]).toEqual({ node: 'a', epoch: 3, checkpoint: 8, t: 6 });
    expect(l.expectedFor(ev('primary', 9, { epoch: 4, resumed: 9, resumedEpoch: 3 }))).toEqual(
      l.declared(3, 9),
    );
    expect(l.expectedFor(ev('primary', 9, { epoch: 4, resumed: 0, resumedEpoch: 3 }))).toBeUndefined();
    // A standby has no role: what it prints is not a declaration.
    l.record(a, ev('standby', 10));
    expect(l.role(a)).toBeUndefined();
    l.record(a, ev('cp-begin', 11, { digest: 'z', mirrorDigest: 'z', wt: 1 }));
    expect(l.declared(3, 10)).toBeUndefined();
  });

  it('keeps one role per process, so a node id restarted as a new process starts afresh', () => {
    const l = new DrillLedger();
    const old = new AppProcess('a');
    const again = new AppProcess('a');
    l.record(old, ev('primary', 1, { epoch: 1, resumed: 0 }));
    l.record(again, ev('primary', 2, { epoch: 2, resumed: 4 }));
    l.record(old, ev('cp-begin', 3, { digest: 'o1', mirrorDigest: 'm', wt: 1 }));
    l.record(again, ev('cp-begin', 4, { digest: 'n5', mirrorDigest: 'm', wt: 1 }));
    expect(l.declared(1, 1)?.digest).toBe('o1');
    expect(l.declared(2, 5)?.digest).toBe('n5');
    l.forget(old);
    expect(l.role(old)).toBeUndefined();
    expect(l.role(again)?.epoch).toBe(2);
    l.record(old, ev('acked', 5, { epoch: 1, checkpoint: 1 }));
    expect(l.ackedBy(old)).toBe(1);
    expect(l.ackedBy(again)).toBe(0);
  });

  it('finds the checkpoints a takeover lost, and a declaration by the epoch its ack names', () => {
    const l = new DrillLedger();
    const a = new AppProcess('a');
    const b = new AppProcess('b');
    l.record(a, ev('primary', 1, { epoch: 1, resumed: 4 }));
    l.record(a, ev('cp-begin', 2, { digest: 'a5', mirrorDigest: 'ma5', wt: 1 }));
    l.record(a, ev('cp-begin', 3, { digest: 'a6', mirrorDigest: 'ma6', wt: 2 }));
    l.record(b, ev('primary', 4, { epoch: 2, resumed: 4 }));
    l.record(b, ev('cp-begin', 5, { digest: 'b5', mirrorDigest: 'mb5', wt: 1 }));
    for (const cp of [5, 6]) l.record(a, ev('acked', 6, { epoch: 1, checkpoint: cp, digest: `a${cp}` }));
    l.record(b, ev('acked', 7, { epoch: 2, checkpoint: 5, digest: 'b5' }));
    expect([...l.lostAfter(1, 4)].sort()).toEqual([5, 6]);
    expect([...l.lostAfter(1, 5)]).toEqual([6]);
    expect([...l.lostAfter(2, 6)]).toEqual([]);
    // Checkpoint 5 was declared by epochs 1 and 2; its latest ack named b's image.
    expect(l.declaredAnyEpoch(5)?.digest).toBe('b5');
    expect(l.declaredAnyEpoch(6)?.digest).toBe('a6');
    expect(l.declaredAnyEpoch(7)).toBeUndefined();
  });
});

describe('takeoverRecord', () => {
  const took = ev('primary', 1_500, {
    epoch: 5,
    resumed: 12,
    digest: 'img',
    storeDigest: 'st',
    takeover: { detectMs: 10.4, catchUpMs: 2.6, fenceMs: 3.5, rollbackMs: 1, restoreMs: 7.49 },
  });
  const base = {
    kill: 2,
    point: 'after-checkpoint' as const,
    killed: 'a',
    newPrimary: 'b',
    took,
    served: ev('acked', 1_800),
    faultAt: 1_000,
    lastAcked: 12,
    expected: { digest: 'img', mirrorDigest: 'st', wt: 3 },
    checkpointsLost: 0,
    writesDiscarded: 4,
  };

  it('builds the --json record: times from the fault, SDK figures rounded, digests compared', () => {
    expect(takeoverRecord(base)).toEqual({
      kill: 2,
      point: 'after-checkpoint',
      killed: 'a',
      newPrimary: 'b',
      takeoverMs: 500,
      lastAcked: 12,
      resumed: 12,
      epoch: 5,
      imageMatches: true,
      storeMatches: true,
      detectMs: 10,
      catchUpMs: 3,
      fenceMs: 4,
      rollbackMs: 1,
      restoreMs: 7,
      resumeMs: 300,
      killToServingMs: 800,
      checkpointsLost: 0,
      writesDiscarded: 4,
    });
  });

  it('leaves the app verification time out of the serving times, never below 0', () => {
    const r = takeoverRecord({ ...base, verifyMs: 100 });
    expect([r.resumeMs, r.killToServingMs]).toEqual([200, 700]);
    expect(takeoverRecord({ ...base, verifyMs: 5_000 }).resumeMs).toBe(0);
  });

  it('says which of image and store differ, and that nothing matches without a declaration', () => {
    const other = takeoverRecord({ ...base, expected: { digest: 'img', mirrorDigest: 'other', wt: 0 } });
    expect([other.imageMatches, other.storeMatches]).toEqual([true, false]);
    const none = takeoverRecord({ ...base, expected: undefined });
    expect([none.imageMatches, none.storeMatches]).toEqual([false, false]);
  });
});
