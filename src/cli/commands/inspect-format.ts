/**
 * The format half of `restartpoint inspect`: an `InspectReport` (inspect-read.ts) as the human
 * output: per relay, one row per frame, then the rejected messages, then the disagreements.
 */
import { formatTable } from './status-format.js';
import type { InspectFrame, InspectReport } from './inspect-read.js';

const indent = (s: string): string =>
  s
    .split('\n')
    .map((l) => (l ? `  ${l}` : l))
    .join('\n');

/** What a frame's record says, in one cell. */
function detail(f: InspectFrame): string {
  if (f.error) return `undecodable: ${f.error}`;
  if (f.fence) {
    return `node ${f.fence.nodeId}, cutoff ${f.fence.cutoffCheckpoint} (epoch ${f.fence.cutoffEpoch ?? '?'})`;
  }
  if (f.seal) {
    return `${f.seal.writeFrames} write frame${f.seal.writeFrames === 1 ? '' : 's'}, ${f.seal.writeOps} ops`;
  }
  if (f.image) {
    const i = f.image;
    return `${i.format}${i.format === 'delta' ? ` on ${i.base}` : ''}, v${i.stateVersion}, ${i.payloadBytes} bytes${i.codec === 'brotli' ? ` (brotli, ${i.rawBytes} raw)` : ''}`;
  }
  if (f.writes) return `${f.writes.ops} ops (${f.writes.puts} put, ${f.writes.deletes} delete)`;
  if (!f.complete) {
    return f.shards
      ? `shards ${f.shards.join(',')} only: not enough to rebuild`
      : `${f.streamSeqs.length} of ${f.parts} parts: not joined`;
  }
  return '';
}

/** The human output of `inspect`. */
export function formatInspect(r: InspectReport): string {
  let out = `app ${r.app}, stream ${r.stream}${r.signed ? ', signed' : ''}${r.fec ? ', FEC' : ''}\n`;
  for (const [i, x] of r.relays.entries()) {
    out += `\nrelay ${i}: ${x.servers}\n`;
    if (x.error) {
      out += `  ${x.error}\n`;
      continue;
    }
    const s = x.stream!;
    out += `  stream: ${s.messages} messages, ${s.bytes} bytes, seq ${s.firstSeq}..${s.lastSeq}\n`;
    out += `  read ${x.read} messages from seq ${x.from}${x.read ? ` to ${x.lastRead}` : ''}`;
    out += x.truncated
      ? ` (truncated at --limit ${r.limit}: ${s.lastSeq - x.lastRead} more; use --from ${x.lastRead + 1})\n`
      : '\n';
    const counts = Object.entries(x.counts)
      .map(([k, n]) => `${n} ${k}`)
      .join(', ');
    if (counts) out += `  ${counts}\n`;
    if (x.frames.length > 0) {
      out += indent(
        formatTable(
          ['seq', 'kind', 'epoch', 'frame', 'checkpoint', 'msgs', 'bytes', 'record'],
          x.frames.map((f) => [
            String(f.streamSeq),
            f.kind ?? '?',
            String(f.epoch),
            String(f.seq),
            f.checkpoint === null ? '-' : String(f.checkpoint),
            String(f.streamSeqs.length),
            String(f.bytes),
            detail(f),
          ]),
        ),
      );
    }
    if (x.rejected.length > 0) {
      out += `  rejected\n`;
      out += indent(
        indent(
          formatTable(
            ['seq', 'bytes', 'reason', 'why'],
            x.rejected.map((j) => [String(j.streamSeq), String(j.bytes), j.reason, j.message]),
          ),
        ),
      );
    }
  }
  out += '\ndisagreements\n';
  if (r.disagreements.length === 0) {
    out += '  none: every fence and seal read is on every relay whose read covered it\n';
  } else {
    for (const d of r.disagreements) {
      out += `  ${d.kind} ${d.epoch}/${d.seq} (checkpoint ${d.checkpoint}): on relay ${d.presentOn.join(', ')}, missing on relay ${d.missingOn.join(', ')}\n`;
    }
  }
  return out;
}
