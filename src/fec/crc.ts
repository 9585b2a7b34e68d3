/**
 * CRC-32 (the zlib / IEEE polynomial) for the FEC hot paths.
 *
 * `node:zlib`'s `crc32` runs at about 3–4.5 GB/s on this project's machines, which alone caps a
 * wire-ready 4+2 encode (1.5 × the part checksummed) near 2–3 GB/s of part bytes on the one JS
 * thread. `@node-rs/crc32` (an optional dependency: a prebuilt N-API binary shipped in the npm
 * package, no install script) computes the same checksum with PCLMULQDQ at about 9–13 GB/s.
 * Both give identical values, seeds included (a test checks it), so the wire format does not
 * depend on which one is loaded: a node without the binary falls back to zlib and only runs
 * slower.
 *
 * While the FEC backend is the ISA-L addon (src/fec/isal.ts), its CRC-32 is used first: a
 * VPCLMULQDQ fold over 256-bit registers (19-25 GB/s of CPU here) where the CPU has it, else
 * ISA-L's own PCLMULQDQ code. The same values again, checked once at load as the others are.
 */
import { createRequire } from 'node:module';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { fecBackend, isal } from './isal.js';

type Crc32 = (data: Uint8Array, value?: number) => number;

function loadNative(): Crc32 | undefined {
  if (process.env['RESTARTPOINT_CRC32'] === 'zlib') return undefined;
  try {
    const mod = createRequire(import.meta.url)('@node-rs/crc32') as {
      crc32: (input: Uint8Array, initialState?: number | null) => number;
    };
    const f = mod.crc32;
    // Checked once against zlib, seeded and unseeded, before it is trusted.
    const probe = Buffer.from('restartpoint-crc-probe-0123456789');
    if (f(probe) !== zlibCrc32(probe) || f(probe, 0x1234_5678) !== zlibCrc32(probe, 0x1234_5678)) {
      return undefined;
    }
    return (data, value) => (value === undefined ? f(data) : f(data, value));
  } catch {
    return undefined;
  }
}

const native = loadNative();

function loadIsal(): Crc32 | undefined {
  const addon = isal;
  if (!addon) return undefined;
  const probe = Buffer.alloc(5000, 0x5a);
  for (const n of [0, 1, 511, 512, 4999]) {
    const b = probe.subarray(0, n);
    if (addon.crc32(b, 0) !== zlibCrc32(b) || addon.crc32(b, 0x1234_5678) !== zlibCrc32(b, 0x1234_5678)) {
      return undefined;
    }
  }
  return (data, value) => addon.crc32(data, value ?? 0);
}

const viaIsal = loadIsal();

/**
 * Which implementation `crc32` uses when the FEC backend is `ronomon`: `'native'`
 * (@node-rs/crc32) or `'zlib'`. With the ISA-L backend it is the addon's (`crc32InUse()`).
 */
export const crc32Implementation: 'native' | 'zlib' = native ? 'native' : 'zlib';

/** The implementation `crc32` uses now: `'isal'` (the addon's), `'native'` or `'zlib'`. */
export function crc32InUse(): 'isal' | 'native' | 'zlib' {
  return viaIsal && fecBackend() === 'isal' ? 'isal' : crc32Implementation;
}

/**
 * CRC-32 of `data`, continuing from `value` (the CRC of the bytes before it), as `zlib.crc32`.
 * An empty `data` returns `value` unchanged (zlib returns 0 for an empty view with no backing
 * store; this never does).
 */
export function crc32(data: Uint8Array, value = 0): number {
  if (data.byteLength === 0) return value;
  if (viaIsal && fecBackend() === 'isal') return viaIsal(data, value);
  return native ? native(data, value) : zlibCrc32(data, value);
}

/*
 * CRC-32 arithmetic without the bytes (zlib's `crc32_combine`): the CRC is an affine function of
 * the message over GF(2), so the CRC of a concatenation, or of the XOR of equal-length messages,
 * follows from the parts' CRCs and lengths. Polynomials are in zlib's reflected form (bit 31 is
 * x^0).
 */
const POLY = 0xedb8_8320;

/** a·b modulo the CRC-32 polynomial. */
function multModP(a: number, b: number): number {
  let m = 0x8000_0000;
  let p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ POLY : b >>> 1;
  }
  return p >>> 0;
}

/** X2N[i] = x^(2^i) mod p. */
const X2N: number[] = (() => {
  const t: number[] = [];
  let p = 0x4000_0000; // x^1
  t.push(p);
  for (let i = 1; i < 32; i++) t.push((p = multModP(p, p)));
  return t;
})();

/** x^(8·bytes) mod p: advances a CRC register over `bytes` bytes. */
function shiftBytes(bytes: number): number {
  let p = 0x8000_0000; // x^0
  let k = 3;
  for (let n = bytes; n > 0; n = Math.floor(n / 2), k++) {
    if (n % 2 === 1) p = multModP(X2N[k & 31]!, p);
  }
  return p;
}

/**
 * The CRC-32 of A ‖ B from `crcA` = crc32(A), `crcB` = crc32(B) and B's length, without reading
 * either (zlib's `crc32_combine`).
 */
export function crc32Combine(crcA: number, crcB: number, lengthB: number): number {
  return (multModP(shiftBytes(lengthB), crcA >>> 0) ^ crcB) >>> 0;
}

/**
 * The CRC-32 of A₁ ⊕ A₂ ⊕ … ⊕ Aₙ (n messages of `length` bytes each, XORed byte by byte), from
 * their CRCs. The CRC is affine: crc(a ⊕ b) = crc(a) ⊕ crc(b) ⊕ crc(0…0), so an odd count needs
 * nothing more and an even one the CRC of `length` zero bytes.
 */
export function crc32OfXor(crcs: readonly number[], length: number): number {
  let x = 0;
  for (const c of crcs) x ^= c;
  if (crcs.length % 2 === 0) x ^= crc32Zeros(length);
  return x >>> 0;
}

/** crc32 of `length` zero bytes: the register 0xFFFFFFFF advanced over them, inverted. */
export function crc32Zeros(length: number): number {
  if (length === 0) return 0;
  return ~multModP(shiftBytes(length), 0xffff_ffff) >>> 0;
}
