/**
 * The sidecar: the standby role in its own process, beside an app that need not be written in
 * JS (docs/sidecar.md).
 *
 * ```text
 * load config ─► API on 127.0.0.1 (token file, port file) ─► Restartpoint.start() as a standby
 *   ┌──────────────────────────────────────────────────────────────┘ resolves: primary
 *   │ spawn the app (RESTARTPOINT_SIDECAR_URL, RESTARTPOINT_TOKEN_FILE, …); the app reads
 *   │ GET /state, writes PUT /store/{key}, declares POST /checkpoint
 *   ├─ app exits ────► rp.close() (lease released: the standby takes over at once), exit with
 *   │                  its status; restart 'on-failure': rejoin as a standby instead
 *   ├─ demoted ──────► stop the app (SIGTERM, SIGKILL after stopTimeoutMs), close, standby again
 *   └─ SIGTERM/INT ──► stop the app, rp.close(), exit 0
 * ```
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { ConfigError, FencedError, RestartpointError } from '../errors.js';
import { createLogger, pinoLog } from '../observability/logger.js';
import { RestartpointMetrics } from '../observability/metrics.js';
import { Restartpoint } from '../sdk/restartpoint.js';
import type { StorageAdapter } from '../storage/adapter.js';
import { toStartOptions, type SidecarConfig } from '../config/load.js';
import { appNames } from '../protocol/subjects.js';
import { closeLink, openLeaseBucket, openLink } from '../transport/connection.js';
import { refuseLiveNodeId } from '../transport/node-id.js';
import { SidecarApi, type MetricsSource, type SidecarRole } from './api.js';
import { SupervisedProcess, type ProcessExit } from './process.js';
import { createStorage } from './storage.js';
import { claimTokenFile } from './token-owner.js';

/** Options of `Sidecar`. */
export interface SidecarOptions {
  /** The validated config (`loadConfig`). */
  readonly config: SidecarConfig;
  /** The app command (after `--`); empty: serve the API only. */
  readonly command?: readonly string[];
  /** Makes the store of each standby round. Default: from `config.storage`. */
  readonly storage?: () => Promise<StorageAdapter> | StorageAdapter;
  /** The logger. Default: JSON lines on stderr at `config.log.level`. */
  readonly logger?: Logger;
}

/** The `GET /status` body (docs/sidecar.md). */
export interface SidecarStatus {
  app: string;
  nodeId: string;
  state: SidecarRole;
  /** When this state began (ISO 8601). */
  since: string;
  epoch: number | null;
  resumedFrom: { epoch: number; checkpoint: number } | null;
  lastCheckpoint: Record<string, unknown> | null;
  takeover: Record<string, unknown> | null;
  process: {
    command: string[];
    pid: number | null;
    running: boolean;
    restarts: number;
    lastExit: { code: number | null; signal: string | null; status: number } | null;
  } | null;
  api: { port: number };
}

type Outcome = { kind: 'exit'; exit: ProcessExit } | { kind: 'demoted'; err: FencedError } | { kind: 'stop' };

/** A running sidecar. `run()` resolves with the process exit status. */
export class Sidecar {
  readonly #config: SidecarConfig;
  readonly #command: readonly string[];
  readonly #storage: () => Promise<StorageAdapter> | StorageAdapter;
  readonly #logger: Logger;
  readonly #metrics: RestartpointMetrics | undefined;
  #api: SidecarApi | undefined;
  #role: SidecarRole = 'standby';
  #since = new Date();
  #rp: Restartpoint<unknown> | undefined;
  #fenced: FencedError | undefined;
  #proc: SupervisedProcess | undefined;
  #lastExit: ProcessExit | undefined;
  #restarts = 0;
  #startProblem: string | undefined;
  #nodeIdChecked = false;
  #warnedOrphans = false;
  #stopRequested = false;
  #wake: ((o: Outcome) => void) | undefined;
  /** Resolves when `stop()` is called. */
  readonly #stopped: Promise<undefined>;
  #resolveStopped!: () => void;

  constructor(o: SidecarOptions) {
    this.#config = o.config;
    this.#command = o.command ?? [];
    this.#storage = o.storage ?? (() => createStorage(o.config.storage));
    this.#logger = o.logger ?? createLogger({ name: 'restartpoint-sidecar', level: o.config.log.level });
    this.#stopped = new Promise((resolve) => {
      this.#resolveStopped = () => resolve(undefined);
    });
    this.#metrics = o.config.metrics.enabled
      ? new RestartpointMetrics({ labels: { app: o.config.app, node: o.config.nodeId } })
      : undefined;
  }

  /** The API's port (after `run()` started it). */
  get port(): number {
    return this.#api?.port ?? 0;
  }

  /** The current role. */
  get role(): SidecarRole {
    return this.#role;
  }

  /** Asks the sidecar to stop: the app is stopped, the instance closed, `run()` resolves 0. */
  stop(): void {
    if (this.#stopRequested) return;
    this.#stopRequested = true;
    this.#logger.info({ role: this.#role }, 'stop requested');
    this.#wake?.({ kind: 'stop' });
    this.#resolveStopped();
  }

  /**
   * Runs until the app exits (resolves with its status), or until `stop()` (resolves 0). Rejects
   * only when the API cannot start; a takeover that fails for good resolves 1 after logging why.
   */
  async run(): Promise<number> {
    const c = this.#config;
    // Never run under a live node's id; never replace the token file of another sidecar that runs.
    try {
      await this.#checkNodeId();
    } catch (err) {
      if (err instanceof ConfigError) throw err;
      // NATS not reachable yet: the standby loop checks before its first start.
      this.#logger.warn({ error: (err as Error).message }, 'node id not checked yet: NATS unreachable');
    }
    const releaseTokenFile = await claimTokenFile(c.api.tokenFile);
    const token = c.api.token ?? randomBytes(32).toString('hex');
    await writePrivate(c.api.tokenFile, `${token}\n`);
    const metrics: MetricsSource | undefined = this.#metrics && {
      contentType: this.#metrics.registry.contentType,
      text: () => this.#metrics!.registry.metrics(),
    };
    this.#api = new SidecarApi({
      host: {
        role: () => this.#role,
        instance: () => this.#rp,
        fenced: () => this.#fenced,
        status: () => this.status(),
        health: () => this.#health(),
      },
      token,
      port: c.api.port,
      maxBodyBytes: c.api.maxBodyBytes,
      ...(c.api.socket ? { socket: c.api.socket } : {}),
      metrics,
      onError: (err, route) =>
        this.#logger.error({ route, error: (err as Error)?.stack ?? String(err) }, 'api error'),
    });
    const port = await this.#api.listen();
    if (c.api.portFile) await writePrivate(c.api.portFile, `${port}\n`);
    this.#logger.info(
      {
        port,
        url: `http://127.0.0.1:${port}`,
        tokenFile: c.api.tokenFile,
        portFile: c.api.portFile,
        ...(c.api.socket ? { socket: c.api.socket } : {}),
      },
      'api listening',
    );
    try {
      return await this.#loop();
    } finally {
      this.#setRole('stopping');
      await this.#api.close();
      await rm(c.api.tokenFile, { force: true }).catch(() => undefined);
      if (c.api.portFile) await rm(c.api.portFile, { force: true }).catch(() => undefined);
      if (c.api.socket) await rm(c.api.socket, { force: true }).catch(() => undefined);
      await releaseTokenFile();
    }
  }

  /**
   * Refuses to run under the id of a live node (`reuseNodeId: true` skips this): `ConfigError`
   * naming the other process. Checked once per sidecar; NATS errors are thrown as they come.
   */
  async #checkNodeId(): Promise<void> {
    if (this.#nodeIdChecked) return;
    const c = this.#config;
    if (c.reuseNodeId) {
      this.#nodeIdChecked = true;
      return;
    }
    const link = await openLink(toStartOptions(c).nats, `restartpoint:${c.app}:${c.nodeId}:id-check`);
    try {
      const kv = await openLeaseBucket(link, appNames(c.app));
      await refuseLiveNodeId(kv, c.app, c.nodeId, {
        override: 'reuseNodeId: true in the config (or RESTARTPOINT_REUSE_NODE_ID=true)',
      });
      this.#nodeIdChecked = true;
    } finally {
      await closeLink(link);
    }
  }

  /** The `GET /status` body. */
  status(): SidecarStatus {
    const rp = this.#rp;
    const proc = this.#proc;
    const exit = proc?.exit ?? this.#lastExit;
    return {
      app: this.#config.app,
      nodeId: this.#config.nodeId,
      state: this.#role,
      since: this.#since.toISOString(),
      epoch: rp?.epoch ?? null,
      resumedFrom: rp?.resumedFrom ? { ...rp.resumedFrom } : null,
      lastCheckpoint: rp?.lastCheckpoint ? { ...rp.lastCheckpoint } : null,
      takeover: rp ? { ...rp.takeover } : null,
      process:
        this.#command.length === 0
          ? null
          : {
              command: [...this.#command],
              pid: proc?.running ? (proc.pid ?? null) : null,
              running: proc?.running ?? false,
              restarts: this.#restarts,
              lastExit: exit ? { code: exit.code, signal: exit.signal, status: exit.status } : null,
            },
      api: { port: this.port },
    };
  }

  #health(): { ok: boolean; reason?: string } {
    switch (this.#role) {
      case 'stopping':
        return { ok: false, reason: 'the sidecar is stopping' };
      case 'standby':
        return this.#startProblem
          ? { ok: false, reason: `cannot run as a standby: ${this.#startProblem}` }
          : { ok: true };
      case 'primary':
        if (this.#fenced) return { ok: false, reason: 'demoted: rejoining as a standby' };
        if (this.#command.length > 0 && !this.#proc?.running) {
          return { ok: false, reason: 'the app is not running' };
        }
        return { ok: true };
    }
  }

  #setRole(role: SidecarRole): void {
    if (this.#role !== role) this.#since = new Date();
    this.#role = role;
  }

  async #loop(): Promise<number> {
    const c = this.#config;
    const log = pinoLog(this.#logger);
    let backoffMs = 500;
    for (;;) {
      if (this.#stopRequested) return 0;
      this.#setRole('standby');
      this.#fenced = undefined;
      let rp: Restartpoint<unknown>;
      let storage: StorageAdapter | undefined;
      try {
        await this.#checkNodeId();
        storage = await this.#storage();
        const abort = new AbortController();
        const started = Restartpoint.start<unknown>({
          ...toStartOptions(c),
          storage,
          log,
          signal: abort.signal,
          ...(this.#metrics ? { observer: this.#metrics.observer } : {}),
        });
        const won = await Promise.race([started, this.#stopped]);
        if (won === undefined) {
          // Stopped while a standby: the start is aborted; a lease it had just claimed is released.
          abort.abort();
          await started.then((late) => late.close()).catch(() => undefined);
          return 0;
        }
        rp = won;
        this.#startProblem = undefined;
        backoffMs = 500;
      } catch (err) {
        // A failed start leaves the store to its owner: close it before the next round opens another.
        await storage?.close().catch(() => undefined);
        const retryable = err instanceof RestartpointError && err.retryable;
        this.#startProblem = (err as Error).message;
        this.#logger.error(
          { code: (err as { code?: unknown }).code, error: (err as Error).message, retryable },
          retryable ? 'cannot start as a standby yet, retrying' : 'cannot start: giving up',
        );
        if (!retryable) return 1;
        await this.#sleepUnlessStopped(backoffMs);
        backoffMs = Math.min(10_000, backoffMs * 2);
        continue;
      }
      const outcome = await this.#servePrimary(rp);
      if (outcome !== undefined) return outcome;
    }
  }

  /** One term as primary. Resolves with the exit status, or `undefined` to rejoin as a standby. */
  async #servePrimary(rp: Restartpoint<unknown>): Promise<number | undefined> {
    const c = this.#config;
    this.#rp = rp;
    this.#setRole('primary');
    const next = new Promise<Outcome>((resolve) => {
      this.#wake = resolve;
    });
    rp.once('demoted', (err) => this.#wake?.({ kind: 'demoted', err }));
    if (this.#stopRequested) this.#wake?.({ kind: 'stop' });
    this.#logger.info(
      { epoch: rp.epoch, resumedFrom: rp.resumedFrom?.checkpoint ?? 0, takeover: rp.takeover },
      'sidecar primary',
    );
    if (this.#command.length > 0 && !this.#stopRequested) {
      const proc = new SupervisedProcess({
        command: this.#command,
        cwd: c.process.cwd,
        env: {
          ...process.env,
          ...c.process.env,
          RESTARTPOINT_SIDECAR_URL: `http://127.0.0.1:${this.port}`,
          RESTARTPOINT_TOKEN_FILE: c.api.tokenFile,
          RESTARTPOINT_APP: c.app,
          RESTARTPOINT_NODE_ID: c.nodeId,
          RESTARTPOINT_EPOCH: String(rp.epoch),
          RESTARTPOINT_RESUMED_FROM: String(rp.resumedFrom?.checkpoint ?? 0),
        },
      });
      this.#proc = proc;
      this.#logger.info(
        { appPid: proc.pid, command: this.#command, orphanSignal: proc.orphanSignal },
        'app started',
      );
      if (proc.orphanSignal === null && !this.#warnedOrphans) {
        this.#warnedOrphans = true;
        this.#logger.warn(
          { platform: process.platform },
          "no 'setpriv --pdeathsig' here (util-linux on Linux): if this sidecar is killed, its app keeps running until its next API call fails; install util-linux, or stop the app with the sidecar (same process group, systemd KillMode=control-group)",
        );
      }
      void proc.exited.then((exit) => this.#wake?.({ kind: 'exit', exit }));
    }
    const outcome = await next;
    this.#wake = undefined;
    const proc = this.#proc;
    try {
      switch (outcome.kind) {
        case 'exit': {
          const { exit } = outcome;
          this.#lastExit = exit;
          this.#logExit(exit, 'the app exited by itself');
          const restart =
            c.process.restart === 'on-failure' && exit.status !== 0 && this.#restarts < c.process.maxRestarts;
          if (restart) {
            this.#restarts++;
            this.#logger.warn(
              { restarts: this.#restarts, maxRestarts: c.process.maxRestarts },
              'restart on-failure: releasing the lease and rejoining as a standby',
            );
            await this.#close(rp);
            return undefined;
          }
          this.#setRole('stopping');
          await this.#close(rp);
          return exit.status;
        }
        case 'demoted': {
          this.#fenced = outcome.err;
          this.#logger.warn(
            { error: outcome.err.message },
            'demoted: stopping the app, rejoining as a standby',
          );
          if (proc)
            this.#lastExit = this.#logExit(
              await proc.stop(c.process.stopTimeoutMs),
              outcome.err.message.startsWith('switchover:') ? 'switchover' : 'demoted',
            );
          await this.#close(rp);
          return undefined;
        }
        case 'stop': {
          this.#setRole('stopping');
          if (proc)
            this.#lastExit = this.#logExit(await proc.stop(c.process.stopTimeoutMs), 'stop requested');
          await this.#close(rp);
          return 0;
        }
      }
    } finally {
      this.#proc = undefined;
      this.#rp = undefined;
    }
  }

  /**
   * Logs how the app ended, every time: on its own, or stopped by the sidecar (`why`: demoted, a
   * switchover, stop requested). An exit the sidecar asked for is info; otherwise non-zero warns.
   */
  #logExit(exit: ProcessExit, why: string): ProcessExit {
    const asked = why !== 'the app exited by itself';
    this.#logger[exit.status === 0 || asked ? 'info' : 'warn'](
      {
        code: exit.code,
        signal: exit.signal,
        status: exit.status,
        error: exit.error,
        cause: why,
        ...(asked && exit.signal === 'SIGKILL' ? { killedAfterMs: this.#config.process.stopTimeoutMs } : {}),
      },
      exit.error ? 'app could not be started' : 'app exited',
    );
    return exit;
  }

  async #close(rp: Restartpoint<unknown>): Promise<void> {
    try {
      await rp.close();
    } catch (err) {
      this.#logger.error({ error: (err as Error).message }, 'closing the instance failed');
    }
  }

  async #sleepUnlessStopped(ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([new Promise((resolve) => (timer = setTimeout(resolve, ms))), this.#stopped]);
    clearTimeout(timer);
  }
}

/**
 * Writes `text` to `path` readable by this user only (0600): any old file (or a planted
 * symlink) is removed first, the new one is created exclusively, then written whole by rename.
 */
export async function writePrivate(path: string, text: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  await rm(tmp, { force: true });
  await writeFile(tmp, text, { mode: 0o600, flag: 'wx' });
  await chmod(tmp, 0o600);
  await rename(tmp, path);
}
