/**
 * `restartpoint` command line: one file per command under commands/, the flag parsers and
 * checks they share in flags.ts (commands never import this file).
 * Usage errors print the problem and a hint on stderr and exit 2.
 */
import { Command, CommanderError } from 'commander';
import { UsageError } from '../errors.js';
import { checkResumeCommand } from './commands/check-resume.js';
import { compactCommand } from './commands/compact.js';
import { drillCommand } from './commands/drill.js';
import { inspectCommand } from './commands/inspect.js';
import { sidecarCommand } from './commands/sidecar.js';
import { statusCommand } from './commands/status.js';
import { switchoverCommand } from './commands/switchover.js';
import { verifyCommand } from './commands/verify.js';

/** Builds the program (exported for tests). */
export function buildProgram(): Command {
  const program = new Command('restartpoint')
    .description('Keep a stateful Node.js service alive when its host dies.')
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  for (const cmd of [
    drillCommand(),
    statusCommand(),
    inspectCommand(),
    switchoverCommand(),
    compactCommand(),
    sidecarCommand(),
    verifyCommand(),
    checkResumeCommand(),
  ]) {
    // addCommand does not pass settings down: usage errors must reach main() to exit 2 with a hint.
    cmd.copyInheritedSettings(program);
    program.addCommand(cmd);
  }
  return program;
}

/** Kept for callers of the old home; the commands use `./flags.js`. */
export { intFlag } from './flags.js';

/** Runs the CLI with `argv` (without node and script) and returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (
        err.code === 'commander.helpDisplayed' ||
        err.code === 'commander.version' ||
        err.code === 'commander.help'
      ) {
        return 0;
      }
      process.stderr.write("hint: run 'restartpoint --help' or 'restartpoint <command> --help'\n");
      return 2;
    }
    if (err instanceof UsageError) {
      process.stderr.write(`error: ${err.message}\n`);
      if (err.hint) process.stderr.write(`hint: ${err.hint}\n`);
      return 2;
    }
    process.stderr.write(`error: ${(err as Error).message}\n`);
    return 1;
  }
}
