/**
 * fec.*: Reed-Solomon throughput of the shard codec, next to `Buffer.copy` of the same bytes in
 * the same run, for 4+2 and 10+4 at 64 KiB, 1 MiB and 16 MiB parts. No server is involved.
 *
 * - `memcpy`: `Buffer.copy` of the part into a preallocated buffer.
 * - `codec_encode`: the parity computation alone (`ReedSolomon.encode` over the part's stripes,
 *   the way `encodeShards` calls it).
 * - `encode`: wire-ready shards (headers, payload copies, parity, CRC-32) as the publisher makes
 *   them: `encodeShardsPooled` into a reused buffer, released after each encode.
 * - `encode_fresh`: `encodeShards`, the same bytes into a new buffer each time.
 * - `rebuild`: `ShardAssembler.add` of k shard messages (decode with CRC check, then rebuild)
 *   with the first m data shards missing, so every rebuild runs the parity math; with a pool,
 *   the part released after each rebuild.
 *
 * - `encode` and `rebuild` use the backend in use (`isal`, the addon of native/, unless it did
 *   not load); `encode_ronomon` / `rebuild_ronomon` the same calls on `@ronomon/reed-solomon`
 *   (the fallback), alternated with them in the same rounds (an in-process A/B).
 * - `encode_call_sync` / `encode_call_sync_ronomon`: the median time one `encodeShardsPooled`
 *   call runs on this thread before it returns its promise (the ISA-L backend's whole share of
 *   the JS thread but a few header CRCs after it; the fallback checksums and copies the data
 *   shards there, and its parity rows' CRCs later).
 *
 * Rates are part bytes per second (MB = 10^6 bytes), medians of `--repeat` runs.
 * Ratios: `fec.4p2.encode_over_memcpy` and `fec.4p2.rebuild_over_memcpy` at 16 MiB (goals:
 * ≥ 0.25 each, issue 16), and the same for the fallback (`..._ronomon_over_memcpy`).
 */
import { ShardAssembler } from '../src/fec/assembler.js';
import { ReedSolomon } from '../src/fec/reed-solomon.js';
import { crc32Implementation } from '../src/fec/crc.js';
import { fecBackend, isal, useFecBackend, type FecBackend } from '../src/fec/isal.js';
import { BufferPool } from '../src/fec/pool.js';
import { encodeShards, encodeShardsPooled, stripeLayout } from '../src/fec/shard.js';
import { median, type BenchRow, type Suite } from './harness.js';

const SCHEMES = [
  { tag: '4p2', data: 4, parity: 2 },
  { tag: '10p4', data: 10, parity: 4 },
] as const;
const SIZES = [
  { tag: '64KiB', bytes: 64 * 1024 },
  { tag: '1MiB', bytes: 1 << 20 },
  { tag: '16MiB', bytes: 16 << 20 },
] as const;
/** Each measurement runs its operation for at least this long. */
const MIN_MS = 150;
const APP = 'bench';

/**
 * Runs `op` (after one warm-up call) until `MIN_MS` passed; returns bytes per second in MB/s.
 * With `cpu`, also pushes the process's CPU time (user + system, every thread: the threadpool's
 * work counts) per call, in ms: the work an operation costs, which a loaded host inflates far
 * less than the wall-clock rate.
 */
async function rate(bytes: number, op: () => unknown, cpu?: number[]): Promise<number> {
  await op();
  let n = 0;
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  let dt = 0;
  do {
    await op();
    n++;
    dt = performance.now() - t0;
  } while (dt < MIN_MS);
  if (cpu) {
    const c = process.cpuUsage(c0);
    cpu.push((c.user + c.system) / 1000 / n);
  }
  return (bytes * n) / (dt * 1000);
}

/** The median time `op` runs synchronously (until it returns its promise), over 15 calls. */
async function syncPart(op: () => Promise<unknown>): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < 15; i++) {
    const t0 = performance.now();
    const running = op();
    times.push(performance.now() - t0);
    await running;
  }
  return median(times);
}

function pattern(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = 0x9e3779b9;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

export const fecSuite: Suite = {
  prefix: 'fec',
  description: 'Reed-Solomon encode / rebuild throughput vs Buffer.copy (no server)',
  async run(ctx) {
    const rows: BenchRow[] = [];
    const ratios: Record<string, number> = {};
    const backend: FecBackend = fecBackend();
    const viaIsal = isal ? `ISA-L addon, ${isal.xor} XOR, ${isal.crc} CRC-32` : 'ronomon';
    for (const scheme of SCHEMES.filter((s) => ctx.wants(`fec.${s.tag}`))) {
      const { data: k, parity: m } = scheme;
      const codec = new ReedSolomon(k, m);
      for (const size of SIZES) {
        const name = `fec.${scheme.tag}.${size.tag}`;
        ctx.progress(`  ${name}: memcpy, codec, encode, rebuild x ${ctx.repeat}`);
        const part = pattern(size.bytes);
        const copy = Buffer.allocUnsafe(size.bytes);
        const id = { epoch: 1, seq: 1, part: 0 };
        const shards = await encodeShards(APP, id, part, scheme);
        // The first m data shards are lost: k shards remain, m of them parity.
        const survivors = shards.slice(m);
        const check = new ShardAssembler({ app: APP });
        let rebuilt: Uint8Array | undefined;
        for (const s of survivors) rebuilt = (await check.add(s)) ?? rebuilt;
        if (!rebuilt || Buffer.compare(rebuilt, part) !== 0) throw new Error(`${name}: rebuild mismatch`);

        // The codec alone, on the stripe layout encodeShards uses.
        const { stripes, stripe } = stripeLayout(size.bytes, k);
        const padded = Buffer.alloc(stripes * k * stripe);
        part.copy(padded);
        const parity = Buffer.allocUnsafe(stripes * m * stripe);
        const at = (j: number) => ({
          data: padded,
          dataOffset: j * k * stripe,
          parity,
          parityOffset: j * m * stripe,
          shardSize: stripe,
        });
        const everyStripe = (op: (j: number) => Promise<void>) =>
          Promise.all(Array.from({ length: stripes }, (_, j) => op(j)));
        const lost = (1 << m) - 1;
        const present = ((1 << (k + m)) - 1) & ~lost;

        const pool = new BufferPool();
        const runs: Record<
          | 'memcpy'
          | 'codecEncode'
          | 'codecRebuild'
          | 'encode'
          | 'encodeFresh'
          | 'rebuild'
          | 'memcpyCpu'
          | 'encodeCpu'
          | 'rebuildCpu'
          | 'encodeRonomon'
          | 'rebuildRonomon'
          | 'encodeCpuRonomon'
          | 'rebuildCpuRonomon'
          | 'callSync'
          | 'callSyncRonomon',
          number[]
        > = {
          callSync: [],
          callSyncRonomon: [],
          encodeRonomon: [],
          rebuildRonomon: [],
          encodeCpuRonomon: [],
          rebuildCpuRonomon: [],
          memcpyCpu: [],
          encodeCpu: [],
          rebuildCpu: [],
          memcpy: [],
          encodeFresh: [],
          codecEncode: [],
          codecRebuild: [],
          encode: [],
          rebuild: [],
        };
        for (let r = 0; r < ctx.repeat; r++) {
          runs.memcpy.push(await rate(size.bytes, () => part.copy(copy), runs.memcpyCpu));
          runs.codecEncode.push(await rate(size.bytes, () => everyStripe((j) => codec.encode(at(j)))));
          runs.codecRebuild.push(
            await rate(size.bytes, () => everyStripe((j) => codec.reconstruct(present, lost, at(j)))),
          );
          // The publisher's path: shards in a pooled buffer, released once "acked" (here at once).
          const encodeOp = async () => (await encodeShardsPooled(APP, id, part, scheme, pool)).release();
          // The standby's path with a pool: the rebuilt part is handed back once used.
          const rebuildOp = async () => {
            const asm = new ShardAssembler({ app: APP, pool });
            for (const s of survivors) {
              const part = await asm.add(s);
              if (part) asm.releasePart(part);
            }
          };
          runs.encode.push(await rate(size.bytes, encodeOp, runs.encodeCpu));
          runs.callSync.push(await syncPart(encodeOp));
          runs.encodeFresh.push(await rate(size.bytes, () => encodeShards(APP, id, part, scheme)));
          runs.rebuild.push(await rate(size.bytes, rebuildOp, runs.rebuildCpu));
          if (backend === 'isal') {
            // The fallback, alternated with the default in every round.
            useFecBackend('ronomon');
            try {
              runs.encodeRonomon.push(await rate(size.bytes, encodeOp, runs.encodeCpuRonomon));
              runs.callSyncRonomon.push(await syncPart(encodeOp));
              runs.rebuildRonomon.push(await rate(size.bytes, rebuildOp, runs.rebuildCpuRonomon));
            } finally {
              useFecBackend('isal');
            }
          }
        }
        const memcpy = median(runs.memcpy);
        const codecEncode = median(runs.codecEncode);
        const encode = median(runs.encode);
        const rebuild = median(runs.rebuild);
        rows.push(
          { name: `${name}.memcpy`, value: memcpy, unit: 'MB/s', note: 'Buffer.copy' },
          { name: `${name}.codec_encode`, value: codecEncode, unit: 'MB/s', note: 'parity math only' },
          {
            name: `${name}.codec_rebuild`,
            value: median(runs.codecRebuild),
            unit: 'MB/s',
            note: `parity math only, ${m} data shards`,
          },
          {
            name: `${name}.encode`,
            value: encode,
            unit: 'MB/s',
            note: `encodeShardsPooled: wire-ready shards, pooled buffers, ${backend === 'isal' ? viaIsal : `ronomon, CRC-32 ${crc32Implementation}`}`,
          },
          {
            name: `${name}.encode_fresh`,
            value: median(runs.encodeFresh),
            unit: 'MB/s',
            note: 'encodeShards: wire-ready shards in a new buffer',
          },
          {
            name: `${name}.rebuild`,
            value: rebuild,
            unit: 'MB/s',
            note: `ShardAssembler: ${k} of ${k + m} messages, ${m} data lost, ${backend}`,
          },
          {
            name: `${name}.encode_call_sync`,
            value: median(runs.callSync),
            unit: 'ms',
            note: 'JS thread: one call until it returns its promise (median)',
          },
          {
            name: `${name}.memcpy_cpu`,
            value: median(runs.memcpyCpu),
            unit: 'ms',
            note: 'CPU time per copy',
          },
          {
            name: `${name}.encode_cpu`,
            value: median(runs.encodeCpu),
            unit: 'ms',
            note: 'CPU time per encode, all threads',
          },
          {
            name: `${name}.rebuild_cpu`,
            value: median(runs.rebuildCpu),
            unit: 'ms',
            note: 'CPU time per rebuild, all threads',
          },
          { name: `${name}.encode_over_memcpy`, value: encode / memcpy, unit: 'x' },
          { name: `${name}.rebuild_over_memcpy`, value: rebuild / memcpy, unit: 'x' },
        );
        const encodeRonomon = median(runs.encodeRonomon);
        const rebuildRonomon = median(runs.rebuildRonomon);
        if (backend === 'isal') {
          rows.push(
            {
              name: `${name}.encode_ronomon`,
              value: encodeRonomon,
              unit: 'MB/s',
              note: 'the fallback, same rounds',
            },
            {
              name: `${name}.rebuild_ronomon`,
              value: rebuildRonomon,
              unit: 'MB/s',
              note: 'the fallback, same rounds',
            },
            {
              name: `${name}.encode_cpu_ronomon`,
              value: median(runs.encodeCpuRonomon),
              unit: 'ms',
              note: 'CPU time per encode, all threads',
            },
            {
              name: `${name}.rebuild_cpu_ronomon`,
              value: median(runs.rebuildCpuRonomon),
              unit: 'ms',
              note: 'CPU time per rebuild, all threads',
            },
            {
              name: `${name}.encode_call_sync_ronomon`,
              value: median(runs.callSyncRonomon),
              unit: 'ms',
              note: 'JS thread: one call until it returns its promise (median)',
            },
            { name: `${name}.encode_ronomon_over_memcpy`, value: encodeRonomon / memcpy, unit: 'x' },
            { name: `${name}.rebuild_ronomon_over_memcpy`, value: rebuildRonomon / memcpy, unit: 'x' },
          );
        }
        if (scheme.tag === '4p2' && size.tag === '16MiB') {
          ratios['fec.4p2.encode_over_memcpy'] = encode / memcpy;
          ratios['fec.4p2.rebuild_over_memcpy'] = rebuild / memcpy;
          ratios['fec.4p2.codec_encode_over_memcpy'] = codecEncode / memcpy;
          if (backend === 'isal') {
            ratios['fec.4p2.encode_ronomon_over_memcpy'] = encodeRonomon / memcpy;
            ratios['fec.4p2.rebuild_ronomon_over_memcpy'] = rebuildRonomon / memcpy;
          }
        }
      }
    }
    return { rows, ratios };
  },
};
