/**
 * The history half of `restartpoint status` (issue 13): per relay, the latest base snapshot and
 * what the relay retains of the frames (docs/history.md). Read straight from each relay's copy of
 * the stream; added to the `status --json` object as `history`.
 *
 * Messages are opened with a plain codec (no FEC, unsigned): on a signed or FEC stream the figures
 * that need a message's content (`baseCheckpoint`, `oldestRetainedCheckpoint`,
 * `retainedCheckpoints`) are `null`, the byte and message counts are always there.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { findBase } from '../../history/base.js';
import { FrameCodec } from '../../protocol/codec.js';
import { decodePart } from '../../protocol/frame.js';
import { appNames } from '../../protocol/subjects.js';
import type { NatsLink } from '../../transport/connection.js';
import { connectServers } from '../../transport/inspect.js';

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

/** The checkpoint a stored frame message names (`null`: not a plain part of this app). */
function checkpointOf(data: Uint8Array | undefined, app: string): number | null {
  if (!data) return null;
  try {
    return decodePart(data, app).checkpoint;
  } catch {
    return null;
  }
}

/** Reads the history figures of `app` on one relay, through an open connection `nc`. */
export async function readRelayHistory(
  nc: NatsConnection,
  servers: string,
  app: string,
): Promise<StatusHistoryRelay> {
  const names = appNames(app);
  const unreachable: StatusHistoryRelay = {
    servers,
    reachable: false,
    baseCheckpoint: null,
    oldestRetainedCheckpoint: null,
    retainedCheckpoints: null,
    retainedBytes: 0,
    retainedMessages: 0,
    firstSeq: 0,
  };
  let jsm;
  try {
    jsm = await jetstreamManager(nc);
  } catch {
    return unreachable;
  }
  const info = await jsm.streams.info(names.stream).catch(() => undefined);
  if (!info) return unreachable;
  const msg = async (q: { seq?: number; last_by_subj?: string; next_by_subj?: string }) =>
    jsm.streams
      .getMessage(names.stream, q as never)
      .then((m) => m?.data)
      .catch(() => undefined);
  const oldest = checkpointOf(await msg({ seq: info.state.first_seq, next_by_subj: names.subject }), app);
  const newest = checkpointOf(await msg({ last_by_subj: names.subject }), app);
  const link = {
    nc,
    js: jetstream(nc),
    jsm,
    servers,
    maxPayload: nc.info?.max_payload ?? 1 << 20,
    connected: () => !nc.isClosed(),
  } as unknown as NatsLink;
  const codec = new FrameCodec({ app, relays: 1, maxPayload: 1 << 30 });
  const survey = await findBase({ links: [link], names, codec, app, stallMs: 2_000 }).catch(() => undefined);
  return {
    servers,
    reachable: true,
    baseCheckpoint: survey?.base?.manifest.checkpoint ?? null,
    oldestRetainedCheckpoint: oldest,
    retainedCheckpoints: oldest !== null && newest !== null ? Math.max(0, newest - oldest + 1) : null,
    retainedBytes: info.state.bytes,
    retainedMessages: info.state.messages,
    firstSeq: info.state.first_seq,
  };
}

/** `readRelayHistory` for each of `relays` (server lists), each over its own connection. */
export async function readHistory(relays: readonly string[], app: string): Promise<StatusHistoryRelay[]> {
  return Promise.all(
    relays.map(async (servers) => {
      let nc: NatsConnection | undefined;
      try {
        nc = await connectServers(servers, { timeoutMs: 3_000 });
        return await readRelayHistory(nc, servers, app);
      } catch {
        return {
          servers,
          reachable: false,
          baseCheckpoint: null,
          oldestRetainedCheckpoint: null,
          retainedCheckpoints: null,
          retainedBytes: 0,
          retainedMessages: 0,
          firstSeq: 0,
        };
      } finally {
        await nc?.close();
      }
    }),
  );
}
