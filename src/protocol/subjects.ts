/**
 * Names on the NATS side, all derived from the app name so that apps never share anything.
 * An app name is 1–64 characters of `[A-Za-z0-9_-]`, which is valid in subjects, stream names,
 * bucket names and KV keys alike.
 */

/** Pattern every app name must match. */
export const APP_NAME_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/** The names one app uses. */
export interface AppNames {
  /** JetStream stream holding the app's frames. */
  readonly stream: string;
  /** Subject frames are published on. */
  readonly subject: string;
  /** Subject base snapshots (chunks and manifests, src/history/) are published on. */
  readonly baseSubject: string;
  /** Subjects the stream owns. */
  readonly streamSubjects: string[];
  /** KV bucket holding the lease. */
  readonly leaseBucket: string;
  /** KV key of the lease. */
  readonly leaseKey: string;
}

/** Derives every name of `app`. The caller validated `app` against `APP_NAME_PATTERN`. */
export function appNames(app: string): AppNames {
  return {
    stream: `RP_${app}`,
    subject: `rp.${app}.frames`,
    baseSubject: `rp.${app}.base`,
    streamSubjects: [`rp.${app}.>`],
    leaseBucket: `rp-${app}-lease`,
    leaseKey: 'leader',
  };
}

/** The JetStream dedupe id of one part: unique per (app, epoch, seq, part). */
export function messageId(app: string, epoch: number, seq: number, part: number): string {
  return `${app}.${epoch}.${seq}.${part}`;
}

/**
 * The JetStream dedupe id of one message of a base: the id the codec gave it (which names the
 * base's epoch, its build tag inside the seq, the chunk and the part) prefixed with `b.<C>.`, so
 * it never collides with a frame's id and names (checkpoint, builder, chunk).
 */
export function baseMessageId(checkpoint: number, codecId: string): string {
  return `b.${checkpoint}.${codecId}`;
}
