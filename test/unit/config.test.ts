import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError } from '../../src/errors.js';
import {
  ConfigFileError,
  didYouMean,
  loadConfig,
  parseConfig,
  toStartOptions,
  type SidecarConfig,
} from '../../src/config/index.js';

const BASE = {
  app: 'orders',
  nodeId: 'node-a',
  nats: { servers: 'nats://127.0.0.1:4222' },
  storage: { kind: 'file', dir: '/var/lib/orders/a' },
};

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'rp-config-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The problems `raw` (with `env`) is rejected for, as message lines. */
function problems(raw: unknown, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    parseConfig(raw, 'restartpoint.yaml', env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigFileError);
    expect(err).toBeInstanceOf(ConfigError);
    const e = err as ConfigFileError;
    expect(e.code).toBe('ERR_CONFIG');
    return e.problems.map((p) => `${p.path}${p.env ? ` (from ${p.env})` : ''}: ${p.message}`);
  }
  throw new Error('expected the config to be rejected');
}

describe('parseConfig', () => {
  it('fills in the defaults', () => {
    const c = parseConfig(BASE, 'restartpoint.yaml', {});
    expect(c).toMatchObject({
      app: 'orders',
      nodeId: 'node-a',
      api: {
        port: 0,
        maxBodyBytes: 64 * 1024 * 1024,
        tokenFile: join(tmpdir(), 'restartpoint-orders-node-a.token'),
      },
      process: { restart: 'never', maxRestarts: 3, stopTimeoutMs: 5000 },
      log: { level: 'info' },
      metrics: { enabled: true },
      source: 'restartpoint.yaml',
    });
    expect(c.api.portFile).toBeUndefined();
    const withDataDir = parseConfig({ ...BASE, nodeId: 'a/b', dataDir: '/srv/rp' }, 'x', {});
    expect(withDataDir.api.tokenFile).toBe('/srv/rp/restartpoint-orders-a_b.token');
    expect(parseConfig({ ...BASE, nodeId: undefined }, 'x', {}).nodeId).toMatch(/-\d+$/);
  });

  it('names the field, the value and the fix', () => {
    expect(() => parseConfig({ ...BASE, leaseTtlMs: 'fast' }, 'restartpoint.yaml', {})).toThrow(
      'config restartpoint.yaml: leaseTtlMs: must be an integer from 100 to 600000 (milliseconds), got "fast" — set it to e.g. 2000',
    );
  });

  it('reports every problem at once', () => {
    const p = problems({
      app: 'no spaces allowed',
      nats: { servers: [] },
      storage: { kind: 'mongo' },
      leaseTtlMs: 50,
      api: { port: 70000 },
      process: { restart: 'always' },
      log: { level: 'loud' },
    });
    expect(p).toEqual([
      expect.stringMatching(/^app: must be 1-64 characters of \[A-Za-z0-9_-\].*got "no spaces allowed"/),
      expect.stringMatching(/^nats\.servers: must be a NATS URL or a non-empty list of URLs, got \[\]/),
      expect.stringMatching(
        /^storage\.kind: must be one of 'memory', 'file', 'redis', 'postgres', got "mongo"/,
      ),
      expect.stringMatching(/^leaseTtlMs: must be an integer from 100 to 600000 .*got 50/),
      expect.stringMatching(/^api\.port: must be an integer from 0 to 65535 .*got 70000/),
      expect.stringMatching(/^process\.restart: must be 'never' or 'on-failure', got "always"/),
      expect.stringMatching(/^log\.level: must be one of trace, debug, info.*got "loud"/),
    ]);
    try {
      parseConfig({ app: 'x y', nats: { servers: [] }, storage: { kind: 'memory' } }, 'f.yaml', {});
    } catch (err) {
      expect((err as Error).message).toMatch(
        /^config f\.yaml has 2 problems:\n {2}- app: .*\n {2}- nats\.servers: /,
      );
    }
  });

  it('refuses unknown fields, at any depth, with a did-you-mean when close', () => {
    const p = problems({ ...BASE, leaseTTLms: 2000, api: { prot: 1 }, nats: { ...BASE.nats, sevrers: 'x' } });
    expect(p).toContainEqual(
      expect.stringMatching(
        /^leaseTTLms: is not a field of the config — did you mean 'leaseTtlMs'\? \(known: app, /,
      ),
    );
    expect(p).toContainEqual(
      expect.stringMatching(/^api\.prot: is not a field of api — did you mean 'port'\?/),
    );
    expect(p).toContainEqual(
      expect.stringMatching(/^nats\.sevrers: is not a field of nats — did you mean 'servers'\?/),
    );
    const far = problems({ ...BASE, frobnicate: true });
    expect(far[0]).toMatch(/^frobnicate: is not a field of the config \(known: /);
    expect(far[0]).not.toMatch(/did you mean/);
  });

  it('says what is missing', () => {
    expect(problems({})).toEqual([
      expect.stringMatching(/^app: is required: 1-64 characters/),
      expect.stringMatching(/^nats: is required: a mapping with servers/),
      expect.stringMatching(/^storage: is required: a mapping with kind/),
    ]);
    expect(problems([1, 2])).toEqual([expect.stringMatching(/^: must be a mapping of fields/)]);
  });

  it('checks storage fields against the kind', () => {
    expect(problems({ ...BASE, storage: { kind: 'file' } })).toEqual([
      expect.stringMatching(/^storage\.dir: is required for storage kind 'file': a directory path/),
    ]);
    expect(problems({ ...BASE, storage: { kind: 'memory', dir: '/x', url: 'redis://h' } })).toEqual([
      "storage.dir: is not used by storage kind 'memory' (it belongs to kind 'file'): remove it or set storage.kind: file",
      "storage.url: is not used by storage kind 'memory' (it belongs to kind 'redis'): remove it or set storage.kind: redis",
    ]);
    expect(problems({ ...BASE, storage: { kind: 'redis' } })[0]).toMatch(/^storage\.prefix: is required/);
    expect(problems({ ...BASE, storage: { kind: 'postgres', table: 'Bad-Name' } })).toEqual([
      expect.stringMatching(/^storage\.table: must be a table name/),
      expect.stringMatching(/^storage\.connectionString: is required for storage kind 'postgres'/),
    ]);
  });

  it('checks fec, cluster key sources and the SDK rules', () => {
    expect(problems({ ...BASE, fec: { data: 4, copies: 2 } })[0]).toMatch(
      /^fec: has both data\/parity and copies/,
    );
    expect(problems({ ...BASE, fec: { data: 4 } })[0]).toMatch(/^fec\.parity: is required with Reed-Solomon/);
    expect(problems({ ...BASE, clusterKey: 'k'.repeat(40), clusterKeyFile: '/k' })[0]).toMatch(
      /^clusterKeyFile: is set together with clusterKey/,
    );
    // The SDK's own checks run at load time too, with the field named.
    expect(problems({ ...BASE, clusterKey: 'short-key-here' })[0]).toMatch(
      /^clusterKey: is 14 bytes, fewer than 32/,
    );
    expect(problems({ ...BASE, encrypt: true })[0]).toMatch(/^encrypt: needs clusterKey/);
    expect(problems({ ...BASE, ack: { count: 3 } })[0]).toMatch(/^ack/);
    expect(problems({ ...BASE, limits: { maxKeyBytes: 5000 } })[0]).toMatch(
      /^limits\.maxKeyBytes: must be an integer/,
    );
  });

  it('never echoes a secret', () => {
    const p = problems({ ...BASE, api: { token: 'has space in it!!' }, nats: { ...BASE.nats, pass: 7 } });
    expect(p.join('\n')).not.toContain('has space');
    expect(p).toContainEqual(expect.stringMatching(/^api\.token: .*got a secret of 17 characters/));
  });
});

describe('environment overrides', () => {
  it('win over the file, with lists split on commas and numbers parsed', () => {
    const c = parseConfig(BASE, 'f', {
      RESTARTPOINT_APP: 'billing',
      RESTARTPOINT_NODE_ID: 'b',
      RESTARTPOINT_NATS_SERVERS: 'nats://h1:4222, nats://h2:4222',
      RESTARTPOINT_STORAGE_DIR: '/data/b',
      RESTARTPOINT_LEASE_TTL_MS: '3000',
      RESTARTPOINT_API_PORT: '7878',
      RESTARTPOINT_API_TOKEN: 'e'.repeat(32),
      RESTARTPOINT_LOG_LEVEL: 'debug',
      RESTARTPOINT_METRICS_ENABLED: 'false',
      UNRELATED: 'x',
    });
    expect(c).toMatchObject({
      app: 'billing',
      nodeId: 'b',
      nats: { servers: ['nats://h1:4222', 'nats://h2:4222'] },
      storage: { kind: 'file', dir: '/data/b' },
      leaseTtlMs: 3000,
      api: { port: 7878, token: 'e'.repeat(32) },
      log: { level: 'debug' },
      metrics: { enabled: false },
    });
  });

  it('can make a whole config, and RESTARTPOINT_STORAGE_URL follows the kind', () => {
    const pg = parseConfig(undefined, '<env>', {
      RESTARTPOINT_APP: 'x',
      RESTARTPOINT_NATS_SERVERS: 'nats://h:4222',
      RESTARTPOINT_STORAGE_KIND: 'postgres',
      RESTARTPOINT_STORAGE_URL: 'postgres://u@h/db',
    });
    expect(pg.storage).toEqual({ kind: 'postgres', connectionString: 'postgres://u@h/db' });
    const redis = parseConfig({ ...BASE, storage: { kind: 'redis', prefix: 'p' } }, 'f', {
      RESTARTPOINT_STORAGE_URL: 'redis://h:6379',
    });
    expect(redis.storage).toEqual({ kind: 'redis', prefix: 'p', url: 'redis://h:6379' });
  });

  it('a bad value names the variable', () => {
    expect(
      problems(BASE, {
        RESTARTPOINT_LEASE_TTL_MS: 'fast',
        RESTARTPOINT_STORAGE_KIND: 'tape',
        RESTARTPOINT_ENCRYPT: 'yes',
      }),
    ).toEqual([
      expect.stringMatching(/^storage\.kind \(from RESTARTPOINT_STORAGE_KIND\): must be one of .*got "tape"/),
      expect.stringMatching(
        /^leaseTtlMs \(from RESTARTPOINT_LEASE_TTL_MS\): must be an integer .*got "fast"/,
      ),
      expect.stringMatching(/^encrypt \(from RESTARTPOINT_ENCRYPT\): must be true or false/),
    ]);
  });
});

describe('loadConfig', () => {
  it('reads YAML and JSON files', async () => {
    const yml = join(dir, 'a.yaml');
    await writeFile(
      yml,
      'app: orders\nnats:\n  servers: nats://127.0.0.1:4222\nstorage: { kind: memory }\ninitialState: { count: 0 }\n',
    );
    expect(loadConfig(yml, {})).toMatchObject({ app: 'orders', initialState: { count: 0 }, source: yml });
    const json = join(dir, 'a.json');
    await writeFile(json, JSON.stringify(BASE));
    expect(loadConfig(json, {}).storage).toEqual({ kind: 'file', dir: '/var/lib/orders/a' });
  });

  it('reads the cluster key from clusterKeyFile', async () => {
    const key = join(dir, 'cluster.key');
    await writeFile(key, `${'ab'.repeat(32)}\n`);
    const c = parseConfig({ ...BASE, clusterKeyFile: key, encrypt: true }, 'f', {});
    expect(c.clusterKey).toBe('ab'.repeat(32));
    expect(problems({ ...BASE, clusterKeyFile: join(dir, 'none.key') })[0]).toMatch(
      /^clusterKeyFile: cannot be read \(ENOENT\)/,
    );
  });

  it('names a missing file, bad syntax and duplicate keys', async () => {
    expect(() => loadConfig(join(dir, 'missing.yaml'), {})).toThrow(
      /file not found: check the --config path/,
    );
    const bad = join(dir, 'bad.yaml');
    await writeFile(bad, 'app: [unclosed\n');
    expect(() => loadConfig(bad, {})).toThrow(
      /is not valid YAML\/JSON: Flow sequence .* at line 2, column 1 — fix the syntax there$/,
    );
    const dup = join(dir, 'dup.yaml');
    await writeFile(dup, 'app: a\napp: b\n');
    expect(() => loadConfig(dup, {})).toThrow(
      /is not valid YAML\/JSON: Map keys must be unique at line 2, column 1 — fix the syntax there$/,
    );
  });
});

describe('toStartOptions', () => {
  it('maps the config onto Restartpoint.start() options', () => {
    const c: SidecarConfig = parseConfig(
      {
        ...BASE,
        nats: { servers: ['nats://a:4222'], user: 'u', pass: 'p' },
        mode: 'snapshot',
        leaseTtlMs: 1500,
        keyframeEvery: 8,
        relays: [{ servers: 'nats://r1:4222' }, { servers: 'nats://r2:4222' }, { servers: 'nats://r3:4222' }],
        ack: 'quorum',
        fec: { data: 2, parity: 1 },
        initialState: { list: [1] },
        limits: { maxImageBytes: 1 << 20 },
      },
      'f',
      {},
    );
    const o = toStartOptions(c);
    expect(o).toMatchObject({
      app: 'orders',
      nodeId: 'node-a',
      nats: { servers: ['nats://a:4222'], user: 'u', pass: 'p' },
      mode: 'snapshot',
      leaseTtlMs: 1500,
      keyframeEvery: 8,
      ack: 'quorum',
      fec: { data: 2, parity: 1 },
      limits: { maxImageBytes: 1 << 20 },
    });
    expect(o.relays).toHaveLength(3);
    const s1 = o.initialState!() as { list: number[] };
    s1.list.push(2);
    expect(o.initialState!()).toEqual({ list: [1] }); // a fresh copy each time
    expect(toStartOptions(parseConfig({ ...BASE, fec: { copies: 2 } }, 'f', {})).fec).toEqual({ copies: 2 });
  });
});

describe('didYouMean', () => {
  it('suggests close names only', () => {
    expect(didYouMean('lease_ttl_ms', ['leaseTtlMs', 'app'])).toBe('leaseTtlMs');
    expect(didYouMean('stroage', ['storage', 'app'])).toBe('storage');
    expect(didYouMean('zzz', ['storage', 'app'])).toBeUndefined();
  });
});
