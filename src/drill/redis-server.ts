/**
 * A private redis-server on a free loopback port, for the store-loss drill and tests: it can be
 * flushed, SIGKILLed and started again empty (no persistence) without touching any other Redis
 * data on the machine. Started from the `redis-server` binary on PATH.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { freePort } from './nats-servers.js';

/** One redis-server process without persistence (a restart comes back empty). */
export class RedisServerProcess {
  readonly port: number;
  readonly url: string;
  #child: ChildProcess | undefined;
  #log = '';

  private constructor(port: number) {
    this.port = port;
    this.url = `redis://127.0.0.1:${port}`;
  }

  /** Starts a server on a free port. */
  static async start(): Promise<RedisServerProcess> {
    const s = new RedisServerProcess(await freePort());
    await s.start();
    return s;
  }

  /** Starts (again, empty) on the same port; resolves once it accepts connections. */
  start(): Promise<void> {
    this.#log = '';
    return new Promise((resolve, reject) => {
      const child = spawn(
        'redis-server',
        [
          '--port',
          String(this.port),
          '--bind',
          '127.0.0.1',
          '--save',
          '',
          '--appendonly',
          'no',
          '--dir',
          '/tmp',
          '--dbfilename',
          `rp-drill-${this.port}.rdb`,
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      this.#child = child;
      const timer = setTimeout(
        () =>
          reject(new Error(`redis-server on port ${this.port} not ready in 20 s: ${this.#log.slice(-1500)}`)),
        20_000,
      );
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(
          new Error(
            `cannot start redis-server (${err.message}): install it (Debian: apt-get install redis-server)`,
          ),
        );
      });
      const onData = (d: Buffer): void => {
        this.#log = (this.#log + d.toString()).slice(-20_000);
        if (/Ready to accept connections/.test(this.#log)) {
          clearTimeout(timer);
          resolve();
        }
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', onData);
      child.once('exit', (code, sig) => {
        clearTimeout(timer);
        reject(
          new Error(`redis-server on port ${this.port} exited (${code ?? sig}): ${this.#log.slice(-1500)}`),
        );
      });
    });
  }

  /** SIGKILLs the server; resolves once the process is gone. */
  async kill(): Promise<void> {
    const c = this.#child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await gone;
  }

  /** SIGKILLs it and starts it again, empty, on the same port. */
  async restartEmpty(): Promise<void> {
    await this.kill();
    await this.start();
  }
}
