/**
 * Operator requests to an app's live nodes, over core NATS request/reply (no stream): today
 * `restartpoint verify --app NAME`, which asks every node to run `verify()` on its own store.
 *
 * The subject, `rpctl.<app>.verify`, is outside the stream's `rp.<app>.>` on purpose: a
 * request there would be stored in the app's history like a frame. Every node subscribes to
 * it on its lease connection (`nats`); the operator publishes one request with a reply inbox
 * and gathers one answer per node. The request and answers are JSON.
 *
 * ```text
 * restartpoint verify --app A ── {"quick":true} ──► rpctl.A.verify ──► every node of A
 *                          ◄── one answer per node (its role, its store's VerifyResult) ──┘
 * ```
 */
import { createInbox, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import type { StorageAdapter, VerifyResult } from '../storage/adapter.js';

/** The subject an app's nodes answer verify requests on. */
export function verifySubject(app: string): string {
  return `rpctl.${app}.verify`;
}

/** What the operator asks. */
export interface VerifyRequest {
  /** The quick check (identity and key count) instead of the full one. */
  readonly quick: boolean;
}

/** One node's answer. */
export interface NodeVerifyAnswer {
  readonly nodeId: string;
  /** The node's state when it answered (`primary`, `standby`, `catching-up`…). */
  readonly state: string;
  /** The store's kind (`redis`, `postgres`, `file`, `memory`). */
  readonly kind: string;
  readonly quick: boolean;
  /** What `verify()` found, or `null` when it rejected (`error`). */
  readonly result: VerifyResult | null;
  /** `verify()` rejected: `ERR_STORE_LOST` (the store is not the one committed to) or a store error. */
  readonly error: { readonly code: string; readonly message: string; readonly retryable: boolean } | null;
  /** Wall time of the check on the node, ms. */
  readonly ms: number;
}

/** Decodes a request; anything malformed is the quick check (the cheap, safe one). */
export function decodeVerifyRequest(data: Uint8Array): VerifyRequest {
  try {
    const v = JSON.parse(Buffer.from(data).toString('utf8')) as { quick?: unknown };
    return { quick: v.quick !== false };
  } catch {
    return { quick: true };
  }
}

/**
 * Answers verify requests on `nc` for `app` with `answer`, until the returned `stop()`. A
 * request without a reply subject is ignored. Errors (a denied subscription, an answer that
 * failed) go to `onError`, never out.
 */
export function serveVerify(
  nc: NatsConnection,
  app: string,
  answer: (req: VerifyRequest) => Promise<NodeVerifyAnswer>,
  onError: (msg: string) => void,
): { stop(): void } {
  let sub: Subscription;
  try {
    sub = nc.subscribe(verifySubject(app), {
      callback: (err, msg) => {
        if (err) {
          onError(`verify requests: ${err.message}`);
          return;
        }
        if (!msg.reply) return;
        const reply = msg.reply;
        void answer(decodeVerifyRequest(msg.data)).then(
          (a) => {
            try {
              nc.publish(reply, JSON.stringify(a));
            } catch (e) {
              onError(`verify answer not sent: ${(e as Error).message}`);
            }
          },
          (e: unknown) => onError(`verify request failed: ${(e as Error)?.message}`),
        );
      },
    });
  } catch (err) {
    onError(`cannot subscribe to ${verifySubject(app)}: ${(err as Error).message}`);
    return { stop: () => undefined };
  }
  return {
    stop: () => {
      try {
        sub.unsubscribe();
      } catch {
        // the connection is closed already
      }
    },
  };
}

/**
 * Asks every node of `app` to verify its store; resolves the answers gathered once `expect`
 * nodes answered (when given) or `timeoutMs` passed.
 */
export async function askVerify(
  nc: NatsConnection,
  app: string,
  opts: { quick: boolean; timeoutMs: number; expect?: number },
): Promise<NodeVerifyAnswer[]> {
  const answers: NodeVerifyAnswer[] = [];
  const inbox = createInbox();
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => done(), opts.timeoutMs);
    const sub = nc.subscribe(inbox, {
      callback: (err, msg) => {
        if (err) return done();
        try {
          answers.push(JSON.parse(Buffer.from(msg.data).toString('utf8')) as NodeVerifyAnswer);
        } catch {
          return;
        }
        if (opts.expect !== undefined && answers.length >= opts.expect) done();
      },
    });
    function done(): void {
      clearTimeout(timer);
      try {
        sub.unsubscribe();
      } catch {
        // closed
      }
      resolve();
    }
    nc.publish(verifySubject(app), JSON.stringify({ quick: opts.quick } satisfies VerifyRequest), {
      reply: inbox,
    });
  });
  return answers.sort((a, b) => (a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0));
}

/** How a node answers: runs `storage.verify()` and reports what it found or why it failed. */
export async function verifyAnswer(
  storage: Pick<StorageAdapter, 'kind' | 'verify'>,
  nodeId: string,
  state: string,
  req: VerifyRequest,
): Promise<NodeVerifyAnswer> {
  const t0 = performance.now();
  const base = { nodeId, state, kind: storage.kind, quick: req.quick };
  try {
    const result = await storage.verify({ quick: req.quick });
    return { ...base, result, error: null, ms: Math.round(performance.now() - t0) };
  } catch (err) {
    const e = err as { code?: unknown; message?: unknown; retryable?: unknown };
    return {
      ...base,
      result: null,
      error: {
        code: typeof e?.code === 'string' ? e.code : 'ERR_UNKNOWN',
        message: typeof e?.message === 'string' ? e.message : String(err),
        retryable: e?.retryable === true,
      },
      ms: Math.round(performance.now() - t0),
    };
  }
}
