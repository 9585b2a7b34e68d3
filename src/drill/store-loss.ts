/**
 * `restartpoint drill --scenario store-loss` (issue 12): faults injected into a real node's
 * **own** store, underneath its adapter, each checked to end correctly: the node rebuilds its
 * store from the relays, or refuses clearly (releasing the lease), or another node takes over.
 * Never a divergence (a resumed store that differs from the resumed image), never a hang, never
 * an acknowledged checkpoint lost.
 *
 * Two sample-app processes (examples/ledger/app.ts), a and b, each with its own store. One
 * round per fault of the store kind: the fault is injected into the standby's or the primary's
 * store, then the primary is SIGKILLed (standby faults) or must step down by itself (primary
 * faults); the node that resumes is checked as in the kill drill (checks.ts). The node that was
 * killed rejoins as the standby for the next round.
 *
 * Redis stores live on two private redis-servers (one per node, no persistence, free ports) so
 * that FLUSHALL and restarts never touch another Redis's data. PostgreSQL stores are each
 * node's own tables on the given server; file stores are each node's own directory. A memory
 * store lives inside its process: a fault of it is a fault of the process, which the `kill`
 * scenario covers; `store-loss` refuses it.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, stat, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deleteAppAt } from '../transport/inspect.js';
import { AppProcess, clearStore, ledgerArgs, num, type AppEvent } from './app-process.js';
import { takeoverViolations, warm } from './checks.js';
import { DrillLedger, takeoverRecord } from './ledger.js';
import { RedisServerProcess } from './redis-server.js';
import {
  drillMedians,
  emptyTimeline,
  type DrillOptions,
  type DrillReport,
  type StoreFaultReport,
} from './types.js';

/** What a fault is expected to end in. */
type Expect = 'rebuilt' | 'took-over' | 'refused' | 'survived';

/** Where the drill reaches one node's store from outside its process. */
interface StoreHandles {
  /** Redis: the node's private server, and a client to it. */
  redis?: Map<string, { server: RedisServerProcess; client: RedisLike }>;
  /** PostgreSQL: a client of the server. */
  pg?: PgLike;
}

interface RedisLike {
  flushall(): Promise<unknown>;
  hkeys(key: string): Promise<string[]>;
  hdel(key: string, ...fields: string[]): Promise<unknown>;
  on(event: 'error', listener: (err: Error) => void): unknown;
  disconnect(): void;
}

interface PgLike {
  query(sql: string): Promise<{ rows: any[] }>;
  end(): Promise<void>;
}

/** One fault of the table (docs/drill.md). */
interface Fault {
  readonly name: string;
  readonly target: 'standby' | 'primary';
  readonly what: string;
  readonly expect: Expect;
  /** Standby faults found by the standby's next commit: the drill waits for its rebuild before the kill. */
  readonly whileApplying?: boolean;
  inject(node: string): Promise<void>;
  /** After the round: undo what the fault left outside the store (a server stopped). */
  after?(node: string): Promise<void>;
}

/** The names the sample app gives a node's store. */
function storeNames(app: string, node: string): { prefix: string; table: string } {
  const name = `${app}_${node}`;
  return {
    prefix: `rp:${name}`,
    table: `rp_${name.toLowerCase().replace(/[^a-z0-9_]/g, '_')}`.slice(0, 40),
  };
}

/** The faults of one store kind, in the order they run. */
function faultsOf(store: string, app: string, dir: string, h: StoreHandles): Fault[] {
  const names = (node: string) => storeNames(app, node);
  const redisOf = (node: string) => h.redis!.get(node)!;
  switch (store) {
    case 'redis':
      return [
        {
          name: 'standby-flushall',
          target: 'standby',
          what: "FLUSHALL on the standby's Redis while it applies",
          expect: 'rebuilt',
          whileApplying: true,
          inject: async (n) => void (await redisOf(n).client.flushall()),
        },
        {
          name: 'standby-hdel',
          target: 'standby',
          what: "HDEL of 5 fields of the standby's data hash, then the primary is killed",
          expect: 'rebuilt',
          inject: async (n) => {
            const key = `{${names(n).prefix}}:data`;
            const fields = (await redisOf(n).client.hkeys(key)).slice(0, 5);
            if (fields.length > 0) await redisOf(n).client.hdel(key, ...fields);
          },
        },
        {
          name: 'standby-restart-empty',
          target: 'standby',
          what: "the standby's redis-server restarted empty, then the primary is killed",
          expect: 'rebuilt',
          inject: (n) => redisOf(n).server.restartEmpty(),
        },
        {
          name: 'primary-restart-empty',
          target: 'primary',
          what: "the primary's redis-server restarted empty",
          expect: 'took-over',
          inject: (n) => redisOf(n).server.restartEmpty(),
        },
        {
          name: 'primary-down',
          target: 'primary',
          what: "the primary's redis-server stopped (SIGKILL)",
          expect: 'took-over',
          inject: (n) => redisOf(n).server.kill(),
          after: (n) => redisOf(n).server.start(),
        },
        {
          name: 'standby-down-at-takeover',
          target: 'standby',
          what: "the standby's redis-server stopped, then the primary is killed",
          expect: 'refused',
          inject: (n) => redisOf(n).server.kill(),
          after: (n) => redisOf(n).server.start(),
        },
      ];
    case 'postgres':
      return [
        {
          name: 'standby-truncate',
          target: 'standby',
          what: "TRUNCATE of the standby's table, then the primary is killed",
          expect: 'rebuilt',
          inject: async (n) => void (await h.pg!.query(`TRUNCATE "${names(n).table}"`)),
        },
        {
          name: 'standby-delete-rows',
          target: 'standby',
          what: "DELETE of 5 rows of the standby's table, then the primary is killed",
          expect: 'rebuilt',
          inject: async (n) => {
            const t = `"${names(n).table}"`;
            await h.pg!.query(`DELETE FROM ${t} WHERE ctid IN (SELECT ctid FROM ${t} LIMIT 5)`);
          },
        },
        {
          name: 'standby-session-killed',
          target: 'standby',
          what: "pg_terminate_backend of the standby's sessions while it applies",
          expect: 'survived',
          inject: async (n) => {
            await h.pg!.query(
              `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query LIKE '%${names(n).table}%'`,
            );
          },
        },
        {
          name: 'primary-wiped',
          target: 'primary',
          what: "the primary's tables dropped",
          expect: 'took-over',
          inject: async (n) => {
            const t = names(n).table;
            await h.pg!.query(`DROP TABLE IF EXISTS "${t}", "${t}_meta", "${t}_schema"`);
          },
        },
      ];
    case 'file': {
      /** The node's live log (the newest `log-*`). */
      const logOf = async (n: string): Promise<string> => {
        const logs = (await readdir(join(dir, n))).filter((f) => /^log-\d{10}$/.test(f)).sort();
        if (logs.length === 0) throw new Error(`node ${n} has no file-store log in ${join(dir, n)}`);
        return join(dir, n, logs[logs.length - 1]!);
      };
      const halve = async (n: string): Promise<void> => {
        const log = await logOf(n);
        await truncate(log, Math.floor((await stat(log)).size / 2));
      };
      return [
        {
          name: 'standby-log-truncated',
          target: 'standby',
          what: "the standby's log truncated to half while it applies",
          expect: 'rebuilt',
          whileApplying: true,
          inject: halve,
        },
        {
          name: 'standby-store-removed',
          target: 'standby',
          what: "the standby's store files removed, then the primary is killed",
          expect: 'rebuilt',
          inject: async (n) => {
            for (const f of await readdir(join(dir, n))) {
              if (/^(log-\d{10}|IDENT)$/.test(f)) await rm(join(dir, n, f), { force: true });
            }
          },
        },
        {
          name: 'primary-log-truncated',
          target: 'primary',
          what: "the primary's log truncated to half",
          expect: 'took-over',
          inject: halve,
        },
      ];
    }
    default:
      throw new Error(
        `--scenario store-loss needs --store file, redis or postgres: a ${store} store lives inside the node's process, so a fault of it is a fault of the process (the kill scenario covers it)`,
      );
  }
}

/** The names of the faults `drill --scenario store-loss` runs for `store` (docs/drill.md). */
export function storeLossFaults(store: string): string[] {
  return faultsOf(store, 'x', '/', {}).map((f) => f.name);
}

/** Runs the store-loss drill. Never throws for a guarantee violation: those are in `violations`. */
export async function runStoreLossDrill(opts: DrillOptions): Promise<DrillReport> {
  const say = opts.progress ?? (() => undefined);
  const app = `drill-${randomBytes(4).toString('hex')}`;
  const startedAt = Date.now();
  const mode = opts.mode ?? 'delay-write';
  const report: DrillReport = {
    ok: false,
    kills: 0,
    seed: opts.seed,
    store: opts.store,
    mode,
    scenario: 'store-loss',
    relaysKilled: 0,
    takeovers: [],
    rejected: { forged: 0, corrupt: 0 },
    violations: [],
    leaseTtlMs: opts.leaseTtlMs,
    stateMb: 0,
    stepMs: opts.stepMs ?? 10,
    medians: drillMedians([]),
    durationMs: 0,
    storeFaults: [],
    timeline: emptyTimeline(startedAt),
  };
  const dir = await mkdtemp(join(tmpdir(), 'restartpoint-drill-'));
  const nodes = { a: new AppProcess('a'), b: new AppProcess('b') } as Record<string, AppProcess>;
  const h: StoreHandles = {};
  const args = (id: string): string[] => [
    ...ledgerArgs({
      ...opts,
      app,
      dir: join(dir, id),
      mode,
      redisUrl: h.redis?.get(id)?.server.url ?? opts.redisUrl,
    }),
    '--step-ms',
    String(report.stepMs),
  ];

  // The ledger of what each primary was told (ledger.ts).
  const ledger = new DrillLedger();
  const { ackAt } = ledger;
  const rebuilds = new Map<string, AppEvent[]>();
  const track = (node: AppProcess): void => {
    ledger.track(node);
    node.on((e) => {
      if (e.ev === 'log' && e.msg === 'store rebuild') {
        rebuilds.set(node.id, [...(rebuilds.get(node.id) ?? []), e]);
      }
    });
  };

  try {
    if (opts.stateMb || opts.key !== undefined) {
      throw new Error('--scenario store-loss takes no --state-mb or --key');
    }
    const all = faultsOf(opts.store, app, dir, h);
    const chosen = opts.storeFaults?.length ? all.filter((f) => opts.storeFaults!.includes(f.name)) : all;
    const unknown = (opts.storeFaults ?? []).filter((n) => !all.some((f) => f.name === n));
    if (unknown.length > 0) {
      throw new Error(
        `unknown store fault(s) ${unknown.join(', ')} for --store ${opts.store}: use ${all.map((f) => f.name).join(', ')}`,
      );
    }
    if (opts.store === 'redis') {
      const { Redis } = (await import('ioredis')) as unknown as {
        Redis: new (url: string, o: object) => RedisLike;
      };
      h.redis = new Map();
      for (const id of ['a', 'b']) {
        const server = await RedisServerProcess.start();
        const client = new Redis(server.url, { maxRetriesPerRequest: 1 });
        // The drill stops these servers on purpose: the client's reconnect errors are expected.
        client.on('error', () => undefined);
        h.redis.set(id, { server, client });
      }
    }
    if (opts.store === 'postgres') {
      const pg = (await import('pg')) as unknown as {
        default: { Client: new (o: object) => PgLike & { connect(): Promise<void> } };
      };
      const c = new pg.default.Client({
        connectionString: opts.postgresUrl ?? 'postgres://postgres@127.0.0.1:5432/test',
      });
      await c.connect();
      h.pg = c;
    }
    track(nodes.a!);
    track(nodes.b!);
    say(
      `drill: app ${app}, scenario store-loss, store ${opts.store} (${mode}), faults ${chosen.map((f) => f.name).join(', ')}, lease ${opts.leaseTtlMs} ms`,
    );
    const startMs = 30_000;
    nodes.a!.start(args('a'));
    const first = await nodes.a!.waitFor((e) => e.ev === 'primary', 'primary role', startMs);
    let lastEpoch = num(first.epoch);
    nodes.b!.start(args('b'));
    await nodes.b!.waitFor((e) => e.ev === 'standby', 'standby role', startMs);
    let primary = nodes.a!;
    let standby = nodes.b!;
    const roundTimeout = 60_000 + opts.leaseTtlMs * 10;
    let round = 0;
    for (const fault of chosen) {
      round++;
      const label = `${fault.name} (${round}/${chosen.length})`;
      await warm(standby, ackAt);
      // A few checkpoints after the standby is warm, so that its store holds something to lose.
      const ackedBefore = ledger.lastAcked;
      await primary.waitFor(
        (e) => e.ev === 'acked' && num(e.checkpoint) >= ackedBefore + 3,
        'checkpoints',
        30_000,
      );
      const target = fault.target === 'standby' ? standby : primary;
      const rebuildsBefore = rebuilds.get(target.id)?.length ?? 0;
      const tookP = standby.waitFor((e) => e.ev === 'primary', 'takeover', roundTimeout);
      tookP.catch(() => undefined);
      const t0 = Date.now();
      await fault.inject(target.id);
      say(`${label}: ${fault.what}`);
      let refusedBy: string | undefined;
      let taker = standby;
      let ackedAtFault = ledger.lastAcked;
      const killedEpoch = ledger.role(primary)?.epoch ?? lastEpoch;
      if (fault.target === 'primary') {
        // The primary must step down by itself: `demoted`, or it dies of the store error.
        await primary
          .waitFor((e) => e.ev === 'demoted' || e.ev === 'fatal', 'step-down', roundTimeout, true)
          .catch((err: unknown) => {
            if (!/exited|failed/.test((err as Error).message)) throw err;
          });
        ackedAtFault = ledger.lastAcked;
        await primary.kill();
      } else {
        if (fault.whileApplying) {
          // Found by the standby's next commit: it rebuilds and stands by again, warm.
          await standby.waitFor(
            (e) => e.ev === 'log' && e.msg === 'store rebuild',
            'store rebuild after the fault',
            roundTimeout,
            true,
          );
          await standby.waitFor(
            (e) => e.ev === 'standby',
            'standby role after the rebuild',
            roundTimeout,
            true,
          );
          await warm(standby, ackAt);
        }
        if (fault.name === 'standby-session-killed') await warm(standby, ackAt);
        ackedAtFault = ledger.lastAcked;
        await primary.kill();
      }
      if (fault.expect === 'refused') {
        // The standby cannot use its store: it must give up (and release the lease), not hang.
        const gone = await standby
          .waitFor((e) => e.ev === 'primary', 'refusal', roundTimeout)
          .then(
            () => 'took over with an unreachable store',
            (err: unknown) =>
              /exited|failed/.test((err as Error).message) ? undefined : (err as Error).message,
          );
        if (gone !== undefined) report.violations.push(`${fault.name}: the standby did not refuse: ${gone}`);
        refusedBy = standby.id;
        await standby.kill();
        await fault.after?.(standby.id);
        // Another node takes over: the killed primary's process, started again.
        taker = primary;
        taker.start(args(taker.id));
      }
      let took: AppEvent;
      try {
        took =
          fault.expect === 'refused'
            ? await taker.waitFor((e) => e.ev === 'primary', 'takeover', roundTimeout)
            : await tookP;
      } catch (err) {
        report.violations.push(`${fault.name}: no node took over: ${(err as Error).message}`);
        report.storeFaults!.push(
          faultReport(fault, 'failed', (err as Error).message, 0, null, Date.now() - t0),
        );
        break;
      }
      const served = await taker.waitFor(
        (e) => e.ev === 'acked',
        'first checkpoint after the takeover',
        roundTimeout,
      );
      const resumed = num(took.resumed);
      const epoch = num(took.epoch);
      const expected = ledger.expectedFor(took);
      const lostCps = ledger.lostAfter(killedEpoch, resumed);
      const t = takeoverRecord({
        kill: round,
        point: 'between-writes',
        killed: primary.id,
        newPrimary: taker.id,
        took,
        served,
        faultAt: t0,
        lastAcked: ackedAtFault,
        expected,
        checkpointsLost: lostCps.size,
        writesDiscarded: 0,
        verifyMs: num(took.verifyMs),
      });
      const violations = takeoverViolations({
        kill: round,
        resumed,
        ackedAtKill: ackedAtFault,
        lostCps,
        expected,
        took,
        epoch,
        lastEpoch,
        t,
      }).map((v) => `${fault.name}: ${v}`);
      const rebuilt = (rebuilds.get(target.id)?.length ?? 0) - rebuildsBefore;
      const outcome: StoreFaultReport['outcome'] =
        fault.expect === 'refused'
          ? 'refused'
          : fault.target === 'primary'
            ? 'took-over'
            : rebuilt > 0
              ? 'rebuilt'
              : 'survived';
      if (outcome !== fault.expect) {
        violations.push(`${fault.name}: ended as '${outcome}', expected '${fault.expect}'`);
      }
      report.violations.push(...violations);
      report.takeovers.push(t);
      report.storeFaults!.push({
        ...faultReport(
          fault,
          outcome,
          violations.length === 0
            ? describeOutcome(outcome, target.id, taker.id, refusedBy)
            : violations.join('; '),
          rebuilt,
          taker.id,
          served.t - t0,
        ),
        resumed,
        lastAcked: ackedAtFault,
        checkpointsLost: lostCps.size,
        storeMatches: t.storeMatches,
        imageMatches: t.imageMatches,
      });
      lastEpoch = epoch;
      say(
        `${label}: ${outcome}; ${taker.id} serving after ${t.killToServingMs} ms (acked ${ackedAtFault}, resumed ${resumed}, ${rebuilt} rebuild(s))`,
      );
      opts.onTakeover?.(t);
      // The other node (killed, or refused) rejoins as the standby.
      if (fault.expect !== 'refused') await fault.after?.(primary.id);
      const other = taker === standby ? primary : standby;
      await other.kill();
      ledger.forget(other);
      primary = taker;
      standby = other;
      standby.start(args(standby.id));
      await standby.waitFor((e) => e.ev === 'standby', 'standby role after restart', startMs);
    }
    report.kills = report.takeovers.length;
    report.ok = report.violations.length === 0 && report.storeFaults!.length === chosen.length;
  } catch (err) {
    report.violations.push(`drill aborted: ${(err as Error).message}`);
    report.ok = false;
  } finally {
    await Promise.all([nodes.a!.kill(), nodes.b!.kill()]);
    if (!opts.keep && opts.store === 'postgres') {
      await Promise.all(['a', 'b'].map((id) => clearStore(id, args(id)))).catch(() => undefined);
    }
    for (const r of h.redis?.values() ?? []) {
      r.client.disconnect();
      await r.server.kill();
    }
    await h.pg?.end().catch(() => undefined);
    if (!opts.keep) {
      await rm(dir, { recursive: true, force: true });
      await deleteAppAt(opts.nats, app).catch(() => undefined);
    }
  }
  report.medians = drillMedians(report.takeovers);
  report.durationMs = Date.now() - startedAt;
  return report;
}

function faultReport(
  fault: Fault,
  outcome: StoreFaultReport['outcome'],
  detail: string,
  rebuilds: number,
  newPrimary: string | null,
  ms: number,
): StoreFaultReport {
  return {
    fault: fault.name,
    target: fault.target,
    what: fault.what,
    expected: fault.expect,
    outcome,
    detail,
    rebuilds,
    newPrimary,
    resumed: null,
    lastAcked: null,
    checkpointsLost: null,
    storeMatches: null,
    imageMatches: null,
    ms,
  };
}

function describeOutcome(outcome: string, target: string, taker: string, refusedBy?: string): string {
  switch (outcome) {
    case 'rebuilt':
      return `${target} found its store lost, rebuilt it from the relays, and took over with it`;
    case 'took-over':
      return `${target} stepped down on its own store's failure; ${taker} took over`;
    case 'refused':
      return `${refusedBy ?? target} refused the takeover and released the lease; ${taker} took over`;
    default:
      return `${target} kept its store (the fault was retried) and took over with it`;
  }
}
