/**
 * Quality measures a person should see before training: how sharp a photo (or the subject's
 * region of it) is, and which photos are near duplicates of each other. Both work on decoded
 * {@link RawImage} pixels and return plain numbers, so the caller decides what to flag and reports
 * the measured value next to the flag. The defaults {@link BLUR_THRESHOLD} and
 * {@link NEAR_DUPLICATE_DISTANCE} were measured on real photos; the numbers are kept beside them.
 */
import sharp from 'sharp';
import { BoothError } from '../errors.js';
import type { RawImage, Rect } from './types.js';

/** Longer side, in pixels, that every region is resampled to before {@link blurScore} measures it. */
export const BLUR_SAMPLE_SIDE = 256;

/**
 * Default sharpness floor: a {@link blurScore} under this is flagged as blurry.
 *
 * Measured with this module (sharp 0.35 / libvips 8.18) on the 15 photos in
 * `../shared/data/photos` and face-api's `demo/sample1..6.jpg`. Blur was added with sharp's
 * Gaussian `blur(σ)`, σ given in pixels of the 256 px measuring scale (so σ = 1 here is σ = 2 px
 * on a 512 px training crop) to blur every photo equally whatever its resolution:
 *
 * | region                        | sharp        | σ = 1    | σ = 1.5  | σ = 2    | σ = 3   |
 * |-------------------------------|--------------|----------|----------|----------|---------|
 * | whole photo (21 photos)       | 202 – 4150   | 21 – 279 | 8 – 64   | 5 – 26   | 2 – 8   |
 * | centre half (21 photos)       | 226 – 3897   | 28 – 442 | 8 – 110  | 4 – 36   | 2 – 8   |
 * | detected heads, in focus (21) | 73 – 734     | 13 – 62  | 7 – 26   | 4 – 11   | 2 – 5   |
 *
 * Heads (`estimateHead` around face-api detections) are smoother than whole scenes, so they
 * score lower. Four heads in the demo group photos that are visibly out of focus (dancers behind
 * the focal plane in sample4/sample5) score 28, 32, 36 and 46; the softest in-focus head scores 73. 60 sits between the two, flags every σ ≥ 2 blur of any
 * region and every σ ≥ 1.5 blur of a head, and keeps every sharp photo. Whole scenes with dense
 * texture stay above it at σ = 1 (a mild softness), which is the price of one threshold for all
 * regions.
 */
export const BLUR_THRESHOLD = 60;

/**
 * Default near-duplicate limit: two photos whose {@link perceptualHash} values differ in at most
 * this many of 64 bits are flagged as near duplicates.
 *
 * Measured with this module on the same 21 photos; the edits were applied to four of them
 * (dog/00, backpack/02, person-a/03, demo sample1):
 * - the same photo re-encoded (JPEG q50, q20, WebP q60), resized to 1/2 or 1/4, greyscale,
 *   desaturated, Gaussian σ = 2: 0 – 2 bits; brightness +15 %: 0 – 6; cropped 2 % per side: 2 – 8;
 *   5 % per side: 8 – 16; 10 % per side: 16 – 28; mirrored: 28 – 32 (not a duplicate to pHash);
 * - different photos, all 210 pairs: 20 – 44 bits, median 32 (chance level for 64 bits). The
 *   closest pairs are unrelated (person-b/01 vs backpack/03: 20); the closest pairs of the same
 *   subject in the same scene are dog/02 vs dog/03 (22, same wall, different pose) and
 *   backpack/03 vs backpack/04 (24). `dog/03.jpg` and `dog/04.jpg` are different shots (other
 *   place, other pose) at 32 bits, not a duplicate pair.
 *
 * 12 catches every re-encode, resize, colour tweak and 2 % crop, most 5 % crops, and keeps an
 * 8-bit margin below the closest different photos.
 */
export const NEAR_DUPLICATE_DISTANCE = 12;

/** Rec. 601 luma, the weighting OpenCV's greyscale conversion uses, on gamma-encoded values. */
function luma(data: Buffer, pixels: number): Float64Array {
  const out = new Float64Array(pixels);
  for (let i = 0, j = 0; i < pixels; i++, j += 3) {
    out[i] = 0.299 * (data[j] ?? 0) + 0.587 * (data[j + 1] ?? 0) + 0.114 * (data[j + 2] ?? 0);
  }
  return out;
}

function checkRaw(image: RawImage, what: string): void {
  if (image.width < 1 || image.height < 1 || image.data.length !== image.width * image.height * 3) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `${what}: image must hold width × height × 3 bytes; got ${image.width}×${image.height} with ${image.data.length} bytes`,
    );
  }
}

/** Clamp a region to the image and round it outwards to whole pixels. */
function clampRegion(image: RawImage, region: Rect): { left: number; top: number; width: number; height: number } {
  const left = Math.max(0, Math.floor(region.x));
  const top = Math.max(0, Math.floor(region.y));
  const right = Math.min(image.width, Math.ceil(region.x + region.width));
  const bottom = Math.min(image.height, Math.ceil(region.y + region.height));
  // Three pixels is the least a 3×3 Laplacian can say anything about.
  if (right - left < 3 || bottom - top < 3) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `blurScore: region ${JSON.stringify(region)} leaves less than 3×3 pixels inside the ${image.width}×${image.height} image`,
    );
  }
  return { left, top, width: right - left, height: bottom - top };
}

/**
 * Sharpness of a photo or of a region of it: the variance of the Laplacian of the luminance, the
 * focus measure of Pech-Pacheco, Cristóbal, Chamorro-Martínez and Fernández-Valdivia (2000),
 * "Diatom autofocusing in brightfield microscopy: a comparative study", ICPR 2000 (listed as
 * LAP4 in Pertuz, Puig and García, "Analysis of focus measure operators for shape-from-focus",
 * Pattern Recognition 46, 2013).
 *
 * The region is first resampled (Lanczos-3) so that its longer side is {@link BLUR_SAMPLE_SIDE}
 * pixels: the Laplacian responds to detail per pixel, so without a fixed scale a 4000 px photo
 * and its 800 px copy would score very differently. Luminance is Rec. 601 luma
 * `Y = 0.299 R + 0.587 G + 0.114 B` on the 0–255 sRGB values. The Laplacian is the 4-neighbour
 * kernel `[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`, evaluated on interior pixels only (no padding, so
 * borders add no false edges), and the score is the population variance of its response.
 *
 * @param image - decoded RGB pixels
 * @param region - the part to measure (e.g. the subject's head), in image pixels; clamped to the
 *   image; the whole image when omitted
 * @returns the variance of the Laplacian, ≥ 0; larger is sharper. Compare with {@link BLUR_THRESHOLD}
 * @throws BoothError `INVALID_ARGUMENT` when the image buffer is inconsistent or the region
 *   leaves less than 3×3 pixels inside the image
 * @example
 * const score = await blurScore(photo.image, face.box);
 * if (score < BLUR_THRESHOLD) flags.push('blurry');
 */
export async function blurScore(image: RawImage, region?: Rect): Promise<number> {
  checkRaw(image, 'blurScore');
  const area = clampRegion(image, region ?? { x: 0, y: 0, width: image.width, height: image.height });
  const scale = BLUR_SAMPLE_SIDE / Math.max(area.width, area.height);
  const width = Math.max(3, Math.round(area.width * scale));
  const height = Math.max(3, Math.round(area.height * scale));
  const { data } = await sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } })
    .extract(area)
    .resize({ width, height, fit: 'fill', kernel: 'lanczos3' })
    .raw()
    .toBuffer({ resolveWithObject: true });
  const y = luma(data, width * height);

  let sum = 0;
  let sumSq = 0;
  for (let row = 1; row < height - 1; row++) {
    for (let col = 1; col < width - 1; col++) {
      const i = row * width + col;
      const lap = (y[i - width] ?? 0) + (y[i + width] ?? 0) + (y[i - 1] ?? 0) + (y[i + 1] ?? 0) - 4 * (y[i] ?? 0);
      sum += lap;
      sumSq += lap * lap;
    }
  }
  const n = (width - 2) * (height - 2);
  const mean = sum / n;
  return Math.max(0, sumSq / n - mean * mean);
}

/** Side of the greyscale thumbnail the perceptual hash is computed from. */
const HASH_SIDE = 32;

/** `COS[k][n] = cos(π (2n + 1) k / 2N)`: the DCT-II basis for N = {@link HASH_SIDE}, built once. */
const COS: readonly Float64Array[] = Array.from({ length: 9 }, (_, k) => {
  const row = new Float64Array(HASH_SIDE);
  for (let n = 0; n < HASH_SIDE; n++) row[n] = Math.cos((Math.PI * (2 * n + 1) * k) / (2 * HASH_SIDE));
  return row;
});

/**
 * A 64-bit perceptual hash of the whole image (pHash, DCT variant), after Zauner (2010),
 * "Implementation and Benchmarking of Perceptual Image Hash Functions", master's thesis, Upper
 * Austria University of Applied Sciences, and the pHash library's `ph_dct_imagehash`.
 *
 * Steps: resample to 32×32 greyscale (sharp's shrink-then-Lanczos resize averages the source
 * pixels, which is the low-pass step), take the 2-D DCT-II, keep the 8×8 block of coefficients
 * `F(u, v)` with `1 ≤ u, v ≤ 8` (the lowest frequencies, without the DC term and without the
 * first row and column, which mostly track overall brightness gradients), and set one bit per
 * coefficient when it is above the median of the 64. Bits are packed row by row (`u`, then `v`),
 * most significant first. Only low frequencies survive, so re-encoding, resizing and mild colour
 * changes move few bits; different shots move many. The DCT normalisation factors are left out:
 * for `u, v ≥ 1` they are one common constant, which cannot change a comparison with the median.
 *
 * @param image - decoded RGB pixels
 * @returns the hash as an unsigned 64-bit bigint; compare two with {@link hammingDistance}
 * @throws BoothError `INVALID_ARGUMENT` when the image buffer is inconsistent
 * @example
 * const d = hammingDistance(await perceptualHash(a.image), await perceptualHash(b.image));
 * if (d <= NEAR_DUPLICATE_DISTANCE) flags.push('near-duplicate');
 */
export async function perceptualHash(image: RawImage): Promise<bigint> {
  checkRaw(image, 'perceptualHash');
  const { data } = await sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } })
    .resize({ width: HASH_SIDE, height: HASH_SIDE, fit: 'fill', kernel: 'lanczos3' })
    .raw()
    .toBuffer({ resolveWithObject: true });
  const pixels = luma(data, HASH_SIDE * HASH_SIDE);

  // Separable 2-D DCT-II: first along each row (keeping frequencies 0..8), then down each column.
  const rows = new Float64Array(HASH_SIDE * 9);
  for (let y = 0; y < HASH_SIDE; y++) {
    for (let v = 0; v <= 8; v++) {
      const basis = COS[v] as Float64Array;
      let acc = 0;
      for (let x = 0; x < HASH_SIDE; x++) acc += (pixels[y * HASH_SIDE + x] ?? 0) * (basis[x] ?? 0);
      rows[y * 9 + v] = acc;
    }
  }
  const coefficients: number[] = [];
  for (let u = 1; u <= 8; u++) {
    const basis = COS[u] as Float64Array;
    for (let v = 1; v <= 8; v++) {
      let acc = 0;
      for (let y = 0; y < HASH_SIDE; y++) acc += (rows[y * 9 + v] ?? 0) * (basis[y] ?? 0);
      coefficients.push(acc);
    }
  }

  const sorted = [...coefficients].sort((a, b) => a - b);
  const median = ((sorted[31] ?? 0) + (sorted[32] ?? 0)) / 2;
  let hash = 0n;
  for (const c of coefficients) hash = (hash << 1n) | (c > median ? 1n : 0n);
  return hash;
}

/**
 * The number of bits in which two 64-bit hashes differ.
 *
 * @param a - a hash from {@link perceptualHash}
 * @param b - another one
 * @returns 0 (identical) to 64
 * @throws never; values are read as unsigned 64-bit (`BigInt.asUintN(64, …)`)
 * @example
 * hammingDistance(0b1011n, 0b0001n); // 2
 */
export function hammingDistance(a: bigint, b: bigint): number {
  let x = BigInt.asUintN(64, a ^ b);
  let count = 0;
  while (x > 0n) {
    x &= x - 1n;
    count++;
  }
  return count;
}
