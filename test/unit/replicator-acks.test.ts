/**
 * `checkpoint()` resolves only once every frame of the checkpoint (and every frame before it)
 * is acknowledged under the policy, and the lease still holds then (issue 11, "Tests that let
 * real bugs through": a mutant that waited for every ack except the seal's passed the suite).
 *
 * The frame sink here holds back, or fails, the ack of one kind of frame only (the writes, the
 * image or the seal) and acks the others at once.
 */
import { describe, expect, it } from 'vitest';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { FencedError, ReplicationError } from '../../src/errors.js';
import { ImageEncoder } from '../../src/image/chain.js';
import { Replicator, type CheckpointAck } from '../../src/primary/replicator.js';
import { FrameKind, type Frame } from '../../src/protocol/frame.js';

interface Sent {
  readonly frame: Frame;
  resolve(): void;
  reject(err: unknown): void;
}

/** A sink that acks at once, except frames `hold` picks: those wait for the test. */
class Sink {
  readonly sent: Sent[] = [];
  readonly held: Sent[] = [];
  #onSeal: (() => void)[] = [];

  constructor(readonly hold: (f: Frame) => boolean) {}

  publish(frame: Frame): Promise<unknown> {
    return new Promise<void>((resolve, reject) => {
      const s: Sent = { frame, resolve, reject };
      this.sent.push(s);
      if (this.hold(frame)) this.held.push(s);
      else resolve();
      if (frame.kind === FrameKind.Seal) for (const f of this.#onSeal.splice(0)) f();
    });
  }

  ready(): Promise<void> {
    return Promise.resolve();
  }

  /** Resolves once a seal was published: every frame of that checkpoint is out by then. */
  sealOut(): Promise<void> {
    return new Promise((r) => this.#onSeal.push(r));
  }
}

/** Lets every pending callback and promise run (acks that were given, lease checks). */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((r) => setImmediate(r));
}

async function primary(
  hold: (f: Frame) => boolean,
  lease = { valid: true },
): Promise<{ rep: Replicator; sink: Sink }> {
  const store = memoryAdapter();
  await store.open();
  const sink = new Sink(hold);
  const rep = new Replicator({
    epoch: 1,
    firstCheckpoint: 1,
    firstSeq: 2,
    adapter: store,
    publisher: sink,
    images: new ImageEncoder({ compress: false }),
    batchBytes: 1 << 20,
    leaseValid: () => lease.valid,
    fencedError: () => new FencedError('fenced'),
  });
  return { rep, sink };
}

/** Tracks whether a checkpoint settled. */
function track(p: Promise<CheckpointAck>): {
  settled: () => 'pending' | 'resolved' | 'rejected';
  p: Promise<CheckpointAck>;
} {
  let state: 'pending' | 'resolved' | 'rejected' = 'pending';
  p.then(
    () => (state = 'resolved'),
    () => (state = 'rejected'),
  );
  return { settled: () => state, p };
}

const KINDS = [
  ['seal', FrameKind.Seal],
  ['image', FrameKind.Image],
  ['write', FrameKind.Writes],
] as const;

describe('checkpoint() waits for the ack of every frame of the checkpoint', () => {
  for (const [name, kind] of KINDS) {
    it(`does not resolve while only the ${name} frame's ack is outstanding`, async () => {
      const { rep, sink } = await primary((f) => f.kind === kind);
      await rep.write({ op: 'put', key: 'k', value: Buffer.from('v') });
      const out = sink.sealOut();
      const cp = track(rep.checkpoint({ n: 1 }));
      await out;
      await settle();
      // Every other frame was acked; this one was not.
      expect(sink.held.map((s) => s.frame.kind)).toEqual([kind]);
      expect(sink.sent.map((s) => s.frame.kind)).toEqual([FrameKind.Writes, FrameKind.Image, FrameKind.Seal]);
      expect(cp.settled()).toBe('pending');
      sink.held[0]!.resolve();
      await expect(cp.p).resolves.toEqual({ epoch: 1, checkpoint: 1 });
    });

    it(`rejects, retryable, when only the ${name} frame's ack fails`, async () => {
      const { rep, sink } = await primary((f) => f.kind === kind);
      await rep.write({ op: 'put', key: 'k', value: Buffer.from('v') });
      const out = sink.sealOut();
      const cp = track(rep.checkpoint({ n: 1 }));
      await out;
      await settle();
      expect(cp.settled()).toBe('pending');
      sink.held[0]!.reject(new ReplicationError('relay said no'));
      const err = await cp.p.then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ReplicationError);
      expect((err as ReplicationError).retryable).toBe(true);
    });
  }

  it('a later checkpoint waits for a frame of an earlier one, and the failed frame is re-sent', async () => {
    const { rep, sink } = await primary((f) => f.kind === FrameKind.Seal && f.checkpoint === 1);
    const first = track(rep.checkpoint({ n: 1 }));
    await settle();
    sink.held[0]!.reject(new ReplicationError('lost'));
    await expect(first.p).rejects.toBeInstanceOf(ReplicationError);
    // Checkpoint 2: its own frames are acked at once, but checkpoint 1's seal is re-sent (same
    // frame) and held again: checkpoint 2 must wait for it.
    const out = sink.sealOut();
    const second = track(rep.checkpoint({ n: 2 }));
    await out;
    await settle();
    const resent = sink.sent.filter((s) => s.frame.kind === FrameKind.Seal && s.frame.checkpoint === 1);
    expect(resent).toHaveLength(2);
    expect(second.settled()).toBe('pending');
    resent[1]!.resolve();
    await expect(second.p).resolves.toEqual({ epoch: 1, checkpoint: 2 });
  });

  it('rejects with FencedError when the lease ran out while the acks were on their way', async () => {
    const lease = { valid: true };
    const { rep, sink } = await primary((f) => f.kind === FrameKind.Seal, lease);
    const out = sink.sealOut();
    const cp = track(rep.checkpoint({ n: 1 }));
    await out;
    lease.valid = false;
    sink.held[0]!.resolve();
    await expect(cp.p).rejects.toBeInstanceOf(FencedError);
  });
});
