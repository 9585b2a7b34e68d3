/**
 * The checks of an existing stream and lease bucket (src/transport/connection.ts), as pure
 * functions: the settings the integration test cannot create on a single nats-server 2.9
 * (sealed, mirror, more replicas), subject coverage, and what is accepted.
 * test/integration/existing-config.test.ts covers the refusals against the real server.
 */
import { describe, expect, it } from 'vitest';
import {
  DUPLICATE_WINDOW_NS,
  leaseBucketProblems,
  streamProblems,
  subjectCovers,
} from '../../src/transport/connection.js';

const want = { subjects: ['rp.shop.>'], replicas: 1, maxPayload: 1024 * 1024 - 512 };
const good = {
  name: 'RP_shop',
  subjects: ['rp.shop.>'],
  retention: 'limits',
  max_msgs: -1,
  max_bytes: -1,
  max_age: 0,
  max_msgs_per_subject: -1,
  max_msg_size: -1,
  discard: 'old',
  storage: 'file',
  num_replicas: 1,
  duplicate_window: DUPLICATE_WINDOW_NS,
  sealed: false,
  deny_delete: false,
  deny_purge: false,
} as const;
const settings = (c: object): string[] => streamProblems(c as never, want).map((p) => p.setting);

describe('subjectCovers', () => {
  it('matches the way nats-server matches subjects', () => {
    expect(subjectCovers('rp.shop.>', 'rp.shop.>')).toBe(true);
    expect(subjectCovers('rp.>', 'rp.shop.>')).toBe(true);
    expect(subjectCovers('>', 'rp.shop.>')).toBe(true);
    expect(subjectCovers('rp.*.>', 'rp.shop.>')).toBe(true);
    expect(subjectCovers('rp.shop.frames', 'rp.shop.>')).toBe(false);
    expect(subjectCovers('rp.shop.*', 'rp.shop.>')).toBe(false);
    expect(subjectCovers('rp.shop.*', 'rp.shop.frames')).toBe(true);
    expect(subjectCovers('rp.shop', 'rp.shop.>')).toBe(false);
    expect(subjectCovers('rp.other.>', 'rp.shop.>')).toBe(false);
  });
});

describe('streamProblems', () => {
  it('accepts the stream restartpoint creates, and harmless differences', () => {
    expect(settings(good)).toEqual([]);
    expect(
      settings({
        ...good,
        subjects: ['rp.>'],
        deny_delete: true,
        num_replicas: 3,
        max_consumers: 10,
        max_msg_size: -1,
      }),
    ).toEqual([]);
    expect(settings({ ...good, duplicate_window: 10 * DUPLICATE_WINDOW_NS })).toEqual([]);
  });

  it('names each setting that breaks a guarantee', () => {
    expect(settings({ ...good, sealed: true })).toEqual(['sealed']);
    expect(settings({ ...good, mirror: { name: 'OTHER' } })).toEqual(['mirror']);
    expect(settings({ ...good, retention: 'interest' })).toEqual(['retention']);
    expect(settings({ ...good, max_msg_size: 4096 })).toEqual(['max_msg_size']);
    expect(settings({ ...good, num_replicas: 1 })).toEqual([]);
    expect(streamProblems(good as never, { ...want, replicas: 3 }).map((p) => p.setting)).toEqual([
      'num_replicas',
    ]);
    expect(settings({ ...good, max_msgs: 10, discard: 'new' })).toEqual(['max_msgs', 'discard']);
  });

  it('says what a limit does under each discard policy', () => {
    const [old] = streamProblems({ ...good, max_bytes: 100 } as never, want);
    expect(old!.why).toMatch(/deletes the oldest frames/);
    const [refuse] = streamProblems({ ...good, max_bytes: 100, discard: 'new' } as never, want);
    expect(refuse!.why).toMatch(/refuses new frames/);
  });
});

describe('leaseBucketProblems', () => {
  const bucket = {
    ...good,
    name: 'KV_rp-shop-lease',
    subjects: ['$KV.rp-shop-lease.>'],
    max_msgs_per_subject: 1,
    discard: 'new',
    allow_rollup_hdrs: true,
  };
  const names = (c: object): string[] => leaseBucketProblems(c as never).map((p) => p.setting);

  it('accepts the bucket restartpoint creates, any history, any replicas', () => {
    expect(names(bucket)).toEqual([]);
    expect(names({ ...bucket, max_msgs_per_subject: 64, num_replicas: 3 })).toEqual([]);
  });

  it('refuses a TTL, memory storage, limits, unbounded history, a sealed or mirrored bucket', () => {
    expect(names({ ...bucket, max_age: 5e9 })).toEqual(['max_age']);
    expect(names({ ...bucket, storage: 'memory' })).toEqual(['storage']);
    expect(names({ ...bucket, max_msgs: 100 })).toEqual(['max_msgs']);
    expect(names({ ...bucket, max_msgs_per_subject: -1 })).toEqual(['max_msgs_per_subject']);
    expect(names({ ...bucket, retention: 'workqueue' })).toEqual(['retention']);
    expect(names({ ...bucket, sealed: true })).toEqual(['sealed']);
    expect(names({ ...bucket, mirror: { name: 'KV_other' } })).toEqual(['mirror']);
  });
});
