// Child process of the history tests (test/integration/history-kill.test.ts): a standby node
// of the compiled dist/ (the code restartpoint ships) in a process of its own, so that a test can
// SIGKILL it (mid-build) or SIGSTOP it (a standby that falls behind) for real.
//
//   node history-child.mjs <options-json>
//
// The options are `Restartpoint.start` options as JSON plus `store`: "memory", or
// { "file": DIR }. Every log event goes to stdout as one JSON line; a `primary` line follows a
// takeover. The process lives until it is killed or its stdin closes (the test runner went away).
const [optionsJson] = process.argv.slice(2);
if (optionsJson === undefined) {
  process.stderr.write('usage: history-child.mjs <options-json>\n');
  process.exit(2);
}
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));

const dist = (p) => new URL(`../../dist/${p}`, import.meta.url).href;
const { Restartpoint } = await import(dist('src/index.js'));
const { memoryAdapter } = await import(dist('adapters/memory/index.js'));
const { fileAdapter } = await import(dist('adapters/file/index.js'));

const { store, ...options } = JSON.parse(optionsJson);
const storage = store === 'memory' ? memoryAdapter() : fileAdapter({ dir: store.file });
const line = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const rp = await Restartpoint.start({
  ...options,
  storage,
  initialState: () => ({ n: 0 }),
  log: (e) => line({ ev: 'log', ...e }),
});
line({ ev: 'primary', checkpoint: rp.resumedFrom?.checkpoint ?? 0, state: rp.state });
