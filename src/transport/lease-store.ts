/**
 * The lease record in its JetStream KV bucket: read, create, compare-and-set, release. Only
 * the mechanics live here; the policy (when to renew, when to claim) is in failover/.
 */
import type { KV } from '@nats-io/kv';

/** What the lease record holds. */
export interface LeaseValue {
  /** Node id of the primary; `null` once released by a clean shutdown (the epoch stays). */
  readonly holder: string | null;
  /** Fencing epoch of that primary. */
  readonly epoch: number;
}

/** A read of the lease: its value (undefined when the key never existed or was purged) and KV revision. */
export interface LeaseRead {
  readonly value: LeaseValue | undefined;
  /** KV revision to compare-and-set against (0 when the key never existed). */
  readonly revision: number;
}

/** Another node changed the lease first. */
export class LeaseConflict extends Error {}

function isConflict(err: unknown): boolean {
  const e = err as { code?: unknown; api_error?: { err_code?: number }; message?: string };
  return (
    e?.api_error?.err_code === 10071 ||
    e?.code === 10071 ||
    /wrong last sequence|key exists/i.test(String(e?.message ?? ''))
  );
}

/** Holder name given to a lease value this build cannot read: it counts as held, never as vacant. */
export const UNREADABLE_HOLDER = '(unreadable lease value)';

/**
 * The one reader of a lease record's bytes: `undefined` unless it is JSON with a `holder`
 * (string or null) and an integer `epoch`. Used here and by the read side (`inspect.ts`).
 */
export function parseLeaseValue(bytes: Uint8Array): LeaseValue | undefined {
  try {
    const v = JSON.parse(Buffer.from(bytes).toString('utf8')) as Partial<LeaseValue> | null;
    if (v && (typeof v.holder === 'string' || v.holder === null) && Number.isSafeInteger(v.epoch)) {
      return { holder: v.holder, epoch: v.epoch as number };
    }
  } catch {
    // fall through
  }
  return undefined;
}

function parse(bytes: Uint8Array): LeaseValue {
  const v = parseLeaseValue(bytes);
  if (v && v.epoch >= 1) return v;
  // Something else wrote the key. Treating it as vacant would let a standby claim without
  // waiting a TTL; treating it as held makes the usual "no change for a TTL" rule apply.
  return { holder: UNREADABLE_HOLDER, epoch: 0 };
}

/** CAS access to one lease key. */
export class LeaseStore {
  readonly #kv: KV;
  readonly #key: string;

  constructor(kv: KV, key: string) {
    this.#kv = kv;
    this.#key = key;
  }

  /** Reads the lease. */
  async read(): Promise<LeaseRead> {
    const e = await this.#kv.get(this.#key);
    if (!e) return { value: undefined, revision: 0 };
    if (e.operation !== 'PUT') return { value: undefined, revision: e.revision };
    return { value: parse(e.value), revision: e.revision };
  }

  /**
   * Writes `value` if the lease is still at `revision` (0: only if the key does not exist or
   * was released). Returns the new revision; throws `LeaseConflict` if someone else wrote first.
   */
  async write(value: LeaseValue, revision: number): Promise<number> {
    const bytes = Buffer.from(JSON.stringify(value));
    try {
      if (revision === 0) return await this.#kv.create(this.#key, bytes);
      return await this.#kv.update(this.#key, bytes, revision);
    } catch (err) {
      if (isConflict(err))
        throw new LeaseConflict(`lease changed under revision ${revision}`, { cause: err });
      throw err;
    }
  }

  /**
   * Like `write`, but survives a lost reply: when the write fails (a timeout, or a conflict that
   * our own write whose reply was lost could have caused), the key is read back, and if it moved
   * past `revision` and holds exactly `value` (this holder, this epoch: no one else writes that),
   * the write landed: its revision is returned. A key still at `revision` means nothing landed
   * (a renewal writes the same value again, so the value alone proves nothing): the original
   * error is thrown.
   */
  async writeOrAdopt(value: LeaseValue, revision: number): Promise<number> {
    try {
      return await this.write(value, revision);
    } catch (err) {
      const read = await this.read().catch(() => undefined);
      if (
        read?.value &&
        read.revision > revision &&
        read.value.holder === value.holder &&
        read.value.epoch === value.epoch
      ) {
        return read.revision;
      }
      throw err;
    }
  }

  /**
   * Releases the lease if it is still at `revision`, so a standby can claim it at once. The
   * record stays, with no holder and the same epoch: epochs never go back, even across a
   * clean shutdown of every node.
   */
  async release(epoch: number, revision: number): Promise<void> {
    await this.write({ holder: null, epoch }, revision);
  }
}
