/**
 * The SDK's side of `restartpoint check-resume` (docs/upgrades.md, docs/cli.md): with
 * `RESTARTPOINT_CHECK_RESUME=1` in the environment, `Restartpoint.start()` does not join the app
 * as a node. It runs the new build's resume path against the live history, in a sandbox:
 *
 * ```text
 * relays ─► standby (read only) ─► the app's own adapter (must be empty: a scratch store)
 *        ─► catch up with a read quorum, commit every sealed checkpoint (as a takeover would)
 *        ─► materialize the image ─► the app's real `migrate` (resumeState) ─► start() resolves
 * ```
 *
 * It never writes to the relays (the streams must exist; nothing is published) nor to the lease
 * bucket (not even opened: no lease, no presence, no node-id check). The instance it resolves with
 * has the resumed state and store; its writes and checkpoints reject with `ClosedError`. The outcome
 * (ok, or the error with the checkpoint it failed on) is written as JSON to the file named by
 * `RESTARTPOINT_CHECK_RESUME_REPORT`, for the `check-resume` command to read.
 */
import { writeFileSync } from 'node:fs';
import { ClosedError, ConfigError, RestartpointError, ReplicationError } from '../errors.js';
import { EnvelopeCodec } from '../protocol/envelope.js';
import { WRITE_VERSION } from '../protocol/frame.js';
import { appNames } from '../protocol/subjects.js';
import { StandbyRunner } from '../standby/runner.js';
import type { AppliedPosition } from '../standby/applier.js';
import { closeLink, openLink, type NatsLink } from '../transport/connection.js';
import { lastStreamSeq } from '../transport/consumer.js';
import { RelaySet, type RelaySpec } from '../transport/relays.js';
import type { ResolvedOptions } from './options.js';
import { ResumeGuard, resumeProblem, resumeState } from './restart-points.js';
import type { PrimaryEngine } from './sidecar-client.js';

/** Environment variable that turns `start()` into the check-resume sandbox (`1`). */
export const CHECK_RESUME_ENV = 'RESTARTPOINT_CHECK_RESUME';
/** The app name the command checks: `start()` refuses to sandbox another one. */
export const CHECK_RESUME_APP_ENV = 'RESTARTPOINT_CHECK_RESUME_APP';
/** File the sandbox writes its outcome to (JSON, `CheckResumeOutcome`). */
export const CHECK_RESUME_REPORT_ENV = 'RESTARTPOINT_CHECK_RESUME_REPORT';

/** What the sandbox reports to `check-resume`. */
export interface CheckResumeOutcome {
  readonly ok: boolean;
  readonly app: string;
  /** The checkpoint resumed from, or the one resuming failed on (0: a fresh app, no history). */
  readonly checkpoint: number;
  /** The epoch that sealed it. */
  readonly epoch: number;
  /** The `stateVersion` of its image (0 without one). */
  readonly imageStateVersion: number;
  /** This build's `stateVersion`. */
  readonly stateVersion: number;
  /** Whether `migrate` ran (the image was of another version). */
  readonly migrated: boolean;
  /** The wire version this build reads up to. */
  readonly protocolVersion: number;
  /** Per relay: its stream's last sequence before and after the sandbox read. */
  readonly relays: readonly {
    readonly servers: string;
    readonly lastSeqBefore: number;
    readonly lastSeqAfter: number;
  }[];
  /** The failure: its code and message (the exception of `migrate`, or why the sandbox refused). */
  readonly error: { readonly code: string; readonly message: string } | null;
}

/** Whether `env` asks for the sandbox; throws `ConfigError` when it names another app. */
export function checkResumeFromEnv(
  env: NodeJS.ProcessEnv,
  app: string,
): { report: string | undefined } | undefined {
  if (env[CHECK_RESUME_ENV] !== '1') return undefined;
  const want = env[CHECK_RESUME_APP_ENV];
  if (want !== undefined && want !== app) {
    const err = new ConfigError(
      'app',
      `is '${app}', but restartpoint check-resume checks app '${want}': run the new build of that app, or pass --app ${app}`,
    );
    const report = env[CHECK_RESUME_REPORT_ENV];
    if (report) {
      const outcome: CheckResumeOutcome = {
        ok: false,
        app,
        checkpoint: 0,
        epoch: 0,
        imageStateVersion: 0,
        stateVersion: 0,
        migrated: false,
        protocolVersion: WRITE_VERSION,
        relays: [],
        error: { code: err.code, message: err.message },
      };
      writeFileSync(report, JSON.stringify(outcome));
    }
    throw err;
  }
  return { report: env[CHECK_RESUME_REPORT_ENV] || undefined };
}

/** A resumed sandbox: what `start()` builds its instance from. */
export interface Sandbox<S> {
  readonly state: S;
  readonly position: AppliedPosition;
  readonly engine: PrimaryEngine;
  readonly shutdown: () => Promise<void>;
}

function sandboxClosed(): ClosedError {
  return new ClosedError(
    'restartpoint check-resume sandbox: the app resumed, but nothing is written here (no store write, no checkpoint); the check is over',
  );
}

/** Runs the resume path in the sandbox (module doc). Rejects with what resuming failed on. */
export async function resumeInSandbox<S>(
  o: ResolvedOptions<S>,
  report: string | undefined,
): Promise<Sandbox<S>> {
  const names = appNames(o.app);
  const specs: RelaySpec[] = o.relays ?? [o.nats];
  let position: AppliedPosition = { epoch: 0, checkpoint: 0, streamSeq: 0 } as AppliedPosition;
  let imageStateVersion = 0;
  let migrated = false;
  const seqs: { servers: string; lastSeqBefore: number; lastSeqAfter: number }[] = [];
  const links: NatsLink[] = [];
  let relays: RelaySet | undefined;
  const write = (error: unknown): void => {
    if (!report) return;
    const outcome: CheckResumeOutcome = {
      ok: error === undefined,
      app: o.app,
      checkpoint: position.checkpoint,
      epoch: position.epoch,
      imageStateVersion,
      stateVersion: o.stateVersion,
      migrated,
      protocolVersion: WRITE_VERSION,
      relays: seqs,
      error:
        error === undefined
          ? null
          : {
              code: error instanceof RestartpointError ? error.code : 'ERR_APP',
              message: error instanceof Error ? error.message : String(error),
            },
    };
    writeFileSync(report, JSON.stringify(outcome));
  };
  const close = async (): Promise<void> => {
    await relays?.close();
    for (const l of links) await closeLink(l).catch(() => undefined);
    await o.storage.close().catch(() => undefined);
  };
  try {
    // The streams must exist: RelaySet.open would create a missing one, a write to the relay.
    for (const spec of specs) {
      const { replicas, ...nats } = spec;
      void replicas;
      const link = await openLink(nats, `restartpoint:${o.app}:check-resume`);
      links.push(link);
      const seq = await lastStreamSeq(link, names.stream).catch(() => undefined);
      if (seq === undefined) {
        throw new ConfigError(
          'app',
          `has no stream ${names.stream} on ${link.servers}: there is no history of app '${o.app}' to check against (is the app name or the relay right?)`,
        );
      }
      seqs.push({ servers: link.servers, lastSeqBefore: seq, lastSeqAfter: seq });
    }
    relays = await RelaySet.open({
      specs,
      names,
      clientName: `restartpoint:${o.app}:check-resume`,
      ack: o.ack,
      app: o.app,
      timeoutMs: o.checkpointTimeoutMs,
      fec: o.fec,
      envelope: o.clusterKey
        ? new EnvelopeCodec({ app: o.app, keys: o.clusterKey, encrypt: o.encrypt })
        : undefined,
    });
    await o.storage.open({ nodeId: o.nodeId });
    if ((await o.storage.keys()).length > 0 || (await o.storage.readMeta()) !== undefined) {
      throw new ConfigError(
        'storage',
        `holds data, but check-resume materializes the app's store into it (the ${o.storage.kind} store is cleared first): point the new build at an empty scratch store for the check (a fresh directory, a memory store, an unused prefix or table), never at a node's store`,
      );
    }
    const standbyRef: { s?: StandbyRunner } = {};
    const guard = new ResumeGuard({
      stateVersion: o.stateVersion,
      images: () => standbyRef.s?.images,
      checkpoint: () => standbyRef.s?.applier.position.checkpoint ?? 0,
      log: o.log,
    });
    const standby = new StandbyRunner({
      links: relays.links,
      names,
      app: o.app,
      adapter: o.storage,
      mode: o.mode,
      need: relays.need,
      codec: relays.codec,
      limits: o.limits,
      onReject: (err, seq) => {
        o.log({
          level: 'warn',
          msg: 'frame rejected',
          reason: err.reason,
          streamSeq: seq,
          error: err.message,
        });
        guard.rejected(err, seq);
      },
    });
    standbyRef.s = standby;
    await standby.start();
    await Promise.race([standby.catchUp(relays.readQuorum), standby.failed()]);
    // What a takeover would resume from: every complete sealed checkpoint.
    await standby.relax();
    const stuck = standby.intake.stuck();
    await standby.stop();
    position = standby.applier.position;
    imageStateVersion = position.checkpoint > 0 ? standby.images.stateVersion : 0;
    if (stuck) throw new ReplicationError(`the relays' history cannot be read to its end: ${stuck}`);
    const blocked = guard.blocked();
    if (blocked) throw new ConfigError('stateVersion', `this build cannot resume: ${blocked}`);
    const problem = resumeProblem(o, standby.images, position.checkpoint);
    if (problem) throw problem;
    migrated = position.checkpoint > 0 && imageStateVersion !== o.stateVersion;
    const state = await resumeState(o, standby.images, position.checkpoint);
    for (const [i, l] of relays.links.entries()) {
      const after = await lastStreamSeq(l, names.stream).catch(() => -1);
      if (seqs[i]) seqs[i] = { ...seqs[i], lastSeqAfter: after };
    }
    write(undefined);
    o.log({ level: 'info', msg: 'check-resume: resumed in the sandbox', ...position, migrated });
    const engine: PrimaryEngine = {
      write: () => Promise.reject(sandboxClosed()),
      checkpoint: () => Promise.reject(sandboxClosed()),
      nextCheckpoint: position.checkpoint + 1,
      lastStats: undefined,
      stop: () => undefined,
      drain: () => Promise.resolve(),
    };
    return { state, position, engine, shutdown: close };
  } catch (err) {
    write(err);
    await close();
    throw err;
  }
}
