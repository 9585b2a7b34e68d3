/**
 * `restartpoint verify --app NAME [--nats URL] [--quick] [--json]`: asks every live node of the
 * app over NATS (src/transport/control.ts) to run `verify()` on its own store, and prints each
 * answer. Exit 0: every live node answered ok (or unrecorded); 1 otherwise.
 *
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
import { askVerify, type NodeVerifyAnswer } from '../../transport/control.js';
import { PRESENCE_STALE_MS, connectServers, openLeaseBucket, readPresence } from '../../transport/inspect.js';
import { checkAppName, checkServers, intFlag, loadConfigFlag } from '../flags.js';

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
  'do not trust this store: restart the node with verifyStore full (it then clears its store and rebuilds it from a base and the relays); if it is the primary, a standby takes over';

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

/** One node's line in `verify --app --json` (docs/cli.md). */
export interface AppVerifyNode {
  readonly nodeId: string;
  /** The node's state when it answered (`primary`, `standby`…). */
  readonly state: string;
  readonly kind: string;
  /** As `VerifyReport.status`: `ok`, `unrecorded`, `mismatch`, `lost` (ERR_STORE_LOST) or `unreachable` (another store error). */
  readonly status: VerifyStatus;
  readonly ok: boolean;
  readonly keys: number | null;
  readonly expectedKeys: number | null;
  readonly digest: string | null;
  readonly expectedDigest: string | null;
  readonly identity: StoreIdentity | null;
  readonly detail: string;
  readonly fix: string | null;
  /** Time of the check on the node, ms. */
  readonly ms: number;
}

/** What `verify --app NAME --json` prints (docs/cli.md). */
export interface AppVerifyReport {
  /** Every live node answered, and every answer is ok (or unrecorded). */
  readonly ok: boolean;
  readonly app: string;
  readonly quick: boolean;
  readonly nodes: readonly AppVerifyNode[];
  /** Live nodes (fresh presence records) that did not answer within `--timeout`. */
  readonly missing: readonly string[];
  /** Wall time of the whole request, ms. */
  readonly ms: number;
}

/** One node's answer as a report line. */
export function appVerifyNode(a: NodeVerifyAnswer): AppVerifyNode {
  const r = a.result;
  const status: VerifyStatus =
    r !== null ? r.status : a.error?.code === 'ERR_STORE_LOST' ? 'lost' : 'unreachable';
  const ok = status === 'ok' || status === 'unrecorded';
  return {
    nodeId: a.nodeId,
    state: a.state,
    kind: a.kind,
    status,
    ok,
    keys: r?.keys ?? null,
    expectedKeys: r?.expectedKeys ?? null,
    digest: r?.digest ?? null,
    expectedDigest: r?.expectedDigest ?? null,
    identity: r?.identity ?? null,
    detail: r?.detail ?? `${a.error?.code ?? 'error'}: ${a.error?.message ?? 'no detail'}`,
    fix:
      status === 'ok'
        ? null
        : status === 'unrecorded'
          ? "the node's own writes (a primary) or an older store left no record: only the identity was checked"
          : status === 'unreachable'
            ? 'check that the store is up (the node retries; a standby that cannot reach it at takeover releases the lease)'
            : a.state === 'standby'
              ? 'the standby rebuilds a lost store from the relays by itself at its next commit or takeover; restart it if that keeps happening'
              : REBUILD,
    ms: a.ms,
  };
}

/**
 * `verify --app`: asks the app's live nodes over NATS (`rpctl.<app>.verify`) to verify their
 * own stores. Waits for every node with a fresh presence record, or `timeoutMs`.
 */
export async function verifyApp(opts: {
  nats: string;
  app: string;
  quick: boolean;
  timeoutMs: number;
}): Promise<AppVerifyReport> {
  const t0 = performance.now();
  const nc = await connectServers(opts.nats, { timeoutMs: 5_000 }).catch((err: Error) => {
    throw new UsageError(
      `cannot connect to NATS at ${opts.nats}: ${err.message}`,
      'is nats-server running there? check --nats',
    );
  });
  try {
    const kv = await openLeaseBucket(nc, opts.app);
    const now = Date.now();
    const live = kv
      ? (await readPresence(kv).catch(() => []))
          .filter((p) => p.state !== 'closed' && now - p.updatedAt <= PRESENCE_STALE_MS)
          .map((p) => p.nodeId)
      : [];
    const answers = await askVerify(nc, opts.app, {
      quick: opts.quick,
      timeoutMs: opts.timeoutMs,
      expect: live.length > 0 ? live.length : undefined,
    });
    const nodes = answers.map(appVerifyNode);
    const answered = new Set(nodes.map((n) => n.nodeId));
    const missing = live.filter((id) => !answered.has(id)).sort();
    return {
      ok: nodes.length > 0 && missing.length === 0 && nodes.every((n) => n.ok),
      app: opts.app,
      quick: opts.quick,
      nodes,
      missing,
      ms: Math.round(performance.now() - t0),
    };
  } finally {
    await nc.close().catch(() => undefined);
  }
}

/** Human-readable `verify --app` report. */
export function formatAppVerify(r: AppVerifyReport): string {
  const show = (v: unknown) => (v === null || v === undefined ? '-' : String(v));
  const lines = [
    `app ${r.app}: ${r.nodes.length} node(s) answered, ${r.quick ? 'quick check' : 'full check'}${r.ok ? '' : '  (NOT OK)'}`,
  ];
  if (r.nodes.length === 0) lines.push('no node answered: is the app running, and --nats its lease server?');
  for (const n of r.nodes) {
    lines.push(
      `${n.nodeId}  ${n.state}  ${n.kind}  ${n.status}${n.ok ? '' : ' (NOT OK)'}  keys ${show(n.keys)}/${show(n.expectedKeys)}  ${n.ms} ms`,
      `    ${n.detail}`,
    );
    if (n.fix !== null) lines.push(`    fix: ${n.fix}`);
  }
  for (const id of r.missing) lines.push(`${id}  did not answer (live in presence): NOT OK`);
  lines.push(`took ${r.ms} ms`);
  return `${lines.join('\n')}\n`;
}

/** The `verify` command. */
export function verifyCommand(): Command {
  return new Command('verify')
    .description(
      "check a node's store against what its commits recorded (identity, key count, digest): --app asks the live nodes over NATS, --config opens one node's store",
    )
    .option('--config <file>', "the node's sidecar config (its storage section and nodeId)")
    .option('--app <name>', 'ask every live node of this app to verify its own store (over NATS)')
    .option('--nats <url>', "with --app: the app's lease server", 'nats://127.0.0.1:4222')
    .option(
      '--timeout <ms>',
      'with --app: how long to wait for the answers',
      intFlag('--timeout', 100, 600_000),
      10_000,
    )
    .option('--quick', 'identity and key count only (O(1)); default: every key and value (O(store))', false)
    .option(
      '--offline',
      'file and postgres stores: assert the node is stopped (required for those kinds)',
      false,
    )
    .option('--json', 'print one JSON object (docs/cli.md)', false)
    .action(
      async (o: {
        config?: string;
        app?: string;
        nats: string;
        timeout: number;
        quick: boolean;
        offline: boolean;
        json: boolean;
      }) => {
        if ((o.config === undefined) === (o.app === undefined)) {
          throw new UsageError(
            "verify needs exactly one of --config FILE (open one stopped node's store) and --app NAME (ask the live nodes)",
            'restartpoint verify --app ledger [--quick]  or  restartpoint verify --config node.yaml --offline',
          );
        }
        if (o.app !== undefined) {
          checkAppName(o.app);
          checkServers('--nats', o.nats);
          if (o.offline) throw new UsageError('--offline goes with --config, not --app', 'drop --offline');
          const r = await verifyApp({ nats: o.nats, app: o.app, quick: o.quick, timeoutMs: o.timeout });
          process.stdout.write(o.json ? `${JSON.stringify(r)}\n` : formatAppVerify(r));
          if (!r.ok) process.exitCode = 1;
          return;
        }
        const config = loadConfigFlag(o.config!);
        const r = await verifyNode(config, { quick: o.quick, offline: o.offline });
        process.stdout.write(o.json ? `${JSON.stringify(r)}\n` : formatVerify(r));
        if (!r.ok) process.exitCode = 1;
      },
    );
}
