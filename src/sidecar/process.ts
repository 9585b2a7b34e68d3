/**
 * The app process a sidecar supervises: started with inherited stdio when this node becomes
 * primary, stopped with SIGTERM then SIGKILL after a grace period.
 *
 * Orphans: when the sidecar itself dies (SIGKILL, OOM killer), nobody stops the app. On Linux,
 * the app is started through util-linux's `setpriv --pdeathsig SIGTERM --`, so that the kernel
 * sends it SIGTERM the moment its parent, the sidecar, dies (PR_SET_PDEATHSIG, kept across exec).
 * Without setpriv the app runs on until it next calls the API, which then refuses the
 * connection; `orphanSignal()` says which case this is, and the sidecar logs it.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import { constants } from 'node:os';
import { delimiter, isAbsolute, join, resolve } from 'node:path';

/** The signal an orphaned app gets (through setpriv). */
export const ORPHAN_SIGNAL = 'SIGTERM';

let setprivPath: string | null | undefined;

/**
 * The path of a `setpriv` that knows `--pdeathsig` (util-linux 2.33+), or null when there is
 * none (not Linux, util-linux not installed, too old). Looked up once.
 */
export function pdeathsigHelper(): string | null {
  if (setprivPath !== undefined) return setprivPath;
  setprivPath = null;
  if (process.platform !== 'linux') return setprivPath;
  const found = which('setpriv', process.env.PATH);
  if (found !== undefined) {
    const help = spawnSync(found, ['--help'], { encoding: 'utf8', timeout: 5_000 });
    if (help.status === 0 && help.stdout.includes('--pdeathsig')) setprivPath = found;
  }
  return setprivPath;
}

/** Whether a supervised app is stopped when the sidecar dies: the signal, or null. */
export function orphanSignal(): typeof ORPHAN_SIGNAL | null {
  return pdeathsigHelper() === null ? null : ORPHAN_SIGNAL;
}

function executable(path: string): boolean {
  try {
    accessSync(path, fsConstants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** `cmd` resolved as spawn would (on PATH, or relative to `cwd`), or undefined when it is not there. */
function which(cmd: string, path: string | undefined, cwd = process.cwd()): string | undefined {
  if (cmd.includes('/')) {
    const full = isAbsolute(cmd) ? cmd : resolve(cwd, cmd);
    return executable(full) ? full : undefined;
  }
  for (const dir of (path ?? '').split(delimiter)) {
    if (dir === '') continue;
    const full = join(isAbsolute(dir) ? dir : resolve(cwd, dir), cmd);
    if (executable(full)) return full;
  }
  return undefined;
}

/** How a supervised process ended. */
export interface ProcessExit {
  /** The exit code, or `null` when a signal ended it. */
  readonly code: number | null;
  /** The signal that ended it, or `null`. */
  readonly signal: NodeJS.Signals | null;
  /** The code a shell would report: `code`, or 128 + the signal number; 127 when it never started. */
  readonly status: number;
  /** Why it could not be started (`spawn` failed), when it could not. */
  readonly error?: string;
}

/** What to run. */
export interface ProcessSpec {
  /** The command and its arguments: `command[0]` is looked up on PATH. */
  readonly command: readonly string[];
  readonly cwd?: string;
  /** The full environment of the process. */
  readonly env: NodeJS.ProcessEnv;
}

/** One run of the supervised app. */
export class SupervisedProcess {
  readonly #child: ChildProcess;
  /** Resolves once the process has exited (or failed to start). Never rejects. */
  readonly exited: Promise<ProcessExit>;
  /** The signal the app gets if the sidecar dies, or null when nothing stops an orphan. */
  readonly orphanSignal: typeof ORPHAN_SIGNAL | null;
  #exit: ProcessExit | undefined;

  constructor(spec: ProcessSpec) {
    if (spec.command.length === 0) throw new Error('SupervisedProcess needs a command');
    // Through setpriv only when the command exists: a missing one must still fail to spawn
    // (status 127 with the reason), not become setpriv's own exit.
    const setpriv = pdeathsigHelper();
    const wrap = setpriv !== null && which(spec.command[0]!, spec.env.PATH, spec.cwd) !== undefined;
    const argv = wrap ? [setpriv, '--pdeathsig', ORPHAN_SIGNAL, '--', ...spec.command] : [...spec.command];
    this.orphanSignal = wrap ? ORPHAN_SIGNAL : null;
    this.#child = spawn(argv[0]!, argv.slice(1), {
      stdio: 'inherit',
      cwd: spec.cwd,
      env: spec.env,
    });
    this.exited = new Promise<ProcessExit>((resolve) => {
      const settle = (exit: ProcessExit): void => {
        if (this.#exit) return;
        this.#exit = exit;
        resolve(exit);
      };
      this.#child.once('error', (err) => {
        // A spawn failure (ENOENT, EACCES): no 'exit' follows when the process never ran.
        if (this.#child.pid === undefined) {
          settle({ code: null, signal: null, status: 127, error: err.message });
        }
      });
      this.#child.once('exit', (code, signal) => {
        const status = code ?? 128 + (signal ? (constants.signals[signal] ?? 0) : 0);
        settle({ code, signal, status });
      });
    });
  }

  /** The pid, or `undefined` when the process could not be started. */
  get pid(): number | undefined {
    return this.#child.pid;
  }

  /** Whether it is still running. */
  get running(): boolean {
    return this.#exit === undefined && this.#child.pid !== undefined;
  }

  /** How it ended, once it has. */
  get exit(): ProcessExit | undefined {
    return this.#exit;
  }

  /** SIGTERM, then SIGKILL when it is still running after `timeoutMs`. Resolves once it exited. */
  async stop(timeoutMs: number): Promise<ProcessExit> {
    if (!this.running) return this.exited;
    this.#child.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const killed = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        if (this.running) this.#child.kill('SIGKILL');
        resolve();
      }, timeoutMs);
    });
    await Promise.race([this.exited, killed]);
    clearTimeout(timer);
    return this.exited;
  }
}
