/**
 * Readers leave nothing on the server (real nats-server). A stream reader that stops used to
 * close only its client-side iterator: the ephemeral consumer stayed, with its last pull (up to
 * READ_WINDOW_BYTES) outstanding, and the server went on serving that pull to an inbox nobody
 * read. Every node starts as a standby, so a node promoted to primary had the server send the
 * first 16 MiB of its own new frames into the void (97 messages, 17 MB of a 20 MB write burst),
 * and the server's work on them slowed the new primary's publishing (`store.memory`
 * replicated/publish 0.40 → 0.55 once fixed).
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { Restartpoint } from '../../src/index.js';
import { appNames } from '../../src/protocol/subjects.js';
import { closeLink, ensureStream, openLink, type NatsLink } from '../../src/transport/connection.js';
import { StreamReader } from '../../src/transport/consumer.js';
import { deleteApp, freshApp, NATS_URL, requireNats } from '../helpers/nats.js';

let nc: NatsConnection;
let link: NatsLink;
const apps: string[] = [];
beforeAll(async () => {
  nc = await requireNats();
  link = await openLink({ servers: NATS_URL }, 'reader-cleanup-test');
});
afterAll(async () => {
  for (const app of apps) await deleteApp(nc, app).catch(() => undefined);
  await closeLink(link);
  await nc?.close();
});

/**
 * Counts the consumers created on and deleted from `stream`, from the server's advisories.
 * `balanced()` resolves once as many were deleted as created (and at least one was), or rejects
 * after `ms` with the counts.
 */
function watchConsumers(stream: string): { balanced(ms: number): Promise<void>; sub: Subscription } {
  let created = 0;
  let deleted = 0;
  let wake: (() => void) | undefined;
  const sub = nc.subscribe(`$JS.EVENT.ADVISORY.CONSUMER.*.${stream}.>`, {
    callback: (_err, m) => {
      if (m.subject.includes('.CREATED.')) created++;
      if (m.subject.includes('.DELETED.')) deleted++;
      wake?.();
    },
  });
  return {
    sub,
    balanced: (ms) =>
      new Promise<void>((resolve, reject) => {
        const check = (): void => {
          if (created > 0 && deleted === created) {
            clearTimeout(timer);
            resolve();
          }
        };
        const timer = setTimeout(
          () => reject(new Error(`${created} consumer(s) created on ${stream}, ${deleted} deleted`)),
          ms,
        );
        wake = check;
        check();
      }),
  };
}

async function consumerNames(stream: string): Promise<string[]> {
  const jsm = await jetstreamManager(nc);
  const names: string[] = [];
  for await (const c of jsm.consumers.list(stream)) names.push(c.name);
  return names;
}

describe('stream readers clean up', () => {
  it('a stopped StreamReader deletes its consumer, so its outstanding pull is not served', async () => {
    const app = freshApp('rclean');
    apps.push(app);
    const names = appNames(app);
    await ensureStream(link, names, 1);
    const watch = watchConsumers(names.stream);
    try {
      const reader = new StreamReader(link, names.stream);
      // An empty stream: the reader's first pull waits on the server for messages.
      await reader.start(
        1,
        () => undefined,
        (err) => {
          throw err;
        },
      );
      await reader.stop();
      await watch.balanced(5_000);
      expect(await consumerNames(names.stream)).toEqual([]);
    } finally {
      watch.sub.unsubscribe();
    }
  });

  it('a node promoted to primary leaves no consumer of its standby days on the stream', async () => {
    const app = freshApp('rpromo');
    apps.push(app);
    const names = appNames(app);
    // Subscribed before the node starts: its standby reader is made and stopped inside start().
    const watch = watchConsumers(names.stream);
    const rp = await Restartpoint.start({
      app,
      nodeId: 'a',
      nats: { servers: NATS_URL },
      storage: memoryAdapter(),
    });
    try {
      const value = randomBytes(1024);
      for (let i = 0; i < 300; i++) await rp.store.put(`k${i}`, value);
      await rp.checkpoint({ n: 300 });
      await watch.balanced(5_000);
      expect(await consumerNames(names.stream)).toEqual([]);
    } finally {
      watch.sub.unsubscribe();
      await rp.close();
    }
  });
});
