// Crop planning and rendering: geometry on synthetic faces (a mean 68-point shape placed, scaled
// and rolled at will), saliency on generated images, and — with the real detector — the face-api
// demo group photos (shipped in node_modules, so they run on a fresh clone) and, when
// `../shared` exists, the person, dog and backpack photos against boxes labelled by hand.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isBoothError } from '../../src/errors.js';
import {
  estimateHead,
  findSalientRegion,
  planCenterCrop,
  planFaceCrop,
  planSalientCrop,
  renderCrop,
} from '../../src/preprocess/crop.js';
import { createFaceDetector, type FaceDetector } from '../../src/preprocess/faces.js';
import { FRAMINGS } from '../../src/preprocess/types.js';
import type { CropPlan, DetectedFace, Framing, Point, RawImage, Rect } from '../../src/preprocess/types.js';

const photosDir = fileURLToPath(new URL('../../../shared/data/photos/', import.meta.url));
const hasShared = existsSync(photosDir);
if (!hasShared) console.log(`crop.test: skipping the shared real-photo tests, ${photosDir} is absent`);
const demoDir = path.join(path.dirname(createRequire(import.meta.url).resolve('@vladmandic/face-api/package.json')), 'demo');

// ---------------------------------------------------------------------------------------------
// Synthetic faces
// ---------------------------------------------------------------------------------------------

/**
 * Mean frontal 68-point shape in the eye-line frame, unit = interocular distance, origin between
 * the eyes, v down. Averaged (and mirrored to symmetry) from face-api's landmarks on the ten
 * most frontal faces of the demo and person photos.
 */
const TEMPLATE: ReadonlyArray<readonly [number, number]> = [
  [-1.14, 0.09], [-1.12, 0.38], [-1.06, 0.66], [-1.01, 0.92], [-0.9, 1.2], [-0.75, 1.42], [-0.58, 1.56], [-0.35, 1.72],
  [0, 1.81], [0.35, 1.72], [0.58, 1.56], [0.75, 1.42], [0.9, 1.2], [1.01, 0.92], [1.06, 0.66], [1.12, 0.38], [1.14, 0.09],
  [-0.91, -0.25], [-0.77, -0.36], [-0.6, -0.39], [-0.44, -0.37], [-0.3, -0.32], [0.3, -0.32], [0.44, -0.37], [0.6, -0.39],
  [0.77, -0.36], [0.91, -0.25], [0, 0.03], [0, 0.23], [0, 0.42], [0, 0.6], [-0.19, 0.72], [-0.11, 0.74], [0, 0.77],
  [0.11, 0.74], [0.19, 0.72], [-0.68, -0.01], [-0.58, -0.06], [-0.43, -0.06], [-0.3, 0.02], [-0.42, 0.05], [-0.58, 0.06],
  [0.3, 0.02], [0.43, -0.06], [0.58, -0.06], [0.68, -0.01], [0.58, 0.06], [0.42, 0.05], [-0.45, 1.08], [-0.3, 1],
  [-0.1, 0.95], [0, 0.97], [0.1, 0.95], [0.3, 1], [0.45, 1.08], [0.29, 1.23], [0.15, 1.3], [0, 1.32], [-0.15, 1.3],
  [-0.29, 1.23], [-0.42, 1.08], [-0.14, 1.05], [0, 1.05], [0.14, 1.05], [0.42, 1.08], [0.13, 1.17], [0, 1.18], [-0.13, 1.17],
];

interface FaceSpec {
  /** Point between the eyes, in image pixels. */
  x: number;
  y: number;
  /** Interocular distance in pixels. */
  iod: number;
  /** Roll in degrees, clockwise in the image. */
  roll?: number;
}

/** Eye-frame (u, v) in IOD to image pixels. */
function toImage(spec: FaceSpec, u: number, v: number): Point {
  const a = ((spec.roll ?? 0) * Math.PI) / 180;
  return {
    x: spec.x + spec.iod * (u * Math.cos(a) - v * Math.sin(a)),
    y: spec.y + spec.iod * (u * Math.sin(a) + v * Math.cos(a)),
  };
}

function bounds(points: readonly Point[]): Rect {
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  const x = Math.min(...xs);
  const y = Math.min(...ys);
  return { x, y, width: Math.max(...xs) - x, height: Math.max(...ys) - y };
}

/** A face as face-api reports it: landmarks, and an SSD-like box from 1.1 IOD above the eyes to the chin. */
function syntheticFace(spec: FaceSpec): DetectedFace {
  const landmarks = TEMPLATE.map(([u, v]) => toImage(spec, u, v));
  const box = bounds([...landmarks, toImage(spec, -1.1, -1.1), toImage(spec, 1.1, -1.1)]);
  return { box, score: 0.99, landmarks, descriptor: new Float32Array(128) };
}

/**
 * Outline of a real head around the synthetic face, in the eye frame: hair 2.3 IOD above the eyes
 * (the middle of the measured 1.5–2.8), ears at ±1.45, chin at the template's 1.81.
 */
function trueHeadOutline(spec: FaceSpec): Point[] {
  const pts: Point[] = [];
  for (let k = 0; k < 36; k++) {
    const t = (k / 36) * 2 * Math.PI;
    const v = Math.sin(t) < 0 ? 2.3 * Math.sin(t) : 1.81 * Math.sin(t);
    pts.push(toImage(spec, 1.45 * Math.cos(t), v));
  }
  return pts;
}

const inside = (r: Rect, p: Point, margin = 0): boolean =>
  p.x >= r.x + margin && p.y >= r.y + margin && p.x <= r.x + r.width - margin && p.y <= r.y + r.height - margin;
const containsRect = (outer: Rect, inner: Rect, margin = 0): boolean =>
  inner.x >= outer.x + margin &&
  inner.y >= outer.y + margin &&
  inner.x + inner.width <= outer.x + outer.width - margin &&
  inner.y + inner.height <= outer.y + outer.height - margin;

function expectValidSquare(plan: CropPlan, size: { width: number; height: number }): void {
  const { rect } = plan;
  expect(rect.width).toBe(rect.height);
  for (const v of [rect.x, rect.y, rect.width]) expect(Number.isInteger(v)).toBe(true);
  expect(rect.width).toBeGreaterThan(0);
  expect(rect.x).toBeGreaterThanOrEqual(0);
  expect(rect.y).toBeGreaterThanOrEqual(0);
  expect(rect.x + rect.width).toBeLessThanOrEqual(size.width);
  expect(rect.y + rect.height).toBeLessThanOrEqual(size.height);
}

function expectInvalidArgument(fn: () => unknown, pattern: RegExp): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(isBoothError(caught, 'INVALID_ARGUMENT')).toBe(true);
  expect((caught as Error).message).toMatch(pattern);
}

// ---------------------------------------------------------------------------------------------
// estimateHead
// ---------------------------------------------------------------------------------------------

describe('estimateHead', () => {
  it('holds the landmarks with margin: the skull above the brows, air below the chin and beside the jaw', () => {
    const spec = { x: 500, y: 400, iod: 100 };
    const face = syntheticFace(spec);
    const head = estimateHead(face);
    for (const p of face.landmarks) expect(inside(head, p, 10)).toBe(true);
    // Farkas: the bald vertex is ≈ 1.9 IOD above the eyes; hair is on top of that.
    expect(head.y).toBeLessThanOrEqual(400 - 1.9 * 100);
    expect(head.y + head.height).toBeGreaterThanOrEqual(400 + 1.81 * 100 + 0.2 * 100);
    expect(head.x).toBeLessThanOrEqual(500 - 1.45 * 100);
    expect(head.x + head.width).toBeGreaterThanOrEqual(500 + 1.45 * 100);
    expect(containsRect(head, face.box)).toBe(true);
    for (const v of [head.x, head.y, head.width, head.height]) expect(Number.isInteger(v)).toBe(true);
  });

  it('is not the detector box: a head is much taller than face-api brows-to-chin box', () => {
    const face = syntheticFace({ x: 300, y: 300, iod: 60 });
    const head = estimateHead(face);
    expect(head.height / face.box.height).toBeGreaterThan(1.4);
  });

  it('scales with the face', () => {
    const small = estimateHead(syntheticFace({ x: 1000, y: 1000, iod: 50 }));
    const large = estimateHead(syntheticFace({ x: 1000, y: 1000, iod: 150 }));
    expect(large.height / small.height).toBeCloseTo(3, 1);
    expect(large.width / small.width).toBeCloseTo(3, 1);
  });

  it.each([15, 30, 45, 90, -60, 180])('holds the whole head of a face rolled %i°', (roll) => {
    const spec = { x: 800, y: 800, iod: 100, roll };
    const head = estimateHead(syntheticFace(spec));
    for (const p of trueHeadOutline(spec)) expect(inside(head, p)).toBe(true);
  });

  it('grows taller, not shorter, for a face nodding down (eye-to-chin foreshortened)', () => {
    const spec = { x: 500, y: 500, iod: 100 };
    const upright = syntheticFace(spec);
    const nodding = syntheticFace(spec);
    nodding.landmarks = upright.landmarks.map((p) => ({ x: p.x, y: 500 + (p.y - 500) * 0.55 }));
    expect(estimateHead(nodding).y).toBeLessThan(estimateHead(upright).y);
  });

  it('widens the back of a turned head, away from the nose', () => {
    const spec = { x: 500, y: 500, iod: 100 };
    const frontal = syntheticFace(spec);
    const turned = syntheticFace(spec);
    // Nose tip and bridge moved towards the image's right: the face looks right, the skull is behind, left.
    turned.landmarks = frontal.landmarks.map((p, i) => (i >= 27 && i <= 35 ? { x: p.x + 45, y: p.y } : p));
    const a = estimateHead(frontal);
    const b = estimateHead(turned);
    expect(b.x).toBeLessThan(a.x - 20);
    expect(b.x + b.width).toBeCloseTo(a.x + a.width, -1);
  });

  it('rejects faces without 68 finite landmarks', () => {
    const face = syntheticFace({ x: 100, y: 100, iod: 30 });
    expectInvalidArgument(() => estimateHead({ ...face, landmarks: face.landmarks.slice(0, 5) }), /68.*got 5/);
    const bad = face.landmarks.slice();
    bad[8] = { x: Number.NaN, y: 1 };
    expectInvalidArgument(() => estimateHead({ ...face, landmarks: bad }), /finite/);
  });
});

describe('estimateHead with the pixels', () => {
  const W = 900;
  const H = 1000;
  const spec = { x: 450, y: 520, iod: 100 };

  /** A flat-colour head: hair ellipse to 1.9 IOD above the eyes, skin face, on a plain background. */
  async function headImage(background: string, hair: string): Promise<RawImage> {
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}">
      <rect width="${W}" height="${H}" fill="${background}"/>
      <ellipse cx="450" cy="${520 - 40}" rx="135" ry="${190 - 40}" fill="${hair}"/>
      <ellipse cx="450" cy="${520 + 30}" rx="110" ry="${151}" fill="#d9a77f"/>
    </svg>`;
    const { data, info } = await sharp(Buffer.from(svg)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
    return { data, width: info.width, height: info.height, channels: 3 };
  }

  it('lowers the generous top to where the hair visibly ends, never into the hair', async () => {
    const image = await headImage('#8fb8dc', '#2b1d14');
    const face = syntheticFace(spec);
    const generous = estimateHead(face);
    const seen = estimateHead(face, image);
    const hairTop = 520 - 190; // the hair ellipse's top
    expect(seen.y).toBeGreaterThan(generous.y + 20);
    expect(seen.y).toBeLessThanOrEqual(hairTop - 10);
    expect(seen.y + seen.height).toBe(generous.y + generous.height);
  });

  it('keeps the generous top when hair and background cannot be told apart', async () => {
    const image = await headImage('#2b1d14', '#2d1f16');
    const face = syntheticFace(spec);
    expect(estimateHead(face, image)).toEqual(estimateHead(face));
  });

  it('keeps the generous top when the hair runs off the top of the photo', async () => {
    const full = await headImage('#8fb8dc', '#2b1d14');
    // Cut the photo 1.7 IOD above the eyes: through the hair.
    const top = 520 - 170;
    const { data, info } = await sharp(full.data, { raw: { width: W, height: H, channels: 3 } })
      .extract({ left: 0, top, width: W, height: H - top })
      .raw()
      .toBuffer({ resolveWithObject: true });
    const image: RawImage = { data, width: info.width, height: info.height, channels: 3 };
    const face = syntheticFace({ ...spec, y: spec.y - top });
    expect(estimateHead(face, image)).toEqual(estimateHead(face));
  });
});

// ---------------------------------------------------------------------------------------------
// planFaceCrop
// ---------------------------------------------------------------------------------------------

describe('planFaceCrop', () => {
  const sizes = [
    { name: 'landscape', width: 4000, height: 3000, face: { x: 1800, y: 1100, iod: 80 } },
    { name: 'portrait', width: 3000, height: 4000, face: { x: 1600, y: 1300, iod: 90 } },
  ];

  for (const s of sizes) {
    it.each(FRAMINGS.map((f) => [f]))(`frames the whole head at %s in a roomy ${s.name} photo`, (framing: Framing) => {
      const face = syntheticFace(s.face);
      const plan = planFaceCrop(s, face, framing, 1024);
      expectValidSquare(plan, s);
      expect(plan.strategy).toBe('face');
      expect(plan.framing).toBe(framing);
      expect(plan.framingAchieved).toBe(framing);
      expect(plan.headInside).toBe(true);
      expect(plan.head).toEqual(estimateHead(face));
      const head = plan.head as Rect;
      expect(containsRect(plan.rect, head, 0.03 * plan.rect.width)).toBe(true);
      for (const p of trueHeadOutline(s.face)) expect(inside(plan.rect, p, 0.05 * plan.rect.width)).toBe(true);
      expect(plan.upscale).toBeCloseTo(1024 / plan.rect.width, 10);
      // Headroom conventions: the eyes in the upper half, the head's top never against the edge.
      const eyes = s.face.y - plan.rect.y;
      expect(eyes / plan.rect.width).toBeGreaterThan(0.25);
      expect(eyes / plan.rect.width).toBeLessThan(0.5);
    });
  }

  it('frames tighter to wider: face < head-and-shoulders < upper-body, and the face is prominent at `face`', () => {
    const size = { width: 5000, height: 5000 };
    const face = syntheticFace({ x: 2500, y: 2000, iod: 100 });
    const sides = FRAMINGS.map((f) => planFaceCrop(size, face, f, 512).rect.width);
    expect(sides[0]).toBeLessThan(sides[1] ?? 0);
    expect(sides[1]).toBeLessThan(sides[2] ?? 0);
    const plan = planFaceCrop(size, face, 'face', 512);
    expect(face.box.height / plan.rect.width).toBeGreaterThan(0.35);
    const head = plan.head as Rect;
    expect(head.height / plan.rect.width).toBeGreaterThan(0.7);
    expect(head.height / plan.rect.width).toBeLessThan(0.8);
  });

  it('shifts the square inside the photo when the face is near a corner, keeping the head', () => {
    const size = { width: 2000, height: 1500 };
    const spec = { x: 170, y: 230, iod: 80 };
    const plan = planFaceCrop(size, syntheticFace(spec), 'head-and-shoulders', 512);
    expectValidSquare(plan, size);
    expect(plan.rect.x).toBe(0);
    expect(plan.rect.y).toBe(0);
    expect(plan.framingAchieved).toBe('head-and-shoulders');
    expect(plan.headInside).toBe(true);
  });

  it('reports a head cut by the top of the photo: face kept in, headInside false', () => {
    const size = { width: 1600, height: 1200 };
    // Eyes 0.9 IOD below the top edge: the forehead is outside the photo.
    const face = syntheticFace({ x: 800, y: 90, iod: 100 });
    const plan = planFaceCrop(size, face, 'face', 512);
    expectValidSquare(plan, size);
    expect(plan.headInside).toBe(false);
    expect(plan.rect.y).toBe(0);
    for (const p of face.landmarks.filter((q) => q.y >= 0)) expect(inside(plan.rect, p)).toBe(true);
  });

  it('reports a face cut by the side of the photo', () => {
    const size = { width: 1600, height: 1200 };
    const face = syntheticFace({ x: 40, y: 500, iod: 100 });
    const plan = planFaceCrop(size, face, 'head-and-shoulders', 512);
    expectValidSquare(plan, size);
    expect(plan.headInside).toBe(false);
    expect(plan.rect.x).toBe(0);
  });

  it('shrinks to the shorter side of a narrow photo and reports the tighter framing it reached', () => {
    const spec = { x: 300, y: 500, iod: 90 };
    const face = syntheticFace(spec);
    const head = estimateHead(face);
    // Wide enough for `face` (head / 0.75) but not for head-and-shoulders (head / 0.50).
    const size = { width: Math.ceil(head.height / 0.6), height: 2400 };
    const plan = planFaceCrop(size, face, 'upper-body', 768);
    expectValidSquare(plan, size);
    expect(plan.rect.width).toBe(size.width);
    expect(plan.framing).toBe('upper-body');
    expect(plan.framingAchieved).toBe('face');
    expect(plan.headInside).toBe(true);
    expect(plan.upscale).toBeCloseTo(768 / size.width, 10);
  });

  it('copes with a tiny photo (upscale > 1) and a 1×1 one', () => {
    const face = syntheticFace({ x: 30, y: 22, iod: 8 });
    const plan = planFaceCrop({ width: 60, height: 45 }, face, 'face', 512);
    expectValidSquare(plan, { width: 60, height: 45 });
    expect(plan.rect.width).toBe(45);
    expect(plan.upscale).toBeCloseTo(512 / 45, 10);
    const dot = planFaceCrop({ width: 1, height: 1 }, syntheticFace({ x: 0.5, y: 0.5, iod: 0.1 }), 'face', 512);
    expect(dot.rect).toEqual({ x: 0, y: 0, width: 1, height: 1 });
  });

  it('frames a rolled face with the whole (rotated) head inside', () => {
    const size = { width: 3000, height: 3000 };
    for (const roll of [25, -40, 90]) {
      const spec = { x: 1500, y: 1400, iod: 100, roll };
      const plan = planFaceCrop(size, syntheticFace(spec), 'face', 1024);
      expect(plan.headInside).toBe(true);
      for (const p of trueHeadOutline(spec)) expect(inside(plan.rect, p, 0.03 * plan.rect.width)).toBe(true);
    }
  });

  it('with `others`, keeps neighbours out: a wide framing tightens or shifts until no other face is whole', () => {
    const size = { width: 3000, height: 2000 };
    const subject = syntheticFace({ x: 1500, y: 800, iod: 80 });
    const left = syntheticFace({ x: 1180, y: 820, iod: 80 });
    const right = syntheticFace({ x: 1830, y: 790, iod: 80 });
    const all = [subject, left, right];
    // A neighbour is in the picture when both its eyes and its nose are.
    const wholeNeighbours = (r: Rect): number => [left, right].filter((f) => containsRect(r, bounds(f.landmarks.slice(27, 48)))).length;

    const naive = planFaceCrop(size, subject, 'upper-body', 512);
    expect(wholeNeighbours(naive.rect)).toBe(2);

    for (const framing of FRAMINGS) {
      const plan = planFaceCrop(size, subject, framing, 512, { others: all });
      expectValidSquare(plan, size);
      expect(wholeNeighbours(plan.rect)).toBe(0);
      expect(plan.headInside).toBe(true);
      expect(FRAMINGS.indexOf(plan.framingAchieved as Framing)).toBeLessThanOrEqual(FRAMINGS.indexOf(framing));
    }
  });

  it('rejects bad arguments with INVALID_ARGUMENT naming the value', () => {
    const face = syntheticFace({ x: 100, y: 100, iod: 30 });
    expectInvalidArgument(() => planFaceCrop({ width: 200, height: 200 }, face, 'full-body' as Framing, 512), /framing.*full-body/);
    expectInvalidArgument(() => planFaceCrop({ width: 200, height: 200 }, face, 'face', 0), /outputSize.*0/);
    expectInvalidArgument(() => planFaceCrop({ width: 0, height: 200 }, face, 'face', 512), /0×200/);
    expectInvalidArgument(() => planFaceCrop({ width: 20.5, height: 200 }, face, 'face', 512), /20\.5×200/);
  });
});

describe('planCenterCrop', () => {
  it('takes the largest centred square', () => {
    const plan = planCenterCrop({ width: 1920, height: 1080 }, 512);
    expect(plan).toEqual({ rect: { x: 420, y: 0, width: 1080, height: 1080 }, strategy: 'center', framing: null, framingAchieved: null, head: null, headInside: null, upscale: 512 / 1080 });
    expect(planCenterCrop({ width: 301, height: 900 }, 512).rect).toEqual({ x: 0, y: 299, width: 301, height: 301 });
  });
});

// ---------------------------------------------------------------------------------------------
// Salient crop on generated images
// ---------------------------------------------------------------------------------------------

type Background = 'plain' | 'gradient' | 'noise';

/** Seeded xorshift. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 0x100000000;
  };
}

/** An object (a two-colour bag-like shape with a handle and texture) on a background; returns its true box. */
async function objectScene(width: number, height: number, obj: Rect, background: Background, seed: number): Promise<RawImage> {
  const bg =
    background === 'plain'
      ? `<rect width="${width}" height="${height}" fill="#d8d4cc"/>`
      : `<defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1"><stop offset="0" stop-color="#9db7c9"/><stop offset="1" stop-color="#c9d3b0"/></linearGradient></defs><rect width="${width}" height="${height}" fill="url(#g)"/>`;
  const { x, y, width: w, height: h } = obj;
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">${bg}
    <path d="M ${x + 0.3 * w} ${y + 0.15 * h} Q ${x + 0.5 * w} ${y} ${x + 0.7 * w} ${y + 0.15 * h}" stroke="#7a1030" stroke-width="${0.04 * w}" fill="none"/>
    <rect x="${x}" y="${y + 0.12 * h}" width="${w}" height="${0.88 * h}" rx="${0.2 * w}" fill="#b3194a"/>
    <rect x="${x + 0.15 * w}" y="${y + 0.6 * h}" width="${0.7 * w}" height="${0.3 * h}" rx="${0.05 * w}" fill="#8c1239"/>
    <circle cx="${x + 0.7 * w}" cy="${y + 0.75 * h}" r="${0.05 * w}" fill="#f2c230"/>
  </svg>`;
  const { data, info } = await sharp(Buffer.from(svg)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  if (background === 'noise') {
    // Texture outside the object, like foliage or gravel.
    const r = rng(seed);
    for (let py = 0; py < info.height; py++) {
      for (let px = 0; px < info.width; px++) {
        if (px >= x && px < x + w && py >= y && py < y + h) continue;
        const n = Math.round((r() - 0.5) * 50);
        for (let c = 0; c < 3; c++) {
          const i = (py * info.width + px) * 3 + c;
          data[i] = Math.max(0, Math.min(255, (data[i] ?? 0) + n));
        }
      }
    }
  }
  return { data, width: info.width, height: info.height, channels: 3 };
}

describe('planSalientCrop on generated scenes', () => {
  const cases: Array<{ width: number; height: number; obj: Rect; background: Background }> = [];
  const backgrounds: Background[] = ['plain', 'gradient', 'noise'];
  let k = 0;
  for (const background of backgrounds) {
    // Landscape: the object at the left, middle and right; portrait: top, middle, bottom.
    for (const fx of [0.04, 0.4, 0.74]) cases.push({ width: 1600, height: 900, obj: { x: Math.round(fx * 1600), y: 260 + 40 * (k++ % 3), width: 360, height: 460 }, background });
    for (const fy of [0.03, 0.35, 0.7]) cases.push({ width: 800, height: 1500, obj: { x: 180 + 30 * (k++ % 3), y: Math.round(fy * 1500), width: 380, height: 420 }, background });
  }

  it.each(cases.map((c, i) => [i, c.background, `${c.width}×${c.height}`, c]))(
    'case %i (%s, %s): the whole object is inside the crop',
    async (_i, _b, _s, c) => {
      const image = await objectScene(c.width, c.height, c.obj, c.background, 7 + c.obj.x);
      const plan = await planSalientCrop(image, 512);
      expectValidSquare(plan, image);
      expect(plan.strategy).toBe('salient');
      expect(plan.framing).toBeNull();
      expect(plan.head).toBeNull();
      expect(plan.rect.width).toBe(Math.min(c.width, c.height));
      expect(containsRect(plan.rect, c.obj)).toBe(true);
      const region = await findSalientRegion(image);
      // The found box is about the object, not the whole photo.
      expect(containsRect(region.box, { x: c.obj.x + 0.1 * c.obj.width, y: c.obj.y + 0.1 * c.obj.height, width: 0.8 * c.obj.width, height: 0.8 * c.obj.height })).toBe(true);
      expect(region.box.width * region.box.height).toBeLessThan(0.5 * c.width * c.height);
    },
  );

  it('holds the larger of two things whole rather than cutting both to catch a bit of each', async () => {
    const big = { x: 150, y: 200, width: 420, height: 560 };
    const image = await objectScene(2400, 900, big, 'gradient', 11);
    // A second, smaller thing at the far right, out of reach of any square that holds the first.
    const small = { x: 2150, y: 380, width: 160, height: 200 };
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="2400" height="900"><rect x="${small.x}" y="${small.y}" width="${small.width}" height="${small.height}" rx="30" fill="#1f5fbf"/></svg>`;
    const { data, info } = await sharp(image.data, { raw: { width: 2400, height: 900, channels: 3 } })
      .composite([{ input: Buffer.from(svg) }])
      .removeAlpha()
      .raw()
      .toBuffer({ resolveWithObject: true });
    const plan = await planSalientCrop({ data, width: info.width, height: info.height, channels: 3 }, 512);
    expectValidSquare(plan, info);
    expect(containsRect(plan.rect, big)).toBe(true);
  });

  it('passes a square photo through whole', async () => {
    const image = await objectScene(700, 700, { x: 40, y: 300, width: 200, height: 300 }, 'plain', 1);
    const plan = await planSalientCrop(image, 1024);
    expect(plan.rect).toEqual({ x: 0, y: 0, width: 700, height: 700 });
    expect(plan.upscale).toBeCloseTo(1024 / 700, 10);
  });

  it('returns a valid square for a photo with nothing in it', async () => {
    const { data, info } = await sharp({ create: { width: 640, height: 360, channels: 3, background: '#808080' } }).raw().toBuffer({ resolveWithObject: true });
    const plan = await planSalientCrop({ data, width: info.width, height: info.height, channels: 3 }, 512);
    expectValidSquare(plan, info);
    expect(plan.rect.width).toBe(360);
  });

  it('rejects a malformed image', async () => {
    const err: unknown = await planSalientCrop({ data: Buffer.alloc(10), width: 4, height: 4, channels: 3 }, 512).catch((e: unknown) => e);
    expect(isBoothError(err, 'INVALID_ARGUMENT')).toBe(true);
    expect((err as Error).message).toMatch(/4×4×3.*got 10 bytes/);
  });
});

// ---------------------------------------------------------------------------------------------
// renderCrop
// ---------------------------------------------------------------------------------------------

describe('renderCrop', () => {
  it('cuts exactly the rectangle and resizes it to a square sRGB PNG', async () => {
    // Left half red, right half blue; crop only the blue half.
    const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="400" height="200"><rect width="200" height="200" fill="#ff0000"/><rect x="200" width="200" height="200" fill="#0000ff"/></svg>`;
    const { data, info } = await sharp(Buffer.from(svg)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
    const image: RawImage = { data, width: info.width, height: info.height, channels: 3 };
    const png = await renderCrop(image, { x: 200, y: 0, width: 200, height: 200 }, 512);
    const meta = await sharp(png).metadata();
    expect(meta.format).toBe('png');
    expect(meta.width).toBe(512);
    expect(meta.height).toBe(512);
    expect(meta.channels).toBe(3);
    expect(meta.space).toBe('srgb');
    const stats = await sharp(png).stats();
    expect(stats.channels[0]?.max).toBeLessThan(8);
    expect(stats.channels[2]?.min).toBeGreaterThan(247);
  });

  it('rejects a rectangle outside the image or not integer', async () => {
    const { data } = await sharp({ create: { width: 10, height: 10, channels: 3, background: '#000' } }).raw().toBuffer({ resolveWithObject: true });
    const image: RawImage = { data, width: 10, height: 10, channels: 3 };
    for (const rect of [{ x: 5, y: 5, width: 6, height: 6 }, { x: -1, y: 0, width: 5, height: 5 }, { x: 0.5, y: 0, width: 5, height: 5 }, { x: 0, y: 0, width: 0, height: 0 }]) {
      const err: unknown = await renderCrop(image, rect, 64).catch((e: unknown) => e);
      expect(isBoothError(err, 'INVALID_ARGUMENT')).toBe(true);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Real photos with the real detector
// ---------------------------------------------------------------------------------------------

async function load(file: string): Promise<RawImage> {
  const { data, info } = await sharp(file).rotate().removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height, channels: 3 };
}

async function cropOf(image: RawImage, rect: Rect): Promise<RawImage> {
  const { data, info } = await sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } })
    .extract({ left: rect.x, top: rect.y, width: rect.width, height: rect.height })
    .raw()
    .toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height, channels: 3 };
}

const largest = (faces: readonly DetectedFace[]): DetectedFace => {
  const f = faces.reduce<DetectedFace | undefined>((a, b) => (a === undefined || b.box.width * b.box.height > a.box.width * a.box.height ? b : a), undefined);
  if (f === undefined) throw new Error('no face found');
  return f;
};

describe('planFaceCrop on face-api demo group photos', () => {
  let detector: FaceDetector;
  beforeAll(async () => {
    detector = await createFaceDetector();
  });
  afterAll(() => detector.dispose());

  /**
   * Faces found again inside the crop that are whole: their box keeps clear of the crop's edges
   * (a neighbour cut by the edge can still be detected; it is not a second person in the shot).
   */
  async function wholeFacesIn(image: RawImage, rect: Rect): Promise<DetectedFace[]> {
    const crop = await cropOf(image, rect);
    const edge = 0.02 * rect.width;
    return (await detector.detect(crop)).filter((f) => containsRect({ x: 0, y: 0, width: crop.width, height: crop.height }, f.box, edge));
  }

  for (const n of [1, 2, 3, 4, 5, 6]) {
    it(`sample${n}.jpg: every framing around the largest face holds that one person, not the group`, async () => {
      const image = await load(path.join(demoDir, `sample${n}.jpg`));
      const faces = await detector.detect(image);
      expect(faces.length).toBeGreaterThanOrEqual(3);
      const subject = largest(faces);
      for (const framing of ['face', 'upper-body'] as const) {
        const plan = planFaceCrop(image, subject, framing, 512, { others: faces });
        expectValidSquare(plan, image);
        expect(plan.headInside).toBe(true);
        // Geometry: of all the photo's faces only the subject has its eyes and nose in the crop.
        expect(faces.filter((f) => containsRect(plan.rect, bounds(f.landmarks.slice(27, 48))))).toEqual([subject]);
        // And the detector, run again on the crop alone, finds exactly one whole face.
        expect((await wholeFacesIn(image, plan.rect)).length).toBe(1);
      }
    });
  }
});

/** Hand-labelled boxes (source pixels, by eye on zoomed grids): the whole head, hair to chin, ear to ear. */
const PERSON_HEADS: Record<string, Rect> = {
  'person-a/01.jpg': { x: 337, y: 30, width: 307, height: 390 },
  'person-a/02.jpg': { x: 199, y: 167, width: 344, height: 465 },
  'person-a/03.jpg': { x: 577, y: 222, width: 350, height: 390 },
  'person-b/01.jpg': { x: 385, y: 84, width: 371, height: 482 },
};

type Side = 'left' | 'right' | 'top' | 'bottom';
const ALL: Side[] = ['left', 'right', 'top', 'bottom'];

/**
 * Hand-labelled subject boxes: the whole dog (to the photo's edge where it is cut), the whole
 * backpack with its straps; and the sides where no foreground (the dog, the backpack's wearer)
 * touches the photo's edge, so the scene can be extended there.
 */
const SUBJECTS: Record<string, { box: Rect; open: Side[] }> = {
  'dog/00.jpg': { box: { x: 60, y: 160, width: 640, height: 620 }, open: ['left', 'right', 'top'] },
  'dog/01.jpg': { box: { x: 165, y: 95, width: 505, height: 635 }, open: ALL },
  'dog/02.jpg': { box: { x: 165, y: 150, width: 615, height: 575 }, open: ['left', 'top', 'bottom'] },
  'dog/03.jpg': { box: { x: 95, y: 140, width: 635, height: 570 }, open: ALL },
  'dog/04.jpg': { box: { x: 185, y: 15, width: 475, height: 672 }, open: ['left', 'right', 'top'] },
  'backpack/00.jpg': { box: { x: 215, y: 10, width: 375, height: 580 }, open: ['left', 'right'] },
  'backpack/01.jpg': { box: { x: 250, y: 0, width: 350, height: 630 }, open: ['left'] },
  'backpack/02.jpg': { box: { x: 230, y: 50, width: 965, height: 1130 }, open: ALL },
  'backpack/03.jpg': { box: { x: 560, y: 80, width: 720, height: 1070 }, open: ['left', 'top', 'bottom'] },
  'backpack/04.jpg': { box: { x: 390, y: 140, width: 490, height: 1010 }, open: ALL },
  'backpack/05.jpg': { box: { x: 170, y: 70, width: 680, height: 1070 }, open: ALL },
};

/**
 * The photo inside a larger scene: the extension continues the photo's edges and is blurred, as
 * the out-of-focus surroundings of a wider shot would look.
 */
async function extendScene(image: RawImage, ext: Record<Side, number>): Promise<RawImage> {
  const raw = { raw: { width: image.width, height: image.height, channels: 3 as const } };
  const grown = await sharp(image.data, raw).extend({ ...ext, extendWith: 'copy' }).raw().toBuffer({ resolveWithObject: true });
  const { data, info } = await sharp(grown.data, { raw: { width: grown.info.width, height: grown.info.height, channels: 3 } })
    .blur(60)
    .composite([{ input: image.data, ...raw, left: ext.left, top: ext.top }])
    .removeAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height, channels: 3 };
}

describe.skipIf(!hasShared)('planFaceCrop on the shared person photos', () => {
  let detector: FaceDetector;
  beforeAll(async () => {
    detector = await createFaceDetector();
  });
  afterAll(() => detector.dispose());

  for (const [name, labelled] of Object.entries(PERSON_HEADS)) {
    it(`${name}: the whole head is inside every framing's crop, and the face is prominent at \`face\``, async () => {
      const image = await load(path.join(photosDir, name));
      const faces = await detector.detect(image);
      expect(faces.length).toBe(1);
      const face = largest(faces);
      for (const framing of FRAMINGS) {
        const plan = planFaceCrop(image, face, framing, 768);
        expectValidSquare(plan, image);
        expect(plan.headInside).toBe(true);
        // Independent of the estimate: the hand-labelled head, and every landmark, with margin
        // (the photo's own edge is margin enough where the head is that close to it).
        const m = 0.02 * plan.rect.width;
        const need = {
          x: Math.max(labelled.x - m, 0),
          y: Math.max(labelled.y - m, 0),
          width: 0,
          height: 0,
        };
        need.width = Math.min(labelled.x + labelled.width + m, image.width) - need.x;
        need.height = Math.min(labelled.y + labelled.height + m, image.height) - need.y;
        expect(containsRect(plan.rect, need)).toBe(true);
        for (const p of face.landmarks) expect(inside(plan.rect, p, 0.05 * plan.rect.width)).toBe(true);
        if (framing === 'face') {
          expect(face.box.height / plan.rect.width).toBeGreaterThan(0.33);
          expect(labelled.height / plan.rect.width).toBeGreaterThan(0.5);
        }
      }
    });
  }
});

describe.skipIf(!hasShared)('planSalientCrop on the shared dog and backpack photos', () => {
  for (const [name, { box: subject, open }] of Object.entries(SUBJECTS)) {
    it(`${name}: the subject is fully in frame, also when the photo is part of a wider or taller scene`, async () => {
      const image = await load(path.join(photosDir, name));
      const plan = await planSalientCrop(image, 512);
      expectValidSquare(plan, image);
      expect(containsRect(plan.rect, subject)).toBe(true);

      // The photos are square, so their largest square is the whole photo. Put each in a scene
      // 1.6× as wide (or tall), extended on its open sides only, with the subject off-centre.
      const pad = Math.round(0.6 * image.width);
      const layouts: Array<Record<Side, number>> = [];
      for (const [a, b] of [['left', 'right'], ['top', 'bottom']] as const) {
        const none = { left: 0, right: 0, top: 0, bottom: 0 };
        if (open.includes(a)) layouts.push({ ...none, [a]: pad });
        if (open.includes(b)) layouts.push({ ...none, [b]: pad });
        if (open.includes(a) && open.includes(b)) layouts.push({ ...none, [a]: Math.round(pad / 2), [b]: pad - Math.round(pad / 2) });
      }
      for (const ext of layouts) {
        const scene = await extendScene(image, ext);
        const moved = { ...subject, x: subject.x + ext.left, y: subject.y + ext.top };
        const p = await planSalientCrop(scene, 512);
        expectValidSquare(p, scene);
        expect(containsRect(p.rect, moved), `${JSON.stringify(ext)}: ${JSON.stringify(p.rect)} vs ${JSON.stringify(moved)}`).toBe(true);
      }
    });
  }
});
