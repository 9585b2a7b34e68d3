import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileAdapter } from '../../adapters/file/index.js';
import { testCrashDuringCommit } from './crash.js';
import { testAdapter } from './suite.js';

// fsync: false keeps 100 000-key runs quick. fsync changes nothing a test can observe short of
// cutting the power (SIGKILL leaves the page cache intact); file-recovery.test.ts runs the
// default fsync: true.
const options = (dir: string) => ({ dir, fsync: false });
const newDir = (): Promise<string> => mkdtemp(join(tmpdir(), 'rp-file-adapter-'));
const removeDir = (dir: string) => () => rm(dir, { recursive: true, force: true });

testAdapter('file', async () => {
  const dir = await newDir();
  return {
    adapter: fileAdapter(options(dir)),
    reopen: async () => fileAdapter(options(dir)),
    cleanup: removeDir(dir),
  };
});

testCrashDuringCommit('file', async () => {
  const dir = await newDir();
  return {
    adapter: 'file',
    options: options(dir),
    open: async () => fileAdapter(options(dir)),
    // Which side of the commit point the kill landed on: a pending journal is replayed by open().
    inspect: async () => (await readdir(dir)).filter((n) => n.startsWith('journal')).join('+') || 'no journal',
    cleanup: removeDir(dir),
  };
});
