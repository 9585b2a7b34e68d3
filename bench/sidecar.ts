/**
 * sidecar.*: what the sidecar's local HTTP API costs an app, against the SDK in the same
 * process, same run, same NATS server and memory store.
 *
 * **A step**: 20 writes of 1 KiB and a checkpoint of a small JSON state.
 * - baseline: `rp.store.put` × 20 + `rp.checkpoint(state)` through the SDK;
 * - subject: one `POST /batch` (the 20 writes, base64, and the checkpoint) to an in-process
 *   sidecar over loopback HTTP with the bearer token and a kept-alive connection, sent with
 *   node:http (what the Python example does with http.client);
 * - also measured: the same `POST /batch` over the sidecar's Unix-domain socket (`api.socket`),
 *   and `PUT /store/{key}` × 20 (in parallel) + `POST /checkpoint`, one request each.
 *
 * The SDK, TCP and socket steps run interleaved, in turn (the order rotating every step), so a
 * change of the host's load in the middle of a run weighs on all three alike.
 *
 * **A large state**: about 10 MB of JSON-able records in a plain object, 1 % of the records
 * changed (two fields each) per checkpoint.
 * - baseline: the SDK's tracked path (`rp.track(state)`, changed in place, `rp.checkpoint`);
 * - subject: `POST /checkpoint` with a JSON merge patch of the changed fields (built and sent by
 *   the app, applied by the sidecar to its tracked copy). Timed from building the patch to the
 *   answer.
 *
 * Ratios: `sidecar.step_over_sdk` (p50 step through `POST /batch` over TCP ÷ through the SDK),
 * `sidecar.step_socket_over_sdk` (the same over the Unix socket),
 * `sidecar.step_single_requests_over_sdk` (one request per write, over TCP), and
 * `sidecar.10mb_1pct.checkpoint_over_sdk` (p50 checkpoint through a merge patch ÷ the SDK's
 * tracked checkpoint).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { Agent, request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { memoryAdapter } from '../adapters/memory/index.js';
import { parseConfig } from '../src/config/load.js';
import { Restartpoint } from '../src/index.js';
import { Sidecar } from '../src/sidecar/sidecar.js';
import { median, type BenchContext, type BenchRow, type Suite } from './harness.js';

const STEPS = 400;
/**
 * Steps run first and not timed, on every path alike: a fresh sidecar's HTTP parser, JSON and
 * base64 paths start cold (interpreted), and 200 timed steps from cold put the median in the
 * warm-up on a loaded host. Production sidecars run warm.
 */
const WARMUP = 100;
const WRITES = 20;
const VALUE = randomBytes(1024);
/** Lease TTL for the 10 MB runs, SDK and sidecar alike. */
const BIG_LEASE_TTL_MS = 20_000;

function p50(xs: number[]): number {
  return median(xs);
}

/** Starts the SDK on a fresh app, memory store: the baseline. */
function startSdk(ctx: BenchContext, leaseTtlMs?: number): Promise<Restartpoint<unknown>> {
  return Restartpoint.start({
    app: `bench-sdk-${randomBytes(4).toString('hex')}`,
    nodeId: 'bench',
    nats: { servers: ctx.nats },
    storage: memoryAdapter(),
    sidecar: false,
    ...(leaseTtlMs ? { leaseTtlMs } : {}),
  });
}

/** Starts an in-process sidecar on a fresh app and waits until it is primary. */
async function startSidecar(
  ctx: BenchContext,
  leaseTtlMs?: number,
  /** Off for the step runs: the SDK baseline has no metrics observer either. */
  metrics = false,
  /** `api.socket`: the API on this Unix-domain socket too. */
  socket?: string,
): Promise<{ base: string; auth: Record<string, string>; stop(): Promise<void> }> {
  const token = randomBytes(16).toString('hex');
  const config = parseConfig(
    {
      app: `bench-sc-${randomBytes(4).toString('hex')}`,
      nodeId: 'bench',
      nats: { servers: ctx.nats },
      storage: { kind: 'memory' },
      api: { port: 0, token, maxBodyBytes: 64 * 1024 * 1024, ...(socket ? { socket } : {}) },
      metrics: { enabled: metrics },
      // A 10 MB state parsed and imaged on a loaded 2-core host can hold the loop for seconds.
      ...(leaseTtlMs ? { leaseTtlMs } : {}),
    },
    'bench',
    {},
  );
  const sidecar = new Sidecar({
    config,
    command: [],
    storage: () => memoryAdapter(),
    logger: pino({ level: 'silent' }),
  });
  const done = sidecar.run();
  const stop = async (): Promise<void> => {
    sidecar.stop();
    await done;
  };
  for (const end = Date.now() + 15_000; sidecar.role !== 'primary';) {
    if (Date.now() > end) {
      await stop();
      throw new Error('the bench sidecar did not become primary within 15 s');
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return { base: `http://127.0.0.1:${sidecar.port}`, auth: { authorization: `Bearer ${token}` }, stop };
}

async function ok(res: Response): Promise<void> {
  if (!res.ok) throw new Error(`sidecar answered ${res.status}: ${await res.text()}`);
  await res.arrayBuffer();
}

/** Where requests go: 127.0.0.1 and a port, or a Unix-domain socket. */
type Target = { host: string; port: string } | { socketPath: string };

/**
 * POSTs `body` over a kept-alive connection with node:http (as Python's http.client would; the
 * global `fetch` costs this process several milliseconds more per request under load).
 */
function post(
  agent: Agent,
  target: Target,
  path: string,
  auth: Record<string, string>,
  body: string,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        ...target,
        path,
        method: 'POST',
        agent,
        headers: { ...auth, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          res.statusCode === 200
            ? resolve()
            : reject(new Error(`sidecar answered ${res.statusCode}: ${Buffer.concat(chunks).toString()}`)),
        );
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** Step p50s (ms) through the SDK and through `POST /batch` over TCP and over the Unix socket. */
interface StepP50s {
  sdk: number;
  batch: number;
  socket: number;
}

/**
 * The SDK, `POST /batch` over TCP and over `api.socket`, stepped in turn: every round runs one
 * step of each, starting with a different one each round. The SDK has its app; the two batch
 * paths share one sidecar (one app), as an app using either would.
 */
async function sideBySide(ctx: BenchContext): Promise<StepP50s> {
  const dir = mkdtempSync(join(tmpdir(), 'rp-bench-sidecar-'));
  const rp = await startSdk(ctx);
  const socketPath = join(dir, 'api.sock');
  const sc = await startSidecar(ctx, undefined, false, socketPath).catch(async (err: unknown) => {
    await rp.close();
    throw err;
  });
  const url = new URL(sc.base);
  const tcp = new Agent({ keepAlive: true, maxSockets: 1 });
  const unix = new Agent({ keepAlive: true, maxSockets: 1 });
  const value = VALUE.toString('base64');
  // The app builds its request inside the timed step, as it would.
  const batchBody = (i: number): string =>
    JSON.stringify({
      writes: Array.from({ length: WRITES }, (_, j) => ({ key: `k${j}`, value })),
      checkpoint: { state: { i, note: 'bench' } },
    });
  const paths: [keyof StepP50s, (i: number) => Promise<void>][] = [
    [
      'sdk',
      async (i) => {
        await Promise.all(Array.from({ length: WRITES }, (_, j) => rp.store.put(`k${j}`, VALUE)));
        await rp.checkpoint({ i, note: 'bench' });
      },
    ],
    ['batch', (i) => post(tcp, { host: url.hostname, port: url.port }, '/batch', sc.auth, batchBody(i))],
    ['socket', (i) => post(unix, { socketPath }, '/batch', sc.auth, batchBody(i))],
  ];
  const lat: Record<keyof StepP50s, number[]> = { sdk: [], batch: [], socket: [] };
  try {
    for (let i = -WARMUP; i < STEPS; i++) {
      for (let k = 0; k < paths.length; k++) {
        const [name, step] = paths[(i + WARMUP + k) % paths.length]!;
        const t0 = performance.now();
        await step(i);
        if (i >= 0) lat[name].push(performance.now() - t0);
      }
    }
  } finally {
    tcp.destroy();
    unix.destroy();
    await sc.stop();
    await rp.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return { sdk: p50(lat.sdk), batch: p50(lat.batch), socket: p50(lat.socket) };
}

/** About 10 MB of JSON-able records (plain objects), as the image suite's. */
function bigState(): { records: Record<string, Rec>; meta: { count: number } } {
  let seed = 7;
  const r = (): number => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const words = ['ada', 'alan', 'grace', 'edsger', 'barbara', 'donald', 'ken', 'dennis'];
  const w = (): string => words[Math.floor(r() * words.length)]!;
  const records: Record<string, Rec> = {};
  let bytes = 0;
  for (let i = 0; bytes < 10e6; i++) {
    const rec: Rec = {
      id: `user:${i}`,
      name: `${w()} ${w()}`,
      email: `${w()}.${i}@example.com`,
      balance: Math.round(r() * 1e8) / 100,
      visits: Math.floor(r() * 10_000),
      tags: [w(), w()],
      updated: 1_700_000_000_000 + Math.floor(r() * 1e10),
    };
    records[rec.id] = rec;
    bytes += 150; // about the v8 size of one record
  }
  return { records, meta: { count: Object.keys(records).length } };
}

interface Rec {
  id: string;
  name: string;
  email: string;
  balance: number;
  visits: number;
  tags: string[];
  updated: number;
}

/** 1 % of the record keys, a different draw every time. */
function changedKeys(keys: string[], round: number): string[] {
  const n = Math.max(1, Math.floor(keys.length / 100));
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(keys[(i * 97 + round * 7919) % keys.length]!);
  return [...new Set(out)];
}

/** p50 of a 1 % checkpoint of the 10 MB state: the SDK's tracked path. */
async function bigViaSdk(ctx: BenchContext, rounds: number): Promise<number> {
  const raw = bigState();
  const rp = await startSdk(ctx, BIG_LEASE_TTL_MS);
  const lat: number[] = [];
  try {
    const state = rp.track(raw);
    const keys = Object.keys(state.records);
    await rp.checkpoint(state);
    for (let i = 0; i < rounds + 2; i++) {
      const t0 = performance.now();
      for (const key of changedKeys(keys, i)) {
        const rec = state.records[key]!;
        rec.balance = i + 0.5;
        rec.updated += 1000;
      }
      await rp.checkpoint(state);
      if (i >= 2) lat.push(performance.now() - t0);
    }
  } finally {
    await rp.close();
  }
  return p50(lat);
}

/** p50 of the same checkpoint through the sidecar: a JSON merge patch of the changed fields. */
async function bigViaSidecar(ctx: BenchContext, rounds: number): Promise<number> {
  const state = bigState();
  const sc = await startSidecar(ctx, BIG_LEASE_TTL_MS);
  const lat: number[] = [];
  try {
    const keys = Object.keys(state.records);
    await ok(
      await fetch(`${sc.base}/checkpoint`, {
        method: 'POST',
        headers: { ...sc.auth, 'content-type': 'application/json' },
        body: JSON.stringify(state),
      }),
    );
    for (let i = 0; i < rounds + 2; i++) {
      const t0 = performance.now();
      const records: Record<string, Partial<Rec>> = {};
      for (const key of changedKeys(keys, i)) {
        const rec = state.records[key]!;
        rec.balance = i + 0.5;
        rec.updated += 1000;
        records[key] = { balance: rec.balance, updated: rec.updated };
      }
      await ok(
        await fetch(`${sc.base}/checkpoint`, {
          method: 'POST',
          headers: { ...sc.auth, 'content-type': 'application/merge-patch+json' },
          body: JSON.stringify({ records }),
        }),
      );
      // The first two build the sidecar's tracked copy and warm up: not timed, as for the SDK.
      if (i >= 2) lat.push(performance.now() - t0);
    }
  } finally {
    await sc.stop();
  }
  return p50(lat);
}

async function viaSidecar(ctx: BenchContext): Promise<number> {
  const token = randomBytes(16).toString('hex');
  const config = parseConfig(
    {
      app: `bench-sc-${randomBytes(4).toString('hex')}`,
      nodeId: 'bench',
      nats: { servers: ctx.nats },
      storage: { kind: 'memory' },
      api: { port: 0, token },
      metrics: { enabled: true },
    },
    'bench',
    {},
  );
  const sidecar = new Sidecar({
    config,
    command: [],
    storage: () => memoryAdapter(),
    logger: pino({ level: 'silent' }),
  });
  const done = sidecar.run();
  const lat: number[] = [];
  try {
    for (const end = Date.now() + 15_000; sidecar.role !== 'primary';) {
      if (Date.now() > end) throw new Error('the bench sidecar did not become primary within 15 s');
      await new Promise((r) => setTimeout(r, 20));
    }
    const base = `http://127.0.0.1:${sidecar.port}`;
    const auth = { authorization: `Bearer ${token}` };
    const ok = async (res: Response): Promise<void> => {
      if (!res.ok) throw new Error(`sidecar answered ${res.status}: ${await res.text()}`);
      await res.arrayBuffer();
    };
    for (let i = -WARMUP; i < STEPS; i++) {
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: WRITES }, (_, j) =>
          fetch(`${base}/store/k${j}`, { method: 'PUT', headers: auth, body: VALUE }).then(ok),
        ),
      );
      await ok(
        await fetch(`${base}/checkpoint`, {
          method: 'POST',
          headers: { ...auth, 'content-type': 'application/json' },
          body: JSON.stringify({ i, note: 'bench' }),
        }),
      );
      if (i >= 0) lat.push(performance.now() - t0);
    }
  } finally {
    sidecar.stop();
    await done;
  }
  return p50(lat);
}

/** The sidecar suite. */
export const sidecarSuite: Suite = {
  prefix: 'sidecar',
  description: 'a step (20 writes + checkpoint) through the sidecar HTTP API vs the SDK',
  async run(ctx) {
    const rows: BenchRow[] = [];
    const ratios: Record<string, number> = {};
    if (ctx.wants('sidecar.step')) {
      const sdk: number[] = [];
      const api: number[] = [];
      const batch: number[] = [];
      const socket: number[] = [];
      for (let i = 0; i < ctx.repeat; i++) {
        ctx.progress(
          `  sidecar: ${STEPS} steps via SDK and POST /batch (TCP, Unix socket) in turn, then single requests (${i + 1}/${ctx.repeat})`,
        );
        const r = await sideBySide(ctx);
        sdk.push(r.sdk);
        batch.push(r.batch);
        socket.push(r.socket);
        api.push(await viaSidecar(ctx));
      }
      const s = median(sdk);
      const a = median(api);
      const b = median(batch);
      const u = median(socket);
      rows.push({
        name: 'sidecar.sdk.step_p50',
        value: s,
        unit: 'ms',
        note: `${WRITES} writes of 1 KiB + checkpoint`,
      });
      rows.push({ name: 'sidecar.batch.step_p50', value: b, unit: 'ms', note: 'one POST /batch per step' });
      rows.push({
        name: 'sidecar.batch_socket.step_p50',
        value: u,
        unit: 'ms',
        note: 'one POST /batch per step, over api.socket',
      });
      rows.push({
        name: 'sidecar.api.step_p50',
        value: a,
        unit: 'ms',
        note: 'one request per write + POST /checkpoint',
      });
      // Per run, then the median: the paths of one run shared its load.
      ratios['sidecar.step_over_sdk'] = median(batch.map((x, i) => x / sdk[i]!));
      ratios['sidecar.step_socket_over_sdk'] = median(socket.map((x, i) => x / sdk[i]!));
      ratios['sidecar.step_single_requests_over_sdk'] = a / s;
    }
    if (ctx.wants('sidecar.10mb')) {
      const rounds = 8;
      const sdk: number[] = [];
      const api: number[] = [];
      for (let i = 0; i < ctx.repeat; i++) {
        ctx.progress(
          `  sidecar.10mb_1pct: ${rounds} checkpoints via SDK (tracked) and a merge patch (${i + 1}/${ctx.repeat})`,
        );
        sdk.push(await bigViaSdk(ctx, rounds));
        api.push(await bigViaSidecar(ctx, rounds));
      }
      const s = median(sdk);
      const a = median(api);
      rows.push({
        name: 'sidecar.10mb_1pct.sdk_p50',
        value: s,
        unit: 'ms',
        note: 'rp.track + rp.checkpoint',
      });
      rows.push({
        name: 'sidecar.10mb_1pct.patch_p50',
        value: a,
        unit: 'ms',
        note: 'POST /checkpoint, application/merge-patch+json',
      });
      ratios['sidecar.10mb_1pct.checkpoint_over_sdk'] = a / s;
    }
    return { rows, ratios };
  },
};
