/**
 * Photo intake: turn the bytes of one uploaded file into upright, sRGB, 8-bit RGB pixels, or a
 * {@link BoothError} that names the file and says what to do. The format is sniffed from the
 * magic bytes, never the extension, so a text file named `.jpg` or an iPhone HEIC renamed to
 * `.jpg` gets a message about what it really is. Size is checked from the header before any pixel
 * is decoded (a 30000×30000 PNG compresses to a few KB but would need 2.7 GB decoded). Error codes
 * follow one rule: `IMAGE_UNREADABLE` when no image can be read from the bytes (empty, text,
 * unknown, truncated, corrupt), `IMAGE_UNSUPPORTED` when the bytes are an image in a format Booth
 * does not decode (HEIC, BMP, SVG, PSD, …), `IMAGE_TOO_LARGE` / `IMAGE_TOO_SMALL` for the size
 * limits. Everything here works on one file; a caller decoding many catches per file.
 */
import sharp from 'sharp';
import type { FormatEnum, Metadata, OutputInfo } from 'sharp';
import { BoothError, errorMessage } from '../errors.js';
import type { DecodedPhoto, RawImage, SourceInfo } from './types.js';

/** Options of {@link decodePhoto}. */
export interface DecodeOptions {
  /** Training resolution in pixels (512 for SD 1.5, 768 for SD 2.1, 1024 for SDXL). */
  targetSize: number;
  /**
   * Largest accepted `width × height`, checked from the header before decoding (decompression
   * bomb guard) and passed to sharp's `limitInputPixels` as a second line. Default
   * {@link DEFAULT_MAX_PIXELS}.
   */
  maxPixels?: number;
  /** Smallest accepted shorter side in pixels; below it the photo is rejected. Default {@link DEFAULT_MIN_SIDE}. */
  minSide?: number;
}

/**
 * Default pixel limit: 100 MP. The largest phone and consumer camera sensors are around 50–61 MP
 * (a 200 MP phone mode is the rare exception); 100 MP decodes to 300 MB of RGB, which a
 * preparation worker can afford for one photo at a time.
 */
export const DEFAULT_MAX_PIXELS = 100_000_000;

/**
 * Default floor for the shorter side: 256 px. Below it even the smallest training resolution
 * (512) would need more than a 2× upscale, which only invents detail the model then learns.
 */
export const DEFAULT_MIN_SIDE = 256;

/** A format Booth decodes. `avif` is AV1 inside HEIF; HEVC inside HEIF (`heic`) is not one. */
export type PhotoFormat = 'jpeg' | 'png' | 'webp' | 'avif' | 'tiff' | 'gif';

/** What {@link sniffFormat} can recognise. */
export type SniffedFormat =
  | PhotoFormat
  | 'heic'
  | 'bmp'
  | 'svg'
  | 'pdf'
  | 'psd'
  | 'jxl'
  | 'jp2'
  | 'ico'
  | 'cr2'
  | 'cr3'
  | 'video'
  | 'html'
  | 'text'
  | 'empty'
  | 'unknown';

/** Per supported format: how a person knows it, and the sharp loader that must be present. */
const PHOTO_FORMATS: Readonly<Record<PhotoFormat, { label: string; loader: keyof FormatEnum }>> = {
  jpeg: { label: 'JPEG', loader: 'jpeg' },
  png: { label: 'PNG', loader: 'png' },
  webp: { label: 'WebP', loader: 'webp' },
  avif: { label: 'AVIF', loader: 'heif' },
  tiff: { label: 'TIFF', loader: 'tiff' },
  gif: { label: 'GIF (first frame)', loader: 'gif' },
};

/**
 * The formats this installation decodes, read from sharp's own capability table at load time so
 * the list cannot drift from the libvips build actually installed.
 */
export const SUPPORTED_FORMATS: readonly PhotoFormat[] = (Object.keys(PHOTO_FORMATS) as PhotoFormat[]).filter(
  (f) => sharp.format[PHOTO_FORMATS[f].loader].input.buffer,
);

const SUPPORTED_TEXT = SUPPORTED_FORMATS.map((f) => PHOTO_FORMATS[f].label).join(', ');

const HEIC_ADVICE =
  'HEIC is not supported: export as JPEG (iPhone: Settings → Camera → Formats → Most Compatible) or convert with `heif-convert`';

/** Why a recognised non-photo format is refused, in words a person can act on. */
const UNSUPPORTED_REASON: Readonly<Partial<Record<SniffedFormat, string>>> = {
  heic: HEIC_ADVICE,
  bmp: 'BMP is not supported: convert it to PNG',
  svg: 'SVG is a vector drawing, not a photo: export it as PNG',
  pdf: 'PDF is a document, not a photo: export the page or picture as JPEG or PNG',
  psd: 'Photoshop (PSD) files are not supported: export as JPEG or PNG',
  jxl: 'JPEG XL is not supported by this build: convert it to JPEG or PNG',
  jp2: 'JPEG 2000 is not supported by this build: convert it to JPEG or PNG',
  ico: 'ICO icons are not supported: use the original photo',
  cr2: 'camera raw (Canon CR2) is not supported: export as JPEG from your raw developer',
  cr3: 'camera raw (Canon CR3) is not supported: export as JPEG from your raw developer',
  video: 'this is a video, not a photo: export a still frame as JPEG or PNG',
};

const HEIC_BRANDS = new Set(['heic', 'heix', 'heim', 'heis', 'hevc', 'hevx', 'hevm', 'hevs']);
const AVIF_BRANDS = new Set(['avif', 'avis']);
const VIDEO_BRANDS = new Set(['isom', 'iso2', 'mp41', 'mp42', 'qt  ', 'M4V ', '3gp4', '3gp5', '3g2a', 'avc1']);

function startsWith(bytes: Buffer, magic: readonly number[], offset = 0): boolean {
  if (bytes.length < offset + magic.length) return false;
  return magic.every((b, i) => bytes[offset + i] === b);
}

function ascii(bytes: Buffer, start: number, end: number): string {
  return bytes.subarray(start, Math.min(end, bytes.length)).toString('latin1');
}

/** Classify an ISO base media file (`ftyp` box) by its major and compatible brands. */
function sniffIsoBmff(bytes: Buffer): SniffedFormat {
  const boxSize = bytes.readUInt32BE(0);
  const end = Math.min(boxSize >= 16 ? boxSize : 16, bytes.length, 256);
  const brands = [ascii(bytes, 8, 12)];
  for (let at = 16; at + 4 <= end; at += 4) brands.push(ascii(bytes, at, at + 4));
  // The major brand decides first: an AVIF may list `heic`-family brands as compatible and vice versa.
  const major = brands[0] ?? '';
  if (AVIF_BRANDS.has(major)) return 'avif';
  if (HEIC_BRANDS.has(major)) return 'heic';
  if (major === 'crx ') return 'cr3';
  if (brands.some((b) => AVIF_BRANDS.has(b))) return 'avif';
  if (brands.some((b) => HEIC_BRANDS.has(b))) return 'heic';
  // A bare `mif1`/`msf1` HEIF without a codec brand: most often a phone's HEVC image. Calling it
  // HEIC gives the actionable message; a real AVIF always carries the `avif` brand.
  if (brands.some((b) => b === 'mif1' || b === 'msf1')) return 'heic';
  if (brands.some((b) => VIDEO_BRANDS.has(b))) return 'video';
  return 'unknown';
}

/** True when the first bytes read as text: no NUL and almost only printable characters. */
function looksLikeText(head: Buffer): boolean {
  let printable = 0;
  for (const b of head) {
    if (b === 0) return false;
    // Tab, LF, CR, printable ASCII, and any byte of a UTF-8 multi-byte sequence.
    if (b === 9 || b === 10 || b === 13 || (b >= 32 && b !== 127)) printable++;
  }
  return head.length > 0 && printable / head.length > 0.95;
}

/**
 * Recognise a file's format from its first bytes (magic numbers), ignoring its name.
 *
 * @param bytes - the file's contents (only the first few hundred bytes are looked at)
 * @returns the recognised format; `empty` for zero bytes, `html`/`text` for text, `unknown` otherwise
 * @example
 * sniffFormat(await readFile('IMG_0001.jpg')); // 'heic' when an iPhone photo was merely renamed
 */
export function sniffFormat(bytes: Buffer): SniffedFormat {
  if (bytes.length === 0) return 'empty';
  if (startsWith(bytes, [0xff, 0xd8, 0xff])) return 'jpeg';
  if (startsWith(bytes, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return 'png';
  if (ascii(bytes, 0, 4) === 'RIFF' && ascii(bytes, 8, 12) === 'WEBP') return 'webp';
  if (ascii(bytes, 0, 6) === 'GIF87a' || ascii(bytes, 0, 6) === 'GIF89a') return 'gif';
  if (bytes.length >= 12 && ascii(bytes, 4, 8) === 'ftyp') return sniffIsoBmff(bytes);
  if (startsWith(bytes, [0x49, 0x49, 0x2a, 0x00])) {
    // Canon CR2 is a little-endian TIFF with "CR" and a version at offset 8.
    return ascii(bytes, 8, 10) === 'CR' ? 'cr2' : 'tiff';
  }
  if (startsWith(bytes, [0x4d, 0x4d, 0x00, 0x2a])) return 'tiff';
  if (startsWith(bytes, [0x49, 0x49, 0x2b, 0x00]) || startsWith(bytes, [0x4d, 0x4d, 0x00, 0x2b])) return 'tiff';
  // BMP's two-letter magic is weak on its own; the DIB header size at offset 14 confirms it.
  if (ascii(bytes, 0, 2) === 'BM' && bytes.length >= 18 && [12, 40, 52, 56, 64, 108, 124].includes(bytes.readUInt32LE(14))) return 'bmp';
  if (ascii(bytes, 0, 4) === '8BPS') return 'psd';
  if (ascii(bytes, 0, 5) === '%PDF-') return 'pdf';
  if (startsWith(bytes, [0xff, 0x0a]) || startsWith(bytes, [0, 0, 0, 0x0c, 0x4a, 0x58, 0x4c, 0x20])) return 'jxl';
  if (startsWith(bytes, [0, 0, 0, 0x0c, 0x6a, 0x50, 0x20, 0x20]) || startsWith(bytes, [0xff, 0x4f, 0xff, 0x51])) return 'jp2';
  if (startsWith(bytes, [0, 0, 1, 0]) && bytes.length >= 22 && bytes.readUInt16LE(4) > 0) return 'ico';
  const head = bytes.subarray(0, 1024);
  if (looksLikeText(head)) {
    const text = head.toString('utf8').replace(/^\uFEFF/, '').trimStart().toLowerCase();
    if (text.startsWith('<!doctype html') || text.startsWith('<html')) return 'html';
    if (text.startsWith('<') && /<svg[\s>]/.test(text)) return 'svg';
    return 'text';
  }
  return 'unknown';
}

/** A file name made safe to print: quoted, with control characters escaped. */
function quote(name: string): string {
  return JSON.stringify(name);
}

function hexHead(bytes: Buffer): string {
  return [...bytes.subarray(0, 8)].map((b) => b.toString(16).padStart(2, '0')).join(' ');
}

function bitDepthOf(depth: string): number {
  if (depth === 'uchar' || depth === 'char') return 8;
  if (depth === 'ushort' || depth === 'short') return 16;
  if (depth === 'uint' || depth === 'int' || depth === 'float') return 32;
  return 64;
}

/** A libvips error as one short line: its messages often span lines and repeat. */
function decoderMessage(err: unknown): string {
  const lines = [...new Set(errorMessage(err).split('\n').map((l) => l.trim()).filter((l) => l !== ''))];
  const text = lines.join('; ');
  return text.length > 200 ? `${text.slice(0, 199)}…` : text;
}

function megapixels(pixels: number): string {
  return `${(pixels / 1e6).toFixed(1)} MP`;
}

/** Refuse anything that is not a supported photo format, before sharp sees the bytes. */
function requireSupported(bytes: Buffer, shown: string): PhotoFormat {
  const sniffed = sniffFormat(bytes);
  if ((SUPPORTED_FORMATS as readonly string[]).includes(sniffed)) return sniffed as PhotoFormat;
  switch (sniffed) {
    case 'empty':
      throw new BoothError('IMAGE_UNREADABLE', `${shown} is empty (0 bytes): the upload or copy did not finish; add the original file again`);
    case 'html':
      throw new BoothError(
        'IMAGE_UNREADABLE',
        `${shown} is not an image: it is an HTML page (often a download link saved instead of the photo); supported formats: ${SUPPORTED_TEXT}`,
      );
    case 'text':
      throw new BoothError('IMAGE_UNREADABLE', `${shown} is not an image: it contains text; supported formats: ${SUPPORTED_TEXT}`);
    case 'unknown':
      throw new BoothError(
        'IMAGE_UNREADABLE',
        `${shown} is not an image in any format Booth reads (first bytes: ${hexHead(bytes)}); supported formats: ${SUPPORTED_TEXT}`,
      );
    default: {
      const reason = UNSUPPORTED_REASON[sniffed] ?? `${sniffed.toUpperCase()} is not supported by this installation`;
      throw new BoothError('IMAGE_UNSUPPORTED', `${shown}: ${reason}; supported formats: ${SUPPORTED_TEXT}`);
    }
  }
}

/** Decoder messages worth showing a person: libvips' "read gave N warnings" summaries dropped, duplicates merged. */
function decoderWarnings(raw: readonly string[]): string[] {
  const lines = raw.flatMap((w) => w.split('\n')).map((l) => l.trim());
  return [...new Set(lines.filter((l) => l !== '' && !/^read gave \d+ warnings?$/.test(l)))];
}

/**
 * Decode one uploaded photo into upright sRGB 8-bit RGB pixels.
 *
 * The EXIF orientation is applied (the output is upright; `source.storedWidth/Height` keep the
 * stored size), an embedded ICC profile is honoured, CMYK, greyscale and 16-bit images are
 * converted to 8-bit sRGB, and alpha is flattened onto white. Truncated data is rejected (sharp
 * `failOn: 'truncated'`); milder decoder complaints that real cameras produce, such as libjpeg's
 * "extraneous bytes before marker", are accepted and reported in `warnings`.
 *
 * @param bytes - the file's contents
 * @param name - the file name as the person knows it; used only in messages
 * @param options - training resolution and size limits, see {@link DecodeOptions}
 * @returns the pixels, what the file was, and non-fatal warnings (e.g. the upscale factor needed)
 * @throws BoothError `IMAGE_UNREADABLE` for empty, text, unknown, truncated or corrupt data;
 *   `IMAGE_UNSUPPORTED` for images in formats not in {@link SUPPORTED_FORMATS} (HEIC gets its own
 *   advice); `IMAGE_TOO_LARGE` above `maxPixels`; `IMAGE_TOO_SMALL` when the shorter side is below
 *   `minSide`; `INVALID_ARGUMENT` for bad options
 * @example
 * const photo = await decodePhoto(await readFile('IMG_0001.jpg'), 'IMG_0001.jpg', { targetSize: 512 });
 * photo.image.width; // upright width
 * photo.warnings;    // e.g. ['shorter side 400 px is below the 512 px training resolution; it will be upscaled 1.28×']
 */
export async function decodePhoto(bytes: Buffer, name: string, options: DecodeOptions): Promise<DecodedPhoto> {
  const { targetSize, maxPixels = DEFAULT_MAX_PIXELS, minSide = DEFAULT_MIN_SIDE } = options;
  for (const [key, value] of [['targetSize', targetSize], ['maxPixels', maxPixels], ['minSide', minSide]] as const) {
    if (!Number.isInteger(value) || value <= 0) {
      throw new BoothError('INVALID_ARGUMENT', `decodePhoto: option ${key} must be a positive integer, got ${String(value)}`);
    }
  }
  const shown = quote(name);
  const sniffed = requireSupported(bytes, shown);

  // Header only: no pixel is decoded here, whatever the declared size. The limit is lifted for
  // this call because sharp enforces it in metadata() too, and we want our own message.
  let meta: Metadata;
  try {
    meta = await sharp(bytes, { limitInputPixels: false }).metadata();
  } catch (err) {
    throw new BoothError('IMAGE_UNREADABLE', `${shown} looks like ${PHOTO_FORMATS[sniffed].label} but its header cannot be read (${decoderMessage(err)}); the file is damaged`, {
      cause: err,
    });
  }
  if (meta.format === 'heif' && meta.compression !== 'av1') {
    throw new BoothError('IMAGE_UNSUPPORTED', `${shown}: ${HEIC_ADVICE}; supported formats: ${SUPPORTED_TEXT}`);
  }

  const pixels = meta.width * meta.height;
  if (pixels > maxPixels) {
    throw new BoothError(
      'IMAGE_TOO_LARGE',
      `${shown} is ${meta.width}×${meta.height} pixels (${megapixels(pixels)}), over the limit of ${megapixels(maxPixels)} (maxPixels ${maxPixels}); downscale it before adding`,
    );
  }
  const orientation = meta.orientation !== undefined && meta.orientation >= 1 && meta.orientation <= 8 ? meta.orientation : 1;
  const uprightWidth = orientation >= 5 ? meta.height : meta.width;
  const uprightHeight = orientation >= 5 ? meta.width : meta.height;
  const shorter = Math.min(uprightWidth, uprightHeight);
  if (shorter < minSide) {
    throw new BoothError(
      'IMAGE_TOO_SMALL',
      `${shown} is ${uprightWidth}×${uprightHeight} pixels; the shorter side must be at least ${minSide} px (minSide) to train at ${targetSize} px; use a larger original`,
    );
  }

  const rawWarnings: string[] = [];
  let decoded: { data: Buffer; info: OutputInfo };
  try {
    const pipeline = sharp(bytes, { failOn: 'truncated', limitInputPixels: maxPixels, autoOrient: true });
    pipeline.on('warning', (message: string) => rawWarnings.push(message));
    decoded = await pipeline
      .flatten({ background: '#ffffff' })
      .toColourspace('srgb')
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
  } catch (err) {
    throw new BoothError(
      'IMAGE_UNREADABLE',
      `${shown} cannot be decoded: the ${PHOTO_FORMATS[sniffed].label} data is truncated or corrupt (${decoderMessage(err)}); copy the original file again`,
      { cause: err },
    );
  }
  const { data, info } = decoded;
  if (info.channels !== 3 || data.length !== info.width * info.height * 3) {
    // sharp promised sRGB uchar; anything else is a bug here, not a bad photo.
    throw new Error(`decodePhoto: ${shown} decoded to ${info.channels} channels, ${data.length} bytes for ${info.width}×${info.height}`);
  }

  const warnings: string[] = [];
  if (shorter < targetSize) {
    warnings.push(
      `shorter side ${shorter} px is below the ${targetSize} px training resolution; it will be upscaled ${(targetSize / shorter).toFixed(2)}×`,
    );
  }
  if ((meta.pages ?? 1) > 1) {
    warnings.push(`${meta.pages} frames or pages; only the first is used`);
  }
  const complaints = decoderWarnings(rawWarnings);
  if (complaints.length > 0) {
    warnings.push(`decoded despite decoder warnings (${complaints.join('; ')}); check it in the contact sheet`);
  }

  const source: SourceInfo = {
    format: meta.format === 'heif' ? 'avif' : meta.format,
    storedWidth: meta.width,
    storedHeight: meta.height,
    orientation,
    space: meta.space,
    bitDepth: bitDepthOf(meta.depth),
    hasAlpha: meta.hasAlpha,
  };
  return { image: { data, width: info.width, height: info.height, channels: 3 }, source, warnings };
}

/**
 * Encode pixels as PNG (lossless, for dataset crops and contact sheets).
 *
 * @param image - RGB pixels
 * @returns the PNG file's bytes
 * @throws Error when `image.data` does not hold `width × height × 3` bytes
 * @example
 * await writeFile('crop.png', await renderPng(crop));
 */
export async function renderPng(image: RawImage): Promise<Buffer> {
  checkRaw(image);
  return sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } }).png().toBuffer();
}

/**
 * Shrink pixels so that the longer side is at most `maxSide`, keeping the aspect ratio, with the
 * Lanczos-3 filter. Never enlarges: an image already within `maxSide` is returned as is.
 *
 * @param image - RGB pixels
 * @param maxSide - the largest allowed width or height, a positive integer
 * @returns the resized image (or `image` itself when no resize was needed)
 * @throws BoothError `INVALID_ARGUMENT` when `maxSide` is not a positive integer
 * @example
 * const preview = await resizeRaw(photo.image, 1024);
 */
export async function resizeRaw(image: RawImage, maxSide: number): Promise<RawImage> {
  if (!Number.isInteger(maxSide) || maxSide <= 0) {
    throw new BoothError('INVALID_ARGUMENT', `resizeRaw: maxSide must be a positive integer, got ${String(maxSide)}`);
  }
  checkRaw(image);
  if (Math.max(image.width, image.height) <= maxSide) return image;
  const { data, info } = await sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } })
    .resize({ width: maxSide, height: maxSide, fit: 'inside', kernel: 'lanczos3' })
    .raw()
    .toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height, channels: 3 };
}

function checkRaw(image: RawImage): void {
  if (image.data.length !== image.width * image.height * 3) {
    throw new Error(`raw image is ${image.width}×${image.height}×3 but holds ${image.data.length} bytes`);
  }
}
