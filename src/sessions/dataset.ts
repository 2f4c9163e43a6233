/**
 * `booth dataset export`: write a prepared session's training set to a local folder in the layout
 * trainers read — `<stem>.png` with a same-named `<stem>.txt` caption (kohya_ss, OneTrainer,
 * diffusers' DreamBooth scripts with a caption column) — plus `metadata.jsonl`, the Hugging Face
 * `imagefolder` form (`{"file_name": …, "text": …}` per line). Every file is written to a temp
 * name and renamed, and a marker file `.booth-dataset.json` remembers what Booth wrote, so a
 * re-export replaces its own files and never deletes anything else in the folder.
 */
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createWriteStream } from 'node:fs';
import { BoothError } from '../errors.js';
import type { SessionStore } from './store.js';

const MARKER = '.booth-dataset.json';

/** Result of {@link exportDataset}. */
export interface DatasetExport {
  dir: string;
  /** Number of image/caption pairs written. */
  images: number;
  files: string[];
}

/**
 * Export the accepted, prepared photos of a session.
 * @param sessions - session store
 * @param name - session name
 * @param dir - target folder (created if missing)
 * @returns what was written
 * @throws BoothError `INVALID_ARGUMENT` when the session is not prepared or has no accepted photo,
 *   or when `dir` holds files Booth did not write.
 * @example
 * await exportDataset(sessions, 'alice', './alice-dataset');
 */
export async function exportDataset(sessions: SessionStore, name: string, dir: string): Promise<DatasetExport> {
  const manifest = await sessions.get(name);
  if (manifest.state !== 'prepared') {
    throw new BoothError('INVALID_ARGUMENT', `session "${name}" is not prepared (photos or settings changed since); run \`booth prepare ${name}\` first`);
  }
  const accepted = manifest.photos.filter((p) => p.status === 'accepted' && p.datasetKey && p.caption);
  if (accepted.length === 0) {
    throw new BoothError('INVALID_ARGUMENT', `session "${name}" has no accepted photo to export; see \`booth session show ${name}\` for why`);
  }
  await mkdir(dir, { recursive: true });
  const previous = await readMarker(dir);
  const present = (await readdir(dir)).filter((f) => f !== MARKER && !f.startsWith('.booth-tmp-'));
  const foreign = present.filter((f) => !previous.includes(f));
  if (foreign.length > 0) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `${dir} already holds files Booth did not write (${foreign.slice(0, 3).join(', ')}${foreign.length > 3 ? ', …' : ''}); export into an empty or new folder`,
    );
  }
  const files: string[] = [];
  const metadata: string[] = [];
  for (const photo of accepted) {
    const key = photo.datasetKey as string;
    const stem = path.posix.basename(key, '.png');
    const image = `${stem}.png`;
    await atomicWriteStream(dir, image, await sessions.store.get(key));
    await atomicWrite(dir, `${stem}.txt`, `${photo.caption}\n`);
    files.push(image, `${stem}.txt`);
    metadata.push(JSON.stringify({ file_name: image, text: photo.caption, original: photo.name, sha256: photo.sha256 }));
  }
  await atomicWrite(dir, 'metadata.jsonl', `${metadata.join('\n')}\n`);
  files.push('metadata.jsonl');
  for (const stale of previous.filter((f) => !files.includes(f))) await rm(path.join(dir, stale), { force: true });
  await atomicWrite(dir, MARKER, JSON.stringify({ session: name, files }, null, 2));
  return { dir, images: accepted.length, files };
}

async function readMarker(dir: string): Promise<string[]> {
  try {
    const parsed = JSON.parse(await readFile(path.join(dir, MARKER), 'utf8')) as { files?: unknown };
    return Array.isArray(parsed.files) ? parsed.files.filter((f): f is string => typeof f === 'string' && !f.includes('/')) : [];
  } catch {
    return [];
  }
}

async function atomicWrite(dir: string, file: string, data: string | Buffer): Promise<void> {
  const tmp = path.join(dir, `.booth-tmp-${process.pid}-${file}`);
  await writeFile(tmp, data);
  await rename(tmp, path.join(dir, file));
}

async function atomicWriteStream(dir: string, file: string, source: NodeJS.ReadableStream): Promise<void> {
  const tmp = path.join(dir, `.booth-tmp-${process.pid}-${file}`);
  await pipeline(source, createWriteStream(tmp));
  await rename(tmp, path.join(dir, file));
}

/**
 * Copy a prepared session's contact sheet (PNG and self-contained HTML) into a local folder.
 * @returns the written file paths
 * @throws BoothError `INVALID_ARGUMENT` when the session has not been prepared
 */
export async function exportReview(sessions: SessionStore, name: string, dir: string): Promise<string[]> {
  const manifest = await sessions.get(name);
  if (!manifest.prepared) {
    throw new BoothError('INVALID_ARGUMENT', `session "${name}" has no contact sheet yet; run \`booth prepare ${name}\` first`);
  }
  await mkdir(dir, { recursive: true });
  const out: string[] = [];
  for (const [key, file] of [
    [manifest.prepared.contactSheet.png, 'contact-sheet.png'],
    [manifest.prepared.contactSheet.html, 'contact-sheet.html'],
  ] as const) {
    await atomicWriteStream(dir, file, await sessions.store.get(key));
    out.push(path.join(dir, file));
  }
  return out;
}
