/**
 * What the commands share: flag parsers, the server-list rule, the app-name check and config
 * loading, each turning a bad value into a usage error (exit 2) with a hint. Commands import
 * this file, never `main.ts`.
 */
import { InvalidArgumentError as CommanderInvalidArgument } from 'commander';
import { loadConfig, type SidecarConfig } from '../config/load.js';
import { ConfigError, UsageError } from '../errors.js';
import { parseClusterKey, parseKeyMaterial, type ClusterKeys } from '../protocol/envelope.js';
import { APP_NAME_PATTERN } from '../protocol/subjects.js';
import { splitServers } from '../transport/inspect.js';

export { splitServers };

/** Parses an integer flag in [min, max]; commander turns the throw into a usage error. */
export function intFlag(name: string, min: number, max: number): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!/^-?\d+$/.test(v) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new CommanderInvalidArgument(`${name} must be an integer from ${min} to ${max}, got '${v}'`);
    }
    return n;
  };
}

/** Collects a repeatable flag (`--relay a --relay b`). */
export function repeatFlag(v: string, acc: string[]): string[] {
  return [...acc, v];
}

/** `--app`: a usage error unless it is a valid app name. */
export function checkAppName(app: string): string {
  if (!APP_NAME_PATTERN.test(app)) {
    throw new UsageError(`--app '${app}' is not a valid app name`, 'use 1-64 characters of [A-Za-z0-9_-]');
  }
  return app;
}

/**
 * A server-list flag (`--nats`, `--relay`), split by the one rule of `splitServers` (`|` or `,`
 * between servers). A usage error when it names no server.
 */
export function checkServers(flag: string, value: string): string[] {
  const list = splitServers(value);
  if (list.length === 0) {
    throw new UsageError(`${flag} '${value}' names no server`, `give a URL such as nats://127.0.0.1:4222`);
  }
  return list;
}

/** Loads a sidecar config file; a bad one is a usage error (exit 2) listing every problem. */
export function loadConfigFlag(path: string): SidecarConfig {
  try {
    return loadConfig(path);
  } catch (err) {
    if (err instanceof ConfigError) {
      throw new UsageError(
        err.message,
        'fix the config file (docs/config.md lists every field and its default)',
      );
    }
    throw err;
  }
}

/**
 * The cluster key of a signed stream for a reading command: `--key` (key id 0) first, else the
 * config file's `clusterKey`; `undefined` when neither is given. A bad key is a usage error.
 */
export function clusterKeysFlag(
  key: string | undefined,
  config: SidecarConfig | undefined,
): ClusterKeys | undefined {
  try {
    if (key !== undefined) return { keys: new Map([[0, parseKeyMaterial(key, '--key')]]), current: 0 };
    if (config?.clusterKey !== undefined) return parseClusterKey(config.clusterKey);
    return undefined;
  } catch (err) {
    if (err instanceof ConfigError) {
      throw new UsageError(err.message, 'give the cluster key as 64 hex digits or base64 of 32+ bytes');
    }
    throw err;
  }
}
