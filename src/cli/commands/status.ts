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
  /** With `--relay`: each relay's copy of the stream and how far it is behind the fullest one. */
  relays?: { servers: string; reachable: boolean; messages: number; lastSeq: number; lagMessages: number }[];
}

/** Reads one relay's copy of the app's stream; `undefined` when unreachable. */
async function relayState(
  servers: string,
  stream: string,
): Promise<{ messages: number; lastSeq: number } | undefined> {
  try {
    const nc = await connect({ servers: servers.split('|'), timeout: 3_000, maxReconnectAttempts: 0 });
    try {
      const info = await (await jetstreamManager(nc, { timeout: 3_000 })).streams.info(stream);
      return { messages: info.state.messages, lastSeq: info.state.last_seq };
    } finally {
      await nc.close();
    }
  } catch {
    return undefined;
  }
}

/** Reads the status of `app` from the relay. */
export async function readStatus(
  servers: string,
  app: string,
  streamServers?: string,
): Promise<StatusReport> {
  const names = appNames(app);
  const open = (url: string) =>
    connect({ servers: url.split('|'), timeout: 5_000 }).catch((err: Error) => {
      throw new Error(`cannot connect to NATS at ${url}: ${err.message}`);
    });
  const nc = await open(servers);
  // With relays, the stream lives there; the lease always lives on --nats.
  const sc = streamServers
    ? await open(streamServers).catch(async (err: unknown) => {
        await nc.close();
        throw err;
      })
    : nc;
  try {
    const jsm = await jetstreamManager(sc);
    const info = await jsm.streams.info(names.stream).catch(() => {
      throw new UsageError(
        `no app '${app}' on ${streamServers ?? servers} (stream ${names.stream} not found)`,
        streamServers
          ? 'check --app and --relay'
          : 'check --app and --nats (pass --relay when the app uses relays)',
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
    if (sc !== nc) await sc.close();
    await nc.close();
  }
}

/** The `status` command. */
export function statusCommand(): Command {
  return new Command('status')
    .description('show leader, epoch, last sealed checkpoint and stream depth of an app')
    .requiredOption('--app <name>', 'app name as passed to Restartpoint.start()')
    .option('--nats <url>', 'NATS server with JetStream', 'nats://127.0.0.1:4222')
    .option(
      '--relay <url>',
      "a relay to report on (repeat it; a cluster's servers joined by '|')",
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .option('--json', 'print one JSON object (docs/cli.md)', false)
    .action(async (o: { app: string; nats: string; json: boolean; relay: string[] }) => {
      if (!APP_NAME_PATTERN.test(o.app)) {
        throw new UsageError(
          `--app '${o.app}' is not a valid app name`,
          'use 1-64 characters of [A-Za-z0-9_-]',
        );
      }
      const r = await readStatus(o.nats, o.app, o.relay[0]);
      if (o.relay.length > 0) {
        const states = await Promise.all(o.relay.map((u) => relayState(u, appNames(o.app).stream)));
        const most = Math.max(0, ...states.map((x) => x?.messages ?? 0));
        r.relays = o.relay.map((servers, i) => ({
          servers,
          reachable: states[i] !== undefined,
          messages: states[i]?.messages ?? 0,
          lastSeq: states[i]?.lastSeq ?? 0,
          lagMessages: most - (states[i]?.messages ?? 0),
        }));
      }
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
      for (const x of r.relays ?? []) {
        rows.push([
          `relay ${x.servers}`,
          x.reachable
            ? `${x.messages} messages, last seq ${x.lastSeq}, ${x.lagMessages} behind`
            : 'unreachable',
        ]);
      }
      for (const [k, v] of rows) process.stdout.write(`${k.padEnd(24)}${v}\n`);
    });
}
