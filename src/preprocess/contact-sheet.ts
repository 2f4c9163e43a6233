/**
 * The review contact sheet: one picture of a prepared session that lets a person check, at a
 * glance, what will be trained on. Each photo gets a tile with the original (face boxes, the
 * estimated head, the chosen crop, the area outside the crop dimmed), the prepared training image,
 * the status, the quality flags with their measured values and the caption. Two renderings of the
 * same entries: a PNG (a grid of tiles, for chat, issues and terminals that show images) and a
 * self-contained HTML page (images inlined as `data:` URIs, inline CSS, no script, no request
 * leaves the page; a Content-Security-Policy says so to the browser too).
 *
 * Everything a user controls (file names, captions, reasons, the title) is made visible before it
 * is escaped: control characters and bidirectional formatting characters are shown as `[U+202E]`
 * and so on, because a right-to-left override in a file name would otherwise make `gpj.exe` read
 * as `exe.jpg` in the very view meant to reveal what is in the set.
 *
 * Text in the PNG is laid out by measuring it with Pango (through sharp's text input) and drawn as
 * SVG by librsvg, so it needs at least one font known to fontconfig (Debian: `fonts-dejavu-core`);
 * the family list prefers DejaVu Sans. Tiles are rendered one at a time and kept PNG-compressed
 * until the final composite, so memory grows with the compressed tiles, not with decoded photos.
 */
import sharp from 'sharp';
import type { OverlayOptions, Sharp } from 'sharp';
import { once } from 'node:events';
import { crc32, createDeflate } from 'node:zlib';
import { BoothError } from '../errors.js';
import type { PhotoRecord } from '../sessions/manifest.js';
import type { Rect } from './types.js';

/** Status of a photo, as the session manifest records it. */
export type ContactSheetStatus = 'accepted' | 'excluded' | 'rejected';

/** One quality finding about a photo. */
export interface ContactSheetFlag {
  /** Stable flag name, e.g. `blurry`, `small-face`, `near-duplicate`, `other-identity`. */
  flag: string;
  /** The measured value behind the flag (e.g. the Laplacian variance for `blurry`). */
  value?: number | string;
  /** Human explanation (shown in the HTML page; too long for a PNG tile). */
  detail?: string;
}

/** One photo of the sheet. */
export interface ContactSheetEntry {
  /** File name as added. */
  name: string;
  status: ContactSheetStatus;
  /** Human text (rejection/exclusion reason). */
  reason: string | null;
  /** Quality flags, e.g. `blurry` (value = measured score). */
  flags: ContactSheetFlag[];
  caption: string | null;
  /** Who wrote the caption (`gpt-4o-mini`, `hand`, `offline`, `template`), shown next to it; optional. */
  captionBy?: string | null;
  /** Size of the upright source image in pixels; the coordinate space of `faces`, `crop`, `head`. */
  source: { width: number; height: number } | null;
  /** Downscaled preview of the original (upright), PNG or JPEG bytes; null for rejected files. */
  preview: Buffer | null;
  /** All detected faces in source pixels; `subject` marks the subject's face. */
  faces: Array<{ box: Rect; score: number; subject: boolean }>;
  /** Chosen crop rectangle in source pixels. */
  crop: Rect | null;
  /** Estimated head box (optional overlay). */
  head?: Rect | null;
  /** The prepared training image (PNG) or null. */
  result: Buffer | null;
}

/** Options of both renderers. */
export interface ContactSheetOptions {
  /** Heading of the sheet (e.g. the session name and subject). */
  title: string;
  /** Second line under the title (settings, counts). */
  subtitle?: string;
  /** Side of each image pane in PNG pixels (96–1024, default 256); the HTML page inlines images at twice this. */
  thumbSize?: number;
  /** Tiles per row in the PNG (1–64; default: the number of photos, at most 4). Ignored by the HTML page, which reflows. */
  columns?: number;
}

/** Where everything goes in the PNG, in sheet pixels. */
export interface ContactSheetLayout {
  columns: number;
  rows: number;
  thumbSize: number;
  /** Whole sheet. */
  width: number;
  height: number;
  /** Height of the title band at the top; the first row of tiles starts below it. */
  headerHeight: number;
  /** Margin around the grid and space between tiles. */
  gap: number;
  tileWidth: number;
  tileHeight: number;
  /**
   * The original's pane, relative to a tile's top-left corner. The preview is scaled to fit
   * inside it (aspect ratio kept, never cropped) and centred; overlays are drawn on the preview.
   */
  previewPane: Rect;
  /** The training image's pane, relative to a tile's top-left corner; fitted and centred the same way. */
  resultPane: Rect;
  /** Each tile's rectangle on the sheet, in entry order. */
  tiles: Rect[];
}

// Overlay and status colours, shared by both renderings so that the PNG and the page read alike.
const COLOUR = {
  subjectFace: '#22d3ee',
  otherFace: '#f472b6',
  crop: '#facc15',
  head: '#ffffff',
  sheet: '#eef0f3',
  card: '#ffffff',
  cardBorder: '#d3d8df',
  pane: '#1f2329',
  ink: '#111827',
  muted: '#4b5563',
  faint: '#6b7280',
  flagBg: '#fff7e6',
  flagBorder: '#e8a33d',
  flagInk: '#7a4100',
} as const;

const STATUS_STYLE: Record<ContactSheetStatus, { label: string; bg: string; fg: string; note: string }> = {
  // Text colours chosen for at least 4.5:1 contrast on their backgrounds (WCAG AA).
  accepted: { label: 'Accepted', bg: '#15803d', fg: '#ffffff', note: '#166534' },
  excluded: { label: 'Excluded', bg: '#f59e0b', fg: '#1c1303', note: '#92400e' },
  rejected: { label: 'Rejected', bg: '#b91c1c', fg: '#ffffff', note: '#b91c1c' },
};

const STATUSES: readonly ContactSheetStatus[] = ['accepted', 'excluded', 'rejected'];

const FONT_FAMILIES = 'DejaVu Sans, Noto Sans, Liberation Sans, Arial, Helvetica, sans-serif';

const DEFAULT_THUMB = 256;
const MIN_THUMB = 96;
const MAX_THUMB = 1024;
const MAX_COLUMNS = 64;
const DEFAULT_MAX_COLUMNS = 4;

// Fixed text metrics of a tile (px); text does not scale with thumbSize, so small thumbs stay legible.
const GAP = 16;
const PAD = 12;
const PANE_GAP = 8;
const TEXT_TOP = 12;
const NAME_H = 22;
const META_H = 28;
const CHIP_H = 20;
const CHIP_LINE = 24;
const CHIP_LINES = 2;
const NOTE_LINE = 17;
const NOTE_LINES = 3;
const TEXT_BLOCK_H = NAME_H + META_H + CHIP_LINE * CHIP_LINES + 6 + NOTE_LINE * NOTE_LINES;
const HEADER_H = 150;
const EMPTY_H = 56;

/**
 * The contact-sheet entry of a photo record: status, reason, quality flags with values, faces,
 * crop, head and caption, plus the captioner's reviewer flags as `caption:<flag>` chips (so a
 * reviewer sees `caption:face-covered` next to `blurry`) and who wrote the caption.
 * @param photo - the manifest's record
 * @param preview - the stored preview (JPEG) or null
 * @param result - the training image (thumbnail) or null
 */
export function photoEntry(photo: PhotoRecord, preview: Buffer | null, result: Buffer | null): ContactSheetEntry {
  const meta = photo.captionMeta ?? null;
  const by =
    photo.captionSource === 'model' ? (meta?.model ?? 'model') : photo.captionSource === 'hand' ? 'by hand' : photo.captionSource === null ? null : photo.captionSource;
  const captionFlags: ContactSheetFlag[] = (meta?.flags ?? []).map((f) => ({ flag: `caption:${f}`, detail: `reported by the captioner (${by ?? 'unknown'})` }));
  if (photo.captionError) captionFlags.push({ flag: 'caption-error', detail: photo.captionError });
  return {
    name: photo.name,
    status: photo.status === 'pending' ? 'rejected' : photo.status,
    reason: photo.reason,
    flags: [...photo.checks.map((c) => ({ flag: c.flag, value: c.value ?? undefined, detail: c.detail })), ...captionFlags],
    caption: photo.caption,
    captionBy: by,
    source: photo.source ? { width: photo.source.width, height: photo.source.height } : null,
    preview,
    faces: photo.faces.map((f) => ({ box: f.box, score: f.score, subject: f.subject })),
    crop: photo.crop,
    head: photo.head,
    result,
  };
}

/**
 * Compute where the PNG renderer puts each tile, without rendering anything.
 *
 * @param count - number of entries
 * @param options - `thumbSize` and `columns` as for {@link renderContactSheetPng}
 * @returns the sheet's size and every tile's rectangle
 * @throws {BoothError} `INVALID_ARGUMENT` when `count`, `thumbSize` or `columns` is out of range
 * @example
 * const { width, height, tiles } = contactSheetLayout(12, { thumbSize: 200, columns: 3 });
 */
export function contactSheetLayout(count: number, options: Pick<ContactSheetOptions, 'thumbSize' | 'columns'> = {}): ContactSheetLayout {
  if (!Number.isInteger(count) || count < 0) {
    throw new BoothError('INVALID_ARGUMENT', `contact sheet entry count must be a non-negative integer; got ${String(count)}`);
  }
  const thumbSize = options.thumbSize ?? DEFAULT_THUMB;
  if (!Number.isInteger(thumbSize) || thumbSize < MIN_THUMB || thumbSize > MAX_THUMB) {
    throw new BoothError('INVALID_ARGUMENT', `thumbSize must be an integer from ${MIN_THUMB} to ${MAX_THUMB}; got ${String(options.thumbSize)}`);
  }
  const columns = options.columns ?? Math.max(1, Math.min(DEFAULT_MAX_COLUMNS, count));
  if (!Number.isInteger(columns) || columns < 1 || columns > MAX_COLUMNS) {
    throw new BoothError('INVALID_ARGUMENT', `columns must be an integer from 1 to ${MAX_COLUMNS}; got ${String(options.columns)}`);
  }
  const rows = Math.ceil(count / columns);
  const tileWidth = 2 * thumbSize + PANE_GAP + 2 * PAD;
  const tileHeight = PAD + thumbSize + TEXT_TOP + TEXT_BLOCK_H + PAD;
  const width = columns * tileWidth + (columns + 1) * GAP;
  const height = HEADER_H + (rows === 0 ? EMPTY_H + GAP : rows * (tileHeight + GAP));
  const tiles: Rect[] = [];
  for (let i = 0; i < count; i++) {
    const col = i % columns;
    const row = Math.floor(i / columns);
    tiles.push({ x: GAP + col * (tileWidth + GAP), y: HEADER_H + row * (tileHeight + GAP), width: tileWidth, height: tileHeight });
  }
  return {
    columns,
    rows,
    thumbSize,
    width,
    height,
    headerHeight: HEADER_H,
    gap: GAP,
    tileWidth,
    tileHeight,
    previewPane: { x: PAD, y: PAD, width: thumbSize, height: thumbSize },
    resultPane: { x: PAD + thumbSize + PANE_GAP, y: PAD, width: thumbSize, height: thumbSize },
    tiles,
  };
}

/**
 * Render the contact sheet as a PNG: a title band with counts and a legend, then a grid of tiles.
 *
 * @param entries - the photos, in the order to show them
 * @param options - title, subtitle, pane size and columns
 * @returns PNG bytes
 * @throws {BoothError} `INVALID_ARGUMENT` when an option or an entry is malformed (unknown status,
 *   non-finite rectangle). Unreadable preview or result bytes do not throw: the pane says so.
 * @example
 * const png = await renderContactSheetPng(entries, { title: 'alice: ohwx man', columns: 3 });
 * await writeFile('contact-sheet.png', png);
 */
export async function renderContactSheetPng(entries: ContactSheetEntry[], options: ContactSheetOptions): Promise<Buffer> {
  validateEntries(entries);
  const layout = contactSheetLayout(entries.length, options);
  const measure = new TextMeasurer();
  const { width } = layout;
  // The sheet is produced one band at a time (the header, then one row of tiles) and streamed
  // into the PNG encoder, so memory holds one row of raw tiles whatever the number of photos.
  async function* bands(): AsyncGenerator<Buffer> {
    const headerHeight = entries.length === 0 ? layout.height : layout.headerHeight;
    const header = await headerSvg(entries, options, layout, headerHeight, measure);
    yield rawBand(sharp(Buffer.from(header)).flatten({ background: COLOUR.sheet }), width, headerHeight);
    for (let row = 0; row < layout.rows; row++) {
      const layers: OverlayOptions[] = [];
      for (let col = 0; col < layout.columns; col++) {
        const i = row * layout.columns + col;
        const entry = entries[i];
        const at = layout.tiles[i];
        if (entry === undefined || at === undefined) break;
        layers.push({ ...(await renderTile(entry, layout, measure)), left: at.x, top: 0 });
      }
      const band = sharp({ create: { width, height: layout.tileHeight + layout.gap, channels: 3, background: COLOUR.sheet } }).composite(layers);
      yield rawBand(band, width, layout.tileHeight + layout.gap);
    }
  }
  return encodePng(width, layout.height, bands());
}

/** Raw RGB bytes of a band, checked against the size the layout expects. */
async function rawBand(image: Sharp, width: number, height: number): Promise<Buffer> {
  const { data, info } = await image.removeAlpha().raw().toBuffer({ resolveWithObject: true });
  if (info.width !== width || info.height !== height || info.channels !== 3) {
    throw new Error(`contact sheet band is ${info.width}×${info.height}×${info.channels}, expected ${width}×${height}×3`);
  }
  return data;
}

/**
 * Render the contact sheet as one self-contained HTML page: summary tables (counts by status and
 * by flag), a legend, then one card per photo with the original (overlays as inline SVG), the
 * training image, status, flags with values and details, faces, crop and caption. Images are
 * re-encoded as JPEG (which also drops their EXIF, GPS included) and inlined as `data:` URIs.
 *
 * @param entries - the photos, in the order to show them
 * @param options - title, subtitle and `thumbSize` (images are inlined at twice it, for sharp screens)
 * @returns the HTML text (UTF-8)
 * @throws {BoothError} `INVALID_ARGUMENT` when an option or an entry is malformed
 * @example
 * const html = await renderContactSheetHtml(entries, { title: 'alice: ohwx man' });
 * await writeFile('contact-sheet.html', html);
 */
export async function renderContactSheetHtml(entries: ContactSheetEntry[], options: ContactSheetOptions): Promise<string> {
  validateEntries(entries);
  const { thumbSize } = contactSheetLayout(entries.length, options);
  const title = visible(options.title, 'prose');
  const subtitle = options.subtitle === undefined ? '' : visible(options.subtitle, 'prose');
  const summary = summarize(entries);
  const out: string[] = [];
  out.push(
    '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
    `<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">\n`,
    '<meta name="referrer" content="no-referrer">\n',
    `<title>${esc(title)} — contact sheet</title>\n<style>${PAGE_CSS}</style>\n</head>\n<body>\n`,
    `<header class="top">\n<h1>${esc(title)}</h1>\n`,
    subtitle === '' ? '' : `<p class="subtitle">${esc(subtitle)}</p>\n`,
    '</header>\n<main>\n',
    summaryHtml(summary, entries.length),
    `<section aria-labelledby="photos-h">\n<h2 id="photos-h">Photos</h2>\n`,
  );
  if (entries.length === 0) {
    out.push('<p class="empty">No photos in this session.</p>\n');
  } else {
    out.push('<ol class="grid">\n');
    for (const [i, entry] of entries.entries()) out.push(await cardHtml(entry, i, thumbSize * 2));
    out.push('</ol>\n');
  }
  out.push('</section>\n</main>\n<footer><p>Generated by Booth. Self-contained: this page loads nothing from the network.</p></footer>\n</body>\n</html>\n');
  return out.join('');
}

// ---------------------------------------------------------------------------------------------
// Text: make visible, escape, measure, fit.

const INVISIBLE = /[\p{Cc}\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069\u2028\u2029\uFFFE\uFFFF]/gu;

/**
 * Show characters that would otherwise be invisible or reorder the text as `[U+XXXX]`; also makes
 * the string well-formed UTF-16 (lone surrogates become U+FFFD), which XML requires. In `prose`
 * (captions, reasons, titles) line breaks and tabs are plain spacing and become one space first.
 */
function visible(text: string, mode: 'name' | 'prose'): string {
  // Lone surrogates cannot be encoded as UTF-8; String#toWellFormed is ES2024, past our lib.
  let s = text.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, '\uFFFD');
  if (mode === 'prose') s = s.replace(/[\t\n\v\f\r\u2028\u2029]+/g, ' ');
  return s.replace(INVISIBLE, (c: string) => `[U+${(c.codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, '0')}]`);
}

/** Escape for XML/HTML text and double- or single-quoted attribute values. */
function esc(text: string): string {
  return text.replace(/[&<>"']/g, (c) => (c === '&' ? '&amp;' : c === '<' ? '&lt;' : c === '>' ? '&gt;' : c === '"' ? '&quot;' : '&#39;'));
}

const segmenter = new Intl.Segmenter('en', { granularity: 'grapheme' });

/** User-perceived characters, so truncation never splits an emoji, a combining mark or a surrogate pair. */
function graphemes(text: string): string[] {
  return Array.from(segmenter.segment(text), (s) => s.segment);
}

interface Font {
  size: number;
  bold: boolean;
}

const F_TITLE: Font = { size: 24, bold: true };
const F_NAME: Font = { size: 15, bold: true };
const F_BODY: Font = { size: 13, bold: false };
const F_BODY_BOLD: Font = { size: 13, bold: true };
const F_SMALL: Font = { size: 12, bold: false };
const F_BADGE: Font = { size: 12, bold: true };
const F_LABEL: Font = { size: 10, bold: true };

// Pango at 4× resolution matches librsvg's unhinted advances to within a few per cent; the rest is
// absorbed by this margin so that measured-to-fit text never runs into what follows it.
const MEASURE_SCALE = 4;
const MEASURE_MARGIN = 1.05;

/**
 * Measures the advance width of a string in the sheet's font with Pango. sharp's text input crops
 * to the ink, so each string is measured between two bars and the bars' width is subtracted; that
 * keeps spaces and side bearings. One instance per render: the cache lives and dies with it.
 */
class TextMeasurer {
  private readonly cache = new Map<string, number>();

  async width(text: string, font: Font): Promise<number> {
    if (text === '') return 0;
    const key = `${font.size}${font.bold ? 'b' : 'r'}\u0000${text}`;
    const hit = this.cache.get(key);
    if (hit !== undefined) return hit;
    const w = Math.max(0, (await this.raw(`|${text}|`, font)) - (await this.raw('||', font))) * MEASURE_MARGIN;
    this.cache.set(key, w);
    return w;
  }

  async fits(text: string, font: Font, maxWidth: number): Promise<boolean> {
    return (await this.width(text, font)) <= maxWidth;
  }

  private async raw(text: string, font: Font): Promise<number> {
    const key = `raw${font.size}${font.bold ? 'b' : 'r'}\u0000${text}`;
    const hit = this.cache.get(key);
    if (hit !== undefined) return hit;
    let w: number;
    try {
      const families = FONT_FAMILIES.replace(/, /g, ',');
      const meta = await sharp({ text: { text: esc(text), font: `${families} ${font.bold ? 'Bold ' : ''}${font.size}`, dpi: 72 * MEASURE_SCALE } }).metadata();
      w = meta.width / MEASURE_SCALE;
    } catch {
      // Without any usable font Pango renders nothing; estimate so that layout still completes.
      w = graphemes(text).length * font.size * 0.62;
    }
    this.cache.set(key, w);
    return w;
  }
}

/** The longest start of `text` that fits with an ellipsis appended. */
async function ellipsizeEnd(m: TextMeasurer, text: string, font: Font, maxWidth: number): Promise<string> {
  if (await m.fits(text, font, maxWidth)) return text;
  const g = graphemes(text);
  let lo = 0;
  let hi = g.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (await m.fits(`${g.slice(0, mid).join('').trimEnd()}…`, font, maxWidth)) lo = mid;
    else hi = mid - 1;
  }
  return lo === 0 ? '…' : `${g.slice(0, lo).join('').trimEnd()}…`;
}

/** Shorten a file name in the middle, keeping its end (the extension and a few characters before it). */
async function ellipsizeMiddle(m: TextMeasurer, text: string, font: Font, maxWidth: number): Promise<string> {
  if (await m.fits(text, font, maxWidth)) return text;
  const g = graphemes(text);
  const dot = text.lastIndexOf('.');
  const extLength = dot > 0 ? graphemes(text.slice(dot)).length : 0;
  const tailLength = Math.min(g.length - 1, Math.max(8, extLength + 5));
  const tail = g.slice(g.length - tailLength).join('');
  if (!(await m.fits(`${g[0] ?? ''}…${tail}`, font, maxWidth))) return ellipsizeEnd(m, text, font, maxWidth);
  let lo = 1;
  let hi = g.length - tailLength - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (await m.fits(`${g.slice(0, mid).join('')}…${tail}`, font, maxWidth)) lo = mid;
    else hi = mid - 1;
  }
  return `${g.slice(0, lo).join('')}…${tail}`;
}

/**
 * Greedy word wrap into at most `maxLines` lines; words wider than a line are broken between
 * characters, and the last line ends with an ellipsis when text is left over.
 */
async function wrapText(m: TextMeasurer, text: string, font: Font, maxWidth: number, maxLines: number): Promise<string[]> {
  const lines: string[] = [];
  let rest = text.trim().replace(/ {2,}/g, ' ');
  while (rest !== '' && lines.length < maxLines) {
    if (await m.fits(rest, font, maxWidth)) {
      lines.push(rest);
      break;
    }
    if (lines.length === maxLines - 1) {
      lines.push(await ellipsizeEnd(m, rest, font, maxWidth));
      break;
    }
    const breaks: number[] = [];
    for (let i = rest.indexOf(' '); i > 0; i = rest.indexOf(' ', i + 1)) breaks.push(i);
    let cut = 0;
    let lo = 0;
    let hi = breaks.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const at = breaks[mid] ?? 0;
      if (await m.fits(rest.slice(0, at), font, maxWidth)) {
        cut = at;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    if (cut === 0) {
      // The first word alone is too wide: break it at the last character that fits.
      const g = graphemes(rest);
      let n = 1;
      let glo = 1;
      let ghi = g.length - 1;
      while (glo <= ghi) {
        const mid = (glo + ghi) >> 1;
        if (await m.fits(g.slice(0, mid).join(''), font, maxWidth)) {
          n = mid;
          glo = mid + 1;
        } else ghi = mid - 1;
      }
      cut = g.slice(0, n).join('').length;
    }
    lines.push(rest.slice(0, cut).trimEnd());
    rest = rest.slice(cut).trimStart();
  }
  return lines;
}

/** Measured values in a compact, stable form: 41.2, 0.873, 1234. */
function formatValue(value: number | string): string {
  if (typeof value === 'string') return value;
  if (!Number.isFinite(value)) return String(value);
  if (Number.isInteger(value)) return String(value);
  const abs = Math.abs(value);
  const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : abs >= 1 ? 2 : 3;
  return String(Number(value.toFixed(digits)));
}

function flagLabel(f: ContactSheetFlag): string {
  return visible(f.value === undefined ? f.flag : `${f.flag} ${formatValue(f.value)}`, 'prose');
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

// ---------------------------------------------------------------------------------------------
// Validation and summary.

function validateEntries(entries: ContactSheetEntry[]): void {
  if (!Array.isArray(entries)) throw new BoothError('INVALID_ARGUMENT', 'contact sheet entries must be an array');
  const checkRect = (r: Rect | null | undefined, where: string): void => {
    if (r === null || r === undefined) return;
    if (![r.x, r.y, r.width, r.height].every(Number.isFinite) || r.width < 0 || r.height < 0) {
      throw new BoothError('INVALID_ARGUMENT', `${where} must have finite x, y and non-negative width, height; got ${JSON.stringify(r)}`);
    }
  };
  for (const [i, e] of entries.entries()) {
    if (!STATUSES.includes(e.status)) {
      throw new BoothError('INVALID_ARGUMENT', `entries[${i}].status must be one of ${STATUSES.join(', ')}; got ${JSON.stringify(e.status)}`);
    }
    if (typeof e.name !== 'string') throw new BoothError('INVALID_ARGUMENT', `entries[${i}].name must be a string`);
    if (e.source !== null && !(e.source.width > 0 && e.source.height > 0)) {
      throw new BoothError('INVALID_ARGUMENT', `entries[${i}].source must have positive width and height; got ${JSON.stringify(e.source)}`);
    }
    checkRect(e.crop, `entries[${i}].crop`);
    checkRect(e.head, `entries[${i}].head`);
    for (const [j, f] of e.faces.entries()) checkRect(f.box, `entries[${i}].faces[${j}].box`);
  }
}

interface Summary {
  byStatus: Record<ContactSheetStatus, number>;
  /** Flag name → number of photos carrying it, most frequent first. */
  byFlag: Array<[string, number]>;
}

function summarize(entries: ContactSheetEntry[]): Summary {
  const byStatus: Record<ContactSheetStatus, number> = { accepted: 0, excluded: 0, rejected: 0 };
  const flags = new Map<string, number>();
  for (const e of entries) {
    byStatus[e.status]++;
    // Counted per photo: a photo flagged twice with the same flag is still one photo to look at.
    for (const f of new Set(e.flags.map((x) => x.flag))) flags.set(f, (flags.get(f) ?? 0) + 1);
  }
  const byFlag = [...flags].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return { byStatus, byFlag };
}

// ---------------------------------------------------------------------------------------------
// PNG.

function textEl(x: number, y: number, text: string, font: Font, fill: string, extra = ''): string {
  return `<text x="${x}" y="${y}" font-size="${font.size}"${font.bold ? ' font-weight="700"' : ''} fill="${fill}"${extra}>${esc(text)}</text>`;
}

function svgDoc(width: number, height: number, body: string): string {
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="${FONT_FAMILIES}">${body}</svg>`;
}

/** Legend swatch: a small dark pane with the overlay's outline in it, as it looks on a photo. */
function swatch(x: number, y: number, colour: string, dash: string | null, width: number): string {
  return (
    `<rect x="${x}" y="${y}" width="22" height="16" rx="2" fill="${COLOUR.pane}"/>` +
    `<rect x="${x + 4}" y="${y + 3}" width="14" height="10" fill="none" stroke="${colour}" stroke-width="${width}"${dash === null ? '' : ` stroke-dasharray="${dash}"`}/>`
  );
}

async function headerSvg(entries: ContactSheetEntry[], options: ContactSheetOptions, layout: ContactSheetLayout, height: number, m: TextMeasurer): Promise<string> {
  const maxW = layout.width - 2 * GAP;
  const parts: string[] = [];
  const title = await ellipsizeEnd(m, visible(options.title, 'prose'), F_TITLE, maxW);
  parts.push(textEl(GAP, 40, title, F_TITLE, COLOUR.ink));
  if (options.subtitle !== undefined && options.subtitle !== '') {
    parts.push(textEl(GAP, 64, await ellipsizeEnd(m, visible(options.subtitle, 'prose'), F_BODY, maxW), F_BODY, COLOUR.muted));
  }
  const summary = summarize(entries);
  // Counts line: total, then one coloured dot per status.
  let x = GAP;
  const total = plural(entries.length, 'photo');
  parts.push(textEl(x, 92, total, F_BODY_BOLD, COLOUR.ink));
  x += (await m.width(total, F_BODY_BOLD)) + 18;
  for (const s of STATUSES) {
    const label = `${summary.byStatus[s]} ${s}`;
    parts.push(`<circle cx="${x + 5}" cy="87" r="5" fill="${STATUS_STYLE[s].bg}"/>`, textEl(x + 15, 92, label, F_BODY, COLOUR.ink));
    x += 15 + (await m.width(label, F_BODY)) + 18;
  }
  const flagText =
    summary.byFlag.length === 0 ? 'Flags: none' : `Flags: ${summary.byFlag.map(([f, n]) => `${visible(f, 'prose')} ${n}`).join(' · ')}`;
  parts.push(textEl(GAP, 114, await ellipsizeEnd(m, flagText, F_BODY, maxW), F_BODY, COLOUR.muted));
  // Legend: same strokes as the overlays.
  const legend: Array<[string, string, string | null, number]> = [
    ["subject's face", COLOUR.subjectFace, null, 2],
    ['other face', COLOUR.otherFace, null, 2],
    ['crop (outside dimmed)', COLOUR.crop, null, 3],
    ['estimated head', COLOUR.head, '3 2', 1.5],
  ];
  x = GAP;
  for (const [label, colour, dash, width] of legend) {
    const w = 28 + (await m.width(label, F_SMALL));
    if (x + w > layout.width - GAP) break;
    parts.push(swatch(x, 126, colour, dash, width), textEl(x + 28, 139, label, F_SMALL, COLOUR.muted));
    x += w + 18;
  }
  if (entries.length === 0) {
    parts.push(textEl(GAP, HEADER_H + 30, 'No photos in this session.', F_BODY, COLOUR.muted));
  }
  return svgDoc(layout.width, height, parts.join(''));
}

interface Fitted {
  layer: OverlayOptions;
  width: number;
  height: number;
  /** Size of the image as given, before fitting. */
  sourceWidth: number;
  sourceHeight: number;
}

/** An image fitted inside a square pane as raw RGB, or null when the bytes do not decode. */
async function fitted(bytes: Buffer | null, side: number): Promise<Fitted | null> {
  if (bytes === null) return null;
  try {
    const img = sharp(bytes, { failOn: 'error' });
    const meta = await img.metadata();
    const { data, info } = await img
      .resize(side, side, { fit: 'inside', kernel: 'lanczos3' })
      .flatten({ background: COLOUR.pane })
      .removeAlpha()
      .raw()
      .toBuffer({ resolveWithObject: true });
    return {
      layer: { input: data, raw: { width: info.width, height: info.height, channels: 3 } },
      width: info.width,
      height: info.height,
      sourceWidth: meta.width,
      sourceHeight: meta.height,
    };
  } catch {
    return null;
  }
}

/** Maps source-pixel rectangles onto the displayed preview, clamped to it, in whole pixels. */
function mapper(source: { width: number; height: number }, dispW: number, dispH: number): (r: Rect) => Rect | null {
  const sx = dispW / source.width;
  const sy = dispH / source.height;
  return (r) => {
    const x0 = Math.max(0, Math.min(dispW, Math.round(r.x * sx)));
    const y0 = Math.max(0, Math.min(dispH, Math.round(r.y * sy)));
    const x1 = Math.max(0, Math.min(dispW, Math.round((r.x + r.width) * sx)));
    const y1 = Math.max(0, Math.min(dispH, Math.round((r.y + r.height) * sy)));
    return x1 - x0 < 2 || y1 - y0 < 2 ? null : { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
  };
}

/**
 * Overlay for the preview at display size. Strokes sit just inside their rectangle (so a crop that
 * touches the photo's edge still shows its full line), each on a dark halo so it reads on any photo.
 */
function overlaySvg(entry: ContactSheetEntry, dispW: number, dispH: number): string | null {
  if (entry.source === null) return null;
  const map = mapper(entry.source, dispW, dispH);
  const parts: string[] = [];
  const box = (r: Rect, colour: string, width: number, dash: string | null): string => {
    const inset = width / 2;
    const geom = `x="${r.x + inset}" y="${r.y + inset}" width="${Math.max(0, r.width - width)}" height="${Math.max(0, r.height - width)}"`;
    const d = dash === null ? '' : ` stroke-dasharray="${dash}"`;
    return `<rect ${geom} fill="none" stroke="#000" stroke-opacity="0.55" stroke-width="${width + 2}"${d}/><rect ${geom} fill="none" stroke="${colour}" stroke-width="${width}"${d}/>`;
  };
  const crop = entry.crop ? map(entry.crop) : null;
  if (crop) {
    parts.push(
      `<path d="M0 0H${dispW}V${dispH}H0Z M${crop.x} ${crop.y}V${crop.y + crop.height}H${crop.x + crop.width}V${crop.y}Z" fill="#000" fill-opacity="0.5" fill-rule="evenodd"/>`,
    );
  }
  const head = entry.head ? map(entry.head) : null;
  if (head) parts.push(box(head, COLOUR.head, 1.5, '3 2'));
  // Other faces first so that the subject's box and label are drawn on top where they overlap.
  const faces = [...entry.faces].sort((a, b) => Number(a.subject) - Number(b.subject));
  for (const face of faces) {
    const r = map(face.box);
    if (!r) continue;
    const colour = face.subject ? COLOUR.subjectFace : COLOUR.otherFace;
    parts.push(box(r, colour, 2, null));
    if (r.width >= 28) {
      const label = face.score.toFixed(2);
      const ly = r.y >= 14 ? r.y - 13 : r.y + 2;
      parts.push(
        `<rect x="${r.x}" y="${ly}" width="28" height="13" fill="${colour}"/>`,
        textEl(r.x + 14, ly + 10, label, F_LABEL, '#000', ' text-anchor="middle"'),
      );
    }
  }
  if (crop) {
    parts.push(box(crop, COLOUR.crop, 3, null));
    // Corner handles, as in a photo editor's crop tool: the crop reads as a crop, not as one more box.
    const h = Math.max(4, Math.min(16, Math.floor(Math.min(crop.width, crop.height) / 4)));
    const x0 = crop.x + 2.5;
    const y0 = crop.y + 2.5;
    const x1 = crop.x + crop.width - 2.5;
    const y1 = crop.y + crop.height - 2.5;
    const corners = [
      `M${x0} ${y0 + h}V${y0}H${x0 + h}`,
      `M${x1 - h} ${y0}H${x1}V${y0 + h}`,
      `M${x1} ${y1 - h}V${y1}H${x1 - h}`,
      `M${x0 + h} ${y1}H${x0}V${y1 - h}`,
    ].join(' ');
    parts.push(`<path d="${corners}" fill="none" stroke="${COLOUR.crop}" stroke-width="5" stroke-linecap="square"/>`);
  }
  return parts.length === 0 ? null : svgDoc(dispW, dispH, parts.join(''));
}

/** A small caption in a pane's corner, on a translucent dark chip so it reads over the photo. */
function paneChip(pane: Rect, text: string, m: number): string {
  const w = Math.ceil(m) + 10;
  const y = pane.y + pane.height - 20;
  return `<rect x="${pane.x + 4}" y="${y}" width="${w}" height="16" rx="3" fill="#000" fill-opacity="0.62"/>${textEl(pane.x + 9, y + 12, text, F_SMALL, '#ffffff')}`;
}

/** What stands in a pane without a picture: a bold line and a quieter one, each fitted to the pane. */
async function placeholder(pane: Rect, lines: [string, string], m: TextMeasurer): Promise<string> {
  const maxW = pane.width - 12;
  const head = await wrapText(m, lines[0], F_BODY_BOLD, maxW, 2);
  const tail = await wrapText(m, lines[1], F_SMALL, maxW, 2);
  const all = [...head.map((t) => ({ t, f: F_BODY_BOLD })), ...tail.map((t) => ({ t, f: F_SMALL }))];
  const y0 = pane.y + pane.height / 2 - ((all.length - 1) * 16) / 2 + 4;
  return all.map(({ t, f }, i) => textEl(pane.x + pane.width / 2, y0 + i * 16, t, f, '#c9ced6', ' text-anchor="middle"')).join('');
}

/** One card, as a raw RGB overlay ready to be placed on its band. */
async function renderTile(entry: ContactSheetEntry, layout: ContactSheetLayout, m: TextMeasurer): Promise<OverlayOptions> {
  const { tileWidth: W, tileHeight: H, previewPane: pp, resultPane: rp, thumbSize: T } = layout;
  const style = STATUS_STYLE[entry.status];
  const layers: OverlayOptions[] = [];
  const fg: string[] = [];

  // Panes: the original with overlays, and the training image.
  const preview = await fitted(entry.preview, T);
  if (preview) {
    const left = pp.x + Math.floor((T - preview.width) / 2);
    const top = pp.y + Math.floor((T - preview.height) / 2);
    layers.push({ ...preview.layer, left, top });
    const overlay = overlaySvg(entry, preview.width, preview.height);
    if (overlay !== null) layers.push({ input: Buffer.from(overlay), left, top });
    if (entry.source) {
      const dims = `${entry.source.width}×${entry.source.height}`;
      fg.push(paneChip(pp, dims, await m.width(dims, F_SMALL)));
    }
  } else {
    const lines: [string, string] = entry.preview === null ? ['No preview', entry.status === 'rejected' ? 'file rejected' : 'not available'] : ['Preview unreadable', 'bytes did not decode'];
    fg.push(await placeholder(pp, lines, m));
  }
  const result = await fitted(entry.result, T);
  if (result) {
    layers.push({ ...result.layer, left: rp.x + Math.floor((T - result.width) / 2), top: rp.y + Math.floor((T - result.height) / 2) });
    const dims = `${result.sourceWidth}×${result.sourceHeight}`;
    fg.push(paneChip(rp, dims, await m.width(dims, F_SMALL)));
  } else if (entry.result !== null) {
    fg.push(await placeholder(rp, ['Training image', 'unreadable'], m));
  } else {
    const why = entry.status === 'accepted' ? 'not prepared yet' : entry.status === 'excluded' ? 'excluded from training' : 'file rejected';
    fg.push(await placeholder(rp, ['No training image', why], m));
  }

  // Text block.
  const tw = W - 2 * PAD;
  let y = PAD + T + TEXT_TOP;
  const name = await ellipsizeMiddle(m, visible(entry.name, 'name'), F_NAME, tw);
  fg.push(textEl(PAD, y + 15, name, F_NAME, COLOUR.ink));
  y += NAME_H;

  const badgeText = style.label.toUpperCase();
  const badgeW = Math.ceil(await m.width(badgeText, F_BADGE)) + 16;
  fg.push(
    `<rect x="${PAD}" y="${y + 2}" width="${badgeW}" height="20" rx="10" fill="${style.bg}"/>`,
    textEl(PAD + badgeW / 2, y + 16, badgeText, F_BADGE, style.fg, ' text-anchor="middle" letter-spacing="0.3"'),
  );
  // The source size is on the preview's chip; the meta line says what the overlays cannot.
  const meta: string[] = [];
  if (entry.faces.length > 0) meta.push(plural(entry.faces.length, 'face'));
  if (entry.crop) meta.push(`crop ${cropText(entry.crop)}`);
  if (entry.source && !preview) meta.push(`${entry.source.width}×${entry.source.height} px`);
  if (meta.length > 0) {
    const mx = PAD + badgeW + 10;
    fg.push(textEl(mx, y + 16, await ellipsizeEnd(m, meta.join(' · '), F_SMALL, tw - badgeW - 10), F_SMALL, COLOUR.muted));
  }
  y += META_H;

  const chips = await chipsSvg(entry.flags, PAD, y, tw, m);
  fg.push(chips.svg);
  // Unused chip lines go to the notes below rather than leaving a hole in the middle of the card.
  y += CHIP_LINE * chips.lines + 6;
  const noteLines = NOTE_LINES + (CHIP_LINES - chips.lines);

  // Reason first (it says why a photo is out), then the caption in what room is left.
  let room = noteLines;
  if (entry.reason !== null && entry.reason !== '') {
    const maxLines = entry.caption === null || entry.caption === '' ? room : Math.ceil(room / 2);
    const lines = await wrapText(m, visible(entry.reason, 'prose'), F_BODY, tw, maxLines);
    for (const line of lines) {
      fg.push(textEl(PAD, y + 13, line, F_BODY, style.note));
      y += NOTE_LINE;
    }
    room -= lines.length;
  }
  if (room > 0) {
    if (entry.caption !== null && entry.caption !== '') {
      const label = entry.captionBy ? `Caption (${visible(entry.captionBy, 'prose')}):` : 'Caption:';
      const lines = await wrapText(m, `${label} ${visible(entry.caption, 'prose')}`, F_BODY, tw, room);
      for (const [i, line] of lines.entries()) {
        if (i === 0 && line.startsWith(label)) {
          fg.push(`<text x="${PAD}" y="${y + 13}" font-size="${F_BODY.size}" fill="${COLOUR.ink}" xml:space="preserve"><tspan fill="${COLOUR.muted}">${label}</tspan>${esc(line.slice(label.length))}</text>`);
        } else {
          fg.push(textEl(PAD, y + 13, line, F_BODY, COLOUR.ink));
        }
        y += NOTE_LINE;
      }
    } else if (entry.status === 'accepted') {
      fg.push(textEl(PAD, y + 13, 'No caption', F_BODY, COLOUR.faint, ' font-style="italic"'));
    }
  }

  const base = svgDoc(
    W,
    H,
    `<rect x="0.5" y="0.5" width="${W - 1}" height="${H - 1}" rx="10" fill="${COLOUR.card}" stroke="${COLOUR.cardBorder}"/>` +
      `<rect x="${pp.x}" y="${pp.y}" width="${pp.width}" height="${pp.height}" rx="4" fill="${COLOUR.pane}"/>` +
      `<rect x="${rp.x}" y="${rp.y}" width="${rp.width}" height="${rp.height}" rx="4" fill="${COLOUR.pane}"/>`,
  );
  // Text is clipped to the card's inside so that a mis-measured line can never reach the border.
  const front = svgDoc(W, H, `<defs><clipPath id="c"><rect x="${PAD - 2}" y="0" width="${W - 2 * PAD + 4}" height="${H}"/></clipPath></defs><g clip-path="url(#c)">${fg.join('')}</g>`);
  layers.push({ input: Buffer.from(front), left: 0, top: 0 });
  // flatten() runs before composite() in sharp's pipeline: it gives the card's rounded corners the sheet's colour.
  const tile = sharp(Buffer.from(base)).flatten({ background: COLOUR.sheet }).composite(layers);
  return { input: await rawBand(tile, W, H), raw: { width: W, height: H, channels: 3 } };
}

/** Flag chips flowed over at most two lines; what does not fit is counted in a final "+N more" chip. */
async function chipsSvg(flags: ContactSheetFlag[], x0: number, y0: number, maxW: number, m: TextMeasurer): Promise<{ svg: string; lines: number }> {
  if (flags.length === 0) return { svg: textEl(x0, y0 + 15, 'No flags', F_SMALL, COLOUR.faint, ' font-style="italic"'), lines: 1 };
  interface Chip {
    text: string;
    w: number;
    more: boolean;
  }
  const chip = async (text: string, more: boolean): Promise<Chip> => {
    const shown = await ellipsizeEnd(m, text, F_SMALL, maxW - 16);
    return { text: shown, w: Math.ceil(await m.width(shown, F_SMALL)) + 16, more };
  };
  const chips: Chip[] = [];
  for (const f of flags) chips.push(await chip(flagLabel(f), false));
  const placed: Array<Chip & { x: number; line: number }> = [];
  let x = 0;
  let line = 0;
  for (const c of chips) {
    if (x > 0 && x + c.w > maxW) {
      line++;
      x = 0;
    }
    if (line >= CHIP_LINES) break;
    placed.push({ ...c, x, line });
    x += c.w + 6;
  }
  if (placed.length < chips.length) {
    // Make room on the last line for the "+N more" chip by dropping chips from its end.
    for (;;) {
      const more = await chip(`+${chips.length - placed.length} more`, true);
      const last = placed[placed.length - 1];
      const endX = last === undefined || last.line < CHIP_LINES - 1 ? 0 : last.x + last.w + 6;
      if (endX + more.w <= maxW || last === undefined) {
        placed.push({ ...more, x: endX, line: CHIP_LINES - 1 });
        break;
      }
      placed.pop();
    }
  }
  const svg = placed
    .map((c) => {
      const cx = x0 + c.x;
      const cy = y0 + c.line * CHIP_LINE;
      const [fill, stroke, ink] = c.more ? [COLOUR.sheet, COLOUR.cardBorder, COLOUR.muted] : [COLOUR.flagBg, COLOUR.flagBorder, COLOUR.flagInk];
      return `<rect x="${cx + 0.5}" y="${cy + 0.5}" width="${c.w - 1}" height="${CHIP_H - 1}" rx="9.5" fill="${fill}" stroke="${stroke}"/>${textEl(cx + 8, cy + 14, c.text, F_SMALL, ink)}`;
    })
    .join('');
  return { svg, lines: Math.max(...placed.map((c) => c.line)) + 1 };
}

/** A crop as a person reads it: size, then top-left corner, in source pixels. */
function cropText(c: Rect): string {
  return `${Math.round(c.width)}×${Math.round(c.height)} at (${Math.round(c.x)}, ${Math.round(c.y)})`;
}

// ---------------------------------------------------------------------------------------------
// PNG encoding, streamed band by band.

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function pngChunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'latin1');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(data, crc32(head.subarray(4))) >>> 0, 0);
  return Buffer.concat([head, data, crc]);
}

/**
 * Encode 8-bit RGB rows as a PNG. sharp needs the whole image at once to write a PNG, which for a
 * session of hundreds of photos means hundreds of megabytes; here each band is filtered and fed
 * to a deflate stream as it comes. The "Up" filter costs one subtraction per byte and, measured on
 * real sheets, compresses within 4% of Paeth, which took four times as long in JavaScript.
 */
async function encodePng(width: number, height: number, bands: AsyncIterable<Buffer>): Promise<Buffer> {
  const stride = width * 3;
  const deflate = createDeflate({ level: 6 });
  const compressed: Buffer[] = [];
  deflate.on('data', (chunk: Buffer) => compressed.push(chunk));
  const finished = once(deflate, 'end');
  let prev: Buffer = Buffer.alloc(stride);
  let rows = 0;
  try {
    for await (const band of bands) {
      const count = band.length / stride;
      const out = Buffer.alloc(count * (stride + 1));
      for (let r = 0; r < count; r++) {
        const cur = band.subarray(r * stride, (r + 1) * stride);
        const o = r * (stride + 1) + 1;
        out[o - 1] = 2; // filter type Up
        for (let i = 0; i < stride; i++) out[o + i] = ((cur[i] ?? 0) - (prev[i] ?? 0)) & 0xff;
        prev = cur;
      }
      rows += count;
      if (!deflate.write(out)) await once(deflate, 'drain');
    }
    deflate.end();
    await finished;
  } catch (err) {
    deflate.destroy();
    throw err;
  }
  if (rows !== height) throw new Error(`contact sheet has ${rows} rows, expected ${height}`);
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8 bits, truecolour RGB, deflate, adaptive filtering, no interlace
  return Buffer.concat([PNG_SIGNATURE, pngChunk('IHDR', ihdr), pngChunk('IDAT', Buffer.concat(compressed)), pngChunk('IEND', Buffer.alloc(0))]);
}

// ---------------------------------------------------------------------------------------------
// HTML.

const PAGE_CSS = `
:root{color-scheme:light;--ink:${COLOUR.ink};--muted:${COLOUR.muted};--line:${COLOUR.cardBorder};--pane:${COLOUR.pane}}
*{box-sizing:border-box}
body{margin:0;background:${COLOUR.sheet};color:var(--ink);font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
header.top,main,footer{max-width:120rem;margin:0 auto;padding:0 1rem}
header.top{padding-top:1.25rem}
h1{font-size:1.6rem;line-height:1.2;margin:0 0 .25rem;overflow-wrap:anywhere}
h2{font-size:1.2rem;margin:1.5rem 0 .75rem}
.subtitle{margin:0;color:var(--muted);overflow-wrap:anywhere}
.summary{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
table{border-collapse:collapse;background:#fff;border:1px solid var(--line);border-radius:8px;min-width:14rem}
caption{text-align:left;font-weight:600;padding:0 0 .35rem}
th,td{padding:.35rem .75rem;border-top:1px solid var(--line);text-align:left}
td{text-align:right;font-variant-numeric:tabular-nums}
thead th{border-top:0;color:var(--muted);font-weight:600;font-size:.85rem}
thead th:last-child{text-align:right}
tr.total th,tr.total td{font-weight:700}
.legend{list-style:none;margin:0;padding:.6rem .75rem;background:#fff;border:1px solid var(--line);border-radius:8px;display:grid;gap:.35rem}
.legend li{display:flex;align-items:center;gap:.5rem}
.sw{width:1.6rem;height:1.1rem;border-radius:2px;background:var(--pane);display:inline-grid;place-items:center}
.sw i{display:block;width:1rem;height:.65rem;border:2px solid}
.grid{list-style:none;margin:0;padding:0;display:grid;gap:1rem;grid-template-columns:repeat(auto-fill,minmax(min(100%,27rem),1fr))}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:.75rem;height:100%;display:flex;flex-direction:column;gap:.5rem;break-inside:avoid}
.card h3{font-size:1rem;margin:0;overflow-wrap:anywhere}
.badge{display:inline-block;padding:.1rem .6rem;border-radius:999px;font-size:.8rem;font-weight:700;letter-spacing:.02em;text-transform:uppercase}
.b-accepted{background:${STATUS_STYLE.accepted.bg};color:${STATUS_STYLE.accepted.fg}}
.b-excluded{background:${STATUS_STYLE.excluded.bg};color:${STATUS_STYLE.excluded.fg}}
.b-rejected{background:${STATUS_STYLE.rejected.bg};color:${STATUS_STYLE.rejected.fg}}
.status{margin:0;display:flex;gap:.5rem;align-items:center;flex-wrap:wrap;color:var(--muted);font-size:.85rem}
.panes{display:grid;grid-template-columns:1fr 1fr;gap:.5rem}
figure{margin:0}
figcaption{font-size:.8rem;color:var(--muted);margin-top:.2rem}
.frame{position:relative;aspect-ratio:1;background:var(--pane);border-radius:4px;overflow:hidden}
.photo{position:absolute}
.photo img,.photo svg{position:absolute;inset:0;width:100%;height:100%;display:block}
.photo svg{overflow:visible}
.none{position:absolute;inset:0;display:grid;place-items:center;text-align:center;color:#d5d9e0;font-size:.85rem;padding:.5rem}
dl{margin:0;display:grid;grid-template-columns:max-content 1fr;gap:.2rem .75rem;font-size:.9rem}
dt{color:var(--muted)}
dd{margin:0;overflow-wrap:anywhere}
.reason-excluded{color:${STATUS_STYLE.excluded.note}}
.reason-rejected{color:${STATUS_STYLE.rejected.note}}
.flags{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:.3rem}
.flags li{background:${COLOUR.flagBg};border:1px solid ${COLOUR.flagBorder};color:${COLOUR.flagInk};border-radius:.6rem;padding:.05rem .55rem;font-size:.85rem}
.flags .detail{display:block;font-size:.8rem}
.legend-h{font-size:1rem;margin:0 0 .35rem}
.muted{color:var(--muted)}
.empty{color:var(--muted)}
footer{color:var(--muted);font-size:.85rem;padding-bottom:1.5rem}
@media (max-width:30rem){body{font-size:14px}.card{padding:.6rem}.summary>*{flex:1 1 100%}}
@media print{body{background:#fff}.card{border-color:#999}}
`.replace(/\n/g, '');

function summaryHtml(summary: Summary, total: number): string {
  const statusRows = STATUSES.map(
    (s) => `<tr><th scope="row"><span class="badge b-${s}">${STATUS_STYLE[s].label}</span></th><td data-status="${s}">${summary.byStatus[s]}</td></tr>`,
  ).join('');
  const flagTable =
    summary.byFlag.length === 0
      ? '<p class="muted">No photo is flagged.</p>'
      : `<table><caption>Photos by flag</caption><thead><tr><th scope="col">Flag</th><th scope="col">Photos</th></tr></thead><tbody>${summary.byFlag
          .map(([f, n]) => `<tr><th scope="row">${esc(visible(f, 'prose'))}</th><td data-flag="${esc(visible(f, 'prose'))}">${n}</td></tr>`)
          .join('')}</tbody></table>`;
  const legendItem = (label: string, colour: string, style: string): string =>
    `<li><span class="sw" aria-hidden="true"><i style="border-color:${colour};border-style:${style}"></i></span>${label}</li>`;
  return (
    '<section aria-labelledby="summary-h">\n<h2 id="summary-h">Summary</h2>\n<div class="summary">' +
    `<table><caption>Photos by status</caption><thead><tr><th scope="col">Status</th><th scope="col">Photos</th></tr></thead><tbody>${statusRows}` +
    `<tr class="total"><th scope="row">Total</th><td data-status="total">${total}</td></tr></tbody></table>` +
    flagTable +
    '<div><h3 class="legend-h">Overlay legend</h3><ul class="legend">' +
    legendItem("Subject's face (with detection score)", COLOUR.subjectFace, 'solid') +
    legendItem('Other face', COLOUR.otherFace, 'solid') +
    legendItem('Crop (area outside darkened)', COLOUR.crop, 'solid') +
    legendItem('Estimated head', COLOUR.head, 'dashed') +
    '</ul></div></div>\n</section>\n'
  );
}

/** Image bytes as a JPEG `data:` URI fitted inside `side`, or null when they do not decode. */
async function dataUri(bytes: Buffer | null, side: number): Promise<{ uri: string; width: number; height: number } | null> {
  if (bytes === null) return null;
  try {
    const { data, info } = await sharp(bytes, { failOn: 'error' })
      .resize(side, side, { fit: 'inside', withoutEnlargement: true })
      .flatten({ background: '#ffffff' })
      .jpeg({ quality: 82 })
      .toBuffer({ resolveWithObject: true });
    return { uri: `data:image/jpeg;base64,${data.toString('base64')}`, width: info.width, height: info.height };
  } catch {
    return null;
  }
}

/** Percent box of a w×h picture centred in a square frame. */
function boxStyle(w: number, h: number): string {
  const s = Math.max(w, h);
  const pw = (w / s) * 100;
  const ph = (h / s) * 100;
  const f = (n: number): string => String(Number(n.toFixed(3)));
  return `left:${f((100 - pw) / 2)}%;top:${f((100 - ph) / 2)}%;width:${f(pw)}%;height:${f(ph)}%`;
}

function overlayHtml(entry: ContactSheetEntry): string {
  if (entry.source === null) return '';
  const { width: W, height: H } = entry.source;
  const n = (v: number): string => String(Math.round(v * 10) / 10);
  const rect = (r: Rect, colour: string, width: number, dash = ''): string => {
    const geom = `x="${n(r.x)}" y="${n(r.y)}" width="${n(r.width)}" height="${n(r.height)}"`;
    const d = dash === '' ? '' : ` stroke-dasharray="${dash}"`;
    return `<rect ${geom} fill="none" stroke="#000" stroke-opacity=".55" stroke-width="${width + 2}" vector-effect="non-scaling-stroke"${d}/><rect ${geom} fill="none" stroke="${colour}" stroke-width="${width}" vector-effect="non-scaling-stroke"${d}/>`;
  };
  const parts: string[] = [];
  if (entry.crop) {
    const c = entry.crop;
    parts.push(`<path d="M0 0H${W}V${H}H0Z M${n(c.x)} ${n(c.y)}V${n(c.y + c.height)}H${n(c.x + c.width)}V${n(c.y)}Z" fill="#000" fill-opacity=".5" fill-rule="evenodd"/>`);
  }
  if (entry.head) parts.push(rect(entry.head, COLOUR.head, 1.5, '4 3'));
  // In source units: the SVG scales with the picture, so this stays about 12 px on a 220 px pane.
  const fontSize = Math.max(W, H) * 0.055;
  for (const face of [...entry.faces].sort((a, b) => Number(a.subject) - Number(b.subject))) {
    const colour = face.subject ? COLOUR.subjectFace : COLOUR.otherFace;
    parts.push(rect(face.box, colour, 2));
    const ly = face.box.y >= fontSize * 1.3 ? face.box.y - fontSize * 0.35 : face.box.y + fontSize * 1.1;
    parts.push(
      `<text x="${n(face.box.x)}" y="${n(ly)}" font-size="${n(fontSize)}" font-weight="700" fill="${colour}" stroke="#000" stroke-width="${n(fontSize / 6)}" paint-order="stroke">${face.score.toFixed(2)}</text>`,
    );
  }
  if (entry.crop) parts.push(rect(entry.crop, COLOUR.crop, 3));
  if (parts.length === 0) return '';
  return `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" aria-hidden="true" focusable="false" font-family="DejaVu Sans, sans-serif">${parts.join('')}</svg>`;
}

async function cardHtml(entry: ContactSheetEntry, index: number, imageSide: number): Promise<string> {
  const id = `photo-${index + 1}`;
  const name = esc(visible(entry.name, 'name'));
  const style = STATUS_STYLE[entry.status];
  const subjectCount = entry.faces.filter((f) => f.subject).length;
  const out: string[] = [`<li id="${id}"><article class="card" aria-labelledby="${id}-name">`, `<h3 id="${id}-name">${name}</h3>`];

  const meta: string[] = [];
  if (entry.faces.length > 0) meta.push(plural(entry.faces.length, 'face'));
  if (entry.crop) meta.push(`crop ${Math.round(entry.crop.width)}×${Math.round(entry.crop.height)}`);
  out.push(`<p class="status"><span class="badge b-${entry.status}">${style.label}</span><span>${esc(meta.join(' · '))}</span></p>`);

  // Original with overlays.
  const preview = await dataUri(entry.preview, imageSide);
  out.push('<div class="panes"><figure><div class="frame">');
  if (preview) {
    const w = entry.source?.width ?? preview.width;
    const h = entry.source?.height ?? preview.height;
    const alt = [`Original photo ${name}`];
    if (entry.source) alt.push(`${entry.source.width}×${entry.source.height} pixels`);
    if (entry.faces.length > 0) alt.push(`${plural(entry.faces.length, 'face')} outlined${subjectCount > 0 ? ", the subject's in cyan" : ''}`);
    if (entry.crop) alt.push('the crop outlined in yellow with the area outside it darkened');
    out.push(
      `<div class="photo" style="${boxStyle(w, h)}"><img src="${preview.uri}" width="${preview.width}" height="${preview.height}" alt="${alt.join('; ')}">${overlayHtml(entry)}</div>`,
    );
  } else {
    out.push(`<p class="none">${entry.preview === null ? 'No preview' : 'Preview unreadable'}</p>`);
  }
  out.push(`</div><figcaption>Original${entry.source ? ` · ${entry.source.width}×${entry.source.height}` : ''}</figcaption></figure>`);

  // Training image.
  const result = await dataUri(entry.result, imageSide);
  const resultMeta = result && entry.result ? await sharp(entry.result).metadata().catch(() => null) : null;
  const resultDims = resultMeta ? `${resultMeta.width}×${resultMeta.height}` : '';
  out.push('<figure><div class="frame">');
  if (result) {
    out.push(
      `<div class="photo" style="${boxStyle(result.width, result.height)}"><img src="${result.uri}" width="${result.width}" height="${result.height}" alt="Training image prepared from ${name}${resultDims ? `, ${resultDims} pixels` : ''}"></div>`,
    );
  } else {
    const why =
      entry.result !== null ? 'Training image unreadable' : entry.status === 'accepted' ? 'Not prepared yet' : entry.status === 'excluded' ? 'Excluded from training' : 'File rejected';
    out.push(`<p class="none">${why}</p>`);
  }
  out.push(`</div><figcaption>Training image${resultDims ? ` · ${resultDims}` : ''}</figcaption></figure></div>`);

  // Details.
  const dl: string[] = [];
  if (entry.reason !== null && entry.reason !== '') dl.push(`<dt>Reason</dt><dd class="reason-${entry.status}">${esc(visible(entry.reason, 'prose'))}</dd>`);
  if (entry.caption !== null && entry.caption !== '') {
    const by = entry.captionBy ? ` <span class="muted">(${esc(visible(entry.captionBy, 'prose'))})</span>` : '';
    dl.push(`<dt>Caption</dt><dd>${esc(visible(entry.caption, 'prose'))}${by}</dd>`);
  }
  else if (entry.status === 'accepted') dl.push('<dt>Caption</dt><dd class="muted">none</dd>');
  if (entry.flags.length > 0) {
    const items = entry.flags.map((f) => {
      const value = f.value === undefined ? '' : ` <strong>${esc(visible(formatValue(f.value), 'prose'))}</strong>`;
      const detail = f.detail === undefined || f.detail === '' ? '' : `<span class="detail">${esc(visible(f.detail, 'prose'))}</span>`;
      return `<li>${esc(visible(f.flag, 'prose'))}${value}${detail}</li>`;
    });
    dl.push(`<dt>Flags</dt><dd><ul class="flags">${items.join('')}</ul></dd>`);
  } else {
    dl.push('<dt>Flags</dt><dd class="muted">none</dd>');
  }
  if (entry.faces.length > 0) {
    const faces = [...entry.faces]
      .sort((a, b) => Number(b.subject) - Number(a.subject) || b.score - a.score)
      .map((f) => `${f.subject ? 'subject' : 'other'} ${f.score.toFixed(2)}`)
      .join(', ');
    dl.push(`<dt>Faces</dt><dd>${faces}</dd>`);
  }
  if (entry.crop) dl.push(`<dt>Crop</dt><dd>${cropText(entry.crop)}</dd>`);
  out.push(`<dl>${dl.join('')}</dl></article></li>\n`);
  return out.join('');
}
