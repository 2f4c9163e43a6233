/**
 * The folder driver, Booth's default store (`./booth-data`): each key is a file under the root,
 * its `/` segments are folders. Writes are atomic the POSIX way: the body goes to a hidden
 * temporary file in the target's own folder (`.booth-tmp-<random>`, same file system, so the
 * rename cannot turn into a copy), the file is fsynced, renamed over the target and the folder is
 * fsynced, so after a crash a reader finds the old object or the whole new one. A put that fails
 * or is aborted removes its temporary file; one killed outright leaves it behind, invisible to
 * `list`, which deletes it once it is an hour old ({@link STALE_TEMP_MS}). Entity tags are derived from inode, size and a microsecond modification
 * time that `put` stamps itself and keeps strictly increasing per key (see {@link FsStoreOptions}),
 * so they change whenever the content changes without ever reading the content.
 *
 * Conditional puts (`ifMatch`, `ifNoneMatch`) must check the current etag and rename in one step
 * as seen by every process that shares the folder, so every write and delete of a key commits
 * under a per-key lock file next to the object (`.booth-tmp-lock-<hash of the name>`, created
 * with O_EXCL, hidden from `list` like the temporary files). The body is written before the lock
 * is taken, so the lock is held only for a stat, a rename and an unlink: microseconds. A lock
 * left by a process that died holding it (SIGKILL, power loss) never blocks the key for long: a
 * writer that finds it breaks it at once when its owner's pid is dead on this host, and after
 * {@link FsStoreOptions.staleLockMs} otherwise (owners on other hosts of a shared file system).
 * Breaking is safe against a lock taken over in the meantime: the breaker checks that what it
 * removed is the stale lock it judged (else it puts it back), and an owner checks that it still
 * holds its lock right before it renames. Left out: following symbolic links in listings, and
 * storing a key next to a folder of the same name (`a` and `a/b`), which a file system cannot hold.
 */
import { randomBytes, createHash } from 'node:crypto';
import { constants as fsConstants, type BigIntStats } from 'node:fs';
import { copyFile, link, lstat, mkdir, open, readdir, readFile, rename, rm, rmdir, stat, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { addAbortSignal, Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { BoothError, errorMessage } from '../../errors.js';
import { createLogger, type Logger } from '../../log.js';
import { assertValidKey, assertValidPrefix, compareKeys, isValidKey, RESERVED_SEGMENT_PREFIX } from '../keys.js';
import type { GetOptions, ListOptions, ListPage, ObjectInfo, ObjectStore, PutBody, PutOptions } from '../types.js';
import { assertBody, checkCondition, checkCursor, checkLimit, checkRange, closedError, preconditionFailed, type PutCondition } from './shared.js';

/** Options of {@link createFsStore}. */
export interface FsStoreOptions {
  /**
   * The folder holding the objects. Resolved against the current directory when relative (the
   * caller, usually `openStore`, decides the default `./booth-data`). Created on the first put.
   */
  root: string;
  /** Logger for best-effort steps that fail without failing the operation. Default: stderr, `warn`. */
  logger?: Logger;
  /**
   * Milliseconds after which a key's write lock is presumed abandoned and broken even though its
   * owner may be alive (an owner on another host, or a pid reused on this one). A healthy writer
   * holds the lock for well under a millisecond. Default 30 000.
   */
  staleLockMs?: number;
}

/** Error codes that mean "no object at this key". */
const MISSING = new Set(['ENOENT', 'ENOTDIR']);

/** Default of {@link FsStoreOptions.staleLockMs}. */
const DEFAULT_STALE_LOCK_MS = 30_000;
/** A lock file still empty after this long was left by a writer that died between creating and filling it. */
const EMPTY_LOCK_MS = 2_000;

/** What a lock file holds: who took it, so that others can tell a live lock from an abandoned one. */
interface LockOwner {
  pid: number;
  host: string;
  token: string;
  at: string;
}

/** A held per-key lock. */
interface KeyLock {
  /** The lock file's path. */
  file: string;
  /** Its exact content, unique to this acquisition. */
  record: string;
}

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
  const staleLockMs = options.staleLockMs ?? DEFAULT_STALE_LOCK_MS;
  if (!Number.isFinite(staleLockMs) || staleLockMs <= 0) {
    throw new BoothError('INVALID_ARGUMENT', `createFsStore: option "staleLockMs" must be a positive number of milliseconds, got ${String(staleLockMs)}`);
  }
  const host = hostname();
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

  /** The lock file of `key`: in the key's folder, named by a hash so that any key name fits. */
  function lockFileOf(key: string): string {
    const target = pathOf(key);
    const digest = createHash('sha256').update(path.basename(target)).digest('hex').slice(0, 32);
    return path.join(path.dirname(target), `${RESERVED_SEGMENT_PREFIX}lock-${digest}`);
  }

  /**
   * Take `key`'s lock, waiting while another writer holds it and breaking it when it is stale.
   * @returns the lock, or null when the key's folder does not exist (nothing there to guard)
   * @throws BoothError `STORAGE` when a live lock is held past the stale bound plus a margin
   */
  async function acquireLock(key: string): Promise<KeyLock | null> {
    const file = lockFileOf(key);
    const owner: LockOwner = { pid: process.pid, host, token: randomBytes(12).toString('hex'), at: new Date().toISOString() };
    const record = JSON.stringify(owner);
    const deadline = Date.now() + staleLockMs + 10_000;
    for (let attempt = 0; ; attempt++) {
      let fh: FileHandle | undefined;
      try {
        fh = await open(file, 'wx', 0o666);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? '';
        if (MISSING.has(code)) return null;
        if (code !== 'EEXIST') throw storageError('lock', `key "${key}"`, err);
      }
      if (fh) {
        try {
          await fh.writeFile(record);
        } catch (err) {
          // An empty lock would hold the key until it is old enough to break: remove it now.
          await fh.close().catch(() => undefined);
          await unlink(file).catch(() => undefined);
          throw storageError('lock', `key "${key}"`, err);
        }
        await fh.close();
        return { file, record };
      }
      if (await breakIfStale(key, file)) continue;
      if (Date.now() > deadline) {
        const holder = await readFile(file, 'utf8').catch(() => '(unreadable)');
        throw new BoothError(
          'STORAGE',
          `write of key "${key}" in ${url} waited ${Math.round((staleLockMs + 10_000) / 1000)} s for its lock ${file}, held by ${holder}; ` +
            'if no Booth process is writing to this store, delete that file',
        );
      }
      // Holders keep the lock for microseconds: poll fast at first, then back off, with jitter so
      // that waiters do not wake in lockstep.
      await sleep(Math.min(2 ** attempt, 25) * (0.5 + Math.random()));
    }
  }

  /**
   * Remove `file` when it is an abandoned lock: its owner's pid is dead on this host, or it is
   * older than the stale bound (an empty one, from a writer that died before filling it, sooner).
   * @returns true when the caller should try to take the lock again at once
   */
  async function breakIfStale(key: string, file: string): Promise<boolean> {
    let seen: { st: BigIntStats; text: string };
    try {
      seen = { st: await stat(file, { bigint: true }), text: await readFile(file, 'utf8') };
    } catch (err) {
      if (MISSING.has((err as NodeJS.ErrnoException).code ?? '')) return true;
      throw storageError('lock', `key "${key}"`, err);
    }
    const owner = parseOwner(seen.text);
    const age = Date.now() - Number(seen.st.mtimeMs);
    const stale = owner ? (owner.host === host && !pidAlive(owner.pid)) || age > staleLockMs : age > Math.min(EMPTY_LOCK_MS, staleLockMs);
    if (!stale) return false;
    // Move it aside rather than unlink it: only then can we check that what we removed is the lock
    // we judged, and not a fresh one another writer took after breaking the same stale lock.
    const aside = path.join(path.dirname(file), `${RESERVED_SEGMENT_PREFIX}${randomBytes(8).toString('hex')}`);
    try {
      await rename(file, aside);
    } catch (err) {
      if (MISSING.has((err as NodeJS.ErrnoException).code ?? '')) return true;
      throw storageError('lock', `key "${key}"`, err);
    }
    const taken = await lstat(aside, { bigint: true }).catch(() => undefined);
    const takenText = await readFile(aside, 'utf8').catch(() => undefined);
    if (taken && taken.ino === seen.st.ino && taken.dev === seen.st.dev && takenText === seen.text) {
      logger.warn({ key, lock: file, owner: owner ?? seen.text, ageMs: age }, 'fs store: removed an abandoned write lock');
    } else {
      // A live lock: put it back unless yet another writer holds the key by now; its owner checks
      // that it still holds the lock before committing, so a lock lost here costs a retry, not data.
      await link(aside, file).catch(() => undefined);
    }
    await unlink(aside).catch(() => undefined);
    return true;
  }

  /** Whether `lock` is still ours (it may have been broken as stale while we were descheduled). */
  async function holdsLock(lock: KeyLock): Promise<boolean> {
    return (await readFile(lock.file, 'utf8').catch(() => undefined)) === lock.record;
  }

  async function releaseLock(lock: KeyLock): Promise<void> {
    // Never remove a lock that another writer took after breaking ours.
    if (!(await holdsLock(lock))) return;
    await unlink(lock.file).catch((err: unknown) => {
      logger.warn({ lock: lock.file, err: errorMessage(err) }, 'fs store: could not remove a write lock; the next writer will break it');
    });
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

  /** Throw `PRECONDITION_FAILED` unless the object at `target` satisfies `condition` (lock held). */
  async function checkPrecondition(key: string, target: string, condition: PutCondition): Promise<void> {
    let current: string | null;
    try {
      const st = await stat(target, { bigint: true });
      if (st.isDirectory()) throw conflict(key, key);
      current = infoOf(key, st).etag;
    } catch (err) {
      if (!MISSING.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
      current = null;
    }
    const holds = 'ifMatch' in condition ? current === condition.ifMatch : current === null;
    if (!holds) throw preconditionFailed(url, key, condition, current);
  }

  /**
   * The atomic write every put and copy goes through: `fill` writes the temporary file, fsync;
   * then, under the key's lock, check the condition (if any), stamp, rename; then fsync the
   * folder. On any failure the temporary file is removed.
   */
  async function writeAtomically(
    key: string,
    fill: (fh: FileHandle, tmp: string) => Promise<void>,
    signal?: AbortSignal,
    condition?: PutCondition,
  ): Promise<ObjectInfo> {
    const target = pathOf(key);
    const existing = await lstat(target).catch(() => undefined);
    if (existing?.isDirectory()) throw conflict(key, key);
    const { dir, tmp, fh } = await openTemp(key);
    let handleOpen = true;
    let lock: KeyLock | null = null;
    try {
      await fill(fh, tmp);
      await fh.sync();
      let st: BigIntStats;
      for (;;) {
        // The folder holds our temporary file, so it exists and the lock can be taken.
        lock = await acquireLock(key);
        if (!lock) throw storageError('put', `key "${key}"`, Object.assign(new Error(`the folder ${dir} disappeared`), { code: 'ENOENT' }));
        if (condition) await checkPrecondition(key, target, condition);
        st = await stampMtime(fh, target);
        // Taken over as stale while we were descheduled: whoever holds it may be writing, so start over.
        if (await holdsLock(lock)) break;
        lock = null;
      }
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
      await releaseLock(lock);
      lock = null;
      await syncDir(dir);
      return infoOf(key, st);
    } catch (err) {
      if (lock) await releaseLock(lock).catch(() => undefined);
      if (handleOpen) await fh.close().catch(() => undefined);
      await rm(tmp, { force: true }).catch((rmErr: unknown) => {
        logger.warn({ tmp, err: errorMessage(rmErr) }, 'fs store: could not remove a temporary file');
      });
      throw err;
    }
  }

  async function put(key: string, body: PutBody, options?: PutOptions): Promise<ObjectInfo> {
    const signal = options?.signal;
    let condition: PutCondition | undefined;
    try {
      checkOpen();
      assertValidKey(key);
      assertBody(key, body);
      condition = checkCondition(key, options);
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
        condition,
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
      if (!folder && entry.name.startsWith(RESERVED_SEGMENT_PREFIX)) {
        await sweepStaleTemp(path.join(dir, entry.name));
        continue;
      }
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
      // Under the key's lock, so that a conditional put cannot check, lose the object to this
      // delete, and then resurrect it.
      const lock = await acquireLock(key);
      if (!lock) return;
      try {
        await unlink(pathOf(key));
      } finally {
        await releaseLock(lock);
      }
    } catch (err) {
      if (err instanceof BoothError) throw err;
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

/** The owner recorded in a lock file, or null when it is empty or damaged. */
function parseOwner(text: string): LockOwner | null {
  try {
    const v = JSON.parse(text) as Partial<LockOwner> | null;
    return v && typeof v.pid === 'number' && typeof v.host === 'string' && typeof v.token === 'string' ? (v as LockOwner) : null;
  } catch {
    return null;
  }
}

/** Whether a process with this pid exists on this host (EPERM: it does, under another user). */
function pidAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * How old a temporary file must be before a listing removes it. A put in progress writes to its
 * temporary file all along (its mtime stays fresh); one an hour old was left by a process killed
 * mid-put (SIGKILL, power loss) and will never be renamed.
 */
export const STALE_TEMP_MS = 60 * 60 * 1000;

/**
 * The sweeper of what killed puts leave behind: `list` passes every `.booth-tmp-*` file it meets
 * here, and one untouched for {@link STALE_TEMP_MS} is deleted, so leftovers go away with the
 * next listing of their folder instead of filling the disk. Lock files (`.booth-tmp-lock-*`) have
 * their own recovery and are left alone. Best effort: a failure only leaves the file for later.
 */
async function sweepStaleTemp(file: string): Promise<void> {
  if (path.basename(file).startsWith(`${RESERVED_SEGMENT_PREFIX}lock-`)) return;
  try {
    const st = await stat(file);
    if (Date.now() - st.mtimeMs > STALE_TEMP_MS) await unlink(file);
  } catch {
    // Renamed into place or removed by its writer meanwhile: nothing to sweep.
  }
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
