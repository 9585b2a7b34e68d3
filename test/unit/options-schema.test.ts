import { describe, expect, it } from 'vitest';
import { memoryAdapter } from '../../adapters/memory/index.js';
import { ConfigSchema, ENV_OVERRIDES, FIELD_DOCS } from '../../src/config/index.js';
import { ConfigError, UsageError } from '../../src/errors.js';
import { LIMIT_RANGES } from '../../src/limits.js';
import { checkServers, splitServers } from '../../src/cli/flags.js';
import { OPTION_FIELDS, collectFields } from '../../src/sdk/option-schema.js';
import { resolveOptions } from '../../src/sdk/options.js';

const base = { app: 'ok', nats: { servers: 'nats://127.0.0.1:4222' }, storage: memoryAdapter() };

function configError(extra: object): ConfigError {
  try {
    resolveOptions({ ...base, ...extra } as never);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('the one options schema', () => {
  it('documents every field of the config file', () => {
    const undocumented = collectFields(ConfigSchema)
      // The elements of a list are documented by the list (`nats.servers[]` by `nats.servers`).
      .filter((f) => f.path !== '' && !f.path.endsWith('[]') && !f.doc)
      .map((f) => f.path);
    expect(undocumented).toEqual([]);
  });

  it('gives every limit of src/limits.ts a config field and a doc with its range', () => {
    for (const [name, [min, max]] of Object.entries(LIMIT_RANGES)) {
      expect(FIELD_DOCS[`limits.${name}`]?.must).toContain(`from ${min} to ${max}`);
    }
  });

  it('derives the RESTARTPOINT_* overrides from the fields marked env', () => {
    expect(ENV_OVERRIDES.map((o) => `${o.name} ${o.path} ${o.type}`).sort()).toEqual(
      [
        'RESTARTPOINT_APP app string',
        'RESTARTPOINT_NODE_ID nodeId string',
        'RESTARTPOINT_REUSE_NODE_ID reuseNodeId bool',
        'RESTARTPOINT_DATA_DIR dataDir string',
        'RESTARTPOINT_NATS_SERVERS nats.servers list',
        'RESTARTPOINT_NATS_USER nats.user string',
        'RESTARTPOINT_NATS_PASS nats.pass string',
        'RESTARTPOINT_NATS_TOKEN nats.token string',
        'RESTARTPOINT_STORAGE_KIND storage.kind string',
        'RESTARTPOINT_STORAGE_DIR storage.dir string',
        'RESTARTPOINT_STORAGE_URL storage.url string',
        'RESTARTPOINT_STORAGE_PREFIX storage.prefix string',
        'RESTARTPOINT_STORAGE_TABLE storage.table string',
        'RESTARTPOINT_MODE mode string',
        'RESTARTPOINT_LEASE_TTL_MS leaseTtlMs int',
        'RESTARTPOINT_VERIFY_STORE verifyStore string',
        'RESTARTPOINT_STORE_TIMEOUT_MS storeTimeoutMs int',
        'RESTARTPOINT_CHECKPOINT_TIMEOUT_MS checkpointTimeoutMs int',
        'RESTARTPOINT_CLUSTER_KEY clusterKey string',
        'RESTARTPOINT_CLUSTER_KEY_FILE clusterKeyFile string',
        'RESTARTPOINT_ENCRYPT encrypt bool',
        'RESTARTPOINT_API_PORT api.port int',
        'RESTARTPOINT_API_TOKEN api.token string',
        'RESTARTPOINT_API_TOKEN_FILE api.tokenFile string',
        'RESTARTPOINT_API_PORT_FILE api.portFile string',
        'RESTARTPOINT_LOG_LEVEL log.level string',
        'RESTARTPOINT_METRICS_ENABLED metrics.enabled bool',
      ].sort(),
    );
  });

  it('start() and the config file say the same thing about a field: what, the value, an example', () => {
    const err = configError({ leaseTtlMs: 5 });
    expect(err.option).toBe('leaseTtlMs');
    expect(err.message).toBe(
      "'leaseTtlMs' must be an integer from 100 to 600000 (milliseconds), got 5 — for example 2000",
    );
    expect(FIELD_DOCS.leaseTtlMs?.must).toBe('an integer from 100 to 600000 (milliseconds)');
    expect(configError({ relays: [{ servers: 'nats://r:4222', replicas: 2 }] }).option).toBe(
      'relays[0].replicas',
    );
    expect(configError({ apply: { everyMs: 1, evryMs: 2 } }).message).toMatch(
      /'apply.evryMs' is not a field of apply \(known: everyMs, maxBytesPerSec\)/,
    );
    expect(configError({ limits: { maxKeyBytes: 5000 } }).message).toMatch(
      /'limits.maxKeyBytes' must be an integer from 1 to 1024 bytes.*got 5000/,
    );
  });

  it('takes the defaults from the schema', () => {
    const o = resolveOptions(base);
    expect(o).toMatchObject({
      mode: 'delay-write',
      leaseTtlMs: 2000,
      checkpointTimeoutMs: 10_000,
      batchBytes: 256 * 1024,
      keyframeEvery: 32,
      encrypt: false,
      sidecar: true,
    });
    expect(Object.keys(OPTION_FIELDS)).toContain('leaseTtlMs');
  });
});

describe('server lists (cli/flags.ts)', () => {
  it('split on | or , alike, blanks ignored; a list of nothing is a usage error', () => {
    expect(splitServers('nats://a:4222|nats://b:4222')).toEqual(['nats://a:4222', 'nats://b:4222']);
    expect(splitServers(' nats://a:4222 , nats://b:4222,')).toEqual(['nats://a:4222', 'nats://b:4222']);
    expect(() => checkServers('--nats', ' | ')).toThrow(UsageError);
    expect(() => checkServers('--nats', ' | ')).toThrow(/--nats ' \| ' names no server/);
  });
});
