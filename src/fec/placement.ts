/**
 * Where shards go and when a part is durable: the arithmetic of docs/fec.md, in code.
 *
 * A part is coded into n = k + m shards (copies: k = 1, n copies) and shard i is published to
 * relay i mod N. Relay r then holds ⌈(n − r) / N⌉ shards: the first n mod N relays hold
 * ⌈n/N⌉, the others ⌊n/N⌋. Losing any f relays loses at most the f fullest ones' shards,
 *
 * ```text
 * L(f) = f·⌊n/N⌋ + min(f, n mod N)          (f ≤ N; L(f) = f when N ≥ n)
 * ```
 *
 * so a part survives the loss of any f relays when it had k + L(f) shards stored, and every
 * part survives it when L(f) ≤ m.
 */

/** The relay (0-based) that carries shard `index` of a part, over `relays` relays. */
export function relayOfShard(index: number, relays: number): number {
  return index % relays;
}

/** How many shards of one part each relay holds, by relay, for `shards` shards over `relays`. */
export function shardsPerRelay(shards: number, relays: number): number[] {
  return Array.from({ length: relays }, (_, r) => Math.max(0, Math.ceil((shards - r) / relays)));
}

/** L(f): the most shards of one part that the loss of any `lost` of `relays` relays takes away. */
export function maxShardsLost(shards: number, relays: number, lost: number): number {
  const f = Math.min(Math.max(0, lost), relays);
  return f * Math.floor(shards / relays) + Math.min(f, shards % relays);
}

/**
 * The most relays that can be lost, any of them, with every part still rebuildable from the
 * shards on the others, once all k + m shards are stored: the largest f with L(f) ≤ m.
 */
export function relayLossTolerance(data: number, parity: number, relays: number): number {
  let f = 0;
  while (f < relays && maxShardsLost(data + parity, relays, f + 1) <= parity) f++;
  return f;
}

/**
 * How many acked shards, whichever they are, make a part survive the loss of any `lost`
 * relays: k + L(f). It is k + f when there are at least k + m relays. `Infinity` when no number
 * of acks can (L(f) > m): the configuration cannot survive that many relay losses.
 */
export function ackedShardsNeeded(data: number, parity: number, relays: number, lost: number): number {
  const needed = data + maxShardsLost(data + parity, relays, lost);
  return needed > data + parity ? Infinity : needed;
}

/**
 * Whether the acked shards (by index) of a part survive the loss of any `lost` relays: those
 * acked minus the acked ones on the `lost` relays holding the most of them is still ≥ k. This is
 * exact for the given set, so it can say yes before `ackedShardsNeeded` shards are in.
 */
export function survivesRelayLoss(
  acked: Iterable<number>,
  data: number,
  relays: number,
  lost: number,
): boolean {
  const perRelay = new Array<number>(relays).fill(0);
  const seen = new Set<number>();
  for (const i of acked) {
    if (seen.has(i)) continue;
    seen.add(i);
    perRelay[relayOfShard(i, relays)]!++;
  }
  perRelay.sort((a, b) => b - a);
  let gone = 0;
  for (let r = 0; r < Math.min(lost, relays); r++) gone += perRelay[r]!;
  return seen.size - gone >= data;
}
