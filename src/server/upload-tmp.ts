/**
 * The temp folders photo uploads spool into (`<os tmpdir>/booth-upload-*`, one per request). A
 * request removes its own folder when it ends; a server killed mid-upload (SIGKILL, OOM, power
 * loss) cannot, so the next server start sweeps the ones nobody has touched for an hour.
 */
import { readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

/** Prefix of an upload's temp folder inside the OS temp folder. */
export const UPLOAD_TMP_PREFIX = 'booth-upload-';

/**
 * Idle time after which an upload temp folder is taken for abandoned: an upload in progress
 * writes into its folder all along, and the server's idle timeout (2 min) ends a stalled one long
 * before this.
 */
export const STALE_UPLOAD_TMP_MS = 60 * 60 * 1000;

/**
 * Remove the upload temp folders (`booth-upload-*` in `dir`) whose newest entry is older than
 * `olderThanMs`. Folders of uploads in progress in other servers on this machine are fresh and
 * kept. Best effort: a folder that cannot be read or removed is left for the next sweep.
 * @param dir - the folder to sweep; default the OS temp folder (`TMPDIR`)
 * @param olderThanMs - idle time in ms; default {@link STALE_UPLOAD_TMP_MS}
 * @param now - clock in ms since the epoch (tests)
 * @returns the paths removed
 */
export async function sweepStaleUploadDirs(dir: string = tmpdir(), olderThanMs: number = STALE_UPLOAD_TMP_MS, now: number = Date.now()): Promise<string[]> {
  let names: string[];
  try {
    names = (await readdir(dir)).filter((n) => n.startsWith(UPLOAD_TMP_PREFIX));
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    const folder = path.join(dir, name);
    const newest = await newestMtime(folder).catch(() => null);
    if (newest === null || now - newest <= olderThanMs) continue;
    try {
      await rm(folder, { recursive: true, force: true });
      removed.push(folder);
    } catch {
      // Left for the next start.
    }
  }
  return removed;
}

/** Newest modification time (ms) of a folder and everything under it; an upload folder is two levels deep. */
async function newestMtime(p: string): Promise<number> {
  const st = await stat(p);
  if (!st.isDirectory()) return st.mtimeMs;
  let newest = st.mtimeMs;
  for (const entry of await readdir(p)) newest = Math.max(newest, await newestMtime(path.join(p, entry)));
  return newest;
}
