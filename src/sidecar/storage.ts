/**
 * Turns the config's `storage` section into an adapter. The adapter modules are loaded by their
 * package names (`restartpoint/adapters/<kind>`), the way an app loads them: the core never
 * imports a concrete adapter, and a sidecar using file storage never loads `ioredis` or `pg`.
 */
import type { StorageAdapter } from '../storage/adapter.js';
import type { SidecarConfig } from '../config/load.js';

/** A new adapter for `storage` (each call makes a new instance: one per standby round). */
export async function createStorage(storage: SidecarConfig['storage']): Promise<StorageAdapter> {
  switch (storage.kind) {
    case 'memory': {
      const { memoryAdapter } = await import('restartpoint/adapters/memory');
      return memoryAdapter();
    }
    case 'file': {
      const { fileAdapter } = await import('restartpoint/adapters/file');
      return fileAdapter({
        dir: storage.dir!,
        ...(storage.fsync === undefined ? {} : { fsync: storage.fsync }),
      });
    }
    case 'redis': {
      const { redisAdapter } = await import('restartpoint/adapters/redis');
      return redisAdapter({
        prefix: storage.prefix!,
        ...(storage.url === undefined ? {} : { url: storage.url }),
      });
    }
    case 'postgres': {
      const { postgresAdapter } = await import('restartpoint/adapters/postgres');
      return postgresAdapter({
        connectionString: storage.connectionString!,
        ...(storage.table === undefined ? {} : { table: storage.table }),
      });
    }
  }
}
