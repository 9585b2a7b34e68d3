/**
 * The sample app of `restartpoint drill`: a small ledger that moves amounts between accounts.
 *
 * Every step writes a few account balances to `rp.store` (and sometimes deletes one), mirrors
 * them in its state, and declares a restart point. The state holds a Map, a BigInt and a Date,
 * so a resume exercises the image format, and its `mirror` says exactly what the store must hold
 * at that restart point, so a resumed node can prove store and image agree.
 *
 * It speaks to the drill through JSON lines: events on stdout, commands on stdin (docs/drill.md):
 *
 * - `{"cmd":"arm","point":"inside-checkpoint","afterSteps":7}` makes it stop at that kill point
 *   (announcing `at-killpoint`) so the drill's SIGKILL, SIGSTOP or partition lands exactly there;
 * - `{"cmd":"release"}` lets a node held at its kill point go on (a paused or partitioned primary
 *   that comes back: it must find itself fenced);
 * - `{"cmd":"probe"}` makes a fenced node try one more checkpoint (`probe` event: it must reject
 *   with `ERR_FENCED`);
 * - `{"cmd":"verify"}` makes a primary check its store against its image at its next step
 *   boundary (`verified` event).
 *
 * A node that is demoted reports `demoted`, then `fenced` when its next write or checkpoint is
 * refused, and stays idle until it is killed. Every write value carries the writer's epoch
 * (`amount:step:epoch`), so work of a deposed primary is recognizable in any store.
 *
 * `--step-ms N` pauses N ms after each acknowledged step (default 0: as fast as it can).
 * `--state-mb N` adds N MB of ballast records to the state (a Map of 1 KiB strings), two of them
 * replaced at every step through `rp.track`, so checkpoints stay small deltas of a large image.
 *
 * Usage: node app.js --node a --app NAME --store file|memory|redis|postgres [--dir DIR]
 *          [--mode delay-write|snapshot] [--redis-url URL] [--postgres-url URL] [--nats URL] [--ttl MS]
 *          [--relays URL[|URL…][,…] --ack all|quorum|N --fec K+M:F] [--key K [--encrypt]]
 *          [--state-mb N] [--step-ms N]
 * `--key K` turns signed mode on (the cluster key, docs/security.md); `--encrypt` also encrypts.
 *
 * `--build 2` runs the ledger's second build (docs/upgrades.md, `drill --scenario upgrade`): its
 * state has a new shape, `stateVersion: 2`, with `balances` (account → amount as a BigInt)
 * derived from `mirror`, and a `migrate` that turns a build-1 image into it. `--broken-migrate`
 * makes that `migrate` throw (the bad release `restartpoint check-resume` must catch). The
 * `primary` event then also says `stateVersion`, `migratedFrom` (the image's version, or null),
 * `sourceDigest` (the build-1 digest of the image `migrate` received) and `balancesOk`.
 * Redis keys live under the prefix `<app>:<node>`, Postgres rows in the table `rp_<app>_<node>`.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { Restartpoint, type StorageAdapter } from 'restartpoint';
import { fileAdapter } from 'restartpoint/adapters/file';
import { memoryAdapter } from 'restartpoint/adapters/memory';
import { postgresAdapter } from 'restartpoint/adapters/postgres';
import { redisAdapter } from 'restartpoint/adapters/redis';

/** The ledger's in-memory state: the execution image. */
export interface LedgerState {
  steps: number;
  total: bigint;
  mirror: Map<string, string>;
  lastStepAt: Date;
  /** `--state-mb` ballast: record id → 1 KiB string. Empty without the flag. */
  ballast: Map<string, string>;
  /** Build 2 only (stateVersion 2): each account's amount, derived from `mirror`. */
  balances?: Map<string, bigint>;
}

/** The balances build 2 derives from the mirror (`amount:step:epoch` values). */
export function balancesOf(mirror: Map<string, string>): Map<string, bigint> {
  const out = new Map<string, bigint>();
  for (const [k, v] of mirror) out.set(k, BigInt(v.split(':')[0]!));
  return out;
}

/** Whether build 2's `balances` are exactly what `mirror` says. */
export function balancesAgree(s: LedgerState): boolean {
  const want = balancesOf(s.mirror);
  const have = s.balances;
  if (!have || have.size !== want.size) return false;
  for (const [k, v] of want) if (have.get(k) !== v) return false;
  return true;
}

/**
 * Build 2's `migrate`: a build-1 image (stateVersion 1) becomes a build-2 state, every build-1
 * field kept as it was and `balances` derived from the mirror.
 */
export function migrateLedger(image: unknown, fromVersion: number): LedgerState {
  if (fromVersion !== 1) throw new Error(`ledger build 2 migrates stateVersion 1 images, not ${fromVersion}`);
  const s = image as LedgerState;
  return { ...s, balances: balancesOf(s.mirror) };
}

/** Bytes of one ballast record (hex text). */
const BALLAST_RECORD = 1024;
/** Ballast records digested between two turns of the event loop (`BallastDigest.sliced`). */
const SLICE = 256;

type KillPoint = 'between-writes' | 'inside-checkpoint' | 'after-checkpoint';

function emit(ev: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ t: Date.now(), ...ev, pid: process.pid })}\n`);
}

/** Digest of what the store must hold: the mirror's entries in key order. */
export function mirrorDigest(mirror: Map<string, string>): string {
  const h = createHash('sha256');
  for (const k of [...mirror.keys()].sort()) h.update(`${k}\u0000${mirror.get(k)}\u0001`);
  return h.digest('hex');
}

/**
 * Digest of a set of ballast records, kept up to date per change: the XOR of every record's
 * sha256(id, value). Order-free, so replacing a record costs two hashes, not a pass over N MB.
 */
export class BallastDigest {
  readonly #acc = Buffer.alloc(32);

  /** The digest of every record of `ballast`, computed from scratch. */
  static of(ballast: Map<string, string>): BallastDigest {
    const d = new BallastDigest();
    for (const [k, v] of ballast) d.toggle(k, v);
    return d;
  }

  /**
   * `of`, in slices of `SLICE` records with the event loop let run between them: a new primary
   * digests its whole restored state while it holds a lease that its keeper must keep renewing
   * (10 MB took 250 ms on a loaded machine, 100 MB several seconds: in one block, a lease of
   * 300 ms, or 3 s, ran out and the new primary was demoted before its first checkpoint).
   */
  static async sliced(ballast: Map<string, string>): Promise<BallastDigest> {
    const d = new BallastDigest();
    let n = 0;
    for (const [k, v] of ballast) {
      d.toggle(k, v);
      if (++n % SLICE === 0) await new Promise((r) => setImmediate(r));
    }
    return d;
  }

  /** Adds a record, or removes it again (XOR). */
  toggle(id: string, value: string): void {
    const h = createHash('sha256').update(`${id}\u0000${value}`).digest();
    for (let i = 0; i < 32; i++) this.#acc[i]! ^= h[i]!;
  }

  hex(): string {
    return this.#acc.toString('hex');
  }
}

/** Digest of the whole image, in a canonical form. */
export function stateDigest(s: LedgerState, ballast: BallastDigest): string {
  return createHash('sha256')
    .update(
      `${s.steps}|${s.total.toString()}|${s.lastStepAt.toISOString()}|${mirrorDigest(s.mirror)}|${s.ballast.size}|${ballast.hex()}`,
    )
    .digest('hex');
}

/**
 * About `mb` MB of ballast: 1 KiB records of random hex text (compressible about 2:1), built a
 * few ms at a time. Built before `Restartpoint.start()`: `initialState()` runs once this node
 * holds the lease, and seconds of work there would starve its renewal.
 */
async function makeBallast(mb: number): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const n = Math.round((mb * 1024 * 1024) / BALLAST_RECORD);
  let t = performance.now();
  for (let i = 0; i < n; i++) {
    out.set(`r${i}`, randomBytes(BALLAST_RECORD / 2).toString('hex'));
    if (performance.now() - t > 5) {
      await new Promise((r) => setImmediate(r));
      t = performance.now();
    }
  }
  return out;
}

async function storeDigest(adapter: StorageAdapter): Promise<string> {
  const h = createHash('sha256');
  for (const k of await adapter.keys()) {
    const v = await adapter.get(k);
    h.update(`${k}\u0000${Buffer.from(v ?? new Uint8Array()).toString('utf8')}\u0001`);
  }
  return h.digest('hex');
}

/** A small deterministic PRNG (mulberry32), seeded per step so runs are reproducible. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * `--relays a|b,c,d`: relays separated by commas, the servers of one relay by `|`.
 * `--ack all|quorum|N`; `--fec K+M:F` (F = relays whose loss a checkpoint survives).
 */
function relayOptions(
  relays: string | undefined,
  ack: string,
  fec: string | undefined,
): Record<string, unknown> {
  if (!relays) return {};
  const out: Record<string, unknown> = {
    relays: relays.split(',').map((r) => ({ servers: r.split('|') })),
    ack: ack === 'all' || ack === 'quorum' ? ack : { count: Number(ack) },
  };
  const m = fec ? /^(\d+)\+(\d+)(?::(\d+))?$/.exec(fec) : null;
  if (m) out.fec = { data: Number(m[1]), parity: Number(m[2]), tolerate: Number(m[3] ?? m[2]) };
  return out;
}

/** `--drop-shards P`: a chaos hook dropping each shard with probability P (seeded per node). */
function dropShards(p: string | undefined, node: string): Record<string, unknown> {
  if (!p) return {};
  const chance = Number(p);
  const r = rng([...node].reduce((a, c) => a * 31 + c.charCodeAt(0), 7));
  return {
    faults: ({ msgId }: { msgId: string }) =>
      msgId.includes('.s') && r() < chance ? { drop: true } : undefined,
  };
}

/** The store a node runs on. */
export function makeStore(
  kind: string,
  o: { dir: string | undefined; redisUrl: string; postgresUrl: string; name: string },
): StorageAdapter {
  switch (kind) {
    case 'memory':
      return memoryAdapter();
    case 'file':
      return fileAdapter({ dir: o.dir! });
    case 'redis':
      return redisAdapter({ url: o.redisUrl, prefix: `rp:${o.name}` });
    case 'postgres':
      return postgresAdapter({
        connectionString: o.postgresUrl,
        table: `rp_${o.name.toLowerCase().replace(/[^a-z0-9_]/g, '_')}`.slice(0, 40),
      });
    default:
      throw new Error(`unknown store '${kind}': use file, memory, redis or postgres`);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      node: { type: 'string' },
      dir: { type: 'string' },
      store: { type: 'string', default: 'file' },
      app: { type: 'string' },
      nats: { type: 'string', default: 'nats://127.0.0.1:4222' },
      ttl: { type: 'string', default: '1000' },
      accounts: { type: 'string', default: '50' },
      mode: { type: 'string', default: 'delay-write' },
      clear: { type: 'boolean', default: false },
      relays: { type: 'string' },
      ack: { type: 'string', default: 'all' },
      fec: { type: 'string' },
      'drop-shards': { type: 'string' },
      key: { type: 'string' },
      encrypt: { type: 'boolean', default: false },
      'state-mb': { type: 'string', default: '0' },
      'step-ms': { type: 'string', default: '0' },
      build: { type: 'string', default: '1' },
      'broken-migrate': { type: 'boolean', default: false },
      'redis-url': { type: 'string', default: 'redis://127.0.0.1:6379' },
      'postgres-url': { type: 'string', default: 'postgres://postgres@127.0.0.1:5432/test' },
    },
  });
  if (!values.node || !values.app || (values.store === 'file' && !values.dir)) {
    process.stderr.write(
      'usage: app.js --node ID --app NAME --store file|memory [--dir DIR] [--nats URL] [--ttl MS]\n',
    );
    process.exit(2);
  }
  const accounts = Number(values.accounts);
  if (values.build !== '1' && values.build !== '2') {
    process.stderr.write(`--build '${values.build}' is not a build of the ledger: 1 or 2\n`);
    process.exit(2);
  }
  const build2 = values.build === '2';
  /** Build 2: what `migrate` was given (the build-1 digest of the image) and from which version. */
  let migrated: { from: number; sourceDigest: string } | undefined;
  const stateMb = Number(values['state-mb']);
  if (!(stateMb >= 0 && stateMb <= 1024)) {
    process.stderr.write(`--state-mb '${values['state-mb']}' is not a number of MB from 0 to 1024\n`);
    process.exit(2);
  }
  const stepMs = Number(values['step-ms']);
  if (!(stepMs >= 0 && stepMs <= 10_000)) {
    process.stderr.write(`--step-ms '${values['step-ms']}' is not a number of ms from 0 to 10000\n`);
    process.exit(2);
  }
  const storage = makeStore(values.store!, {
    dir: values.dir,
    redisUrl: values['redis-url']!,
    postgresUrl: values['postgres-url']!,
    // Per node: each node has its own store, as two hosts would.
    name: `${values.app}_${values.node}`,
  });

  let armed: { point: KillPoint; afterSteps: number } | undefined;
  let release: (() => void) | undefined;
  let verifyAsked = false;
  let probe: (() => void) | undefined;
  if (values.clear) {
    // Drill clean-up: empty this node's store (its Redis keys or Postgres rows) and leave.
    await storage.open();
    await storage.clear();
    await storage.close();
    return;
  }
  const lines = createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    try {
      const cmd = JSON.parse(line) as { cmd: string; point: KillPoint; afterSteps: number };
      if (cmd.cmd === 'arm') armed = { point: cmd.point, afterSteps: cmd.afterSteps };
      else if (cmd.cmd === 'release') release?.();
      else if (cmd.cmd === 'verify') verifyAsked = true;
      else if (cmd.cmd === 'probe') probe?.();
      else emit({ ev: 'bad-command', line });
    } catch {
      emit({ ev: 'bad-command', line });
    }
  });

  emit({ ev: 'starting', node: values.node });
  const rejected: Record<string, number> = {};
  // Standby lag: the last checkpoint applied, reported at most every 200 ms (event `applied`).
  let applied: { checkpoint: number; epoch: number; t: number } | undefined;
  let appliedSent = 0;
  const lagTimer = setInterval(() => {
    if (applied && applied.checkpoint !== appliedSent) {
      appliedSent = applied.checkpoint;
      emit({ ev: 'applied', ...applied });
    }
  }, 200);
  // The ballast is built before start(): `initialState()` runs while this node holds the lease,
  // and a 10 MB state built there blocks the event loop for longer than a short lease allows on
  // a loaded machine (the primary demoted itself in 'restoring'). Dropped once started.
  let ballast0: Map<string, string> | undefined = await makeBallast(stateMb);
  const rp = await Restartpoint.start<LedgerState>({
    app: values.app,
    nodeId: values.node,
    // Several servers (a cluster) separated by commas.
    nats: { servers: values.nats!.includes(',') ? values.nats!.split(',') : values.nats! },
    storage,
    initialState: () => ({
      steps: 0,
      total: 0n,
      mirror: new Map(),
      lastStepAt: new Date(0),
      ballast: ballast0 ?? new Map<string, string>(),
      ...(build2 ? { balances: new Map<string, bigint>() } : {}),
    }),
    ...(build2
      ? {
          stateVersion: 2,
          migrate: (image: unknown, from: number): LedgerState => {
            const s = image as LedgerState;
            migrated = { from, sourceDigest: stateDigest(s, BallastDigest.of(s.ballast)) };
            if (values['broken-migrate']) {
              throw new Error(`broken migrate: account totals do not add up at step ${s.steps}`);
            }
            return migrateLedger(image, from);
          },
        }
      : {}),
    // A large state is shipped as deltas; keyframes only when the chain grows past half of it.
    ...(stateMb > 0 ? { keyframeEvery: 100_000 } : {}),
    leaseTtlMs: Number(values.ttl),
    mode: values.mode as 'delay-write' | 'snapshot',
    ...relayOptions(values.relays, values.ack!, values.fec),
    ...dropShards(values['drop-shards'], values.node!),
    ...(values.key !== undefined ? { clusterKey: values.key, encrypt: values.encrypt } : {}),
    log: (e) => {
      if (e.msg === 'standby') emit({ ev: 'standby', node: values.node });
      else if (e.msg === 'checkpoint applied')
        applied = { checkpoint: Number(e.checkpoint), epoch: Number(e.epoch), t: Date.now() };
      else if (e.msg === 'frame rejected') {
        // Forwarded with this node's running count per reason (the drill's `rejected` figures).
        const reason = String(e.reason);
        rejected[reason] = (rejected[reason] ?? 0) + 1;
        emit({ ev: 'log', ...e, rejected });
      } else if (e.level === 'warn' || e.level === 'error' || process.env.RP_DRILL_NODE_LOGS)
        emit({ ev: 'log', ...e });
    },
  });
  // Stamp the takeover before the digests below: they read the whole store, which is the
  // drill's verification work, not part of the time to resume.
  const resumedAt = Date.now();
  ballast0 = undefined;
  clearInterval(lagTimer);
  let demoted: Error | undefined;
  rp.on('demoted', (err) => {
    demoted = err;
    emit({ ev: 'demoted', error: err.message, code: err.code });
  });
  const state = rp.track(rp.state);
  const epoch = rp.epoch;
  // The longest the event loop stood still while the digests below ran (the lease keeper runs
  // on it): `verifyStallMs` in the `primary` event.
  let verifyStallMs = 0;
  let ticks = 0;
  let tickAt = performance.now();
  const stallProbe = setInterval(() => {
    const t = performance.now();
    verifyStallMs = Math.max(verifyStallMs, t - tickAt);
    tickAt = t;
    ticks++;
  }, 5);
  const ballastStart = { at: performance.now(), ticks };
  const ballast = await BallastDigest.sliced(rp.state.ballast);
  // Timer turns while the ballast (nearly all of the state) was digested: 0 when in one block.
  const ballastTicks = ticks - ballastStart.ticks;
  const ballastMs = performance.now() - ballastStart.at;
  const digests = {
    digest: stateDigest(rp.state, ballast),
    storeDigest: await storeDigest(storage),
    mirrorDigest: mirrorDigest(rp.state.mirror),
  };
  clearInterval(stallProbe);
  verifyStallMs = Math.max(verifyStallMs, performance.now() - tickAt);
  emit({
    ev: 'primary',
    node: values.node,
    epoch,
    resumed: rp.resumedFrom?.checkpoint ?? 0,
    resumedEpoch: rp.resumedFrom?.epoch ?? 0,
    resumedSteps: rp.state.steps,
    ...digests,
    ballastRecords: rp.state.ballast.size,
    stateVersion: build2 ? 2 : 1,
    migratedFrom: migrated?.from ?? null,
    sourceDigest: migrated?.sourceDigest ?? null,
    balancesOk: build2 ? balancesAgree(rp.state) : null,
    takeover: rp.takeover,
    // Time spent on the digests above: the drill takes it out of the resume figures.
    verifyMs: Date.now() - resumedAt,
    verifyStallMs: Math.round(verifyStallMs),
    verifyBallastMs: Math.round(ballastMs),
    verifyBallastTicks: ballastTicks,
    t: resumedAt,
  });

  /** Writes this process made as primary (resolved `put`s and `delete`s). */
  let wt = 0;
  const hold = async (point: KillPoint): Promise<void> => {
    emit({ ev: 'at-killpoint', point, steps: state.steps, wt });
    // SIGKILL usually ends it here; a paused or partitioned primary is let go on afterwards.
    await new Promise<void>((r) => (release = r));
    release = undefined;
    emit({ ev: 'released', point, wt });
  };
  const ballastIds = [...rp.state.ballast.keys()];
  const resumedSteps = rp.state.steps;

  let stepsHere = 0;
  try {
    for (;;) {
      if (verifyAsked) {
        // At a step boundary, every write is covered by the last acknowledged checkpoint: the
        // store must be exactly the image's mirror, and hold no deposed primary's later work.
        verifyAsked = false;
        let foreign = 0;
        for (const k of await storage.keys()) {
          const v = Buffer.from((await storage.get(k)) ?? new Uint8Array()).toString('utf8');
          const [, step, e] = v.split(':');
          if (Number(e) !== epoch && Number(step) > resumedSteps) foreign++;
        }
        emit({
          ev: 'verified',
          epoch,
          steps: state.steps,
          storeDigest: await storeDigest(storage),
          mirrorDigest: mirrorDigest(rp.state.mirror),
          foreign,
        });
      }
      const r = rng(state.steps * 7919 + 17);
      const writes = 2 + Math.floor(r() * 6);
      const killNow = armed !== undefined && stepsHere >= armed.afterSteps;
      for (let i = 0; i < writes; i++) {
        const key = `acct:${Math.floor(r() * accounts)}`;
        if (r() < 0.1 && state.mirror.has(key)) {
          await rp.store.delete(key);
          wt++;
          state.mirror.delete(key);
          state.balances?.delete(key);
        } else {
          const amount = BigInt(Math.floor(r() * 1000));
          const value = `${amount}:${state.steps + 1}:${epoch}`;
          await rp.store.put(key, value);
          wt++;
          state.mirror.set(key, value);
          state.balances?.set(key, amount);
          state.total += amount;
        }
        if (killNow && armed?.point === 'between-writes' && i === Math.floor(writes / 2)) {
          armed = undefined;
          await hold('between-writes');
        }
      }
      for (let j = 0; j < 2 && ballastIds.length > 0; j++) {
        const id = ballastIds[Math.floor(r() * ballastIds.length)]!;
        const old = state.ballast.get(id)!;
        const next = randomBytes(BALLAST_RECORD / 2).toString('hex');
        state.ballast.set(id, next);
        ballast.toggle(id, old);
        ballast.toggle(id, next);
      }
      state.steps++;
      state.lastStepAt = new Date(1_700_000_000_000 + state.steps * 1000);
      const digest = stateDigest(rp.state, ballast);
      const mDigest = mirrorDigest(rp.state.mirror);
      // The moment the checkpoint resolved: that, not when this line is printed, is the ack.
      const declare = (): Promise<{ checkpoint: number; epoch: number; at: number }> => {
        emit({ ev: 'cp-begin', steps: state.steps, digest, mirrorDigest: mDigest, wt });
        return rp.checkpoint(state).then((a) => ({ ...a, at: Date.now() }));
      };
      const pending = declare();
      if (killNow && armed?.point === 'inside-checkpoint') {
        pending.catch(() => undefined);
        armed = undefined;
        await hold('inside-checkpoint');
      }
      let ack: { checkpoint: number; epoch: number; at: number } | undefined;
      for (let attempt = 1, p = pending; ack === undefined; attempt++) {
        try {
          ack = await p;
        } catch (err) {
          // Not acknowledged in time (a relay down, shards lost): declare the same restart point
          // again; it gets the next number, and once acknowledged covers the failed one too.
          if (!(err as { retryable?: boolean }).retryable || attempt >= 50) throw err;
          emit({ ev: 'retry', error: (err as Error).message });
          p = declare();
        }
      }
      emit({ ev: 'acked', checkpoint: ack.checkpoint, epoch: ack.epoch, digest, t: ack.at, wt });
      stepsHere++;
      // --step-ms: a paced app (a restart point every so often), not one checkpointing flat out.
      if (stepMs > 0) await new Promise((r) => setTimeout(r, stepMs));
      if (killNow && armed?.point === 'after-checkpoint') {
        armed = undefined;
        await hold('after-checkpoint');
      }
    }
  } catch (err) {
    if ((err as { code?: string }).code !== 'ERR_FENCED') throw err;
    // A deposed primary: refused as it should be. Stay idle; the drill probes, then kills it.
    emit({ ev: 'fenced', error: (err as Error).message, code: 'ERR_FENCED', demoted: !!demoted, wt });
    for (;;) {
      await new Promise<void>((r) => (probe = r));
      try {
        const a = await rp.checkpoint(state);
        emit({ ev: 'probe', acked: a.checkpoint, epoch: a.epoch, wt });
      } catch (e) {
        emit({ ev: 'probe', code: (e as { code?: string }).code, error: (e as Error).message, wt });
      }
    }
  }
}

main().catch((err: unknown) => {
  emit({ ev: 'fatal', error: (err as Error).message, code: (err as { code?: string }).code });
  process.exit(1);
});
