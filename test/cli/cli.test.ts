import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { booth, json, cliBuilt } from '../helpers/cli.js';
import { noiseImage } from '../helpers/images.js';

const built = cliBuilt('the CLI tests');

describe.skipIf(!built)('booth CLI', () => {
  let dir: string;
  let store: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'booth-cli-'));
    store = `file://${path.join(dir, 'store')}`;
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('teaches with --help and exits 0', async () => {
    const r = await booth(store, ['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/booth session create/);
    const sub = await booth(store, ['prepare', '--help']);
    expect(sub.code).toBe(0);
    expect(sub.stdout).toMatch(/--framing/);
  });

  it('exits 2 on usage errors, naming the problem', async () => {
    const cases = [
      ['frobnicate'],
      ['session', 'create', 'x', '--class', 'man'],
      ['session', 'create', 'x', '--trigger', 'ohwx', '--class', 'man', '--kind', 'alien'],
      ['session', 'show', '../etc'],
      ['session', 'delete', 'x'],
    ];
    for (const args of cases) {
      const r = await booth(store, args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr.length, args.join(' ')).toBeGreaterThan(0);
    }
  });

  it('exits 1 on failures with a message (and JSON with --json)', async () => {
    const r = await booth(store, ['session', 'show', 'nobody']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/session "nobody" does not exist/);
    const j = await booth(store, ['session', 'show', 'nobody', '--json']);
    expect(j.code).toBe(1);
    expect(json<{ error: { code: string } }>(j.stdout).error.code).toBe('NOT_FOUND');
    const badStore = await booth('ftp://nope', ['session', 'list']);
    expect(badStore.code).toBe(1);
    expect(badStore.stderr).toMatch(/s3:\/\//);
  });

  it('runs create → add → prepare → show → export on an object session', async () => {
    const photos = path.join(dir, 'objects');
    await import('node:fs/promises').then((fs) => fs.mkdir(photos));
    for (let i = 0; i < 3; i++) await writeFile(path.join(photos, `${i}.jpg`), await noiseImage(800, 600, 100 + i));
    await writeFile(path.join(photos, 'broken.jpg'), 'not an image');

    const created = await booth(store, ['session', 'create', 'bag', '--trigger', 'zwx', '--class', 'backpack', '--kind', 'object', '--json']);
    expect(created.code).toBe(0);
    expect(json(created.stdout)).toMatchObject({ name: 'bag', settings: { resolution: 512 } });

    const added = await booth(store, ['add', 'bag', photos, '--json']);
    expect(added.code).toBe(0);
    expect(json(added.stdout)).toMatchObject({ summary: { added: 3, rejected: 1, duplicate: 0 } });

    const prepared = await booth(store, ['prepare', 'bag', '--json']);
    expect(prepared.code, prepared.stderr).toBe(0);
    expect(json(prepared.stdout)).toMatchObject({ counts: { accepted: 3, rejected: 1 } });

    const shown = json<{ photos: Array<Record<string, unknown>> }>((await booth(store, ['session', 'show', 'bag', '--json'])).stdout);
    expect(shown.photos).toHaveLength(4);
    for (const p of shown.photos) {
      for (const field of ['name', 'sha256', 'status', 'flags', 'reason', 'crop', 'face']) expect(p, field).toHaveProperty(field);
      expect(['accepted', 'excluded', 'rejected']).toContain(p.status);
    }
    const ok = shown.photos.filter((p) => p.status === 'accepted');
    for (const p of ok) {
      const crop = p.crop as { x: number; y: number; width: number; height: number };
      expect(crop.width).toBe(crop.height);
      expect(crop.x + crop.width).toBeLessThanOrEqual(800);
      expect(crop.y + crop.height).toBeLessThanOrEqual(600);
    }
    expect(shown.photos.find((p) => p.name === 'broken.jpg')).toMatchObject({ status: 'rejected', reason: expect.stringContaining('broken.jpg') });

    const out = path.join(dir, 'export');
    const exported = await booth(store, ['dataset', 'export', 'bag', out, '--json']);
    expect(exported.code, exported.stderr).toBe(0);
    const files = (await readdir(out)).sort();
    expect(files.filter((f) => f.endsWith('.png'))).toHaveLength(3);
    expect(files.filter((f) => f.endsWith('.txt'))).toHaveLength(3);
    const txt = files.find((f) => f.endsWith('.txt')) as string;
    expect(await readFile(path.join(out, txt), 'utf8')).toBe('photo of zwx backpack\n');
    const meta = (await readFile(path.join(out, 'metadata.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { text: string });
    expect(meta.every((m) => m.text === 'photo of zwx backpack')).toBe(true);

    // A folder with someone else's files is refused; exporting again into ours is fine.
    await writeFile(path.join(dir, 'other.txt'), 'x');
    expect((await booth(store, ['dataset', 'export', 'bag', dir])).code).toBe(1);
    expect((await booth(store, ['dataset', 'export', 'bag', out])).code).toBe(0);

    const review = path.join(dir, 'review');
    expect((await booth(store, ['review', 'bag', review])).code).toBe(0);
    expect((await readFile(path.join(review, 'contact-sheet.html'), 'utf8'))).toMatch(/broken\.jpg/);

    const listed = json<{ sessions: Array<{ name: string; state: string; accepted: number }> }>((await booth(store, ['session', 'list', '--json'])).stdout);
    expect(listed.sessions).toContainEqual(expect.objectContaining({ name: 'bag', state: 'prepared', accepted: 3 }));
  });

  it('photo exclude/include overrides survive the next prepare', async () => {
    const shown = json<{ photos: Array<{ name: string; status: string }> }>((await booth(store, ['session', 'show', 'bag', '--json'])).stdout);
    const first = shown.photos.find((p) => p.status === 'accepted')?.name as string;
    expect((await booth(store, ['photo', 'exclude', 'bag', first])).code).toBe(0);
    const after = json<{ photos: Array<{ name: string; status: string; reason: string | null }> }>((await booth(store, ['prepare', 'bag', '--json'])).stdout);
    expect(after.photos.find((p) => p.name === first)).toMatchObject({ status: 'excluded', reason: 'excluded by hand' });
    expect((await booth(store, ['photo', 'auto', 'bag', first])).code).toBe(0);
    expect((await booth(store, ['photo', 'include', 'bag', 'no-such-photo'])).code).toBe(1);
  });
});
