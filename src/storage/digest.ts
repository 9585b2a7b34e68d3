/**
 * The content digest adapters keep so that a store can be checked against what was committed
 * to it (issue 12). Pure math, no I/O; adapters import it (the lint layering rule allows it).
 *
 * A store's digest is the pair (key count, sum). The sum is order-independent and updatable per
 * write: every present key contributes the 128-bit **entry hash** of its key and value, taken as
 * four 32-bit lanes, and the sum adds the lanes of every entry, each lane modulo 2^32. Writing a
 * key subtracts its old entry (when it had one) and adds the new one; deleting subtracts. Two
 * stores with the same keys and values have the same digest whatever the order of the writes; a
 * lost, added or changed entry changes the sum (short of a 2^-128 accident) and usually the
 * count. Lanes are 32 bits so that Lua (doubles) and SQL (bigint) can do the same arithmetic
 * exactly inside the store's own atomic step.
 *
 * The entry hash is the first 16 bytes of `H(decimal UTF-8 byte length of key ":" key value)`,
 * the length prefix making the split between key and value unambiguous. `H` is per adapter,
 * whatever its store can compute inside a transaction: SHA-1 for memory, file and Redis (the
 * only hash Redis's Lua has), MD5 for PostgreSQL (built in, no extension). A digest is only ever
 * compared with one made by the same adapter, so the two never meet.
 */
import { createHash } from 'node:crypto';

/** The entry hash function of an adapter. */
export type DigestAlgorithm = 'sha1' | 'md5';

/** Four 32-bit lanes, each in [0, 2^32). */
export type Lanes = [number, number, number, number];

const LANE = 2 ** 32;

/** A digest as adapters record it. */
export interface Digest {
  /** Present keys. */
  keys: number;
  /** Lane sums, each in [0, 2^32). */
  sum: Lanes;
}

/** The digest of an empty store. */
export function emptyDigest(): Digest {
  return { keys: 0, sum: [0, 0, 0, 0] };
}

/** The four lanes of the first 16 bytes of a hash. */
export function lanesOf(hash: Uint8Array): Lanes {
  const b = Buffer.from(hash.buffer, hash.byteOffset, hash.byteLength);
  return [b.readUInt32BE(0), b.readUInt32BE(4), b.readUInt32BE(8), b.readUInt32BE(12)];
}

/** The lanes of a hash written as hex (as Lua's `redis.sha1hex` and SQL's `md5` return it). */
export function lanesOfHex(hex: string): Lanes {
  return [0, 1, 2, 3].map((i) => parseInt(hex.slice(8 * i, 8 * i + 8), 16)) as Lanes;
}

/** The entry hash of `key` holding `value`, as lanes. */
export function entryLanes(algorithm: DigestAlgorithm, key: string | Uint8Array, value: Uint8Array): Lanes {
  const k = typeof key === 'string' ? Buffer.from(key, 'utf8') : key;
  const h = createHash(algorithm);
  h.update(`${k.byteLength}:`);
  h.update(k);
  h.update(value);
  return lanesOf(h.digest());
}

/** Adds an entry's lanes to `d` (a key that was absent now holds a value). */
export function addEntry(d: Digest, lanes: Lanes): void {
  for (let i = 0; i < 4; i++) d.sum[i] = (d.sum[i]! + lanes[i]!) % LANE;
  d.keys++;
}

/** Removes an entry's lanes from `d` (a key that held that value is gone or overwritten). */
export function removeEntry(d: Digest, lanes: Lanes): void {
  for (let i = 0; i < 4; i++) d.sum[i] = (((d.sum[i]! - lanes[i]!) % LANE) + LANE) % LANE;
  d.keys--;
}

/**
 * A digest from a count and per-lane totals that were summed without reduction (SQL `sum()`
 * of bigints, as decimal strings or numbers): each lane is reduced modulo 2^32 here, exactly.
 */
export function digestFromTotals(keys: number, totals: readonly (string | number | bigint)[]): Digest {
  const sum = totals.map((t) => Number(BigInt(t) % BigInt(LANE))) as Lanes;
  return { keys, sum };
}

/** The sum as 32 hex digits: how `VerifyResult` shows a digest. */
export function digestHex(d: Digest): string {
  return d.sum.map((l) => l.toString(16).padStart(8, '0')).join('');
}

/** Whether two digests are the same (count and sum). */
export function sameDigest(a: Digest, b: Digest): boolean {
  return a.keys === b.keys && a.sum.every((l, i) => l === b.sum[i]);
}

/** A digest as one line of text, for stores that keep it as a string: `<keys> <32 hex>`. */
export function encodeDigest(d: Digest): string {
  return `${d.keys} ${digestHex(d)}`;
}

/** The inverse of `encodeDigest`; `undefined` for anything else. */
export function decodeDigest(s: string): Digest | undefined {
  const m = /^(\d+) ([0-9a-f]{32})$/.exec(s);
  if (m === null) return undefined;
  return { keys: Number(m[1]), sum: lanesOfHex(m[2]!) };
}

/** Adds (`sign` 1) or subtracts (`sign` -1) a whole digest, count included, into `d`. */
export function combineDigest(d: Digest, other: Digest, sign: 1 | -1): void {
  for (let i = 0; i < 4; i++) d.sum[i] = (((d.sum[i]! + sign * other.sum[i]!) % LANE) + LANE) % LANE;
  d.keys += sign * other.keys;
}
