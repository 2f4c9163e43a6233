/**
 * The folder driver: the shared contract, plus what only a folder has (temporary files, empty
 * folders, names a folder cannot hold, files dropped in by hand), and its per-key write locks
 * across processes: conditional writes from several processes, and locks left by a writer that
 * was killed while holding one. The child processes run the built driver (`dist/`, as the CLI
 * tests do; `npm test` builds first).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
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

/** The built driver, which the child processes load (they cannot run the TypeScript sources). */
const DIST_FS = fileURLToPath(new URL('../../dist/storage/drivers/fs.js', import.meta.url));
const DIST_INDEX = fileURLToPath(new URL('../../dist/storage/index.js', import.meta.url));
const built = existsSync(DIST_FS) && existsSync(DIST_INDEX);
if (!built) console.warn(`skipping the cross-process fs store tests: ${DIST_FS} is missing; run \`npm run build\``);

/**
 * The child's program. `count <root> <key> <n>`: n read-modify-write increments of a counter,
 * retrying on PRECONDITION_FAILED; prints `{"retries":…}`. `hold <root> <key> <ifMatch|-> <host|->`:
 * a put whose commit (the rename) stops, with the key's lock held, until a line arrives on stdin;
 * prints `holding` when it stops; `host` makes its lock look as if taken on another machine.
 */
const CHILD = `
import fsp from 'node:fs/promises';
import os from 'node:os';
import { syncBuiltinESMExports } from 'node:module';
const [mode, root, key, a, b] = process.argv.slice(1);
if (mode === 'hold') {
  const realRename = fsp.rename;
  let stopped = false;
  fsp.rename = (from, to) => {
    if (stopped) return realRename(from, to);
    stopped = true;
    process.stdout.write('holding\\n');
    return new Promise((resolve, reject) => process.stdin.once('data', () => realRename(from, to).then(resolve, reject)));
  };
  if (b !== '-') os.hostname = () => b;
  syncBuiltinESMExports();
}
const { createFsStore } = await import(${JSON.stringify(pathToFileURL(DIST_FS).href)});
const { readAll } = await import(${JSON.stringify(pathToFileURL(DIST_INDEX).href)});
const store = createFsStore({ root });
if (mode === 'count') {
  let retries = 0;
  for (let i = 0; i < Number(a); i++) {
    for (;;) {
      const info = await store.head(key);
      const n = Number((await readAll(store, key)).toString());
      try {
        await store.put(key, String(n + 1), { ifMatch: info.etag });
        break;
      } catch (err) {
        if (err.code !== 'PRECONDITION_FAILED') throw err;
        retries++;
      }
    }
  }
  process.stdout.write(JSON.stringify({ retries }) + '\\n');
} else {
  await store.put(key, 'child', a === '-' ? {} : { ifMatch: a });
  process.stdout.write('committed\\n');
  process.exit(0);
}
`;

describe.skipIf(!built)('fs driver locks across processes', () => {
  let dir: string;
  let root: string;
  let store: ObjectStore;
  const children: ChildProcess[] = [];

  /** Start the child program; resolves with it once it printed `until` (or at once). */
  function child(args: string[]): { proc: ChildProcess; output: Promise<string>; printed: (line: string) => Promise<void> } {
    const proc = spawn(process.execPath, ['--input-type=module', '-e', CHILD, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    children.push(proc);
    let out = '';
    let err = '';
    const waiters: Array<{ line: string; resolve: () => void }> = [];
    proc.stdout?.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      for (const w of waiters) if (out.includes(`${w.line}\n`)) w.resolve();
    });
    proc.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
    const output = new Promise<string>((resolve, reject) =>
      proc.once('exit', (code, signal) => (code === 0 ? resolve(out) : reject(new Error(`child exited ${code ?? signal}: ${err}`)))),
    );
    // Children killed on purpose exit non-zero: that is only an error for a test that awaits the output.
    output.catch(() => undefined);
    const printed = (line: string): Promise<void> =>
      new Promise((resolve, reject) => {
        if (out.includes(`${line}\n`)) resolve();
        else waiters.push({ line, resolve });
        proc.once('exit', () => reject(new Error(`child exited before printing "${line}": ${err}`)));
      });
    return { proc, output, printed };
  }

  async function killed(proc: ChildProcess): Promise<void> {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((resolve) => proc.once('exit', resolve));
    proc.kill('SIGKILL');
    await exited;
  }

  const lockFiles = async (folder: string): Promise<string[]> => (await readdir(folder)).filter((n) => n.startsWith('.booth-tmp-lock-'));

  beforeEach(async () => {
    dir = await tempDir();
    root = path.join(dir, 'root');
    store = createFsStore({ root, logger: silentLogger() });
  });
  afterEach(async () => {
    for (const proc of children.splice(0)) await killed(proc);
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('loses no increment when two processes read-modify-write one object with ifMatch', async () => {
    await store.put('shared/counter', '0');
    const perChild = 60;
    const runs = [child(['count', root, 'shared/counter', String(perChild)]), child(['count', root, 'shared/counter', String(perChild)])];
    const outputs = await Promise.all(runs.map((r) => r.output));
    const retries = outputs.reduce((sum, o) => sum + (JSON.parse(o) as { retries: number }).retries, 0);
    expect(Number((await readAll(store, 'shared/counter')).toString())).toBe(2 * perChild);
    expect(await lockFiles(path.join(root, 'shared'))).toEqual([]);
    console.log(`[reliability] fs cross-process counter: ${2 * perChild} increments from 2 processes, ${2 * perChild} counted, ${retries} conflicts retried`);
  });

  it('makes a conditional put wait for another process that holds the key, then judge the new version', async () => {
    const v0 = await store.put('k/m.json', 'v0');
    const holder = child(['hold', root, 'k/m.json', v0.etag, '-']);
    await holder.printed('holding');
    // The lock is held and, like the temporary files, invisible to list.
    expect(await lockFiles(path.join(root, 'k'))).toHaveLength(1);
    expect((await store.list('')).items.map((i) => i.key)).toEqual(['k/m.json']);
    let settled = false;
    const mine = store.put('k/m.json', 'parent', { ifMatch: v0.etag }).finally(() => (settled = true));
    mine.catch(() => undefined);
    // Give the waiting put ample chances to (wrongly) go ahead while the other process holds the lock.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(settled).toBe(false);
    holder.proc.stdin?.write('go\n');
    await holder.output;
    await expect(mine).rejects.toMatchObject({ code: 'PRECONDITION_FAILED' });
    expect((await readAll(store, 'k/m.json')).toString()).toBe('child');
    expect(await lockFiles(path.join(root, 'k'))).toEqual([]);
  });

  it('breaks at once a lock whose owner was killed (pid dead on this host)', async () => {
    const v0 = await store.put('k/m.json', 'v0');
    const holder = child(['hold', root, 'k/m.json', '-', '-']);
    await holder.printed('holding');
    await killed(holder.proc);
    expect(await lockFiles(path.join(root, 'k'))).toHaveLength(1);
    // The killed writer never renamed: the object is still v0, and a conditional put on it succeeds.
    const v1 = await store.put('k/m.json', 'after the crash', { ifMatch: v0.etag });
    expect((await readAll(store, 'k/m.json')).toString()).toBe('after the crash');
    expect((await store.head('k/m.json'))?.etag).toBe(v1.etag);
    expect(await lockFiles(path.join(root, 'k'))).toEqual([]);
    expect((await store.list('')).items.map((i) => i.key)).toEqual(['k/m.json']);
    await store.delete('k/m.json');
    expect(await store.head('k/m.json')).toBeNull();
  });

  it('breaks a lock held past the stale bound by a process on another host', async () => {
    await store.put('k/m.json', 'v0');
    const holder = child(['hold', root, 'k/m.json', '-', 'some-other-host']);
    await holder.printed('holding');
    const impatient = createFsStore({ root, logger: silentLogger(), staleLockMs: 400 });
    await impatient.put('k/m.json', 'broke through');
    expect((await readAll(store, 'k/m.json')).toString()).toBe('broke through');
    expect(await lockFiles(path.join(root, 'k'))).toEqual([]);
    await impatient.close();
  });

  it('breaks an empty lock left by a writer that died before filling it', async () => {
    await store.put('k/m.json', 'v0');
    const impatient = createFsStore({ root, logger: silentLogger(), staleLockMs: 300 });
    // Same name the driver uses: created by a put that is held, then emptied as a crash would leave it.
    const holder = child(['hold', root, 'k/m.json', '-', '-']);
    await holder.printed('holding');
    const [lock] = await lockFiles(path.join(root, 'k'));
    await killed(holder.proc);
    await writeFile(path.join(root, 'k', lock as string), '');
    await impatient.put('k/m.json', 'v1');
    expect((await readAll(store, 'k/m.json')).toString()).toBe('v1');
    expect(await lockFiles(path.join(root, 'k'))).toEqual([]);
    await impatient.close();
  });

  it('rejects a non-positive stale bound', () => {
    expect(() => createFsStore({ root, staleLockMs: 0 })).toThrow(/staleLockMs/);
  });
});
