/** Multi-file writes made visible by a marker written last, and resume states verified on the way down. */
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createFsStore } from '../../src/storage/drivers/fs.js';
import type { ObjectStore, PutBody, PutOptions } from '../../src/storage/types.js';
import { listAll } from '../../src/storage/index.js';
import { downloadVerifiedState, mirrorDown, pruneStoredStates, uploadFolder } from '../../src/training/transfer.js';

let dir: string;
let store: ObjectStore;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'booth-transfer-'));
  store = createFsStore({ root: path.join(dir, 'store') });
});
afterAll(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

/** A store that records the order of puts and can fail the n-th one. */
function recording(inner: ObjectStore, failAt = -1): ObjectStore & { puts: string[] } {
  const puts: string[] = [];
  return Object.assign(Object.create(inner) as ObjectStore, {
    puts,
    async put(key: string, body: PutBody, options?: PutOptions) {
      if (puts.length === failAt) throw new Error('injected put failure');
      puts.push(key);
      return inner.put(key, body, options);
    },
  });
}

async function keys(prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const i of listAll(store, prefix)) out.push(i.key.slice(prefix.length));
  return out;
}

describe('uploadFolder', () => {
  it('writes its own marker last, listing size and SHA-256 of every file', async () => {
    const local = path.join(dir, 'model');
    await mkdir(path.join(local, 'unet'), { recursive: true });
    await writeFile(path.join(local, 'model_index.json'), '{}');
    await writeFile(path.join(local, 'unet', 'weights.safetensors'), Buffer.alloc(1000, 1));
    const s = recording(store);
    const r = await uploadFolder(s, local, 'm/', 42);
    expect(r).toEqual({ files: 2, bytes: 1002 });
    expect(s.puts).toEqual(['m/model_index.json', 'm/unet/weights.safetensors', 'm/COMPLETE']);
    const marker = JSON.parse(await readFile(path.join(dir, 'store', 'm', 'COMPLETE'), 'utf8')) as { step: number; files: Record<string, { size: number; sha256: string }> };
    expect(marker.step).toBe(42);
    expect(marker.files['unet/weights.safetensors']).toEqual({ size: 1000, sha256: expect.stringMatching(/^[0-9a-f]{64}$/) });
  });

  it('replacing a complete folder removes the old files the new version lacks, so the new marker verifies', async () => {
    const first = path.join(dir, 'state-v1');
    await mkdir(first, { recursive: true });
    await writeFile(path.join(first, 'a.bin'), 'old a');
    await writeFile(path.join(first, 'b.bin'), 'old b');
    await uploadFolder(store, first, 'replace/500/', 500);
    const second = path.join(dir, 'state-v2');
    await mkdir(second, { recursive: true });
    await writeFile(path.join(second, 'a.bin'), 'new a');
    await uploadFolder(store, second, 'replace/500/', 500);
    expect(await keys('replace/500/')).toEqual(['COMPLETE', 'a.bin']);
    const dest = path.join(dir, 'replace-down');
    await downloadVerifiedState(store, 'replace/500/', dest);
    expect(await readFile(path.join(dest, 'a.bin'), 'utf8')).toBe('new a');
  });

  it('uploads a trainer-written COMPLETE last and as it is; a failure midway leaves no marker', async () => {
    const local = path.join(dir, 'state5');
    await mkdir(local, { recursive: true });
    await writeFile(path.join(local, 'a.bin'), 'a');
    await writeFile(path.join(local, 'b.bin'), 'b');
    await writeFile(path.join(local, 'COMPLETE'), '{"step":5,"files":{}}');
    const failing = recording(store, 1);
    await expect(uploadFolder(failing, local, 's/5/')).rejects.toThrow(/injected/);
    expect(await keys('s/5/')).toEqual(['a.bin']);
    const ok = recording(store);
    await uploadFolder(ok, local, 's/5/');
    expect(ok.puts.at(-1)).toBe('s/5/COMPLETE');
    expect(await readFile(path.join(dir, 'store', 's', '5', 'COMPLETE'), 'utf8')).toBe('{"step":5,"files":{}}');
  });
});

describe('downloadVerifiedState', () => {
  it('downloads a state that matches its marker and refuses one that does not, leaving nothing behind', async () => {
    const local = path.join(dir, 'st');
    await mkdir(local, { recursive: true });
    await writeFile(path.join(local, 'w.bin'), Buffer.alloc(5000, 9));
    await uploadFolder(store, local, 'v/7/', 7);
    const dest = path.join(dir, 'down', '7');
    const marker = await downloadVerifiedState(store, 'v/7/', dest);
    expect(marker.step).toBe(7);
    expect((await readFile(path.join(dest, 'w.bin'))).length).toBe(5000);
    expect((await readdir(dest)).sort()).toEqual(['COMPLETE', 'w.bin']);

    await store.put('v/7/w.bin', Buffer.alloc(5000, 8));
    const dest2 = path.join(dir, 'down', '7b');
    await expect(downloadVerifiedState(store, 'v/7/', dest2)).rejects.toThrow(/w\.bin is 5000 bytes with SHA-256 .* the state is corrupt/);
    expect(await readdir(path.join(dir, 'down'))).toEqual(['7']);
  });

  it('refuses unsafe file names in a marker', async () => {
    await store.put('x/1/COMPLETE', JSON.stringify({ step: 1, files: { '../evil': { size: 1, sha256: '0'.repeat(64) } } }));
    await expect(downloadVerifiedState(store, 'x/1/', path.join(dir, 'evil'))).rejects.toThrow(/unsafe file name/);
  });
});

describe('pruneStoredStates', () => {
  it('keeps the newest complete states, deletes older ones and stale incomplete ones, never an upload in flight', async () => {
    for (const step of [5, 10, 15, 20]) {
      await store.put(`p/${step}/w.bin`, 'w');
      await store.put(`p/${step}/COMPLETE`, '{}');
    }
    await store.put('p/12/w.bin', 'partial'); // killed mid-upload long ago
    await store.put('p/25/w.bin', 'partial'); // being uploaded now
    const deleted = await pruneStoredStates(store, 'p/', 2);
    expect(deleted).toEqual([5, 10, 12]);
    expect(await keys('p/')).toEqual(['15/COMPLETE', '15/w.bin', '20/COMPLETE', '20/w.bin', '25/w.bin']);
  });
});

describe('mirrorDown', () => {
  it('downloads new and changed files and removes local files the store no longer has', async () => {
    await store.put('d/1.png', 'one');
    await store.put('d/1.txt', 'caption');
    const local = path.join(dir, 'mirror');
    expect(await mirrorDown(store, 'd/', local)).toEqual({ downloaded: 2, kept: 0, removed: 0 });
    await store.put('d/1.txt', 'new caption');
    await store.delete('d/1.png');
    await store.put('d/2.png', 'two');
    expect(await mirrorDown(store, 'd/', local)).toEqual({ downloaded: 2, kept: 0, removed: 1 });
    expect((await readdir(local)).sort()).toEqual(['1.txt', '2.png']);
    expect(await readFile(path.join(local, '1.txt'), 'utf8')).toBe('new caption');
  });
});
