import { Restartpoint, type StartOptions } from '../../src/index.js';

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
