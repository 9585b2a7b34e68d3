import { mkdtemp, readdir, rm, stat, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileAdapter } from '../../adapters/file/index.js';
import { testCrashDuringCommit } from './crash.js';
import { testAdapter } from './suite.js';

const newDir = (): Promise<string> => mkdtemp(join(tmpdir(), 'rp-file-adapter-'));
const removeDir = (dir: string) => () => rm(dir, { recursive: true, force: true });

/** The live log of the store in `dir`. */
async function liveLog(dir: string): Promise<string> {
  const logs = (await readdir(dir)).filter((n) => /^log-\d{10}$/.test(n)).sort();
  return join(dir, logs.at(-1)!);
}

testAdapter(
  'file',
  async () => {
    const dir = await newDir();
    return {
      adapter: fileAdapter({ dir }),
      reopen: async () => fileAdapter({ dir }),
      cleanup: removeDir(dir),
      faults: {
        // The files replaced: another store created in their place (new log, new token).
        wipe: async () => {
          for (const name of await readdir(dir)) await rm(join(dir, name), { force: true });
          const other = fileAdapter({ dir });
          await other.open();
          await other.close();
        },
        // A log cut short: the last records (the keys' latest values) are gone.
        deleteSome: async () => {
          const log = await liveLog(dir);
          await truncate(log, (await stat(log)).size - 100);
        },
      },
    };
  },
  {
    gaps: {
      'a server restart: an emptied store is lost on the next call; a kept one carries on':
        'no server: the log is a local file',
      'a connection killed mid-commit: a retryable error at most, never a partial commit':
        'no connection: the log is a local file (a killed process is the crash test)',
      'a store that stops answering: calls reject retryable within the timeouts, never hang':
        'no network: the log is a local file',
    },
  },
);

testCrashDuringCommit('file', async () => {
  const dir = await newDir();
  // A small compactBytes makes compactions run between the commits, so kills land in them too.
  const options = { dir, compactBytes: 8 * 1024 * 1024 };
  return {
    adapter: 'file',
    options,
    open: async () => fileAdapter(options),
    inspect: async () => (await readdir(dir)).filter((n) => n.startsWith('log-')).join(' + '),
    cleanup: removeDir(dir),
  };
});
