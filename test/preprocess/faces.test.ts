// Face detection on real pixels: face-api's own demo group photos (always present after `npm ci`),
// images generated here, and the shared real photos when `../shared` exists.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import * as tfjs from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createFaceDetector, type FaceDetector } from '../../src/preprocess/faces.js';
import type { DetectedFace, RawImage, Rect } from '../../src/preprocess/types.js';
import { isBoothError } from '../../src/errors.js';

const require = createRequire(import.meta.url);
const demoDir = path.join(path.dirname(require.resolve('@vladmandic/face-api/package.json')), 'demo');
const photosDir = fileURLToPath(new URL('../../../shared/data/photos/', import.meta.url));
const hasShared = existsSync(photosDir);
if (!hasShared) console.log(`faces.test: skipping real-photo tests, ${photosDir} is absent`);

async function load(file: string, resizeWidth?: number): Promise<RawImage> {
  let pipeline = sharp(file).rotate().removeAlpha().toColourspace('srgb');
  if (resizeWidth !== undefined) pipeline = pipeline.resize({ width: resizeWidth });
  const { data, info } = await pipeline.raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height, channels: 3 };
}

async function scale(image: RawImage, factor: number): Promise<RawImage> {
  const width = Math.round(image.width * factor);
  const height = Math.round(image.height * factor);
  const data = await sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } })
    .resize({ width, height, fit: 'fill' })
    .raw()
    .toBuffer();
  return { data, width, height, channels: 3 };
}

function plain(width: number, height: number, rgb: [number, number, number]): RawImage {
  const data = Buffer.alloc(width * height * 3);
  for (let i = 0; i < data.length; i += 3) data.set(rgb, i);
  return { data, width, height, channels: 3 };
}

function inside(r: Rect, width: number, height: number): boolean {
  return r.x >= 0 && r.y >= 0 && r.width > 0 && r.height > 0 && r.x + r.width <= width + 1e-6 && r.y + r.height <= height + 1e-6;
}

function norm(v: Float32Array): number {
  let s = 0;
  for (const x of v) s += x * x;
  return Math.sqrt(s);
}

function centre(r: Rect): { x: number; y: number } {
  return { x: r.x + r.width / 2, y: r.y + r.height / 2 };
}

let detector: FaceDetector;

beforeAll(async () => {
  detector = await createFaceDetector();
});

afterAll(() => {
  detector.dispose();
});

describe('createFaceDetector on face-api demo group photos', () => {
  const samples = [1, 2, 3, 4, 5, 6].map((n) => path.join(demoDir, `sample${n}.jpg`));
  const found = new Map<string, { image: RawImage; faces: DetectedFace[] }>();

  beforeAll(async () => {
    for (const file of samples) {
      const image = await load(file);
      found.set(file, { image, faces: await detector.detect(image) });
    }
  });

  it.each(samples)('finds the 3–5 people of %s with boxes, landmarks and descriptors in range', (file) => {
    const entry = found.get(file);
    if (!entry) throw new Error(`no result for ${file}`);
    const { image, faces } = entry;
    // Every demo photo shows 3–5 people facing the camera; allow one miss or one extra.
    expect(faces.length).toBeGreaterThanOrEqual(2);
    expect(faces.length).toBeLessThanOrEqual(6);
    for (let i = 0; i < faces.length; i++) {
      const f = faces[i]!;
      if (i > 0) expect(f.score).toBeLessThanOrEqual(faces[i - 1]!.score);
      expect(f.score).toBeGreaterThanOrEqual(0.5);
      expect(f.score).toBeLessThanOrEqual(1);
      expect(inside(f.box, image.width, image.height)).toBe(true);
      // Faces in these photos are 150–300 px wide in a 1920 px frame.
      expect(f.box.width).toBeGreaterThan(50);
      expect(f.landmarks).toHaveLength(68);
      // The detector box runs roughly brows to chin; landmarks stay within a quarter box around it.
      const mx = f.box.width * 0.25;
      const my = f.box.height * 0.25;
      for (const p of f.landmarks) {
        expect(p.x).toBeGreaterThanOrEqual(f.box.x - mx);
        expect(p.x).toBeLessThanOrEqual(f.box.x + f.box.width + mx);
        expect(p.y).toBeGreaterThanOrEqual(f.box.y - my);
        expect(p.y).toBeLessThanOrEqual(f.box.y + f.box.height + my);
      }
      // iBUG layout sanity: the left-eye points (36–41) are left of the right-eye points (42–47)
      // in image coordinates, and the nose tip (30) lies between the eyes and the mouth (48–67).
      const avg = (from: number, to: number) => {
        const pts = f.landmarks.slice(from, to + 1);
        return { x: pts.reduce((s, p) => s + p.x, 0) / pts.length, y: pts.reduce((s, p) => s + p.y, 0) / pts.length };
      };
      const eyeL = avg(36, 41);
      const eyeR = avg(42, 47);
      const mouth = avg(48, 67);
      const nose = f.landmarks[30]!;
      expect(eyeL.x).toBeLessThan(eyeR.x);
      expect(nose.y).toBeGreaterThan(Math.min(eyeL.y, eyeR.y));
      expect(nose.y).toBeLessThan(mouth.y);
      expect(f.descriptor).toBeInstanceOf(Float32Array);
      expect(f.descriptor).toHaveLength(128);
      expect(f.descriptor.every(Number.isFinite)).toBe(true);
      // The recogniser's descriptors are NOT unit vectors: their length measured 1.41–1.51 on these
      // photos. A zeroed or exploded vector (a broken weight load) falls far outside [1, 2].
      expect(norm(f.descriptor)).toBeGreaterThan(1);
      expect(norm(f.descriptor)).toBeLessThan(2);
    }
  });

  it('gives different people in one photo clearly different descriptors', () => {
    const { faces } = found.get(samples[4]!)!;
    for (let i = 0; i < faces.length; i++) {
      for (let j = i + 1; j < faces.length; j++) {
        let s = 0;
        for (let k = 0; k < 128; k++) s += (faces[i]!.descriptor[k]! - faces[j]!.descriptor[k]!) ** 2;
        expect(Math.sqrt(s)).toBeGreaterThan(0.45);
      }
    }
  });

  it('maps boxes and landmarks back to source pixels: a 2× copy gives 2× coordinates', async () => {
    // 900 px wide is below the detection size, so it is detected as is; its 2× copy (1800 px) is
    // downscaled to 1024 inside the detector and must come back in its own, doubled, pixels.
    const small = await load(samples[0]!, 900);
    const big = await scale(small, 2);
    const a = await detector.detect(small);
    const b = await detector.detect(big);
    expect(a.length).toBeGreaterThanOrEqual(2);
    expect(b.length).toBe(a.length);
    for (const fa of a) {
      const ca = centre(fa.box);
      // Match by centre, not by rank: near-equal scores may swap order between the two sizes.
      const fb = b.reduce((best, f) => {
        const d = (g: DetectedFace) => Math.hypot(centre(g.box).x - 2 * ca.x, centre(g.box).y - 2 * ca.y);
        return d(f) < d(best) ? f : best;
      });
      const tol = 0.06 * 2 * fa.box.width + 4;
      expect(Math.abs(fb.box.x - 2 * fa.box.x)).toBeLessThan(tol);
      expect(Math.abs(fb.box.y - 2 * fa.box.y)).toBeLessThan(tol);
      expect(Math.abs(fb.box.width - 2 * fa.box.width)).toBeLessThan(tol);
      expect(Math.abs(fb.box.height - 2 * fa.box.height)).toBeLessThan(tol);
      for (let k = 0; k < 68; k++) {
        const pa = fa.landmarks[k]!;
        const pb = fb.landmarks[k]!;
        expect(Math.hypot(pb.x - 2 * pa.x, pb.y - 2 * pa.y)).toBeLessThan(tol);
      }
    }
  });
});

describe('createFaceDetector on close-ups', () => {
  it('finds a face that fills the frame, in source pixels', async () => {
    // SSD MobileNet v1 misses faces filling most of the frame; the detector retries inside a grey
    // border. Cut a tight close-up of one face out of a group photo and find it again.
    const file = path.join(demoDir, 'sample5.jpg');
    const group = await load(file);
    const groupFaces = await detector.detect(group);
    const target = groupFaces[0]!;
    const m = target.box.width * 0.2;
    const left = Math.round(Math.max(0, target.box.x - m));
    const top = Math.round(Math.max(0, target.box.y - m));
    const width = Math.round(Math.min(group.width, target.box.x + target.box.width + m)) - left;
    const height = Math.round(Math.min(group.height, target.box.y + target.box.height + m)) - top;
    const { data, info } = await sharp(file).extract({ left, top, width, height }).raw().toBuffer({ resolveWithObject: true });
    const closeUp: RawImage = { data, width: info.width, height: info.height, channels: 3 };
    const faces = await detector.detect(closeUp);
    expect(faces).toHaveLength(1);
    const f = faces[0]!;
    // The face covers most of the close-up ...
    expect(f.box.width).toBeGreaterThan(closeUp.width * 0.5);
    expect(inside(f.box, closeUp.width, closeUp.height)).toBe(true);
    // ... and sits where it was in the group photo, shifted by the cut.
    const tol = 0.15 * target.box.width;
    expect(Math.abs(centre(f.box).x - (centre(target.box).x - left))).toBeLessThan(tol);
    expect(Math.abs(centre(f.box).y - (centre(target.box).y - top))).toBeLessThan(tol);
    const nose = f.landmarks[30]!;
    const groupNose = target.landmarks[30]!;
    expect(Math.hypot(nose.x - (groupNose.x - left), nose.y - (groupNose.y - top))).toBeLessThan(tol);
  });
});

describe('createFaceDetector on images without faces', () => {
  it('finds nothing in a plain grey image and in a smooth gradient', async () => {
    expect(await detector.detect(plain(640, 480, [128, 128, 128]))).toEqual([]);
    const g = plain(1200, 800, [0, 0, 0]);
    for (let y = 0; y < g.height; y++) {
      for (let x = 0; x < g.width; x++) {
        const i = (y * g.width + x) * 3;
        g.data[i] = Math.round((255 * x) / g.width);
        g.data[i + 1] = Math.round((255 * y) / g.height);
        g.data[i + 2] = 90;
      }
    }
    expect(await detector.detect(g)).toEqual([]);
  });

  it('handles a tiny image without throwing', async () => {
    expect(await detector.detect(plain(3, 2, [10, 200, 30]))).toEqual([]);
  });

  it.skipIf(!hasShared)('finds no face on the backpack photos', async () => {
    for (const name of ['00.jpg', '01.jpg', '02.jpg']) {
      const faces = await detector.detect(await load(path.join(photosDir, 'backpack', name)));
      expect(faces, `backpack/${name}`).toEqual([]);
    }
  });
});

describe.skipIf(!hasShared)('createFaceDetector on the shared real photos', () => {
  it('finds exactly one face in each portrait of person-a and person-b', async () => {
    const files = ['person-a/01.jpg', 'person-a/02.jpg', 'person-a/03.jpg', 'person-b/01.jpg'];
    for (const name of files) {
      const image = await load(path.join(photosDir, name));
      const t0 = performance.now();
      const faces = await detector.detect(image);
      console.log(`faces.test: ${name} ${image.width}×${image.height}: ${faces.length} face(s) in ${Math.round(performance.now() - t0)} ms`);
      expect(faces, name).toHaveLength(1);
      // A portrait: the face is a sizeable part of the frame.
      expect(faces[0]!.box.width).toBeGreaterThan(image.width * 0.1);
    }
  });
});

describe('FaceDetector resources and errors', () => {
  it('leaves no tensor behind across many photos', async () => {
    const image = await load(path.join(demoDir, 'sample2.jpg'), 1000);
    await detector.detect(image);
    const before = tfjs.memory().numTensors;
    for (let i = 0; i < 4; i++) await detector.detect(image);
    await detector.detect(plain(300, 300, [0, 0, 0]));
    expect(tfjs.memory().numTensors).toBe(before);
  });

  it('serialises concurrent calls and gives each its own result', async () => {
    const a = await load(path.join(demoDir, 'sample1.jpg'), 800);
    const blank = plain(800, 600, [200, 200, 200]);
    const [ra, rb, rc] = await Promise.all([detector.detect(a), detector.detect(blank), detector.detect(a)]);
    expect(ra.length).toBeGreaterThan(0);
    expect(rb).toEqual([]);
    expect(rc.map((f) => f.box)).toEqual(ra.map((f) => f.box));
  });

  it('rejects malformed pixels with INVALID_ARGUMENT naming the sizes', async () => {
    const bad: RawImage = { data: Buffer.alloc(10), width: 4, height: 4, channels: 3 };
    const err: unknown = await detector.detect(bad).catch((e: unknown) => e);
    expect(isBoothError(err, 'INVALID_ARGUMENT')).toBe(true);
    expect(String(err)).toMatch(/48 bytes; got 10/);
  });

  it('rejects bad options, naming the option and value', async () => {
    await expect(createFaceDetector({ minScore: 0 })).rejects.toThrow(/minScore.*0/);
    await expect(createFaceDetector({ maxInputSide: 64 })).rejects.toThrow(/maxInputSide.*64/);
  });

  it('reports a missing model folder as FACE_MODEL and leaks no weights', async () => {
    const before = tfjs.memory().numTensors;
    const err: unknown = await createFaceDetector({ modelDir: '/nonexistent/face-models' }).catch((e: unknown) => e);
    expect(isBoothError(err, 'FACE_MODEL')).toBe(true);
    expect(String(err)).toMatch(/\/nonexistent\/face-models/);
    expect(tfjs.memory().numTensors).toBe(before);
  });

  it('answers the calls made before dispose, refuses later ones, then frees its weights', async () => {
    const before = tfjs.memory().numTensors;
    const d = await createFaceDetector();
    const image = await load(path.join(demoDir, 'sample1.jpg'), 800);
    const first = d.detect(image);
    const second = d.detect(image);
    d.dispose();
    const late: unknown = await d.detect(image).catch((e: unknown) => e);
    expect(isBoothError(late, 'FACE_MODEL')).toBe(true);
    expect(tfjs.memory().numTensors).toBeGreaterThan(before);
    expect((await first).length).toBeGreaterThan(0);
    expect((await second).length).toBe((await first).length);
    expect(tfjs.memory().numTensors).toBe(before);
  });

  it('throws FACE_MODEL after dispose, and dispose frees its weights', async () => {
    const before = tfjs.memory().numTensors;
    const d = await createFaceDetector();
    expect(tfjs.memory().numTensors).toBeGreaterThan(before);
    d.dispose();
    d.dispose();
    expect(tfjs.memory().numTensors).toBe(before);
    const err: unknown = await d.detect(plain(10, 10, [0, 0, 0])).catch((e: unknown) => e);
    expect(isBoothError(err, 'FACE_MODEL')).toBe(true);
  });
});
