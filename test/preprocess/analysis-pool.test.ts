/**
 * The worker-pool analyser must give the same analyses as the in-process one, and carry failures
 * back with their error code. Worker threads run the compiled dist/ (the TypeScript sources cannot
 * be loaded as a worker), so this suite needs `npm run build` first, which `npm test` does.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import type * as PoolModule from '../../src/preprocess/analysis-pool.js';

const dist = fileURLToPath(new URL('../../dist/preprocess/analysis-pool.js', import.meta.url));
const built = existsSync(dist);
if (!built) console.warn(`skipping analysis pool tests: ${dist} is missing; run \`npm run build\``);
const demo = (i: number) => fileURLToPath(new URL(`../../node_modules/@vladmandic/face-api/demo/sample${i}.jpg`, import.meta.url));

describe.skipIf(!built)('analysis pool (worker threads)', { timeout: 180_000 }, () => {
  it('gives the same analyses as in-process analysis and keeps error codes across threads', async () => {
    const { createAnalyser } = (await import(dist)) as typeof PoolModule;
    const inputs = await Promise.all(
      [1, 2, 3].map(async (i) => {
        const bytes = await readFile(demo(i));
        return { bytes, sha256: createHash('sha256').update(bytes).digest('hex'), name: `sample${i}.jpg`, targetSize: 512 };
      }),
    );
    const pool = await createAnalyser({ faces: true, threads: 2 });
    const local = await createAnalyser({ faces: true, threads: 1 });
    expect(pool.concurrency).toBe(2);
    expect(local.concurrency).toBe(1);
    try {
      const fromPool = await Promise.all(inputs.map((i) => pool.analyse(i)));
      for (const [k, input] of inputs.entries()) {
        const mine = await local.analyse(input);
        const theirs = fromPool[k]!;
        expect(theirs.analysis.sha256).toBe(input.sha256);
        expect(theirs.analysis.phash).toBe(mine.analysis.phash);
        expect(theirs.analysis.faces.length).toBe(mine.analysis.faces.length);
        expect(theirs.analysis.faces.length).toBeGreaterThanOrEqual(2);
        for (const [j, f] of theirs.analysis.faces.entries()) {
          const g = mine.analysis.faces[j]!;
          expect(Math.abs(f.box.x - g.box.x)).toBeLessThan(2);
          expect(f.descriptor).toHaveLength(128);
        }
        expect(theirs.preview.subarray(0, 2).toString('hex')).toBe('ffd8');
      }
      const bad = { bytes: Buffer.from('this is not an image'), sha256: '0'.repeat(64), name: 'notes.jpg', targetSize: 512 };
      await expect(pool.analyse(bad)).rejects.toMatchObject({ name: 'BoothError', code: 'IMAGE_UNREADABLE', message: expect.stringContaining('notes.jpg') });
    } finally {
      await pool.close();
      await local.close();
    }
  });

  it('does not start workers when they cannot pay for themselves', async () => {
    const { createAnalyser } = (await import(dist)) as typeof PoolModule;
    const objects = await createAnalyser({ faces: false });
    const few = await createAnalyser({ faces: true, photos: 2 });
    expect(objects.concurrency).toBe(1);
    expect(few.concurrency).toBe(1);
    await objects.close();
    await few.close();
  });
});
