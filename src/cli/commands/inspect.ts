/**
 * `restartpoint inspect --app NAME`: what each relay's copy of the app's stream holds (fences,
 * seals, keyframes, deltas, write frames, with their stream sequences and sizes, and the
 * messages a standby would reject, with the reason), and where the relays disagree: a fence or a
 * seal on one relay but missing on another. Works on signed streams (`--key` or the config's
 * cluster key) and FEC streams (parts rebuilt from the shards of every relay read). Read in
 * inspect-read.ts, formatted in inspect-format.ts.
 */
import { Command } from 'commander';
import { UsageError } from '../../errors.js';
import { EnvelopeCodec, type ClusterKeys } from '../../protocol/envelope.js';
import {
  checkAppName,
  checkServers,
  clusterKeysFlag,
  intFlag,
  loadConfigFlag,
  repeatFlag,
} from '../flags.js';
import { DEFAULT_INSPECT_LIMIT, readInspect, type InspectTarget } from './inspect-read.js';
import { formatInspect } from './inspect-format.js';

export {
  DEFAULT_INSPECT_LIMIT,
  disagreements,
  readInspect,
  type InspectDisagreement,
  type InspectFrame,
  type InspectOptions,
  type InspectRejected,
  type InspectRelay,
  type InspectReport,
  type InspectTarget,
} from './inspect-read.js';
export { formatInspect } from './inspect-format.js';

interface InspectFlags {
  app: string;
  nats?: string;
  relay: string[];
  key?: string;
  config?: string;
  from: number;
  limit: number;
  json: boolean;
}

/** A config's `servers` (a string split by the server-list rule, or a list). */
const serverList = (v: string | string[]): string[] => (Array.isArray(v) ? v : checkServers('servers', v));

/** The relays and the cluster key the flags (and the config file) name. */
function resolveTargets(o: InspectFlags): { targets: InspectTarget[]; keys?: ClusterKeys } {
  const config = o.config ? loadConfigFlag(o.config) : undefined;
  if (config && config.app !== o.app) {
    throw new UsageError(
      `--app '${o.app}' but the config file ${o.config} is for app '${config.app}'`,
      'pass the app the config is for, or another config',
    );
  }
  let targets: InspectTarget[];
  if (o.relay.length > 0) {
    targets = o.relay.map((r) => ({ servers: checkServers('--relay', r) }));
  } else if (o.nats !== undefined) {
    targets = [{ servers: checkServers('--nats', o.nats) }];
  } else if (config) {
    const specs = (config.relays ?? [config.nats]) as { servers: string | string[]; replicas?: number }[];
    targets = specs.map(({ servers, replicas: _r, ...options }) => ({
      servers: serverList(servers),
      options,
    }));
  } else {
    targets = [{ servers: ['nats://127.0.0.1:4222'] }];
  }
  const keys = clusterKeysFlag(o.key, config);
  return { targets, keys };
}

/** The `inspect` command. */
export function inspectCommand(): Command {
  return new Command('inspect')
    .description(
      "list what each relay's copy of an app's stream holds (fences, seals, images, write frames) and where the relays disagree",
    )
    .requiredOption('--app <name>', 'app name as passed to Restartpoint.start()')
    .option('--nats <url>', 'the one relay to read when no --relay is given (default nats://127.0.0.1:4222)')
    .option(
      '--relay <url>',
      "a relay to read (repeat it, in the app's relay order; a cluster's servers joined by '|')",
      repeatFlag,
      [] as string[],
    )
    .option('--key <key>', 'cluster key of a signed stream (hex or base64, key id 0)')
    .option(
      '--config <file>',
      'sidecar config file: relays (or nats) and clusterKey / clusterKeyFile from it',
    )
    .option(
      '--from <seq>',
      'first stream sequence to read on each relay',
      intFlag('--from', 1, Number.MAX_SAFE_INTEGER),
      1,
    )
    .option(
      '--limit <n>',
      'most messages to read per relay',
      intFlag('--limit', 1, 10_000_000),
      DEFAULT_INSPECT_LIMIT,
    )
    .option('--json', 'print one JSON object (docs/cli.md)', false)
    .action(async (o: InspectFlags) => {
      checkAppName(o.app);
      const { targets, keys } = resolveTargets(o);
      const tty = process.stderr.isTTY === true;
      // Relays are read at once: one line with each relay's count.
      const progress = targets.map(() => '-');
      const r = await readInspect({
        app: o.app,
        relays: targets,
        envelope: keys ? new EnvelopeCodec({ app: o.app, keys }) : undefined,
        from: o.from,
        limit: o.limit,
        onProgress: tty
          ? (i, read, total) => {
              progress[i] = `${read}/${total}`;
              process.stderr.write(`\r\x1b[Kmessages read per relay: ${progress.join('  ')}`);
            }
          : undefined,
      });
      if (tty) process.stderr.write('\r\x1b[K');
      if (r.relays.some((x) => x.reachable) && r.relays.every((x) => x.stream === null)) {
        throw new UsageError(
          `no app '${o.app}' on ${r.relays.map((x) => x.servers).join(', ')} (stream ${r.stream} not found)`,
          'check --app, and --relay when the app uses relays',
        );
      }
      process.stdout.write(o.json ? `${JSON.stringify(r)}\n` : formatInspect(r));
      // Exit 1 when no relay could be read at all.
      if (r.relays.every((x) => !x.reachable)) process.exitCode = 1;
    });
}
