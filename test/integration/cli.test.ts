import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { NatsConnection } from '@nats-io/transport-node';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { Restartpoint } from '../../src/index.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';

const BIN = fileURLToPath(new URL('../../bin/restartpoint.js', import.meta.url));
const run = (...args: string[]) =>
  spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 120_000 });

let nc: NatsConnection;
beforeAll(async () => {
  nc = await requireNats();
});
afterAll(async () => {
  await nc?.close();
});

describe('restartpoint CLI', () => {
  it.each([
    [['drill', '--kills', 'x'], /--kills must be an integer/],
    [['drill', '--kills', '0'], /--kills must be an integer from 1/],
    [['drill', '--bogus'], /unknown option '--bogus'/],
    [['drill', '--store', 'mongo'], /Allowed choices are file, memory, redis, postgres/],
    [['status'], /required option '--app <name>'/],
    [['status', '--app', 'bad name'], /not a valid app name/],
    [['frobnicate'], /unknown command/],
  ])('%j is a usage error: exit 2, the problem and a hint on stderr', (args, problem) => {
    const r = run(...args);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(problem);
    expect(r.stderr).toMatch(/hint:/);
    expect(r.stdout).toBe('');
  });

  it('drill --json prints exactly one JSON object on stdout that follows the contract', () => {
    const r = run('drill', '--kills', '1', '--seed', '5', '--lease-ttl', '800', '--json');
    expect(r.stderr).toMatch(/kill 1\/1/); // progress goes to stderr
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const report = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(report).toMatchObject({ ok: true, kills: 1, violations: [] });
    const [t] = report.takeovers as Record<string, unknown>[];
    for (const k of ['kill', 'takeoverMs', 'lastAcked', 'resumed', 'storeMatches', 'imageMatches'])
      expect(t).toHaveProperty(k);
    expect(r.status).toBe(0);
  }, 120_000);

  it('status --json reports leader, epoch and the last sealed checkpoint of a live app', async () => {
    const app = freshApp('status');
    const rp = await Restartpoint.start({
      app,
      nodeId: 'solo',
      nats: { servers: NATS_URL },
      storage: memoryAdapter(),
    });
    try {
      await rp.store.put('k', 'v');
      await rp.checkpoint({ n: 1 });
      const { checkpoint } = await rp.checkpoint({ n: 2 });
      const r = run('status', '--app', app, '--json');
      expect(r.status).toBe(0);
      const s = JSON.parse(r.stdout) as Record<string, unknown>;
      expect(s).toMatchObject({
        app,
        leader: 'solo',
        epoch: rp.epoch,
        lastSealed: checkpoint,
        lastSealedEpoch: rp.epoch,
      });
      expect(s.streamMessages).toBeGreaterThanOrEqual(6);
      const human = run('status', '--app', app);
      expect(human.stdout).toMatch(/leader\s+solo/);
    } finally {
      await rp.close();
      await deleteApp(nc, app);
    }
  });
});
