/**
 * The lifecycle every test file that runs real nodes on the shared nats-server needs: connect
 * (loudly failing when NATS is missing), close the nodes a test started, and delete the streams
 * and buckets of the apps the file used. Call `liveNodes()` once at the top of a test file.
 */
import { afterAll, afterEach, beforeAll } from 'vitest';
import type { NatsConnection } from '@nats-io/transport-node';
import { Restartpoint, type StartOptions } from '../../src/index.js';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from './nats.js';

/** What `liveNodes()` gives a test file. */
export interface LiveNodes {
  /** The connection to the shared server (inside tests and hooks). */
  readonly nc: NatsConnection;
  /** Apps whose streams and buckets are deleted after the file. */
  readonly apps: string[];
  /** A fresh app name, deleted after the file. */
  app(prefix?: string): string;
  /** `Restartpoint.start(o)`, closed after the test. */
  start<S>(o: StartOptions<S>): Promise<Restartpoint<S>>;
  /** Closes `rp` after the test (a node started some other way). */
  keep<T extends Restartpoint<any>>(rp: T): T;
}

/** Registers the hooks and returns the helpers. */
export function liveNodes(): LiveNodes {
  let nc: NatsConnection | undefined;
  const apps: string[] = [];
  const open: Restartpoint<any>[] = [];
  beforeAll(async () => {
    nc = await requireNats();
  });
  afterEach(async () => {
    await Promise.all(open.splice(0).map((rp) => rp.close().catch(() => undefined)));
  });
  afterAll(async () => {
    if (!nc) return;
    for (const app of apps) await deleteApp(nc, app);
    await nc.close();
  });
  return {
    get nc(): NatsConnection {
      if (!nc) throw new Error('liveNodes(): not connected yet; use nc inside tests and hooks');
      return nc;
    },
    apps,
    app(prefix?: string): string {
      const a = freshApp(prefix);
      apps.push(a);
      return a;
    },
    async start<S>(o: StartOptions<S>): Promise<Restartpoint<S>> {
      const rp = await Restartpoint.start(o);
      open.push(rp);
      return rp;
    },
    keep<T extends Restartpoint<any>>(rp: T): T {
      open.push(rp);
      return rp;
    },
  };
}

/** Start options of a test node: the shared server, a memory store, a 600 ms lease. */
export function nodeOptions<S>(
  app: string,
  nodeId: string,
  extra: Partial<StartOptions<S>> = {},
): StartOptions<S> {
  return { app, nodeId, nats: { servers: NATS_URL }, storage: memoryAdapter(), leaseTtlMs: 600, ...extra };
}
