import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { NatsConnection } from '@nats-io/transport-node';
import { requireNats } from '../helpers/nats.js';

const BIN = fileURLToPath(new URL('../../bin/restartpoint.js', import.meta.url));
const CONFIG = fileURLToPath(new URL('../../examples/python/restartpoint.yaml', import.meta.url));
const APP = fileURLToPath(new URL('../../examples/python/app.py', import.meta.url));
const run = (args: string[], env: NodeJS.ProcessEnv = {}) =>
  spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, ...env },
  });

let nc: NatsConnection;
beforeAll(async () => {
  nc = await requireNats();
  const py = spawnSync('python3', ['--version'], { encoding: 'utf8' });
  if (py.status !== 0) throw new Error('this test needs python3 on PATH (the example app is Python)');
});
afterAll(async () => {
  await nc?.close();
});

describe('drill --config -- <app> (two real sidecars, the Python example app, SIGKILL of a process group)', () => {
  it('kills the primary host; the takeover resumes the last acknowledged checkpoint and the app reports store and image agree', () => {
    const r = run(
      ['drill', '--config', CONFIG, '--kills', '1', '--seed', '4', '--json', '--', 'python3', APP],
      {
        RESTARTPOINT_LEASE_TTL_MS: '1000',
        LEDGER_INTERVAL_MS: '20',
      },
    );
    expect(r.stderr).toMatch(/kill 1\/1: a's sidecar and app SIGKILLed/);
    const report = JSON.parse(r.stdout) as {
      ok: boolean;
      violations: string[];
      leaseTtlMs: number;
      takeovers: {
        lastAcked: number;
        resumed: number;
        epoch: number;
        verified: boolean | null;
        killToServingMs: number;
        newPrimary: string;
      }[];
    };
    expect(report.violations).toEqual([]);
    expect(report.ok).toBe(true);
    expect(r.status).toBe(0);
    expect(report.leaseTtlMs).toBe(1000);
    expect(report.takeovers.map((t) => t.newPrimary)).toEqual(['b']);
    for (const t of report.takeovers) {
      expect(t.resumed).toBeGreaterThanOrEqual(t.lastAcked);
      expect(t.lastAcked).toBeGreaterThan(0);
      // The hook ran: the Python app prints mirrorDigest and storeDigest when it resumes.
      expect(t.verified).toBe(true);
      expect(t.killToServingMs).toBeGreaterThan(0);
    }
    expect(report.takeovers[0]!.epoch).toBeGreaterThan(1);
  }, 120_000);

  it.each([
    [['drill', '--', 'python3', 'app.py'], /an app command \(python3 app.py\) needs --config/],
    [['drill', '--config', 'x.yaml'], /--config needs the app command after --/],
    [
      ['drill', '--config', 'x.yaml', '--store', 'redis', '--', 'true'],
      /--store cannot be combined with --config/,
    ],
    [['drill', '--config', '/nonexistent/rp.yaml', '--', 'true'], /nonexistent/],
  ])('%j is a usage error: exit 2 with a hint', (args, problem) => {
    const r = run(args);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(problem);
    expect(r.stderr).toMatch(/hint:/);
    expect(r.stdout).toBe('');
  });
});
