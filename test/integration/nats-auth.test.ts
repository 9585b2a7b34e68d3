/**
 * NATS security passthrough on a real nats-server of its own: the least-privilege account of
 * docs/security.md (user/password, permissions scoped to one app) is enough for replication and
 * takeover in signed mode, and does not let a node touch another app.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { NatsUnavailableError, Restartpoint, type StartOptions } from '../../src/index.js';
import { NatsServerProcess, freePort } from '../../src/drill/nats-servers.js';
import { startStandby } from '../helpers/standby.js';

const APP = 'ledger';
const USER = 'ledger-node';
const PASS = randomBytes(12).toString('hex');
let dir: string;
let server: NatsServerProcess;

/** The account of docs/security.md, with the app name and password filled in. */
async function accountConfig(port: number): Promise<string> {
  const doc = await readFile(join(import.meta.dirname, '../../docs/security.md'), 'utf8');
  const block = /```hcl\n([\s\S]*?)```/.exec(doc);
  if (!block) throw new Error('docs/security.md has no ```hcl account block');
  return block[1]!
    .replace(/listen: .*/, `listen: 127.0.0.1:${port}`)
    .replace(/store_dir: "[^"]*"/, `store_dir: "${join(dir, 'js')}"`)
    .replace('$RP_NODE_PASSWORD', PASS);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'rp-nats-auth-'));
  const port = await freePort();
  await writeFile(join(dir, 'server.conf'), await accountConfig(port));
  server = new NatsServerProcess(port, ['-c', join(dir, 'server.conf')]);
  await server.start();
});
afterAll(async () => {
  await server?.kill();
  await rm(dir, { recursive: true, force: true });
});

type S = { n: number };
const opts = (nodeId: string, pass = PASS): StartOptions<S> => ({
  app: APP,
  nodeId,
  nats: { servers: server.url, user: USER, pass },
  storage: memoryAdapter(),
  leaseTtlMs: 600,
  clusterKey: randomBytes(32).fill(7),
  initialState: () => ({ n: 0 }),
});

describe('NATS auth passthrough with the least-privilege account of docs/security.md', () => {
  it('a primary and a standby replicate and take over with only the documented permissions', async () => {
    const a = await Restartpoint.start(opts('a'));
    const b = startStandby(opts('b'));
    await b.standing;
    await a.store.put('k', 'v');
    await a.checkpoint({ n: 1 });
    await a.close();
    const bp = await b.primary;
    expect(bp.state).toEqual({ n: 1 });
    expect(Buffer.from((await bp.store.get('k'))!).toString()).toBe('v');
    expect((await bp.checkpoint({ n: 2 })).checkpoint).toBe(2);
    await bp.close();
  });

  it('a wrong password is refused at start', async () => {
    await expect(Restartpoint.start(opts('x', 'wrong'))).rejects.toBeInstanceOf(NatsUnavailableError);
  });

  it("the account cannot publish on, or read, another app's subjects and stream", async () => {
    const nc = await connect({ servers: server.url, user: USER, pass: PASS });
    try {
      const jsm = await jetstreamManager(nc);
      await expect(jsm.streams.info('RP_other')).rejects.toThrow(/permission/i);
      await expect(nc.request('rp.other.frames', 'x', { timeout: 1_000 })).rejects.toThrow(/permission/i);
    } finally {
      await nc.close();
    }
  });
});
