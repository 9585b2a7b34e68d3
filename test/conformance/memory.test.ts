import { memoryAdapter } from '../../adapters/memory/index.js';
import { testAdapter } from './suite.js';

const noStore = 'the store is a Map inside the process: nothing outside it can damage, restart or cut it off';

testAdapter('memory', async () => ({ adapter: memoryAdapter(), cleanup: async () => {} }), {
  gaps: {
    'a store wiped underneath is detected: StoreLostError on every call, or a verify mismatch': noStore,
    'a few keys lost underneath are detected, by the quick check too': noStore,
    'a server restart: an emptied store is lost on the next call; a kept one carries on': noStore,
    'a connection killed mid-commit: a retryable error at most, never a partial commit': noStore,
    'a store that stops answering: calls reject retryable within the timeouts, never hang': noStore,
  },
});
