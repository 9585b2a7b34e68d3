/**
 * `restartpoint drill`: proves failover works by killing a real primary, repeatedly.
 * Human output: a progress line per kill, a table, a verdict. `--json`: one JSON object on
 * stdout and nothing else (docs/cli.md). Exit 0 only when `ok`.
 */
import { Command, Option } from 'commander';
import {
  DrillStores,
  Scenarios,
  runDrill,
  type DrillReport,
  type DrillStore,
  type Scenario,
} from '../../drill/drill.js';

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
}
import { UsageError } from '../../errors.js';
import { intFlag } from '../main.js';

function table(report: DrillReport): string {
  const head = ['kill', 'point', 'takeover ms', 'last acked', 'resumed', 'epoch', 'store', 'image'];
  const rows = report.takeovers.map((t) => [
    String(t.kill),
    t.point,
    String(t.takeoverMs),
    String(t.lastAcked),
    String(t.resumed),
    String(t.epoch),
    t.storeMatches ? 'ok' : 'MISMATCH',
    t.imageMatches ? 'ok' : 'MISMATCH',
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]): string => r.map((c, i) => c.padEnd(widths[i]!)).join('  ');
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0
    ? 0
    : s.length % 2
      ? s[(s.length - 1) / 2]!
      : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/** The `drill` command. */
export function drillCommand(): Command {
  return new Command('drill')
    .description('run the sample app as two nodes, SIGKILL the primary N times, check every takeover')
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
      new Option('--scenario <name>', "what fails: the primary ('kill'), relays, shards, or 'all' in turn")
        .choices([...Scenarios, 'all'])
        .default('kill'),
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
    .option('--json', 'print one JSON object (docs/cli.md) and nothing else on stdout', false)
    .action(async (o: DrillFlags) => {
      if (o.injectForged !== undefined && o.key === undefined) {
        throw new UsageError(
          '--inject-forged needs --key',
          'forged frames are only told apart from real ones in signed mode: add --key $(openssl rand -hex 32)',
        );
      }
      const seed = o.seed ?? Math.floor(Math.random() * 2 ** 31);
      const scenarios: Scenario[] = o.scenario === 'all' ? [...Scenarios] : [o.scenario];
      const runs: DrillReport[] = [];
      for (const scenario of scenarios) {
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
            progress: o.json ? (l) => process.stderr.write(`${l}\n`) : (l) => process.stdout.write(`${l}\n`),
          }),
        );
      }
      const report: DrillReport & { runs?: DrillReport[] } =
        runs.length === 1
          ? runs[0]!
          : {
              ...runs[0]!,
              scenario: 'all' as Scenario,
              ok: runs.every((r) => r.ok),
              kills: runs.reduce((n, r) => n + r.kills, 0),
              relaysKilled: runs.reduce((n, r) => n + r.relaysKilled, 0),
              rejected: {
                forged: runs.reduce((n, r) => n + r.rejected.forged, 0),
                corrupt: runs.reduce((n, r) => n + r.rejected.corrupt, 0),
              },
              takeovers: runs.flatMap((r) => r.takeovers.map((t) => ({ ...t, scenario: r.scenario }))),
              violations: runs.flatMap((r) => r.violations.map((v) => `${r.scenario}: ${v}`)),
              runs,
            };
      if (o.json) {
        process.stdout.write(`${JSON.stringify(report)}\n`);
      } else {
        process.stdout.write(`\n${table(report)}\n\n`);
        if (report.takeovers.length > 0) {
          process.stdout.write(`median takeover: ${median(report.takeovers.map((t) => t.takeoverMs))} ms\n`);
        }
        for (const v of report.violations) process.stdout.write(`VIOLATION: ${v}\n`);
        process.stdout.write(
          report.ok
            ? `verdict: PASS (${report.kills} kills, seed ${seed})\n`
            : `verdict: FAIL (seed ${seed})\n`,
        );
      }
      process.exitCode = report.ok ? 0 : 1;
    });
}
