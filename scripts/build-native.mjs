#!/usr/bin/env node
// Builds the ISA-L FEC addon (native/fec.c → native/build/Release/restartpoint_fec.node) with
// node-gyp. Run by `npm install` (the package's `install` script), by scripts/ensure-services.sh
// after it installed libisal-dev, and by `npm run build:native`.
//
// It never fails the install: without ISA-L's headers (Debian: libisal-dev), without node-gyp or
// a compiler, it prints one line saying what is missing and exits 0, and FEC falls back to
// @ronomon/reed-solomon (src/fec/isal.ts). `--force` rebuilds even when the addon is up to date;
// `--strict` exits 1 instead of falling back (CI can ask for it).
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dir = join(root, 'native');
const addon = join(dir, 'build', 'Release', 'restartpoint_fec.node');
const force = process.argv.includes('--force');
const strict = process.argv.includes('--strict');
const HEADER = '/usr/include/isa-l/erasure_code.h';

function giveUp(why, fix) {
  const line = `restartpoint: ISA-L FEC addon not built: ${why}. FEC falls back to @ronomon/reed-solomon. Fix: ${fix}`;
  console.error(line);
  process.exit(strict ? 1 : 0);
}

if (process.env.RESTARTPOINT_SKIP_NATIVE === '1') giveUp('RESTARTPOINT_SKIP_NATIVE=1', 'unset it');
if (process.platform !== 'linux' || process.arch !== 'x64') {
  giveUp(`${process.platform}/${process.arch} is not linux/x64`, 'none needed; the fallback is complete');
}
if (!existsSync(HEADER)) {
  giveUp(
    `${HEADER} is missing`,
    "install libisal-dev (Debian: sudo apt-get install libisal-dev), then 'npm run build:native'",
  );
}

const sources = ['fec.c', 'binding.gyp'].map((f) => join(dir, f));
if (!force && existsSync(addon)) {
  const built = statSync(addon).mtimeMs;
  if (sources.every((f) => statSync(f).mtimeMs <= built)) process.exit(0);
}

// node-gyp: the one npm runs scripts with, else the one bundled with npm next to this node.
const candidates = [
  process.env.npm_config_node_gyp,
  join(
    dirname(process.execPath),
    '..',
    'lib',
    'node_modules',
    'npm',
    'node_modules',
    'node-gyp',
    'bin',
    'node-gyp.js',
  ),
];
try {
  candidates.push(createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js'));
} catch {
  // not installed as a package: fine
}
const gyp = candidates.find((c) => c && existsSync(c));
if (!gyp)
  giveUp('node-gyp was not found', 'install npm (it bundles node-gyp) or run: npm install -g node-gyp');

// Headers from the local node installation, so no download is needed (none is reachable in CI).
const args = [gyp, 'rebuild'];
const local = join(dirname(process.execPath), '..');
const nodedir =
  process.env.npm_config_nodedir ||
  (existsSync(join(local, 'include', 'node', 'common.gypi')) ? local : undefined);
if (nodedir) args.push(`--nodedir=${nodedir}`);
try {
  execFileSync(process.execPath, args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
} catch (err) {
  const out = String(err.stderr ?? '')
    .split('\n')
    .filter((l) => /error/i.test(l))
    .slice(0, 3)
    .join(' | ');
  giveUp(
    `node-gyp failed (${out || err.message})`,
    'install g++, make and python3, then run npm run build:native',
  );
}
// Loading it proves libisal.so.2 is there at run time too.
try {
  const loaded = createRequire(import.meta.url)(addon);
  console.error(`restartpoint: built the ISA-L FEC addon (${loaded.xor} XOR kernel): ${addon}`);
} catch (err) {
  giveUp(
    `the built addon does not load (${err.message})`,
    'install libisal2 (Debian: sudo apt-get install libisal2)',
  );
}
