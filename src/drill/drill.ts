/**
 * The failover drill: runs the sample ledger app as two real processes, takes the primary out
 * at chosen moments (SIGKILL, SIGSTOP, or a network partition), and after every takeover checks
 * DESIGN.md's guarantees against a ledger of what the deposed primary had been told was durable:
 *
 * 1. the resumed checkpoint is the last acknowledged one or later (no acknowledged restart point
 *    lost);
 * 2. the resumed image is exactly the one passed to that checkpoint, and the store holds exactly
 *    the writes up to it (store and image agree);
 * 3. the new primary's epoch is higher than every earlier one, and a deposed primary that still
 *    runs (paused, partitioned) is fenced: it acknowledges nothing after the takeover.
 *
 * Every takeover is also measured (RTO: detection, rollback, restore, resume; RPO: checkpoints
 * lost, writes discarded). docs/drill.md describes the whole contract.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { crc32 } from 'node:zlib';
import { EnvelopeCodec, parseClusterKey } from '../protocol/envelope.js';
import { FrameKind, encodeFrame } from '../protocol/frame.js';
import { encodeFence, encodeWrites } from '../protocol/records.js';
import { appNames } from '../protocol/subjects.js';
import { deleteAppAt } from '../transport/inspect.js';
import { TestRelay } from './nats-servers.js';
import { TcpProxy } from './proxy.js';

/** Stores the drill can run the sample app on. */
export const DrillStores = ['file', 'memory', 'redis', 'postgres'] as const;
export type DrillStore = (typeof DrillStores)[number];

/** Where a kill lands. */
export const KillPoints = ['between-writes', 'inside-checkpoint', 'after-checkpoint'] as const;
export type KillPoint = (typeof KillPoints)[number];

/** Default pause of the sample app after each step, ms (`--step-ms`). */
export const DEFAULT_STEP_MS = 2;

/** Largest `stateMb` the drill accepts. */
export const MAX_STATE_MB = 1024;

/** Options of a drill run. */
export interface DrillOptions {
  kills: number;
  store: DrillStore;
  /** Standby mode of the nodes. Default `'delay-write'`. */
  mode?: 'delay-write' | 'snapshot';
  /** Redis for `store: 'redis'`. Default `redis://127.0.0.1:6379`. */
  redisUrl?: string;
  /** PostgreSQL for `store: 'postgres'`. Default `postgres://postgres@127.0.0.1:5432/test`. */
  postgresUrl?: string;
  seed: number;
  nats: string;
  leaseTtlMs: number;
  /** Called with one line of progress per event worth telling. */
  progress?: (line: string) => void;
  /** Called after each takeover was checked (for a progress bar). */
  onTakeover?: (t: TakeoverReport) => void;
  /** Keep the temp folder and the NATS stream (for debugging). */
  keep?: boolean;
  /** Kill points to use in turn; default: chosen at random from the seed. */
  points?: readonly KillPoint[];
  /**
   * What fails: `kill` (the primary is SIGKILLed), `pause` (the primary is SIGSTOPped, and
   * SIGCONTed after the takeover: a zombie that must find itself fenced), `partition` (the
   * primary's NATS link is blackholed through a proxy, then healed after the takeover; the
   * process keeps running and must demote itself), `relay-loss` (three relays with a quorum
   * policy; one relay is SIGKILLed before each primary kill and restarted after the takeover),
   * `shard-loss` (six relays, FEC 4+2 tolerating one lost relay, 2 % of shards dropped on the
   * way, and one relay SIGKILLed before each primary kill). Default `kill`.
   */
  scenario?: Scenario;
  /**
   * Cluster key of the nodes (signed mode, docs/security.md): every message on the relays is
   * signed with it and the standby rejects anything else. Default: unsigned.
   */
  key?: string;
  /**
   * With `key`: publish this many forged messages (unsigned, or signed with another key) and as
   * many corrupted ones (genuine signed messages from the stream, damaged) onto the app's subject
   * while the primary works, before the first kill. The report's `rejected` counts what the
   * standby nodes rejected.
   */
  injectForged?: number;
  /** Ballast in the sample app's state, in MB (0–1024). Default 0. */
  stateMb?: number;
  /**
   * Pause of the sample app after each acknowledged step, ms (0–10 000). Default
   * {@link DEFAULT_STEP_MS}: a standby that rejoins replays the whole stream, and on a small
   * machine it never catches up with a primary checkpointing flat out (0).
   */
  stepMs?: number;
}

/** Drill scenarios, in the order `--scenario all` runs them. */
export const Scenarios = ['kill', 'pause', 'partition', 'relay-loss', 'shard-loss'] as const;
export type Scenario = (typeof Scenarios)[number];

/** What a deposed primary that kept running (pause, partition) did after the takeover. */
export interface ZombieReport {
  /** It reported the `demoted` event (its lease keeper saw the lease lost). */
  demoted: boolean;
  /** Milliseconds from the takeover (new primary resumed) to `demoted`; negative: before it. */
  demotedAfterTakeoverMs: number | null;
  /** Its own next write or checkpoint was refused with `ERR_FENCED`. */
  refused: boolean;
  /** A checkpoint the drill asked it for afterwards (`probe`) was refused with `ERR_FENCED`. */
  probeRefused: boolean;
  /** Checkpoints it acknowledged at or after the takeover: must be 0. */
  acksAfterTakeover: number;
  /** Writes it made after the fault (SIGSTOP or cut), all of them discarded. */
  writesAfterFault: number;
  /** Entries of the new primary's store written by an older epoch after the resumed step: must be 0. */
  foreignWrites: number;
}

/** One takeover as the `--json` contract reports it (docs/cli.md, docs/drill.md). */
export interface TakeoverReport {
  kill: number;
  point: KillPoint;
  killed: string;
  newPrimary: string;
  /** From the fault (SIGKILL, SIGSTOP, cut) to the new primary's `Restartpoint.start()` resolving. */
  takeoverMs: number;
  lastAcked: number;
  resumed: number;
  epoch: number;
  storeMatches: boolean;
  imageMatches: boolean;
  /** With `--scenario all`: the scenario this takeover belongs to. */
  scenario?: Scenario;
  /** SDK `takeover.detectMs`: from the lease going quiet (as the standby saw it) to the claim. */
  detectMs: number;
  /** SDK `takeover.catchUpMs`: applying every complete checkpoint after the claim. */
  catchUpMs: number;
  /** SDK `takeover.fenceMs`: the fence published until durable. */
  fenceMs: number;
  /** SDK `takeover.rollbackMs`: the store rolled back to the resumed checkpoint. */
  rollbackMs: number;
  /** SDK `takeover.restoreMs`: the materialized image turned into the live state. */
  restoreMs: number;
  /** From `start()` resolving to the resumed app's first acknowledged checkpoint. */
  resumeMs: number;
  /** From the fault to the resumed app's first acknowledged checkpoint: the RTO. */
  killToServingMs: number;
  /** Acknowledged checkpoints the new primary did not resume (RPO in checkpoints): must be 0. */
  checkpointsLost: number;
  /** Writes the deposed primary made after the resumed checkpoint: rolled back, by design. */
  writesDiscarded: number;
  /** pause, partition: what the deposed primary did afterwards. */
  zombie?: ZombieReport;
  /**
   * Sidecar mode (`--config`): the resumed app's own report that its store and image agree
   * (the verification hook, docs/drill.md); `null` when the app printed none.
   */
  verified?: boolean | null;
}

/** Medians over a drill's takeovers (milliseconds). */
export interface DrillMedians {
  takeoverMs: number;
  detectMs: number;
  rollbackMs: number;
  restoreMs: number;
  resumeMs: number;
  /** rollbackMs + restoreMs + resumeMs, per takeover, then the median. */
  rollbackRestoreResumeMs: number;
  killToServingMs: number;
}

/** The moments of a run, for the HTML report (`--report`); not part of `--json`. */
export interface DrillTimeline {
  /** Wall-clock ms (Date.now()) when the run started and ended. */
  startedAt: number;
  endedAt: number;
  /** Acknowledged checkpoints (down-sampled to at most 2 000). */
  acks: { t: number; checkpoint: number; node: string }[];
  /** Standby lag: when a standby applied a checkpoint, and how long after its ack. */
  lag: { t: number; node: string; checkpoint: number; lagMs: number }[];
  /** The faults, one per kill. */
  faults: { t: number; kill: number; kind: 'kill' | 'pause' | 'partition'; node: string }[];
  /** Takeovers: resumed (`start()` resolved) and serving (first acknowledged checkpoint). */
  takeovers: { t: number; servingAt: number; kill: number; node: string }[];
  /** Relay servers killed and restarted. */
  relays: { t: number; kind: 'relay-kill' | 'relay-start'; relay: number }[];
}

/** The drill's result, as printed by `--json`. */
export interface DrillReport {
  ok: boolean;
  kills: number;
  seed: number;
  store: string;
  mode: string;
  scenario: Scenario;
  /** Relay servers SIGKILLed during the run (relay-loss, shard-loss). */
  relaysKilled: number;
  takeovers: TakeoverReport[];
  /**
   * Messages the standby nodes rejected, distinct by stream sequence: `forged` (reasons
   * `forged`, `unsigned`) and `corrupt` (`checksum`, `magic`, `truncated`, `malformed`,
   * `version`). Other reasons (duplicates, late shards) are routine and not counted here.
   */
  rejected: { forged: number; corrupt: number };
  violations: string[];
  /** Lease TTL of the nodes. */
  leaseTtlMs: number;
  /** Ballast in the sample app's state, MB. */
  stateMb: number;
  /** The sample app's pause after each step, ms. */
  stepMs: number;
  /** Medians over `takeovers` (0 when there is none). */
  medians: DrillMedians;
  /** Wall-clock duration of the run. */
  durationMs: number;
  /** For the HTML report; left out of `--json` (see {@link reportJson}). */
  timeline?: DrillTimeline;
}

/** Reject reasons the report counts as forged, and as corrupt. */
const FORGED_REASONS = new Set(['forged', 'unsigned']);
const CORRUPT_REASONS = new Set(['checksum', 'magic', 'truncated', 'malformed', 'version']);

/** Events the sample app prints that are kept in a node's history (the frequent ones are not). */
const FREQUENT = new Set(['cp-begin', 'acked', 'applied', 'log']);

interface AppEvent {
  ev: string;
  t: number;
  [k: string]: unknown;
}

/** The median of `xs` (0 for none). */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0
    ? 0
    : s.length % 2
      ? s[(s.length - 1) / 2]!
      : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/** Medians of the RTO figures over `takeovers`. */
export function drillMedians(takeovers: readonly TakeoverReport[]): DrillMedians {
  const m = (f: (t: TakeoverReport) => number): number => median(takeovers.map(f));
  return {
    takeoverMs: m((t) => t.takeoverMs),
    detectMs: m((t) => t.detectMs),
    rollbackMs: m((t) => t.rollbackMs),
    restoreMs: m((t) => t.restoreMs),
    resumeMs: m((t) => t.resumeMs),
    rollbackRestoreResumeMs: m((t) => t.rollbackMs + t.restoreMs + t.resumeMs),
    killToServingMs: m((t) => t.killToServingMs),
  };
}

/** The report as `--json` prints it: everything but the timelines. */
export function reportJson<R extends DrillReport & { runs?: DrillReport[] }>(report: R): string {
  return JSON.stringify(report, (k, v: unknown) => (k === 'timeline' ? undefined : v));
}

/** The compiled sample app, found from the package root whether this runs from src/ or dist/. */
export function sampleAppPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json')) && dirname(dir) !== dir) dir = dirname(dir);
  const app = join(dir, 'dist', 'examples', 'ledger', 'app.js');
  if (!existsSync(app)) throw new Error(`sample app not built: ${app} is missing; run 'npm run build'`);
  return app;
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

  start(args: string[]): void {
    const appPath = sampleAppPath();
    const child = spawn(process.execPath, [appPath, '--node', this.id, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child = child;
    this.stderr = '';
    this.history = [];
    // Writes to a process that died are dropped; its exit is what the drill reacts to.
    child.stdin!.on('error', () => undefined);
    createInterface({ input: child.stdout! }).on('line', (line) => {
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

/** A small deterministic PRNG (mulberry32): drills are reproducible from their seed. */
/** A timeline with nothing on it yet. */
export function emptyTimeline(startedAt: number): DrillTimeline {
  return { startedAt, endedAt: startedAt, acks: [], lag: [], faults: [], takeovers: [], relays: [] };
}

export function mulberry(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A number from an app event field, or 0. */
function num(v: unknown): number {
  const n = Number(v);
  return Number.isFinite(n) ? n : 0;
}

/** Down-samples `xs` to at most `max` items, keeping the first and the last. */
function thin<T>(xs: T[], max: number): T[] {
  if (xs.length <= max) return xs;
  const step = xs.length / max;
  const out: T[] = [];
  for (let i = 0; i < max - 1; i++) out.push(xs[Math.floor(i * step)]!);
  out.push(xs[xs.length - 1]!);
  return out;
}

/** Runs a drill. Never throws for a guarantee violation: those are in `violations`. */
export async function runDrill(opts: DrillOptions): Promise<DrillReport> {
  const say = opts.progress ?? (() => undefined);
  const rand = mulberry(opts.seed);
  const app = `drill-${randomBytes(4).toString('hex')}`;
  const startedAt = Date.now();
  const dir = await mkdtemp(join(tmpdir(), 'restartpoint-drill-'));
  const nodes = { a: new AppProcess('a'), b: new AppProcess('b') };
  const scenario = opts.scenario ?? 'kill';
  const stateMb = opts.stateMb ?? 0;
  const stepMs = opts.stepMs ?? DEFAULT_STEP_MS;
  const relays: TestRelay[] = [];
  const relayed = scenario === 'relay-loss' || scenario === 'shard-loss';
  /** partition: each node reaches NATS through a proxy of its own; the primary's is cut. */
  const proxies = new Map<string, TcpProxy>();
  const relayArgs = (): string[] => {
    if (!relayed) return [];
    const urls = relays.map((r) => r.urls.join('|')).join(',');
    return scenario === 'relay-loss'
      ? ['--relays', urls, '--ack', 'quorum']
      : ['--relays', urls, '--fec', '4+2:1', '--drop-shards', '0.02'];
  };
  const args = (id: string): string[] => [
    ...relayArgs(),
    '--app',
    app,
    '--store',
    opts.store,
    '--dir',
    join(dir, id),
    '--nats',
    proxies.get(id)?.url ?? opts.nats,
    '--ttl',
    String(opts.leaseTtlMs),
    '--mode',
    opts.mode ?? 'delay-write',
    '--redis-url',
    opts.redisUrl ?? 'redis://127.0.0.1:6379',
    '--postgres-url',
    opts.postgresUrl ?? 'postgres://postgres@127.0.0.1:5432/test',
    ...(opts.key !== undefined ? ['--key', opts.key] : []),
    ...(stateMb > 0 ? ['--state-mb', String(stateMb)] : []),
    ...(stepMs > 0 ? ['--step-ms', String(stepMs)] : []),
  ];
  const timeline = emptyTimeline(startedAt);
  const report: DrillReport = {
    ok: false,
    kills: opts.kills,
    seed: opts.seed,
    store: opts.store,
    mode: opts.mode ?? 'delay-write',
    scenario,
    relaysKilled: 0,
    takeovers: [],
    rejected: { forged: 0, corrupt: 0 },
    violations: [],
    leaseTtlMs: opts.leaseTtlMs,
    stateMb,
    stepMs,
    medians: drillMedians([]),
    durationMs: 0,
    timeline,
  };
  const rejectedSeen = { forged: new Set<string>(), corrupt: new Set<string>() };

  // The ledger of what each primary was told, keyed `epoch:checkpoint`: digests, and how many
  // writes the primary had made when it declared that checkpoint.
  const digests = new Map<string, { digest: string; mirrorDigest: string; wt: number }>();
  const acks: { node: string; epoch: number; checkpoint: number; t: number }[] = [];
  const applied: { node: string; checkpoint: number; t: number }[] = [];
  /** Per node: its epoch as primary, next checkpoint number, writes so far (this process). */
  const role = new Map<string, { epoch: number; nextCp: number; wt: number }>();
  /** When each checkpoint was first acknowledged (ms), for the standby's lag. */
  const ackAt = new Map<number, number>();
  let lastAcked = 0;
  let lastEpoch = 0;

  const track = (node: AppProcess): void => {
    node.on((e) => {
      const r = role.get(node.id);
      if (e.ev === 'primary') role.set(node.id, { epoch: num(e.epoch), nextCp: num(e.resumed) + 1, wt: 0 });
      else if (e.ev === 'standby') role.delete(node.id);
      if (r && typeof e.wt === 'number') r.wt = e.wt;
      if (e.ev === 'cp-begin' && r) {
        digests.set(`${r.epoch}:${r.nextCp++}`, {
          digest: String(e.digest),
          mirrorDigest: String(e.mirrorDigest),
          wt: num(e.wt),
        });
      }
      if (e.ev === 'acked') {
        lastAcked = Math.max(lastAcked, num(e.checkpoint));
        acks.push({ node: node.id, epoch: num(e.epoch), checkpoint: num(e.checkpoint), t: e.t });
        if (!ackAt.has(num(e.checkpoint))) ackAt.set(num(e.checkpoint), e.t);
      }
      if (e.ev === 'applied') applied.push({ node: node.id, checkpoint: num(e.checkpoint), t: e.t });
      if (e.ev === 'log' && e.msg === 'frame rejected') {
        // A node that rejoins re-reads the stream and rejects the same messages again: count
        // each stream message once.
        const reason = String(e.reason);
        const id = `${String(e.streamSeq)}`;
        if (FORGED_REASONS.has(reason)) rejectedSeen.forged.add(id);
        else if (CORRUPT_REASONS.has(reason)) rejectedSeen.corrupt.add(id);
        report.rejected = { forged: rejectedSeen.forged.size, corrupt: rejectedSeen.corrupt.size };
      }
    });
  };

  try {
    if ((opts.injectForged ?? 0) > 0 && opts.key === undefined) {
      throw new Error(
        'injectForged needs key: without signed mode a forged frame is indistinguishable from a real one',
      );
    }
    if (!(Number.isFinite(stateMb) && stateMb >= 0 && stateMb <= MAX_STATE_MB)) {
      throw new Error(`stateMb ${stateMb} is out of range: use 0 to ${MAX_STATE_MB} MB`);
    }
    if (!(Number.isFinite(stepMs) && stepMs >= 0 && stepMs <= 10_000)) {
      throw new Error(`stepMs ${stepMs} is out of range: use 0 to 10000 ms`);
    }
    track(nodes.a);
    track(nodes.b);
    if (relayed) {
      const n = scenario === 'relay-loss' ? 3 : 6;
      for (let i = 0; i < n; i++) relays.push(await TestRelay.single());
    }
    if (scenario === 'partition') {
      for (const id of ['a', 'b']) proxies.set(id, await TcpProxy.start(opts.nats));
    }
    say(
      `drill: app ${app}, scenario ${scenario}, store ${opts.store} (${opts.mode ?? 'delay-write'}), seed ${opts.seed}, ${opts.kills} kill(s), lease ${opts.leaseTtlMs} ms${stateMb > 0 ? `, state ${stateMb} MB` : ''}`,
    );
    // A large first keyframe takes a while to build and ship before `a` is primary.
    const startMs = 30_000 + stateMb * 1_000;
    nodes.a.start(args('a'));
    const first = await nodes.a.waitFor((e) => e.ev === 'primary', 'primary role', startMs);
    lastEpoch = Number(first.epoch);
    nodes.b.start(args('b'));
    await nodes.b.waitFor((e) => e.ev === 'standby', 'standby role', startMs);
    let primary = nodes.a;
    let standby = nodes.b;
    if ((opts.injectForged ?? 0) > 0) {
      const targets = relayed ? relays.map((r) => r.urls.join(',')) : [opts.nats];
      const n = opts.injectForged!;
      const want = { forged: n, corrupt: n };
      const sent = await injectHostile(targets, app, n, Number(first.epoch));
      say(
        `drill: injected ${sent.forged} forged and ${sent.corrupt} corrupted message(s) onto rp.${app}.frames`,
      );
      // The standby reads them before the first kill (a node that restarts reads them again).
      const deadline = Date.now() + 15_000;
      while (
        (report.rejected.forged < want.forged || report.rejected.corrupt < want.corrupt) &&
        Date.now() < deadline
      )
        await new Promise((r) => setTimeout(r, 50));
    }

    const takeoverTimeout = 30_000 + opts.leaseTtlMs * 5 + stateMb * 1_000;
    const zombieTimeout = 15_000 + opts.leaseTtlMs * 5;
    for (let kill = 1; kill <= opts.kills; kill++) {
      const drawn = KillPoints[Math.floor(rand() * KillPoints.length)]!;
      const point = opts.points?.length ? opts.points[(kill - 1) % opts.points.length]! : drawn;
      const afterSteps = 3 + Math.floor(rand() * 20);
      // Each takeover is measured from a warm standby: one that has applied what was acked so far.
      if (!(await warm(standby, ackAt)))
        say(
          `kill ${kill}/${opts.kills}: the standby is still more than ${WARM_LAG_MS} ms behind; killing anyway`,
        );
      // Relays lost while the primary works: the ones the policy can spare.
      const lost = relayed ? pickRelays(relays.length, 1, rand) : [];
      for (const i of lost) {
        await relays[i]!.servers[0]!.kill();
        timeline.relays.push({ t: Date.now(), kind: 'relay-kill', relay: i });
      }
      report.relaysKilled += lost.length;
      if (lost.length > 0) say(`kill ${kill}/${opts.kills}: relay(s) ${lost.join(', ')} SIGKILLed`);
      primary.send({ cmd: 'arm', point, afterSteps });
      const at = await primary.waitFor(
        (e) => e.ev === 'at-killpoint' || e.ev === 'demoted',
        `kill point ${point}`,
        30_000 + stateMb * 1_000,
        // A demotion may already have happened (each process is primary for one kill only).
        true,
      );
      if (at.ev === 'demoted') {
        // Nobody was killed yet: the primary lost its lease on its own (an event loop blocked
        // for longer than the lease allows, e.g. by a large keyframe).
        throw new Error(
          `node ${primary.id} was demoted before its kill point: ${String(at.error)}${stateMb > 0 ? `; a ${stateMb} MB keyframe blocks the event loop, try a longer --lease-ttl` : ''}`,
        );
      }
      const ackedAtKill = lastAcked;
      const killedEpoch = role.get(primary.id)?.epoch ?? lastEpoch;
      const wtAtFault = role.get(primary.id)?.wt ?? 0;
      // Both waits are set before the fault, so no event can slip between.
      const tookP = standby.waitFor((e) => e.ev === 'primary', 'takeover', takeoverTimeout);
      const servedP = standby.waitFor(
        (e) => e.ev === 'acked',
        'first checkpoint after the takeover',
        takeoverTimeout + 30_000,
      );
      tookP.catch(() => undefined);
      servedP.catch(() => undefined);
      const tKill = Date.now();
      const kind = scenario === 'pause' ? 'pause' : scenario === 'partition' ? 'partition' : 'kill';
      timeline.faults.push({ t: tKill, kill, kind, node: primary.id });
      if (kind === 'kill') await primary.kill();
      else if (kind === 'pause') primary.signal('SIGSTOP');
      else {
        proxies.get(primary.id)!.cut();
        // Partitioned, the primary goes on working: its writes and checkpoints go nowhere.
        primary.send({ cmd: 'release' });
      }
      const took = await tookP;
      const takeoverMs = took.t - tKill;
      const resumed = Number(took.resumed);
      const resumedEpoch = Number(took.resumedEpoch);
      const epoch = Number(took.epoch);
      const expected = resumed === 0 ? undefined : digests.get(`${resumedEpoch}:${resumed}`);
      const stats = (took.takeover ?? {}) as Record<string, unknown>;
      const verifyMs = num(took.verifyMs);

      let zombie: ZombieReport | undefined;
      if (kind !== 'kill') {
        zombie = await checkZombie(primary, standby, {
          kind,
          took,
          killedEpoch,
          wtAtFault,
          acks,
          timeoutMs: zombieTimeout,
          proxy: proxies.get(primary.id),
          violations: report.violations,
          kill,
        });
        await primary.kill();
      }
      const served = await servedP;
      const finalWt = role.get(primary.id)?.wt ?? wtAtFault;
      role.delete(primary.id);
      const base = resumedEpoch === killedEpoch ? (expected?.wt ?? 0) : 0;
      const lostCps = new Set(
        acks.filter((a) => a.epoch <= killedEpoch && a.checkpoint > resumed).map((a) => a.checkpoint),
      );
      const t: TakeoverReport = {
        kill,
        point,
        killed: primary.id,
        newPrimary: standby.id,
        takeoverMs,
        lastAcked: ackedAtKill,
        resumed,
        epoch,
        imageMatches: expected !== undefined && expected.digest === took.digest,
        storeMatches: expected !== undefined && expected.mirrorDigest === took.storeDigest,
        detectMs: Math.round(num(stats.detectMs)),
        catchUpMs: Math.round(num(stats.catchUpMs)),
        fenceMs: Math.round(num(stats.fenceMs)),
        rollbackMs: Math.round(num(stats.rollbackMs)),
        restoreMs: Math.round(num(stats.restoreMs)),
        resumeMs: Math.max(0, served.t - took.t - verifyMs),
        killToServingMs: Math.max(0, served.t - tKill - verifyMs),
        checkpointsLost: lostCps.size,
        writesDiscarded: Math.max(0, finalWt - base),
        ...(zombie ? { zombie } : {}),
      };
      timeline.takeovers.push({ t: took.t, servingAt: served.t - verifyMs, kill, node: standby.id });
      if (resumed < ackedAtKill) {
        report.violations.push(
          `kill ${kill}: resumed checkpoint ${resumed} is older than the last acknowledged ${ackedAtKill}`,
        );
      }
      if (t.checkpointsLost > 0) {
        report.violations.push(
          `kill ${kill}: ${t.checkpointsLost} acknowledged checkpoint(s) after the resumed ${resumed} were lost (${[...lostCps].join(', ')})`,
        );
      }
      if (expected === undefined) {
        report.violations.push(
          `kill ${kill}: resumed checkpoint ${resumed} was never issued by the killed primary`,
        );
      } else {
        if (!t.imageMatches)
          report.violations.push(`kill ${kill}: resumed image differs from checkpoint ${resumed}'s image`);
        if (!t.storeMatches)
          report.violations.push(`kill ${kill}: store differs from checkpoint ${resumed}'s writes`);
      }
      if (took.mirrorDigest !== took.storeDigest) {
        report.violations.push(`kill ${kill}: the new primary's store and image disagree`);
      }
      if (!(epoch > lastEpoch))
        report.violations.push(`kill ${kill}: epoch ${epoch} is not above ${lastEpoch}`);
      lastEpoch = epoch;
      report.takeovers.push(t);
      const verb = kind === 'kill' ? 'killed' : kind === 'pause' ? 'paused' : 'partitioned';
      say(
        `kill ${kill}/${opts.kills}: ${point}, ${primary.id} ${verb}, ${standby.id} took over in ${takeoverMs} ms, serving after ${t.killToServingMs} ms (acked ${ackedAtKill}, resumed ${resumed}, epoch ${epoch}, ${t.writesDiscarded} write(s) discarded)`,
      );
      opts.onTakeover?.(t);
      // The lost relays come back (and are caught up); the killed node rejoins as the standby.
      for (const i of lost) {
        await relays[i]!.servers[0]!.start();
        timeline.relays.push({ t: Date.now(), kind: 'relay-start', relay: i });
      }
      const killed = primary;
      primary = standby;
      standby = killed;
      standby.start(args(standby.id));
      await standby.waitFor((e) => e.ev === 'standby', 'standby role after restart', startMs);
    }
    report.ok = report.violations.length === 0 && report.takeovers.length === opts.kills;
  } catch (err) {
    report.violations.push(`drill aborted: ${(err as Error).message}`);
    report.ok = false;
  } finally {
    await Promise.all([nodes.a.kill(), nodes.b.kill()]);
    await Promise.all(relays.map((r) => r.destroy()));
    await Promise.all([...proxies.values()].map((p) => p.close()));
    if (!opts.keep) {
      if (opts.store === 'redis' || opts.store === 'postgres') {
        await Promise.all(['a', 'b'].map((id) => clearStore(id, args(id)))).catch((err: unknown) => {
          say(`drill: could not clear the ${opts.store} store: ${(err as Error).message}`);
        });
      }
      await rm(dir, { recursive: true, force: true });
      await deleteAppAt(opts.nats, app).catch(() => undefined);
    }
  }
  report.medians = drillMedians(report.takeovers);
  timeline.endedAt = Date.now();
  report.durationMs = timeline.endedAt - startedAt;
  timeline.acks = thin(
    acks.map((a) => ({ t: a.t, checkpoint: a.checkpoint, node: a.node })),
    2_000,
  );
  timeline.lag = thin(
    applied.flatMap((s) => {
      const at = ackAt.get(s.checkpoint);
      return at === undefined
        ? []
        : [{ t: s.t, node: s.node, checkpoint: s.checkpoint, lagMs: Math.max(0, s.t - at) }];
    }),
    2_000,
  );
  return report;
}

/** How far behind the primary a standby may be to count as warm (ms from ack to applied). */
export const WARM_LAG_MS = 250;

/**
 * Waits until the standby reports (`applied`, every 200 ms) a checkpoint it applied at most
 * {@link WARM_LAG_MS} after the primary's ack, so that every takeover is measured from a warm
 * standby, not from one still replaying the stream. False after 10 s without one.
 */
async function warm(standby: AppProcess, ackAt: ReadonlyMap<number, number>): Promise<boolean> {
  try {
    await standby.waitFor(
      (e) => e.ev === 'applied' && e.t - (ackAt.get(num(e.checkpoint)) ?? e.t) <= WARM_LAG_MS,
      `applied sample within ${WARM_LAG_MS} ms of its ack`,
      10_000,
    );
    return true;
  } catch (err) {
    if (/no applied sample/.test((err as Error).message)) return false;
    throw err;
  }
}

/**
 * pause, partition: after the takeover, brings the deposed primary back (SIGCONT, or the link
 * healed) and checks it is fenced: it reports `demoted`, its own next write or checkpoint is
 * refused with `ERR_FENCED`, a checkpoint asked for afterwards is refused too, it acknowledged
 * nothing at or after the takeover, and the new primary's store holds none of its later work.
 */
async function checkZombie(
  zombie: AppProcess,
  primary: AppProcess,
  o: {
    kind: 'pause' | 'partition';
    took: AppEvent;
    killedEpoch: number;
    wtAtFault: number;
    acks: readonly { node: string; epoch: number; checkpoint: number; t: number }[];
    timeoutMs: number;
    proxy: TcpProxy | undefined;
    violations: string[];
    kill: number;
  },
): Promise<ZombieReport> {
  const v = (msg: string): void => {
    o.violations.push(`kill ${o.kill}: the ${o.kind === 'pause' ? 'paused' : 'partitioned'} primary ${msg}`);
  };
  const seen = async (ev: string, what: string): Promise<AppEvent | undefined> => {
    try {
      return await zombie.waitFor((e) => e.ev === ev, what, o.timeoutMs, true);
    } catch (err) {
      v(`never reported ${what}: ${(err as Error).message}`);
      return undefined;
    }
  };
  let demoted: AppEvent | undefined;
  if (o.kind === 'pause') {
    // The release is waiting on its stdin when it wakes: the zombie goes on where it stopped.
    zombie.send({ cmd: 'release' });
    zombie.signal('SIGCONT');
    demoted = await seen('demoted', "'demoted'");
  } else {
    // Alive all along, it must have seen its lease run out; then the link comes back.
    demoted = await seen('demoted', "'demoted'");
    o.proxy!.heal();
  }
  const fenced = await seen('fenced', 'a write or checkpoint refused as fenced');
  zombie.send({ cmd: 'probe' });
  const probe = await seen('probe', 'the result of a probe checkpoint');
  const verifiedP = primary.waitFor((e) => e.ev === 'verified', 'store verification', o.timeoutMs);
  primary.send({ cmd: 'verify' });
  let foreign = 0;
  try {
    const verified = await verifiedP;
    foreign = num(verified.foreign);
    if (verified.storeDigest !== verified.mirrorDigest)
      o.violations.push(
        `kill ${o.kill}: after the deposed primary came back, the new primary's store and image disagree`,
      );
    if (foreign > 0) v(`left ${foreign} write(s) in the new primary's store`);
  } catch (err) {
    o.violations.push(
      `kill ${o.kill}: the new primary could not verify its store: ${(err as Error).message}`,
    );
  }
  const late = o.acks.filter((a) => a.node === zombie.id && a.epoch === o.killedEpoch && a.t >= o.took.t);
  if (late.length > 0)
    v(`acknowledged checkpoint(s) ${late.map((a) => a.checkpoint).join(', ')} after the takeover`);
  const refused = fenced?.code === 'ERR_FENCED';
  const probeRefused = probe !== undefined && probe.code === 'ERR_FENCED';
  if (probe !== undefined && !probeRefused)
    v(
      probe.acked !== undefined
        ? `acknowledged probe checkpoint ${String(probe.acked)} after the takeover`
        : `refused the probe checkpoint with ${String(probe.code)}, not ERR_FENCED`,
    );
  return {
    demoted: demoted !== undefined,
    demotedAfterTakeoverMs: demoted ? demoted.t - o.took.t : null,
    refused,
    probeRefused,
    acksAfterTakeover: late.length,
    writesAfterFault: Math.max(0, num(probe?.wt ?? fenced?.wt) - o.wtAtFault),
    foreignWrites: foreign,
  };
}

/**
 * Publishes `n` forged messages (alternately unsigned and signed with a random key of the
 * attacker's own; each a fence of a far newer epoch or a write the primary never made, which
 * would wreck the run if applied) and `n` corrupted ones (the newest genuine message on the
 * stream with a byte flipped, cut short, its magic broken, or its version changed under a
 * recomputed CRC) onto the app's subject on every target.
 */
async function injectHostile(
  targets: string[],
  app: string,
  n: number,
  epoch: number,
): Promise<{ forged: number; corrupt: number }> {
  const names = appNames(app);
  const mallory = new EnvelopeCodec({ app, keys: parseClusterKey(randomBytes(32)) });
  const sent = { forged: 0, corrupt: 0 };
  for (const servers of targets) {
    const nc = await connect({ servers: servers.split(','), timeout: 5_000 });
    try {
      const js = jetstream(nc);
      const jsm = await jetstreamManager(nc);
      // A genuine signed message, taken before anything is injected.
      const info = await jsm.streams.info(names.stream);
      const genuine = (await jsm.streams.getMessage(names.stream, { seq: info.state.last_seq }))!.data;
      for (let i = 0; i < n; i++) {
        const frame =
          i % 2 === 0
            ? {
                kind: FrameKind.Fence,
                epoch: epoch + 1000 + i,
                seq: 1,
                checkpoint: 0,
                body: encodeFence({ nodeId: 'mallory' }),
              }
            : {
                kind: FrameKind.Writes,
                epoch,
                seq: 1_000_000 + i,
                checkpoint: 1,
                body: encodeWrites([{ op: 'put', key: 'acct:0', value: Buffer.from('999999999:0') }]),
              };
        const part = encodeFrame(app, frame, 1 << 20)[0]!;
        await js.publish(names.subject, i % 4 < 2 ? mallory.seal(part) : part);
        sent.forged++;
      }
      for (let i = 0; i < n; i++) {
        const bytes = Buffer.from(genuine);
        switch (i % 4) {
          case 0:
            bytes[bytes.length >> 1]! ^= 1 << (i % 8);
            break;
          case 1:
            bytes[0] = 0;
            bytes[1] = 0;
            break;
          case 2:
            bytes[2] ^= 0x7f;
            bytes.writeUInt32BE(crc32(bytes.subarray(0, bytes.length - 4)) >>> 0, bytes.length - 4);
            break;
        }
        await js.publish(names.subject, i % 4 === 3 ? bytes.subarray(0, bytes.length - 1 - (i % 13)) : bytes);
        sent.corrupt++;
      }
    } finally {
      await nc.close();
    }
  }
  return sent;
}

/** `count` distinct relay indexes out of `n`, drawn from the seeded generator. */
function pickRelays(n: number, count: number, rand: () => number): number[] {
  const all = [...Array(n).keys()];
  const out: number[] = [];
  while (out.length < count) out.push(all.splice(Math.floor(rand() * all.length), 1)[0]!);
  return out.sort((a, b) => a - b);
}

/** Runs the sample app in `--clear` mode: it empties one node's store and exits. */
function clearStore(id: string, args: string[]): Promise<void> {
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
