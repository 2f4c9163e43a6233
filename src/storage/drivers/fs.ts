/**
 * The folder driver, Booth's default store (`./booth-data`): each key is a file under the root,
 * its `/` segments are folders. Writes are atomic the POSIX way: the body goes to a hidden
 * temporary file in the target's own folder (`.booth-tmp-<random>`, same file system, so the
 * rename cannot turn into a copy), the file is fsynced, renamed over the target and the folder is
 * fsynced, so after a crash a reader finds the old object or the whole new one. A put that fails
 * or is aborted removes its temporary file; one killed outright leaves it behind, invisible to
 * `list` and harmless. Entity tags are derived from inode, size and a microsecond modification
 * time that `put` stamps itself and keeps strictly increasing per key (see {@link FsStoreOptions}),
 * so they change whenever the content changes without ever reading the content. Left out: file
 * locking (each key has one writer by design), following symbolic links in listings, and storing a
 * key next to a folder of the same name (`a` and `a/b`), which a file system cannot hold.
 */
import { randomBytes, createHash } from 'node:crypto';
import { constants as fsConstants, type BigIntStats } from 'node:fs';
import { copyFile, lstat, mkdir, open, readdir, rename, rm, rmdir, stat, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { addAbortSignal, Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { BoothError, errorMessage } from '../../errors.js';
import { createLogger, type Logger } from '../../log.js';
import { assertValidKey, assertValidPrefix, compareKeys, isValidKey, RESERVED_SEGMENT_PREFIX } from '../keys.js';
import type { GetOptions, ListOptions, ListPage, ObjectInfo, ObjectStore, PutBody, PutOptions } from '../types.js';
import { assertBody, checkCursor, checkLimit, checkRange, closedError } from './shared.js';

/** Options of {@link createFsStore}. */
export interface FsStoreOptions {
  /**
   * The folder holding the objects. Resolved against the current directory when relative (the
   * caller, usually `openStore`, decides the default `./booth-data`). Created on the first put.
   */
  root: string;
  /** Logger for best-effort steps that fail without failing the operation. Default: stderr, `warn`. */
  logger?: Logger;
}

/** Error codes that mean "no object at this key". */
const MISSING = new Set(['ENOENT', 'ENOTDIR']);

/**
 * Open a folder as an object store.
 *
 * A stream body passed to `put` is consumed, or destroyed when the put fails or is aborted. An
 * abort that arrives after the rename (the commit point) has no effect: the put resolves.
 *
 * @param options - see {@link FsStoreOptions}
 * @returns an {@link ObjectStore} whose `url` is the root's `file://` URL
 * @throws BoothError `INVALID_ARGUMENT` when `root` is empty
 * @example
 * const store = createFsStore({ root: path.resolve('booth-data') });
 * await store.put('sessions/alice/session.json', '{}', { contentType: 'application/json' });
 */
export function createFsStore(options: FsStoreOptions): ObjectStore {
  if (typeof options.root !== 'string' || options.root === '') {
    throw new BoothError('INVALID_ARGUMENT', 'createFsStore: option "root" must be a folder path, e.g. "./booth-data"');
  }
  const root = path.resolve(options.root);
  const url = pathToFileURL(root).href;
  const logger = options.logger ?? createLogger();
  let closed = false;

  const pathOf = (key: string): string => path.join(root, ...key.split('/'));

  function checkOpen(): void {
    if (closed) throw closedError(url);
  }

  /** Wrap a file-system error, naming what was done to which key and what a person can do. */
  function storageError(op: string, subject: string, err: unknown): BoothError {
    if (err instanceof BoothError) return err;
    const code = (err as NodeJS.ErrnoException).code;
    const hint =
      code === 'EACCES' || code === 'EPERM'
        ? `; check that this process may write to ${root}`
        : code === 'ENOSPC' || code === 'EDQUOT'
          ? '; the disk is full, free some space'
          : code === 'ENAMETOOLONG'
            ? '; the path is too long for this file system, use a shorter root or key'
            : '';
    return new BoothError('STORAGE', `${op} of ${subject} in ${url} failed: ${errorMessage(err)}${hint}`, { cause: err });
  }

  /** A key that a folder cannot hold next to the existing ones (`a` and `a/b`). */
  function conflict(key: string, other: string, err?: unknown): BoothError {
    const what = other === key ? `"${key}" is a folder of other objects` : `"${other}" is an object`;
    return new BoothError(
      'STORAGE',
      `cannot store key "${key}" in ${url}: ${what}, and a folder store cannot hold an object and a folder of the same ` +
        'name; choose keys where no key is the folder of another, or use an s3:// store',
      err === undefined ? undefined : { cause: err },
    );
  }

  /** The first ancestor of `key` that exists as a file, for a clear conflict message. */
  async function fileAncestor(key: string): Promise<string | undefined> {
    const segments = key.split('/');
    for (let i = 1; i < segments.length; i++) {
      const ancestor = segments.slice(0, i).join('/');
      const st = await lstat(pathOf(ancestor)).catch(() => undefined);
      if (st && !st.isDirectory()) return ancestor;
    }
    return undefined;
  }

  /** Open a fresh temporary file next to the target, creating the folders it needs. */
  async function openTemp(key: string): Promise<{ dir: string; tmp: string; fh: FileHandle }> {
    const dir = path.dirname(pathOf(key));
    // A concurrent delete may remove a folder it just emptied between our mkdir and open (or in
    // the middle of a recursive mkdir); both then fail with ENOENT, and trying again is right.
    for (let attempt = 1; ; attempt++) {
      try {
        await mkdir(dir, { recursive: true });
        const tmp = path.join(dir, `${RESERVED_SEGMENT_PREFIX}${randomBytes(8).toString('hex')}`);
        return { dir, tmp, fh: await open(tmp, 'wx', 0o666) };
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' && attempt < 5) continue;
        if (code === 'EEXIST' || code === 'ENOTDIR') {
          const ancestor = await fileAncestor(key);
          if (ancestor !== undefined) throw conflict(key, ancestor, err);
        }
        throw storageError('put', `key "${key}"`, err);
      }
    }
  }

  /**
   * Give the temporary file a modification time that is precise to the microsecond and later
   * than the current object's, so that the etag (which hashes it) differs from every earlier
   * version even when the kernel's coarse clock has not ticked or an inode number was reused.
   */
  async function stampMtime(fh: FileHandle, target: string): Promise<BigIntStats> {
    const previous = await lstat(target, { bigint: true }).catch(() => undefined);
    const floor = previous ? previous.mtimeNs + 1_000n : 0n;
    let wanted = preciseNowNs();
    if (wanted < floor) wanted = floor;
    await fh.utimes(nsToSeconds(wanted), nsToSeconds(wanted));
    let st = await fh.stat({ bigint: true });
    if (previous && st.mtimeNs <= previous.mtimeNs) {
      // The file system keeps coarser timestamps than we set (e.g. whole seconds): step by one.
      const next = previous.mtimeNs + 1_000_000_000n;
      await fh.utimes(nsToSeconds(next), nsToSeconds(next));
      st = await fh.stat({ bigint: true });
      if (st.mtimeNs <= previous.mtimeNs) {
        logger.warn({ key: target }, 'fs store: the file system does not keep finer modification times; etags may repeat');
      }
    }
    return st;
  }

  async function syncDir(dir: string): Promise<void> {
    let fh: FileHandle | undefined;
    try {
      fh = await open(dir, 'r');
      await fh.sync();
    } catch (err) {
      // Some platforms (Windows) and file systems cannot fsync a folder; the rename itself stands.
      logger.debug({ dir, err: errorMessage(err) }, 'fs store: folder fsync failed');
    } finally {
      await fh?.close().catch(() => undefined);
    }
  }

  /**
   * The atomic write every put and copy goes through: `fill` writes the temporary file, then
   * fsync, stamp, rename, fsync the folder. On any failure the temporary file is removed.
   */
  async function writeAtomically(
    key: string,
    fill: (fh: FileHandle, tmp: string) => Promise<void>,
    signal?: AbortSignal,
  ): Promise<ObjectInfo> {
    const target = pathOf(key);
    const existing = await lstat(target).catch(() => undefined);
    if (existing?.isDirectory()) throw conflict(key, key);
    const { dir, tmp, fh } = await openTemp(key);
    let handleOpen = true;
    try {
      await fill(fh, tmp);
      await fh.sync();
      const st = await stampMtime(fh, target);
      await fh.close();
      handleOpen = false;
      // The last moment an abort can still be honoured: after the rename the new object is live.
      signal?.throwIfAborted();
      try {
        await rename(tmp, target);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EISDIR' || code === 'ENOTEMPTY' || code === 'EEXIST') throw conflict(key, key, err);
        throw err;
      }
      await syncDir(dir);
      return infoOf(key, st);
    } catch (err) {
      if (handleOpen) await fh.close().catch(() => undefined);
      await rm(tmp, { force: true }).catch((rmErr: unknown) => {
        logger.warn({ tmp, err: errorMessage(rmErr) }, 'fs store: could not remove a temporary file');
      });
      throw err;
    }
  }

  async function put(key: string, body: PutBody, options?: PutOptions): Promise<ObjectInfo> {
    const signal = options?.signal;
    try {
      checkOpen();
      assertValidKey(key);
      assertBody(key, body);
      signal?.throwIfAborted();
    } catch (err) {
      if (body instanceof Readable) body.destroy();
      throw err;
    }
    try {
      return await writeAtomically(
        key,
        async (fh) => {
          // writeFile checks the signal only between chunks; destroying the source on abort also
          // wakes a read that is waiting for data that may never come.
          if (signal && body instanceof Readable) addAbortSignal(signal, body);
          await writeFile(fh, body, signal ? { signal } : {});
        },
        signal,
      );
    } catch (err) {
      if (body instanceof Readable && !body.destroyed) body.destroy();
      if (signal?.aborted) throw signal.reason;
      if (err instanceof BoothError) throw err;
      const fromSource = body instanceof Readable && body.errored !== null && body.errored === err;
      throw new BoothError(
        'STORAGE',
        fromSource
          ? `put of key "${key}" in ${url} failed: the source stream failed: ${errorMessage(err)}; the previous object (if any) is intact`
          : `${storageError('put', `key "${key}"`, err).message}; the previous object (if any) is intact`,
        { cause: err },
      );
    }
  }

  async function get(key: string, options?: GetOptions): Promise<Readable> {
    checkOpen();
    assertValidKey(key);
    const range = checkRange(key, options?.range);
    let fh: FileHandle;
    try {
      fh = await open(pathOf(key), 'r');
    } catch (err) {
      if (MISSING.has((err as NodeJS.ErrnoException).code ?? '')) throw notFound(key, err);
      throw storageError('get', `key "${key}"`, err);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw notFound(key);
      if (range && range.start >= st.size) {
        await fh.close();
        return Readable.from([]);
      }
      // The open handle pins this version: a concurrent put renames a new file over the path
      // without disturbing a read in progress.
      return fh.createReadStream(range ? { start: range.start, ...(range.end !== undefined ? { end: range.end } : {}) } : {});
    } catch (err) {
      await fh.close().catch(() => undefined);
      if (err instanceof BoothError) throw err;
      throw storageError('get', `key "${key}"`, err);
    }
  }

  function notFound(key: string, cause?: unknown): BoothError {
    return new BoothError(
      'NOT_FOUND',
      `no object "${key}" in ${url}`,
      cause === undefined ? undefined : { cause },
    );
  }

  async function head(key: string): Promise<ObjectInfo | null> {
    checkOpen();
    assertValidKey(key);
    try {
      const st = await stat(pathOf(key), { bigint: true });
      return st.isFile() ? infoOf(key, st) : null;
    } catch (err) {
      if (MISSING.has((err as NodeJS.ErrnoException).code ?? '')) return null;
      throw storageError('head', `key "${key}"`, err);
    }
  }

  async function list(prefix: string, options?: ListOptions): Promise<ListPage> {
    checkOpen();
    assertValidPrefix(prefix);
    const limit = checkLimit(options?.limit);
    const after = checkCursor(options?.cursor);
    const startKey = prefix.slice(0, prefix.lastIndexOf('/') + 1);
    const items: ObjectInfo[] = [];
    let more = false;
    try {
      for await (const key of walk(startKey === '' ? root : pathOf(startKey.slice(0, -1)), startKey, prefix, after)) {
        if (items.length === limit) {
          more = true;
          break;
        }
        const st = await stat(pathOf(key), { bigint: true }).catch(() => undefined);
        // Deleted (or replaced by a folder) since the folder was read: not part of this page.
        if (st?.isFile()) items.push(infoOf(key, st));
      }
    } catch (err) {
      throw storageError('list', `prefix "${prefix}"`, err);
    }
    const last = items.at(-1);
    return more && last ? { items, cursor: last.key } : { items };
  }

  /**
   * Yield the keys under `dir` in UTF-8 byte order without reading the whole tree: sort each
   * folder's entries by the key text they lead to (a folder `d` leads to `d/…`, so `a-c` comes
   * before everything in `a/` and `a` before it), and skip folders that lie wholly before
   * `after` or outside `prefix`.
   */
  async function* walk(dir: string, dirKey: string, prefix: string, after: string | undefined): AsyncGenerator<string> {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch (err) {
      if (MISSING.has((err as NodeJS.ErrnoException).code ?? '')) return;
      throw err;
    }
    const candidates: Array<{ name: string; folder: boolean; order: Buffer }> = [];
    for (const entry of entries) {
      // Temporary files and anything a key cannot name (symbolic links, sockets, files dropped in
      // by hand with names no key can have) are not objects of this store.
      const folder = entry.isDirectory();
      if (!folder && !entry.isFile()) continue;
      if (!isValidKey(dirKey + entry.name)) continue;
      candidates.push({ name: entry.name, folder, order: Buffer.from(dirKey + entry.name + (folder ? '/' : ''), 'utf8') });
    }
    candidates.sort((a, b) => Buffer.compare(a.order, b.order));
    for (const { name, folder } of candidates) {
      const key = dirKey + name;
      if (folder) {
        const sub = `${key}/`;
        if (!sub.startsWith(prefix) && !prefix.startsWith(sub)) continue;
        if (after !== undefined && compareKeys(sub, after) < 0 && !after.startsWith(sub)) continue;
        yield* walk(path.join(dir, name), sub, prefix, after);
      } else {
        if (!key.startsWith(prefix)) continue;
        if (after !== undefined && compareKeys(key, after) <= 0) continue;
        yield key;
      }
    }
  }

  async function del(key: string): Promise<void> {
    checkOpen();
    assertValidKey(key);
    try {
      await unlink(pathOf(key));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      if (MISSING.has(code)) return;
      // A folder at the key is not an object: nothing to delete, as for a missing key. (Linux
      // says EISDIR; macOS says EPERM, which can also mean a real permission problem.)
      if (code === 'EISDIR' || (code === 'EPERM' && (await lstat(pathOf(key)).catch(() => undefined))?.isDirectory())) return;
      throw storageError('delete', `key "${key}"`, err);
    }
    // Empty folders would linger forever and slow listings; remove them up to the root. Losing a
    // race with a concurrent put (ENOTEMPTY) is fine, and so is any other failure here.
    const segments = key.split('/').slice(0, -1);
    while (segments.length > 0) {
      try {
        await rmdir(pathOf(segments.join('/')));
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'ENOENT') {
          logger.debug({ key, err: errorMessage(err) }, 'fs store: could not remove an empty folder');
        }
        break;
      }
      segments.pop();
    }
  }

  async function copy(from: string, to: string): Promise<ObjectInfo> {
    checkOpen();
    assertValidKey(from);
    assertValidKey(to);
    const source = pathOf(from);
    let st;
    try {
      st = await stat(source, { bigint: true });
    } catch (err) {
      if (MISSING.has((err as NodeJS.ErrnoException).code ?? '')) throw notFound(from, err);
      throw storageError('copy', `key "${from}"`, err);
    }
    if (!st.isFile()) throw notFound(from);
    // Copying onto itself would only rewrite the same bytes (and S3 refuses it): a no-op.
    if (from === to) return infoOf(from, st);
    try {
      return await writeAtomically(to, async (_fh, tmp) => {
        // Clones the extents where the file system can (btrfs, XFS), else copies in the kernel.
        await copyFile(source, tmp, fsConstants.COPYFILE_FICLONE);
      });
    } catch (err) {
      if (MISSING.has((err as NodeJS.ErrnoException).code ?? '')) throw notFound(from, err);
      if (err instanceof BoothError) throw err;
      throw storageError('copy', `key "${from}" to "${to}"`, err);
    }
  }

  return {
    url,
    get,
    put,
    head,
    list,
    delete: del,
    copy,
    async close(): Promise<void> {
      closed = true;
    },
  };
}

/** The store's view of one file. */
function infoOf(key: string, st: BigIntStats): ObjectInfo {
  const etag = createHash('sha256').update(`${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}`).digest('hex').slice(0, 32);
  return { key, size: Number(st.size), etag, mtime: new Date(Number(st.mtimeNs / 1_000_000n)) };
}

/** Wall-clock time in nanoseconds with microsecond precision (Date.now() has milliseconds). */
function preciseNowNs(): bigint {
  const ms = performance.timeOrigin + performance.now();
  return BigInt(Math.trunc(ms * 1000)) * 1000n;
}

/** For `utimes`, which takes seconds as a double (about 0.25 µs of precision today). */
function nsToSeconds(ns: bigint): number {
  return Number(ns / 1000n) / 1e6;
}
