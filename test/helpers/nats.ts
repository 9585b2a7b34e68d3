/**
 * NATS for tests: the shared server on 127.0.0.1:4222 (started by scripts/ensure-services.sh),
 * checked loudly: a test that needs it fails with a message, it never skips.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { randomBytes } from 'node:crypto';

/** URL of the shared test server. */
export const NATS_URL = process.env.RESTARTPOINT_TEST_NATS ?? 'nats://127.0.0.1:4222';

/** Connects to the shared server or throws an error that says how to start it. */
export async function requireNats(): Promise<NatsConnection> {
  try {
    const nc = await connect({ servers: NATS_URL, timeout: 3_000 });
    await jetstreamManager(nc);
    return nc;
  } catch (err) {
    throw new Error(
      `these tests need nats-server with JetStream at ${NATS_URL}: run 'bash scripts/ensure-services.sh' (or npm test, which does) — ${(err as Error).message}`,
    );
  }
}

/** A fresh app name, so tests never see each other's streams. */
export function freshApp(prefix = 't'): string {
  return `${prefix}-${randomBytes(5).toString('hex')}`;
}

/** Deletes an app's stream and lease bucket (the read side's `deleteApp`, src/transport/inspect.ts). */
export { deleteApp } from '../../src/transport/inspect.js';
