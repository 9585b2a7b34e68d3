/**
 * The sidecar's local HTTP API (docs/sidecar.md, docs/sidecar-api.yaml): what an app that is not
 * written in JS uses instead of the SDK. It listens on 127.0.0.1 only, and every route but
 * `GET /healthz` and `GET /metrics` needs `Authorization: Bearer <token>`.
 *
 * ```text
 * POST   /checkpoint     body = the whole state (JSON or node:v8 bytes) ─► rp.checkpoint(state)
 *                        or a JSON merge patch (application/merge-patch+json) of the last state
 * POST   /batch          many writes and an optional checkpoint (state or patch) in one request
 * PUT    /store/{key}    body = the value's bytes                     ─► rp.store.put
 * GET    /store/{key}    ─► the value's bytes, or 404
 * DELETE /store/{key}    ─► rp.store.delete
 * GET    /state          ─► the restored image (rp.state), JSON or v8
 * GET    /status         ─► role, epoch, checkpoints, the supervised process
 * GET    /healthz        ─► 200 / 503                               (no token)
 * GET    /metrics        ─► Prometheus text                          (no token)
 * ```
 *
 * Every error is `{ "error": { "code", "message" } }`, the message saying what is wrong and how
 * to fix it. Bodies are read with a byte limit that is enforced while they stream in.
 */
import { hash, timingSafeEqual } from 'node:crypto';
import { chmod, lstat, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { deserialize, serialize } from 'node:v8';
import {
  ClosedError,
  FencedError,
  InvalidArgumentError,
  LimitError,
  ReplicationError,
  SerializationError,
} from '../errors.js';
import type { Restartpoint } from '../sdk/restartpoint.js';

/** Media type of node:v8 `serialize()` bytes. */
export const V8_MEDIA_TYPE = 'application/x-v8-serialized';

/** The sidecar's role as the API reports it. */
export type SidecarRole = 'standby' | 'primary' | 'stopping';

/** What the API needs from the sidecar: its role and, while primary, the instance. */
export interface ApiHost {
  /** The current role. */
  role(): SidecarRole;
  /** The instance while this node is primary (also once fenced, until it is closed). */
  instance(): Restartpoint<unknown> | undefined;
  /** The demotion, while the instance is fenced and not yet replaced. */
  fenced(): FencedError | undefined;
  /** The `GET /status` body. */
  status(): object;
  /** Whether `GET /healthz` answers 200, and why not otherwise. */
  health(): { ok: boolean; reason?: string };
}

/** A source of Prometheus text (`registry.metrics()` of prom-client). */
export interface MetricsSource {
  readonly contentType: string;
  text(): Promise<string>;
}

/** Options of `SidecarApi`. */
export interface SidecarApiOptions {
  readonly host: ApiHost;
  /** The bearer token every route but /healthz and /metrics needs. */
  readonly token: string;
  /** Port on 127.0.0.1; 0 picks a free one. */
  readonly port: number;
  /** Largest request body, bytes. */
  readonly maxBodyBytes: number;
  /** `GET /metrics`; without it the route answers 404 METRICS_DISABLED. */
  readonly metrics?: MetricsSource;
  /** Receives unexpected errors (those answered 500). */
  readonly onError?: (err: unknown, route: string) => void;
  /**
   * Also serve the API on this Unix-domain socket path (mode 0600), beside the TCP port. A
   * stale socket file left by a killed sidecar is replaced.
   */
  readonly socket?: string;
}

/** An error answered as `{ error: { code, message } }` with `status`. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** Routes and their methods (docs/sidecar-api.yaml has the same). */
export const ROUTES: Readonly<Record<string, readonly string[]>> = {
  '/checkpoint': ['POST'],
  '/batch': ['POST'],
  '/store/{key}': ['GET', 'PUT', 'DELETE'],
  '/state': ['GET'],
  '/status': ['GET'],
  '/healthz': ['GET'],
  '/metrics': ['GET'],
};
const PUBLIC = new Set(['/healthz', '/metrics']);

/** The local HTTP API of one sidecar. */
export class SidecarApi {
  readonly #o: SidecarApiOptions;
  readonly #server: Server;
  readonly #tokenDigest: Buffer;
  #port = 0;
  /** The server on `socket`, once listening. */
  #unix: Server | undefined;
  /** The sidecar's copy of the app's state, for merge patches (see `#patchState`). */
  #copy: { readonly rp: Restartpoint<unknown>; base: unknown; tracked: object | undefined } | undefined;
  /** Whether the app has sent a merge patch (then whole states are tracked too). */
  #patching = false;

  constructor(o: SidecarApiOptions) {
    this.#o = o;
    this.#tokenDigest = digest(o.token);
    this.#server = this.#newServer();
  }

  #newServer(): Server {
    const server = createServer((req, res) => {
      void this.#handle(req, res);
    });
    // A slow or stuck client must not hold a connection forever.
    server.requestTimeout = 120_000;
    server.headersTimeout = 10_000;
    // Keep-alive: an app reuses one connection for its requests (idle ones close after 65 s).
    server.keepAliveTimeout = 65_000;
    return server;
  }

  /** The port it listens on (after `listen()`). */
  get port(): number {
    return this.#port;
  }

  /** Starts listening on 127.0.0.1; resolves with the port. */
  listen(): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        reject(
          new InvalidArgumentError(
            err.code === 'EADDRINUSE'
              ? `api.port ${this.#o.port} is in use on 127.0.0.1: pick another port, or 0 for any free one`
              : `the sidecar API cannot listen on 127.0.0.1:${this.#o.port}: ${err.message}`,
          ),
        );
      };
      this.#server.once('error', onError);
      this.#server.listen(this.#o.port, '127.0.0.1', () => {
        this.#server.off('error', onError);
        resolve((this.#server.address() as AddressInfo).port);
      });
    }).then(async (port) => {
      if (this.#o.socket) await this.#listenUnix(this.#o.socket);
      // Set last: a non-zero `port` means every listener is up.
      this.#port = port;
      return port;
    });
  }

  /** Serves the API on a Unix-domain socket too (mode 0600). */
  async #listenUnix(path: string): Promise<void> {
    const st = await lstat(path).catch(() => undefined);
    if (st?.isSocket()) await rm(path, { force: true });
    else if (st) {
      throw new InvalidArgumentError(
        `api.socket ${path} exists and is not a socket: remove it or name another path`,
      );
    }
    const server = this.#newServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: Error) =>
        reject(
          new InvalidArgumentError(`the sidecar API cannot listen on api.socket ${path}: ${err.message}`),
        ),
      );
      server.listen(path, () => resolve());
    });
    await chmod(path, 0o600);
    this.#unix = server;
  }

  /** Stops listening and closes idle connections. */
  close(): Promise<void> {
    const servers = this.#unix ? [this.#server, this.#unix] : [this.#server];
    return Promise.all(
      servers.map(
        (server) =>
          new Promise<void>((resolve) => {
            server.close(() => resolve());
            server.closeIdleConnections();
            // Requests in flight get a moment to finish; then their connections are cut.
            setTimeout(() => server.closeAllConnections(), 2_000).unref();
          }),
      ),
    ).then(() => undefined);
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const rawPath = (req.url ?? '/').split('?')[0]!;
    const route = rawPath.startsWith('/store/') ? '/store/{key}' : rawPath;
    try {
      const methods = ROUTES[route];
      if (!methods) {
        throw new HttpError(
          404,
          'NOT_FOUND',
          `no route ${rawPath}: the API has ${Object.keys(ROUTES).join(', ')} (docs/sidecar-api.yaml)`,
        );
      }
      if (!methods.includes(req.method ?? '')) {
        throw new HttpError(
          405,
          'METHOD_NOT_ALLOWED',
          `${route} does not take ${req.method}: use ${methods.join(' or ')}`,
          { Allow: methods.join(', ') },
        );
      }
      if (!PUBLIC.has(route)) this.#authorize(req);
      switch (route) {
        case '/healthz':
          return this.#healthz(res);
        case '/metrics':
          return await this.#metrics(res);
        case '/status':
          return sendJson(res, 200, this.#o.host.status());
        case '/state':
          return this.#state(req, res);
        case '/checkpoint':
          return await this.#checkpoint(req, res);
        case '/batch':
          return await this.#batch(req, res);
        default:
          return await this.#store(req, res, rawPath.slice('/store/'.length));
      }
    } catch (err) {
      const e = toHttpError(err);
      if (e.status === 500) this.#o.onError?.(err, `${req.method} ${route}`);
      if (!res.headersSent) {
        sendJson(res, e.status, { error: { code: e.code, message: e.message } }, e.headers);
      } else {
        res.destroy();
      }
    }
  }

  #authorize(req: IncomingMessage): void {
    const h = req.headers.authorization;
    const m = typeof h === 'string' ? /^Bearer\s+(\S+)\s*$/i.exec(h) : null;
    const fix =
      'send the header Authorization: Bearer <token>, the token being the content of the file named by RESTARTPOINT_TOKEN_FILE (api.tokenFile)';
    const challenge = { 'WWW-Authenticate': 'Bearer realm="restartpoint"' };
    if (!m) throw new HttpError(401, 'UNAUTHORIZED', `no bearer token: ${fix}`, challenge);
    // Constant time: compare digests of equal length, never the raw strings.
    if (!timingSafeEqual(digest(m[1]!), this.#tokenDigest)) {
      throw new HttpError(401, 'UNAUTHORIZED', `wrong bearer token: ${fix}`, challenge);
    }
  }

  #healthz(res: ServerResponse): void {
    const h = this.#o.host.health();
    const body: Record<string, unknown> = { ok: h.ok, state: this.#o.host.role() };
    if (h.reason) body.reason = h.reason;
    sendJson(res, h.ok ? 200 : 503, body);
  }

  async #metrics(res: ServerResponse): Promise<void> {
    const m = this.#o.metrics;
    if (!m) {
      throw new HttpError(
        404,
        'METRICS_DISABLED',
        'metrics are disabled in this sidecar: set metrics.enabled: true in its config',
      );
    }
    const text = await m.text();
    res.writeHead(200, { 'Content-Type': m.contentType, 'Content-Length': Buffer.byteLength(text) });
    res.end(text);
  }

  /** The instance, or the error that says why this node cannot serve primary-only calls. */
  #primary(): Restartpoint<unknown> {
    const host = this.#o.host;
    const fenced = host.fenced();
    if (fenced) {
      throw new HttpError(
        409,
        'FENCED',
        `this node lost the lease (${fenced.message}): stop work; the sidecar stops this app and rejoins as a standby, and the new primary's app resumes from the last acknowledged checkpoint`,
      );
    }
    const rp = host.instance();
    const role = host.role();
    if (role === 'stopping') {
      throw new HttpError(409, 'NOT_PRIMARY', 'the sidecar is stopping: no more writes or checkpoints here');
    }
    if (!rp || role !== 'primary') {
      throw new HttpError(
        409,
        'NOT_PRIMARY',
        'this sidecar is a standby: only the primary takes writes and checkpoints; wait until GET /status says "primary" (the sidecar starts its app only then)',
      );
    }
    return rp;
  }

  #state(req: IncomingMessage, res: ServerResponse): void {
    const rp = this.#primary();
    const headers = {
      'Restartpoint-Epoch': String(rp.epoch),
      'Restartpoint-Resumed-From': String(rp.resumedFrom?.checkpoint ?? 0),
      'Cache-Control': 'no-store',
    };
    if (prefersV8(req.headers.accept)) {
      const bytes = serialize(rp.state);
      res.writeHead(200, { ...headers, 'Content-Type': V8_MEDIA_TYPE, 'Content-Length': bytes.length });
      res.end(bytes);
      return;
    }
    const problem = jsonProblem(rp.state);
    if (problem) {
      throw new HttpError(
        406,
        'NOT_JSON',
        `the state cannot be sent as JSON: ${problem}; ask for it with Accept: ${V8_MEDIA_TYPE} (node:v8 serialize format), or checkpoint JSON-only values`,
      );
    }
    sendJson(res, 200, rp.state, headers);
  }

  async #checkpoint(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const rp = this.#primary();
    const type = mediaType(req.headers['content-type']);
    if (type === MERGE_PATCH_MEDIA_TYPE) {
      const patch = parseJson(await readBody(req, this.#o.maxBodyBytes), 'a JSON merge patch');
      const ack = await rp.checkpoint(this.#patchState(rp, patch));
      sendJson(res, 200, { epoch: ack.epoch, checkpoint: ack.checkpoint });
      return;
    }
    if (type !== 'application/json' && type !== V8_MEDIA_TYPE) {
      throw new HttpError(
        415,
        'UNSUPPORTED_MEDIA_TYPE',
        `POST /checkpoint takes Content-Type application/json, ${MERGE_PATCH_MEDIA_TYPE} or ${V8_MEDIA_TYPE}, got ${type ? `'${type}'` : 'none'}: send the whole state as JSON with Content-Type: application/json`,
      );
    }
    const body = await readBody(req, this.#o.maxBodyBytes);
    let state: unknown;
    if (type === 'application/json') {
      try {
        state = JSON.parse(body.toString('utf8'));
      } catch (err) {
        throw new HttpError(
          400,
          'BAD_JSON',
          `the body is not valid JSON (${(err as Error).message}): send the whole state as one JSON value`,
        );
      }
    } else {
      try {
        state = deserialize(body);
      } catch (err) {
        // node:v8 reads on the call stack: a state nested some 2 000 levels deep overflows it.
        if (err instanceof RangeError) {
          throw new HttpError(
            413,
            'LIMIT',
            `the state is nested too deep for node:v8 to read (${err.message}): flatten it (limit 'limits.maxDepth', at most 1500 levels)`,
          );
        }
        throw new HttpError(
          400,
          'BAD_V8',
          `the body is not node:v8 serialize() bytes (${(err as Error).message}): send v8.serialize(state), or JSON with Content-Type: application/json`,
        );
      }
    }
    const ack = await rp.checkpoint(this.#wholeState(rp, state));
    sendJson(res, 200, { epoch: ack.epoch, checkpoint: ack.checkpoint });
  }

  /** A whole new state: it becomes the base later merge patches apply to. */
  #wholeState(rp: Restartpoint<unknown>, state: unknown): unknown {
    // Once the app has sent a patch, a whole state is tracked from the start, so the next
    // patch's checkpoint is O(change) at once (tracking it only then makes that checkpoint diff
    // the whole state). An app that only sends whole states keeps the untracked path, which
    // measured about twice as fast for a whole new state each time.
    let tracked: object | undefined;
    if (this.#patching && isPlainObject(state)) {
      try {
        tracked = rp.track(state);
      } catch {
        tracked = undefined; // not trackable: patches track it later, or replace it
      }
    }
    this.#copy = { rp, base: state, tracked };
    return tracked ?? state;
  }

  /**
   * Applies a JSON merge patch (RFC 7386) to the sidecar's copy of the state and returns what
   * to checkpoint. The copy is the last state this API checkpointed for this instance, or the
   * restored state (`GET /state`) before the first. It is wrapped with `rp.track()`, so the
   * patch's changes are recorded as it is applied and the checkpoint encodes only them (the
   * SDK's tracked path: O(changed entries), not O(state)).
   */
  #patchState(rp: Restartpoint<unknown>, patch: unknown): unknown {
    this.#patching = true;
    // The restored state is copied: `GET /state` keeps answering it unchanged.
    if (this.#copy?.rp !== rp) this.#copy = { rp, base: structuredClone(rp.state), tracked: undefined };
    const copy = this.#copy;
    const problem = patchProblem(patch);
    if (problem) throw new HttpError(400, 'BAD_PATCH', `${problem}: send a JSON merge patch (RFC 7386)`);
    if (!isPlainObject(patch) || !isPlainObject(copy.base)) {
      // A non-object patch replaces the state; so does any patch of a state that is no object.
      return this.#wholeState(rp, isPlainObject(patch) ? mergeInto({}, patch) : patch);
    }
    copy.tracked ??= rp.track(copy.base);
    mergeInto(copy.tracked as Record<string, unknown>, patch);
    return copy.tracked;
  }

  /**
   * `POST /batch`: `{ "writes": [...], "checkpoint": { "state" | "patch": ... } }`. The writes
   * are handed to `rp.store` in order, pipelined, and the checkpoint (if any) is called after
   * them, so it seals them all. Answered once every write is in the local store and the
   * checkpoint is acknowledged: what `PUT /store` and `POST /checkpoint` each wait for.
   */
  async #batch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const rp = this.#primary();
    const type = mediaType(req.headers['content-type']);
    if (type !== 'application/json') {
      throw new HttpError(
        415,
        'UNSUPPORTED_MEDIA_TYPE',
        `POST /batch takes Content-Type application/json, got ${type ? `'${type}'` : 'none'}`,
      );
    }
    const batch = parseBatch(parseJson(await readBody(req, this.#o.maxBodyBytes), 'a batch'));
    // Everything below is called synchronously, in order: the checkpoint seals every write.
    const n = batch.writes.length;
    const pending: Promise<unknown>[] = new Array<Promise<unknown>>(n);
    for (let i = 0; i < n; i++) {
      const w = batch.writes[i]!;
      pending[i] = w.value === undefined ? rp.store.delete(w.key) : rp.store.put(w.key, w.value);
    }
    const c = batch.checkpoint;
    if (c)
      pending.push(
        rp.checkpoint('patch' in c ? this.#patchState(rp, c.patch) : this.#wholeState(rp, c.state)),
      );
    // One wait for all: the checkpoint settles after every write it seals reached the store.
    const done = await Promise.allSettled(pending);
    for (let i = 0; i < n; i++) {
      const d = done[i]!;
      if (d.status === 'fulfilled') continue;
      const e = toHttpError(d.reason);
      throw new HttpError(
        e.status,
        e.code,
        `write ${i} (key ${JSON.stringify(batch.writes[i]!.key)}) failed: ${e.message}; the other writes${c ? ' and the checkpoint' : ''} went ahead without it`,
        e.headers,
      );
    }
    if (!c) return sendJsonText(res, 200, `{"writes":${n}}`);
    const ack = done[n]!;
    if (ack.status === 'rejected') throw ack.reason;
    const { epoch, checkpoint } = ack.value as { epoch: number; checkpoint: number };
    sendJsonText(res, 200, `{"writes":${n},"checkpoint":{"epoch":${epoch},"checkpoint":${checkpoint}}}`);
  }

  async #store(req: IncomingMessage, res: ServerResponse, encoded: string): Promise<void> {
    let key: string;
    try {
      key = decodeURIComponent(encoded);
    } catch {
      throw new HttpError(
        400,
        'BAD_KEY',
        `the key '${encoded.slice(0, 100)}' is not valid percent-encoding: encode it with encodeURIComponent (urllib.parse.quote(key, safe=''))`,
      );
    }
    if (key === '') {
      throw new HttpError(400, 'BAD_KEY', 'the key is empty: use /store/<percent-encoded key>');
    }
    const rp = this.#primary();
    if (req.method === 'GET') {
      const value = await rp.store.get(key);
      if (value === undefined) {
        throw new HttpError(
          404,
          'NO_SUCH_KEY',
          `no value under the key ${JSON.stringify(key)} in this store`,
        );
      }
      res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': value.byteLength });
      res.end(value);
      return;
    }
    if (req.method === 'DELETE') {
      await rp.store.delete(key);
    } else {
      const body = await readBody(req, this.#o.maxBodyBytes);
      await rp.store.put(key, body);
    }
    res.writeHead(204);
    res.end();
  }
}

/** Media type of a JSON merge patch (RFC 7386). */
export const MERGE_PATCH_MEDIA_TYPE = 'application/merge-patch+json';

function parseJson(body: Buffer, what: string): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new HttpError(
      400,
      'BAD_JSON',
      `the body is not valid JSON (${(err as Error).message}): send ${what}`,
    );
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v) as object | null;
  return proto === Object.prototype || proto === null;
}

/** Why a merge patch is refused: a `__proto__` key anywhere (it would change a prototype). */
function patchProblem(patch: unknown, path = 'patch'): string | undefined {
  if (!isPlainObject(patch)) return undefined;
  for (const [k, v] of Object.entries(patch)) {
    if (k === '__proto__') return `${path} has a "__proto__" key`;
    const p = patchProblem(v, `${path}.${k}`);
    if (p) return p;
  }
  return undefined;
}

/**
 * RFC 7386 merge: `null` deletes a key, an object merges into an object, anything else
 * replaces. `target` may be a tracked proxy: every change goes through it.
 */
function mergeInto(target: Record<string, unknown>, patch: Record<string, unknown>): Record<string, unknown> {
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) {
      delete target[k];
      continue;
    }
    const cur = Object.prototype.hasOwnProperty.call(target, k) ? target[k] : undefined;
    if (isPlainObject(v) && isPlainObject(cur)) mergeInto(cur, v);
    else target[k] = isPlainObject(v) ? mergeInto({}, v) : v;
  }
  return target;
}

/** One write of a batch: a put (value set) or a delete. */
interface BatchWrite {
  readonly key: string;
  readonly value: Buffer | string | undefined;
}

/**
 * Decodes standard base64 with padding (RFC 4648 §4), or `undefined` when `v` is anything else.
 * Node's decoder skips characters outside the alphabet and accepts the URL-safe one, so the
 * decoded length is checked against the length `v` must decode to: a skipped character, inner
 * padding or a third `=` makes it shorter. Same verdicts as `/^[A-Za-z0-9+/]*={0,2}$/` with
 * `length % 4 === 0` (checked against it in test/unit/base64.test.ts), without a regex pass
 * over every value (about 5 µs per KiB here; a batch carries many).
 */
export function decodeBase64Strict(v: string): Buffer | undefined {
  const n = v.length;
  if (n % 4 !== 0) return undefined;
  if (n >= 3 && v.charCodeAt(n - 3) === 61) return undefined;
  if (v.includes('-') || v.includes('_')) return undefined;
  const pad = n > 0 && v.charCodeAt(n - 1) === 61 ? (v.charCodeAt(n - 2) === 61 ? 2 : 1) : 0;
  const bytes = Buffer.from(v, 'base64');
  return bytes.length === (n / 4) * 3 - pad ? bytes : undefined;
}

/** Checks a `POST /batch` body; throws `HttpError` 400 naming the first bad field. */
function parseBatch(body: unknown): {
  writes: BatchWrite[];
  checkpoint: { state: unknown } | { patch: unknown } | undefined;
} {
  const bad = (msg: string): HttpError =>
    new HttpError(
      400,
      'BAD_BATCH',
      `${msg}: send { "writes": [{ "key": "k", "text": "…" } | { "key": "k", "value": "<base64>" } | { "op": "delete", "key": "k" }], "checkpoint": { "state": … } | { "patch": … } } (docs/sidecar-api.yaml)`,
    );
  if (!isPlainObject(body)) throw bad('the body is not a JSON object');
  for (const k of Object.keys(body)) {
    if (k !== 'writes' && k !== 'checkpoint') throw bad(`unknown field ${JSON.stringify(k)}`);
  }
  const rawWrites = body.writes ?? [];
  if (!Array.isArray(rawWrites)) throw bad('"writes" is not an array');
  // One pass over what JSON.parse made: each write's fields are checked and its value decoded
  // as they are read (no second walk, no per-write arrays).
  const writes = new Array<BatchWrite>(rawWrites.length);
  for (let i = 0; i < rawWrites.length; i++) {
    const w: unknown = rawWrites[i];
    if (!isPlainObject(w)) throw bad(`writes[${i}] is not an object`);
    let op: unknown = 'put';
    let key: unknown;
    let value: unknown;
    let text: unknown;
    for (const k of Object.keys(w)) {
      if (k === 'key') key = w.key;
      else if (k === 'value') value = w.value;
      else if (k === 'text') text = w.text;
      else if (k === 'op') op = w.op;
      else throw bad(`writes[${i}] has an unknown field ${JSON.stringify(k)}`);
    }
    if (typeof key !== 'string' || key === '') throw bad(`writes[${i}].key is not a non-empty string`);
    if (op === 'delete') {
      if (value !== undefined || text !== undefined) throw bad(`writes[${i}] deletes, and has a value`);
      writes[i] = { key, value: undefined };
      continue;
    }
    if (op !== 'put') throw bad(`writes[${i}].op is ${JSON.stringify(op)}, not "put" or "delete"`);
    if ((value === undefined) === (text === undefined)) {
      throw bad(`writes[${i}] needs exactly one of "text" (a string) and "value" (base64 bytes)`);
    }
    if (text !== undefined) {
      if (typeof text !== 'string') throw bad(`writes[${i}].text is not a string`);
      // The SDK encodes a string value as UTF-8 itself, without the copy a Buffer gets.
      writes[i] = { key, value: text };
      continue;
    }
    const bytes = typeof value === 'string' ? decodeBase64Strict(value) : undefined;
    if (bytes === undefined) throw bad(`writes[${i}].value is not base64 (RFC 4648, with padding)`);
    writes[i] = { key, value: bytes };
  }
  const c = body.checkpoint;
  if (c === undefined) return { writes, checkpoint: undefined };
  if (!isPlainObject(c) || Object.keys(c).length !== 1 || !('state' in c || 'patch' in c)) {
    throw bad('"checkpoint" must be { "state": <the whole state> } or { "patch": <a JSON merge patch> }');
  }
  if ('patch' in c) {
    const problem = patchProblem(c.patch);
    if (problem) throw new HttpError(400, 'BAD_PATCH', `${problem}: send a JSON merge patch (RFC 7386)`);
  }
  return { writes, checkpoint: 'state' in c ? { state: c.state } : { patch: c.patch } };
}

function digest(s: string): Buffer {
  // One-shot: half the cost of a createHash object, once per request.
  return hash('sha256', s, 'buffer');
}

function mediaType(h: string | undefined): string {
  return (h ?? '').split(';')[0]!.trim().toLowerCase();
}

/** Whether the Accept header asks for v8 bytes (named explicitly, and not refused with q=0). */
function prefersV8(accept: string | undefined): boolean {
  if (!accept) return false;
  return accept.split(',').some((part) => {
    const [type, ...params] = part.split(';').map((s) => s.trim().toLowerCase());
    return type === V8_MEDIA_TYPE && !params.some((p) => /^q=0(\.0*)?$/.test(p));
  });
}

function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    ...headers,
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

/** Sends JSON text built by the caller (ASCII only): headers and body leave in one write. */
function sendJsonText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, [
    'Content-Type',
    'application/json; charset=utf-8',
    'Content-Length',
    String(text.length),
  ]);
  res.end(text);
}

/** Reads a body of at most `limit` bytes; refuses a larger one as soon as it is seen to be. */
export function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const tooLarge = (n: string): HttpError => {
    // The rest of the upload is not read: `Connection: close` ends the connection after the answer.
    return new HttpError(
      413,
      'TOO_LARGE',
      `the body is ${n} bytes, over the limit of ${limit}: send less, or raise api.maxBodyBytes in the sidecar config`,
      { Connection: 'close' },
    );
  };
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > limit) return Promise.reject(tooLarge(declared));
  return new Promise((resolve, reject) => {
    // A body that arrives in one chunk (most do, up to some 64 KiB) is used as it is, not copied.
    let first: Buffer | undefined;
    let chunks: Buffer[] | undefined;
    let size = 0;
    let done = false;
    req.on('data', (chunk: Buffer) => {
      if (done) return;
      size += chunk.length;
      if (size > limit) {
        done = true;
        first = chunks = undefined;
        req.pause();
        reject(tooLarge(`more than ${limit}`));
        return;
      }
      if (first === undefined) first = chunk;
      else (chunks ??= [first]).push(chunk);
    });
    req.on('end', () => {
      if (done) return;
      done = true;
      resolve(chunks ? Buffer.concat(chunks, size) : (first ?? Buffer.alloc(0)));
    });
    req.on('error', (err) => {
      if (done) return;
      done = true;
      reject(new HttpError(400, 'BAD_BODY', `the body could not be read: ${err.message}`));
    });
  });
}

/**
 * Why `value` cannot round-trip through JSON (a path and a type), or `undefined` when it can:
 * only null, booleans, finite numbers, strings, arrays and plain objects, without cycles.
 */
export function jsonProblem(value: unknown, path = 'state', seen = new Set<object>()): string | undefined {
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return undefined;
  if (typeof value === 'number') {
    return Number.isFinite(value) ? undefined : `${path} is ${String(value)} (JSON has no such number)`;
  }
  if (value === undefined) return `${path} is undefined`;
  if (typeof value !== 'object') return `${path} is a ${typeof value}`;
  if (seen.has(value)) return `${path} is a cycle (it contains itself)`;
  const proto = Object.getPrototypeOf(value) as object | null;
  if (!Array.isArray(value) && proto !== Object.prototype && proto !== null) {
    const name = (value as { constructor?: { name?: string } }).constructor?.name ?? 'object';
    return `${path} is a ${name}`;
  }
  seen.add(value);
  try {
    if (Array.isArray(value)) {
      for (let i = 0; i < value.length; i++) {
        if (!(i in value)) return `${path}[${i}] is a hole in a sparse array`;
        const p = jsonProblem(value[i], `${path}[${i}]`, seen);
        if (p) return p;
      }
      return undefined;
    }
    for (const [k, v] of Object.entries(value)) {
      const p = jsonProblem(
        v,
        /^[A-Za-z_$][\w$]*$/.test(k) ? `${path}.${k}` : `${path}[${JSON.stringify(k)}]`,
        seen,
      );
      if (p) return p;
    }
    return undefined;
  } finally {
    seen.delete(value);
  }
}

/** Maps an error of the SDK (or the API) to its HTTP answer. */
export function toHttpError(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  if (err instanceof FencedError) {
    return new HttpError(
      409,
      'FENCED',
      `this node lost the lease (${err.message}): stop work; the new primary's app resumes from the last acknowledged checkpoint`,
    );
  }
  if (err instanceof ClosedError) {
    return new HttpError(409, 'NOT_PRIMARY', 'the sidecar is stopping: no more writes or checkpoints here');
  }
  if (err instanceof ReplicationError) {
    return new HttpError(
      503,
      'REPLICATION',
      `${err.message} — retryable: send the same request again (the next checkpoint also covers this one)`,
      { 'Retry-After': '1' },
    );
  }
  // A key over `limits.maxKeyBytes` is a bad key (400); anything else over a limit is too large (413).
  if (err instanceof LimitError) {
    return new HttpError(err.limit === 'limits.maxKeyBytes' ? 400 : 413, 'LIMIT', err.message);
  }
  if (err instanceof SerializationError) return new HttpError(400, 'SERIALIZE', err.message);
  if (err instanceof InvalidArgumentError) return new HttpError(400, 'INVALID_ARGUMENT', err.message);
  return new HttpError(
    500,
    'INTERNAL',
    `unexpected error: ${(err as Error)?.message ?? String(err)} (see the sidecar's log)`,
  );
}
