/**
 * The Node SDK under `restartpoint sidecar`: the same app code (examples/node-sidecar/app.ts)
 * attaches to the sidecar's API through `Restartpoint.start()`, and its state (a Map and a
 * BigInt, carried as node:v8 bytes) and store survive a handover to the other sidecar.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { NatsConnection } from '@nats-io/transport-node';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = join(ROOT, 'bin/restartpoint.js');
const NODE_APP = join(ROOT, 'dist/examples/node-sidecar/app.js');

let nc: NatsConnection;
let dir: string;
const app = freshApp('sn');
const children: ChildProcess[] = [];

beforeAll(async () => {
  nc = await requireNats();
  dir = await mkdtemp(join(tmpdir(), 'rp-sidecar-node-'));
  await writeFile(
    join(dir, 'restartpoint.yaml'),
    [
      `app: ${app}`,
      `nats: { servers: '${NATS_URL}' }`,
      `storage: { kind: file, dir: ${join(dir, 'unused')} }`,
      'leaseTtlMs: 1000',
      'api: { port: 0 }',
      'process: { restart: never }',
      'log: { level: warn }',
    ].join('\n'),
  );
});
afterAll(async () => {
  for (const c of children)
    if (c.exitCode === null && c.signalCode === null) process.kill(-c.pid!, 'SIGKILL');
  await deleteApp(nc, app);
  await nc?.close();
  await rm(dir, { recursive: true, force: true });
});

/** Starts a sidecar running the Node app; resolves its app's JSON lines as they come. */
function sidecar(
  node: string,
  steps?: number,
): { lines: Record<string, unknown>[]; exited: Promise<number | null> } {
  const child = spawn(
    process.execPath,
    [BIN, 'sidecar', '--config', join(dir, 'restartpoint.yaml'), '--', process.execPath, NODE_APP],
    {
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        RESTARTPOINT_NODE_ID: node,
        RESTARTPOINT_STORAGE_DIR: join(dir, node),
        ...(steps === undefined ? {} : { STEPS: String(steps) }),
      },
    },
  );
  children.push(child);
  const lines: Record<string, unknown>[] = [];
  let err = '';
  createInterface({ input: child.stdout! }).on('line', (t) => {
    try {
      lines.push(JSON.parse(t) as Record<string, unknown>);
    } catch {
      /* not a JSON line */
    }
  });
  createInterface({ input: child.stderr! }).on('line', (t) => {
    err = (err + t + '\n').slice(-4000);
  });
  const exited = new Promise<number | null>((r) =>
    child.once('exit', (code) => {
      if (code !== 0 && code !== null) process.stderr.write(`sidecar ${node} exited ${code}:\n${err}\n`);
      r(code);
    }),
  );
  return { lines, exited };
}

it('a Node app under the sidecar resumes its Map/BigInt state and store on the other node', async () => {
  // a runs 4 steps and exits 0: its sidecar closes cleanly and releases the lease.
  const a = sidecar('a', 4);
  expect(await a.exited).toBe(0);
  expect(a.lines[0]).toMatchObject({ ev: 'resumed', resumedFrom: 0, count: 0, isMap: true });
  expect(a.lines.filter((l) => l.ev === 'step').map((l) => l.checkpoint)).toEqual([1, 2, 3, 4]);
  // b starts on an empty store, takes over from the relay and hands the app a's last state.
  const b = sidecar('b', 2);
  expect(await b.exited).toBe(0);
  expect(b.lines[0]).toMatchObject({
    ev: 'resumed',
    resumedFrom: 4,
    count: 4,
    total: '10',
    seen: 4,
    isMap: true,
    lastStored: '4',
    missingIsUndefined: true,
  });
  expect(b.lines.filter((l) => l.ev === 'step').map((l) => l.checkpoint)).toEqual([5, 6]);
});

async function until(what: string, f: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function switchover(): Promise<Record<string, unknown>> {
  const { stdout } = await promisify(execFile)(process.execPath, [
    BIN,
    'switchover',
    '--app',
    app,
    '--nats',
    NATS_URL,
    '--json',
    '--timeout-ms',
    '20000',
  ]);
  return JSON.parse(stdout) as Record<string, unknown>;
}

/** Runs `restartpoint switchover` until it is accepted (it refuses while no standby is up yet). */
async function switchoverWhenReady(): Promise<Record<string, unknown>> {
  let refusal = '';
  for (const end = Date.now() + 30_000; Date.now() < end;) {
    try {
      return await switchover();
    } catch (err) {
      refusal = String((err as { stderr?: string }).stderr ?? err);
      if (!/no running standby/.test(refusal)) throw err;
      await new Promise((r) => setTimeout(r, 300));
    }
  }
  throw new Error(`switchover never accepted: ${refusal}`);
}

it('restartpoint switchover moves a running app between sidecars and back, with no lost checkpoint', async () => {
  const steps = (l: Record<string, unknown>[]) => l.filter((x) => x.ev === 'step');
  const c = sidecar('c');
  await until('c serving', () => steps(c.lines).length >= 3);
  const d = sidecar('d');
  // d is a standby once it shows in the presence records; switchover refuses (exit 2) until then.
  const first = await switchoverWhenReady();
  expect(first).toMatchObject({ ok: true, to: 'd' });
  await until('d serving', () => steps(d.lines).length >= 2);
  const resumedD = d.lines.find((l) => l.ev === 'resumed')!;
  const lastC = Math.max(...steps(c.lines).map((l) => l.checkpoint as number));
  expect(resumedD.resumedFrom).toBe(first.resumedFrom);
  // Nothing acknowledged to c's app is lost: d resumes from c's last acknowledged checkpoint
  // (or the handover checkpoint, acknowledged while c's app was being stopped).
  expect(resumedD.resumedFrom as number).toBeGreaterThanOrEqual(lastC);
  expect(resumedD.resumedFrom as number).toBeLessThanOrEqual(lastC + 1);
  expect(resumedD.count).toBe(resumedD.resumedFrom);
  // c went back to standby (its sidecar still runs): switch back to it.
  // c rejoins as a standby (after stopping its app and replaying the stream) before it can take it back.
  const back = await switchoverWhenReady();
  expect(back).toMatchObject({ ok: true, from: 'd', to: 'c' });
  const resumedAgain = c.lines.filter((l) => l.ev === 'resumed');
  await until('c serving again', () => c.lines.filter((l) => l.ev === 'resumed').length === 2);
  expect(resumedAgain.length).toBeLessThanOrEqual(2);
  const cAgain = c.lines.filter((l) => l.ev === 'resumed')[1]!;
  expect(cAgain.resumedFrom).toBe(back.resumedFrom);
  expect(cAgain.isMap).toBe(true);
}, 90_000);
