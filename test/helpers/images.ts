/** Deterministic test images generated with sharp (no files shipped in the repo). */
import sharp from 'sharp';

/** A pseudo-random RGB noise image (seeded), encoded as JPEG or PNG. Different seeds give unrelated images. */
export async function noiseImage(width: number, height: number, seed: number, format: 'jpeg' | 'png' = 'jpeg'): Promise<Buffer> {
  const data = Buffer.alloc(width * height * 3);
  let s = seed >>> 0 || 1;
  // Blocky noise (8 px cells) so the image survives JPEG and has structure a perceptual hash sees.
  const cells = new Map<number, number>();
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const cell = ((y >> 3) << 16) | (x >> 3);
      let v = cells.get(cell);
      if (v === undefined) {
        s ^= s << 13;
        s ^= s >>> 17;
        s ^= s << 5;
        v = (s >>> 0) & 0xffffff;
        cells.set(cell, v);
      }
      const i = (y * width + x) * 3;
      data[i] = v & 0xff;
      data[i + 1] = (v >> 8) & 0xff;
      data[i + 2] = (v >> 16) & 0xff;
    }
  }
  const img = sharp(data, { raw: { width, height, channels: 3 } });
  return format === 'jpeg' ? img.jpeg({ quality: 90 }).toBuffer() : img.png().toBuffer();
}
