/**
 * Extra nats-servers on free loopback ports, for relays in the drill and the tests: a single
 * JetStream server, or a JetStream cluster of three (one relay with `replicas: 3`). Started
 * from the `nats-server` binary on PATH; each process can be SIGKILLed and started again on the
 * same port and storage, like a host that died and came back.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect as netConnect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { appNames } from '../protocol/subjects.js';
import { closeLink, ensureStream, openLink } from '../transport/connection.js';

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

/** One nats-server process. */
export class NatsServerProcess {
  readonly port: number;
  readonly url: string;
  readonly #args: string[];
  #child: ChildProcess | undefined;
  #log = '';

  constructor(port: number, args: string[]) {
    this.port = port;
    this.url = `nats://127.0.0.1:${port}`;
    this.#args = args;
  }

  /** Starts the server; resolves once it says it is ready for connections. */
  start(): Promise<void> {
    this.#log = '';
    return new Promise((resolve, reject) => {
      const child = spawn('nats-server', this.#args, { stdio: ['ignore', 'ignore', 'pipe'] });
      this.#child = child;
      const timer = setTimeout(() => {
        reject(new Error(`nats-server on port ${this.port} not ready in 20 s: ${this.#log.slice(-1500)}`));
      }, 20_000);
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(
          new Error(
            `cannot start nats-server (${err.message}): install it (Debian: apt-get install nats-server) or run scripts/ensure-services.sh`,
          ),
        );
      });
      child.stderr!.on('data', (d: Buffer) => {
        this.#log = (this.#log + d.toString()).slice(-20_000);
        if (/Server is ready/.test(this.#log)) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once('exit', (code, sig) => {
        clearTimeout(timer);
        reject(
          new Error(`nats-server on port ${this.port} exited (${code ?? sig}): ${this.#log.slice(-1500)}`),
        );
      });
    });
  }

  /** SIGKILLs the server (a host that died); resolves once the process is gone. */
  async kill(): Promise<void> {
    const c = this.#child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await gone;
  }

  /** The process id of the running server (undefined before start). */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** Sends a signal (SIGSTOP: a frozen host that keeps its sockets; SIGCONT wakes it). */
  signal(sig: NodeJS.Signals): void {
    if (this.running) this.#child!.kill(sig);
  }

  /** Whether the process runs. */
  get running(): boolean {
    return this.#child !== undefined && this.#child.exitCode === null && this.#child.signalCode === null;
  }
}

/** A relay made of one or three servers, with its storage in a temp folder. */
export class TestRelay {
  readonly servers: NatsServerProcess[];
  readonly #dir: string;

  private constructor(servers: NatsServerProcess[], dir: string) {
    this.servers = servers;
    this.#dir = dir;
  }

  /** The URLs of the relay's servers, for `relays: [{ servers }]`. */
  get urls(): string[] {
    return this.servers.map((s) => s.url);
  }

  /** Starts a single JetStream server. */
  static async single(): Promise<TestRelay> {
    const dir = await mkdtemp(join(tmpdir(), 'rp-relay-'));
    const port = await freePort();
    const s = new NatsServerProcess(port, [
      '-a',
      '127.0.0.1',
      '-p',
      String(port),
      '-js',
      '-sd',
      join(dir, 'js'),
    ]);
    await s.start();
    return new TestRelay([s], dir);
  }

  /** Starts a JetStream cluster of three servers (a relay for `replicas: 3`). */
  static async cluster(name = 'rp'): Promise<TestRelay> {
    const dir = await mkdtemp(join(tmpdir(), 'rp-cluster-'));
    const ports = [await freePort(), await freePort(), await freePort()];
    const routes = [await freePort(), await freePort(), await freePort()];
    const servers: NatsServerProcess[] = [];
    for (let i = 0; i < 3; i++) {
      const conf = join(dir, `s${i}.conf`);
      await writeFile(
        conf,
        [
          `server_name: ${name}-s${i}`,
          `listen: 127.0.0.1:${ports[i]}`,
          `jetstream { store_dir: "${join(dir, `js${i}`)}" }`,
          `cluster {`,
          `  name: ${name}`,
          `  listen: 127.0.0.1:${routes[i]}`,
          // Clients keep to the URLs they were given: a client behind a drill's proxy must not
          // learn the servers' own addresses from the cluster and reconnect around the proxy.
          `  no_advertise: true`,
          `  routes: [${routes.map((p) => `nats-route://127.0.0.1:${p}`).join(', ')}]`,
          `}`,
        ].join('\n'),
      );
      servers.push(new NatsServerProcess(ports[i]!, ['-c', conf]));
    }
    await Promise.all(servers.map((s) => s.start()));
    // "Server is ready" comes before the JetStream meta leader is elected: wait for it.
    const nc = await connect({ servers: servers.map((s) => s.url) });
    try {
      const deadline = Date.now() + 30_000;
      for (;;) {
        try {
          const jsm = await jetstreamManager(nc, { timeout: 2_000 });
          await jsm.getAccountInfo();
          // Ready means every peer is known to the meta leader: an R3 stream can be placed.
          await jsm.streams.add({ name: 'RP_READY_PROBE', subjects: ['rp-ready-probe'], num_replicas: 3 });
          await jsm.streams.delete('RP_READY_PROBE');
          break;
        } catch (err) {
          if (Date.now() > deadline)
            throw new Error(`JetStream cluster ${name} not ready in 30 s: ${(err as Error).message}`);
          await new Promise((r) => setTimeout(r, 250));
        }
      }
    } finally {
      await nc.close();
    }
    return new TestRelay(servers, dir);
  }

  /** Kills every server and removes the storage. */
  async destroy(): Promise<void> {
    await Promise.all(this.servers.map((s) => s.kill()));
    await rm(this.#dir, { recursive: true, force: true });
  }
}

/**
 * The state letter of a process from `/proc/PID/stat` (`R`, `S`, `T` = stopped, `Z`...), or
 * `'gone'` when there is no such process: evidence that a signal took effect.
 */
export function procState(pid: number | undefined): string {
  if (pid === undefined) return 'gone';
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name is in parentheses and may hold spaces: the state follows the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] ?? 'unknown';
  } catch {
    return 'gone';
  }
}

/**
 * `--nats-cluster 3`: creates the app's lease bucket (and, when `stream`, its frame stream) on a
 * cluster at R3 before any node starts, exactly as a node would create them at R1. A node then
 * finds them and checks their settings (an existing bucket or stream with more replicas than
 * asked for is accepted).
 */
export async function provisionR3(servers: readonly string[], app: string, stream: boolean): Promise<void> {
  const link = await openLink({ servers: [...servers] }, `restartpoint:drill:${app}`);
  try {
    const names = appNames(app);
    if (stream) await ensureStream(link, names, 3);
    await new Kvm(link.nc).create(names.leaseBucket, { history: 1, replicas: 3 });
  } finally {
    await closeLink(link);
  }
}

/** Whether a TCP connect to 127.0.0.1:`port` is refused: `ECONNREFUSED`, `connected`, or the error code. */
export function probeConnect(port: number, timeoutMs = 1_000): Promise<string> {
  return new Promise((resolve) => {
    const s = netConnect({ host: '127.0.0.1', port });
    const done = (what: string): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(what);
    };
    const timer = setTimeout(() => done('no answer (timeout)'), timeoutMs);
    s.once('connect', () => done('connected'));
    s.once('error', (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
  });
}

/**
 * The index in `cluster.servers` of the server that leads `stream` (its Raft leader), or
 * undefined when there is none (yet): a JetStream cluster's weakest moment is losing the leader.
 */
export async function streamLeader(cluster: TestRelay, stream: string): Promise<number | undefined> {
  const nc = await connect({ servers: cluster.urls, timeout: 3_000 });
  try {
    const jsm = await jetstreamManager(nc, { timeout: 3_000 });
    const leader = (await jsm.streams.info(stream)).cluster?.leader;
    const m = leader ? /-s(\d+)$/.exec(leader) : null;
    return m ? Number(m[1]) : undefined;
  } finally {
    await nc.close();
  }
}
