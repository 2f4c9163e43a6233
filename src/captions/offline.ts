/**
 * The offline captioner: no network, no key, no cost. It fills a caption from what `prepare`
 * already measured — the framing from the head/crop geometry (close-up, portrait, upper body),
 * the expression from face-api's expression net, and the head turn and gaze from the 68
 * landmarks — e.g. `a close-up photo of ohwx man, smiling, looking at the camera`. Objects and
 * styles get the framing only. It is the default when no `OPENAI_API_KEY` is set.
 *
 * Gaze is read from the head pose: the landmarks have no iris points, so "looking at the camera"
 * means "facing the camera, head level"; a person facing the lens with eyes turned away is
 * described as looking at the camera.
 */
import { BoothError } from '../errors.js';
import type { Expression } from '../preprocess/faces.js';
import type { Point, Rect } from '../preprocess/types.js';
import { SUBJECT_PLACEHOLDER, insertSubject } from './subject.js';
import type { CaptionFlag, CaptionInput, CaptionResult, Captioner, PhotoFacts } from './types.js';

/** Bump when the wording or thresholds change, so `booth caption` redoes offline captions. */
export const OFFLINE_VERSION = 1;

/**
 * Shot names by the estimated head's height over the crop side. `prepare`'s framings put the
 * estimate at 0.75 (`face`), 0.50 (`head-and-shoulders`) and 0.34 (`upper-body`) of the side
 * (see `preprocess/crop.ts`); the cut-offs sit between them, and anything smaller is a wide shot.
 */
export const SHOT_THRESHOLDS = { closeUp: 0.62, portrait: 0.42, upperBody: 0.24 } as const;

/**
 * Head turn (yaw) from where the nose tip sits between the jaw ends, 0.5 being frontal, after
 * undoing the roll. Up to 0.10 off centre reads as facing the camera, up to 0.25 as a
 * three-quarter view, beyond as a profile.
 */
export const YAW_THRESHOLDS = { frontal: 0.1, threeQuarter: 0.25 } as const;

/**
 * Nod (pitch) from the nose tip's height between the eye line (0) and the mouth (1). Level faces
 * in face-api's demo and the person photos measure 0.55–0.72; below 0.42 the face is tilted
 * back (looking up), above 0.82 it nods down.
 */
export const PITCH_THRESHOLDS = { up: 0.42, down: 0.82 } as const;

/** Roll (eye line angle) past which the head is described as tilted, degrees. */
export const TILT_DEGREES = 15;

/** An expression must have at least this probability to be named. */
export const EXPRESSION_MIN = 0.5;

const EXPRESSION_WORDS: Record<Expression, { natural: string; tag: string }> = {
  neutral: { natural: 'with a neutral expression', tag: 'neutral expression' },
  happy: { natural: 'smiling', tag: 'smile' },
  sad: { natural: 'looking sad', tag: 'sad' },
  angry: { natural: 'frowning', tag: 'frown' },
  fearful: { natural: 'looking scared', tag: 'scared' },
  disgusted: { natural: 'grimacing', tag: 'grimace' },
  surprised: { natural: 'looking surprised', tag: 'surprised' },
};

/** The head pose read from 68 landmarks. */
export interface HeadPose {
  /** Nose tip between the jaw ends after undoing roll: 0.5 frontal, towards 0 or 1 turned. */
  yaw: number;
  /** Nose tip between eye line (0) and mouth (1). */
  pitch: number;
  /** Eye line angle, degrees, positive clockwise in image coordinates. */
  roll: number;
}

const mean = (pts: Point[]): Point => ({ x: pts.reduce((s, p) => s + p.x, 0) / pts.length, y: pts.reduce((s, p) => s + p.y, 0) / pts.length });

/**
 * Read the head pose from face-api's 68 landmarks (iBUG-300W order: jaw 0–16, nose tip 30,
 * eyes 36–41 and 42–47, mouth 48–67).
 * @returns the pose, or null when the landmarks are not 68 points or degenerate
 */
export function headPose(landmarks: Point[]): HeadPose | null {
  if (landmarks.length !== 68) return null;
  const eyeL = mean(landmarks.slice(36, 42));
  const eyeR = mean(landmarks.slice(42, 48));
  const mouth = mean(landmarks.slice(48, 68));
  const nose = landmarks[30] as Point;
  const jawL = landmarks[0] as Point;
  const jawR = landmarks[16] as Point;
  const roll = Math.atan2(eyeR.y - eyeL.y, eyeR.x - eyeL.x);
  const origin = { x: (eyeL.x + eyeR.x) / 2, y: (eyeL.y + eyeR.y) / 2 };
  // Undo the roll so that "left/right" and "up/down" are the face's own axes.
  const c = Math.cos(-roll);
  const s = Math.sin(-roll);
  const level = (p: Point): Point => ({ x: (p.x - origin.x) * c - (p.y - origin.y) * s, y: (p.x - origin.x) * s + (p.y - origin.y) * c });
  const [n, jl, jr, m] = [level(nose), level(jawL), level(jawR), level(mouth)];
  const span = jr.x - jl.x;
  if (!(Math.abs(span) > 1e-6) || !(m.y > 1e-6)) return null;
  return { yaw: (n.x - jl.x) / span, pitch: n.y / m.y, roll: (roll * 180) / Math.PI };
}

/** The shot name of a framing: head height over crop side, see {@link SHOT_THRESHOLDS}. */
export function shotFor(head: Rect, crop: Rect): 'close-up' | 'portrait' | 'upper body' | null {
  const share = head.height / crop.height;
  if (share >= SHOT_THRESHOLDS.closeUp) return 'close-up';
  if (share >= SHOT_THRESHOLDS.portrait) return 'portrait';
  if (share >= SHOT_THRESHOLDS.upperBody) return 'upper body';
  return null;
}

/** What the offline captioner reads off one photo's facts, before wording. */
export interface OfflineReading {
  shot: 'close-up' | 'portrait' | 'upper body' | null;
  expression: Expression | null;
  pose: HeadPose | null;
  turn: 'frontal' | 'three-quarter' | 'profile' | null;
  nod: 'level' | 'up' | 'down' | null;
  tilted: boolean;
  flags: CaptionFlag[];
}

/**
 * Interpret a photo's measurements.
 * @param facts - what prepare measured
 * @param kind - the session's subject kind (objects and styles: framing only)
 */
export function readFacts(facts: PhotoFacts, kind: 'person' | 'object' | 'style'): OfflineReading {
  const flags: CaptionFlag[] = facts.otherFacesInCrop > 0 ? ['multiple-people'] : [];
  if (kind !== 'person' || !facts.face || !facts.head) {
    // Framing only: a crop much smaller than the photo is a close look at the object.
    const shot = kind !== 'person' && facts.crop.width < 0.5 * Math.min(facts.source.width, facts.source.height) ? 'close-up' : null;
    return { shot, expression: null, pose: null, turn: null, nod: null, tilted: false, flags };
  }
  const shot = shotFor(facts.head, facts.crop);
  let expression: Expression | null = null;
  if (facts.face.expressions) {
    const top = (Object.entries(facts.face.expressions) as Array<[Expression, number]>).sort((a, b) => b[1] - a[1])[0];
    if (top && top[1] >= EXPRESSION_MIN) expression = top[0];
  }
  const pose = headPose(facts.face.landmarks);
  let turn: OfflineReading['turn'] = null;
  let nod: OfflineReading['nod'] = null;
  let tilted = false;
  if (pose) {
    const off = Math.abs(pose.yaw - 0.5);
    turn = off <= YAW_THRESHOLDS.frontal ? 'frontal' : off <= YAW_THRESHOLDS.threeQuarter ? 'three-quarter' : 'profile';
    nod = pose.pitch < PITCH_THRESHOLDS.up ? 'up' : pose.pitch > PITCH_THRESHOLDS.down ? 'down' : 'level';
    tilted = Math.abs(pose.roll) > TILT_DEGREES;
  }
  return { shot, expression, pose, turn, nod, tilted, flags };
}

/**
 * Word a reading as a caption with the subject placeholder.
 * @param tags - comma-separated tags instead of a sentence
 */
export function wordReading(r: OfflineReading, tags: boolean): string {
  const parts: string[] = [];
  if (tags) {
    parts.push(SUBJECT_PLACEHOLDER);
    if (r.shot) parts.push(r.shot);
    if (r.expression) parts.push(EXPRESSION_WORDS[r.expression].tag);
    if (r.turn === 'profile') parts.push('profile');
    else if (r.turn === 'three-quarter') parts.push('three-quarter view');
    if (r.nod === 'up') parts.push('looking up');
    else if (r.nod === 'down') parts.push('looking down');
    else if (r.turn === 'frontal') parts.push('looking at viewer');
    else if (r.turn) parts.push('looking to the side');
    if (r.tilted) parts.push('head tilt');
    return parts.join(', ');
  }
  const lead = `${r.shot === 'upper body' ? 'an' : 'a'} ${r.shot ? `${r.shot} ` : ''}photo of ${SUBJECT_PLACEHOLDER}`;
  if (r.expression) parts.push(EXPRESSION_WORDS[r.expression].natural);
  if (r.turn === 'profile') parts.push('in profile');
  else if (r.turn === 'three-quarter') parts.push('in three-quarter view');
  if (r.nod === 'up') parts.push('looking up');
  else if (r.nod === 'down') parts.push('looking down');
  else if (r.turn === 'frontal') parts.push('looking at the camera');
  else if (r.turn) parts.push('looking to the side');
  if (r.tilted) parts.push('head tilted');
  return [lead, ...parts].join(', ');
}

/** Options of {@link createOfflineCaptioner}. */
export interface OfflineCaptionerOptions {
  /** `natural` (a sentence) or a tags style (`tags`): any style whose name or description says tags. */
  style?: { name: string; tags: boolean };
}

/**
 * Create the offline captioner.
 * @returns a {@link Captioner} that needs `input.facts`
 * @example
 * const captioner = createOfflineCaptioner({ style: { name: 'natural', tags: false } });
 * const { caption } = await captioner.caption({ name, image, imageSha256, subject, facts });
 */
export function createOfflineCaptioner(options: OfflineCaptionerOptions = {}): Captioner {
  const style = options.style ?? { name: 'natural', tags: false };
  return {
    source: 'offline',
    model: null,
    style: style.name,
    fingerprint: `offline:v${OFFLINE_VERSION}:${style.tags ? 'tags' : 'natural'}`,
    caption(input: CaptionInput): Promise<CaptionResult> {
      if (!input.facts) {
        return Promise.reject(new BoothError('CAPTION_FAILED', `${input.name}: not prepared (no crop measured); run \`booth prepare\` first`));
      }
      const reading = readFacts(input.facts, input.subject.kind);
      const raw = wordReading(reading, style.tags);
      const { caption } = insertSubject(raw, input.subject, input.name);
      return Promise.resolve({ caption, raw, source: 'offline', model: null, flags: reading.flags, usage: null, attempts: 0 });
    },
  };
}
