/**
 * What `compact` and `switchover` share: each writes a request into an app's lease bucket and
 * waits for its answer there. `withAppBucket` connects to NATS, opens the app's lease bucket
 * (a `UsageError` naming the fix when there is none) and closes the connection when done;
 * `pollUntil` reads until the answer is there or the deadline passed.
 */
import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { UsageError } from '../../errors.js';
import { appNames, type AppNames } from '../../protocol/subjects.js';
import { connectServers, openLeaseBucket } from '../../transport/inspect.js';

/** Runs `fn` with the lease bucket of `app` on `nats`; the connection is closed afterwards. */
export async function withAppBucket<T>(
  nats: string,
  app: string,
  fn: (kv: KV, names: AppNames) => Promise<T>,
): Promise<T> {
  const names = appNames(app);
  let nc: NatsConnection;
  try {
    nc = await connectServers(nats, { timeoutMs: 5_000, maxReconnectAttempts: 3 });
  } catch (err) {
    throw new Error(`cannot connect to NATS at ${nats}: ${(err as Error).message}`);
  }
  try {
    const kv = await openLeaseBucket(nc, app);
    if (!kv) {
      throw new UsageError(
        `no app '${app}' on ${nats} (lease bucket ${names.leaseBucket} not found)`,
        'check --app and --nats (the server the app passes as `nats`)',
      );
    }
    return await fn(kv, names);
  } finally {
    await nc.close();
  }
}

/**
 * Calls `probe` every `everyMs` until it returns something other than `undefined` (returned),
 * or until `deadline` (a `performance.now()` time) passed (`undefined`).
 */
export async function pollUntil<T>(
  deadline: number,
  everyMs: number,
  probe: () => Promise<T | undefined>,
): Promise<T | undefined> {
  while (performance.now() < deadline) {
    const v = await probe();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return undefined;
}
