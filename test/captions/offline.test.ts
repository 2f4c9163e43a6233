/**
 * The offline captioner: pose geometry on synthetic landmarks, then for real on the photos in
 * ../shared/data/photos (skipped with a printed reason when absent) and face-api's own demo
 * group photos: every accepted photo gets a caption with the subject exactly once, worded from
 * the measured framing, expression and head pose; `prepare` run again keeps offline and hand
 * captions, and the dataset `.txt` always matches the manifest.
 */
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore, readJson } from '../../src/storage/index.js';
import type { ObjectStore } from '../../src/storage/types.js';
import { SessionStore, sessionKeys } from '../../src/sessions/store.js';
import { addPhotos } from '../../src/sessions/intake.js';
import type { Subject } from '../../src/sessions/manifest.js';
import { prepareSession } from '../../src/preprocess/pipeline.js';
import type { Analysis } from '../../src/preprocess/analyse.js';
import { createFaceDetector, type FaceDetector } from '../../src/preprocess/faces.js';
import type { Framing, Point } from '../../src/preprocess/types.js';
import { createOfflineCaptioner, headPose, readFacts, wordReading } from '../../src/captions/offline.js';
import { captionSession, setHandCaption } from '../../src/captions/session.js';

const root = path.resolve('.');
const demo = path.join(root, 'node_modules/@vladmandic/face-api/demo');
const shared = path.join(root, '../shared/data/photos');
const haveShared = existsSync(shared);
if (!haveShared) console.warn(`skipping offline captions of ../shared photos: ${shared} is absent (face-api's demo photos still run)`);
const photosIn = (d: string) => readdirSync(path.join(shared, d)).sort().map((f) => path.join(shared, d, f));

/** A frontal 68-point face: jaw 0–16 from x=0 to x=100, eyes at y=40, nose tip (30) at y=60, mouth at y=80. */
function face(noseX = 50): Point[] {
  const pts: Point[] = Array.from({ length: 68 }, () => ({ x: 50, y: 50 }));
  for (let i = 0; i <= 16; i++) pts[i] = { x: (i / 16) * 100, y: 40 + Math.sin((i / 16) * Math.PI) * 50 };
  for (let i = 36; i <= 41; i++) pts[i] = { x: 30 + (i - 36), y: 40 };
  for (let i = 42; i <= 47; i++) pts[i] = { x: 65 + (i - 42), y: 40 };
  for (let i = 48; i <= 67; i++) pts[i] = { x: 40 + (i - 48), y: 80 };
  pts[30] = { x: noseX, y: 60 };
  return pts;
}

describe('offline captioner geometry', () => {
  it('reads yaw, pitch and roll from landmarks', () => {
    const frontal = headPose(face())!;
    expect(frontal.yaw).toBeCloseTo(0.5, 5);
    expect(frontal.roll).toBeCloseTo(0, 5);
    expect(headPose(face(80))!.yaw).toBeCloseTo(0.8, 5);
    // Rotating the whole face leaves yaw alone and shows up as roll.
    const a = (30 * Math.PI) / 180;
    const rotated = face(80).map((p) => ({ x: p.x * Math.cos(a) - p.y * Math.sin(a), y: p.x * Math.sin(a) + p.y * Math.cos(a) }));
    expect(headPose(rotated)!.yaw).toBeCloseTo(0.8, 5);
    expect(headPose(rotated)!.roll).toBeCloseTo(30, 5);
    expect(headPose([])).toBeNull();
  });

  it('words a reading as a sentence or as tags', () => {
    const base = { source: { width: 1000, height: 1000 }, crop: { x: 0, y: 0, width: 400, height: 400 }, framing: 'face' as Framing, head: { x: 100, y: 50, width: 250, height: 300 }, otherFacesInCrop: 0 };
    const happy = { neutral: 0.01, happy: 0.97, sad: 0, angry: 0, fearful: 0, disgusted: 0.01, surprised: 0.01 };
    const r = readFacts({ ...base, face: { box: { x: 0, y: 0, width: 100, height: 100 }, landmarks: face(), expressions: happy } }, 'person');
    expect(wordReading(r, false)).toBe('a close-up photo of <subject>, smiling, looking at the camera');
    expect(wordReading(r, true)).toBe('<subject>, close-up, smile, looking at viewer');
    const turned = readFacts({ ...base, head: { x: 0, y: 0, width: 100, height: 120 }, otherFacesInCrop: 1, face: { box: { x: 0, y: 0, width: 100, height: 100 }, landmarks: face(95), expressions: null } }, 'person');
    expect(wordReading(turned, false)).toBe('an upper body photo of <subject>, in profile, looking to the side');
    expect(turned.flags).toEqual(['multiple-people']);
    const object = readFacts({ ...base, face: null, head: null }, 'object');
    expect(wordReading(object, false)).toBe('a close-up photo of <subject>');
  });
});

describe('offline captions on real photos', { timeout: 180_000 }, () => {
  let dir: string;
  let store: ObjectStore;
  let sessions: SessionStore;
  let detector: FaceDetector;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'booth-captions-offline-'));
    store = await openStore(`file://${dir}`);
    sessions = new SessionStore(store);
    detector = await createFaceDetector();
  });
  afterAll(async () => {
    detector.dispose();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function captioned(name: string, subject: Subject, files: string[], settings: { identity?: 'auto' | 'off'; framing?: Framing } = {}, style = { name: 'natural', tags: false }) {
    await sessions.create({ name, subject, base: 'sd15', settings });
    await addPhotos(sessions, name, files);
    await prepareSession(sessions, name, { detector });
    const report = await captionSession(sessions, name, { captioner: createOfflineCaptioner({ style }), review: false });
    const m = await sessions.get(name);
    const accepted = m.photos.filter((p) => p.status === 'accepted');
    expect(accepted.length).toBeGreaterThan(0);
    expect(report.counts.failed).toBe(0);
    const phrase = `${subject.trigger} ${subject.classNoun}`;
    for (const p of accepted) {
      expect(p.captionSource, p.name).toBe('offline');
      expect(p.caption!.split(phrase).length - 1, `${p.name}: ${p.caption}`).toBe(1);
      const txt = await readFile(path.join(dir, p.datasetKey!.replace(/\.png$/, '.txt')), 'utf8');
      expect(txt).toBe(`${p.caption}\n`);
      console.log(`${name}/${p.name}: ${p.caption}`);
    }
    return { m, accepted };
  }

  /** The subject face's top expression as measured, when confident. */
  async function topExpression(session: string, sha256: string, index: number): Promise<string | null> {
    const a = (await readJson(store, sessionKeys(session).analysis(sha256))) as Analysis;
    const e = a.faces[index]?.expressions;
    if (!e) return null;
    const [k, v] = Object.entries(e).sort((x, y) => y[1] - x[1])[0]!;
    return v >= 0.5 ? k : null;
  }

  it("face-api's demo group photos (identity off): subject, framing and the measured expression", async () => {
    const files = readdirSync(demo).filter((f) => /^sample\d\.jpg$/.test(f)).map((f) => path.join(demo, f));
    const { accepted } = await captioned('demo', { trigger: 'sks', classNoun: 'person', kind: 'person' }, files, { identity: 'off', framing: 'head-and-shoulders' });
    let smiles = 0;
    for (const p of accepted) {
      expect(p.caption).toMatch(/^(a close-up |a portrait |an upper body |a )photo of sks person/);
      const top = await topExpression('demo', p.sha256, p.faces.findIndex((f) => f.subject));
      if (top === 'happy') {
        expect(p.caption, p.name).toContain('smiling');
        smiles++;
      }
      if (top === null) expect(p.caption).not.toMatch(/smiling|frowning|neutral expression/);
    }
    // The demo photos are of people laughing together.
    expect(smiles).toBeGreaterThan(0);
  });

  it.skipIf(!haveShared)('person-a: close-ups with expression and pose; prepare again keeps offline and hand captions', async () => {
    const { m } = await captioned('pa', { trigger: 'ohwx', classNoun: 'man', kind: 'person' }, photosIn('person-a'));
    const first = m.photos.find((p) => p.name === '01.jpg')!;
    // 01.jpg is a frontal, broadly smiling portrait.
    expect(first.caption).toBe('a close-up photo of ohwx man, smiling, looking at the camera');
    await setHandCaption(sessions, 'pa', '02.jpg', 'a photo of ohwx man at a press conference', { review: false });
    await prepareSession(sessions, 'pa', { detector });
    const again = await sessions.get('pa');
    for (const p of again.photos.filter((q) => q.status === 'accepted')) {
      const before = m.photos.find((q) => q.sha256 === p.sha256)!;
      if (p.name === '02.jpg') expect([p.caption, p.captionSource]).toEqual(['a photo of ohwx man at a press conference', 'hand']);
      else expect([p.caption, p.captionSource]).toEqual([before.caption, 'offline']);
      const txt = await readFile(path.join(dir, p.datasetKey!.replace(/\.png$/, '.txt')), 'utf8');
      expect(txt).toBe(`${p.caption}\n`);
    }
    // Nothing changed, so a second run leaves everything as it is.
    const rerun = await captionSession(sessions, 'pa', { captioner: createOfflineCaptioner(), review: false });
    expect(rerun.counts).toMatchObject({ captioned: 0, hand: 1, unchanged: 2 });
  });

  it.skipIf(!haveShared)('objects get the framing only', async () => {
    const { accepted } = await captioned('dog', { trigger: 'zwx', classNoun: 'dog', kind: 'object' }, photosIn('dog'), {}, { name: 'tags', tags: true });
    for (const p of accepted) expect(p.caption).toMatch(/^zwx dog(, close-up)?$/);
  });
});
