/**
 * `rp.store.put` no longer copies the caller's value itself: the replicator copies it into the
 * write frame before `put` returns (issue 16). An app that reuses one buffer for every put, and
 * refills it before the put settled, must still get exactly what it passed at each call in its
 * own store and on the standby that takes over (real nats-server).
 */
import { describe, expect, it } from 'vitest';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { liveNodes, nodeOptions } from '../helpers/live.js';
import { startStandby } from '../helpers/standby.js';

const live = liveNodes();

describe('rp.store.put with a reused buffer (real nats-server)', () => {
  it('every put keeps the bytes it was called with, in the primary store and on the standby', async () => {
    const app = live.app('reuse');
    const a = await live.start(nodeOptions<Record<string, number>>(app, 'a', { storage: memoryAdapter() }));
    const b = startStandby(nodeOptions<Record<string, number>>(app, 'b', { storage: memoryAdapter() }));
    await b.standing;
    // One buffer for every put, a view at an offset into a larger one, refilled right after each
    // call (before the put settled, before the store or the relay saw it).
    const backing = new ArrayBuffer(4096);
    const buf = new Uint8Array(backing, 100, 1500);
    const puts: Promise<void>[] = [];
    const expected = (i: number): Buffer => Buffer.alloc(1500, i % 251);
    for (let i = 0; i < 600; i++) {
      buf.fill(i % 251);
      puts.push(a.store.put(`k${i}`, buf));
      buf.fill(0xff);
      if (i === 299) puts.push(a.checkpoint({ half: 1 }).then(() => undefined));
    }
    await Promise.all(puts);
    await a.checkpoint({ done: 1 });
    for (let i = 0; i < 600; i += 37) {
      expect(Buffer.compare(Buffer.from((await a.store.get(`k${i}`))!), expected(i)), `primary k${i}`).toBe(
        0,
      );
    }
    await a.close();
    const took = live.keep(await b.primary);
    expect(took.state).toEqual({ done: 1 });
    for (let i = 0; i < 600; i++) {
      const got = await took.store.get(`k${i}`);
      expect(got && Buffer.compare(Buffer.from(got), expected(i)), `standby k${i}`).toBe(0);
    }
  });
});
