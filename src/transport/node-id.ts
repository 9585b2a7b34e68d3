/**
 * One process per node id. A node (SDK or sidecar) started with the id of a node that is still
 * running would share its presence record and, under the sidecar, its token file: `status`
 * would show one row for two processes and the first one's app would be locked out of its API.
 * `refuseLiveNodeId` runs before a node does anything under its id.
 *
 * A node is live when its presence record (src/transport/presence.ts) is fresh and:
 *
 * - it was written on this host: its pid is still running (`kill(pid, 0)`), so a node that was
 *   SIGKILLed and is restarted at once is not refused;
 * - it was written on another host: the record is rewritten within `2.5 × PRESENCE_EVERY_MS`
 *   (watched, so clocks that disagree do not matter). A record nobody rewrites is a dead node's.
 *
 * Records written by this very process are never a conflict (a sidecar rejoining as a standby).
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import type { KV } from '@nats-io/kv';
import { ConfigError } from '../errors.js';
import { PRESENCE_EVERY_MS, PRESENCE_STALE_MS, presenceKey, type PresenceRecord } from './presence.js';

/** Options of `liveNodeRecord` and `refuseLiveNodeId`. */
export interface NodeIdCheckOptions {
  /** How long to watch a fresh record from another host for a rewrite. Default 2.5 × PRESENCE_EVERY_MS. */
  readonly watchMs?: number;
  /** Wall clock (tests). */
  readonly now?: () => number;
}

/** Whether process `pid` runs on this host (a process of another user counts; a zombie does not). */
export function pidAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  return procState(pid) !== 'Z';
}

/** The state letter of `/proc/<pid>/stat` (`R`, `S`, `Z`...), or undefined without /proc. */
function procState(pid: number): string | undefined {
  const fields = procStatFields(pid);
  return fields?.[0];
}

/** Fields 3 and on of `/proc/<pid>/stat`, or undefined. */
function procStatFields(pid: number): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/**
 * When process `pid` started, in clock ticks since boot (`/proc/<pid>/stat` field 22), or
 * undefined where /proc cannot say. With the pid it names one process even after pid reuse.
 */
export function processStartTicks(pid: number): number | undefined {
  const ticks = Number(procStatFields(pid)?.[19]);
  return Number.isSafeInteger(ticks) ? ticks : undefined;
}

function parseRecord(bytes: Uint8Array): PresenceRecord | undefined {
  try {
    const v = JSON.parse(Buffer.from(bytes).toString('utf8')) as Partial<PresenceRecord>;
    if (typeof v?.nodeId !== 'string' || typeof v.updatedAt !== 'number') return undefined;
    return v as PresenceRecord;
  } catch {
    return undefined;
  }
}

/**
 * The presence record of a live node other than this process that uses `nodeId`, or undefined
 * when no such node runs (see the module comment for what "live" means).
 */
export async function liveNodeRecord(
  kv: KV,
  nodeId: string,
  opts: NodeIdCheckOptions = {},
): Promise<PresenceRecord | undefined> {
  const now = opts.now ?? Date.now;
  const key = presenceKey(nodeId);
  const e = await kv.get(key);
  if (!e || e.operation !== 'PUT') return undefined;
  const rec = parseRecord(e.value);
  if (!rec) return undefined;
  const here = hostname();
  if (rec.host === here && rec.pid === process.pid) return undefined;
  if (rec.host === here)
    return pidAlive(rec.pid) && now() - rec.updatedAt <= PRESENCE_STALE_MS ? rec : undefined;
  // Another host: a live node rewrites its record every PRESENCE_EVERY_MS. Clocks of two hosts
  // may disagree, so the age decides only when the record is older than it could ever be live.
  if (now() - rec.updatedAt > PRESENCE_STALE_MS * 12) return undefined;
  const deadline = now() + (opts.watchMs ?? PRESENCE_EVERY_MS * 2.5);
  while (now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    const later = await kv.get(key);
    if (!later || later.operation !== 'PUT') return undefined;
    if (later.revision !== e.revision) {
      const r = parseRecord(later.value);
      return r && !(r.host === here && r.pid === process.pid) ? r : undefined;
    }
  }
  return undefined;
}

/**
 * Throws `ConfigError` (field `nodeId`) when a live node already uses `nodeId`, saying which
 * process it is and how to proceed. `reuse: true` (the `reuseNodeId` option) skips the check.
 */
export async function refuseLiveNodeId(
  kv: KV,
  app: string,
  nodeId: string,
  opts: NodeIdCheckOptions & { readonly reuse?: boolean; readonly override?: string } = {},
): Promise<void> {
  if (opts.reuse) return;
  const rec = await liveNodeRecord(kv, nodeId, opts);
  if (!rec) return;
  const ageS = Math.max(0, ((opts.now ?? Date.now)() - rec.updatedAt) / 1000).toFixed(1);
  throw new ConfigError(
    'nodeId',
    `is '${nodeId}', the id of a live node of app '${app}' (pid ${rec.pid} on host ${rec.host}, ${rec.state} in epoch ${rec.epoch}, presence written ${ageS} s ago). ` +
      `Give every node its own id (nodeId, RESTARTPOINT_NODE_ID), or stop that node first. ` +
      `If it is gone for sure, its record stops counting ${PRESENCE_STALE_MS / 1000} s after its last write; or start with ${opts.override ?? 'reuseNodeId: true'} to skip this check`,
  );
}
