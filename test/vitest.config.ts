import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    root: fileURLToPath(new URL('..', import.meta.url)),
    include: ['test/**/*.test.ts'],
    // The long fault, hostile-input and load runs live behind `npm run test:reliability`.
    exclude: ['**/node_modules/**', 'test/reliability/**/*.slow.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Face detection on the WASM backend and sharp both use all cores; running many heavy files
    // at once on a 2-core CI machine only adds contention.
    maxWorkers: 2,
  },
});
