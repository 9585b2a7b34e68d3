/**
 * `restartpoint switchover --app NAME`: a planned handover of the primary role to a standby,
 * with no lost work. The command writes a switchover request naming the primary's epoch into
 * the app's lease bucket; the primary sees it within a second, hands over at its next
 * checkpoint (writes after that checkpoint was called are refused, nothing acknowledged is
 * rolled back) and releases the lease; a standby claims it at once and resumes from that
 * checkpoint. The command waits until a new primary holds the lease.
 */
import { randomBytes } from 'node:crypto';
import { Command } from 'commander';
import { UsageError } from '../../errors.js';
import {
  PRESENCE_STALE_MS,
  clearSwitchover,
  readLease,
  readPresence,
  readSwitchover,
  writeSwitchover,
  type SwitchoverRequest,
} from '../../transport/inspect.js';
import { checkAppName, checkServers, intFlag } from '../flags.js';
import { pollUntil, withAppBucket } from './app-request.js';

/** The `switchover --json` object (docs/cli.md). */
export interface SwitchoverReport {
  app: string;
  ok: boolean;
  /** The primary that handed over, and its epoch. */
  from: string;
  fromEpoch: number;
  /** The new primary and its epoch (null when it did not happen in time). */
  to: string | null;
  toEpoch: number | null;
  /** The checkpoint the new primary resumed from (from its presence record; null if unknown). */
  resumedFrom: number | null;
  /** From the request to the new primary holding the lease. */
  ms: number;
  error?: string;
}

/** Asks the primary of `app` to hand over and waits for the new primary. */
export async function runSwitchover(opts: {
  nats: string;
  app: string;
  timeoutMs: number;
  force: boolean;
  progress?: (line: string) => void;
}): Promise<SwitchoverReport> {
  return withAppBucket(opts.nats, opts.app, async (kv, names) => {
    const lease = await readLease(kv, names);
    if (!lease?.holder) {
      throw new UsageError(
        `no primary holds app '${opts.app}' now: there is nothing to switch over`,
        "start the app, or see 'restartpoint status --app " + opts.app + "'",
      );
    }
    const nodes = await readPresence(kv);
    const live = nodes.filter(
      (n) =>
        n.state === 'standby' && n.nodeId !== lease.holder && Date.now() - n.updatedAt < PRESENCE_STALE_MS,
    );
    if (live.length === 0 && !opts.force) {
      throw new UsageError(
        `app '${opts.app}' has no running standby: after the handover nobody would be primary until a node starts`,
        'start a standby first (it shows in restartpoint status), or pass --force to hand over anyway',
      );
    }
    const existing = await readSwitchover(kv);
    if (existing && existing.epoch === lease.epoch) {
      opts.progress?.(`a switchover request for epoch ${lease.epoch} is already pending; waiting for it`);
    }
    const req: SwitchoverRequest =
      existing?.epoch === lease.epoch
        ? existing
        : {
            epoch: lease.epoch,
            from: lease.holder,
            requestedAt: Date.now(),
            id: randomBytes(8).toString('hex'),
          };
    if (req !== existing) await writeSwitchover(kv, req);
    const t0 = performance.now();
    opts.progress?.(
      `asked ${lease.holder} (epoch ${lease.epoch}) to hand over at its next checkpoint` +
        (live.length ? `; standbys: ${live.map((n) => n.nodeId).join(', ')}` : ''),
    );
    let lastNote = t0;
    const now = await pollUntil(t0 + opts.timeoutMs, 50, async () => {
      const cur = await readLease(kv, names).catch(() => undefined);
      if (cur?.holder && cur.epoch > lease.epoch) return cur;
      if (performance.now() - lastNote > 5_000) {
        lastNote = performance.now();
        opts.progress?.(
          cur?.holder === lease.holder
            ? `still waiting for ${lease.holder}'s next checkpoint…`
            : 'the lease is released; waiting for a standby to claim it…',
        );
      }
      return undefined;
    });
    if (now) {
      let resumedFrom: number | null = null;
      // The new primary's presence shows its checkpoint once it has become primary.
      for (let i = 0; i < 20 && resumedFrom === null; i++) {
        const rec = await readPresence(kv).catch(() => []);
        const me = rec.find((r) => r.nodeId === now.holder && r.epoch === now.epoch && r.state === 'primary');
        if (me) resumedFrom = me.checkpoint;
        else await new Promise((r) => setTimeout(r, 100));
      }
      return {
        app: opts.app,
        ok: true,
        from: lease.holder,
        fromEpoch: lease.epoch,
        to: now.holder,
        toEpoch: now.epoch,
        resumedFrom,
        ms: Math.round(performance.now() - t0),
      };
    }
    // Withdraw the request (if it is still ours) so the primary does not hand over later, unasked.
    const pending = await readSwitchover(kv).catch(() => undefined);
    if (pending?.id === req.id) await clearSwitchover(kv).catch(() => undefined);
    return {
      app: opts.app,
      ok: false,
      from: lease.holder,
      fromEpoch: lease.epoch,
      to: null,
      toEpoch: null,
      resumedFrom: null,
      ms: Math.round(performance.now() - t0),
      error:
        `no handover within ${opts.timeoutMs} ms: the primary hands over at its next checkpoint — ` +
        'is the app calling checkpoint() (or using checkpointEveryMs)? The request was withdrawn.',
    };
  });
}

/** The `switchover` command. */
export function switchoverCommand(): Command {
  return new Command('switchover')
    .description('hand the primary role to a standby at the next checkpoint, with no lost work')
    .requiredOption('--app <name>', 'app name as passed to Restartpoint.start()')
    .option('--nats <url>', 'NATS server with JetStream where the lease lives', 'nats://127.0.0.1:4222')
    .option(
      '--timeout-ms <ms>',
      'give up (and withdraw the request) after this long',
      intFlag('--timeout-ms', 100, 3_600_000),
      30_000,
    )
    .option('--force', 'hand over even when no standby is running', false)
    .option('--json', 'print one JSON object (docs/cli.md)', false)
    .action(async (o: { app: string; nats: string; timeoutMs: number; force: boolean; json: boolean }) => {
      checkAppName(o.app);
      checkServers('--nats', o.nats);
      const r = await runSwitchover({
        nats: o.nats,
        app: o.app,
        timeoutMs: o.timeoutMs,
        force: o.force,
        progress: o.json ? undefined : (line) => process.stderr.write(`${line}\n`),
      });
      if (o.json) process.stdout.write(`${JSON.stringify(r)}\n`);
      else if (r.ok) {
        process.stdout.write(
          `switched over: ${r.from} (epoch ${r.fromEpoch}) → ${r.to} (epoch ${r.toEpoch})` +
            `${r.resumedFrom === null ? '' : `, resumed from checkpoint ${r.resumedFrom}`}, in ${r.ms} ms\n`,
        );
      } else process.stderr.write(`error: ${r.error}\n`);
      if (!r.ok) process.exitCode = 1;
    });
}
