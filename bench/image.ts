/**
 * image.*: what one checkpoint of a large state costs, by how its image is found, next to the
 * naive baseline measured in the same run.
 *
 * States of 1, 10 and 50 MB (node:v8 bytes) of user records, held in a Map and in a plain object,
 * with 0.1 %, 1 % and 10 % of the records changed (two fields each) between checkpoints:
 *
 * - `tracked`: the state is `rp.track(state)`, changed in place through the proxy;
 * - `identity`: `immutableState: true`, changed records and their container copied;
 * - `jsondiffpatch`: the default path, `toTree` + jsondiffpatch of the whole state;
 * - `full`: `v8.serialize` of the whole state published (in parts) to the same stream, the
 *   naive baseline (it does not depend on how much changed).
 *
 * Per path: checkpoint latency p50/p99 (call to resolved: encode, publish, relay acks), image
 * bytes shipped (after compression; the full baseline ships raw v8), and the longest synchronous
 * slice (event-loop blocking) per checkpoint. Keyframes are kept out of the steady state
 * (`keyframeEvery` and `maxChainShare` set high); the first checkpoint of each path is the
 * keyframe and is reported on its own. Restore: `ImageChain.materialize()` (what a takeover
 * does) next to one `v8.deserialize` of the same state. p99 is the slowest sample when there are
 * fewer than 100.
 *
 * Ratios (worst of the two containers): `image.10mb_1pct.time_over_full` = p50 tracked ÷ p50
 * full, `image.10mb_1pct.bytes_over_full` = tracked bytes ÷ full bytes,
 * `image.10mb.restore_over_deserialize` = materialize ÷ v8.deserialize.
 */
import { randomBytes } from 'node:crypto';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import v8 from 'node:v8';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { memoryAdapter } from '../adapters/memory/index.js';
import { Restartpoint } from '../src/index.js';
import { ImageChain, ImageEncoder } from '../src/image/chain.js';
import { track } from '../src/image/tracked.js';
import { OFF_THREAD_IMAGE_BYTES } from '../src/standby/runner.js';
import { FrameKind, encodeFrame } from '../src/protocol/frame.js';
import type { ImageRecord } from '../src/protocol/records.js';
import { median, round, type BenchContext, type BenchRow, type Suite } from './harness.js';

const SIZES_MB = [1, 10, 50] as const;
const PCTS = [0.1, 1, 10] as const;
const CONTAINERS = ['map', 'object'] as const;
const PATHS = ['tracked', 'identity', 'jsondiffpatch', 'full'] as const;
type Container = (typeof CONTAINERS)[number];
type PathName = (typeof PATHS)[number];

/** Checkpoints measured per path and change rate, per `--repeat`; the slow generic path gets fewer. */
const SAMPLES: Record<number, number> = { 1: 7, 10: 4, 50: 1 };
const DIFF_SAMPLES: Record<number, number> = { 1: 2, 10: 1, 50: 1 };

interface Rec {
  id: string;
  name: string;
  email: string;
  balance: number;
  visits: number;
  tags: string[];
  updated: number;
}

interface State {
  records: Map<string, Rec> | Record<string, Rec>;
  meta: { count: number };
}

const WORDS = [
  'ada',
  'alan',
  'grace',
  'edsger',
  'barbara',
  'donald',
  'ken',
  'dennis',
  'leslie',
  'tony',
  'niklaus',
  'frances',
  'john',
  'radia',
  'margaret',
  'linus',
];

/** A small deterministic PRNG (mulberry32), so every run builds the same states. */
function prng(seed: number): () => number {
  let s = seed | 0;
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function record(i: number, r: () => number): Rec {
  const w = (): string => WORDS[Math.floor(r() * WORDS.length)]!;
  return {
    id: `user:${i}`,
    name: `${w()} ${w()}`,
    email: `${w()}.${i}@example.com`,
    balance: Math.round(r() * 1e8) / 100,
    visits: Math.floor(r() * 10_000),
    tags: [w(), w()],
    updated: 1_700_000_000_000 + Math.floor(r() * 1e10),
  };
}

/** Records for about `mb` MB of v8 image. */
function recordCount(mb: number): number {
  const r = prng(1);
  const sample = Array.from({ length: 2000 }, (_, i) => record(i, r));
  const per = v8.serialize(new Map(sample.map((x) => [x.id, x]))).byteLength / sample.length;
  return Math.round((mb * 1e6) / per);
}

function build(n: number, container: Container): State {
  const r = prng(7);
  if (container === 'map') {
    const records = new Map<string, Rec>();
    for (let i = 0; i < n; i++) records.set(`user:${i}`, record(i, r));
    return { records, meta: { count: n } };
  }
  const records: Record<string, Rec> = {};
  for (let i = 0; i < n; i++) records[`user:${i}`] = record(i, r);
  return { records, meta: { count: n } };
}

/** `k` distinct record keys, at random. */
function pickKeys(n: number, k: number, r: () => number): string[] {
  const picked = new Set<number>();
  while (picked.size < k) picked.add(Math.floor(r() * n));
  return [...picked].map((i) => `user:${i}`);
}

const get = (s: State, key: string): Rec =>
  s.records instanceof Map ? s.records.get(key)! : (s.records as Record<string, Rec>)[key]!;

/** Changes two fields of each record of `keys` in place (through the proxy when tracked). */
function changeInPlace(s: State, keys: string[], r: () => number): void {
  for (const key of keys) {
    const rec = get(s, key);
    rec.balance = Math.round(r() * 1e8) / 100;
    rec.updated += 1000;
  }
}

/** The same change made immutably: new records, a new container, a new root. */
function changeImmutably(s: State, keys: string[], r: () => number): State {
  const edit = (rec: Rec): Rec => ({
    ...rec,
    balance: Math.round(r() * 1e8) / 100,
    updated: rec.updated + 1000,
  });
  if (s.records instanceof Map) {
    const records = new Map(s.records);
    for (const key of keys) records.set(key, edit(records.get(key)!));
    return { ...s, records };
  }
  const records = { ...s.records };
  for (const key of keys) records[key] = edit(records[key]!);
  return { ...s, records };
}

interface Sample {
  readonly ms: number;
  readonly bytes: number;
  readonly rawBytes: number;
  readonly blockMs: number;
}

/**
 * Runs one checkpoint-like operation and measures its latency and the longest stretch the event
 * loop was blocked meanwhile: the larger of the synchronous call itself and the worst delay of a
 * 1 ms timer (histogram max minus its period).
 */
async function measure(run: () => Promise<{ bytes: number; rawBytes: number }>): Promise<Sample> {
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  const t0 = performance.now();
  const pending = run();
  const sync = performance.now() - t0;
  const { bytes, rawBytes } = await pending;
  const ms = performance.now() - t0;
  h.disable();
  return { ms, bytes, rawBytes, blockMs: Math.max(sync, h.max / 1e6 - 1) };
}

function percentile(xs: readonly number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)] ?? Number.NaN;
}

interface Summary {
  readonly p50: number;
  readonly p99: number;
  readonly bytes: number;
  readonly rawBytes: number;
  readonly blockMs: number;
}

function summarize(samples: readonly Sample[]): Summary {
  return {
    p50: median(samples.map((s) => s.ms)),
    p99: percentile(
      samples.map((s) => s.ms),
      99,
    ),
    bytes: median(samples.map((s) => s.bytes)),
    rawBytes: median(samples.map((s) => s.rawBytes)),
    blockMs: Math.max(...samples.map((s) => s.blockMs)),
  };
}

const appName = (): string => `bench-img-${randomBytes(4).toString('hex')}`;

async function dropApp(nc: NatsConnection, app: string): Promise<void> {
  const jsm = await jetstreamManager(nc);
  await jsm.streams.delete(`RP_${app}`).catch(() => undefined);
  await jsm.streams.delete(`KV_rp-${app}-lease`).catch(() => undefined);
}

/** A primary for one path; generous lease and timeouts: a 50 MB keyframe blocks for seconds. */
function startPrimary(ctx: BenchContext, app: string, immutableState: boolean): Promise<Restartpoint<State>> {
  return Restartpoint.start<State>({
    app,
    nodeId: 'bench',
    nats: { servers: ctx.nats },
    storage: memoryAdapter(),
    keyframeEvery: 1_000_000,
    maxChainShare: 1000,
    immutableState,
    leaseTtlMs: 120_000,
    checkpointTimeoutMs: 300_000,
  });
}

/** Per change rate, the samples of one path; plus its keyframe. */
interface PathRun {
  readonly keyframe: Sample;
  readonly byPct: Map<number, Sample[]>;
}

async function runRp(
  ctx: BenchContext,
  nc: NatsConnection,
  n: number,
  container: Container,
  path: 'tracked' | 'identity' | 'jsondiffpatch',
  samples: number,
): Promise<PathRun> {
  const app = appName();
  const rp = await startPrimary(ctx, app, path === 'identity');
  const r = prng(11);
  try {
    let state = build(n, container);
    if (path === 'tracked') state = rp.track(state);
    const stats = (): { bytes: number; rawBytes: number } => ({
      bytes: rp.lastCheckpoint!.imageBytes,
      rawBytes: rp.lastCheckpoint!.imageRawBytes,
    });
    const keyframe = await measure(() => rp.checkpoint(state).then(stats));
    const byPct = new Map<number, Sample[]>();
    for (const pct of PCTS) {
      const out: Sample[] = [];
      for (let i = 0; i < samples; i++) {
        const keys = pickKeys(n, Math.max(1, Math.round((n * pct) / 100)), r);
        if (path === 'identity') state = changeImmutably(state, keys, r);
        else changeInPlace(state, keys, r);
        out.push(await measure(() => rp.checkpoint(state).then(stats)));
        const expected = path === 'jsondiffpatch' ? 'diff' : path;
        if (rp.lastCheckpoint!.imagePath !== expected) {
          throw new Error(`bench: ${path} checkpoint took the ${rp.lastCheckpoint!.imagePath} path`);
        }
      }
      byPct.set(pct, out);
    }
    return { keyframe, byPct };
  } finally {
    await rp.close();
    await dropApp(nc, app);
  }
}

/** The naive baseline: v8.serialize of the whole state, published in parts to an app stream. */
async function runFull(
  ctx: BenchContext,
  nc: NatsConnection,
  n: number,
  container: Container,
  samples: number,
): Promise<Sample[]> {
  const app = appName();
  // A primary creates the app's stream; the baseline publishes next to its frames.
  const rp = await startPrimary(ctx, app, false);
  const js = jetstream(nc);
  const subject = `rp.${app}.naive`;
  // Room for the Nats-Msg-Id header, which the server counts against max_payload.
  const maxPayload = (nc.info?.max_payload ?? 1024 * 1024) - 512;
  const r = prng(13);
  try {
    const state = build(n, container);
    const out: Sample[] = [];
    for (let i = 1; i <= samples; i++) {
      changeInPlace(state, pickKeys(n, Math.max(1, Math.round(n / 100)), r), r);
      out.push(
        await measure(async () => {
          const body = v8.serialize(state);
          const parts = encodeFrame(
            app,
            { kind: FrameKind.Image, epoch: 1, seq: i, checkpoint: i, body },
            maxPayload,
          );
          await Promise.all(
            parts.map((p, j) => js.publish(subject, p, { msgID: `naive.${i}.${j}`, timeout: 60_000 })),
          );
          return { bytes: body.byteLength, rawBytes: body.byteLength };
        }),
      );
    }
    return out;
  } finally {
    await rp.close();
    await dropApp(nc, app);
  }
}

/** Takeover restore (materialize the standby's tree) next to one v8.deserialize; and a 1 % delta applied. */
function restore(
  n: number,
  container: Container,
  repeat: number,
): { restoreMs: number; deserializeMs: number; applyMs: number } {
  const raw = build(n, container);
  const r = prng(17);
  const state = track(raw);
  // On the spot (records ready at once): this measures the standby's restore, not the encoder.
  const encoder = new ImageEncoder({
    keyframeEvery: 1_000_000,
    maxChainShare: 1000,
    compress: false,
    offThread: false,
  });
  const chain = new ImageChain();
  const first = encoder.encode(state, 1).record as ImageRecord;
  chain.check(1, first);
  chain.apply(1, first);
  changeInPlace(state, pickKeys(n, Math.max(1, Math.round(n / 100)), r), r);
  const delta = encoder.encode(state, 2).record as ImageRecord;
  const t0 = performance.now();
  chain.check(2, delta);
  chain.apply(2, delta);
  const applyMs = performance.now() - t0;
  const times = (fn: () => unknown): number[] =>
    Array.from({ length: repeat }, () => {
      const t = performance.now();
      fn();
      return performance.now() - t;
    });
  const restoreMs = median(times(() => chain.materialize()));
  const bytes = v8.serialize(raw);
  const deserializeMs = median(times(() => v8.deserialize(bytes)));
  return { restoreMs, deserializeMs, applyMs };
}

const fmt = (x: number): string => String(round(x));
const kb = (bytes: number): string => fmt(bytes / 1024);

/** The image suite. */
export const imageSuite: Suite = {
  prefix: 'image',
  description: 'checkpoint of 1/10/50 MB states: tracked, identity, jsondiffpatch, full v8 (same run)',
  async run(ctx) {
    const rows: BenchRow[] = [];
    const ratios: Record<string, number> = {};
    const table: string[] = [];
    const nc = await connect({ servers: ctx.nats });
    const worst = (name: string, v: number): void => {
      ratios[name] = Math.max(ratios[name] ?? 0, v);
    };
    try {
      table.push(
        'image: checkpoint latency p50/p99 ms · KB shipped · longest synchronous slice ms (steady state, no keyframes)',
        `${'case'.padEnd(24)}${PATHS.map((p) => p.padEnd(30)).join('')}`,
      );
      for (const mb of SIZES_MB) {
        if (!ctx.wants(`image.${mb}mb`)) continue;
        const n = recordCount(mb);
        const samples = SAMPLES[mb]! * ctx.repeat;
        const diffSamples = mb === 50 ? 1 : DIFF_SAMPLES[mb]! * ctx.repeat;
        for (const container of CONTAINERS) {
          ctx.progress(
            `  image.${mb}mb.${container}: ${n} records, ${samples} checkpoints per path and rate`,
          );
          const runs: Partial<Record<PathName, PathRun>> = {};
          runs.tracked = await runRp(ctx, nc, n, container, 'tracked', samples);
          runs.identity = await runRp(ctx, nc, n, container, 'identity', samples);
          runs.jsondiffpatch = await runRp(ctx, nc, n, container, 'jsondiffpatch', diffSamples);
          const full = summarize(await runFull(ctx, nc, n, container, samples));
          const base = `image.${mb}mb`;
          for (const path of ['tracked', 'identity', 'jsondiffpatch'] as const) {
            const k = runs[path]!.keyframe;
            rows.push({
              name: `${base}.${container}.${path}.keyframe_ms`,
              value: k.ms,
              unit: 'ms',
              note: `${kb(k.bytes)} KB`,
            });
          }
          for (const pct of PCTS) {
            const label = `${mb}mb_${pct === 0.1 ? '0p1' : pct}pct`;
            const c = `image.${label}`;
            const line: string[] = [];
            const sums: Record<PathName, Summary> = {
              tracked: summarize(runs.tracked.byPct.get(pct)!),
              identity: summarize(runs.identity.byPct.get(pct)!),
              jsondiffpatch: summarize(runs.jsondiffpatch.byPct.get(pct)!),
              full,
            };
            for (const path of PATHS) {
              const s = sums[path];
              rows.push(
                { name: `${c}.${container}.${path}.p50_ms`, value: s.p50, unit: 'ms' },
                { name: `${c}.${container}.${path}.p99_ms`, value: s.p99, unit: 'ms' },
                {
                  name: `${c}.${container}.${path}.bytes`,
                  value: s.bytes,
                  unit: 'B',
                  note: `${s.rawBytes} B before compression`,
                },
                {
                  name: `${c}.${container}.${path}.block_ms`,
                  value: s.blockMs,
                  unit: 'ms',
                  note: 'longest synchronous slice',
                },
              );
              line.push(`${fmt(s.p50)}/${fmt(s.p99)} · ${kb(s.bytes)} · ${fmt(s.blockMs)}`.padEnd(30));
            }
            table.push(`${`${mb} MB ${pct}% ${container}`.padEnd(24)}${line.join('')}`);
            ratios[`image.${label}.${container}.time_over_full`] = sums.tracked.p50 / full.p50;
            if (label === '10mb_1pct') {
              worst('image.10mb_1pct.time_over_full', sums.tracked.p50 / full.p50);
              worst('image.10mb_1pct.bytes_over_full', sums.tracked.bytes / full.bytes);
              worst('image.10mb_1pct.identity_time_over_full', sums.identity.p50 / full.p50);
              worst('image.10mb_1pct.identity_bytes_over_full', sums.identity.bytes / full.bytes);
              worst('image.10mb_1pct.jsondiffpatch_time_over_full', sums.jsondiffpatch.p50 / full.p50);
            }
          }
          ctx.progress(`  image.${mb}mb.${container}: restore`);
          const rest = restore(n, container, Math.max(1, mb === 50 ? 1 : ctx.repeat));
          rows.push(
            {
              name: `${base}.${container}.restore_ms`,
              value: rest.restoreMs,
              unit: 'ms',
              note: 'ImageChain.materialize',
            },
            {
              name: `${base}.${container}.deserialize_ms`,
              value: rest.deserializeMs,
              unit: 'ms',
              note: 'one v8.deserialize',
            },
            {
              name: `${base}_1pct.${container}.standby_apply_ms`,
              value: rest.applyMs,
              unit: 'ms',
              note: 'check + apply of one tracked delta',
            },
          );
          ratios[`${base}.${container}.restore_over_deserialize`] = rest.restoreMs / rest.deserializeMs;
          if (mb === 10) worst('image.10mb.restore_over_deserialize', rest.restoreMs / rest.deserializeMs);
        }
      }
      if (ctx.wants('image.100mb')) {
        const n = recordCount(100);
        const stalls = { primary: [] as number[], standby: [] as number[] };
        const times = { primary: [] as number[], standby: [] as number[] };
        for (let i = 0; i < ctx.repeat; i++) {
          ctx.progress(
            `  image.100mb: ${n} records, keyframe on the primary and the standby (${i + 1}/${ctx.repeat})`,
          );
          const k = await keyframeStall(n);
          for (const side of ['primary', 'standby'] as const) {
            stalls[side].push(k[side].stallMs);
            times[side].push(k[side].ms);
          }
        }
        table.push('', 'image.100mb keyframe: worst event-loop delay ms / keyframe ms (median of --repeat)');
        for (const side of ['primary', 'standby'] as const) {
          const stall = median(stalls[side]);
          const ms = median(times[side]);
          rows.push(
            { name: `image.100mb.keyframe.${side}.ms`, value: ms, unit: 'ms' },
            {
              name: `image.100mb.keyframe.${side}.loop_stall_ms`,
              value: stall,
              unit: 'ms',
              note: 'worst monitorEventLoopDelay sample',
            },
          );
          table.push(`  ${side.padEnd(8)} ${fmt(stall)} / ${fmt(ms)}`);
          ratios[`image.100mb.loop_stall_over_keyframe.${side}`] = stall / ms;
          worst('image.100mb.loop_stall_over_keyframe', stall / ms);
        }
      }
    } finally {
      await nc.close();
    }
    return { rows, ratios, table: table.join('\n') };
  },
};

/**
 * A 100 MB keyframe on both sides, with the event loop watched (`monitorEventLoopDelay`, 5 ms
 * resolution): on the primary from `encode` (tracked state, first checkpoint) until its record
 * is ready (compressed); on the standby `ImageChain.checkAsync` + `apply` as the runner does it
 * (decoded in the image worker, the tree handed back in slices).
 */
async function keyframeStall(
  n: number,
): Promise<Record<'primary' | 'standby', { ms: number; stallMs: number }>> {
  const state = track(build(n, 'map'));
  const watch = async <T>(fn: () => Promise<T>): Promise<{ ms: number; stallMs: number; value: T }> => {
    const h = monitorEventLoopDelay({ resolution: 5 });
    h.enable();
    // The histogram records the gap between two of its timer's ticks: let it tick first, or a
    // block right after enable() goes unrecorded.
    await new Promise((r) => setTimeout(r, 30));
    const t0 = performance.now();
    const value = await fn();
    const ms = performance.now() - t0;
    h.disable();
    return { ms, stallMs: h.max / 1e6, value };
  };
  const encoder = new ImageEncoder({ keyframeEvery: 1_000_000 });
  // Let a timer tick before the keyframe, so the histogram has a baseline.
  await new Promise((r) => setTimeout(r, 20));
  // Off the event loop (keyframe-encode.ts): walked in slices with copy-on-write, serialized in
  // the image worker.
  const primary = await watch(async () => encoder.encode(state, 1).record);
  await encoder.close();
  const chain = new ImageChain({ offThreadBytes: OFF_THREAD_IMAGE_BYTES, maxImageBytes: 2 ** 31 });
  try {
    await new Promise((r) => setTimeout(r, 20));
    const standby = await watch(async () => {
      await chain.checkAsync(1, primary.value);
      chain.apply(1, primary.value);
    });
    return { primary, standby };
  } finally {
    await chain.close();
  }
}
