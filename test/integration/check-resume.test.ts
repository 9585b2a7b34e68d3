/**
 * `restartpoint check-resume` (issue 17): the new build's resume path (restore + the app's real
 * `migrate`) against the live history, in a sandbox that writes nothing.
 *
 * A build-1 ledger (a real process) makes a history on the shared nats-server and is SIGKILLed, so
 * nothing else writes to the app's stream or lease bucket. Then the CLI (a real process) runs
 * build 2 of the ledger (stateVersion 2 + migrate) in check-resume mode:
 * - with a correct `migrate`: exit 0, resumed from the last acknowledged checkpoint, migrated,
 *   the verification hook agrees;
 * - with a broken `migrate`: exit 1, the exception and the checkpoint it failed on in the output;
 * - either way the stream's last sequence and the lease bucket's are unchanged, read by the test.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { AppProcess } from '../../src/drill/app-process.js';
import { sampleAppPath } from '../../src/drill/app-process.js';
import { appNames } from '../../src/protocol/subjects.js';
import { kvStreamName } from '../../src/transport/inspect.js';
import type { CheckResumeReport } from '../../src/cli/commands/check-resume.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';
import { runCli } from '../helpers/cli.js';

let nc: NatsConnection;
let dir: string;
const app = freshApp('chkres');
let lastAcked = 0;
let ackedDigests: Map<number, string>;

async function seqs(): Promise<{ stream: number; lease: number }> {
  const jsm = await jetstreamManager(nc);
  const names = appNames(app);
  return {
    stream: (await jsm.streams.info(names.stream)).state.last_seq,
    lease: (await jsm.streams.info(kvStreamName(names.leaseBucket))).state.last_seq,
  };
}

const ledger = (...extra: string[]): string[] => [
  process.execPath,
  sampleAppPath(),
  '--node',
  'check',
  '--app',
  app,
  '--nats',
  NATS_URL,
  ...extra,
];

beforeAll(async () => {
  nc = await requireNats();
  dir = await mkdtemp(join(tmpdir(), 'rp-chkres-'));
  const a = new AppProcess('a');
  ackedDigests = new Map();
  a.on((e) => {
    if (e.ev === 'acked') {
      lastAcked = Math.max(lastAcked, Number(e.checkpoint));
      ackedDigests.set(Number(e.checkpoint), String(e.digest));
    }
  });
  a.start(['--app', app, '--store', 'file', '--dir', join(dir, 'a'), '--nats', NATS_URL, '--step-ms', '10']);
  await a.waitFor((e) => e.ev === 'acked' && Number(e.checkpoint) >= 12, 'a acks 12 checkpoints', 60_000);
  await a.kill();
}, 90_000);

afterAll(async () => {
  await deleteApp(nc, app);
  await nc.close();
  await rm(dir, { recursive: true, force: true });
});

describe('restartpoint check-resume', () => {
  it('passes a correct migrate: resumed from the last acknowledged checkpoint, hook agrees, nothing written', async () => {
    const before = await seqs();
    const run = await runCli(
      'check-resume',
      '--app',
      app,
      '--nats',
      NATS_URL,
      '--json',
      '--',
      ...ledger('--store', 'memory', '--build', '2'),
    );
    const after = await seqs();
    expect(run.status, run.stderr + run.stdout).toBe(0);
    const r = JSON.parse(run.stdout) as CheckResumeReport;
    expect(r).toMatchObject({
      ok: true,
      migrated: true,
      imageStateVersion: 1,
      stateVersion: 2,
      verified: true,
      error: null,
    });
    expect(r.checkpoint).toBeGreaterThanOrEqual(lastAcked);
    expect(r.mirrorDigest).toBe(r.storeDigest);
    expect(after).toEqual(before);
    expect(r.relays[0]).toMatchObject({ lastSeqBefore: before.stream, lastSeqAfter: before.stream });
    expect(r).toMatchObject({ leaseBucketSeqBefore: before.lease, leaseBucketSeqAfter: before.lease });
  }, 60_000);

  it('catches a broken migrate: exit 1, the exception and the checkpoint it failed on, nothing written', async () => {
    const before = await seqs();
    const run = await runCli(
      'check-resume',
      '--app',
      app,
      '--nats',
      NATS_URL,
      '--',
      ...ledger('--store', 'memory', '--build', '2', '--broken-migrate'),
    );
    const after = await seqs();
    expect(run.status, run.stderr + run.stdout).toBe(1);
    expect(run.stdout).toMatch(/FAILED at checkpoint (\d+)/);
    const failedAt = Number(/FAILED at checkpoint (\d+)/.exec(run.stdout)![1]);
    expect(failedAt).toBeGreaterThanOrEqual(lastAcked);
    expect(run.stdout).toMatch(
      /ERR_IMAGE: migrate\(image, 1\) failed for the image of checkpoint \d+ .*broken migrate: account totals do not add up/,
    );
    expect(after).toEqual(before);
  }, 60_000);

  it("refuses a store that holds data (never a node's store), and an app name that is not the one checked", async () => {
    // A store the ledger already wrote to: node a's own directory, opened as node a.
    const run = await runCli(
      'check-resume',
      '--app',
      app,
      '--nats',
      NATS_URL,
      '--json',
      '--',
      ...ledger('--store', 'file', '--dir', join(dir, 'a'), '--build', '2').map((x) =>
        x === 'check' ? 'a' : x,
      ),
    );
    expect(run.status).toBe(1);
    const r = JSON.parse(run.stdout) as CheckResumeReport;
    expect(r.error?.message).toMatch(/holds data, but check-resume materializes/);
    const other = await runCli(
      'check-resume',
      '--app',
      app,
      '--nats',
      NATS_URL,
      '--json',
      '--',
      process.execPath,
      sampleAppPath(),
      '--node',
      'check',
      '--app',
      `${app}x`,
      '--nats',
      NATS_URL,
      '--store',
      'memory',
    );
    expect(other.status).toBe(1);
    expect((JSON.parse(other.stdout) as CheckResumeReport).error?.message).toMatch(
      /restartpoint check-resume checks app/,
    );
    const usage = await runCli('check-resume', '--app', app);
    expect(usage.status).toBe(2);
  }, 60_000);
});
