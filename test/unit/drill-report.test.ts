import { describe, expect, it } from 'vitest';
import { drillMedians, reportJson, type DrillReport, type TakeoverReport } from '../../src/drill/drill.js';
import { renderReport } from '../../src/drill/report.js';

const T0 = 1_800_000_000_000;

function takeover(kill: number, extra: Partial<TakeoverReport> = {}): TakeoverReport {
  return {
    kill,
    point: 'between-writes',
    killed: kill % 2 ? 'a' : 'b',
    newPrimary: kill % 2 ? 'b' : 'a',
    takeoverMs: 1000 + kill,
    lastAcked: 10 * kill,
    resumed: 10 * kill,
    epoch: kill + 1,
    storeMatches: true,
    imageMatches: true,
    detectMs: 900 + kill,
    catchUpMs: 3,
    fenceMs: 2,
    rollbackMs: kill,
    restoreMs: 10 * kill,
    resumeMs: 20 * kill,
    killToServingMs: 1100 + kill,
    checkpointsLost: 0,
    writesDiscarded: kill,
    ...extra,
  };
}

function report(kills: number, over: Partial<DrillReport> = {}): DrillReport {
  const takeovers = Array.from({ length: kills }, (_, i) => takeover(i + 1));
  return {
    ok: true,
    kills,
    seed: 7,
    store: 'memory',
    mode: 'delay-write',
    scenario: 'kill',
    relaysKilled: 0,
    takeovers,
    rejected: { forged: 0, corrupt: 0 },
    violations: [],
    leaseTtlMs: 1000,
    stateMb: 0,
    stepMs: 0,
    medians: drillMedians(takeovers),
    durationMs: 9000,
    timeline: {
      startedAt: T0,
      endedAt: T0 + 9000,
      acks: Array.from({ length: 50 }, (_, i) => ({ t: T0 + 100 + i * 150, checkpoint: i + 1, node: 'a' })),
      lag: [{ t: T0 + 2000, node: 'b', checkpoint: 12, lagMs: 4 }],
      faults: takeovers.map((t, i) => ({
        t: T0 + 2000 + i * 3000,
        kill: t.kill,
        kind: 'kill',
        node: t.killed,
      })),
      takeovers: takeovers.map((t, i) => ({
        t: T0 + 3000 + i * 3000,
        servingAt: T0 + 3020 + i * 3000,
        kill: t.kill,
        node: t.newPrimary,
      })),
      relays: [],
    },
    ...over,
  };
}

const count = (html: string, re: RegExp): number => html.match(re)?.length ?? 0;

describe('drill HTML report', () => {
  it('is self-contained: no external URL, script or stylesheet link', () => {
    const html = renderReport(report(2), { command: 'restartpoint drill --kills 2' });
    expect(html).toMatch(/^<!doctype html>/);
    expect(html).not.toMatch(/https?:\/\//);
    expect(html).not.toMatch(/<link|<script|<img|@import|url\(/i);
  });

  it('has one kill marker and one takeover marker per takeover, and one table row each', () => {
    const html = renderReport(report(3));
    expect(count(html, /class="kill-marker"/g)).toBe(3);
    expect(count(html, /class="takeover-marker"/g)).toBe(3);
    const body = /<table id="rto">[\s\S]*?<tbody>([\s\S]*?)<\/tbody>/.exec(html)![1]!;
    expect(count(body, /<tr/g)).toBe(3);
    expect(html).toContain('PASS');
    expect(html).toContain('data-points="50"');
  });

  it('shows a failing drill as FAIL with its violations, escaped', () => {
    const html = renderReport(
      report(1, { ok: false, violations: ['kill 1: store differs from <checkpoint> 3'] }),
    );
    expect(html).toContain('class="verdict fail"');
    expect(html).toContain('kill 1: store differs from &lt;checkpoint&gt; 3');
    expect(html).not.toContain('<checkpoint>');
  });

  it('medians are computed per figure', () => {
    const m = drillMedians(report(3).takeovers);
    expect(m.restoreMs).toBe(20);
    expect(m.resumeMs).toBe(40);
    expect(m.rollbackRestoreResumeMs).toBe(2 + 20 + 40);
    expect(drillMedians(report(2).takeovers).detectMs).toBe(901.5);
  });

  it('--json leaves the timeline out', () => {
    const r = report(1);
    const parsed = JSON.parse(reportJson({ ...r, runs: [r] })) as Record<string, unknown>;
    expect(parsed.timeline).toBeUndefined();
    expect((parsed.runs as Record<string, unknown>[])[0]!.timeline).toBeUndefined();
    expect(parsed.medians).toEqual(r.medians);
  });

  it('renders a report without a timeline', () => {
    const html = renderReport(report(1, { timeline: undefined }));
    expect(html).toContain('no timeline in this report');
  });
});
