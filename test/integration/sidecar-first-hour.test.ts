/**
 * What a newcomer trips over (issue 18), with real `restartpoint sidecar` processes on the shared
 * NATS server: a reused node id, the app's exit logged however it ends, and an app whose
 * sidecar is SIGKILLed (alone, not its process group).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { NatsConnection } from '@nats-io/transport-node';
import { Kvm, type KV } from '@nats-io/kv';
import { ConfigError } from '../../src/errors.js';
import { appNames } from '../../src/protocol/subjects.js';
import { liveNodeRecord, refuseLiveNodeId } from '../../src/transport/node-id.js';
import { presenceKey, writePresence, type PresenceRecord } from '../../src/transport/presence.js';
import { pdeathsigHelper } from '../../src/sidecar/process.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = join(ROOT, 'bin/restartpoint.js');
const PY_APP = join(ROOT, 'examples/python/app.py');

type Line = Record<string, unknown> & { src: 'out' | 'err' };

/** One sidecar process in its own process group, its JSON lines, and its raw stderr. */
class Proc {
  readonly child: ChildProcess;
  readonly lines: Line[] = [];
  stderr = '';
  readonly closed: Promise<number | null>;
  #listeners: (() => void)[] = [];

  constructor(args: string[], env: NodeJS.ProcessEnv) {
    this.child = spawn(process.execPath, [BIN, 'sidecar', ...args], {
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    this.closed = new Promise((r) => this.child.once('close', (code) => r(code)));
    const feed = (src: 'out' | 'err') => (text: string) => {
      if (src === 'err') this.stderr += `${text}\n`;
      try {
        this.lines.push({ ...(JSON.parse(text) as Record<string, unknown>), src });
      } catch {
        /* not JSON */
      }
      for (const f of [...this.#listeners]) f();
    };
    createInterface({ input: this.child.stdout! }).on('line', feed('out'));
    createInterface({ input: this.child.stderr! }).on('line', feed('err'));
  }

  /** The first line matching `pred`, now or later. */
  waitFor(pred: (l: Line) => boolean, what: string, timeoutMs = 20_000): Promise<Line> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const l = this.lines.find(pred);
        if (l) {
          done();
          resolve(l);
        }
        return !!l;
      };
      const done = (): void => {
        clearTimeout(timer);
        this.#listeners = this.#listeners.filter((f) => f !== listener);
      };
      const listener = (): void => void check();
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no ${what} within ${timeoutMs} ms:\n${this.stderr.slice(-4000)}`));
      }, timeoutMs);
      this.#listeners.push(listener);
      check();
    });
  }

  msg(m: string): (l: Line) => boolean {
    return (l) => l.msg === m;
  }

  killGroup(): void {
    try {
      process.kill(-this.child.pid!, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

/** Whether `pid` runs (a zombie, waiting for a reaper, does not). */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

async function until(
  what: string,
  cond: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

let nc: NatsConnection;
let root: string;
const procs: Proc[] = [];
const apps: string[] = [];
const children: ChildProcess[] = [];

beforeAll(async () => {
  nc = await requireNats();
  root = await mkdtemp(join(tmpdir(), 'rp-first-hour-'));
});
afterAll(async () => {
  for (const p of procs) p.killGroup();
  for (const c of children) c.kill('SIGKILL');
  for (const app of apps) await deleteApp(nc, app);
  await nc?.close();
  await rm(root, { recursive: true, force: true });
});

/** A config file for `app` (memory store unless told), in its own directory. */
async function config(app: string, extra = ''): Promise<string> {
  const file = join(root, `${app}.yaml`);
  await writeFile(
    file,
    `app: ${app}\nnats: { servers: '${NATS_URL}' }\nstorage: { kind: memory }\nleaseTtlMs: 1000\nlog: { level: info }\n${extra}`,
  );
  return file;
}

function sidecar(cfg: string, env: NodeJS.ProcessEnv, command: string[] = []): Proc {
  const p = new Proc(['--config', cfg, ...(command.length ? ['--', ...command] : [])], env);
  procs.push(p);
  return p;
}

async function bucket(app: string): Promise<KV> {
  return new Kvm(nc).create(appNames(app).leaseBucket, { history: 1 });
}

describe('a reused node id', () => {
  it('a second sidecar with the id of a live one is refused, saying so and how to override; the first one keeps its token file', async () => {
    const app = freshApp('dup');
    apps.push(app);
    const cfg = await config(app);
    const tokenFile = join(root, `${app}.token`);
    const env = { RESTARTPOINT_NODE_ID: 'dup', RESTARTPOINT_API_TOKEN_FILE: tokenFile };
    const a = sidecar(cfg, env);
    const listening = await a.waitFor(a.msg('api listening'), 'api listening');
    await a.waitFor(a.msg('sidecar primary'), 'primary');
    const kv = await bucket(app);
    await until('a presence record', async () => (await liveNodeRecord(kv, 'dup')) !== undefined);
    const token = await readFile(tokenFile, 'utf8');

    const b = sidecar(cfg, env);
    expect(await b.closed).toBe(1);
    expect(b.stderr).toMatch(
      new RegExp(
        `error: 'nodeId' is 'dup', the id of a live node of app '${app}' \\(pid ${a.child.pid} on host ${hostname()}, primary in epoch \\d+`,
      ),
    );
    expect(b.stderr).toMatch(/reuseNodeId: true in the config \(or RESTARTPOINT_REUSE_NODE_ID=true\)/);
    expect(b.lines.some((l) => l.msg === 'api listening')).toBe(false);

    // Overriding the id check does not let it take the running sidecar's token file.
    const c = sidecar(cfg, { ...env, RESTARTPOINT_REUSE_NODE_ID: 'true' });
    expect(await c.closed).toBe(1);
    expect(c.stderr).toMatch(
      new RegExp(
        `error: 'api.tokenFile' is ${tokenFile}, the token file of a sidecar that is running \\(pid ${a.child.pid}`,
      ),
    );
    expect(await readFile(tokenFile, 'utf8')).toBe(token);
    const status = await fetch(`http://127.0.0.1:${Number(listening.port)}/status`, {
      headers: { Authorization: `Bearer ${token.trim()}` },
    });
    expect(status.status).toBe(200);

    // With its own token file and the override, it starts (a standby beside the primary).
    const d = sidecar(cfg, {
      ...env,
      RESTARTPOINT_REUSE_NODE_ID: 'true',
      RESTARTPOINT_API_TOKEN_FILE: join(root, `${app}-d.token`),
    });
    await d.waitFor(d.msg('standby'), 'standby');
    d.child.kill('SIGTERM');
    expect(await d.closed).toBe(0);

    // Once the first one is dead (SIGKILL: no clean close), its id and token file are free at once.
    a.killGroup();
    await a.closed;
    const e = sidecar(cfg, env);
    await e.waitFor(e.msg('api listening'), 'api listening');
    expect(await readFile(tokenFile, 'utf8')).not.toBe(token);
    e.child.kill('SIGTERM');
    expect(await e.closed).toBe(0);
  }, 60_000);

  it('liveNodeRecord: this host decides by pid, another host by whether the record is rewritten', async () => {
    const app = freshApp('dup-rec');
    apps.push(app);
    const kv = await bucket(app);
    const rec = (over: Partial<PresenceRecord>): PresenceRecord => ({
      nodeId: 'n',
      state: 'primary',
      epoch: 3,
      checkpoint: 9,
      host: hostname(),
      pid: process.pid,
      updatedAt: Date.now(),
      relays: [],
      ...over,
    });
    expect(await liveNodeRecord(kv, 'n')).toBeUndefined(); // no record
    await writePresence(kv, rec({}));
    expect(await liveNodeRecord(kv, 'n')).toBeUndefined(); // this very process
    const sleeper = spawn('sleep', ['30']);
    children.push(sleeper);
    await writePresence(kv, rec({ pid: sleeper.pid! }));
    expect((await liveNodeRecord(kv, 'n'))?.pid).toBe(sleeper.pid);
    await expect(refuseLiveNodeId(kv, app, 'n')).rejects.toThrow(ConfigError);
    await expect(refuseLiveNodeId(kv, app, 'n')).rejects.toThrow(/reuseNodeId: true/);
    await refuseLiveNodeId(kv, app, 'n', { reuse: true });
    sleeper.kill('SIGKILL');
    await until('the sleeper gone', () => !running(sleeper.pid!));
    expect(await liveNodeRecord(kv, 'n')).toBeUndefined(); // fresh record, dead pid
    await writePresence(kv, rec({ pid: sleeper.pid!, updatedAt: Date.now() - 6_000 }));
    expect(await liveNodeRecord(kv, 'n')).toBeUndefined();

    // Another host: not rewritten while watched → gone; rewritten → live.
    await writePresence(kv, rec({ host: 'elsewhere', pid: 1 }));
    const t0 = Date.now();
    expect(await liveNodeRecord(kv, 'n', { watchMs: 400 })).toBeUndefined();
    expect(Date.now() - t0).toBeGreaterThanOrEqual(350);
    const writer = setInterval(() => void writePresence(kv, rec({ host: 'elsewhere', pid: 1 })), 100);
    try {
      expect((await liveNodeRecord(kv, 'n', { watchMs: 1_000 }))?.host).toBe('elsewhere');
    } finally {
      clearInterval(writer);
    }
    await kv.delete(presenceKey('n'));
  }, 30_000);
});

describe('limits.maxDepth on the sidecar API', () => {
  it('POST /checkpoint of JSON (or v8) nested 3 000 deep answers 413 LIMIT naming limits.maxDepth, not 500', async () => {
    const app = freshApp('depth-api');
    apps.push(app);
    const cfg = await config(app);
    const tokenFile = join(root, `${app}.token`);
    const a = sidecar(cfg, { RESTARTPOINT_NODE_ID: 'a', RESTARTPOINT_API_TOKEN_FILE: tokenFile });
    const listening = await a.waitFor(a.msg('api listening'), 'api listening');
    await a.waitFor(a.msg('sidecar primary'), 'primary');
    const token = (await readFile(tokenFile, 'utf8')).trim();
    const post = (body: string | Buffer, type: string) =>
      fetch(`http://127.0.0.1:${Number(listening.port)}/checkpoint`, {
        method: 'POST',
        body,
        headers: { Authorization: `Bearer ${token}`, 'Content-Type': type },
      });
    const json = (n: number) => `${'{"a":'.repeat(n)}1${'}'.repeat(n)}`;
    const deep = await post(json(3000), 'application/json');
    expect(deep.status).toBe(413);
    const body = (await deep.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('LIMIT');
    expect(body.error.message).toMatch(/nested more than 1000 levels deep.*limit 'limits.maxDepth'/);
    const { serialize } = await import('node:v8');
    const v8Deep = await post(serialize(JSON.parse(json(3000))), 'application/x-v8-serialized');
    expect(v8Deep.status).toBe(413);
    expect(((await v8Deep.json()) as { error: { message: string } }).error.message).toMatch(
      /limits.maxDepth/,
    );
    const ok = await post(json(1000), 'application/json');
    expect(ok.status).toBe(200);
    expect(a.lines.some((l) => l.msg === 'api error')).toBe(false);
    a.child.kill('SIGTERM');
    expect(await a.closed).toBe(0);
  }, 30_000);
});

describe('the app exit is logged every time', () => {
  it('when the sidecar stops it: SIGTERM, switchover and demotion each log "app exited" with the status and the cause', async () => {
    const app = freshApp('exitlog');
    apps.push(app);
    const cfg = await config(app, 'process: { stopTimeoutMs: 3000 }\n');
    const cmd = ['python3', PY_APP];
    const appEnv = { LEDGER_INTERVAL_MS: '20' };
    const a = sidecar(cfg, { RESTARTPOINT_NODE_ID: 'a', ...appEnv }, cmd);
    await a.waitFor((l) => l.ev === 'step', 'a step on a');
    const b = sidecar(cfg, { RESTARTPOINT_NODE_ID: 'b', ...appEnv }, cmd);
    await b.waitFor(b.msg('standby'), 'b standby');

    // Switchover: a hands over at its next checkpoint and stops its app.
    const sw = spawnSync(process.execPath, [BIN, 'switchover', '--app', app, '--nats', NATS_URL], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(sw.status, sw.stderr).toBe(0);
    const swExit = await a.waitFor(a.msg('app exited'), 'app exited on a');
    expect(swExit).toMatchObject({ cause: 'switchover', status: 0, level: 30 });
    await b.waitFor((l) => l.ev === 'step', 'a step on b');

    // Demotion: b's sidecar is paused (its app too, the whole group) past the lease; a takes over.
    process.kill(-b.child.pid!, 'SIGSTOP');
    await a.waitFor(
      (l) => l.ev === 'step' && a.lines.indexOf(l) > a.lines.indexOf(swExit),
      'a step on a again',
      20_000,
    );
    process.kill(-b.child.pid!, 'SIGCONT');
    const demoted = await b.waitFor(b.msg('app exited'), 'app exited on b');
    expect(demoted).toMatchObject({ cause: 'demoted' });
    expect(typeof demoted.status).toBe('number');

    // SIGTERM: a stops its app, logs it, exits 0.
    a.child.kill('SIGTERM');
    expect(await a.closed).toBe(0);
    const stopped = a.lines.filter((l) => l.msg === 'app exited').at(-1)!;
    expect(stopped).toMatchObject({ cause: 'stop requested', status: 0 });
    b.child.kill('SIGTERM');
    expect(await b.closed).toBe(0);
  }, 90_000);
});

describe('an app whose sidecar dies', () => {
  it('setpriv --pdeathsig is there on this machine (util-linux)', () => {
    expect(pdeathsigHelper()).toMatch(/setpriv$/);
  });

  it('SIGKILL of the sidecar process alone: the app gets SIGTERM at once instead of running on as an orphan', async () => {
    const app = freshApp('orphan');
    apps.push(app);
    const cfg = await config(app);
    const a = sidecar(cfg, { RESTARTPOINT_NODE_ID: 'a' }, ['sleep', '120']);
    const started = await a.waitFor(a.msg('app started'), 'app started');
    expect(started.orphanSignal).toBe('SIGTERM');
    const appPid = Number(started.appPid);
    expect(running(appPid)).toBe(true);
    process.kill(a.child.pid!, 'SIGKILL');
    await until('the orphaned app stopped', () => !running(appPid), 5_000);
  }, 30_000);

  it('the Python example under a SIGKILLed sidecar exits with one line, no traceback', async () => {
    const app = freshApp('orphan-py');
    apps.push(app);
    const cfg = await config(app);
    const a = sidecar(cfg, { RESTARTPOINT_NODE_ID: 'a', LEDGER_INTERVAL_MS: '10' }, ['python3', PY_APP]);
    const started = await a.waitFor(a.msg('app started'), 'app started');
    await a.waitFor((l) => l.ev === 'step', 'a step');
    process.kill(a.child.pid!, 'SIGKILL');
    const appPid = Number(started.appPid);
    await until('the app stopped', () => !running(appPid), 10_000);
    // Its output goes on through the pipe the sidecar shared with it, until it exits.
    await a.closed;
    expect(a.stderr).not.toMatch(/Traceback/);
  }, 30_000);

  it('the Python example without its sidecar: one clear line on stderr, exit 1', async () => {
    const tokenFile = join(root, 'gone.token');
    await writeFile(tokenFile, 'x'.repeat(64));
    // A port nobody listens on: bind one, note it, close it.
    const { createServer } = await import('node:net');
    const srv = createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as { port: number }).port;
    await new Promise((r) => srv.close(r));
    const r = spawnSync('python3', [PY_APP], {
      encoding: 'utf8',
      env: {
        ...process.env,
        RESTARTPOINT_SIDECAR_URL: `http://127.0.0.1:${port}`,
        RESTARTPOINT_TOKEN_FILE: tokenFile,
      },
      timeout: 20_000,
    });
    expect(r.status).toBe(1);
    expect(r.stderr).not.toMatch(/Traceback/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(
      /^app\.py: the sidecar's API at http:\/\/127\.0\.0\.1:\d+ does not answer \(.*refused.*\): stopping/,
    );
  });

  it('without setpriv on PATH the sidecar says so once and starts the app anyway', async () => {
    const app = freshApp('orphan-nosetpriv');
    apps.push(app);
    const cfg = await config(app);
    const sleepBin = spawnSync('sh', ['-c', 'command -v sleep'], { encoding: 'utf8' }).stdout.trim();
    const a = sidecar(cfg, { RESTARTPOINT_NODE_ID: 'a', PATH: join(root, 'empty-path') }, [sleepBin, '120']);
    const started = await a.waitFor(a.msg('app started'), 'app started');
    expect(started.orphanSignal).toBeNull();
    const warn = await a.waitFor(
      (l) => typeof l.msg === 'string' && l.msg.startsWith("no 'setpriv --pdeathsig' here"),
      'the warning',
    );
    expect(warn.level).toBe(40);
    a.child.kill('SIGTERM');
    expect(await a.closed).toBe(0);
    expect(a.lines.filter((l) => l.msg === 'app exited').at(-1)).toMatchObject({
      cause: 'stop requested',
      signal: 'SIGTERM',
      status: 143,
    });
  }, 30_000);
});
