/**
 * The drill for any app, through `restartpoint sidecar`: `restartpoint drill --config FILE --
 * <app command…>` runs two sidecars (nodes `a` and `b`), each supervising its own copy of the
 * app, SIGKILLs the primary's whole process group (sidecar and app: the host dies), and checks
 * every takeover through the sidecars' HTTP API and the app's own report:
 *
 * - acknowledged checkpoints: the primary's `GET /status` (`lastCheckpoint`), polled every 25 ms;
 *   the new primary must resume from the last one seen or a later one (`resumedFrom`);
 * - fencing: the new epoch is above every earlier one;
 * - serving: the new primary's app acknowledges a checkpoint after the resumed one;
 * - the verification hook: if the resumed app prints a JSON line with `mirrorDigest` and
 *   `storeDigest` (what its state says the store holds, and what the store holds, read back
 *   through the API), they must be equal: store and image agree (docs/drill.md).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { deleteAppAt } from '../transport/inspect.js';
import { drillMedians, emptyTimeline, mulberry, type DrillReport, type TakeoverReport } from './types.js';

/** Options of a drill through sidecars. */
export interface SidecarDrillOptions {
  /** The sidecar config file (docs/config.md). */
  config: string;
  /** Its storage kind, from the config (to give each node its own store). */
  storageKind: string;
  /** The NATS server of the config, for the clean-up. */
  nats: string;
  /** The lease TTL and standby mode of the config. */
  leaseTtlMs: number;
  mode: string;
  /** The app command each sidecar supervises. */
  command: string[];
  kills: number;
  seed: number;
  keep?: boolean;
  progress?: (line: string) => void;
  onTakeover?: (t: TakeoverReport) => void;
}

/** The `GET /status` fields the drill reads. */
interface Status {
  state: string;
  epoch: number | null;
  resumedFrom: { epoch: number; checkpoint: number } | null;
  lastCheckpoint: { checkpoint: number } | null;
  takeover: Record<string, number> | null;
}

/** The CLI's entry point, found from the package root. */
function binPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json')) && dirname(dir) !== dir) dir = dirname(dir);
  return join(dir, 'bin', 'restartpoint.js');
}

/** One node: a sidecar process (its own process group) and the app it supervises. */
class SidecarNode {
  readonly id: string;
  readonly token = randomBytes(24).toString('hex');
  child: ChildProcess | undefined;
  port = 0;
  /** Sidecar log lines (`msg`) and app JSON lines (`ev`), with when they were read. */
  lines: { at: number; e: Record<string, unknown> }[] = [];
  #waiters: (() => void)[] = [];
  output = '';

  constructor(id: string) {
    this.id = id;
  }

  start(o: SidecarDrillOptions, env: NodeJS.ProcessEnv): void {
    this.lines = [];
    this.port = 0;
    const child = spawn(process.execPath, [binPath(), 'sidecar', '--config', o.config, '--', ...o.command], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
      // Its own process group: the drill kills the sidecar and the app together, as a host dies.
      detached: true,
    });
    this.child = child;
    const read = (line: string): void => {
      this.output = `${this.output}${line}\n`.slice(-4000);
      let e: Record<string, unknown>;
      try {
        e = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      if (e.msg === 'api listening' && typeof e.port === 'number') this.port = e.port;
      this.lines.push({ at: Date.now(), e });
      for (const w of this.#waiters.splice(0)) w();
    };
    createInterface({ input: child.stdout! }).on('line', read);
    createInterface({ input: child.stderr! }).on('line', read);
    child.once('exit', () => {
      for (const w of this.#waiters.splice(0)) w();
    });
  }

  get running(): boolean {
    const c = this.child;
    return c !== undefined && c.exitCode === null && c.signalCode === null;
  }

  /** The first line (from index `from`) matching `pred`, waiting up to `timeoutMs`. */
  async line(
    pred: (e: Record<string, unknown>) => boolean,
    what: string,
    timeoutMs: number,
    from = 0,
  ): Promise<{ at: number; e: Record<string, unknown> }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines.slice(from).find((l) => pred(l.e));
      if (hit) return hit;
      if (!this.running)
        throw new Error(`sidecar ${this.id} exited while waiting for ${what}: ${this.output.trim()}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`sidecar ${this.id}: no ${what} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  async status(): Promise<Status> {
    const res = await fetch(`http://127.0.0.1:${this.port}/status`, {
      headers: { authorization: `Bearer ${this.token}` },
      signal: AbortSignal.timeout(2_000),
    });
    if (!res.ok) throw new Error(`sidecar ${this.id}: GET /status answered ${res.status}`);
    return (await res.json()) as Status;
  }

  /** Polls `GET /status` every 25 ms until `pred` holds. */
  async until(pred: (s: Status) => boolean, what: string, timeoutMs: number): Promise<Status> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = await this.status().catch(() => undefined);
      if (s && pred(s)) return s;
      if (!this.running) throw new Error(`sidecar ${this.id} exited while waiting for ${what}`);
      if (Date.now() > deadline) throw new Error(`sidecar ${this.id}: no ${what} within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  /** SIGKILL of the whole process group: the sidecar and its app. */
  async killGroup(): Promise<void> {
    const c = this.child;
    if (!c || !this.running) return;
    const gone = new Promise((r) => c.once('exit', r));
    try {
      process.kill(-c.pid!, 'SIGKILL');
    } catch {
      c.kill('SIGKILL');
    }
    await gone;
  }
}

/** Runs the drill through two sidecars. Never throws for a violation: see `violations`. */
export async function runSidecarDrill(o: SidecarDrillOptions): Promise<DrillReport> {
  const say = o.progress ?? (() => undefined);
  const rand = mulberry(o.seed);
  const app = `drill-${randomBytes(4).toString('hex')}`;
  const startedAt = Date.now();
  const dir = await mkdtemp(join(tmpdir(), 'restartpoint-sidecar-drill-'));
  const nodes = { a: new SidecarNode('a'), b: new SidecarNode('b') };
  const timeline = emptyTimeline(startedAt);
  const report: DrillReport = {
    ok: false,
    kills: o.kills,
    seed: o.seed,
    store: o.storageKind,
    mode: o.mode,
    scenario: 'kill',
    relaysKilled: 0,
    takeovers: [],
    rejected: { forged: 0, corrupt: 0 },
    violations: [],
    leaseTtlMs: o.leaseTtlMs,
    stateMb: 0,
    stepMs: 0,
    medians: drillMedians([]),
    durationMs: 0,
    timeline,
  };
  const env = (n: SidecarNode): NodeJS.ProcessEnv => ({
    ...process.env,
    RESTARTPOINT_APP: app,
    RESTARTPOINT_NODE_ID: n.id,
    RESTARTPOINT_DATA_DIR: join(dir, n.id),
    RESTARTPOINT_API_TOKEN: n.token,
    RESTARTPOINT_API_PORT: '0',
    // Each node its own store, as two hosts would have.
    ...(o.storageKind === 'file' ? { RESTARTPOINT_STORAGE_DIR: join(dir, n.id, 'store') } : {}),
    ...(o.storageKind === 'redis' ? { RESTARTPOINT_STORAGE_PREFIX: `rp:${app}:${n.id}` } : {}),
    ...(o.storageKind === 'postgres'
      ? { RESTARTPOINT_STORAGE_TABLE: `rp_${app.replace(/-/g, '_')}_${n.id}` }
      : {}),
  });
  const timeout = 30_000 + 5 * o.leaseTtlMs;
  const ready = async (n: SidecarNode, role: 'primary' | 'standby'): Promise<Status> => {
    await n.line((e) => e.msg === 'api listening', 'api listening', timeout);
    return n.until((s) => s.state === role, `state ${role}`, timeout);
  };
  try {
    say(`drill: app ${app} through sidecars (${o.command.join(' ')}), seed ${o.seed}, ${o.kills} kill(s)`);
    nodes.a.start(o, env(nodes.a));
    let lastEpoch = (await ready(nodes.a, 'primary')).epoch ?? 0;
    nodes.b.start(o, env(nodes.b));
    await ready(nodes.b, 'standby');
    let primary = nodes.a;
    let standby = nodes.b;
    for (let kill = 1; kill <= o.kills; kill++) {
      // A few acknowledged checkpoints of this primary's app, then the host dies.
      const base = (await primary.status()).lastCheckpoint?.checkpoint ?? 0;
      const n = 3 + Math.floor(rand() * 10);
      let acked = base;
      await primary.until(
        (s) => {
          const c = s.lastCheckpoint?.checkpoint ?? 0;
          if (c > acked) timeline.acks.push({ t: Date.now(), checkpoint: c, node: primary.id });
          acked = Math.max(acked, c);
          return c >= base + n;
        },
        `${n} acknowledged checkpoints`,
        timeout,
      );
      const from = standby.lines.length;
      const tKill = Date.now();
      timeline.faults.push({ t: tKill, kill, kind: 'kill', node: primary.id });
      await primary.killGroup();
      const took = await standby.until((s) => s.state === 'primary', 'takeover', timeout);
      const tookAt = Date.now();
      const resumed = took.resumedFrom?.checkpoint ?? 0;
      const serving = await standby.until(
        (s) => (s.lastCheckpoint?.checkpoint ?? 0) > resumed,
        'a checkpoint of the resumed app',
        timeout,
      );
      const servingAt = Date.now();
      const epoch = took.epoch ?? 0;
      // The verification hook: the resumed app's own report of store and image.
      const verify = await standby
        .line(
          (e) => typeof e.mirrorDigest === 'string' && typeof e.storeDigest === 'string',
          'verification line',
          2_000,
          from,
        )
        .catch(() => undefined);
      const tk = took.takeover ?? {};
      const r = (k: string): number => Math.round(Number(tk[k] ?? 0));
      const agree = verify ? verify.e.mirrorDigest === verify.e.storeDigest : undefined;
      const t: TakeoverReport = {
        kill,
        point: 'after-checkpoint',
        killed: primary.id,
        newPrimary: standby.id,
        takeoverMs: tookAt - tKill,
        lastAcked: acked,
        resumed,
        epoch,
        storeMatches: agree ?? true,
        imageMatches: agree ?? true,
        detectMs: r('detectMs'),
        catchUpMs: r('catchUpMs'),
        fenceMs: r('fenceMs'),
        rollbackMs: r('rollbackMs'),
        restoreMs: r('restoreMs'),
        resumeMs: servingAt - tookAt,
        killToServingMs: servingAt - tKill,
        checkpointsLost: Math.max(0, acked - resumed),
        writesDiscarded: 0,
        verified: agree ?? null,
      };
      timeline.takeovers.push({ t: tookAt, servingAt, kill, node: standby.id });
      timeline.acks.push({ t: servingAt, checkpoint: serving.lastCheckpoint!.checkpoint, node: standby.id });
      if (resumed < acked)
        report.violations.push(
          `kill ${kill}: resumed checkpoint ${resumed} is older than the last acknowledged ${acked}`,
        );
      if (!(epoch > lastEpoch))
        report.violations.push(`kill ${kill}: epoch ${epoch} is not above ${lastEpoch}`);
      if (agree === false)
        report.violations.push(
          `kill ${kill}: the resumed app reports that its store and image disagree (mirrorDigest ${String(verify!.e.mirrorDigest)}, storeDigest ${String(verify!.e.storeDigest)})`,
        );
      lastEpoch = epoch;
      report.takeovers.push(t);
      say(
        `kill ${kill}/${o.kills}: ${primary.id}'s sidecar and app SIGKILLed, ${standby.id} took over in ${t.takeoverMs} ms, serving after ${t.killToServingMs} ms (acked ${acked}, resumed ${resumed}, epoch ${epoch}, store/image ${agree === undefined ? 'not reported' : agree ? 'agree' : 'DISAGREE'})`,
      );
      o.onTakeover?.(t);
      const killed = primary;
      primary = standby;
      standby = killed;
      standby.start(o, env(standby));
      await ready(standby, 'standby');
    }
    report.ok = report.violations.length === 0 && report.takeovers.length === o.kills;
  } catch (err) {
    report.violations.push(`drill aborted: ${(err as Error).message}`);
  } finally {
    await Promise.all([nodes.a.killGroup(), nodes.b.killGroup()]);
    if (!o.keep) {
      await rm(dir, { recursive: true, force: true });
      await deleteAppAt(o.nats, app).catch(() => undefined);
    }
  }
  report.medians = drillMedians(report.takeovers);
  timeline.endedAt = Date.now();
  report.durationMs = timeline.endedAt - startedAt;
  return report;
}
