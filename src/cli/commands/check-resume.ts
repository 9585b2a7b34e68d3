/**
 * `restartpoint check-resume --app NAME [--config FILE] [--json] -- <new app command>`: runs the
 * new build's resume path against the app's live history before it is deployed (issue 17,
 * docs/upgrades.md, docs/cli.md).
 *
 * The command is started with `RESTARTPOINT_CHECK_RESUME=1` (and the app name and a report file)
 * in its environment: its `Restartpoint.start()` reads the relays into the app's own adapter,
 * which must be an empty scratch store, commits what a takeover would resume from, materializes
 * the image and runs the app's real `migrate` (src/sdk/check-resume.ts). Nothing is written to the
 * relays or the lease bucket. The verification hook is the one of `drill --config`: a JSON line
 * on the app's stdout with `mirrorDigest` and `storeDigest`, which must be equal.
 *
 * Exit 0: resumed (and the hook, if printed, agreed). 1: the resume failed (the exception and the
 * checkpoint it failed on are printed), the digests disagree, or the app exited or timed out
 * before resuming. 2: usage or config error.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Command } from 'commander';
import { UsageError } from '../../errors.js';
import { appNames } from '../../protocol/subjects.js';
import {
  CHECK_RESUME_APP_ENV,
  CHECK_RESUME_ENV,
  CHECK_RESUME_REPORT_ENV,
  type CheckResumeOutcome,
} from '../../sdk/check-resume.js';
import { connectServers, kvStreamName, streamInfo, splitServers } from '../../transport/inspect.js';
import { checkAppName, checkServers, intFlag, loadConfigFlag, repeatFlag } from '../flags.js';

/** What `check-resume --json` prints (docs/cli.md). */
export interface CheckResumeReport {
  /** The new build resumed, and its verification line (if any) agreed. */
  readonly ok: boolean;
  readonly app: string;
  readonly command: readonly string[];
  /** The checkpoint resumed from or failed on (0: no history), and the epoch that sealed it. */
  readonly checkpoint: number | null;
  readonly epoch: number | null;
  /** The image's `stateVersion` and the new build's. */
  readonly imageStateVersion: number | null;
  readonly stateVersion: number | null;
  /** Whether the new build's `migrate` ran. */
  readonly migrated: boolean | null;
  /** The failure: `{ code, message }` (from the SDK, or why the check itself failed), or null. */
  readonly error: { readonly code: string; readonly message: string } | null;
  /** The checkpoint the resume failed on, or null. */
  readonly failedCheckpoint: number | null;
  /** The hook: true (digests equal), false (they differ), null (the app printed no such line). */
  readonly verified: boolean | null;
  readonly mirrorDigest: string | null;
  readonly storeDigest: string | null;
  /** How the app process ended: its exit code when it exited by itself, else null (stopped by us). */
  readonly appExitCode: number | null;
  /** Last lines of the app's stderr when it failed. */
  readonly appStderr: string;
  /** The stream's last sequence per relay, and the lease bucket's, before and after the check. */
  readonly relays: readonly {
    readonly servers: string;
    readonly lastSeqBefore: number | null;
    readonly lastSeqAfter: number | null;
  }[];
  readonly leaseBucketSeqBefore: number | null;
  readonly leaseBucketSeqAfter: number | null;
  readonly ms: number;
}

interface Flags {
  app: string;
  config?: string;
  nats: string;
  relay: string[];
  json: boolean;
  timeoutMs: number;
}

/** A stream's last sequence on `servers`, or null (unreachable or no such stream). */
async function lastSeq(servers: string, stream: string): Promise<number | null> {
  const nc = await connectServers(servers, { timeoutMs: 3_000 }).catch(() => undefined);
  if (!nc) return null;
  try {
    return (await streamInfo(nc, stream))?.state.last_seq ?? null;
  } finally {
    await nc.close();
  }
}

async function snapshot(app: string, nats: string, relays: string[]) {
  const names = appNames(app);
  return {
    relays: await Promise.all(relays.map((r) => lastSeq(r, names.stream))),
    lease: await lastSeq(nats, kvStreamName(names.leaseBucket)),
  };
}

/** Runs the app command in the sandbox; resolves with what it reported. */
function runApp(
  command: string[],
  env: NodeJS.ProcessEnv,
  reportFile: string,
  timeoutMs: number,
): Promise<{
  outcome: CheckResumeOutcome | undefined;
  hook: { mirrorDigest: string; storeDigest: string } | undefined;
  exitCode: number | null;
  stderr: string;
  timedOut: boolean;
}> {
  return new Promise((resolve) => {
    const child = spawn(command[0]!, command.slice(1), {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let stderr = '';
    let hook: { mirrorDigest: string; storeDigest: string } | undefined;
    let exitCode: number | null = null;
    let finished = false;
    let timedOut = false;
    let graceTimer: NodeJS.Timeout | undefined;
    const readOutcome = (): CheckResumeOutcome | undefined => {
      try {
        return JSON.parse(readFileSync(reportFile, 'utf8')) as CheckResumeOutcome;
      } catch {
        return undefined;
      }
    };
    const finish = (): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      clearInterval(poll);
      clearTimeout(graceTimer);
      if (child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          child.kill('SIGKILL');
        }
      }
      resolve({ outcome: readOutcome(), hook, exitCode, stderr: stderr.slice(-2000), timedOut });
    };
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (hook || !line.startsWith('{')) return;
      try {
        const e = JSON.parse(line) as { mirrorDigest?: unknown; storeDigest?: unknown };
        if (typeof e.mirrorDigest === 'string' && typeof e.storeDigest === 'string') {
          hook = { mirrorDigest: e.mirrorDigest, storeDigest: e.storeDigest };
          finish();
        }
      } catch {
        // not a JSON line of the app's
      }
    });
    child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-8000)));
    child.on('error', (err) => {
      stderr += `\ncannot start ${command[0]}: ${err.message}`;
      exitCode = 127;
      finish();
    });
    child.on('exit', (code) => {
      exitCode = code;
      // Let the stdout pipe drain: the hook line may still be in it.
      setTimeout(finish, 200);
    });
    // Once the SDK reported a successful resume, the app gets 2 s to print its hook line.
    const poll = setInterval(() => {
      if (graceTimer || !readOutcome()?.ok) return;
      graceTimer = setTimeout(finish, 2_000);
    }, 100);
    const timer = setTimeout(() => {
      timedOut = true;
      finish();
    }, timeoutMs);
  });
}

/** The human output. */
export function formatCheckResume(r: CheckResumeReport): string {
  const lines: string[] = [];
  if (r.ok) {
    lines.push(
      `check-resume ${r.app}: OK, the new build resumed from checkpoint ${r.checkpoint} (epoch ${r.epoch})` +
        (r.migrated
          ? `, migrating its image from stateVersion ${r.imageStateVersion} to ${r.stateVersion}`
          : ''),
    );
  } else {
    lines.push(
      `check-resume ${r.app}: FAILED` +
        (r.failedCheckpoint !== null ? ` at checkpoint ${r.failedCheckpoint} (epoch ${r.epoch})` : ''),
    );
    if (r.error) lines.push(`  ${r.error.code}: ${r.error.message}`);
  }
  lines.push(
    r.verified === null
      ? '  verification: the app printed no line with mirrorDigest and storeDigest (not checked)'
      : r.verified
        ? `  verification: store and image agree (${r.storeDigest})`
        : `  verification: store and image DISAGREE (mirrorDigest ${r.mirrorDigest}, storeDigest ${r.storeDigest})`,
  );
  for (const x of r.relays) {
    lines.push(
      `  relay ${x.servers}: stream last seq ${x.lastSeqBefore ?? '-'} before, ${x.lastSeqAfter ?? '-'} after`,
    );
  }
  lines.push(
    `  lease bucket last seq ${r.leaseBucketSeqBefore ?? '-'} before, ${r.leaseBucketSeqAfter ?? '-'} after`,
  );
  if (!r.ok && r.appStderr.trim()) {
    lines.push('  app stderr (last lines):');
    for (const l of r.appStderr.trim().split('\n').slice(-10)) lines.push(`    ${l}`);
  }
  return `${lines.join('\n')}\n`;
}

/** The `check-resume` command. */
export function checkResumeCommand(): Command {
  return new Command('check-resume')
    .description(
      "run a new build's resume path (restore + migrate) against the app's live image and store, in a sandbox that writes nothing",
    )
    .requiredOption('--app <name>', 'app name as passed to Restartpoint.start()')
    .option('--config <file>', 'take --nats and the relays from this sidecar config')
    .option('--nats <url>', 'NATS server holding the lease bucket', 'nats://127.0.0.1:4222')
    .option(
      '--relay <url>',
      "a relay of the app (repeat it; a cluster's servers joined by '|'); default: --nats",
      repeatFlag,
      [] as string[],
    )
    .option(
      '--timeout-ms <ms>',
      'how long the app gets to resume',
      intFlag('--timeout-ms', 1_000, 3_600_000),
      120_000,
    )
    .option('--json', 'print one JSON object (docs/cli.md)', false)
    .argument('[command...]', 'after --: the new build of the app, started with RESTARTPOINT_CHECK_RESUME=1')
    .action(async (command: string[], o: Flags) => {
      checkAppName(o.app);
      if (command.length === 0) {
        throw new UsageError(
          'check-resume needs the new build of the app after --',
          'restartpoint check-resume --app NAME -- node dist/app.js --store memory',
        );
      }
      let nats = o.nats;
      let relays = o.relay;
      if (o.config !== undefined) {
        const c = loadConfigFlag(o.config);
        if (c.app !== o.app) {
          throw new UsageError(
            `--config ${o.config} is for app '${c.app}', not '${o.app}'`,
            'pass the config of the app you check',
          );
        }
        const list = (s: string | string[]): string => (Array.isArray(s) ? s.join('|') : s);
        nats = list(c.nats.servers);
        relays = (c.relays ?? []).map((r) => list(r.servers));
      }
      checkServers('--nats', nats);
      for (const r of relays) checkServers('--relay', r);
      if (relays.length === 0) relays = [nats];
      const started = performance.now();
      const before = await snapshot(o.app, nats, relays);
      if (before.relays.every((s) => s === null)) {
        throw new UsageError(
          `app '${o.app}' has no stream on ${relays.join(', ')}: there is no history to check against`,
          'check the app name and --nats/--relay (or --config)',
        );
      }
      const dir = mkdtempSync(join(tmpdir(), 'rp-check-resume-'));
      const reportFile = join(dir, 'outcome.json');
      const run = await runApp(
        command,
        {
          ...process.env,
          [CHECK_RESUME_ENV]: '1',
          [CHECK_RESUME_APP_ENV]: o.app,
          [CHECK_RESUME_REPORT_ENV]: reportFile,
        },
        reportFile,
        o.timeoutMs,
      );
      rmSync(dir, { recursive: true, force: true });
      const after = await snapshot(o.app, nats, relays);
      const out = run.outcome;
      const verified = run.hook ? run.hook.mirrorDigest === run.hook.storeDigest : null;
      let error = out?.error ?? null;
      if (!out) {
        error = {
          code: 'ERR_CHECK',
          message: run.timedOut
            ? `the app did not reach Restartpoint.start() within ${o.timeoutMs} ms (--timeout-ms)`
            : `the app exited (${run.exitCode}) without reaching Restartpoint.start() in check-resume mode: does it use restartpoint's SDK, and does its command run as given?`,
        };
      } else if (out.ok && verified === false) {
        error = {
          code: 'ERR_VERIFY',
          message: "the resumed app's store and image disagree (mirrorDigest ≠ storeDigest)",
        };
      }
      const report: CheckResumeReport = {
        ok: !!out?.ok && verified !== false,
        app: o.app,
        command,
        checkpoint: out?.checkpoint ?? null,
        epoch: out?.epoch ?? null,
        imageStateVersion: out?.imageStateVersion ?? null,
        stateVersion: out?.stateVersion ?? null,
        migrated: out?.migrated ?? null,
        error,
        failedCheckpoint: out && !out.ok ? out.checkpoint : null,
        verified,
        mirrorDigest: run.hook?.mirrorDigest ?? null,
        storeDigest: run.hook?.storeDigest ?? null,
        appExitCode: run.exitCode,
        appStderr: run.stderr,
        relays: relays.map((servers, i) => ({
          servers: splitServers(servers).join('|'),
          lastSeqBefore: before.relays[i] ?? null,
          lastSeqAfter: after.relays[i] ?? null,
        })),
        leaseBucketSeqBefore: before.lease,
        leaseBucketSeqAfter: after.lease,
        ms: Math.round(performance.now() - started),
      };
      process.stdout.write(o.json ? `${JSON.stringify(report)}\n` : formatCheckResume(report));
      process.exitCode = report.ok ? 0 : 1;
    });
}
