/**
 * The authentication envelope (guarantee 4, signed mode): with a cluster key configured, every
 * message on the app's subject — a frame part (`RP`) or an FEC shard (`RS`) — travels wrapped in
 * an envelope that carries an HMAC-SHA256 of its header and body, and optionally an AES-256-GCM
 * encrypted body. The standby opens the envelope before anything else reads the inner bytes, so
 * the frame and shard decoders (and node:v8, which deserializes images) never see bytes that
 * did not come from a holder of the cluster key.
 *
 * Where it sits in the pipeline (one codec among the others):
 *
 * ```text
 * primary:  frame ─ encodeFrame ─► parts ─(encodeShards)─► messages ─ seal ─► relays
 * standby:  relays ─► open ─► messages ─(decodeShard + assembler)─► parts ─ decodePart ─► applier
 * ```
 *
 * Byte layout (all integers big-endian, unsigned):
 *
 * ```text
 * off      size  field
 *   0         2  magic 0x52 0x41 ("RA")
 *   2         1  version (1)
 *   3         1  key id (0..255): which cluster key signed (and encrypted) this message
 *   4         1  flags: bit 0 = body encrypted (AES-256-GCM); bits 1..7 are 0
 *   5         3  reserved (0)
 *   8         4  B = body bytes
 *  12         N  nonce: 12 random bytes when encrypted, absent otherwise (N = 0)
 *  12+N      32  MAC: HMAC-SHA256 under the key id's MAC key over bytes [0, 12+N) ++ body
 *  44+N       B  body: the inner message; when encrypted, its AES-256-GCM ciphertext followed
 *                by the 16-byte tag (the header [0, 12+N) is the additional authenticated data)
 *  44+N+B     4  CRC-32 (zlib) of bytes [0, 44+N+B)
 * ```
 *
 * Keys. Each cluster key (at least 32 bytes) yields two keys by HKDF-SHA256 (salt
 * `restartpoint-envelope-v1`): the MAC key with info `mac:<app>` and the encryption key with info
 * `enc:<app>`, so the two uses never share a key and a message signed for one app does not verify
 * for another. A plain `clusterKey` has key id 0.
 *
 * Checks, in order, each a `FrameError` the standby counts: too short or B past the end →
 * `truncated`; no `RA` magic → `unsigned` when it is a bare part or shard (`RP`/`RS`), `magic`
 * otherwise; CRC-32 mismatch → `checksum` (an accident on the way: flipped bits, a cut message);
 * unknown version → `version`; unknown flag bits or non-zero reserved bytes → `malformed`; key id
 * not configured, MAC mismatch, or a GCM tag that does not verify → `forged`. The CRC comes first
 * so that damage reads as damage; the MAC is what an adversary cannot get past, as a forger can
 * recompute the CRC but not the MAC.
 */
import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  hkdfSync,
  randomBytes,
  timingSafeEqual,
} from 'node:crypto';
import { crc32 } from 'node:zlib';
import { ConfigError, FrameError, FrameRejectReason } from '../errors.js';

/** Envelope magic ("RA"). */
export const ENVELOPE_MAGIC = 'RA';
/** Current envelope version. */
export const ENVELOPE_VERSION = 1;
/** Fixed header bytes before the nonce. */
export const ENVELOPE_HEADER_BYTES = 12;
const NONCE_BYTES = 12;
const MAC_BYTES = 32;
const TAG_BYTES = 16;
const CRC_BYTES = 4;
const FLAG_ENCRYPTED = 0x01;
/** Shortest cluster key, in bytes. */
export const MIN_KEY_BYTES = 32;
const SALT = Buffer.from('restartpoint-envelope-v1', 'ascii');

/**
 * A cluster key: raw bytes, or a string read as hex when it is all hex digits (64+ needed), as
 * base64 when it is base64 of 32+ bytes, else as UTF-8 text (32+ bytes needed).
 */
export type ClusterKeyMaterial = string | Uint8Array;

/**
 * The `clusterKey` option: one key (key id 0), or several during a rotation window, of which
 * `current` signs (and encrypts) and all verify.
 */
export type ClusterKeyOption =
  ClusterKeyMaterial | { keys: readonly { id: number; key: ClusterKeyMaterial }[]; current: number };

/** A validated cluster key set: raw key bytes by id, and the id that signs. */
export interface ClusterKeys {
  readonly keys: ReadonlyMap<number, Buffer>;
  readonly current: number;
}

/** Bytes an envelope adds to a message (`encrypt`: nonce and GCM tag too). */
export function envelopeOverhead(encrypt: boolean): number {
  return ENVELOPE_HEADER_BYTES + MAC_BYTES + CRC_BYTES + (encrypt ? NONCE_BYTES + TAG_BYTES : 0);
}

const FIX =
  'use at least 32 random bytes, for example the 64 hex digits of `openssl rand -hex 32` or a Buffer from crypto.randomBytes(32)';

/** Turns one key into bytes; throws `ConfigError` naming `option` when it is too weak or not a key. */
export function parseKeyMaterial(v: unknown, option = 'clusterKey'): Buffer {
  let bytes: Buffer;
  if (typeof v === 'string') {
    // All hex digits reads as hex, whatever its length: 32 hex digits are 16 bytes, not 32.
    if (/^(?:[0-9a-fA-F]{2})+$/.test(v)) bytes = Buffer.from(v, 'hex');
    else if (/^[A-Za-z0-9+/_-]+={0,2}$/.test(v) && Buffer.from(v, 'base64').length >= MIN_KEY_BYTES)
      bytes = Buffer.from(v, 'base64');
    else bytes = Buffer.from(v, 'utf8');
  } else if (v instanceof Uint8Array) {
    bytes = Buffer.from(v);
  } else {
    throw new ConfigError(option, `must be a string or a Buffer of at least ${MIN_KEY_BYTES} bytes: ${FIX}`);
  }
  if (bytes.length < MIN_KEY_BYTES) {
    throw new ConfigError(option, `is ${bytes.length} bytes, fewer than ${MIN_KEY_BYTES}: ${FIX}`);
  }
  return bytes;
}

/** Validates the `clusterKey` option; throws `ConfigError` naming the field and the fix. */
export function parseClusterKey(v: unknown): ClusterKeys {
  if (typeof v === 'string' || v instanceof Uint8Array) {
    return { keys: new Map([[0, parseKeyMaterial(v)]]), current: 0 };
  }
  const o = v as { keys?: unknown; current?: unknown } | null;
  if (o === null || typeof o !== 'object' || !Array.isArray(o.keys) || o.keys.length === 0) {
    throw new ConfigError(
      'clusterKey',
      `must be a key (string or Buffer of at least ${MIN_KEY_BYTES} bytes) or { keys: [{ id, key }], current: id } during a rotation`,
    );
  }
  const keys = new Map<number, Buffer>();
  for (const [i, entry] of (o.keys as unknown[]).entries()) {
    const e = entry as { id?: unknown; key?: unknown } | null;
    const id = e?.id;
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id > 255) {
      throw new ConfigError(
        `clusterKey.keys[${i}].id`,
        `must be an integer from 0 to 255, got ${JSON.stringify(id)}`,
      );
    }
    if (keys.has(id))
      throw new ConfigError(`clusterKey.keys[${i}].id`, `repeats key id ${id}: each key needs its own id`);
    keys.set(id, parseKeyMaterial(e?.key, `clusterKey.keys[${i}].key`));
  }
  const current = o.current;
  if (typeof current !== 'number' || !keys.has(current)) {
    throw new ConfigError(
      'clusterKey.current',
      `must be the id of one of clusterKey.keys (${[...keys.keys()].join(', ')}): the key that signs, got ${JSON.stringify(current)}`,
    );
  }
  return { keys, current };
}

interface DerivedKey {
  readonly mac: Buffer;
  readonly enc: Buffer;
}

function derive(key: Buffer, app: string): DerivedKey {
  return {
    mac: Buffer.from(hkdfSync('sha256', key, SALT, `mac:${app}`, 32)),
    enc: Buffer.from(hkdfSync('sha256', key, SALT, `enc:${app}`, 32)),
  };
}

/**
 * Seals and opens envelopes of one app. `seal` signs with the current key (and encrypts when
 * `encrypt`); `open` accepts any configured key and either body form.
 */
export class EnvelopeCodec {
  readonly #keys: Map<number, DerivedKey>;
  readonly #current: number;
  readonly #encrypt: boolean;

  constructor(opts: { app: string; keys: ClusterKeys; encrypt?: boolean }) {
    this.#keys = new Map([...opts.keys.keys].map(([id, k]) => [id, derive(k, opts.app)]));
    this.#current = opts.keys.current;
    this.#encrypt = opts.encrypt ?? false;
  }

  /** Bytes `seal` adds to a message. */
  get overhead(): number {
    return envelopeOverhead(this.#encrypt);
  }

  /** Wraps one message (a part or a shard) in a signed (and maybe encrypted) envelope. */
  seal(inner: Uint8Array): Buffer {
    const k = this.#keys.get(this.#current)!;
    const nonceBytes = this.#encrypt ? NONCE_BYTES : 0;
    const headerLen = ENVELOPE_HEADER_BYTES + nonceBytes;
    const bodyLen = inner.byteLength + (this.#encrypt ? TAG_BYTES : 0);
    const out = Buffer.alloc(headerLen + MAC_BYTES + bodyLen + CRC_BYTES);
    out[0] = 0x52;
    out[1] = 0x41;
    out[2] = ENVELOPE_VERSION;
    out[3] = this.#current;
    out[4] = this.#encrypt ? FLAG_ENCRYPTED : 0;
    out.writeUInt32BE(bodyLen, 8);
    const header = out.subarray(0, headerLen);
    const bodyAt = headerLen + MAC_BYTES;
    if (this.#encrypt) {
      const nonce = randomBytes(NONCE_BYTES);
      nonce.copy(out, ENVELOPE_HEADER_BYTES);
      const c = createCipheriv('aes-256-gcm', k.enc, nonce);
      c.setAAD(header);
      const n = c.update(inner).copy(out, bodyAt);
      c.final().copy(out, bodyAt + n);
      c.getAuthTag().copy(out, bodyAt + inner.byteLength);
    } else {
      out.set(inner, bodyAt);
    }
    const body = out.subarray(bodyAt, bodyAt + bodyLen);
    createHmac('sha256', k.mac).update(header).update(body).digest().copy(out, headerLen);
    out.writeUInt32BE(crc32(out.subarray(0, bodyAt + bodyLen)) >>> 0, bodyAt + bodyLen);
    return out;
  }

  /**
   * Verifies one envelope and returns the inner message (decrypted). Throws `FrameError`
   * (`truncated`, `unsigned`, `magic`, `checksum`, `version`, `malformed`, `forged`) and never
   * hands back a byte the MAC did not cover.
   */
  open(bytes: Uint8Array): Uint8Array {
    const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (b.length >= 2 && b[0] === 0x52 && (b[1] === 0x50 || b[1] === 0x53)) {
      throw new FrameError(
        FrameRejectReason.Unsigned,
        `an unsigned ${b[1] === 0x50 ? 'part' : 'shard'} (${b.length} bytes) where a cluster key requires an envelope`,
      );
    }
    if (b.length < 2 || b[0] !== 0x52 || b[1] !== 0x41) {
      if (b.length < 2) throw new FrameError(FrameRejectReason.Truncated, `${b.length} bytes is no envelope`);
      throw new FrameError(
        FrameRejectReason.Magic,
        `magic 0x${b.subarray(0, 2).toString('hex')} is not an envelope ("RA")`,
      );
    }
    if (b.length < ENVELOPE_HEADER_BYTES + MAC_BYTES + CRC_BYTES) {
      throw new FrameError(
        FrameRejectReason.Truncated,
        `envelope of ${b.length} bytes is shorter than its header`,
      );
    }
    const flags = b[4]!;
    const nonceBytes = flags & FLAG_ENCRYPTED ? NONCE_BYTES : 0;
    const headerLen = ENVELOPE_HEADER_BYTES + nonceBytes;
    const bodyLen = b.readUInt32BE(8);
    const bodyAt = headerLen + MAC_BYTES;
    const end = bodyAt + bodyLen;
    if (end + CRC_BYTES > b.length) {
      throw new FrameError(
        FrameRejectReason.Truncated,
        `envelope body of ${bodyLen} bytes runs past the ${b.length}-byte message`,
      );
    }
    if (end + CRC_BYTES < b.length) {
      throw new FrameError(
        FrameRejectReason.Malformed,
        `${b.length - end - CRC_BYTES} stray bytes after the envelope`,
      );
    }
    if (crc32(b.subarray(0, end)) >>> 0 !== b.readUInt32BE(end)) {
      throw new FrameError(FrameRejectReason.Checksum, 'envelope CRC-32 mismatch');
    }
    if (b[2] !== ENVELOPE_VERSION) {
      throw new FrameError(
        FrameRejectReason.Version,
        `envelope version ${b[2]} (this build reads ${ENVELOPE_VERSION})`,
      );
    }
    if ((flags & ~FLAG_ENCRYPTED) !== 0 || b[5] !== 0 || b[6] !== 0 || b[7] !== 0) {
      throw new FrameError(
        FrameRejectReason.Malformed,
        `envelope flags 0x${flags.toString(16)} or reserved bytes not zero`,
      );
    }
    const k = this.#keys.get(b[3]!);
    if (!k)
      throw new FrameError(FrameRejectReason.Forged, `signed with key id ${b[3]}, which is not configured`);
    const header = b.subarray(0, headerLen);
    const body = b.subarray(bodyAt, end);
    const mac = createHmac('sha256', k.mac).update(header).update(body).digest();
    if (!timingSafeEqual(mac, b.subarray(headerLen, bodyAt))) {
      throw new FrameError(FrameRejectReason.Forged, `MAC mismatch under key id ${b[3]}`);
    }
    if (!nonceBytes) return body;
    if (bodyLen < TAG_BYTES)
      throw new FrameError(FrameRejectReason.Malformed, 'encrypted body shorter than its tag');
    try {
      const d = createDecipheriv('aes-256-gcm', k.enc, b.subarray(ENVELOPE_HEADER_BYTES, headerLen));
      d.setAAD(header);
      d.setAuthTag(body.subarray(bodyLen - TAG_BYTES));
      return Buffer.concat([d.update(body.subarray(0, bodyLen - TAG_BYTES)), d.final()]);
    } catch (err) {
      throw new FrameError(FrameRejectReason.Forged, 'encrypted body does not verify under its key', {
        cause: err,
      });
    }
  }

  /** Pipeline form of `seal`. */
  encode(messages: readonly Uint8Array[]): Buffer[] {
    return messages.map((m) => this.seal(m));
  }

  /** Pipeline form of `open`. */
  decode(messages: readonly Uint8Array[]): Uint8Array[] {
    return messages.map((m) => this.open(m));
  }
}
