/**
 * Publishing frames to the app's stream: each part one message with a dedupe id, many in
 * flight, never one round trip per write. A publish that fails is retried with the same id (the
 * stream drops the copy if the first one did land), so retries never duplicate a frame.
 */
import { ReplicationError } from '../errors.js';
import { encodeFrame, type Frame } from '../protocol/frame.js';
import { messageId } from '../protocol/subjects.js';
import type { NatsLink } from './connection.js';

/** Options of a publisher. */
export interface PublisherOptions {
  readonly app: string;
  readonly subject: string;
  /** Most parts awaiting their ack at once; publishing waits beyond it. */
  readonly maxInFlight?: number;
  /** How long one part may take, over all attempts, before the frame fails. */
  readonly timeoutMs?: number;
}

/** What a frame's publish resolves to: the stream sequence of its last part. */
export interface PublishResult {
  readonly streamSeq: number;
}

/** Publishes frames; `publish` resolves when every part of the frame is acked by the stream. */
export class FramePublisher {
  readonly #link: NatsLink;
  readonly #opts: Required<PublisherOptions>;
  #inFlight = 0;
  readonly #waiters: (() => void)[] = [];

  constructor(link: NatsLink, opts: PublisherOptions) {
    this.#link = link;
    this.#opts = { maxInFlight: 256, timeoutMs: 5_000, ...opts };
  }

  /** Parts currently awaiting an ack. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /**
   * Encodes and sends a frame. The returned promise settles when all parts are acked, or
   * rejects with `ReplicationError` once the timeout passed. Parts are handed to the client in
   * call order, so frames land in the stream in the order `publish` was called.
   */
  publish(frame: Frame): Promise<PublishResult> {
    const parts = encodeFrame(this.#opts.app, frame, this.#link.maxPayload);
    const acks = parts.map((bytes, i) =>
      this.#sendPart(bytes, messageId(this.#opts.app, frame.epoch, frame.seq, i)),
    );
    return Promise.all(acks).then((seqs) => ({ streamSeq: seqs[seqs.length - 1]! }));
  }

  /** Resolves when fewer than `maxInFlight` parts are pending: call before producing more. */
  async ready(): Promise<void> {
    while (this.#inFlight >= this.#opts.maxInFlight) {
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
  }

  /**
   * Sends one already-encoded message (a part, or an FEC shard) with its dedupe id; resolves
   * with its stream sequence once acked, retrying until the timeout.
   */
  send(bytes: Uint8Array, msgID: string): Promise<number> {
    return this.#sendPart(bytes, msgID);
  }

  async #sendPart(bytes: Uint8Array, msgID: string): Promise<number> {
    this.#inFlight++;
    const deadline = Date.now() + this.#opts.timeoutMs;
    let attempt = 0;
    try {
      for (;;) {
        attempt++;
        const left = deadline - Date.now();
        try {
          const ack = await this.#link.js.publish(this.#opts.subject, bytes, {
            msgID,
            timeout: Math.max(250, Math.min(left, 2_000)),
            retries: 1,
          });
          return ack.seq;
        } catch (err) {
          if (Date.now() >= deadline || this.#link.nc.isClosed()) {
            const msg = (err as Error).message;
            throw new ReplicationError(
              `frame part ${msgID} not acknowledged by the relay ${this.#link.servers} after ${attempt} attempt(s): ${
                /jetstream is not enabled|no responders/i.test(msg)
                  ? 'no stream answers on the frame subject (is the server running with -js, and was the stream deleted?)'
                  : msg
              }`,
              { cause: err },
            );
          }
          await new Promise((r) => setTimeout(r, Math.min(100 * attempt, 500)));
        }
      }
    } finally {
      this.#inFlight--;
      this.#waiters.shift()?.();
    }
  }
}
