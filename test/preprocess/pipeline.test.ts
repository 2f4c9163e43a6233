/**
 * prepare's cache and failure rules, in-process on generated photos: a damaged cached analysis is
 * recomputed rather than trusted or fatal, and a photo whose analysis fails in an unexpected way
 * is rejected with its name while the others are prepared.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openStore } from '../../src/storage/index.js';
import type { ObjectStore } from '../../src/storage/types.js';
import { SessionStore, sessionKeys } from '../../src/sessions/store.js';
import { addPhotos } from '../../src/sessions/intake.js';
import { prepareSession } from '../../src/preprocess/pipeline.js';
import { analysePhoto } from '../../src/preprocess/analyse.js';
import type { FaceDetector } from '../../src/preprocess/faces.js';
import { noiseImage } from '../helpers/images.js';

describe('prepare pipeline', () => {
  let dir: string;
  let store: ObjectStore;
  let sessions: SessionStore;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'booth-pipeline-'));
    store = await openStore(`file://${path.join(dir, 'store')}`);
    sessions = new SessionStore(store);
    await sessions.create({ name: 's', subject: { trigger: 'zwx', classNoun: 'thing', kind: 'object' }, base: 'sd15' });
    const files: string[] = [];
    for (let i = 0; i < 3; i++) {
      const f = path.join(dir, `p${i}.jpg`);
      await writeFile(f, await noiseImage(640, 560, 500 + i));
      files.push(f);
    }
    await addPhotos(sessions, 's', files);
  });
  afterEach(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('serves analyses from the cache, and recomputes a damaged one instead of failing', async () => {
    const first = await prepareSession(sessions, 's', { threads: 1 });
    expect(first.analysed).toBe(3);
    const again = await prepareSession(sessions, 's', { threads: 1 });
    expect(again.analysed).toBe(0);

    const victim = (await sessions.get('s')).photos[1]!;
    await store.put(sessionKeys('s').analysis(victim.sha256), '{"version": 1, "sha2');
    const repaired = await prepareSession(sessions, 's', { threads: 1 });
    expect(repaired.analysed).toBe(1);
    expect(repaired.photos.map((p) => [p.status, p.crop])).toEqual(first.photos.map((p) => [p.status, p.crop]));
  });

  it('turns an unexpected failure while analysing a photo into that photo\'s rejection', async () => {
    const bytes = await noiseImage(600, 600, 9);
    const broken: FaceDetector = {
      maxInputSide: 1024,
      detect: () => Promise.reject(new Error('kaboom')),
      dispose: () => {},
    };
    await expect(analysePhoto({ bytes, sha256: '0'.repeat(64), name: 'odd.jpg', targetSize: 512 }, broken)).rejects.toMatchObject({
      code: 'IMAGE_UNREADABLE',
      message: expect.stringMatching(/odd\.jpg.*kaboom/),
    });
  });
});
