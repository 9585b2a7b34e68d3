/**
 * The read half of `restartpoint status`: the lease, presence and switchover records, the
 * stream and each relay's copy of it, read straight from NATS into a `StatusReport` (the
 * `--json` object). `status-format.ts` turns the report into the human output.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, type StreamInfo } from '@nats-io/jetstream';
import { UsageError } from '../../errors.js';
import type { EnvelopeCodec } from '../../protocol/envelope.js';
import { readHistory, type StatusHistoryRelay } from './status-history.js';
import { FrameKind, decodePart } from '../../protocol/frame.js';
import { readInspect } from './inspect-read.js';
import { appNames } from '../../protocol/subjects.js';
import {
  PRESENCE_EXPIRE_MS,
  PRESENCE_STALE_MS,
  connectServers,
  openLeaseBucket,
  readLease,
  readPresence,
  readSwitchover,
  streamInfo,
  type PresenceRecord,
  type SwitchoverRequest,
} from '../../transport/inspect.js';
import {
  HEADER_ROOM,
  leaseBucketProblems,
  streamProblems,
  type SettingProblem,
} from '../../transport/connection.js';

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
  /**
   * Each relay as this node sees it (primary and standby): connected, down since the node
   * started (`pending`), being caught up from the others (`backfilling`), messages waiting in
   * the primary's backlog for it. Absent for nodes that do not report it (older versions).
   */
  relayStates?: StatusRelayState[];
  /** The app's `stateVersion` the node runs with; `null` for a node older than upgrades. */
  stateVersion: number | null;
  /** The wire version the node writes and reads up to; `null` for a node older than upgrades. */
  protocolVersion: number | null;
  /**
   * Whether the node could resume from what it holds; `false` when its image or the relays' frames
   * are newer than its build (it never claims); `null` for a node older than upgrades.
   */
  canResume: boolean | null;
  /** Why the node cannot resume, or `null`. */
  cannotResume: string | null;
  /** Whether the node may build bases (`base.build`); `null` for a node older than the field. */
  buildsBases: boolean | null;
}

/** One relay as a node sees it (presence `relayStates`). */
export interface StatusRelayState {
  servers: string;
  connected: boolean;
  pending: boolean;
  backfilling: boolean;
  backlog: number | null;
}

/** One relay's copy of the stream. */
export interface StatusRelay {
  servers: string;
  reachable: boolean;
  messages: number;
  lastSeq: number;
  lagMessages: number;
  /** Whether the leader is connected to it (its presence record); absent when it does not say. */
  leaderConnected?: boolean;
  /** Whether the leader is backfilling it now (copying what it missed from the other relays). */
  backfilling?: boolean;
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
  /**
   * How `lastSealed` was read: `plain` (an unsigned part), `decoded` (signed or FEC: opened with
   * the cluster key and rebuilt from shards, as `inspect` reads), or `null` when no seal could be
   * read; then `lastSealedNote` says why (a signed stream without `--key`, say).
   */
  lastSealedFrom?: 'plain' | 'decoded' | null;
  lastSealedNote?: string;
  /** Each relay's copy of the stream and how far it is behind the fullest one. */
  relays?: StatusRelay[];
  /** Where `relays` came from: the `--relay` flags, or the relays named in the nodes' presence. */
  relaysFrom?: 'flag' | 'presence';
  /**
   * One entry per node presence record, sorted by node id; records older than
   * `PRESENCE_EXPIRE_MS` (2 minutes) are left out.
   */
  nodes: StatusNode[];
  /** How many presence records were left out as older than `PRESENCE_EXPIRE_MS`. */
  expiredNodes?: number;
  /** A pending planned switchover, or `null`. */
  switchover: SwitchoverRequest | null;
  /**
   * Settings of the stream (where it was read) or the lease bucket that break a guarantee, each
   * with its fix; a node refuses to start on them (docs/failover.md, "Existing streams and
   * buckets"). Empty when all is well.
   */
  settingProblems?: string[];
  /**
   * Per relay (or the stream's server when no relay is known): the latest base snapshot and what
   * the relay retains (issue 13, src/cli/commands/status-history.ts).
   */
  history?: StatusHistoryRelay[];
}

function describeProblems(what: string, problems: SettingProblem[]): string[] {
  return problems.map((p) => `${what}: ${p.setting} is ${p.value}: ${p.why}. Fix: ${p.fix}`);
}

/** What `readStatus` needs. */
export interface StatusOptions {
  /** The NATS server (with JetStream) that holds the lease; `|` or `,` between servers of a cluster. */
  nats: string;
  app: string;
  /** Relays to report on (`--relay`). None: the relays in the nodes' presence records. */
  relays?: string[];
  /** Signed streams: the cluster key's codec (`--key`, `--config`), to read the last seal. */
  envelope?: EnvelopeCodec;
  /** Clock for record ages (tests). */
  now?: () => number;
}

/** Reads one relay's copy of the app's stream; `undefined` when unreachable or absent. */
async function relayState(
  servers: string,
  stream: string,
): Promise<{ messages: number; lastSeq: number } | undefined> {
  try {
    const nc = await connectServers(servers, { timeoutMs: 3_000 });
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
      ...relayStates(r),
      stateVersion: Number.isSafeInteger(r.stateVersion) ? r.stateVersion! : null,
      protocolVersion: Number.isSafeInteger(r.protocolVersion) ? r.protocolVersion! : null,
      canResume: typeof r.canResume === 'boolean' ? r.canResume : null,
      cannotResume: typeof r.cannotResume === 'string' ? r.cannotResume : null,
      buildsBases: typeof r.buildsBases === 'boolean' ? r.buildsBases : null,
    };
  });
}

/** A presence record's relay states, checked field by field (absent in older records). */
function relayStates(rec: PresenceRecord): { relayStates?: StatusRelayState[] } {
  const list = (rec as { relayStates?: unknown }).relayStates;
  if (!Array.isArray(list)) return {};
  const out: StatusRelayState[] = [];
  for (const r of list as unknown[]) {
    const x = r as Partial<Record<keyof StatusRelayState, unknown>> | null;
    if (!x || typeof x.servers !== 'string' || x.servers === '') continue;
    out.push({
      servers: x.servers,
      connected: x.connected === true,
      pending: x.pending === true,
      backfilling: x.backfilling === true,
      backlog: num(x.backlog),
    });
  }
  return { relayStates: out };
}

/** One server list however written (`a,b`, `a|b`, order): for matching a relay across sources. */
const serverSet = (servers: string): string =>
  servers
    .split(/[,|]/)
    .map((x) => x.trim())
    .filter(Boolean)
    .sort()
    .join(',');

/** Relays named in presence records, first appearance first, live nodes before stale ones. */
function presenceRelays(nodes: readonly StatusNode[]): string[] {
  const out: string[] = [];
  for (const n of [...nodes.filter((x) => !x.stale), ...nodes.filter((x) => x.stale)]) {
    for (const r of n.relays) if (!out.includes(r.servers)) out.push(r.servers);
  }
  return out;
}

async function open(url: string): Promise<NatsConnection> {
  return connectServers(url, { timeoutMs: 5_000 }).catch((err: Error) => {
    throw new Error(
      `cannot connect to NATS at ${url}: ${err.message} (is nats-server running there? check --nats and --relay)`,
    );
  });
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

/**
 * The newest seal of a signed or FEC stream, read as `inspect` reads (the last 1000 messages of
 * each relay, opened with the cluster key, parts rebuilt from the shards of all relays).
 */
async function decodedSeal(
  app: string,
  info: StreamInfo,
  streamServers: string,
  relayList: readonly string[],
  envelope: EnvelopeCodec | undefined,
): Promise<{ seal?: { checkpoint: number; epoch: number }; note?: string }> {
  const list = relayList.length > 0 ? [...relayList] : [streamServers];
  const report = await readInspect({
    app,
    relays: list.map((r) => ({ servers: r.split('|') })),
    envelope,
    from: Math.max(1, info.state.last_seq - 999),
    limit: 1000,
    stallMs: 5_000,
  });
  let best: { checkpoint: number; epoch: number; at: number } | undefined;
  for (const r of report.relays) {
    for (const f of r.frames) {
      if (f.kind !== 'seal' || f.checkpoint === null) continue;
      // The latest epoch's latest seal: a deposed primary's higher numbers do not count over it.
      if (!best || f.epoch > best.epoch || (f.epoch === best.epoch && f.checkpoint > best.checkpoint)) {
        best = { checkpoint: f.checkpoint, epoch: f.epoch, at: f.streamSeq };
      }
    }
  }
  if (best) return { seal: { checkpoint: best.checkpoint, epoch: best.epoch } };
  const reasons = new Set(report.relays.flatMap((r) => r.rejected.map((x) => x.reason)));
  if (!envelope && (reasons.has('unsigned') || reasons.has('magic') || reasons.size > 0)) {
    return {
      note: `no seal could be read: the stream's messages do not open without the cluster key (${[...reasons].join(', ')}); pass --key or --config`,
    };
  }
  if (reasons.has('forged')) {
    return { note: 'no seal could be read: the messages do not verify under the given cluster key (forged)' };
  }
  return { note: 'no seal among the last 1000 messages of the relays read' };
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
    const kv = await openLeaseBucket(nc, app);
    const read = kv ? await readLease(kv, names).catch(() => undefined) : undefined;
    const lease = { leader: read?.holder ?? null, epoch: read?.epoch ?? null };
    const now0 = (opts.now ?? Date.now)();
    // Records of nodes gone longer than PRESENCE_EXPIRE_MS are left out (counted in expiredNodes).
    const all = kv ? await readPresence(kv).catch(() => []) : [];
    const records = all.filter((r) => now0 - r.updatedAt <= PRESENCE_EXPIRE_MS);
    const switchover = kv ? ((await readSwitchover(kv).catch(() => undefined)) ?? null) : null;

    // With relays, the stream lives there; the lease always lives on --nats.
    let streamServers = opts.nats;
    let info: StreamInfo | undefined;
    let sc: NatsConnection = nc;
    const fromPresence = presenceRelays(statusNodes(records, lease.leader, null, now0));
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
      const relayList = flagRelays.length > 0 ? flagRelays : fromPresence;
      let seal = await newestSeal(sc, app, info);
      let sealFrom: 'plain' | 'decoded' | null = seal ? 'plain' : null;
      let sealNote: string | undefined;
      if (!seal && info.state.messages > 0) {
        // Signed or FEC: read the tail as inspect does (envelope opened, parts rebuilt from the
        // shards of every relay).
        const decoded = await decodedSeal(app, info, streamServers, relayList, opts.envelope);
        seal = decoded.seal;
        sealFrom = seal ? 'decoded' : null;
        sealNote = decoded.note;
      }
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
        lastSealedFrom: sealFrom,
        ...(sealNote ? { lastSealedNote: sealNote } : {}),
        nodes: statusNodes(records, lease.leader, lastSealed, now),
        switchover,
        settingProblems: [
          ...describeProblems(
            `stream ${names.stream}`,
            streamProblems(info.config, {
              subjects: names.streamSubjects,
              replicas: 1,
              maxPayload: (sc.info?.max_payload ?? 1024 * 1024) - HEADER_ROOM,
            }),
          ),
          ...describeProblems(
            `lease bucket ${names.leaseBucket}`,
            kv ? leaseBucketProblems((await streamInfo(nc, `KV_${names.leaseBucket}`))?.config ?? {}) : [],
          ),
        ],
      };
      if (relayList.length > 0) {
        const states = await Promise.all(relayList.map((u) => relayState(u, names.stream)));
        const most = Math.max(0, ...states.map((x) => x?.messages ?? 0));
        // The leader's view of each relay (connected, backfilling), when its record says.
        const leaderStates = report.nodes.find((n) => n.leader)?.relayStates ?? [];
        report.relays = relayList.map((servers, i) => {
          const seen = leaderStates.find((x) => serverSet(x.servers) === serverSet(servers));
          return {
            servers,
            reachable: states[i] !== undefined,
            messages: states[i]?.messages ?? 0,
            lastSeq: states[i]?.lastSeq ?? 0,
            lagMessages: most - (states[i]?.messages ?? 0),
            ...(seen ? { leaderConnected: seen.connected, backfilling: seen.backfilling } : {}),
          };
        });
        report.relaysFrom = flagRelays.length > 0 ? 'flag' : 'presence';
      }
      report.history = await readHistory(
        relayList.length > 0 ? relayList : [streamServers],
        app,
        opts.envelope,
      );
      report.expiredNodes = all.length - records.length;
      return report;
    } finally {
      if (sc !== nc) await sc.close();
    }
  } finally {
    await nc.close();
  }
}
