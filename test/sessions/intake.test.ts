import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openStore, readAll } from '../../src/storage/index.js';
import type { ObjectStore } from '../../src/storage/types.js';
import { SessionStore } from '../../src/sessions/store.js';
import { addPhotos, displayName, expandPaths } from '../../src/sessions/intake.js';
import { noiseImage } from '../helpers/images.js';

describe('photo intake', () => {
  let dir: string;
  let store: ObjectStore;
  let sessions: SessionStore;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'booth-intake-'));
    store = await openStore(`file://${path.join(dir, 'store')}`);
    sessions = new SessionStore(store);
    await sessions.create({ name: 's', subject: { trigger: 'ohwx', classNoun: 'dog', kind: 'object' }, base: 'sd15' });
  });
  afterEach(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('stores originals by SHA-256, reports duplicates, rejects bad files and keeps going', async () => {
    const photos = path.join(dir, 'photos');
    await mkdir(photos);
    const good = await noiseImage(640, 600, 1);
    await writeFile(path.join(photos, 'a.jpg'), good);
    await writeFile(path.join(photos, 'b-copy.jpg'), good);
    await writeFile(path.join(photos, 'c.png'), await noiseImage(700, 700, 2, 'png'));
    await writeFile(path.join(photos, 'empty.jpg'), Buffer.alloc(0));
    await writeFile(path.join(photos, 'notes.jpg'), 'these are not pixels\n');
    await writeFile(path.join(photos, 'readme.txt'), 'skipped in folders: not an image extension');
    await writeFile(path.join(photos, '.DS_Store'), 'hidden');

    const results = await addPhotos(sessions, 's', [photos]);
    const by = Object.fromEntries(results.map((r) => [r.name, r]));
    expect(Object.keys(by).sort()).toEqual(['a.jpg', 'b-copy.jpg', 'c.png', 'empty.jpg', 'notes.jpg']);
    expect(by['a.jpg']?.outcome).toBe('added');
    expect(by['b-copy.jpg']).toMatchObject({ outcome: 'duplicate', reason: expect.stringContaining('a.jpg') });
    expect(by['c.png']?.outcome).toBe('added');
    expect(by['empty.jpg']).toMatchObject({ outcome: 'rejected', reason: expect.stringContaining('empty.jpg') });
    expect(by['notes.jpg']).toMatchObject({ outcome: 'rejected', reason: expect.stringContaining('notes.jpg') });

    const m = await sessions.get('s');
    expect(m.photos).toHaveLength(4);
    const a = m.photos.find((p) => p.name === 'a.jpg');
    expect(a?.key).toBe(`sessions/s/uploads/${a?.sha256}.jpg`);
    expect((await readAll(store, a?.key as string)).equals(good)).toBe(true);
    expect(m.photos.filter((p) => p.status === 'rejected').every((p) => p.key === null && p.reason)).toBe(true);

    // Adding the same folder again changes nothing.
    const again = await addPhotos(sessions, 's', [photos]);
    expect(again.filter((r) => r.outcome === 'added')).toHaveLength(0);
    expect((await sessions.get('s')).photos).toHaveLength(4);
  });

  it('treats hostile file names as display text only', async () => {
    const photos = path.join(dir, 'evil');
    await mkdir(photos);
    const names = ['..\\..\\win.jpg', 'bell\u0007ring.jpg', 'gpj.\u202Eexe.jpg', `${'long'.repeat(60)}.jpg`];
    for (const [i, n] of names.entries()) await writeFile(path.join(photos, n), await noiseImage(600, 600, 10 + i));
    const results = await addPhotos(sessions, 's', names.map((n) => path.join(photos, n)));
    expect(results.map((r) => r.outcome)).toEqual(['added', 'added', 'added', 'added']);
    const m = await sessions.get('s');
    for (const p of m.photos) {
      // eslint-disable-next-line no-control-regex
      expect(p.name).not.toMatch(/[\u0000-\u001f\u202a-\u202e]/);
      expect(p.key).toMatch(/^sessions\/s\/uploads\/[0-9a-f]{64}\.jpg$/);
    }
    expect(displayName('/x/y/../z.jpg')).toBe('z.jpg');
  });

  it('reports missing paths as skipped without stopping', async () => {
    const file = path.join(dir, 'ok.jpg');
    await writeFile(file, await noiseImage(600, 600, 3));
    const results = await addPhotos(sessions, 's', [path.join(dir, 'nope'), file]);
    expect(results.map((r) => r.outcome)).toEqual(['skipped', 'added']);
    expect(results[0]?.reason).toMatch(/no such file/);
    const { files } = await expandPaths([file, path.join(dir, 'nope')]);
    expect(files).toEqual([file]);
  });

  it('fails for a session that does not exist', async () => {
    await expect(addPhotos(sessions, 'missing', [dir])).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });
});
