import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * Builds dist/ once before the suite: integration tests run real child processes from the
 * compiled JavaScript (the same files `restartpoint` ships), never from a loader hook.
 */
export default function setup(): void {
  // For a developer who just built: RESTARTPOINT_TEST_NO_BUILD=1 skips the (slow) compile.
  if (process.env.RESTARTPOINT_TEST_NO_BUILD === '1') return;
  const root = fileURLToPath(new URL('../..', import.meta.url));
  execFileSync(process.execPath, [`${root}/node_modules/typescript/bin/tsc`, '-p', `${root}/tsconfig.json`], {
    stdio: 'inherit',
    cwd: root,
  });
}
