import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { NatsConnection } from '@nats-io/transport-node';
import { chromium, type Browser } from 'playwright-core';
import { requireNats } from '../helpers/nats.js';

const BIN = fileURLToPath(new URL('../../bin/restartpoint.js', import.meta.url));
const CHROMIUM = '/usr/bin/chromium';
const run = (...args: string[]) =>
  spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 120_000 });

let nc: NatsConnection;
let dir: string;
let browser: Browser;
beforeAll(async () => {
  nc = await requireNats();
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `this test needs Chromium at ${CHROMIUM}: run 'bash scripts/ensure-services.sh' as root (it installs Debian's chromium), or 'apt-get install --no-install-recommends chromium'`,
    );
  }
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  dir = await mkdtemp(join(tmpdir(), 'rp-drill-report-'));
});
afterAll(async () => {
  await browser?.close();
  await nc?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('drill --report (real drill, the page rendered in headless Chromium)', () => {
  it('writes a self-contained page whose timeline has one marker per kill and takeover and whose RTO table has one row each', async () => {
    const file = join(dir, 'drill.html');
    const r = run(
      'drill',
      '--kills',
      '2',
      '--store',
      'memory',
      '--seed',
      '9',
      '--lease-ttl',
      '800',
      '--report',
      file,
      '--json',
    );
    expect(r.stderr).toMatch(/kill 2\/2/);
    expect(r.status).toBe(0);
    const report = JSON.parse(r.stdout) as { ok: boolean; takeovers: unknown[]; timeline?: unknown };
    expect(report.ok).toBe(true);
    expect(report.timeline).toBeUndefined();
    const n = report.takeovers.length;
    expect(n).toBe(2);

    const html = await readFile(file, 'utf8');
    expect(html).not.toMatch(/https?:\/\/|<script|<link/i);

    const page = await browser.newPage();
    // Self-contained: the page must not ask for anything at all.
    const requests: string[] = [];
    page.on('request', (req) => {
      if (req.url() !== pathToFileURL(file).href) requests.push(req.url());
    });
    await page.goto(pathToFileURL(file).href);
    const svg = page.locator('svg#timeline');
    const box = await svg.boundingBox();
    expect(box).not.toBeNull();
    expect(box!.width).toBeGreaterThan(100);
    expect(box!.height).toBeGreaterThan(100);
    expect(await page.locator('svg#timeline .kill-marker').count()).toBe(n);
    expect(await page.locator('svg#timeline .takeover-marker').count()).toBe(n);
    // Each marker is drawn (a visible box), not merely present.
    for (const m of await page.locator('svg#timeline .kill-marker circle').all())
      expect((await m.boundingBox())!.width).toBeGreaterThan(0);
    // The checkpoint line has points and spans the plot.
    const line = await page.locator('svg#timeline polyline.acks').first().boundingBox();
    expect(line!.width).toBeGreaterThan(box!.width / 2);
    expect(await page.locator('table#rto tbody tr').count()).toBe(n);
    expect(await page.locator('#verdict').textContent()).toBe('PASS');
    expect(requests).toEqual([]);
    await page.close();
  }, 120_000);

  it.each([
    [['drill', '--state-mb', '2000'], /--state-mb must be an integer from 0 to 1024/],
    [['drill', '--report', '/nonexistent-dir/x/drill.html'], /--report .* the folder .* does not exist/],
    [
      ['drill', '--scenario', 'flood'],
      /Allowed choices are kill, pause, partition, relay-loss, shard-loss, (.+, )?chaos, (.+, )?all/,
    ],
  ])('%j is a usage error: exit 2 with a hint', (args, problem) => {
    const r = run(...args);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(problem);
    expect(r.stderr).toMatch(/hint:/);
    expect(r.stdout).toBe('');
  });
});
