/**
 * `restartpoint drill`: proves failover works by taking a real primary out, repeatedly.
 * Human output: progress (a bar on a terminal, lines otherwise), a summary table of RTO/RPO per
 * takeover, medians, a verdict. `--json`: one JSON object on stdout and nothing else
 * (docs/cli.md, docs/drill.md). `--report FILE`: a self-contained HTML report. Exit 0 only when
 * `ok`.
 */
import { existsSync, statSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import cliProgress from 'cli-progress';
import {
  DEFAULT_STEP_MS,
  DrillStores,
  MAX_STATE_MB,
  Scenarios,
  SoloScenarios,
  drillMedians,
  reportJson,
  runDrill,
  type DrillReport,
  type DrillStore,
  type Scenario,
} from '../../drill/drill.js';
import { renderReport } from '../../drill/report.js';
import { runSidecarDrill } from '../../drill/sidecar-drill.js';
import { MAX_CHAOS_RELAYS } from '../../drill/chaos.js';
import { UsageError } from '../../errors.js';
import { intFlag, loadConfigFlag, repeatFlag } from '../flags.js';

interface DrillFlags {
  scenario: Scenario | 'all';
  kills: number;
  store: DrillStore;
  mode: 'delay-write' | 'snapshot';
  redisUrl: string;
  postgresUrl: string;
  seed?: number;
  nats: string;
  leaseTtl: number;
  keep: boolean;
  json: boolean;
  key?: string;
  injectForged?: number;
  stateMb: number;
  stepMs: number;
  history: number;
  report?: string;
  config?: string;
  relays?: number;
  natsCluster?: number;
  storeFault: string[];
}

/** Flags that the sidecar config decides in `--config` mode. */
const NOT_WITH_CONFIG = [
  'scenario',
  'store',
  'mode',
  'redisUrl',
  'postgresUrl',
  'nats',
  'leaseTtl',
  'stateMb',
  'stepMs',
  'history',
  'key',
  'injectForged',
  'relays',
  'natsCluster',
] as const;

/** `--config FILE -- <command…>`: the checked config figures the sidecar drill needs. */
function sidecarSetup(
  cmd: Command,
  o: DrillFlags,
  command: string[],
): { storageKind: string; nats: string; leaseTtlMs: number; mode: string } {
  if (command.length === 0) {
    throw new UsageError(
      '--config needs the app command after --',
      'for example: restartpoint drill --config restartpoint.yaml -- python3 app.py',
    );
  }
  for (const k of NOT_WITH_CONFIG) {
    if (cmd.getOptionValueSource(k) === 'cli') {
      const flag = `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
      throw new UsageError(
        `${flag} cannot be combined with --config`,
        'the sidecar config file decides it (docs/config.md); the drill through sidecars runs the kill scenario',
      );
    }
  }
  const config = loadConfigFlag(o.config!);
  const servers = config.nats.servers;
  return {
    storageKind: config.storage.kind,
    nats: Array.isArray(servers) ? servers.join(',') : servers,
    leaseTtlMs: config.leaseTtlMs ?? 2000,
    mode: config.mode ?? 'delay-write',
  };
}

/** A report of `--scenario all`: the runs merged, each kept in `runs`. */
type Merged = DrillReport & { runs?: DrillReport[] };

/** The summary table: one row per takeover (RTO and RPO figures, checks). */
export function summaryTable(report: DrillReport): string {
  const head = [
    'scenario',
    'kill',
    'point',
    'detect',
    'rollback',
    'restore',
    'resume',
    'total ms',
    'acked',
    'resumed',
    'cps lost',
    'writes discarded',
    'store',
    'image',
    'fenced',
  ];
  const rows = report.takeovers.map((t) => [
    t.scenario ?? report.scenario,
    String(t.kill),
    t.point,
    String(t.detectMs),
    String(t.rollbackMs),
    String(t.restoreMs),
    String(t.resumeMs),
    String(t.killToServingMs),
    String(t.lastAcked),
    String(t.resumed),
    String(t.checkpointsLost),
    String(t.writesDiscarded),
    t.storeMatches ? 'ok' : 'MISMATCH',
    t.imageMatches ? 'ok' : 'MISMATCH',
    t.zombie
      ? t.zombie.demoted && t.zombie.refused && t.zombie.probeRefused && t.zombie.acksAfterTakeover === 0
        ? 'yes'
        : 'NO'
      : '-',
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]): string =>
    r
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

/** The medians, one line. */
function mediansLine(report: DrillReport): string {
  const m = report.medians;
  return (
    `medians: detect ${m.detectMs} ms, rollback ${m.rollbackMs} ms, restore ${m.restoreMs} ms, ` +
    `resume ${m.resumeMs} ms (rollback + restore + resume ${m.rollbackRestoreResumeMs} ms), ` +
    `takeover ${m.takeoverMs} ms, kill to serving ${m.killToServingMs} ms`
  );
}

/** Merges the reports of `--scenario all`. */
function merge(runs: DrillReport[]): Merged {
  if (runs.length === 1) return runs[0]!;
  const takeovers = runs.flatMap((r) => r.takeovers.map((t) => ({ ...t, scenario: r.scenario })));
  return {
    ...runs[0]!,
    scenario: 'all' as Scenario,
    ok: runs.every((r) => r.ok),
    kills: runs.reduce((n, r) => n + r.kills, 0),
    relaysKilled: runs.reduce((n, r) => n + r.relaysKilled, 0),
    rejected: {
      forged: runs.reduce((n, r) => n + r.rejected.forged, 0),
      corrupt: runs.reduce((n, r) => n + r.rejected.corrupt, 0),
    },
    takeovers,
    leaseChecks: runs.every((r) => r.leaseChecks)
      ? {
          judged: runs.reduce((n, r) => n + r.leaseChecks!.judged, 0),
          early: runs.reduce((n, r) => n + r.leaseChecks!.early, 0),
          unjudged: runs.reduce((n, r) => n + r.leaseChecks!.unjudged, 0),
          minGapMs: runs.reduce<number | null>(
            (m, r) =>
              r.leaseChecks!.minGapMs === null ? m : Math.min(m ?? Infinity, r.leaseChecks!.minGapMs),
            null,
          ),
          gapsMs: runs.flatMap((r) => r.leaseChecks!.gapsMs),
        }
      : undefined,
    violations: runs.flatMap((r) => r.violations.map((v) => `${r.scenario}: ${v}`)),
    medians: drillMedians(takeovers),
    durationMs: runs.reduce((n, r) => n + r.durationMs, 0),
    timeline: undefined,
    runs,
  };
}

/** `--report FILE`: the folder must exist and the path must not be a folder. */
function checkReportPath(path: string): string {
  const abs = resolve(path);
  const dir = dirname(abs);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    throw new UsageError(
      `--report ${path}: the folder ${dir} does not exist`,
      'create it first, or pass a path in an existing folder, e.g. --report drill.html',
    );
  }
  if (existsSync(abs) && statSync(abs).isDirectory()) {
    throw new UsageError(`--report ${path} is a folder`, 'pass a file name, e.g. --report drill.html');
  }
  return abs;
}

/** The `drill` command. */
export function drillCommand(): Command {
  return new Command('drill')
    .description(
      'run the sample app as two nodes, take the primary out N times (kill, pause, partition), check every takeover',
    )
    .option('--kills <n>', 'how many times to kill the primary', intFlag('--kills', 1, 1000), 3)
    .addOption(
      new Option('--store <kind>', 'store of the sample app').choices([...DrillStores]).default('file'),
    )
    .addOption(
      new Option('--mode <mode>', 'standby mode of the nodes')
        .choices(['delay-write', 'snapshot'])
        .default('delay-write'),
    )
    .addOption(
      new Option(
        '--scenario <name>',
        "what fails: the primary ('kill', 'pause', 'partition'), relays, shards, or 'all' in turn",
      )
        .choices([...Scenarios, ...SoloScenarios, 'all'])
        .default('kill'),
    )
    .option(
      '--store-fault <name>',
      'with --scenario store-loss: run only this fault (repeat it; docs/drill.md lists them)',
      repeatFlag,
      [] as string[],
    )
    .option('--redis-url <url>', 'Redis for --store redis', 'redis://127.0.0.1:6379')
    .option(
      '--postgres-url <url>',
      'PostgreSQL for --store postgres',
      'postgres://postgres@127.0.0.1:5432/test',
    )
    .option(
      '--seed <s>',
      'seed for kill points and timing (default: random)',
      intFlag('--seed', 0, 2 ** 31 - 1),
    )
    .option('--nats <url>', 'NATS server with JetStream', 'nats://127.0.0.1:4222')
    .option('--lease-ttl <ms>', 'lease TTL of the nodes', intFlag('--lease-ttl', 100, 60_000), 1000)
    .option(
      '--history <n>',
      'checkpoints the primary makes before the first fault (a long history: bases and retention)',
      intFlag('--history', 0, 10_000_000),
      0,
    )
    .option(
      '--state-mb <n>',
      `MB of ballast in the sample app's state (0-${MAX_STATE_MB})`,
      intFlag('--state-mb', 0, MAX_STATE_MB),
      0,
    )
    .option(
      '--step-ms <ms>',
      'pause of the sample app after each acknowledged step (0: as fast as it can)',
      intFlag('--step-ms', 0, 10_000),
      DEFAULT_STEP_MS,
    )
    .option(
      '--relays <n>',
      `--scenario chaos: relays (nats-servers the drill starts, ack quorum), 1-${MAX_CHAOS_RELAYS}`,
      intFlag('--relays', 1, MAX_CHAOS_RELAYS),
    )
    .option(
      '--nats-cluster <n>',
      'run nats as a JetStream cluster of N (3) nodes the drill starts, lease and stream at R3; one node is SIGKILLed mid-run',
      (v: string) => {
        if (v !== '3')
          throw new InvalidArgumentError(
            `--nats-cluster must be 3 (a three-node JetStream cluster), got '${v}'`,
          );
        return 3;
      },
    )
    .option('--report <file>', 'write a self-contained HTML report (timeline, RTO/RPO table) to FILE')
    .option('--keep', 'keep the temp folder and the NATS stream afterwards', false)
    .option(
      '--key <key>',
      'cluster key: run the nodes in signed mode (32+ bytes: 64 hex digits, base64 or text)',
    )
    .option(
      '--inject-forged <n>',
      'with --key: publish N forged and N corrupted messages onto the app subject during the run',
      intFlag('--inject-forged', 1, 100_000),
    )
    .option(
      '--config <file>',
      'drill your own app through two sidecars with this sidecar config; the app command follows --',
    )
    .argument('[command...]', 'with --config, after --: the app each sidecar supervises')
    .option('--json', 'print one JSON object (docs/cli.md) and nothing else on stdout', false)
    .action(async (command: string[], o: DrillFlags, cmd: Command) => {
      if (o.config === undefined && command.length > 0) {
        throw new UsageError(
          `an app command (${command.join(' ')}) needs --config`,
          'drill your own app through sidecars: restartpoint drill --config restartpoint.yaml -- <app command>',
        );
      }
      const sidecar = o.config !== undefined ? sidecarSetup(cmd, o, command) : undefined;
      if (o.injectForged !== undefined && o.key === undefined) {
        throw new UsageError(
          '--inject-forged needs --key',
          'forged frames are only told apart from real ones in signed mode: add --key $(openssl rand -hex 32)',
        );
      }
      if (o.relays !== undefined && o.scenario !== 'chaos') {
        throw new UsageError(
          `--relays needs --scenario chaos (got ${o.scenario})`,
          'relay-loss and shard-loss use 3 and 6 relays; for N relays run: restartpoint drill --scenario chaos --relays N',
        );
      }
      if (o.scenario === 'chaos' && (o.stateMb > 0 || o.injectForged !== undefined)) {
        throw new UsageError(
          `--scenario chaos does not take ${o.stateMb > 0 ? '--state-mb' : '--inject-forged'}`,
          'run those with the kill scenario: restartpoint drill --state-mb 10 (or --key K --inject-forged N)',
        );
      }
      if (o.natsCluster !== undefined && (o.scenario === 'partition' || o.scenario === 'all')) {
        throw new UsageError(
          `--nats-cluster does not combine with --scenario ${o.scenario}`,
          'partition proxies one server per node; use --scenario chaos (which partitions every link) or kill, pause',
        );
      }
      if (o.scenario === 'store-loss' && o.store === 'memory') {
        throw new UsageError(
          "--scenario store-loss needs a store outside the node's process: a memory store lives in it, so a fault of it is a fault of the process (--scenario kill covers that)",
          'use --store file, redis or postgres',
        );
      }
      if (o.storeFault.length > 0 && o.scenario !== 'store-loss') {
        throw new UsageError('--store-fault goes with --scenario store-loss', 'add --scenario store-loss');
      }
      const reportPath = o.report !== undefined ? checkReportPath(o.report) : undefined;
      const seed = o.seed ?? Math.floor(Math.random() * 2 ** 31);
      const scenarios: Scenario[] = sidecar ? ['kill'] : o.scenario === 'all' ? [...Scenarios] : [o.scenario];
      // A bar on a terminal (stderr), unless the output is JSON; progress lines otherwise.
      const bars =
        !o.json && process.stderr.isTTY
          ? new cliProgress.MultiBar(
              {
                stream: process.stderr,
                format: 'drill [{bar}] {value}/{total} takeovers | {duration_formatted} | {phase}',
                hideCursor: true,
                clearOnComplete: true,
              },
              cliProgress.Presets.shades_classic,
            )
          : undefined;
      const bar = bars?.create(scenarios.length * o.kills, 0, { phase: 'starting' });
      const progress = (line: string): void => {
        if (bars) {
          bars.log(`${line}\n`);
          bar!.update({ phase: line.length > 60 ? `${line.slice(0, 57)}...` : line });
        } else if (o.json) process.stderr.write(`${line}\n`);
        else process.stdout.write(`${line}\n`);
      };
      const runs: DrillReport[] = [];
      try {
        if (sidecar) {
          runs.push(
            await runSidecarDrill({
              ...sidecar,
              config: o.config!,
              command,
              kills: o.kills,
              seed,
              keep: o.keep,
              progress,
              onTakeover: () => bar?.increment(),
            }),
          );
        }
        for (const scenario of sidecar ? [] : scenarios) {
          runs.push(
            await runDrill({
              scenario,
              kills: o.kills,
              store: o.store,
              mode: o.mode,
              redisUrl: o.redisUrl,
              postgresUrl: o.postgresUrl,
              seed,
              nats: o.nats,
              leaseTtlMs: o.leaseTtl,
              keep: o.keep,
              key: o.key,
              injectForged: o.injectForged,
              stateMb: o.stateMb,
              // chaos has a default of its own (CHAOS_STEP_MS) unless --step-ms is given.
              stepMs:
                scenario === 'chaos' && cmd.getOptionValueSource('stepMs') !== 'cli' ? undefined : o.stepMs,
              ...(o.relays !== undefined ? { relays: o.relays } : {}),
              ...(o.natsCluster !== undefined ? { natsCluster: o.natsCluster } : {}),
              storeFaults: o.storeFault,
              history: o.history,
              progress,
              onTakeover: () => bar?.increment(),
            }),
          );
        }
      } finally {
        bars?.stop();
      }
      const report = merge(runs);
      if (reportPath) {
        const command = ['restartpoint', ...process.argv.slice(2)].join(' ');
        await writeFile(reportPath, renderReport(report, { command }));
      }
      if (o.json) {
        process.stdout.write(`${reportJson(report)}\n`);
      } else {
        process.stdout.write(`\n${summaryTable(report)}\n\n`);
        if (report.takeovers.length > 0) process.stdout.write(`${mediansLine(report)}\n`);
        if (report.faults?.length) {
          const kinds = new Map<string, number>();
          for (const f of report.faults) kinds.set(f.kind, (kinds.get(f.kind) ?? 0) + 1);
          process.stdout.write(
            `faults: ${report.faults.length} injected (${[...kinds].map(([k, n]) => `${k} ${n}`).join(', ')}); each with its evidence in --json\n`,
          );
        }
        for (const f of report.storeFaults ?? [])
          process.stdout.write(`fault ${f.fault}: ${f.outcome} (expected ${f.expected}): ${f.detail}\n`);
        for (const v of report.violations) process.stdout.write(`VIOLATION: ${v}\n`);
        if (reportPath) process.stdout.write(`report: ${reportPath}\n`);
        process.stdout.write(
          report.ok
            ? `verdict: PASS (${report.kills} kills, seed ${seed})\n`
            : `verdict: FAIL (seed ${seed})\n`,
        );
      }
      process.exitCode = report.ok ? 0 : 1;
    });
}
