/**
 * The drill's driver of the sample app (examples/ledger/app.ts): one real process per node,
 * events read as JSON lines from its stdout, commands written to its stdin.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { appendFileSync, existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** Events the sample app prints that are kept in a node's history (the frequent ones are not). */
const FREQUENT = new Set(['cp-begin', 'acked', 'applied', 'log']);

/** One event of the sample app. */
export interface AppEvent {
  ev: string;
  t: number;
  [k: string]: unknown;
}

/** A number from an app event field, or 0. */
export function num(v: unknown): number {
  const n = Number(v);
  return Number.isFinite(n) ? n : 0;
}

/** The compiled sample app, found from the package root whether this runs from src/ or dist/. */
export function sampleAppPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json')) && dirname(dir) !== dir) dir = dirname(dir);
  const app = join(dir, 'dist', 'examples', 'ledger', 'app.js');
  if (!existsSync(app)) throw new Error(`sample app not built: ${app} is missing; run 'npm run build'`);
  return app;
}

/** Where a drill's node keeps its store and reaches its lease, and how it runs. */
export interface LedgerArgs {
  readonly app: string;
  readonly store: string;
  /** The node's file store directory. */
  readonly dir: string;
  /** The lease's NATS server(s), comma-separated. */
  readonly nats: string;
  readonly leaseTtlMs: number;
  readonly mode?: string;
  readonly redisUrl?: string;
  readonly postgresUrl?: string;
}

/** The sample app's arguments every drill passes a node (store, lease, mode, store URLs). */
export function ledgerArgs(o: LedgerArgs): string[] {
  return [
    '--app',
    o.app,
    '--store',
    o.store,
    '--dir',
    o.dir,
    '--nats',
    o.nats,
    '--ttl',
    String(o.leaseTtlMs),
    '--mode',
    o.mode ?? 'delay-write',
    '--redis-url',
    o.redisUrl ?? 'redis://127.0.0.1:6379',
    '--postgres-url',
    o.postgresUrl ?? 'postgres://postgres@127.0.0.1:5432/test',
  ];
}

/** A sample-app process the drill drives through JSON lines. */
export class AppProcess {
  readonly id: string;
  child: ChildProcess | undefined;
  #listeners: ((e: AppEvent) => void)[] = [];
  /** This process's events, except the frequent ones (checkpoints, acks, lag, logs). */
  history: AppEvent[] = [];
  stderr = '';

  constructor(id: string) {
    this.id = id;
  }

  /** Starts the sample app with `args`; `env` adds to (or, undefined, removes from) the environment. */
  start(args: string[], env?: Record<string, string | undefined>): void {
    const appPath = sampleAppPath();
    const child = spawn(process.execPath, [appPath, '--node', this.id, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
      ...(env ? { env: { ...process.env, ...env } } : {}),
    });
    this.child = child;
    this.stderr = '';
    this.history = [];
    // Writes to a process that died are dropped; its exit is what the drill reacts to.
    child.stdin!.on('error', () => undefined);
    const logDir = process.env.RP_DRILL_NODE_LOGS;
    const tee = (line: string): void => {
      if (logDir) appendFileSync(join(logDir, `${this.id}.log`), `${Date.now()} ${child.pid} ${line}\n`);
    };
    createInterface({ input: child.stdout! }).on('line', (line) => {
      tee(line);
      let e: AppEvent;
      try {
        e = JSON.parse(line) as AppEvent;
      } catch {
        return;
      }
      if (!FREQUENT.has(e.ev)) this.history.push(e);
      for (const l of [...this.#listeners]) l(e);
    });
    child.stderr!.on('data', (d: Buffer) => {
      tee(`STDERR ${d.toString()}`);
      this.stderr = (this.stderr + d.toString()).slice(-4000);
    });
  }

  on(fn: (e: AppEvent) => void): () => void {
    this.#listeners.push(fn);
    return () => {
      this.#listeners = this.#listeners.filter((l) => l !== fn);
    };
  }

  /**
   * Resolves with the first event matching `pred` (with `seen`, also one already in the
   * history); rejects on timeout or process exit.
   */
  waitFor(pred: (e: AppEvent) => boolean, what: string, timeoutMs = 30_000, seen = false): Promise<AppEvent> {
    const past = seen ? this.history.find(pred) : undefined;
    if (past) return Promise.resolve(past);
    return new Promise((resolve, reject) => {
      const child = this.child!;
      const done = (): void => {
        off();
        clearTimeout(timer);
        child.off('exit', onExit);
      };
      const off = this.on((e) => {
        if (e.ev === 'fatal') {
          done();
          reject(new Error(`node ${this.id} failed: ${String(e.error)}`));
        } else if (pred(e)) {
          done();
          resolve(e);
        }
      });
      const onExit = (code: number | null, sig: string | null): void => {
        done();
        reject(
          new Error(
            `node ${this.id} exited (${code ?? sig}) while waiting for ${what}: ${this.stderr.trim()}`,
          ),
        );
      };
      child.once('exit', onExit);
      const timer = setTimeout(() => {
        done();
        reject(new Error(`node ${this.id}: no ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
    });
  }

  send(cmd: object): void {
    this.child?.stdin?.write(`${JSON.stringify(cmd)}\n`);
  }

  /** Sends a signal (SIGSTOP, SIGCONT) to the running process. */
  signal(sig: NodeJS.Signals): void {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) child.kill(sig);
  }

  async kill(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
  }
}

/** Runs the sample app in `--clear` mode: it empties one node's store and exits. */
export function clearStore(id: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [sampleAppPath(), '--node', id, ...args, '--clear'], {
      stdio: 'ignore',
    });
    child.once('error', reject);
    child.once('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`clear of node ${id} exited ${code}`)),
    );
  });
}
