/**
 * history.*: what joining, restarting and the relays cost as the app's history grows (issue 13),
 * with the same state (5 000 store keys), 1 000 vs 16 000 checkpoints of history, same run, same
 * NATS server.
 *
 * Per history length H: a primary (memory store) makes H checkpoints (the first ones write the
 * 5 000 keys, then 4 writes each); a standby (memory store, in the same process) builds a base
 * every 1 000 checkpoints and purges the relay below a window of 200 checkpoints. Then:
 * - **join**: the primary makes 10 more checkpoints, then a brand-new node (memory store)
 *   starts; timed until it has applied the last one (median of `repeat` joins);
 * - **restart**: a node on a file store that had caught up stops, the primary makes 10 more
 *   checkpoints, and the node starts again on its own store; timed until it has applied them
 *   (median of `repeat` restarts);
 * - **relay bytes**: the stream's bytes once the last base is durable and the relay purged;
 * - **checkpoint p99 while a base is built**: the primary's checkpoint latencies whose start fell
 *   inside a build (from the builder's read of its store to the base being durable), against
 *   the others. The builder runs in the primary's process here, so its CPU is the primary's:
 *   a pessimistic figure (in production the standby is another process or host).
 *
 * Ratios: `history.join_16k_over_1k`, `history.restart_16k_over_1k`,
 * `history.relay_bytes_16k_over_1k` (goals ≤ 1.5), `history.base_build_p99_over_idle`
 * (goal ≤ 2, measured over both runs).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { fileAdapter } from '../adapters/file/index.js';
import { memoryAdapter } from '../adapters/memory/index.js';
import { Restartpoint, type LogEvent, type StartOptions } from '../src/index.js';
import { deleteApp, openLeaseBucket } from '../src/transport/inspect.js';
import { writeCompact } from '../src/transport/presence.js';
import { appNames } from '../src/protocol/subjects.js';
import type { StorageAdapter } from '../src/storage/adapter.js';
import { median, type BenchContext, type BenchRow, type Suite } from './harness.js';

const KEYS = 5_000;
const EVERY = 1_000;
const WINDOW = 200;

interface S {
  n: number;
  total: number;
}

/** A node started in the background: its log, a wait on it, and a stop. */
function background(o: StartOptions<S>, storage: StorageAdapter) {
  const events: LogEvent[] = [];
  /** `performance.now()` when each event came. */
  const times: number[] = [];
  const waiters: { pred: (e: LogEvent) => boolean; resolve: () => void }[] = [];
  const ac = new AbortController();
  const started = Restartpoint.start<S>({
    ...o,
    storage,
    signal: ac.signal,
    log: (e) => {
      events.push(e);
      times.push(performance.now());
      for (let i = waiters.length - 1; i >= 0; i--)
        if (waiters[i]!.pred(e)) waiters.splice(i, 1)[0]!.resolve();
    },
  });
  started.catch(() => undefined);
  return {
    events,
    times,
    waitFor: (pred: (e: LogEvent) => boolean, what: string, ms = 600_000): Promise<void> =>
      events.some(pred)
        ? Promise.resolve()
        : new Promise<void>((resolve, reject) => {
            waiters.push({ pred, resolve });
            setTimeout(() => reject(new Error(`bench history: ${what} not seen in ${ms} ms`)), ms).unref();
          }),
    stop: async () => {
      ac.abort();
      await started.then((rp) => rp.close()).catch(() => undefined);
      await storage.close();
    },
  };
}

const applied = (cp: number) => (e: LogEvent) =>
  e.msg === 'checkpoint applied' && (e.checkpoint as number) >= cp;

interface RunFigures {
  joinMs: number;
  restartMs: number;
  relayBytes: number;
  relayMessages: number;
  buildLat: number[];
  idleLat: number[];
}

async function runHistory(ctx: BenchContext, history: number): Promise<RunFigures> {
  const app = `bench-hist-${history}-${randomBytes(4).toString('hex')}`;
  const base: Partial<StartOptions<S>> = {
    app,
    nats: { servers: ctx.nats },
    initialState: () => ({ n: 0, total: 0 }),
    leaseTtlMs: 60_000,
    sidecar: false,
    base: { everyCheckpoints: EVERY },
    retain: { checkpoints: WINDOW },
  };
  const opts = (nodeId: string, extra: Partial<StartOptions<S>> = {}) =>
    ({ ...base, nodeId, ...extra }) as StartOptions<S>;
  const primary = await Restartpoint.start<S>({
    ...opts('a', { base: { build: false } }),
    storage: memoryAdapter(),
  });
  const builder = background(opts('b'), memoryAdapter());
  const dir = mkdtempSync(join(tmpdir(), 'rp-bench-hist-'));
  const nc = await connect({ servers: ctx.nats });
  try {
    await builder.waitFor((e) => e.msg === 'standby', 'builder standing');
    const value = Buffer.alloc(64, 7);
    const lat: { t0: number; ms: number }[] = [];
    let state: S = { n: 0, total: 0 };
    let k = 0;
    const step = async (writes: number): Promise<void> => {
      for (let j = 0; j < writes; j++) void primary.store.put(`key${k++ % KEYS}`, value);
      state = { n: state.n + 1, total: state.total + writes };
      const t0 = performance.now();
      await primary.checkpoint(state);
      lat.push({ t0, ms: performance.now() - t0 });
    };
    for (let i = 1; i <= history; i++) {
      await step(i <= 10 ? KEYS / 10 : 4);
      if (i % 2_000 === 0) ctx.progress(`  history ${history}: ${i} checkpoints`);
    }
    // A base at the end of the history (bases come every EVERY checkpoints, not at multiples).
    const kv = await openLeaseBucket(nc, app);
    if (!kv) throw new Error(`bench history: no lease bucket for ${app}`);
    await writeCompact(kv, { id: `bench-${history}`, requestedAt: Date.now() });
    await builder.waitFor(
      (e) => e.msg === 'base durable' && (e.checkpoint as number) === history,
      `base at ${history}`,
    );
    // Build windows, from the builder's own figures: [durable − buildMs, durable].
    const windows = builder.events.flatMap((e, i) =>
      e.msg === 'base durable'
        ? [{ from: builder.times[i]! - (e.buildMs as number), to: builder.times[i]! }]
        : [],
    );
    const inBuild = (t: number) => windows.some((w) => t >= w.from && t <= w.to);
    const buildLat = lat.filter((l) => inBuild(l.t0)).map((l) => l.ms);
    const idleLat = lat.filter((l) => !inBuild(l.t0)).map((l) => l.ms);

    const info = await (await jetstreamManager(nc)).streams.info(appNames(app).stream);
    const relayBytes = info.state.bytes;
    const relayMessages = info.state.messages;

    // Join: a brand-new node, until it applied checkpoint `history`.
    const joins: number[] = [];
    for (let r = 0; r < ctx.repeat; r++) {
      // 10 checkpoints after the base, so the joiner has frames to apply after loading it.
      for (let i = 0; i < 10; i++) await step(4);
      const t0 = performance.now();
      const c = background(opts(`join${r}`, { base: { build: false } }), memoryAdapter());
      await c.waitFor(applied(state.n), `join ${r}`);
      joins.push(performance.now() - t0);
      await c.stop();
    }
    // Restart on its own file store.
    const first = background(opts('r', { base: { build: false } }), fileAdapter({ dir }));
    await first.waitFor(applied(state.n), 'restart node caught up');
    await first.stop();
    const restarts: number[] = [];
    for (let r = 0; r < ctx.repeat; r++) {
      for (let i = 0; i < 10; i++) await step(4);
      const t0 = performance.now();
      const node = background(opts('r', { base: { build: false } }), fileAdapter({ dir }));
      await node.waitFor(applied(state.n), `restart ${r}`);
      restarts.push(performance.now() - t0);
      const path = node.events.find((e) => e.msg === 'start path');
      if (path?.from !== 'own-store') ctx.progress(`  restart ${r}: started from ${String(path?.from)}`);
      await node.stop();
    }
    return {
      joinMs: median(joins),
      restartMs: median(restarts),
      relayBytes,
      relayMessages,
      buildLat,
      idleLat,
    };
  } finally {
    await builder.stop();
    await primary.close().catch(() => undefined);
    await deleteApp(nc, app).catch(() => undefined);
    await nc.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

function p99(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? Number.NaN : s[Math.min(s.length - 1, Math.floor(s.length * 0.99))]!;
}

export const historySuite: Suite = {
  prefix: 'history',
  description: `join, restart and relay bytes at 1 000 vs 16 000 checkpoints of history (${KEYS} keys, base every ${EVERY}, window ${WINDOW})`,
  async run(ctx) {
    const small = await runHistory(ctx, 1_000);
    const large = await runHistory(ctx, 16_000);
    const buildLat = [...small.buildLat, ...large.buildLat];
    const idleLat = [...small.idleLat, ...large.idleLat];
    const rows: BenchRow[] = [
      { name: 'history.1k.join', value: small.joinMs, unit: 'ms' },
      { name: 'history.16k.join', value: large.joinMs, unit: 'ms' },
      { name: 'history.1k.restart', value: small.restartMs, unit: 'ms' },
      { name: 'history.16k.restart', value: large.restartMs, unit: 'ms' },
      {
        name: 'history.1k.relay_bytes',
        value: small.relayBytes,
        unit: 'B',
        note: `${small.relayMessages} msgs`,
      },
      {
        name: 'history.16k.relay_bytes',
        value: large.relayBytes,
        unit: 'B',
        note: `${large.relayMessages} msgs`,
      },
      {
        name: 'history.checkpoint_p99.building',
        value: p99(buildLat),
        unit: 'ms',
        note: `${buildLat.length} cps`,
      },
      { name: 'history.checkpoint_p99.idle', value: p99(idleLat), unit: 'ms', note: `${idleLat.length} cps` },
    ];
    return {
      rows,
      ratios: {
        'history.join_16k_over_1k': large.joinMs / small.joinMs,
        'history.restart_16k_over_1k': large.restartMs / small.restartMs,
        'history.relay_bytes_16k_over_1k': large.relayBytes / small.relayBytes,
        'history.base_build_p99_over_idle': p99(buildLat) / p99(idleLat),
      },
    };
  },
};
