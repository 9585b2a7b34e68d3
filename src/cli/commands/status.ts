/**
 * `restartpoint status --app NAME`: leader, epoch, last sealed checkpoint, stream depth, the
 * nodes that report presence (role, checkpoint, lag) and each relay's copy of the stream, read
 * straight from NATS (no node needs to be running).
 */
import { Command } from 'commander';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, type StreamInfo } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { UsageError } from '../../errors.js';
import { FrameKind, decodePart } from '../../protocol/frame.js';
import { APP_NAME_PATTERN, appNames } from '../../protocol/subjects.js';
import {
  PRESENCE_STALE_MS,
  readPresence,
  readSwitchover,
  type PresenceRecord,
  type SwitchoverRequest,
} from '../../transport/presence.js';

/** One relay's lag as a standby reported it (`null`: unknown, the relay was unreachable). */
export interface StatusRelayLag {
  servers: string;
  connected: boolean;
  frames: number | null;
  bytes: number | null;
  seconds: number | null;
  checkpoints: number | null;
}

/** One node, from its presence record. */
export interface StatusNode {
  nodeId: string;
  /** The node's failover state (`primary`, `standby`, `catching-up`, ...). */
  role: string;
  epoch: number;
  /** Last acknowledged (primary) or committed (standby) checkpoint. */
  checkpoint: number;
  /** The leader's checkpoint minus this one (0 for the leader; `null` when unknown). */
  lagCheckpoints: number | null;
  /** Whether this node holds the lease (its id is the lease's holder). */
  leader: boolean;
  host: string;
  pid: number | null;
  /** Wall-clock ms when the node wrote the record. */
  updatedAt: number;
  /** How old the record is, in ms. */
  ageMs: number;
  /** Older than `PRESENCE_STALE_MS`: the node stopped without a clean close. */
  stale: boolean;
  /** A standby's lag per relay (empty on a primary). */
  relays: StatusRelayLag[];
}

/** One relay's copy of the stream. */
export interface StatusRelay {
  servers: string;
  reachable: boolean;
  messages: number;
  lastSeq: number;
  lagMessages: number;
}

/** The `status --json` object (docs/cli.md). Fields are only ever added. */
export interface StatusReport {
  app: string;
  leader: string | null;
  epoch: number | null;
  lastSealed: number | null;
  lastSealedEpoch: number | null;
  streamMessages: number;
  streamBytes: number;
  streamLastSeq: number;
  /** Where the stream figures were read (the `--nats` server, the first `--relay`, or a relay from presence). */
  streamServers: string;
  /** Each relay's copy of the stream and how far it is behind the fullest one. */
  relays?: StatusRelay[];
  /** Where `relays` came from: the `--relay` flags, or the relays named in the nodes' presence. */
  relaysFrom?: 'flag' | 'presence';
  /** One entry per node presence record, sorted by node id. */
  nodes: StatusNode[];
  /** A pending planned switchover, or `null`. */
  switchover: SwitchoverRequest | null;
}

/** What `readStatus` needs. */
export interface StatusOptions {
  /** The NATS server (with JetStream) that holds the lease; `|` or `,` between servers of a cluster. */
  nats: string;
  app: string;
  /** Relays to report on (`--relay`). None: the relays in the nodes' presence records. */
  relays?: string[];
  /** Clock for record ages (tests). */
  now?: () => number;
}

const splitServers = (s: string): string[] =>
  s
    .split(/[|,]/)
    .map((x) => x.trim())
    .filter((x) => x !== '');

/** Reads one relay's copy of the app's stream; `undefined` when unreachable or absent. */
async function relayState(
  servers: string,
  stream: string,
): Promise<{ messages: number; lastSeq: number } | undefined> {
  try {
    const nc = await connect({ servers: splitServers(servers), timeout: 3_000, maxReconnectAttempts: 0 });
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

const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

/** A presence record's relay samples, checked field by field (the record is not trusted). */
function relayLags(rec: PresenceRecord): StatusRelayLag[] {
  const out: StatusRelayLag[] = [];
  for (const r of rec.relays as unknown[]) {
    const x = r as Partial<Record<keyof StatusRelayLag, unknown>> | null;
    if (!x || typeof x.servers !== 'string' || x.servers === '') continue;
    out.push({
      servers: x.servers,
      connected: x.connected === true,
      frames: num(x.frames),
      bytes: num(x.bytes),
      seconds: num(x.seconds),
      checkpoints: num(x.checkpoints),
    });
  }
  return out;
}

/** The status nodes from presence records: age, staleness and lag behind the leader. */
export function statusNodes(
  records: readonly PresenceRecord[],
  leader: string | null,
  lastSealed: number | null,
  now: number,
): StatusNode[] {
  const lead = records.find((r) => r.nodeId === leader);
  // The leader's own word first; without its record, the newest seal in the stream.
  const reference = lead ? lead.checkpoint : lastSealed;
  return records.map((r) => {
    const ageMs = Math.max(0, now - r.updatedAt);
    return {
      nodeId: r.nodeId,
      role: r.state,
      epoch: r.epoch,
      checkpoint: r.checkpoint,
      lagCheckpoints: reference === null ? null : Math.max(0, reference - r.checkpoint),
      leader: r.nodeId === leader,
      host: typeof r.host === 'string' ? r.host : '',
      pid: Number.isSafeInteger(r.pid) ? r.pid : null,
      updatedAt: r.updatedAt,
      ageMs,
      stale: ageMs > PRESENCE_STALE_MS,
      relays: relayLags(r),
    };
  });
}

/** Relays named in presence records, first appearance first, live nodes before stale ones. */
function presenceRelays(nodes: readonly StatusNode[]): string[] {
  const out: string[] = [];
  for (const n of [...nodes.filter((x) => !x.stale), ...nodes.filter((x) => x.stale)]) {
    for (const r of n.relays) if (!out.includes(r.servers)) out.push(r.servers);
  }
  return out;
}

async function open(url: string): Promise<NatsConnection> {
  return connect({ servers: splitServers(url), timeout: 5_000, maxReconnectAttempts: 0 }).catch(
    (err: Error) => {
      throw new Error(
        `cannot connect to NATS at ${url}: ${err.message} (is nats-server running there? check --nats and --relay)`,
      );
    },
  );
}

/** The stream's info on `servers`, or `undefined` when that server has no such stream. */
async function streamInfo(nc: NatsConnection, stream: string): Promise<StreamInfo | undefined> {
  const jsm = await jetstreamManager(nc);
  return jsm.streams.info(stream).catch(() => undefined);
}

/** Reads the newest seal among the stream's last 1000 messages. */
async function newestSeal(
  nc: NatsConnection,
  app: string,
  info: StreamInfo,
): Promise<{ checkpoint: number; epoch: number } | undefined> {
  const jsm = await jetstreamManager(nc);
  const stream = appNames(app).stream;
  for (
    let seq = info.state.last_seq;
    seq >= info.state.first_seq && seq > info.state.last_seq - 1000;
    seq--
  ) {
    const m = await jsm.streams.getMessage(stream, { seq }).catch(() => null);
    if (!m) continue;
    try {
      const p = decodePart(m.data, app);
      if (p.kind === FrameKind.Seal) return { checkpoint: p.checkpoint, epoch: p.epoch };
    } catch {
      // a rejected frame: keep looking
    }
  }
  return undefined;
}

/** Reads the lease holder and epoch; nulls when there is no readable lease. */
async function readLease(
  kv: KV | undefined,
  key: string,
): Promise<{ leader: string | null; epoch: number | null }> {
  const e = await kv?.get(key).catch(() => null);
  if (!e || e.operation !== 'PUT') return { leader: null, epoch: null };
  try {
    const v = e.json<{ holder: unknown; epoch: unknown }>();
    return {
      leader: typeof v.holder === 'string' ? v.holder : null,
      epoch: Number.isSafeInteger(v.epoch) ? (v.epoch as number) : null,
    };
  } catch {
    // an unreadable lease value: report no leader rather than fail the whole command
    return { leader: null, epoch: null };
  }
}

/**
 * Reads the status of an app: the lease, presence and switchover records from `nats`, the
 * stream from the first relay (`relays`, else `nats`, else the first relay named in presence
 * that holds it), and each relay's copy of the stream.
 */
export async function readStatus(opts: StatusOptions): Promise<StatusReport> {
  const { app } = opts;
  const flagRelays = opts.relays ?? [];
  const names = appNames(app);
  const nc = await open(opts.nats);
  try {
    const kv = await new Kvm(nc).open(names.leaseBucket).catch(() => undefined);
    const lease = await readLease(kv, names.leaseKey);
    const records = kv ? await readPresence(kv).catch(() => []) : [];
    const switchover = kv ? ((await readSwitchover(kv).catch(() => undefined)) ?? null) : null;

    // With relays, the stream lives there; the lease always lives on --nats.
    let streamServers = opts.nats;
    let info: StreamInfo | undefined;
    let sc: NatsConnection = nc;
    const fromPresence = presenceRelays(statusNodes(records, lease.leader, null, (opts.now ?? Date.now)()));
    try {
      if (flagRelays.length > 0) {
        streamServers = flagRelays[0]!;
        sc = await open(streamServers);
        info = await streamInfo(sc, names.stream);
      } else {
        info = await streamInfo(nc, names.stream);
        for (const r of fromPresence) {
          if (info) break;
          const c = await open(r).catch(() => undefined);
          const i = c ? await streamInfo(c, names.stream) : undefined;
          if (i && c) {
            sc = c;
            streamServers = r;
            info = i;
          } else {
            await c?.close();
          }
        }
      }
      if (!info) {
        throw new UsageError(
          `no app '${app}' on ${streamServers} (stream ${names.stream} not found)`,
          flagRelays.length > 0
            ? 'check --app and --relay'
            : 'check --app and --nats (pass --relay when the app uses relays)',
        );
      }
      const seal = await newestSeal(sc, app, info);
      const lastSealed = seal?.checkpoint ?? null;
      const now = (opts.now ?? Date.now)();
      const report: StatusReport = {
        app,
        leader: lease.leader,
        epoch: lease.epoch,
        lastSealed,
        lastSealedEpoch: seal?.epoch ?? null,
        streamMessages: info.state.messages,
        streamBytes: info.state.bytes,
        streamLastSeq: info.state.last_seq,
        streamServers,
        nodes: statusNodes(records, lease.leader, lastSealed, now),
        switchover,
      };
      const relayList = flagRelays.length > 0 ? flagRelays : fromPresence;
      if (relayList.length > 0) {
        const states = await Promise.all(relayList.map((u) => relayState(u, names.stream)));
        const most = Math.max(0, ...states.map((x) => x?.messages ?? 0));
        report.relays = relayList.map((servers, i) => ({
          servers,
          reachable: states[i] !== undefined,
          messages: states[i]?.messages ?? 0,
          lastSeq: states[i]?.lastSeq ?? 0,
          lagMessages: most - (states[i]?.messages ?? 0),
        }));
        report.relaysFrom = flagRelays.length > 0 ? 'flag' : 'presence';
      }
      return report;
    } finally {
      if (sc !== nc) await sc.close();
    }
  } finally {
    await nc.close();
  }
}

/** Lays rows out in columns two spaces apart. */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: readonly string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].map((l) => `${l}\n`).join('');
}

const dash = (v: number | null | undefined, unit = ''): string =>
  v === null || v === undefined ? '-' : `${v}${unit}`;

/** A duration in ms as `0.4s`, `12s`, `3m05s`. */
function age(ms: number): string {
  if (ms < 10_000) return `${(ms / 1000).toFixed(1)}s`;
  if (ms < 60_000) return `${Math.round(ms / 1000)}s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
}

/** The human output of `status`. */
export function formatStatus(r: StatusReport): string {
  const leaderNode = r.nodes.find((n) => n.leader);
  const rows: [string, string][] = [
    ['app', r.app],
    [
      'leader',
      r.leader === null
        ? '(none: no primary holds the lease)'
        : leaderNode?.stale
          ? `${r.leader} (presence stale for ${age(leaderNode.ageMs)}: it may be dead; a standby takes over when the lease runs out)`
          : r.leader,
    ],
    ['epoch', String(r.epoch ?? '-')],
    ['last sealed checkpoint', r.lastSealed === null ? '-' : `${r.lastSealed} (epoch ${r.lastSealedEpoch})`],
    ['stream', `${r.streamMessages} messages, ${r.streamBytes} bytes, last seq ${r.streamLastSeq}`],
    [
      'switchover',
      r.switchover
        ? `requested ${new Date(r.switchover.requestedAt).toISOString()}: ${r.switchover.from} (epoch ${r.switchover.epoch}) to hand over`
        : 'none pending',
    ],
  ];
  let out = rows.map(([k, v]) => `${k.padEnd(24)}${v}\n`).join('');

  out += '\nnodes\n';
  if (r.nodes.length === 0) {
    out += '  (no presence records: no node is running, or the nodes are older than presence)\n';
  } else {
    out += formatTable(
      ['node', 'role', 'epoch', 'checkpoint', 'lag', 'age', 'host', 'pid'],
      r.nodes.map((n) => [
        `${n.nodeId}${n.leader ? ' *' : ''}`,
        n.stale ? `${n.role} (stale)` : n.role,
        String(n.epoch),
        String(n.checkpoint),
        dash(n.lagCheckpoints),
        age(n.ageMs),
        n.host || '-',
        dash(n.pid),
      ]),
    )
      .split('\n')
      .map((l) => (l ? `  ${l}` : l))
      .join('\n');
  }

  const lags = r.nodes.flatMap((n) => n.relays.map((x) => ({ node: n.nodeId, ...x })));
  if (lags.length > 0) {
    out += '\nstandby lag per relay\n';
    out += formatTable(
      ['node', 'relay', 'connected', 'frames', 'bytes', 'seconds', 'checkpoints'],
      lags.map((x) => [
        x.node,
        x.servers,
        x.connected ? 'yes' : 'no',
        dash(x.frames),
        dash(x.bytes),
        dash(x.seconds),
        dash(x.checkpoints),
      ]),
    )
      .split('\n')
      .map((l) => (l ? `  ${l}` : l))
      .join('\n');
  }

  if (r.relays && r.relays.length > 0) {
    out += `\nrelays (${r.relaysFrom === 'presence' ? 'named in presence records' : 'from --relay'})\n`;
    out += formatTable(
      ['servers', 'reachable', 'messages', 'last seq', 'lag'],
      r.relays.map((x) => [
        x.servers,
        x.reachable ? 'yes' : 'no',
        x.reachable ? String(x.messages) : '-',
        x.reachable ? String(x.lastSeq) : '-',
        x.reachable ? `${x.lagMessages} behind` : 'unreachable',
      ]),
    )
      .split('\n')
      .map((l) => (l ? `  ${l}` : l))
      .join('\n');
  }
  return out;
}

/** The `status` command. */
export function statusCommand(): Command {
  return new Command('status')
    .description(
      'show leader, epoch, last sealed checkpoint, stream depth, nodes (role, lag) and relays of an app',
    )
    .requiredOption('--app <name>', 'app name as passed to Restartpoint.start()')
    .option('--nats <url>', 'NATS server with JetStream', 'nats://127.0.0.1:4222')
    .option(
      '--relay <url>',
      "a relay to report on (repeat it; a cluster's servers joined by '|'); default: the relays the nodes report",
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
      for (const [flag, v] of [['--nats', o.nats], ...o.relay.map((x) => ['--relay', x])] as [
        string,
        string,
      ][]) {
        if (splitServers(v).length === 0) {
          throw new UsageError(`${flag} '${v}' names no server`, `give a URL such as nats://127.0.0.1:4222`);
        }
      }
      const r = await readStatus({ nats: o.nats, app: o.app, relays: o.relay });
      process.stdout.write(o.json ? `${JSON.stringify(r)}\n` : formatStatus(r));
    });
}
