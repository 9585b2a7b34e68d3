import { memoryAdapter } from '../../adapters/memory/index.js';
import { testAdapter } from './suite.js';

testAdapter('memory', async () => ({ adapter: memoryAdapter(), cleanup: async () => {} }));
