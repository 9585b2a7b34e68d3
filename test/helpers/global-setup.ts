import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * Builds dist/ once before the suite: integration tests run real child processes from the
 * compiled JavaScript (the same files `restartpoint` ships), never from a loader hook.
 */
export default function setup(): void {
  const root = fileURLToPath(new URL('../..', import.meta.url));
  execFileSync(process.execPath, [`${root}/node_modules/typescript/bin/tsc`, '-p', `${root}/tsconfig.json`], {
    stdio: 'inherit',
    cwd: root,
  });
}
