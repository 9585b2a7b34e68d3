#!/usr/bin/env node
/**
 * Soak test: restartpoint under steady load for a bounded time, on loopback only.
 *
 *   npm run soak                     # 10 minutes (builds dist/ first)
 *   node --expose-gc scripts/soak.mjs --minutes 3 [--rate 200] [--json]
 *
 * One process hosts a primary and a hot standby of one app (distinct node ids, memory stores) on
 * the local nats-server (127.0.0.1:4222, or RESTARTPOINT_TEST_NATS). The primary writes at a
 * steady rate (`--rate` puts per second over 1 000 keys) and takes an automatic checkpoint every
 * 100 ms. Every minute (`--takeover-s`) the primary is closed (it releases its lease) and the
 * standby takes over; a fresh standby is started in its place. A primary demoted on its own (a
 * lease renewal missed, `--lease-ms`, default 2000) is reported as an error and replaced the same
 * way. Closing nodes in
 * the same process is deliberate: every timer, socket or listener a closed node leaks stays in
 * this process and shows up in the figures below.
 *
 * Every 10 s it samples heap used (after a full GC when run with --expose-gc), RSS and the
 * number of active handles/resources (`process.getActiveResourcesInfo()`), prints a table, and
 * ends with a verdict: heap and handles are flat when the median of the last third of the
 * samples is within 20 % of the median of the first third (the first sample, taken while the
 * process warms up, is left out). Exit code 0 when flat and every checkpoint was acknowledged
 * after the takeovers, 1 otherwise.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import v8 from 'node:v8';
import { Restartpoint } from '../dist/src/index.js';
import { memoryAdapter } from '../dist/adapters/memory/index.js';

const { values: args } = parseArgs({
  options: {
    minutes: { type: 'string', default: '10' },
    rate: { type: 'string', default: '200' },
    'sample-s': { type: 'string', default: '10' },
    'takeover-s': { type: 'string', default: '60' },
    'lease-ms': { type: 'string', default: '2000' },
    json: { type: 'boolean', default: false },
  },
});
const minutes = Number(args.minutes);
const rate = Number(args.rate);
const sampleMs = Number(args['sample-s']) * 1000;
const takeoverMs = Number(args['takeover-s']) * 1000;
if (!(minutes > 0) || !(rate > 0) || !(sampleMs > 0) || !(takeoverMs > 0)) {
  console.error('usage: soak.mjs [--minutes N] [--rate puts/s] [--sample-s S] [--takeover-s S] [--json]');
  process.exit(2);
}

const NATS = process.env.RESTARTPOINT_TEST_NATS ?? 'nats://127.0.0.1:4222';
const app = `soak-${randomBytes(4).toString('hex')}`;
const log = (...a) => {
  if (!args.json) console.log(...a);
};

let nodeNo = 0;
/** The node that is primary now (for sampling). */
let current;
const errors = [];
const stats = { puts: 0, putErrors: 0, checkpoints: 0, takeovers: 0, takeoverMs: [], demotions: 0 };
/** Set when the current primary is demoted without being closed (a lease renewal missed). */
let demoted = false;

/** The app state: a counter and the last 200 records, so images have some body. */
let state = { n: 0, recent: [] };

function startNode() {
  const nodeId = `node-${nodeNo++}`;
  return Restartpoint.start({
    app,
    nodeId,
    nats: { servers: NATS },
    storage: memoryAdapter(),
    leaseTtlMs: Number(args['lease-ms']),
    initialState: () => ({ n: 0, recent: [] }),
    checkpointEveryMs: 100,
    getState: () => state,
    log: (e) => {
      if (e.level === 'error') errors.push(`${nodeId}: ${e.msg}`);
    },
  }).then((rp) => {
    rp.on('demoted', (err) => {
      if (rp !== current) return;
      demoted = true;
      errors.push(`${nodeId} demoted: ${err.message}`);
    });
    return rp;
  });
}

function gc() {
  if (typeof globalThis.gc === 'function') globalThis.gc();
}

const samples = [];
function sample(t0) {
  gc();
  const m = process.memoryUsage();
  const row = {
    t: Math.round((performance.now() - t0) / 1000),
    heapMB: m.heapUsed / 2 ** 20,
    rssMB: m.rss / 2 ** 20,
    handles: process.getActiveResourcesInfo().length,
    puts: stats.puts,
    checkpoints: current?.lastCheckpoint?.checkpoint ?? 0,
    takeovers: stats.takeovers,
  };
  samples.push(row);
  // For hunting a leak: SOAK_HEAP_SNAPSHOTS=dir writes a heap snapshot at every sample.
  if (process.env.SOAK_HEAP_SNAPSHOTS)
    v8.writeHeapSnapshot(`${process.env.SOAK_HEAP_SNAPSHOTS}/soak-${row.t}.heapsnapshot`);
  log(
    `${String(row.t).padStart(5)}  ${row.heapMB.toFixed(1).padStart(8)}  ${row.rssMB.toFixed(1).padStart(8)}  ${String(row.handles).padStart(7)}  ${String(row.puts).padStart(8)}  ${String(row.checkpoints).padStart(6)}  ${String(row.takeovers).padStart(4)}`,
  );
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

function flat(key) {
  const xs = samples.slice(1).map((s) => s[key]);
  const third = Math.max(1, Math.floor(xs.length / 3));
  const first = median(xs.slice(0, third));
  const last = median(xs.slice(-third));
  const growth = first === 0 ? (last === 0 ? 0 : Infinity) : (last - first) / first;
  return { first, last, growth, flat: growth <= 0.2 };
}

async function main() {
  log(
    `soak: app ${app} on ${NATS}, ${minutes} min, ${rate} puts/s, checkpoint every 100 ms, takeover every ${takeoverMs / 1000} s`,
  );
  let primary = await startNode();
  current = primary;
  state = primary.state;
  let standby = startNode();
  // Let the standby join before the clock starts.
  await sleep(500);

  const t0 = performance.now();
  const end = t0 + minutes * 60_000;
  log('    s   heapMB     rssMB  handles      puts  ckpts  tkov');
  sample(t0);
  const sampler = setInterval(() => sample(t0), sampleMs);

  let nextTakeover = t0 + takeoverMs;
  let i = 0;
  const tick = 1000 / rate;
  let due = performance.now();
  while (performance.now() < end) {
    if (demoted || performance.now() >= nextTakeover) {
      const planned = !demoted;
      demoted = false;
      const t = performance.now();
      const acked = primary.lastCheckpoint?.checkpoint;
      // A demoted primary is closed too; its standby takes over once the lease runs out.
      if (!planned) stats.demotions++;
      await primary.close().catch(() => undefined);
      primary = await standby;
      current = primary;
      state = primary.state;
      if (planned) {
        stats.takeovers++;
        stats.takeoverMs.push(performance.now() - t);
      }
      if (primary.resumedFrom === undefined)
        errors.push(`takeover ${stats.takeovers}: resumed from nothing (acked ${acked})`);
      standby = startNode();
      if (planned) nextTakeover += takeoverMs;
      due = performance.now();
    }
    const rp = primary;
    const key = `k${i % 1000}`;
    const value = `${i}:${'x'.repeat(64)}`;
    i++;
    rp.store.put(key, value).then(
      () => stats.puts++,
      (err) => {
        if (rp === primary && !demoted) {
          stats.putErrors++;
          if (errors.length < 20) errors.push(`put: ${err.message}`);
        }
      },
    );
    state.n = i;
    state.recent.push({ id: i, key, at: Date.now() });
    if (state.recent.length > 200) state.recent.shift();
    due += tick;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    else if (i % 50 === 0) await sleep(0);
  }
  clearInterval(sampler);
  sample(t0);
  const last = primary;
  stats.checkpoints = last.lastCheckpoint?.checkpoint ?? 0;
  await last.close().catch(() => undefined);

  const heap = flat('heapMB');
  const handles = flat('handles');
  const ok =
    heap.flat &&
    handles.flat &&
    errors.length === 0 &&
    stats.takeovers === Math.floor((minutes * 60_000) / takeoverMs - 1e-9);
  const verdict = {
    ok,
    minutes,
    rate,
    puts: stats.puts,
    putErrors: stats.putErrors,
    takeovers: stats.takeovers,
    demotions: stats.demotions,
    takeoverMsMax: Math.round(Math.max(0, ...stats.takeoverMs)),
    heapMB: {
      firstThirdMedian: +heap.first.toFixed(1),
      lastThirdMedian: +heap.last.toFixed(1),
      growthPct: +(heap.growth * 100).toFixed(1),
      flat: heap.flat,
    },
    handles: {
      firstThirdMedian: handles.first,
      lastThirdMedian: handles.last,
      growthPct: +(handles.growth * 100).toFixed(1),
      flat: handles.flat,
    },
    gc: typeof globalThis.gc === 'function',
    errors,
    samples: args.json ? samples : undefined,
  };
  if (args.json) console.log(JSON.stringify(verdict));
  else {
    log(
      `\nheap used: first-third median ${verdict.heapMB.firstThirdMedian} MB, last-third median ${verdict.heapMB.lastThirdMedian} MB (${verdict.heapMB.growthPct} %) → ${heap.flat ? 'flat' : 'GROWING'}`,
    );
    log(
      `handles:   first-third median ${handles.first}, last-third median ${handles.last} (${verdict.handles.growthPct} %) → ${handles.flat ? 'flat' : 'GROWING'}`,
    );
    log(
      `puts ${stats.puts} (${stats.putErrors} refused), takeovers ${stats.takeovers} (slowest ${verdict.takeoverMsMax} ms), unplanned demotions ${stats.demotions}`,
    );
    if (!verdict.gc) log('note: run with node --expose-gc for heap figures after a full GC');
    if (errors.length) log(`errors:\n  ${errors.join('\n  ')}`);
    log(`verdict: ${ok ? 'OK — heap and handles stayed flat' : 'FAIL'}`);
  }
  // The standby still waiting for a lease keeps its connections: exit explicitly.
  process.exit(ok ? 0 : 1);
}

main().catch((err) => {
  console.error('soak failed:', err);
  process.exit(1);
});
