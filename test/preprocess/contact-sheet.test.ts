/**
 * Contact sheet: the PNG grid (size, overlays where the source rectangles map, text kept inside
 * the card) and the HTML page (self-contained, every user-controlled string escaped and made
 * visible, summary counts). All images are generated here, so the suite runs on a fresh clone.
 */
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { BoothError } from '../../src/errors.js';
import {
  contactSheetLayout,
  renderContactSheetHtml,
  renderContactSheetPng,
  type ContactSheetEntry,
} from '../../src/preprocess/contact-sheet.js';

type Rgb = [number, number, number];

async function solid(width: number, height: number, rgb: Rgb, format: 'png' | 'jpeg' = 'png'): Promise<Buffer> {
  const img = sharp({ create: { width, height, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } });
  return format === 'png' ? img.png().toBuffer() : img.jpeg({ quality: 95 }).toBuffer();
}

interface Raster {
  data: Buffer;
  width: number;
  height: number;
  channels: number;
}

async function decode(png: Buffer): Promise<Raster> {
  // failOn 'warning': a CRC or zlib error anywhere in the file fails the decode instead of being tolerated.
  const { data, info } = await sharp(png, { failOn: 'warning' }).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height, channels: info.channels };
}

function px(r: Raster, x: number, y: number): Rgb {
  const i = (Math.round(y) * r.width + Math.round(x)) * r.channels;
  return [r.data[i] ?? -1, r.data[i + 1] ?? -1, r.data[i + 2] ?? -1];
}

/** True when any pixel in a small window around (x, y) satisfies `test` (overlays are 2–3 px wide). */
function near(r: Raster, x: number, y: number, test: (c: Rgb) => boolean, radius = 2): boolean {
  for (let dy = -radius; dy <= radius; dy++) for (let dx = -radius; dx <= radius; dx++) if (test(px(r, x + dx, y + dy))) return true;
  return false;
}

const isCropYellow = ([r, g, b]: Rgb): boolean => r > 200 && g > 170 && b < 90; // #facc15
const isSubjectCyan = ([r, g, b]: Rgb): boolean => r < 90 && g > 170 && b > 200; // #22d3ee
const isOtherPink = ([r, g, b]: Rgb): boolean => r > 200 && g < 150 && b > 150; // #f472b6

function entry(over: Partial<ContactSheetEntry> & Pick<ContactSheetEntry, 'name' | 'status'>): ContactSheetEntry {
  return { reason: null, flags: [], caption: null, source: null, preview: null, faces: [], crop: null, head: null, result: null, ...over };
}

// A 800×600 source whose preview is 400×300 mid-grey; rectangles are in source pixels.
const SOURCE = { width: 800, height: 600 };
const CROP = { x: 200, y: 100, width: 400, height: 400 };
const SUBJECT = { x: 300, y: 180, width: 160, height: 180 };
const OTHER = { x: 620, y: 60, width: 120, height: 130 };

describe('fonts', () => {
  it('has a real font for Pango/librsvg (Debian: fonts-dejavu-core), so text does not render as boxes', async () => {
    // Without any font every glyph is the same missing-glyph box, so narrow and wide letters measure alike.
    const width = async (text: string): Promise<number> => (await sharp({ text: { text, font: 'sans-serif 20', dpi: 72 } }).metadata()).width;
    const narrow = await width('iiiiiiiiii');
    const wide = await width('MMMMMMMMMM');
    expect(narrow, 'no usable font: install fonts-dejavu-core (see .ci/run)').toBeLessThan(wide * 0.6);
  });
});

describe('contactSheetLayout', () => {
  it('puts N tiles in rows of `columns` with the documented gaps', () => {
    const l = contactSheetLayout(5, { thumbSize: 128, columns: 2 });
    expect(l.rows).toBe(3);
    expect(l.tileWidth).toBeGreaterThanOrEqual(2 * 128);
    expect(l.width).toBe(2 * l.tileWidth + 3 * l.gap);
    expect(l.height).toBe(l.headerHeight + 3 * (l.tileHeight + l.gap));
    expect(l.tiles).toHaveLength(5);
    expect(l.tiles[1]?.x).toBe(l.tiles[0]!.x + l.tileWidth + l.gap);
    expect(l.tiles[2]?.y).toBe(l.tiles[0]!.y + l.tileHeight + l.gap);
    expect(l.tiles[2]?.x).toBe(l.tiles[0]?.x);
    expect(l.previewPane.width).toBe(128);
    expect(l.resultPane.x).toBeGreaterThanOrEqual(l.previewPane.x + 128);
  });

  it('defaults to one column per photo up to four', () => {
    expect(contactSheetLayout(1).columns).toBe(1);
    expect(contactSheetLayout(3).columns).toBe(3);
    expect(contactSheetLayout(9).columns).toBe(4);
    expect(contactSheetLayout(0).rows).toBe(0);
  });

  it('rejects out-of-range options, naming the option and the value', () => {
    expect(() => contactSheetLayout(2, { thumbSize: 10 })).toThrow(/thumbSize.*10/);
    expect(() => contactSheetLayout(2, { columns: 0 })).toThrow(/columns.*0/);
    expect(() => contactSheetLayout(2, { columns: 2.5 })).toThrow(BoothError);
  });
});

describe('renderContactSheetPng', () => {
  it('decodes and has the grid size for N entries and the requested columns', async () => {
    const preview = await solid(60, 40, [90, 120, 150], 'jpeg');
    const entries = Array.from({ length: 5 }, (_, i) =>
      entry({ name: `p${i}.jpg`, status: 'accepted', source: { width: 600, height: 400 }, preview, caption: 'photo of ohwx man' }),
    );
    for (const columns of [2, 3]) {
      const png = await renderContactSheetPng(entries, { title: 't', thumbSize: 128, columns });
      const meta = await sharp(png).metadata();
      await decode(png);
      expect(meta.format).toBe('png');
      const tileW = 2 * 128 + 8 + 24;
      const rows = Math.ceil(5 / columns);
      expect(meta.width).toBe(columns * tileW + (columns + 1) * 16);
      const layout = contactSheetLayout(5, { thumbSize: 128, columns });
      expect(layout.rows).toBe(rows);
      expect([meta.width, meta.height]).toEqual([layout.width, layout.height]);
    }
  });

  it('draws the crop, face boxes and dimming where the source rectangles map, and the result beside it', async () => {
    const T = 200;
    const base = {
      name: 'grey.png',
      status: 'accepted' as const,
      source: SOURCE,
      preview: await solid(400, 300, [128, 128, 128]),
      result: await solid(512, 512, [0, 0, 255]),
      faces: [
        { box: SUBJECT, score: 0.99, subject: true },
        { box: OTHER, score: 0.7, subject: false },
      ],
      caption: 'photo of ohwx man',
    };
    const layout = contactSheetLayout(2, { thumbSize: T, columns: 2 });
    const sheet = await decode(await renderContactSheetPng([entry({ ...base, crop: CROP }), entry({ ...base, crop: null })], { title: 'overlays', thumbSize: T, columns: 2 }));

    // The preview is fitted inside the pane and centred: 400×300 → 200×150, 25 px from the top.
    const scale = T / 400;
    const origin = (tile: number): { x: number; y: number } => {
      const t = layout.tiles[tile]!;
      return { x: t.x + layout.previewPane.x + (T - 400 * scale) / 2, y: t.y + layout.previewPane.y + (T - 300 * scale) / 2 };
    };
    const at = (tile: number, sx: number, sy: number): [number, number] => {
      const o = origin(tile);
      return [o.x + sx * (T / SOURCE.width), o.y + sy * (T / SOURCE.width)];
    };
    const { x, y, width, height } = CROP;
    const edges: Array<[number, number]> = [
      [x + width / 2, y], // top
      [x + width / 2, y + height], // bottom
      [x, y + height / 2], // left
      [x + width, y + height / 2], // right
    ];
    for (const [sx, sy] of edges) {
      const [cx, cy] = at(0, sx, sy);
      // Strokes sit just inside the rectangle: look from the mapped edge a few pixels inwards.
      const inward = sx === x ? 1 : sx === x + width ? -1 : 0;
      const down = sy === y ? 1 : sy === y + height ? -1 : 0;
      expect(near(sheet, cx + inward, cy + down, isCropYellow), `crop edge at source (${sx}, ${sy})`).toBe(true);
      // Control: the same spot in the tile without a crop has no crop colour.
      const [nx, ny] = at(1, sx, sy);
      expect(near(sheet, nx + inward, ny + down, isCropYellow)).toBe(false);
    }
    // Outside the crop is dimmed, inside is the photo as it is; without a crop nothing is dimmed.
    const outside = px(sheet, ...at(0, 80, 560));
    const inside = px(sheet, ...at(0, 400, 440));
    expect(outside[0]).toBeLessThan(90);
    expect(Math.abs(inside[0] - 128)).toBeLessThan(8);
    expect(Math.abs(px(sheet, ...at(1, 80, 560))[0] - 128)).toBeLessThan(8);
    // Subject's face and the other face in their own colours.
    expect(near(sheet, ...at(0, SUBJECT.x, SUBJECT.y + SUBJECT.height / 2), isSubjectCyan)).toBe(true);
    expect(near(sheet, ...at(0, OTHER.x, OTHER.y + OTHER.height / 2), isOtherPink)).toBe(true);
    expect(near(sheet, ...at(0, OTHER.x, OTHER.y + OTHER.height / 2), isSubjectCyan)).toBe(false);
    // The training image fills the result pane.
    const t0 = layout.tiles[0]!;
    const [r, g, b] = px(sheet, t0.x + layout.resultPane.x + T / 2, t0.y + layout.resultPane.y + T / 2);
    expect(r).toBeLessThan(30);
    expect(g).toBeLessThan(30);
    expect(b).toBeGreaterThan(220);
  });

  it('renders rejected files, unreadable bytes, many flags, long captions and hostile names, keeping text inside the card', async () => {
    const preview = await solid(300, 200, [200, 180, 160], 'jpeg');
    const flags = ['blurry', 'small-face', 'near-duplicate', 'other-identity', 'low-contrast', 'overexposed', 'underexposed', 'upscaled', 'noisy', 'tilted'].map(
      (flag, i) => ({ flag, value: i * 10.123 }),
    );
    const entries: ContactSheetEntry[] = [
      entry({ name: '<svg onload=alert(1)>&amp;"\'.jpg', status: 'accepted', source: { width: 900, height: 600 }, preview, flags, caption: 'photo of ohwx man '.repeat(40), crop: { x: 150, y: 0, width: 600, height: 600 } }),
      entry({ name: `x${'\u0000\u0007\u001b\u202E\u2066\uD800'.repeat(3)}${'W'.repeat(300)}.png`, status: 'excluded', reason: `subject absent ${'\u202E'} ]]> <!-- `.repeat(20), source: { width: 900, height: 600 }, preview }),
      entry({ name: 'broken.jpg', status: 'accepted', source: { width: 900, height: 600 }, preview: Buffer.from('not an image'), result: Buffer.from('nor this') }),
      entry({ name: 'dead.heic', status: 'rejected', reason: 'HEIC is not supported; convert to JPEG'.repeat(8) }),
    ];
    const thumbSize = 128;
    const layout = contactSheetLayout(entries.length, { thumbSize, columns: 2 });
    const png = await renderContactSheetPng(entries, { title: '<b>"hostile" & title</b>\u202E', subtitle: 'sub\u0000title', thumbSize, columns: 2 });
    const sheet = await decode(png);
    expect([sheet.width, sheet.height]).toEqual([layout.width, layout.height]);
    for (const t of layout.tiles) {
      // The right padding strip of every card, below the panes, is plain card white: no text ran into it.
      // (Stops above the card's rounded bottom corner, whose anti-aliased edge is not white.)
      for (let yy = t.y + 12 + thumbSize + 4; yy < t.y + t.height - 12; yy++) {
        for (let xx = t.x + t.width - 8; xx < t.x + t.width - 3; xx++) expect(px(sheet, xx, yy)).toEqual([255, 255, 255]);
      }
      // And there is text under the panes (the name line is not blank).
      let ink = 0;
      for (let yy = t.y + 12 + thumbSize + 12; yy < t.y + 12 + thumbSize + 32; yy++) {
        for (let xx = t.x + 12; xx < t.x + 112; xx++) if (px(sheet, xx, yy)[0] < 100) ink++;
      }
      expect(ink).toBeGreaterThan(20);
    }
  });

  it('renders an empty session as a header with a note', async () => {
    const png = await renderContactSheetPng([], { title: 'empty' });
    const meta = await sharp(png).metadata();
    const layout = contactSheetLayout(0);
    expect([meta.width, meta.height]).toEqual([layout.width, layout.height]);
  });

  it('rejects malformed entries with the field named', async () => {
    const bad = entry({ name: 'a.jpg', status: 'pending' as unknown as 'accepted' });
    await expect(renderContactSheetPng([bad], { title: 't' })).rejects.toThrow(/entries\[0\]\.status/);
    const nan = entry({ name: 'a.jpg', status: 'accepted', crop: { x: Number.NaN, y: 0, width: 1, height: 1 } });
    await expect(renderContactSheetHtml([nan], { title: 't' })).rejects.toThrow(/entries\[0\]\.crop/);
  });
});

describe('renderContactSheetHtml', () => {
  const hostile: Array<[string, string]> = [
    // [name as added, how the page must show it (already HTML-escaped)]
    ['<script>alert("x")</script>.jpg', '&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;.jpg'],
    [`a&b "dq" 'sq'.png`, 'a&amp;b &quot;dq&quot; &#39;sq&#39;.png'],
    ['bell\u0007nul\u0000.jpg', 'bell[U+0007]nul[U+0000].jpg'],
    ['invoice\u202Egpj.exe', 'invoice[U+202E]gpj.exe'],
    ['\u2066iso\u2069 \u200Fmark.jpg', '[U+2066]iso[U+2069] [U+200F]mark.jpg'],
    ['line\nbreak\r.jpg', 'line[U+000A]break[U+000D].jpg'],
    ['"><img src=x onerror=alert(1)>.png', '&quot;&gt;&lt;img src=x onerror=alert(1)&gt;.png'],
    ['lone\uD800surrogate.jpg', 'lone\uFFFDsurrogate.jpg'],
    ['صورة 写真 👨‍👩‍👧.jpg', 'صورة 写真 👨‍👩‍👧.jpg'],
  ];

  async function page(): Promise<{ html: string; entries: ContactSheetEntry[] }> {
    const preview = await sharp({ create: { width: 64, height: 48, channels: 3, background: '#808080' } })
      .withExif({ IFD0: { Copyright: 'SECRET-EXIF-MARKER' } })
      .jpeg()
      .toBuffer();
    const result = await solid(64, 64, [10, 20, 200]);
    const statuses: Array<ContactSheetEntry['status']> = ['accepted', 'accepted', 'accepted', 'excluded', 'excluded', 'rejected', 'accepted', 'rejected', 'excluded'];
    const entries = hostile.map(([name], i) =>
      entry({
        name,
        status: statuses[i]!,
        reason: statuses[i] === 'accepted' ? null : `reason <${i}> & "why"`,
        caption: statuses[i] === 'accepted' ? `photo of ohwx man ${'very long '.repeat(30)}<end>` : null,
        source: statuses[i] === 'rejected' ? null : { width: 640, height: 480 },
        preview: statuses[i] === 'rejected' ? null : preview,
        result: statuses[i] === 'accepted' ? result : null,
        faces: statuses[i] === 'rejected' ? [] : [{ box: { x: 100, y: 80, width: 120, height: 140 }, score: 0.91, subject: i % 2 === 0 }],
        crop: statuses[i] === 'accepted' ? { x: 80, y: 0, width: 480, height: 480 } : null,
        flags:
          i === 0
            ? [{ flag: 'blurry', value: 41.234, detail: 'variance of the Laplacian < 60' }, { flag: 'small-face', value: 0.87345 }, { flag: 'blurry', value: 40 }]
            : i === 3
              ? [{ flag: 'blurry', value: 12 }, { flag: 'other-identity', value: 0.74 }]
              : i === 6
                ? [{ flag: 'near-duplicate', value: 'IMG_1.jpg', detail: '<b>twin</b>' }]
                : [],
      }),
    );
    return { html: await renderContactSheetHtml(entries, { title: 'Session <alice> & "bob"', subtitle: 'sub\u202Etitle', thumbSize: 96 }), entries };
  }

  it('shows every name escaped and visible, and nothing user-controlled raw', async () => {
    const { html } = await page();
    for (const [, shown] of hostile) expect(html).toContain(shown);
    expect(html).not.toMatch(/<script/i);
    expect(html).not.toMatch(/<img src=x/i);
    // No control character (the page's own line breaks aside) and no bidirectional formatting character.
    expect(html.replace(/\n/g, '')).not.toMatch(/\p{Cc}|[\u202A-\u202E\u2066-\u2069\u200E\u200F\u061C]/u);
    expect(html).not.toMatch(/(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])/);
    expect(html).toContain('<title>Session &lt;alice&gt; &amp; &quot;bob&quot; — contact sheet</title>');
    expect(html).toContain('sub[U+202E]title');
    expect(html).toContain('&lt;b&gt;twin&lt;/b&gt;');
    expect(html).toContain('&lt;end&gt;');
    // One card per photo, each named by its heading.
    expect(html.match(/<article /g)).toHaveLength(hostile.length);
  });

  it('is self-contained: only data: URIs, no scripts, no external references', async () => {
    const { html } = await page();
    const refs = [...html.matchAll(/\s(?:src|href|srcset|action|poster|data)\s*=\s*"([^"]*)"/gi)].map((m) => m[1]);
    expect(refs.length).toBeGreaterThan(0);
    for (const ref of refs) expect(ref).toMatch(/^data:image\/(jpeg|png);base64,/);
    expect(html).not.toMatch(/https?:\/\//i);
    expect(html).not.toMatch(/<(script|link|iframe|object|embed|base)\b/i);
    expect(html).not.toMatch(/url\(|@import/i);
    // Every `<` of user text is escaped, so each match here is a tag the renderer wrote.
    for (const [tag] of html.matchAll(/<[a-z][^>]*>/gi)) expect(tag.replace(/"[^"]*"/g, '""')).not.toMatch(/\son[a-z]+\s*=/i);
    expect(html).toContain(`default-src 'none'; img-src data:`);
    expect(html).toMatch(/^<!doctype html>\n<html lang="en">/);
  });

  it('inlines images without their metadata (EXIF, GPS) and gives them alt text', async () => {
    const { html } = await page();
    const imgs = [...html.matchAll(/<img ([^>]*)>/g)].map((m) => m[1] ?? '');
    expect(imgs.length).toBeGreaterThan(0);
    for (const attrs of imgs) {
      expect(attrs).toMatch(/ alt="[^"]{10,}"/);
      const b64 = /src="data:image\/jpeg;base64,([^"]+)"/.exec(attrs)?.[1];
      expect(b64).toBeDefined();
      const bytes = Buffer.from(b64 ?? '', 'base64');
      const meta = await sharp(bytes).metadata();
      expect(meta.format).toBe('jpeg');
      expect(meta.exif).toBeUndefined();
      expect(bytes.includes('SECRET-EXIF-MARKER')).toBe(false);
    }
    // 7 previews (all but the 2 rejected) + 4 training images (the accepted).
    expect(imgs).toHaveLength(7 + 4);
  });

  it('counts photos by status and by flag in the summary', async () => {
    const { html } = await page();
    const count = (attr: string): number => Number(new RegExp(`${attr}>(\\d+)<`).exec(html)?.[1]);
    expect(count('data-status="accepted"')).toBe(4);
    expect(count('data-status="excluded"')).toBe(3);
    expect(count('data-status="rejected"')).toBe(2);
    expect(count('data-status="total"')).toBe(9);
    // Per photo: photo 0 has `blurry` twice and counts once.
    expect(count('data-flag="blurry"')).toBe(2);
    expect(count('data-flag="small-face"')).toBe(1);
    expect(count('data-flag="other-identity"')).toBe(1);
    expect(count('data-flag="near-duplicate"')).toBe(1);
    expect(html).not.toContain('data-flag="upscaled"');
    // Measured values are shown, compactly.
    expect(html).toContain('blurry <strong>41.2</strong>');
    expect(html).toContain('small-face <strong>0.873</strong>');
    expect(html).toContain('near-duplicate <strong>IMG_1.jpg</strong>');
  });

  it('has headings, a landmark and responsive CSS', async () => {
    const { html } = await page();
    expect(html).toMatch(/<h1>[^<]+<\/h1>/);
    expect(html).toContain('<main>');
    expect(html).toContain('<meta name="viewport" content="width=device-width, initial-scale=1">');
    expect(html).toMatch(/grid-template-columns:repeat\(auto-fill,minmax\(min\(100%,/);
    expect(html.match(/<h3 id="photo-\d+-name">/g)).toHaveLength(hostile.length);
  });

  it('renders an empty session', async () => {
    const html = await renderContactSheetHtml([], { title: 'empty' });
    expect(html).toContain('No photos in this session.');
    expect(html).toContain('data-status="total">0<');
  });
});
