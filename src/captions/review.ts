/**
 * Re-render a prepared session's contact sheet from what is stored (manifest, previews, dataset
 * images), so captions written or edited after `prepare` — and the captioner's reviewer flags —
 * show up in `review/contact-sheet.png|html` without preparing again.
 */
import sharp from 'sharp';
import { isBoothError } from '../errors.js';
import { readAll } from '../storage/index.js';
import { photoEntry, renderContactSheetHtml, renderContactSheetPng, type ContactSheetEntry } from '../preprocess/contact-sheet.js';
import type { SessionManifest } from '../sessions/manifest.js';
import { sessionKeys, type SessionStore } from '../sessions/store.js';

/**
 * Render and store the contact sheet of a prepared session (no-op when it was never prepared).
 * @param sessions - session store
 * @param manifest - the manifest as it will be saved
 * @returns the keys written, or null when the session has no contact sheet yet
 * @throws storage errors other than a missing preview or dataset image (shown as absent instead)
 */
export async function rerenderContactSheet(sessions: SessionStore, manifest: SessionManifest): Promise<{ png: string; html: string } | null> {
  if (!manifest.prepared) return null;
  const store = sessions.store;
  const keys = sessionKeys(manifest.name);
  const optional = async (key: string): Promise<Buffer | null> => {
    try {
      return await readAll(store, key);
    } catch (err) {
      if (isBoothError(err, 'NOT_FOUND')) return null;
      throw err;
    }
  };
  const entries: ContactSheetEntry[] = [];
  for (const photo of manifest.photos) {
    const preview = photo.key === null ? null : await optional(keys.preview(photo.sha256));
    const png = photo.datasetKey ? await optional(photo.datasetKey) : null;
    const thumb = png ? await sharp(png).resize(256, 256, { fit: 'inside' }).jpeg({ quality: 85 }).toBuffer() : null;
    entries.push(photoEntry(photo, preview, thumb));
  }
  const { subject, settings } = manifest;
  const title = `${manifest.name}: ${subject.trigger} ${subject.classNoun} (${subject.kind}, ${manifest.base}, ${settings.resolution} px)`;
  const sources = [...new Set(manifest.photos.filter((p) => p.status === 'accepted').map((p) => (p.captionSource === 'model' ? (p.captionMeta?.model ?? 'model') : (p.captionSource ?? 'none'))))];
  const subtitle = `framing ${settings.framing} · identity ${subject.kind === 'person' ? settings.identity : 'n/a'} · captions: ${sources.join(', ') || 'none'}`;
  await store.put(keys.contactSheetPng, await renderContactSheetPng(entries, { title, subtitle }), { contentType: 'image/png' });
  await store.put(keys.contactSheetHtml, await renderContactSheetHtml(entries, { title, subtitle }), { contentType: 'text/html; charset=utf-8' });
  return { png: keys.contactSheetPng, html: keys.contactSheetHtml };
}
