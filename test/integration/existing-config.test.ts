/**
 * Defect 4 of issue 11: a stream `RP_<app>` or a lease bucket that already exists is checked
 * setting by setting. Each test pre-creates one with a single bad setting through the
 * JetStream manager, against the real nats-server, and `Restartpoint.start()` must refuse
 * with a `ConfigError` naming the setting, its value and the fix; `restartpoint status` lists
 * the same problem. A stream made the way restartpoint makes it (or differing only in harmless
 * settings) is accepted.
 */
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { jetstreamManager, type StreamConfig } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { ConfigError, Restartpoint } from '../../src/index.js';
import { appNames } from '../../src/protocol/subjects.js';
import { liveNodes, nodeOptions } from '../helpers/live.js';
import { NATS_URL } from '../helpers/nats.js';
import type { StatusReport } from '../../src/cli/commands/status.js';

const live = liveNodes();
const BIN = fileURLToPath(new URL('../../bin/restartpoint.js', import.meta.url));

function statusJson(app: string): Promise<StatusReport> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, 'status', '--app', app, '--nats', NATS_URL, '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0
        ? resolve(JSON.parse(out) as StatusReport)
        : reject(new Error(`status exited ${code}: ${err}`)),
    );
  });
}

/** Creates `RP_<app>` as restartpoint would, with `bad` on top. */
async function preStream(app: string, bad: Partial<StreamConfig>): Promise<void> {
  const jsm = await jetstreamManager(live.nc);
  const names = appNames(app);
  await jsm.streams.add({
    name: names.stream,
    subjects: names.streamSubjects,
    storage: 'file' as never,
    duplicate_window: 120_000_000_000,
    ...bad,
  });
}

async function refusal(app: string, extra = {}): Promise<ConfigError> {
  const err = await Restartpoint.start(nodeOptions(app, 'a', extra)).then(
    async (rp) => {
      await rp.close();
      throw new Error('start() accepted a stream or bucket that breaks a guarantee');
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ConfigError);
  return err as ConfigError;
}

const NS = 1_000_000_000;

describe('an existing stream RP_<app> with a setting that breaks a guarantee is refused', () => {
  const cases: [string, Partial<StreamConfig>, RegExp][] = [
    ['max_age', { max_age: 3600 * NS }, /max_age is 3600 s.*deletes frames older.*Fix: set max_age to 0/],
    [
      'max_msgs',
      { max_msgs: 1000 },
      /max_msgs is 1000: .*deletes the oldest frames.*Fix: set max_msgs to -1/,
    ],
    ['max_bytes', { max_bytes: 1 << 20 }, /max_bytes is 1048576: .*Fix: set max_bytes to -1/],
    [
      'max_msgs_per_subject',
      { max_msgs_per_subject: 10 },
      /max_msgs_per_subject is 10: .*keeps only the last 10.*Fix: set max_msgs_per_subject to -1/,
    ],
    [
      'discard',
      { discard: 'new' as never },
      /discard is new: .*refuses new frames.*Fix: set discard to 'old'/,
    ],
    [
      'storage',
      { storage: 'memory' as never },
      /storage is memory: .*restart of the relay loses acknowledged/,
    ],
    [
      'duplicate_window',
      { duplicate_window: 1 * NS },
      /duplicate_window is 1 s .*Fix: set duplicate_window to at least 120 s/,
    ],
    ['retention', { retention: 'workqueue' as never }, /retention is workqueue: .*removes frames/],
    ['deny_purge', { deny_purge: true }, /deny_purge is true: .*purges frames below a durable base/],
    ['max_msg_size', { max_msg_size: 1000 }, /max_msg_size is 1000: .*Fix: set max_msg_size to -1/],
  ];
  for (const [setting, bad, message] of cases) {
    it(setting, async () => {
      const app = live.app('cfg');
      await preStream(app, bad);
      const err = await refusal(app);
      expect(err.option).toBe(`stream RP_${app}.${setting}`);
      expect(err.message).toMatch(message);
      expect(err.message).toMatch(/breaks restartpoint's guarantees/);
      expect(err.message).toContain('let restartpoint create it');
      // The operator's view names the same problem.
      const report = await statusJson(app);
      expect((report.settingProblems ?? []).join('\n')).toContain(`stream RP_${app}: ${setting} is`);
    });
  }

  it('subjects that do not cover the app subject', async () => {
    const app = live.app('cfg');
    await preStream(app, { subjects: [`rp.${app}.other`] });
    const err = await refusal(app);
    expect(err.option).toBe(`stream RP_${app}.subjects`);
    expect(err.message).toMatch(new RegExp(`do not cover rp\\.${app}\\.>.*Fix: add rp\\.${app}\\.>`));
  });

  it('fewer replicas than the relay asks for', async () => {
    const app = live.app('cfg');
    await preStream(app, {});
    const err = await refusal(app, { relays: [{ servers: NATS_URL, replicas: 3 }], ack: 'all' });
    expect(err.option).toBe(`stream RP_${app}.num_replicas`);
    expect(err.message).toMatch(
      /num_replicas is 1: 'replicas' asks for 3 copies.*raise the stream's replicas to 3/,
    );
  });

  it('every bad setting is named, not only the first', async () => {
    const app = live.app('cfg');
    await preStream(app, { max_age: 3600 * NS, storage: 'memory' as never });
    const err = await refusal(app);
    expect(err.message).toMatch(/max_age is 3600 s/);
    expect(err.message).toMatch(/storage is memory/);
  });
});

describe('an existing lease bucket with a setting that breaks a guarantee is refused', () => {
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['max_age', { ttl: 60_000 }, /max_age is 60 s .*TTL.*two primaries.*Fix: set max_age to 0/],
    ['storage', { storage: 'memory' }, /storage is memory: a restart of the server empties the bucket/],
    ['max_bytes', { max_bytes: 1 << 16 }, /max_bytes is 65536: .*Fix: set max_bytes to -1/],
  ];
  for (const [setting, opts, message] of cases) {
    it(setting, async () => {
      const app = live.app('cfg');
      await new Kvm(live.nc).create(appNames(app).leaseBucket, { history: 1, ...opts });
      const err = await refusal(app);
      expect(err.option).toBe(`lease bucket rp-${app}-lease.${setting}`);
      expect(err.message).toMatch(message);
      const report = await statusJson(app);
      expect((report.settingProblems ?? []).join('\n')).toContain(
        `lease bucket rp-${app}-lease: ${setting} is`,
      );
    });
  }
});

describe('an existing stream and bucket with good settings are accepted', () => {
  it('as restartpoint creates them, or differing only where no guarantee depends on it', async () => {
    const app = live.app('cfg');
    // deny_delete, a longer dedupe window, a consumer limit, history 5 in the bucket: harmless.
    await preStream(app, { deny_delete: true, duplicate_window: 300 * NS, max_consumers: 50 });
    await new Kvm(live.nc).create(appNames(app).leaseBucket, { history: 5 });
    const rp = await live.start(nodeOptions<{ n: number }>(app, 'a', { initialState: () => ({ n: 0 }) }));
    expect(rp.isPrimary).toBe(true);
    await rp.checkpoint({ n: 1 });
    const report = await statusJson(app);
    expect(report.settingProblems).toEqual([]);
  });
});
