/**
 * Issue 13 on the shared nats-server: a primary makes 2 000 checkpoints while a standby builds
 * bases every 500 and purges the relay below a window of 100 checkpoints. Then:
 * - brand-new nodes (file store, Redis store) join from the base: they load the store and the
 *   image at the base and read only the frames after it, then take over with the exact state;
 * - the builder restarts on its own file store and resumes from its own checkpoint (no clear);
 * - the relay holds a bounded number of messages, not the history.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { jetstreamManager } from '@nats-io/jetstream';
import { afterAll, describe, expect, it } from 'vitest';
import { fileAdapter } from '../../adapters/file/index.js';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { redisAdapter } from '../../adapters/redis/index.js';
import type { LogEvent, Restartpoint, StartOptions } from '../../src/index.js';
import { appNames } from '../../src/protocol/subjects.js';
import { runCompact } from '../../src/cli/commands/compact.js';
import { readHistory } from '../../src/cli/commands/status-history.js';
import { liveNodes, nodeOptions } from '../helpers/live.js';
import { NATS_URL } from '../helpers/nats.js';
import { startStandby } from '../helpers/standby.js';

const REDIS_URL = process.env.RESTARTPOINT_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const HISTORY = 2_000;
const KEYS = 200;

interface S {
  n: number;
  sum: number;
}

const dirs: string[] = [];
const tmp = (): string => {
  const d = mkdtempSync(join(tmpdir(), 'rp-history-'));
  dirs.push(d);
  return d;
};
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A node started as a standby, with its log events and a way to stop it. */
function standbyNode(o: StartOptions<S>): {
  events: LogEvent[];
  standing: Promise<void>;
  primary: Promise<Restartpoint<S>>;
  stop: () => Promise<void>;
  waitFor: (pred: (e: LogEvent) => boolean) => Promise<LogEvent>;
} {
  const events: LogEvent[] = [];
  const waiters: { pred: (e: LogEvent) => boolean; resolve: (e: LogEvent) => void }[] = [];
  const ac = new AbortController();
  const s = startStandby<S>({
    ...o,
    signal: ac.signal,
    log: (e) => {
      events.push(e);
      for (let i = waiters.length - 1; i >= 0; i--) {
        if (waiters[i]!.pred(e)) waiters.splice(i, 1)[0]!.resolve(e);
      }
    },
  });
  return {
    events,
    standing: s.standing,
    primary: s.primary,
    stop: async () => {
      ac.abort();
      await s.primary.catch(() => undefined);
      await o.storage.close();
    },
    waitFor: (pred) => {
      const hit = events.find(pred);
      if (hit) return Promise.resolve(hit);
      return new Promise((resolve, reject) => {
        waiters.push({ pred, resolve });
        setTimeout(() => {
          const tail = events.slice(-15).map((e) => JSON.stringify(e));
          reject(new Error(`not seen in 45 s; last events:\n${tail.join('\n')}`));
        }, 45_000).unref();
      });
    },
  };
}

describe('bases and retention: join and restart cost the state, not the history', () => {
  const live = liveNodes();

  it(`after ${HISTORY} checkpoints and a purge, new nodes join from the base and the builder restarts on its own store`, async () => {
    const app = live.app('hjoin');
    const opts = (nodeId: string, extra: Partial<StartOptions<S>>): StartOptions<S> =>
      nodeOptions<S>(app, nodeId, {
        initialState: () => ({ n: 0, sum: 0 }),
        leaseTtlMs: 800,
        base: { everyCheckpoints: 500 },
        retain: { checkpoints: 100 },
        ...extra,
      });
    const a = await live.start(opts('a', { storage: memoryAdapter(), base: { build: false } }));
    const bDir = tmp();
    const b = standbyNode(opts('b', { storage: fileAdapter({ dir: bDir }) }));
    await b.standing;

    let state: S = { n: 0, sum: 0 };
    for (let i = 1; i <= HISTORY; i++) {
      const k = i % KEYS;
      void a.store.put(`k${k}`, `v${i}`);
      state = { n: i, sum: state.sum + i };
      await a.checkpoint(state);
    }
    // Bases come every 500 checkpoints as the builder sees them (not at exact multiples): one
    // more, forced, at the end of the history.
    await b.waitFor((e) => e.msg === 'checkpoint applied' && e.checkpoint === HISTORY);
    expect(b.events.some((e) => e.msg === 'base durable' && (e.checkpoint as number) < HISTORY)).toBe(true);
    const forced = await runCompact({ nats: NATS_URL, app, timeoutMs: 30_000 });
    expect(forced).toMatchObject({ ok: true, builder: 'b', checkpoint: HISTORY });
    const built = await b.waitFor((e) => e.msg === 'base durable' && (e.checkpoint as number) === HISTORY);
    expect(built.keys).toBe(KEYS);
    expect(built.retainFrom).toBe(HISTORY - 100 + 1);

    // The relay was purged: it holds the window and the base, not 2 000 checkpoints of frames.
    const jsm = await jetstreamManager(live.nc);
    const info = await jsm.streams.info(appNames(app).stream);
    expect(info.state.first_seq).toBeGreaterThan(1);
    // ~3 messages per checkpoint (writes, image, seal): the window is ~300, plus the base.
    expect(info.state.messages).toBeLessThan(HISTORY);

    // A brand-new node on a file store joins from the base.
    const c = standbyNode(opts('c', { storage: fileAdapter({ dir: tmp() }), base: { build: false } }));
    const cStart = await c.waitFor((e) => e.msg === 'standby');
    expect((cStart.start as { from: string; base: number }).from).toBe('base');
    expect((cStart.start as { from: string; base: number }).base).toBe(HISTORY);
    // A brand-new node on Redis joins from the base too.
    const prefix = `hjoin-${process.pid}-${Date.now()}`;
    const d = standbyNode(
      opts('d', { storage: redisAdapter({ url: REDIS_URL, prefix }), base: { build: false } }),
    );
    const dStart = await d.waitFor((e) => e.msg === 'standby');
    expect((dStart.start as { from: string }).from).toBe('base');

    // The builder restarts on its own store: it resumes from its own checkpoint.
    await b.stop();
    const b2 = standbyNode(opts('b', { storage: fileAdapter({ dir: bDir }) }));
    const bStart = await b2.waitFor((e) => e.msg === 'standby');
    expect((bStart.start as { from: string; own: number }).from).toBe('own-store');
    expect((bStart.start as { from: string; own: number }).own).toBe(HISTORY);

    // One more checkpoint, then hand over in turn: each node resumes with the exact state.
    state = { n: HISTORY + 1, sum: state.sum + HISTORY + 1 };
    await a.store.put('last', 'x');
    await a.checkpoint(state);
    // An operator forces a base now; status shows it and what the relay retains.
    await b2.waitFor((e) => e.msg === 'checkpoint applied' && e.checkpoint === HISTORY + 1);
    const compacted = await runCompact({ nats: NATS_URL, app, timeoutMs: 30_000 });
    expect(compacted).toMatchObject({ ok: true, builder: 'b', checkpoint: HISTORY + 1 });
    const [h] = await readHistory([NATS_URL], app);
    expect(h).toMatchObject({
      reachable: true,
      baseCheckpoint: HISTORY + 1,
      oldestRetainedCheckpoint: HISTORY + 1 - 100 + 1,
      retainedCheckpoints: 100,
    });
    expect(h!.firstSeq).toBe(compacted.purgedBelow![0]);
    await b2.stop();
    await d.stop();
    await a.close();
    const cp = await c.primary;
    live.keep(cp);
    expect(cp.resumedFrom?.checkpoint).toBe(HISTORY + 1);
    expect(cp.state).toEqual(state);
    expect(Buffer.from((await cp.store.get('last'))!).toString()).toBe('x');
    for (let k = 0; k < KEYS; k++) {
      const last = HISTORY - ((HISTORY - k) % KEYS);
      expect(Buffer.from((await cp.store.get(`k${k}`))!).toString()).toBe(`v${last}`);
    }
    const redis = new Redis(REDIS_URL);
    const keys = await redis.keys(`{${prefix}}:*`);
    if (keys.length > 0) await redis.del(...keys);
    await redis.quit();
  }, 120_000);
});
