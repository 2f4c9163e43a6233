/** Deterministic test images generated with sharp (no files shipped in the repo). */
import sharp from 'sharp';

/**
 * Raw RGB pixels of seeded blocky noise (8 px cells, xorshift32 per cell) so images survive JPEG
 * and have structure a perceptual hash sees; `pixel` turns a cell's 32-bit value into RGB.
 */
export function blockNoise(width: number, height: number, seed: number, pixel: (v: number) => [number, number, number]): Buffer {
  const data = Buffer.alloc(width * height * 3);
  let s = seed >>> 0 || 1;
  const cells = new Map<number, [number, number, number]>();
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const cell = ((y >> 3) << 16) | (x >> 3);
      let rgb = cells.get(cell);
      if (rgb === undefined) {
        s ^= s << 13;
        s ^= s >>> 17;
        s ^= s << 5;
        rgb = pixel(s >>> 0);
        cells.set(cell, rgb);
      }
      data.set(rgb, (y * width + x) * 3);
    }
  }
  return data;
}

/** A pseudo-random RGB noise image (seeded), encoded as JPEG or PNG. Different seeds give unrelated images. */
export async function noiseImage(width: number, height: number, seed: number, format: 'jpeg' | 'png' = 'jpeg'): Promise<Buffer> {
  const data = blockNoise(width, height, seed, (v) => [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff]);
  const img = sharp(data, { raw: { width, height, channels: 3 } });
  return format === 'jpeg' ? img.jpeg({ quality: 90 }).toBuffer() : img.png().toBuffer();
}
