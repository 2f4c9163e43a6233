import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

/**
 * `npm run test:reliability`: every reliability test, including the slow `*.slow.test.ts` runs
 * that CI leaves out (see docs/reliability.md). Files run one at a time so that fault timings
 * and the servers they start do not compete for the two CI cores.
 */
export default defineConfig({
  test: {
    root: fileURLToPath(new URL('../..', import.meta.url)),
    include: ['test/reliability/**/*.test.ts'],
    testTimeout: 180_000,
    hookTimeout: 180_000,
    maxWorkers: 1,
  },
});
