import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { createS3Store, openStore, putJson } from '../../src/storage/index.js';
import type { ObjectStore } from '../../src/storage/types.js';
import { SessionStore, sessionKeys } from '../../src/sessions/store.js';
import { startS3rver, type S3rverHandle } from '../helpers/s3rver.js';

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

  it('create: of concurrent creates of one name exactly one wins, the others get ALREADY_EXISTS', async () => {
    const outcomes = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => sessions.create({ name: 'race', subject: { ...subject, trigger: `t${i}` }, base: 'sd15' })));
    const won = outcomes.filter((o) => o.status === 'fulfilled');
    expect(won).toHaveLength(1);
    for (const o of outcomes) if (o.status === 'rejected') expect(o.reason).toMatchObject({ code: 'ALREADY_EXISTS' });
    const stored = await sessions.get('race');
    expect(stored.subject.trigger).toBe((won[0] as PromiseFulfilledResult<{ subject: { trigger: string } }>).value.subject.trigger);
  });

  it('update: concurrent updates of different fields all survive, re-applied after conflicts', async () => {
    await sessions.create({ name: 'a', subject, base: 'sd15' });
    // Two stores on one folder, as two processes would have.
    const otherStore = await openStore(`file://${dir}`);
    const other = new SessionStore(otherStore);
    const edits = Array.from({ length: 8 }, (_, i) =>
      (i % 2 ? other : sessions).update('a', async (m) => {
        // Slow enough that the writers overlap.
        await new Promise((r) => setTimeout(r, 5));
        m.settings.captionTemplate = `${m.settings.captionTemplate} {${i}}`;
        return m;
      }),
    );
    await Promise.all(edits);
    const template = (await sessions.get('a')).settings.captionTemplate;
    for (let i = 0; i < 8; i++) expect(template).toContain(`{${i}}`);
    expect(sessions.conflictsRetried + other.conflictsRetried).toBeGreaterThan(0);
    await otherStore.close();
  });

  it('update with ifMatch applies only to that version; read returns the etag updateVersion wrote', async () => {
    await sessions.create({ name: 'a', subject, base: 'sd15' });
    const v1 = await sessions.read('a');
    const v2 = await sessions.updateVersion('a', (m) => ({ ...m, subject: { ...m.subject, trigger: 'sks' } }), { ifMatch: v1.etag });
    expect((await sessions.read('a')).etag).toBe(v2.etag);
    let calls = 0;
    await expect(
      sessions.update(
        'a',
        (m) => {
          calls++;
          return m;
        },
        { ifMatch: v1.etag, what: 'the rename' },
      ),
    ).rejects.toMatchObject({ code: 'PRECONDITION_FAILED', message: expect.stringMatching(/session "a" was changed.*the rename was not applied.*read the session again/) });
    expect(calls).toBe(0);
    expect((await sessions.get('a')).subject.trigger).toBe('sks');
    await expect(sessions.save(v1.manifest, { ifMatch: v1.etag })).rejects.toMatchObject({ code: 'PRECONDITION_FAILED' });
    expect((await sessions.get('a')).subject.trigger).toBe('sks');
  });

  it('update gives up with CONFLICT, saving nothing, when other writers win every attempt', async () => {
    await sessions.create({ name: 'a', subject, base: 'sd15' });
    const impatient = new SessionStore(store, { maxAttempts: 3 });
    let calls = 0;
    await expect(
      impatient.update('a', async (m) => {
        calls++;
        // Someone else writes between our read and our write, every time.
        await sessions.update('a', (x) => ({ ...x, settings: { ...x.settings, captionTemplate: `photo ${calls} of {trigger} {class}` } }));
        m.subject.trigger = 'never';
        return m;
      }),
    ).rejects.toMatchObject({ code: 'CONFLICT', message: expect.stringContaining('3 times') });
    expect(calls).toBe(3);
    expect(impatient.conflictsRetried).toBe(2);
    const m = await sessions.get('a');
    expect(m.subject.trigger).toBe('ohwx');
    expect(m.settings.captionTemplate).toBe('photo 3 of {trigger} {class}');
  });

  it('update refuses to rename a session and fails NOT_FOUND for a session deleted meanwhile', async () => {
    await sessions.create({ name: 'a', subject, base: 'sd15' });
    await expect(sessions.update('a', (m) => ({ ...m, name: 'b' }))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(sessions.get('b')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(
      sessions.update('a', async (m) => {
        await sessions.delete('a');
        return m;
      }),
    ).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(sessions.get('a')).rejects.toMatchObject({ code: 'NOT_FOUND' });
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

describe('SessionStore on an S3 store (s3rver)', () => {
  let server: S3rverHandle;
  const subject = { trigger: 'ohwx', classNoun: 'man', kind: 'person' as const };
  beforeAll(async () => {
    server = await startS3rver();
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('loses no concurrent update and lets one of two creates win, through If-Match / If-None-Match', async () => {
    const open = () => createS3Store({ bucket: server.bucket, prefix: 'sessions-test', endpoint: server.endpoint, credentials: server.credentials, logger: silentLogger() });
    const [s1, s2] = [await open(), await open()];
    try {
      const [a, b] = [new SessionStore(s1), new SessionStore(s2)];
      const created = await Promise.allSettled([a.create({ name: 's', subject, base: 'sd15' }), b.create({ name: 's', subject, base: 'sd15' })]);
      expect(created.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
      expect(created.find((o) => o.status === 'rejected')).toMatchObject({ reason: { code: 'ALREADY_EXISTS' } });
      await Promise.all(
        Array.from({ length: 6 }, (_, i) =>
          (i % 2 ? b : a).update('s', (m) => {
            m.settings.captionTemplate = `${m.settings.captionTemplate} {${i}}`;
            return m;
          }),
        ),
      );
      const template = (await a.get('s')).settings.captionTemplate;
      for (let i = 0; i < 6; i++) expect(template).toContain(`{${i}}`);
    } finally {
      await s1.close();
      await s2.close();
    }
  });
});
