import { defineConfig } from 'vitest/config';

/**
 * `npm test` runs the suite in two lanes, two vitest processes side by side (scripts in
 * package.json: `test:lane:a`, `test:lane:b`), each running its files one at a time: the files
 * of one lane never overlap each other, and the two lanes together keep both cores busy while
 * most integration tests wait on leases, takeovers and servers. The lanes are balanced by
 * measured time. `RESTARTPOINT_TEST_LANE` unset: every file, one at a time (`npx vitest run`).
 */
const laneA = [
  'test/unit/**/*.test.ts',
  'test/conformance/**/*.test.ts',
  'test/integration/drill.test.ts',
  'test/integration/drill-chaos.test.ts',
  'test/integration/drill-store-loss.test.ts',
];
const all = ['test/**/*.test.ts'];

const lane = process.env.RESTARTPOINT_TEST_LANE;
if (lane !== undefined && lane !== '' && lane !== 'a' && lane !== 'b') {
  throw new Error(`RESTARTPOINT_TEST_LANE must be 'a', 'b' or unset, got ${JSON.stringify(lane)}`);
}

export default defineConfig({
  test: {
    include: lane === 'a' ? laneA : all,
    exclude: lane === 'b' ? ['**/node_modules/**', ...laneA] : ['**/node_modules/**'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    globalSetup: ['test/helpers/global-setup.ts'],
    fileParallelism: false,
  },
});
