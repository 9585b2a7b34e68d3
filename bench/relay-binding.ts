/**
 * binding.*: what relay binding (issue 11, defect 7b) costs on the checkpoint path in signed
 * copies mode. Each relay's copy of a part gets its own envelope (relay byte under the MAC); the
 * body is hashed once, then one short HMAC per relay. Measured in the same run:
 *
 * - encode of one checkpoint's frames (20 writes of 1 KiB + a 16 KiB image + seal) for 3
 *   relays, relay-bound (`FrameCodec.encode`) against the previous format (one envelope for
 *   all relays, `EnvelopeCodec.seal` once per part);
 * - the p50 latency of a signed checkpoint with 3 relays (ack quorum), on relays started here.
 *
 * Ratios: `binding.encode3_over_shared` (relay-bound encode ÷ shared-envelope encode, CPU only)
 * and `binding.extra_over_checkpoint` (the extra encode time ÷ the p50 checkpoint latency: the
 * share of a checkpoint that binding adds).
 */
import { randomBytes } from 'node:crypto';
import { memoryAdapter } from '../adapters/memory/index.js';
import { TestRelay } from '../src/drill/nats-servers.js';
import { Restartpoint } from '../src/index.js';
import { FrameCodec } from '../src/protocol/codec.js';
import { EnvelopeCodec, parseClusterKey } from '../src/protocol/envelope.js';
import { FrameKind, encodeFrame, type Frame } from '../src/protocol/frame.js';
import { encodeWrites } from '../src/protocol/records.js';
import { median, type BenchContext, type Suite } from './harness.js';

const APP = 'bench-binding';
const KEY = randomBytes(32).toString('hex');
const ROUNDS = 2_000;

function frames(): Frame[] {
  const ops = Array.from({ length: 20 }, (_, i) => ({
    op: 'put' as const,
    key: `k${i}`,
    value: randomBytes(1024),
  }));
  return [
    { kind: FrameKind.Writes, epoch: 1, seq: 2, checkpoint: 1, body: encodeWrites(ops) },
    { kind: FrameKind.Image, epoch: 1, seq: 3, checkpoint: 1, body: randomBytes(16 * 1024) },
    { kind: FrameKind.Seal, epoch: 1, seq: 4, checkpoint: 1, body: randomBytes(12) },
  ];
}

/** Median ms per checkpoint's frames over `ROUNDS`, of `fn`. */
async function perCheckpoint(repeat: number, fn: () => Promise<unknown> | unknown): Promise<number> {
  const out: number[] = [];
  for (let r = 0; r < repeat; r++) {
    const t0 = performance.now();
    for (let i = 0; i < ROUNDS; i++) await fn();
    out.push((performance.now() - t0) / ROUNDS);
  }
  return median(out);
}

async function checkpointP50(ctx: BenchContext, relays: TestRelay[]): Promise<number> {
  const rp = await Restartpoint.start({
    app: `bench-bind-${randomBytes(4).toString('hex')}`,
    nodeId: 'bench',
    nats: { servers: ctx.nats },
    storage: memoryAdapter(),
    relays: relays.map((r) => ({ servers: r.urls })),
    ack: 'quorum',
    clusterKey: KEY,
    initialState: () => ({}),
  });
  const lat: number[] = [];
  const value = randomBytes(1024);
  try {
    for (let i = 0; i < 200; i++) {
      for (let j = 0; j < 20; j++) void rp.store.put(`k${j}`, value);
      const t0 = performance.now();
      await rp.checkpoint({ i, blob: 'x'.repeat(16 * 1024) });
      lat.push(performance.now() - t0);
    }
  } finally {
    await rp.close();
  }
  return median(lat);
}

export const bindingSuite: Suite = {
  prefix: 'binding',
  description: 'relay binding of signed messages: encode cost and share of a checkpoint',
  async run(ctx) {
    const envelope = new EnvelopeCodec({ app: APP, keys: parseClusterKey(KEY) });
    const codec = new FrameCodec({ app: APP, relays: 3, maxPayload: 1 << 20, envelope });
    const fs = frames();
    ctx.progress('binding: encode');
    const bound = await perCheckpoint(ctx.repeat, () => Promise.all(fs.map((f) => codec.encode(f))));
    const shared = await perCheckpoint(ctx.repeat, () => {
      for (const f of fs) for (const p of encodeFrame(APP, f, codec.partBytes)) envelope.seal(p);
    });
    ctx.progress('binding: checkpoint latency, 3 signed relays');
    const relays = [await TestRelay.single(), await TestRelay.single(), await TestRelay.single()];
    let p50: number;
    try {
      const runs: number[] = [];
      for (let r = 0; r < ctx.repeat; r++) runs.push(await checkpointP50(ctx, relays));
      p50 = median(runs);
    } finally {
      await Promise.all(relays.map((r) => r.destroy()));
    }
    const extra = Math.max(0, bound - shared);
    return {
      rows: [
        { name: 'binding.encode3_bound_ms', value: bound, unit: 'ms', note: 'per checkpoint, 3 relays' },
        { name: 'binding.encode3_shared_ms', value: shared, unit: 'ms', note: 'previous format' },
        { name: 'binding.checkpoint3_signed_p50_ms', value: p50, unit: 'ms', note: 'ack quorum' },
      ],
      ratios: {
        'binding.encode3_over_shared': bound / shared,
        'binding.extra_over_checkpoint': extra / p50,
      },
    };
  },
};
