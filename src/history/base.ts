/**
 * Base snapshots: a consistent copy of the store and the image at a committed checkpoint C,
 * kept on the relays (subject `rp.<app>.base`) as frames of kind 5 that go through the same
 * codec as every frame (multi-part, FEC, signing) and the same ack policy.
 *
 * ```text
 * builder (a standby): pause applying ─► read store + image at C ─► resume
 *                      ─► chunks (entries…, image) + manifest ─► codec ─► every relay, acks per policy
 * loader (a joining or restarting node): every relay's base messages ─► codec.open ─► decoder
 *                      ─► newest manifest whose chunks are all there and hash right ─► store + image
 * ```
 *
 * Header of a base frame: epoch = the epoch that sealed C, seq = tag × 2^20 + index + 1 (the tag
 * is random per build, so two builds never mix their pieces), checkpoint = C. Chunks 0..n−2 hold
 * store entries, chunk n−1 the image, and the frame after them the manifest (records.ts).
 */
import { createHash, randomInt } from 'node:crypto';
import { DeliverPolicy } from '@nats-io/jetstream';
import { FrameDecoder, type FrameCodec } from '../protocol/codec.js';
import { BASE_KIND, type Frame, type FrameKind } from '../protocol/frame.js';
import {
  BaseType,
  MAX_BASE_CHUNKS,
  decodeBase,
  encodeBase,
  encodeImage,
  encodeManifest,
  encodedOpSize,
  encodeWrites,
  type BaseManifest,
  type EpochCut,
  type ImageRecord,
} from '../protocol/records.js';
import { baseMessageId, type AppNames } from '../protocol/subjects.js';
import { addEntry, digestHex, emptyDigest, entryLanes } from '../storage/digest.js';
import type { WriteOp } from '../storage/adapter.js';
import type { NatsLink } from '../transport/connection.js';
import { endConsume, streamBounds } from '../transport/consumer.js';
import { FramePublisher } from '../transport/publisher.js';

/** The seq of chunk `index` of a build tagged `tag`. */
const SEQ_SPAN = 2 ** 20;

/** Bytes of store entries per chunk (a chunk is a frame: larger ones travel as several parts). */
export const BASE_CHUNK_BYTES = 512 * 1024;

/** What a base holds, read by the builder while its applier was paused at C. */
export interface BaseContent {
  readonly checkpoint: number;
  readonly epoch: number;
  /** The store at C, as puts. */
  readonly entries: readonly WriteOp[];
  /** The image at C, full. */
  readonly image: ImageRecord;
  readonly history: readonly EpochCut[];
  /** Frame seq of C's seal (see `BaseManifest.sealSeq`), when known. */
  readonly sealSeq?: number;
}

/** Digest of a set of store entries, adapter-independent (SHA-1 entry hashes, digest.ts). */
export function entriesDigest(entries: readonly WriteOp[]): string {
  const d = emptyDigest();
  for (const e of entries) if (e.op === 'put') addEntry(d, entryLanes('sha1', e.key, e.value));
  return digestHex(d);
}

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** The frames of a base (chunks, then the manifest) and its manifest. */
export function baseFrames(
  content: BaseContent,
  o: { builder: string; retainFrom: number; builtAt: number; tag?: number; chunkBytes?: number },
): { frames: Frame[]; manifest: BaseManifest } {
  const tag = o.tag ?? randomInt(1, 2 ** 24);
  const chunkBytes = o.chunkBytes ?? BASE_CHUNK_BYTES;
  const bodies: Buffer[] = [];
  let batch: WriteOp[] = [];
  let size = 0;
  for (const e of content.entries) {
    const n = encodedOpSize(e);
    if (batch.length > 0 && size + n > chunkBytes) {
      bodies.push(encodeBase(BaseType.Entries, encodeWrites(batch, size)));
      batch = [];
      size = 0;
    }
    batch.push(e);
    size += n;
  }
  if (batch.length > 0) bodies.push(encodeBase(BaseType.Entries, encodeWrites(batch, size)));
  bodies.push(encodeBase(BaseType.Image, encodeImage(content.image)));
  if (bodies.length > MAX_BASE_CHUNKS)
    throw new RangeError(`a base of ${bodies.length} chunks; at most ${MAX_BASE_CHUNKS}`);
  const manifest: BaseManifest = {
    checkpoint: content.checkpoint,
    epoch: content.epoch,
    tag,
    builder: o.builder,
    chunks: bodies.length,
    chunkSha256: bodies.map(sha256),
    keys: content.entries.length,
    storeDigest: entriesDigest(content.entries),
    history: content.history.map((h) => ({ epoch: h.epoch, cutoff: h.cutoff, cutoffEpoch: h.cutoffEpoch })),
    retainFrom: o.retainFrom,
    builtAt: o.builtAt,
    ...(content.sealSeq === undefined ? {} : { sealSeq: content.sealSeq }),
  };
  bodies.push(encodeManifest(manifest));
  const frames = bodies.map((body, i): Frame => ({
    kind: BASE_KIND as FrameKind,
    epoch: content.epoch,
    seq: tag * SEQ_SPAN + i + 1,
    checkpoint: content.checkpoint,
    body,
  }));
  return { frames, manifest };
}

/** Where each relay stored a base: its first stream seq there (`undefined`: it missed some). */
export interface PublishedBase {
  readonly firstSeq: (number | undefined)[];
  /** Relays that acked every message meant for them. */
  readonly complete: boolean[];
}

/**
 * Publishes a base's frames through `codec` on the base subject of every relay. Resolves once
 * every part is durable under the policy (`need` relays, or with FEC `need` shards); rejects
 * when that cannot be met within `timeoutMs` per message. The manifest goes last, only once
 * every chunk is durable, so a manifest on a relay names a base whose chunks are durable.
 */
export async function publishBase(
  frames: readonly Frame[],
  o: {
    links: readonly NatsLink[];
    names: AppNames;
    codec: FrameCodec;
    need: number;
    timeoutMs: number;
    app: string;
    /** Called once each chunk is durable (chunks then go one at a time): a test's kill point. */
    afterChunk?: (durable: number, chunks: number) => Promise<void>;
    /**
     * Asked between windows of chunks: once it says yes, nothing more is sent and the publish
     * rejects with `BaseHaltedError` (the node took over; its relays' bandwidth is the new
     * primary's now). What was sent stays as chunks without a manifest, which no reader takes.
     */
    halted?: () => boolean;
  },
): Promise<PublishedBase> {
  const pubs = o.links.map(
    (l) => new FramePublisher(l, { app: o.app, subject: o.names.baseSubject, timeoutMs: o.timeoutMs }),
  );
  const firstSeq: (number | undefined)[] = o.links.map(() => undefined);
  const complete = o.links.map(() => true);
  const sendFrame = async (frame: Frame): Promise<void> => {
    const parts = await o.codec.encode(frame);
    await Promise.all(
      parts.map(async (p) => {
        const results = await Promise.all(
          p.messages.map((m) =>
            o.links[m.relay]!.connected()
              ? pubs[m.relay]!.send(m.bytes, baseMessageId(frame.checkpoint, m.msgId)).then(
                  (seq) => {
                    firstSeq[m.relay] = Math.min(firstSeq[m.relay] ?? seq, seq);
                    return true;
                  },
                  () => {
                    complete[m.relay] = false;
                    return false;
                  },
                )
              : ((complete[m.relay] = false), Promise.resolve(false)),
          ),
        );
        const acked = results.filter(Boolean).length;
        if (acked < o.need) {
          throw new Error(
            `base ${frame.checkpoint}: part ${frame.seq}.${p.key.part} acknowledged by ${acked} of the ${o.need} the policy needs`,
          );
        }
      }),
    );
  };
  const window = o.afterChunk ? 1 : 8;
  const chunks = frames.slice(0, -1);
  const check = (sent: number): void => {
    if (o.halted?.()) throw new BaseHaltedError(frames.at(-1)!.checkpoint, sent, chunks.length);
  };
  for (let i = 0; i < chunks.length; i += window) {
    check(i);
    await Promise.all(chunks.slice(i, i + window).map(sendFrame));
    await o.afterChunk?.(Math.min(i + window, chunks.length), chunks.length);
  }
  check(chunks.length);
  await sendFrame(frames.at(-1)!);
  return { firstSeq, complete };
}

/** A base publish stopped by its `halted` option: no manifest was sent. */
export class BaseHaltedError extends Error {
  constructor(
    readonly checkpoint: number,
    readonly sent: number,
    readonly chunks: number,
  ) {
    super(`base ${checkpoint}: halted after ${sent} of ${chunks} chunks, before its manifest`);
    this.name = 'BaseHaltedError';
  }
}

/** A base read back and checked. */
export interface LoadedBase {
  readonly manifest: BaseManifest;
  readonly entries: WriteOp[];
  readonly image: ImageRecord;
}

/** What the loader found, for logs and errors. */
export interface BaseSurvey {
  /** The newest intact base, if any. */
  readonly base: LoadedBase | undefined;
  /** Manifests found, newest first, with why each newer one was passed over. */
  readonly rejected: { checkpoint: number; why: string }[];
  /** Base messages read over all relays. */
  readonly messages: number;
}

/** Bytes of base messages one pull asks for (see `readBaseMessages`). */
const BASE_READ_BYTES = 8 * 1024 * 1024;

/** Reads every base message of one relay, in stream order. */
async function readBaseMessages(link: NatsLink, names: AppNames, stallMs: number): Promise<Uint8Array[]> {
  const info = await link.jsm.streams.info(names.stream, { subjects_filter: names.baseSubject });
  const total = info.state.subjects?.[names.baseSubject] ?? 0;
  if (total === 0) return [];
  const consumer = await link.js.consumers.get(names.stream, {
    filter_subjects: names.baseSubject,
    deliver_policy: DeliverPolicy.All,
  });
  const out: Uint8Array[] = [];
  // Pulled by bytes, not by messages: 256 messages of up to 1 MB each (a large base's image
  // parts) put more than the server's 64 MB pending limit of a client on the wire at once, and
  // the messages past it were lost: a 100 MB base read as 17–59 of its 103 messages, no
  // manifest, "no base message on any reachable relay" (issue 14's 10 s-lease drill).
  const messages = await consumer.consume({
    max_bytes: Math.max(BASE_READ_BYTES, 2 * link.maxPayload),
    idle_heartbeat: 1_000,
    expires: 5_000,
  });
  const stall = setInterval(() => {
    if (Date.now() - last > stallMs) void messages.close();
  }, 250);
  let last = Date.now();
  try {
    for await (const m of messages) {
      last = Date.now();
      out.push(m.data);
      if (m.info.pending === 0 || out.length >= total) break;
    }
  } finally {
    clearInterval(stall);
    await endConsume(consumer, messages);
  }
  return out;
}

/**
 * Finds the newest intact base over `links` (relays down are skipped): every piece is opened
 * by the codec (a corrupt or forged message is refused there, and another relay's copy used),
 * every chunk must hash to what the manifest names, and the entries must match its key count
 * and store digest. A base that fails is passed over for the next older one.
 */
export async function findBase(o: {
  links: readonly NatsLink[];
  names: AppNames;
  codec: FrameCodec;
  app: string;
  stallMs?: number;
}): Promise<BaseSurvey> {
  const perRelay = await Promise.all(
    o.links.map((l) =>
      l.connected() ? readBaseMessages(l, o.names, o.stallMs ?? 3_000).catch(() => []) : Promise.resolve([]),
    ),
  );
  const decoder = new FrameDecoder({ app: o.app, maxFrameBytes: Number.MAX_SAFE_INTEGER });
  const seen = new Set<string>();
  /** By build (`checkpoint:epoch:tag`), the candidate bodies of each index. */
  const builds = new Map<string, Map<number, Uint8Array[]>>();
  let messages = 0;
  for (const list of perRelay) {
    for (const data of list) {
      messages++;
      let frame: Frame | undefined;
      try {
        const m = o.codec.open(data);
        if (m.part) {
          if (m.part.kind !== (BASE_KIND as FrameKind)) continue;
          // Copies that differ (one forged or damaged past its CRC) are kept apart: the chunk
          // hash in the manifest picks the right one.
          const k = `${m.key.epoch}:${m.key.seq}:${m.key.part}:${sha256(m.part.body)}`;
          if (seen.has(k)) continue;
          seen.add(k);
        }
        frame = await decoder.add(m);
      } catch {
        continue; // refused (corrupt, forged, foreign): another relay's copy may do
      }
      if (!frame || frame.kind !== (BASE_KIND as FrameKind)) continue;
      const tag = Math.floor(frame.seq / SEQ_SPAN);
      const id = `${frame.checkpoint}:${frame.epoch}:${tag}`;
      let b = builds.get(id);
      if (!b) builds.set(id, (b = new Map()));
      const index = (frame.seq % SEQ_SPAN) - 1;
      const list2 = b.get(index) ?? [];
      list2.push(frame.body);
      b.set(index, list2);
    }
  }
  const manifests: { id: string; m: BaseManifest }[] = [];
  for (const [id, b] of builds) {
    for (const [index, bodies] of b) {
      for (const body of bodies) {
        try {
          const d = decodeBase(body);
          if (d.type === BaseType.Manifest && d.manifest.chunks === index)
            manifests.push({ id, m: d.manifest });
        } catch {
          // not a manifest, or a malformed one
        }
      }
    }
  }
  manifests.sort((a, b) => b.m.checkpoint - a.m.checkpoint || b.m.builtAt - a.m.builtAt);
  const rejected: { checkpoint: number; why: string }[] = [];
  for (const { id, m } of manifests) {
    const why = (() => {
      const b = builds.get(id)!;
      const entries: WriteOp[] = [];
      let image: ImageRecord | undefined;
      for (let i = 0; i < m.chunks; i++) {
        const body = (b.get(i) ?? []).find((x) => sha256(x) === m.chunkSha256[i]);
        if (!body)
          return { why: `chunk ${i} of ${m.chunks} is missing or does not hash to what the manifest names` };
        let d;
        try {
          d = decodeBase(body);
        } catch (err) {
          return { why: `chunk ${i}: ${(err as Error).message}` };
        }
        const last = i === m.chunks - 1;
        if (d.type === BaseType.Entries && !last) entries.push(...d.ops);
        else if (d.type === BaseType.Image && last) image = d.image;
        else return { why: `chunk ${i} has type ${d.type} out of place` };
      }
      if (entries.length !== m.keys)
        return { why: `${entries.length} entries, the manifest names ${m.keys}` };
      if (entriesDigest(entries) !== m.storeDigest)
        return { why: 'the entries do not match the store digest' };
      return { base: { manifest: m, entries, image: image! } };
    })();
    if ('base' in why) return { base: why.base, rejected, messages };
    rejected.push({ checkpoint: m.checkpoint, why: why.why });
  }
  return { base: undefined, rejected, messages };
}

/** What a starting node finds on the relays: the newest intact base and whether the history was trimmed. */
export interface HistorySurvey extends BaseSurvey {
  /** Per relay, the first stream seq it holds (`undefined`: not connected, or not answering). */
  readonly firstSeqs: (number | undefined)[];
  /**
   * No connected relay holds its stream from the first message (the frames before some base were
   * purged): without a base, neither the store nor the image can be rebuilt from the relays.
   */
  readonly trimmed: boolean;
}

/**
 * The newest intact base (`findBase`) and the relays' first stream seqs, consistent with each
 * other. A builder publishes a base's manifest and only then purges below it, so a node that
 * searched for bases while a base was being published (its manifest not there yet) and read the
 * stream bounds after the purge would see a trimmed history and no base: a base that did exist
 * mistaken for one lost (issue 14: a node restarted during a 100 MB base build refused to start
 * with "no base message on any reachable relay"). So when the bounds say trimmed and the search
 * found no base, it searches once more: the base that allowed the purge is durable by then.
 */
export async function surveyHistory(o: {
  links: readonly NatsLink[];
  names: AppNames;
  codec: FrameCodec;
  app: string;
  stallMs?: number;
  /** Test hook: runs between the first base search and the bounds read. */
  afterSearch?: () => Promise<void>;
}): Promise<HistorySurvey> {
  let survey = await findBase(o);
  await o.afterSearch?.();
  const firstSeqs = await Promise.all(
    o.links.map((l) =>
      l.connected()
        ? streamBounds(l, o.names.stream).then(
            (b) => b.firstSeq,
            () => undefined,
          )
        : Promise.resolve(undefined),
    ),
  );
  const read = firstSeqs.filter((f): f is number => f !== undefined);
  const trimmed = read.length > 0 && read.every((f) => f > 1);
  if (trimmed && survey.base === undefined) survey = await findBase(o);
  return { ...survey, firstSeqs, trimmed };
}
