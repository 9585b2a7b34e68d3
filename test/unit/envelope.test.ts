import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { ConfigError, FrameError } from '../../src/errors.js';
import {
  EnvelopeCodec,
  envelopeOverhead,
  parseClusterKey,
  parseKeyMaterial,
} from '../../src/protocol/envelope.js';
import { FrameKind, encodeFrame } from '../../src/protocol/frame.js';

const K1 = randomBytes(32);
const K2 = randomBytes(32);
const codec = (
  key: Buffer | string,
  o: { encrypt?: boolean; app?: string; id?: number } = {},
): EnvelopeCodec =>
  new EnvelopeCodec({
    app: o.app ?? 'app1',
    keys: { keys: new Map([[o.id ?? 0, parseKeyMaterial(key)]]), current: o.id ?? 0 },
    encrypt: o.encrypt,
  });

const reason = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    if (err instanceof FrameError) return err.reason;
    throw err;
  }
  return 'accepted';
};

/** Re-stamps the CRC trailer, as a forger who knows the layout would. */
const recrc = (b: Buffer): Buffer => {
  const out = Buffer.from(b);
  out.writeUInt32BE(crc32(out.subarray(0, out.length - 4)) >>> 0, out.length - 4);
  return out;
};

const part = encodeFrame(
  'app1',
  { kind: FrameKind.Writes, epoch: 1, seq: 2, checkpoint: 1, body: Buffer.from('secret-balance-4242') },
  1 << 20,
)[0]!;

describe('envelope', () => {
  it('seals and opens, plain and encrypted, with the documented size', () => {
    for (const encrypt of [false, true]) {
      const c = codec(K1, { encrypt });
      const sealed = c.seal(part);
      expect(sealed.length).toBe(part.length + envelopeOverhead(encrypt));
      expect(sealed.subarray(0, 2).toString('ascii')).toBe('RA');
      expect(sealed[4]).toBe(encrypt ? 1 : 0);
      expect(Buffer.from(c.open(sealed)).equals(part)).toBe(true);
      expect(sealed.includes(Buffer.from('secret-balance-4242'))).toBe(!encrypt);
    }
  });

  it('rejects unsigned parts and shards, junk and cut envelopes', () => {
    const c = codec(K1);
    expect(reason(() => c.open(part))).toBe('unsigned');
    expect(reason(() => c.open(Buffer.from('RS\x01rest')))).toBe('unsigned');
    expect(reason(() => c.open(Buffer.from('XXjunk')))).toBe('magic');
    expect(reason(() => c.open(Buffer.alloc(1)))).toBe('truncated');
    const sealed = c.seal(part);
    expect(reason(() => c.open(sealed.subarray(0, 20)))).toBe('truncated');
    expect(reason(() => c.open(sealed.subarray(0, sealed.length - 1)))).toBe('truncated');
    expect(reason(() => c.open(Buffer.concat([sealed, Buffer.alloc(3)])))).toBe('malformed');
  });

  it('a wrong key, an unknown key id or another app reads as forged', () => {
    const sealed = codec(K2).seal(part);
    expect(reason(() => codec(K1).open(sealed))).toBe('forged');
    expect(reason(() => codec(K1).open(codec(K1, { id: 7 }).seal(part)))).toBe('forged');
    expect(reason(() => codec(K1, { app: 'app2' }).open(codec(K1).seal(part)))).toBe('forged');
    expect(reason(() => codec(K1, { encrypt: true }).open(codec(K2, { encrypt: true }).seal(part)))).toBe(
      'forged',
    );
  });

  it('every single flipped bit is rejected: as damage (CRC), or as forged once a forger re-stamps the CRC', () => {
    for (const encrypt of [false, true]) {
      const c = codec(K1, { encrypt });
      const sealed = c.seal(part);
      fc.assert(
        fc.property(fc.integer({ min: 0, max: sealed.length * 8 - 1 }), (bit) => {
          const flipped = Buffer.from(sealed);
          flipped[bit >> 3]! ^= 1 << (bit & 7);
          expect(['checksum', 'truncated', 'malformed', 'magic']).toContain(reason(() => c.open(flipped)));
          // Re-stamped CRC: the MAC (or a header check) still stops it; nothing is ever accepted.
          // (Flipping flag bit 1, relay-bound, changes the CRC's order: the re-stamp, made in
          // the unbound order, then reads as `checksum`.)
          if (bit < (sealed.length - 4) * 8) {
            expect(['forged', 'truncated', 'malformed', 'version', 'magic', 'checksum']).toContain(
              reason(() => c.open(recrc(flipped))),
            );
          }
        }),
        { numRuns: 300 },
      );
    }
  });

  it('arbitrary bytes never open and only throw FrameError', () => {
    const c = codec(K1, { encrypt: true });
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.boolean(), (junk, asRA) => {
        const b = Buffer.from(junk);
        if (asRA && b.length >= 2) b.write('RA', 0, 'ascii');
        expect(reason(() => c.open(b))).not.toBe('accepted');
      }),
      { numRuns: 500 },
    );
  });

  it('rotation: a key set {old, new} opens messages signed with either', () => {
    const both = new EnvelopeCodec({
      app: 'app1',
      keys: parseClusterKey({
        keys: [
          { id: 1, key: K1 },
          { id: 2, key: K2 },
        ],
        current: 2,
      }),
    });
    expect(Buffer.from(both.open(codec(K1, { id: 1 }).seal(part))).equals(part)).toBe(true);
    expect(Buffer.from(both.open(codec(K2, { id: 2 }).seal(part))).equals(part)).toBe(true);
    expect(both.seal(part)[3]).toBe(2);
    // The old key alone no longer opens what the new one signs.
    expect(reason(() => codec(K1, { id: 1 }).open(both.seal(part)))).toBe('forged');
  });

  it('key material: hex, base64, text and bytes of 32+ bytes; anything weaker is a ConfigError naming clusterKey', () => {
    expect(parseKeyMaterial(K1.toString('hex')).equals(K1)).toBe(true);
    expect(parseKeyMaterial(K1.toString('base64')).equals(K1)).toBe(true);
    expect(parseKeyMaterial('a passphrase of at least 32 bytes, ok').length).toBeGreaterThanOrEqual(32);
    for (const bad of ['short', randomBytes(16), randomBytes(16).toString('hex'), 42, null]) {
      const err = (() => {
        try {
          parseClusterKey(bad);
        } catch (e) {
          return e;
        }
      })();
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).option).toMatch(/^clusterKey/);
      expect((err as Error).message).toMatch(/32/);
    }
    expect(() => parseClusterKey({ keys: [{ id: 1, key: K1 }], current: 3 })).toThrow(/clusterKey.current/);
    expect(() =>
      parseClusterKey({
        keys: [
          { id: 1, key: K1 },
          { id: 1, key: K2 },
        ],
        current: 1,
      }),
    ).toThrow(/repeats key id 1/);
    expect(() => parseClusterKey({ keys: [{ id: 300, key: K1 }], current: 300 })).toThrow(/0 to 255/);
  });
});
