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
