import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileAdapter } from '../../adapters/file/index.js';
import { testCrashDuringCommit } from './crash.js';
import { testAdapter } from './suite.js';

const newDir = (): Promise<string> => mkdtemp(join(tmpdir(), 'rp-file-adapter-'));
const removeDir = (dir: string) => () => rm(dir, { recursive: true, force: true });

testAdapter('file', async () => {
  const dir = await newDir();
  return { adapter: fileAdapter({ dir }), reopen: async () => fileAdapter({ dir }), cleanup: removeDir(dir) };
});

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
