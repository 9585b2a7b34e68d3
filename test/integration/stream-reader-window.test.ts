/**
 * A standby's stream reader and a burst of large messages (real nats-server): 120 parts of
 * 1 MB, as a keyframe of a state of a few hundred MB puts on a relay at once. Pulled by count
 * (512 messages a pull) they put more than nats-server's per-client pending limit (64 MB) on
 * the wire; the server dropped the rest and the reader stalled at 44-91 of 120. Pulled by bytes
 * (READ_WINDOW_BYTES) every message arrives, in order.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NatsConnection } from '@nats-io/transport-node';
import { appNames } from '../../src/protocol/subjects.js';
import { closeLink, ensureStream, openLink, type NatsLink } from '../../src/transport/connection.js';
import { READ_WINDOW_BYTES, StreamReader } from '../../src/transport/consumer.js';
import { FramePublisher } from '../../src/transport/publisher.js';
import { deleteApp, freshApp, NATS_URL, requireNats } from '../helpers/nats.js';

let nc: NatsConnection;
let link: NatsLink;
const apps: string[] = [];
beforeAll(async () => {
  nc = await requireNats();
  link = await openLink({ servers: NATS_URL }, 'reader-window-test');
});
afterAll(async () => {
  for (const app of apps) await deleteApp(nc, app).catch(() => undefined);
  await closeLink(link);
  await nc?.close();
});

describe('StreamReader', () => {
  it('reads a burst of 120 messages of 1 MB whole and in order (pulls bounded by bytes)', async () => {
    expect(READ_WINDOW_BYTES).toBeLessThan(64 * 1024 * 1024);
    const app = freshApp('rwin');
    apps.push(app);
    const names = appNames(app);
    await ensureStream(link, names, 1);
    const pub = new FramePublisher(link, { app, subject: names.subject, timeoutMs: 20_000 });
    const N = 120;
    const body = randomBytes(1_000_000);
    for (let i = 0; i < N; i += 20) {
      await Promise.all(Array.from({ length: 20 }, (_, j) => pub.send(body, `${app}.m${i + j}`)));
    }

    const reader = new StreamReader(link, names.stream);
    const seqs: number[] = [];
    let lastAt = performance.now();
    try {
      await new Promise<void>((resolve, reject) => {
        // No event marks a stall: a reader that got nothing new for 8 s is stuck (it reads all
        // 120 in well under a second here).
        const watch = setInterval(() => {
          if (performance.now() - lastAt > 8_000) {
            clearInterval(watch);
            reject(new Error(`the reader stalled after ${seqs.length} of ${N} messages`));
          }
        }, 250);
        void reader.start(
          1,
          (m) => {
            expect(m.data.byteLength).toBe(body.byteLength);
            seqs.push(m.streamSeq);
            lastAt = performance.now();
            if (seqs.length === N) {
              clearInterval(watch);
              resolve();
            }
          },
          (err) => {
            clearInterval(watch);
            reject(err instanceof Error ? err : new Error(String(err)));
          },
          names.subject,
        );
      });
    } finally {
      await reader.stop();
    }
    expect(seqs).toEqual(Array.from({ length: N }, (_, i) => i + 1));
  }, 60_000);
});
