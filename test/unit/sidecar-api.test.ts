/**
 * The sidecar's HTTP API against real instances (in-process sidecars on the shared NATS server,
 * memory stores): auth, every route, every error code the API documents.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deserialize, serialize } from 'node:v8';
import type { NatsConnection } from '@nats-io/transport-node';
import { pino } from 'pino';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { parseConfig } from '../../src/config/load.js';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { jsonProblem, ROUTES, V8_MEDIA_TYPE } from '../../src/sidecar/api.js';
import { Sidecar } from '../../src/sidecar/sidecar.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';

const TOKEN = 'test-token-0123456789abcdef';
let nc: NatsConnection;
const apps: string[] = [];
const running: { sidecar: Sidecar; done: Promise<number> }[] = [];

beforeAll(async () => {
  nc = await requireNats();
});
afterAll(async () => {
  for (const r of running) r.sidecar.stop();
  await Promise.all(running.map((r) => r.done));
  for (const app of apps) await deleteApp(nc, app);
  await nc?.close();
});

/** Starts an in-process sidecar without an app command; resolves once its API listens. */
async function startSidecar(
  app: string,
  nodeId: string,
  extra: Record<string, unknown> = {},
  command: string[] = [],
) {
  const config = parseConfig(
    {
      app,
      nodeId,
      nats: { servers: NATS_URL },
      storage: { kind: 'memory' },
      leaseTtlMs: 1000,
      api: { port: 0, token: TOKEN, maxBodyBytes: 4096 },
      ...extra,
    },
    'test',
    {},
  );
  const sidecar = new Sidecar({
    config,
    command,
    storage: () => memoryAdapter(),
    logger: pino({ level: 'silent' }),
  });
  const done = sidecar.run();
  const entry = { sidecar, done };
  running.push(entry);
  const deadline = Date.now() + 10_000;
  while (sidecar.port === 0) {
    if (Date.now() > deadline) throw new Error('the sidecar API did not start within 10 s');
    await Promise.race([done.then(() => undefined), new Promise((r) => setImmediate(r))]);
  }
  const base = `http://127.0.0.1:${sidecar.port}`;
  const call = (path: string, init: RequestInit = {}, token: string | null = TOKEN) =>
    fetch(base + path, {
      ...init,
      headers: { ...(token ? { Authorization: `Bearer ${token}` } : {}), ...(init.headers ?? {}) },
    });
  /** Polls GET /status until `state` (an HTTP state with a deadline, not a sleep). */
  const waitState = async (state: string, ms = 15_000) => {
    const end = Date.now() + ms;
    for (;;) {
      const s = (await (await call('/status')).json()) as { state: string };
      if (s.state === state) return s;
      if (Date.now() > end) throw new Error(`sidecar ${nodeId} not ${state} within ${ms} ms (is ${s.state})`);
      await new Promise((r) => setTimeout(r, 25));
    }
  };
  return { sidecar, done, call, waitState, base, stop: () => (sidecar.stop(), done) };
}

async function errorOf(res: Response): Promise<{ code: string; message: string }> {
  expect(res.headers.get('content-type')).toMatch(/application\/json/);
  return ((await res.json()) as { error: { code: string; message: string } }).error;
}

describe('sidecar API', () => {
  const app = freshApp('sidecar-api');
  apps.push(app);
  let a: Awaited<ReturnType<typeof startSidecar>>;

  beforeAll(async () => {
    a = await startSidecar(app, 'a', { initialState: { n: 0 } });
    await a.waitState('primary');
  });

  it('needs the bearer token on every route but /healthz and /metrics', async () => {
    for (const [path, method] of [
      ['/status', 'GET'],
      ['/state', 'GET'],
      ['/checkpoint', 'POST'],
      ['/store/k', 'GET'],
      ['/store/k', 'PUT'],
      ['/store/k', 'DELETE'],
    ] as const) {
      const none = await a.call(path, { method }, null);
      expect(none.status, `${method} ${path} without a token`).toBe(401);
      expect(none.headers.get('www-authenticate')).toMatch(/^Bearer/);
      expect((await errorOf(none)).message).toMatch(/no bearer token.*RESTARTPOINT_TOKEN_FILE/);
      const wrong = await a.call(path, { method }, `${TOKEN}x`);
      expect(wrong.status).toBe(401);
      expect((await errorOf(wrong)).message).toMatch(/wrong bearer token/);
    }
    const health = await a.call('/healthz', {}, null);
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ ok: true, state: 'primary' });
    const metrics = await a.call('/metrics', {}, null);
    expect(metrics.status).toBe(200);
    expect(metrics.headers.get('content-type')).toMatch(/text\/plain/);
    expect(await metrics.text()).toMatch(/restartpoint_/);
  });

  it('GET /metrics counts the checkpoints taken through the API and shows role and epoch', async () => {
    const count = async (): Promise<number> => {
      const text = await (await a.call('/metrics', {}, null)).text();
      let n = 0;
      for (const m of text.matchAll(/^restartpoint_checkpoints_total\{[^}]*\} (\d+)$/gm)) n += Number(m[1]);
      return n;
    };
    const before = await count();
    for (let i = 0; i < 3; i++) {
      const res = await a.call('/checkpoint', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ n: 100 + i }),
      });
      expect(res.status).toBe(200);
    }
    expect((await count()) - before).toBe(3);
    const text = await (await a.call('/metrics', {}, null)).text();
    expect(text).toMatch(/^restartpoint_role\{[^}]*state="primary"[^}]*\} 1$/m);
    expect(text).toMatch(/^restartpoint_epoch\{[^}]*node="a"[^}]*\} [1-9]\d*$/m);
    expect(text).toMatch(/^restartpoint_checkpoint_duration_seconds_count\{[^}]*\} [1-9]\d*$/m);
  });

  it('answers unknown routes 404 and wrong methods 405 with Allow', async () => {
    const nf = await a.call('/nope');
    expect(nf.status).toBe(404);
    expect((await errorOf(nf)).code).toBe('NOT_FOUND');
    const wm = await a.call('/checkpoint', { method: 'GET' });
    expect(wm.status).toBe(405);
    expect(wm.headers.get('allow')).toBe('POST');
    expect((await errorOf(wm)).code).toBe('METHOD_NOT_ALLOWED');
  });

  it('GET /state gives the fresh state as JSON with the epoch and resumed-from headers', async () => {
    const res = await a.call('/state');
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ n: 0 });
    expect(Number(res.headers.get('restartpoint-epoch'))).toBeGreaterThanOrEqual(1);
    expect(res.headers.get('restartpoint-resumed-from')).toBe('0');
    const v8 = await a.call('/state', { headers: { Accept: V8_MEDIA_TYPE } });
    expect(v8.headers.get('content-type')).toBe(V8_MEDIA_TYPE);
    expect(deserialize(Buffer.from(await v8.arrayBuffer()))).toEqual({ n: 0 });
  });

  it('POST /checkpoint takes JSON and v8, acknowledges with epoch and checkpoint numbers', async () => {
    const r1 = await a.call('/checkpoint', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json; charset=utf-8' },
      body: JSON.stringify({ n: 1 }),
    });
    expect(r1.status).toBe(200);
    const ack1 = (await r1.json()) as { epoch: number; checkpoint: number };
    expect(ack1.checkpoint).toBeGreaterThanOrEqual(1);
    const r2 = await a.call('/checkpoint', {
      method: 'POST',
      headers: { 'Content-Type': V8_MEDIA_TYPE },
      body: serialize({ n: 2, m: new Map([['x', 1n]]) }),
    });
    expect(r2.status).toBe(200);
    const ack2 = (await r2.json()) as { epoch: number; checkpoint: number };
    expect(ack2).toEqual({ epoch: ack1.epoch, checkpoint: ack1.checkpoint + 1 });
    const status = (await (await a.call('/status')).json()) as Record<string, unknown>;
    expect(status).toMatchObject({
      app,
      nodeId: 'a',
      state: 'primary',
      epoch: ack1.epoch,
      lastCheckpoint: { checkpoint: ack2.checkpoint },
      process: null,
      api: { port: a.sidecar.port },
    });
  });

  it('POST /checkpoint refuses bad JSON, bad v8, other types and bodies over the limit', async () => {
    const post = (type: string, body: string | Uint8Array) =>
      a.call('/checkpoint', { method: 'POST', headers: { 'Content-Type': type }, body });
    const badJson = await post('application/json', '{"n": ');
    expect(badJson.status).toBe(400);
    expect(await errorOf(badJson)).toMatchObject({ code: 'BAD_JSON', message: /not valid JSON/ });
    const badV8 = await post(V8_MEDIA_TYPE, 'not v8 at all');
    expect(badV8.status).toBe(400);
    expect(await errorOf(badV8)).toMatchObject({ code: 'BAD_V8', message: /v8\.serialize/ });
    const text = await post('text/plain', '{}');
    expect(text.status).toBe(415);
    expect(await errorOf(text)).toMatchObject({
      code: 'UNSUPPORTED_MEDIA_TYPE',
      message: /application\/json/,
    });
    const big = await post('application/json', JSON.stringify({ s: 'x'.repeat(5000) }));
    expect(big.status).toBe(413);
    expect(await errorOf(big)).toMatchObject({ code: 'TOO_LARGE', message: /api\.maxBodyBytes/ });
  });

  it('PUT, GET and DELETE /store/{key} with percent-encoded keys and raw bytes', async () => {
    const key = encodeURIComponent('orders/42 ü');
    const bytes = Buffer.from([0, 1, 2, 255]);
    const put = await a.call(`/store/${key}`, { method: 'PUT', body: bytes });
    expect(put.status).toBe(204);
    const got = await a.call(`/store/${key}`);
    expect(got.status).toBe(200);
    expect(got.headers.get('content-type')).toBe('application/octet-stream');
    expect(Buffer.from(await got.arrayBuffer())).toEqual(bytes);
    expect((await a.call(`/store/${key}`, { method: 'DELETE' })).status).toBe(204);
    const gone = await a.call(`/store/${key}`);
    expect(gone.status).toBe(404);
    expect((await errorOf(gone)).code).toBe('NO_SUCH_KEY');
    const badEnc = await a.call('/store/%E0%A4%A', { method: 'PUT', body: 'v' });
    expect(badEnc.status).toBe(400);
    expect(await errorOf(badEnc)).toMatchObject({ code: 'BAD_KEY', message: /percent-encoding/ });
    const long = await a.call(`/store/${'k'.repeat(1100)}`, { method: 'PUT', body: 'v' });
    expect(long.status).toBe(400);
    expect((await errorOf(long)).message).toMatch(/1024 bytes/);
    const empty = await a.call('/store/', { method: 'GET' });
    expect(empty.status).toBe(400);
  });

  it('a configured key limit gives 400 LIMIT, a value limit 413 LIMIT', async () => {
    const app2 = freshApp('sidecar-limits');
    apps.push(app2);
    const l = await startSidecar(app2, 'l', { limits: { maxKeyBytes: 8, maxValueBytes: 16 } });
    await l.waitState('primary');
    const key = await l.call('/store/123456789', { method: 'PUT', body: 'v' });
    expect(key.status).toBe(400);
    expect(await errorOf(key)).toMatchObject({ code: 'LIMIT', message: /limits\.maxKeyBytes/ });
    const value = await l.call('/store/k', { method: 'PUT', body: 'x'.repeat(17) });
    expect(value.status).toBe(413);
    expect(await errorOf(value)).toMatchObject({ code: 'LIMIT', message: /limits\.maxValueBytes/ });
    expect(await l.stop()).toBe(0);
  });

  it('PUT with an empty key is refused', async () => {
    const empty = await a.call('/store/', { method: 'PUT', body: 'v' });
    expect(empty.status).toBe(400);
  });

  it('a second sidecar is a healthy standby that refuses primary-only calls with 409 NOT_PRIMARY', async () => {
    const b = await startSidecar(app, 'b');
    await b.waitState('standby', 5_000);
    const health = await b.call('/healthz', {}, null);
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ ok: true, state: 'standby' });
    const cp = await b.call('/checkpoint', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: '{}',
    });
    expect(cp.status).toBe(409);
    expect(await errorOf(cp)).toMatchObject({ code: 'NOT_PRIMARY', message: /standby/ });
    expect((await b.call('/state')).status).toBe(409);
    expect((await b.call('/store/k')).status).toBe(409);
    const status = (await (await b.call('/status')).json()) as Record<string, unknown>;
    expect(status).toMatchObject({ state: 'standby', epoch: null, nodeId: 'b' });
    expect(await b.stop()).toBe(0);
  });

  it('after a clean stop, the next sidecar resumes the last checkpoint; a Map state is 406 as JSON, exact as v8', async () => {
    const last = await a.call('/checkpoint', {
      method: 'POST',
      headers: { 'Content-Type': V8_MEDIA_TYPE },
      body: serialize({ n: 3, m: new Map([['k', 7n]]) }),
    });
    const ack = (await last.json()) as { epoch: number; checkpoint: number };
    expect(await a.stop()).toBe(0);
    const c = await startSidecar(app, 'c');
    await c.waitState('primary');
    const json = await c.call('/state');
    expect(json.status).toBe(406);
    expect(await errorOf(json)).toMatchObject({
      code: 'NOT_JSON',
      message: /state\.m is a Map.*Accept: application\/x-v8-serialized/,
    });
    const v8 = await c.call('/state', { headers: { Accept: `${V8_MEDIA_TYPE}, application/json;q=0.5` } });
    expect(v8.status).toBe(200);
    expect(v8.headers.get('restartpoint-resumed-from')).toBe(String(ack.checkpoint));
    expect(Number(v8.headers.get('restartpoint-epoch'))).toBeGreaterThan(ack.epoch);
    expect(deserialize(Buffer.from(await v8.arrayBuffer()))).toEqual({ n: 3, m: new Map([['k', 7n]]) });
    expect(await c.stop()).toBe(0);
  });
});

describe('supervised process', () => {
  const node = process.execPath;

  it('exits with the app status and releases the lease: the next node takes over without waiting', async () => {
    const app = freshApp('sidecar-exit');
    apps.push(app);
    const env = `process.exit(process.env.RESTARTPOINT_RESUMED_FROM === '0' && process.env.RESTARTPOINT_SIDECAR_URL.startsWith('http://127.0.0.1:') ? 7 : 9)`;
    const a = await startSidecar(app, 'a', { leaseTtlMs: 5000 }, [node, '-e', env]);
    expect(await a.done).toBe(7);
    const b = await startSidecar(app, 'b', { leaseTtlMs: 5000 });
    const status = (await b.waitState('primary', 4_000)) as unknown as {
      takeover: { detectMs: number; previous?: string };
    };
    // A released lease: no TTL to wait out, and no previous holder whose lease ran out.
    expect(status.takeover.previous).toBeUndefined();
    expect(status.takeover.detectMs).toBeLessThan(5000);
    expect(await b.stop()).toBe(0);
  });

  it("restart 'on-failure' rejoins as a standby up to maxRestarts, then exits with the status", async () => {
    const app = freshApp('sidecar-restart');
    apps.push(app);
    const a = await startSidecar(app, 'a', { process: { restart: 'on-failure', maxRestarts: 2 } }, [
      node,
      '-e',
      'process.exit(3)',
    ]);
    expect(await a.done).toBe(3);
    expect(a.sidecar.status().process).toMatchObject({
      restarts: 2,
      running: false,
      lastExit: { code: 3, status: 3 },
    });
  });

  it('a command that cannot start is status 127', async () => {
    const app = freshApp('sidecar-enoent');
    apps.push(app);
    const a = await startSidecar(app, 'a', {}, ['/nonexistent/restartpoint-test-app']);
    expect(await a.done).toBe(127);
  });

  it('stop() stops a running app with SIGTERM (SIGKILL after stopTimeoutMs) and resolves 0', async () => {
    const app = freshApp('sidecar-stop');
    apps.push(app);
    // An app that ignores SIGTERM (only the SIGKILL after stopTimeoutMs ends it), and says it
    // is ready, once its handler is in place, through the API: PUT /store/ready.
    const script = [
      "process.on('SIGTERM', () => {});",
      "const token = require('fs').readFileSync(process.env.RESTARTPOINT_TOKEN_FILE, 'utf8').trim();",
      "void fetch(process.env.RESTARTPOINT_SIDECAR_URL + '/store/ready', { method: 'PUT', body: '1', headers: { Authorization: 'Bearer ' + token } });",
      'setInterval(() => {}, 1000);',
    ].join('\n');
    const a = await startSidecar(app, 'a', { process: { stopTimeoutMs: 300 } }, [node, '-e', script]);
    await a.waitState('primary');
    const end = Date.now() + 10_000;
    while ((await a.call('/store/ready')).status !== 200) {
      if (Date.now() > end) throw new Error('the app did not PUT /store/ready within 10 s');
      await new Promise((r) => setTimeout(r, 25));
    }
    const s = (await (await a.call('/status')).json()) as { process: { running: boolean; pid: number } };
    expect(s.process.running).toBe(true);
    expect((await a.call('/healthz', {}, null)).status).toBe(200);
    expect(await a.stop()).toBe(0);
    expect(a.sidecar.status().process).toMatchObject({
      running: false,
      lastExit: { signal: 'SIGKILL', status: 137 },
    });
  });
});

describe('standby start problems', () => {
  it('NATS unreachable: retried, /healthz 503 says why, stop() still ends it with 0', async () => {
    const app = freshApp('sidecar-nonats');
    const a = await startSidecar(app, 'a', { nats: { servers: 'nats://127.0.0.1:1' } });
    const end = Date.now() + 15_000;
    let body: { ok: boolean; state: string; reason?: string } = { ok: true, state: '' };
    while (Date.now() < end) {
      const res = await a.call('/healthz', {}, null);
      body = (await res.json()) as typeof body;
      if (!body.ok) {
        expect(res.status).toBe(503);
        break;
      }
      await new Promise((r) => setTimeout(r, 25));
    }
    expect(body).toMatchObject({
      ok: false,
      state: 'standby',
      reason: expect.stringMatching(/cannot connect to NATS at nats:\/\/127\.0\.0\.1:1/),
    });
    expect(await a.stop()).toBe(0);
  });
});

describe('sidecar API: POST /batch, merge patches, keep-alive, Unix socket (issue 16)', () => {
  const app = freshApp('sidecar-batch');
  apps.push(app);
  let a: Awaited<ReturnType<typeof startSidecar>>;
  const json = (body: unknown, type = 'application/json') => ({
    method: 'POST',
    headers: { 'Content-Type': type },
    body: JSON.stringify(body),
  });

  beforeAll(async () => {
    a = await startSidecar(app, 'a', {
      initialState: { n: 0 },
      api: { port: 0, token: TOKEN, maxBodyBytes: 1 << 20 },
    });
    await a.waitState('primary');
  });

  it('makes the writes, then the checkpoint that seals them, in one request', async () => {
    const res = await a.call(
      '/batch',
      json({
        writes: [
          { key: 'b1', text: 'hello' },
          { op: 'put', key: 'b2', value: Buffer.from([0, 1, 2, 255]).toString('base64') },
          { key: 'gone', text: 'x' },
          { op: 'delete', key: 'gone' },
        ],
        checkpoint: { state: { n: 1, m: { a: 1, b: 2 } } },
      }),
    );
    expect(res.status).toBe(200);
    expect(res.headers.get('connection')).toBe('keep-alive');
    expect(res.headers.get('keep-alive')).toMatch(/timeout=65/);
    const body = (await res.json()) as { writes: number; checkpoint: { epoch: number; checkpoint: number } };
    expect(body.writes).toBe(4);
    expect(body.checkpoint.checkpoint).toBeGreaterThanOrEqual(1);
    expect(await (await a.call('/store/b1')).text()).toBe('hello');
    expect(Buffer.from(await (await a.call('/store/b2')).arrayBuffer())).toEqual(Buffer.from([0, 1, 2, 255]));
    expect((await a.call('/store/gone')).status).toBe(404);
    // Writes alone: answered once they are in the store.
    const w = await a.call('/batch', json({ writes: [{ key: 'b3', text: 'w' }] }));
    expect(await w.json()).toEqual({ writes: 1 });
    expect(await (await a.call('/store/b3')).text()).toBe('w');
  });

  it('reads a batch that arrives in many chunks whole (a body larger than one socket read)', async () => {
    const values = Array.from({ length: 200 }, (_, i) => Buffer.alloc(1500, i));
    const body = json({ writes: values.map((v, i) => ({ key: `big${i}`, value: v.toString('base64') })) });
    expect(body.body.length).toBeGreaterThan(4 * 65536);
    const res = await a.call('/batch', body);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ writes: 200 });
    for (const i of [0, 77, 199]) {
      expect(Buffer.from(await (await a.call(`/store/big${i}`)).arrayBuffer())).toEqual(values[i]);
    }
  });

  it('refuses a malformed batch whole, before writing anything', async () => {
    for (const bad of [
      [],
      { writes: {} },
      {
        writes: [
          { key: 'x1', text: 'a' },
          { key: '', text: 'b' },
        ],
      },
      {
        writes: [
          { key: 'x1', text: 'a' },
          { key: 'x2', value: 'not base64!' },
        ],
      },
      { writes: [{ key: 'x1', text: 'a', value: 'AA==' }] },
      { writes: [{ op: 'delete', key: 'x1', text: 'a' }] },
      { writes: [{ key: 'x1', text: 'a' }], checkpoint: { state: 1, patch: {} } },
      { writes: [{ key: 'x1', text: 'a' }], extra: 1 },
    ]) {
      const res = await a.call('/batch', json(bad));
      expect(res.status, JSON.stringify(bad)).toBe(400);
      expect((await errorOf(res)).code).toBe('BAD_BATCH');
    }
    const proto = await a.call('/batch', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: '{"writes":[{"key":"x1","text":"a"}],"checkpoint":{"patch":{"__proto__":{"p":1}}}}',
    });
    expect((await errorOf(proto)).code).toBe('BAD_PATCH');
    expect((await a.call('/store/x1')).status).toBe(404);
    expect((await a.call('/batch', { method: 'POST', body: '{}' })).status).toBe(415);
  });

  it('checkpoints merge patches through the tracked path, and a standby resumes the patched state', async () => {
    const big = Object.fromEntries(
      Array.from({ length: 200 }, (_, i) => [`r${i}`, { v: i, s: 'x'.repeat(20) }]),
    );
    expect((await a.call('/checkpoint', json({ n: 10, recs: big }))).status).toBe(200);
    const p1 = await a.call(
      '/batch',
      json({
        writes: [{ key: 'p', text: '1' }],
        checkpoint: { patch: { n: 11, recs: { r3: { v: 333 }, r4: null, r200: { v: 200 } } } },
      }),
    );
    expect(p1.status).toBe(200);
    const p2 = await a.call(
      '/checkpoint',
      json({ recs: { r5: { s: null } }, extra: [1, 2] }, 'application/merge-patch+json'),
    );
    expect(p2.status).toBe(200);
    const status = (await (await a.call('/status')).json()) as { lastCheckpoint: { imagePath: string } };
    expect(status.lastCheckpoint.imagePath).toBe('tracked');
    // GET /state still answers the state this node started from.
    expect(await (await a.call('/state')).json()).toEqual({ n: 0 });

    const want = structuredClone(big) as Record<string, { v: number; s?: string }>;
    want.r3 = { v: 333, s: 'x'.repeat(20) };
    delete want.r4;
    want.r200 = { v: 200 };
    want.r5 = { v: 5 };
    const b = await startSidecar(app, 'b', { initialState: { n: 0 } });
    await b.waitState('standby');
    expect(await a.stop()).toBe(0);
    await b.waitState('primary');
    expect(await (await b.call('/state')).json()).toEqual({ n: 11, recs: want, extra: [1, 2] });
    expect(await (await b.call('/store/p')).text()).toBe('1');
    // A patch on the new primary applies to the state it resumed from.
    expect((await b.call('/checkpoint', json({ n: 12 }, 'application/merge-patch+json'))).status).toBe(200);
    expect(await b.stop()).toBe(0);
  }, 60_000);

  it('serves the API on a Unix-domain socket too (mode 0600)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rp-sock-'));
    const socket = join(dir, 'api.sock');
    const u = await startSidecar(freshApp('sidecar-sock'), 'u', {
      api: { port: 0, token: TOKEN, maxBodyBytes: 4096, socket },
    });
    apps.push(u.sidecar.status().app);
    expect(statSync(socket).mode & 0o777).toBe(0o600);
    const get = (path: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = httpRequest(
          { socketPath: socket, path, headers: { Authorization: `Bearer ${TOKEN}` } },
          (res) => {
            let body = '';
            res.on('data', (c: Buffer) => (body += c.toString()));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
          },
        );
        req.on('error', reject);
        req.end();
      });
    const s = await get('/status');
    expect(s.status).toBe(200);
    expect(JSON.parse(s.body)).toMatchObject({ nodeId: 'u' });
    expect((await get('/healthz')).status).toBeLessThan(600);
    expect(await u.stop()).toBe(0);
    expect(existsSync(socket)).toBe(false);
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('docs/sidecar-api.yaml', () => {
  const spec = parseYaml(readFileSync(new URL('../../docs/sidecar-api.yaml', import.meta.url), 'utf8')) as {
    openapi: string;
    paths: Record<string, Record<string, unknown>>;
    components: {
      schemas: { Error: { properties: { error: { properties: { code: { enum: string[] } } } } } };
    };
  };

  it('documents exactly the routes and methods the API serves', () => {
    expect(spec.openapi).toBe('3.1.0');
    const documented = Object.fromEntries(
      Object.entries(spec.paths).map(([path, ops]) => [
        path,
        Object.keys(ops)
          .filter((k) => k !== 'parameters')
          .map((m) => m.toUpperCase())
          .sort(),
      ]),
    );
    const served = Object.fromEntries(Object.entries(ROUTES).map(([p, m]) => [p, [...m].sort()]));
    expect(documented).toEqual(served);
  });

  it('lists every error code the API can answer', () => {
    const source = readFileSync(new URL('../../src/sidecar/api.ts', import.meta.url), 'utf8');
    const used = new Set([...source.matchAll(/HttpError\(\s*[^,()]+,\s*'([A-Z0-9_]+)'/g)].map((m) => m[1]!));
    expect(used.size).toBeGreaterThan(15);
    expect([...used].sort()).toEqual(
      [...spec.components.schemas.Error.properties.error.properties.code.enum].sort(),
    );
  });
});

describe('jsonProblem', () => {
  it('names the first value JSON cannot carry, with its path', () => {
    expect(jsonProblem({ a: [1, 'x', null, { b: true }] })).toBeUndefined();
    expect(jsonProblem({ a: { b: 1n } })).toBe('state.a.b is a bigint');
    expect(jsonProblem({ 'a b': new Date(0) })).toBe('state["a b"] is a Date');
    expect(jsonProblem([1, NaN])).toBe('state[1] is NaN (JSON has no such number)');
    expect(jsonProblem({ s: new Set() })).toBe('state.s is a Set');
    expect(jsonProblem({ u: undefined })).toBe('state.u is undefined');
    const cyc: Record<string, unknown> = {};
    cyc.self = cyc;
    expect(jsonProblem(cyc)).toBe('state.self is a cycle (it contains itself)');
  });
});
