/** Fixtures for training tests: a prepared object session, and the stand-in trainer command. */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ObjectStore } from '../../src/storage/types.js';
import { SessionStore } from '../../src/sessions/store.js';
import { addPhotos } from '../../src/sessions/intake.js';
import { prepareSession } from '../../src/preprocess/pipeline.js';
import { noiseImage } from './images.js';

/** The protocol-exact stand-in trainer (test/fixtures/stand-in-trainer.mjs). */
export const STAND_IN = fileURLToPath(new URL('../fixtures/stand-in-trainer.mjs', import.meta.url));

/** The stand-in as a trainer command for the worker. */
export const standInCommand = (): string[] => [process.execPath, STAND_IN];

/**
 * Creates, fills and prepares an object session with `n` synthetic photos (no face models needed).
 * @returns the session store
 */
export async function preparedSession(store: ObjectStore, name: string, dir: string, n = 3): Promise<SessionStore> {
  const sessions = new SessionStore(store);
  const photos = path.join(dir, `${name}-photos`);
  await mkdir(photos, { recursive: true });
  for (let i = 0; i < n; i++) await writeFile(path.join(photos, `${i}.jpg`), await noiseImage(640, 480, 500 + i));
  await sessions.create({ name, subject: { trigger: 'zwx', classNoun: 'backpack', kind: 'object' }, base: 'sd15' });
  await addPhotos(sessions, name, [photos]);
  await prepareSession(sessions, name, { threads: 1 });
  return sessions;
}
