/**
 * Per-photo analysis: the expensive, cacheable part of `prepare` that depends only on a photo's
 * bytes — decode, faces (person sessions), perceptual hash and a review preview. A pure function
 * of its input (no storage access), so it runs the same in-process and in a worker thread
 * (`analysis-pool.ts`), and its result is cached by content hash.
 */
import sharp from 'sharp';
import { BoothError, errorMessage, isBoothError } from '../errors.js';
import { decodePhoto } from './decode.js';
import type { ExpressionScores, FaceDetector } from './faces.js';
import { perceptualHash } from './quality.js';
import type { RawImage, Rect } from './types.js';

/**
 * Version of the cached analysis. Bump when detection settings or this shape change, so stale
 * caches are recomputed instead of trusted. 2: faces carry face-api's expression probabilities.
 */
export const ANALYSIS_VERSION = 2;

/** Longest side of the review preview, px. */
export const PREVIEW_SIDE = 512;

/** The cached analysis of one photo (JSON-serialisable). */
export interface Analysis {
  version: number;
  sha256: string;
  /** Upright size, stored format and EXIF orientation. */
  source: { width: number; height: number; format: string; orientation: number };
  warnings: string[];
  /**
   * Faces in source pixels, descriptors as plain arrays (128 numbers), and the expression net's
   * probabilities (absent when the detector was made without expressions).
   */
  faces: Array<{ box: Rect; score: number; landmarks: Array<{ x: number; y: number }>; descriptor: number[]; expressions?: ExpressionScores }>;
  /** 64-bit DCT perceptual hash, 16 hex digits. */
  phash: string;
}

/** Input of {@link analysePhoto}. */
export interface AnalyseInput {
  bytes: Buffer;
  sha256: string;
  /** Display name, for error messages. */
  name: string;
  /** Training resolution (sets the decoder's small-photo warning). */
  targetSize: number;
}

/**
 * Analyse one photo.
 * @param input - the photo's bytes and identity
 * @param detector - a face detector for person sessions, or null to skip faces
 * @returns the analysis and a JPEG preview (longest side {@link PREVIEW_SIDE})
 * @throws BoothError `IMAGE_*` when the photo cannot be decoded; `FACE_MODEL` when detection fails
 * @example
 * const { analysis, preview } = await analysePhoto({ bytes, sha256, name: '01.jpg', targetSize: 512 }, detector);
 */
export async function analysePhoto(input: AnalyseInput, detector: FaceDetector | null): Promise<{ analysis: Analysis; preview: Buffer }> {
  try {
    return await analyse(input, detector);
  } catch (err) {
    if (isBoothError(err)) throw err;
    // Anything else that failed on these bytes is about this photo: report it as such, so one
    // bad photo never stops the others (in-process and in a worker alike).
    throw new BoothError('IMAGE_UNREADABLE', `${JSON.stringify(input.name)}: cannot be analysed: ${errorMessage(err)}`, { cause: err });
  }
}

async function analyse(input: AnalyseInput, detector: FaceDetector | null): Promise<{ analysis: Analysis; preview: Buffer }> {
  const decoded = await decodePhoto(input.bytes, input.name, { targetSize: input.targetSize });
  const image = decoded.image;
  const faces = detector ? await detector.detect(image) : [];
  return {
    analysis: {
      version: ANALYSIS_VERSION,
      sha256: input.sha256,
      source: { width: image.width, height: image.height, format: decoded.source.format, orientation: decoded.source.orientation },
      warnings: decoded.warnings,
      faces: faces.map((f) => ({
        box: f.box,
        score: f.score,
        landmarks: f.landmarks,
        descriptor: Array.from(f.descriptor),
        ...(f.expressions ? { expressions: f.expressions } : {}),
      })),
      phash: (await perceptualHash(image)).toString(16).padStart(16, '0'),
    },
    preview: await previewJpeg(image),
  };
}

async function previewJpeg(image: RawImage): Promise<Buffer> {
  return sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } })
    .resize(PREVIEW_SIDE, PREVIEW_SIDE, { fit: 'inside', withoutEnlargement: true })
    .jpeg({ quality: 82 })
    .toBuffer();
}
