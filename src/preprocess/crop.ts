/**
 * Square crops for the training set. For a person, {@link planFaceCrop} frames one face so that the
 * WHOLE head (hair to chin, ear to ear) is inside with margin and the face is prominent, at one of
 * three documented framings, keeping the photo's other faces out; the head is estimated by
 * {@link estimateHead} from the 68 landmarks with anthropometric proportions, and from the pixels
 * above the forehead where the hair visibly ends. For objects and photos without a usable face,
 * {@link planSalientCrop} finds the salient subject and keeps it fully in frame;
 * {@link planCenterCrop} is the last resort. {@link renderCrop} cuts and resizes with lanczos3.
 *
 * Plans are data (a rectangle in source pixels and what was achieved), so the prepare step can
 * record, review and re-render them; only the head's hair check, saliency and rendering read
 * pixels. No I/O.
 */
import sharp from 'sharp';
import { BoothError } from '../errors.js';
import { FRAMINGS } from './types.js';
import type { CropPlan, DetectedFace, Framing, Point, RawImage, Rect } from './types.js';

// ---------------------------------------------------------------------------------------------
// Head estimate
// ---------------------------------------------------------------------------------------------

/*
 * Proportions, in units of the interocular distance (IOD, centre of one eye to the other).
 *
 * Anthropometry: adult means from Farkas, "Anthropometry of the Head and Face" (2nd ed., 1994),
 * North American Caucasians, male / female: head height vertex–gnathion (v-gn) 231 / 218 mm,
 * physiognomic face height trichion–gnathion (tr-gn) 187 / 175 mm, head breadth eurion–eurion
 * 151 / 144 mm, head length glabella–opisthocranion 197 / 187 mm; interpupillary distance about
 * 63 / 61 mm (Dodgson, "Variation and extrema of human interpupillary distance", 2004). The eyes
 * sit close to the middle of head height (the artists' canon, and the tables agree). So, bald:
 *   - eye line to chin ≈ 1.8 IOD (measured on face-api landmarks of the 26 faces in the demo and
 *     test photos: median 1.79, range 1.5–2.2; a nod or an open mouth moves it);
 *   - vertex above the eye line ≈ 231 − 113 mm ≈ 1.9 IOD;
 *   - head breadth ≈ 2.4 IOD, ±1.2 from the midline, plus the ears.
 * The often quoted "head ≈ 1.3–1.5 × brow-to-chin" measures to the HAIRLINE (the classical
 * thirds: trichion–glabella = glabella–subnasale = subnasale–menton give 1.5); the vertex is
 * another 4–5 cm up (v-gn − tr-gn = 44 mm): the skull alone is ≈ 1.85 × brow-to-chin.
 *
 * Hair is what the tables leave out, and what a crop must not cut. Measured by eye on the same 26
 * faces in the eye-line frame (grid in IOD): top of the hair 1.5–1.9 IOD above the eyes for short
 * hair, 2.0–2.8 for long, curly or pinned-up hair, up to 3.2 on a face nodding down (the crown
 * turns towards the camera); ears at ±1.45; hair out to ±2.5. The constants below cover the
 * upper end rather than the mean: cutting the hair or the chin is the failure people complain
 * about, a little more background is not.
 */
/** Top of the hair above the eye line, facing the camera. */
const TOP_ABOVE_EYES = 2.7;
/**
 * Nodding down rotates the crown into view. With the skull's centre ≈ 1.3 IOD behind the eyes
 * (half the head length), a nod of angle φ raises the top of the head by ≈ 1.3·sin φ IOD; φ is read
 * from the foreshortened eye-to-chin span (cos φ ≈ measured / 1.8 IOD). A face tilted UP
 * foreshortens the same way; reading it as a nod only makes the estimate taller, which is safe.
 */
const NOD_LIFT = 1.3;
/** Eye-to-chin over its frontal value above which a face is taken as not nodding. */
const NOD_TOLERANCE = 0.85;
/**
 * Height of the jaw contour's top points (landmarks 0 and 16) below the eye line on a level face,
 * and its change per unit sine of pitch, in IOD. Measured on the 26 test faces: +0.00 to +0.08
 * level, −0.27 on the strongest nod (eye-to-chin 1.0 IOD), +0.34 on a face tilted back.
 */
const JAW_TOP_FRONTAL = 0.05;
const JAW_TOP_PER_SIN = 0.6;
/**
 * A face tilted back shows less skull above the eyes: the top of the head drops by ≈ 1.3·sin φ IOD
 * (see NOD_LIFT); only 0.6·sin φ is taken, since the tilt is read less surely than a nod.
 */
const TILT_DROP = 0.6;
/** Below landmark 8 (menton): soft tissue under the landmark, beards, a little air. */
const BELOW_CHIN = 0.25;
/** Half the head's width from the face's midline: ±1.2 IOD skull, plus ears and close hair. */
const HALF_WIDTH = 1.7;
/** Eye line to chin of a frontal adult face with the mouth closed, in IOD (see above). */
const EYE_TO_CHIN = 1.8;
/**
 * Turned faces (yaw) show the back of the skull behind the face: head length exceeds head breadth
 * by ≈ 45 mm, ≈ 0.7 IOD more on the far side in full profile; 0.8 with hair.
 */
const BACK_OF_HEAD = 0.8;

const mean = (points: readonly Point[]): Point => {
  let x = 0;
  let y = 0;
  for (const p of points) {
    x += p.x;
    y += p.y;
  }
  return { x: x / points.length, y: y / points.length };
};

/** A face's landmarks in the eye-line frame: origin between the eyes, u along the eye line, v down the face. */
interface FaceFrame {
  /** Eye-line angle in radians (0 for an upright face, positive when the face is rolled clockwise). */
  roll: number;
  origin: Point;
  /** Landmarks as (u, v). */
  local: Point[];
  /** Interocular distance in pixels. */
  iod: number;
}

function checkFace(face: DetectedFace): void {
  if (face.landmarks.length !== 68) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `face.landmarks must hold the 68 iBUG-300W points, got ${face.landmarks.length}; pass a face from createFaceDetector().detect()`,
    );
  }
  const values = [face.box.x, face.box.y, face.box.width, face.box.height, ...face.landmarks.flatMap((p) => [p.x, p.y])];
  if (!values.every(Number.isFinite)) {
    throw new BoothError('INVALID_ARGUMENT', 'face.box and face.landmarks must be finite numbers (got NaN or Infinity)');
  }
}

function faceFrame(face: DetectedFace): FaceFrame {
  const right = mean(face.landmarks.slice(36, 42)); // subject's right eye, image left when upright
  const left = mean(face.landmarks.slice(42, 48));
  const iod = Math.hypot(left.x - right.x, left.y - right.y);
  const roll = Math.atan2(left.y - right.y, left.x - right.x);
  const origin = { x: (left.x + right.x) / 2, y: (left.y + right.y) / 2 };
  const cos = Math.cos(roll);
  const sin = Math.sin(roll);
  const local = face.landmarks.map((p) => {
    const dx = p.x - origin.x;
    const dy = p.y - origin.y;
    return { x: dx * cos + dy * sin, y: -dx * sin + dy * cos };
  });
  return { roll, origin, local, iod };
}

/** Axis-aligned bounding box, in the image, of a rectangle given in the eye-line frame. */
function frameRectToImage(frame: FaceFrame, u0: number, v0: number, u1: number, v1: number): Rect {
  const cos = Math.cos(frame.roll);
  const sin = Math.sin(frame.roll);
  const corners = [
    [u0, v0],
    [u1, v0],
    [u0, v1],
    [u1, v1],
  ].map(([u = 0, v = 0]) => ({ x: frame.origin.x + u * cos - v * sin, y: frame.origin.y + u * sin + v * cos }));
  return boundsOf(corners);
}

function boundsOf(points: readonly Point[]): Rect {
  let x0 = Infinity;
  let y0 = Infinity;
  let x1 = -Infinity;
  let y1 = -Infinity;
  for (const p of points) {
    x0 = Math.min(x0, p.x);
    y0 = Math.min(y0, p.y);
    x1 = Math.max(x1, p.x);
    y1 = Math.max(y1, p.y);
  }
  return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
}

/** The overlap of two rectangles (empty, with zero size, when they do not meet). */
function intersect(a: Rect, b: Rect): Rect {
  const x = Math.max(a.x, b.x);
  const y = Math.max(a.y, b.y);
  return {
    x,
    y,
    width: Math.max(0, Math.min(a.x + a.width, b.x + b.width) - x),
    height: Math.max(0, Math.min(a.y + a.height, b.y + b.height) - y),
  };
}

function union(a: Rect, b: Rect): Rect {
  const x = Math.min(a.x, b.x);
  const y = Math.min(a.y, b.y);
  return { x, y, width: Math.max(a.x + a.width, b.x + b.width) - x, height: Math.max(a.y + a.height, b.y + b.height) - y };
}

/** Smallest integer rectangle containing `r`. */
function outward(r: Rect): Rect {
  const x = Math.floor(r.x);
  const y = Math.floor(r.y);
  return { x, y, width: Math.ceil(r.x + r.width) - x, height: Math.ceil(r.y + r.height) - y };
}

/** The least the top of the head can be above the eye line: a bald skull tilted back (measured 1.45). */
const SKULL_ABOVE_EYES = 1.5;

/** sRGB byte triplet to CIE L*a*b* (D65): the space where colour distance matches what people see. */
const SRGB_TO_LINEAR = Float32Array.from({ length: 256 }, (_, i) => {
  const c = i / 255;
  return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
});
const labF = (t: number): number => (t > 0.008856 ? Math.cbrt(t) : 7.787 * t + 16 / 116);
function labOf(data: Buffer, offset: number, out: Float32Array, at: number): void {
  const r = SRGB_TO_LINEAR[data[offset] ?? 0] ?? 0;
  const g = SRGB_TO_LINEAR[data[offset + 1] ?? 0] ?? 0;
  const b = SRGB_TO_LINEAR[data[offset + 2] ?? 0] ?? 0;
  const x = labF((0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047);
  const y = labF(0.2126 * r + 0.7152 * g + 0.0722 * b);
  const z = labF((0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883);
  out[at] = 116 * y - 16;
  out[at + 1] = 500 * (x - y);
  out[at + 2] = 200 * (y - z);
}

/**
 * Where the hair visibly ends above the face, in the eye-line frame (v, negative is up), or null
 * when the pixels do not say so clearly.
 *
 * The proportions must assume big hair; on a short-haired head in a tightly framed photo that
 * makes the head look cut by the photo's edge when it is not. So the pixels are asked, and may
 * only LOWER the top, never below the bald skull. Two colour sets are sampled: the head (a strip
 * 1.1–1.5 IOD above the eyes: hair or forehead, always head) and the background (beside the head
 * beyond ears and hair, and above the generous top, where no hair reaches by construction). A
 * strip over the crown is scanned upwards for the first run of rows where every sample looks
 * like background or is far from every head colour; the hair ends below that run. Any doubt
 * returns null and the proportions stand: head colours that look like the background (dark hair
 * on a dark wall, a neighbour's hair beside the head), a run that starts below the skull's top
 * (the colours are fooling the scan), too few background samples, or the photo's edge reached
 * while still on hair.
 */
function hairTopFromPixels(image: RawImage, frame: FaceFrame, scale: number, centreU: number, generousTop: number): number | null {
  const cos = Math.cos(frame.roll);
  const sin = Math.sin(frame.roll);
  const lab = new Float32Array(3);
  const sample = (u: number, v: number): boolean => {
    const x = Math.round(frame.origin.x + u * cos - v * sin);
    const y = Math.round(frame.origin.y + u * sin + v * cos);
    if (x < 0 || y < 0 || x >= image.width || y >= image.height) return false;
    labOf(image.data, (y * image.width + x) * 3, lab, 0);
    return true;
  };
  const collect = (into: number[], u: number, v: number): boolean => {
    if (!sample(u, v)) return false;
    into.push(lab[0] ?? 0, lab[1] ?? 0, lab[2] ?? 0);
    return true;
  };
  const nearest = (set: readonly number[]): number => {
    let best = Infinity;
    for (let k = 0; k < set.length; k += 3) {
      const dl = (lab[0] ?? 0) - (set[k] ?? 0);
      const da = (lab[1] ?? 0) - (set[k + 1] ?? 0);
      const db = (lab[2] ?? 0) - (set[k + 2] ?? 0);
      best = Math.min(best, dl * dl + da * da + db * db);
    }
    return Math.sqrt(best);
  };
  const across = (i: number, n: number): number => centreU + (i / (n - 1) - 0.5) * STRIP_WIDTH * scale;

  const background: number[] = [];
  for (const side of [-1, 1]) {
    for (let du = 2.4; du <= 3.21; du += 0.2) {
      for (let dv = -3.4; dv <= -0.79; dv += 0.2) collect(background, centreU + side * du * scale, dv * scale);
    }
  }
  for (let i = 0; i < 23; i++) {
    for (const dv of [0.2, 0.4, 0.6]) collect(background, centreU + (i / 22 - 0.5) * 4.4 * scale, generousTop - dv * scale);
  }
  if (background.length / 3 < 20) return null;

  const head: number[] = [];
  for (let v = -1.1; v >= -SKULL_ABOVE_EYES - 0.01; v -= 0.1) {
    for (let i = 0; i < 9; i++) if (!collect(head, across(i, 9), v * scale)) return null;
  }
  let headLikeBackground = 0;
  for (let k = 0; k < head.length; k += 3) {
    lab.set(head.slice(k, k + 3));
    if (nearest(background) < BACKGROUND_DELTA_E) headLikeBackground++;
  }
  if (headLikeBackground > 0.3 * (head.length / 3)) return null;

  // Rows over the crown, from the forehead up: is every sample of the row off the head?
  const step = scale / 20;
  const run = 5; // a quarter IOD
  let clean = 0;
  const start = -SKULL_ABOVE_EYES * scale - step;
  for (let row = 0; ; row++) {
    const v = start - row * step;
    if (v < generousTop) return null;
    let inside = 0;
    let off = 0;
    for (let i = 0; i < 9; i++) {
      if (!sample(across(i, 9), v)) continue;
      inside++;
      if (nearest(background) < BACKGROUND_DELTA_E || nearest(head) > FAR_FROM_HEAD_DELTA_E) off++;
    }
    if (inside < 7) {
      // The photo's edge: the hair ended inside it only if clean rows were already running.
      return clean >= run / 2 ? start - (row - clean) * step - HAIR_MARGIN * scale : null;
    }
    clean = off === inside ? clean + 1 : 0;
    if (clean >= run) return start - (row - clean + 1) * step - HAIR_MARGIN * scale;
  }
}

/** Width of the strip scanned over the crown, in IOD: the middle of the skull. */
const STRIP_WIDTH = 1.2;
/** Colour distance (CIE76 ΔE) under which a pixel counts as the sampled background. */
const BACKGROUND_DELTA_E = 12;
/** Colour distance beyond which a pixel is nothing like the head's hair or skin. */
const FAR_FROM_HEAD_DELTA_E = 28;
/** Kept above the visible end of the hair: wisps, antialiasing, the sampling step. */
const HAIR_MARGIN = 0.2;

/**
 * Estimate the whole head — top of the hair to below the chin, ear to ear — from a detected face.
 *
 * face-api's SSD box covers roughly brows to chin, so the skull and hair are extrapolated from the
 * landmarks with adult anthropometric proportions (Farkas 1994; see the constants in this module)
 * and hair measured on real photos: the top of the hair 2.7 interocular distances (IOD) above the
 * eye line (up to 1.3 IOD more for a face nodding down, up to 0.6 less for one tilted back),
 * half-width 1.7 IOD, and 0.25 IOD below the chin. The scale is the larger of the IOD (which
 * shrinks when the head turns) and the eye-to-chin span / 1.8 with part of any open-mouth gap
 * removed (which shrinks when it nods), so a turned or nodding head is not underestimated. A
 * turned head is widened on the side away from the nose (the back of the skull). Rolled heads are
 * handled by working in the eye-line frame and returning the axis-aligned bounding box; the
 * detector box is included as well.
 *
 * The estimate is generous on purpose (on short hair the top lies ≈ 1 IOD above the hair). Given
 * the pixels, it looks above the forehead for where the hair visibly ends against the background
 * and lowers the top to just above it — never below the bald skull, and not at all when hair and
 * background cannot be told apart.
 *
 * @param face - a detected face with its 68 landmarks, in source pixels
 * @param image - optional: the photo the face was found in, to see where the hair ends
 * @returns the head's bounding box in source pixels (integer; may reach beyond the photo)
 * @throws {BoothError} `INVALID_ARGUMENT` when the face does not carry 68 finite landmarks, or
 *   `image` is not `width × height × 3` bytes
 * @example
 * const [face] = await detector.detect(photo.image);
 * const head = estimateHead(face, photo.image); // { x, y, width, height } hair to chin
 */
export function estimateHead(face: DetectedFace, image?: RawImage): Rect {
  checkFace(face);
  if (image !== undefined) checkImage(image);
  return headModel(face, image).head;
}

/**
 * The generous head a crop must hold, and the core that surely exists: the landmarks, the bald
 * skull's top 1.5 IOD above the eyes, the chin. A photo that cuts the core cuts the head; one
 * that only cuts the generous margin beyond the core may or may not, and is given the benefit.
 */
interface HeadModel {
  head: Rect;
  core: Rect;
}

function headModel(face: DetectedFace, image?: RawImage): HeadModel {
  const frame = faceFrame(face);
  const at = (i: number): Point => frame.local[i] ?? { x: 0, y: 0 };
  const jaw = frame.local.slice(0, 17);
  const jawLeft = Math.min(...jaw.map((p) => p.x));
  const jawRight = Math.max(...jaw.map((p) => p.x));
  const chin = Math.max(...frame.local.slice(6, 11).map((p) => p.y));

  // Scale: turning the head shrinks the IOD, nodding shrinks eye-to-chin; the larger of the two is
  // the least foreshortened. An open mouth drops the jaw by part of the inner-lip gap (62 → 66);
  // half, because a broad smile parts the lips with the jaw barely moving.
  const mouthGap = Math.max(0, at(66).y - at(62).y);
  const eyeToChin = Math.max(0, chin - 0.5 * mouthGap);
  // The detector box (≈ 2.9–3.5 IOD tall, measured) keeps the scale sane when landmarks collapse.
  const scale = Math.max(frame.iod, eyeToChin / EYE_TO_CHIN, face.box.height / 3.5, 1e-6);
  // Faces vary by ±15 % in eye-to-chin (measured 1.5–2.2 IOD), so only foreshortening beyond that
  // is read as pitch. Foreshortening does not tell a nod from a tilt back; the jaw contour's top
  // points (0, 16), near the ears and so behind the face, do: a nod lifts them towards the eye
  // line, a tilt back drops them.
  const cosPitch = Math.min(1, eyeToChin / (EYE_TO_CHIN * NOD_TOLERANCE * scale));
  const foreshortened = Math.sqrt(1 - cosPitch * cosPitch);
  const jawTop = (at(0).y + at(16).y) / 2 / scale;
  const pitch = Math.max(-1, Math.min(1, (JAW_TOP_FRONTAL - jawTop) / JAW_TOP_PER_SIN));
  const nod = pitch < -0.15 ? 0 : Math.max(foreshortened, pitch);
  const tiltBack = Math.max(0, -pitch);

  // Yaw from where the nose tip sits between the jaw edges: −1 facing image-left, +1 image-right.
  const mid = (jawLeft + jawRight) / 2;
  const halfSpan = Math.max((jawRight - jawLeft) / 2, 1e-6);
  const yaw = Math.max(-1, Math.min(1, (at(30).x - mid) / halfSpan));
  const back = Math.abs(yaw) * BACK_OF_HEAD * scale;
  let u0 = mid - HALF_WIDTH * scale;
  let u1 = mid + HALF_WIDTH * scale;
  if (yaw > 0) u0 -= back;
  else u1 += back;
  // The landmarks themselves are always inside, whatever the proportions say.
  u0 = Math.min(u0, jawLeft - 0.1 * scale);
  u1 = Math.max(u1, jawRight + 0.1 * scale);
  const browTop = Math.min(...frame.local.slice(17, 27).map((p) => p.y));
  let v0 = Math.min(-(TOP_ABOVE_EYES + NOD_LIFT * nod - TILT_DROP * tiltBack) * scale, browTop - 1.5 * scale);
  if (image !== undefined) {
    const seen = hairTopFromPixels(image, frame, scale, (u0 + u1) / 2, v0);
    if (seen !== null) v0 = Math.max(v0, Math.min(seen, -SKULL_ABOVE_EYES * scale, browTop - scale));
  }
  const v1 = chin + BELOW_CHIN * scale;

  return {
    head: outward(union(frameRectToImage(frame, u0, v0, u1, v1), face.box)),
    core: union(frameRectToImage(frame, jawLeft, -SKULL_ABOVE_EYES * scale, jawRight, chin), boundsOf(face.landmarks)),
  };
}

// ---------------------------------------------------------------------------------------------
// Face crop
// ---------------------------------------------------------------------------------------------

/**
 * How much of the square the estimated head takes at each framing, and where it sits. `share` is
 * the head ESTIMATE's height over the square's side. The estimate reaches above the hair (by
 * ≈ 1 IOD on short hair unless the pixels showed where it ends), so the head as a person sees it
 * takes 0.65–1.0 of the estimate, measured on the person and demo photos. The shares are set so
 * the visible head lands where the framings' names promise. `eyes` puts the eye line at that
 * fraction of the side from the top (the upper-third rule of portrait composition), and `top`
 * bounds the head's top margin as a fraction of the side, so a wide framing never floats the head
 * in empty sky nor jams it against the edge.
 *
 * - `face` (0.75): the close-up face sets are made of; the visible head is 0.5–0.75 of the side
 *   (0.55–0.6 typical), the detector's face box 0.4–0.45, with air above the hair and the neck
 *   below.
 * - `head-and-shoulders` (0.50): the portrait/passport frame, visible head ≈ 0.35–0.5 of the side;
 *   collar and shoulders in view.
 * - `upper-body` (0.34): visible head ≈ 0.25–0.33 of the side; chest, arms, hands.
 */
const FRAMING_RULES: Record<Framing, { share: number; eyes: number; top: [number, number] }> = {
  face: { share: 0.75, eyes: 0.45, top: [0.04, 0.12] },
  'head-and-shoulders': { share: 0.5, eyes: 0.36, top: [0.05, 0.14] },
  'upper-body': { share: 0.34, eyes: 0.3, top: [0.05, 0.14] },
};

/** Options of {@link planFaceCrop}. */
export interface FaceCropOptions {
  /**
   * All faces of the photo (the framed one among them is recognised and ignored). When given,
   * the crop keeps every other face out: no other face has both eyes and its nose inside. The
   * square is shifted, then a tighter framing is used, then — cheek to cheek — the square closes
   * in down to the head itself. A group photo then gives a training image of ONE person, not a
   * shot of several. Without it, a `face` crop may still hold a neighbour pressed against the
   * subject's head.
   */
  others?: readonly DetectedFace[];
}

function isRawImage(value: { width: number; height: number }): value is RawImage {
  return 'data' in value && Buffer.isBuffer((value as { data?: unknown }).data);
}

/** Positions of a square's edge along one axis, from most to least important constraint. */
function place(preferred: number, bounds: [number, number], wants: ReadonlyArray<[number, number]>): number {
  let [lo, hi] = bounds;
  for (const [a, b] of wants) {
    // A span longer than the square (a > b) cannot be held: centre on it instead.
    const [wa, wb] = a <= b ? [a, b] : [(a + b) / 2, (a + b) / 2];
    const nlo = Math.max(lo, wa);
    const nhi = Math.min(hi, wb);
    if (nlo <= nhi) {
      lo = nlo;
      hi = nhi;
    } else {
      // Cannot satisfy this one: get as close as possible and ignore the rest.
      const p = wb < lo ? lo : hi;
      lo = p;
      hi = p;
      break;
    }
  }
  return Math.min(hi, Math.max(lo, preferred));
}

function inside(r: Rect, p: Point): boolean {
  return p.x >= r.x && p.y >= r.y && p.x <= r.x + r.width && p.y <= r.y + r.height;
}

function contains(outer: Rect, inner: Rect): boolean {
  return (
    inner.x >= outer.x &&
    inner.y >= outer.y &&
    inner.x + inner.width <= outer.x + outer.width &&
    inner.y + inner.height <= outer.y + outer.height
  );
}

function requiredSide(head: Rect, framing: Framing): number {
  const { share } = FRAMING_RULES[framing];
  // Width rarely binds (a head is ≈ 0.75 as wide as tall) but a turned head with hair can be.
  return Math.max(head.height / share, head.width / Math.min(0.9, share + 0.15));
}

function checkSize(size: { width: number; height: number }, outputSize: number): void {
  if (!Number.isInteger(size.width) || !Number.isInteger(size.height) || size.width < 1 || size.height < 1) {
    throw new BoothError('INVALID_ARGUMENT', `image size must be positive integers, got ${size.width}×${size.height}`);
  }
  if (!Number.isInteger(outputSize) || outputSize < 1) {
    throw new BoothError('INVALID_ARGUMENT', `outputSize must be a positive integer, got ${outputSize}`);
  }
}

/** A placed square and whether it holds none of the other faces whole. */
interface Placed {
  rect: Rect;
  framing: Framing;
  clear: boolean;
}

function placeFace(
  size: { width: number; height: number },
  face: DetectedFace,
  model: HeadModel,
  framing: Framing,
  avoid: readonly Rect[],
  fixedSide?: number,
): Placed {
  const { head, core } = model;
  // The part of the head beyond the photo's edge cannot be framed; only what the photo shows.
  const shown = intersect(head, { x: 0, y: 0, width: size.width, height: size.height });
  const rule = FRAMING_RULES[framing];
  const shorter = Math.min(size.width, size.height);
  const side = Math.max(1, Math.min(shorter, fixedSide ?? Math.round(requiredSide(head, framing))));

  // The face (landmarks with a little margin) outranks the rest of the head when not all fits.
  const lm = boundsOf(face.landmarks);
  const pad = 0.1 * Math.max(lm.width, lm.height);
  const eyeY = mean(face.landmarks.slice(36, 48)).y;
  const cx = head.x + head.width / 2;

  const preferY = Math.min(
    Math.max(eyeY - rule.eyes * side, head.y - rule.top[1] * side),
    head.y - rule.top[0] * side,
  );
  const vertical = (extra: ReadonlyArray<[number, number]>): number =>
    place(preferY, [0, size.height - side], [
      [lm.y + lm.height + pad - side, lm.y - pad],
      [core.y + core.height - side, core.y],
      [shown.y + shown.height - side, shown.y],
      ...extra,
    ]);
  const horizontal = (extra: ReadonlyArray<[number, number]>): number =>
    place(cx - side / 2, [0, size.width - side], [
      [lm.x + lm.width + pad - side, lm.x - pad],
      [core.x + core.width - side, core.x],
      [shown.x + shown.width - side, shown.x],
      ...extra,
    ]);

  const at = (x: number, y: number): Rect => ({ x: Math.round(x), y: Math.round(y), width: side, height: side });
  const clearOf = (r: Rect): boolean => avoid.every((o) => !contains(r, o));
  const base = at(horizontal([]), vertical([]));
  if (clearOf(base)) return { rect: base, framing, clear: true };
  // Shifting away from a neighbour must not cost the head (or, if it was already cut, the face).
  const keep = contains(base, shown) ? shown : outward(lm);

  // Push whole neighbours out one at a time, each past whichever of its four edges moves the
  // square least, as long as the head (or the face) stays in.
  const xs: Array<[number, number]> = [];
  const ys: Array<[number, number]> = [];
  let rect = base;
  for (let round = 0; round < avoid.length; round++) {
    const o = avoid.find((n) => contains(rect, n));
    if (o === undefined) return { rect, framing, clear: true };
    const options: Array<{ axis: 'x' | 'y'; want: [number, number] }> = [
      { axis: 'x', want: [o.x + 1, Infinity] },
      { axis: 'x', want: [-Infinity, o.x + o.width - 1 - side] },
      { axis: 'y', want: [o.y + 1, Infinity] },
      { axis: 'y', want: [-Infinity, o.y + o.height - 1 - side] },
    ];
    let next: { rect: Rect; axis: 'x' | 'y'; want: [number, number] } | null = null;
    for (const option of options) {
      const nx = option.axis === 'x' ? [...xs, option.want] : xs;
      const ny = option.axis === 'y' ? [...ys, option.want] : ys;
      const r = at(horizontal(nx), vertical(ny));
      if (contains(r, o) || !contains(r, keep)) continue;
      if (next === null || distance(r, base) < distance(next.rect, base)) next = { rect: r, ...option };
    }
    if (next === null) break;
    (next.axis === 'x' ? xs : ys).push(next.want);
    rect = next.rect;
  }
  return clearOf(rect) ? { rect, framing, clear: true } : { rect: base, framing, clear: false };
}

const distance = (a: Rect, b: Rect): number => Math.abs(a.x - b.x) + Math.abs(a.y - b.y);

/**
 * Plan a square crop around one face so that the whole head fits with margin and the face is
 * prominent.
 *
 * The square's side is the estimated head's height ({@link estimateHead}) over the framing's
 * share (`face` 0.75, `head-and-shoulders` 0.50, `upper-body` 0.34; see `FRAMING_RULES`).
 * Vertically the eye line goes to the upper part of the frame (45 %, 36 %, 30 % of the side from
 * the top), bounded so the head's top margin stays between 4–5 % and 12–14 % of the side;
 * horizontally the head is centred. The square is then clamped inside the photo: shifted first,
 * and shrunk to the photo's shorter side when larger; what cannot all fit is kept in priority
 * order: the landmarks, the bald skull, then the rest of the head. `framingAchieved` is the widest
 * framing (no wider than the one requested) whose side the square still reaches.
 *
 * `headInside` is true when the square holds all of the estimated head that lies in the photo
 * and the photo holds at least the head's core (landmarks, chin, the bald skull 1.5 IOD above the
 * eyes). So it is false when the head is larger than the photo's shorter side, or visibly cut by
 * the photo's edge (a face at the edge, a forehead cut off); a generous hair margin running past
 * the edge of a tightly framed portrait does not count as a cut.
 *
 * Pass the decoded image (a {@link RawImage} is a valid `size`) rather than a bare size: the head
 * estimate then uses the pixels to see where the hair ends (see {@link estimateHead}).
 *
 * @param size - the photo (`RawImage`, preferred) or its size, in upright source pixels
 * @param face - the face to frame, in source pixels
 * @param framing - how tightly to frame; see {@link Framing}
 * @param outputSize - the training resolution the crop will be resized to (sets `upscale`)
 * @param options - `others`: the photo's faces, so that no other one is in the crop (group photos)
 * @returns the plan: integer square `rect` inside the photo, `head`, `headInside`, `framingAchieved`, `upscale`
 * @throws {BoothError} `INVALID_ARGUMENT` for a non-positive size or output size, an unknown
 *   framing, a face without 68 finite landmarks, or image bytes that do not match its size
 * @example
 * const plan = planFaceCrop(photo.image, face, 'head-and-shoulders', 512);
 * const png = await renderCrop(photo.image, plan.rect, 512);
 */
export function planFaceCrop(
  size: { width: number; height: number },
  face: DetectedFace,
  framing: Framing,
  outputSize: number,
  options: FaceCropOptions = {},
): CropPlan {
  checkSize(size, outputSize);
  if (!FRAMINGS.includes(framing)) {
    throw new BoothError('INVALID_ARGUMENT', `framing must be one of ${FRAMINGS.join(', ')}; got "${String(framing)}"`);
  }
  checkFace(face);
  const image = isRawImage(size) ? size : undefined;
  if (image !== undefined) checkImage(image);
  const model = headModel(face, image);
  const { head } = model;
  const photo = { x: 0, y: 0, width: size.width, height: size.height };
  const own = boundsOf(face.landmarks);
  const avoid = (options.others ?? [])
    .map((o) => outward(boundsOf(o.landmarks.slice(27, 48))))
    .filter((r) => !inside(own, { x: r.x + r.width / 2, y: r.y + r.height / 2 }));

  // Widest first: the requested framing, then tighter ones only if neighbours force it.
  const order = FRAMINGS.slice(0, FRAMINGS.indexOf(framing) + 1).reverse();
  // When no framing clears the neighbours, the tightest one holds the fewest of them.
  let chosen: Placed | null = null;
  for (const f of order) {
    chosen = placeFace(size, face, model, f, avoid);
    if (chosen.clear) break;
  }
  if (chosen === null) throw new Error('unreachable: FRAMINGS is not empty');
  // Cheek to cheek, even `face` may hold a neighbour: close in further, down to the head itself.
  if (!chosen.clear) {
    const shown = intersect(head, photo);
    const least = Math.ceil(1.04 * Math.max(shown.width, shown.height));
    for (let side = Math.floor(0.96 * chosen.rect.width); side >= least; side = Math.floor(0.96 * side)) {
      const closer = placeFace(size, face, model, 'face', avoid, side);
      if (closer.clear) {
        chosen = closer;
        break;
      }
    }
  }
  const { rect } = chosen;

  // What the side actually reached: the widest framing at or below the one placed.
  const limit = FRAMINGS.indexOf(chosen.framing);
  let achieved: Framing = 'face';
  for (let i = limit; i >= 0; i--) {
    const f = FRAMINGS[i];
    if (f !== undefined && rect.width >= Math.floor(0.98 * requiredSide(head, f))) {
      achieved = f;
      break;
    }
  }
  return {
    rect,
    strategy: 'face',
    framing,
    framingAchieved: achieved,
    head,
    headInside: contains(photo, model.core) && contains(rect, intersect(head, photo)),
    upscale: outputSize / rect.width,
  };
}

// ---------------------------------------------------------------------------------------------
// Salient crop
// ---------------------------------------------------------------------------------------------

/** Longer side of the copy saliency is computed on: enough for an object's outline, cheap in JS. */
const SALIENCY_SIDE = 192;

/** The salient subject found in a photo, in source pixels. */
export interface SalientRegion {
  /** Bounding box of the salient subject, with a small margin. */
  box: Rect;
  /** Saliency-weighted centre of the subject. */
  centroid: Point;
  /** How clearly the subject stands out, 0–1 (mean saliency inside the box over outside, squashed). */
  contrast: number;
}

function checkImage(image: RawImage): void {
  const { width, height, data } = image;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1 || data.length !== width * height * 3) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `image must be ${width}×${height}×3 RGB bytes (${width * height * 3}), got ${data.length} bytes; decode it with decodePhoto()`,
    );
  }
}

/** A whole buffer of sRGB pixels to L*a*b*. */
function toLab(rgb: Buffer, count: number): Float32Array {
  const lab = new Float32Array(count * 3);
  for (let i = 0; i < count; i++) labOf(rgb, i * 3, lab, i * 3);
  return lab;
}

/** Separable box blur of radius `r`, edges clamped. */
function boxBlur(src: Float32Array, w: number, h: number, r: number): Float32Array {
  const tmp = new Float32Array(w * h);
  const out = new Float32Array(w * h);
  const n = 2 * r + 1;
  for (let y = 0; y < h; y++) {
    let acc = 0;
    for (let k = -r; k <= r; k++) acc += src[y * w + Math.min(w - 1, Math.max(0, k))] ?? 0;
    for (let x = 0; x < w; x++) {
      tmp[y * w + x] = acc / n;
      acc += (src[y * w + Math.min(w - 1, x + r + 1)] ?? 0) - (src[y * w + Math.max(0, x - r)] ?? 0);
    }
  }
  for (let x = 0; x < w; x++) {
    let acc = 0;
    for (let k = -r; k <= r; k++) acc += tmp[Math.min(h - 1, Math.max(0, k)) * w + x] ?? 0;
    for (let y = 0; y < h; y++) {
      out[y * w + x] = acc / n;
      acc += (tmp[Math.min(h - 1, y + r + 1) * w + x] ?? 0) - (tmp[Math.max(0, y - r) * w + x] ?? 0);
    }
  }
  return out;
}

/** Scale to [0, 1] by the 99th percentile, so a few hot pixels do not flatten the rest. */
function normalise(a: Float32Array): Float32Array {
  const sorted = Float32Array.from(a).sort();
  const lo = sorted[0] ?? 0;
  const hi = sorted[Math.floor(0.99 * (sorted.length - 1))] ?? 1;
  const span = hi - lo > 1e-9 ? hi - lo : 1;
  return a.map((v) => Math.min(1, Math.max(0, (v - lo) / span)));
}

/**
 * Colour distinctness from the photo's border, the "background prior" of saliency research
 * (Wei et al., "Geodesic saliency using background priors", ECCV 2012): photographers leave
 * background around a subject, so what looks like the border is background. Each side is modelled
 * separately by samples of its band; a pixel's distance to a side is its distance to the
 * 3 %-nearest sample (a stray pixel is not a side's colour). The sides are combined by the
 * second-smallest distance: a pixel is background when it looks like at least two sides — sky
 * reaches the top and both sides, a floor the bottom and both sides — so a subject touching one
 * side (a dog cut by the bottom edge) still stands out against the others.
 */
function borderContrast(lab: Float32Array, w: number, h: number): Float32Array {
  const band = Math.max(1, Math.round(0.04 * Math.min(w, h)));
  const samplesPerSide = 96;
  const sides: Float32Array[] = [];
  const sideRects = [
    { x0: 0, y0: 0, x1: w, y1: band },
    { x0: 0, y0: h - band, x1: w, y1: h },
    { x0: 0, y0: 0, x1: band, y1: h },
    { x0: w - band, y0: 0, x1: w, y1: h },
  ];
  for (const s of sideRects) {
    const cells = (s.x1 - s.x0) * (s.y1 - s.y0);
    const step = Math.max(1, Math.floor(cells / samplesPerSide));
    const picks: number[] = [];
    for (let k = 0; k < cells; k += step) {
      const bw = s.x1 - s.x0;
      const x = s.x0 + (k % bw);
      const y = s.y0 + Math.floor(k / bw);
      const i = (y * w + x) * 3;
      picks.push(lab[i] ?? 0, lab[i + 1] ?? 0, lab[i + 2] ?? 0);
    }
    sides.push(Float32Array.from(picks));
  }
  const out = new Float32Array(w * h);
  // The rank'th smallest distance is kept with a tiny insertion list: no sort per pixel. Plain
  // loops over one flat array: this is the hot loop of saliency (pixels × 4 × 96 samples).
  const flat = new Float32Array(sides.reduce((n, x) => n + x.length, 0));
  const ends: number[] = [];
  const ranks: number[] = [];
  let offset = 0;
  for (const samples of sides) {
    flat.set(samples, offset);
    offset += samples.length;
    ends.push(offset);
    ranks.push(Math.floor(NEAREST_SHARE * (samples.length / 3 - 1)) + 1);
  }
  const smallest = new Float64Array(Math.max(...ranks));
  for (let p = 0; p < w * h; p++) {
    const L = lab[p * 3] ?? 0;
    const A = lab[p * 3 + 1] ?? 0;
    const B = lab[p * 3 + 2] ?? 0;
    let first = Infinity;
    let second = Infinity;
    let from = 0;
    for (let si = 0; si < ends.length; si++) {
      const to = ends[si] ?? 0;
      const rank = ranks[si] ?? 1;
      smallest.fill(Infinity, 0, rank);
      let worst = Infinity;
      for (let k = from; k < to; k += 3) {
        const dl = L - (flat[k] ?? 0);
        const da = A - (flat[k + 1] ?? 0);
        const db = B - (flat[k + 2] ?? 0);
        let d = dl * dl + da * da + db * db;
        if (d >= worst) continue;
        for (let j = 0; j < rank; j++) {
          const cur = smallest[j] ?? Infinity;
          if (d < cur) {
            smallest[j] = d;
            d = cur;
          }
        }
        worst = smallest[rank - 1] ?? Infinity;
      }
      from = to;
      // Keep the two smallest of the four sides.
      const side = Math.sqrt(worst);
      if (side < first) {
        second = first;
        first = side;
      } else if (side < second) second = side;
    }
    out[p] = second;
  }
  return out;
}

/** Parts of the saliency mask with less than this share of the heaviest part's mass are specks. */
const SIGNIFICANT_PART = 0.15;

/** A salient box within this share of the photo's length from its edge is taken as touching it. */
const EDGE_NEAR = 0.02;


/** The lower level of the saliency threshold's hysteresis, as a fraction of Otsu's level. */
const HYSTERESIS = 0.6;

/** A pixel is like a side when at least this share of the side's samples are like it. */
const NEAREST_SHARE = 0.03;

/** Otsu's threshold of values in [0, 1]. */
function otsu(values: Float32Array): number {
  const bins = 64;
  const hist = new Float64Array(bins);
  for (const v of values) {
    const bin = Math.min(bins - 1, Math.floor(v * bins));
    hist[bin] = (hist[bin] ?? 0) + 1;
  }
  let total = 0;
  let sum = 0;
  hist.forEach((c, i) => {
    total += c;
    sum += c * i;
  });
  let best = 0;
  let bestVar = -1;
  let wB = 0;
  let sumB = 0;
  for (let t = 0; t < bins; t++) {
    wB += hist[t] ?? 0;
    if (wB === 0 || wB === total) continue;
    sumB += t * (hist[t] ?? 0);
    const mB = sumB / wB;
    const mF = (sum - sumB) / (total - wB);
    const between = wB * (total - wB) * (mB - mF) ** 2;
    if (between > bestVar) {
      bestVar = between;
      best = t;
    }
  }
  return (best + 1) / bins;
}

/** One connected region of the saliency mask: its saliency mass and bounding box on the small copy. */
interface Part {
  mass: number;
  x0: number;
  y0: number;
  x1: number;
  y1: number;
}

/** Connected components (4-neighbour) of a mask, each with its mass under `weight`, and the label image. */
function components(mask: Uint8Array, weight: Float32Array, w: number, h: number): { parts: Part[]; label: Int32Array } {
  const label = new Int32Array(w * h).fill(-1);
  const parts: Part[] = [];
  const stack: number[] = [];
  for (let start = 0; start < w * h; start++) {
    if (!mask[start] || label[start] !== -1) continue;
    const c = { mass: 0, x0: w, y0: h, x1: -1, y1: -1 };
    label[start] = parts.length;
    stack.push(start);
    while (stack.length > 0) {
      const p = stack.pop() ?? 0;
      const x = p % w;
      const y = (p - x) / w;
      c.mass += weight[p] ?? 0;
      c.x0 = Math.min(c.x0, x);
      c.y0 = Math.min(c.y0, y);
      c.x1 = Math.max(c.x1, x);
      c.y1 = Math.max(c.y1, y);
      const next = [x > 0 ? p - 1 : -1, x < w - 1 ? p + 1 : -1, y > 0 ? p - w : -1, y < h - 1 ? p + w : -1];
      for (const q of next) {
        if (q >= 0 && mask[q] && label[q] === -1) {
          label[q] = parts.length;
          stack.push(q);
        }
      }
    }
    parts.push(c);
  }
  return { parts, label };
}

/** What saliency found: the region, and each significant part's mass along both axes of the small copy. */
interface Saliency {
  region: SalientRegion;
  /** Source pixels per pixel of the small copy, along x and y. */
  sx: number;
  sy: number;
  /** Per significant part: saliency mass per column and per row of the small copy. */
  columns: Float32Array[];
  rows: Float32Array[];
}

/**
 * Find the salient subject of a photo: colour distinctness from the photo's border on a copy of at
 * most 192 px, weighted mildly towards the centre, thresholded with hysteresis (Otsu's level, and
 * 0.6 of it for parts joined to the core), and the bounding box of the significant connected
 * parts with a margin (twice as much below, where objects are shaded).
 *
 * @param image - upright sRGB RGB pixels
 * @returns the subject's box (with a small margin) and centroid in source pixels, and how clearly it stands out
 * @throws {BoothError} `INVALID_ARGUMENT` when `image` is malformed
 * @example
 * const { box } = await findSalientRegion(photo.image);
 */
export async function findSalientRegion(image: RawImage): Promise<SalientRegion> {
  checkImage(image);
  return (await analyseSaliency(image)).region;
}

async function analyseSaliency(image: RawImage): Promise<Saliency> {
  const scale = Math.min(1, SALIENCY_SIDE / Math.max(image.width, image.height));
  const w = Math.max(1, Math.round(image.width * scale));
  const h = Math.max(1, Math.round(image.height * scale));
  const small =
    scale < 1
      ? await sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } })
          .resize(w, h, { fit: 'fill', kernel: 'cubic' })
          .raw()
          .toBuffer()
      : image.data;
  const lab = toLab(small, w * h);
  // Absolute colour difference: under ≈ 8 ΔE is shading of one surface, over ≈ 33 plainly another thing.
  const colour = boxBlur(borderContrast(lab, w, h), w, h, 1).map((d) => Math.min(1, Math.max(0, (d - 8) / 25)));
  const saliency = new Float32Array(w * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      // Photographers centre subjects; a mild prior settles ties without vetoing edge subjects.
      const dx = (x + 0.5) / w - 0.5;
      const dy = (y + 0.5) / h - 0.5;
      const centre = 0.6 + 0.4 * Math.exp(-(dx * dx + dy * dy) / (2 * 0.3 * 0.3));
      const i = y * w + x;
      // Colour alone: in-focus detail was tried and dropped — moss, foliage and gravel are as
      // sharp as any subject, and a smooth bag in front of them lost its shaded half.
      saliency[i] = (colour[i] ?? 0) * centre;
    }
  }
  const s = normalise(boxBlur(saliency, w, h, Math.max(1, Math.round(0.015 * Math.max(w, h)))));
  // Hysteresis: Otsu's level finds the subject's core; parts joined to it above a lower level
  // (a shadowed side, the bottom of a bag in shade) belong to it too.
  const threshold = otsu(s);
  const mask = Uint8Array.from(s, (v) => (v >= HYSTERESIS * threshold ? 1 : 0));
  const strong = s.map((v) => (v >= threshold ? v : 0));
  const { parts, label } = components(mask, strong, w, h);
  const heaviest = Math.max(0, ...parts.map((c) => c.mass));
  const kept = parts.map((c, i) => ({ ...c, i })).filter((c) => c.mass > 0 && c.mass >= SIGNIFICANT_PART * heaviest);

  const slot = new Int32Array(parts.length).fill(-1);
  kept.forEach((c, k) => {
    slot[c.i] = k;
  });
  const columns = kept.map(() => new Float32Array(w));
  const rows = kept.map(() => new Float32Array(h));
  const subject = new Uint8Array(w * h);
  let mass = 0;
  let cx = 0;
  let cy = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const l = label[y * w + x] ?? -1;
      const k = l >= 0 ? (slot[l] ?? -1) : -1;
      if (k < 0) continue;
      const v = s[y * w + x] ?? 0;
      const col = columns[k];
      const row = rows[k];
      if (col) col[x] = (col[x] ?? 0) + v;
      if (row) row[y] = (row[y] ?? 0) + v;
      subject[y * w + x] = 1;
      mass += v;
      cx += v * (x + 0.5);
      cy += v * (y + 0.5);
    }
  }
  let x0 = w;
  let y0 = h;
  let x1 = -1;
  let y1 = -1;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if ((subject[y * w + x] ?? 0) > 0) {
        x0 = Math.min(x0, x);
        y0 = Math.min(y0, y);
        x1 = Math.max(x1, x);
        y1 = Math.max(y1, y);
      }
    }
  }
  if (x1 < 0) {
    x0 = 0;
    y0 = 0;
    x1 = w - 1;
    y1 = h - 1;
  }
  let inside = 0;
  let outside = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (x >= x0 && x <= x1 && y >= y0 && y <= y1) inside += s[y * w + x] ?? 0;
      else outside += s[y * w + x] ?? 0;
    }
  }
  const area = (x1 - x0 + 1) * (y1 - y0 + 1);
  const meanIn = inside / area;
  const meanOut = outside / Math.max(1, w * h - area);
  // Margin: the threshold trims soft outlines (fur, hair) and the subject's own shaded parts.
  // Light mostly comes from above, so the shade — and the contact shadow — is at the bottom:
  // twice the margin there.
  const margin = 0.1 * Math.max(x1 - x0 + 1, y1 - y0 + 1) + 1.5;
  const sx = image.width / w;
  const sy = image.height / h;
  const bx0 = Math.max(0, Math.floor((x0 - margin) * sx));
  const by0 = Math.max(0, Math.floor((y0 - margin) * sy));
  const bx1 = Math.min(image.width, Math.ceil((x1 + 1 + margin) * sx));
  const by1 = Math.min(image.height, Math.ceil((y1 + 1 + 2 * margin) * sy));
  return {
    region: {
      box: { x: bx0, y: by0, width: bx1 - bx0, height: by1 - by0 },
      centroid: mass > 0 ? { x: (cx / mass) * sx, y: (cy / mass) * sy } : { x: image.width / 2, y: image.height / 2 },
      contrast: meanOut > 0 ? Math.max(0, 1 - Math.exp(-(meanIn / meanOut - 1))) : 1,
    },
    sx,
    sy,
    columns,
    rows,
  };
}

/**
 * Where a window of `side` (in pixels of the small copy) along one axis holds the most of the
 * salient parts whole: each part counts for its mass inside, and a part the window cuts costs
 * twice the mass it leaves out, so a window never trades a whole subject for bits of several.
 * Ties go to the window centred nearest `centre`.
 */
function bestWindow(profiles: readonly Float32Array[], length: number, side: number, centre: number): number {
  const prefix = profiles.map((p) => {
    const acc = new Float64Array(length + 1);
    for (let i = 0; i < length; i++) acc[i + 1] = (acc[i] ?? 0) + (p[i] ?? 0);
    return acc;
  });
  let best = 0;
  let bestScore = -Infinity;
  for (let a = 0; a + side <= length; a++) {
    let score = 0;
    for (const acc of prefix) {
      const total = acc[length] ?? 0;
      const held = (acc[a + side] ?? 0) - (acc[a] ?? 0);
      score += held > 0 ? held - 2 * (total - held) : 0;
    }
    score -= 1e-6 * Math.abs(a + side / 2 - centre);
    if (score > bestScore) {
      bestScore = score;
      best = a;
    }
  }
  return best;
}

/**
 * Plan a square crop on the salient subject — for objects, pets and photos without a usable face:
 * the largest square in the photo (its shorter side), placed to hold the whole subject.
 *
 * Better than a fixed-size attention crop in the way that matters for a training set: the
 * subject is found as REGIONS (see {@link findSalientRegion}); when they fit in the square it is
 * centred on them, and when they do not (a subject wider than the square, or a second salient
 * thing elsewhere) the square goes where it holds the most salient mass whole, never cutting a
 * large part to catch a small one. The square is not shrunk to the subject: saliency finds a
 * subject's core reliably but its extremities (a tail in shadow, a white chest against a white
 * ledge) less so, and a tighter square would cut exactly those.
 *
 * @param image - upright sRGB RGB pixels
 * @param outputSize - the training resolution the crop will be resized to (sets `upscale`)
 * @returns a plan with strategy `salient` and an integer square `rect` inside the photo
 * @throws {BoothError} `INVALID_ARGUMENT` when `image` is malformed or `outputSize` is not a positive integer
 * @example
 * const plan = await planSalientCrop(photo.image, 1024);
 * await writeFile('dog.png', await renderCrop(photo.image, plan.rect, 1024));
 */
export async function planSalientCrop(image: RawImage, outputSize: number): Promise<CropPlan> {
  checkImage(image);
  checkSize(image, outputSize);
  const side = Math.min(image.width, image.height);
  const rect = { x: 0, y: 0, width: side, height: side };
  if (image.width === image.height) return salientPlan(rect, 'salient', outputSize);

  const found = await analyseSaliency(image);
  const { box, centroid } = found.region;
  const alongX = image.width > image.height;
  const [length, start, span, c, step, profiles] = alongX
    ? [image.width, box.x, box.width, centroid.x, found.sx, found.columns]
    : [image.height, box.y, box.height, centroid.y, found.sy, found.rows];
  let at: number;
  const near = EDGE_NEAR * length;
  if (start <= near && start + span >= length - near) {
    // Salient from edge to edge along the axis: nothing to choose but the middle of the mass.
    at = c - side / 2;
  } else if (start <= near) {
    // A subject at the photo's edge is cut by it or stands on it (a floor, a ledge, a hand):
    // stay flush with that edge rather than cut further into it.
    at = 0;
  } else if (start + span >= length - near) {
    at = length - side;
  } else if (span <= side) {
    // The whole subject fits: centre it.
    at = start + span / 2 - side / 2;
  } else {
    const cells = profiles[0]?.length ?? 0;
    at = bestWindow(profiles, cells, Math.min(cells, Math.floor(side / step)), c / step) * step;
  }
  at = Math.round(Math.min(length - side, Math.max(0, at)));
  if (alongX) rect.x = at;
  else rect.y = at;
  return salientPlan(rect, 'salient', outputSize);
}

function salientPlan(rect: Rect, strategy: 'salient' | 'center', outputSize: number): CropPlan {
  return { rect, strategy, framing: null, framingAchieved: null, head: null, headInside: null, upscale: outputSize / rect.width };
}

/**
 * The largest centred square: the last resort when neither a face nor a subject can be found.
 *
 * @param size - the photo's size in source pixels
 * @param outputSize - the training resolution (sets `upscale`)
 * @returns a plan with strategy `center`
 * @throws {BoothError} `INVALID_ARGUMENT` for a non-positive size or output size
 * @example
 * const plan = planCenterCrop({ width: 1920, height: 1080 }, 512); // rect 420,0 1080×1080
 */
export function planCenterCrop(size: { width: number; height: number }, outputSize: number): CropPlan {
  checkSize(size, outputSize);
  const side = Math.min(size.width, size.height);
  return salientPlan(
    { x: Math.floor((size.width - side) / 2), y: Math.floor((size.height - side) / 2), width: side, height: side },
    'center',
    outputSize,
  );
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/**
 * Cut a crop out of the photo and resize it to the training resolution with lanczos3 (the sharpest
 * of sharp's kernels without ringing worth noticing at these factors), as an sRGB PNG.
 *
 * @param image - upright sRGB RGB pixels
 * @param rect - integer rectangle inside the image (usually a plan's `rect`)
 * @param outputSize - side of the square PNG in pixels
 * @returns the PNG bytes, `outputSize` × `outputSize`, 3 channels
 * @throws {BoothError} `INVALID_ARGUMENT` when `rect` is not integer, empty or outside the image
 * @example
 * const png = await renderCrop(photo.image, plan.rect, 512);
 */
export async function renderCrop(image: RawImage, rect: Rect, outputSize: number): Promise<Buffer> {
  checkImage(image);
  checkSize(image, outputSize);
  const { x, y, width, height } = rect;
  if (
    ![x, y, width, height].every(Number.isInteger) ||
    width < 1 ||
    height < 1 ||
    x < 0 ||
    y < 0 ||
    x + width > image.width ||
    y + height > image.height
  ) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `crop rect ${x},${y} ${width}×${height} must be integer, non-empty and inside the ${image.width}×${image.height} image`,
    );
  }
  return sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } })
    .extract({ left: x, top: y, width, height })
    .resize(outputSize, outputSize, { fit: 'fill', kernel: 'lanczos3' })
    .toColourspace('srgb')
    .png()
    .toBuffer();
}
