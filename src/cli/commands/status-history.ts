/**
 * The history half of `restartpoint status` (issue 13): per relay, the latest base snapshot and
 * what the relay retains of the frames (docs/history.md). Read straight from each relay's copy of
 * the stream; added to the `status --json` object as `history`.
 *
 * ```text
 * each relay: stream info ─► first / last frame message ─► plain part? ─► checkpoints
 *                                                       └─ no (signed, FEC) ─► decoded pass
 * decoded pass: head and tail of every relay read as `inspect` reads them (the cluster key's
 *               envelope opened, FEC parts rebuilt from the shards of all relays)
 * bases: findBase with the stream's codec (envelope; FEC: across all relays, as a loader does)
 * ```
 *
 * Without the cluster key (`--key`, `--config`) a signed stream's figures that need a message's
 * content (`baseCheckpoint`, `oldestRetainedCheckpoint`, `retainedCheckpoints`) are `null`; the
 * byte and message counts are always there.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { findBase } from '../../history/base.js';
import { FrameCodec } from '../../protocol/codec.js';
import type { EnvelopeCodec } from '../../protocol/envelope.js';
import { decodePart } from '../../protocol/frame.js';
import { appNames, type AppNames } from '../../protocol/subjects.js';
import type { NatsLink } from '../../transport/connection.js';
import { connectServers, splitServers } from '../../transport/inspect.js';
import { readInspect, type InspectReport } from './inspect-read.js';

/** One relay's history figures (`status --json`, `history[]`). */
export interface StatusHistoryRelay {
  servers: string;
  reachable: boolean;
  /** Checkpoint of the newest intact base on this relay (null: none, or not readable here). */
  baseCheckpoint: number | null;
  /** Checkpoint of the oldest frame the relay still holds (null: none, or not readable). */
  oldestRetainedCheckpoint: number | null;
  /** Checkpoints whose frames the relay holds: newest − oldest + 1 (null: not readable). */
  retainedCheckpoints: number | null;
  /** Bytes the relay's stream holds (frames and bases). */
  retainedBytes: number;
  /** Messages the relay's stream holds, and its first sequence (above 1 once purged). */
  retainedMessages: number;
  firstSeq: number;
}

/** Messages read at each end of every relay's stream by the decoded pass. */
const DECODED_ENDS = 300;

/** The checkpoint a stored frame message names (`null`: not a plain part of this app). */
function checkpointOf(data: Uint8Array | undefined, app: string): number | null {
  if (!data) return null;
  try {
    return decodePart(data, app).checkpoint;
  } catch {
    return null;
  }
}

const unreachable = (servers: string): StatusHistoryRelay => ({
  servers,
  reachable: false,
  baseCheckpoint: null,
  oldestRetainedCheckpoint: null,
  retainedCheckpoints: null,
  retainedBytes: 0,
  retainedMessages: 0,
  firstSeq: 0,
});

/** One relay, opened: its link (for `findBase`), stream state and plainly read ends. */
interface Opened {
  link: NatsLink;
  lastSeq: number;
  /** Base messages the relay holds. */
  baseMessages: number;
  /** Frame messages the relay holds. */
  frameMessages: number;
  /** Checkpoints of the first and last frame message, when they are plain parts. */
  oldest: number | null;
  newest: number | null;
}

async function openRelay(
  nc: NatsConnection,
  servers: string,
  names: AppNames,
  app: string,
  row: StatusHistoryRelay,
): Promise<Opened | undefined> {
  let jsm: JetStreamManager;
  try {
    jsm = await jetstreamManager(nc);
  } catch {
    return undefined;
  }
  const info = await jsm.streams.info(names.stream, { subjects_filter: '>' }).catch(() => undefined);
  if (!info) return undefined;
  const msg = async (q: { seq?: number; last_by_subj?: string; next_by_subj?: string }) =>
    jsm.streams
      .getMessage(names.stream, q as never)
      .then((m) => m?.data)
      .catch(() => undefined);
  const subjects = info.state.subjects ?? {};
  const frameMessages = subjects[names.subject] ?? 0;
  const oldest =
    frameMessages > 0
      ? checkpointOf(await msg({ seq: info.state.first_seq, next_by_subj: names.subject }), app)
      : null;
  const newest = frameMessages > 0 ? checkpointOf(await msg({ last_by_subj: names.subject }), app) : null;
  Object.assign(row, {
    reachable: true,
    retainedBytes: info.state.bytes,
    retainedMessages: info.state.messages,
    firstSeq: info.state.first_seq,
  });
  const link = {
    nc,
    js: jetstream(nc),
    jsm,
    servers,
    maxPayload: nc.info?.max_payload ?? 1 << 20,
    connected: () => !nc.isClosed(),
  } as unknown as NatsLink;
  return {
    link,
    lastSeq: info.state.last_seq,
    baseMessages: subjects[names.baseSubject] ?? 0,
    frameMessages,
    oldest,
    newest,
  };
}

/** Per relay, the lowest and highest checkpoint of the frames `report` decoded there. */
function checkpointRange(report: InspectReport, relay: number): { low: number | null; high: number | null } {
  let low: number | null = null;
  let high: number | null = null;
  for (const f of report.relays[relay]?.frames ?? []) {
    // Fences name their cutoff, not a checkpoint of their own: left out.
    if (f.checkpoint === null || (f.kind !== 'writes' && f.kind !== 'seal' && f.kind !== 'image')) continue;
    low = low === null ? f.checkpoint : Math.min(low, f.checkpoint);
    high = high === null ? f.checkpoint : Math.max(high, f.checkpoint);
  }
  return { low, high };
}

/**
 * The history figures of `app` on each of `relays` (server lists), each over its own connection.
 * `envelope`: the cluster key's codec, for a signed stream.
 */
export async function readHistory(
  relays: readonly string[],
  app: string,
  envelope?: EnvelopeCodec,
): Promise<StatusHistoryRelay[]> {
  const names = appNames(app);
  const rows = relays.map(unreachable);
  const conns: (NatsConnection | undefined)[] = relays.map(() => undefined);
  try {
    const opened = await Promise.all(
      relays.map(async (servers, i) => {
        try {
          const nc = await connectServers(servers, { timeoutMs: 3_000 });
          conns[i] = nc;
          return await openRelay(nc, servers, names, app, rows[i]!);
        } catch {
          return undefined;
        }
      }),
    );
    // Frames that are not plain parts (signed envelopes, FEC shards): read the ends decoded.
    const plain = opened.every(
      (o) => !o || o.frameMessages === 0 || (o.oldest !== null && o.newest !== null),
    );
    let fec = false;
    if (!plain) {
      const targets = relays.map((r) => ({ servers: splitServers(r) }));
      const head = await readInspect({
        app,
        relays: targets,
        envelope,
        from: 1,
        limit: DECODED_ENDS,
        stallMs: 3_000,
      });
      const lasts = opened.flatMap((o) => (o ? [o.lastSeq] : []));
      const from = Math.max(1, Math.min(...lasts) - DECODED_ENDS + 1);
      const tail = await readInspect({
        app,
        relays: targets,
        envelope,
        from,
        limit: Math.min(10 * DECODED_ENDS, Math.max(...lasts) - from + 1),
        stallMs: 3_000,
      });
      fec = head.fec || tail.fec;
      opened.forEach((o, i) => {
        if (!o) return;
        o.oldest ??= checkpointRange(head, i).low;
        o.newest ??= checkpointRange(tail, i).high ?? checkpointRange(head, i).high;
      });
    }
    // Bases, through the stream's codec: with FEC, one base rebuilt from the shards of every relay
    // (as a loader does), shown on each relay that holds base messages; else each relay's own.
    const codec = (n: number, withFec: boolean) =>
      new FrameCodec({
        app,
        relays: n,
        maxPayload: 1 << 30,
        envelope,
        fec: withFec ? { copies: 1 } : undefined,
      });
    const live = opened.flatMap((o) => (o && o.baseMessages > 0 ? [o] : []));
    let shared: number | null = null;
    if (fec && live.length > 0) {
      const survey = await findBase({
        links: live.map((o) => o.link),
        names,
        codec: codec(live.length, true),
        app,
        stallMs: 2_000,
      }).catch(() => undefined);
      shared = survey?.base?.manifest.checkpoint ?? null;
    }
    await Promise.all(
      opened.map(async (o, i) => {
        if (!o) return;
        const row = rows[i]!;
        if (o.baseMessages > 0) {
          if (fec) row.baseCheckpoint = shared;
          else {
            const survey = await findBase({
              links: [o.link],
              names,
              codec: codec(1, false),
              app,
              stallMs: 2_000,
            }).catch(() => undefined);
            row.baseCheckpoint = survey?.base?.manifest.checkpoint ?? null;
          }
        }
        row.oldestRetainedCheckpoint = o.oldest;
        row.retainedCheckpoints =
          o.oldest !== null && o.newest !== null ? Math.max(0, o.newest - o.oldest + 1) : null;
      }),
    );
    return rows;
  } finally {
    await Promise.all(conns.map((nc) => nc?.close().catch(() => undefined)));
  }
}
