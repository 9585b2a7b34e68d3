/**
 * `restartpoint verify --config FILE [--quick] [--offline] [--json]`: checks one node's store,
 * from outside the node, with the adapter's own `verify()` (identity token, key count and
 * digest of the committed content against what the commits recorded). Loads the node's sidecar
 * config (flags.ts) and builds its adapter the sidecar's way (src/sidecar/storage.ts); calls
 * `open({ nodeId })`, `verify()`, `readMeta()` and `close()`, never a write of its own.
 * Exit 0: ok (or unrecorded); 1: mismatch, empty, lost or unreachable; 2: usage or config.
 */
import { hostname } from 'node:os';
import { Command } from 'commander';
import type { SidecarConfig } from '../../config/load.js';
import { StorageError, StoreLostError, UsageError } from '../../errors.js';
import { createStorage } from '../../sidecar/storage.js';
import type { StoreIdentity } from '../../storage/adapter.js';
import { loadConfigFlag } from '../flags.js';

/** `status` of a `VerifyReport`. */
export type VerifyStatus = 'ok' | 'unrecorded' | 'mismatch' | 'empty' | 'lost' | 'unreachable';

/** What `verify --json` prints (docs/cli.md). */
export interface VerifyReport {
  readonly ok: boolean;
  readonly status: VerifyStatus;
  readonly app: string;
  /** The config's nodeId, or `null` when the config sets none (then any token's node is accepted). */
  readonly nodeId: string | null;
  /** `{ kind, where }`: where names the store without secrets (dir, redis prefix, postgres table). */
  readonly store: { readonly kind: string; readonly where: string };
  readonly quick: boolean;
  readonly identity: StoreIdentity | null;
  readonly keys: number | null;
  readonly expectedKeys: number | null;
  readonly digest: string | null;
  readonly expectedDigest: string | null;
  /** Whether the store holds a commit's meta (a store never committed to, or wiped, has none). */
  readonly committed: boolean | null;
  readonly detail: string;
  /** What to do, when not ok. */
  readonly fix: string | null;
  /** Wall time of open + verify + readMeta, in ms. */
  readonly ms: number;
}

const REBUILD =
  'do not trust this store: restart the node (it clears its store and rebuilds it from the relays); if it is the primary, a standby takes over';

function where(s: SidecarConfig['storage']): string {
  switch (s.kind) {
    case 'file':
      return s.dir!;
    case 'redis':
      return `prefix ${s.prefix!} on ${redactUrl(s.url ?? 'redis://127.0.0.1:6379')}`;
    case 'postgres':
      return `table ${s.table ?? '(default)'}`;
    case 'memory':
      return 'memory';
  }
}

/** A URL without its password. */
function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparsable url)';
  }
}

/** Runs the check; never throws for what the store says (only for usage errors). */
export async function verifyNode(
  config: SidecarConfig,
  opts: { quick: boolean; offline: boolean },
): Promise<VerifyReport> {
  const s = config.storage;
  if (s.kind === 'memory') {
    throw new UsageError(
      `storage kind 'memory' lives inside the node's process: there is no store to verify from outside`,
      'verify checks file, redis and postgres stores',
    );
  }
  // loadConfig makes `<hostname>-<pid>` when the config sets no nodeId: that is this process, not the node.
  const nodeId = config.nodeId === `${hostname()}-${process.pid}` ? null : config.nodeId;
  const base = {
    app: config.app,
    nodeId,
    store: { kind: s.kind, where: where(s) },
    quick: opts.quick,
  };
  const empty = {
    identity: null,
    keys: null,
    expectedKeys: null,
    digest: null,
    expectedDigest: null,
    committed: null,
  };
  const t0 = performance.now();
  const ms = () => Math.round(performance.now() - t0);

  if (s.kind === 'postgres' && !opts.offline) {
    throw new UsageError(
      `the postgres store (${where(s)}) can only be verified while its node is stopped: open() takes the table's writer lock, which a running node holds (verify would wait 60 s for it, and a node starting meanwhile would wait for verify)`,
      'stop the node, then run verify again with --offline (Redis stores can be verified live)',
    );
  }
  if (s.kind === 'file') {
    if (!opts.offline) {
      throw new UsageError(
        `the file store at ${s.dir!} can only be verified while its node is stopped: opening it from a second process runs crash recovery, which cuts a record the node is appending and deletes a compaction in progress, and the node then finds its store lost`,
        'stop the node, then run verify again with --offline (Redis stores can be verified live)',
      );
    }
    const { inspectFileStore } = await import('restartpoint/adapters/file');
    const seen = await inspectFileStore(s.dir!);
    if (!seen.isStore || seen.log === undefined) {
      return {
        ...base,
        ...empty,
        ok: false,
        status: 'lost',
        detail: `${s.dir!} holds no file store (no FORMAT or no log): it was removed, or this node never started`,
        fix: REBUILD,
        ms: ms(),
      };
    }
    if (seen.end === undefined || seen.end < seen.size!) {
      return {
        ...base,
        ...empty,
        ok: false,
        status: 'mismatch',
        detail:
          seen.end === undefined
            ? `${seen.log} does not start like a log of this adapter: it was replaced or damaged`
            : `${seen.log} is ${seen.size!} bytes but its complete records end at ${seen.end}: ${seen.size! - seen.end} bytes after that are cut short or damaged (a truncation or damage underneath the node; a crash mid-write leaves a short torn tail too). The node's next open cuts the log back to an earlier commit`,
        fix: REBUILD,
        ms: ms(),
      };
    }
  }

  const adapter = await createStorage(s);
  try {
    await adapter.open(nodeId === null ? {} : { nodeId });
    const r = await adapter.verify({ quick: opts.quick });
    const meta = await adapter.readMeta();
    const committed = meta !== undefined;
    const wiped = !committed && r.keys === 0;
    const status: VerifyStatus = wiped ? 'empty' : r.status;
    return {
      ...base,
      ok: status === 'ok' || status === 'unrecorded',
      status,
      identity: r.identity,
      keys: r.keys,
      expectedKeys: r.expectedKeys ?? null,
      digest: r.digest ?? null,
      expectedDigest: r.expectedDigest ?? null,
      committed,
      detail: wiped
        ? `the store holds no keys and no commit: it was wiped or restarted empty (or the node has not committed yet). ${r.detail}`
        : r.detail,
      fix:
        status === 'ok'
          ? null
          : status === 'unrecorded'
            ? "the node's own writes (a primary) or an older store left no record: only the identity was checked; the relays are the truth for a primary"
            : REBUILD,
      ms: ms(),
    };
  } catch (err) {
    if (err instanceof StoreLostError) {
      return {
        ...base,
        ...empty,
        ok: false,
        status: 'lost',
        detail: `ERR_STORE_LOST: the store's identity token is missing or another node's, or its bytes failed their checks: it is not the store this node committed to. ${err.message}`,
        fix: REBUILD,
        ms: ms(),
      };
    }
    if (err instanceof StorageError) {
      return {
        ...base,
        ...empty,
        ok: false,
        status: 'unreachable',
        detail: `the store could not be read${err.retryable ? ' (retryable: try again)' : ''}: ${err.message}`,
        fix: 'check that the store is up and the config points at it, then run verify again',
        ms: ms(),
      };
    }
    throw err;
  } finally {
    await adapter.close().catch(() => undefined);
  }
}

/** Human-readable report. */
export function formatVerify(r: VerifyReport): string {
  const show = (v: unknown) => (v === null || v === undefined ? '-' : String(v));
  const lines = [
    `status     ${r.status}${r.ok ? '' : '  (NOT OK)'}`,
    `store      ${r.store.kind} ${r.store.where}`,
    `node       ${show(r.nodeId)}  app ${r.app}`,
    `identity   ${r.identity === null ? '-' : `store ${r.identity.storeId}, node ${show(r.identity.nodeId)}, ${r.identity.format}`}`,
    `check      ${r.quick ? 'quick (identity and key count)' : 'full (identity, every key and value)'}`,
    `keys       ${show(r.keys)} found, ${show(r.expectedKeys)} expected`,
    `digest     ${show(r.digest)} found, ${show(r.expectedDigest)} expected`,
    `committed  ${show(r.committed)}`,
    `detail     ${r.detail}`,
  ];
  if (r.fix !== null) lines.push(`fix        ${r.fix}`);
  lines.push(`took       ${r.ms} ms`);
  return `${lines.join('\n')}\n`;
}

/** The `verify` command. */
export function verifyCommand(): Command {
  return new Command('verify')
    .description("check a node's store against what its commits recorded (identity, key count, digest)")
    .requiredOption('--config <file>', "the node's sidecar config (its storage section and nodeId)")
    .option('--quick', 'identity and key count only (O(1)); default: every key and value (O(store))', false)
    .option(
      '--offline',
      'file and postgres stores: assert the node is stopped (required for those kinds)',
      false,
    )
    .option('--json', 'print one JSON object (docs/cli.md)', false)
    .action(async (o: { config: string; quick: boolean; offline: boolean; json: boolean }) => {
      const config = loadConfigFlag(o.config);
      const r = await verifyNode(config, { quick: o.quick, offline: o.offline });
      process.stdout.write(o.json ? `${JSON.stringify(r)}\n` : formatVerify(r));
      if (!r.ok) process.exitCode = 1;
    });
}
