import { describe, expect, it } from 'vitest';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { ConfigError, FrameRejectReason, LimitError } from '../../src/errors.js';
import { ImageChain, ImageEncoder, jsonDepth } from '../../src/image/chain.js';
import { decodeDelta, encodeDelta, stringifyDeep, type ImageDelta } from '../../src/image/delta.js';
import { track } from '../../src/image/tracked.js';
import { fromTree, toTree, treesEqual } from '../../src/image/typed-tree.js';
import { DEFAULT_LIMITS, resolveLimits } from '../../src/limits.js';
import { FrameKind, type Frame } from '../../src/protocol/frame.js';
import { encodeFence, encodeImage, encodeSeal, type ImageRecord } from '../../src/protocol/records.js';
import type { Applier } from '../../src/standby/applier.js';
import type { Intake } from '../../src/standby/intake.js';
import { testIntake } from '../helpers/intake.js';

type Kind = 'obj' | 'arr' | 'map' | 'set';
const wrap: Record<Kind, (v: unknown) => unknown> = {
  obj: (v) => ({ a: v }),
  arr: (v) => [v],
  map: (v) => new Map([['k', v]]),
  set: (v) => new Set([v]),
};
/** `leaf` inside `n` containers of `kind`: n levels deep. */
function nested(n: number, kind: Kind = 'obj', leaf: unknown = 1): unknown {
  let v = leaf;
  for (let i = 0; i < n; i++) v = wrap[kind](v);
  return v;
}
/** The innermost plain object of `nested(n, 'obj')`. */
function innermost(v: unknown): { a: unknown } {
  let o = v as { a: unknown };
  while (typeof o.a === 'object' && o.a !== null) o = o.a as { a: unknown };
  return o;
}

function depthError(f: () => unknown): LimitError {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(LimitError);
  expect((err as LimitError).limit).toBe('limits.maxDepth');
  return err as LimitError;
}

describe('limits.maxDepth', () => {
  it('defaults to 1000, from 1 to 1500', () => {
    expect(DEFAULT_LIMITS.maxDepth).toBe(1000);
    expect(resolveLimits({ maxDepth: 1500 }).maxDepth).toBe(1500);
    expect(() => resolveLimits({ maxDepth: 1501 })).toThrow(ConfigError);
    expect(() => resolveLimits({ maxDepth: 0 })).toThrow(
      /'limits.maxDepth' must be an integer from 1 to 1500/,
    );
  });

  it('toTree counts containers: n levels pass a limit of n, n + 1 do not, whatever the container kind', () => {
    for (const kind of ['obj', 'arr', 'map', 'set'] as const) {
      expect(() => toTree(nested(50, kind), 50)).not.toThrow();
      const err = depthError(() => toTree(nested(51, kind), 50));
      expect(err.message).toMatch(/nested more than 50 levels deep/);
    }
    // An empty container is a level too; a scalar is none.
    expect(() => toTree({ a: {} }, 1)).toThrow(LimitError);
    expect(toTree(5, 0)).toBe(5);
    const cause = new Error('outer', { cause: new Error('inner', { cause: { x: 1 } }) });
    expect(() => toTree(cause, 2)).toThrow(LimitError);
    expect(() => toTree(cause, 3)).not.toThrow();
  });

  it('checkpoint images: a state 3 000 deep is refused on the keyframe path with LimitError, nothing is left half-done', () => {
    const enc = new ImageEncoder({ compress: false });
    const err = depthError(() => enc.encode(nested(3000), 1));
    expect(err.message).toMatch(/nested more than 1000 levels deep .*, at state\.a\.a/);
    // The encoder is usable after: the next image is a keyframe.
    expect(enc.encode({ ok: true }, 1).keyframe).toBe(true);
  });

  it.each(['obj', 'arr', 'map', 'set'] as const)(
    'a %s state 1 000 deep goes through keyframe and delta (the delta encoder no longer overflows), and a standby restores it',
    (kind) => {
      const enc = new ImageEncoder({ compress: false, maxChainShare: 1000 });
      const chain = new ImageChain();
      const a = nested(1000, kind, 1);
      const b = nested(1000, kind, 2);
      for (const [cp, state] of [
        [1, a],
        [2, b],
      ] as const) {
        const img = enc.encode(state, cp);
        expect(img.keyframe).toBe(cp === 1);
        const rec = img.record as ImageRecord;
        chain.check(cp, rec);
        chain.apply(cp, rec);
      }
      expect(treesEqual(chain.tree!, toTree(b))).toBe(true);
    },
  );

  it('the diff path refuses a state that grew too deep between two checkpoints', () => {
    const enc = new ImageEncoder({ compress: false, maxDepth: 100 });
    const state = { top: nested(50) as object };
    enc.encode(state, 1);
    innermost(state.top).a = nested(60);
    depthError(() => enc.encode(state, 2));
  });

  it('the tracked path refuses a value stored deep enough to pass the limit, counting from its place', () => {
    const enc = new ImageEncoder({ compress: false, maxDepth: 100, maxChainShare: 1000 });
    const state = track({ top: nested(50) as object });
    enc.encode(state, 1);
    let p = state.top as { a: unknown };
    for (let i = 0; i < 48; i++) p = p.a as { a: unknown };
    // 50 containers above (the root, top and 48 more), then a 50-deep value: 100 levels, fine.
    p.a = nested(50);
    expect(enc.encode(state, 2).path).toBe('tracked');
    // One more level is not.
    p.a = nested(51);
    const err = depthError(() => enc.encode(state, 3));
    expect(err.message).toMatch(/more than 100 levels/);
  });

  it('the identity path refuses a new value that passes the limit, counting from its place', () => {
    const enc = new ImageEncoder({ compress: false, maxDepth: 100, immutable: true, maxChainShare: 1000 });
    const s1 = { top: { a: 1 }, other: 1 };
    enc.encode(s1, 1);
    const s2 = { ...s1, top: { a: nested(98) } };
    expect(enc.encode(s2, 2).path).toBe('identity');
    const s3 = { ...s2, top: { a: nested(99) } };
    depthError(() => enc.encode(s3, 3));
  });

  it('encodeDelta writes what JSON.stringify writes, also where JSON.stringify overflows', () => {
    const samples: unknown[] = [
      { a: [1, 'x', null, true, { b: [] }], 'k"\n': { _t: 'a', _1: [0, 0, 0] }, u: undefined },
      [undefined, 1.5, -0, 1e21, 'é\u2028'],
      {},
      [],
    ];
    for (const s of samples) expect(stringifyDeep(s)).toBe(JSON.stringify(s));
    const deep = nested(6000, 'arr') as ImageDelta;
    expect(() => JSON.stringify(deep)).toThrow(RangeError);
    const bytes = encodeDelta(deep);
    expect(jsonDepth(JSON.parse(bytes.toString('utf8')))).toBe(6000);
    expect(jsonDepth(decodeDelta(encodeDelta({ a: [0, nested(10)] } as ImageDelta)))).toBe(12);
  });
});

describe('limits.maxDepth on a standby', () => {
  const APP = 'depth';
  /** Frames of one checkpoint whose image a primary with `maxDepth` took of `state`. */
  function frames(states: unknown[], maxDepth: number): Frame[] {
    const enc = new ImageEncoder({ compress: false, maxDepth, keyframeEvery: 100, maxChainShare: 1000 });
    let seq = 1;
    const out: Frame[] = [
      { kind: FrameKind.Fence, epoch: 1, seq: seq++, checkpoint: 0, body: encodeFence({ nodeId: 'p' }) },
    ];
    states.forEach((state, i) => {
      const cp = i + 1;
      const rec = enc.encode(state, cp).record as ImageRecord;
      out.push({ kind: FrameKind.Image, epoch: 1, seq: seq++, checkpoint: cp, body: encodeImage(rec) });
      out.push({
        kind: FrameKind.Seal,
        epoch: 1,
        seq: seq++,
        checkpoint: cp,
        body: encodeSeal({ writeFrames: 0, writeOps: 0, imageFrames: 1 }),
      });
    });
    return out;
  }
  async function feed(
    maxDepth: number,
    fs: Frame[],
  ): Promise<{ applier: Applier; intake: Intake; messages: string[] }> {
    const adapter = memoryAdapter();
    await adapter.open();
    const messages: string[] = [];
    const {
      applier,
      intake,
      feed: send,
    } = testIntake({
      app: APP,
      adapter,
      images: new ImageChain({ maxDepth }),
      mode: 'delay-write',
      onReject: (err) => messages.push(err.message),
    });
    await send(...fs);
    return { applier, intake, messages };
  }

  it('a keyframe deeper than its own limit is a counted `limit` rejection, once; the checkpoint does not commit', async () => {
    const { applier, intake, messages } = await feed(100, frames([nested(150)], 1500));
    expect(applier.position.checkpoint).toBe(0);
    expect(intake.counters.rejected[FrameRejectReason.Limit]).toBe(1);
    expect(messages.at(-1)).toMatch(/checkpoint 1: image for checkpoint 1 refused: .*limits.maxDepth/);
  });

  it('a keyframe node:v8 itself cannot read (2 500 levels) is a counted rejection too, not a crash', async () => {
    const { applier, intake, messages } = await feed(1500, frames([nested(2500)], 3000));
    expect(applier.position.checkpoint).toBe(0);
    expect(intake.counters.rejected[FrameRejectReason.Limit]).toBe(1);
    expect(messages.at(-1)).toMatch(
      /node:v8 could not read it: Maximum call stack size exceeded.*limits.maxDepth/,
    );
  });

  it('a delta deeper than its limit allows is refused the same way', async () => {
    const { applier, intake, messages } = await feed(20, frames([{ a: 1 }, { a: nested(200) }], 1500));
    expect(applier.position.checkpoint).toBe(1);
    expect(intake.counters.rejected[FrameRejectReason.Limit]).toBe(1);
    expect(messages.at(-1)).toMatch(/JSON levels deep.*limits.maxDepth/);
  });

  it('within the limit, images apply and restore', async () => {
    const { applier } = await feed(1000, frames([nested(900), nested(1000, 'obj', 2)], 1000));
    expect(applier.position.checkpoint).toBe(2);
    expect(innermost(fromTree(toTree(nested(3)))).a).toBe(1);
  });
});
