/**
 * `restartpoint status --app NAME`: leader, epoch, last sealed checkpoint, stream depth, the
 * nodes that report presence (role, checkpoint, lag) and each relay's copy of the stream, read
 * straight from NATS (no node needs to be running). Read in status-read.ts, formatted in
 * status-format.ts.
 */
import { Command } from 'commander';
import { UsageError } from '../../errors.js';
import { EnvelopeCodec, type ClusterKeys } from '../../protocol/envelope.js';
import { checkAppName, checkServers, clusterKeysFlag, loadConfigFlag, repeatFlag } from '../flags.js';
import { readStatus } from './status-read.js';
import { formatStatus } from './status-format.js';

export {
  readStatus,
  statusNodes,
  type StatusNode,
  type StatusOptions,
  type StatusRelay,
  type StatusRelayLag,
  type StatusRelayState,
  type StatusReport,
} from './status-read.js';
export { formatStatus, formatTable } from './status-format.js';

interface StatusFlags {
  app: string;
  nats: string;
  json: boolean;
  relay: string[];
  key?: string;
  config?: string;
}

/** The cluster key (`--key`, else the config's) and the config's relays, as inspect reads them. */
function keyAndRelays(o: StatusFlags): { keys?: ClusterKeys; relays: string[] } {
  const config = o.config ? loadConfigFlag(o.config) : undefined;
  if (config && config.app !== o.app) {
    throw new UsageError(
      `--app '${o.app}' but the config file ${o.config} is for app '${config.app}'`,
      'pass the app the config is for, or another config',
    );
  }
  let relays = o.relay;
  if (relays.length === 0 && config?.relays) {
    relays = (config.relays as { servers: string | string[] }[]).map((r) =>
      Array.isArray(r.servers) ? r.servers.join('|') : r.servers,
    );
  }
  const keys = clusterKeysFlag(o.key, config);
  return { keys, relays };
}

/** The `status` command. */
export function statusCommand(): Command {
  return new Command('status')
    .description(
      'show leader, epoch, last sealed checkpoint, stream depth, nodes (role, lag) and relays of an app',
    )
    .requiredOption('--app <name>', 'app name as passed to Restartpoint.start()')
    .option('--nats <url>', 'NATS server with JetStream', 'nats://127.0.0.1:4222')
    .option(
      '--relay <url>',
      "a relay to report on (repeat it; a cluster's servers joined by '|'); default: the relays the nodes report",
      repeatFlag,
      [] as string[],
    )
    .option('--key <key>', 'cluster key of a signed stream, to read its last seal (hex or base64, key id 0)')
    .option(
      '--config <file>',
      'sidecar config file: clusterKey / clusterKeyFile, and relays when no --relay is given',
    )
    .option('--json', 'print one JSON object (docs/cli.md)', false)
    .action(async (o: StatusFlags) => {
      checkAppName(o.app);
      checkServers('--nats', o.nats);
      for (const r of o.relay) checkServers('--relay', r);
      const { keys, relays } = keyAndRelays(o);
      const r = await readStatus({
        nats: o.nats,
        app: o.app,
        relays,
        envelope: keys ? new EnvelopeCodec({ app: o.app, keys }) : undefined,
      });
      process.stdout.write(o.json ? `${JSON.stringify(r)}\n` : formatStatus(r));
    });
}
