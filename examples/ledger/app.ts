/**
 * The sample app of `restartpoint drill`: a small ledger that moves amounts between accounts.
 *
 * Every step writes a few account balances to `rp.store` (and sometimes deletes one), mirrors
 * them in its state, and declares a restart point. The state holds a Map, a BigInt and a Date,
 * so a resume exercises the image format, and its `mirror` says exactly what the store must hold
 * at that restart point, so a resumed node can prove store and image agree.
 *
 * It speaks to the drill through JSON lines: events on stdout, commands on stdin. A command
 * `{"cmd":"arm","point":"inside-checkpoint","afterSteps":7}` makes it stop at that kill point
 * (announcing `at-killpoint`) so the drill's SIGKILL lands exactly there.
 *
 * Usage: node app.js --node a --app NAME --store file|memory|redis|postgres [--dir DIR]
 *          [--mode delay-write|snapshot] [--redis-url URL] [--postgres-url URL] [--nats URL] [--ttl MS]
 *          [--relays URL[|URL…][,…] --ack all|quorum|N --fec K+M:F] [--key K [--encrypt]]
 * `--key K` turns signed mode on (the cluster key, docs/security.md); `--encrypt` also encrypts.
 * Redis keys live under the prefix `<app>:<node>`, Postgres rows in the table `rp_<app>_<node>`.
 */
import { createHash } from 'node:crypto';
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
}

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

/** Digest of the whole image, in a canonical form. */
export function stateDigest(s: LedgerState): string {
  return createHash('sha256')
    .update(`${s.steps}|${s.total.toString()}|${s.lastStepAt.toISOString()}|${mirrorDigest(s.mirror)}`)
    .digest('hex');
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
  const storage = makeStore(values.store!, {
    dir: values.dir,
    redisUrl: values['redis-url']!,
    postgresUrl: values['postgres-url']!,
    // Per node: each node has its own store, as two hosts would.
    name: `${values.app}_${values.node}`,
  });

  let armed: { point: KillPoint; afterSteps: number } | undefined;
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
    } catch {
      emit({ ev: 'bad-command', line });
    }
  });

  emit({ ev: 'starting', node: values.node });
  const rejected: Record<string, number> = {};
  const rp = await Restartpoint.start<LedgerState>({
    app: values.app,
    nodeId: values.node,
    nats: { servers: values.nats },
    storage,
    initialState: () => ({ steps: 0, total: 0n, mirror: new Map(), lastStepAt: new Date(0) }),
    leaseTtlMs: Number(values.ttl),
    mode: values.mode as 'delay-write' | 'snapshot',
    ...relayOptions(values.relays, values.ack!, values.fec),
    ...dropShards(values['drop-shards'], values.node!),
    ...(values.key !== undefined ? { clusterKey: values.key, encrypt: values.encrypt } : {}),
    log: (e) => {
      if (e.msg === 'standby') emit({ ev: 'standby', node: values.node });
      else if (e.msg === 'frame rejected') {
        // Forwarded with this node's running count per reason (the drill's `rejected` figures).
        const reason = String(e.reason);
        rejected[reason] = (rejected[reason] ?? 0) + 1;
        emit({ ev: 'log', ...e, rejected });
      } else if (e.level === 'warn' || e.level === 'error') emit({ ev: 'log', ...e });
    },
  });
  // Stamp the takeover before the digests below: they read the whole store, which is the
  // drill's verification work, not part of the time to resume.
  const resumedAt = Date.now();
  rp.on('demoted', (err) => {
    emit({ ev: 'demoted', error: err.message });
    process.exit(3);
  });
  const state = rp.state;
  emit({
    ev: 'primary',
    node: values.node,
    epoch: rp.epoch,
    resumed: rp.resumedFrom?.checkpoint ?? 0,
    resumedEpoch: rp.resumedFrom?.epoch ?? 0,
    digest: stateDigest(state),
    storeDigest: await storeDigest(storage),
    mirrorDigest: mirrorDigest(state.mirror),
    takeover: rp.takeover,
    t: resumedAt,
  });

  const hold = (point: KillPoint): Promise<never> => {
    emit({ ev: 'at-killpoint', point, steps: state.steps });
    return new Promise<never>(() => undefined);
  };

  let stepsHere = 0;
  for (;;) {
    const r = rng(state.steps * 7919 + 17);
    const writes = 2 + Math.floor(r() * 6);
    const killNow = armed !== undefined && stepsHere >= armed.afterSteps;
    for (let i = 0; i < writes; i++) {
      const key = `acct:${Math.floor(r() * accounts)}`;
      if (r() < 0.1 && state.mirror.has(key)) {
        await rp.store.delete(key);
        state.mirror.delete(key);
      } else {
        const amount = BigInt(Math.floor(r() * 1000));
        const value = `${amount}:${state.steps}`;
        await rp.store.put(key, value);
        state.mirror.set(key, value);
        state.total += amount;
      }
      if (killNow && armed!.point === 'between-writes' && i === Math.floor(writes / 2))
        await hold('between-writes');
    }
    state.steps++;
    state.lastStepAt = new Date(1_700_000_000_000 + state.steps * 1000);
    const digest = stateDigest(state);
    emit({ ev: 'cp-begin', steps: state.steps, digest, mirrorDigest: mirrorDigest(state.mirror) });
    const pending = rp.checkpoint(state);
    if (killNow && armed!.point === 'inside-checkpoint') {
      pending.catch(() => undefined);
      await hold('inside-checkpoint');
    }
    let ack: { checkpoint: number; epoch: number } | undefined;
    for (let attempt = 1, p = pending; ack === undefined; attempt++) {
      try {
        ack = await p;
      } catch (err) {
        // Not acknowledged in time (a relay down, shards lost): declare the same restart point
        // again; it gets the next number, and once acknowledged covers the failed one too.
        if (!(err as { retryable?: boolean }).retryable || attempt >= 50) throw err;
        emit({ ev: 'retry', error: (err as Error).message });
        emit({ ev: 'cp-begin', steps: state.steps, digest, mirrorDigest: mirrorDigest(state.mirror) });
        p = rp.checkpoint(state);
      }
    }
    emit({ ev: 'acked', checkpoint: ack.checkpoint, epoch: ack.epoch, digest });
    stepsHere++;
    if (killNow && armed!.point === 'after-checkpoint') await hold('after-checkpoint');
  }
}

main().catch((err: unknown) => {
  emit({ ev: 'fatal', error: (err as Error).message, code: (err as { code?: string }).code });
  process.exit(1);
});
