/**
 * sidecar.*: what the sidecar's local HTTP API costs an app, against the SDK in the same
 * process, same run, same NATS server and memory store: a step is 20 writes of 1 KiB and a
 * checkpoint of a small JSON state.
 *
 * - baseline: `rp.store.put` × 20 + `rp.checkpoint(state)` through the SDK;
 * - subject: `PUT /store/{key}` × 20 + `POST /checkpoint` (JSON) to an in-process sidecar, over
 *   loopback HTTP with the bearer token (what a Python or Go app does).
 *
 * Ratio: `sidecar.step_over_sdk` (p50 step latency through the API ÷ through the SDK).
 */
import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { memoryAdapter } from '../adapters/memory/index.js';
import { parseConfig } from '../src/config/load.js';
import { Restartpoint } from '../src/index.js';
import { Sidecar } from '../src/sidecar/sidecar.js';
import { median, type BenchContext, type BenchRow, type Suite } from './harness.js';

const STEPS = 200;
const WRITES = 20;
const VALUE = randomBytes(1024);

function p50(xs: number[]): number {
  return median(xs);
}

async function viaSdk(ctx: BenchContext): Promise<number> {
  const rp = await Restartpoint.start({
    app: `bench-sdk-${randomBytes(4).toString('hex')}`,
    nodeId: 'bench',
    nats: { servers: ctx.nats },
    storage: memoryAdapter(),
    sidecar: false,
  });
  const lat: number[] = [];
  try {
    for (let i = 0; i < STEPS; i++) {
      const t0 = performance.now();
      await Promise.all(Array.from({ length: WRITES }, (_, j) => rp.store.put(`k${j}`, VALUE)));
      await rp.checkpoint({ i, note: 'bench' });
      lat.push(performance.now() - t0);
    }
  } finally {
    await rp.close();
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
    for (let i = 0; i < STEPS; i++) {
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
      lat.push(performance.now() - t0);
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
    const sdk: number[] = [];
    const api: number[] = [];
    for (let i = 0; i < ctx.repeat; i++) {
      ctx.progress(`  sidecar: ${STEPS} steps via SDK and via the API (${i + 1}/${ctx.repeat})`);
      sdk.push(await viaSdk(ctx));
      api.push(await viaSidecar(ctx));
    }
    const s = median(sdk);
    const a = median(api);
    rows.push({
      name: 'sidecar.sdk.step_p50',
      value: s,
      unit: 'ms',
      note: `${WRITES} writes of 1 KiB + checkpoint`,
    });
    rows.push({ name: 'sidecar.api.step_p50', value: a, unit: 'ms', note: 'same over loopback HTTP' });
    return { rows, ratios: { 'sidecar.step_over_sdk': a / s } };
  },
};
