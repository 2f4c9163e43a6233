/**
 * Moving a run's files between the worker's work directory and the object store without ever
 * exposing half of a multi-file write: a folder is uploaded file by file with its `COMPLETE`
 * marker last (readers ignore folders without one), and a resume state is downloaded into a
 * temporary folder, checked against the sizes and SHA-256 digests its marker lists, and only
 * then renamed into place. Files stream in both directions, so multi-gigabyte weights never sit
 * in memory.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BoothError, errorMessage } from '../errors.js';
import type { ObjectStore } from '../storage/types.js';
import { listAll, putJson, readJson } from '../storage/index.js';
import { completeMarkerSchema, type CompleteMarker } from './protocol.js';

/** Name of the marker file written last in a multi-file folder. */
export const MARKER = 'COMPLETE';

/** Every regular file under `dir`, as `/`-separated paths relative to it, sorted. */
export async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(rel: string): Promise<void> {
    const entries = await readdir(path.join(dir, rel), { withFileTypes: true });
    for (const e of entries) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(r);
      else if (e.isFile()) out.push(r);
    }
  }
  await walk('');
  return out.sort();
}

/** A pass-through stream that counts and hashes (SHA-256) what flows through it. */
function hashingTap(): { tap: Transform; result: () => { size: number; sha256: string } } {
  const hash = createHash('sha256');
  let size = 0;
  const tap = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      size += chunk.length;
      cb(null, chunk);
    },
  });
  return { tap, result: () => ({ size, sha256: hash.digest('hex') }) };
}

/** Streams a local file to the store, returning its size and SHA-256 as uploaded. */
async function putFile(store: ObjectStore, file: string, key: string): Promise<{ size: number; sha256: string }> {
  const { tap, result } = hashingTap();
  const source = createReadStream(file);
  source.on('error', (err) => tap.destroy(err));
  await store.put(key, source.pipe(tap));
  return result();
}

/**
 * Uploads a local folder under `prefix`, marker last.
 *
 * When the folder already has a `COMPLETE` file (a resume state written by the trainer), that
 * file is uploaded last as it is; otherwise (the final model) a marker listing every uploaded file
 * with size and SHA-256 is written last.
 *
 * @param store - destination
 * @param dir - local folder
 * @param prefix - key prefix ending in `/`, e.g. `sessions/a/runs/r/state/500/`
 * @param step - the training step recorded in a marker this function writes
 * @returns the files uploaded (marker excluded) and their total size in bytes
 * @throws BoothError `STORAGE` when a put fails (nothing is visible to readers: no marker)
 */
export async function uploadFolder(store: ObjectStore, dir: string, prefix: string, step = 0): Promise<{ files: number; bytes: number }> {
  const files = await listFiles(dir);
  const hasMarker = files.includes(MARKER);
  const marker: CompleteMarker = { step, files: {} };
  let bytes = 0;
  // Replacing a complete folder (a state re-saved after a resume, the model after `extend`): its
  // old marker goes first, or readers would take the new files for the old ones, half replaced.
  await store.delete(`${prefix}${MARKER}`);
  // Files of the old version that the new one lacks would make the new marker look incomplete
  // (readers require it to name exactly the stored files), so they go too.
  const keep = new Set(files.map((rel) => `${prefix}${rel}`));
  const stale: string[] = [];
  for await (const info of listAll(store, prefix)) if (!keep.has(info.key)) stale.push(info.key);
  for (const key of stale) await store.delete(key);
  for (const rel of files) {
    if (rel === MARKER) continue;
    const r = await putFile(store, path.join(dir, rel), `${prefix}${rel}`);
    marker.files[rel] = r;
    bytes += r.size;
  }
  if (hasMarker) {
    await store.put(`${prefix}${MARKER}`, await readFile(path.join(dir, MARKER)));
  } else {
    await putJson(store, `${prefix}${MARKER}`, marker);
  }
  return { files: files.length - (hasMarker ? 1 : 0), bytes };
}

/**
 * Downloads a stored resume state into `dest` (replacing it), verifying every file against the
 * marker. The files land in a temporary sibling folder first and are renamed into place only
 * when all of them match, so `dest` is either the whole verified state or absent.
 *
 * @param store - source
 * @param prefix - the state's prefix, e.g. `…/state/500/`
 * @param dest - local folder to create
 * @returns the parsed marker
 * @throws BoothError `INVALID_MANIFEST` when the marker is unreadable, does not list exactly the
 *   files stored under `prefix`, or a file's size or SHA-256 differs from it (the state is
 *   corrupt: use an older one); `NOT_FOUND`/`STORAGE` from the store
 */
export async function downloadVerifiedState(store: ObjectStore, prefix: string, dest: string): Promise<CompleteMarker> {
  let marker: CompleteMarker;
  try {
    marker = await readJson(store, `${prefix}${MARKER}`, (v) => completeMarkerSchema.parse(v));
  } catch (err) {
    if (err instanceof BoothError && err.code !== 'STORAGE') throw err;
    throw new BoothError('INVALID_MANIFEST', `resume state marker ${prefix}${MARKER} is unreadable (${errorMessage(err)})`, { cause: err });
  }
  for (const rel of Object.keys(marker.files)) {
    if (rel.split('/').some((seg) => seg === '' || seg === '.' || seg === '..')) {
      throw new BoothError('INVALID_MANIFEST', `resume state ${prefix} lists an unsafe file name ${JSON.stringify(rel)}`);
    }
  }
  // A damaged marker can still parse: one whose file list lost entries would pass every check
  // below and hand the trainer a state with files missing. The marker is written last by the
  // one uploader of the folder, so it must name exactly the files stored next to it.
  const stored: string[] = [];
  for await (const info of listAll(store, prefix)) {
    const rel = info.key.slice(prefix.length);
    if (rel !== MARKER) stored.push(rel);
  }
  const listed = Object.keys(marker.files).sort();
  stored.sort();
  if (listed.length === 0 || listed.join('\n') !== stored.join('\n')) {
    const missing = stored.filter((f) => !listed.includes(f));
    const extra = listed.filter((f) => !stored.includes(f));
    throw new BoothError(
      'INVALID_MANIFEST',
      `resume state marker ${prefix}${MARKER} does not list the state's files (${listed.length === 0 ? 'it lists none' : [missing.length ? `not listed: ${missing.join(', ')}` : '', extra.length ? `listed but not stored: ${extra.join(', ')}` : ''].filter(Boolean).join('; ')}); the state is corrupt`,
    );
  }
  const tmp = `${dest}.partial`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  try {
    for (const [rel, want] of Object.entries(marker.files)) {
      const target = path.join(tmp, rel);
      await mkdir(path.dirname(target), { recursive: true });
      const { tap, result } = hashingTap();
      await pipeline(await store.get(`${prefix}${rel}`), tap, createWriteStream(target));
      const { size, sha256 } = result();
      if (size !== want.size || sha256 !== want.sha256) {
        throw new BoothError(
          'INVALID_MANIFEST',
          `resume state ${prefix}: ${rel} is ${size} bytes with SHA-256 ${sha256.slice(0, 12)}…, the marker says ${want.size} bytes and ${want.sha256.slice(0, 12)}…; the state is corrupt`,
        );
      }
    }
    await writeMarker(tmp, marker);
    await rm(dest, { recursive: true, force: true });
    await rename(tmp, dest);
    return marker;
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

async function writeMarker(dir: string, marker: CompleteMarker): Promise<void> {
  await writeFile(path.join(dir, MARKER), `${JSON.stringify(marker)}\n`);
}

/**
 * Deletes stored resume states beyond the newest `keep` complete ones, and incomplete leftovers
 * (no marker) older than the newest complete state — what a worker killed mid-upload leaves.
 * A state's marker is deleted before its files, so a reader never sees a marker whose files are
 * gone.
 *
 * @returns the steps whose states were deleted
 */
export async function pruneStoredStates(store: ObjectStore, statePrefix: string, keep: number): Promise<number[]> {
  const byStep = new Map<number, { keys: string[]; complete: boolean }>();
  for await (const info of listAll(store, statePrefix)) {
    const m = /^(\d+)\/(.+)$/.exec(info.key.slice(statePrefix.length));
    if (!m?.[1] || !m[2]) continue;
    const step = Number(m[1]);
    const entry = byStep.get(step) ?? { keys: [], complete: false };
    entry.keys.push(info.key);
    if (m[2] === MARKER) entry.complete = true;
    byStep.set(step, entry);
  }
  const complete = [...byStep.entries()].filter(([, e]) => e.complete).map(([s]) => s).sort((a, b) => b - a);
  const kept = new Set(complete.slice(0, keep));
  const newest = complete[0] ?? -1;
  const deleted: number[] = [];
  for (const [step, entry] of [...byStep.entries()].sort((a, b) => a[0] - b[0])) {
    if (kept.has(step)) continue;
    if (!entry.complete && step > newest) continue; // may be an upload in flight
    const marker = entry.keys.find((k) => k.endsWith(`/${MARKER}`));
    if (marker) await store.delete(marker);
    for (const k of entry.keys) if (k !== marker) await store.delete(k);
    deleted.push(step);
  }
  return deleted;
}

/**
 * Mirrors the objects under `prefix` into `dir`: downloads what is missing or differs in size
 * (dataset images are content-addressed, so a same-named file of the same size is the same file;
 * pass `alwaysRefresh` for files edited in place, such as captions),
 * deletes local files the store no longer has (a photo excluded since the last run must not be
 * trained on). Each file is written to a temporary name and renamed.
 *
 * @returns counts of files downloaded, kept and removed
 */
export async function mirrorDown(store: ObjectStore, prefix: string, dir: string, options: { alwaysRefresh?: (rel: string) => boolean } = {}): Promise<{ downloaded: number; kept: number; removed: number }> {
  await mkdir(dir, { recursive: true });
  const wanted = new Set<string>();
  let downloaded = 0;
  let kept = 0;
  for await (const info of listAll(store, prefix)) {
    const rel = info.key.slice(prefix.length);
    if (!rel || rel.includes('/')) continue; // flat folders only
    wanted.add(rel);
    const target = path.join(dir, rel);
    const local = await stat(target).catch(() => null);
    if (local && local.size === info.size && !options.alwaysRefresh?.(rel)) {
      kept++;
      continue;
    }
    const tmp = `${target}.booth-part`;
    await pipeline(await store.get(info.key), createWriteStream(tmp));
    await rename(tmp, target);
    downloaded++;
  }
  let removed = 0;
  for (const rel of await readdir(dir)) {
    if (!wanted.has(rel)) {
      await rm(path.join(dir, rel), { recursive: true, force: true });
      removed++;
    }
  }
  return { downloaded, kept, removed };
}
