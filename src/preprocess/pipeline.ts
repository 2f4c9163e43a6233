/**
 * `booth prepare`: turn a session's stored photos into a training set. Phases:
 * 1. **analyse** each stored photo once (decode, faces with landmarks and descriptors,
 *    perceptual hash, a preview for review) and cache the result under `cache/analysis/<sha256>.json`;
 * 2. **identity**: find the subject across photos (person sessions);
 * 3. **crop** each photo around the subject's head (or its salient region), measure quality
 *    (blur, face size, near-duplicates, upscale), decide accepted/excluded, render the crop and
 *    its caption into `dataset/`;
 * 4. **review**: render the contact sheet (PNG + self-contained HTML) into `review/`;
 * then save the manifest once, atomically, and remove dataset objects nothing refers to.
 *
 * Concurrent edits survive: the results are merged photo by photo into the freshest manifest
 * when it is saved (see {@link mergePrepared}), so a trigger change, a crop, a decision or a photo
 * made or added while prepare ran is kept (the session then stays `created`: prepare again).
 *
 * Restartable and idempotent: every object is written atomically before the manifest refers to
 * it; analyses are cached by content hash, so a run killed at any moment and started again
 * re-does at most the photo in flight, and produces the same result as an uninterrupted run.
 */
import sharp from 'sharp';
import { errorMessage, isBoothError } from '../errors.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { listAll, putJson, readAll, readJson } from '../storage/index.js';
import { renderTemplateCaption } from '../captions/template.js';
import type { PhotoCheck, PhotoRecord, SessionManifest } from '../sessions/manifest.js';
import { sessionKeys, type SessionStore } from '../sessions/store.js';
import { photoEntry, renderContactSheetHtml, renderContactSheetPng, type ContactSheetEntry } from './contact-sheet.js';
import { planFaceCrop, planSalientCrop, renderCrop } from './crop.js';
import { decodePhoto } from './decode.js';
import type { FaceDetector } from './faces.js';
import { ANALYSIS_VERSION, type Analysis } from './analyse.js';
import { createAnalyser, type Analyser } from './analysis-pool.js';
import { DEFAULT_IDENTITY_THRESHOLD, largestFace, resolveIdentities } from './identity.js';
import { BLUR_THRESHOLD, NEAR_DUPLICATE_DISTANCE, blurScore, hammingDistance } from './quality.js';
import type { CropPlan, DetectedFace, Framing, RawImage, Rect } from './types.js';

/**
 * A face box smaller than this fraction of the training resolution carries too little identity
 * detail once upscaled (a 512 px face crop from a 90 px face is mostly invented).
 */
export const SMALL_FACE_FRACTION = 0.2;

/** Crops upscaled more than this are flagged `low-resolution`. */
export const MAX_UPSCALE = 1.5;

/** Options of {@link prepareSession}. */
export interface PrepareOptions {
  /** Override (and persist) the session's framing. */
  framing?: Framing;
  /** Override (and persist) identity matching. */
  identity?: 'auto' | 'off';
  logger?: Logger;
  /** Progress callback: phase, items done, items total, current photo name. */
  onProgress?: (phase: 'analyse' | 'crop' | 'review', done: number, total: number, item: string) => void;
  /**
   * Analyse in-process with this detector (tests, embedding); otherwise photos are analysed in a
   * pool of worker threads, one detector each, created on demand and closed afterwards.
   */
  detector?: FaceDetector;
  /** Worker threads for analysis (default: one per core, at most 4; 1 analyses in-process). */
  threads?: number;
}

/** Summary of a prepare run. */
export interface PrepareReport {
  session: string;
  counts: { accepted: number; excluded: number; rejected: number };
  photos: Array<Pick<PhotoRecord, 'name' | 'sha256' | 'status' | 'flags' | 'reason' | 'crop' | 'face'>>;
  contactSheet: { png: string; html: string };
  /** Photos analysed in this run (not served from the cache). */
  analysed: number;
  elapsedMs: number;
  /** Wall-clock milliseconds per phase (analyse includes loading the face models when needed). */
  phaseMs: { analyse: number; identity: number; crop: number; review: number };
}

/**
 * Prepare a session's training set.
 * @param sessions - session store
 * @param name - session name
 * @param options - framing/identity overrides, progress, logger
 * @returns the report; per-photo outcomes are also in the saved manifest
 * @throws BoothError `NOT_FOUND` for a missing session; storage errors propagate (nothing half-visible).
 * @example
 * const report = await prepareSession(sessions, 'alice', { framing: 'face' });
 */
export async function prepareSession(sessions: SessionStore, name: string, options: PrepareOptions = {}): Promise<PrepareReport> {
  const started = Date.now();
  const logger = options.logger ?? silentLogger();
  const store = sessions.store;
  const keys = sessionKeys(name);
  const manifest = await sessions.get(name);
  // What the run started from: the inputs that decide whether its result is still current.
  const snapshot = structuredClone(manifest);
  if (options.framing) manifest.settings.framing = options.framing;
  if (options.identity) manifest.settings.identity = options.identity;
  const { settings, subject } = manifest;
  const isPerson = subject.kind === 'person';
  const stored = manifest.photos.filter((p) => p.key !== null);

  const phaseMs = { analyse: 0, identity: 0, crop: 0, review: 0 };
  let mark = Date.now();
  const lap = (phase: keyof typeof phaseMs) => {
    const now = Date.now();
    phaseMs[phase] = now - mark;
    mark = now;
  };

  // Phase 1: analyse (cached by content hash), several photos at once.
  const analyses = new Map<string, Analysis>();
  const decodeFailures = new Map<string, string>();
  let analysed = 0;
  const todo: PhotoRecord[] = [];
  for (const photo of stored) {
    const cached = await readCachedAnalysis(keys.analysis(photo.sha256));
    if (cached) analyses.set(photo.sha256, cached);
    else todo.push(photo);
  }
  if (todo.length > 0) {
    const analyser = await createAnalyser({ faces: isPerson, detector: options.detector, threads: options.threads, photos: todo.length, logger });
    let next = 0;
    let done = stored.length - todo.length;
    options.onProgress?.('analyse', done, stored.length, '');
    const runner = async (): Promise<void> => {
      while (next < todo.length) {
        const photo = todo[next++] as PhotoRecord;
        const bytes = await readAll(store, photo.key as string);
        // Only decoding failures are about the photo; model and storage errors stop the run.
        let result: Awaited<ReturnType<Analyser['analyse']>> | null = null;
        try {
          result = await analyser.analyse({ bytes, sha256: photo.sha256, name: photo.name, targetSize: settings.resolution });
        } catch (err) {
          if (!isBoothError(err) || !err.code.startsWith('IMAGE_')) throw err;
          decodeFailures.set(photo.sha256, err.message);
          logger.warn({ photo: photo.name, err: err.message }, 'photo could not be analysed');
        }
        if (result) {
          await store.put(keys.preview(photo.sha256), result.preview, { contentType: 'image/jpeg' });
          await putJson(store, keys.analysis(photo.sha256), result.analysis);
          analyses.set(photo.sha256, result.analysis);
          analysed++;
        }
        options.onProgress?.('analyse', ++done, stored.length, photo.name);
      }
    };
    try {
      const outcomes = await Promise.allSettled(Array.from({ length: Math.min(analyser.concurrency, todo.length) }, runner));
      const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
      if (failed) throw failed.reason;
    } finally {
      await analyser.close();
    }
  }
  lap('analyse');

  // Phase 2: identity.
  const faceOf = (a: Analysis): DetectedFace[] =>
    a.faces.map((f) => ({ box: f.box, score: f.score, landmarks: f.landmarks, descriptor: Float32Array.from(f.descriptor) }));
  const subjectFace = new Map<string, { index: number | null; distance: number | null; reason: string | null; byIdentity: boolean }>();
  let ambiguity: string | null = null;
  if (isPerson) {
    const items = [...analyses.values()].map((a) => ({ id: a.sha256, faces: faceOf(a) }));
    if (settings.identity === 'auto') {
      const result = resolveIdentities(items);
      if (result.ambiguous) ambiguity = result.ambiguity;
      for (const item of items) {
        const r = result.photos.get(item.id);
        subjectFace.set(item.id, { index: r?.subjectFace ?? null, distance: r?.distance ?? null, reason: r?.reason ?? null, byIdentity: r?.basis === 'identity' });
      }
    } else {
      for (const item of items) {
        const idx = largestFace(item.faces);
        subjectFace.set(item.id, { index: idx, distance: null, reason: idx === null ? 'no face found' : null, byIdentity: false });
      }
    }
  }

  lap('identity');
  const identityThreshold = isPerson && settings.identity === 'auto' ? DEFAULT_IDENTITY_THRESHOLD : null;

  // Phase 3: crop, quality, dataset.
  const caption = renderTemplateCaption(settings.captionTemplate, subject);
  const hashes: Array<{ sha256: string; name: string; hash: bigint }> = [];
  const entries: ContactSheetEntry[] = [];
  let done = 0;
  const ordered = manifest.photos;
  for (const photo of ordered) {
    options.onProgress?.('crop', done, ordered.length, photo.name);
    await preparePhoto(photo);
    done++;
  }
  options.onProgress?.('crop', done, ordered.length, '');
  lap('crop');

  // Phase 4: review.
  options.onProgress?.('review', 0, 1, 'contact sheet');
  const title = `${manifest.name}: ${subject.trigger} ${subject.classNoun} (${subject.kind}, ${manifest.base}, ${settings.resolution} px)`;
  const counts = {
    accepted: ordered.filter((p) => p.status === 'accepted').length,
    excluded: ordered.filter((p) => p.status === 'excluded').length,
    rejected: ordered.filter((p) => p.status === 'rejected').length,
  };
  const subtitle = `framing ${settings.framing} · identity ${isPerson ? settings.identity : 'n/a'} · caption template "${settings.captionTemplate}"${ambiguity ? ` · identity unsure: ${ambiguity}` : ''}`;
  await store.put(keys.contactSheetPng, await renderContactSheetPng(entries, { title, subtitle }), { contentType: 'image/png' });
  await store.put(keys.contactSheetHtml, await renderContactSheetHtml(entries, { title, subtitle }), { contentType: 'text/html; charset=utf-8' });
  options.onProgress?.('review', 1, 1, '');
  lap('review');

  manifest.state = 'prepared';
  manifest.prepared = { at: new Date().toISOString(), contactSheet: { png: keys.contactSheetPng, html: keys.contactSheetHtml }, counts };
  const saved = await sessions.update(name, (fresh) => mergePrepared(fresh, snapshot, manifest, options), { what: 'the prepared photos' });

  // Only now that the manifest no longer names them is it safe to drop stale dataset objects
  // (those of photos removed while prepare ran included).
  const referenced = new Set<string>();
  for (const p of saved.photos) {
    if (p.datasetKey === null) continue;
    const stem = p.datasetKey.slice(keys.datasetPrefix.length).replace(/\.png$/, '');
    referenced.add(p.datasetKey).add(keys.datasetCaption(stem));
  }
  for await (const info of listAll(store, keys.datasetPrefix)) {
    if (!referenced.has(info.key)) await store.delete(info.key);
  }

  return {
    session: name,
    counts,
    photos: ordered.map((p) => ({ name: p.name, sha256: p.sha256, status: p.status, flags: p.flags, reason: p.reason, crop: p.crop, face: p.face })),
    contactSheet: { png: keys.contactSheetPng, html: keys.contactSheetHtml },
    analysed,
    elapsedMs: Date.now() - started,
    phaseMs,
  };

  /** The cached analysis, or null when missing, unreadable or of another version (then recomputed). */
  async function readCachedAnalysis(key: string): Promise<Analysis | null> {
    try {
      const a = (await readJson(store, key)) as Analysis;
      return a.version === ANALYSIS_VERSION ? a : null;
    } catch (err) {
      // Missing, or damaged (not JSON): recompute. A storage outage still propagates.
      if (isBoothError(err, 'NOT_FOUND') || (isBoothError(err, 'STORAGE') && err.cause instanceof SyntaxError)) return null;
      throw err;
    }
  }

  async function preparePhoto(photo: PhotoRecord): Promise<void> {
    resetResult(photo);
    const analysis = analyses.get(photo.sha256);
    if (photo.key === null || !analysis) {
      photo.status = 'rejected';
      photo.reason = photo.key === null ? photo.reason : (decodeFailures.get(photo.sha256) ?? 'could not be analysed');
      entries.push(entryFor(photo, null, null));
      return;
    }
    photo.source = analysis.source;
    photo.warnings = analysis.warnings;
    const faces = faceOf(analysis);
    const checks: PhotoCheck[] = [];
    let exclude: string | null = null;

    // Which face is the subject's.
    let face: DetectedFace | null = null;
    if (isPerson) {
      const s = subjectFace.get(photo.sha256);
      const idx = s?.index ?? null;
      face = idx === null ? null : (faces[idx] ?? null);
      photo.faces = faces.map((f, i) => ({
        box: roundRect(f.box),
        score: round(f.score, 3),
        subject: i === idx,
        distance: null,
      }));
      if (s?.distance !== null && s?.distance !== undefined && idx !== null && photo.faces[idx]) photo.faces[idx].distance = round(s.distance, 4);
      if (!face && faces.length > 0) {
        checks.push({
          flag: 'other-identity',
          value: s?.distance === null || s?.distance === undefined ? null : round(s.distance, 3),
          threshold: identityThreshold,
          detail: s?.reason ?? 'the subject is not in this photo: only other people were found',
        });
        exclude = 'the subject is not in this photo (only other people were found); it was excluded so nobody else is trained as the subject';
      } else if (!face) {
        checks.push({ flag: 'no-face', value: null, threshold: null, detail: 'no face was found' });
        exclude = 'no face was found; if the subject is in it (e.g. seen from behind), include it with `booth photo include`';
      }
      if (face && settings.identity === 'auto' && ambiguity && s && !s.byIdentity) {
        checks.push({ flag: 'identity-unsure', value: null, threshold: null, detail: `chosen as the most prominent face: ${ambiguity}` });
      }
      if (face) {
        photo.face = roundRect(face.box);
        photo.faceScore = round(face.score, 3);
        const minFace = SMALL_FACE_FRACTION * settings.resolution;
        if (face.box.height < minFace) {
          checks.push({
            flag: 'small-face',
            value: Math.round(face.box.height),
            threshold: Math.round(minFace),
            detail: `the face is ${Math.round(face.box.height)} px tall, under ${Math.round(minFace)} px: little detail for ${settings.resolution} px training`,
          });
        }
      }
    }

    // Near-duplicates: keep the first added, exclude later ones.
    const hash = BigInt(`0x${analysis.phash}`);
    const twin = hashes.find((h) => hammingDistance(h.hash, hash) <= NEAR_DUPLICATE_DISTANCE);
    if (twin) {
      const d = hammingDistance(twin.hash, hash);
      checks.push({ flag: 'near-duplicate', value: d, threshold: NEAR_DUPLICATE_DISTANCE, detail: `nearly identical to "${twin.name}" (hash distance ${d})` });
      exclude ??= `nearly identical to "${twin.name}"; duplicates over-weight one photo`;
    }

    if (photo.override === 'exclude') exclude = 'excluded by hand';
    else if (photo.override === 'include') exclude = null;
    photo.checks = checks;
    photo.flags = checks.map((c) => c.flag);
    // A photo of someone else gets no crop: showing one would suggest training on that person.
    if (exclude && checks.some((c) => c.flag === 'other-identity')) {
      photo.status = 'excluded';
      photo.reason = exclude;
      const preview = await readAll(store, keys.preview(photo.sha256)).catch(() => null);
      entries.push(entryFor(photo, preview, null));
      return;
    }

    // Crop plan and render need the pixels.
    let image: RawImage;
    const bytes = await readAll(store, photo.key);
    try {
      image = (await decodePhoto(bytes, photo.name, { targetSize: settings.resolution })).image;
    } catch (err) {
      photo.status = 'rejected';
      photo.reason = errorMessage(err);
      entries.push(entryFor(photo, null, null));
      return;
    }
    const planned: CropPlan = face ? planFaceCrop(image, face, settings.framing, settings.resolution, { others: faces }) : await planSalientCrop(image, settings.resolution);
    // A crop set by hand (review UI) wins over the plan for as long as it fits the photo.
    const plan: CropPlan = photo.cropOverride ? applyCropOverride(planned, photo.cropOverride, image, settings.resolution) : planned;
    photo.crop = plan.rect;
    photo.cropStrategy = plan.strategy;
    photo.framing = plan.framing;
    photo.framingAchieved = plan.framingAchieved;
    photo.head = plan.head ? roundRect(plan.head) : null;
    photo.headInside = plan.headInside;
    photo.upscale = round(plan.upscale, 3);
    if (plan.upscale > MAX_UPSCALE) {
      checks.push({
        flag: 'low-resolution',
        value: round(plan.upscale, 2),
        threshold: MAX_UPSCALE,
        detail: `the crop is ${plan.rect.width} px and is upscaled ${plan.upscale.toFixed(2)}× to ${settings.resolution} px`,
      });
    }
    if (plan.headInside === false) {
      checks.push({ flag: 'head-cut', value: null, threshold: null, detail: 'the head reaches the photo edge, so it cannot be fully inside the crop' });
    }
    const blur = await blurScore(image, face ? (plan.head ?? face.box) : plan.rect);
    if (blur < BLUR_THRESHOLD) {
      checks.push({ flag: 'blurry', value: round(blur, 1), threshold: BLUR_THRESHOLD, detail: `sharpness ${blur.toFixed(1)} is under ${BLUR_THRESHOLD} (variance of the Laplacian)` });
    }
    photo.checks = checks;
    photo.flags = checks.map((c) => c.flag);
    let result: Buffer | null = null;
    if (exclude) {
      photo.status = 'excluded';
      photo.reason = exclude;
    } else {
      photo.status = 'accepted';
      // Only accepted photos are references for near-duplicates: a twin of an excluded photo is not a duplicate of anything trained on.
      hashes.push({ sha256: photo.sha256, name: photo.name, hash });
      const stem = photo.sha256.slice(0, 16);
      const png = await renderCrop(image, plan.rect, settings.resolution);
      await store.put(keys.datasetImage(stem), png, { contentType: 'image/png' });
      // A caption written by a captioner or a person survives re-preparing; `booth caption`
      // notices a changed crop through the image hash it recorded. Template captions follow the
      // session's current template.
      if (photo.caption === null || photo.captionSource === 'template') {
        photo.caption = caption;
        photo.captionSource = 'template';
      }
      await store.put(keys.datasetCaption(stem), `${photo.caption}\n`, { contentType: 'text/plain; charset=utf-8' });
      photo.datasetKey = keys.datasetImage(stem);
      result = png;
    }
    const preview = await readAll(store, keys.preview(photo.sha256)).catch(() => null);
    entries.push(entryFor(photo, preview, result ? await thumbnail(result) : null));
  }

  function entryFor(photo: PhotoRecord, preview: Buffer | null, result: Buffer | null): ContactSheetEntry {
    return photoEntry(photo, preview, result);
  }
}

/** Fields of a photo record that prepare computes (the rest is input: identity, decisions, hand crop). */
const PREPARED_FIELDS = [
  'status',
  'reason',
  'flags',
  'checks',
  'source',
  'warnings',
  'faces',
  'face',
  'faceScore',
  'crop',
  'cropStrategy',
  'framing',
  'framingAchieved',
  'head',
  'headInside',
  'upscale',
  'datasetKey',
] as const satisfies ReadonlyArray<keyof PhotoRecord>;

/** What a photo's preparation depends on besides the session's subject and settings. */
function photoInputs(p: PhotoRecord): string {
  return JSON.stringify([p.sha256, p.key, p.override, p.cropOverride ?? null]);
}

/**
 * Merge a finished prepare run into the freshest manifest (inside `SessionStore.update`, so it
 * may run more than once). Each photo that is still there gets the run's results; photos added
 * meanwhile stay pending, removed ones stay removed; the subject, settings, decisions, hand
 * crops and non-template captions of the fresh manifest win. The session is `prepared` only when
 * nothing prepare depends on changed while it ran; otherwise it stays `created`, so that the next
 * prepare redoes it.
 * @param fresh - the manifest as stored now (a copy; modified and returned)
 * @param started - the manifest as the run read it
 * @param result - the run's manifest, with its results
 * @param options - the run's framing/identity overrides, which it persists
 * @returns `fresh` with the results merged in
 */
export function mergePrepared(fresh: SessionManifest, started: SessionManifest, result: SessionManifest, options: Pick<PrepareOptions, 'framing' | 'identity'>): SessionManifest {
  // The run's explicit overrides are persisted on the fresh manifest too (a person asked for them).
  const withOverrides = (m: SessionManifest): SessionManifest => {
    if (options.framing) m.settings.framing = options.framing;
    if (options.identity) m.settings.identity = options.identity;
    return m;
  };
  const inputsOf = (m: SessionManifest) => JSON.stringify([m.subject, m.base, m.settings, m.photos.map(photoInputs)]);
  withOverrides(fresh);
  const unchanged = inputsOf(fresh) === inputsOf(withOverrides(structuredClone(started)));
  const startedInputs = new Map(started.photos.map((p) => [p.sha256, photoInputs(p)]));
  const results = new Map(result.photos.map((p) => [p.sha256, p]));
  for (const photo of fresh.photos) {
    const ours = results.get(photo.sha256);
    // Added meanwhile, or decided or cropped by hand meanwhile: the run's result for it is stale
    // and the edit made meanwhile is kept as it is.
    if (!ours || startedInputs.get(photo.sha256) !== photoInputs(photo)) continue;
    const target = photo as Record<string, unknown>;
    for (const field of PREPARED_FIELDS) target[field] = structuredClone(ours[field]);
    // Template captions are prepare's; a caption a captioner or a person wrote meanwhile is kept.
    if (photo.captionSource === null || photo.captionSource === 'template') {
      photo.caption = ours.caption;
      photo.captionSource = ours.captionSource;
      photo.captionMeta = ours.captionMeta ?? null;
      photo.captionError = ours.captionError ?? null;
    }
  }
  fresh.prepared = structuredClone(result.prepared);
  fresh.state = unchanged ? 'prepared' : 'created';
  return fresh;
}

/**
 * The plan with a hand-set crop: the rectangle made square and clamped into the photo, the
 * upscale recomputed; head and framing facts are kept from the automatic plan (they describe the
 * subject and the photo's edges; a person who cuts the head by hand did so on purpose).
 * @example applyCropOverride(plan, { x: 10, y: 20, width: 400, height: 400 }, image, 512)
 */
export function applyCropOverride(plan: CropPlan, override: Rect, size: { width: number; height: number }, outputSize: number): CropPlan {
  const rect = clampSquare(override, size);
  return { ...plan, rect, upscale: outputSize / rect.width };
}

/**
 * A square of side min(width, height) of `r`, moved (not shrunk further) to lie inside the photo.
 * @example clampSquare({ x: -10, y: 0, width: 300, height: 280 }, { width: 640, height: 480 }) // { x: 0, y: 0, width: 280, height: 280 }
 */
export function clampSquare(r: Rect, size: { width: number; height: number }): Rect {
  const side = Math.max(1, Math.min(Math.round(Math.min(r.width, r.height)), size.width, size.height));
  const x = Math.min(Math.max(0, Math.round(r.x)), size.width - side);
  const y = Math.min(Math.max(0, Math.round(r.y)), size.height - side);
  return { x, y, width: side, height: side };
}

/** Clear a record's preparation results (kept: identity of the file, override). */
function resetResult(p: PhotoRecord): void {
  if (p.key !== null) {
    p.status = 'pending';
    p.reason = null;
  }
  p.flags = [];
  p.checks = [];
  p.faces = [];
  p.face = null;
  p.faceScore = null;
  p.crop = null;
  p.cropStrategy = null;
  p.framing = null;
  p.framingAchieved = null;
  p.head = null;
  p.headInside = null;
  p.upscale = null;
  // Template captions are prepare's own and are redone; offline, model and hand captions are kept
  // (hand ones are never overwritten by anything but a person).
  if (p.captionSource === null || p.captionSource === 'template') {
    p.caption = null;
    p.captionSource = null;
    p.captionMeta = null;
    p.captionError = null;
  }
  p.datasetKey = null;
}

async function thumbnail(png: Buffer): Promise<Buffer> {
  return sharp(png).resize(256, 256, { fit: 'inside' }).jpeg({ quality: 85 }).toBuffer();
}

function round(v: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

function roundRect(r: Rect): Rect {
  const x = Math.max(0, Math.round(r.x));
  const y = Math.max(0, Math.round(r.y));
  return { x, y, width: Math.max(1, Math.round(r.width)), height: Math.max(1, Math.round(r.height)) };
}
