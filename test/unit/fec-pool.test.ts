/**
 * Pooled FEC buffers (issue 16): the pooled encoder makes the same bytes as the plain one, the
 * codec's per-row and copy paths write only where they are told, the native CRC-32 (when
 * loaded) agrees with zlib, and an assembler with a pool hands out correct parts while reusing
 * its buffers.
 */
import { crc32 as zlibCrc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { ShardAssembler } from '../../src/fec/assembler.js';
import { crc32, crc32Combine, crc32Implementation, crc32OfXor, crc32Zeros } from '../../src/fec/crc.js';
import { BufferPool, POISON_BYTE } from '../../src/fec/pool.js';
import { copyOffThread, ReedSolomon } from '../../src/fec/reed-solomon.js';
import { decodeShard, encodeShards, encodeShardsPooled, type FecScheme } from '../../src/fec/shard.js';

const APP = 'ledger';
const MiB = 1 << 20;
const schemesUnderTest: FecScheme[] = [
  { data: 4, parity: 2 },
  { data: 10, parity: 4 },
  { data: 1, parity: 2 },
  { data: 3, parity: 0 },
  { data: 5, parity: 1 },
  { copies: 3 },
];

function bytes(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    b[i] = s & 0xff;
  }
  return b;
}

describe('crc32', () => {
  it(`agrees with zlib, seeded and unseeded (using ${crc32Implementation})`, () => {
    for (const n of [1, 7, 64, 4096, 100_003, 3 * MiB + 5]) {
      const b = bytes(n, n);
      expect(crc32(b)).toBe(zlibCrc32(b));
      const cut = Math.floor(n / 3);
      expect(crc32(b.subarray(cut), crc32(b.subarray(0, cut)))).toBe(zlibCrc32(b));
    }
    expect(crc32(new Uint8Array(0), 1234)).toBe(1234);
  });

  it('combines CRCs without the bytes: concatenation, XOR of equal lengths, zeros', () => {
    for (const n of [0, 1, 8, 1000, 65_537, MiB + 3]) {
      expect(crc32Zeros(n)).toBe(zlibCrc32(Buffer.alloc(n)));
      const a = bytes(777, n + 5);
      const b = bytes(n, n + 6);
      expect(crc32Combine(zlibCrc32(a), zlibCrc32(b), n)).toBe(zlibCrc32(Buffer.concat([a, b])));
      for (const count of [1, 2, 3, 4, 7]) {
        const xs = Array.from({ length: count }, (_, i) => bytes(n, n * 31 + i + 1));
        const x = Buffer.alloc(n);
        for (const y of xs) for (let i = 0; i < n; i++) x[i]! ^= y[i]!;
        expect(
          crc32OfXor(
            xs.map((y) => zlibCrc32(y)),
            n,
          ),
        ).toBe(zlibCrc32(x));
      }
    }
  });
});

describe('shard checksums', () => {
  it("parity shard k is the XOR of the data shards (the codec's first parity row is all ones)", async () => {
    // encodeShards derives that shard's CRC-32 from the data shards' CRCs on this fact.
    for (const k of [1, 2, 3, 4, 7, 10, 24]) {
      for (const m of [1, 2, 6]) {
        const s = 64;
        const data = bytes(k * s, k * 10 + m);
        const parity = Buffer.alloc(m * s);
        await new ReedSolomon(k, m).encode({ data, parity, shardSize: s });
        const xor = Buffer.alloc(s);
        for (let i = 0; i < k; i++) for (let b = 0; b < s; b++) xor[b]! ^= data[i * s + b]!;
        expect(Buffer.compare(parity.subarray(0, s), xor)).toBe(0);
      }
    }
  });

  it('every message ends with the CRC-32 of its bytes, for every scheme, k parity and stripe layout', async () => {
    const all: FecScheme[] = [...schemesUnderTest, { data: 2, parity: 3 }, { data: 6, parity: 2 }];
    for (const scheme of all) {
      for (const n of [1, 100, 64 * 1024 + 3, MiB, 2 * MiB + 17, 3 * MiB]) {
        const shards = await encodeShards(APP, { epoch: 3, seq: n, part: 1 }, bytes(n, n + 2), scheme);
        for (const msg of shards) {
          const end = msg.length - 4;
          expect(msg.readUInt32BE(end)).toBe(zlibCrc32(msg.subarray(0, end)));
        }
      }
    }
  });
});

describe('encodeShardsPooled', () => {
  const schemes = schemesUnderTest;
  it('makes the same bytes as encodeShards, for every scheme and stripe layout', async () => {
    const pool = new BufferPool({ minPooledBytes: 0, poison: true });
    for (const scheme of schemes) {
      for (const n of [1, 100, 64 * 1024 + 3, MiB, 2 * MiB + 17, 5 * MiB]) {
        const part = bytes(n, n + 1);
        const id = { epoch: 2, seq: 2 ** 40 + n, part: 3 };
        const plain = await encodeShards(APP, id, part, scheme);
        // Twice, so the second run reuses (poisoned) buffers of the first.
        for (let round = 0; round < 2; round++) {
          const set = await encodeShardsPooled(APP, id, part, scheme, pool);
          expect(set.shards.length).toBe(plain.length);
          for (const [i, s] of set.shards.entries()) expect(Buffer.compare(s, plain[i]!)).toBe(0);
          set.release();
          set.release(); // harmless
        }
      }
    }
    expect(pool.stats.hits).toBeGreaterThan(0);
  });

  it('never lets a later encode change the messages of a set not yet released', async () => {
    const pool = new BufferPool({ minPooledBytes: 0, poison: true });
    const scheme = { data: 4, parity: 2 };
    const held = await encodeShardsPooled(APP, { epoch: 1, seq: 1, part: 0 }, bytes(MiB, 1), scheme, pool);
    const snapshot = held.shards.map((s) => Buffer.from(s));
    for (let seq = 2; seq < 8; seq++) {
      const set = await encodeShardsPooled(APP, { epoch: 1, seq, part: 0 }, bytes(MiB, seq), scheme, pool);
      set.release();
    }
    for (const [i, s] of held.shards.entries()) {
      expect(Buffer.compare(s, snapshot[i]!)).toBe(0);
      expect(decodeShard(s, APP).seq).toBe(1);
    }
    held.release();
    // Released and poisoned: a message sent from it now fails its checksum.
    expect(held.shards[0]![0]).toBe(POISON_BYTE);
    expect(() => decodeShard(held.shards[0]!, APP)).toThrow();
  });
});

describe('codec paths used in place', () => {
  it('encodeRows writes only its parity row, and equals encode', async () => {
    const k = 4;
    const m = 3;
    const s = 64;
    const codec = new ReedSolomon(k, m);
    const data = bytes(k * s, 9);
    const parity = Buffer.alloc(m * s);
    await codec.encode({ data, parity, shardSize: s });
    for (let r = 0; r < m; r++) {
      // Slot r lands at [m·s, (m+1)·s); the other slots overlap canary bytes, which must stay.
      const target = Buffer.alloc((2 * m + 1) * s, 0xa5);
      await codec.encodeRows(1 << r, { data, parity: target, parityOffset: (m - r) * s, shardSize: s });
      const want = Buffer.alloc((2 * m + 1) * s, 0xa5);
      parity.copy(want, m * s, r * s, (r + 1) * s);
      expect(Buffer.compare(target, want)).toBe(0);
    }
  });

  it('copyOffThread copies exactly the region', async () => {
    const from = bytes(4096, 3);
    const to = Buffer.alloc(8192, 0x11);
    await copyOffThread(from, 8, to, 1000, 2048);
    const want = Buffer.alloc(8192, 0x11);
    from.copy(want, 1000, 8, 8 + 2048);
    expect(Buffer.compare(to, want)).toBe(0);
    await expect(copyOffThread(from, 4000, to, 0, 2048)).rejects.toThrow(RangeError);
  });
});

describe('ShardAssembler with a pool', () => {
  it('rebuilds correct parts while reusing its buffers', async () => {
    const pool = new BufferPool({ minPooledBytes: 0, poison: true });
    const asm = new ShardAssembler({ app: APP, pool });
    const kept: { part: Uint8Array; want: Buffer }[] = [];
    for (let seq = 1; seq <= 12; seq++) {
      const want = bytes(MiB + seq * 1000, seq);
      const shards = await encodeShards(APP, { epoch: 1, seq, part: 0 }, want, { data: 4, parity: 2 });
      // Lose two data shards on even seqs (parity math), none on odd ones (copies only).
      const use = seq % 2 === 0 ? shards.slice(2) : shards.slice(0, 4);
      let part: Uint8Array | undefined;
      for (const s of use) part = (await asm.add(s)) ?? part;
      expect(Buffer.compare(part!, want)).toBe(0);
      if (seq % 3 === 0) kept.push({ part: part!, want });
      else asm.releasePart(part!);
    }
    // Parts not released are never handed out again.
    for (const k of kept) expect(Buffer.compare(k.part, k.want)).toBe(0);
    expect(pool.stats.hits).toBeGreaterThan(0);
  });
});
