/**
 * The file store truncated underneath a primary that writes without pause (found by
 * `drill --scenario store-loss`): a truncation that lands between the adapter's size check and
 * its write left the write past the new end, a hole of zeros before it, and every later check
 * passing. The adapter must report the store lost on that write or the next, every time.
 */
import { mkdtemp, readdir, rm, stat, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fileAdapter } from '../../adapters/file/index.js';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

describe('file store truncated under continuous writes', () => {
  it('every truncation is reported (ERR_STORE_LOST) by a following write, at any moment it lands', async () => {
    const rounds = 40;
    let reported = 0;
    for (let round = 0; round < rounds; round++) {
      const dir = await mkdtemp(join(tmpdir(), 'rp-ftrunc-'));
      dirs.push(dir);
      const a = fileAdapter({ dir });
      await a.open({ nodeId: 'a' });
      for (let i = 0; i < 30; i++) await a.put(`k${i}`, Buffer.alloc(200, i));
      let stop = false;
      let error: { code?: string } | undefined;
      // Writes without pause, like a busy primary, until one is refused.
      const writer = (async () => {
        for (let i = 0; !stop; i++) {
          try {
            await a.put(`w${i % 50}`, Buffer.alloc(100 + (i % 7), i));
          } catch (err) {
            error = err as { code?: string };
            return;
          }
        }
      })();
      // Land the truncation at a varying moment inside the write loop.
      await new Promise((r) => setTimeout(r, round % 5));
      const log = join(
        dir,
        (await readdir(dir))
          .filter((f) => /^log-\d{10}$/.test(f))
          .sort()
          .at(-1)!,
      );
      await truncate(log, Math.floor((await stat(log)).size / 2));
      // A few more writes after the truncation must meet it.
      for (let t = 0; t < 200 && error === undefined; t++) await new Promise((r) => setTimeout(r, 1));
      stop = true;
      await writer;
      if (error?.code === 'ERR_STORE_LOST') reported++;
      await a.close();
    }
    expect(reported).toBe(rounds);
  }, 60_000);
});
