import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { booth, json, cliBuilt } from '../helpers/cli.js';
import { createFsStore } from '../../src/storage/index.js';
import { haveShared, readSafetensors, SD15_INLINE, sharedConfigs, shrink, writeDiffusersFolder } from './fixtures.js';

const built = cliBuilt('the export CLI tests');

describe.skipIf(!built)('booth convert / export / download', () => {
  let dir: string;
  let storeUrl: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'booth-export-cli-'));
    storeUrl = `file://${path.join(dir, 'store')}`;
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('converts a Diffusers folder on disk and prints SHA-256 and AutoV2', async () => {
    const folder = path.join(dir, 'sd1');
    await writeDiffusersFolder(folder, shrink(SD15_INLINE, 16));
    const out = path.join(dir, 'sd1.safetensors');
    const r = await booth(storeUrl, ['convert', folder, out, '--arch', 'sd1', '--json', '--trigger', 'ohwx man']);
    expect(r.code, r.stderr).toBe(0);
    const j = json<{ sha256: string; autov2: string; architecture: string; yaml: string | null }>(r.stdout);
    expect(j.autov2).toBe(j.sha256.slice(0, 10));
    expect(j.yaml).toBeNull();
    expect(readSafetensors(await readFile(out)).metadata['modelspec.trigger_phrase']).toBe('ohwx man');
    const human = await booth(storeUrl, ['convert', folder, out, '--arch', 'sd1']);
    expect(human.stdout).toMatch(/AutoV2: {2}[0-9a-f]{10}/);
  });

  it.skipIf(!haveShared)('writes the .yaml sidecar for SD 2.x v-prediction', async () => {
    const folder = path.join(dir, 'sd21');
    await writeDiffusersFolder(folder, shrink(await sharedConfigs('sd21'), 16));
    const r = await booth(storeUrl, ['convert', folder, path.join(dir, 'v.safetensors'), '--arch', 'sd2', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(json<{ predictionType: string }>(r.stdout).predictionType).toBe('v_prediction');
    expect(await readFile(path.join(dir, 'v.yaml'), 'utf8')).toMatch(/parameterization: "v"/);
  });

  it('usage errors exit 2; failures exit 1 with the reason and leave nothing behind', async () => {
    expect((await booth(storeUrl, ['convert', dir, path.join(dir, 'x.ckpt')])).code).toBe(2);
    expect((await booth(storeUrl, ['export', 'alice', '--step', 'x'])).code).toBe(2);
    const r = await booth(storeUrl, ['convert', path.join(dir, 'nope'), path.join(dir, 'x.safetensors')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no file or folder/);
    const empty = await booth(storeUrl, ['export', 'nobody', '--json']);
    expect(empty.code).toBe(1);
    expect(json<{ error: { code: string } }>(empty.stdout).error.code).toBe('NOT_FOUND');
    const step = await booth(storeUrl, ['export', 'nobody', '--step', '5']);
    expect(step.stderr).toMatch(/only the final model/);
    expect((await readdir(dir)).filter((n) => n.includes('booth-tmp'))).toEqual([]);
  });

  it('exports a run from the store and downloads it', async () => {
    const store = createFsStore({ root: path.join(dir, 'store') });
    const folder = path.join(dir, 'run-model');
    await writeDiffusersFolder(folder, shrink(SD15_INLINE, 16));
    for (const e of await readdir(folder, { withFileTypes: true, recursive: true })) {
      if (!e.isFile()) continue;
      const full = path.join(e.parentPath, e.name);
      await store.put(`sessions/bob/runs/20250101-000000-b0b0/model/${path.relative(folder, full).split(path.sep).join('/')}`, await readFile(full));
    }
    await store.put('sessions/bob/runs/20250101-000000-b0b0/spec.json', JSON.stringify({ base: { architecture: 'sd1', model: 'sd15' }, resolution: 512, mode: { type: 'full' } }));
    await store.put('sessions/bob/runs/20250101-000000-b0b0/model/COMPLETE', '');
    await store.close();
    const r = await booth(storeUrl, ['export', 'bob', '--name', 'bob-v1', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const rec = json<{ sha256: string; key: string }>(r.stdout);
    expect(rec.key).toBe('sessions/bob/exports/bob-v1.safetensors');
    const list = await booth(storeUrl, ['exports', 'bob']);
    expect(list.stdout).toMatch(/bob-v1/);
    const d = await booth(storeUrl, ['download', 'bob', 'bob-v1', dir, '--json']);
    expect(d.code, d.stderr).toBe(0);
    expect(json<{ sha256: string }>(d.stdout).sha256).toBe(rec.sha256);
    expect(existsSync(path.join(dir, 'bob-v1.safetensors'))).toBe(true);
  });
});
