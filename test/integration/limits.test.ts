import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection } from '@nats-io/transport-node';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { LimitError } from '../../src/errors.js';
import { Restartpoint } from '../../src/index.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';

let nc: NatsConnection;
const app = freshApp('limits');

beforeAll(async () => {
  nc = await requireNats();
});
afterAll(async () => {
  await deleteApp(nc, app);
  await nc?.close();
});

describe('limits through Restartpoint.start', () => {
  it('limits.maxKeyBytes, maxValueBytes and maxImageBytes are refused with LimitError naming the option', async () => {
    const rp = await Restartpoint.start({
      app,
      nodeId: 'a',
      nats: { servers: NATS_URL },
      storage: memoryAdapter(),
      leaseTtlMs: 600,
      limits: { maxKeyBytes: 8, maxValueBytes: 16, maxImageBytes: 4096 },
    });
    try {
      await expect(rp.store.put('a-long-key', 'v')).rejects.toThrow(LimitError);
      await expect(rp.store.put('a-long-key', 'v')).rejects.toThrow(/limits.maxKeyBytes/);
      await expect(rp.store.delete('a-long-key')).rejects.toThrow(/limits.maxKeyBytes/);
      await expect(rp.store.put('k', 'x'.repeat(17))).rejects.toThrow(/limits.maxValueBytes/);
      await expect(rp.store.put('k', new Uint8Array(17))).rejects.toThrow(/limits.maxValueBytes/);
      await rp.store.put('k', 'x'.repeat(16));
      await expect(rp.checkpoint({ big: 'x'.repeat(8000) })).rejects.toThrow(/limits.maxImageBytes/);
      expect((await rp.checkpoint({ small: 1 })).checkpoint).toBe(1);
    } finally {
      await rp.close();
    }
  });
});

describe('limits.maxDepth through Restartpoint.start', () => {
  it('a state nested 3 000 deep is refused with LimitError naming limits.maxDepth; the node goes on', async () => {
    const depthApp = freshApp('limits-depth');
    const rp = await Restartpoint.start({
      app: depthApp,
      nodeId: 'a',
      nats: { servers: NATS_URL },
      storage: memoryAdapter(),
      leaseTtlMs: 600,
    });
    try {
      const nested = (n: number): unknown => {
        let v: unknown = 1;
        for (let i = 0; i < n; i++) v = { a: v };
        return v;
      };
      const err = await rp.checkpoint(nested(3000)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(LimitError);
      expect((err as LimitError).limit).toBe('limits.maxDepth');
      expect((err as Error).message).toMatch(/nested more than 1000 levels deep/);
      expect((await rp.checkpoint({ ok: nested(900) })).checkpoint).toBe(1);
      // Grown too deep between two checkpoints (the delta path): refused the same way.
      await expect(rp.checkpoint({ ok: nested(1200) })).rejects.toThrow(/limits.maxDepth/);
      expect((await rp.checkpoint({ ok: 2 })).checkpoint).toBe(2);
    } finally {
      await rp.close();
      await deleteApp(nc, depthApp);
    }
  });
});
