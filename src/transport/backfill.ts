/**
 * Backfill (anti-entropy): catching a relay up from the others with the messages it missed, so
 * that redundancy does not shrink after every outage and takeover (issue 11, defect 10b).
 *
 * A primary's own backlog re-sends what a relay missed while that primary runs. What it cannot
 * re-send is what its predecessor acknowledged with a relay down: the predecessor's backlog died
 * with it. The new primary runs `backfill` for each relay after its takeover, and again for a
 * relay that comes back (joins late or reconnects):
 *
 * ```text
 * every relay r ─ read its stream to its current end ─► codec.openInner(msg, r)   (genuine only)
 *    target t:  the message ids it holds (part, or FEC shard)
 *    sources:   the inner bytes of each part (copies), or its shards (FEC: any k rebuild it)
 * each part of epoch ≥ fromEpoch that t lacks ─► codec.encodePart(key, part, [t])
 *    copies: the part, sealed for t (signed mode: relay-bound to t, a fresh MAC)
 *    FEC:    the part re-encoded, t's own shard indices only (i with i mod N = t)
 *  ─► published to t with the same dedupe ids the primary used (copies already there are dropped)
 * ```
 *
 * The bound: only parts of epochs from `fromEpoch` on are copied, where the SDK passes the epoch
 * of the checkpoint the new primary resumed from (E_C of its cut). Frames of older epochs were
 * the agreed history before that primary's predecessor took over and were backfilled by that
 * takeover; frames of E_C after the cut are void but harmless to copy. Each relay's stream is read
 * once per run (from its first retained message, O(stream)); the parts of the window are held in
 * memory while the run lasts. A message that does not open (forged, replayed from another relay,
 * damaged) is never copied.
 */
import type { FrameCodec, PartKey } from '../protocol/codec.js';
import { ShardAssembler } from '../fec/assembler.js';
import { shardMessageId } from '../fec/shard.js';
import { messageId } from '../protocol/subjects.js';
import type { NatsLink } from './connection.js';
import { StreamReader, lastStreamSeq } from './consumer.js';

/** What one backfill run did. */
export interface BackfillResult {
  /** The relay caught up. */
  readonly target: number;
  /** Relays read as sources (connected ones other than the target). */
  readonly sources: number[];
  /** Parts of the window that the target lacked (in whole or some of its shards). */
  readonly missingParts: number;
  /** Messages published to the target. */
  readonly copied: number;
  /** Parts the target lacks that no source could supply (FEC: fewer than k shards found). */
  readonly unrecoverable: number;
}

/** Options of one backfill run. */
export interface BackfillOptions {
  readonly codec: FrameCodec;
  readonly stream: string;
  /** Every relay's link, in config order (ones not connected are skipped). */
  readonly links: readonly NatsLink[];
  readonly target: number;
  /** Only parts of this epoch and later are copied. */
  readonly fromEpoch: number;
  /** Publishes one message to the target with its dedupe id; resolves once acknowledged. */
  readonly send: (bytes: Uint8Array, msgId: string) => Promise<unknown>;
  /** Longest a relay's stream may take to read to its end. Default 60 s. */
  readonly readTimeoutMs?: number;
  /** Stops the run (the relay set closed, the node was demoted). */
  readonly signal?: AbortSignal;
}

const partId = (k: PartKey): string => `${k.epoch}/${k.seq}.${k.part}`;

/**
 * Reads `link`'s stream from its first message to its last one at the call, handing each to
 * `onMessage`. Rejects when that takes longer than `timeoutMs` (the relay went away).
 */
async function readToEnd(
  link: NatsLink,
  stream: string,
  timeoutMs: number,
  signal: AbortSignal | undefined,
  onMessage: (data: Uint8Array) => void,
): Promise<void> {
  signal?.throwIfAborted();
  const last = await lastStreamSeq(link, stream);
  if (last === 0) return;
  const reader = new StreamReader(link, stream);
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      onAbort = () => reject(new Error('backfill stopped'));
      signal?.addEventListener('abort', onAbort, { once: true });
      timer = setTimeout(
        () =>
          reject(new Error(`reading ${stream} on ${link.servers} to seq ${last} took over ${timeoutMs} ms`)),
        timeoutMs,
      );
      // Buffered messages come through promises only: without a turn of the event loop now and
      // then, reading a long stream right after a takeover starved the lease keeper (a new
      // primary demoted 1.1 s after a takeover at a 1 s lease, its backfill just done).
      let turnAt = performance.now();
      reader
        .start(
          1,
          (m) => {
            if (m.streamSeq <= last) onMessage(m.data);
            if (m.streamSeq >= last) resolve();
            if (performance.now() - turnAt < 20) return;
            turnAt = performance.now();
            return new Promise<void>((r) => setImmediate(r));
          },
          reject,
        )
        .catch(reject);
    });
  } finally {
    clearTimeout(timer);
    if (onAbort) signal?.removeEventListener('abort', onAbort);
    await reader.stop().catch(() => undefined);
  }
}

/** Catches relay `o.target` up with the parts of the window that the other relays hold. */
export async function backfill(o: BackfillOptions): Promise<BackfillResult> {
  const { codec, target } = o;
  const timeoutMs = o.readTimeoutMs ?? 60_000;
  const targetLink = o.links[target]!;
  // What the target holds: dedupe ids of its parts (copies) or shards (FEC).
  const held = new Set<string>();
  await readToEnd(targetLink, o.stream, timeoutMs, o.signal, (data) => {
    try {
      const { message } = codec.openInner(data, target);
      if (message.key.epoch < o.fromEpoch) return;
      const k = message.key;
      held.add(
        message.shard
          ? shardMessageId(codec.app, k.epoch, k.seq, k.part, message.shard.index)
          : messageId(codec.app, k.epoch, k.seq, k.part),
      );
    } catch {
      // not a genuine message of this relay: it counts for nothing
    }
  });
  // What the sources hold: each part's bytes (copies), or its shards until it is rebuilt (FEC).
  const parts = new Map<string, { key: PartKey; bytes?: Uint8Array }>();
  const assembler = codec.fec ? new ShardAssembler({ app: codec.app, maxPendingParts: 1 << 20 }) : undefined;
  const sources: number[] = [];
  for (const [relay, link] of o.links.entries()) {
    if (relay === target || !link.connected()) continue;
    const pending: Promise<void>[] = [];
    try {
      await readToEnd(link, o.stream, timeoutMs, o.signal, (data) => {
        let opened;
        try {
          opened = codec.openInner(data, relay);
        } catch {
          return; // forged, replayed from another relay, damaged: never copied
        }
        const { message, inner } = opened;
        if (message.key.epoch < o.fromEpoch) return;
        const id = partId(message.key);
        let p = parts.get(id);
        if (!p) {
          p = { key: message.key };
          parts.set(id, p);
        }
        if (p.bytes) return;
        if (!message.shard) {
          p.bytes = Buffer.from(inner);
          return;
        }
        const entry = p;
        pending.push(
          assembler!.add(message.shard).then(
            (bytes) => {
              if (bytes && !entry.bytes) entry.bytes = Buffer.from(bytes);
            },
            () => undefined,
          ),
        );
      });
      await Promise.all(pending);
      sources.push(relay);
    } catch {
      // A source that went away mid-read: the others may still supply what the target lacks.
    }
  }
  let missingParts = 0;
  let copied = 0;
  let unrecoverable = 0;
  for (const p of parts.values()) {
    const k = p.key;
    if (!codec.fec && held.has(messageId(codec.app, k.epoch, k.seq, k.part))) continue;
    if (!p.bytes) {
      // FEC: fewer than k shards found. Whether the target lacks any is unknown without the part.
      unrecoverable++;
      continue;
    }
    const messages = await codec.encodePart(p.key, p.bytes, [target]);
    const lacking = messages.filter((m) => !held.has(m.msgId));
    if (lacking.length === 0) continue;
    missingParts++;
    for (const m of lacking) {
      o.signal?.throwIfAborted();
      await o.send(m.bytes, m.msgId);
      copied++;
    }
  }
  return { target, sources, missingParts, copied, unrecoverable };
}
