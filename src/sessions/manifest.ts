/**
 * The session manifest (`sessions/<name>/session.json`): the single record of a session — its
 * subject, target base model, settings, every photo added with its per-photo preparation result,
 * and the session state. It is validated with zod on every read and write, so a hand-edited or
 * corrupted manifest is reported with the field at fault instead of propagating. Only the control
 * plane writes it (one writer per key, see DESIGN.md), always atomically through the store.
 */
import { z } from 'zod';
import { BASE_MODELS } from './base-models.js';
import { FRAMINGS, type Framing } from '../preprocess/types.js';

/** Current manifest format version. Bump and migrate when the shape changes incompatibly. */
export const MANIFEST_VERSION = 1;

/** Session names double as storage keys and CLI arguments, so they are kept to a safe alphabet. */
export const SESSION_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

const rectSchema = z.object({
  x: z.number().int().nonnegative(),
  y: z.number().int().nonnegative(),
  width: z.number().int().positive(),
  height: z.number().int().positive(),
});

/** A face box stored in the manifest (source pixels, rounded). */
const faceSchema = z.object({
  box: rectSchema,
  score: z.number().min(0).max(1),
  /** Whether this face is the session's subject. */
  subject: z.boolean(),
  /** Euclidean descriptor distance to the subject's identity centroid (null when identity is off). */
  distance: z.number().nonnegative().nullable(),
});

/** A quality or identity finding with the value that triggered it. */
const checkSchema = z.object({
  flag: z.string().min(1),
  /** The measured value (e.g. Laplacian variance for `blurry`), or null when not numeric. */
  value: z.number().nullable(),
  /** The threshold the value was compared with, or null. */
  threshold: z.number().nullable(),
  /** One sentence a person can act on. */
  detail: z.string(),
});

/** Who wrote a photo's caption, from least to most authoritative. */
export const CAPTION_SOURCES = ['template', 'offline', 'model', 'hand'] as const;

/** Details of the caption a photo carries (see `src/captions/`). */
const captionMetaSchema = z.object({
  /** Model that wrote it (`gpt-4o-mini`, …) for model captions, else null. */
  model: z.string().nullable(),
  /** Caption style (prompt template name, e.g. `natural`, `tags`), or null for hand/template captions. */
  style: z.string().nullable(),
  /** SHA-256 of the dataset image that was captioned; a different crop makes the caption stale. */
  image: z.string().regex(/^[0-9a-f]{64}$/).nullable(),
  /** Captioning cache key (`cache/captions/<key>.json`), or null. */
  cacheKey: z.string().nullable(),
  /** Reviewer flags reported by the captioner: `multiple-people`, `face-covered`, `blurry`, `text-watermark`, `heavy-filter`. */
  flags: z.array(z.string()),
  /**
   * Tokens of the caption (BOS/EOS included) against the window of the encoder that decides what
   * the model reads: CLIP's 77 (SD bases) or T5's (`encoder: 't5'`, FLUX.1 and SD 3.5);
   * `exact` false means estimated.
   */
  tokens: z.object({ count: z.number().int().nonnegative(), limit: z.number().int().positive(), exact: z.boolean(), encoder: z.enum(['clip', 't5']).optional() }).nullable(),
  /** Tokens billed and their cost in US dollars when this caption was bought (0 when served from the cache). */
  usage: z.object({ inputTokens: z.number().int().nonnegative(), outputTokens: z.number().int().nonnegative(), costUsd: z.number().nonnegative().nullable() }).nullable(),
  at: z.string(),
});

/** Per-photo status. `pending`: added, not prepared yet. */
export const PHOTO_STATUSES = ['pending', 'accepted', 'excluded', 'rejected'] as const;

const photoSchema = z.object({
  /** File name as added (base name only, sanitised for display; never used as a path). */
  name: z.string().min(1).max(255),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  /** Byte size of the original file. */
  size: z.number().int().nonnegative(),
  /** Key of the stored original (`uploads/<sha256>.<ext>`), or null for files rejected at intake. */
  key: z.string().nullable(),
  addedAt: z.string(),
  status: z.enum(PHOTO_STATUSES),
  /** Why the photo is rejected or excluded, in words a person can act on; null otherwise. */
  reason: z.string().nullable(),
  /** Flag names (`other-identity`, `blurry`, `small-face`, `near-duplicate`, …); details in `checks`. */
  flags: z.array(z.string()),
  checks: z.array(checkSchema),
  /** Manual decision that overrides automatic exclusion (`include`) or forces it (`exclude`). */
  override: z.enum(['include', 'exclude']).nullable().default(null),
  /** Upright size and stored format; null until decoded. */
  source: z
    .object({ width: z.number().int().positive(), height: z.number().int().positive(), format: z.string(), orientation: z.number().int() })
    .nullable(),
  warnings: z.array(z.string()),
  /** All faces detected (subject marked). */
  faces: z.array(faceSchema),
  /** The subject's face box in source pixels, or null. */
  face: rectSchema.nullable(),
  /** Detection score of the subject's face, or null. */
  faceScore: z.number().nullable(),
  /** Crop rectangle in source pixels (square), or null when not prepared. */
  crop: rectSchema.nullable(),
  /**
   * A crop set by hand (source pixels, square), used instead of the planned one by every later
   * `prepare`; absent or null means automatic. Absent in sessions from before it existed.
   */
  cropOverride: rectSchema.nullable().optional(),
  cropStrategy: z.enum(['face', 'salient', 'center']).nullable(),
  framing: z.enum(FRAMINGS as unknown as [Framing, ...Framing[]]).nullable(),
  framingAchieved: z.enum(FRAMINGS as unknown as [Framing, ...Framing[]]).nullable(),
  head: rectSchema.nullable(),
  headInside: z.boolean().nullable(),
  /** Output side / crop side; > 1 means upscaled. */
  upscale: z.number().positive().nullable(),
  caption: z.string().nullable(),
  /**
   * Who wrote `caption`: `template` (prepare's session template), `offline` (Booth's measurements),
   * `model` (a vision model, see `captionMeta.model`) or `hand` (a person; never overwritten).
   */
  captionSource: z.enum(CAPTION_SOURCES).nullable(),
  /** How the caption was made and what the captioner noticed; absent in sessions captioned before it existed. */
  captionMeta: captionMetaSchema.nullable().optional(),
  /** Why the last captioning attempt failed for this photo (the caption above is kept), or null. */
  captionError: z.string().nullable().optional(),
  /** Dataset image key (`dataset/<stem>.png`) when accepted and prepared, else null. */
  datasetKey: z.string().nullable(),
});

/** The session state machine: created → prepared; any change to photos or settings → created. */
export const SESSION_STATES = ['created', 'prepared'] as const;

const subjectSchema = z.object({
  /** Rare-token trigger phrase, e.g. `ohwx`. */
  trigger: z
    .string()
    .trim()
    .min(1)
    .max(48)
    .regex(/^[^\p{Cc}\p{Cf}]+$/u, 'must not contain control or format characters'),
  /** Class noun, e.g. `man`, `woman`, `dog`, `backpack`. */
  classNoun: z
    .string()
    .trim()
    .min(1)
    .max(48)
    .regex(/^[^\p{Cc}\p{Cf}]+$/u, 'must not contain control or format characters'),
  kind: z.enum(['person', 'object', 'style']),
});

const settingsSchema = z.object({
  /** Training resolution (square side, px); defaults from the base model. */
  resolution: z.number().int().min(256).max(2048),
  framing: z.enum(FRAMINGS as unknown as [Framing, ...Framing[]]),
  /** Find the subject's identity across photos (`auto`), or crop the most prominent face (`off`). */
  identity: z.enum(['auto', 'off']),
  /** Caption template; `{trigger}` and `{class}` are replaced. */
  captionTemplate: z.string().min(1).max(500),
});

/** One request of a submitted caption batch. */
const batchRequestSchema = z.object({
  /** The request's `custom_id` in the batch input file. */
  customId: z.string().min(1),
  /** Photo it captions. */
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  /** SHA-256 of the dataset image sent. */
  image: z.string().regex(/^[0-9a-f]{64}$/),
  cacheKey: z.string().min(1),
});

/** A Batch API job submitted for this session, kept until its results are applied. */
const captionBatchSchema = z.object({
  /** Batch id returned by `POST /v1/batches`; null between uploading the input file and creating the batch. */
  id: z.string().min(1).nullable(),
  inputFileId: z.string().min(1),
  /** Endpoint base URL it was submitted to (the batch only exists there). */
  baseURL: z.string(),
  model: z.string().min(1),
  style: z.string().min(1),
  detail: z.enum(['low', 'high', 'auto']),
  submittedAt: z.string(),
  requests: z.array(batchRequestSchema),
});

const captioningSchema = z.object({
  batch: captionBatchSchema.nullable(),
});

/** The manifest schema (zod). */
export const manifestSchema = z.object({
  version: z.literal(MANIFEST_VERSION),
  name: z.string().regex(SESSION_NAME_PATTERN),
  createdAt: z.string(),
  updatedAt: z.string(),
  subject: subjectSchema,
  base: z.enum(BASE_MODELS),
  settings: settingsSchema,
  state: z.enum(SESSION_STATES),
  photos: z.array(photoSchema),
  /** Captioning state that must survive a restart (a submitted Batch API job); absent until first used. */
  captioning: captioningSchema.optional(),
  /** Summary of the last completed `prepare`, or null. */
  prepared: z
    .object({
      at: z.string(),
      /** Keys of the review contact sheet. */
      contactSheet: z.object({ png: z.string(), html: z.string() }),
      counts: z.object({ accepted: z.number().int(), excluded: z.number().int(), rejected: z.number().int() }),
    })
    .nullable(),
});

/** A session manifest. */
export type SessionManifest = z.infer<typeof manifestSchema>;
/** One photo record of a manifest. */
export type PhotoRecord = z.infer<typeof photoSchema>;
/** A finding with its measured value. */
export type PhotoCheck = z.infer<typeof checkSchema>;
/** Subject of a session. */
export type Subject = z.infer<typeof subjectSchema>;
/** Preparation settings. */
export type SessionSettings = z.infer<typeof settingsSchema>;
/** Caption details of a photo. */
export type CaptionMeta = z.infer<typeof captionMetaSchema>;
/** A submitted caption batch. */
export type CaptionBatch = z.infer<typeof captionBatchSchema>;
/** A stored face. */
export type StoredFace = z.infer<typeof faceSchema>;
