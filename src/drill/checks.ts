/**
 * What the drill checks after each takeover (DESIGN.md's guarantees against the ledger of what
 * the deposed primary was told), that a standby is warm before a fault, and that a deposed
 * primary which kept running is fenced.
 */
import { num, type AppEvent, type AppProcess } from './app-process.js';
import type { TakeoverReport, ZombieReport } from './types.js';

/** Reject reasons the report counts as forged, and as corrupt. */
export const FORGED_REASONS = new Set(['forged', 'unsigned']);
export const CORRUPT_REASONS = new Set(['checksum', 'magic', 'truncated', 'malformed', 'version']);

/**
 * The guarantee violations of one takeover, in the order the report lists them: no acknowledged
 * checkpoint lost, the resumed image and store are that checkpoint's, store and image agree, the
 * epoch grew.
 */
export function takeoverViolations(o: {
  kill: number;
  resumed: number;
  ackedAtKill: number;
  lostCps: ReadonlySet<number>;
  expected: { digest: string; mirrorDigest: string } | undefined;
  took: AppEvent;
  epoch: number;
  lastEpoch: number;
  t: TakeoverReport;
}): string[] {
  const { kill, resumed, ackedAtKill, lostCps, expected, took, epoch, lastEpoch, t } = o;
  const out: string[] = [];
  if (resumed < ackedAtKill) {
    out.push(
      `kill ${kill}: resumed checkpoint ${resumed} is older than the last acknowledged ${ackedAtKill}`,
    );
  }
  if (t.checkpointsLost > 0) {
    out.push(
      `kill ${kill}: ${t.checkpointsLost} acknowledged checkpoint(s) after the resumed ${resumed} were lost (${[...lostCps].join(', ')})`,
    );
  }
  if (expected === undefined) {
    out.push(`kill ${kill}: resumed checkpoint ${resumed} was never issued by the killed primary`);
  } else {
    if (!t.imageMatches) out.push(`kill ${kill}: resumed image differs from checkpoint ${resumed}'s image`);
    if (!t.storeMatches) out.push(`kill ${kill}: store differs from checkpoint ${resumed}'s writes`);
  }
  if (took.mirrorDigest !== took.storeDigest) {
    out.push(`kill ${kill}: the new primary's store and image disagree`);
  }
  if (!(epoch > lastEpoch)) out.push(`kill ${kill}: epoch ${epoch} is not above ${lastEpoch}`);
  return out;
}

/** How far behind the primary a standby may be to count as warm (ms from ack to applied), at least. */
export const WARM_LAG_MS = 250;

/**
 * The warm threshold for nodes with lease `leaseTtlMs`: {@link WARM_LAG_MS}, or one TTL when that
 * is more. The nodes' default lag budget (`maxStandbyLag.ms`, src/primary/lag-budget.ts) lets a
 * standby fall one TTL behind before checkpoints wait for it; a stricter threshold than that
 * (250 ms at a 300 ms lease) could be missed for good by a standby the budget keeps where it
 * is, and each kill then waited 10 s for nothing ("killing anyway").
 */
export function warmLagMs(leaseTtlMs: number): number {
  return Math.max(WARM_LAG_MS, leaseTtlMs);
}

/**
 * Waits until the standby reports (`applied`, every 200 ms) a checkpoint it applied at most
 * `lagMs` after the primary's ack, so that every takeover is measured from a warm standby, not
 * from one still replaying the stream. False after 10 s without one.
 */
export async function warm(
  standby: AppProcess,
  ackAt: ReadonlyMap<number, number>,
  lagMs: number = WARM_LAG_MS,
): Promise<boolean> {
  try {
    await standby.waitFor(
      (e) => e.ev === 'applied' && e.t - (ackAt.get(num(e.checkpoint)) ?? e.t) <= lagMs,
      `applied sample within ${lagMs} ms of its ack`,
      10_000,
    );
    return true;
  } catch (err) {
    if (/no applied sample/.test((err as Error).message)) return false;
    throw err;
  }
}

/**
 * pause, partition: after the takeover, brings the deposed primary back (SIGCONT, or the link
 * healed) and checks it is fenced: it reports `demoted`, its own next write or checkpoint is
 * refused with `ERR_FENCED`, a checkpoint asked for afterwards is refused too, it acknowledged
 * nothing at or after the takeover, and the new primary's store holds none of its later work.
 */
export async function checkZombie(
  zombie: AppProcess,
  primary: AppProcess,
  o: {
    kind: 'pause' | 'partition';
    took: AppEvent;
    killedEpoch: number;
    wtAtFault: number;
    acks: readonly { node: string; epoch: number; checkpoint: number; t: number }[];
    timeoutMs: number;
    /** partition: the cut link(s), healed once the zombie reported `demoted`. */
    proxy: { heal(): void } | undefined;
    violations: string[];
    kill: number;
  },
): Promise<ZombieReport> {
  const v = (msg: string): void => {
    o.violations.push(`kill ${o.kill}: the ${o.kind === 'pause' ? 'paused' : 'partitioned'} primary ${msg}`);
  };
  const seen = async (ev: string, what: string): Promise<AppEvent | undefined> => {
    try {
      return await zombie.waitFor((e) => e.ev === ev, what, o.timeoutMs, true);
    } catch (err) {
      v(`never reported ${what}: ${(err as Error).message}`);
      return undefined;
    }
  };
  let demoted: AppEvent | undefined;
  if (o.kind === 'pause') {
    // The release is waiting on its stdin when it wakes: the zombie goes on where it stopped.
    zombie.send({ cmd: 'release' });
    zombie.signal('SIGCONT');
    demoted = await seen('demoted', "'demoted'");
  } else {
    // Alive all along, it must have seen its lease run out; then the link comes back.
    demoted = await seen('demoted', "'demoted'");
    o.proxy!.heal();
  }
  const fenced = await seen('fenced', 'a write or checkpoint refused as fenced');
  zombie.send({ cmd: 'probe' });
  const probe = await seen('probe', 'the result of a probe checkpoint');
  const verifiedP = primary.waitFor((e) => e.ev === 'verified', 'store verification', o.timeoutMs);
  primary.send({ cmd: 'verify' });
  let foreign = 0;
  try {
    const verified = await verifiedP;
    foreign = num(verified.foreign);
    if (verified.storeDigest !== verified.mirrorDigest)
      o.violations.push(
        `kill ${o.kill}: after the deposed primary came back, the new primary's store and image disagree`,
      );
    if (foreign > 0) v(`left ${foreign} write(s) in the new primary's store`);
  } catch (err) {
    o.violations.push(
      `kill ${o.kill}: the new primary could not verify its store: ${(err as Error).message}`,
    );
  }
  const late = o.acks.filter((a) => a.node === zombie.id && a.epoch === o.killedEpoch && a.t >= o.took.t);
  if (late.length > 0)
    v(`acknowledged checkpoint(s) ${late.map((a) => a.checkpoint).join(', ')} after the takeover`);
  const refused = fenced?.code === 'ERR_FENCED';
  const probeRefused = probe !== undefined && probe.code === 'ERR_FENCED';
  if (probe !== undefined && !probeRefused)
    v(
      probe.acked !== undefined
        ? `acknowledged probe checkpoint ${String(probe.acked)} after the takeover`
        : `refused the probe checkpoint with ${String(probe.code)}, not ERR_FENCED`,
    );
  return {
    demoted: demoted !== undefined,
    demotedAfterTakeoverMs: demoted ? demoted.t - o.took.t : null,
    refused,
    probeRefused,
    acksAfterTakeover: late.length,
    writesAfterFault: Math.max(0, num(probe?.wt ?? fenced?.wt) - o.wtAtFault),
    foreignWrites: foreign,
  };
}
