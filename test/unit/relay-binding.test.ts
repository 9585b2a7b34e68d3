/**
 * Relay binding (issue 11, defect 7b): in signed mode each relay's copy of a message is sealed for
 * that relay (envelope flag bit 1, byte 5 under the MAC). A genuine copy replayed from relay A's
 * stream onto relay B's is refused as `forged` and adds no witness, so it cannot make a checkpoint
 * look durable. Envelopes of the previous format (no flag bit) are still read.
 */
import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { FrameError } from '../../src/errors.js';
import { ImageChain } from '../../src/image/chain.js';
import { FrameCodec } from '../../src/protocol/codec.js';
import { EnvelopeCodec, FLAG_RELAY_BOUND, parseKeyMaterial } from '../../src/protocol/envelope.js';
import { FrameKind, encodeFrame } from '../../src/protocol/frame.js';
import { encodeWrites } from '../../src/protocol/records.js';
import { Intake } from '../../src/standby/intake.js';

const KEY = randomBytes(32);
const envelope = (encrypt = false, app = 'bind1'): EnvelopeCodec =>
  new EnvelopeCodec({ app, keys: { keys: new Map([[0, parseKeyMaterial(KEY)]]), current: 0 }, encrypt });

const reason = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    if (err instanceof FrameError) return `${err.reason}: ${err.message}`;
    throw err;
  }
  return 'accepted';
};

/** Re-stamps a relay-bound envelope's CRC (body first, then header and MAC), as a forger would. */
const recrcBound = (b: Buffer): void => {
  const bodyAt = b[4]! & 1 ? 56 : 44;
  const end = b.length - 4;
  b.writeUInt32BE(crc32(b.subarray(0, bodyAt), crc32(b.subarray(bodyAt, end))) >>> 0, end);
};

const writes = { kind: FrameKind.Writes, epoch: 1, seq: 2, checkpoint: 1 } as const;

describe('relay binding of signed messages', () => {
  it('each relay gets its own copy, which opens only as read from that relay (plain and encrypted)', () => {
    const part = encodeFrame('bind1', { ...writes, body: Buffer.from('balance-17') }, 1 << 20)[0]!;
    for (const encrypt of [false, true]) {
      const c = envelope(encrypt);
      const copies = c.sealFor(part, [0, 1, 2]);
      expect(copies.map((b) => b[4]! & FLAG_RELAY_BOUND)).toEqual([2, 2, 2]);
      expect(copies.map((b) => b[5])).toEqual([0, 1, 2]);
      expect(copies.map((b) => EnvelopeCodec.boundRelay(b))).toEqual([0, 1, 2]);
      for (const [r, b] of copies.entries()) {
        expect(Buffer.from(c.open(b, r)).equals(part)).toBe(true);
        // Tools that do not know the relay still read it.
        expect(Buffer.from(c.open(b)).equals(part)).toBe(true);
        for (const other of [0, 1, 2].filter((o) => o !== r)) {
          expect(reason(() => c.open(b, other))).toMatch(
            new RegExp(`^forged: .*sealed for relay ${r} but read from relay ${other}`),
          );
        }
      }
      // Rewriting the relay byte (and the CRC, as a forger would) breaks the MAC.
      const moved = Buffer.from(copies[0]!);
      moved[5] = 1;
      recrcBound(moved);
      expect(reason(() => c.open(moved, 1))).toMatch(/^forged: .*(MAC mismatch|encrypted body)/);
      // Clearing the flag bit does not turn it into an unbound (previous-format) message either.
      const unflagged = Buffer.from(copies[1]!);
      unflagged[4] = unflagged[4]! & ~FLAG_RELAY_BOUND;
      unflagged[5] = 0;
      unflagged.writeUInt32BE(crc32(unflagged.subarray(0, unflagged.length - 4)) >>> 0, unflagged.length - 4);
      // (now an unbound envelope, whose CRC runs over the bytes in order)
      expect(reason(() => c.open(unflagged, 0))).toMatch(/^forged/);
    }
  });

  it('every flipped bit of a relay-bound envelope is rejected, as damage or (CRC re-stamped) as forged', () => {
    const part = encodeFrame('bind1', { ...writes, body: Buffer.from('abc') }, 1 << 20)[0]!;
    for (const encrypt of [false, true]) {
      const c = envelope(encrypt);
      const sealed = c.sealFor(part, [1])[0]!;
      for (let i = 0; i < sealed.length * 8; i++) {
        const bad = Buffer.from(sealed);
        bad[i >> 3] ^= 1 << (i & 7);
        expect(reason(() => c.open(bad, 1))).not.toBe('accepted');
        if (i < (sealed.length - 4) * 8) {
          recrcBound(bad);
          expect(reason(() => c.open(bad, 1))).not.toBe('accepted');
        }
      }
    }
  });

  it('the previous format (no relay byte) is still read from any relay', () => {
    const part = encodeFrame('bind1', { ...writes, body: Buffer.from('x') }, 1 << 20)[0]!;
    const c = envelope();
    const old = c.seal(part);
    expect(old[4]! & FLAG_RELAY_BOUND).toBe(0);
    expect(EnvelopeCodec.boundRelay(old)).toBeUndefined();
    for (const r of [0, 1, 2]) expect(Buffer.from(c.open(old, r)).equals(part)).toBe(true);
  });

  it('FEC shards are sealed for the relay each goes to', async () => {
    const codec = new FrameCodec({
      app: 'bind1',
      relays: 3,
      maxPayload: 1 << 16,
      fec: { data: 2, parity: 1 },
      envelope: envelope(),
    });
    const [p] = await codec.encode({ ...writes, body: Buffer.from('abc') });
    for (const m of p!.messages) {
      expect(EnvelopeCodec.boundRelay(m.bytes)).toBe(m.relay);
      expect(codec.open(m.bytes, m.relay).key).toEqual({ epoch: 1, seq: 2, part: 0 });
      expect(reason(() => codec.open(m.bytes, (m.relay + 1) % 3))).toMatch(/^forged: .*sealed for relay/);
    }
    // A backfill re-encodes only the target relay's shards, byte for byte what encode sent it.
    const part = encodeFrame('bind1', { ...writes, body: Buffer.from('abc') }, codec.partBytes)[0]!;
    const again = await codec.encodePart({ epoch: 1, seq: 2, part: 0 }, part, [2]);
    expect(again.map((m) => m.relay)).toEqual([2]);
    expect(again[0]!.msgId).toBe(p!.messages[2]!.msgId);
    expect(codec.open(again[0]!.bytes, 2).shard?.index).toBe(2);
  });

  it('a genuine copy replayed onto another relay adds no witness: the checkpoint does not look durable', async () => {
    const app = 'bind2';
    const codec = new FrameCodec({ app, relays: 3, maxPayload: 1 << 20, envelope: envelope(false, app) });
    const rejected: string[] = [];
    const intake = new Intake({
      app,
      codec,
      relays: 3,
      need: 2,
      adapter: memoryAdapter(),
      images: new ImageChain(),
      onReject: (err) => rejected.push(`${err.reason}: ${err.message}`),
    });
    const [w] = await codec.encode({
      ...writes,
      body: encodeWrites([{ op: 'put', key: 'k', value: Buffer.from('v') }]),
    });
    const fromA = w!.messages[0]!;
    let seq = 0;
    await intake.take(0, ++seq, fromA.bytes);
    expect(intake.witnesses.count({ epoch: 1, seq: 2, part: 0 })).toBe(1);
    // The attacker copies relay A's message onto relay B's stream.
    await intake.take(1, ++seq, fromA.bytes);
    expect(intake.witnesses.count({ epoch: 1, seq: 2, part: 0 })).toBe(1);
    expect(intake.counters.rejected).toEqual({ forged: 1 });
    expect(rejected[0]).toMatch(/^forged: .*sealed for relay 0 but read from relay 1/);
    // Relay B's own copy, sent by the primary, does count.
    await intake.take(1, ++seq, w!.messages[1]!.bytes);
    expect(intake.witnesses.count({ epoch: 1, seq: 2, part: 0 })).toBe(2);
  });
});
