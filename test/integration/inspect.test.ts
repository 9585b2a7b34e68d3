/**
 * `restartpoint inspect`, run as the built bin against real nats-servers (the shared one on 4222
 * and a second one started here): frames written with the production codec, some left off one
 * relay, read back as `--json`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { TestRelay, freePort } from '../../src/drill/nats-servers.js';
import { FrameCodec } from '../../src/protocol/codec.js';
import { EnvelopeCodec, parseClusterKey } from '../../src/protocol/envelope.js';
import { FrameKind, encodeFrame, type Frame } from '../../src/protocol/frame.js';
import {
  ImageCodec,
  ImageFormat,
  encodeFence,
  encodeImage,
  encodeSeal,
  encodeWrites,
} from '../../src/protocol/records.js';
import { appNames } from '../../src/protocol/subjects.js';
import type { InspectReport } from '../../src/cli/commands/inspect.js';
import type { FecScheme } from '../../src/fec/shard.js';
import { NATS_URL, deleteApp, freshApp, requireNats } from '../helpers/nats.js';
import { runCli } from '../helpers/cli.js';

const run = runCli;

async function inspectJson(...args: string[]): Promise<InspectReport> {
  const r = await run('inspect', ...args, '--json');
  if (r.status !== 0) throw new Error(`inspect exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout) as InspectReport;
}

let nc: NatsConnection;
let second: TestRelay;
let nc2: NatsConnection;
const apps: string[] = [];

beforeAll(async () => {
  nc = await requireNats();
  second = await TestRelay.single();
  nc2 = await connect({ servers: second.urls });
}, 20_000);
afterAll(async () => {
  for (const app of apps) await deleteApp(nc, app);
  await nc2?.close();
  await second?.destroy();
  await nc?.close();
});

/** A short history: epoch 1 fences, checkpoints 1 (keyframe) and 2 (delta); epoch 2 fences at 2. */
function history(): Frame[] {
  const image = (format: ImageFormat, base: number, bytes: number): Uint8Array =>
    encodeImage({
      format,
      codec: ImageCodec.None,
      base,
      stateVersion: 1,
      rawLength: bytes,
      payload: randomBytes(bytes),
    });
  const writes = encodeWrites([
    { op: 'put', key: 'a', value: Buffer.from('1') },
    { op: 'delete', key: 'b' },
  ]);
  const seal = encodeSeal({ writeFrames: 1, writeOps: 2, imageFrames: 1 });
  return [
    {
      kind: FrameKind.Fence,
      epoch: 1,
      seq: 1,
      checkpoint: 0,
      body: encodeFence({ nodeId: 'a', cutoffEpoch: 0 }),
    },
    { kind: FrameKind.Writes, epoch: 1, seq: 2, checkpoint: 1, body: writes },
    { kind: FrameKind.Image, epoch: 1, seq: 3, checkpoint: 1, body: image(ImageFormat.Full, 0, 10_000) },
    { kind: FrameKind.Seal, epoch: 1, seq: 4, checkpoint: 1, body: seal },
    { kind: FrameKind.Writes, epoch: 1, seq: 5, checkpoint: 2, body: writes },
    { kind: FrameKind.Image, epoch: 1, seq: 6, checkpoint: 2, body: image(ImageFormat.Delta, 1, 300) },
    { kind: FrameKind.Seal, epoch: 1, seq: 7, checkpoint: 2, body: seal },
    {
      kind: FrameKind.Fence,
      epoch: 2,
      seq: 1,
      checkpoint: 2,
      body: encodeFence({ nodeId: 'b', cutoffEpoch: 1 }),
    },
  ];
}

/**
 * Creates the app's stream on every relay and publishes `frames` through the production codec
 * (4 KiB messages, so the keyframe takes several parts), except the frames `skip` leaves off a
 * relay. `extra` raw messages go to relay 0 first.
 */
async function publish(
  conns: NatsConnection[],
  app: string,
  frames: Frame[],
  o: {
    envelope?: EnvelopeCodec;
    fec?: FecScheme;
    skip?: (f: Frame, relay: number, index: number) => boolean;
    extra?: Uint8Array[];
  } = {},
): Promise<void> {
  apps.push(app);
  const names = appNames(app);
  for (const c of conns) {
    await (await jetstreamManager(c)).streams.add({ name: names.stream, subjects: names.streamSubjects });
  }
  const js = conns.map((c) => jetstream(c));
  for (const m of o.extra ?? []) await js[0]!.publish(names.subject, m);
  const codec = new FrameCodec({
    app,
    relays: conns.length,
    maxPayload: 4096,
    fec: o.fec,
    envelope: o.envelope,
  });
  for (const f of frames) {
    for (const part of await codec.encode(f)) {
      for (const [j, m] of part.messages.entries()) {
        if (o.skip?.(f, m.relay, j)) continue;
        await js[m.relay]!.publish(names.subject, m.bytes, { msgID: m.msgId });
      }
    }
  }
}

describe('restartpoint inspect (real nats-servers)', () => {
  it("lists each relay's records and the fence and seal that one relay misses", async () => {
    const app = freshApp('insp');
    const foreign = encodeFrame(
      'other-app',
      {
        kind: FrameKind.Seal,
        epoch: 1,
        seq: 9,
        checkpoint: 1,
        body: encodeSeal({ writeFrames: 0, writeOps: 0, imageFrames: 1 }),
      },
      4096,
    )[0]!;
    await publish([nc, nc2], app, history(), {
      // Relay 1 misses the fence of epoch 2, relay 0 the seal of checkpoint 1.
      skip: (f, relay) =>
        (relay === 1 && f.kind === FrameKind.Fence && f.epoch === 2) ||
        (relay === 0 && f.kind === FrameKind.Seal && f.checkpoint === 1),
      extra: [Buffer.alloc(64, 'not a frame at all '), foreign],
    });
    const down = `nats://127.0.0.1:${await freePort()}`;
    const r = await inspectJson(
      '--app',
      app,
      '--relay',
      NATS_URL,
      '--relay',
      second.urls.join('|'),
      '--relay',
      down,
    );
    expect(r.signed).toBe(false);
    expect(r.fec).toBe(false);
    const [a, b, c] = r.relays;
    expect(c).toMatchObject({ reachable: false, frames: [] });
    expect(c!.error).toMatch(/unreachable/);
    expect(a!.rejected.map((x) => x.reason)).toEqual(['magic', 'foreign']);
    expect(a!.rejected[0]!.streamSeq).toBe(1);
    expect(a!.counts).toMatchObject({ fence: 2, writes: 2, keyframe: 1, delta: 1, seal: 1, rejected: 2 });
    expect(b!.counts).toMatchObject({ fence: 1, writes: 2, keyframe: 1, delta: 1, seal: 2 });
    const key = b!.frames.find((f) => f.kind === 'keyframe')!;
    expect(key.parts).toBeGreaterThan(1);
    expect(key.streamSeqs).toHaveLength(key.parts!);
    expect(key.image).toMatchObject({ format: 'full', base: 0, payloadBytes: 10_000, rawBytes: 10_000 });
    expect(b!.frames.find((f) => f.kind === 'delta')!.image).toMatchObject({ format: 'delta', base: 1 });
    expect(b!.frames.find((f) => f.kind === 'writes')!.writes).toEqual({ ops: 2, puts: 1, deletes: 1 });
    expect(b!.frames.find((f) => f.kind === 'seal')).toMatchObject({
      epoch: 1,
      checkpoint: 1,
      streamSeq: 4 + key.parts! - 1,
      seal: { writeFrames: 1, writeOps: 2, imageFrames: 1 },
    });
    expect(a!.frames.find((f) => f.kind === 'fence' && f.epoch === 2)!.fence).toEqual({
      nodeId: 'b',
      cutoffCheckpoint: 2,
      cutoffEpoch: 1,
    });
    expect(r.disagreements).toEqual([
      { kind: 'seal', epoch: 1, seq: 4, checkpoint: 1, presentOn: [1], missingOn: [0] },
      { kind: 'fence', epoch: 2, seq: 1, checkpoint: 2, presentOn: [0], missingOn: [1] },
    ]);

    // Bounded: --limit stops early and says so; a relay read only partly is not said to miss
    // what lies past its window.
    const t = await inspectJson(
      '--app',
      app,
      '--relay',
      NATS_URL,
      '--relay',
      second.urls.join('|'),
      '--limit',
      '3',
    );
    expect(t.relays.map((x) => [x.read, x.truncated])).toEqual([
      [3, true],
      [3, true],
    ]);
    expect(t.disagreements).toEqual([]);
    // --from: relay 1 from its seal of checkpoint 2 on.
    const f = await inspectJson(
      '--app',
      app,
      '--relay',
      second.urls.join('|'),
      '--from',
      String(b!.frames.at(-1)!.streamSeq),
    );
    expect(f.relays[0]!.frames.map((x) => x.kind)).toEqual(['seal']);

    const human = await run('inspect', '--app', app, '--relay', NATS_URL, '--relay', second.urls.join('|'));
    expect(human.status).toBe(0);
    expect(human.stdout).toContain('fence 2/1 (checkpoint 2): on relay 0, missing on relay 1');
    expect(human.stdout).toContain('foreign');
    // No relay holds the app: a usage error, as for status.
    const none = await run('inspect', '--app', freshApp('insp-none'), '--nats', NATS_URL);
    expect(none.status).toBe(2);
    expect(none.stderr).toMatch(/no app .*\(stream RP_insp-none-\w+ not found/);
  }, 20_000);

  it('opens a signed stream with the key (flag or config file) and says what it cannot open without', async () => {
    const app = freshApp('insp-sig');
    const key = randomBytes(32).toString('hex');
    const envelope = new EnvelopeCodec({ app, keys: parseClusterKey(key), encrypt: true });
    const mallory = new EnvelopeCodec({ app, keys: parseClusterKey(randomBytes(32)) });
    const forged = mallory.seal(
      encodeFrame(
        app,
        {
          kind: FrameKind.Fence,
          epoch: 9,
          seq: 1,
          checkpoint: 2,
          body: encodeFence({ nodeId: 'm', cutoffEpoch: 1 }),
        },
        4096,
      )[0]!,
    );
    await publish([nc], app, history(), { envelope, extra: [forged] });

    const without = await inspectJson('--app', app, '--nats', NATS_URL);
    expect(without.relays[0]!.frames).toEqual([]);
    expect(new Set(without.relays[0]!.rejected.map((x) => x.reason))).toEqual(new Set(['signed']));

    const withKey = await inspectJson('--app', app, '--nats', NATS_URL, '--key', key);
    expect(withKey.signed).toBe(true);
    expect(withKey.relays[0]!.rejected).toMatchObject([{ streamSeq: 1, reason: 'forged' }]);
    expect(withKey.relays[0]!.counts).toMatchObject({ fence: 2, seal: 2, keyframe: 1, delta: 1, writes: 2 });

    const dir = await mkdtemp(join(tmpdir(), 'rp-inspect-'));
    await writeFile(join(dir, 'key'), `${key}\n`);
    await writeFile(
      join(dir, 'rp.yaml'),
      `app: ${app}\nnats:\n  servers: ${NATS_URL}\nstorage:\n  kind: memory\nclusterKeyFile: ${join(dir, 'key')}\n`,
    );
    const fromConfig = await inspectJson('--app', app, '--config', join(dir, 'rp.yaml'));
    expect(fromConfig.relays[0]!.counts).toEqual(withKey.relays[0]!.counts);
  }, 20_000);

  it('rebuilds FEC parts from the shards of both relays', async () => {
    const app = freshApp('insp-fec');
    // k = 2, m = 1 over two relays: shards 0 and 2 (parity) on relay 0, shard 1 on relay 1.
    // Relay 0 misses the parity shards of the keyframe, so its parts need relay 1's shard 1;
    // relay 1 misses the seal of checkpoint 2, which relay 0 alone still rebuilds.
    await publish([nc, nc2], app, history(), {
      fec: { data: 2, parity: 1 },
      skip: (f, relay, j) =>
        (relay === 0 && f.kind === FrameKind.Image && f.checkpoint === 1 && j === 2) ||
        (relay === 1 && f.kind === FrameKind.Seal && f.checkpoint === 2),
    });
    const r = await inspectJson('--app', app, '--relay', NATS_URL, '--relay', second.urls.join('|'));
    expect(r.fec).toBe(true);
    const [a, b] = r.relays;
    expect(a!.rejected).toEqual([]);
    expect(a!.counts).toEqual({ fence: 2, writes: 2, keyframe: 1, delta: 1, seal: 2 });
    expect(b!.counts).toEqual({ fence: 2, writes: 2, keyframe: 1, delta: 1, seal: 1 });
    expect(a!.frames[0]!.shards).toEqual([0, 2]);
    expect(b!.frames[0]!.shards).toEqual([1]);
    const key = a!.frames.find((f) => f.kind === 'keyframe')!;
    expect(new Set(key.shards)).toEqual(new Set([0]));
    expect(key.image).toMatchObject({ format: 'full', payloadBytes: 10_000 });
    expect(r.disagreements).toEqual([
      { kind: 'seal', epoch: 1, seq: 7, checkpoint: 2, presentOn: [0], missingOn: [1] },
    ]);
  }, 20_000);
});
