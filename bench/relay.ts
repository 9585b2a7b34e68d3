/**
 * relay.*: checkpoint latency (p50/p99) with 1 relay, 3 relays (ack all / quorum), and 6 relays
 * with FEC 4+2, each measured in the same run on relays this suite starts on loopback; and the
 * bytes the relays store for FEC 4+2 against three full copies.
 *
 * Ratios: `relay.quorum3_latency_over_1relay` (p50 latency, 3 relays quorum ÷ 1 relay),
 * `relay.fec4p2_bytes_over_3copies` (bytes stored with FEC 4+2 on 6 relays ÷ with 3 relays, ack all).
 */
import { randomBytes } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { memoryAdapter } from '../adapters/memory/index.js';
import { TestRelay } from '../src/drill/nats-servers.js';
import { Restartpoint, type StartOptions } from '../src/index.js';
import { median, type BenchContext, type BenchRow, type Suite } from './harness.js';

const CHECKPOINTS = 200;
const WRITES_PER_CHECKPOINT = 20;
const VALUE = randomBytes(1024);

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

async function streamBytes(urls: string[], stream: string): Promise<number> {
  const nc = await connect({ servers: urls });
  try {
    return (await (await jetstreamManager(nc)).streams.info(stream)).state.bytes;
  } finally {
    await nc.close();
  }
}

interface Setup {
  readonly name: string;
  readonly relays: number;
  readonly extra: Partial<StartOptions<unknown>>;
}

async function run(
  ctx: BenchContext,
  relays: TestRelay[],
  setup: Setup,
): Promise<{ p50: number; p99: number; bytes: number }> {
  const app = `bench-${randomBytes(4).toString('hex')}`;
  const used = relays.slice(0, setup.relays);
  const rp = await Restartpoint.start({
    app,
    nodeId: 'bench',
    nats: { servers: ctx.nats },
    storage: memoryAdapter(),
    relays: used.map((r) => ({ servers: r.urls })),
    ...setup.extra,
  });
  const lat: number[] = [];
  try {
    for (let i = 0; i < CHECKPOINTS; i++) {
      for (let j = 0; j < WRITES_PER_CHECKPOINT; j++) void rp.store.put(`k${j}`, VALUE);
      const t0 = performance.now();
      await rp.checkpoint({ i });
      lat.push(performance.now() - t0);
    }
  } finally {
    await rp.close();
  }
  let bytes = 0;
  for (const r of used) bytes += await streamBytes(r.urls, `RP_${app}`);
  return { p50: percentile(lat, 50), p99: percentile(lat, 99), bytes };
}

/** Setups measured. FEC 4+2 tolerating one lost relay: a frame is acked at 5 of 6 shards. */
export const relaySetups: Setup[] = [
  { name: '1relay', relays: 1, extra: {} },
  { name: '3relays_all', relays: 3, extra: { ack: 'all' } },
  { name: '3relays_quorum', relays: 3, extra: { ack: 'quorum' } },
  { name: '6relays_fec4p2', relays: 6, extra: { fec: { data: 4, parity: 2, tolerate: 1 } } },
];

/** The relay suite. */
export const relaySuite: Suite = {
  prefix: 'relay',
  description: 'checkpoint latency over 1, 3 and 6 (FEC) relays; bytes of FEC vs full copies',
  async run(ctx) {
    const relays: TestRelay[] = [];
    const rows: BenchRow[] = [];
    const ratios: Record<string, number> = {};
    try {
      for (let i = 0; i < 6; i++) relays.push(await TestRelay.single());
      const results = new Map<string, { p50: number; p99: number; bytes: number }>();
      for (const setup of relaySetups) {
        ctx.progress(`  relay.${setup.name}: ${CHECKPOINTS} checkpoints x ${ctx.repeat}`);
        const runs = [];
        for (let i = 0; i < ctx.repeat; i++) runs.push(await run(ctx, relays, setup));
        const r = {
          p50: median(runs.map((x) => x.p50)),
          p99: median(runs.map((x) => x.p99)),
          bytes: median(runs.map((x) => x.bytes)),
        };
        results.set(setup.name, r);
        rows.push({ name: `relay.${setup.name}.checkpoint_p50`, value: r.p50, unit: 'ms' });
        rows.push({ name: `relay.${setup.name}.checkpoint_p99`, value: r.p99, unit: 'ms' });
        rows.push({ name: `relay.${setup.name}.bytes_stored`, value: r.bytes, unit: 'B' });
      }
      ratios['relay.quorum3_latency_over_1relay'] =
        results.get('3relays_quorum')!.p50 / results.get('1relay')!.p50;
      const fec = results.get('6relays_fec4p2');
      if (fec) ratios['relay.fec4p2_bytes_over_3copies'] = fec.bytes / results.get('3relays_all')!.bytes;
    } finally {
      await Promise.all(relays.map((r) => r.destroy()));
    }
    return { rows, ratios };
  },
};
