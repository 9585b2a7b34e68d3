import { Restartpoint, type LogEvent, type StartOptions } from '../../src/index.js';

/**
 * Starts a node that will be a standby. `standing` resolves once it applies the relays' streams
 * (its `standby` log event), `primary` when it takes over. The caller's `log` still sees every event.
 */
export function startStandby<S>(o: StartOptions<S>): {
  standing: Promise<void>;
  primary: Promise<Restartpoint<S>>;
} {
  let standing!: () => void;
  const p = new Promise<void>((r) => (standing = r));
  const log = o.log;
  const primary = Restartpoint.start({
    ...o,
    log: (e) => {
      if (e.msg === 'standby') standing();
      log?.(e);
    },
  });
  primary.catch(() => undefined);
  const stood = Promise.race([p, primary.then(() => undefined)]);
  // A start that fails rejects `primary`; a test that never awaits `standing` is not failed by it.
  stood.catch(() => undefined);
  return { standing: stood, primary };
}

/** A standby started by `watchStandby`: its log events, kept and awaitable. */
export interface WatchedStandby<S> {
  readonly events: LogEvent[];
  readonly standing: Promise<void>;
  readonly primary: Promise<Restartpoint<S>>;
  /** The first event (seen or to come) that `pred` accepts; rejects after `timeoutMs` (default: never). */
  waitFor(pred: (e: LogEvent) => boolean, timeoutMs?: number): Promise<LogEvent>;
  /** Aborts the start (or the node), and waits until it has let go. */
  stop(): Promise<void>;
}

/** `startStandby` with every log event kept and awaitable (`waitFor`), stopped by `stop()`. */
export function watchStandby<S>(o: StartOptions<S>): WatchedStandby<S> {
  const events: LogEvent[] = [];
  const waiters: { pred: (e: LogEvent) => boolean; resolve: (e: LogEvent) => void }[] = [];
  const ac = new AbortController();
  const s = startStandby<S>({
    ...o,
    signal: ac.signal,
    log: (e) => {
      events.push(e);
      for (let i = waiters.length - 1; i >= 0; i--)
        if (waiters[i]!.pred(e)) waiters.splice(i, 1)[0]!.resolve(e);
    },
  });
  return {
    events,
    standing: s.standing,
    primary: s.primary,
    waitFor: (pred, timeoutMs) => {
      const hit = events.find(pred);
      if (hit) return Promise.resolve(hit);
      return new Promise((resolve, reject) => {
        waiters.push({ pred, resolve });
        if (timeoutMs !== undefined) {
          setTimeout(
            () =>
              reject(
                new Error(
                  `not seen in ${timeoutMs / 1000} s; events: ${events.map((e) => JSON.stringify(e)).join('\n')}`,
                ),
              ),
            timeoutMs,
          ).unref();
        }
      });
    },
    stop: async () => {
      ac.abort();
      await s.primary.catch(() => undefined);
    },
  };
}
