/**
 * Photo intake: every bad input from the foundation issue, generated here with sharp or by hand,
 * each expected to fail with its own BoothError code and a message naming the file; plus the
 * conversions (orientation, colour space, depth, alpha) checked on pixel values, and the real
 * photos decoded end to end when `../shared` is present.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { deflateSync, crc32 } from 'node:zlib';
import sharp, { type Sharp } from 'sharp';
import { describe, expect, it } from 'vitest';
import { BoothError, type BoothErrorCode } from '../../src/errors.js';
import {
  DEFAULT_MAX_PIXELS,
  SUPPORTED_FORMATS,
  decodePhoto,
  renderPng,
  resizeRaw,
  sniffFormat,
  type DecodeOptions,
} from '../../src/preprocess/decode.js';
import type { RawImage } from '../../src/preprocess/types.js';

const OPTS: DecodeOptions = { targetSize: 512 };

/** Await a rejection and check it is a BoothError with `code` whose message names the file. */
async function rejects(promise: Promise<unknown>, code: BoothErrorCode, name: string): Promise<BoothError> {
  const err: unknown = await promise.then(
    () => new Error('expected a rejection, got a result'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BoothError);
  const booth = err as BoothError;
  expect(booth.code).toBe(code);
  expect(booth.message).toContain(JSON.stringify(name));
  return booth;
}

/** A deterministic textured RGB image (a smooth pattern plus pseudo-random noise). */
function texture(width: number, height: number, seed = 1): RawImage {
  const data = Buffer.alloc(width * height * 3);
  let state = seed;
  for (let i = 0; i < data.length; i++) {
    state = (state * 1103515245 + 12345) >>> 0;
    const px = Math.floor(i / 3);
    const x = px % width;
    const y = Math.floor(px / width);
    data[i] = Math.round(100 + 60 * Math.sin(x / 17 + (i % 3)) * Math.cos(y / 23) + ((state >>> 24) % 40));
  }
  return { data, width, height, channels: 3 };
}

function fromRaw(image: RawImage): Sharp {
  return sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } });
}

function pixel(image: RawImage, x: number, y: number): [number, number, number] {
  const i = (y * image.width + x) * 3;
  return [image.data[i] ?? -1, image.data[i + 1] ?? -1, image.data[i + 2] ?? -1];
}

/** PNG chunk: length, type, data, CRC over type and data. */
function pngChunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'latin1');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
  return Buffer.concat([head, data, crc]);
}

/**
 * A 1-bit greyscale PNG of `side`×`side` white pixels. At 1 bit per pixel a 30000² image is
 * 112 MB of filtered rows; zlib level 1 packs them into 0.56 MB in about 0.15 s, where sharp
 * takes 20 s to encode the same size as an RGB PNG. With `withPixels` false the IDAT holds only the first row:
 * a valid header over data that is cut short, which any decoder would reject as truncated.
 */
function hugeBilevelPng(side: number, withPixels: boolean): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(side, 0);
  ihdr.writeUInt32BE(side, 4);
  ihdr[8] = 1; // bit depth
  ihdr[9] = 0; // greyscale
  const chunks = [Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), pngChunk('IHDR', ihdr)];
  const rowBytes = 1 + Math.ceil(side / 8);
  const rows = withPixels ? side : 1;
  const raw = Buffer.alloc(rowBytes * rows, 0xff);
  for (let y = 0; y < rows; y++) raw[y * rowBytes] = 0; // filter type "none"
  chunks.push(pngChunk('IDAT', deflateSync(raw, { level: 1 })));
  chunks.push(pngChunk('IEND', Buffer.alloc(0)));
  return Buffer.concat(chunks);
}

describe('sniffFormat', () => {
  it('recognises formats by content, not by name', async () => {
    const img = fromRaw(texture(16, 16));
    expect(sniffFormat(await img.clone().jpeg().toBuffer())).toBe('jpeg');
    expect(sniffFormat(await img.clone().png().toBuffer())).toBe('png');
    expect(sniffFormat(await img.clone().webp().toBuffer())).toBe('webp');
    expect(sniffFormat(await img.clone().gif().toBuffer())).toBe('gif');
    expect(sniffFormat(await img.clone().tiff().toBuffer())).toBe('tiff');
    expect(sniffFormat(await img.clone().avif({ effort: 0 }).toBuffer())).toBe('avif');
    expect(sniffFormat(Buffer.alloc(0))).toBe('empty');
    expect(sniffFormat(Buffer.from('just some notes\n'))).toBe('text');
    expect(sniffFormat(Buffer.from('<!DOCTYPE html><html><body>404</body></html>'))).toBe('html');
    expect(sniffFormat(Buffer.from('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>'))).toBe('svg');
    expect(sniffFormat(Buffer.from('%PDF-1.7\n'))).toBe('pdf');
    expect(sniffFormat(Buffer.from([0x00, 0x01, 0x02, 0x03, 0xfe, 0x00, 0x10]))).toBe('unknown');
  });

  it('tells HEIC from AVIF by the ftyp brands', () => {
    expect(sniffFormat(ftyp('heic', ['mif1', 'heic']))).toBe('heic');
    expect(sniffFormat(ftyp('mif1', ['mif1', 'heic']))).toBe('heic');
    expect(sniffFormat(ftyp('avif', ['mif1', 'avif', 'miaf']))).toBe('avif');
    expect(sniffFormat(ftyp('mif1', ['mif1', 'avif']))).toBe('avif');
    expect(sniffFormat(ftyp('qt  ', ['qt  ']))).toBe('video');
  });
});

/** An ISO-BMFF file start: an `ftyp` box with the given brands, then filler. */
function ftyp(major: string, compatible: string[]): Buffer {
  const size = 16 + 4 * compatible.length;
  const box = Buffer.alloc(size);
  box.writeUInt32BE(size, 0);
  box.write('ftyp', 4, 'latin1');
  box.write(major, 8, 'latin1');
  compatible.forEach((b, i) => box.write(b, 16 + 4 * i, 'latin1'));
  return Buffer.concat([box, Buffer.from([0, 0, 0, 0x20, 0x6d, 0x65, 0x74, 0x61]), Buffer.alloc(200)]);
}

describe('decodePhoto: bad input from the issue', () => {
  it('rejects a zero-byte file as unreadable', async () => {
    const err = await rejects(decodePhoto(Buffer.alloc(0), 'empty.jpg', OPTS), 'IMAGE_UNREADABLE', 'empty.jpg');
    expect(err.message).toMatch(/empty \(0 bytes\)/);
  });

  it('rejects a truncated JPEG instead of returning a half-grey picture', async () => {
    const jpeg = await fromRaw(texture(600, 600)).jpeg({ quality: 90 }).toBuffer();
    for (const keep of [0.3, 0.9, 0.999]) {
      const cut = jpeg.subarray(0, Math.floor(jpeg.length * keep));
      const err = await rejects(decodePhoto(cut, 'cut.jpg', OPTS), 'IMAGE_UNREADABLE', 'cut.jpg');
      expect(err.message).toMatch(/truncated or corrupt/);
      expect(err.cause).toBeInstanceOf(Error);
    }
  });

  it('rejects a truncated PNG', async () => {
    const png = await fromRaw(texture(600, 600)).png().toBuffer();
    await rejects(decodePhoto(png.subarray(0, Math.floor(png.length * 0.8)), 'cut.png', OPTS), 'IMAGE_UNREADABLE', 'cut.png');
  });

  it('accepts a JPEG with a harmless libjpeg warning and reports the warning', async () => {
    // Stray bytes before a marker: libjpeg warns "extraneous bytes before marker" and decodes
    // everything; some cameras and editors write files like this.
    const jpeg = await fromRaw(texture(600, 600)).jpeg().toBuffer();
    const sos = jpeg.indexOf(Buffer.from([0xff, 0xda]));
    const odd = Buffer.concat([jpeg.subarray(0, sos), Buffer.from([0x12, 0x34, 0x56]), jpeg.subarray(sos)]);
    const clean = await decodePhoto(jpeg, 'clean.jpg', { targetSize: 512 });
    const photo = await decodePhoto(odd, 'odd.jpg', { targetSize: 512 });
    expect(photo.image.data.equals(clean.image.data)).toBe(true);
    expect(clean.warnings).toEqual([]);
    expect(photo.warnings.join('\n')).toMatch(/extraneous bytes before marker/);
  });

  it('rejects a text file named .jpg as not an image', async () => {
    const err = await rejects(decodePhoto(Buffer.from('shopping list: eggs, milk\n'), 'photo.jpg', OPTS), 'IMAGE_UNREADABLE', 'photo.jpg');
    expect(err.message).toMatch(/not an image/);
    expect(err.message).toMatch(/JPEG, PNG/);
    const html = await rejects(
      decodePhoto(Buffer.from('<!doctype html>\n<html><head><title>Sign in</title></head></html>'), 'IMG_1.jpg', OPTS),
      'IMAGE_UNREADABLE',
      'IMG_1.jpg',
    );
    expect(html.message).toMatch(/HTML page/);
  });

  it('rejects unknown binary data and lists the supported formats', async () => {
    const err = await rejects(decodePhoto(Buffer.from([0, 1, 2, 3, 0, 5, 6, 7, 8, 9]), 'blob.png', OPTS), 'IMAGE_UNREADABLE', 'blob.png');
    expect(err.message).toContain('00 01 02 03');
    for (const label of ['JPEG', 'PNG', 'WebP', 'AVIF', 'TIFF', 'GIF']) expect(err.message).toContain(label);
  });

  it('rejects a damaged header that only looks like JPEG', async () => {
    const bad = Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.alloc(64, 0x11)]);
    await rejects(decodePhoto(bad, 'header.jpg', OPTS), 'IMAGE_UNREADABLE', 'header.jpg');
  });

  it('rejects a 30000×30000 PNG from its header, without decoding its pixels', async () => {
    const bomb = hugeBilevelPng(30_000, true);
    expect(bomb.length).toBeLessThan(1_000_000);
    const before = process.memoryUsage().rss;
    const err = await rejects(decodePhoto(bomb, 'bomb.png', OPTS), 'IMAGE_TOO_LARGE', 'bomb.png');
    const grownMiB = (process.memoryUsage().rss - before) / 2 ** 20;
    console.log(`30000×30000 PNG (${bomb.length} bytes): rejected with RSS growth ${grownMiB.toFixed(1)} MiB (decoded RGB would be 2575 MiB)`);
    // Decoding would need 2.7 GB for RGB; a header read needs next to nothing.
    expect(grownMiB).toBeLessThan(200);
    expect(err.message).toContain('30000×30000');
    expect(err.message).toContain('900.0 MP');
    expect(err.message).toContain(`maxPixels ${DEFAULT_MAX_PIXELS}`);
  });

  it('rejects an oversized header over truncated data as too large: the size check comes before the decoder', async () => {
    // Were the pixels decoded first, this file would fail as unreadable (its data stops after one row).
    await rejects(decodePhoto(hugeBilevelPng(2_000, false), 'short.png', OPTS), 'IMAGE_UNREADABLE', 'short.png');
    await rejects(decodePhoto(hugeBilevelPng(30_000, false), 'header-only.png', OPTS), 'IMAGE_TOO_LARGE', 'header-only.png');
    await rejects(decodePhoto(hugeBilevelPng(2_000, false), 'medium.png', { ...OPTS, maxPixels: 1_000_000 }), 'IMAGE_TOO_LARGE', 'medium.png');
  });

  it('converts a 16-bit PNG to 8-bit sRGB, keeping the values', async () => {
    const width = 300;
    const height = 300;
    const samples = new Uint16Array(width * height * 3);
    // Columns sweep the whole 16-bit range in red; green and blue are constants.
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const i = (y * width + x) * 3;
        samples[i] = Math.round((x / (width - 1)) * 65535);
        samples[i + 1] = 51400;
        samples[i + 2] = 12850;
      }
    }
    // sharp takes the sample depth from the typed array: a Uint16Array is 16-bit input.
    const png16 = await sharp(samples, { raw: { width, height, channels: 3 } })
      .toColourspace('rgb16')
      .png()
      .toBuffer();
    expect((await sharp(png16).metadata()).depth).toBe('ushort');
    const photo = await decodePhoto(png16, 'deep.png', { targetSize: 256 });
    expect(photo.source.bitDepth).toBe(16);
    expect(photo.image.channels).toBe(3);
    expect(photo.image.data.length).toBe(width * height * 3);
    for (const x of [0, 100, 150, 299]) {
      const [r, g, b] = pixel(photo.image, x, 10);
      expect(Math.abs(r - Math.round((x / (width - 1)) * 255))).toBeLessThanOrEqual(1);
      expect(Math.abs(g - 200)).toBeLessThanOrEqual(1);
      expect(Math.abs(b - 50)).toBeLessThanOrEqual(1);
    }
  });

  it('converts a CMYK JPEG to sRGB', async () => {
    const cmyk = await sharp({ create: { width: 300, height: 300, channels: 3, background: { r: 220, g: 20, b: 30 } } })
      .composite([{ input: { create: { width: 150, height: 300, channels: 3, background: '#ffffff' } }, left: 150, top: 0 }])
      .toColourspace('cmyk')
      .jpeg()
      .toBuffer();
    const meta = await sharp(cmyk).metadata();
    expect([meta.space, meta.channels]).toEqual(['cmyk', 4]);
    const photo = await decodePhoto(cmyk, 'print.jpg', { targetSize: 256 });
    expect(photo.source.space).toBe('cmyk');
    expect(photo.image.channels).toBe(3);
    const [r, g, b] = pixel(photo.image, 50, 150);
    expect(r).toBeGreaterThan(180);
    expect(g).toBeLessThan(80);
    expect(b).toBeLessThan(80);
    for (const v of pixel(photo.image, 250, 150)) expect(v).toBeGreaterThan(240);
  });

  it('flattens a PNG with alpha onto white', async () => {
    const width = 300;
    const rgba = Buffer.alloc(width * 300 * 4);
    for (let i = 0; i < width * 300; i++) {
      const x = i % width;
      // Left third opaque red; middle third red at half alpha; right third fully transparent black.
      const alpha = x < 100 ? 255 : x < 200 ? 128 : 0;
      rgba.set(x < 200 ? [255, 0, 0, alpha] : [0, 0, 0, 0], i * 4);
    }
    const png = await sharp(rgba, { raw: { width, height: 300, channels: 4 } }).png().toBuffer();
    const photo = await decodePhoto(png, 'cutout.png', { targetSize: 256 });
    expect(photo.source.hasAlpha).toBe(true);
    expect(photo.image.channels).toBe(3);
    expect(pixel(photo.image, 50, 50)).toEqual([255, 0, 0]);
    const [r, g, b] = pixel(photo.image, 150, 50);
    expect(r).toBe(255);
    expect(Math.abs(g - 127)).toBeLessThanOrEqual(2);
    expect(Math.abs(b - 127)).toBeLessThanOrEqual(2);
    expect(pixel(photo.image, 250, 50)).toEqual([255, 255, 255]);
  });

  it.each([
    // Orientation 6: the camera was turned clockwise; top-left of the stored image ends up top-right.
    [6, 'top-right'],
    // Orientation 8: turned counter-clockwise; top-left ends up bottom-left.
    [8, 'bottom-left'],
  ] as const)('applies EXIF orientation %i so the photo comes out upright', async (orientation, corner) => {
    // A landscape 600×400 stored image with a red 80×80 marker in its top-left corner.
    const stored = await sharp({ create: { width: 600, height: 400, channels: 3, background: '#202020' } })
      .composite([{ input: { create: { width: 80, height: 80, channels: 3, background: '#ff0000' } }, left: 0, top: 0 }])
      .jpeg({ quality: 95 })
      .withMetadata({ orientation })
      .toBuffer();
    expect((await sharp(stored).metadata()).orientation).toBe(orientation);
    const photo = await decodePhoto(stored, 'turned.jpg', { targetSize: 256 });
    expect([photo.image.width, photo.image.height]).toEqual([400, 600]);
    expect(photo.source).toMatchObject({ orientation, storedWidth: 600, storedHeight: 400 });
    const corners = {
      'top-left': pixel(photo.image, 20, 20),
      'top-right': pixel(photo.image, 379, 20),
      'bottom-left': pixel(photo.image, 20, 579),
      'bottom-right': pixel(photo.image, 379, 579),
    };
    for (const [name, [r]] of Object.entries(corners)) {
      if (name === corner) expect(r, name).toBeGreaterThan(200);
      else expect(r, name).toBeLessThan(60);
    }
  });

  it('rejects a 40×40 photo as too small', async () => {
    const tiny = await fromRaw(texture(40, 40)).jpeg().toBuffer();
    const err = await rejects(decodePhoto(tiny, 'tiny.jpg', OPTS), 'IMAGE_TOO_SMALL', 'tiny.jpg');
    expect(err.message).toContain('40×40');
    expect(err.message).toContain('256 px (minSide)');
  });

  it('accepts a photo smaller than the training resolution but above the floor, with the upscale factor', async () => {
    const small = await fromRaw(texture(300, 400)).jpeg().toBuffer();
    const photo = await decodePhoto(small, 'small.jpg', OPTS);
    expect([photo.image.width, photo.image.height]).toEqual([300, 400]);
    expect(photo.warnings).toHaveLength(1);
    expect(photo.warnings[0]).toContain('upscaled 1.71×');
    expect((await decodePhoto(small, 'small.jpg', { targetSize: 300 })).warnings).toEqual([]);
  });

  it('rejects HEIC with advice on how to get a JPEG', async () => {
    const heic = ftyp('heic', ['mif1', 'heic']);
    const err = await rejects(decodePhoto(heic, 'IMG_0042.jpg', OPTS), 'IMAGE_UNSUPPORTED', 'IMG_0042.jpg');
    expect(err.message).toContain('HEIC is not supported');
    expect(err.message).toContain('Most Compatible');
    expect(err.message).toContain('heif-convert');
    await rejects(decodePhoto(ftyp('mif1', ['mif1', 'heix']), 'IMG_0043.HEIC', OPTS), 'IMAGE_UNSUPPORTED', 'IMG_0043.HEIC');
  });

  it('rejects other recognised image formats as unsupported, naming them', async () => {
    const bmp = Buffer.alloc(64);
    bmp.write('BM', 0, 'latin1');
    bmp.writeUInt32LE(40, 14);
    expect((await rejects(decodePhoto(bmp, 'scan.bmp', OPTS), 'IMAGE_UNSUPPORTED', 'scan.bmp')).message).toContain('BMP');
    const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="900" height="900"><rect width="900" height="900"/></svg>');
    expect((await rejects(decodePhoto(svg, 'logo.svg', OPTS), 'IMAGE_UNSUPPORTED', 'logo.svg')).message).toContain('SVG');
  });

  it('quotes file names with control characters in messages', async () => {
    const name = 'evil\u001b[31m.jpg';
    const err = await rejects(decodePhoto(Buffer.alloc(0), name, OPTS), 'IMAGE_UNREADABLE', name);
    expect(err.message).not.toContain('\u001b');
    expect(err.message).toContain('\\u001b');
  });

  it('rejects bad options with INVALID_ARGUMENT naming the option', async () => {
    const png = await fromRaw(texture(300, 300)).png().toBuffer();
    const err = await decodePhoto(png, 'ok.png', { targetSize: 0 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BoothError);
    expect((err as BoothError).code).toBe('INVALID_ARGUMENT');
    expect((err as BoothError).message).toContain('targetSize');
  });
});

describe('decodePhoto: good input', () => {
  it('lists the formats this sharp build decodes, and decodes each', async () => {
    expect(SUPPORTED_FORMATS).toEqual(expect.arrayContaining(['jpeg', 'png', 'webp', 'avif', 'tiff', 'gif']));
    const source = texture(320, 280);
    const encoders: Record<string, (s: Sharp) => Sharp> = {
      jpeg: (s) => s.jpeg({ quality: 95 }),
      png: (s) => s.png(),
      webp: (s) => s.webp({ lossless: true }),
      // effort 0: AV1's default effort spends seconds on a noisy texture, to no purpose here.
      avif: (s) => s.avif({ quality: 90, effort: 0 }),
      tiff: (s) => s.tiff(),
      gif: (s) => s.gif(),
    };
    for (const format of SUPPORTED_FORMATS) {
      const encode = encoders[format];
      if (!encode) throw new Error(`no encoder in this test for ${format}`);
      const bytes = await encode(fromRaw(source)).toBuffer();
      const photo = await decodePhoto(bytes, `x.${format}`, { targetSize: 256 });
      expect(photo.source.format, format).toBe(format);
      expect([photo.image.width, photo.image.height], format).toEqual([320, 280]);
      expect(photo.image.data.length, format).toBe(320 * 280 * 3);
    }
  });

  it('reads lossless formats back exactly', async () => {
    const source = texture(300, 260);
    for (const bytes of [await fromRaw(source).png().toBuffer(), await fromRaw(source).webp({ lossless: true }).toBuffer()]) {
      const photo = await decodePhoto(bytes, 'exact', { targetSize: 256 });
      expect(photo.image.data.equals(source.data)).toBe(true);
    }
  });

  it('converts greyscale to three equal channels', async () => {
    const grey = await fromRaw(texture(300, 300)).toColourspace('b-w').png().toBuffer();
    expect((await sharp(grey).metadata()).channels).toBe(1);
    const photo = await decodePhoto(grey, 'grey.png', { targetSize: 256 });
    expect(photo.image.channels).toBe(3);
    const [r, g, b] = pixel(photo.image, 123, 45);
    expect(r).toBe(g);
    expect(g).toBe(b);
  });

  it('uses the first frame of an animated GIF and says so', async () => {
    const red = await sharp({ create: { width: 300, height: 300, channels: 3, background: '#ff0000' } }).png().toBuffer();
    const blue = await sharp({ create: { width: 300, height: 300, channels: 3, background: '#0000ff' } }).png().toBuffer();
    const gif = await sharp([red, blue], { join: { animated: true } }).gif().toBuffer();
    expect((await sharp(gif).metadata()).pages).toBe(2);
    const photo = await decodePhoto(gif, 'anim.gif', { targetSize: 256 });
    expect([photo.image.width, photo.image.height]).toEqual([300, 300]);
    const [r, , b] = pixel(photo.image, 150, 150);
    expect(r).toBeGreaterThan(200);
    expect(b).toBeLessThan(50);
    expect(photo.warnings.join('\n')).toMatch(/2 frames or pages; only the first is used/);
  });

  const photosDir = path.resolve(import.meta.dirname, '../../../shared/data/photos');
  const demoDir = path.join(path.dirname(createRequire(import.meta.url).resolve('@vladmandic/face-api/package.json')), 'demo');
  const hasShared = existsSync(photosDir);
  if (!hasShared) console.log(`skipping the real-photo decode test: ${photosDir} is absent`);

  it('decodes the face-api demo photos (shipped with the package)', async () => {
    for (let i = 1; i <= 6; i++) {
      const file = path.join(demoDir, `sample${i}.jpg`);
      const photo = await decodePhoto(readFileSync(file), `sample${i}.jpg`, OPTS);
      const meta = await sharp(file).metadata();
      expect([photo.image.width, photo.image.height]).toEqual([meta.autoOrient.width, meta.autoOrient.height]);
      expect(photo.warnings).toEqual([]);
    }
  });

  it.skipIf(!hasShared)('decodes every real photo in ../shared/data/photos, upright, without warnings', async () => {
    const subjects = readdirSync(photosDir);
    expect(subjects.length).toBeGreaterThan(0);
    for (const subject of subjects) {
      for (const file of readdirSync(path.join(photosDir, subject))) {
        const full = path.join(photosDir, subject, file);
        const photo = await decodePhoto(readFileSync(full), `${subject}/${file}`, OPTS);
        const meta = await sharp(full).metadata();
        expect([photo.image.width, photo.image.height], full).toEqual([meta.autoOrient.width, meta.autoOrient.height]);
        expect(photo.image.data.length).toBe(photo.image.width * photo.image.height * 3);
        expect(photo.source.format).toBe('jpeg');
        expect(photo.warnings, full).toEqual([]);
      }
    }
  });
});

describe('renderPng and resizeRaw', () => {
  it('renderPng round-trips pixels losslessly', async () => {
    const image = texture(300, 270);
    const back = await decodePhoto(await renderPng(image), 'round.png', { targetSize: 256 });
    expect(back.image.data.equals(image.data)).toBe(true);
  });

  it('resizeRaw shrinks to the longer side and never enlarges', async () => {
    const image = texture(1000, 500);
    const small = await resizeRaw(image, 400);
    expect([small.width, small.height, small.data.length]).toEqual([400, 200, 400 * 200 * 3]);
    expect(await resizeRaw(image, 1000)).toBe(image);
    await expect(resizeRaw(image, 0)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });
});
