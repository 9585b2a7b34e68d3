/**
 * The failover drill: runs the sample ledger app as two real processes, SIGKILLs the primary
 * at chosen moments, and after every takeover checks DESIGN.md's guarantees against a ledger of
 * what the killed primary had been told was durable:
 *
 * 1. the resumed checkpoint is the last acknowledged one or later (no acknowledged restart point
 *    lost);
 * 2. the resumed image is exactly the one passed to that checkpoint, and the store holds exactly
 *    the writes up to it (store and image agree);
 * 3. the new primary's epoch is higher than every earlier one (one primary at a time, fenced).
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
import { TestRelay } from './nats-servers.js';

/** Stores the drill can run the sample app on. */
export const DrillStores = ['file', 'memory', 'redis', 'postgres'] as const;
export type DrillStore = (typeof DrillStores)[number];

/** Where a kill lands. */
export const KillPoints = ['between-writes', 'inside-checkpoint', 'after-checkpoint'] as const;
export type KillPoint = (typeof KillPoints)[number];

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
  /** Keep the temp folder and the NATS stream (for debugging). */
  keep?: boolean;
  /** Kill points to use in turn; default: chosen at random from the seed. */
  points?: readonly KillPoint[];
  /**
   * What fails besides the primary: `kill` (the primary only), `relay-loss` (three relays with a
   * quorum policy; one relay is SIGKILLed before each primary kill and restarted after the
   * takeover), `shard-loss` (six relays, FEC 4+2 tolerating one lost relay, 2 % of shards
   * dropped on the way, and one relay SIGKILLed before each primary kill). Default `kill`.
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
}

/** Drill scenarios. */
export const Scenarios = ['kill', 'relay-loss', 'shard-loss'] as const;
export type Scenario = (typeof Scenarios)[number];

/** One takeover as the `--json` contract reports it (docs/cli.md). */
export interface TakeoverReport {
  kill: number;
  point: KillPoint;
  killed: string;
  newPrimary: string;
  takeoverMs: number;
  lastAcked: number;
  resumed: number;
  epoch: number;
  storeMatches: boolean;
  imageMatches: boolean;
  /** With `--scenario all`: the scenario this takeover belongs to. */
  scenario?: Scenario;
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
}

/** Reject reasons the report counts as forged, and as corrupt. */
const FORGED_REASONS = new Set(['forged', 'unsigned']);
const CORRUPT_REASONS = new Set(['checksum', 'magic', 'truncated', 'malformed', 'version']);

interface AppEvent {
  ev: string;
  t: number;
  [k: string]: unknown;
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
    createInterface({ input: child.stdout! }).on('line', (line) => {
      let e: AppEvent;
      try {
        e = JSON.parse(line) as AppEvent;
      } catch {
        return;
      }
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

  /** Resolves with the first event matching `pred`; rejects on timeout or process exit. */
  waitFor(pred: (e: AppEvent) => boolean, what: string, timeoutMs = 30_000): Promise<AppEvent> {
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

  async kill(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
  }
}

function mulberry(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Runs a drill. Never throws for a guarantee violation: those are in `violations`. */
export async function runDrill(opts: DrillOptions): Promise<DrillReport> {
  const say = opts.progress ?? (() => undefined);
  const rand = mulberry(opts.seed);
  const app = `drill-${randomBytes(4).toString('hex')}`;
  const dir = await mkdtemp(join(tmpdir(), 'restartpoint-drill-'));
  const nodes = { a: new AppProcess('a'), b: new AppProcess('b') };
  const scenario = opts.scenario ?? 'kill';
  const relays: TestRelay[] = [];
  const relayArgs = (): string[] => {
    if (scenario === 'kill') return [];
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
    opts.nats,
    '--ttl',
    String(opts.leaseTtlMs),
    '--mode',
    opts.mode ?? 'delay-write',
    '--redis-url',
    opts.redisUrl ?? 'redis://127.0.0.1:6379',
    '--postgres-url',
    opts.postgresUrl ?? 'postgres://postgres@127.0.0.1:5432/test',
    ...(opts.key !== undefined ? ['--key', opts.key] : []),
  ];
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
  };
  const rejectedSeen = { forged: new Set<string>(), corrupt: new Set<string>() };

  // The ledger of what each primary was told: digests per checkpoint number, last acked.
  const digests = new Map<number, { digest: string; mirrorDigest: string }>();
  let lastAcked = 0;
  let lastEpoch = 0;
  let nextCp = 1;

  const track = (node: AppProcess): void => {
    node.on((e) => {
      if (e.ev === 'primary') nextCp = Number(e.resumed) + 1;
      if (e.ev === 'cp-begin')
        digests.set(nextCp++, { digest: String(e.digest), mirrorDigest: String(e.mirrorDigest) });
      if (e.ev === 'acked') lastAcked = Math.max(lastAcked, Number(e.checkpoint));
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
    track(nodes.a);
    track(nodes.b);
    if (scenario !== 'kill') {
      const n = scenario === 'relay-loss' ? 3 : 6;
      for (let i = 0; i < n; i++) relays.push(await TestRelay.single());
    }
    say(
      `drill: app ${app}, scenario ${scenario}, store ${opts.store} (${opts.mode ?? 'delay-write'}), seed ${opts.seed}, ${opts.kills} kill(s), lease ${opts.leaseTtlMs} ms`,
    );
    nodes.a.start(args('a'));
    const first = await nodes.a.waitFor((e) => e.ev === 'primary', 'primary role');
    lastEpoch = Number(first.epoch);
    nodes.b.start(args('b'));
    await nodes.b.waitFor((e) => e.ev === 'standby', 'standby role');
    let primary = nodes.a;
    let standby = nodes.b;
    if ((opts.injectForged ?? 0) > 0) {
      const targets = scenario === 'kill' ? [opts.nats] : relays.map((r) => r.urls.join(','));
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

    for (let kill = 1; kill <= opts.kills; kill++) {
      const drawn = KillPoints[Math.floor(rand() * KillPoints.length)]!;
      const point = opts.points?.length ? opts.points[(kill - 1) % opts.points.length]! : drawn;
      const afterSteps = 3 + Math.floor(rand() * 20);
      // Relays lost while the primary works: the ones the policy can spare.
      const lost = scenario === 'kill' ? [] : pickRelays(relays.length, 1, rand);
      for (const i of lost) await relays[i]!.servers[0]!.kill();
      report.relaysKilled += lost.length;
      if (lost.length > 0) say(`kill ${kill}/${opts.kills}: relay(s) ${lost.join(', ')} SIGKILLed`);
      primary.send({ cmd: 'arm', point, afterSteps });
      await primary.waitFor((e) => e.ev === 'at-killpoint', `kill point ${point}`);
      const ackedAtKill = lastAcked;
      const tKill = Date.now();
      await primary.kill();
      const took = await standby.waitFor((e) => e.ev === 'primary', 'takeover', 30_000 + opts.leaseTtlMs * 5);
      const takeoverMs = took.t - tKill;
      const resumed = Number(took.resumed);
      const epoch = Number(took.epoch);
      const expected = resumed === 0 ? undefined : digests.get(resumed);
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
      };
      if (resumed < ackedAtKill) {
        report.violations.push(
          `kill ${kill}: resumed checkpoint ${resumed} is older than the last acknowledged ${ackedAtKill}`,
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
      say(
        `kill ${kill}/${opts.kills}: ${point}, ${primary.id} killed, ${standby.id} took over in ${takeoverMs} ms (acked ${ackedAtKill}, resumed ${resumed}, epoch ${epoch})`,
      );
      // The lost relays come back (and are caught up); the killed node rejoins as the standby.
      for (const i of lost) await relays[i]!.servers[0]!.start();
      const killed = primary;
      primary = standby;
      standby = killed;
      standby.start(args(standby.id));
      await standby.waitFor((e) => e.ev === 'standby', 'standby role after restart');
    }
    report.ok = report.violations.length === 0 && report.takeovers.length === opts.kills;
  } catch (err) {
    report.violations.push(`drill aborted: ${(err as Error).message}`);
    report.ok = false;
  } finally {
    await Promise.all([nodes.a.kill(), nodes.b.kill()]);
    await Promise.all(relays.map((r) => r.destroy()));
    if (!opts.keep) {
      if (opts.store === 'redis' || opts.store === 'postgres') {
        await Promise.all(['a', 'b'].map((id) => clearStore(id, args(id)))).catch((err: unknown) => {
          say(`drill: could not clear the ${opts.store} store: ${(err as Error).message}`);
        });
      }
      await rm(dir, { recursive: true, force: true });
      await deleteApp(opts.nats, app).catch(() => undefined);
    }
  }
  return report;
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

/** Removes a drill app's stream and lease bucket. */
async function deleteApp(servers: string, app: string): Promise<void> {
  const nc = await connect({ servers, timeout: 3_000 });
  try {
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete(`RP_${app}`).catch(() => undefined);
    await jsm.streams.delete(`KV_rp-${app}-lease`).catch(() => undefined);
  } finally {
    await nc.close();
  }
}
