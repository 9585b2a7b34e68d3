/**
 * The app process a sidecar supervises: started with inherited stdio when this node becomes
 * primary, stopped with SIGTERM then SIGKILL after a grace period.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { constants } from 'node:os';

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
  #exit: ProcessExit | undefined;

  constructor(spec: ProcessSpec) {
    if (spec.command.length === 0) throw new Error('SupervisedProcess needs a command');
    this.#child = spawn(spec.command[0]!, spec.command.slice(1), {
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
