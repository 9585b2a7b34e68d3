/**
 * The drill's hostile injection (`--key K --inject-forged N`): forged and corrupted messages on
 * the app's subject, which a node in signed mode must reject, count and never apply.
 */
import { randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { EnvelopeCodec, parseClusterKey } from '../protocol/envelope.js';
import { FrameKind, encodeFrame } from '../protocol/frame.js';
import { encodeFence, encodeWrites } from '../protocol/records.js';
import { appNames } from '../protocol/subjects.js';
import { connectServers } from '../transport/inspect.js';

/**
 * Publishes `n` forged messages (alternately unsigned and signed with a random key of the
 * attacker's own; each a fence of a far newer epoch or a write the primary never made, which
 * would wreck the run if applied) and `n` corrupted ones (the newest genuine message on the
 * stream with a byte flipped, cut short, its magic broken, or its version changed under a
 * recomputed CRC) onto the app's subject on every target.
 */
export async function injectHostile(
  targets: string[],
  app: string,
  n: number,
  epoch: number,
): Promise<{ forged: number; corrupt: number }> {
  const names = appNames(app);
  const mallory = new EnvelopeCodec({ app, keys: parseClusterKey(randomBytes(32)) });
  const sent = { forged: 0, corrupt: 0 };
  for (const servers of targets) {
    const nc = await connectServers(servers, { timeoutMs: 5_000, maxReconnectAttempts: 10 });
    try {
      const js = jetstream(nc);
      const jsm = await jetstreamManager(nc);
      // A genuine signed message, taken before anything is injected.
      const info = await jsm.streams.info(names.stream);
      const genuine = (await jsm.streams.getMessage(names.stream, { seq: info.state.last_seq }))!.data;
      for (let i = 0; i < n; i++) {
        const frame =
          i % 2 === 0
            ? {
                kind: FrameKind.Fence,
                epoch: epoch + 1000 + i,
                seq: 1,
                checkpoint: 0,
                body: encodeFence({ nodeId: 'mallory' }),
              }
            : {
                kind: FrameKind.Writes,
                epoch,
                seq: 1_000_000 + i,
                checkpoint: 1,
                body: encodeWrites([{ op: 'put', key: 'acct:0', value: Buffer.from('999999999:0') }]),
              };
        const part = encodeFrame(app, frame, 1 << 20)[0]!;
        await js.publish(names.subject, i % 4 < 2 ? mallory.seal(part) : part);
        sent.forged++;
      }
      for (let i = 0; i < n; i++) {
        const bytes = Buffer.from(genuine);
        switch (i % 4) {
          case 0:
            bytes[bytes.length >> 1]! ^= 1 << (i % 8);
            break;
          case 1:
            bytes[0] = 0;
            bytes[1] = 0;
            break;
          case 2:
            bytes[2] ^= 0x7f;
            bytes.writeUInt32BE(crc32(bytes.subarray(0, bytes.length - 4)) >>> 0, bytes.length - 4);
            break;
        }
        await js.publish(names.subject, i % 4 === 3 ? bytes.subarray(0, bytes.length - 1 - (i % 13)) : bytes);
        sent.corrupt++;
      }
    } finally {
      await nc.close();
    }
  }
  return sent;
}
