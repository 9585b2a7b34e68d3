/**
 * `npm run bench [-- --json] [-- --only PREFIX] [-- --repeat N]`
 *
 * Human output: a table per suite and the headline ratios. `--json`: one JSON object and
 * nothing else on stdout: `{ "ratios": { name: number }, "rows": [...], "repeat": N, "suites": [...] }`.
 * Ratio names are a contract (docs/bench.md): add, never rename.
 */
import { parseArgs } from 'node:util';
import { round, type BenchContext, type BenchRow, type Suite } from './harness.js';
import { imageSuite } from './image.js';
import { storeSuite } from './store.js';
import { standbyApplySuite } from './standby-apply.js';
import { fecSuite } from './fec.js';
import { relaySuite } from './relay.js';
import { sidecarSuite } from './sidecar.js';
import { bindingSuite } from './relay-binding.js';
import { historySuite } from './history.js';

const SUITES: Suite[] = [
  storeSuite,
  standbyApplySuite,
  fecSuite,
  relaySuite,
  imageSuite,
  sidecarSuite,
  bindingSuite,
  historySuite,
];

async function main(): Promise<number> {
  let args;
  try {
    args = parseArgs({
      options: {
        json: { type: 'boolean', default: false },
        only: { type: 'string' },
        repeat: { type: 'string', default: '3' },
        nats: { type: 'string', default: process.env.RESTARTPOINT_NATS ?? 'nats://127.0.0.1:4222' },
        'redis-url': { type: 'string', default: process.env.RESTARTPOINT_REDIS ?? 'redis://127.0.0.1:6379' },
        'postgres-url': {
          type: 'string',
          default: process.env.RESTARTPOINT_POSTGRES ?? 'postgres://postgres@127.0.0.1:5432/test',
        },
      },
    }).values;
  } catch (err) {
    process.stderr.write(
      `error: ${(err as Error).message}\nhint: npm run bench -- [--json] [--only PREFIX] [--repeat N]\n`,
    );
    return 2;
  }
  const repeat = Number(args.repeat);
  if (!Number.isInteger(repeat) || repeat < 1 || repeat > 50) {
    process.stderr.write(`error: --repeat must be an integer from 1 to 50, got '${args.repeat}'\n`);
    return 2;
  }
  const suites = SUITES.filter(
    (s) => !args.only || s.prefix.startsWith(args.only) || args.only.startsWith(s.prefix),
  );
  if (suites.length === 0) {
    process.stderr.write(
      `error: no suite matches --only ${args.only}\nhint: suites: ${SUITES.map((s) => s.prefix).join(', ')}\n`,
    );
    return 2;
  }
  const ctx: BenchContext = {
    nats: args.nats,
    redisUrl: args['redis-url'],
    postgresUrl: args['postgres-url'],
    repeat,
    only: args.only,
    wants: (name) => !args.only || name.startsWith(args.only) || args.only.startsWith(name),
    progress: (line) => process.stderr.write(`${line}\n`),
  };
  const ratios: Record<string, number> = {};
  const rows: (BenchRow & { suite: string })[] = [];
  const tables: string[] = [];
  for (const suite of suites) {
    ctx.progress(`bench: ${suite.prefix} — ${suite.description}`);
    const r = await suite.run(ctx);
    if (r.table) tables.push(r.table);
    for (const [k, v] of Object.entries(r.ratios)) {
      if (!args.only || k.startsWith(args.only) || args.only.startsWith(suite.prefix)) ratios[k] = round(v);
    }
    for (const row of r.rows) rows.push({ ...row, value: round(row.value), suite: suite.prefix });
  }
  if (args.json) {
    process.stdout.write(
      `${JSON.stringify({ ratios, rows, repeat, suites: suites.map((s) => s.prefix) })}\n`,
    );
    return 0;
  }
  for (const t of tables) process.stdout.write(`${t}\n\n`);
  const w = Math.max(...rows.map((r) => r.name.length), 10);
  for (const r of rows) {
    process.stdout.write(
      `${r.name.padEnd(w)}  ${String(r.value).padStart(12)} ${r.unit}${r.note ? `  (${r.note})` : ''}\n`,
    );
  }
  process.stdout.write('\nratios (median of ' + repeat + ' runs)\n');
  for (const [k, v] of Object.entries(ratios)) process.stdout.write(`  ${k.padEnd(w)}  ${v}\n`);
  return 0;
}

process.exitCode = await main();
