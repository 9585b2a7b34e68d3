/**
 * The drill's HTML report (`restartpoint drill --report FILE`): one self-contained page, with no
 * external URL, script or font. Inline CSS, and an SVG drawn here in TypeScript:
 *
 * - a timeline (x = seconds since the drill started): acknowledged checkpoints as a line, one
 *   marker per fault (kill, pause, partition) and one per takeover, relay kills and restarts;
 * - under it, the standby's lag (ms from a checkpoint's ack to a standby applying it);
 * - the RTO/RPO table, one row per takeover, and the medians;
 * - the verdict, violations and the options of the run.
 *
 * A pure function of the report: unit-testable, and the same report gives the same page.
 */
import type { DrillMedians, DrillReport, DrillTimeline, TakeoverReport } from './types.js';

/** What {@link renderReport} needs: a drill report, possibly of `--scenario all` (with `runs`). */
export type ReportInput = DrillReport & { runs?: DrillReport[] };

/** Options shown in the report's header (the command line as run). */
export interface RenderOptions {
  /** The command line, shown verbatim. */
  command?: string;
  /** When the report was made (ISO); default: the first run's start. */
  generatedAt?: string;
}

const W = 960;
const PAD_L = 56;
const PAD_R = 16;
const TOP_H = 220;
const LAG_H = 110;
const GAP = 34;

/** HTML-escapes text. */
export function esc(s: unknown): string {
  return String(s)
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

/** The timelines of a report: its own, or those of its runs (`--scenario all`). */
function timelines(r: ReportInput): { scenario: string; tl: DrillTimeline }[] {
  const runs = r.runs ?? [r];
  return runs.flatMap((x) => (x.timeline ? [{ scenario: x.scenario, tl: x.timeline }] : []));
}

/** The takeovers with their scenario (set on every row, also for a single run). */
function takeovers(r: ReportInput): (TakeoverReport & { scenario: string })[] {
  return r.takeovers.map((t) => ({ ...t, scenario: t.scenario ?? r.scenario }));
}

function fmt(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

/** A "nice" tick step for a range. */
function tickStep(range: number, count: number): number {
  const raw = range / Math.max(1, count);
  const p = 10 ** Math.floor(Math.log10(raw || 1));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

/** The timeline SVG (inline). */
export function timelineSvg(r: ReportInput): string {
  const tls = timelines(r);
  const t0 = Math.min(...tls.map((x) => x.tl.startedAt), Number.POSITIVE_INFINITY);
  const t1 = Math.max(...tls.map((x) => x.tl.endedAt), t0 + 1);
  const H = TOP_H + GAP + LAG_H + 40;
  if (tls.length === 0 || !Number.isFinite(t0)) {
    return `<svg id="timeline" width="${W}" height="60" viewBox="0 0 ${W} 60"><text x="${PAD_L}" y="34" class="muted">no timeline in this report</text></svg>`;
  }
  const plotW = W - PAD_L - PAD_R;
  const x = (t: number): number => PAD_L + ((t - t0) / (t1 - t0)) * plotW;
  const acks = tls.flatMap((s) => s.tl.acks);
  const maxCp = Math.max(1, ...acks.map((a) => a.checkpoint));
  const yCp = (c: number): number => 10 + TOP_H - (c / maxCp) * TOP_H;
  const lag = tls.flatMap((s) => s.tl.lag);
  const maxLag = Math.max(1, ...lag.map((l) => l.lagMs));
  const lagTop = 10 + TOP_H + GAP;
  const yLag = (ms: number): number => lagTop + LAG_H - (ms / maxLag) * LAG_H;
  const out: string[] = [];
  out.push(
    `<svg id="timeline" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="drill timeline">`,
  );
  // Axes and grid.
  const secs = (t1 - t0) / 1000;
  const step = tickStep(secs, 10);
  for (let s = 0; s <= secs + 1e-9; s += step) {
    const xx = x(t0 + s * 1000).toFixed(1);
    out.push(
      `<line class="grid" x1="${xx}" x2="${xx}" y1="10" y2="${lagTop + LAG_H}"/>`,
      `<text class="tick" x="${xx}" y="${lagTop + LAG_H + 14}" text-anchor="middle">${fmt(Math.round(s * 10) / 10)} s</text>`,
    );
  }
  out.push(
    `<rect class="frame" x="${PAD_L}" y="10" width="${plotW}" height="${TOP_H}"/>`,
    `<rect class="frame" x="${PAD_L}" y="${lagTop}" width="${plotW}" height="${LAG_H}"/>`,
    `<text class="axis" x="${PAD_L - 6}" y="18" text-anchor="end">${maxCp}</text>`,
    `<text class="axis" x="${PAD_L - 6}" y="${10 + TOP_H}" text-anchor="end">0</text>`,
    `<text class="label" x="${PAD_L + 4}" y="24">acknowledged checkpoint</text>`,
    `<text class="axis" x="${PAD_L - 6}" y="${lagTop + 8}" text-anchor="end">${Math.round(maxLag)}</text>`,
    `<text class="axis" x="${PAD_L - 6}" y="${lagTop + LAG_H}" text-anchor="end">0</text>`,
    `<text class="label" x="${PAD_L + 4}" y="${lagTop + 14}">standby lag (ms from ack to applied)</text>`,
  );
  // Run boundaries with `all`.
  if (tls.length > 1) {
    for (const s of tls) {
      const xx = x(s.tl.startedAt).toFixed(1);
      out.push(
        `<line class="run" x1="${xx}" x2="${xx}" y1="10" y2="${lagTop + LAG_H}"/>`,
        `<text class="runlabel" x="${(Number(xx) + 3).toFixed(1)}" y="${10 + TOP_H - 4}">${esc(s.scenario)}</text>`,
      );
    }
  }
  // Acknowledged checkpoints, one polyline per run and node stretch.
  for (const s of tls) {
    const pts = s.tl.acks.map((a) => `${x(a.t).toFixed(1)},${yCp(a.checkpoint).toFixed(1)}`);
    if (pts.length > 0)
      out.push(`<polyline class="acks" data-points="${s.tl.acks.length}" points="${pts.join(' ')}"/>`);
  }
  // Lag samples.
  for (const s of tls) {
    for (const l of s.tl.lag) {
      out.push(
        `<circle class="lag" cx="${x(l.t).toFixed(1)}" cy="${yLag(l.lagMs).toFixed(1)}" r="2"><title>node ${esc(l.node)}: checkpoint ${l.checkpoint} applied ${l.lagMs} ms after its ack</title></circle>`,
      );
    }
  }
  // Relays.
  for (const s of tls) {
    for (const e of s.tl.relays) {
      const xx = x(e.t).toFixed(1);
      out.push(
        `<path class="${e.kind}" d="M${xx},${10 + TOP_H} l-4,8 h8 z"><title>relay ${e.relay} ${e.kind === 'relay-kill' ? 'SIGKILLed' : 'restarted'}</title></path>`,
      );
    }
  }
  // Faults and takeovers: one marker each.
  for (const s of tls) {
    for (const f of s.tl.faults) {
      const xx = x(f.t).toFixed(1);
      out.push(
        `<g class="kill-marker" data-kill="${f.kill}" data-scenario="${esc(s.scenario)}"><line x1="${xx}" x2="${xx}" y1="10" y2="${lagTop + LAG_H}"/><circle cx="${xx}" cy="16" r="5"/><title>${esc(s.scenario)} ${f.kill}: node ${esc(f.node)} ${f.kind === 'kill' ? 'SIGKILLed' : f.kind === 'pause' ? 'SIGSTOPped' : 'partitioned'} at ${fmt((f.t - t0) / 1000)} s</title></g>`,
      );
    }
    for (const k of s.tl.takeovers) {
      const xx = x(k.t).toFixed(1);
      const xs = x(k.servingAt).toFixed(1);
      out.push(
        `<g class="takeover-marker" data-kill="${k.kill}" data-scenario="${esc(s.scenario)}"><line x1="${xx}" x2="${xx}" y1="10" y2="${lagTop + LAG_H}"/><rect x="${(Number(xx) - 5).toFixed(1)}" y="26" width="10" height="10"/><line class="serving" x1="${xx}" x2="${xs}" y1="31" y2="31"/><title>${esc(s.scenario)} ${k.kill}: node ${esc(k.node)} resumed at ${fmt((k.t - t0) / 1000)} s, serving at ${fmt((k.servingAt - t0) / 1000)} s</title></g>`,
      );
    }
  }
  out.push('</svg>');
  return out.join('\n');
}

const COLUMNS: [string, (t: TakeoverReport & { scenario: string }) => string][] = [
  ['scenario', (t) => t.scenario],
  ['kill', (t) => String(t.kill)],
  ['point', (t) => t.point],
  ['killed → new', (t) => `${t.killed} → ${t.newPrimary}`],
  ['detect ms', (t) => String(t.detectMs)],
  ['rollback ms', (t) => String(t.rollbackMs)],
  ['restore ms', (t) => String(t.restoreMs)],
  ['resume ms', (t) => String(t.resumeMs)],
  ['kill → serving ms', (t) => String(t.killToServingMs)],
  ['acked / resumed', (t) => `${t.lastAcked} / ${t.resumed}`],
  ['checkpoints lost', (t) => String(t.checkpointsLost)],
  ['writes discarded', (t) => String(t.writesDiscarded)],
  ['store / image', (t) => `${t.storeMatches ? 'ok' : 'MISMATCH'} / ${t.imageMatches ? 'ok' : 'MISMATCH'}`],
  [
    'fenced',
    (t) =>
      t.zombie
        ? t.zombie.demoted && t.zombie.refused && t.zombie.probeRefused && t.zombie.acksAfterTakeover === 0
          ? 'yes'
          : 'NO'
        : '–',
  ],
];

function rtoTable(r: ReportInput): string {
  const rows = takeovers(r).map(
    (t) =>
      `<tr class="${t.checkpointsLost > 0 || !t.storeMatches || !t.imageMatches ? 'bad' : ''}">${COLUMNS.map(([, f]) => `<td>${esc(f(t))}</td>`).join('')}</tr>`,
  );
  return `<table id="rto"><thead><tr>${COLUMNS.map(([h]) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>\n${rows.join('\n')}\n</tbody></table>`;
}

function mediansTable(m: DrillMedians): string {
  const cells: [string, number][] = [
    ['detect', m.detectMs],
    ['rollback', m.rollbackMs],
    ['restore', m.restoreMs],
    ['resume', m.resumeMs],
    ['rollback + restore + resume', m.rollbackRestoreResumeMs],
    ['takeover (fault → start() resolved)', m.takeoverMs],
    ['kill → serving', m.killToServingMs],
  ];
  return `<table id="medians"><tbody>${cells.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(fmt(v))} ms</td></tr>`).join('')}</tbody></table>`;
}

const CSS = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1b1f24;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;font-weight:600;color:#fff}
.pass{background:#1a7f37}.fail{background:#cf222e}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:right}th{background:#f6f8fa}
td:first-child,th:first-child{text-align:left}
tr.bad td{background:#ffebe9}
.muted{color:#57606a;fill:#57606a}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}dt{color:#57606a}dd{margin:0}
code{font-family:ui-monospace,monospace;font-size:13px}
svg{display:block;max-width:100%;height:auto}
svg .frame{fill:none;stroke:#d0d7de}svg .grid{stroke:#eaeef2}
svg .tick,svg .axis{font-size:11px;fill:#57606a}svg .label{font-size:12px;fill:#57606a}
svg .acks{fill:none;stroke:#0969da;stroke-width:1.5}
svg .lag{fill:#8250df}
svg .kill-marker line{stroke:#cf222e;stroke-dasharray:4 3}svg .kill-marker circle{fill:#cf222e}
svg .takeover-marker line{stroke:#1a7f37}svg .takeover-marker rect{fill:#1a7f37}
svg .takeover-marker line.serving{stroke:#1a7f37;stroke-width:3}
svg .relay-kill{fill:#bc4c00}svg .relay-start{fill:#57606a}
svg .run{stroke:#57606a;stroke-dasharray:2 2}svg .runlabel{font-size:11px;fill:#57606a}
.legend span{margin-right:14px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
`;

/** Renders the report as one self-contained HTML page. */
export function renderReport(report: ReportInput, opts: RenderOptions = {}): string {
  const tls = timelines(report);
  const started = opts.generatedAt ?? (tls[0] ? new Date(tls[0].tl.startedAt).toISOString() : '');
  const options: [string, string][] = [
    ['scenario', report.scenario],
    ['kills', String(report.kills)],
    ['store', report.store],
    ['mode', report.mode],
    ['lease TTL', `${report.leaseTtlMs} ms`],
    ['state', `${report.stateMb} MB ballast`],
    ['step pause', `${report.stepMs ?? 0} ms`],
    ['seed', String(report.seed)],
    ['relays killed', String(report.relaysKilled)],
    ['rejected', `${report.rejected.forged} forged, ${report.rejected.corrupt} corrupt`],
    ['duration', `${fmt(report.durationMs / 1000)} s`],
    ...(opts.command ? ([['command', opts.command]] as [string, string][]) : []),
    ...(started ? ([['started', started]] as [string, string][]) : []),
  ];
  const violations =
    report.violations.length === 0
      ? '<p>No violations.</p>'
      : `<ul id="violations">${report.violations.map((v) => `<li>${esc(v)}</li>`).join('')}</ul>`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>restartpoint drill: ${report.ok ? 'PASS' : 'FAIL'} (${esc(report.scenario)}, seed ${report.seed})</title>
<style>${CSS}</style></head>
<body>
<h1>restartpoint drill <span id="verdict" class="verdict ${report.ok ? 'pass' : 'fail'}">${report.ok ? 'PASS' : 'FAIL'}</span></h1>
<p class="muted">${esc(report.takeovers.length)} takeover(s) of ${esc(report.kills)} kill(s); every takeover checked against what the deposed primary was told was durable.</p>
<h2>Timeline</h2>
<p class="legend muted"><span><i style="background:#0969da"></i>acknowledged checkpoint</span><span><i style="background:#cf222e"></i>fault (kill, pause, partition)</span><span><i style="background:#1a7f37"></i>takeover, bar to first acknowledged checkpoint</span><span><i style="background:#8250df"></i>standby lag</span><span><i style="background:#bc4c00"></i>relay killed</span></p>
${timelineSvg(report)}
<h2>RTO and RPO per takeover</h2>
${rtoTable(report)}
<h2>Medians</h2>
${mediansTable(report.medians)}
<h2>Verdict</h2>
${violations}
<h2>Options</h2>
<dl id="options">${options.map(([k, v]) => `<dt>${esc(k)}</dt><dd><code>${esc(v)}</code></dd>`).join('')}</dl>
<p class="muted">How to read these figures: docs/drill.md.</p>
</body></html>
`;
}
