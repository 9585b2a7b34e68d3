/**
 * The read side of an app's NATS footprint, for tools that look at an app from outside (the
 * `status`, `switchover` and `drill` commands, and the tests): the lease record, the presence
 * and switchover records next to it, stream info, and deleting what an app left behind. Every
 * name comes from `appNames()`; nothing here knows about frames or records.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, type StreamInfo } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { appNames, type AppNames } from '../protocol/subjects.js';
import { parseLeaseValue, type LeaseValue } from './lease-store.js';

export {
  PRESENCE_EXPIRE_MS,
  PRESENCE_STALE_MS,
  readPresence,
  readSwitchover,
  writeSwitchover,
  clearSwitchover,
  type PresenceRecord,
  type SwitchoverRequest,
} from './presence.js';
export type { LeaseValue } from './lease-store.js';

/**
 * One server list as every command takes it (`--nats`, `--relay`): URLs separated by `|` or
 * `,`, blanks around them ignored. `nats://a:4222|nats://b:4222` and `nats://a:4222,nats://b:4222`
 * are the same cluster.
 */
export function splitServers(list: string): string[] {
  return list
    .split(/[|,]/)
    .map((x) => x.trim())
    .filter((x) => x !== '');
}

/** The JetStream stream behind a KV bucket (NATS's naming rule). */
export function kvStreamName(bucket: string): string {
  return `KV_${bucket}`;
}

/** Every stream an app owns on a server: its frames, and its lease bucket's. */
export function appStreams(app: string): string[] {
  const names = appNames(app);
  return [names.stream, kvStreamName(names.leaseBucket)];
}

/** Connects to `servers` (a list, or one string split by `splitServers`) for a short look. */
export async function connectServers(
  servers: string | readonly string[],
  opts: { timeoutMs?: number; maxReconnectAttempts?: number } = {},
): Promise<NatsConnection> {
  return connect({
    servers: typeof servers === 'string' ? splitServers(servers) : [...servers],
    timeout: opts.timeoutMs ?? 5_000,
    maxReconnectAttempts: opts.maxReconnectAttempts ?? 0,
  });
}

/** Opens the app's lease bucket without creating it; `undefined` when the app has none there. */
export async function openLeaseBucket(nc: NatsConnection, app: string): Promise<KV | undefined> {
  return new Kvm(nc).open(appNames(app).leaseBucket).catch(() => undefined);
}

/** The lease as it stands, or `undefined` when there is none (never written, deleted, unreadable). */
export async function readLease(kv: KV, names: AppNames): Promise<LeaseValue | undefined> {
  const e = await kv.get(names.leaseKey);
  if (!e || e.operation !== 'PUT') return undefined;
  return parseLeaseValue(e.value);
}

/** The info of `stream` on the server of `nc`, or `undefined` when it has no such stream. */
export async function streamInfo(nc: NatsConnection, stream: string): Promise<StreamInfo | undefined> {
  const jsm = await jetstreamManager(nc);
  return jsm.streams.info(stream).catch(() => undefined);
}

/** Deletes an app's frame stream and lease bucket on the server of `nc` (missing ones are fine). */
export async function deleteApp(nc: NatsConnection, app: string): Promise<void> {
  const jsm = await jetstreamManager(nc);
  for (const stream of appStreams(app)) await jsm.streams.delete(stream).catch(() => undefined);
}

/** `deleteApp` on `servers`, with a connection of its own. */
export async function deleteAppAt(servers: string | readonly string[], app: string): Promise<void> {
  const nc = await connectServers(servers, { timeoutMs: 3_000 });
  try {
    await deleteApp(nc, app);
  } finally {
    await nc.close();
  }
}
