/**
 * Quality measures: the blur score's ordering, scale independence and region handling; the
 * perceptual hash checked against an independent textbook DCT, its stability under re-encoding,
 * resizing and slight crops, and the measured defaults re-checked on the real photos when
 * `../shared` is present.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import sharp, { type Sharp } from 'sharp';
import { describe, expect, it } from 'vitest';
import { decodePhoto } from '../../src/preprocess/decode.js';
import {
  BLUR_SAMPLE_SIDE,
  BLUR_THRESHOLD,
  NEAR_DUPLICATE_DISTANCE,
  blurScore,
  hammingDistance,
  perceptualHash,
} from '../../src/preprocess/quality.js';
import type { RawImage } from '../../src/preprocess/types.js';

/** A deterministic detailed RGB image: stripes, rings and pseudo-random speckle. */
function detailed(width: number, height: number, seed = 7): RawImage {
  const data = Buffer.alloc(width * height * 3);
  let state = seed;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      state = (state * 1664525 + 1013904223) >>> 0;
      const u = x / width;
      const v = y / height;
      const base = 128 + 60 * Math.sin(40 * u + 10 * v) + 40 * Math.cos(30 * Math.hypot(u - 0.4, v - 0.6));
      const speckle = ((state >>> 24) % 50) - 25;
      const value = Math.max(0, Math.min(255, Math.round(base + speckle)));
      data.set([value, Math.max(0, value - 30), Math.min(255, value + 20)], (y * width + x) * 3);
    }
  }
  return { data, width, height, channels: 3 };
}

async function transform(image: RawImage, edit: (s: Sharp) => Sharp): Promise<RawImage> {
  const { data, info } = await edit(sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } }))
    .raw()
    .toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height, channels: 3 };
}

describe('blurScore', () => {
  it('falls as blur grows', async () => {
    const sharpImage = detailed(800, 600);
    const scores = [await blurScore(sharpImage)];
    for (const sigma of [1, 2, 4, 8]) scores.push(await blurScore(await transform(sharpImage, (s) => s.blur(sigma))));
    for (let i = 1; i < scores.length; i++) expect(scores[i]).toBeLessThan(scores[i - 1] ?? 0);
    expect(scores[0]).toBeGreaterThan(BLUR_THRESHOLD);
    expect(scores[4]).toBeLessThan(BLUR_THRESHOLD);
  });

  it('is zero on a flat image', async () => {
    const flat: RawImage = { data: Buffer.alloc(300 * 200 * 3, 90), width: 300, height: 200, channels: 3 };
    expect(await blurScore(flat)).toBe(0);
  });

  it('hardly depends on the resolution, because regions are resampled to a fixed size first', async () => {
    const large = detailed(1600, 1200);
    const small = await transform(large, (s) => s.resize(800, 600, { kernel: 'lanczos3' }));
    const a = await blurScore(large);
    const b = await blurScore(small);
    expect(Math.abs(a - b) / a).toBeLessThan(0.15);
  });

  it('measures only the region asked for, clamped to the image', async () => {
    // Left half sharp, right half blurred.
    const sharpImage = detailed(800, 400);
    const blurred = await transform(sharpImage, (s) => s.blur(6));
    const data = Buffer.from(sharpImage.data);
    for (let y = 0; y < 400; y++) {
      const start = (y * 800 + 400) * 3;
      blurred.data.copy(data, start, start, start + 400 * 3);
    }
    const half: RawImage = { data, width: 800, height: 400, channels: 3 };
    const left = await blurScore(half, { x: 0, y: 0, width: 390, height: 400 });
    const right = await blurScore(half, { x: 410, y: 0, width: 390, height: 400 });
    expect(left).toBeGreaterThan(BLUR_THRESHOLD);
    expect(right).toBeLessThan(BLUR_THRESHOLD);
    // A region running past the edges measures the part inside.
    expect(await blurScore(half, { x: 410, y: -100, width: 1000, height: 700 })).toBeCloseTo(right, 6);
  });

  it('rejects a region with nothing inside the image', async () => {
    const image = detailed(100, 100);
    await expect(blurScore(image, { x: 200, y: 0, width: 50, height: 50 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(blurScore({ ...image, width: 99 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('uses a fixed measuring size', () => {
    expect(BLUR_SAMPLE_SIDE).toBe(256);
  });
});

/**
 * The reference: Zauner's pHash written the slow, obvious way — orthonormal 2-D DCT-II summed
 * over all 32×32 pixels for each coefficient, no separability, no shared tables.
 */
function referenceHash(grey: Float64Array): bigint {
  const n = 32;
  const alpha = (k: number): number => (k === 0 ? Math.sqrt(1 / n) : Math.sqrt(2 / n));
  const coefficients: number[] = [];
  for (let u = 1; u <= 8; u++) {
    for (let v = 1; v <= 8; v++) {
      let sum = 0;
      for (let y = 0; y < n; y++) {
        for (let x = 0; x < n; x++) {
          sum += (grey[y * n + x] ?? 0) * Math.cos(((2 * y + 1) * u * Math.PI) / (2 * n)) * Math.cos(((2 * x + 1) * v * Math.PI) / (2 * n));
        }
      }
      coefficients.push(alpha(u) * alpha(v) * sum);
    }
  }
  const sorted = [...coefficients].sort((a, b) => a - b);
  const median = ((sorted[31] ?? 0) + (sorted[32] ?? 0)) / 2;
  return coefficients.reduce((hash, c) => (hash << 1n) | (c > median ? 1n : 0n), 0n);
}

describe('perceptualHash', () => {
  it('matches a textbook DCT-II pHash on a 32×32 input (no resampling involved)', async () => {
    for (const seed of [1, 2, 3]) {
      const image = detailed(32, 32, seed);
      const grey = new Float64Array(32 * 32);
      for (let i = 0; i < grey.length; i++) {
        grey[i] = 0.299 * (image.data[i * 3] ?? 0) + 0.587 * (image.data[i * 3 + 1] ?? 0) + 0.114 * (image.data[i * 3 + 2] ?? 0);
      }
      expect(await perceptualHash(image)).toBe(referenceHash(grey));
    }
  });

  it('is a 64-bit value with about half the bits set', async () => {
    const hash = await perceptualHash(detailed(400, 300));
    expect(hash).toBeGreaterThanOrEqual(0n);
    expect(hash).toBeLessThan(1n << 64n);
    // Median split of 64 distinct coefficients: exactly 32 above.
    expect(hammingDistance(hash, 0n)).toBe(32);
  });

  it('barely moves under re-encoding, resizing and a slight crop; moves a lot for a different picture', async () => {
    const original = detailed(900, 700);
    const base = await perceptualHash(original);
    const jpeg = await sharp(original.data, { raw: { width: 900, height: 700, channels: 3 } }).jpeg({ quality: 40 }).toBuffer();
    const variants = {
      jpeg: (await decodePhoto(jpeg, 'q40.jpg', { targetSize: 256 })).image,
      half: await transform(original, (s) => s.resize(450, 350)),
      crop1: await transform(original, (s) => s.extract({ left: 9, top: 7, width: 882, height: 686 })),
      brighter: await transform(original, (s) => s.modulate({ brightness: 1.1 })),
    };
    for (const [name, image] of Object.entries(variants)) {
      expect(hammingDistance(base, await perceptualHash(image)), name).toBeLessThanOrEqual(NEAR_DUPLICATE_DISTANCE);
    }
    const other = await perceptualHash(await transform(original, (s) => s.rotate(90)));
    expect(hammingDistance(base, other)).toBeGreaterThan(NEAR_DUPLICATE_DISTANCE);
  });
});

describe('hammingDistance', () => {
  it('counts differing bits over 64 bits', () => {
    expect(hammingDistance(0b1011n, 0b0001n)).toBe(2);
    expect(hammingDistance(0n, (1n << 64n) - 1n)).toBe(64);
    expect(hammingDistance(123456789n, 123456789n)).toBe(0);
    // Negative or wider inputs are read as their low 64 bits, never loop forever.
    expect(hammingDistance(-1n, 0n)).toBe(64);
  });
});

describe('measured defaults on real photos', () => {
  const photosDir = path.resolve(import.meta.dirname, '../../../shared/data/photos');
  const hasShared = existsSync(photosDir);
  if (!hasShared) console.log(`skipping the real-photo threshold checks: ${photosDir} is absent`);
  const photo = async (rel: string): Promise<RawImage> =>
    (await decodePhoto(readFileSync(path.join(photosDir, rel)), rel, { targetSize: 512 })).image;

  it.skipIf(!hasShared)('every sharp photo scores above BLUR_THRESHOLD; the same photos blurred (σ = 2 at the measuring scale) score below', async () => {
    const rows: string[] = [];
    for (const rel of ['person-a/01.jpg', 'person-a/03.jpg', 'dog/00.jpg', 'dog/04.jpg', 'backpack/02.jpg', 'backpack/04.jpg']) {
      const image = await photo(rel);
      const sigma = (2 * Math.max(image.width, image.height)) / BLUR_SAMPLE_SIDE;
      const sharpScore = await blurScore(image);
      const blurredScore = await blurScore(await transform(image, (s) => s.blur(sigma)));
      rows.push(`${rel}: ${sharpScore.toFixed(0)} sharp, ${blurredScore.toFixed(0)} blurred`);
      expect(sharpScore, rel).toBeGreaterThan(BLUR_THRESHOLD);
      expect(blurredScore, rel).toBeLessThan(BLUR_THRESHOLD);
    }
    console.log(`blur scores (threshold ${BLUR_THRESHOLD}):\n  ${rows.join('\n  ')}`);
  });

  it.skipIf(!hasShared)('different photos of one subject are not near duplicates; re-encoded, resized and slightly cropped copies are', async () => {
    const dogs = await Promise.all(['dog/00.jpg', 'dog/01.jpg', 'dog/02.jpg', 'dog/03.jpg', 'dog/04.jpg'].map(photo));
    const hashes = await Promise.all(dogs.map((d) => perceptualHash(d)));
    const distances: number[] = [];
    for (let i = 0; i < hashes.length; i++) {
      for (let j = i + 1; j < hashes.length; j++) distances.push(hammingDistance(hashes[i] ?? 0n, hashes[j] ?? 0n));
    }
    console.log(`pHash distances between the five dog photos: ${distances.join(', ')}`);
    expect(Math.min(...distances)).toBeGreaterThan(NEAR_DUPLICATE_DISTANCE);

    // dog/00 is 780×780: a smaller re-encoded copy, and a copy with 2 % cut from every side.
    const bytes = readFileSync(path.join(photosDir, 'dog/00.jpg'));
    for (const copy of [
      await sharp(bytes).resize({ width: 400 }).jpeg({ quality: 60 }).toBuffer(),
      await sharp(bytes).extract({ left: 16, top: 16, width: 748, height: 748 }).jpeg().toBuffer(),
    ]) {
      const copyHash = await perceptualHash((await decodePhoto(copy, 'copy.jpg', { targetSize: 256 })).image);
      expect(hammingDistance(hashes[0] ?? 0n, copyHash)).toBeLessThanOrEqual(NEAR_DUPLICATE_DISTANCE);
    }
  });
});
