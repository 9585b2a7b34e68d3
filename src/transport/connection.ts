/**
 * Connecting to NATS and provisioning the app's stream and lease bucket. Errors from the client
 * are translated into messages that say what to start or fix: the raw "jetstream is not
 * enabled" of a missing stream, or ECONNREFUSED, help nobody at 3 a.m.
 */
import { connect, type NatsConnection, type ConnectionOptions } from '@nats-io/transport-node';
import {
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
  type StreamConfig,
} from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { ConfigError, NatsUnavailableError } from '../errors.js';
import type { AppNames } from '../protocol/subjects.js';

/**
 * Bytes kept free in every message for its headers: a body of exactly max_payload bytes plus a
 * Nats-Msg-Id header is refused ("max_payload size exceeded"). Ids are at most ~100 bytes.
 */
export const HEADER_ROOM = 512;

/** An open link to one NATS server (or cluster) with JetStream. */
export interface NatsLink {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  /**
   * The largest part a publish may carry: the server's max payload less room for the headers
   * (`Nats-Msg-Id`), which the server counts against the same limit.
   */
  readonly maxPayload: number;
  readonly servers: string;
  /** Whether the client is connected now (false while it reconnects after losing the server). */
  readonly connected: () => boolean;
}

/** Connection options passed through to the NATS client (servers plus auth/TLS). */
export type NatsOptions = ConnectionOptions & { servers: string | string[] };

function describe(servers: string | string[]): string {
  return Array.isArray(servers) ? servers.join(',') : servers;
}

/** Connects and checks JetStream. Throws `NatsUnavailableError` naming the server and the fix. */
export async function openLink(opts: NatsOptions, name: string): Promise<NatsLink> {
  const servers = describe(opts.servers);
  let nc: NatsConnection;
  try {
    nc = await connect({
      name,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      pingInterval: 2_000,
      timeout: 5_000,
      // The client otherwise builds an Error (a stack capture) for every request, JetStream
      // publishes included: ~7 % of a checkpoint's CPU (issue 16 profile). Our errors name
      // the operation themselves. `nats: { noAsyncTraces: false }` turns the traces back on.
      noAsyncTraces: true,
      ...opts,
    });
  } catch (err) {
    throw new NatsUnavailableError(
      `cannot connect to NATS at ${servers}: ${(err as Error).message}. Start a server with JetStream (nats-server -js) or fix 'nats.servers'`,
      { cause: err },
    );
  }
  let jsm: JetStreamManager;
  try {
    jsm = await jetstreamManager(nc, { timeout: 5_000 });
  } catch (err) {
    await nc.close().catch(() => undefined);
    throw new NatsUnavailableError(
      `NATS at ${servers} has no JetStream: start nats-server with -js (and a -sd storage dir)`,
      { cause: err },
    );
  }
  // The client's own view of its socket (nats.js keeps it on its protocol handler); status
  // events can be missed by a late listener, the handler's flag cannot.
  const handler = nc as unknown as { protocol?: { connected?: boolean } };
  return {
    nc,
    js: jetstream(nc, { timeout: 5_000 }),
    jsm,
    maxPayload: (nc.info?.max_payload ?? 1024 * 1024) - HEADER_ROOM,
    servers,
    connected: () => !nc.isClosed() && handler.protocol?.connected !== false,
  };
}

/** Dedupe window restartpoint creates the stream with, and the least it accepts: 2 minutes. */
export const DUPLICATE_WINDOW_NS = 120_000_000_000;

/** One setting of an existing stream or bucket that breaks a guarantee. */
export interface SettingProblem {
  /** The server-side setting, as JetStream names it (`max_age`, `storage`, …). */
  readonly setting: string;
  /** Its value, as the server reports it. */
  readonly value: string;
  /** What goes wrong with it, and which guarantee it breaks. */
  readonly why: string;
  /** The exact change that fixes it (besides deleting the stream and letting restartpoint create it). */
  readonly fix: string;
}

function seconds(ns: number): string {
  return `${ns / 1e9} s (${ns} ns)`;
}

/** Whether the subject pattern `pattern` matches every subject `subject` (itself a pattern) matches. */
export function subjectCovers(pattern: string, subject: string): boolean {
  const p = pattern.split('.');
  const s = subject.split('.');
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '>') return i < s.length;
    if (i >= s.length) return false;
    if (s[i] === '>') return false;
    if (p[i] === '*') continue;
    if (p[i] !== s[i]) return false;
  }
  return p.length === s.length;
}

/**
 * Every setting of the app's frame stream that breaks a guarantee. The stream is the relay's
 * durable copy of every frame since the app began: a node that starts rebuilds its store by
 * replaying it from the first message, and the relay's publish ack is the durability point of
 * `checkpoint()`. So nothing may remove, refuse or lose a frame behind restartpoint's back.
 *
 * Accepted as they are: `deny_delete` (restartpoint never deletes single messages), `max_consumers`
 * (too few fails loudly at start, it cannot corrupt anything), `allow_rollup_hdrs`, `allow_direct`,
 * more replicas than asked for.
 */
export function streamProblems(
  config: Partial<StreamConfig>,
  want: { subjects: readonly string[]; replicas: number; maxPayload?: number },
): SettingProblem[] {
  const out: SettingProblem[] = [];
  const lost =
    'so a node that replays the stream misses frames, and a takeover can lose acknowledged checkpoints or resume from a store that lacks writes (guarantees 1 and 2)';
  const subjects = config.subjects ?? [];
  const uncovered = want.subjects.filter((w) => !subjects.some((s) => subjectCovers(s, w)));
  if (uncovered.length > 0) {
    out.push({
      setting: 'subjects',
      value: JSON.stringify(subjects),
      why: `they do not cover ${uncovered.join(', ')}, where this app publishes its frames: no relay would store them and no checkpoint could be acknowledged`,
      fix: `add ${uncovered.join(', ')} to the stream's subjects`,
    });
  }
  if (config.retention !== undefined && config.retention !== 'limits') {
    out.push({
      setting: 'retention',
      value: String(config.retention),
      why: `the server removes frames once a consumer acknowledged them or no consumer is interested, ${lost}`,
      fix: "recreate it with retention 'limits' (retention cannot be changed on an existing stream)",
    });
  }
  if ((config.max_age ?? 0) > 0) {
    out.push({
      setting: 'max_age',
      value: seconds(config.max_age!),
      why: `the server deletes frames older than that, ${lost}`,
      fix: 'set max_age to 0 (no age limit)',
    });
  }
  for (const [setting, what] of [
    ['max_msgs', 'messages'],
    ['max_bytes', 'bytes'],
  ] as const) {
    const v = config[setting] ?? -1;
    if (v > 0) {
      out.push({
        setting,
        value: String(v),
        why:
          config.discard === 'new'
            ? `once the stream holds ${v} ${what} the server refuses new frames, so every checkpoint fails from then on`
            : `once the stream holds ${v} ${what} the server deletes the oldest frames, ${lost}`,
        fix: `set ${setting} to -1 (no limit)`,
      });
    }
  }
  const perSubject = config.max_msgs_per_subject ?? -1;
  if (perSubject > 0) {
    out.push({
      setting: 'max_msgs_per_subject',
      value: String(perSubject),
      why: `every frame of the app goes to one subject, so the server keeps only the last ${perSubject} of them, ${lost}`,
      fix: 'set max_msgs_per_subject to -1 (no limit)',
    });
  }
  if (config.discard === 'new') {
    // Harmless while no limit is set; refused so that a limit added later (an account's
    // JetStream storage limit, an edit of the stream) cannot turn into refused frames.
    out.push({
      setting: 'discard',
      value: 'new',
      why: 'when any limit is reached (a stream or account limit) the server refuses new frames instead of keeping them, so checkpoints fail; restartpoint expects discard old with no limits',
      fix: "set discard to 'old'",
    });
  }
  if (config.storage === 'memory') {
    out.push({
      setting: 'storage',
      value: 'memory',
      why: 'the relay acknowledges a frame while it is only in memory, so a restart of the relay loses acknowledged checkpoints (guarantee 1)',
      fix: "recreate it with storage 'file' (storage cannot be changed on an existing stream)",
    });
  }
  const window = config.duplicate_window ?? DUPLICATE_WINDOW_NS;
  if (window < DUPLICATE_WINDOW_NS) {
    out.push({
      setting: 'duplicate_window',
      value: seconds(window),
      why: `frames are re-sent with the same Nats-Msg-Id (a publish whose ack was lost is retried, a failed frame is re-sent at the next checkpoint, a relay's backlog is re-sent after an outage); re-sent later than the window, the relay stores a second copy, which standbys reject as a duplicate but which costs relay disk and replay time (guarantee 6)`,
      fix: `set duplicate_window to at least ${seconds(DUPLICATE_WINDOW_NS)}`,
    });
  }
  if (
    (config.max_msg_size ?? -1) > 0 &&
    want.maxPayload !== undefined &&
    config.max_msg_size! < want.maxPayload
  ) {
    out.push({
      setting: 'max_msg_size',
      value: String(config.max_msg_size),
      why: `restartpoint sends messages of up to ${want.maxPayload} bytes (the server's max_payload less header room); larger ones would be refused and their checkpoints never acknowledged`,
      fix: 'set max_msg_size to -1 (no limit)',
    });
  }
  if (config.deny_purge) {
    // Purging below a durable base is how the relays will keep a retention window rather than
    // the whole history (DESIGN.md, "Living for months"; guarantee 6). Refused now, so that a
    // deployment never has to be rebuilt when retention arrives.
    out.push({
      setting: 'deny_purge',
      value: 'true',
      why: 'restartpoint purges frames below a durable base to keep relay disk and replay bounded by the state, not the history (guarantee 6)',
      fix: 'set deny_purge to false',
    });
  }
  if (config.sealed) {
    out.push({
      setting: 'sealed',
      value: 'true',
      why: 'a sealed stream refuses every new frame, so no checkpoint can be acknowledged',
      fix: 'delete the stream and let restartpoint create it (a sealed stream cannot be unsealed)',
    });
  }
  if (config.mirror) {
    out.push({
      setting: 'mirror',
      value: JSON.stringify(config.mirror.name),
      why: 'a mirror stream refuses direct publishes, so no checkpoint can be acknowledged',
      fix: 'delete the stream and let restartpoint create it',
    });
  }
  const replicas = config.num_replicas ?? 1;
  if (replicas < want.replicas) {
    out.push({
      setting: 'num_replicas',
      value: String(replicas),
      why: `'replicas' asks for ${want.replicas} copies inside this relay, but the stream keeps ${replicas}: the relay acknowledges frames that one server's loss can take, which the ack policy does not count on (guarantee 1)`,
      fix: `raise the stream's replicas to ${want.replicas}, or lower 'replicas' for this relay`,
    });
  }
  return out;
}

/**
 * Every setting of the lease bucket (the stream `KV_<bucket>`) that breaks a guarantee. The
 * bucket holds the lease record, whose revision standbys watch and whose epoch must never go
 * back, plus presence and switchover records rewritten every second.
 *
 * Accepted: any `history` from 1 up (the compare-and-set works on the key's last revision
 * whatever the history), any replicas (3 on a cluster is recommended, docs/relays-and-fec.md).
 */
export function leaseBucketProblems(config: Partial<StreamConfig>): SettingProblem[] {
  const out: SettingProblem[] = [];
  const vanish =
    'the lease record can vanish while a primary holds it: a standby then claims at once instead of after a TTL without change, while the old primary still counts its lease valid, so two primaries acknowledge checkpoints at the same time (guarantee 3)';
  if ((config.max_age ?? 0) > 0) {
    out.push({
      setting: 'max_age',
      value: seconds(config.max_age!),
      why: `the bucket has a TTL: ${vanish}; a released lease also forgets its epoch`,
      fix: 'set max_age to 0 (no TTL); restartpoint expires the lease by watching it, never by a TTL',
    });
  }
  if (config.storage === 'memory') {
    out.push({
      setting: 'storage',
      value: 'memory',
      why: `a restart of the server empties the bucket: ${vanish}`,
      fix: "recreate the bucket with storage 'file' (storage cannot be changed on an existing stream)",
    });
  }
  for (const setting of ['max_msgs', 'max_bytes'] as const) {
    const v = config[setting] ?? -1;
    if (v > 0) {
      out.push({
        setting,
        value: String(v),
        why:
          config.discard === 'new'
            ? `once the bucket holds that much, renewals are refused and the primary demotes itself with no standby able to claim (guarantee 3 kept, the app stops)`
            : `once the bucket holds that much (presence records are rewritten every second), the server deletes old records, the lease among them: ${vanish}`,
        fix: `set ${setting} to -1 (no limit)`,
      });
    }
  }
  if ((config.max_msgs_per_subject ?? 1) < 1) {
    out.push({
      setting: 'max_msgs_per_subject',
      value: String(config.max_msgs_per_subject),
      why: 'the history is unlimited, so every revision of every key is kept: presence records rewritten every second grow the bucket without bound (guarantee 6)',
      fix: 'set the history (max_msgs_per_subject) to 1',
    });
  }
  if (config.retention !== undefined && config.retention !== 'limits') {
    out.push({
      setting: 'retention',
      value: String(config.retention),
      why: `the server removes records once they are consumed: ${vanish}`,
      fix: "recreate the bucket with retention 'limits'",
    });
  }
  if (config.sealed || config.mirror) {
    out.push({
      setting: config.sealed ? 'sealed' : 'mirror',
      value: config.sealed ? 'true' : JSON.stringify(config.mirror!.name),
      why: 'the bucket refuses writes: no node could claim or renew the lease',
      fix: 'delete the bucket and let restartpoint create it',
    });
  }
  return out;
}

/** The refusal for `problems` of `what` (a stream or bucket) on `servers`. */
export function settingsError(what: string, servers: string, problems: SettingProblem[]): ConfigError {
  const p = problems[0]!;
  const all = problems.map((q) => `${q.setting} is ${q.value}: ${q.why}. Fix: ${q.fix}`).join('; ');
  return new ConfigError(
    `${what}.${p.setting}`,
    `on ${servers} breaks restartpoint's guarantees. ${all}. Or delete ${what} (when no node runs) and let restartpoint create it with the right settings.`,
  );
}

/**
 * Creates the app's frame stream if it does not exist: file storage, limits retention with no
 * limit, 2-minute dedupe window, `replicas` copies inside a clustered relay. An existing one is
 * checked setting by setting (`streamProblems`) and refused with a `ConfigError` naming what to
 * change.
 */
export async function ensureStream(
  link: NatsLink,
  names: AppNames,
  replicas = 1,
  raced = false,
): Promise<void> {
  let config: Partial<StreamConfig> | undefined;
  try {
    config = (await link.jsm.streams.info(names.stream)).config;
  } catch (err) {
    if (!/not found/i.test((err as Error).message)) {
      throw new NatsUnavailableError(`cannot inspect stream ${names.stream}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }
  if (config) {
    const problems = streamProblems(config, {
      subjects: names.streamSubjects,
      replicas,
      maxPayload: link.maxPayload,
    });
    if (problems.length > 0) throw settingsError(`stream ${names.stream}`, link.servers, problems);
    return;
  }
  try {
    await link.jsm.streams.add({
      name: names.stream,
      subjects: names.streamSubjects,
      storage: 'file' as never,
      duplicate_window: DUPLICATE_WINDOW_NS,
      num_replicas: replicas,
    });
  } catch (err) {
    const msg = (err as Error).message;
    // Another node may have created it between our info and add: check that one instead.
    if (!raced && /already in use|already exists/i.test(msg))
      return ensureStream(link, names, replicas, true);
    throw new NatsUnavailableError(
      `cannot create stream ${names.stream} on ${link.servers}: ${msg}${/overlap/i.test(msg) ? ' (another stream owns these subjects)' : ''}`,
      { cause: err },
    );
  }
}

/**
 * Opens (creating when missing) the app's lease bucket, and checks an existing one setting by
 * setting (`leaseBucketProblems`): refused with a `ConfigError` naming what to change.
 */
export async function openLeaseBucket(link: NatsLink, names: AppNames): Promise<KV> {
  let kv: KV;
  let config: Partial<StreamConfig>;
  try {
    kv = await new Kvm(link.nc).create(names.leaseBucket, { history: 1 });
    config = (await link.jsm.streams.info(`KV_${names.leaseBucket}`)).config;
  } catch (err) {
    throw new NatsUnavailableError(
      `cannot open lease bucket ${names.leaseBucket}: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  const problems = leaseBucketProblems(config);
  if (problems.length > 0) throw settingsError(`lease bucket ${names.leaseBucket}`, link.servers, problems);
  return kv;
}

/** Closes a link, draining what is in flight. Never throws. */
export async function closeLink(link: NatsLink): Promise<void> {
  try {
    await link.nc.drain();
  } catch {
    await link.nc.close().catch(() => undefined);
  }
}
