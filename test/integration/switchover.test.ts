/**
 * Planned switchover, the failover controller's transitions and presence records, against the
 * real nats-server: the primary hands over at its next checkpoint and no acknowledged write is lost.
 */
import { describe, expect, it } from 'vitest';
import { Kvm } from '@nats-io/kv';
import { ClosedError, FencedError, Restartpoint, type StartOptions } from '../../src/index.js';
import { UsageError } from '../../src/errors.js';
import type { Observer, Transition } from '../../src/observability/observer.js';
import { appNames } from '../../src/protocol/subjects.js';
import { readPresence, readSwitchover } from '../../src/transport/presence.js';
import { runSwitchover } from '../../src/cli/commands/switchover.js';
import { NATS_URL, freshApp } from '../helpers/nats.js';
import { liveNodes, nodeOptions } from '../helpers/live.js';

const live = liveNodes();
const { apps } = live;

type State = { n: number };

function recorder(): { observer: Observer; transitions: Transition[]; checkpoints: number[] } {
  const transitions: Transition[] = [];
  const checkpoints: number[] = [];
  return {
    transitions,
    checkpoints,
    observer: {
      transition: (t) => transitions.push(t),
      checkpoint: (c) => checkpoints.push(c.checkpoint),
    },
  };
}

function opts(app: string, nodeId: string, extra: Partial<StartOptions<State>> = {}): StartOptions<State> {
  return nodeOptions<State>(app, nodeId, { initialState: () => ({ n: 0 }), ...extra });
}

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function kvOf(app: string) {
  return new Kvm(live.nc).open(appNames(app).leaseBucket);
}

describe('planned switchover', () => {
  it('reports each state transition once, in order, and keeps a presence record per node', async () => {
    const app = freshApp('so');
    apps.push(app);
    const ra = recorder();
    const a = await Restartpoint.start(opts(app, 'a', { observer: ra.observer }));
    live.keep(a);
    expect(ra.transitions.map((t) => t.to)).toEqual([
      'starting',
      'standby',
      'claiming',
      'catching-up',
      'fencing',
      'restoring',
      'primary',
    ]);
    expect(ra.transitions.at(-1)).toMatchObject({ app, nodeId: 'a', epoch: a.epoch, from: 'restoring' });
    await a.checkpoint({ n: 1 });
    expect(ra.checkpoints).toEqual([1]);
    const rb = recorder();
    const bStart = Restartpoint.start(opts(app, 'b', { observer: rb.observer }));
    const kv = await kvOf(app);
    const nodes = await until('both presence records', async () => {
      const recs = await readPresence(kv);
      const b = recs.find(
        (r) => r.nodeId === 'b' && r.state === 'standby' && r.checkpoint === 1 && r.relays[0]?.frames === 0,
      );
      const pa = recs.find((r) => r.nodeId === 'a' && r.state === 'primary' && r.checkpoint === 1);
      return b && pa ? recs : undefined;
    });
    expect(nodes.find((r) => r.nodeId === 'b')!.relays).toHaveLength(1);
    expect(nodes.find((r) => r.nodeId === 'b')!.relays[0]).toMatchObject({
      connected: true,
      bytes: 0,
      seconds: 0,
      checkpoints: 0,
    });
    await a.close();
    const b = await bStart;
    live.keep(b);
    // a's record is gone after its clean close; b's shows it as primary.
    await until('a removed, b primary', async () => {
      const recs = await readPresence(kv);
      return !recs.some((r) => r.nodeId === 'a') &&
        recs.some((r) => r.nodeId === 'b' && r.state === 'primary')
        ? true
        : undefined;
    });
    expect(ra.transitions.at(-1)!.to).toBe('closed');
    expect(rb.transitions.map((t) => t.to)).toContain('primary');
  });

  it('hands over at the next checkpoint: the standby resumes from it and holds every acknowledged write', async () => {
    const app = freshApp('so');
    apps.push(app);
    const ra = recorder();
    const a = await Restartpoint.start(opts(app, 'a', { observer: ra.observer }));
    live.keep(a);
    const demoted = new Promise<FencedError>((r) => a.once('demoted', r));
    const bStart = Restartpoint.start(opts(app, 'b'));
    const kv = await kvOf(app);
    await until('b standby', async () =>
      (await readPresence(kv)).some((r) => r.nodeId === 'b' && r.state === 'standby') ? true : undefined,
    );
    // a works: a write and a checkpoint per step, until it is told it is no longer primary.
    const acked: string[] = [];
    let lastAck = 0;
    let refused: unknown;
    const work = (async () => {
      for (let i = 1; ; i++) {
        try {
          await a.store.put(`k${i}`, `v${i}`);
          acked.push(`k${i}`);
          lastAck = (await a.checkpoint({ n: i })).checkpoint;
        } catch (err) {
          refused = err;
          return;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    await until('a few checkpoints', async () => (lastAck >= 3 ? true : undefined));
    const report = await runSwitchover({ nats: NATS_URL, app, timeoutMs: 15_000, force: false });
    await work;
    const b = await bStart;
    live.keep(b);
    expect(report).toMatchObject({ ok: true, from: 'a', fromEpoch: a.epoch, to: 'b', toEpoch: b.epoch });
    expect(b.epoch).toBeGreaterThan(a.epoch);
    expect(refused).toBeInstanceOf(FencedError);
    expect((await demoted).message).toMatch(/switchover/);
    // No lost work: b resumes from a's last acknowledged checkpoint, with every acknowledged write.
    expect(b.resumedFrom?.checkpoint).toBe(lastAck);
    expect(report.resumedFrom).toBe(lastAck);
    expect(b.state).toEqual({ n: lastAck });
    for (const k of acked.slice(0, lastAck)) expect(await b.store.get(k)).toBeDefined();
    expect(ra.transitions.map((t) => t.to).slice(-2)).toEqual(['handing-over', 'demoted']);
    await expect(a.store.put('late', 'x')).rejects.toBeInstanceOf(FencedError);
    // The request is withdrawn once the new primary holds the role.
    await until('request cleared', async () => ((await readSwitchover(kv)) ? undefined : true));
  });

  it('refuses without a standby, and withdraws the request when the primary never checkpoints', async () => {
    const app = freshApp('so');
    apps.push(app);
    const a = await Restartpoint.start(opts(app, 'a'));
    live.keep(a);
    await expect(runSwitchover({ nats: NATS_URL, app, timeoutMs: 1_000, force: false })).rejects.toThrow(
      UsageError,
    );
    const r = await runSwitchover({ nats: NATS_URL, app, timeoutMs: 800, force: true });
    expect(r.ok).toBe(false);
    expect(r.error).toMatch(/next checkpoint/);
    expect(await readSwitchover(await kvOf(app))).toBeUndefined();
    // a is still primary and still works.
    expect(a.isPrimary).toBe(true);
    await expect(a.checkpoint({ n: 1 })).resolves.toMatchObject({ checkpoint: 1 });
  });

  it('options.signal aborts a standby that waits for the lease: start() rejects with ClosedError', async () => {
    const app = freshApp('so');
    apps.push(app);
    const a = await Restartpoint.start(opts(app, 'a'));
    live.keep(a);
    const ac = new AbortController();
    const rb = recorder();
    const bStart = Restartpoint.start(opts(app, 'b', { signal: ac.signal, observer: rb.observer }));
    const kv = await kvOf(app);
    await until('b standby', async () =>
      (await readPresence(kv)).some((r) => r.nodeId === 'b' && r.state === 'standby') ? true : undefined,
    );
    ac.abort();
    await expect(bStart).rejects.toBeInstanceOf(ClosedError);
    expect(rb.transitions.at(-1)!.to).toBe('closed');
    await until('b gone', async () =>
      (await readPresence(kv)).some((r) => r.nodeId === 'b') ? undefined : true,
    );
    expect(a.isPrimary).toBe(true);
  });
});
