/**
 * The nemesis drill (`drill --scenario chaos`, docs/drill.md): a seeded schedule of faults over
 * N relays (nats-servers the drill starts, `ack: 'quorum'`), checked like every other scenario.
 *
 * Per round (one takeover each):
 * - relay faults while the primary works: SIGKILL or SIGSTOP of relay servers, never more down
 *   at once than the policy tolerates (N - quorum); each one is undone before the primary's
 *   fault, after the takeover, or only after the NEXT takeover (a relay that stays down across
 *   a takeover, and the new primary is faulted before its backlog reaches that relay);
 * - one primary fault: SIGKILL, SIGSTOP (a zombie, SIGCONTed after the takeover) or a partition
 *   (every link of the primary, to the lease server and to each relay, blackholed);
 * - `--nats-cluster 3`: one node of the lease's NATS cluster SIGKILLed in the middle round;
 * - now and then the standby that will take over is a brand-new node with an empty store, which
 *   replays every relay from the start first.
 *
 * The schedule is a pure function of the seed (`chaosSchedule`): the same seed gives the same
 * fault kinds, targets and order. Every fault is listed in the report with evidence that it took
 * effect (`faults`). On top of the usual checks, a standby that does not reach what the primary
 * acknowledged within {@link STUCK_MS} while the policy's relays are up is a violation.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { appNames } from '../protocol/subjects.js';
import { deleteAppAt, kvStreamName, splitServers } from '../transport/inspect.js';
import { AppProcess, clearStore, ledgerArgs, num, type AppEvent } from './app-process.js';
import { checkZombie, takeoverViolations, warm } from './checks.js';
import { LeaseWatch, checkTakeoverLease } from './lease-watch.js';
import { DrillLedger, takeoverRecord } from './ledger.js';
import {
  TestRelay,
  probeConnect,
  procState,
  provisionR3,
  streamLeader,
  type NatsServerProcess,
} from './nats-servers.js';
import { TcpProxy } from './proxy.js';
import {
  KillPoints,
  drillMedians,
  emptyTimeline,
  mulberry,
  type DrillOptions,
  type DrillReport,
  type FaultRecord,
  type KillPoint,
  type TakeoverReport,
  type ZombieReport,
} from './types.js';

/** Largest `--relays` of the chaos drill. */
export const MAX_CHAOS_RELAYS = 7;

/**
 * How long a standby's applied checkpoint may stand still, while it is behind what the primary
 * acknowledged and the policy's relays are up, before it counts as stuck (a violation).
 */
export const STUCK_MS = 45_000;

/**
 * How long a standby that keeps advancing may take to reach what the primary acknowledged before
 * the drill goes on without waiting (it is slow, not stuck: counted in `chaos.slowCatchUps`).
 */
export const CATCH_UP_MS = 300_000;

/**
 * Default pause of the sample app after each step in `chaos`, ms. Brand-new and restarted nodes
 * replay the stream; at 2 ms (the other scenarios' default) 30 rounds on a small loaded machine
 * grow it past what a replaying standby can catch up with.
 */
export const CHAOS_STEP_MS = 10;

/** A primary fault of the chaos drill. */
export type PrimaryFault = 'kill' | 'pause' | 'partition';

/** One relay fault of a round. */
export interface RelayFault {
  /** Index of the relay (0-based). */
  relay: number;
  kind: 'kill' | 'pause';
  /**
   * Takeovers it stays down across: 0 = undone before the primary's fault, 1 = undone after
   * this round's takeover, 2 = after the next round's takeover.
   */
  across: 0 | 1 | 2;
}

/** One round of the schedule: one takeover. */
export interface ChaosRound {
  round: number;
  primaryFault: PrimaryFault;
  point: KillPoint;
  afterSteps: number;
  relayFaults: RelayFault[];
  /** Relays still down from the previous round when this one starts. */
  carried: number[];
  /** The standby of this round is a brand-new node with an empty store (it takes over). */
  fresh: boolean;
  /**
   * `--nats-cluster`: during this round the NATS node that leads the lease bucket's stream is
   * SIGKILLed (restarted after the takeover).
   */
  natsLeaderKill?: true;
}

/** Relays that `ack: 'quorum'` over `relays` can do without. */
export function chaosTolerance(relays: number): number {
  return relays - (Math.floor(relays / 2) + 1);
}

/**
 * The schedule of a chaos drill, from its seed alone (pure: `--seed` replays it). Invariants:
 * never more relays down at once than {@link chaosTolerance}; a relay that stays down across
 * two takeovers only when no relay is down at the start of its round (the drill starts a second
 * standby then, and a node can only start with every relay up) and not in the last round; a
 * fresh node only in a round from the second on with every relay up and one standby, so that
 * the fresh node is the one that takes over; at least one fresh node when `kills` ≥ 2.
 */
export function chaosSchedule(
  seed: number,
  o: { kills: number; relays: number; natsCluster?: number },
): ChaosRound[] {
  const rand = mulberry(seed);
  const tolerate = Math.max(0, chaosTolerance(o.relays));
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const freshAt = o.kills >= 2 ? 2 + Math.floor(rand() * (o.kills - 1)) : 0;
  const natsKillAt = o.natsCluster ? Math.ceil(o.kills / 2) : 0;
  // The first three rounds take each primary fault once (in a seeded order), so a short run
  // mixes them all; later rounds draw kill twice as often as pause or partition.
  const firstThree: PrimaryFault[] = ['kill', 'pause', 'partition'];
  for (let i = 2; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [firstThree[i], firstThree[j]] = [firstThree[j]!, firstThree[i]!];
  }
  let freshDone = false;
  let carried: number[] = [];
  const rounds: ChaosRound[] = [];
  for (let r = 1; r <= o.kills; r++) {
    const drawn = pick<PrimaryFault>(['kill', 'kill', 'pause', 'partition']);
    const primaryFault = r <= 3 ? firstThree[r - 1]! : drawn;
    const point = pick(KillPoints);
    const afterSteps = 3 + Math.floor(rand() * 20);
    const room = tolerate - carried.length;
    const count = room > 0 && rand() < 0.75 ? 1 + Math.floor(rand() * room) : 0;
    const relayFaults: RelayFault[] = [];
    for (let i = 0; i < count; i++) {
      const up = [...Array(o.relays).keys()].filter(
        (x) => !carried.includes(x) && !relayFaults.some((f) => f.relay === x),
      );
      const relay = pick(up);
      const kind = rand() < 0.5 ? 'kill' : 'pause';
      const x = rand();
      // Not into the last round while the fresh node is still due (it needs every relay up).
      const twoOk =
        carried.length === 0 &&
        r < o.kills &&
        (freshDone || r + 1 < o.kills) &&
        !relayFaults.some((f) => f.across === 2);
      const across: 0 | 1 | 2 = twoOk && x < 0.4 ? 2 : x < 0.6 ? 0 : 1;
      relayFaults.push({ relay, kind, across });
    }
    const twoStandbys = relayFaults.some((f) => f.across === 2);
    const eligible = r >= 2 && carried.length === 0 && !twoStandbys;
    const fresh = eligible && ((!freshDone && r >= freshAt) || rand() < 0.1);
    if (fresh) freshDone = true;
    rounds.push({
      round: r,
      primaryFault,
      point,
      afterSteps,
      relayFaults,
      carried,
      fresh,
      ...(r === natsKillAt ? { natsLeaderKill: true as const } : {}),
    });
    carried = relayFaults.filter((f) => f.across === 2).map((f) => f.relay);
  }
  return rounds;
}

/** Node ids: a, b, … z, then n27, n28… */
function nodeId(i: number): string {
  return i < 26 ? String.fromCharCode(97 + i) : `n${i + 1}`;
}

/** Runs the chaos drill. Never throws for a guarantee violation: those are in `violations`. */
export async function runChaos(opts: DrillOptions): Promise<DrillReport> {
  const say = opts.progress ?? (() => undefined);
  const nRelays = opts.relays ?? 3;
  const stepMs = opts.stepMs ?? CHAOS_STEP_MS;
  const app = `drill-${randomBytes(4).toString('hex')}`;
  const startedAt = Date.now();
  const atMs = (): number => Date.now() - startedAt;
  const timeline = emptyTimeline(startedAt);
  const tolerate = Math.max(0, chaosTolerance(nRelays));
  const faults: FaultRecord[] = [];
  const report: DrillReport = {
    ok: false,
    kills: opts.kills,
    seed: opts.seed,
    store: opts.store,
    mode: opts.mode ?? 'delay-write',
    scenario: 'chaos',
    relaysKilled: 0,
    takeovers: [],
    rejected: { forged: 0, corrupt: 0 },
    violations: [],
    leaseTtlMs: opts.leaseTtlMs,
    stateMb: 0,
    stepMs,
    medians: drillMedians([]),
    durationMs: 0,
    leaseChecks: { judged: 0, early: 0, unjudged: 0, minGapMs: null, gapsMs: [] },
    faults,
    chaos: { relays: nRelays, ack: 'quorum', tolerate, freshJoins: 0, freshTakeovers: 0, slowCatchUps: 0 },
    timeline,
  };
  if (!(Number.isInteger(nRelays) && nRelays >= 1 && nRelays <= MAX_CHAOS_RELAYS)) {
    report.violations.push(`drill aborted: relays ${nRelays} is out of range: use 1 to ${MAX_CHAOS_RELAYS}`);
    return report;
  }
  if (opts.natsCluster !== undefined && opts.natsCluster !== 3) {
    report.violations.push(`drill aborted: natsCluster ${opts.natsCluster} is not supported: use 3`);
    return report;
  }
  const schedule = chaosSchedule(opts.seed, {
    kills: opts.kills,
    relays: nRelays,
    natsCluster: opts.natsCluster,
  });
  const dir = await mkdtemp(join(tmpdir(), 'restartpoint-chaos-'));
  const relays: TestRelay[] = [];
  let cluster: TestRelay | undefined;
  let natsServers = splitServers(opts.nats);
  /** Per node: a proxy per server it talks to (lease servers and relays), all cut together. */
  const proxies = new Map<string, Map<string, TcpProxy>>();
  const all: AppProcess[] = [];
  let leases: LeaseWatch | undefined;

  const proxied = async (id: string): Promise<(url: string) => string> => {
    let m = proxies.get(id);
    if (!m) {
      m = new Map();
      for (const url of [...natsServers, ...relays.flatMap((r) => r.urls)])
        m.set(url, await TcpProxy.start(url));
      proxies.set(id, m);
    }
    const mm = m;
    return (url) => mm.get(url)!.url;
  };
  const args = async (id: string): Promise<string[]> => {
    const via = await proxied(id);
    return [
      '--relays',
      relays.map((r) => r.urls.map(via).join('|')).join(','),
      '--ack',
      'quorum',
      ...ledgerArgs({ ...opts, app, dir: join(dir, id), nats: natsServers.map(via).join(',') }),
      ...(opts.key !== undefined ? ['--key', opts.key] : []),
      ...(stepMs > 0 ? ['--step-ms', String(stepMs)] : []),
    ];
  };

  // The ledger of what each primary was told (ledger.ts).
  const ledger = new DrillLedger();
  const { acks, ackAt } = ledger;
  const lastApplied = new Map<string, number>();
  const logs = new Map<string, string[]>();
  let lastEpoch = 0;
  const track = (node: AppProcess): void => {
    ledger.track(node);
    node.on((e) => {
      if (e.ev === 'applied') lastApplied.set(node.id, num(e.checkpoint));
      // The nodes' own warnings, for the end of a failed run (what a reader needs to debug it).
      if (e.ev === 'log' && e.msg !== 'frame rejected') {
        const l = logs.get(node.id) ?? [];
        l.push(
          `${new Date(e.t).toISOString().slice(11, 23)} ${JSON.stringify({ ...e, t: undefined, ev: undefined, pid: undefined })}`,
        );
        if (l.length > 30) l.shift();
        logs.set(node.id, l);
      }
    });
  };
  const newNode = (): AppProcess => {
    const n = new AppProcess(nodeId(all.length));
    all.push(n);
    track(n);
    return n;
  };
  const startStandby = async (node: AppProcess): Promise<void> => {
    lastApplied.delete(node.id);
    node.start(await args(node.id));
    await node.waitFor((e) => e.ev === 'standby', `standby role of ${node.id}`, 60_000);
  };
  /** Relay faults in force, to undo after the takeover of round `until` (0: before the fault). */
  const active: { f: RelayFault; rec: FaultRecord; until: number }[] = [];
  const relayServer = (i: number): NatsServerProcess => relays[i]!.servers[0]!;
  const undo = async (x: { f: RelayFault; rec: FaultRecord }): Promise<void> => {
    const s = relayServer(x.f.relay);
    if (x.f.kind === 'kill') await s.start();
    else s.signal('SIGCONT');
    x.rec.restoredAtMs = atMs();
    timeline.relays.push({ t: Date.now(), kind: 'relay-start', relay: x.f.relay });
  };
  const allRelaysUp = (): boolean => active.length === 0;

  try {
    if (opts.natsCluster === 3) {
      cluster = await TestRelay.cluster(`rpchaos${randomBytes(2).toString('hex')}`);
      natsServers = cluster.urls;
      await provisionR3(natsServers, app, false);
    }
    for (let i = 0; i < nRelays; i++) relays.push(await TestRelay.single());
    say(
      `chaos: app ${app}, ${nRelays} relay(s) (ack quorum, tolerate ${tolerate}), store ${opts.store}, seed ${opts.seed}, ${opts.kills} round(s), lease ${opts.leaseTtlMs} ms${cluster ? ', nats: 3-node cluster' : ''}`,
    );
    const first = newNode();
    first.start(await args(first.id));
    const firstUp = await first.waitFor((e) => e.ev === 'primary', 'primary role', 60_000);
    lastEpoch = num(firstUp.epoch);
    leases = await LeaseWatch.start(natsServers, app);
    let primary = first;
    const second = newNode();
    await startStandby(second);
    let standbys: AppProcess[] = [second];
    const down: AppProcess[] = [];
    const takeoverTimeout = 30_000 + opts.leaseTtlMs * 5;
    const zombieTimeout = 15_000 + opts.leaseTtlMs * 5;
    const fresh = new Set<string>();

    for (const round of schedule) {
      const r = round.round;
      const tag = `round ${r}/${opts.kills}`;
      // 1. Standbys: two when a relay is to stay down across two takeovers, else one.
      const want = round.relayFaults.some((f) => f.across === 2) ? 2 : 1;
      let joined = false;
      while (standbys.length < want) {
        if (!allRelaysUp())
          throw new Error(`${tag}: a standby is needed while a relay is down (schedule bug)`);
        const isFresh = round.fresh && !joined;
        joined = true;
        const node = isFresh ? newNode() : (down.shift() ?? newNode());
        if (isFresh) {
          fresh.add(node.id);
          report.chaos!.freshJoins++;
          say(`${tag}: brand-new node ${node.id} joins with an empty store`);
        }
        await startStandby(node);
        standbys.push(node);
      }
      // 2. No stuck standby: each one advances until it has applied what the primary acknowledged.
      const target = ledger.lastAcked;
      for (const s of standbys) {
        const until = Date.now() + CATCH_UP_MS;
        while ((lastApplied.get(s.id) ?? 0) < target) {
          if (Date.now() > until) {
            report.chaos!.slowCatchUps++;
            say(
              `${tag}: standby ${s.id} still behind after ${CATCH_UP_MS} ms (applied ${lastApplied.get(s.id)}, target ${target}); going on`,
            );
            break;
          }
          try {
            // `applied` comes (every 200 ms) only when the applied checkpoint moved.
            await s.waitFor((e) => e.ev === 'applied', `applied checkpoint moving`, STUCK_MS);
          } catch (err) {
            if (!/no applied checkpoint moving/.test((err as Error).message)) throw err;
            report.violations.push(
              `${tag}: stuck standby: ${s.id} applied nothing for ${STUCK_MS} ms while behind (last applied ${lastApplied.get(s.id) ?? 'none'}, acknowledged ${target}; relays down: ${active.map((x) => x.f.relay).join(', ') || 'none'})`,
            );
            break;
          }
        }
      }
      for (const s of standbys) await warm(s, ackAt);
      // 3. Relay faults, while the primary works.
      for (const f of round.relayFaults) {
        const s = relayServer(f.relay);
        const pid = s.pid;
        let evidence: string;
        if (f.kind === 'kill') {
          await s.kill();
          const refused = await probeConnect(s.port);
          evidence = `pid ${pid} ${procState(pid)} (SIGKILL); connect 127.0.0.1:${s.port}: ${refused}`;
          if (procState(pid) !== 'gone' || refused !== 'ECONNREFUSED')
            report.violations.push(`${tag}: relay ${f.relay} SIGKILL did not take: ${evidence}`);
          report.relaysKilled++;
        } else {
          s.signal('SIGSTOP');
          const st = await waitState(pid, 'T');
          evidence = `pid ${pid} state ${st} (/proc/${pid}/stat)`;
          if (st !== 'T') report.violations.push(`${tag}: relay ${f.relay} not stopped (state ${st})`);
        }
        const rec: FaultRecord = {
          atMs: atMs(),
          kind: f.kind === 'kill' ? 'relay-kill' : 'relay-pause',
          target: `relay ${f.relay}`,
          evidence,
          round: r,
        };
        faults.push(rec);
        timeline.relays.push({ t: Date.now(), kind: 'relay-kill', relay: f.relay });
        active.push({ f, rec, until: f.across === 0 ? 0 : r + f.across - 1 });
        say(
          `${tag}: relay ${f.relay} ${f.kind === 'kill' ? 'SIGKILLed' : 'SIGSTOPped'} (${['undone before the fault', 'down across this takeover', 'down across two takeovers'][f.across]})`,
        );
      }
      // 4. --nats-cluster: one NATS node dies while the primary holds the lease.
      let natsKilled: NatsServerProcess | undefined;
      if (round.natsLeaderKill && cluster) {
        const rec = await killLeaseLeader(cluster, app, r, atMs);
        natsKilled = cluster.servers[rec.index]!;
        faults.push(rec.fault);
        if (!/gone .*ECONNREFUSED$/.test(rec.fault.evidence))
          report.violations.push(`${tag}: the NATS node kill did not take: ${rec.fault.evidence}`);
        say(`${tag}: ${rec.fault.target} SIGKILLed`);
      }
      // 5. The primary works its steps, then holds at its kill point.
      primary.send({ cmd: 'arm', point: round.point, afterSteps: round.afterSteps });
      const held = await primary.waitFor(
        (e) => e.ev === 'at-killpoint' || e.ev === 'demoted',
        `kill point ${round.point}`,
        60_000,
        true,
      );
      if (held.ev === 'demoted') {
        throw new Error(`${tag}: node ${primary.id} was demoted before its fault: ${String(held.error)}`);
      }
      for (const x of active.filter((a) => a.until === 0)) await undo(x);
      active.splice(0, active.length, ...active.filter((a) => a.until !== 0));
      const ackedAtKill = ledger.lastAcked;
      const killedEpoch = ledger.role(primary)?.epoch ?? lastEpoch;
      const wtAtFault = ledger.role(primary)?.wt ?? 0;
      // Both waits are set before the fault, on every standby: whichever takes over.
      const tookP = Promise.any(
        standbys.map((s) =>
          s.waitFor((e) => e.ev === 'primary', 'takeover', takeoverTimeout).then((e) => ({ s, e })),
        ),
      );
      const servedPs = new Map(
        standbys.map((s) => {
          const p = s.waitFor(
            (e) => e.ev === 'acked',
            'first checkpoint after the takeover',
            takeoverTimeout + 30_000,
          );
          p.catch(() => undefined);
          return [s.id, p] as const;
        }),
      );
      tookP.catch(() => undefined);
      // 6. The primary fault.
      const tKill = Date.now();
      const kind = round.primaryFault;
      const pid = primary.child?.pid;
      timeline.faults.push({ t: tKill, kill: r, kind, node: primary.id });
      const rec: FaultRecord = {
        atMs: tKill - startedAt,
        kind: `primary-${kind}`,
        target: primary.id,
        evidence: '',
        round: r,
      };
      faults.push(rec);
      if (kind === 'kill') {
        await primary.kill();
        rec.evidence = `pid ${pid} ${procState(pid)} (exit signal ${primary.child?.signalCode ?? 'none'})`;
        if (procState(pid) !== 'gone') report.violations.push(`${tag}: the primary survived SIGKILL`);
      } else if (kind === 'pause') {
        primary.signal('SIGSTOP');
        const st = await waitState(pid, 'T');
        rec.evidence = `pid ${pid} state ${st} (/proc/${pid}/stat)`;
        if (st !== 'T') report.violations.push(`${tag}: the primary was not stopped (state ${st})`);
      } else {
        const ps = [...proxies.get(primary.id)!.values()];
        for (const p of ps) p.cut();
        const n = ps.reduce((a, p) => a + p.connections, 0);
        rec.evidence = `${ps.filter((p) => p.isCut).length}/${ps.length} proxies cut: ${n} connection(s) blackholed`;
        if (n === 0 || ps.some((p) => !p.isCut))
          report.violations.push(`${tag}: the partition did not take: ${rec.evidence}`);
        primary.send({ cmd: 'release' });
      }
      let took: { s: AppProcess; e: AppEvent };
      try {
        took = await tookP;
      } catch (err) {
        const errs = (err as AggregateError).errors?.map((x: Error) => x.message).join('; ');
        throw new Error(`${tag}: no standby took over: ${errs ?? (err as Error).message}`);
      }
      const winner = took.s;
      const te = took.e;
      const takeoverMs = te.t - tKill;
      const resumed = num(te.resumed);
      const resumedEpoch = num(te.resumedEpoch);
      const epoch = num(te.epoch);
      const expected = ledger.expectedFor(te);
      const verifyMs = num(te.verifyMs);
      const wasFresh = fresh.delete(winner.id);
      if (wasFresh) report.chaos!.freshTakeovers++;
      // The lease record, as the server stored it: no claim sooner than a TTL after the last renewal.
      if (!(await leases.seenEpoch(epoch, 5_000)))
        say(`${tag}: the lease watch did not see epoch ${epoch} within 5 s`);
      const early = checkTakeoverLease(
        report.leaseChecks!,
        leases.samples,
        {
          kill: r,
          killedEpoch,
          ttlMs: opts.leaseTtlMs,
        },
        leases.holes,
      );
      if (early) report.violations.push(early);
      let zombie: ZombieReport | undefined;
      if (kind !== 'kill') {
        const ps = [...proxies.get(primary.id)!.values()];
        zombie = await checkZombie(primary, winner, {
          kind,
          took: te,
          killedEpoch,
          wtAtFault,
          acks,
          timeoutMs: zombieTimeout,
          // Healed together: every link of the deposed primary comes back at once.
          proxy: kind === 'partition' ? { heal: () => ps.forEach((p) => p.heal()) } : undefined,
          violations: report.violations,
          kill: r,
        });
        await primary.kill();
      }
      const served = await servedPs.get(winner.id)!;
      const finalWt = ledger.role(primary)?.wt ?? wtAtFault;
      ledger.forget(primary);
      const base = resumedEpoch === killedEpoch ? (expected?.wt ?? 0) : 0;
      const lostCps = ledger.lostAfter(killedEpoch, resumed);
      const t: TakeoverReport = {
        ...takeoverRecord({
          kill: r,
          point: round.point,
          killed: primary.id,
          newPrimary: winner.id,
          took: te,
          served,
          faultAt: tKill,
          lastAcked: ackedAtKill,
          expected,
          checkpointsLost: lostCps.size,
          writesDiscarded: Math.max(0, finalWt - base),
          verifyMs,
        }),
        fault: kind,
        ...(zombie ? { zombie } : {}),
      };
      timeline.takeovers.push({ t: te.t, servingAt: served.t - verifyMs, kill: r, node: winner.id });
      report.violations.push(
        ...takeoverViolations({
          kill: r,
          resumed,
          ackedAtKill,
          lostCps,
          expected,
          took: te,
          epoch,
          lastEpoch,
          t,
        }),
      );
      lastEpoch = epoch;
      report.takeovers.push(t);
      const down_ = active.map((a) => a.f.relay);
      say(
        `${tag}: ${kind} of ${primary.id} at ${round.point}, ${winner.id}${wasFresh ? ' (brand-new)' : ''} took over in ${takeoverMs} ms, serving after ${t.killToServingMs} ms (acked ${ackedAtKill}, resumed ${resumed}, epoch ${epoch}; relays down: ${down_.join(', ') || 'none'})`,
      );
      opts.onTakeover?.(t);
      // 7. Undo what ends with this takeover; the deposed node waits to be restarted.
      for (const x of active.filter((a) => a.until === r)) await undo(x);
      active.splice(0, active.length, ...active.filter((a) => a.until !== r));
      if (natsKilled) {
        await natsKilled.start();
        faults.find((f) => f.kind === 'nats-node-kill' && f.round === r)!.restoredAtMs = atMs();
      }
      fresh.delete(primary.id);
      down.push(primary);
      standbys = standbys.filter((s) => s !== winner);
      primary = winner;
    }
    report.ok = report.violations.length === 0 && report.takeovers.length === opts.kills;
  } catch (err) {
    report.violations.push(`drill aborted: ${(err as Error).message}`);
    report.ok = false;
  } finally {
    if (report.violations.length > 0) {
      for (const [id, l] of logs) say(`chaos: node ${id}, last warnings:\n  ${l.join('\n  ')}`);
    }
    await Promise.all(all.map((n) => n.kill()));
    await leases?.close();
    await Promise.all(relays.map((r) => r.destroy()));
    await Promise.all([...proxies.values()].flatMap((m) => [...m.values()].map((p) => p.close())));
    if (!opts.keep) {
      if (opts.store === 'redis' || opts.store === 'postgres') {
        for (const n of all) {
          await clearStore(n.id, await args(n.id)).catch((err: unknown) => {
            say(`chaos: could not clear the ${opts.store} store of ${n.id}: ${(err as Error).message}`);
          });
        }
      }
      await rm(dir, { recursive: true, force: true });
      if (!cluster) await deleteAppAt(natsServers, app).catch(() => undefined);
    }
    await cluster?.destroy();
  }
  report.medians = drillMedians(report.takeovers);
  timeline.endedAt = Date.now();
  report.durationMs = timeline.endedAt - startedAt;
  timeline.acks = acks
    .filter((_, i) => acks.length <= 2_000 || i % Math.ceil(acks.length / 2_000) === 0)
    .map((a) => ({ t: a.t, checkpoint: a.checkpoint, node: a.node }));
  return report;
}

/** Polls `/proc/PID/stat` until the process is in `state` (a signal is delivered asynchronously). */
async function waitState(pid: number | undefined, state: string, timeoutMs = 2_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let st = procState(pid);
  while (st !== state && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 10));
    st = procState(pid);
  }
  return st;
}

/**
 * SIGKILLs the node of the NATS cluster that leads the lease bucket's stream (the first node
 * when no leader is known) and records the evidence.
 */
export async function killLeaseLeader(
  cluster: TestRelay,
  app: string,
  round: number,
  atMs: () => number,
): Promise<{ index: number; fault: FaultRecord }> {
  const stream = kvStreamName(appNames(app).leaseBucket);
  const leader = await streamLeader(cluster, stream).catch(() => undefined);
  const index = leader ?? 0;
  const s = cluster.servers[index]!;
  const pid = s.pid;
  await s.kill();
  return {
    index,
    fault: {
      atMs: atMs(),
      kind: 'nats-node-kill',
      target: `nats node ${index} (${s.url}${leader !== undefined ? `, leader of ${stream}` : ''})`,
      evidence: `pid ${pid} ${procState(pid)} (SIGKILL); connect 127.0.0.1:${s.port}: ${await probeConnect(s.port)}`,
      round,
    },
  };
}
