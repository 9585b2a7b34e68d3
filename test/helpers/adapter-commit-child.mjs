// Child process of the SIGKILL tests (test/conformance/crash.ts).
//
//   node adapter-commit-child.mjs <adapter> <options-json> <generation> <keys> <value-bytes> [mode]
//
// Opens `<adapter>Adapter(options)` from the compiled dist/ (the code restartpoint ships), prints
// "committing" on the line before the write starts, "committed" after it resolves and "closed"
// after close() resolves, then waits to be killed. It exits by itself only when its stdin closes
// (the test runner went away), so a kill always finds it alive. Values must match
// generationValue() in crash.ts.
//
// mode "commit" (the default): one commit() of every key. mode "snapshot": releaseAreas() first
// (a restarted standby's rollback to its last snapshot), then the keys into area <generation> in
// ten writeArea() calls, "forming" on the line before formSnapshot(), which is the write that
// "committed" follows.
const [adapterName, optionsJson, genArg, keysArg, sizeArg, mode = 'commit'] = process.argv.slice(2);
if (sizeArg === undefined || (mode !== 'commit' && mode !== 'snapshot')) {
  process.stderr.write(
    'usage: adapter-commit-child.mjs <adapter> <options-json> <generation> <keys> <value-bytes> [commit|snapshot]\n',
  );
  process.exit(2);
}
const gen = Number(genArg);
const count = Number(keysArg);
const size = Number(sizeArg);

process.stdin.resume();
process.stdin.on('end', () => process.exit(0));

const mod = await import(new URL(`../../dist/adapters/${adapterName}/index.js`, import.meta.url).href);
const factory = mod[`${adapterName}Adapter`];
if (typeof factory !== 'function')
  throw new Error(`dist/adapters/${adapterName} exports no ${adapterName}Adapter`);
const adapter = factory(JSON.parse(optionsJson));
await adapter.open();
if (mode === 'snapshot') await adapter.releaseAreas();

const ops = [];
for (let i = 0; i < count; i++) {
  const key = `crash/${i}`;
  ops.push({ op: 'put', key, value: generationValue(gen, key, size) });
}
const meta = new TextEncoder().encode(`gen:${gen}`);

// Pipes to a parent are written synchronously on POSIX: the line is out before commit() starts.
process.stdout.write('committing\n');
if (mode === 'snapshot') {
  const step = Math.ceil(count / 10);
  for (let i = 0; i < count; i += step) await adapter.writeArea(gen, ops.slice(i, i + step));
  process.stdout.write('forming\n');
  await adapter.formSnapshot(gen, meta);
} else {
  await adapter.commit(ops, meta);
}
process.stdout.write('committed\n');
// Work queued behind the commit (a compaction, say) runs until close() resolves.
await adapter.close();
process.stdout.write('closed\n');
// Stays alive (stdin is open) until killed, so that every kill is a real kill.

/** `<gen>|<key>|` then a filler letter that changes with the generation, `size` bytes in all. */
function generationValue(g, key, n) {
  const out = Buffer.alloc(n, 97 + (g % 26));
  out.write(`${g}|${key}|`, 0, 'utf8');
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}
