/**
 * `drill --scenario upgrade` (issue 17, docs/drill.md, docs/upgrades.md): a rolling upgrade of the
 * sample app to a build whose state has a new shape, with a node killed in the middle of it.
 *
 * The ledger's build 2 (`--build 2`) has `stateVersion: 2`: its state gains `balances`, derived
 * from the mirror, and its `migrate` turns a build-1 image into that. Three real processes:
 *
 * 1. a (build 1) is primary; b (build 1) is a standby, then restarts on build 2 (a standby).
 * 2. `restartpoint switchover` (the real CLI): a hands over at its next checkpoint; b claims,
 *    migrates the image once and resumes.
 * 3. Mid-upgrade: a restarts still on build 1 (a node not yet upgraded) and c joins on build 2.
 *    a reads b's stateVersion-2 images: it must say it cannot resume and never claim, and the
 *    presence records (`restartpoint status`) must show the skew.
 * 4. b is SIGKILLed: the failover must land on c (it can resume), not on a.
 * 5. a restarts on build 2; c is SIGKILLed: a takes over. The upgrade is complete.
 *
 * After every takeover: no acknowledged checkpoint lost, the resumed image is that checkpoint's
 * (the build-1 fields, digest `digest`), store and image agree, the epoch grew. After the
 * migration also: `migrate` received exactly the acknowledged image (`sourceDigest`), and the
 * migrated state is what `migrate` makes of it (every build-1 field unchanged, `balances` equal to
 * what the mirror says).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { connectServers, deleteAppAt, openLeaseBucket, readPresence } from '../transport/inspect.js';
import { AppProcess, clearStore, ledgerArgs, num, sampleAppPath, type AppEvent } from './app-process.js';
import { DrillLedger, takeoverRecord } from './ledger.js';
import {
  DEFAULT_STEP_MS,
  drillMedians,
  emptyTimeline,
  type DrillOptions,
  type DrillReport,
} from './types.js';

/** What `--scenario upgrade` adds to the report (`upgrade` in `--json`). */
export interface UpgradeReport {
  /** The switchover to the first node on build 2. */
  switchover: {
    from: string;
    to: string;
    resumed: number;
    lastAcked: number;
    /** The image's version `migrate` was called with (1), or null if it did not run. */
    migratedFrom: number | null;
    /** `migrate` received the acknowledged image of the resumed checkpoint. */
    sourceMatches: boolean;
    /** The migrated state is what `migrate` makes of it (build-1 fields kept, balances derived). */
    migratedMatches: boolean;
  } | null;
  /** The node left on build 1 said it cannot resume (reason), and never became primary. */
  oldStandbyRefused: boolean;
  oldStandbyReason: string | null;
  /** Where the mid-upgrade failover landed, and on which build. */
  failoverLandedOn: string | null;
  /**
   * The presence records (what `restartpoint status` shows) during the mid-upgrade window: a on
   * stateVersion 1 with `canResume: false`, the primary b on stateVersion 2.
   */
  skewShown: boolean;
}

/**
 * Waits (presence is rewritten every second) until the presence records show `old` on
 * stateVersion 1 unable to resume and `primary` on stateVersion 2; false after `ms`.
 */
async function skewInPresence(
  nats: string,
  app: string,
  old: string,
  primary: string,
  ms: number,
): Promise<boolean> {
  const nc = await connectServers(nats, { timeoutMs: 3_000 });
  try {
    const kv = await openLeaseBucket(nc, app);
    if (!kv) return false;
    const until = Date.now() + ms;
    while (Date.now() < until) {
      const recs = await readPresence(kv);
      const o = recs.find((r) => r.nodeId === old);
      const p = recs.find((r) => r.nodeId === primary);
      if (o?.stateVersion === 1 && o.canResume === false && p?.stateVersion === 2 && p.canResume === true)
        return true;
      await new Promise((r) => setTimeout(r, 200));
    }
    return false;
  } finally {
    await nc.close();
  }
}

/** The package's CLI entry (bin/restartpoint.js), found from the sample app's place. */
function cliPath(): string {
  let dir = dirname(sampleAppPath());
  while (!existsSync(join(dir, 'package.json')) && dirname(dir) !== dir) dir = dirname(dir);
  return join(dir, 'bin', 'restartpoint.js');
}

/** Runs `restartpoint switchover --app APP --json`; resolves with its JSON report. */
function switchover(nats: string, app: string): Promise<{ ok: boolean; to: string | null; error?: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cliPath(), 'switchover', '--app', app, '--nats', nats, '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => {
      try {
        resolve(JSON.parse(out.trim().split('\n').pop() ?? '') as { ok: boolean; to: string | null });
      } catch {
        reject(new Error(`restartpoint switchover exited ${code}: ${err.trim() || out.trim()}`));
      }
    });
  });
}

/** Runs the upgrade drill. Guarantee violations go to `violations`; it throws only when it cannot run. */
export async function runUpgradeDrill(opts: DrillOptions): Promise<DrillReport & { upgrade: UpgradeReport }> {
  if (opts.key !== undefined || (opts.injectForged ?? 0) > 0 || (opts.stateMb ?? 0) > 0) {
    throw new Error(
      'the upgrade scenario runs the sample app unsigned and without ballast: leave out key, injectForged and stateMb',
    );
  }
  const say = opts.progress ?? (() => undefined);
  const app = `drill-${randomBytes(4).toString('hex')}`;
  const startedAt = Date.now();
  const dir = await mkdtemp(join(tmpdir(), 'restartpoint-drill-upgrade-'));
  const stepMs = opts.stepMs ?? DEFAULT_STEP_MS;
  const procs: AppProcess[] = [];
  const upgrade: UpgradeReport = {
    switchover: null,
    oldStandbyRefused: false,
    oldStandbyReason: null,
    failoverLandedOn: null,
    skewShown: false,
  };
  const report: DrillReport & { upgrade: UpgradeReport } = {
    ok: false,
    kills: 2,
    seed: opts.seed,
    store: opts.store,
    mode: opts.mode ?? 'delay-write',
    scenario: 'upgrade',
    relaysKilled: 0,
    takeovers: [],
    rejected: { forged: 0, corrupt: 0 },
    violations: [],
    leaseTtlMs: opts.leaseTtlMs,
    stateMb: 0,
    stepMs,
    medians: drillMedians([]),
    durationMs: 0,
    timeline: emptyTimeline(startedAt),
    upgrade,
  };
  let run = 0;
  const args = (id: string, build: 1 | 2): string[] => [
    ...ledgerArgs({ ...opts, app, dir: join(dir, `${id}-${++run}`) }),
    '--build',
    String(build),
    ...(stepMs > 0 ? ['--step-ms', String(stepMs)] : []),
  ];

  // The ledger of what each primary was told (ledger.ts), one role per process: a node id comes
  // back as a new process on another build.
  const ledger = new DrillLedger();
  let lastEpoch = 0;
  const track = (p: AppProcess): void => {
    ledger.track(p);
    p.on((e) => {
      if (e.ev === 'acked') report.timeline!.acks.push({ t: e.t, checkpoint: num(e.checkpoint), node: p.id });
    });
  };
  const node = (id: string, build: 1 | 2): AppProcess => {
    const p = new AppProcess(id);
    track(p);
    p.start(args(id, build));
    procs.push(p);
    return p;
  };
  /** Checks one takeover and adds it to the report. */
  const check = async (
    kill: number,
    killed: AppProcess,
    next: AppProcess,
    took: AppEvent,
    faultAt: number,
    ackedAtFault: number,
  ): Promise<void> => {
    const resumed = num(took.resumed);
    const epoch = num(took.epoch);
    const serving = await next.waitFor(
      (e) => e.ev === 'acked',
      'first checkpoint after the takeover',
      30_000,
    );
    const expected = ledger.declaredAnyEpoch(resumed);
    const t = takeoverRecord({
      kill,
      point: 'after-checkpoint',
      killed: killed.id,
      newPrimary: next.id,
      took,
      served: serving,
      faultAt,
      lastAcked: ackedAtFault,
      expected,
      checkpointsLost: Math.max(0, ackedAtFault - resumed),
      writesDiscarded: 0,
    });
    report.takeovers.push(t);
    opts.onTakeover?.(t);
    report.timeline!.takeovers.push({ t: took.t, servingAt: serving.t, kill, node: next.id });
    if (resumed < ackedAtFault) {
      report.violations.push(
        `kill ${kill}: resumed checkpoint ${resumed} is older than the last acknowledged ${ackedAtFault}`,
      );
    }
    if (!t.imageMatches)
      report.violations.push(`kill ${kill}: resumed image differs from checkpoint ${resumed}'s image`);
    if (!t.storeMatches)
      report.violations.push(`kill ${kill}: store differs from checkpoint ${resumed}'s writes`);
    if (took.mirrorDigest !== took.storeDigest)
      report.violations.push(`kill ${kill}: the new primary's store and image disagree`);
    if (!(epoch > lastEpoch))
      report.violations.push(`kill ${kill}: epoch ${epoch} is not above ${lastEpoch}`);
    if (took.stateVersion === 2 && took.balancesOk !== true) {
      report.violations.push(`kill ${kill}: the resumed build-2 state's balances do not match its mirror`);
    }
    lastEpoch = epoch;
  };
  const kill = async (p: AppProcess, n: number): Promise<{ at: number; acked: number }> => {
    const ackedAt = ledger.lastAcked;
    const at = Date.now();
    report.timeline!.faults.push({ t: at, kill: n, kind: 'kill', node: p.id });
    await p.kill();
    return { at, acked: Math.max(ackedAt, ledger.lastAcked) };
  };
  const waitApplied = (p: AppProcess, past: number, what: string): Promise<AppEvent> =>
    p.waitFor((e) => e.ev === 'applied' && num(e.checkpoint) > past, what, 60_000);

  try {
    say(`drill: app ${app}, scenario upgrade, store ${opts.store}, lease ${opts.leaseTtlMs} ms`);
    // 1. a on build 1 is primary; b joins on build 1, then restarts on build 2.
    const a1 = node('a', 1);
    const aFirst = await a1.waitFor((e) => e.ev === 'primary', 'a primary', 30_000);
    lastEpoch = num(aFirst.epoch);
    const b1 = node('b', 1);
    await b1.waitFor((e) => e.ev === 'standby', 'b standby', 30_000, true);
    await a1.waitFor((e) => e.ev === 'acked' && num(e.checkpoint) >= 5, 'a acks 5 checkpoints', 30_000);
    await b1.kill();
    const b2 = node('b', 2);
    await b2.waitFor((e) => e.ev === 'standby', 'b (build 2) standby', 30_000, true);
    await waitApplied(b2, ledger.lastAcked, 'b (build 2) catches up');
    say('drill: b restarted on build 2 (stateVersion 2 + migrate) as a standby');

    // 2. switchover to b: it migrates the image once and resumes.
    const bPrimary = b2.waitFor((e) => e.ev === 'primary', 'b primary after the switchover', 60_000);
    const switchAt = Date.now();
    const sw = await switchover(opts.nats, app);
    if (!sw.ok) throw new Error(`restartpoint switchover failed: ${sw.error ?? 'no new primary'}`);
    const took = await bPrimary;
    // What a acknowledged before it handed over (b's own acks come after).
    const handedOver = ledger.ackedBy(a1);
    await check(0, a1, b2, took, switchAt, handedOver);
    const resumed = num(took.resumed);
    const source = ledger.declaredAnyEpoch(resumed);
    upgrade.switchover = {
      from: 'a',
      to: sw.to ?? 'b',
      resumed,
      lastAcked: handedOver,
      migratedFrom: took.migratedFrom === null ? null : num(took.migratedFrom),
      sourceMatches: source !== undefined && took.sourceDigest === source.digest,
      migratedMatches: source !== undefined && took.digest === source.digest && took.balancesOk === true,
    };
    if (upgrade.switchover.migratedFrom !== 1) {
      report.violations.push(
        `switchover: b resumed without migrating a stateVersion-1 image (migratedFrom ${String(took.migratedFrom)})`,
      );
    }
    if (!upgrade.switchover.sourceMatches) {
      report.violations.push(
        `switchover: migrate did not receive checkpoint ${resumed}'s acknowledged image`,
      );
    }
    if (!upgrade.switchover.migratedMatches) {
      report.violations.push(
        `switchover: the migrated state is not what migrate makes of checkpoint ${resumed}'s image`,
      );
    }
    say(`drill: switchover a → b, b migrated checkpoint ${resumed} from stateVersion 1 and resumed`);

    // 3. Mid-upgrade: a comes back still on build 1; c joins on build 2.
    await a1.kill();
    const aOld = new AppProcess('a');
    track(aOld);
    let refused: AppEvent | undefined;
    aOld.on((e) => {
      if (e.ev === 'log' && e.msg === 'cannot resume' && !refused) refused = e;
    });
    aOld.start(args('a', 1));
    procs.push(aOld);
    const c2 = node('c', 2);
    await c2.waitFor((e) => e.ev === 'standby', 'c (build 2) standby', 30_000, true);
    await aOld
      .waitFor(
        (e) => e.ev === 'log' && e.msg === 'cannot resume',
        'a (build 1) says it cannot resume',
        60_000,
      )
      .catch(() => undefined);
    upgrade.oldStandbyReason = refused ? String(refused.reason) : null;
    if (!refused) report.violations.push('a (build 1) never said it cannot resume stateVersion-2 images');
    upgrade.skewShown = await skewInPresence(opts.nats, app, 'a', 'b', 10_000);
    if (!upgrade.skewShown) {
      report.violations.push(
        'presence (restartpoint status) did not show a on stateVersion 1 unable to resume beside b on 2',
      );
    }
    await waitApplied(c2, ledger.lastAcked, 'c (build 2) catches up');
    await b2.waitFor((e) => e.ev === 'acked' && num(e.checkpoint) >= resumed + 5, 'b acks 5 more', 30_000);

    // 4. b dies mid-upgrade: the failover must land on c, not on a (build 1).
    const cPrimary = c2.waitFor((e) => e.ev === 'primary', 'c primary', 60_000);
    const aPrimary = aOld.waitFor((e) => e.ev === 'primary', 'a (build 1) primary', 60_000);
    aPrimary.catch(() => undefined);
    const f1 = await kill(b2, 1);
    const landed = await Promise.race([cPrimary.then(() => 'c'), aPrimary.then(() => 'a')]);
    upgrade.failoverLandedOn = landed;
    if (landed === 'a') {
      report.violations.push(
        'kill 1: the failover landed on a, a node on build 1 that cannot read stateVersion-2 images',
      );
      throw new Error('the mid-upgrade failover landed on a build-1 node');
    }
    await check(1, b2, c2, await cPrimary, f1.at, f1.acked);
    if (aOld.history.some((e) => e.ev === 'primary'))
      report.violations.push('kill 1: a (build 1) became primary');
    upgrade.oldStandbyRefused = refused !== undefined && !aOld.history.some((e) => e.ev === 'primary');
    say(`drill: b killed mid-upgrade; the failover landed on c (build 2); a (build 1) refused`);

    // 5. a restarts on build 2; c is killed: a takes over. The upgrade is complete.
    await aOld.kill();
    const a2 = node('a', 2);
    await a2.waitFor((e) => e.ev === 'standby', 'a (build 2) standby', 30_000, true);
    await waitApplied(a2, ledger.lastAcked, 'a (build 2) catches up');
    const a2Primary = a2.waitFor((e) => e.ev === 'primary', 'a (build 2) primary', 60_000);
    const f2 = await kill(c2, 2);
    await check(2, c2, a2, await a2Primary, f2.at, f2.acked);
    say('drill: a restarted on build 2 and took over from c: every node runs build 2');
  } catch (err) {
    report.violations.push(`drill could not finish: ${(err as Error).message}`);
  } finally {
    await Promise.all(procs.map((p) => p.kill()));
    if (!opts.keep) {
      if (opts.store === 'redis' || opts.store === 'postgres') {
        for (const id of ['a', 'b', 'c']) await clearStore(id, args(id, 1)).catch(() => undefined);
      }
      await deleteAppAt(opts.nats, app).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    }
  }
  report.medians = drillMedians(report.takeovers);
  report.durationMs = Date.now() - startedAt;
  report.timeline!.endedAt = Date.now();
  report.ok = report.violations.length === 0 && report.takeovers.length === 3;
  return report;
}
