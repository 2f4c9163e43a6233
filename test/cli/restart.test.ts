/**
 * "Every step is idempotent and restartable": SIGKILL `booth add` and `booth prepare` at several
 * points (chosen by watching the store fill up), run the same command again, and compare the
 * result with an uninterrupted run: no duplicate, missing or corrupt record, same dataset bytes.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { booth, boothSpawn, json, cliBuilt } from '../helpers/cli.js';
import { noiseImage } from '../helpers/images.js';
import { listAll, openStore, readAll } from '../../src/storage/index.js';

const storeUrl = (root: string) => `file://${root}`;

const built = cliBuilt('the restart tests');

const PHOTOS = 10;

async function countFiles(dir: string, suffix: string): Promise<number> {
  try {
    return (await readdir(dir)).filter((f) => f.endsWith(suffix)).length;
  } catch {
    return 0;
  }
}

async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(full)));
    else out.push(full);
  }
  return out;
}

/** Start `booth args`, SIGKILL it once `ready()` holds (or it exits first); returns whether it was killed mid-run. */
async function killWhen(store: string, args: string[], ready: () => Promise<boolean>): Promise<boolean> {
  const child = boothSpawn(store, args);
  let exited = false;
  void child.then(() => (exited = true));
  while (!exited && !(await ready())) await new Promise((r) => setTimeout(r, 5));
  if (exited) return false;
  child.kill('SIGKILL');
  const r = await child;
  return r.signal === 'SIGKILL';
}

interface Shown {
  state: string;
  photos: Array<{ name: string; sha256: string; status: string; key: string | null; crop: unknown; flags: string[]; datasetKey: string | null; caption: string | null }>;
}

describe.skipIf(!built)('restart after SIGKILL', { timeout: 240_000 }, () => {
  let dir: string;
  let photos: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'booth-restart-'));
    photos = path.join(dir, 'photos');
    await mkdir(photos);
    for (let i = 0; i < PHOTOS; i++) await writeFile(path.join(photos, `p${String(i).padStart(2, '0')}.jpg`), await noiseImage(600, 520, 1000 + i));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function fresh(name: string) {
    const root = path.join(dir, name);
    const store = `file://${root}`;
    expect((await booth(store, ['session', 'create', 's', '--trigger', 'zwx', '--class', 'thing', '--kind', 'object'])).code).toBe(0);
    return { root, store, session: path.join(root, 'sessions', 's') };
  }

  async function show(store: string): Promise<Shown> {
    const r = await booth(store, ['session', 'show', 's', '--json']);
    expect(r.code, r.stderr).toBe(0);
    return json<Shown>(r.stdout);
  }

  let reference: Shown;
  let referenceDataset: Map<string, string>;

  /** The dataset as the store shows it (a killed write's temp file on disk is not part of it). */
  async function datasetBytes(root: string): Promise<Map<string, string>> {
    const objects = await openStore(storeUrl(root));
    const out = new Map<string, string>();
    try {
      for await (const info of listAll(objects, 'sessions/s/dataset/')) out.set(info.key, (await readAll(objects, info.key)).toString('base64'));
    } finally {
      await objects.close();
    }
    return out;
  }

  it('an uninterrupted run gives the reference result', async () => {
    const { root, store } = await fresh('reference');
    expect((await booth(store, ['add', 's', photos])).code).toBe(0);
    expect((await booth(store, ['prepare', 's'])).code).toBe(0);
    reference = await show(store);
    referenceDataset = await datasetBytes(root);
    expect(reference.photos.filter((p) => p.status === 'accepted')).toHaveLength(PHOTOS);
    expect(referenceDataset.size).toBe(PHOTOS * 2);
  });

  for (const killAt of [1, 6]) {
    it(`add killed after ${killAt} stored photo(s), then prepare killed twice, finishes identically on re-run`, async () => {
      const { root, store, session } = await fresh(`kill-${killAt}`);
      const uploads = path.join(session, 'uploads');
      const killedAdd = await killWhen(store, ['add', 's', photos], async () => (await countFiles(uploads, '.jpg')) >= killAt);
      expect(killedAdd).toBe(true);
      // The manifest is valid and names only stored photos.
      const mid = await show(store);
      expect(mid.photos.length).toBeLessThan(PHOTOS);
      for (const p of mid.photos) expect(existsSync(path.join(root, p.key as string))).toBe(true);

      const again = await booth(store, ['add', 's', photos, '--json']);
      expect(again.code).toBe(0);
      const summary = json<{ summary: { added: number; duplicate: number } }>(again.stdout).summary;
      expect(summary.added + summary.duplicate).toBe(PHOTOS);

      // Kill prepare in the analysis phase, then in the dataset phase.
      const analysis = path.join(session, 'cache', 'analysis');
      const dataset = path.join(session, 'dataset');
      expect(await killWhen(store, ['prepare', 's'], async () => (await countFiles(analysis, '.json')) >= Math.min(killAt + 2, PHOTOS - 1))).toBe(true);
      expect((await show(store)).state).toBe('created');
      expect(await killWhen(store, ['prepare', 's'], async () => (await countFiles(dataset, '.png')) >= killAt)).toBe(true);
      const finished = await booth(store, ['prepare', 's']);
      expect(finished.code, finished.stderr).toBe(0);

      const result = await show(store);
      expect(result.state).toBe('prepared');
      const strip = (s: Shown) => s.photos.map(({ name, sha256, status, crop, flags, datasetKey, caption }) => ({ name, sha256, status, crop, flags, datasetKey, caption }));
      expect(strip(result)).toEqual(strip(reference));
      expect(new Set(result.photos.map((p) => p.sha256)).size).toBe(PHOTOS);
      const bytes = await datasetBytes(root);
      expect([...bytes.keys()]).toEqual([...referenceDataset.keys()]);
      for (const [k, v] of bytes) expect(v, k).toBe(referenceDataset.get(k));
      // A write killed midway may leave its temp file on disk, but the store never shows it, and
      // every object it lists is whole (each listed file is one the store renamed into place).
      const objects = await openStore(storeUrl(root));
      const listed: string[] = [];
      for await (const info of listAll(objects, '')) listed.push(info.key);
      await objects.close();
      expect(listed.filter((k) => k.includes('.booth-tmp'))).toEqual([]);
      const onDisk = (await walk(root)).filter((f) => !path.basename(f).startsWith('.booth-tmp')).map((f) => path.relative(root, f).split(path.sep).join('/'));
      expect(listed.sort()).toEqual(onDisk.sort());
    });
  }
});
