/**
 * The Captioner contract: caption ONE prepared image (the square crop that will be trained on)
 * for a session's subject, and say how it was done — the caption with the trigger phrase and
 * class noun inserted exactly once, who wrote it, the reviewer flags the captioner noticed, and
 * the tokens and dollars it cost. Two captioners implement it: `openai.ts` (a vision model behind
 * any OpenAI-compatible endpoint) and `offline.ts` (Booth's own measurements, no network).
 * What it leaves out: which photos need captions, caching, concurrency, storing results and the
 * token-window check — `session.ts` does those once for every captioner.
 */
import type { Framing, Point, Rect } from '../preprocess/types.js';
import type { ExpressionScores } from '../preprocess/faces.js';
import type { Subject } from '../sessions/manifest.js';

/** Reviewer flags a captioner may report (the manifest stores these names). */
export const CAPTION_FLAGS = ['multiple-people', 'face-covered', 'blurry', 'text-watermark', 'heavy-filter'] as const;

/** One of {@link CAPTION_FLAGS}. */
export type CaptionFlag = (typeof CAPTION_FLAGS)[number];

/** What Booth measured about a photo while preparing it (all in source pixels of the upright photo). */
export interface PhotoFacts {
  source: { width: number; height: number };
  /** The square crop trained on. */
  crop: Rect;
  /** The framing the crop achieved (person sessions with a face), else null. */
  framing: Framing | null;
  /** The subject's estimated whole head (hair to chin), or null. */
  head: Rect | null;
  /** The subject's face: detector box, 68 landmarks, expression probabilities when computed. */
  face: { box: Rect; landmarks: Point[]; expressions: ExpressionScores | null } | null;
  /** Other people's faces whose centre lies inside the crop (they will be in the training image). */
  otherFacesInCrop: number;
}

/** Input of {@link Captioner.caption}. */
export interface CaptionInput {
  /** The photo's display name (for messages). */
  name: string;
  /** The prepared training image (PNG bytes of the crop). */
  image: Buffer;
  /** SHA-256 of `image`, hex. */
  imageSha256: string;
  subject: Subject;
  /** Measurements from `prepare`; the offline captioner needs them, model captioners may ignore them. */
  facts: PhotoFacts | null;
}

/** Tokens billed for one caption. */
export interface CaptionUsage {
  inputTokens: number;
  outputTokens: number;
  /** US dollars at the configured price, or null when the model has no known price. */
  costUsd: number | null;
}

/** What a captioner returns for one photo. */
export interface CaptionResult {
  /** The final caption: contains `<trigger> <class>` exactly once. */
  caption: string;
  /** The captioner's text before the subject was inserted (model output with its placeholder). */
  raw: string;
  source: 'offline' | 'model';
  /** Model name for model captions, else null. */
  model: string | null;
  flags: CaptionFlag[];
  /** Tokens and cost, or null when nothing was billed (offline). */
  usage: CaptionUsage | null;
  /** Requests made, retries included (0 for offline). */
  attempts: number;
}

/** A captioner. */
export interface Captioner {
  /** `offline` or `model`. */
  readonly source: 'offline' | 'model';
  /** Model name (model captioners), else null. */
  readonly model: string | null;
  /** Caption style (prompt template name). */
  readonly style: string;
  /**
   * What makes two results interchangeable besides the image and subject (model, prompt template
   * text, detail, …): part of the cache key, so changing any of it re-captions.
   */
  readonly fingerprint: string;
  /**
   * Caption one image.
   * @throws BoothError `CAPTION_FAILED` for a failure about this photo (refusal, malformed output,
   *   a caption that cannot be fixed, timeouts and rate limits after the retries);
   *   `CAPTION_SERVICE` when the endpoint refuses the whole job (bad key, unknown model, bad request)
   */
  caption(input: CaptionInput): Promise<CaptionResult>;
}
