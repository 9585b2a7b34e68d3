/**
 * The format half of `restartpoint status`: a `StatusReport` (status-read.ts) as the human
 * output, in aligned tables.
 */
import { PRESENCE_EXPIRE_MS } from '../../transport/presence.js';
import type { StatusNode, StatusReport } from './status-read.js';

/** Lays rows out in columns two spaces apart. */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: readonly string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].map((l) => `${l}\n`).join('');
}

const dash = (v: number | null | undefined, unit = ''): string =>
  v === null || v === undefined ? '-' : `${v}${unit}`;

/** A duration in ms as `0.4s`, `12s`, `3m05s`. */
function age(ms: number): string {
  if (ms < 10_000) return `${(ms / 1000).toFixed(1)}s`;
  if (ms < 60_000) return `${Math.round(ms / 1000)}s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
}

/** The human output of `status`. */
export function formatStatus(r: StatusReport): string {
  const leaderNode = r.nodes.find((n) => n.leader);
  const rows: [string, string][] = [
    ['app', r.app],
    [
      'leader',
      r.leader === null
        ? '(none: no primary holds the lease)'
        : leaderNode?.stale
          ? `${r.leader} (presence stale for ${age(leaderNode.ageMs)}: it may be dead; a standby takes over when the lease runs out)`
          : r.leader,
    ],
    ['epoch', String(r.epoch ?? '-')],
    [
      'last sealed checkpoint',
      r.lastSealed === null
        ? `-${r.lastSealedNote ? ` (${r.lastSealedNote})` : ''}`
        : `${r.lastSealed} (epoch ${r.lastSealedEpoch})`,
    ],
    ['stream', `${r.streamMessages} messages, ${r.streamBytes} bytes, last seq ${r.streamLastSeq}`],
    [
      'switchover',
      r.switchover
        ? `requested ${new Date(r.switchover.requestedAt).toISOString()}: ${r.switchover.from} (epoch ${r.switchover.epoch}) to hand over`
        : 'none pending',
    ],
  ];
  let out = rows.map(([k, v]) => `${k.padEnd(24)}${v}\n`).join('');
  if (r.settingProblems && r.settingProblems.length > 0) {
    out +=
      '\nsettings that break guarantees (nodes refuse to start; delete and let restartpoint create them, or fix):\n';
    out += r.settingProblems.map((p) => `  ${p}\n`).join('');
  }

  out += '\nnodes\n';
  if (r.nodes.length === 0) {
    out += '  (no presence records: no node is running, or the nodes are older than presence)\n';
  } else {
    out += formatTable(
      ['node', 'role', 'epoch', 'checkpoint', 'lag', 'age', 'host', 'pid'],
      r.nodes.map((n) => [
        `${n.nodeId}${n.leader ? ' *' : ''}`,
        n.stale ? `${n.role} (stale)` : n.role,
        String(n.epoch),
        String(n.checkpoint),
        dash(n.lagCheckpoints),
        age(n.ageMs),
        n.host || '-',
        dash(n.pid),
      ]),
    )
      .split('\n')
      .map((l) => (l ? `  ${l}` : l))
      .join('\n');
  }
  if (r.expiredNodes) {
    out += `  (${r.expiredNodes} presence record${r.expiredNodes === 1 ? '' : 's'} older than ${PRESENCE_EXPIRE_MS / 60_000} minutes left out: nodes gone without a clean close)\n`;
  }
  out += formatVersions(r.nodes);

  const lags = r.nodes.flatMap((n) => n.relays.map((x) => ({ node: n.nodeId, ...x })));
  if (lags.length > 0) {
    out += '\nstandby lag per relay\n';
    out += formatTable(
      ['node', 'relay', 'connected', 'frames', 'bytes', 'seconds', 'checkpoints'],
      lags.map((x) => [
        x.node,
        x.servers,
        x.connected ? 'yes' : 'no',
        dash(x.frames),
        dash(x.bytes),
        dash(x.seconds),
        dash(x.checkpoints),
      ]),
    )
      .split('\n')
      .map((l) => (l ? `  ${l}` : l))
      .join('\n');
  }

  if (r.relays && r.relays.length > 0) {
    out += `\nrelays (${r.relaysFrom === 'presence' ? 'named in presence records' : 'from --relay'})\n`;
    out += formatTable(
      ['servers', 'reachable', 'messages', 'last seq', 'lag'],
      r.relays.map((x) => [
        x.servers,
        x.reachable ? 'yes' : 'no',
        x.reachable ? String(x.messages) : '-',
        x.reachable ? String(x.lastSeq) : '-',
        (x.reachable ? `${x.lagMessages} behind` : 'unreachable') +
          // The leader's view, from its presence record (when it reports one).
          (x.backfilling ? ', backfilling' : '') +
          (x.leaderConnected === false ? ', leader not connected' : ''),
      ]),
    )
      .split('\n')
      .map((l) => (l ? `  ${l}` : l))
      .join('\n');
  }
  return out;
}

/**
 * The versions of each node (issue 17, docs/upgrades.md): its app `stateVersion`, its wire
 * version and whether it can resume, then a line per node that cannot and one for a version skew.
 * Empty when no node reports versions (nodes older than upgrades).
 */
export function formatVersions(nodes: readonly StatusNode[]): string {
  const known = nodes.filter(
    (n) => n.stateVersion !== null || n.protocolVersion !== null || n.canResume !== null,
  );
  if (known.length === 0) return '';
  let out = '\nversions\n';
  out += formatTable(
    ['node', 'stateVersion', 'wire', 'can resume'],
    known.map((n) => [
      `${n.nodeId}${n.leader ? ' *' : ''}`,
      n.stateVersion === null ? '-' : String(n.stateVersion),
      n.protocolVersion === null ? '-' : String(n.protocolVersion),
      n.canResume === null ? '-' : n.canResume ? 'yes' : 'NO',
    ]),
  )
    .split('\n')
    .map((l) => (l ? `  ${l}` : l))
    .join('\n');
  const live = known.filter((n) => !n.stale);
  for (const n of live.filter((x) => x.canResume === false)) {
    out += `  ${n.nodeId} cannot resume and will not take over: ${n.cannotResume ?? 'no reason given'}\n`;
  }
  const states = [...new Set(live.flatMap((n) => (n.stateVersion === null ? [] : [n.stateVersion])))];
  const wires = [...new Set(live.flatMap((n) => (n.protocolVersion === null ? [] : [n.protocolVersion])))];
  if (states.length > 1 || wires.length > 1) {
    out += `  version skew: stateVersion ${states.sort().join(' and ')}, wire version ${wires.sort().join(' and ')} among live nodes (an upgrade in progress; docs/upgrades.md)\n`;
  }
  return out;
}
