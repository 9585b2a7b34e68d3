/**
 * The failover drill: runs the sample ledger app as two real processes, takes the primary out
 * at chosen moments (SIGKILL, SIGSTOP, or a network partition), and after every takeover checks
 * DESIGN.md's guarantees against a ledger of what the deposed primary had been told was durable:
 *
 * 1. the resumed checkpoint is the last acknowledged one or later (no acknowledged restart point
 *    lost);
 * 2. the resumed image is exactly the one passed to that checkpoint, and the store holds exactly
 *    the writes up to it (store and image agree);
 * 3. the new primary's epoch is higher than every earlier one, and a deposed primary that still
 *    runs (paused, partitioned) is fenced: it acknowledges nothing after the takeover.
 *
 * Every takeover is also measured (RTO: detection, rollback, restore, resume; RPO: checkpoints
 * lost, writes discarded). docs/drill.md describes the whole contract.
 *
 * This file holds the scenarios (`runDrill`); the sample-app driver is in app-process.ts, the
 * checks in checks.ts, the ledger of what each primary was told in ledger.ts, the hostile
 * injection in hostile.ts, the report types in types.ts.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deleteAppAt, splitServers } from '../transport/inspect.js';
import { AppProcess, clearStore, ledgerArgs, num } from './app-process.js';
import {
  CORRUPT_REASONS,
  FORGED_REASONS,
  checkZombie,
  takeoverViolations,
  warm,
  warmLagMs,
} from './checks.js';
import { killLeaseLeader, runChaos } from './chaos.js';
import { injectHostile } from './hostile.js';
import { LeaseWatch, checkTakeoverLease } from './lease-watch.js';
import { DrillLedger, takeoverRecord } from './ledger.js';
import { runStoreLossDrill } from './store-loss.js';
import { TestRelay, provisionR3 } from './nats-servers.js';
import { TcpProxy } from './proxy.js';
import { runUpgradeDrill } from './upgrade.js';
import {
  DEFAULT_STEP_MS,
  KillPoints,
  MAX_STATE_MB,
  drillMedians,
  emptyTimeline,
  mulberry,
  type DrillOptions,
  type DrillReport,
  type FaultRecord,
  type TakeoverReport,
  type ZombieReport,
} from './types.js';

export * from './types.js';
export { AppProcess, sampleAppPath } from './app-process.js';
export { WARM_LAG_MS, warmLagMs } from './checks.js';
export { runUpgradeDrill, type UpgradeReport } from './upgrade.js';
export { runStoreLossDrill, storeLossFaults } from './store-loss.js';

/** Down-samples `xs` to at most `max` items, keeping the first and the last. */
function thin<T>(xs: T[], max: number): T[] {
  if (xs.length <= max) return xs;
  const step = xs.length / max;
  const out: T[] = [];
  for (let i = 0; i < max - 1; i++) out.push(xs[Math.floor(i * step)]!);
  out.push(xs[xs.length - 1]!);
  return out;
}

/** Runs a drill. Never throws for a guarantee violation: those are in `violations`. */
export async function runDrill(opts: DrillOptions): Promise<DrillReport> {
  if (opts.scenario === 'chaos') return runChaos(opts);
  if (opts.scenario === 'upgrade') return runUpgradeDrill(opts);
  if (opts.scenario === 'store-loss') return runStoreLossDrill(opts);
  const say = opts.progress ?? (() => undefined);
  const rand = mulberry(opts.seed);
  const app = `drill-${randomBytes(4).toString('hex')}`;
  const startedAt = Date.now();
  const dir = await mkdtemp(join(tmpdir(), 'restartpoint-drill-'));
  const nodes = { a: new AppProcess('a'), b: new AppProcess('b') };
  const scenario = opts.scenario ?? 'kill';
  const stateMb = opts.stateMb ?? 0;
  const stepMs = opts.stepMs ?? DEFAULT_STEP_MS;
  const relays: TestRelay[] = [];
  const relayed = scenario === 'relay-loss' || scenario === 'shard-loss';
  /** partition: each node reaches NATS through a proxy of its own; the primary's is cut. */
  const proxies = new Map<string, TcpProxy>();
  /** --nats-cluster 3: the lease's NATS is a cluster the drill starts; one node dies mid-run. */
  let cluster: TestRelay | undefined;
  let natsUrl = opts.nats;
  let leases: LeaseWatch | undefined;
  const faults: FaultRecord[] = [];
  const relayArgs = (): string[] => {
    if (!relayed) return [];
    const urls = relays.map((r) => r.urls.join('|')).join(',');
    return scenario === 'relay-loss'
      ? ['--relays', urls, '--ack', 'quorum']
      : ['--relays', urls, '--fec', '4+2:1', '--drop-shards', '0.02'];
  };
  const args = (id: string): string[] => [
    ...relayArgs(),
    ...ledgerArgs({ ...opts, app, dir: join(dir, id), nats: proxies.get(id)?.url ?? natsUrl }),
    ...(opts.key !== undefined ? ['--key', opts.key] : []),
    ...(stateMb > 0 ? ['--state-mb', String(stateMb)] : []),
    ...(stepMs > 0 ? ['--step-ms', String(stepMs)] : []),
  ];
  const timeline = emptyTimeline(startedAt);
  const report: DrillReport = {
    ok: false,
    kills: opts.kills,
    seed: opts.seed,
    store: opts.store,
    mode: opts.mode ?? 'delay-write',
    scenario,
    relaysKilled: 0,
    takeovers: [],
    rejected: { forged: 0, corrupt: 0 },
    violations: [],
    leaseTtlMs: opts.leaseTtlMs,
    stateMb,
    stepMs,
    medians: drillMedians([]),
    durationMs: 0,
    leaseChecks: { judged: 0, early: 0, unjudged: 0, minGapMs: null, gapsMs: [] },
    timeline,
  };
  const rejectedSeen = { forged: new Set<string>(), corrupt: new Set<string>() };

  // The ledger of what each primary was told (ledger.ts).
  const ledger = new DrillLedger();
  const { acks, ackAt } = ledger;
  const applied: { node: string; checkpoint: number; t: number }[] = [];
  let lastEpoch = 0;

  const track = (node: AppProcess): void => {
    ledger.track(node);
    node.on((e) => {
      if (e.ev === 'applied') applied.push({ node: node.id, checkpoint: num(e.checkpoint), t: e.t });
      if (e.ev === 'log' && e.msg === 'frame rejected') {
        // A node that rejoins re-reads the stream and rejects the same messages again: count
        // each stream message once.
        const reason = String(e.reason);
        const id = `${String(e.streamSeq)}`;
        if (FORGED_REASONS.has(reason)) rejectedSeen.forged.add(id);
        else if (CORRUPT_REASONS.has(reason)) rejectedSeen.corrupt.add(id);
        report.rejected = { forged: rejectedSeen.forged.size, corrupt: rejectedSeen.corrupt.size };
      }
    });
  };

  try {
    if ((opts.injectForged ?? 0) > 0 && opts.key === undefined) {
      throw new Error(
        'injectForged needs key: without signed mode a forged frame is indistinguishable from a real one',
      );
    }
    if (!(Number.isFinite(stateMb) && stateMb >= 0 && stateMb <= MAX_STATE_MB)) {
      throw new Error(`stateMb ${stateMb} is out of range: use 0 to ${MAX_STATE_MB} MB`);
    }
    if (!(Number.isFinite(stepMs) && stepMs >= 0 && stepMs <= 10_000)) {
      throw new Error(`stepMs ${stepMs} is out of range: use 0 to 10000 ms`);
    }
    track(nodes.a);
    track(nodes.b);
    if (opts.natsCluster !== undefined) {
      if (opts.natsCluster !== 3) throw new Error(`natsCluster ${opts.natsCluster} is not supported: use 3`);
      if (scenario === 'partition')
        throw new Error(
          'natsCluster does not combine with the partition scenario (one proxy per node): use chaos',
        );
      cluster = await TestRelay.cluster(`rpdrill${randomBytes(2).toString('hex')}`);
      natsUrl = cluster.urls.join(',');
      // The lease bucket (and the stream, when it lives on nats) at R3, before any node starts.
      await provisionR3(cluster.urls, app, !relayed);
      report.faults = faults;
    }
    if (relayed) {
      const n = scenario === 'relay-loss' ? 3 : 6;
      for (let i = 0; i < n; i++) relays.push(await TestRelay.single());
    }
    if (scenario === 'partition') {
      for (const id of ['a', 'b']) proxies.set(id, await TcpProxy.start(opts.nats));
    }
    say(
      `drill: app ${app}, scenario ${scenario}, store ${opts.store} (${opts.mode ?? 'delay-write'}), seed ${opts.seed}, ${opts.kills} kill(s), lease ${opts.leaseTtlMs} ms${stateMb > 0 ? `, state ${stateMb} MB` : ''}`,
    );
    // A large first keyframe takes a while to build and ship before `a` is primary.
    const startMs = 30_000 + stateMb * 1_000;
    nodes.a.start(args('a'));
    const first = await nodes.a.waitFor((e) => e.ev === 'primary', 'primary role', startMs);
    lastEpoch = Number(first.epoch);
    leases = await LeaseWatch.start(splitServers(natsUrl), app);
    nodes.b.start(args('b'));
    await nodes.b.waitFor((e) => e.ev === 'standby', 'standby role', startMs);
    let primary = nodes.a;
    let standby = nodes.b;
    if ((opts.injectForged ?? 0) > 0) {
      const targets = relayed ? relays.map((r) => r.urls.join(',')) : [opts.nats];
      const n = opts.injectForged!;
      const want = { forged: n, corrupt: n };
      const sent = await injectHostile(targets, app, n, Number(first.epoch));
      say(
        `drill: injected ${sent.forged} forged and ${sent.corrupt} corrupted message(s) onto rp.${app}.frames`,
      );
      // The standby reads them before the first kill (a node that restarts reads them again).
      const deadline = Date.now() + 15_000;
      while (
        (report.rejected.forged < want.forged || report.rejected.corrupt < want.corrupt) &&
        Date.now() < deadline
      )
        await new Promise((r) => setTimeout(r, 50));
    }

    if ((opts.history ?? 0) > 0) {
      // A long history before the faults: the standby builds bases and the relays are purged,
      // so each replaced node rejoins from a base, not from the first message.
      const n = opts.history!;
      say(`drill: pre-filling ${n} checkpoints before the first fault`);
      await primary.waitFor(
        (e) => e.ev === 'acked' && Number(e.checkpoint) >= n,
        `checkpoint ${n} (--history)`,
        60_000 + n * (50 + stepMs),
      );
    }

    const takeoverTimeout = 30_000 + opts.leaseTtlMs * 5 + stateMb * 1_000;
    const zombieTimeout = 15_000 + opts.leaseTtlMs * 5;
    for (let kill = 1; kill <= opts.kills; kill++) {
      const drawn = KillPoints[Math.floor(rand() * KillPoints.length)]!;
      const point = opts.points?.length ? opts.points[(kill - 1) % opts.points.length]! : drawn;
      const afterSteps = 3 + Math.floor(rand() * 20);
      // Each takeover is measured from a warm standby: one that has applied what was acked so far.
      if (!(await warm(standby, ackAt, warmLagMs(opts.leaseTtlMs))))
        say(
          `kill ${kill}/${opts.kills}: the standby is still more than ${warmLagMs(opts.leaseTtlMs)} ms behind; killing anyway`,
        );
      // Relays lost while the primary works: the ones the policy can spare.
      const lost = relayed ? pickRelays(relays.length, 1, rand) : [];
      for (const i of lost) {
        await relays[i]!.servers[0]!.kill();
        timeline.relays.push({ t: Date.now(), kind: 'relay-kill', relay: i });
      }
      report.relaysKilled += lost.length;
      if (lost.length > 0) say(`kill ${kill}/${opts.kills}: relay(s) ${lost.join(', ')} SIGKILLed`);
      // --nats-cluster: one NATS node dies in the middle kill, while the primary holds the lease.
      let natsNode: number | undefined;
      if (cluster && kill === Math.ceil(opts.kills / 2)) {
        const rec = await killLeaseLeader(cluster, app, kill, () => Date.now() - startedAt);
        natsNode = rec.index;
        faults.push(rec.fault);
        if (!/gone .*ECONNREFUSED$/.test(rec.fault.evidence))
          report.violations.push(`kill ${kill}: the NATS node kill did not take: ${rec.fault.evidence}`);
        say(`kill ${kill}/${opts.kills}: ${rec.fault.target} SIGKILLed`);
      }
      primary.send({ cmd: 'arm', point, afterSteps });
      const at = await primary.waitFor(
        (e) => e.ev === 'at-killpoint' || e.ev === 'demoted',
        `kill point ${point}`,
        30_000 + stateMb * 1_000,
        // A demotion may already have happened (each process is primary for one kill only).
        true,
      );
      if (at.ev === 'demoted') {
        // Nobody was killed yet: the primary lost its lease on its own (an event loop blocked
        // for longer than the lease allows, e.g. by a large keyframe).
        throw new Error(
          `node ${primary.id} was demoted before its kill point: ${String(at.error)}; it could not renew within 0.75 × the ${opts.leaseTtlMs} ms lease (its event loop blocked${stateMb > 0 ? `, e.g. by a keyframe of the ${stateMb} MB state` : ''}, or lease round trips slowed by load): try a longer --lease-ttl; RP_DRILL_NODE_LOGS=DIR keeps the nodes' logs`,
        );
      }
      const ackedAtKill = ledger.lastAcked;
      const killedEpoch = ledger.role(primary)?.epoch ?? lastEpoch;
      const wtAtFault = ledger.role(primary)?.wt ?? 0;
      // Both waits are set before the fault, so no event can slip between.
      const tookP = standby.waitFor((e) => e.ev === 'primary', 'takeover', takeoverTimeout);
      // A new primary demoted before it served never acknowledges: say so at once, with why.
      const servedP = standby.waitFor(
        (e) => e.ev === 'acked' || e.ev === 'demoted',
        'first checkpoint after the takeover',
        takeoverTimeout + 30_000,
      );
      tookP.catch(() => undefined);
      servedP.catch(() => undefined);
      const tKill = Date.now();
      const kind = scenario === 'pause' ? 'pause' : scenario === 'partition' ? 'partition' : 'kill';
      timeline.faults.push({ t: tKill, kill, kind, node: primary.id });
      if (kind === 'kill') await primary.kill();
      else if (kind === 'pause') primary.signal('SIGSTOP');
      else {
        proxies.get(primary.id)!.cut();
        // Partitioned, the primary goes on working: its writes and checkpoints go nowhere.
        primary.send({ cmd: 'release' });
      }
      const took = await tookP;
      const takeoverMs = took.t - tKill;
      // The lease record, as the server stored it: no claim sooner than a TTL after the last renewal.
      if (!(await leases.seenEpoch(Number(took.epoch), 5_000)))
        say(`kill ${kill}/${opts.kills}: the lease watch did not see epoch ${String(took.epoch)} within 5 s`);
      const early = checkTakeoverLease(
        report.leaseChecks!,
        leases.samples,
        {
          kill,
          killedEpoch,
          ttlMs: opts.leaseTtlMs,
        },
        leases.holes,
      );
      if (early) report.violations.push(early);
      const resumed = num(took.resumed);
      const resumedEpoch = num(took.resumedEpoch);
      const epoch = num(took.epoch);
      const expected = ledger.expectedFor(took);
      const verifyMs = num(took.verifyMs);

      let zombie: ZombieReport | undefined;
      if (kind !== 'kill') {
        zombie = await checkZombie(primary, standby, {
          kind,
          took,
          killedEpoch,
          wtAtFault,
          acks,
          timeoutMs: zombieTimeout,
          proxy: proxies.get(primary.id),
          violations: report.violations,
          kill,
        });
        await primary.kill();
      }
      const served = await servedP;
      if (served.ev === 'demoted') {
        throw new Error(
          `node ${standby.id} took over (epoch ${String(took.epoch)}) and was demoted before its first checkpoint was acknowledged: ${String(served.error)}`,
        );
      }
      const finalWt = ledger.role(primary)?.wt ?? wtAtFault;
      ledger.forget(primary);
      const base = resumedEpoch === killedEpoch ? (expected?.wt ?? 0) : 0;
      const lostCps = ledger.lostAfter(killedEpoch, resumed);
      const t: TakeoverReport = {
        ...takeoverRecord({
          kill,
          point,
          killed: primary.id,
          newPrimary: standby.id,
          took,
          served,
          faultAt: tKill,
          lastAcked: ackedAtKill,
          expected,
          checkpointsLost: lostCps.size,
          writesDiscarded: Math.max(0, finalWt - base),
          verifyMs,
        }),
        ...(zombie ? { zombie } : {}),
      };
      timeline.takeovers.push({ t: took.t, servingAt: served.t - verifyMs, kill, node: standby.id });
      report.violations.push(
        ...takeoverViolations({ kill, resumed, ackedAtKill, lostCps, expected, took, epoch, lastEpoch, t }),
      );
      lastEpoch = epoch;
      report.takeovers.push(t);
      const verb = kind === 'kill' ? 'killed' : kind === 'pause' ? 'paused' : 'partitioned';
      say(
        `kill ${kill}/${opts.kills}: ${point}, ${primary.id} ${verb}, ${standby.id} took over in ${takeoverMs} ms, serving after ${t.killToServingMs} ms (acked ${ackedAtKill}, resumed ${resumed}, epoch ${epoch}, ${t.writesDiscarded} write(s) discarded)`,
      );
      opts.onTakeover?.(t);
      // The lost relays come back (and are caught up); the killed node rejoins as the standby.
      for (const i of lost) {
        await relays[i]!.servers[0]!.start();
        timeline.relays.push({ t: Date.now(), kind: 'relay-start', relay: i });
      }
      if (natsNode !== undefined) {
        await cluster!.servers[natsNode]!.start();
        faults[faults.length - 1]!.restoredAtMs = Date.now() - startedAt;
      }
      const killed = primary;
      primary = standby;
      standby = killed;
      standby.start(args(standby.id));
      await standby.waitFor((e) => e.ev === 'standby', 'standby role after restart', startMs);
    }
    report.ok = report.violations.length === 0 && report.takeovers.length === opts.kills;
  } catch (err) {
    report.violations.push(`drill aborted: ${(err as Error).message}`);
    report.ok = false;
  } finally {
    await Promise.all([nodes.a.kill(), nodes.b.kill()]);
    await leases?.close();
    await Promise.all(relays.map((r) => r.destroy()));
    await Promise.all([...proxies.values()].map((p) => p.close()));
    if (!opts.keep) {
      if (opts.store === 'redis' || opts.store === 'postgres') {
        await Promise.all(['a', 'b'].map((id) => clearStore(id, args(id)))).catch((err: unknown) => {
          say(`drill: could not clear the ${opts.store} store: ${(err as Error).message}`);
        });
      }
      await rm(dir, { recursive: true, force: true });
      if (!cluster) await deleteAppAt(opts.nats, app).catch(() => undefined);
    }
    await cluster?.destroy();
  }
  report.medians = drillMedians(report.takeovers);
  timeline.endedAt = Date.now();
  report.durationMs = timeline.endedAt - startedAt;
  timeline.acks = thin(
    acks.map((a) => ({ t: a.t, checkpoint: a.checkpoint, node: a.node })),
    2_000,
  );
  timeline.lag = thin(
    applied.flatMap((s) => {
      const at = ackAt.get(s.checkpoint);
      return at === undefined
        ? []
        : [{ t: s.t, node: s.node, checkpoint: s.checkpoint, lagMs: Math.max(0, s.t - at) }];
    }),
    2_000,
  );
  return report;
}

/** `count` distinct relay indexes out of `n`, drawn from the seeded generator. */
function pickRelays(n: number, count: number, rand: () => number): number[] {
  const all = [...Array(n).keys()];
  const out: number[] = [];
  while (out.length < count) out.push(all.splice(Math.floor(rand() * all.length), 1)[0]!);
  return out.sort((a, b) => a - b);
}
