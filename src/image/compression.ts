/**
 * Image payload compression: brotli at quality 1 (node:zlib), decided per image frame.
 *
 * ```text
 * primary:  payload ──packImage──▶ { codec, payload, rawLength } ──▶ image record
 * standby:  image record ──unpackImage──▶ payload (exactly rawLength bytes)
 * ```
 *
 * When it pays: payloads under 1 KiB ship raw (one NATS message either way); larger ones are
 * compressed and kept compressed only when that saves at least 10 %. Payloads over 256 KiB
 * (keyframes, mostly) are first probed on a 64 KiB sample, so incompressible state (random
 * bytes in typed arrays) costs ~0.3 ms instead of a full pass, and are then compressed on
 * libuv's threadpool so the event loop is not blocked. Quality 1 compresses a 12 MB v8 image of
 * records at ~250 MB/s to ~30 % and JSON deltas to ~5-15 %; higher qualities cost several times
 * more for a few percent.
 */
import { Buffer } from 'node:buffer';
import { brotliCompress, brotliCompressSync, brotliDecompressSync, constants } from 'node:zlib';
import { ImageError } from '../errors.js';
import { ImageCodec } from '../protocol/records.js';

/** A payload as it goes into an image record. */
export interface PackedPayload {
  readonly codec: ImageCodec;
  readonly rawLength: number;
  readonly payload: Uint8Array;
}

/** Below this many bytes a payload ships raw. */
export const MIN_COMPRESS_BYTES = 1024;
/** Compressed output is kept only when it is at most this share of the raw size. */
const KEEP_RATIO = 0.9;
/** Above this many bytes compression is probed on a sample, then done off the event loop. */
export const SYNC_COMPRESS_BYTES = 256 * 1024;
const SAMPLE_BYTES = 64 * 1024;

function brotliOptions(size: number): { params: Record<number, number> } {
  return {
    params: {
      [constants.BROTLI_PARAM_QUALITY]: 1,
      [constants.BROTLI_PARAM_SIZE_HINT]: size,
    },
  };
}

function choose(raw: Uint8Array, compressed: Buffer): PackedPayload {
  return compressed.byteLength <= raw.byteLength * KEEP_RATIO
    ? { codec: ImageCodec.Brotli, rawLength: raw.byteLength, payload: compressed }
    : { codec: ImageCodec.None, rawLength: raw.byteLength, payload: raw };
}

function plain(raw: Uint8Array): PackedPayload {
  return { codec: ImageCodec.None, rawLength: raw.byteLength, payload: raw };
}

/**
 * Compresses `raw` when it pays (see the module comment). Small payloads come back at once; a
 * large one comes back as a promise, compressed on the threadpool. Never rejects: a failure to
 * compress ships the payload raw. `raw` must not change until the result is settled.
 */
export function packImage(raw: Uint8Array): PackedPayload | Promise<PackedPayload> {
  if (raw.byteLength < MIN_COMPRESS_BYTES) return plain(raw);
  if (raw.byteLength <= SYNC_COMPRESS_BYTES) {
    try {
      return choose(raw, brotliCompressSync(raw, brotliOptions(raw.byteLength)));
    } catch {
      return plain(raw);
    }
  }
  try {
    const sample = raw.subarray(0, SAMPLE_BYTES);
    const probe = brotliCompressSync(sample, brotliOptions(sample.byteLength));
    if (probe.byteLength > sample.byteLength * KEEP_RATIO) return plain(raw);
  } catch {
    return plain(raw);
  }
  return new Promise((resolve) => {
    brotliCompress(raw, brotliOptions(raw.byteLength), (err, out) => {
      resolve(err ? plain(raw) : choose(raw, out));
    });
  });
}

/**
 * The raw payload of an image record. Throws `ImageError` when the compressed bytes are corrupt
 * or do not decode to exactly `rawLength` bytes (decoding stops there, so a hostile length
 * cannot make it allocate more).
 */
export function unpackImage(codec: ImageCodec, payload: Uint8Array, rawLength: number): Uint8Array {
  if (codec === ImageCodec.None) {
    if (payload.byteLength !== rawLength) {
      throw new ImageError(`image payload has ${payload.byteLength} bytes, its record says ${rawLength}`);
    }
    return payload;
  }
  let out: Buffer;
  try {
    out = brotliDecompressSync(payload, { maxOutputLength: Math.max(1, rawLength) });
  } catch (cause) {
    throw new ImageError(
      `brotli image payload of ${payload.byteLength} bytes does not decode to the ${rawLength} bytes its record announces: ${
        cause instanceof Error ? cause.message : String(cause)
      }`,
      { cause },
    );
  }
  if (out.byteLength !== rawLength) {
    throw new ImageError(
      `brotli image payload decodes to ${out.byteLength} bytes, its record announces ${rawLength}`,
    );
  }
  return out;
}

/** A copy-free view of `bytes` as a Buffer. */
export function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
