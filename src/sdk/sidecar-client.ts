/**
 * Sidecar mode of the SDK: a Node app started by `restartpoint sidecar` finds the sidecar's
 * local API in its environment (`RESTARTPOINT_SIDECAR_URL`, `RESTARTPOINT_TOKEN_FILE` or
 * `RESTARTPOINT_TOKEN`), and `Restartpoint.start()` returns a node whose state is the image the
 * sidecar restored, whose store and checkpoints go through that API (docs/sidecar.md). The
 * sidecar holds the lease and replicates; the app code is the same in both modes.
 *
 * States travel as node:v8 bytes, so Maps, BigInts and Dates survive. Every checkpoint sends the
 * whole state (no tracked or identity deltas over HTTP; the sidecar diffs it).
 */
import { readFile } from 'node:fs/promises';
import { serialize, deserialize } from 'node:v8';
import {
  ClosedError,
  ConfigError,
  FencedError,
  InvalidArgumentError,
  NatsUnavailableError,
  ReplicationError,
  SerializationError,
  StorageError,
  type RestartpointError,
} from '../errors.js';
import { LimitError } from '../errors.js';
import type { CheckpointAck, CheckpointStats } from '../primary/replicator.js';
import type { WriteOp } from '../storage/adapter.js';
import type { TakeoverStats } from '../types.js';

/** The write path of a primary node, as the SDK facade uses it. */
export interface PrimaryEngine {
  write(op: WriteOp): Promise<void>;
  /** `write` copies a put's value before it returns (the caller may then reuse its buffer). */
  readonly copiesValues?: boolean;
  checkpoint(state: unknown): Promise<CheckpointAck>;
  readonly nextCheckpoint: number;
  readonly lastStats: CheckpointStats | undefined;
  stop(err: RestartpointError): void;
  drain(): Promise<void>;
}

/** What keeps a node primary (the lease keeper, or the sidecar). */
export interface RoleHolder {
  isValid(): boolean;
  stop(release: boolean): Promise<void>;
}

/** Where the sidecar's API is. */
export interface SidecarAddress {
  readonly url: string;
  readonly token: string | undefined;
  readonly tokenFile: string | undefined;
}

const V8 = 'application/x-v8-serialized';

/** The sidecar's address from the environment the sidecar gave its app, or undefined. */
export function sidecarFromEnv(env: NodeJS.ProcessEnv): SidecarAddress | undefined {
  const url = env.RESTARTPOINT_SIDECAR_URL;
  if (!url) return undefined;
  let parsed: URL | undefined;
  try {
    parsed = new URL(url);
  } catch {
    parsed = undefined;
  }
  if (!parsed || parsed.protocol !== 'http:') {
    throw new ConfigError(
      'RESTARTPOINT_SIDECAR_URL',
      `must be the sidecar's API URL like http://127.0.0.1:7878 (restartpoint sidecar sets it), got ${JSON.stringify(url)}: unset it to run without a sidecar, or pass sidecar: false`,
    );
  }
  return {
    url: url.replace(/\/+$/, ''),
    token: env.RESTARTPOINT_TOKEN,
    tokenFile: env.RESTARTPOINT_TOKEN_FILE,
  };
}

interface ApiError {
  error?: { code?: string; message?: string };
}

/** The sidecar's API as a primary engine. */
export class SidecarClient implements PrimaryEngine {
  readonly #url: string;
  readonly #token: string;
  #next = 1;
  #stopped: RestartpointError | undefined;
  #fenced = false;
  readonly #inFlight = new Set<Promise<unknown>>();
  lastStats: CheckpointStats | undefined;
  resumedEpoch: number | undefined;
  takeover: TakeoverStats = {
    detectMs: 0,
    catchUpMs: 0,
    rollbackMs: 0,
    fenceMs: 0,
    restoreMs: 0,
    previous: undefined,
  };

  private constructor(url: string, token: string) {
    this.#url = url;
    this.#token = token;
  }

  /** Reads the token and checks that the sidecar answers and is primary. */
  static async connect(where: SidecarAddress): Promise<SidecarClient> {
    let token = where.token;
    if (!token && where.tokenFile) {
      try {
        token = (await readFile(where.tokenFile, 'utf8')).trim();
      } catch (err) {
        throw new NatsUnavailableError(
          `cannot read the sidecar's token file ${where.tokenFile} (RESTARTPOINT_TOKEN_FILE): ${(err as Error).message}`,
        );
      }
    }
    if (!token) {
      throw new NatsUnavailableError(
        'RESTARTPOINT_SIDECAR_URL is set but neither RESTARTPOINT_TOKEN nor RESTARTPOINT_TOKEN_FILE: start the app through restartpoint sidecar, or unset RESTARTPOINT_SIDECAR_URL',
      );
    }
    const c = new SidecarClient(where.url, token);
    const status = (await c.#json('GET', '/status')) as {
      state?: string;
      resumedFrom?: { epoch: number; checkpoint: number } | null;
      takeover?: Partial<TakeoverStats> | null;
    };
    if (status.state !== 'primary') {
      throw new NatsUnavailableError(
        `the sidecar at ${where.url} is '${status.state}', not primary: the app runs only on the primary's sidecar`,
      );
    }
    c.resumedEpoch = status.resumedFrom?.epoch;
    if (status.takeover) c.takeover = { ...c.takeover, ...status.takeover };
    return c;
  }

  async #request(
    method: string,
    path: string,
    body?: Uint8Array,
    headers: Record<string, string> = {},
    allow404 = false,
  ): Promise<Response> {
    let res: Response;
    try {
      res = await fetch(this.#url + path, {
        method,
        headers: { authorization: `Bearer ${this.#token}`, ...headers },
        body,
      });
    } catch (err) {
      throw new NatsUnavailableError(
        `the sidecar at ${this.#url} cannot be reached: ${(err as Error).message}`,
        {
          cause: err,
        },
      );
    }
    if (res.ok || (allow404 && res.status === 404)) return res;
    let e: ApiError = {};
    try {
      e = (await res.json()) as ApiError;
    } catch {
      // not JSON: use the status alone
    }
    const code = e.error?.code ?? String(res.status);
    const message = `sidecar: ${e.error?.message ?? `${method} ${path} answered ${res.status}`}`;
    if (code === 'FENCED' || code === 'NOT_PRIMARY') {
      this.#fenced = true;
      throw new FencedError(message);
    }
    if (code === 'REPLICATION') throw new ReplicationError(message);
    if (code === 'LIMIT') throw new LimitError('limits', message);
    if (code === 'SERIALIZE') throw new SerializationError('state', message);
    if (res.status === 400) throw new InvalidArgumentError(message);
    throw new StorageError(message);
  }

  async #json(method: string, path: string): Promise<unknown> {
    return (await this.#request(method, path)).json();
  }

  /** The image the sidecar restored, its epoch and checkpoint (0 on a fresh app). */
  async restoredState(): Promise<{ state: unknown; epoch: number; resumedFrom: number }> {
    const res = await this.#request('GET', '/state', undefined, { accept: V8 });
    const epoch = Number(res.headers.get('restartpoint-epoch'));
    const resumedFrom = Number(res.headers.get('restartpoint-resumed-from') ?? 0);
    const state = deserialize(Buffer.from(await res.arrayBuffer()));
    this.#next = resumedFrom + 1;
    return { state, epoch, resumedFrom };
  }

  #track<T>(p: Promise<T>): Promise<T> {
    this.#inFlight.add(p);
    void p.then(
      () => this.#inFlight.delete(p),
      () => this.#inFlight.delete(p),
    );
    return p;
  }

  write(op: WriteOp): Promise<void> {
    if (this.#stopped) return Promise.reject(this.#stopped);
    const path = `/store/${encodeURIComponent(op.key)}`;
    return this.#track(
      (async () => {
        if (op.op === 'put') {
          await this.#request('PUT', path, op.value, { 'content-type': 'application/octet-stream' });
        } else await this.#request('DELETE', path);
      })(),
    );
  }

  async get(key: string): Promise<Uint8Array | undefined> {
    const res = await this.#request('GET', `/store/${encodeURIComponent(key)}`, undefined, {}, true);
    if (res.status === 404) {
      await res.body?.cancel();
      return undefined;
    }
    return new Uint8Array(await res.arrayBuffer());
  }

  get nextCheckpoint(): number {
    return this.#next;
  }

  checkpoint(state: unknown): Promise<CheckpointAck> {
    if (this.#stopped) return Promise.reject(this.#stopped);
    let bytes: Buffer;
    try {
      bytes = serialize(state);
    } catch (err) {
      return Promise.reject(
        new SerializationError(
          'state',
          `the state cannot be serialized for the sidecar: ${(err as Error).message}`,
        ),
      );
    }
    this.#next++;
    const t0 = performance.now();
    return this.#track(
      (async () => {
        const res = await this.#request('POST', '/checkpoint', bytes, { 'content-type': V8 });
        const ack = (await res.json()) as CheckpointAck;
        this.lastStats = {
          checkpoint: ack.checkpoint,
          imageBytes: bytes.byteLength,
          imageRawBytes: bytes.byteLength,
          keyframe: false,
          imagePath: 'diff',
          writeOps: 0,
          writeFrames: 0,
          writeBytes: 0,
          ms: performance.now() - t0,
        };
        return { epoch: ack.epoch, checkpoint: ack.checkpoint };
      })(),
    );
  }

  stop(err: RestartpointError): void {
    this.#stopped ??= err;
  }

  async drain(): Promise<void> {
    await Promise.allSettled([...this.#inFlight]);
  }

  /** Whether the sidecar still took this app's last request as primary's. */
  isValid(): boolean {
    return !this.#fenced && !this.#stopped;
  }

  async close(): Promise<void> {
    this.#stopped ??= new ClosedError();
    await this.drain();
  }
}
