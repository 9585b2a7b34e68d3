/**
 * The codec: the one pipeline between frames and relay messages, used by both sides.
 *
 * ```text
 * encode:  Frame ─► parts (frame.ts) ─► [FEC shards (fec/shard.ts)] ─► [envelope seal] ─► messages
 * decode:  message ─► [envelope open] ─► part | shard ─► (witness) ─► [FEC rebuild] ─► parts ─► Frame
 * ```
 *
 * `FrameCodec.encode` turns a frame into the messages to publish, each with the relay it goes to
 * and its dedupe id. `FrameCodec.open` turns one message back into a `DecodedMessage` (its typed
 * `PartKey` and who witnesses it) or throws a `FrameError` rejection; `FrameDecoder.add` joins
 * decoded messages into whole frames (rebuilding FEC parts as soon as any k shards are in,
 * joining multi-part frames) and enforces `maxFrameBytes`. Nothing past `open` sees a byte that
 * the cluster key did not vouch for (signed mode).
 */
import { FrameError, FrameRejectReason } from '../errors.js';
import { ShardAssembler } from '../fec/assembler.js';
import { relayOfShard } from '../fec/placement.js';
import type { BufferPool } from '../fec/pool.js';
import {
  decodeShard,
  encodeShards,
  encodeShardsPooled,
  maxPartBytes,
  shardMessageId,
  type FecScheme,
  type Shard,
} from '../fec/shard.js';
import type { EnvelopeCodec } from './envelope.js';
import {
  PartAssembler,
  decodePart,
  encodeFramePart,
  frameLayout,
  type Frame,
  type FramePart,
} from './frame.js';

/** A large frame's parts are encoded this many ms at a time (see `encode`). */
const ENCODE_SLICE_MS = 5;
import { messageId } from './subjects.js';

/** Which part of which frame a message carries: the frame's (epoch, seq) and the part index. */
export interface PartKey {
  readonly epoch: number;
  readonly seq: number;
  readonly part: number;
}

/** One message to publish: its bytes, its dedupe id and the relay it goes to. */
export interface OutMessage {
  /** Index of the relay (config order) this message goes to. */
  readonly relay: number;
  readonly bytes: Uint8Array;
  readonly msgId: string;
}

/** The messages of one part of a frame. */
export interface EncodedPart {
  readonly key: PartKey;
  readonly messages: OutMessage[];
  /**
   * Set when the messages are views into a buffer of the codec's `pool` (FEC, unsigned): gives
   * it back. Call it only once nothing can read any of the messages any more — every publish of
   * every message resolved with an ack, none waits in a re-send backlog, and none ever failed
   * (see `ShardSet.release` and src/fec/pool.ts). When in doubt, never call it: the buffer is
   * then left to the garbage collector.
   */
  readonly release?: () => void;
}

/**
 * One message, opened and decoded: a part (no FEC) or a shard (FEC). `shard` is set exactly when
 * FEC is in use.
 */
export type DecodedMessage =
  | { readonly key: PartKey; readonly part: FramePart; readonly shard?: undefined }
  | { readonly key: PartKey; readonly shard: Shard; readonly part?: undefined };

/** Options of a codec: the same on the primary and its standbys. */
export interface CodecOptions {
  readonly app: string;
  /** Number of relays (messages are addressed by relay index). */
  readonly relays: number;
  /** Largest message the relays accept (the smallest `max_payload` of them), envelope included. */
  readonly maxPayload: number;
  /** FEC in use: every part goes out as k + m shards, shard i to relay i mod N. */
  readonly fec?: FecScheme;
  /** Signed mode: every message is sealed on encode and opened (verified) on decode. */
  readonly envelope?: EnvelopeCodec;
  /**
   * FEC: `encode` takes the shard messages' buffers from this pool (no allocation in the steady
   * state). Unsigned, each `EncodedPart` then carries a `release` the caller must respect;
   * signed, the shards are sealed (copied) and the buffer goes back at once. `encodePart`
   * (backfill) never uses it.
   */
  readonly pool?: BufferPool;
}

/** Frames to messages and back. Stateless: `FrameDecoder` holds the joining state. */
export class FrameCodec {
  readonly #o: CodecOptions;
  /** Largest part body: what fits a message after the envelope (and the shard headers, with FEC). */
  readonly partBytes: number;

  constructor(o: CodecOptions) {
    this.#o = o;
    // Signed mode: every message grows by the envelope, so parts and shards are cut smaller.
    const payload = o.maxPayload - (o.envelope?.overhead ?? 0);
    this.partBytes = o.fec ? maxPartBytes(payload, o.fec, o.app.length) : payload;
  }

  /**
   * The messages of one part for the relays in `relays` only (backfill): the same bytes
   * `encode` sends them, sealed for each (signed mode). `part` is the encoded part (frame.ts).
   */
  async encodePart(key: PartKey, part: Uint8Array, relays: readonly number[]): Promise<OutMessage[]> {
    const { app, envelope, fec } = this.#o;
    const want = new Set(relays);
    if (fec) {
      const shards = await encodeShards(app, key, part, fec);
      const out: OutMessage[] = [];
      for (const [j, bytes] of shards.entries()) {
        const relay = relayOfShard(j, this.#o.relays);
        if (!want.has(relay)) continue;
        out.push({
          relay,
          bytes: envelope ? envelope.seal(bytes, relay) : bytes,
          msgId: shardMessageId(app, key.epoch, key.seq, key.part, j),
        });
      }
      return out;
    }
    const list = [...want];
    const sealed = envelope ? envelope.sealFor(part, list) : undefined;
    const msgId = messageId(app, key.epoch, key.seq, key.part);
    return list.map((relay, i) => ({ relay, bytes: sealed ? sealed[i]! : part, msgId }));
  }

  /** Largest message this codec produces (the relays' smallest `max_payload`, envelope included). */
  get maxPayload(): number {
    return this.#o.maxPayload;
  }

  /** Whether messages are FEC shards. */
  get fec(): boolean {
    return this.#o.fec !== undefined;
  }

  /**
   * The messages of `frame`, part by part: each part to every relay, or (FEC) each part as
   * k + m shards, shard i to relay i mod N.
   */
  async encode(frame: Frame): Promise<EncodedPart[]> {
    const { app, envelope, fec, relays, pool } = this.#o;
    const layout = frameLayout(app, frame, this.partBytes);
    const out: EncodedPart[] = [];
    let turn = performance.now();
    for (let i = 0; i < layout.parts; i++) {
      // A large frame (a keyframe of a large state: tens of MB to copy and checksum) gives the
      // event loop a turn every few ms, so lease renewal does not starve (issue 14).
      if (i > 0 && performance.now() - turn > ENCODE_SLICE_MS) {
        await new Promise((r) => setImmediate(r));
        turn = performance.now();
      }
      const part = encodeFramePart(layout, frame, i);
      const key: PartKey = { epoch: frame.epoch, seq: frame.seq, part: i };
      if (fec) {
        const pooled = pool ? await encodeShardsPooled(app, key, part, fec, pool) : undefined;
        const shards = pooled ? pooled.shards : await encodeShards(app, key, part, fec);
        const messages = shards.map((bytes, j) => ({
          relay: relayOfShard(j, relays),
          // Signed: bound to the relay it goes to (envelope flag bit 1), so a copy replayed onto
          // another relay's stream is refused there.
          bytes: envelope ? envelope.seal(bytes, relayOfShard(j, relays)) : bytes,
          msgId: shardMessageId(app, frame.epoch, frame.seq, i, j),
        }));
        // Sealed envelopes are copies: the shard buffer is free again right away.
        if (pooled && envelope) pooled.release();
        out.push(pooled && !envelope ? { key, messages, release: pooled.release } : { key, messages });
      } else {
        const msgId = messageId(app, frame.epoch, frame.seq, i);
        const all = Array.from({ length: relays }, (_, relay) => relay);
        // Signed: one envelope per relay, bound to it (they share the body hash and, encrypted,
        // the nonce and ciphertext). Unsigned: every relay gets the same bytes.
        const sealed = envelope ? envelope.sealFor(part, all) : undefined;
        out.push({
          key,
          messages: all.map((relay) => ({ relay, bytes: sealed ? sealed[relay]! : part, msgId })),
        });
      }
    }
    return out;
  }

  /**
   * Opens one message: verifies the envelope (signed mode), then decodes the part or shard.
   * Throws `FrameError` (the rejection, by reason) for anything that is not a genuine, intact
   * message of this app. `relay`: the index of the relay it was read from; a signed message
   * sealed for another relay is refused as `forged` (a copy replayed from another relay's stream).
   */
  open(data: Uint8Array, relay?: number): DecodedMessage {
    return this.openInner(data, relay).message;
  }

  /**
   * `open`, also handing back the inner bytes (the encoded part or shard, out of its envelope):
   * what a backfill re-seals for another relay.
   */
  openInner(data: Uint8Array, relay?: number): { message: DecodedMessage; inner: Uint8Array } {
    const { app, envelope, fec } = this.#o;
    const bytes = envelope ? envelope.open(data, relay) : data;
    if (fec) {
      const shard = decodeShard(bytes, app);
      return {
        message: { key: { epoch: shard.epoch, seq: shard.seq, part: shard.part }, shard },
        inner: bytes,
      };
    }
    const part = decodePart(bytes, app);
    return { message: { key: { epoch: part.epoch, seq: part.seq, part: part.part }, part }, inner: bytes };
  }

  /** The app this codec encodes for. */
  get app(): string {
    return this.#o.app;
  }
}

/** Options of a `FrameDecoder`. */
export interface FrameDecoderOptions {
  readonly app: string;
  /** Largest frame body accepted (all parts joined); a larger one is refused as `limit`. */
  readonly maxFrameBytes: number;
  /** Sees every part rebuilt from FEC shards (how many parts its frame has, say). */
  readonly onRebuilt?: (part: FramePart) => void;
}

/**
 * Joins decoded messages into whole frames: FEC shards into parts (as soon as any k valid shards
 * of a part are in), parts into frames. One per standby run.
 */
export class FrameDecoder {
  readonly #o: FrameDecoderOptions;
  readonly #parts = new PartAssembler();
  #shards: ShardAssembler | undefined;

  constructor(o: FrameDecoderOptions) {
    this.#o = o;
  }

  /**
   * Adds one decoded message; resolves the whole frame once its last missing piece is in,
   * `undefined` while pieces are missing (or for a shard that came after its part was rebuilt).
   * Throws `FrameError` for a piece that disagrees with its siblings, or a frame over the limit.
   */
  async add(m: DecodedMessage): Promise<Frame | undefined> {
    let part = m.part;
    if (m.shard) {
      this.#shards ??= new ShardAssembler({ app: this.#o.app });
      const bytes = await this.#shards.add(m.shard);
      if (!bytes) return undefined;
      part = decodePart(bytes, this.#o.app);
      this.#o.onRebuilt?.(part);
    }
    const frame = this.#parts.add(part!);
    if (frame && frame.body.byteLength > this.#o.maxFrameBytes) {
      throw new FrameError(
        FrameRejectReason.Limit,
        `frame ${frame.epoch}/${frame.seq} of ${frame.body.byteLength} bytes: over the limit of ${this.#o.maxFrameBytes} (limit 'limits.maxFrameBytes'; raise it in the start options of every node)`,
      );
    }
    return frame;
  }

  /** Drops pieces of epochs older than `epoch` that are still incomplete (after a fence). */
  discardBefore(epoch: number): void {
    this.#parts.discardBefore(epoch);
    this.#shards?.discardBefore(epoch);
  }

  /** Shard figures (FEC): rejected shards by reason, parts rebuilt, rebuilt with parity. */
  get shardCounters(): ShardAssembler['counters'] | undefined {
    return this.#shards?.counters;
  }
}
