/**
 * Large states and takeovers on a real nats-server: the first checkpoint of a new epoch is a
 * delta against the resumed image (format 3 on the relay), a tracked state stays tracked after
 * the restore, and every standby applies that delta to the same image.
 */
import { describe, expect, it } from 'vitest';
import { jetstreamManager } from '@nats-io/jetstream';
import { Restartpoint } from '../../src/index.js';
import { FrameKind, decodePart } from '../../src/protocol/frame.js';
import { ImageFormat, decodeImage, type ImageRecord } from '../../src/protocol/records.js';
import { appNames } from '../../src/protocol/subjects.js';
import { freshApp } from '../helpers/nats.js';
import { liveNodes, nodeOptions } from '../helpers/live.js';

const live = liveNodes();
const { apps } = live;

interface Book {
  orders: Map<string, { id: string; qty: number }>;
  seen: number;
}

const book = (): Book => {
  const orders = new Map<string, { id: string; qty: number }>();
  for (let i = 0; i < 2000; i++) orders.set(`o${i}`, { id: `o${i}`, qty: i });
  return { orders, seen: 0 };
};

/** The image records on the app's stream (single-part frames), with their frame's epoch. */
async function imageFrames(app: string): Promise<{ epoch: number; checkpoint: number; rec: ImageRecord }[]> {
  const jsm = await jetstreamManager(live.nc);
  const stream = appNames(app).stream;
  const info = await jsm.streams.info(stream);
  const out: { epoch: number; checkpoint: number; rec: ImageRecord }[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
    const m = await jsm.streams.getMessage(stream, { seq }).catch(() => null);
    if (!m) continue;
    const part = decodePart(m.data, app);
    if (part.kind !== FrameKind.Image || part.parts !== 1) continue;
    out.push({ epoch: part.epoch, checkpoint: part.checkpoint, rec: decodeImage(part.body) });
  }
  return out;
}

describe('large states across takeovers', () => {
  it('the first checkpoint after a takeover is a delta against the resumed image, and stays tracked', async () => {
    const app = freshApp();
    apps.push(app);
    const a = await live.start(nodeOptions<Book>(app, 'a', { initialState: book, keyframeEvery: 1000 }));
    const sa = a.track(a.state);
    for (let i = 0; i < 3; i++) {
      sa.orders.get(`o${i}`)!.qty += 100;
      sa.seen++;
      await a.checkpoint(sa);
    }
    const bStart = Restartpoint.start(
      nodeOptions<Book>(app, 'b', { initialState: book, keyframeEvery: 1000 }),
    );
    const cStart = Restartpoint.start(
      nodeOptions<Book>(app, 'c', { initialState: book, keyframeEvery: 1000 }),
    );
    sa.seen++;
    await a.checkpoint(sa); // both standbys hold checkpoint 4
    await a.close();
    const [first, second] = await Promise.race([
      bStart.then((b) => [b, cStart] as const),
      cStart.then((c) => [c, bStart] as const),
    ]);
    live.keep(first);
    expect(first.resumedFrom).toEqual({ epoch: 1, checkpoint: 4 });
    const s = first.track(first.state);
    s.orders.get('o7')!.qty = -7;
    s.orders.delete('o8');
    s.orders.set('new', { id: 'new', qty: 1 });
    s.seen++;
    await first.checkpoint(s);
    expect(first.lastCheckpoint).toMatchObject({ checkpoint: 5, keyframe: false, imagePath: 'tracked' });
    expect(first.lastCheckpoint!.imageRawBytes).toBeLessThan(400);
    s.orders.get('o9')!.qty = 9_000;
    await first.checkpoint(s);
    expect(first.lastCheckpoint).toMatchObject({ checkpoint: 6, keyframe: false, imagePath: 'tracked' });

    // On the relay: the keyframe of epoch 1, then deltas; epoch 2 starts with a format-3 delta
    // naming checkpoint 4 of epoch 1, then format 2.
    const images = await imageFrames(app);
    const byCp = new Map(images.map((f) => [f.checkpoint, f]));
    expect(byCp.get(1)!.rec.format).toBe(ImageFormat.Full);
    expect(byCp.get(5)).toMatchObject({
      epoch: 2,
      rec: { format: ImageFormat.DeltaAcross, base: 4, baseEpoch: 1 },
    });
    expect(byCp.get(6)).toMatchObject({ epoch: 2, rec: { format: ImageFormat.Delta, base: 5 } });
    expect(images.some((f) => f.epoch === 2 && f.rec.format === ImageFormat.Full)).toBe(false);

    // The other standby applied both: when it takes over, it resumes the same state.
    const expected = structuredClone(first.state);
    await first.close();
    const next = await second;
    live.keep(next);
    expect(next.resumedFrom).toEqual({ epoch: 2, checkpoint: 6 });
    expect(next.state).toEqual(expected);
    expect(next.state.orders.get('o7')!.qty).toBe(-7);
    expect(next.state.orders.has('o8')).toBe(false);
    // Its own first checkpoint: a delta against an image that itself came through a format-3
    // delta, named by epoch 2.
    const t = next.track(next.state);
    t.orders.get('o1')!.qty = 1;
    await next.checkpoint(t);
    expect(next.lastCheckpoint).toMatchObject({ checkpoint: 7, keyframe: false, imagePath: 'tracked' });
    const last = (await imageFrames(app)).find((f) => f.checkpoint === 7)!;
    expect(last).toMatchObject({ epoch: 3, rec: { format: ImageFormat.DeltaAcross, base: 6, baseEpoch: 2 } });
  });
});
