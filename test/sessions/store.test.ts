import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openStore, putJson } from '../../src/storage/index.js';
import type { ObjectStore } from '../../src/storage/types.js';
import { SessionStore, sessionKeys } from '../../src/sessions/store.js';

describe('SessionStore', () => {
  let dir: string;
  let store: ObjectStore;
  let sessions: SessionStore;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'booth-sessions-'));
    store = await openStore(`file://${dir}`);
    sessions = new SessionStore(store);
  });
  afterEach(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  const subject = { trigger: 'ohwx', classNoun: 'man', kind: 'person' as const };

  it('derives the resolution from the base model and identity from the kind', async () => {
    const a = await sessions.create({ name: 'a', subject, base: 'sd15' });
    const b = await sessions.create({ name: 'b', subject: { ...subject, kind: 'object', classNoun: 'dog' }, base: 'sdxl' });
    const c = await sessions.create({ name: 'c', subject, base: 'sd21' });
    expect([a.settings.resolution, b.settings.resolution, c.settings.resolution]).toEqual([512, 1024, 768]);
    expect(a.settings.identity).toBe('auto');
    expect(b.settings.identity).toBe('off');
    expect((await sessions.get('a')).subject).toEqual(subject);
  });

  it('refuses a taken name, a bad name and a bad trigger', async () => {
    await sessions.create({ name: 'a', subject, base: 'sd15' });
    await expect(sessions.create({ name: 'a', subject, base: 'sd15' })).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    for (const bad of ['../x', '', '.hidden', 'a/b', 'x'.repeat(65), 'tab\tname']) {
      await expect(sessions.create({ name: bad, subject, base: 'sd15' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    }
    await expect(sessions.create({ name: 'z', subject: { ...subject, trigger: 'oh\u202Ewx' }, base: 'sd15' })).rejects.toMatchObject({
      code: 'INVALID_MANIFEST',
      message: expect.stringContaining('subject.trigger'),
    });
  });

  it('lists sessions sorted and reports unreadable manifests without failing the list', async () => {
    await sessions.create({ name: 'zeta', subject, base: 'sd15' });
    await sessions.create({ name: 'alpha', subject, base: 'sd15' });
    await putJson(store, sessionKeys('broken').manifest, { version: 1, name: 'broken' });
    const all = await sessions.list();
    expect(all.map((s) => s.name)).toEqual(['alpha', 'broken', 'zeta']);
    expect(all[1]?.manifest).toBeNull();
    expect(all[1]?.error).toMatch(/manifest field/);
  });

  it('names the missing session and how to list them', async () => {
    await expect(sessions.get('nobody')).rejects.toMatchObject({ code: 'NOT_FOUND', message: expect.stringContaining('booth session list') });
  });

  it('update validates before writing, leaving the stored manifest intact on a bad change', async () => {
    await sessions.create({ name: 'a', subject, base: 'sd15' });
    await expect(
      sessions.update('a', (m) => {
        m.settings.resolution = 7;
        return m;
      }),
    ).rejects.toMatchObject({ code: 'INVALID_MANIFEST', message: expect.stringContaining('settings.resolution') });
    expect((await sessions.get('a')).settings.resolution).toBe(512);
  });

  it('delete removes every object of the session and nothing else', async () => {
    await sessions.create({ name: 'a', subject, base: 'sd15' });
    await sessions.create({ name: 'ab', subject, base: 'sd15' });
    await store.put(sessionKeys('a').upload('0'.repeat(64), 'jpg'), Buffer.from('x'));
    expect(await sessions.delete('a')).toBe(2);
    await expect(sessions.get('a')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect((await sessions.get('ab')).name).toBe('ab');
  });
});
