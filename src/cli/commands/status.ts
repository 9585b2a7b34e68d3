/**
 * `restartpoint status --app NAME`: leader, epoch, last sealed checkpoint, stream depth, read
 * straight from the relay (no node needs to be running).
 */
import { Command } from 'commander';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { UsageError } from '../../errors.js';
import { FrameKind, decodePart } from '../../protocol/frame.js';
import { APP_NAME_PATTERN, appNames } from '../../protocol/subjects.js';

/** The `status --json` object (docs/cli.md). */
export interface StatusReport {
  app: string;
  leader: string | null;
  epoch: number | null;
  lastSealed: number | null;
  lastSealedEpoch: number | null;
  streamMessages: number;
  streamBytes: number;
  streamLastSeq: number;
}

/** Reads the status of `app` from the relay. */
export async function readStatus(servers: string, app: string): Promise<StatusReport> {
  const names = appNames(app);
  const nc = await connect({ servers, timeout: 5_000 }).catch((err: Error) => {
    throw new Error(`cannot connect to NATS at ${servers}: ${err.message}`);
  });
  try {
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info(names.stream).catch(() => {
      throw new UsageError(
        `no app '${app}' on ${servers} (stream ${names.stream} not found)`,
        'check --app and --nats',
      );
    });
    const report: StatusReport = {
      app,
      leader: null,
      epoch: null,
      lastSealed: null,
      lastSealedEpoch: null,
      streamMessages: info.state.messages,
      streamBytes: info.state.bytes,
      streamLastSeq: info.state.last_seq,
    };
    const kv = await new Kvm(nc).open(names.leaseBucket).catch(() => undefined);
    const e = await kv?.get(names.leaseKey).catch(() => null);
    if (e && e.operation === 'PUT') {
      try {
        const v = e.json<{ holder: string | null; epoch: number }>();
        report.leader = typeof v.holder === 'string' ? v.holder : null;
        report.epoch = Number.isSafeInteger(v.epoch) ? v.epoch : null;
      } catch {
        // an unreadable lease value: report no leader rather than fail the whole command
      }
    }
    // Walk back from the end to the newest seal (a few messages at most on a live app).
    for (
      let seq = info.state.last_seq;
      seq >= info.state.first_seq && seq > info.state.last_seq - 1000;
      seq--
    ) {
      const m = await jsm.streams.getMessage(names.stream, { seq }).catch(() => null);
      if (!m) continue;
      try {
        const p = decodePart(m.data, app);
        if (p.kind === FrameKind.Seal) {
          report.lastSealed = p.checkpoint;
          report.lastSealedEpoch = p.epoch;
          break;
        }
      } catch {
        // a rejected frame: keep looking
      }
    }
    return report;
  } finally {
    await nc.close();
  }
}

/** The `status` command. */
export function statusCommand(): Command {
  return new Command('status')
    .description('show leader, epoch, last sealed checkpoint and stream depth of an app')
    .requiredOption('--app <name>', 'app name as passed to Restartpoint.start()')
    .option('--nats <url>', 'NATS server with JetStream', 'nats://127.0.0.1:4222')
    .option('--json', 'print one JSON object (docs/cli.md)', false)
    .action(async (o: { app: string; nats: string; json: boolean }) => {
      if (!APP_NAME_PATTERN.test(o.app)) {
        throw new UsageError(
          `--app '${o.app}' is not a valid app name`,
          'use 1-64 characters of [A-Za-z0-9_-]',
        );
      }
      const r = await readStatus(o.nats, o.app);
      if (o.json) {
        process.stdout.write(`${JSON.stringify(r)}\n`);
        return;
      }
      const rows: [string, string][] = [
        ['app', r.app],
        ['leader', r.leader ?? '(none: no primary holds the lease)'],
        ['epoch', String(r.epoch ?? '-')],
        [
          'last sealed checkpoint',
          r.lastSealed === null ? '-' : `${r.lastSealed} (epoch ${r.lastSealedEpoch})`,
        ],
        ['stream', `${r.streamMessages} messages, ${r.streamBytes} bytes, last seq ${r.streamLastSeq}`],
      ];
      for (const [k, v] of rows) process.stdout.write(`${k.padEnd(24)}${v}\n`);
    });
}
