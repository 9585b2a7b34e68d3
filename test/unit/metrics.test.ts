import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { RestartpointMetrics } from '../../src/observability/metrics.js';
import type { CheckpointObservation, NodeState, Transition } from '../../src/observability/observer.js';

const tr = (to: NodeState, epoch: number, from?: NodeState): Transition => ({
  nodeId: 'n1',
  app: 'orders',
  from,
  to,
  epoch,
  reason: 'test',
});

const cp = (checkpoint: number, over: Partial<CheckpointObservation> = {}): CheckpointObservation => ({
  checkpoint,
  epoch: 3,
  imageBytes: 1000,
  imageRawBytes: 4000,
  keyframe: false,
  imagePath: 'tracked',
  writeOps: 2,
  writeFrames: 1,
  ms: 3,
  writeBytes: 300,
  ...over,
});

/** The value of the one series of `name` whose labels include all of `labels`. */
async function value(m: RestartpointMetrics, name: string, labels: Record<string, string> = {}) {
  const metric = m.registry.getSingleMetric(name);
  if (!metric) throw new Error(`no metric ${name}`);
  const got = (await metric.get()).values.filter((v) =>
    Object.entries(labels).every(([k, x]) => (v.labels as Record<string, unknown>)[k] === x),
  );
  return got.map((v) => v.value);
}

describe('RestartpointMetrics', () => {
  it('records checkpoints: duration and byte histograms, counter by image path, last sealed, epoch', async () => {
    const m = new RestartpointMetrics();
    m.observer.transition!(tr('primary', 3, 'restoring'));
    m.observer.checkpoint!(cp(10, { ms: 3 }));
    m.observer.checkpoint!(cp(11, { ms: 40, imagePath: 'keyframe', keyframe: true, imageBytes: 70_000 }));
    m.observer.checkpoint!(cp(12, { ms: 0.1 }));

    const dur = await m.registry.getSingleMetricAsString('restartpoint_checkpoint_duration_seconds');
    expect(dur).toContain('restartpoint_checkpoint_duration_seconds_count{app="orders",node="n1"} 3');
    expect(dur).toContain(
      'restartpoint_checkpoint_duration_seconds_bucket{le="0.0002",app="orders",node="n1"} 1',
    );
    expect(dur).toContain(
      'restartpoint_checkpoint_duration_seconds_bucket{le="0.005",app="orders",node="n1"} 2',
    );
    expect(dur).toContain(
      'restartpoint_checkpoint_duration_seconds_bucket{le="0.05",app="orders",node="n1"} 3',
    );
    expect(dur).toMatch(/restartpoint_checkpoint_duration_seconds_sum\{app="orders",node="n1"\} 0\.0431/);

    const img = await m.registry.getSingleMetricAsString('restartpoint_checkpoint_image_bytes');
    expect(img).toContain('restartpoint_checkpoint_image_bytes_sum{app="orders",node="n1"} 72000');
    expect(img).toContain('restartpoint_checkpoint_image_bytes_bucket{le="1024",app="orders",node="n1"} 2');
    const wr = await m.registry.getSingleMetricAsString('restartpoint_checkpoint_write_bytes');
    expect(wr).toContain('restartpoint_checkpoint_write_bytes_sum{app="orders",node="n1"} 900');

    expect(await value(m, 'restartpoint_checkpoints_total', { path: 'tracked' })).toEqual([2]);
    expect(await value(m, 'restartpoint_checkpoints_total', { path: 'keyframe' })).toEqual([1]);
    expect(await value(m, 'restartpoint_last_sealed_checkpoint')).toEqual([12]);
    expect(await value(m, 'restartpoint_epoch')).toEqual([3]);
  });

  it('role: 1 for the current state, 0 for every other; transitions counted by state entered', async () => {
    const m = new RestartpointMetrics();
    m.observer.transition!(tr('starting', 0));
    m.observer.transition!(tr('standby', 0, 'starting'));
    expect(await value(m, 'restartpoint_role', { state: 'standby' })).toEqual([1]);
    expect(await value(m, 'restartpoint_role', { state: 'primary' })).toEqual([0]);
    m.observer.transition!(tr('claiming', 0, 'standby'));
    m.observer.transition!(tr('primary', 4, 'claiming'));
    const role = await m.registry.getSingleMetricAsString('restartpoint_role');
    expect(role).toContain('restartpoint_role{app="orders",node="n1",state="primary"} 1');
    expect(role).toContain('restartpoint_role{app="orders",node="n1",state="standby"} 0');
    expect((role.match(/ 1$/gm) ?? []).length).toBe(1);
    expect((role.match(/^restartpoint_role\{/gm) ?? []).length).toBe(10);
    expect(await value(m, 'restartpoint_epoch')).toEqual([4]);
    expect(await value(m, 'restartpoint_state_transitions_total', { state: 'standby' })).toEqual([1]);
    expect(await value(m, 'restartpoint_state_transitions_total', { state: 'primary' })).toEqual([1]);
  });

  it('standby: applied sets last sealed and epoch; lag gauges per relay; unknown lag leaves no series', async () => {
    const m = new RestartpointMetrics();
    m.observer.transition!(tr('standby', 0));
    m.observer.applied!({ epoch: 2, checkpoint: 7 });
    expect(await value(m, 'restartpoint_last_sealed_checkpoint')).toEqual([7]);
    expect(await value(m, 'restartpoint_epoch')).toEqual([2]);
    m.observer.lag!([
      { servers: 'nats://a:4222', connected: true, frames: 5, bytes: 2048, seconds: 0.5, checkpoints: 2 },
      {
        servers: 'nats://b:4222',
        connected: false,
        frames: undefined,
        bytes: undefined,
        seconds: undefined,
        checkpoints: undefined,
      },
    ]);
    expect(await value(m, 'restartpoint_replication_lag_frames', { relay: 'nats://a:4222' })).toEqual([5]);
    expect(await value(m, 'restartpoint_replication_lag_bytes', { relay: 'nats://a:4222' })).toEqual([2048]);
    expect(await value(m, 'restartpoint_replication_lag_seconds', { relay: 'nats://a:4222' })).toEqual([0.5]);
    expect(await value(m, 'restartpoint_replication_lag_checkpoints', { relay: 'nats://a:4222' })).toEqual([
      2,
    ]);
    expect(await value(m, 'restartpoint_replication_lag_frames', { relay: 'nats://b:4222' })).toEqual([]);
    expect(await value(m, 'restartpoint_relay_connected', { relay: 'nats://b:4222' })).toEqual([0]);
    expect(await value(m, 'restartpoint_relay_connected', { relay: 'nats://a:4222' })).toEqual([1]);

    // Next sample: a caught up, b gone from the list → b's series dropped.
    m.observer.lag!([
      { servers: 'nats://a:4222', connected: true, frames: 0, bytes: 0, seconds: 0, checkpoints: 0 },
    ]);
    expect(await value(m, 'restartpoint_replication_lag_frames', { relay: 'nats://a:4222' })).toEqual([0]);
    expect(await value(m, 'restartpoint_relay_connected', { relay: 'nats://b:4222' })).toEqual([]);
  });

  it('takeover: counter, phase durations in seconds, lag series dropped; rejected frames by reason', async () => {
    const m = new RestartpointMetrics();
    m.observer.transition!(tr('standby', 1));
    m.observer.lag!([{ servers: 'r1', connected: true, frames: 1, bytes: 10, seconds: 0, checkpoints: 1 }]);
    m.observer.rejected!('checksum');
    m.observer.rejected!('checksum');
    m.observer.rejected!('stale');
    m.observer.takeover!({
      epoch: 2,
      resumedFrom: 41,
      detectMs: 1500,
      catchUpMs: 20,
      rollbackMs: 3,
      fenceMs: 12,
      restoreMs: 8,
      previous: 'n0',
    });
    expect(await value(m, 'restartpoint_takeovers_total')).toEqual([1]);
    expect(await value(m, 'restartpoint_takeover_duration_seconds', { phase: 'detect' })).toEqual([1.5]);
    expect(await value(m, 'restartpoint_takeover_duration_seconds', { phase: 'catch_up' })).toEqual([0.02]);
    expect(await value(m, 'restartpoint_takeover_duration_seconds', { phase: 'rollback' })).toEqual([0.003]);
    expect(await value(m, 'restartpoint_takeover_duration_seconds', { phase: 'fence' })).toEqual([0.012]);
    expect(await value(m, 'restartpoint_takeover_duration_seconds', { phase: 'restore' })).toEqual([0.008]);
    expect(await value(m, 'restartpoint_epoch')).toEqual([2]);
    expect(await value(m, 'restartpoint_last_sealed_checkpoint')).toEqual([41]);
    expect(await value(m, 'restartpoint_replication_lag_frames')).toEqual([]);
    expect(await value(m, 'restartpoint_frames_rejected_total', { reason: 'checksum' })).toEqual([2]);
    expect(await value(m, 'restartpoint_frames_rejected_total', { reason: 'stale' })).toEqual([1]);
  });

  it('prefix, constant labels, fixed app/node, a shared registry, default metrics only on request', async () => {
    const registry = new Registry();
    const a = new RestartpointMetrics({ registry, prefix: 'x_', labels: { region: 'eu', node: 'fixed' } });
    const b = new RestartpointMetrics({ registry, prefix: 'x_', labels: { region: 'eu' } });
    a.observer.transition!(tr('primary', 1));
    b.observer.transition!({ ...tr('standby', 1), nodeId: 'n2' });
    const text = await registry.metrics();
    expect(text).toContain('x_role{app="orders",node="fixed",region="eu",state="primary"} 1');
    expect(text).toContain('x_role{app="orders",node="n2",region="eu",state="standby"} 1');
    expect(text).not.toContain('restartpoint_');
    expect(text).not.toContain('process_cpu_user_seconds_total');

    const d = new RestartpointMetrics({ collectDefault: true });
    expect(await d.registry.metrics()).toContain('process_cpu_user_seconds_total');
    // A fresh instance never touches prom-client's global registry.
    const { register } = await import('prom-client');
    expect(register.getSingleMetric('restartpoint_role')).toBeUndefined();
  });

  it('rejects bad options with errors naming the option', () => {
    expect(() => new RestartpointMetrics({ prefix: 'bad-prefix' })).toThrow(/metrics\.prefix/);
    expect(() => new RestartpointMetrics({ labels: { 'bad-name': 'x' } })).toThrow(ConfigError);
    expect(() => new RestartpointMetrics({ labels: { relay: 'x' } })).toThrow(/metrics\.labels\.relay/);
    expect(() => new RestartpointMetrics({ labels: { zone: 3 as unknown as string } })).toThrow(
      /must be a string/,
    );
    expect(() => new RestartpointMetrics({ registry: {} as Registry })).toThrow(/metrics\.registry/);
    const registry = new Registry();
    new RestartpointMetrics({ registry });
    expect(() => new RestartpointMetrics({ registry, labels: { zone: 'a' } })).toThrow(
      /another type or labels/,
    );
  });

  it('an observer call with garbage never throws into the node', () => {
    const m = new RestartpointMetrics();
    expect(() => m.observer.checkpoint!(undefined as unknown as CheckpointObservation)).not.toThrow();
    expect(() => m.observer.lag!(null as unknown as [])).not.toThrow();
  });
  it("is importable as 'restartpoint/metrics' (and the logger as 'restartpoint/logger') from the build", () => {
    const root = fileURLToPath(new URL('../..', import.meta.url));
    const script =
      "const { RestartpointMetrics } = await import('restartpoint/metrics');" +
      "const { createLogger, pinoLog } = await import('restartpoint/logger');" +
      'const m = new RestartpointMetrics();' +
      "m.observer.transition({ nodeId: 'n', app: 'a', to: 'primary', epoch: 1 });" +
      'process.stdout.write((await m.registry.metrics()) + typeof createLogger + typeof pinoLog);';
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      cwd: root,
      encoding: 'utf8',
    });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('restartpoint_role{app="a",node="n",state="primary"} 1');
    expect(r.stdout).toMatch(/functionfunction$/);
  });
});
