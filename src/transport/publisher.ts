/**
 * Publishing messages (parts or shards, encoded by protocol/codec.ts) to one relay's stream: each
 * with its dedupe id, many in flight, never one round trip per write. A publish that fails is
 * retried with the same id (the stream drops the copy if the first one did land), so retries
 * never duplicate a frame.
 */
import { ReplicationError } from '../errors.js';
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

/** Publishes encoded messages to one relay; `send` resolves when the stream acked the message. */
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
