/**
 * Issue 13, faults of real processes on the shared nats-server (test/helpers/history-child.mjs,
 * the compiled node in a process of its own):
 * - the base builder is SIGKILLed mid-build, with some of its chunks on the relay and no
 *   manifest: a node that joins then does not use that base (nothing was purged for it either);
 *   the next builder answers the pending `compact` with a base of its own, and a fresh node joins
 *   from that one and takes over with the exact state;
 * - a live standby is SIGSTOPped while the primary checkpoints past the window and a base is
 *   built and the relay purged; on SIGCONT its next frames are gone: its watchdog sees it (a
 *   newer base whose window starts past its position, the relay's first message past it) and it
 *   rebuilds from the base in place, then applies the primary's next checkpoint.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { jetstreamManager } from '@nats-io/jetstream';
import { afterAll, describe, expect, it } from 'vitest';
import { memoryAdapter } from '../../adapters/memory/index.js';
import type { LogEvent, StartOptions } from '../../src/index.js';
import { runCompact } from '../../src/cli/commands/compact.js';
import { appNames } from '../../src/protocol/subjects.js';
import { liveNodes, nodeOptions } from '../helpers/live.js';
import { NATS_URL } from '../helpers/nats.js';
import { watchStandby, type WatchedStandby } from '../helpers/standby.js';

interface S {
  n: number;
}

type Ev = Record<string, unknown>;

const CHILD = fileURLToPath(new URL('../helpers/history-child.mjs', import.meta.url));
const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

/** A node in a child process; its log events can be awaited. */
function child(options: Record<string, unknown>, env: Record<string, string> = {}) {
  const proc = spawn(process.execPath, [CHILD, JSON.stringify(options)], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  children.push(proc);
  const events: Ev[] = [];
  const waiters: { pred: (e: Ev) => boolean; resolve: (e: Ev) => void }[] = [];
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  createInterface({ input: proc.stdout! }).on('line', (line) => {
    let e: Ev;
    try {
      e = JSON.parse(line) as Ev;
    } catch {
      return;
    }
    events.push(e);
    for (let i = waiters.length - 1; i >= 0; i--)
      if (waiters[i]!.pred(e)) waiters.splice(i, 1)[0]!.resolve(e);
  });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  return {
    proc,
    events,
    exited,
    waitFor: (pred: (e: Ev) => boolean, what: string): Promise<Ev> => {
      const hit = events.find(pred);
      if (hit) return Promise.resolve(hit);
      return new Promise((resolve, reject) => {
        waiters.push({ pred, resolve });
        void exited.then(() => reject(new Error(`${what}: the child exited; stderr: ${stderr}`)));
        const last = () =>
          events
            .slice(-30)
            .map((e) => JSON.stringify(e))
            .join('\n');
        setTimeout(
          () => reject(new Error(`${what}: not seen in 25 s; last events:\n${last()}`)),
          25_000,
        ).unref();
      });
    },
  };
}

/** An in-process standby whose log events can be awaited. */
const standby = (o: StartOptions<S>): WatchedStandby<S> => watchStandby<S>(o);

const applied = (cp: number) => (e: Ev | LogEvent) => e.msg === 'checkpoint applied' && e.checkpoint === cp;

describe('history with real processes killed and paused', () => {
  const live = liveNodes();

  it('a builder SIGKILLed mid-build: its half base is never used, the next builder makes one, a new node joins', async () => {
    const app = live.app('hkill');
    const common = {
      app,
      nats: { servers: NATS_URL },
      leaseTtlMs: 3_000,
      base: { everyCheckpoints: 1_000_000 },
      retain: { checkpoints: 10 },
    };
    const opts = (nodeId: string, extra: Partial<StartOptions<S>> = {}): StartOptions<S> =>
      nodeOptions<S>(app, nodeId, { ...common, initialState: () => ({ n: 0 }), ...extra });
    const a = await live.start(opts('a', { storage: memoryAdapter(), base: { build: false } }));
    // b (the builder: smallest id among the standbys) holds after its first chunk is durable.
    const b = child(
      { ...common, nodeId: 'b', store: 'memory' },
      { RESTARTPOINT_TEST_BASE_HOLD_AFTER_CHUNKS: '1' },
    );
    const c = standby(opts('c'));
    await Promise.all([b.waitFor((e) => e.msg === 'standby', 'b standing'), c.standing]);
    // 40 checkpoints of 40 values of 1 KiB: about 1.6 MB of store, four chunks of entries.
    const value = 'v'.repeat(1024);
    for (let n = 1; n <= 40; n++) {
      for (let k = 0; k < 40; k++) void a.store.put(`k${n}.${k}`, `${n}:${value}`);
      await a.checkpoint({ n });
    }
    await Promise.all([b.waitFor(applied(40), 'b at 40'), c.waitFor(applied(40))]);

    const compacted = runCompact({ nats: NATS_URL, app, timeoutMs: 30_000 });
    const held = await b.waitFor((e) => e.msg === 'base held', 'b mid-build');
    expect(held).toMatchObject({ checkpoint: 40, durable: 1 });
    expect(Number(held.chunks)).toBeGreaterThan(2);
    b.proc.kill('SIGKILL');
    await b.exited;

    // The relay holds b's first chunk, no manifest, and nothing was purged.
    const jsm = await jetstreamManager(live.nc);
    const names = appNames(app);
    const info = await jsm.streams.info(names.stream, { subjects_filter: names.baseSubject });
    expect(info.state.subjects?.[names.baseSubject]).toBeGreaterThan(0);
    expect(info.state.first_seq).toBe(1);
    // A node joining now does not load the half base: it replays from the first message.
    const j1 = standby(opts('j1', { base: { build: false } }));
    const start1 = await j1.waitFor((e) => e.msg === 'start path');
    expect(start1).toMatchObject({ from: 'relays', base: undefined });
    await j1.waitFor(applied(40));

    // Once b's presence is stale, c builds and answers the request b never answered.
    expect(await compacted).toMatchObject({ ok: true, builder: 'c', checkpoint: 40 });
    const j2store = memoryAdapter();
    const j2 = standby(opts('j2', { storage: j2store, base: { build: false } }));
    const start2 = await j2.waitFor((e) => e.msg === 'start path');
    expect(start2).toMatchObject({ from: 'base', base: 40 });
    await a.store.put('last', 'x');
    await a.checkpoint({ n: 41 });
    await j2.waitFor(applied(41));
    await Promise.all([c.stop(), j1.stop()]);
    await a.close();
    const rp = live.keep(await j2.primary);
    expect(rp.resumedFrom?.checkpoint).toBe(41);
    expect(rp.state).toEqual({ n: 41 });
    expect((await j2store.keys()).length).toBe(40 * 40 + 1);
    expect(Buffer.from((await j2store.get('k1.0'))!).toString()).toBe(`1:${value}`);
    expect(Buffer.from((await j2store.get('k40.39'))!).toString()).toBe(`40:${value}`);
  }, 60_000);

  it('a standby paused past the purge point rebuilds from the base in place when it wakes', async () => {
    const app = live.app('hlag');
    const common = {
      app,
      nats: { servers: NATS_URL },
      leaseTtlMs: 3_000,
      base: { everyCheckpoints: 1_000_000 },
      retain: { checkpoints: 10 },
    };
    const opts = (nodeId: string, extra: Partial<StartOptions<S>> = {}): StartOptions<S> =>
      nodeOptions<S>(app, nodeId, { ...common, initialState: () => ({ n: 0 }), ...extra });
    const a = await live.start(opts('a', { storage: memoryAdapter(), base: { build: false } }));
    const b = standby(opts('b'));
    const z = child({ ...common, nodeId: 'z', store: 'memory', base: { build: false } });
    await Promise.all([b.standing, z.waitFor((e) => e.msg === 'standby', 'z standing')]);
    for (let n = 1; n <= 20; n++) {
      void a.store.put(`k${n % 7}`, `v${n}`);
      await a.checkpoint({ n });
    }
    await z.waitFor(applied(20), 'z at 20');

    // z sleeps; the primary goes on past the window (900 messages: more than z's consumer had
    // asked for before it slept), b makes a base at 320 and purges below checkpoint 311.
    z.proc.kill('SIGSTOP');
    for (let n = 21; n <= 320; n++) {
      void a.store.put(`k${n % 7}`, `v${n}`);
      await a.checkpoint({ n });
    }
    await b.waitFor(applied(320));
    expect(await runCompact({ nats: NATS_URL, app, timeoutMs: 30_000 })).toMatchObject({
      ok: true,
      builder: 'b',
      checkpoint: 320,
    });
    z.proc.kill('SIGCONT');
    const behind = await z.waitFor((e) => e.msg === 'standby behind the purge', 'z watchdog');
    expect(behind).toMatchObject({ base: 320, retainFrom: 311 });
    expect(Number(behind.checkpoint)).toBeLessThan(310);
    const rebuilt = await z.waitFor((e) => e.msg === 'start path' && e.base === 320, 'z rebuilt');
    expect(rebuilt).toMatchObject({ from: 'base' });
    await a.store.put('last', 'x');
    await a.checkpoint({ n: 321 });
    await z.waitFor(applied(321), 'z at 321');
    // z takes over with the exact state.
    await b.stop();
    await a.close();
    const primary = await z.waitFor((e) => e.ev === 'primary', 'z primary');
    expect(primary).toMatchObject({ checkpoint: 321, state: { n: 321 } });
  }, 60_000);
});
