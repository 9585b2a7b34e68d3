/**
 * Who owns a token file: `<tokenFile>.owner` holds the pid (and its start time) of the sidecar
 * that wrote it. A sidecar never replaces the token file of another sidecar that still runs:
 * that would lock the running primary's app out of its own API (401 to every call).
 */
import { readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname } from 'node:path';
import { ConfigError } from '../errors.js';
import { pidAlive, processStartTicks } from '../transport/node-id.js';

interface Owner {
  readonly pid: number;
  readonly start: number | null;
  readonly host: string;
}

async function readOwner(path: string): Promise<Owner | undefined> {
  try {
    const v = JSON.parse(await readFile(path, 'utf8')) as Partial<Owner>;
    if (!Number.isSafeInteger(v.pid) || typeof v.host !== 'string') return undefined;
    return { pid: v.pid!, start: typeof v.start === 'number' ? v.start : null, host: v.host };
  } catch {
    return undefined;
  }
}

function isMe(o: Owner): boolean {
  return o.pid === process.pid && o.host === hostname();
}

/** Whether the owner still runs: its pid, started when it was then (a reused pid is not it). */
function running(o: Owner): boolean {
  // A file on a shared disk written by another host: that process cannot be checked from here.
  if (o.host !== hostname()) return true;
  if (!pidAlive(o.pid)) return false;
  const now = processStartTicks(o.pid);
  return o.start === null || now === undefined || now === o.start;
}

/**
 * Claims `tokenFile` for this process; resolves with the function that gives it up. Throws
 * `ConfigError` (field `api.tokenFile`) when another sidecar that still runs owns it.
 */
export async function claimTokenFile(tokenFile: string): Promise<() => Promise<void>> {
  const path = `${tokenFile}.owner`;
  const me: Owner = { pid: process.pid, start: processStartTicks(process.pid) ?? null, host: hostname() };
  await mkdir(dirname(path), { recursive: true });
  const release = async (): Promise<void> => {
    const o = await readOwner(path);
    if (o && isMe(o)) await rm(path, { force: true }).catch(() => undefined);
  };
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      // Exclusive: of two sidecars starting at once, one wins (and a planted symlink is not followed).
      await writeFile(path, `${JSON.stringify(me)}\n`, { flag: 'wx', mode: 0o600 });
      return release;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const other = await readOwner(path);
    if (other && !isMe(other) && running(other)) {
      throw new ConfigError(
        'api.tokenFile',
        `is ${tokenFile}, the token file of a sidecar that is running (pid ${other.pid} on host ${other.host}); replacing it would lock that sidecar's app out of its API. ` +
          `Give each sidecar its own node id (RESTARTPOINT_NODE_ID) or its own api.tokenFile (RESTARTPOINT_API_TOKEN_FILE), or stop that sidecar first` +
          (other.host === hostname() ? '' : `; if it is gone, delete ${path}`),
      );
    }
    // A dead owner's claim (it was killed), unreadable, or ours: take it over.
    await rm(path, { force: true });
  }
  throw new Error(`cannot claim ${path}: it keeps coming back`);
}
