/**
 * Store identity tokens and `VerifyResult`s, shared by the adapters (issue 12). Pure, no I/O.
 *
 * A token is one line of JSON, `{"storeId":…,"nodeId":…,"format":…}`, written into the store at
 * its first `open()` (see `StorageAdapter.open`). An adapter keeps the token it opened with and
 * compares the store's token with it (`tokenProblem`): at every reconnect, and inside the
 * writes where the store can do it in the same atomic step.
 */
import { randomBytes } from 'node:crypto';
import { StoreLostError } from '../errors.js';
import type { StoreIdentity, VerifyResult } from './adapter.js';
import { digestHex, sameDigest, type Digest } from './digest.js';

/** A new token for a store of `format`, opened by `nodeId`. */
export function newIdentity(format: string, nodeId: string | undefined): StoreIdentity {
  const id: StoreIdentity = { storeId: randomBytes(12).toString('hex'), format };
  return nodeId === undefined ? id : { ...id, nodeId };
}

/** The token as stored: one line of JSON, keys in a fixed order (stores compare it as bytes). */
export function encodeIdentity(id: StoreIdentity): string {
  return JSON.stringify({ storeId: id.storeId, nodeId: id.nodeId ?? null, format: id.format });
}

/** The token read from a store, or `undefined` when it is not one. */
export function decodeIdentity(text: string): StoreIdentity | undefined {
  try {
    const v = JSON.parse(text) as { storeId?: unknown; nodeId?: unknown; format?: unknown };
    if (typeof v.storeId !== 'string' || typeof v.format !== 'string') return undefined;
    const id: StoreIdentity = { storeId: v.storeId, format: v.format };
    return typeof v.nodeId === 'string' ? { ...id, nodeId: v.nodeId } : id;
  } catch {
    return undefined;
  }
}

/**
 * At open: why the token found cannot be accepted (another node's store, another format), or
 * `undefined` when it can.
 */
export function foreignAtOpen(
  found: StoreIdentity,
  format: string,
  nodeId: string | undefined,
): string | undefined {
  if (found.format !== format) {
    return `its identity token is of format ${JSON.stringify(found.format)}, this adapter writes ${JSON.stringify(format)}`;
  }
  if (nodeId !== undefined && found.nodeId !== undefined && found.nodeId !== nodeId) {
    return `it belongs to node ${JSON.stringify(found.nodeId)}, not ${JSON.stringify(nodeId)}: give every node its own store`;
  }
  return undefined;
}

/** After open: why `found` (the store's token now, or `undefined` when gone) is not `expected`. */
export function tokenProblem(found: string | undefined | null, expected: StoreIdentity): string | undefined {
  if (found === undefined || found === null) {
    return `its identity token (store ${expected.storeId}) is gone: the store was wiped or replaced underneath the adapter (a flushed or restarted-empty server, a truncated table, replaced files)`;
  }
  if (found !== encodeIdentity(expected)) {
    const other = decodeIdentity(found);
    return `its identity token changed from store ${expected.storeId} to ${other?.storeId ?? JSON.stringify(found.slice(0, 80))}: the adapter now reaches another store`;
  }
  return undefined;
}

/** A `StoreLostError` for the store at `where`. */
export function storeLost(where: string, why: string, cause?: unknown): StoreLostError {
  return new StoreLostError(
    `store ${where} is lost: ${why}. Its content cannot be trusted; clear it and rebuild from the relays`,
    cause === undefined ? undefined : { cause },
  );
}

/**
 * The `VerifyResult` of comparing `found` (content) with `recorded` (`undefined`: unrecorded).
 * `found.sum` is ignored for a quick check (only counts compared).
 */
export function verifyResult(
  identity: StoreIdentity,
  found: Digest,
  recorded: Digest | undefined,
  quick: boolean,
): VerifyResult {
  const base = {
    identity,
    keys: found.keys,
    expectedKeys: recorded?.keys,
    digest: quick ? undefined : digestHex(found),
    expectedDigest: quick || recorded === undefined ? undefined : digestHex(recorded),
    quick,
  };
  if (recorded === undefined) {
    return {
      ...base,
      status: 'unrecorded',
      ok: false,
      detail: `identity ok (store ${identity.storeId}); no content record to compare with (direct writes since the last clear, or a store adopted from an older format); ${found.keys} keys`,
    };
  }
  if (found.keys !== recorded.keys) {
    return {
      ...base,
      status: 'mismatch',
      ok: false,
      detail: `the store holds ${found.keys} keys, ${recorded.keys} were committed: data was lost or added underneath the adapter`,
    };
  }
  if (!quick && !sameDigest(found, recorded)) {
    return {
      ...base,
      status: 'mismatch',
      ok: false,
      detail: `the store holds the ${found.keys} keys committed, but their content digest ${digestHex(found)} is not the committed ${digestHex(recorded)}: values were changed underneath the adapter`,
    };
  }
  return {
    ...base,
    status: 'ok',
    ok: true,
    detail: quick
      ? `identity ok (store ${identity.storeId}), ${found.keys} keys as committed`
      : `identity ok (store ${identity.storeId}), ${found.keys} keys and their digest as committed`,
  };
}
