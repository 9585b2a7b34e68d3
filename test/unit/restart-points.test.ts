import { afterEach, describe, expect, it, vi } from 'vitest';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { ConfigError, FencedError, ImageError } from '../../src/errors.js';
import { ImageChain, ImageEncoder } from '../../src/image/chain.js';
import type { ImageRecord } from '../../src/protocol/records.js';
import { resolveOptions, type StartOptions } from '../../src/sdk/options.js';
import { AutoCheckpoints, OutputCommits, resumeProblem, resumeState } from '../../src/sdk/restart-points.js';

describe('OutputCommits', () => {
  it('runs a callback only once a checkpoint at or after its turn is acknowledged, in order', async () => {
    const commits = new OutputCommits();
    const ran: string[] = [];
    const a = commits.add(3, () => {
      ran.push('a');
      return 'A';
    });
    const b = commits.add(4, async () => {
      ran.push('b');
      return 'B';
    });
    commits.acknowledged(2); // an earlier checkpoint in flight: not enough
    expect(ran).toEqual([]);
    commits.acknowledged(3);
    expect(ran).toEqual(['a']);
    await expect(a).resolves.toBe('A');
    commits.acknowledged(9);
    await expect(b).resolves.toBe('B');
    expect(ran).toEqual(['a', 'b']);
    commits.acknowledged(10); // never twice
    expect(ran).toEqual(['a', 'b']);
  });

  it('rejects with what the callback throws', async () => {
    const commits = new OutputCommits();
    const p = commits.add(1, () => {
      throw new Error('reply failed');
    });
    commits.acknowledged(1);
    await expect(p).rejects.toThrow('reply failed');
  });

  it('never runs callbacks after the node is fenced, rejecting them and later ones', async () => {
    const commits = new OutputCommits();
    const fn = vi.fn();
    const p = commits.add(1, fn);
    const fenced = new FencedError('lost the lease');
    commits.fail(fenced);
    commits.acknowledged(5);
    await expect(p).rejects.toBe(fenced);
    await expect(commits.add(6, fn)).rejects.toBe(fenced);
    expect(fn).not.toHaveBeenCalled();
    expect(commits.size).toBe(0);
  });
});

describe('AutoCheckpoints', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  /** A take() whose checkpoints settle only when the test says so. */
  function controlled(): {
    take: () => Promise<unknown>;
    pending: (() => void)[];
    fail: ((e: unknown) => void)[];
    started: number[];
  } {
    const pending: (() => void)[] = [];
    const fail: ((e: unknown) => void)[] = [];
    const started: number[] = [];
    return {
      pending,
      fail,
      started,
      take: () =>
        new Promise<void>((resolve, reject) => {
          started.push(Date.now());
          pending.push(resolve);
          fail.push(reject);
        }),
    };
  }

  it('takes one checkpoint per period, never two at once; a slow one delays the next', async () => {
    vi.useFakeTimers({ now: 0 });
    const c = controlled();
    const auto = new AutoCheckpoints({ everyMs: 100, take: c.take, onError: () => false });
    auto.start();
    await vi.advanceTimersByTimeAsync(99);
    expect(c.started).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(c.started).toEqual([100]);
    // The first is slow: 350 ms pass and no second one starts.
    await vi.advanceTimersByTimeAsync(350);
    expect(c.started).toEqual([100]);
    c.pending[0]!();
    await vi.advanceTimersByTimeAsync(0);
    expect(c.started).toEqual([100, 450]); // at once: its period is long gone
    c.pending[1]!();
    await vi.advanceTimersByTimeAsync(0);
    expect(c.started).toEqual([100, 450]);
    await vi.advanceTimersByTimeAsync(100);
    expect(c.started).toEqual([100, 450, 550]); // a fast one keeps the period, start to start
    c.pending[2]!();
    await auto.stop();
    await vi.advanceTimersByTimeAsync(1000);
    expect(c.started).toHaveLength(3);
    expect(auto.taken).toBe(3);
  });

  it('keeps going after a failed checkpoint, stops when told the node lost its role, and stop() waits', async () => {
    vi.useFakeTimers({ now: 0 });
    const c = controlled();
    const errors: unknown[] = [];
    const auto = new AutoCheckpoints({
      everyMs: 10,
      take: c.take,
      onError: (err) => {
        errors.push(err);
        return err instanceof FencedError;
      },
    });
    auto.start();
    await vi.advanceTimersByTimeAsync(10);
    c.fail[0]!(new Error('relay timeout'));
    await vi.advanceTimersByTimeAsync(10);
    expect(c.started).toHaveLength(2);
    c.fail[1]!(new FencedError('gone'));
    await vi.advanceTimersByTimeAsync(100);
    expect(c.started).toHaveLength(2);
    expect(errors).toHaveLength(2);

    const d = controlled();
    const auto2 = new AutoCheckpoints({ everyMs: 10, take: d.take, onError: () => false });
    auto2.start();
    await vi.advanceTimersByTimeAsync(10);
    let stopped = false;
    const stopping = auto2.stop().then(() => (stopped = true));
    await vi.advanceTimersByTimeAsync(50);
    expect(stopped).toBe(false); // waits for the checkpoint it is taking
    d.pending[0]!();
    await stopping;
    expect(d.started).toHaveLength(1);
  });
});

describe('resuming an image of another stateVersion', () => {
  const base = (extra: Partial<StartOptions<unknown>>): StartOptions<unknown> => ({
    app: 'a',
    nats: { servers: 'nats://127.0.0.1:4222' },
    storage: memoryAdapter(),
    ...extra,
  });

  function chainAt(version: number, state: unknown): ImageChain {
    const chain = new ImageChain();
    const rec = new ImageEncoder({ stateVersion: version }).encode(state, 1).record as ImageRecord;
    chain.check(1, rec);
    chain.apply(1, rec);
    return chain;
  }

  it('refuses an image of another version without migrate, naming stateVersion and migrate', async () => {
    const o = resolveOptions(base({ stateVersion: 2 }));
    const chain = chainAt(1, { v1: true });
    const problem = resumeProblem(o, chain, 1);
    expect(problem).toBeInstanceOf(ConfigError);
    expect(problem!.option).toBe('stateVersion');
    expect(problem!.message).toMatch(
      /'stateVersion' is 2, but the last checkpoint \(1\) holds an image of stateVersion 1: pass migrate/,
    );
    await expect(resumeState(o, chain, 1)).rejects.toMatchObject({ option: 'stateVersion' });
  });

  it('passes the image through migrate, and a fresh app through nothing', async () => {
    const migrate = vi.fn((image: unknown, from: number) => ({ ...(image as object), migratedFrom: from }));
    const o = resolveOptions(base({ stateVersion: 3, migrate, initialState: () => ({ fresh: true }) }));
    expect(resumeProblem(o, chainAt(1, { n: 1 }), 1)).toBeUndefined();
    await expect(resumeState(o, chainAt(1, { n: 1 }), 1)).resolves.toEqual({ n: 1, migratedFrom: 1 });
    await expect(resumeState(o, chainAt(3, { n: 1 }), 1)).resolves.toEqual({ n: 1 });
    expect(migrate).toHaveBeenCalledTimes(1);
    await expect(resumeState(o, new ImageChain(), 0)).resolves.toEqual({ fresh: true });
  });

  it('turns a failing migrate into an ImageError with the versions', async () => {
    const o = resolveOptions(
      base({
        stateVersion: 2,
        migrate: () => {
          throw new Error('no such field');
        },
      }),
    );
    await expect(resumeState(o, chainAt(1, {}), 1)).rejects.toThrow(ImageError);
    await expect(resumeState(o, chainAt(1, {}), 1)).rejects.toThrow(
      /migrate\(image, 1\) failed .*stateVersion 2\): no such field/,
    );
  });
});

describe('image options', () => {
  const base = { app: 'ok', nats: { servers: 'nats://127.0.0.1:4222' }, storage: memoryAdapter() };
  it.each([
    [{ maxChainShare: 0 }, 'maxChainShare'],
    [{ maxChainShare: Number.NaN }, 'maxChainShare'],
    [{ immutableState: 'yes' }, 'immutableState'],
    [{ checkpointEveryMs: 5, getState: () => ({}) }, 'checkpointEveryMs'],
    [{ checkpointEveryMs: 100 }, 'getState'],
    [{ getState: () => ({}) }, 'checkpointEveryMs'],
    [{ checkpointEveryMs: 100, getState: {} }, 'getState'],
    [{ stateVersion: 0 }, 'stateVersion'],
    [{ stateVersion: 1.5 }, 'stateVersion'],
    [{ migrate: 'v1->v2' }, 'migrate'],
  ])('rejects %j naming %s', (extra, option) => {
    let err: unknown;
    try {
      resolveOptions({ ...base, ...extra } as never);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).option).toBe(option);
    expect((err as Error).message).toContain(`'${option}'`);
  });

  it('applies defaults', () => {
    const o = resolveOptions(base);
    expect(o).toMatchObject({
      maxChainShare: 0.5,
      immutableState: false,
      stateVersion: 1,
      keyframeEvery: 32,
    });
    expect(o.checkpointEveryMs).toBeUndefined();
  });
});
