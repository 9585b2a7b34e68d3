/**
 * `restartpoint compact --app NAME`: makes a base snapshot now and purges the relays below the
 * retention window (docs/history.md). The command writes a compaction request into the app's
 * lease bucket; the base builder (the live standby with the smallest node id) sees it within a
 * second, builds a base at its last committed checkpoint, makes it durable under the ack policy,
 * purges, and answers. The command waits for the answer.
 */
import { randomBytes } from 'node:crypto';
import { Command } from 'commander';
import { UsageError } from '../../errors.js';
import { readPresence } from '../../transport/inspect.js';
import { baseBuilder, readCompactDone, writeCompact } from '../../transport/presence.js';
import { checkAppName, checkServers, intFlag } from '../flags.js';
import { pollUntil, withAppBucket } from './app-request.js';

/** The `compact --json` object (docs/cli.md). */
export interface CompactReport {
  app: string;
  ok: boolean;
  /** The standby that builds bases (null: none is live). */
  builder: string | null;
  /** Checkpoint of the base made (null when none was made in time). */
  checkpoint: number | null;
  /** Per relay, the first stream sequence kept after the purge (null: not purged yet, e.g. down). */
  purgedBelow: (number | null)[] | null;
  /** From the request to the answer. */
  ms: number;
  error?: string;
}

/** Asks the builder of `app` for a base now and waits for it. */
export async function runCompact(opts: {
  nats: string;
  app: string;
  timeoutMs: number;
  progress?: (line: string) => void;
}): Promise<CompactReport> {
  return withAppBucket(opts.nats, opts.app, async (kv) => {
    const builder = baseBuilder(await readPresence(kv), Date.now());
    if (!builder) {
      throw new UsageError(
        `app '${opts.app}' has no running standby: bases are built by a standby`,
        "start a standby (it shows in 'restartpoint status'), then compact again",
      );
    }
    const id = randomBytes(8).toString('hex');
    const t0 = performance.now();
    await writeCompact(kv, { id, requestedAt: Date.now() });
    opts.progress?.(`asked ${builder} for a base now`);
    const done = await pollUntil(t0 + opts.timeoutMs, 100, async () => {
      const d = await readCompactDone(kv).catch(() => undefined);
      return d?.id === id ? d : undefined;
    });
    if (done) {
      return {
        app: opts.app,
        ok: true,
        builder: done.builder,
        checkpoint: done.checkpoint,
        purgedBelow: [...done.purgedBelow],
        ms: Math.round(performance.now() - t0),
      };
    }
    return {
      app: opts.app,
      ok: false,
      builder,
      checkpoint: null,
      purgedBelow: null,
      ms: Math.round(performance.now() - t0),
      error: `no base within ${opts.timeoutMs} ms: is ${builder} applying checkpoints? (the request stays; the builder answers it when it can)`,
    };
  });
}

/** The `compact` command. */
export function compactCommand(): Command {
  return new Command('compact')
    .description('make a base snapshot now and purge the relays below the retention window')
    .requiredOption('--app <name>', 'app name as passed to Restartpoint.start()')
    .option('--nats <url>', 'NATS server with JetStream where the lease lives', 'nats://127.0.0.1:4222')
    .option(
      '--timeout-ms <ms>',
      'give up waiting after this long',
      intFlag('--timeout-ms', 100, 3_600_000),
      60_000,
    )
    .option('--json', 'print one JSON object (docs/cli.md)', false)
    .action(async (o: { app: string; nats: string; timeoutMs: number; json: boolean }) => {
      checkAppName(o.app);
      checkServers('--nats', o.nats);
      const r = await runCompact({
        nats: o.nats,
        app: o.app,
        timeoutMs: o.timeoutMs,
        progress: o.json ? undefined : (line) => process.stderr.write(`${line}\n`),
      });
      if (o.json) process.stdout.write(`${JSON.stringify(r)}\n`);
      else if (r.ok) {
        process.stdout.write(
          `base at checkpoint ${r.checkpoint} by ${r.builder}, in ${r.ms} ms; relays purged below seq ` +
            `${(r.purgedBelow ?? []).map((s) => (s === null ? '(not yet)' : String(s))).join(', ')}\n`,
        );
      } else process.stderr.write(`error: ${r.error}\n`);
      if (!r.ok) process.exitCode = 1;
    });
}
