/**
 * `restartpoint sidecar` end to end: real sidecar processes (node bin/restartpoint.js sidecar)
 * each supervising the Python ledger (examples/python/app.py), file stores in temp dirs, the
 * shared NATS server; a host dies by SIGKILL of the sidecar's whole process group.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { deserialize } from 'node:v8';
import type { NatsConnection } from '@nats-io/transport-node';
import { Redis } from 'ioredis';
import pg from 'pg';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = join(ROOT, 'bin/restartpoint.js');
const PY_APP = join(ROOT, 'examples/python/app.py');

type Line = Record<string, unknown> & { src: 'app' | 'log' };

/** One `restartpoint sidecar` process (its own process group) and what it prints. */
class SidecarProc {
  readonly child: ChildProcess;
  readonly #closed: Promise<number | null>;
  readonly lines: Line[] = [];
  #listeners: ((l: Line) => void)[] = [];
  stderr = '';

  constructor(
    readonly name: string,
    readonly dir: string,
    args: string[],
    env: NodeJS.ProcessEnv = {},
  ) {
    this.child = spawn(process.execPath, [BIN, 'sidecar', ...args], {
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    this.#closed = new Promise((r) => this.child.once('close', (code) => r(code)));
    const feed = (src: 'app' | 'log') => (text: string) => {
      let l: Line;
      try {
        l = { ...(JSON.parse(text) as Record<string, unknown>), src };
      } catch {
        return;
      }
      this.lines.push(l);
      for (const fn of [...this.#listeners]) fn(l);
    };
    createInterface({ input: this.child.stdout! }).on('line', feed('app'));
    createInterface({ input: this.child.stderr! }).on('line', (t) => {
      this.stderr = (this.stderr + t + '\n').slice(-6000);
      feed('log')(t);
    });
  }

  /** The first line (already printed or to come) matching `pred`; rejects on exit or deadline. */
  waitFor(pred: (l: Line) => boolean, what: string, timeoutMs = 20_000): Promise<Line> {
    const seen = this.lines.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const done = (): void => {
        this.#listeners = this.#listeners.filter((f) => f !== on);
        clearTimeout(timer);
        this.child.off('exit', onExit);
      };
      const on = (l: Line): void => {
        if (pred(l)) {
          done();
          resolve(l);
        }
      };
      const onExit = (code: number | null, sig: string | null): void => {
        done();
        reject(
          new Error(`sidecar ${this.name} exited (${code ?? sig}) waiting for ${what}:\n${this.stderr}`),
        );
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`sidecar ${this.name}: no ${what} within ${timeoutMs} ms:\n${this.stderr}`));
      }, timeoutMs);
      this.#listeners.push(on);
      this.child.once('exit', onExit);
    });
  }

  /** Resolves with the exit code once the process exited and its output was read to the end. */
  exited(): Promise<number | null> {
    return this.#closed;
  }

  /** Sends `sig` to the whole process group (the sidecar and its app). */
  signalGroup(sig: NodeJS.Signals): void {
    process.kill(-this.child.pid!, sig);
  }

  async killGroup(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) {
      try {
        process.kill(-this.child.pid!, 'SIGKILL'); // an orphaned app, if any
      } catch {
        /* the group is gone */
      }
      return;
    }
    const gone = this.exited();
    this.signalGroup('SIGKILL');
    await gone;
  }
}

let nc: NatsConnection;
let root: string;
const procs: SidecarProc[] = [];
const apps: string[] = [];

beforeAll(async () => {
  nc = await requireNats();
  root = await mkdtemp(join(tmpdir(), 'rp-sidecar-'));
  const py = spawnSync('python3', ['--version'], { encoding: 'utf8' });
  if (py.status !== 0) throw new Error('these tests need python3 on PATH (the example app is Python)');
});
afterAll(async () => {
  await Promise.all(procs.map((p) => p.killGroup()));
  for (const app of apps) await deleteApp(nc, app);
  await nc?.close();
  await rm(root, { recursive: true, force: true });
});

interface Node {
  proc: SidecarProc;
  tokenFile: string;
  portFile: string;
  /** Calls the node's API (port from its port file), with its token unless `auth` is false. */
  call(path: string, init?: RequestInit, auth?: boolean): Promise<Response>;
}

/** Writes a config for node `id` of `app` and starts its sidecar with the Python ledger. */
async function startNode(app: string, id: string, intervalMs = 40): Promise<Node> {
  const dir = join(root, `${app}-${id}`);
  const tokenFile = join(dir, 'api.token');
  const portFile = join(dir, 'api.port');
  const config = join(root, `${app}-${id}.yaml`);
  await writeFile(
    config,
    [
      `app: ${app}`,
      `nodeId: ${id}`,
      `nats: { servers: '${NATS_URL}' }`,
      `storage: { kind: file, dir: '${join(dir, 'store')}' }`,
      'leaseTtlMs: 1000',
      'initialState: { steps: 0, total: 0, mirror: {} }',
      `api: { port: 0, tokenFile: '${tokenFile}', portFile: '${portFile}' }`,
      'process: { stopTimeoutMs: 3000 }',
      '',
    ].join('\n'),
  );
  const proc = new SidecarProc(id, dir, ['--config', config, '--', 'python3', PY_APP], {
    LEDGER_INTERVAL_MS: String(intervalMs),
  });
  procs.push(proc);
  const listening = await proc.waitFor((l) => l.msg === 'api listening', `${id} api listening`);
  expect(Number((await readFile(portFile, 'utf8')).trim())).toBe(listening.port);
  const call = async (path: string, init: RequestInit = {}, auth = true): Promise<Response> => {
    const token = (await readFile(tokenFile, 'utf8')).trim();
    return fetch(`http://127.0.0.1:${Number(listening.port)}${path}`, {
      ...init,
      headers: { ...(auth ? { Authorization: `Bearer ${token}` } : {}), ...(init.headers ?? {}) },
    });
  };
  return { proc, tokenFile, portFile, call };
}

/** Polls `/healthz` until its `state` is `want` (15 s deadline); resolves the last state seen. */
async function healthState(n: Node, want: string): Promise<string> {
  const deadline = Date.now() + 15_000;
  let state = '';
  while (Date.now() < deadline) {
    state = ((await (await n.call('/healthz', {}, false)).json()) as { state: string }).state;
    if (state === want) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return state;
}

const step = (min: number) => (l: Line) => l.src === 'app' && l.ev === 'step' && Number(l.checkpoint) >= min;

describe('restartpoint sidecar with a Python app', () => {
  it('survives SIGKILL of the primary host: the standby resumes the app at an acknowledged checkpoint, store and image agree', async () => {
    const app = freshApp('sidecar');
    apps.push(app);
    const a = await startNode(app, 'a');
    const aResumed = await a.proc.waitFor((l) => l.ev === 'resumed', 'a app resumed');
    expect(aResumed).toMatchObject({ checkpoint: 0, steps: 0 });

    const b = await startNode(app, 'b');
    await b.proc.waitFor((l) => l.msg === 'standby', 'b standby');
    // The standby serves its API: health without a token, 409 for what only a primary does.
    const health = await b.call('/healthz', {}, false);
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ ok: true, state: 'standby' });
    expect((await b.call('/status', {}, false)).status).toBe(401);
    const notPrimary = await b.call('/checkpoint', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: '{"steps":1}',
    });
    expect(notPrimary.status).toBe(409);
    expect(((await notPrimary.json()) as { error: { code: string } }).error.code).toBe('NOT_PRIMARY');
    expect((await stat(b.tokenFile)).mode & 0o777).toBe(0o600);
    expect((await readFile(b.tokenFile, 'utf8')).trim()).toMatch(/^[0-9a-f]{64}$/);

    // Let A's app do acknowledged work, then the host dies: sidecar and app, SIGKILL, at once.
    await a.proc.waitFor(step(15), 'a app acks 15 checkpoints');
    a.proc.signalGroup('SIGKILL');
    await a.proc.exited();
    const acked = a.proc.lines.filter(step(1));
    const lastAcked = acked[acked.length - 1]!;

    const resumed = await b.proc.waitFor((l) => l.ev === 'resumed', 'b app resumed', 20_000);
    expect(Number(resumed.checkpoint)).toBeGreaterThanOrEqual(Number(lastAcked.checkpoint));
    expect(Number(resumed.steps)).toBeGreaterThanOrEqual(Number(lastAcked.steps));
    expect(Number(resumed.epoch)).toBeGreaterThan(Number(lastAcked.epoch));
    // Store and image agree: the store read back through B's API is what B's image says.
    expect(resumed.storeDigest).toBe(resumed.mirrorDigest);
    // The image is the one A's app checkpointed at that point (its mirror digest then).
    const same = a.proc.lines.find((l) => l.ev === 'step' && l.steps === resumed.steps);
    if (same) expect(same.mirrorDigest).toBe(resumed.mirrorDigest);
    // And B's app keeps going.
    await b.proc.waitFor(step(Number(resumed.checkpoint) + 5), 'b app acks 5 more checkpoints');

    // B is primary now: its API serves the state (JSON and v8) and the store.
    const state = await b.call('/state');
    expect(state.status).toBe(200);
    expect(state.headers.get('restartpoint-resumed-from')).toBe(String(resumed.checkpoint));
    const json = (await state.json()) as { steps: number; mirror: Record<string, string> };
    expect(json.steps).toBe(resumed.steps);
    const v8 = await b.call('/state', { headers: { Accept: 'application/x-v8-serialized' } });
    expect(deserialize(Buffer.from(await v8.arrayBuffer()))).toEqual(json);
    expect((await b.call('/store/test%2Fextra', { method: 'PUT', body: 'hello' })).status).toBe(204);
    expect(await (await b.call('/store/test%2Fextra')).text()).toBe('hello');
    expect((await b.call('/store/test%2Fextra', { method: 'DELETE' })).status).toBe(204);
    expect((await b.call('/store/test%2Fextra')).status).toBe(404);
    const status = (await (await b.call('/status')).json()) as Record<string, unknown>;
    expect(status).toMatchObject({
      state: 'primary',
      nodeId: 'b',
      resumedFrom: { checkpoint: Number(resumed.checkpoint) },
      process: { running: true, restarts: 0 },
      takeover: { previous: 'a' },
    });

    // SIGTERM: the sidecar stops its app, releases the lease and exits 0; its token file goes.
    const exit = b.proc.exited();
    b.proc.child.kill('SIGTERM');
    expect(await exit).toBe(0);
    expect(b.proc.lines.some((l) => l.src === 'app' && l.ev === 'stopped')).toBe(true);
    expect(existsSync(b.tokenFile)).toBe(false);
  }, 90_000);

  it('a primary cut off past its lease is demoted: it stops its app and rejoins as a standby', async () => {
    const app = freshApp('sidecar-zombie');
    apps.push(app);
    const a = await startNode(app, 'a');
    await a.proc.waitFor(step(3), 'a app acks 3 checkpoints');
    const b = await startNode(app, 'b');
    await b.proc.waitFor((l) => l.msg === 'standby', 'b standby');

    a.proc.signalGroup('SIGSTOP');
    const resumed = await b.proc.waitFor((l) => l.ev === 'resumed', 'b app resumed', 20_000);
    expect(resumed.storeDigest).toBe(resumed.mirrorDigest);
    a.proc.signalGroup('SIGCONT');

    await a.proc.waitFor((l) => l.msg === 'demoted: stopping the app, rejoining as a standby', 'a demoted');
    await a.proc.waitFor(
      (l) => l.src === 'app' && (l.ev === 'stopped' || l.ev === 'fenced'),
      'a app stopped after the demotion',
    );
    // Back as a standby, in the same process.
    expect(await healthState(a, 'standby')).toBe('standby');
    expect(a.proc.child.exitCode).toBeNull();
    await b.proc.waitFor(step(Number(resumed.checkpoint) + 3), 'b app keeps checkpointing');
  }, 90_000);

  it('a planned switchover hands the app over at a checkpoint: nothing acknowledged is lost, A rejoins as a standby', async () => {
    const app = freshApp('sidecar-switch');
    apps.push(app);
    const a = await startNode(app, 'a');
    await a.proc.waitFor(step(5), 'a app acks 5 checkpoints');
    const b = await startNode(app, 'b');
    await b.proc.waitFor((l) => l.msg === 'standby', 'b standby');
    const r = spawnSync(process.execPath, [BIN, 'switchover', '--app', app, '--nats', NATS_URL, '--json'], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, from: 'a', to: 'b' });
    // A's app is told to stop (FENCED on its next call, or SIGTERM from its sidecar).
    await a.proc.waitFor((l) => l.src === 'app' && (l.ev === 'fenced' || l.ev === 'stopped'), 'a app stops');
    const resumed = await b.proc.waitFor((l) => l.ev === 'resumed', 'b app resumed');
    const acked = a.proc.lines.filter(step(1));
    // Planned: the handover checkpoint is the last one A acknowledged, and B resumes exactly there.
    expect(Number(resumed.checkpoint)).toBe(Number(acked[acked.length - 1]!.checkpoint));
    expect(resumed.steps).toBe(acked[acked.length - 1]!.steps);
    expect(resumed.storeDigest).toBe(resumed.mirrorDigest);
    await b.proc.waitFor(step(Number(resumed.checkpoint) + 3), 'b app keeps checkpointing');
    expect(await healthState(a, 'standby')).toBe('standby');
    expect(a.proc.child.exitCode).toBeNull();
  }, 90_000);

  it.each([
    ['memory', (_d: string) => '{ kind: memory }'],
    ['file', (d: string) => `{ kind: file, dir: '${join(d, 'store')}' }`],
    [
      'redis',
      (d: string) => `{ kind: redis, url: 'redis://127.0.0.1:6379', prefix: 'rp-test-${d.slice(-8)}' }`,
    ],
    [
      'postgres',
      (d: string) =>
        `{ kind: postgres, connectionString: 'postgres://postgres@127.0.0.1:5432/test', table: 'rp_sidecar_${d
          .slice(-6)
          .toLowerCase()
          .replace(/[^a-z0-9_]/g, '_')}' }`,
    ],
  ])('runs on %s storage without an app command: store, checkpoint, clean stop', async (_kind, storage) => {
    const app = freshApp('sidecar-kind');
    apps.push(app);
    const dir = await mkdtemp(join(root, 'kind-'));
    const portFile = join(dir, 'port');
    const tokenFile = join(dir, 'token');
    const config = join(dir, 'c.yaml');
    await writeFile(
      config,
      [
        `app: ${app}`,
        'nodeId: solo',
        `nats: { servers: '${NATS_URL}' }`,
        `storage: ${storage(dir)}`,
        `api: { portFile: '${portFile}', tokenFile: '${tokenFile}' }`,
        '',
      ].join('\n'),
    );
    const proc = new SidecarProc('solo', dir, ['--config', config]);
    procs.push(proc);
    const listening = await proc.waitFor((l) => l.msg === 'api listening', 'api listening');
    await proc.waitFor((l) => l.msg === 'sidecar primary', 'primary');
    const token = (await readFile(tokenFile, 'utf8')).trim();
    const call = (path: string, init: RequestInit = {}) =>
      fetch(`http://127.0.0.1:${Number(listening.port)}${path}`, {
        ...init,
        headers: { Authorization: `Bearer ${token}`, ...(init.headers ?? {}) },
      });
    expect((await call('/store/k', { method: 'PUT', body: 'v1' })).status).toBe(204);
    expect(await (await call('/store/k')).text()).toBe('v1');
    const cp = await call('/checkpoint', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: '{"n":1}',
    });
    expect(cp.status).toBe(200);
    expect(((await cp.json()) as { checkpoint: number }).checkpoint).toBe(1);
    const health = await fetch(`http://127.0.0.1:${Number(listening.port)}/healthz`);
    expect(await health.json()).toEqual({ ok: true, state: 'primary' });
    const exit = proc.exited();
    proc.child.kill('SIGTERM');
    expect(await exit).toBe(0);
    // What the store left in the shared servers.
    const prefix = /prefix: '([^']+)'/.exec(storage(dir))?.[1];
    if (prefix) {
      const r = new Redis('redis://127.0.0.1:6379');
      const keys = await r.keys(`{${prefix}}:*`);
      expect(keys.length).toBeGreaterThan(0);
      await r.del(...keys);
      await r.quit();
    }
    const table = /table: '([^']+)'/.exec(storage(dir))?.[1];
    if (table) {
      const c = new pg.Client({ connectionString: 'postgres://postgres@127.0.0.1:5432/test' });
      await c.connect();
      await c.query(`DROP TABLE IF EXISTS "${table}", "${table}_meta", "${table}_schema"`);
      await c.end();
    }
  });

  it('a bad config is a usage error: exit 2, every problem named with its field and fix', async () => {
    const file = join(root, 'bad.yaml');
    await writeFile(
      file,
      [
        'app: bad-config',
        `nats: { servers: '${NATS_URL}' }`,
        'storag: { kind: memory }',
        'leaseTtlMs: fast',
        '',
      ].join('\n'),
    );
    const r = spawnSync(process.execPath, [BIN, 'sidecar', '--config', file, '--', 'true'], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(`config ${file} has 3 problems`);
    expect(r.stderr).toMatch(
      /leaseTtlMs: must be an integer from 100 to 600000 \(milliseconds\), got "fast"/,
    );
    expect(r.stderr).toMatch(/storag: is not a field of the config — did you mean 'storage'\?/);
    expect(r.stderr).toMatch(/storage: is required/);
    expect(r.stderr).toMatch(/hint: fix the config file \(docs\/config\.md/);

    const env = spawnSync(process.execPath, [BIN, 'sidecar', '--config', file], {
      encoding: 'utf8',
      timeout: 30_000,
      env: { ...process.env, RESTARTPOINT_API_PORT: 'eighty' },
    });
    expect(env.status).toBe(2);
    expect(env.stderr).toMatch(
      /api\.port \(from RESTARTPOINT_API_PORT\): must be an integer from 0 to 65535/,
    );

    const good = join(root, 'good.yaml');
    await writeFile(
      good,
      `app: good\nnats: { servers: '${NATS_URL}' }\nstorage: { kind: memory }\napi: { token: '${'t'.repeat(32)}' }\n`,
    );
    const check = spawnSync(process.execPath, [BIN, 'sidecar', '--config', good, '--check'], {
      encoding: 'utf8',
      timeout: 30_000,
      env: { ...process.env, RESTARTPOINT_LEASE_TTL_MS: '1500' },
    });
    expect(check.status).toBe(0);
    const printed = JSON.parse(check.stdout) as { leaseTtlMs: number; api: { token: string; port: number } };
    expect(printed).toMatchObject({ leaseTtlMs: 1500, api: { token: '<secret>', port: 0 } });
    expect(check.stdout).not.toContain('t'.repeat(32));

    const missing = spawnSync(process.execPath, [BIN, 'sidecar', '--config', join(root, 'nope.yaml')], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/file not found: check the --config path/);
  });
});
