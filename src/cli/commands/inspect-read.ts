/**
 * The read half of `restartpoint inspect`: each relay's copy of the app's stream, read from a
 * sequence (bounded), every message opened by the one decode pipeline (`FrameCodec.open`, then
 * `FrameDecoder` to join parts and rebuild FEC parts from shards, as a standby does), each
 * record body decoded by `records.ts`, into an `InspectReport` (the `--json` object). Then where
 * the relays disagree: a fence or a seal that one relay holds and another does not.
 * `inspect-format.ts` turns the report into the human output.
 */
import { connect, type ConnectionOptions, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { FrameError, FrameRejectReason } from '../../errors.js';
import { FrameCodec, FrameDecoder, type DecodedMessage } from '../../protocol/codec.js';
import type { EnvelopeCodec } from '../../protocol/envelope.js';
import { FrameKind, type Frame } from '../../protocol/frame.js';
import {
  ImageCodec,
  ImageFormat,
  decodeFence,
  decodeImage,
  decodeSeal,
  decodeWrites,
} from '../../protocol/records.js';
import { appNames } from '../../protocol/subjects.js';
import { HEADER_ROOM, type NatsLink } from '../../transport/connection.js';
import { StreamReader, type StreamMessage } from '../../transport/consumer.js';

/** Default `--limit`: messages read per relay. */
export const DEFAULT_INSPECT_LIMIT = 10_000;

/** What a frame is, by its record. */
export type InspectKind = 'fence' | 'seal' | 'keyframe' | 'delta' | 'writes' | 'image';

/** One frame as one relay holds it: the messages (parts or shards) of it found there. */
export interface InspectFrame {
  /** Stream sequence of the frame's first message on this relay. */
  streamSeq: number;
  /** Stream sequences of all its messages on this relay (more than one: parts, shards, copies). */
  streamSeqs: number[];
  /** Bytes of those messages as stored (envelope and shard headers included). */
  bytes: number;
  epoch: number;
  /** The frame's number within its epoch. */
  seq: number;
  /**
   * From the part header, told keyframe or delta once an image is joined (`image` until then);
   * `null` for FEC shards until their frame could be rebuilt (too few shards on all relays read).
   */
  kind: InspectKind | null;
  /** The checkpoint the frame belongs to (fence: the cutoff); `null` as for `kind`. */
  checkpoint: number | null;
  /** Parts of the frame (`null`: unknown, FEC shards only). */
  parts: number | null;
  /** Whether the whole frame could be read (all parts; FEC: k shards of each, any relay). */
  complete: boolean;
  /** Bytes of the frame body once joined. */
  bodyBytes: number | null;
  /** FEC: shard indexes of the frame held by this relay. */
  shards?: number[];
  /** The record, decoded (per kind, see docs/cli.md). */
  fence?: { nodeId: string; cutoffCheckpoint: number; cutoffEpoch: number | null };
  seal?: { writeFrames: number; writeOps: number; imageFrames: number };
  image?: {
    format: 'full' | 'delta';
    codec: 'none' | 'brotli';
    base: number;
    stateVersion: number;
    rawBytes: number;
    payloadBytes: number;
  };
  writes?: { ops: number; puts: number; deletes: number };
  /** Why the joined frame's body does not decode (the frame is then rejected by a standby). */
  error?: string;
}

/** One message that does not open or decode: forged, corrupt, foreign, unsigned, ... */
export interface InspectRejected {
  streamSeq: number;
  bytes: number;
  reason: string;
  message: string;
}

/** One relay's copy of the stream, as read. */
export interface InspectRelay {
  servers: string;
  reachable: boolean;
  /** Why it could not be read (down, no stream, read failed); absent when read. */
  error?: string;
  /** The stream as the relay reported it before the read (`null`: unreachable or no stream). */
  stream: { messages: number; bytes: number; firstSeq: number; lastSeq: number } | null;
  /** First sequence read (`--from`, raised to the stream's first). */
  from: number;
  /** Messages read. */
  read: number;
  /** Last sequence read (0: none). */
  lastRead: number;
  /** Stopped at `--limit` before the stream's last sequence. */
  truncated: boolean;
  frames: InspectFrame[];
  rejected: InspectRejected[];
  /** Frames by kind (`incomplete`: kind unknown). */
  counts: Record<string, number>;
}

/** A fence or seal one relay holds and another, whose read covered it, does not. */
export interface InspectDisagreement {
  kind: 'fence' | 'seal';
  epoch: number;
  seq: number;
  checkpoint: number;
  /** Indexes (into `relays`) of the relays that hold it, and of those that miss it. */
  presentOn: number[];
  missingOn: number[];
}

/** The `inspect --json` object (docs/cli.md). Fields are only ever added. */
export interface InspectReport {
  app: string;
  stream: string;
  from: number;
  limit: number;
  /** Whether messages were opened with a cluster key (signed mode). */
  signed: boolean;
  /** Whether FEC shards were found. */
  fec: boolean;
  relays: InspectRelay[];
  disagreements: InspectDisagreement[];
}

/** One relay to read: its servers and the client options (auth, TLS) to reach it. */
export interface InspectTarget {
  servers: string[];
  options?: Omit<ConnectionOptions, 'servers'>;
}

/** What `readInspect` needs. */
export interface InspectOptions {
  app: string;
  relays: InspectTarget[];
  /** Signed mode: open every message with this envelope codec (the cluster key). */
  envelope?: EnvelopeCodec;
  from?: number;
  limit?: number;
  /** Stall timeout of a read, ms (default 10 000). */
  stallMs?: number;
  /** Progress: called every few hundred messages (the command draws a line on a TTY). */
  onProgress?: (relay: number, read: number, total: number) => void;
}

const frameKey = (epoch: number, seq: number): string => `${epoch}:${seq}`;

const HEADER_KINDS: Record<FrameKind, InspectKind> = {
  [FrameKind.Fence]: 'fence',
  [FrameKind.Seal]: 'seal',
  [FrameKind.Image]: 'image',
  [FrameKind.Writes]: 'writes',
};

/** The kind of a frame, from its header and (image) its record. */
function describe(frame: Frame, f: InspectFrame): void {
  f.kind = null;
  f.checkpoint = frame.checkpoint;
  f.bodyBytes = frame.body.byteLength;
  f.complete = true;
  try {
    switch (frame.kind) {
      case FrameKind.Fence: {
        f.kind = 'fence';
        const r = decodeFence(frame.body);
        f.fence = {
          nodeId: r.nodeId,
          cutoffCheckpoint: frame.checkpoint,
          cutoffEpoch: r.cutoffEpoch ?? null,
        };
        break;
      }
      case FrameKind.Seal:
        f.kind = 'seal';
        f.seal = { ...decodeSeal(frame.body) };
        break;
      case FrameKind.Image: {
        f.kind = 'image';
        const r = decodeImage(frame.body);
        f.kind = r.format === ImageFormat.Full ? 'keyframe' : 'delta';
        f.image = {
          format: r.format === ImageFormat.Full ? 'full' : 'delta',
          codec: r.codec === ImageCodec.Brotli ? 'brotli' : 'none',
          base: r.base,
          stateVersion: r.stateVersion,
          rawBytes: r.rawLength,
          payloadBytes: r.payload.byteLength,
        };
        break;
      }
      case FrameKind.Writes: {
        f.kind = 'writes';
        const ops = decodeWrites(frame.body);
        const puts = ops.filter((o) => o.op === 'put').length;
        f.writes = { ops: ops.length, puts, deletes: ops.length - puts };
        break;
      }
    }
  } catch (err) {
    f.error = (err as Error).message;
  }
}

/** A connection to one relay, as a `NatsLink` for `StreamReader`. */
async function link(t: InspectTarget): Promise<NatsLink> {
  const nc: NatsConnection = await connect({
    ...t.options,
    servers: t.servers,
    timeout: 3_000,
    maxReconnectAttempts: 0,
  });
  try {
    const jsm = await jetstreamManager(nc, { timeout: 5_000 });
    return {
      nc,
      js: jetstream(nc, { timeout: 5_000 }),
      jsm,
      maxPayload: (nc.info?.max_payload ?? 1024 * 1024) - HEADER_ROOM,
      servers: t.servers.join(','),
      connected: () => !nc.isClosed(),
    };
  } catch (err) {
    await nc.close().catch(() => undefined);
    throw new Error(`no JetStream at ${t.servers.join(',')}: ${(err as Error).message}`);
  }
}

/** Reads messages [from, lastSeq] of `stream` (at most `limit`), in order. */
async function readRange(
  l: NatsLink,
  stream: string,
  from: number,
  lastSeq: number,
  limit: number,
  stallMs: number,
  onMessage: (m: StreamMessage) => Promise<void>,
): Promise<void> {
  const reader = new StreamReader(l, stream);
  let count = 0;
  let done!: () => void;
  let fail!: (err: unknown) => void;
  const finished = new Promise<void>((res, rej) => {
    done = res;
    fail = rej;
  });
  let timer: NodeJS.Timeout | undefined;
  const arm = (): void => {
    clearTimeout(timer);
    timer = setTimeout(
      () => fail(new Error(`read stalled: nothing for ${stallMs / 1000} s after ${count} messages`)),
      stallMs,
    );
  };
  let over = false;
  try {
    arm();
    await reader.start(
      from,
      async (m) => {
        if (over) return;
        arm();
        count++;
        await onMessage(m);
        if (count >= limit || m.streamSeq >= lastSeq) {
          over = true;
          done();
        }
      },
      fail,
    );
    await finished;
  } finally {
    clearTimeout(timer);
    await reader.stop();
  }
}

/** Reads and decodes every relay's copy of the app's stream. Never throws for a relay or a message. */
export async function readInspect(o: InspectOptions): Promise<InspectReport> {
  const { app } = o;
  const names = appNames(app);
  const from = Math.max(1, o.from ?? 1);
  const limit = o.limit ?? DEFAULT_INSPECT_LIMIT;
  const stallMs = o.stallMs ?? 10_000;
  // Both codecs: a stream may hold parts or shards (FEC), and after a config change both; each
  // message goes through the codec that read the last one, the other on a bad magic.
  const mk = (fec: boolean): FrameCodec =>
    new FrameCodec({
      app,
      relays: o.relays.length,
      maxPayload: 1024 * 1024,
      fec: fec ? { copies: 1 } : undefined,
      envelope: o.envelope,
    });
  const codecs = [mk(false), mk(true)];
  let current = 0;
  const open = (data: Uint8Array): DecodedMessage => {
    try {
      return codecs[current]!.open(data);
    } catch (err) {
      if (!(err instanceof FrameError) || err.reason !== FrameRejectReason.Magic) throw err;
      let m: DecodedMessage;
      try {
        m = codecs[1 - current]!.open(data);
      } catch (again) {
        if (!(again instanceof FrameError) || again.reason !== FrameRejectReason.Magic) throw again;
        throw new FrameError(FrameRejectReason.Magic, 'neither a frame part nor an FEC shard (bad magic)');
      }
      current = 1 - current;
      return m;
    }
  };
  const decoderOptions = { app, maxFrameBytes: Number.MAX_SAFE_INTEGER };
  // FEC: shards of one part are spread over the relays, so parts are rebuilt from all of them.
  const shared = new FrameDecoder(decoderOptions);
  /** What frames rebuilt from shards hold (their records decoded; the bodies are not kept). */
  const sharedFrames = new Map<string, InspectFrame>();
  let fec = false;

  const relays: InspectRelay[] = o.relays.map((t) => ({
    servers: t.servers.join('|'),
    reachable: false,
    stream: null,
    from,
    read: 0,
    lastRead: 0,
    truncated: false,
    frames: [],
    rejected: [],
    counts: {},
  }));
  // All relays at once: with FEC, the shards of a part then arrive close together (the rebuild
  // holds few pending parts), and a slow relay does not hold up the others.
  await Promise.all(
    o.relays.map(async (t, i) => {
      const r = relays[i]!;
      let l: NatsLink;
      try {
        l = await link(t);
      } catch (err) {
        r.error = `unreachable: ${(err as Error).message}`;
        return;
      }
      r.reachable = true;
      try {
        const info = await l.jsm.streams.info(names.stream).catch(() => undefined);
        if (!info) {
          r.error = `no stream ${names.stream} on this relay`;
          return;
        }
        const s = info.state;
        r.stream = { messages: s.messages, bytes: s.bytes, firstSeq: s.first_seq, lastSeq: s.last_seq };
        r.from = Math.max(from, s.first_seq);
        if (s.messages === 0 || r.from > s.last_seq) return;
        const decoder = new FrameDecoder(decoderOptions);
        const frames = new Map<string, InspectFrame>();
        const total = Math.min(limit, s.last_seq - r.from + 1);
        // A read that fails (a relay that stops answering) keeps what it read, as truncated.
        const finish = (): void => {
          r.truncated = r.lastRead < s.last_seq;
          r.frames = [...frames.values()];
        };
        try {
          await readRange(l, names.stream, r.from, s.last_seq, limit, stallMs, async (m) => {
            r.read++;
            r.lastRead = m.streamSeq;
            if (r.read % 250 === 0) o.onProgress?.(i, r.read, total);
            let d: DecodedMessage;
            try {
              d = open(m.data);
            } catch (err) {
              if (!(err instanceof FrameError)) throw err;
              const signed = !o.envelope && m.data[0] === 0x52 && m.data[1] === 0x41;
              r.rejected.push({
                streamSeq: m.streamSeq,
                bytes: m.data.byteLength,
                reason: signed ? 'signed' : err.reason,
                message: signed
                  ? 'a signed envelope: pass --key (or --config with clusterKey) to open it'
                  : err.message,
              });
              return;
            }
            const k = frameKey(d.key.epoch, d.key.seq);
            let f = frames.get(k);
            if (!f) {
              f = {
                streamSeq: m.streamSeq,
                streamSeqs: [],
                bytes: 0,
                epoch: d.key.epoch,
                seq: d.key.seq,
                // A part's header names its kind (an image: keyframe or delta once joined).
                kind: d.part ? HEADER_KINDS[d.part.kind] : null,
                checkpoint: d.part ? d.part.checkpoint : null,
                parts: d.part ? d.part.parts : null,
                complete: false,
                bodyBytes: null,
              };
              frames.set(k, f);
            }
            f.streamSeqs.push(m.streamSeq);
            f.bytes += m.data.byteLength;
            if (d.shard) {
              fec = true;
              (f.shards ??= []).push(d.shard.index);
            }
            try {
              const frame = await (d.shard ? shared : decoder).add(d);
              if (!frame) return;
              if (d.shard) {
                const info = { ...f };
                describe(frame, info);
                sharedFrames.set(k, info);
              } else {
                describe(frame, f);
              }
            } catch (err) {
              if (!(err instanceof FrameError)) throw err;
              r.rejected.push({
                streamSeq: m.streamSeq,
                bytes: m.data.byteLength,
                reason: err.reason,
                message: err.message,
              });
            }
          });
        } finally {
          finish();
        }
      } catch (err) {
        r.error = `read failed after ${r.read} messages: ${(err as Error).message}`;
      } finally {
        await l.nc.close().catch(() => undefined);
      }
    }),
  );
  // Frames rebuilt from shards (of any relay) describe every relay's entry of them.
  for (const r of relays) {
    for (const f of r.frames) {
      const info = sharedFrames.get(frameKey(f.epoch, f.seq));
      if (!info || f.complete) continue;
      const { kind, checkpoint, complete, bodyBytes, fence, seal, image, writes, error } = info;
      Object.assign(f, { kind, checkpoint, complete, bodyBytes });
      for (const [name, v] of Object.entries({ fence, seal, image, writes, error })) {
        if (v !== undefined) Object.assign(f, { [name]: v });
      }
    }
    for (const f of r.frames) {
      const k = f.kind ?? 'incomplete';
      r.counts[k] = (r.counts[k] ?? 0) + 1;
    }
    if (r.rejected.length > 0) r.counts.rejected = r.rejected.length;
  }
  return {
    app,
    stream: names.stream,
    from,
    limit,
    signed: o.envelope !== undefined,
    fec,
    relays,
    disagreements: disagreements(relays),
  };
}

const before = (a: { epoch: number; seq: number }, b: { epoch: number; seq: number }): boolean =>
  a.epoch < b.epoch || (a.epoch === b.epoch && a.seq < b.seq);

/**
 * Fences and seals held by some relays and missing on others. A relay counts as missing one only
 * when its read covered the frame: it read from the stream's start or saw a frame at or before
 * it, and it read to the end or saw a frame at or after it (frames ordered by epoch, then seq).
 * A read that failed counts as truncated where it stopped. Unreachable relays, and relays
 * without the stream, are left out.
 */
export function disagreements(relays: readonly InspectRelay[]): InspectDisagreement[] {
  const read = relays.map((r, i) => ({ r, i })).filter(({ r }) => r.stream !== null);
  const all = new Map<string, InspectDisagreement>();
  for (const { r, i } of read) {
    for (const f of r.frames) {
      if ((f.kind !== 'fence' && f.kind !== 'seal') || f.checkpoint === null) continue;
      const k = frameKey(f.epoch, f.seq);
      let d = all.get(k);
      if (!d) {
        d = {
          kind: f.kind,
          epoch: f.epoch,
          seq: f.seq,
          checkpoint: f.checkpoint,
          presentOn: [],
          missingOn: [],
        };
        all.set(k, d);
      }
      d.presentOn.push(i);
    }
  }
  const out: InspectDisagreement[] = [];
  for (const d of all.values()) {
    for (const { r, i } of read) {
      if (d.presentOn.includes(i)) continue;
      const fromStart = r.from <= (r.stream?.firstSeq ?? 1);
      const low = fromStart || r.frames.some((f) => !before(d, f));
      const high = !r.truncated || r.frames.some((f) => !before(f, d));
      if (low && high) d.missingOn.push(i);
    }
    if (d.missingOn.length > 0) out.push(d);
  }
  return out.sort((a, b) => (before(a, b) ? -1 : before(b, a) ? 1 : 0));
}
