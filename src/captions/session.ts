/**
 * Captioning a prepared session: decide which accepted photos need a caption, caption them with a
 * {@link Captioner} (a few at once), and record each result in the manifest (caption, source,
 * flags, token count, cost) and as the `.txt` next to the dataset image. What this module
 * guarantees, whatever the captioner:
 * - **nothing is paid twice**: every model result is stored at once under
 *   `cache/captions/<key>.json`, the key being a hash of (dataset image hash, model + prompt
 *   template + detail, subject); a photo whose recorded key still matches is left alone, and one
 *   whose key is cached is served from the cache. `force` re-captions anyway.
 * - **nothing already captioned is lost**: a failure is recorded per photo (`captionError`) and
 *   leaves its previous caption in place; hand captions are never touched.
 * - **restartable**: a run killed midway keeps every paid result in the cache; the manifest is
 *   saved once at the end, after the `.txt` objects it describes are written.
 * - **concurrent edits survive**: the results are merged into the freshest manifest when it is
 *   saved ({@link SessionStore.update}), photo by photo, so a trigger change, a crop or a photo
 *   added while a run was going is kept, and a hand caption set meanwhile wins over the run's.
 * Also here: hand edits ({@link setHandCaption}), the dry-run estimate, and Batch API mode
 * ({@link captionSessionBatch}) whose batch id lives in the manifest so polling resumes after a restart.
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import { toFile } from 'openai';
import type { ChatCompletion } from 'openai/resources/chat/completions';
import { BoothError, errorMessage, isBoothError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { Analysis } from '../preprocess/analyse.js';
import type { Rect } from '../preprocess/types.js';
import type { CaptionBatch, CaptionMeta, PhotoRecord, SessionManifest, Subject } from '../sessions/manifest.js';
import { sessionKeys, type SessionStore } from '../sessions/store.js';
import { putJson, readAll, readJson } from '../storage/index.js';
import { BASE_MODEL_INFO } from '../sessions/base-models.js';
import { countCaptionTokens, tokenWarning, type ClipTokenizer, type TokenCount } from './clip-tokenizer.js';
import { parseCaptionCompletion, type OpenAICaptioner } from './openai.js';
import { BATCH_DISCOUNT, imageTokens, tokenCost } from './prices.js';
import { rerenderContactSheet } from './review.js';
import { loadStyle, renderStyle } from './styles.js';
import { countSubject } from './subject.js';
import { renderTemplateCaption } from './template.js';
import type { CaptionFlag, CaptionResult, CaptionUsage, Captioner, PhotoFacts } from './types.js';

/** What happened to one photo in a captioning run. */
export type CaptionOutcome = 'captioned' | 'cached' | 'unchanged' | 'hand' | 'failed' | 'planned' | 'submitted';

/** One photo's line in a {@link CaptionReport}. */
export interface CaptionPhotoReport {
  name: string;
  sha256: string;
  outcome: CaptionOutcome;
  caption: string | null;
  source: PhotoRecord['captionSource'];
  flags: string[];
  tokens: TokenCount | null;
  /** The 77-token warning, or null. */
  warning: string | null;
  /** Why captioning failed for this photo (its previous caption is kept), or null. */
  error: string | null;
  /** Billed in this run (null when nothing was). */
  usage: CaptionUsage | null;
}

/** The summary of a run. */
export interface CaptionReport {
  session: string;
  captioner: { source: 'offline' | 'model'; model: string | null; style: string };
  dryRun: boolean;
  photos: CaptionPhotoReport[];
  counts: Record<CaptionOutcome, number>;
  /** Billed in this run: tokens and US dollars (null when the model has no price). */
  usage: { inputTokens: number; outputTokens: number; costUsd: number | null; requests: number };
  /** With `dryRun`: what captioning the planned photos would cost (an estimate). */
  estimate: { photos: number; inputTokens: number; outputTokens: number; costUsd: number | null; batchCostUsd: number | null } | null;
  /** Batch mode: the batch and its state. */
  batch: { id: string | null; status: string; requests: number; completed?: number; failed?: number } | null;
  elapsedMs: number;
}

/** Options of {@link captionSession}. */
export interface CaptionSessionOptions {
  captioner: Captioner;
  /** Re-caption photos that already have an up-to-date model/offline caption, bypassing the cache (hand captions stay). */
  force?: boolean;
  /** Photos captioned at once (default 4). */
  concurrency?: number;
  /** The base model's CLIP tokenizer for exact counts; null/absent gives labelled estimates. */
  tokenizer?: ClipTokenizer | null;
  /** Plan and estimate only: no request is made and nothing is written. */
  dryRun?: boolean;
  logger?: Logger;
  onProgress?: (phase: 'caption', done: number, total: number, item: string) => void;
  /** Re-render the contact sheet with the new captions and flags (default true; about a second per few dozen photos). */
  review?: boolean;
}

/** Output tokens expected per answer for the estimate: the JSON wrapper, five flags and a 20–35 word caption. */
export const ESTIMATED_OUTPUT_TOKENS = 90;

/** A cached model result (`cache/captions/<key>.json`). */
interface CacheEntry {
  version: 1;
  key: string;
  fingerprint: string;
  model: string | null;
  style: string;
  raw: string;
  caption: string;
  flags: CaptionFlag[];
  usage: CaptionUsage | null;
  at: string;
}

const cacheKeyOf = (name: string, key: string) => `${sessionKeys(name).root}cache/captions/${key}.json`;

/**
 * The cache key of a caption: SHA-256 of (captioner fingerprint, dataset image hash, subject).
 * @returns 64 hex digits
 */
export function captionCacheKey(fingerprint: string, imageSha256: string, subject: Subject): string {
  return createHash('sha256').update(JSON.stringify(['booth-caption-v1', fingerprint, imageSha256, subject.trigger, subject.classNoun, subject.kind])).digest('hex');
}

const emptyCounts = (): Record<CaptionOutcome, number> => ({ captioned: 0, cached: 0, unchanged: 0, hand: 0, failed: 0, planned: 0, submitted: 0 });

/** A photo's place in a run. */
interface Planned {
  photo: PhotoRecord;
  image: Buffer;
  imageSha256: string;
  cacheKey: string;
}

/** Shared state of a run over one manifest. */
class Run {
  readonly reports = new Map<string, CaptionPhotoReport>();
  readonly usage = { inputTokens: 0, outputTokens: 0, costUsd: 0 as number | null, requests: 0 };
  /** Batch results to store in the cache before the manifest is saved. */
  pendingCache: Array<{ planned: Planned; result: CaptionResult }> = [];
  /** Photos whose caption fields this run changed (merged into the fresh manifest on commit). */
  readonly touched = new Set<string>();
  /** Of those, the ones a person set by hand: they win even over a hand caption set meanwhile. */
  readonly byHand = new Set<string>();
  /** Whether this run changed `captioning` (the pending batch). */
  captioningChanged = false;
  /** The input file of the batch this run collected, whose record it clears. */
  private collected: string | null = null;
  constructor(
    readonly sessions: SessionStore,
    readonly manifest: SessionManifest,
    readonly tokenizer: ClipTokenizer | null,
    readonly logger: Logger,
  ) {}

  get keys() {
    return sessionKeys(this.manifest.name);
  }

  report(photo: PhotoRecord, outcome: CaptionOutcome, extra: Partial<CaptionPhotoReport> = {}): void {
    const tokens = photo.caption ? countCaptionTokens(photo.caption, this.tokenizer, BASE_MODEL_INFO[this.manifest.base].captionWindow) : null;
    this.reports.set(photo.sha256, {
      name: photo.name,
      sha256: photo.sha256,
      outcome,
      caption: photo.caption,
      source: photo.captionSource,
      flags: photo.captionMeta?.flags ?? [],
      tokens,
      warning: tokens ? tokenWarning(tokens) : null,
      error: photo.captionError ?? null,
      usage: null,
      ...extra,
    });
  }

  /** Record a result on the photo (not saved yet). */
  apply(p: Planned, r: { caption: string; source: 'offline' | 'model'; model: string | null; style: string; flags: CaptionFlag[]; usage: CaptionUsage | null }, outcome: CaptionOutcome, billed: CaptionUsage | null): void {
    const tokens = countCaptionTokens(r.caption, this.tokenizer, BASE_MODEL_INFO[this.manifest.base].captionWindow);
    const meta: CaptionMeta = {
      model: r.model,
      style: r.style,
      image: p.imageSha256,
      cacheKey: p.cacheKey,
      flags: r.flags,
      tokens,
      usage: r.usage,
      at: new Date().toISOString(),
    };
    p.photo.caption = r.caption;
    p.photo.captionSource = r.source;
    p.photo.captionMeta = meta;
    p.photo.captionError = null;
    this.touched.add(p.photo.sha256);
    if (billed) {
      this.usage.inputTokens += billed.inputTokens;
      this.usage.outputTokens += billed.outputTokens;
      this.usage.requests++;
      this.usage.costUsd = this.usage.costUsd === null || billed.costUsd === null ? null : this.usage.costUsd + billed.costUsd;
    }
    const warning = tokenWarning(tokens);
    if (warning) this.logger.warn({ photo: p.photo.name, tokens: tokens.count, exact: tokens.exact }, warning);
    this.report(p.photo, outcome, { usage: billed });
  }

  fail(photo: PhotoRecord, message: string): void {
    photo.captionError = message;
    this.touched.add(photo.sha256);
    this.logger.warn({ photo: photo.name, err: message }, 'photo not captioned');
    this.report(photo, 'failed');
  }

  async readCache(key: string): Promise<CacheEntry | null> {
    try {
      const entry = (await readJson(this.sessions.store, cacheKeyOf(this.manifest.name, key))) as CacheEntry;
      return entry.version === 1 && entry.key === key && typeof entry.caption === 'string' ? entry : null;
    } catch (err) {
      if (isBoothError(err, 'NOT_FOUND') || (isBoothError(err, 'STORAGE') && err.cause instanceof SyntaxError)) return null;
      throw err;
    }
  }

  async writeCache(p: Planned, fingerprint: string, style: string, r: CaptionResult): Promise<void> {
    const entry: CacheEntry = { version: 1, key: p.cacheKey, fingerprint, model: r.model, style, raw: r.raw, caption: r.caption, flags: r.flags, usage: r.usage, at: new Date().toISOString() };
    await putJson(this.sessions.store, cacheKeyOf(this.manifest.name, p.cacheKey), entry);
  }

  /** Record a newly submitted batch, to be saved with the run. */
  setBatch(batch: CaptionBatch): void {
    this.manifest.captioning = { batch };
    this.captioningChanged = true;
  }

  /** Record that `batch` was collected: its record is cleared when the run is saved. */
  clearBatch(batch: CaptionBatch): void {
    this.manifest.captioning = { batch: null };
    this.collected = batch.inputFileId;
    this.captioningChanged = true;
  }

  /**
   * Save: merge this run's caption results and batch into the freshest manifest, write every
   * accepted photo's caption of that manifest as its dataset `.txt` before the manifest that
   * describes them, then re-render the contact sheet from what was saved (unless told not to).
   * @param ifMatch - save only over this version of the manifest (else merge into whatever is current)
   * @throws BoothError `CONFLICT` when another batch was recorded meanwhile; `PRECONDITION_FAILED` (with `ifMatch`)
   */
  async commit(review = true, ifMatch?: string): Promise<SessionManifest> {
    const store = this.sessions.store;
    const ours = this.manifest;
    const saved = await this.sessions.update(
      ours.name,
      async (fresh) => {
        for (const sha of this.touched) {
          const mine = ours.photos.find((p) => p.sha256 === sha);
          const theirs = fresh.photos.find((p) => p.sha256 === sha);
          // Removed meanwhile: its caption goes with it.
          if (!mine || !theirs) continue;
          // A person captioned it by hand while the run went on: theirs wins over a captioner's.
          if (theirs.captionSource === 'hand' && !this.byHand.has(sha)) continue;
          theirs.caption = mine.caption;
          theirs.captionSource = mine.captionSource;
          theirs.captionMeta = mine.captionMeta ?? null;
          theirs.captionError = mine.captionError ?? null;
        }
        if (this.captioningChanged) {
          const mine = ours.captioning?.batch ?? null;
          const theirs = fresh.captioning?.batch ?? null;
          if (mine && theirs && theirs.inputFileId !== mine.inputFileId) {
            throw new BoothError(
              'CONFLICT',
              `session "${ours.name}" got caption batch ${theirs.id ?? theirs.inputFileId} from another process while this one was submitted; collect it with \`booth caption ${ours.name} --batch\``,
            );
          }
          // Clear only the batch collected here, not one another process submitted since.
          if (mine || !theirs || theirs.inputFileId === this.collected) fresh.captioning = { batch: structuredClone(mine) };
        }
        for (const photo of fresh.photos) {
          if (photo.status !== 'accepted' || !photo.datasetKey || photo.caption === null) continue;
          const stem = path.posix.basename(photo.datasetKey, '.png');
          await store.put(this.keys.datasetCaption(stem), `${photo.caption}\n`, { contentType: 'text/plain; charset=utf-8' });
        }
        return fresh;
      },
      { what: 'the captions', ...(ifMatch !== undefined ? { ifMatch } : {}) },
    );
    if (review) await rerenderContactSheet(this.sessions, saved);
    return saved;
  }

  result(captioner: { source: 'offline' | 'model'; model: string | null; style: string }, started: number, extra: Partial<CaptionReport> = {}): CaptionReport {
    const photos = this.manifest.photos.filter((p) => this.reports.has(p.sha256)).map((p) => this.reports.get(p.sha256) as CaptionPhotoReport);
    const counts = emptyCounts();
    for (const r of photos) counts[r.outcome]++;
    return {
      session: this.manifest.name,
      captioner,
      dryRun: false,
      photos,
      counts,
      usage: { ...this.usage },
      estimate: null,
      batch: null,
      elapsedMs: Date.now() - started,
      ...extra,
    };
  }
}

/** Accepted, prepared photos: the ones a caption is trained with. */
function captionable(m: SessionManifest): PhotoRecord[] {
  return m.photos.filter((p) => p.status === 'accepted' && p.datasetKey !== null);
}

/**
 * Sort a session's photos into: hand-captioned (left alone), unchanged (recorded key matches),
 * cached (served now) and to-do.
 */
async function plan(run: Run, captioner: Captioner, force: boolean, dryRun: boolean): Promise<Planned[]> {
  const todo: Planned[] = [];
  for (const photo of captionable(run.manifest)) {
    if (photo.captionSource === 'hand') {
      run.report(photo, 'hand');
      continue;
    }
    const image = await readAll(run.sessions.store, photo.datasetKey as string);
    const imageSha256 = createHash('sha256').update(image).digest('hex');
    const cacheKey = captionCacheKey(captioner.fingerprint, imageSha256, run.manifest.subject);
    const p: Planned = { photo, image, imageSha256, cacheKey };
    if (!force && photo.caption !== null && (photo.captionSource === 'model' || photo.captionSource === 'offline') && photo.captionMeta?.cacheKey === cacheKey) {
      run.report(photo, 'unchanged');
      continue;
    }
    if (!force && captioner.source === 'model') {
      const hit = await run.readCache(cacheKey);
      if (hit) {
        if (!dryRun) run.apply(p, { ...hit, source: 'model' }, 'cached', null);
        else run.report(photo, 'cached');
        continue;
      }
    }
    todo.push(p);
  }
  return todo;
}

/** What `prepare` measured about a photo, for the offline captioner. */
async function factsFor(sessions: SessionStore, manifest: SessionManifest, photo: PhotoRecord): Promise<PhotoFacts | null> {
  if (!photo.crop || !photo.source) return null;
  const crop = photo.crop;
  const centreIn = (b: Rect) => b.x + b.width / 2 >= crop.x && b.x + b.width / 2 <= crop.x + crop.width && b.y + b.height / 2 >= crop.y && b.y + b.height / 2 <= crop.y + crop.height;
  let face: PhotoFacts['face'] = null;
  const idx = photo.faces.findIndex((f) => f.subject);
  if (idx >= 0) {
    let analysis: Analysis | null = null;
    try {
      analysis = (await readJson(sessions.store, sessionKeys(manifest.name).analysis(photo.sha256))) as Analysis;
    } catch (err) {
      if (!isBoothError(err, 'NOT_FOUND')) throw err;
    }
    const f = analysis?.faces[idx];
    if (f) face = { box: f.box, landmarks: f.landmarks, expressions: f.expressions ?? null };
  }
  return {
    source: { width: photo.source.width, height: photo.source.height },
    crop,
    framing: photo.framingAchieved,
    head: photo.head,
    face,
    otherFacesInCrop: photo.faces.filter((f) => !f.subject && centreIn(f.box)).length,
  };
}

/** Estimated tokens and cost of captioning `n` images of `side` px with a model captioner. */
function estimate(captioner: OpenAICaptionerLike, manifest: SessionManifest, n: number, promptText: string): NonNullable<CaptionReport['estimate']> {
  const side = Math.min(captioner.imageSide, manifest.settings.resolution);
  // Text: about 4 characters per token for English, plus the schema and message framing.
  const perImageIn = imageTokens(captioner.model, { width: side, height: side }, captioner.detail) + Math.ceil(promptText.length / 4) + 150;
  const inputTokens = perImageIn * n;
  const outputTokens = ESTIMATED_OUTPUT_TOKENS * n;
  const costUsd = tokenCost({ inputTokens, outputTokens }, captioner.price);
  return { photos: n, inputTokens, outputTokens, costUsd, batchCostUsd: costUsd === null ? null : costUsd * BATCH_DISCOUNT };
}

type OpenAICaptionerLike = Pick<OpenAICaptioner, 'model' | 'imageSide' | 'detail' | 'price'>;

const isModelCaptioner = (c: Captioner): c is OpenAICaptioner => c.source === 'model' && 'requestBody' in c && 'client' in c;

/**
 * Caption a prepared session's accepted photos.
 * @param sessions - session store
 * @param name - session name
 * @param options - captioner, force, concurrency, tokenizer, dry run
 * @returns the report; results are also in the saved manifest and the dataset `.txt` objects
 * @throws BoothError `INVALID_ARGUMENT` when the session is not prepared; `CONFLICT` while a batch
 *   is pending; `CAPTION_SERVICE` when the endpoint refuses the job (results obtained so far are saved first)
 * @example
 * const report = await captionSession(sessions, 'alice', { captioner: createOfflineCaptioner() });
 */
export async function captionSession(sessions: SessionStore, name: string, options: CaptionSessionOptions): Promise<CaptionReport> {
  const started = Date.now();
  const { captioner } = options;
  const logger = options.logger ?? silentLogger();
  const manifest = await sessions.get(name);
  assertPrepared(manifest);
  const pending = manifest.captioning?.batch ?? null;
  if (pending && !options.dryRun) {
    throw new BoothError(
      'CONFLICT',
      `session "${name}" has caption batch ${pending.id ?? '(being created)'} pending; collect it with \`booth caption ${name} --batch\` before captioning again`,
    );
  }
  const run = new Run(sessions, manifest, options.tokenizer ?? null, logger);
  const who = { source: captioner.source, model: captioner.model, style: captioner.style };
  const todo = await plan(run, captioner, options.force ?? false, options.dryRun ?? false);

  if (options.dryRun) {
    for (const p of todo) run.report(p.photo, 'planned');
    const est = isModelCaptioner(captioner) ? estimate(captioner, manifest, todo.length, renderStyle(await loadStyle(captioner.style), manifest.subject)) : { photos: todo.length, inputTokens: 0, outputTokens: 0, costUsd: 0, batchCostUsd: 0 };
    return run.result(who, started, { dryRun: true, estimate: est });
  }

  const concurrency = Math.max(1, Math.min(options.concurrency ?? 4, 64));
  let next = 0;
  let done = 0;
  let fatal: unknown = null;
  options.onProgress?.('caption', 0, todo.length, '');
  const worker = async (): Promise<void> => {
    while (next < todo.length && fatal === null) {
      const p = todo[next++] as Planned;
      try {
        const facts = captioner.source === 'offline' ? await factsFor(sessions, manifest, p.photo) : null;
        const r = await captioner.caption({ name: p.photo.name, image: p.image, imageSha256: p.imageSha256, subject: manifest.subject, facts });
        // Paid for: keep it before anything else can fail.
        if (r.source === 'model') await run.writeCache(p, captioner.fingerprint, captioner.style, r);
        run.apply(p, { ...r, style: captioner.style }, 'captioned', r.usage);
      } catch (err) {
        if (isBoothError(err, 'CAPTION_FAILED')) run.fail(p.photo, err.message);
        else fatal ??= err;
      }
      options.onProgress?.('caption', ++done, todo.length, p.photo.name);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, todo.length) }, worker));
  // Save what was obtained even when the job stops: nothing paid for is dropped.
  await run.commit(options.review ?? true);
  if (fatal !== null) throw fatal;
  return run.result(who, started);
}

function assertPrepared(m: SessionManifest): void {
  if (!m.prepared || captionable(m).length === 0) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      m.prepared
        ? `session "${m.name}" has no accepted photo to caption; see \`booth session show ${m.name}\``
        : `session "${m.name}" is not prepared yet, so there is no training image to caption; run \`booth prepare ${m.name}\` first`,
    );
  }
}

/** Find one photo by file name or SHA-256 prefix (≥ 6 hex digits). */
export function findPhoto(m: SessionManifest, which: string): PhotoRecord {
  const hits = m.photos.filter((p) => p.name === which || (which.length >= 6 && p.sha256.startsWith(which.toLowerCase())));
  if (hits.length !== 1) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `${hits.length === 0 ? 'no' : 'more than one'} photo in "${m.name}" matches ${JSON.stringify(which)}; use the name shown by \`booth caption ${m.name} --list\` or a longer SHA-256 prefix`,
    );
  }
  return hits[0] as PhotoRecord;
}

/** Options of {@link setHandCaption}. */
export interface HandCaptionOptions {
  /** Require `<trigger> <class>` exactly once (default true). */
  check?: boolean;
  tokenizer?: ClipTokenizer | null;
  /** Re-render the contact sheet (default true). */
  review?: boolean;
  /**
   * Apply only to this version of the manifest (its etag, e.g. from an HTTP `If-Match`);
   * otherwise the edit is merged into whatever version is current.
   */
  ifMatch?: string;
}

/**
 * Set a photo's caption by hand. A hand caption is never overwritten by `booth caption` or
 * `prepare`; `text: null` drops it (back to the session template, so the next run captions it).
 * @param which - the photo's file name or a SHA-256 prefix
 * @returns the photo's report line (with the token count and warning)
 * @throws BoothError `INVALID_ARGUMENT` for an unknown photo, empty or oversized text, control
 *   characters, or (with `check`) text without `<trigger> <class>` exactly once;
 *   `PRECONDITION_FAILED` when `ifMatch` is not the current version
 * @example await setHandCaption(sessions, 'alice', '01.jpg', 'a photo of ohwx woman laughing on a beach');
 */
export async function setHandCaption(sessions: SessionStore, name: string, which: string, text: string | null, options: HandCaptionOptions = {}): Promise<CaptionPhotoReport> {
  const manifest = await sessions.get(name);
  const photo = findPhoto(manifest, which);
  const tokenizer = options.tokenizer ?? null;
  const run = new Run(sessions, manifest, tokenizer, silentLogger());
  if (text === null) {
    if (photo.captionSource === 'hand') {
      run.touched.add(photo.sha256);
      run.byHand.add(photo.sha256);
      photo.caption = photo.status === 'accepted' ? renderTemplateCaption(manifest.settings.captionTemplate, manifest.subject) : null;
      photo.captionSource = photo.caption === null ? null : 'template';
      photo.captionMeta = null;
      photo.captionError = null;
    }
  } else {
    const caption = text.replace(/\s+/g, ' ').trim();
    if (caption === '' || caption.length > 2000) {
      throw new BoothError('INVALID_ARGUMENT', `caption for ${photo.name} must be 1–2000 characters; got ${caption.length}`);
    }
    if (/[\p{Cc}\p{Cf}]/u.test(caption)) {
      throw new BoothError('INVALID_ARGUMENT', `caption for ${photo.name} contains control or invisible formatting characters; type it as plain text`);
    }
    const phrase = `${manifest.subject.trigger} ${manifest.subject.classNoun}`;
    const n = countSubject(caption, manifest.subject);
    if ((options.check ?? true) && n !== 1) {
      throw new BoothError(
        'INVALID_ARGUMENT',
        `caption for ${photo.name} contains "${phrase}" ${n} times; it must contain it exactly once so training ties the photo to the trigger phrase (use --no-check to store it anyway)`,
      );
    }
    const tokens = countCaptionTokens(caption, tokenizer, BASE_MODEL_INFO[manifest.base].captionWindow);
    photo.caption = caption;
    photo.captionSource = 'hand';
    photo.captionMeta = { model: null, style: null, image: null, cacheKey: null, flags: [], tokens, usage: null, at: new Date().toISOString() };
    photo.captionError = null;
    run.touched.add(photo.sha256);
    run.byHand.add(photo.sha256);
  }
  await run.commit(options.review ?? true, options.ifMatch);
  run.report(photo, photo.captionSource === 'hand' ? 'hand' : 'unchanged');
  return run.reports.get(photo.sha256) as CaptionPhotoReport;
}

/**
 * Every photo's caption as a report line (no captioning).
 * @returns one line per photo that has a caption or is accepted, in manifest order
 */
export async function listCaptions(sessions: SessionStore, name: string, tokenizer: ClipTokenizer | null = null): Promise<CaptionPhotoReport[]> {
  const m = await sessions.get(name);
  const run = new Run(sessions, m, tokenizer, silentLogger());
  const out: CaptionPhotoReport[] = [];
  for (const p of m.photos) {
    if (p.status !== 'accepted' && p.caption === null) continue;
    run.report(p, p.captionSource === 'hand' ? 'hand' : 'unchanged');
    out.push(run.reports.get(p.sha256) as CaptionPhotoReport);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Batch API mode

/** Batch statuses after which nothing more will happen. */
const TERMINAL = new Set(['completed', 'failed', 'expired', 'cancelled']);

/** Options of {@link captionSessionBatch}. */
export interface CaptionBatchOptions extends Omit<CaptionSessionOptions, 'captioner' | 'concurrency' | 'onProgress'> {
  captioner: OpenAICaptioner;
  /** Keep polling until the batch ends and apply it (default: report its state and return). */
  wait?: boolean;
  /** Between polls, ms (default 30,000). */
  pollMs?: number;
  /** How to wait between polls (tests). */
  sleep?: (ms: number) => Promise<void>;
}

/**
 * Caption through the Batch API (half price, results within 24 h). The first call submits every
 * photo that needs a caption and records the batch in the manifest; later calls (from any
 * process, after any restart) poll it and, once it has ended, apply its results exactly as a
 * synchronous run would, then clear it.
 * @returns the report, with `batch` saying where the batch stands
 * @throws BoothError `CONFLICT` when the pending batch belongs to another endpoint; `CAPTION_SERVICE` when the endpoint refuses
 * @example
 * await captionSessionBatch(sessions, 'alice', { captioner });          // submit
 * await captionSessionBatch(sessions, 'alice', { captioner, wait: true }); // later: collect
 */
export async function captionSessionBatch(sessions: SessionStore, name: string, options: CaptionBatchOptions): Promise<CaptionReport> {
  const started = Date.now();
  const { captioner } = options;
  const logger = options.logger ?? silentLogger();
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  let manifest = await sessions.get(name);
  assertPrepared(manifest);
  const who = { source: captioner.source, model: captioner.model, style: captioner.style };
  let pending = manifest.captioning?.batch ?? null;

  if (!pending) {
    const run = new Run(sessions, manifest, options.tokenizer ?? null, logger);
    const todo = await plan(run, captioner, options.force ?? false, options.dryRun ?? false);
    if (options.dryRun) {
      for (const p of todo) run.report(p.photo, 'planned');
      return run.result(who, started, { dryRun: true, estimate: estimate(captioner, manifest, todo.length, renderStyle(await loadStyle(captioner.style), manifest.subject)) });
    }
    if (todo.length === 0) {
      await run.commit(options.review ?? true);
      return run.result(who, started);
    }
    const requests = todo.map((p, i) => ({ customId: `photo-${i}-${p.photo.sha256.slice(0, 16)}`, sha256: p.photo.sha256, image: p.imageSha256, cacheKey: p.cacheKey }));
    const lines: string[] = [];
    for (const [i, p] of todo.entries()) {
      const body = await captioner.requestBody({ image: p.image, subject: manifest.subject });
      lines.push(JSON.stringify({ custom_id: requests[i]?.customId, method: 'POST', url: '/v1/chat/completions', body }));
    }
    const upload = await toFile(Buffer.from(`${lines.join('\n')}\n`), `booth-${name}-captions.jsonl`, { type: 'application/jsonl' });
    const file = await serviceCall(captioner, 'upload the batch input file', () => captioner.client.files.create({ file: upload, purpose: 'batch' }));
    pending = {
      id: null,
      inputFileId: file.id,
      baseURL: captioner.baseURL,
      model: captioner.model,
      style: captioner.style,
      detail: captioner.detail,
      submittedAt: new Date().toISOString(),
      requests,
    };
    // Recorded before the batch exists: a crash now is recovered by finding the batch by its input file.
    run.setBatch(pending);
    for (const p of todo) run.report(p.photo, 'submitted');
    await run.commit(false);
    manifest = await sessions.get(name);
    pending = manifest.captioning?.batch ?? pending;
  }

  if (pending.baseURL !== captioner.baseURL) {
    throw new BoothError('CONFLICT', `session "${name}" has caption batch ${pending.id ?? ''} pending at ${pending.baseURL}, not ${captioner.baseURL}; set OPENAI_BASE_URL to it to collect it`);
  }
  const batchOf = pending;
  if (batchOf.id === null) {
    const found = await findBatchByInput(captioner, batchOf.inputFileId);
    const batch =
      found ??
      (await serviceCall(captioner, 'create the batch', () =>
        captioner.client.batches.create({ input_file_id: batchOf.inputFileId, endpoint: '/v1/chat/completions', completion_window: '24h', metadata: { booth_session: name } }),
      ));
    batchOf.id = batch.id;
    manifest = await sessions.update(
      name,
      (m) => {
        const recorded = m.captioning?.batch ?? null;
        // Another process may have created (or collected) it meanwhile; only fill in our own record.
        if (recorded && recorded.inputFileId === batchOf.inputFileId) recorded.id = batch.id;
        return m;
      },
      { what: 'the caption batch id' },
    );
    logger.info({ batch: batch.id, requests: batchOf.requests.length }, 'caption batch submitted');
  }
  const id = batchOf.id as string;
  for (;;) {
    const batch = await serviceCall(captioner, `retrieve batch ${id}`, () => captioner.client.batches.retrieve(id));
    const counts = batch.request_counts;
    const state = { id, status: batch.status, requests: batchOf.requests.length, completed: counts?.completed, failed: counts?.failed };
    if (!TERMINAL.has(batch.status)) {
      if (!options.wait) {
        const run = new Run(sessions, manifest, options.tokenizer ?? null, logger);
        for (const r of batchOf.requests) {
          const photo = manifest.photos.find((p) => p.sha256 === r.sha256);
          if (photo) run.report(photo, 'submitted');
        }
        return run.result(who, started, { batch: state });
      }
      await sleep(options.pollMs ?? 30_000);
      continue;
    }
    const lines = [
      ...(batch.output_file_id ? await fileLines(captioner, batch.output_file_id) : []),
      ...(batch.error_file_id ? await fileLines(captioner, batch.error_file_id) : []),
    ];
    manifest = await sessions.get(name);
    const run = new Run(sessions, manifest, options.tokenizer ?? null, logger);
    applyBatch(run, batchOf, lines, batch.status, captioner);
    for (const p of run.pendingCache) await run.writeCache(p.planned, captioner.fingerprint, batchOf.style, p.result);
    run.clearBatch(batchOf);
    await run.commit(options.review ?? true);
    return run.result({ ...who, model: batchOf.model, style: batchOf.style }, started, { batch: state });
  }
}

/** Apply the output lines of an ended batch to the run's manifest. */
function applyBatch(run: Run, batch: CaptionBatch, lines: unknown[], status: string, captioner: OpenAICaptioner): void {
  run.pendingCache = [];
  const byId = new Map<string, Record<string, unknown>>();
  for (const line of lines) {
    if (line && typeof line === 'object' && typeof (line as { custom_id?: unknown }).custom_id === 'string') byId.set((line as { custom_id: string }).custom_id, line as Record<string, unknown>);
  }
  for (const req of batch.requests) {
    const photo = run.manifest.photos.find((p) => p.sha256 === req.sha256);
    if (!photo) continue;
    // A person captioned it by hand while the batch ran: theirs wins.
    if (photo.captionSource === 'hand') {
      run.report(photo, 'hand');
      continue;
    }
    const line = byId.get(req.customId);
    const response = line?.response as { status_code?: number; body?: unknown } | null | undefined;
    const lineError = line?.error as { message?: string; code?: string } | null | undefined;
    if (!line) {
      run.fail(photo, `${photo.name}: no result in caption batch ${batch.id ?? ''} (batch ${status}); run \`booth caption\` again to caption it`);
      continue;
    }
    if (!response || response.status_code !== 200) {
      const body = response?.body as { error?: { message?: string } } | undefined;
      const why = lineError?.message ?? body?.error?.message ?? `HTTP ${response?.status_code ?? '?'}`;
      run.fail(photo, `${photo.name}: the batch request failed: ${why}; run \`booth caption\` again to caption it`);
      continue;
    }
    try {
      const r = parseCaptionCompletion(response.body as ChatCompletion, { photo: photo.name, subject: run.manifest.subject, model: batch.model, price: captioner.price, batch: true });
      const planned: Planned = { photo, image: Buffer.alloc(0), imageSha256: req.image, cacheKey: req.cacheKey };
      run.pendingCache.push({ planned, result: r });
      run.apply(planned, { ...r, style: batch.style }, 'captioned', r.usage);
    } catch (err) {
      run.fail(photo, isBoothError(err) ? err.message : `${photo.name}: ${errorMessage(err)}`);
    }
  }
}

/** The JSON lines of a batch output or error file. */
async function fileLines(captioner: OpenAICaptioner, fileId: string): Promise<unknown[]> {
  const res = await serviceCall(captioner, `download batch file ${fileId}`, () => captioner.client.files.content(fileId));
  const text = await res.text();
  const out: unknown[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      // A damaged line only loses its own photo, which is then reported as missing.
    }
  }
  return out;
}

/** A batch created from `inputFileId` before a crash, if the endpoint lists one. */
async function findBatchByInput(captioner: OpenAICaptioner, inputFileId: string) {
  const page = await serviceCall(captioner, 'list batches', () => captioner.client.batches.list({ limit: 100 }));
  return page.data.find((b) => b.input_file_id === inputFileId) ?? null;
}

/** Run one Batch/Files API call; any failure stops the job with a message naming the step. */
async function serviceCall<T>(captioner: OpenAICaptioner, what: string, fn: () => PromiseLike<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw new BoothError('CAPTION_SERVICE', `could not ${what} at ${captioner.baseURL}: ${errorMessage(err)}; run the same command again to retry (the batch id is kept in the session)`, {
      cause: err,
    });
  }
}
