/**
 * `restartpoint status --app NAME`: leader, epoch, last sealed checkpoint, stream depth, the
 * nodes that report presence (role, checkpoint, lag) and each relay's copy of the stream, read
 * straight from NATS (no node needs to be running). Read in status-read.ts, formatted in
 * status-format.ts.
 */
import { Command } from 'commander';
import { checkAppName, checkServers, repeatFlag } from '../flags.js';
import { readStatus } from './status-read.js';
import { formatStatus } from './status-format.js';

export {
  readStatus,
  statusNodes,
  type StatusNode,
  type StatusOptions,
  type StatusRelay,
  type StatusRelayLag,
  type StatusReport,
} from './status-read.js';
export { formatStatus, formatTable } from './status-format.js';

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
    .option('--json', 'print one JSON object (docs/cli.md)', false)
    .action(async (o: { app: string; nats: string; json: boolean; relay: string[] }) => {
      checkAppName(o.app);
      checkServers('--nats', o.nats);
      for (const r of o.relay) checkServers('--relay', r);
      const r = await readStatus({ nats: o.nats, app: o.app, relays: o.relay });
      process.stdout.write(o.json ? `${JSON.stringify(r)}\n` : formatStatus(r));
    });
}
