/**
 * Structured logs with pino: `createLogger` makes the JSON-lines logger of the sidecar and the
 * CLI (stderr by default), `pinoLog` turns one into the SDK's `log` option:
 *
 * ```ts
 * const logger = createLogger({ name: 'orders', level: 'info' });
 * await Restartpoint.start({ ..., log: pinoLog(logger) });
 * ```
 *
 * Each SDK `LogEvent` `{ level, msg, ...fields }` becomes one JSON line with `level`, `time`,
 * `msg` and the fields at the top level (docs/observability.md lists the events).
 */
import { pino, type DestinationStream, type Logger } from 'pino';
import { ConfigError } from '../errors.js';
import type { LogEvent } from '../types.js';

/** Levels `createLogger` accepts, least to most severe, and `silent`. */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Options of `createLogger`. */
export interface LoggerOptions {
  /** Least severe level written. Default `info`. */
  level?: string;
  /** Written as `name` on every line (e.g. `restartpoint-sidecar`). */
  name?: string;
  /**
   * Where lines go: a file descriptor, a writable stream or a pino destination. Default: stderr
   * (fd 2), written synchronously so nothing is lost when the process exits.
   */
  destination?: number | DestinationStream | NodeJS.WritableStream;
}

/** Fields of a `LogEvent` pino owns; an event's own value is kept under `event_<name>`. */
const RESERVED = new Set(['level', 'time', 'pid', 'hostname', 'name', 'msg']);

/** Whether `v` is one of `LOG_LEVELS`. */
export function isLogLevel(v: unknown): v is LogLevel {
  return typeof v === 'string' && (LOG_LEVELS as readonly string[]).includes(v);
}

/** A pino logger writing JSON lines (stderr unless `destination` says otherwise). */
export function createLogger(opts: LoggerOptions = {}): Logger {
  const level = opts.level ?? 'info';
  if (!isLogLevel(level)) {
    throw new ConfigError(
      'log.level',
      `must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(level)}`,
    );
  }
  if (opts.name !== undefined && (typeof opts.name !== 'string' || opts.name === '')) {
    throw new ConfigError('log.name', 'must be a non-empty string');
  }
  const d = opts.destination ?? 2;
  let dest: DestinationStream;
  if (typeof d === 'number') {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new ConfigError('log.destination', `must be a file descriptor (integer >= 0), got ${d}`);
    }
    dest = pino.destination({ dest: d, sync: true });
  } else if (d && typeof (d as { write?: unknown }).write === 'function') {
    dest = d as DestinationStream;
  } else {
    throw new ConfigError('log.destination', 'must be a file descriptor or a writable stream');
  }
  return pino({ level, ...(opts.name !== undefined ? { name: opts.name } : {}) }, dest);
}

/**
 * The SDK's `log` option writing to `logger`: one line per event at the event's level, the
 * event's fields at the top level. An unknown level is written as `info` with `event_level`.
 */
export function pinoLog(logger: Logger): (event: LogEvent) => void {
  if (!logger || typeof logger.info !== 'function' || typeof logger.child !== 'function') {
    throw new ConfigError('log', 'pinoLog needs a pino logger (createLogger() or pino())');
  }
  return (event: LogEvent) => {
    const fields: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(event)) {
      if (k === 'level' || k === 'msg') continue;
      fields[RESERVED.has(k) ? `event_${k}` : k] = v;
    }
    const msg = typeof event.msg === 'string' ? event.msg : String(event.msg);
    switch (event.level) {
      case 'debug':
        logger.debug(fields, msg);
        break;
      case 'info':
        logger.info(fields, msg);
        break;
      case 'warn':
        logger.warn(fields, msg);
        break;
      case 'error':
        logger.error(fields, msg);
        break;
      default:
        logger.info({ ...fields, event_level: String(event.level) }, msg);
    }
  };
}
