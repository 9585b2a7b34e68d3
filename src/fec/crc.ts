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
 */
import { createRequire } from 'node:module';
import { crc32 as zlibCrc32 } from 'node:zlib';

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

/** Which implementation `crc32` uses: `'native'` (@node-rs/crc32) or `'zlib'`. */
export const crc32Implementation: 'native' | 'zlib' = native ? 'native' : 'zlib';

/**
 * CRC-32 of `data`, continuing from `value` (the CRC of the bytes before it), as `zlib.crc32`.
 * An empty `data` returns `value` unchanged (zlib returns 0 for an empty view with no backing
 * store; this never does).
 */
export function crc32(data: Uint8Array, value = 0): number {
  if (data.byteLength === 0) return value;
  return native ? native(data, value) : zlibCrc32(data, value);
}
