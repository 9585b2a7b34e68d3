/**
 * The ISA-L backend of FEC (native/fec.c, src/fec/isal.ts) against the library it replaces:
 * every message byte-identical to @ronomon/reed-solomon's, every ≤ m-loss rebuilt exactly, the
 * backend actually loaded (so a silent fallback fails here), and the fallback still working.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { ShardAssembler } from '../../src/fec/assembler.js';
import { crc32InUse } from '../../src/fec/crc.js';
import { fecBackend, isal, isalUnavailableReason, useFecBackend } from '../../src/fec/isal.js';
import { codecContext, ReedSolomon } from '../../src/fec/reed-solomon.js';
import { decodeShard, encodeShards, joinShards, stripeLayout, type Shard } from '../../src/fec/shard.js';

const APP = 'isal';
const ID = { epoch: 3, seq: 77, part: 2 };
const MiB = 1 << 20;

afterEach(() => {
  if (isal) useFecBackend('isal');
});

async function encodeWith(
  backend: 'isal' | 'ronomon',
  part: Uint8Array,
  k: number,
  m: number,
): Promise<Buffer[]> {
  useFecBackend(backend);
  try {
    return await encodeShards(APP, ID, part, { data: k, parity: m });
  } finally {
    useFecBackend('isal');
  }
}

/** Every set of at most m lost shards (all of them when there are few, else `sample` random ones). */
function lossPatterns(n: number, m: number, sample: number): number[] {
  const all: number[] = [];
  if (n <= 10) {
    for (let lost = 0; lost < 1 << n; lost++) if (popcount(lost) <= m) all.push(lost);
    return all;
  }
  for (let t = 0; t < sample; t++) {
    let lost = 0;
    const want = 1 + Math.floor(Math.random() * m);
    while (popcount(lost) < want) lost |= 1 << Math.floor(Math.random() * n);
    all.push(lost);
  }
  return all;
}

function popcount(x: number): number {
  let c = 0;
  for (let v = x; v; v &= v - 1) c++;
  return c;
}

describe('FEC ISA-L backend', () => {
  it('is the backend in use (a fallback to @ronomon/reed-solomon fails here)', () => {
    expect(
      isalUnavailableReason,
      'the ISA-L addon did not load: run scripts/ensure-services.sh (installs libisal-dev) or npm run build:native',
    ).toBeUndefined();
    expect(fecBackend()).toBe('isal');
    expect(isal!.xor).toMatch(/^(avx2|scalar)$/);
  });

  it('makes the same messages as @ronomon/reed-solomon, byte for byte, for every shape and size', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 24 }),
        fc.integer({ min: 1, max: 6 }),
        fc.oneof(fc.integer({ min: 1, max: 70_000 }), fc.integer({ min: 70_000, max: 3 * MiB })),
        async (k, m, length) => {
          const part = randomBytes(length);
          const ours = await encodeWith('isal', part, k, m);
          const theirs = await encodeWith('ronomon', part, k, m);
          expect(ours.length).toBe(theirs.length);
          for (let i = 0; i < ours.length; i++) {
            if (!ours[i]!.equals(theirs[i]!)) expect.fail(`${k}+${m}, ${length} bytes: shard ${i} differs`);
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  it('computes the parity the library computes on its own buffers, for every k and m', async () => {
    // The codec level, without the shard format: each (k, m) once, a shard size that gives
    // several packets per super-chunk.
    for (let k = 1; k <= 24; k++) {
      for (let m = 1; m <= 6; m++) {
        const { stripe } = stripeLayout(k * 4096, k);
        const data = randomBytes(k * stripe);
        const parity = Buffer.alloc(m * stripe);
        await new ReedSolomon(k, m).encode({ data, parity, shardSize: stripe });
        const shards = await encodeWith('isal', data, k, m);
        const bodyAt = 36 + APP.length;
        for (let r = 0; r < m; r++) {
          const got = shards[k + r]!.subarray(bodyAt, bodyAt + stripe);
          if (!got.equals(parity.subarray(r * stripe, (r + 1) * stripe)))
            expect.fail(`${k}+${m}: parity ${r} differs`);
        }
      }
    }
  });

  it('rebuilds every part from any loss of at most m shards, in joinShards and the assembler', async () => {
    const shapes: [number, number, number][] = [
      [4, 2, 4 * MiB + 3],
      [4, 2, 1000],
      [1, 3, 5000],
      [2, 1, 77],
      [3, 5, 150_001],
      [6, 3, 200_001],
      [10, 4, 2 * MiB + 9],
      [24, 6, 300_000],
      [16, 3, 12_345],
    ];
    for (const [k, m, length] of shapes) {
      const part = randomBytes(length);
      const messages = await encodeWith('isal', part, k, m);
      const shards = messages.map((b) => decodeShard(b, APP));
      const patterns = lossPatterns(k + m, m, 25);
      for (const [n, lost] of patterns.entries()) {
        const given: (Shard | undefined)[] = shards.map((s, i) => (lost & (1 << i) ? undefined : s));
        const joined = await joinShards(given);
        if (!Buffer.from(joined).equals(part))
          expect.fail(`${k}+${m}: joinShards wrong without ${lost.toString(2)}`);
        // The assembler gets the survivors in a rotated order; it rebuilds from the first k.
        if (n % 4 !== 0 && length > MiB) continue;
        const asm = new ShardAssembler({ app: APP });
        const survivors = messages.filter((_, i) => !(lost & (1 << i)));
        const order = survivors.map((_, i) => (i + n) % survivors.length); // a rotation
        let out: Uint8Array | undefined;
        for (const i of order) out = (await asm.add(survivors[i]!)) ?? out;
        if (!out || !Buffer.from(out).equals(part)) {
          expect.fail(`${k}+${m}: assembler wrong without ${lost.toString(2)}`);
        }
      }
    }
  });

  it('rebuilds shards made by the fallback and the fallback rebuilds ours (mixed versions)', async () => {
    const part = randomBytes(3 * MiB + 5);
    const byRonomon = (await encodeWith('ronomon', part, 4, 2)).map((b) => decodeShard(b, APP));
    const byIsal = (await encodeWith('isal', part, 4, 2)).map((b) => decodeShard(b, APP));
    for (const lost of lossPatterns(6, 2, 0)) {
      const keep = (s: Shard, i: number): Shard | undefined => (lost & (1 << i) ? undefined : s);
      useFecBackend('isal');
      expect(Buffer.from(await joinShards(byRonomon.map(keep))).equals(part)).toBe(true);
      useFecBackend('ronomon');
      expect(Buffer.from(await joinShards(byIsal.map(keep))).equals(part)).toBe(true);
    }
  });

  it("computes zlib's CRC-32 on every length to 5 000 and on large random ones, seeded", () => {
    const addon = isal!;
    const bytes = randomBytes(3 * MiB + 64);
    const lengths = Array.from({ length: 5001 }, (_, n) => n);
    for (let t = 0; t < 40; t++) lengths.push(Math.floor(Math.random() * 3 * MiB));
    for (const [t, n] of lengths.entries()) {
      const at = t % 61; // unaligned starts
      const b = bytes.subarray(at, at + n);
      const seed = t % 3 === 0 ? 0 : (t * 2_654_435_761) >>> 0;
      if (addon.crc32(b, seed) !== zlibCrc32(b, seed)) expect.fail(`crc32 of ${n} bytes, seed ${seed}`);
    }
    expect(addon.crc).toMatch(/^(vpclmulqdq|isa-l)$/);
    expect(crc32InUse()).toBe('isal');
  });

  it('refuses bad arguments with a RangeError instead of touching memory', () => {
    const addon = isal!;
    const ctx = codecContext(4, 2);
    const plan = addon.plan(ctx, 0b1111, 0b110000);
    const slab = Buffer.alloc(6 * 100);
    const crcs = new Uint32Array(6);
    // Stripes past the slab's end.
    expect(() => addon.encode(plan, ctx, Buffer.alloc(64), slab, crcs, [100, 41, 64, 2, 0, 2], null)).toThrow(
      RangeError,
    );
    // A rebuild plan that writes a shard that is present, or reads one that is not.
    const rebuildPlan = addon.plan(ctx, 0b111100, 0b11);
    const payloads = Array.from({ length: 6 }, () => Buffer.alloc(64));
    expect(() => addon.rebuild(rebuildPlan, ctx, payloads, Buffer.alloc(256), [64, 64, 0, 1], null)).toThrow(
      /does not match/,
    );
    expect(() => addon.plan(ctx, 0b11, 0b1100)).toThrow(/fewer than k/);
    expect(() => addon.crc32(new Uint16Array(4) as unknown as Uint8Array)).toThrow(RangeError);
  });

  it('falls back to @ronomon/reed-solomon with one warning when the addon is missing', () => {
    const dist = fileURLToPath(new URL('../../dist/src/fec/', import.meta.url));
    const script = `
      const { encodeShards, decodeShard, joinShards } = await import(${JSON.stringify(`${dist}shard.js`)});
      const { fecBackend } = await import(${JSON.stringify(`${dist}isal.js`)});
      const { randomBytes } = await import('node:crypto');
      const part = randomBytes(300000);
      let ok = true;
      for (let r = 0; r < 3; r++) {
        const shards = (await encodeShards('app', { epoch: 1, seq: 1, part: 0 }, part, { data: 4, parity: 2 }))
          .map((b) => decodeShard(b, 'app'));
        const back = await joinShards([undefined, shards[1], undefined, shards[3], shards[4], shards[5]]);
        ok &&= Buffer.from(back).equals(part);
      }
      console.log(JSON.stringify({ backend: fecBackend(), ok }));
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      encoding: 'utf8',
      env: { ...process.env, RESTARTPOINT_FEC_ADDON: '/nonexistent/restartpoint_fec.node' },
    });
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ backend: 'ronomon', ok: true });
    const warnings = r.stderr.split('\n').filter((l) => l.includes('RESTARTPOINT_FEC_FALLBACK'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/not built.*libisal-dev.*build:native/);
  });
});
