/**
 * The folder driver: the shared contract, plus what only a folder has (temporary files, empty
 * folders, names a folder cannot hold, files dropped in by hand).
 */
import { mkdir, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BoothError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { createFsStore } from '../../src/storage/drivers/fs.js';
import { readAll } from '../../src/storage/index.js';
import type { ObjectStore } from '../../src/storage/types.js';
import { patternStream, testStoreContract } from './contract.js';

async function tempDir(): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), 'booth-fs-store-'));
}

/** Every file and folder under `dir`, relative, for asserting on what is left on disk. */
async function tree(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.map((e) => path.relative(dir, path.join(e.parentPath, e.name)) + (e.isDirectory() ? '/' : '')).sort();
}

testStoreContract(
  'fs',
  async () => {
    const dir = await tempDir();
    return { store: createFsStore({ root: path.join(dir, 'root'), logger: silentLogger() }), cleanup: () => rm(dir, { recursive: true, force: true }) };
  },
  {
    // A root below a device file: every path operation fails with ENOTDIR, and nothing to clean up.
    broken: async () => createFsStore({ root: '/dev/null/booth-root', logger: silentLogger() }),
  },
);

describe('fs driver specifics', () => {
  let dir: string;
  let root: string;
  let store: ObjectStore;

  beforeEach(async () => {
    dir = await tempDir();
    root = path.join(dir, 'root');
    store = createFsStore({ root, logger: silentLogger() });
  });
  afterEach(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('names itself by the root file URL and lays keys out as folders', async () => {
    expect(store.url).toBe(pathToFileURL(root).href);
    await store.put('sessions/alice/session.json', '{}');
    expect(await tree(root)).toEqual(['sessions/', 'sessions/alice/', 'sessions/alice/session.json']);
  });

  it('resolves a relative root against the current folder', () => {
    expect(createFsStore({ root: 'booth-data' }).url).toBe(pathToFileURL(path.resolve('booth-data')).href);
  });

  it('leaves no temporary file after a failed or aborted put', async () => {
    await store.put('p/obj', 'previous');
    const failing = patternStream(300 * 1024, { chunkSize: 64 * 1024, then: new Error('boom') });
    await expect(store.put('p/obj', failing.stream)).rejects.toBeInstanceOf(BoothError);
    const hanging = patternStream(300 * 1024, { chunkSize: 64 * 1024, then: 'hang' });
    const controller = new AbortController();
    const put = store.put('p/obj', hanging.stream, { signal: controller.signal });
    await hanging.drained;
    // While the put is in flight its temporary file exists, hidden, next to the target.
    expect((await readdir(path.join(root, 'p'))).filter((n) => n.startsWith('.booth-tmp-'))).toHaveLength(1);
    controller.abort();
    await expect(put).rejects.toMatchObject({ name: 'AbortError' });
    expect(await tree(root)).toEqual(['p/', 'p/obj']);
  });

  it('ignores temporary files left by a crashed writer', async () => {
    await store.put('k/a', 'a');
    await writeFile(path.join(root, 'k', '.booth-tmp-0123456789abcdef'), 'half a write');
    await writeFile(path.join(root, '.booth-tmp-fedcba9876543210'), 'another');
    expect((await store.list('')).items.map((i) => i.key)).toEqual(['k/a']);
    expect((await store.list('k/.booth')).items).toEqual([]);
    await store.put('k/b', 'b');
    expect((await store.list('k/')).items.map((i) => i.key)).toEqual(['k/a', 'k/b']);
  });

  it('skips files a key cannot name and symbolic links', async () => {
    await store.put('ok', 'x');
    await writeFile(path.join(root, 'back\\slash'), 'x');
    await writeFile(path.join(root, 'ctrl\u0001'), 'x');
    await symlink(path.join(root, 'ok'), path.join(root, 'link'));
    await mkdir(path.join(root, 'empty-folder'));
    expect((await store.list('')).items.map((i) => i.key)).toEqual(['ok']);
  });

  it('removes folders emptied by delete, up to but not including the root', async () => {
    await store.put('a/b/c/d', 'x');
    await store.put('a/keep', 'x');
    await store.delete('a/b/c/d');
    expect(await tree(root)).toEqual(['a/', 'a/keep']);
    await store.delete('a/keep');
    expect(await tree(root)).toEqual([]);
    expect(await readdir(root)).toEqual([]);
  });

  it('explains that an object and a folder cannot share a name', async () => {
    await store.put('a', 'object a');
    await expect(store.put('a/b', 'x')).rejects.toThrow(/"a" is an object.*folder store cannot hold/);
    await store.put('x/y', 'inside x');
    await expect(store.put('x', 'x')).rejects.toThrow(/"x" is a folder of other objects/);
    await expect(store.copy('a', 'x')).rejects.toMatchObject({ code: 'STORAGE' });
    expect((await readAll(store, 'a')).toString()).toBe('object a');
    expect((await readAll(store, 'x/y')).toString()).toBe('inside x');
    expect(await tree(root)).toEqual(['a', 'x/', 'x/y']);
  });

  it('gives a new etag on every rewrite in a tight loop, and the same etag when nothing changed', async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 50; i++) {
      const info = await store.put('tight', i % 2 === 0 ? 'even' : 'odd!');
      expect(seen.has(info.etag), `rewrite ${i}`).toBe(false);
      seen.add(info.etag);
      expect((await store.head('tight'))?.etag).toBe(info.etag);
    }
  });

  it('reports missing objects under a file as missing', async () => {
    await store.put('file', 'x');
    expect(await store.head('file/below')).toBeNull();
    await expect(store.get('file/below')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await store.delete('file/below');
  });

  it('lists an empty or missing root as empty', async () => {
    expect(await store.list('')).toEqual({ items: [] });
    expect(await store.list('any/prefix/')).toEqual({ items: [] });
  });

  it('refuses to work after close', async () => {
    await store.close();
    await expect(store.put('x', 'x')).rejects.toThrow(/closed/);
    await expect(store.list('')).rejects.toThrow(/closed/);
  });

  it('rejects an empty root', () => {
    expect(() => createFsStore({ root: '' })).toThrow(/root/);
  });
});
