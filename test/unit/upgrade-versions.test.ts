/**
 * Pure logic of rolling upgrades (issue 17, docs/upgrades.md): which parts of another wire version
 * block a node from resuming, and when a standby's image is too new for its build.
 */
import { describe, expect, it } from 'vitest';
import { crc32 } from 'node:zlib';
import { FrameError } from '../../src/errors.js';
import {
  FrameKind,
  MIN_READ_VERSION,
  PROTOCOL_VERSION,
  WRITE_VERSION,
  WireVersionError,
  decodePart,
  encodeFrame,
} from '../../src/protocol/frame.js';
import { ImageChain, ImageEncoder } from '../../src/image/chain.js';
import type { ImageRecord } from '../../src/protocol/records.js';
import { ResumeGuard } from '../../src/sdk/restart-points.js';
import { statusNodes } from '../../src/cli/commands/status-read.js';
import { formatVersions } from '../../src/cli/commands/status-format.js';
import type { PresenceRecord } from '../../src/transport/presence.js';

const part = (): Buffer =>
  encodeFrame(
    'ledger',
    { kind: FrameKind.Seal, epoch: 1, seq: 2, checkpoint: 3, body: Buffer.from('body') },
    1 << 20,
  )[0]!;

/** `part` re-stamped with version `v` and a valid CRC-32 (a genuine frame of that version). */
function ofVersion(v: number, buf = part()): Buffer {
  const b = Buffer.from(buf);
  b[2] = v;
  b.writeUInt32BE(crc32(b.subarray(0, b.length - 4)), b.length - 4);
  return b;
}

function thrown(fn: () => unknown): FrameError {
  try {
    fn();
  } catch (err) {
    return err as FrameError;
  }
  throw new Error('did not throw');
}

describe('wire versions', () => {
  it('this build writes PROTOCOL_VERSION and reads it (no hook in unit tests)', () => {
    expect(WRITE_VERSION).toBe(PROTOCOL_VERSION);
    expect(MIN_READ_VERSION).toBeLessThanOrEqual(PROTOCOL_VERSION);
    expect(part()[2]).toBe(PROTOCOL_VERSION);
    expect(decodePart(ofVersion(PROTOCOL_VERSION), 'ledger').checkpoint).toBe(3);
  });

  it('a genuine part of a newer version is a verified, newer WireVersionError naming both versions', () => {
    const err = thrown(() => decodePart(ofVersion(PROTOCOL_VERSION + 1), 'ledger'));
    expect(err).toBeInstanceOf(WireVersionError);
    expect(err).toMatchObject({
      reason: 'version',
      seen: PROTOCOL_VERSION + 1,
      reads: PROTOCOL_VERSION,
      newer: true,
      verified: true,
    });
    expect(err.message).toMatch(
      /wire version 3 is not supported \(this build reads 2\); a node of a newer release wrote it/,
    );
  });

  it('an older unread version is not newer; a newer version whose lengths do not add up is not verified', () => {
    expect(thrown(() => decodePart(ofVersion(MIN_READ_VERSION - 1), 'ledger'))).toMatchObject({
      newer: false,
      verified: true,
    });
    const short = ofVersion(PROTOCOL_VERSION + 1).subarray(0, 40);
    expect(thrown(() => decodePart(short, 'ledger'))).toMatchObject({
      reason: 'version',
      newer: true,
      verified: false,
    });
    // A newer version byte with a CRC that does not check out is corruption, not an upgrade.
    const bad = ofVersion(PROTOCOL_VERSION + 1);
    bad[bad.length - 6]! ^= 1;
    expect(thrown(() => decodePart(bad, 'ledger')).reason).toBe('checksum');
  });
});

describe('ResumeGuard', () => {
  function chainAt(version: number): ImageChain {
    const chain = new ImageChain();
    const rec = new ImageEncoder({ stateVersion: version }).encode({ v: version }, 1).record as ImageRecord;
    chain.check(1, rec);
    chain.apply(1, rec);
    return chain;
  }
  const guard = (own: number, chain: ImageChain | undefined, checkpoint: number, logs: unknown[] = []) =>
    new ResumeGuard({
      stateVersion: own,
      images: () => chain,
      checkpoint: () => checkpoint,
      log: (e) => logs.push(e),
    });

  it('blocks on an image of a newer stateVersion only', () => {
    expect(guard(1, chainAt(2), 1).blocked()).toMatch(
      /stateVersion 2, newer than this build's stateVersion 1/,
    );
    expect(guard(2, chainAt(2), 1).blocked()).toBeUndefined();
    expect(guard(2, chainAt(1), 1).blocked()).toBeUndefined(); // older: migrate's business
    expect(guard(1, undefined, 0).blocked()).toBeUndefined(); // fresh app
  });

  it('blocks for good on a verified part of a newer wire version, not on a corrupted or older one', () => {
    const logs: { msg: string; reason: string }[] = [];
    const g = guard(1, chainAt(1), 1, logs);
    g.rejected(new FrameError('checksum', 'bad'), 5);
    g.rejected(
      thrown(() => decodePart(ofVersion(PROTOCOL_VERSION + 1).subarray(0, 40), 'ledger')),
      6,
    );
    g.rejected(
      thrown(() => decodePart(ofVersion(MIN_READ_VERSION - 1), 'ledger')),
      7,
    );
    expect(g.blocked()).toBeUndefined();
    g.rejected(
      thrown(() => decodePart(ofVersion(PROTOCOL_VERSION + 1), 'ledger')),
      8,
    );
    expect(g.blocked()).toMatch(/wire version 3 \(first at stream seq 8\).*reads wire versions up to 2/);
    g.rejected(
      thrown(() => decodePart(ofVersion(PROTOCOL_VERSION + 1), 'ledger')),
      9,
    );
    g.check();
    expect(logs.filter((e) => e.msg === 'cannot resume')).toHaveLength(1); // logged once
  });
});

describe('status: the versions section', () => {
  const now = 1_800_000_000_000;
  const rec = (over: Partial<PresenceRecord> & Pick<PresenceRecord, 'nodeId'>): PresenceRecord => ({
    state: 'standby',
    epoch: 3,
    checkpoint: 0,
    host: 'h',
    pid: 1,
    updatedAt: now,
    relays: [],
    ...over,
  });

  it('shows each node, who cannot resume and why, and the skew; untrusted fields become null', () => {
    const nodes = statusNodes(
      [
        rec({
          nodeId: 'a',
          stateVersion: 1,
          protocolVersion: 2,
          canResume: false,
          cannotResume: 'image too new',
        }),
        rec({ nodeId: 'b', state: 'primary', stateVersion: 2, protocolVersion: 2, canResume: true }),
        rec({ nodeId: 'c', stateVersion: 'x' as never, canResume: 'no' as never }),
      ],
      'b',
      null,
      now,
    );
    expect(nodes.map((n) => [n.stateVersion, n.protocolVersion, n.canResume, n.cannotResume])).toEqual([
      [1, 2, false, 'image too new'],
      [2, 2, true, null],
      [null, null, null, null],
    ]);
    const out = formatVersions(nodes);
    expect(out).toMatch(/^\s+node\s+stateVersion\s+wire\s+can resume$/m);
    expect(out).toMatch(/^\s+a\s+1\s+2\s+NO$/m);
    expect(out).toMatch(/^\s+b \*\s+2\s+2\s+yes$/m);
    expect(out).toMatch(/a cannot resume and will not take over: image too new/);
    expect(out).toMatch(/version skew: stateVersion 1 and 2, wire version 2 among live nodes/);
    // Nodes older than the fields: no section at all.
    expect(formatVersions(statusNodes([rec({ nodeId: 'z' })], null, null, now))).toBe('');
  });
});
