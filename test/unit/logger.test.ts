import { spawnSync } from 'node:child_process';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { createLogger, pinoLog } from '../../src/observability/logger.js';

/** A stream collecting what is written to it. */
function sink(): { stream: Writable; lines: () => Record<string, unknown>[] } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer | string, _enc, cb) {
      chunks.push(chunk.toString());
      cb();
    },
  });
  return {
    stream,
    lines: () =>
      chunks
        .join('')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

describe('pino logger', () => {
  it('writes one JSON line per SDK event with its level, message and fields', () => {
    const s = sink();
    const log = pinoLog(createLogger({ name: 'rp-test', level: 'debug', destination: s.stream }));
    log({
      level: 'info',
      msg: 'state transition',
      from: 'standby',
      to: 'primary',
      epoch: 3,
      reason: 'lease vacant',
    });
    log({ level: 'warn', msg: 'relay down', relay: 'nats://a:4222' });
    log({ level: 'debug', msg: 'applied', checkpoint: 9 });
    log({ level: 'error', msg: 'boom', err: new Error('disk full'), pid: 'their pid' });
    const lines = s.lines();
    expect(lines).toHaveLength(4);
    expect(lines[0]).toMatchObject({
      level: 30,
      name: 'rp-test',
      msg: 'state transition',
      from: 'standby',
      to: 'primary',
      epoch: 3,
      reason: 'lease vacant',
    });
    expect(typeof lines[0]!.time).toBe('number');
    expect(lines[1]).toMatchObject({ level: 40, msg: 'relay down', relay: 'nats://a:4222' });
    expect(lines[2]).toMatchObject({ level: 20, msg: 'applied', checkpoint: 9 });
    expect(lines[3]).toMatchObject({ level: 50, msg: 'boom', event_pid: 'their pid' });
    expect((lines[3]!.err as { message: string }).message).toBe('disk full');
    expect(lines[3]!.pid).toBe(process.pid);
  });

  it('drops events below the level and writes an unknown level as info', () => {
    const s = sink();
    const log = pinoLog(createLogger({ level: 'warn', destination: s.stream }));
    log({ level: 'info', msg: 'quiet' });
    log({ level: 'debug', msg: 'quieter' });
    log({ level: 'error', msg: 'loud' });
    expect(s.lines().map((l) => l.msg)).toEqual(['loud']);

    const t = sink();
    pinoLog(createLogger({ destination: t.stream }))({ level: 'notice' as 'info', msg: 'odd' });
    expect(t.lines()).toEqual([expect.objectContaining({ level: 30, msg: 'odd', event_level: 'notice' })]);
  });

  it('writes to stderr by default (the built module, in a child process)', () => {
    const built = fileURLToPath(new URL('../../dist/src/observability/logger.js', import.meta.url));
    const script =
      `import { createLogger, pinoLog } from ${JSON.stringify(built)};` +
      `pinoLog(createLogger({ name: 'cli' }))({ level: 'info', msg: 'hello', n: 1 });`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe('');
    expect(JSON.parse(r.stderr.trim())).toMatchObject({ level: 30, name: 'cli', msg: 'hello', n: 1 });
  });

  it('rejects bad options with errors naming the option', () => {
    expect(() => createLogger({ level: 'loud' })).toThrow(ConfigError);
    expect(() => createLogger({ level: 'loud' })).toThrow(/log\.level.*trace, debug, info/);
    expect(() => createLogger({ destination: -1 })).toThrow(/log\.destination/);
    expect(() => createLogger({ destination: {} as never })).toThrow(/log\.destination/);
    expect(() => pinoLog({} as never)).toThrow(/pino logger/);
  });
});
