/**
 * Presence and switchover records, kept in the app's lease bucket next to the lease:
 *
 * - `node.<id>`: one per node, rewritten every `PRESENCE_EVERY_MS` by the node itself (its role,
 *   epoch, checkpoint and per-relay lag) and deleted on a clean close. `restartpoint status`
 *   reads them; a record older than `PRESENCE_STALE_MS` belongs to a node that is gone, and one
 *   older than `PRESENCE_EXPIRE_MS` is no longer shown.
 * - `switchover`: a request by `restartpoint switchover` that the primary of `epoch` hand its
 *   role to a standby at its next checkpoint (docs/failover.md, "Planned switchover").
 *
 * Values are JSON; anything unreadable is ignored (never trusted).
 */
import type { KV } from '@nats-io/kv';
import type { JetStreamManager } from '@nats-io/jetstream';
import type { NodeState, RelayLagSample } from '../observability/observer.js';

/** How often a node rewrites its presence record. */
export const PRESENCE_EVERY_MS = 1_000;
/** A presence record older than this belongs to a node that stopped without a clean close. */
export const PRESENCE_STALE_MS = 5_000;
/**
 * A presence record older than this is left out of `restartpoint status` (and of every reader
 * that asks for live-or-recent nodes): its node has been gone that long, without a clean close
 * that would have deleted it. Until then it shows as stale.
 */
export const PRESENCE_EXPIRE_MS = 120_000;
/** KV key of the switchover request. */
export const SWITCHOVER_KEY = 'switchover';

/** What a node says about itself. */
export interface PresenceRecord {
  readonly nodeId: string;
  readonly state: NodeState;
  /** The epoch the node holds (primary) or has seen last (standby). */
  readonly epoch: number;
  /** Last acknowledged (primary) or committed (standby) checkpoint. */
  readonly checkpoint: number;
  readonly host: string;
  readonly pid: number;
  /** Wall-clock ms when written. */
  readonly updatedAt: number;
  /** A standby's lag per relay (empty on a primary). */
  readonly relays: readonly RelayLagSample[];
  /**
   * Each relay as this node sees it, primary or standby: connected, down since the node started
   * (`pending`), being caught up by backfill, messages in the primary's backlog for it. Absent in
   * records of older versions.
   */
  readonly relayStates?: readonly RelayStateSample[];
  /** The app's `stateVersion` this node runs with (absent: a node older than upgrades, docs/upgrades.md). */
  readonly stateVersion?: number;
  /** The wire version this node writes (and the newest it reads). */
  readonly protocolVersion?: number;
  /**
   * Whether this node could resume from the last checkpoint it holds (a primary: true). False:
   * the image is of a newer `stateVersion`, or the relays hold frames of a newer wire version
   * (`cannotResume` says which); such a standby never claims the lease.
   */
  readonly canResume?: boolean;
  /** Why this node cannot resume, when `canResume` is false. */
  readonly cannotResume?: string;
  /**
   * Whether this node may build bases (`false`: its options say `base: { build: false }`, so it
   * is never chosen builder). Absent in records of older versions: it may.
   */
  readonly buildsBases?: boolean;
}

/** One relay as a node sees it (presence `relayStates`, shown by `status`). */
export interface RelayStateSample {
  readonly servers: string;
  readonly connected: boolean;
  readonly pending: boolean;
  readonly backfilling: boolean;
  readonly backlog: number;
}

/** A request to hand the primary role over. */
export interface SwitchoverRequest {
  /** The epoch of the primary that must hand over; a newer primary ignores the request. */
  readonly epoch: number;
  /** The node that holds that epoch (as the lease said when the request was made). */
  readonly from: string;
  /** Wall-clock ms of the request. */
  readonly requestedAt: number;
  /** Random id, to tell requests apart. */
  readonly id: string;
}

/** KV key of a node's presence record: `node.` + the id in base64url (KV keys are `[-/_=.a-zA-Z0-9]`). */
export function presenceKey(nodeId: string): string {
  return `node.${Buffer.from(nodeId, 'utf8').toString('base64url')}`;
}

function parseJson(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    return undefined;
  }
}

function isPresence(v: unknown): v is PresenceRecord {
  const r = v as Partial<PresenceRecord> | undefined;
  return (
    !!r &&
    typeof r.nodeId === 'string' &&
    typeof r.state === 'string' &&
    Number.isSafeInteger(r.epoch) &&
    Number.isSafeInteger(r.checkpoint) &&
    typeof r.updatedAt === 'number' &&
    Array.isArray(r.relays)
  );
}

/** Writes this node's presence record. */
export async function writePresence(kv: KV, rec: PresenceRecord): Promise<void> {
  await kv.put(presenceKey(rec.nodeId), Buffer.from(JSON.stringify(rec)));
}

/** Deletes this node's presence record (clean close). */
export async function deletePresence(kv: KV, nodeId: string): Promise<void> {
  await kv.delete(presenceKey(nodeId));
}

/**
 * Every readable presence record in the bucket, stale ones included (compare `updatedAt`).
 *
 * The keys come from the bucket stream's per-subject counts (one request), not `kv.keys()`:
 * that lister can wait forever when a key is rewritten while it lists, and presence records are
 * rewritten every second.
 */
export async function readPresence(kv: KV): Promise<PresenceRecord[]> {
  const bucket = kv as unknown as { jsm?: JetStreamManager; stream?: string; prefix?: string };
  if (!bucket.jsm || !bucket.stream || !bucket.prefix) throw new Error('not a JetStream KV bucket');
  const info = await bucket.jsm.streams.info(bucket.stream, { subjects_filter: `${bucket.prefix}.node.>` });
  const subjects = Object.keys(info.state.subjects ?? {});
  const out: PresenceRecord[] = [];
  for (const subject of subjects) {
    const e = await kv.get(subject.slice(bucket.prefix.length + 1));
    if (!e || e.operation !== 'PUT') continue;
    const v = parseJson(e.value);
    if (isPresence(v)) out.push(v);
  }
  return out.sort((a, b) => a.nodeId.localeCompare(b.nodeId));
}

/** Reads the pending switchover request, if any. */
export async function readSwitchover(kv: KV): Promise<SwitchoverRequest | undefined> {
  const e = await kv.get(SWITCHOVER_KEY);
  if (!e || e.operation !== 'PUT') return undefined;
  const v = parseJson(e.value) as Partial<SwitchoverRequest> | undefined;
  if (
    !v ||
    !Number.isSafeInteger(v.epoch) ||
    typeof v.from !== 'string' ||
    typeof v.requestedAt !== 'number' ||
    typeof v.id !== 'string'
  ) {
    return undefined;
  }
  return v as SwitchoverRequest;
}

/** Writes a switchover request. */
export async function writeSwitchover(kv: KV, req: SwitchoverRequest): Promise<void> {
  await kv.put(SWITCHOVER_KEY, Buffer.from(JSON.stringify(req)));
}

/** Withdraws a switchover request. */
export async function clearSwitchover(kv: KV): Promise<void> {
  await kv.delete(SWITCHOVER_KEY);
}

/** KV key of a compaction request (`restartpoint compact`). */
export const COMPACT_KEY = 'compact';
/** KV key of the answer to the last compaction request. */
export const COMPACT_DONE_KEY = 'compact-done';

/** A request that the base builder make a base now. */
export interface CompactRequest {
  readonly id: string;
  /** Wall-clock ms of the request. */
  readonly requestedAt: number;
}

/** What the builder did about a compaction request. */
export interface CompactDone {
  readonly id: string;
  /** The checkpoint of the base made for it. */
  readonly checkpoint: number;
  readonly builder: string;
  /** Wall-clock ms when the base was durable. */
  readonly doneAt: number;
  /** Relays purged below the window (per relay, the first stream seq kept; null: not purged yet). */
  readonly purgedBelow: readonly (number | null)[];
}

/** Writes a compaction request. */
export async function writeCompact(kv: KV, req: CompactRequest): Promise<void> {
  await kv.put(COMPACT_KEY, Buffer.from(JSON.stringify(req)));
}

/** Reads the pending compaction request, if any. */
export async function readCompact(kv: KV): Promise<CompactRequest | undefined> {
  const e = await kv.get(COMPACT_KEY);
  if (!e || e.operation !== 'PUT') return undefined;
  const v = parseJson(e.value) as Partial<CompactRequest> | undefined;
  if (!v || typeof v.id !== 'string' || typeof v.requestedAt !== 'number') return undefined;
  return v as CompactRequest;
}

/** Withdraws the compaction request and records what was done for it. */
export async function answerCompact(kv: KV, done: CompactDone): Promise<void> {
  await kv.put(COMPACT_DONE_KEY, Buffer.from(JSON.stringify(done)));
  await kv.delete(COMPACT_KEY);
}

/** The answer to the last compaction request, if any. */
export async function readCompactDone(kv: KV): Promise<CompactDone | undefined> {
  const e = await kv.get(COMPACT_DONE_KEY);
  if (!e || e.operation !== 'PUT') return undefined;
  const v = parseJson(e.value) as Partial<CompactDone> | undefined;
  if (!v || typeof v.id !== 'string' || !Number.isSafeInteger(v.checkpoint)) return undefined;
  return v as CompactDone;
}

/**
 * The node that builds bases: the live standby (presence fresher than `PRESENCE_STALE_MS`) with
 * the smallest node id among those that may build (`buildsBases` not false), or `undefined` when
 * there is none.
 */
export function baseBuilder(records: readonly PresenceRecord[], nowMs: number): string | undefined {
  const live = records
    .filter(
      (r) => r.state === 'standby' && r.buildsBases !== false && nowMs - r.updatedAt < PRESENCE_STALE_MS,
    )
    .map((r) => r.nodeId)
    .sort();
  return live[0];
}
