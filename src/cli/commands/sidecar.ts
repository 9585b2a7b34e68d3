/**
 * `restartpoint sidecar --config FILE [-- <app command…>]`: the standby role in its own process,
 * supervising an app, with a local HTTP API for it (docs/sidecar.md). Exits with the app's exit
 * status, 0 after SIGTERM/SIGINT, 2 for a bad config, 1 when it cannot run.
 */
import { Command } from 'commander';
import type { SidecarConfig } from '../../config/load.js';
import { Sidecar } from '../../sidecar/sidecar.js';
import { loadConfigFlag } from '../flags.js';

interface SidecarFlags {
  config: string;
  check: boolean;
}

/** The `sidecar` command. */
export function sidecarCommand(): Command {
  return new Command('sidecar')
    .description('run a standby in its own process; when it becomes primary, start the app and serve its API')
    .requiredOption('--config <file>', 'the config file, YAML or JSON (docs/config.md)')
    .option('--check', 'validate the config, print it (secrets masked) and exit', false)
    .argument(
      '[command...]',
      'the app to supervise, after --: restartpoint sidecar --config f.yaml -- python3 app.py',
    )
    .action(async (command: string[], o: SidecarFlags) => {
      const config = loadConfigFlag(o.config);
      if (o.check) {
        process.stdout.write(`${JSON.stringify(masked(config), null, 2)}\n`);
        return;
      }
      const sidecar = new Sidecar({ config, command });
      let signals = 0;
      const onSignal = (sig: NodeJS.Signals): void => {
        // The first signal stops cleanly (app stopped, lease released); a second one does not wait.
        if (++signals > 1) {
          process.stderr.write(`restartpoint sidecar: second ${sig}, exiting without waiting\n`);
          process.exit(1);
        }
        sidecar.stop();
      };
      process.on('SIGTERM', onSignal);
      process.on('SIGINT', onSignal);
      let code: number;
      try {
        code = await sidecar.run();
      } catch (err) {
        process.stderr.write(`error: ${(err as Error).message}\n`);
        code = 1;
      }
      // The NATS client and timers of a standby that never took over keep the loop alive: the
      // sidecar's work is done, so the process ends here with the status it owes.
      process.exit(code);
    });
}

function masked(c: SidecarConfig): unknown {
  return JSON.parse(
    JSON.stringify(c, (k, v: unknown) =>
      ['token', 'pass', 'clusterKey', 'key'].includes(k) && v !== undefined ? '<secret>' : v,
    ),
  );
}
