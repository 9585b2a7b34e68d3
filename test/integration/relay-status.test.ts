/**
 * Issue 11, item 5: `restartpoint status` on a signed FEC stream shows the last sealed checkpoint
 * when given the cluster key (read as inspect reads: envelope opened, parts rebuilt from the
 * shards of every relay), says why it cannot without it, and shows per relay whether the leader
 * is connected to it (its presence record's relay states). Existing `--json` fields unchanged.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection } from '@nats-io/transport-node';
import { randomBytes } from 'node:crypto';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { TestRelay } from '../../src/drill/nats-servers.js';
import { Restartpoint, type StartOptions } from '../../src/index.js';
import type { StatusReport } from '../../src/cli/commands/status.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';
import { runCli } from '../helpers/cli.js';

let nc: NatsConnection;
const relays: TestRelay[] = [];
const apps: string[] = [];

beforeAll(async () => {
  nc = await requireNats();
});
afterAll(async () => {
  await Promise.all(relays.map((r) => r.destroy()));
  for (const app of apps) await deleteApp(nc, app);
  await nc?.close();
});

const KEY = randomBytes(32).toString('hex');

async function status(...args: string[]): Promise<StatusReport> {
  const r = await runCli('status', '--nats', NATS_URL, ...args, '--json');
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return JSON.parse(r.stdout) as StatusReport;
}

describe('status on signed and FEC streams', () => {
  it('reads the last seal with the key, explains its absence without, and shows the leader’s relay states', async () => {
    const three = [await TestRelay.single(), await TestRelay.single(), await TestRelay.single()];
    relays.push(...three);
    const app = freshApp('rstatus');
    apps.push(app);
    const o: StartOptions<{ n: number }> = {
      app,
      nodeId: 'a',
      nats: { servers: NATS_URL },
      storage: memoryAdapter(),
      leaseTtlMs: 600,
      checkpointTimeoutMs: 1500,
      clusterKey: KEY,
      relays: three.map((r) => ({ servers: r.urls })),
      fec: { data: 2, parity: 4, tolerate: 1 },
      initialState: () => ({ n: 0 }),
    };
    const a = await Restartpoint.start(o);
    try {
      let last = 0;
      for (let i = 0; i < 4; i++) last = (await a.checkpoint({ n: i })).checkpoint;
      const flags = three.flatMap((r) => ['--relay', r.urls[0]!]);
      const bare = await status('--app', app, ...flags);
      expect(bare).toMatchObject({ lastSealed: null, lastSealedEpoch: null, lastSealedFrom: null });
      expect(bare.lastSealedNote).toMatch(/do not open without the cluster key.*pass --key or --config/);
      const keyed = await status('--app', app, ...flags, '--key', KEY);
      expect(keyed).toMatchObject({ lastSealed: last, lastSealedEpoch: a.epoch, lastSealedFrom: 'decoded' });
      // A wrong key reads nothing and says so.
      const wrong = await status('--app', app, ...flags, '--key', randomBytes(32).toString('hex'));
      expect(wrong.lastSealed).toBeNull();
      expect(wrong.lastSealedNote).toMatch(/do not verify/);
      // The human output says it too.
      const human = await runCli('status', '--nats', NATS_URL, '--app', app, ...flags, '--key', KEY);
      expect(human.stdout).toMatch(
        new RegExp(`^last sealed checkpoint\\s+${last} \\(epoch ${a.epoch}\\)$`, 'm'),
      );

      // Relay C dies: the leader's presence says it is not connected to it (checked each second).
      await three[2]!.servers[0]!.kill();
      await a.checkpoint({ n: 99 });
      let seen: StatusReport | undefined;
      for (let i = 0; i < 60; i++) {
        seen = await status('--app', app, ...flags, '--key', KEY);
        const me = seen.nodes.find((n) => n.nodeId === 'a');
        // Its checkpoint's messages for C wait in the backlog once their send failed.
        if (seen.relays?.[2]?.leaderConnected === false && (me?.relayStates?.[2]?.backlog ?? 0) > 0) break;
      }
      expect(seen!.relays!.map((r) => [r.reachable, r.leaderConnected, r.backfilling])).toEqual([
        [true, true, false],
        [true, true, false],
        [false, false, false],
      ]);
      const node = seen!.nodes.find((n) => n.nodeId === 'a')!;
      expect(node.relays).toEqual([]); // unchanged: a primary reports no standby lag
      expect(node.relayStates!.map((r) => r.connected)).toEqual([true, true, false]);
      expect(node.relayStates![2]!.backlog).toBeGreaterThan(0);
    } finally {
      await a.close();
    }
  }, 120_000);
});
