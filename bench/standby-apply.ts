/**
 * store.<adapter>.standby_apply_*: can a standby keep up with its primary (issue 14)?
 *
 * One run: a primary (`Restartpoint.start`, the adapter under test) writes `WRITES` 1 KiB values
 * through `rp.store.put`, `CHECKPOINT_EVERY` at a time, then checkpoints a small state: an app
 * that declares a restart point every few writes (a request handler), the load under which a
 * standby that commits each checkpoint alone falls behind. Keys come from a set of 2 000, so
 * that checkpoints overwrite each other's keys as a live app's do. The time from its first put
 * to its last acknowledged checkpoint is the primary's replicated write rate. Then a fresh standby (same adapter kind, empty store)
 * starts and replays that very stream; the time from its `start()` to the moment it reports the
 * last checkpoint applied is its apply rate. Same bytes, same run, one after the other (the
 * machine has two cores: running them at once would measure the scheduler).
 *
 * Ratio `store.<adapter>.standby_apply_over_replicated` = apply rate ÷ replicated rate (goal
 * ≥ 1.5 for memory: a standby that applies faster than its primary produces cannot fall
 * further behind under a steady load).
 */
import { randomBytes } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { Restartpoint } from '../src/index.js';
import { medianOf, type BenchContext, type BenchRow, type Suite } from './harness.js';
import { extraKinds, localKinds, type StoreKind } from './store.js';

const WRITES = 5_000;
const CHECKPOINT_EVERY = 10;
const KEYS = 2_000;
const VALUE = randomBytes(1024);
/** Kinds measured: memory (the ratio's goal) and, since they are cheap, the others. */
const KINDS = ['memory', 'file', 'redis', 'postgres'];

async function dropApp(servers: string, app: string): Promise<void> {
  const nc = await connect({ servers });
  const jsm = await jetstreamManager(nc);
  await jsm.streams.delete(`RP_${app}`).catch(() => undefined);
  await jsm.streams.delete(`KV_rp-${app}-lease`).catch(() => undefined);
  await nc.close();
}

/** One run: the primary's replicated writes/s and the standby's applied writes/s, same stream. */
async function oneRun(ctx: BenchContext, kind: StoreKind): Promise<{ replicated: number; apply: number }> {
  const app = `bench-${randomBytes(4).toString('hex')}`;
  const a = await kind.make(ctx);
  const b = await kind.make(ctx);
  const rp = await Restartpoint.start({ app, nodeId: 'p', nats: { servers: ctx.nats }, storage: a.adapter });
  let standby: Promise<Restartpoint<unknown>> | undefined;
  try {
    const state = { i: 0, note: 'bench' };
    const t0 = performance.now();
    let last = 0;
    for (let i = 0; i < WRITES; i += CHECKPOINT_EVERY) {
      const batch: Promise<void>[] = [];
      for (let j = i; j < Math.min(WRITES, i + CHECKPOINT_EVERY); j++)
        batch.push(rp.store.put(`k${j % KEYS}`, VALUE));
      await Promise.all(batch);
      state.i = i;
      last = (await rp.checkpoint(state)).checkpoint;
    }
    const primaryMs = performance.now() - t0;
    let resolveApplied!: () => void;
    const applied = new Promise<void>((r) => (resolveApplied = r));
    const t1 = performance.now();
    standby = Restartpoint.start({
      app,
      nodeId: 's',
      nats: { servers: ctx.nats },
      storage: b.adapter,
      log: (e) => {
        if (e.msg === 'checkpoint applied' && Number(e.checkpoint) >= last) resolveApplied();
      },
    });
    standby.catch(() => undefined);
    await applied;
    const standbyMs = performance.now() - t1;
    return { replicated: (WRITES / primaryMs) * 1000, apply: (WRITES / standbyMs) * 1000 };
  } finally {
    // The primary releases the lease; the standby takes over and is closed in turn.
    await rp.close();
    if (standby) await (await standby).close();
    await a.cleanup();
    await b.cleanup();
    await dropApp(ctx.nats, app);
  }
}

/**
 * The suite. Its prefix is `store`, like the store suite's, so that `--only` with a ratio's
 * name (`store.memory.standby_apply_over_replicated`) selects it; its parts are filtered by name.
 */
export const standbyApplySuite: Suite = {
  prefix: 'store',
  description: "a standby's apply rate vs its primary's replicated write rate, same stream",
  async run(ctx) {
    const rows: BenchRow[] = [];
    const ratios: Record<string, number> = {};
    const kinds = [...localKinds, ...extraKinds].filter(
      (k) => KINDS.includes(k.name) && ctx.wants(`store.${k.name}.standby_apply`),
    );
    for (const kind of kinds) {
      ctx.progress(`  store.${kind.name}: primary then standby, ${WRITES} writes x ${ctx.repeat}`);
      const runs: { replicated: number; apply: number }[] = [];
      const ratio = await medianOf(ctx.repeat, async () => {
        const r = await oneRun(ctx, kind);
        runs.push(r);
        return r.apply / r.replicated;
      });
      const med = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
      rows.push({
        name: `store.${kind.name}.standby_apply_replicated`,
        value: med(runs.map((r) => r.replicated)),
        unit: 'writes/s',
        note: `primary, a checkpoint every ${CHECKPOINT_EVERY} writes`,
      });
      rows.push({
        name: `store.${kind.name}.standby_apply_applied`,
        value: med(runs.map((r) => r.apply)),
        unit: 'writes/s',
        note: 'standby replaying the same stream',
      });
      ratios[`store.${kind.name}.standby_apply_over_replicated`] = ratio;
    }
    return { rows, ratios };
  },
};
