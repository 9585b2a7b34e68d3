/**
 * Connecting to NATS and provisioning the app's stream and lease bucket. Errors from the client
 * are translated into messages that say what to start or fix: the raw "jetstream is not
 * enabled" of a missing stream, or ECONNREFUSED, help nobody at 3 a.m.
 */
import { connect, type NatsConnection, type ConnectionOptions } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { NatsUnavailableError } from '../errors.js';
import type { AppNames } from '../protocol/subjects.js';

/**
 * Bytes kept free in every message for its headers: a body of exactly max_payload bytes plus a
 * Nats-Msg-Id header is refused ("max_payload size exceeded"). Ids are at most ~100 bytes.
 */
const HEADER_ROOM = 512;

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

/**
 * Creates the app's frame stream if it does not exist, and checks an existing one owns the
 * app's subjects. File storage, limits retention, 2-minute dedupe window, `replicas` copies
 * inside a clustered relay.
 */
export async function ensureStream(link: NatsLink, names: AppNames, replicas = 1): Promise<void> {
  try {
    const info = await link.jsm.streams.info(names.stream);
    const subjects = info.config.subjects ?? [];
    if (!names.streamSubjects.every((s) => subjects.includes(s))) {
      throw new NatsUnavailableError(
        `stream ${names.stream} exists but does not own ${names.streamSubjects.join(',')}; delete it or pick another 'app' name`,
      );
    }
    return;
  } catch (err) {
    if (err instanceof NatsUnavailableError) throw err;
    if (!/not found/i.test((err as Error).message)) {
      throw new NatsUnavailableError(`cannot inspect stream ${names.stream}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }
  try {
    await link.jsm.streams.add({
      name: names.stream,
      subjects: names.streamSubjects,
      storage: 'file' as never,
      duplicate_window: 120_000_000_000,
      num_replicas: replicas,
    });
  } catch (err) {
    const msg = (err as Error).message;
    // Another node may have created it between our info and add: that is fine.
    if (/already in use|already exists/i.test(msg)) return;
    throw new NatsUnavailableError(
      `cannot create stream ${names.stream} on ${link.servers}: ${msg}${/overlap/i.test(msg) ? ' (another stream owns these subjects)' : ''}`,
      { cause: err },
    );
  }
}

/** Opens (creating when missing) the app's lease bucket. */
export async function openLeaseBucket(link: NatsLink, names: AppNames): Promise<KV> {
  try {
    return await new Kvm(link.nc).create(names.leaseBucket, { history: 1 });
  } catch (err) {
    throw new NatsUnavailableError(
      `cannot open lease bucket ${names.leaseBucket}: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
}

/** Closes a link, draining what is in flight. Never throws. */
export async function closeLink(link: NatsLink): Promise<void> {
  try {
    await link.nc.drain();
  } catch {
    await link.nc.close().catch(() => undefined);
  }
}
