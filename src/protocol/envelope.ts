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
 *   4         1  flags: bit 0 = body encrypted (AES-256-GCM); bit 1 = relay-bound; bits 2..7 are 0
 *   5         1  relay index R (config order) when relay-bound, else 0
 *   6         2  reserved (0)
 *   8         4  B = body bytes
 *  12         N  nonce: 12 random bytes when encrypted, absent otherwise (N = 0)
 *  12+N      32  MAC: HMAC-SHA256 under the key id's MAC key over bytes [0, 12+N) ++ body
 *                (relay-bound: over bytes [0, 12+N) ++ SHA-256(body), see below)
 *  44+N       B  body: the inner message; when encrypted, its AES-256-GCM ciphertext followed
 *                by the 16-byte tag (the header [0, 12+N) is the additional authenticated data;
 *                relay-bound: with byte 5 read as 0, so every relay's copy shares one ciphertext)
 *  44+N+B     4  CRC-32 (zlib) of bytes [0, 44+N+B); relay-bound: of the body [44+N, 44+N+B)
 *                followed by bytes [0, 44+N) (so each relay's copy re-checksums 44+N bytes)
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
 *
 * Relay binding (flag bit 1). A primary seals each relay's copy for that relay: byte 5 names the
 * relay (its index in the `relays` list, the same order on every node), and the MAC covers it. A
 * standby opens a message with the index of the relay it read it from; a relay-bound message read
 * from another relay is `forged` ("bound to relay R"): a genuine message that an attacker copied
 * from one relay's stream onto another's adds no witness there, so it cannot make a checkpoint
 * look durable that the policy's relays never acknowledged. The MAC of a relay-bound envelope is
 * HMAC(header ++ SHA-256(body)): the body is hashed once per message and each relay's copy costs
 * one HMAC over 44 bytes. Envelopes without bit 1 (written before relay binding) are still read,
 * and still count as a witness wherever they are found: they carry no binding to check.
 */
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  hash,
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
/** Flag bit 1: byte 5 names the relay this copy was sealed for, under the MAC. */
export const FLAG_RELAY_BOUND = 0x02;
const RELAY_AT = 5;
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
  /** The MAC key xor ipad / opad (64 bytes each): HMAC of short inputs without a Hmac object. */
  readonly ipad: Buffer;
  readonly opad: Buffer;
}

function derive(key: Buffer, app: string): DerivedKey {
  const mac = Buffer.from(hkdfSync('sha256', key, SALT, `mac:${app}`, 32));
  const ipad = Buffer.alloc(64, 0x36);
  const opad = Buffer.alloc(64, 0x5c);
  for (let i = 0; i < mac.length; i++) {
    ipad[i]! ^= mac[i]!;
    opad[i]! ^= mac[i]!;
  }
  return { mac, enc: Buffer.from(hkdfSync('sha256', key, SALT, `enc:${app}`, 32)), ipad, opad };
}

/**
 * HMAC-SHA256(k, header ++ digest) by its definition, H(opad ++ H(ipad ++ m)), with one-shot
 * hashes: a relay-bound copy's MAC costs two hashes of about 100 bytes and no Hmac object.
 */
function shortHmac(k: DerivedKey, header: Uint8Array, digest: Uint8Array): Buffer {
  const inner = hash('sha256', Buffer.concat([k.ipad, header, digest]), 'buffer');
  return hash('sha256', Buffer.concat([k.opad, inner]), 'buffer');
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

  /**
   * Wraps one message (a part or a shard) in a signed (and maybe encrypted) envelope; with
   * `relay`, bound to that relay (flag bit 1, byte 5).
   */
  seal(inner: Uint8Array, relay?: number): Buffer {
    if (relay === undefined) return this.#sealUnbound(inner);
    return this.sealFor(inner, [relay])[0]!;
  }

  /**
   * One relay-bound envelope of `inner` per relay of `relays`, in that order. They share the
   * nonce and ciphertext (encrypted) and the body hash: each extra relay costs one short HMAC.
   */
  sealFor(inner: Uint8Array, relays: readonly number[]): Buffer[] {
    for (const r of relays) {
      if (!Number.isInteger(r) || r < 0 || r > 255) {
        throw new RangeError(`relay index ${r} does not fit the envelope's relay byte (0..255)`);
      }
    }
    const k = this.#keys.get(this.#current)!;
    const nonceBytes = this.#encrypt ? NONCE_BYTES : 0;
    const headerLen = ENVELOPE_HEADER_BYTES + nonceBytes;
    const bodyLen = inner.byteLength + (this.#encrypt ? TAG_BYTES : 0);
    const first = Buffer.alloc(headerLen + MAC_BYTES + bodyLen + CRC_BYTES);
    first[0] = 0x52;
    first[1] = 0x41;
    first[2] = ENVELOPE_VERSION;
    first[3] = this.#current;
    first[4] = (this.#encrypt ? FLAG_ENCRYPTED : 0) | FLAG_RELAY_BOUND;
    first.writeUInt32BE(bodyLen, 8);
    const bodyAt = headerLen + MAC_BYTES;
    if (this.#encrypt) {
      const nonce = randomBytes(NONCE_BYTES);
      nonce.copy(first, ENVELOPE_HEADER_BYTES);
      const c = createCipheriv('aes-256-gcm', k.enc, nonce);
      // Relay byte still 0 here: the additional data is the same for every relay's copy.
      c.setAAD(first.subarray(0, headerLen));
      const n = c.update(inner).copy(first, bodyAt);
      c.final().copy(first, bodyAt + n);
      c.getAuthTag().copy(first, bodyAt + inner.byteLength);
    } else {
      first.set(inner, bodyAt);
    }
    const body = first.subarray(bodyAt, bodyAt + bodyLen);
    const digest = hash('sha256', body, 'buffer');
    // Relay-bound: the CRC runs over the body first, then the header and MAC, so each relay's
    // copy adds a CRC over 44 bytes, not over the whole message.
    const bodyCrc = crc32(body);
    return relays.map((relay, i) => {
      let out = first;
      if (i < relays.length - 1) {
        out = Buffer.allocUnsafe(first.length);
        first.copy(out);
      }
      out[RELAY_AT] = relay;
      shortHmac(k, out.subarray(0, headerLen), digest).copy(out, headerLen);
      out.writeUInt32BE(crc32(out.subarray(0, bodyAt), bodyCrc) >>> 0, bodyAt + bodyLen);
      return out;
    });
  }

  #sealUnbound(inner: Uint8Array): Buffer {
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
   * hands back a byte the MAC did not cover. With `relay` (the index of the relay it was read
   * from), a relay-bound envelope sealed for another relay is `forged`.
   */
  open(bytes: Uint8Array, relay?: number): Uint8Array {
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
    // Relay-bound (flag bit 1): the CRC covers the body, then bytes [0, 44+N). A damaged flag
    // byte picks the wrong order and reads as damage too.
    const crc =
      (flags & FLAG_RELAY_BOUND) !== 0
        ? crc32(b.subarray(0, bodyAt), crc32(b.subarray(bodyAt, end)))
        : crc32(b.subarray(0, end));
    if (crc >>> 0 !== b.readUInt32BE(end)) {
      throw new FrameError(FrameRejectReason.Checksum, 'envelope CRC-32 mismatch');
    }
    if (b[2] !== ENVELOPE_VERSION) {
      throw new FrameError(
        FrameRejectReason.Version,
        `envelope version ${b[2]} (this build reads ${ENVELOPE_VERSION})`,
      );
    }
    const bound = (flags & FLAG_RELAY_BOUND) !== 0;
    if (
      (flags & ~(FLAG_ENCRYPTED | FLAG_RELAY_BOUND)) !== 0 ||
      (!bound && b[5] !== 0) ||
      b[6] !== 0 ||
      b[7] !== 0
    ) {
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
    const mac = createHmac('sha256', k.mac)
      .update(header)
      .update(bound ? createHash('sha256').update(body).digest() : body)
      .digest();
    if (!timingSafeEqual(mac, b.subarray(headerLen, bodyAt))) {
      throw new FrameError(FrameRejectReason.Forged, `MAC mismatch under key id ${b[3]}`);
    }
    if (bound && relay !== undefined && b[RELAY_AT] !== relay) {
      // Genuine, but sealed for another relay: copied onto this relay's stream by someone else.
      throw new FrameError(
        FrameRejectReason.Forged,
        `sealed for relay ${b[RELAY_AT]} but read from relay ${relay}: a genuine message copied from another relay's stream (it adds no witness here)`,
      );
    }
    if (!nonceBytes) return body;
    if (bodyLen < TAG_BYTES)
      throw new FrameError(FrameRejectReason.Malformed, 'encrypted body shorter than its tag');
    try {
      const d = createDecipheriv('aes-256-gcm', k.enc, b.subarray(ENVELOPE_HEADER_BYTES, headerLen));
      // Relay-bound: the additional data has the relay byte as 0 (one ciphertext for all relays).
      d.setAAD(
        bound
          ? Buffer.concat([b.subarray(0, RELAY_AT), Buffer.of(0), b.subarray(RELAY_AT + 1, headerLen)])
          : header,
      );
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

  /** The relay a relay-bound envelope was sealed for; `undefined` for an unbound or bad one. */
  static boundRelay(bytes: Uint8Array): number | undefined {
    if (bytes.length < ENVELOPE_HEADER_BYTES || bytes[0] !== 0x52 || bytes[1] !== 0x41) return undefined;
    return (bytes[4]! & FLAG_RELAY_BOUND) !== 0 ? bytes[RELAY_AT] : undefined;
  }
}
