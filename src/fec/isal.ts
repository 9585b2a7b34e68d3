/**
 * The ISA-L backend of the FEC codec: the addon in `native/` (`fec.c`, built by node-gyp at
 * `npm install`, see `scripts/build-native.mjs`), loaded here if it is there.
 *
 * It computes the **same parity bytes** as `@ronomon/reed-solomon` (the library's own bit matrix
 * is handed to it), so shards from either backend decode with the other. What it changes is how:
 * the copy of each data slice into its message, the parity and the CRC-32 of every slice run in
 * one fused native pass (synchronous up to 1 MiB, else on libuv's threadpool), with AVX2 XORs
 * and a VPCLMULQDQ / ISA-L CRC-32;
 * a rebuild reads the shards' payloads in place and writes the part once. docs/fec.md has the
 * figures.
 *
 * `RESTARTPOINT_FEC_BACKEND=ronomon` turns it off (the pure `@ronomon/reed-solomon` path);
 * `RESTARTPOINT_FEC_BACKEND=isal` makes a missing addon an error at load instead of a fallback.
 * Without the addon, the first Reed-Solomon encode or rebuild of the process logs one warning
 * naming the reason and how to fix it.
 */
import { createRequire } from 'node:module';
import { ConfigError } from '../errors.js';
import { codecContext } from './reed-solomon.js';

/** The addon's API (native/fec.c). */
export interface IsalAddon {
  /** `avx2` or `scalar`: the XOR kernel the CPU got. */
  readonly xor: string;
  /** `vpclmulqdq` (the addon's 256-bit fold) or `isa-l` (ISA-L's PCLMULQDQ code): the CRC-32. */
  readonly crc: string;
  /** The schedule computing `targets` (bit i = shard i) from `present`, for a ronomon context. */
  plan(context: Buffer, present: number, targets: number): Buffer;
  encode(
    plan: Buffer,
    context: Buffer,
    part: Uint8Array,
    slab: Uint8Array,
    crcs: Uint32Array,
    layout: readonly [
      msgLen: number,
      bodyAt: number,
      stripe: number,
      stripes: number,
      from: number,
      to: number,
    ],
    done: ((error: Error | null) => void) | null,
  ): void;
  rebuild(
    plan: Buffer | null,
    context: Buffer,
    payloads: readonly (Uint8Array | undefined)[],
    out: Uint8Array,
    /** `from`, `to`: a range of units (super-chunks of stripes). */
    layout: readonly [payload: number, stripe: number, from: number, to: number],
    done: ((error: Error | null) => void) | null,
  ): void;
  crc32(data: Uint8Array, seed?: number): number;
  crc32Combine(crcA: number, crcB: number, lengthB: number): number;
  /** Each shard's CRC-32 over its units in order, from `encode`'s per-unit CRCs. */
  joinCrcs(crcs: Uint32Array, shards: number, units: number, unitBytes: number): number[];
  chunkSize(w: number, k: number, shardSize: number): number;
}

/** Where `npm install` puts the addon, from dist/src/fec/ or src/fec/. */
const ADDON = '../../../native/build/Release/restartpoint_fec.node';
const ADDON_FROM_SRC = '../../native/build/Release/restartpoint_fec.node';

function load(): { addon?: IsalAddon; reason?: string } {
  const wanted = process.env['RESTARTPOINT_FEC_BACKEND'];
  if (wanted !== undefined && wanted !== 'isal' && wanted !== 'ronomon') {
    throw new ConfigError('RESTARTPOINT_FEC_BACKEND', `must be 'isal' or 'ronomon', got '${wanted}'`);
  }
  if (wanted === 'ronomon') return { reason: 'RESTARTPOINT_FEC_BACKEND=ronomon' };
  const require = createRequire(import.meta.url);
  let reason = '';
  // RESTARTPOINT_FEC_ADDON: another path to the addon (tests point it at a missing file).
  const override = process.env['RESTARTPOINT_FEC_ADDON'];
  for (const path of override ? [override] : [ADDON, ADDON_FROM_SRC]) {
    try {
      return { addon: require(path) as IsalAddon };
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code === 'MODULE_NOT_FOUND') {
        reason ||= `the addon ${override ?? 'native/build/Release/restartpoint_fec.node'} is not built`;
        continue;
      }
      reason = e.message;
      break;
    }
  }
  if (wanted === 'isal') {
    throw new ConfigError(
      'RESTARTPOINT_FEC_BACKEND',
      `is 'isal' but the ISA-L addon does not load (${reason}); install libisal-dev and run 'npm run build:native'`,
    );
  }
  return { reason };
}

const loaded = load();

/** The addon, or undefined when the fallback (`@ronomon/reed-solomon`) is in use. */
export const isal: IsalAddon | undefined = loaded.addon;

/** Why the addon is not in use (undefined when it is). */
export const isalUnavailableReason: string | undefined = loaded.reason;

let warned = false;

/**
 * Logs, once per process, that the fallback is in use and why. Called by the first
 * Reed-Solomon encode or rebuild, so processes that never use FEC say nothing.
 */
export function warnFallbackOnce(): void {
  if (warned || isal || isalUnavailableReason === 'RESTARTPOINT_FEC_BACKEND=ronomon') return;
  warned = true;
  process.emitWarning(
    `FEC runs on @ronomon/reed-solomon, not the ISA-L backend (${isalUnavailableReason}): encode and rebuild ` +
      `use about 1.5-3x more CPU. Fix: install libisal-dev (Debian) and run 'npm run build:native'.`,
    { code: 'RESTARTPOINT_FEC_FALLBACK' },
  );
}

/** Which codec computes Reed-Solomon parity and rebuilds: `isal` (the addon) or `ronomon`. */
export type FecBackend = 'isal' | 'ronomon';

let active: FecBackend = isal ? 'isal' : 'ronomon';

/** The backend in use: `isal` unless the addon did not load or `useFecBackend` said otherwise. */
export function fecBackend(): FecBackend {
  return active;
}

/**
 * Switches the backend of this process (tests and the bench compare both in one process). Both
 * produce the same bytes. Throws `ConfigError` for `isal` when the addon is not loaded.
 */
export function useFecBackend(backend: FecBackend): void {
  if (backend === 'isal' && !isal) {
    throw new ConfigError('fec backend', `the ISA-L addon is not loaded (${isalUnavailableReason})`);
  }
  if (backend !== 'isal' && backend !== 'ronomon') {
    throw new ConfigError('fec backend', `must be 'isal' or 'ronomon', got '${String(backend)}'`);
  }
  active = backend;
}

/**
 * Parts up to this size are coded synchronously. Measured per 4+2 encode, synchronous against
 * on the threadpool (load 6): 64 KiB 18 against 45 µs, 256 KiB 61 against 153 µs, 1 MiB 218
 * against 353 µs of wall time, and less CPU too: the round trip (waking a thread, the
 * completion) costs more than it saves. A 1 MiB part blocks the event loop ~0.2 ms.
 */
export const ISAL_SYNC_BYTES = 1024 * 1024;
/** Most threadpool jobs one part is split into (stripes are divided among them). */
const MAX_JOBS = 4;

/** Schedules by k, m, present and target masks (a few per shape in practice). */
const plans = new Map<string, Buffer>();
const MAX_PLANS = 4096;

function planFor(addon: IsalAddon, k: number, m: number, present: number, targets: number): Buffer {
  const key = `${k}:${m}:${present}:${targets}`;
  let plan = plans.get(key);
  if (!plan) {
    if (plans.size >= MAX_PLANS) plans.clear();
    plan = addon.plan(codecContext(k, m), present, targets);
    plans.set(key, plan);
  }
  return plan;
}

/**
 * The addon's unit of work: one super-chunk (w packets, the library's packet size) of one
 * stripe. A part of one stripe still has several, so it can use more than one thread.
 */
function unitsOf(
  ctx: Buffer,
  k: number,
  stripe: number,
  stripes: number,
): { units: number; unitBytes: number } {
  const w = ctx[0]!;
  const unitBytes = w * isal!.chunkSize(w, k, stripe);
  return { units: stripes * (stripe / unitBytes), unitBytes };
}

/** Splits units [0, units) into up to MAX_JOBS jobs and runs `job` on each; sync for small parts. */
function split(
  bytes: number,
  units: number,
  job: (from: number, to: number, done: ((error: Error | null) => void) | null) => void,
): Promise<void> | undefined {
  if (bytes <= ISAL_SYNC_BYTES) {
    job(0, units, null);
    return undefined;
  }
  const jobs = Math.min(units, MAX_JOBS);
  const all: Promise<void>[] = [];
  for (let g = 0; g < jobs; g++) {
    const from = Math.floor((g * units) / jobs);
    const to = Math.floor(((g + 1) * units) / jobs);
    all.push(new Promise<void>((resolve, reject) => job(from, to, (e) => (e ? reject(e) : resolve()))));
  }
  return Promise.all(all).then(() => undefined);
}

/** The shard messages' layout in one slab, as `encodeInto` (shard.ts) lays them out. */
export interface SlabLayout {
  readonly data: number;
  readonly parity: number;
  readonly msgLen: number;
  readonly bodyAt: number;
  readonly stripe: number;
  readonly stripes: number;
}

/**
 * Fills the payloads of the k + m messages in `slab` (headers already written) from `part`,
 * zero padding included, and returns each message's payload CRC-32 (seed 0), in index order.
 * m ≥ 1. The slab and the part must not change until it resolves.
 */
export async function isalEncode(part: Uint8Array, slab: Uint8Array, l: SlabLayout): Promise<number[]> {
  const addon = isal!;
  const { data: k, parity: m, stripe, stripes } = l;
  const ctx = codecContext(k, m);
  const all = (1 << (k + m)) - 1;
  const dataMask = (1 << k) - 1;
  const plan = planFor(addon, k, m, dataMask, all & ~dataMask);
  const { units, unitBytes } = unitsOf(ctx, k, stripe, stripes);
  const crcs = new Uint32Array((k + m) * units);
  const running = split(part.byteLength, units, (from, to, done) =>
    addon.encode(plan, ctx, part, slab, crcs, [l.msgLen, l.bodyAt, stripe, stripes, from, to], done),
  );
  if (running) await running;
  return addon.joinCrcs(crcs, k + m, units, unitBytes);
}

/**
 * Rebuilds a Reed-Solomon part (k > 1) into `out` (k · payload bytes) from the shard payloads
 * given by index (`payloads[i]` for shard i, undefined when absent; at least k present, every one
 * `payload` bytes): present data slices are copied, missing ones computed from the first k
 * present shards. The payloads and `out` must not change until it resolves.
 */
export async function isalRebuild(
  k: number,
  m: number,
  stripe: number,
  payload: number,
  payloads: readonly (Uint8Array | undefined)[],
  out: Uint8Array,
): Promise<void> {
  const addon = isal!;
  let present = 0;
  payloads.forEach((p, i) => {
    if (p) present |= 1 << i;
  });
  const missing = ~present & ((1 << k) - 1);
  const ctx = codecContext(k, Math.max(m, 1));
  const plan = missing === 0 ? null : planFor(addon, k, m, present, missing);
  const { units } = unitsOf(ctx, k, stripe, payload / stripe);
  const running = split(k * payload, units, (from, to, done) =>
    addon.rebuild(plan, ctx, payloads, out, [payload, stripe, from, to], done),
  );
  if (running) await running;
}
