/**
 * Reading the app's stream in order from a given sequence, with an ordered consumer (ephemeral,
 * flow-controlled, recreated by the client after a reconnect without losing its place).
 */
import { DeliverPolicy, type Consumer, type ConsumerMessages } from '@nats-io/jetstream';
import type { NatsLink } from './connection.js';

/** One stored message. */
export interface StreamMessage {
  readonly streamSeq: number;
  readonly data: Uint8Array;
  /** When the relay stored it (wall-clock ms). */
  readonly timestampMs: number;
}

/** Bytes a reader asks a relay for at a time: well under nats-server's 64 MB pending limit. */
export const READ_WINDOW_BYTES = 16 * 1024 * 1024;

/** Reads a stream from `startSeq` (1 = the beginning) and hands each message to `onMessage`. */
export class StreamReader {
  readonly #link: NatsLink;
  readonly #stream: string;
  #messages: ConsumerMessages | undefined;
  #consumer: Consumer | undefined;
  #done: Promise<void> | undefined;
  #stopped = false;

  constructor(link: NatsLink, stream: string) {
    this.#link = link;
    this.#stream = stream;
  }

  /**
   * Starts reading. `onMessage` is awaited before the next message is handed over, so the
   * handler sees messages strictly in stream order. `onError` gets a handler or consumer failure;
   * reading stops after it.
   */
  async start(
    startSeq: number,
    onMessage: (m: StreamMessage) => Promise<void> | void,
    onError: (err: unknown) => void,
    /** Read only this subject of the stream (the frames, not the bases beside them). */
    filterSubject?: string,
  ): Promise<void> {
    const filter = filterSubject ? { filter_subjects: filterSubject } : {};
    const consumer = await this.#link.js.consumers.get(
      this.#stream,
      startSeq <= 1
        ? { deliver_policy: DeliverPolicy.All, ...filter }
        : { opt_start_seq: startSeq, ...filter },
    );
    // Short heartbeats: after a relay restarts, a stalled consumer is noticed and re-created in
    // seconds rather than the client's default half minute. Pulls are bounded by bytes (the
    // client then asks for at most 100 messages a pull, refilled at 75 %): a count alone let a
    // burst of 1 MB parts (a large keyframe) put more than nats-server's per-client pending limit
    // (64 MB) on the wire, the server dropped the rest, and the reader stalled at a gap.
    const messages = await consumer.consume({
      // At least two messages of the largest size the server takes (a pull smaller than one
      // message would never be served).
      max_bytes: Math.max(READ_WINDOW_BYTES, 2 * this.#link.maxPayload),
      idle_heartbeat: 1_000,
      expires: 5_000,
    });
    this.#messages = messages;
    this.#consumer = consumer;
    this.#done = (async () => {
      try {
        for await (const m of messages) {
          if (this.#stopped) break;
          await onMessage({ streamSeq: m.seq, data: m.data, timestampMs: m.info.timestampNanos / 1e6 });
        }
      } catch (err) {
        if (!this.#stopped) onError(err);
      }
    })();
  }

  /** Stops reading; resolves once the handler is no longer running. */
  async stop(): Promise<void> {
    this.#stopped = true;
    const messages = this.#messages;
    if (messages !== undefined && this.#consumer !== undefined) await endConsume(this.#consumer, messages);
    await this.#done;
  }
}

/**
 * Ends a `consume()`: closes the client's iterator and deletes the consumer on the server.
 * Closing alone leaves the ephemeral consumer with its last pull request outstanding, and the
 * server goes on serving that pull, up to its `max_bytes`, to an inbox nobody reads: a standby
 * promoted to primary had the server send the first 16 MiB of its own new frames into the void
 * (measured: 97 messages, 17 MB of a 20 MB write burst, nats-server 2.9), the server's work on
 * them taken from the new primary's publishing. The delete is not awaited: its request goes out
 * on the connection before anything sent after it, and a connection that is down takes the
 * consumer with it after its inactive threshold anyway.
 */
export async function endConsume(consumer: Consumer, messages: ConsumerMessages): Promise<void> {
  try {
    await messages.close();
  } catch {
    // already closed with the connection
  }
  try {
    consumer.delete().catch(() => undefined);
  } catch {
    // no consumer info to delete by (it was never created)
  }
}

/** The stream's last sequence (0 when empty). */
export async function lastStreamSeq(link: NatsLink, stream: string): Promise<number> {
  const info = await link.jsm.streams.info(stream);
  return info.state.last_seq;
}

/** The stream's state as one relay reports it. */
export interface StreamState {
  readonly messages: number;
  readonly bytes: number;
  readonly lastSeq: number;
  /** When the first and the last message were stored (wall-clock ms; 0 when empty). */
  readonly firstTimestampMs: number;
  readonly lastTimestampMs: number;
}

/** The stream's message count, bytes and last message. */
export async function streamState(link: NatsLink, stream: string): Promise<StreamState> {
  const { state } = await link.jsm.streams.info(stream);
  const ms = (iso: string | undefined) => {
    const t = iso ? Date.parse(iso) : 0;
    return Number.isFinite(t) ? t : 0;
  };
  return {
    messages: state.messages,
    bytes: state.bytes,
    lastSeq: state.last_seq,
    firstTimestampMs: ms(state.first_ts),
    lastTimestampMs: ms(state.last_ts),
  };
}

/**
 * The stream sequence of the last message on `subject` (0 when there is none): how far a reader
 * filtered on that subject must get to have read everything stored so far.
 */
export async function lastSubjectSeq(link: NatsLink, stream: string, subject: string): Promise<number> {
  try {
    const m = await link.jsm.streams.getMessage(stream, { last_by_subj: subject });
    return m?.seq ?? 0;
  } catch (err) {
    if (/no message found|not found|404|10037/i.test((err as Error).message)) return 0;
    throw err;
  }
}

/** Removes every message of the stream below sequence `seq` (first_seq becomes `seq`). */
export async function purgeBelow(link: NatsLink, stream: string, seq: number): Promise<number> {
  const r = await link.jsm.streams.purge(stream, { seq });
  return r.purged;
}

/** The stream's first and last sequence, message count and bytes. */
export async function streamBounds(
  link: NatsLink,
  stream: string,
): Promise<{ firstSeq: number; lastSeq: number; messages: number; bytes: number }> {
  const { state } = await link.jsm.streams.info(stream);
  return { firstSeq: state.first_seq, lastSeq: state.last_seq, messages: state.messages, bytes: state.bytes };
}
