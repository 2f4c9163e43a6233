/**
 * Photo intake (`booth add`): expand the paths a person gives into files, validate each photo by
 * decoding it, store originals content-addressed by SHA-256 (`uploads/<sha256>.<ext>`) and record
 * them in the manifest. Adding the same bytes twice is a reported no-op. A bad file is recorded as
 * `rejected` with its reason and never stops the others; its bytes are not stored.
 *
 * Restartable: the original is stored before the manifest names it, and the manifest is saved
 * after every file, so a process killed at any moment loses at most the file in flight, and
 * running the same command again finishes the job without duplicates.
 *
 * Concurrent: each file is recorded by a {@link SessionStore.update} that adds it to the freshest
 * manifest, so photos added at the same time by other processes, and edits made meanwhile, are
 * kept; a photo that another process added first is reported as a duplicate.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { errorMessage, isBoothError } from '../errors.js';
import type { Logger } from '../log.js';
import { decodePhoto } from '../preprocess/decode.js';
import type { PhotoRecord } from './manifest.js';
import { sessionKeys, type SessionStore } from './store.js';

/** File extensions picked up when a FOLDER is added (explicitly named files are always tried). */
export const IMAGE_EXTENSIONS = ['.jpg', '.jpeg', '.jfif', '.png', '.webp', '.avif', '.tif', '.tiff', '.gif', '.heic', '.heif'];

/** Files larger than this are rejected before reading (no phone or camera photo comes close). */
export const MAX_FILE_BYTES = 200 * 1024 * 1024;

/** What happened to one input file. */
export interface AddResult {
  /** Path as given (or found in a folder). */
  path: string;
  /** Display name recorded in the manifest. */
  name: string;
  sha256: string | null;
  outcome: 'added' | 'duplicate' | 'rejected' | 'skipped';
  /** Why it was rejected / skipped, or which photo it duplicates. */
  reason: string | null;
  warnings: string[];
}

/** Options of {@link addPhotos}. */
export interface AddOptions {
  logger?: Logger;
  /** Called after each file, for progress bars. */
  onProgress?: (done: number, total: number, result: AddResult) => void;
}

/**
 * Make a file name safe to display and store: base name only, control and bidi-override
 * characters replaced by U+FFFD (they could spoof the listing: `gpj.exe` shown as `exe.jpg`),
 * at most 255 characters. The name is never used as a path; storage is by content hash.
 */
export function displayName(filePath: string): string {
  const base = path.basename(filePath);
  // eslint-disable-next-line no-control-regex
  const cleaned = base.replace(/[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, '\uFFFD');
  return (cleaned || 'unnamed').slice(0, 255);
}

/**
 * Expand files and folders into a sorted list of files. Folders are walked recursively, keeping
 * image extensions and skipping hidden entries (`.DS_Store`, `._*` AppleDouble files).
 * @returns files to add, and inputs that could not be used (missing paths, not files)
 */
export async function expandPaths(inputs: string[]): Promise<{ files: string[]; problems: AddResult[] }> {
  const files: string[] = [];
  const problems: AddResult[] = [];
  const walk = async (dir: string): Promise<void> => {
    const entries = await readdir(dir, { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      if (e.name.startsWith('.')) continue;
      const full = path.join(dir, e.name);
      if (e.isDirectory()) await walk(full);
      else if (e.isFile() && IMAGE_EXTENSIONS.includes(path.extname(e.name).toLowerCase())) files.push(full);
    }
  };
  for (const input of inputs) {
    try {
      const st = await stat(input);
      if (st.isDirectory()) await walk(input);
      else if (st.isFile()) files.push(input);
      else problems.push(skip(input, 'not a regular file'));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      problems.push(skip(input, code === 'ENOENT' ? 'no such file or folder' : errorMessage(err)));
    }
  }
  return { files, problems };
}

function skip(p: string, reason: string): AddResult {
  return { path: p, name: displayName(p), sha256: null, outcome: 'skipped', reason, warnings: [] };
}

/** Storage extension for a decoded format. */
function extensionFor(format: string): string {
  return format === 'jpeg' ? 'jpg' : format.replace(/[^a-z0-9]/g, '') || 'bin';
}

/**
 * Add photos to a session.
 * @param sessions - the session store
 * @param name - session name
 * @param inputs - files and/or folders
 * @returns one result per file (plus `skipped` entries for unusable inputs), in input order
 * @throws BoothError `NOT_FOUND` when the session does not exist. Per-file problems never throw.
 * @example
 * const results = await addPhotos(sessions, 'alice', ['./photos']);
 */
export async function addPhotos(sessions: SessionStore, name: string, inputs: string[], options: AddOptions = {}): Promise<AddResult[]> {
  // Refreshed after every file; used to skip known duplicates early and for the target size.
  let manifest = await sessions.get(name);
  const keys = sessionKeys(name);
  const { files, problems } = await expandPaths(inputs);
  const results: AddResult[] = [...problems];
  const total = files.length;
  let done = 0;
  for (const file of files) {
    const result = await addOne(file);
    results.push(result);
    done++;
    options.onProgress?.(done, total, result);
  }
  return results;

  async function addOne(file: string): Promise<AddResult> {
    const shown = displayName(file);
    const base: AddResult = { path: file, name: shown, sha256: null, outcome: 'rejected', reason: null, warnings: [] };
    let bytes: Buffer;
    try {
      const st = await stat(file);
      if (st.size > MAX_FILE_BYTES) {
        return { ...base, reason: `${shown}: file is ${(st.size / 2 ** 20).toFixed(0)} MiB, over the ${MAX_FILE_BYTES / 2 ** 20} MiB limit; export a smaller JPEG` };
      }
      bytes = await readFile(file);
    } catch (err) {
      return { ...base, outcome: 'skipped', reason: `${shown}: cannot read: ${errorMessage(err)}` };
    }
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    const existing = manifest.photos.find((p) => p.sha256 === sha256);
    if (existing) {
      return { ...base, sha256, outcome: 'duplicate', reason: `same content as "${existing.name}" already in the session` };
    }
    const now = new Date().toISOString();
    const record: PhotoRecord = {
      name: shown,
      sha256,
      size: bytes.length,
      key: null,
      addedAt: now,
      status: 'pending',
      reason: null,
      flags: [],
      checks: [],
      override: null,
      source: null,
      warnings: [],
      faces: [],
      face: null,
      faceScore: null,
      crop: null,
      cropStrategy: null,
      framing: null,
      framingAchieved: null,
      head: null,
      headInside: null,
      upscale: null,
      caption: null,
      captionSource: null,
      datasetKey: null,
    };
    let decoded: Awaited<ReturnType<typeof decodePhoto>> | null = null;
    try {
      decoded = await decodePhoto(bytes, shown, { targetSize: manifest.settings.resolution });
    } catch (err) {
      // Any failure to decode is about this file, whatever threw it: record it and go on.
      record.status = 'rejected';
      record.reason = isBoothError(err) ? err.message : `${shown}: cannot decode: ${errorMessage(err)}`;
      options.logger?.info({ file: shown, reason: record.reason }, 'photo rejected');
    }
    if (decoded) {
      const key = keys.upload(sha256, extensionFor(decoded.source.format));
      // Content-addressed: an object already at this key has these exact bytes (an earlier run
      // that died before saving the manifest), so it need not be written again. Storage errors
      // are not about this photo and propagate.
      if (!(await sessions.store.head(key))) await sessions.store.put(key, bytes);
      record.key = key;
      record.source = { width: decoded.image.width, height: decoded.image.height, format: decoded.source.format, orientation: decoded.source.orientation };
      record.warnings = decoded.warnings;
    }
    let duplicateOf: string | null = null;
    manifest = await sessions.update(
      name,
      (m) => {
        // Another writer may have added the same bytes since we looked: then it is a duplicate.
        const twin = m.photos.find((p) => p.sha256 === sha256);
        duplicateOf = twin ? twin.name : null;
        if (twin) return m;
        m.photos.push(record);
        m.state = 'created';
        return m;
      },
      { what: `the new photo ${shown}` },
    );
    if (duplicateOf !== null) {
      return { ...base, sha256, outcome: 'duplicate', reason: `same content as "${duplicateOf}" already in the session` };
    }
    return {
      ...base,
      sha256,
      outcome: record.status === 'rejected' ? 'rejected' : 'added',
      reason: record.reason,
      warnings: record.warnings,
    };
  }
}
