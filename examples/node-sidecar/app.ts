/**
 * A Node app that runs unchanged standalone or under `restartpoint sidecar`: under the sidecar,
 * `Restartpoint.start()` finds `RESTARTPOINT_SIDECAR_URL` in its environment and attaches to the
 * sidecar's local API (the sidecar holds the lease and replicates); standalone it joins NATS
 * itself. Its state holds a Map and a BigInt, which travel as node:v8 bytes.
 *
 * Prints JSON lines: `{"ev":"resumed",...}` once, `{"ev":"step",...}` per acknowledged checkpoint.
 * `STEPS=n` makes it exit 0 after n checkpoints (default: run until stopped).
 */
import { Restartpoint } from 'restartpoint';
import { memoryAdapter } from 'restartpoint/adapters/memory';

interface Counter {
  count: number;
  total: bigint;
  seen: Map<string, number>;
}

const rp = await Restartpoint.start<Counter>({
  app: process.env.RESTARTPOINT_APP ?? 'node-counter',
  nats: { servers: process.env.NATS_URL ?? 'nats://127.0.0.1:4222' },
  storage: memoryAdapter(),
  initialState: () => ({ count: 0, total: 0n, seen: new Map() }),
});
const say = (ev: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(ev)}\n`);
const s = rp.state;
const stored = s.count > 0 ? await rp.store.get(`k${s.count}`) : undefined;
say({
  ev: 'resumed',
  pid: process.pid,
  epoch: rp.epoch,
  resumedFrom: rp.resumedFrom?.checkpoint ?? 0,
  count: s.count,
  total: s.total.toString(),
  seen: s.seen.size,
  isMap: s.seen instanceof Map,
  lastStored: stored ? Buffer.from(stored).toString() : null,
  missingIsUndefined: (await rp.store.get('no-such-key')) === undefined,
});
rp.on('demoted', () => process.exit(3));
const steps = Number(process.env.STEPS ?? Infinity);
for (let i = 0; i < steps; i++) {
  s.count++;
  s.total += BigInt(s.count);
  s.seen.set(`k${s.count}`, s.count);
  await rp.store.put(`k${s.count}`, String(s.count));
  const ack = await rp.checkpoint(s);
  say({ ev: 'step', checkpoint: ack.checkpoint, count: s.count });
  await new Promise((r) => setTimeout(r, 20));
}
await rp.close();
