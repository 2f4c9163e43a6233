/**
 * Shared shapes of the preparation pipeline: decode → faces → identity → crop → quality →
 * captions → contact sheet. Every coordinate is in SOURCE pixels of the upright image (after
 * EXIF orientation), origin top-left, x to the right, y down.
 */

/** An axis-aligned rectangle in pixels. `x`, `y` are the top-left corner. */
export interface Rect {
  x: number;
  y: number;
  width: number;
  height: number;
}

/** A point in pixels. */
export interface Point {
  x: number;
  y: number;
}

/**
 * Decoded pixels: upright (EXIF orientation applied), sRGB, 8 bits per channel, 3 channels
 * (RGB, alpha flattened), row-major, no padding: `data.length === width * height * 3`.
 */
export interface RawImage {
  data: Buffer;
  width: number;
  height: number;
  channels: 3;
}

/** What the decoder learned about the file as stored. */
export interface SourceInfo {
  /** Container format as sharp names it (`jpeg`, `png`, `webp`, `tiff`, `gif`, `avif`, …). */
  format: string;
  /** Stored width/height BEFORE orientation. */
  storedWidth: number;
  storedHeight: number;
  /** EXIF orientation tag 1–8, or 1 when absent. */
  orientation: number;
  /** Colour space as stored (`srgb`, `cmyk`, `b-w`, `rgb16`, …). */
  space: string;
  /** Bits per sample as stored (8 or 16). */
  bitDepth: number;
  /** Whether the stored image had an alpha channel (flattened onto white). */
  hasAlpha: boolean;
}

/** A decoded, validated photo. */
export interface DecodedPhoto {
  image: RawImage;
  source: SourceInfo;
  /** Non-fatal findings a person should see (e.g. "smaller than 512 px; will be upscaled 1.6×"). */
  warnings: string[];
}

/** One face found by the detector, mapped back to source pixels. */
export interface DetectedFace {
  /** Detector box (roughly brows to chin, cheek to cheek for face-api's SSD MobileNet v1). */
  box: Rect;
  /** Detection confidence in [0, 1]. */
  score: number;
  /** The 68 iBUG-300W landmarks (jaw 0–16, brows 17–26, nose 27–35, eyes 36–47, mouth 48–67). */
  landmarks: Point[];
  /** 128-d face descriptor (face-api's ResNet-34 recogniser); Euclidean distance compares identities. */
  descriptor: Float32Array;
}

/**
 * How tightly a person is framed. All three keep the whole head (hair to chin) inside the crop.
 * - `face`: the head fills most of the square (close-up portraits; the usual DreamBooth face set)
 * - `head-and-shoulders`: head about half the square's height, shoulders visible
 * - `upper-body`: head about a third of the square's height, chest and arms visible
 */
export type Framing = 'face' | 'head-and-shoulders' | 'upper-body';

/** The framings, in order from tightest to widest. */
export const FRAMINGS: readonly Framing[] = ['face', 'head-and-shoulders', 'upper-body'];

/** Where a crop came from. */
export type CropStrategy = 'face' | 'salient' | 'center';

/** The planned crop of one photo. */
export interface CropPlan {
  /** Square crop rectangle in source pixels, integer, inside the image. */
  rect: Rect;
  strategy: CropStrategy;
  /** Framing requested (face strategy only; null otherwise). */
  framing: Framing | null;
  /**
   * Framing actually achieved after clamping to the photo: the requested one, a tighter one when
   * the photo's edges did not allow it, or null for non-face strategies.
   */
  framingAchieved: Framing | null;
  /** Estimated whole-head box (hair to chin) in source pixels; face strategy only. */
  head: Rect | null;
  /**
   * True when the crop holds all of the estimated head that lies inside the photo AND the photo
   * holds the certain part of the head (landmarks, chin, skull). False means the head is cut,
   * by the crop or by the photo's own edge. (The estimate's generous hair margin may run past
   * a tight portrait's top edge without making this false.)
   */
  headInside: boolean | null;
  /** Output side / crop side: > 1 means the crop is upscaled to reach the training resolution. */
  upscale: number;
}
