/**
 * Face detection, 68-point landmarks and 128-d face descriptors with `@vladmandic/face-api` on
 * TensorFlow.js's WASM backend (no native download at install, no network at run time: the WASM
 * binaries come from `@tensorflow/tfjs-backend-wasm/dist/` and the weights from face-api's own
 * `model/` folder). Each photo is detected on a downscaled copy of at most `maxInputSide` pixels
 * on its longer side and every box and landmark is mapped back to SOURCE pixels; when that finds
 * nothing, a second pass looks at the photo inside a grey border, because SSD MobileNet v1 misses
 * faces that fill most of the frame (close-up portraits, the usual DreamBooth input). The detector
 * owns its four networks (SSD MobileNet v1, the full 68-point landmark net, the ResNet-34
 * recogniser, the 7-class expression net that the offline captioner reads) instead of using face-api's process-wide `nets`, so two detectors never share or
 * dispose each other's weights; only the TensorFlow.js backend is process-wide, because tfjs
 * itself is.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import sharp from 'sharp';
import * as tfjs from '@tensorflow/tfjs';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import * as faceapi from '@vladmandic/face-api/dist/face-api.node-wasm.js';
import { BoothError, errorMessage } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { DetectedFace, Point, RawImage, Rect } from './types.js';

/** face-api's seven expression classes, in the order its expression net outputs them. */
export const EXPRESSIONS = ['neutral', 'happy', 'sad', 'angry', 'fearful', 'disgusted', 'surprised'] as const;

/** One of {@link EXPRESSIONS}. */
export type Expression = (typeof EXPRESSIONS)[number];

/** Softmax probabilities of the expression net, one per class, summing to 1. */
export type ExpressionScores = Record<Expression, number>;

/** A detected face with its expression probabilities (absent when expressions were not computed). */
export interface FaceWithExpressions extends DetectedFace {
  expressions?: ExpressionScores;
}

/** Options of {@link createFaceDetector}. */
export interface FaceDetectorOptions {
  /**
   * Lowest SSD confidence kept, in (0, 1]. Default 0.5, face-api's own default. Measured: real
   * faces scored 0.55–1.00 (the weakest: a tilted face in demo sample3 and person-b's portrait,
   * 0.62), while two of the five dog photos gave a "face" at 0.58 and 0.79, so the score alone
   * cannot separate them; identity and the caller's checks decide what is used.
   */
  minScore?: number;
  /**
   * Longer side, in pixels, of the copy the networks see (photos already smaller are used as they
   * are). Default {@link DEFAULT_MAX_INPUT_SIDE}. SSD always looks at a 512×512 letterboxed view,
   * so this only sets the resolution of the face crops the landmark (112 px) and recogniser
   * (150 px) nets receive, and the cost of building the input tensor.
   */
  maxInputSide?: number;
  /** At most this many faces per photo, best scores first. Default 100 (face-api's default). */
  maxFaces?: number;
  /** Folder holding face-api's `*-weights_manifest.json` and `.bin` files. Default: the package's `model/`. */
  modelDir?: string;
  /** Logger for load and per-photo timings (debug level). Default: silent. */
  logger?: Logger;
  /**
   * Also run face-api's expression net (7 classes, on the landmark-aligned face as face-api's
   * `withFaceExpressions()` does). Default true: it adds a few milliseconds per face and feeds
   * the offline captioner (`smiling`, …).
   */
  expressions?: boolean;
}

/** A loaded face detector. Create once and reuse: loading the weights takes about half a second. */
export interface FaceDetector {
  /**
   * Find the faces in one photo.
   *
   * @param image - upright sRGB RGB pixels (see {@link RawImage})
   * @returns faces in source pixels, highest score first (with `expressions` unless turned off); empty when there is none
   * @throws {BoothError} `INVALID_ARGUMENT` when `image` is malformed; `FACE_MODEL` after {@link FaceDetector.dispose}
   */
  detect(image: RawImage): Promise<FaceWithExpressions[]>;
  /**
   * Frees the network weights: at once, or after the `detect` calls already made have finished.
   * Later `detect` calls reject with `FACE_MODEL`. Idempotent.
   */
  dispose(): void;
  /** The longer side, in pixels, of the copy the networks see. */
  readonly maxInputSide: number;
}

/**
 * Default longer side of the detection copy. Measured on 12 photos (face-api's six 1920 px demo
 * group photos, person-a ×3, person-b, a backpack, a dog; WASM SIMD, one thread), per size:
 * ms/photo and the largest descriptor change against full resolution:
 * full 954 ms; 2048: 986 ms, 0.06; 1024: 800 ms, 0.12; 800: 817 ms, 0.19; 640: 749 ms, 0.20;
 * 512: 772 ms, 0.27. Every size found the same faces (SSD sees 512×512 whatever the input), and
 * person-a's same-person distances were 0.339/0.450/0.463 at 1024 against 0.335/0.456/0.467 at
 * full size. Below 1024 the time saved is noise while descriptors drift toward the 0.55 identity
 * threshold; above it the cost grows for nothing.
 */
export const DEFAULT_MAX_INPUT_SIDE = 1024;

const require = createRequire(import.meta.url);

/** The package's own weights folder, found through module resolution so it works from `dist/` too. */
function defaultModelDir(): string {
  return path.join(path.dirname(require.resolve('@vladmandic/face-api/package.json')), 'model');
}

function wasmDir(): string {
  // A trailing separator matters: tfjs-backend-wasm appends the file name to this prefix.
  return path.join(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist') + path.sep;
}

// tfjs keeps ONE engine per process (registered backends, the active backend, the tensor
// registry), so the backend is initialised once per process; a promise guards against two
// detectors racing to set it up. A failed attempt is forgotten so that a later call can retry.
let backendReady: Promise<void> | undefined;

function initBackend(logger: Logger): Promise<void> {
  backendReady ??= (async () => {
    const t0 = performance.now();
    setWasmPaths(wasmDir());
    const ok = await tfjs.setBackend('wasm');
    if (!ok) throw new Error('tf.setBackend("wasm") returned false');
    await tfjs.ready();
    logger.debug({ backend: tfjs.getBackend(), ms: Math.round(performance.now() - t0) }, 'tfjs backend ready');
  })().catch((err: unknown) => {
    backendReady = undefined;
    throw new BoothError(
      'FACE_MODEL',
      `could not start the TensorFlow.js WASM backend from ${wasmDir()}: ${errorMessage(err)}; ` +
        'reinstall dependencies with `npm ci`',
      { cause: err },
    );
  });
  return backendReady;
}

function checkImage(image: RawImage): void {
  const { width, height, data, channels } = image;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new BoothError('INVALID_ARGUMENT', `image size must be positive integers, got ${width}×${height}`);
  }
  if (channels !== 3 || data.length !== width * height * 3) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `image data must be RGB, ${width}×${height}×3 = ${width * height * 3} bytes; got ${data.length} bytes with channels=${String(channels)}`,
    );
  }
}

function checkOptions(options: FaceDetectorOptions): void {
  const { minScore, maxInputSide, maxFaces } = options;
  if (minScore !== undefined && !(minScore > 0 && minScore <= 1)) {
    throw new BoothError('INVALID_ARGUMENT', `option minScore must be in (0, 1], got ${minScore}`);
  }
  if (maxInputSide !== undefined && !(Number.isInteger(maxInputSide) && maxInputSide >= 128)) {
    throw new BoothError('INVALID_ARGUMENT', `option maxInputSide must be an integer ≥ 128, got ${maxInputSide}`);
  }
  if (maxFaces !== undefined && !(Number.isInteger(maxFaces) && maxFaces >= 1)) {
    throw new BoothError('INVALID_ARGUMENT', `option maxFaces must be an integer ≥ 1, got ${maxFaces}`);
  }
}

/**
 * The copy the networks see, and how its pixels map back to the source:
 * `source = (copy - offset) * scale`, per axis.
 */
interface View {
  data: Buffer;
  width: number;
  height: number;
  sx: number;
  sy: number;
  ox: number;
  oy: number;
}

/**
 * Fraction of each side added as a grey border on the second pass. Measured on close-ups cut from
 * the demo photos: a face filling 55–100 % of the frame is missed by SSD MobileNet v1 (its
 * anchors favour smaller faces); a 25 % border recovers most, 50 % all of those tried (scores
 * 0.85–0.99).
 */
const CLOSE_UP_PAD = 0.5;

/**
 * Scale `image` so that, after adding a border of `pad` × its size on every side, the longer side
 * is at most `maxSide`; never upscale.
 */
async function makeView(image: RawImage, maxSide: number, pad: number): Promise<View> {
  const { width, height } = image;
  const longer = Math.max(width, height) * (1 + 2 * pad);
  const k = Math.min(1, maxSide / longer);
  const w = Math.max(1, Math.round(width * k));
  const h = Math.max(1, Math.round(height * k));
  const px = Math.round(w * pad);
  const py = Math.round(h * pad);
  if (w === width && h === height && px === 0 && py === 0) return { data: image.data, width, height, sx: 1, sy: 1, ox: 0, oy: 0 };
  let pipeline = sharp(image.data, { raw: { width, height, channels: 3 } });
  if (w !== width || h !== height) pipeline = pipeline.resize({ width: w, height: h, fit: 'fill' });
  // sharp always extends after resizing, whatever the call order.
  if (px > 0 || py > 0) pipeline = pipeline.extend({ top: py, bottom: py, left: px, right: px, background: { r: 128, g: 128, b: 128 } });
  const data = await pipeline.raw().toBuffer();
  // Separate factors: rounding makes the two axes differ by up to half a pixel of the copy.
  return { data, width: w + 2 * px, height: h + 2 * py, sx: width / w, sy: height / h, ox: px, oy: py };
}

function clampRect(r: Rect, width: number, height: number): Rect {
  const x0 = Math.min(Math.max(r.x, 0), width);
  const y0 = Math.min(Math.max(r.y, 0), height);
  const x1 = Math.min(Math.max(r.x + r.width, 0), width);
  const y1 = Math.min(Math.max(r.y + r.height, 0), height);
  return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
}

/** face-api's FaceExpressions object as plain, rounded numbers (JSON-friendly, cache-stable). */
function toScores(e: faceapi.FaceExpressions): ExpressionScores {
  const out = {} as ExpressionScores;
  for (const k of EXPRESSIONS) out[k] = Math.round(e[k] * 1e4) / 1e4;
  return out;
}

function first<T>(value: T | T[]): T {
  const v = Array.isArray(value) ? value[0] : value;
  if (v === undefined) throw new Error('face-api returned an empty batch for one face');
  return v;
}

/**
 * Load the three networks and start the WASM backend.
 *
 * @param options - see {@link FaceDetectorOptions}
 * @returns a detector to reuse for every photo of a run
 * @throws {BoothError} `INVALID_ARGUMENT` for a bad option (named with its value); `FACE_MODEL`
 *   when the WASM backend or a weights file cannot be loaded
 * @example
 * const detector = await createFaceDetector({ logger });
 * try {
 *   const faces = await detector.detect(photo.image); // best face first
 * } finally {
 *   detector.dispose();
 * }
 */
export async function createFaceDetector(options: FaceDetectorOptions = {}): Promise<FaceDetector> {
  checkOptions(options);
  const logger = options.logger ?? silentLogger();
  const minScore = options.minScore ?? 0.5;
  const maxInputSide = options.maxInputSide ?? DEFAULT_MAX_INPUT_SIDE;
  const maxFaces = options.maxFaces ?? 100;
  const modelDir = options.modelDir ?? defaultModelDir();
  const withExpressions = options.expressions ?? true;

  await initBackend(logger);

  const t0 = performance.now();
  const ssd = new faceapi.SsdMobilenetv1();
  const landmarkNet = new faceapi.FaceLandmark68Net();
  const recognitionNet = new faceapi.FaceRecognitionNet();
  const expressionNet = withExpressions ? new faceapi.FaceExpressionNet() : null;
  const nets: faceapi.NeuralNetwork<unknown>[] = [ssd, landmarkNet, recognitionNet];
  if (expressionNet) nets.push(expressionNet);
  // face-api's node builds read `<dir>/<model>-weights_manifest.json` and its shards with fs.
  // allSettled, not all: a net still loading when another fails would leak its weights.
  const loads = await Promise.allSettled(nets.map((net) => net.loadFromDisk(modelDir)));
  const failed = loads.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    const err: unknown = failed.reason;
    for (const net of nets) if (net.isLoaded) net.dispose();
    throw new BoothError(
      'FACE_MODEL',
      `could not load face-api weights from ${modelDir}: ${errorMessage(err)}; ` +
        'the folder must hold ssd_mobilenetv1_model, face_landmark_68_model, face_recognition_model and face_expression_model ' +
        '(manifest + .bin), as shipped in @vladmandic/face-api/model',
      { cause: err },
    );
  }
  logger.debug({ modelDir, ms: Math.round(performance.now() - t0) }, 'face models loaded');

  const ssdOptions = new faceapi.SsdMobilenetv1Options({ minConfidence: minScore, maxResults: maxFaces });
  let disposed = false;
  let freed = false;
  let pending = 0;
  const free = (): void => {
    if (freed) return;
    freed = true;
    for (const net of nets) net.dispose();
  };
  // One photo at a time: concurrent calls would only multiply peak tensor memory, the WASM
  // backend runs one op at a time anyway.
  let queue: Promise<unknown> = Promise.resolve();

  /** Detect, landmark and describe the faces of one view; coordinates in view pixels. */
  async function analyse(
    view: View,
  ): Promise<Array<{ box: Rect; score: number; landmarks: Point[]; descriptor: Float32Array; expressions: ExpressionScores | undefined }>> {
    const input = faceapi.tf.tensor3d(view.data, [view.height, view.width, 3], 'int32');
    try {
      const detections = await ssd.locateFaces(input, ssdOptions);
      if (detections.length === 0) return [];

      // Landmarks from the detector box, as face-api's withFaceLandmarks() does.
      const boxCrops = await faceapi.extractFaceTensors(input, detections);
      let landmarks: faceapi.FaceLandmarks68[];
      try {
        landmarks = await Promise.all(boxCrops.map(async (crop) => first(await landmarkNet.detectLandmarks(crop))));
      } finally {
        for (const t of boxCrops) t.dispose();
      }
      const shifted = detections.map((d, i) => {
        const lm = landmarks[i];
        if (lm === undefined) throw new Error('missing landmarks');
        return lm.shiftBy<faceapi.FaceLandmarks68>(d.box.x, d.box.y);
      });

      // Descriptors from the dlib-style aligned crop, as face-api's withFaceDescriptors() does;
      // this crop, not the detector box, is what the recogniser was trained on.
      const aligned = shifted.map((lm) => lm.align(null, { useDlibAlignment: true }));
      const alignedCrops = await faceapi.extractFaceTensors(input, aligned);
      let descriptors: Float32Array[];
      try {
        descriptors = await Promise.all(alignedCrops.map(async (crop) => first(await recognitionNet.computeFaceDescriptor(crop))));
      } finally {
        for (const t of alignedCrops) t.dispose();
      }
      // Expressions from the landmark-aligned box (not dlib's), as face-api's withFaceExpressions() does.
      let expressions: Array<ExpressionScores | undefined> = detections.map(() => undefined);
      if (expressionNet) {
        const expressionCrops = await faceapi.extractFaceTensors(input, shifted.map((lm) => lm.align()));
        try {
          expressions = await Promise.all(expressionCrops.map(async (crop) => toScores(first(await expressionNet.predictExpressions(crop)))));
        } finally {
          for (const t of expressionCrops) t.dispose();
        }
      }
      return detections.map((d, i) => {
        const descriptor = descriptors[i];
        if (descriptor === undefined) throw new Error('missing descriptor');
        const { x, y, width, height } = d.box;
        return {
          box: { x, y, width, height },
          score: d.score,
          landmarks: (shifted[i]?.positions ?? []).map((p) => ({ x: p.x, y: p.y })),
          descriptor,
          expressions: expressions[i],
        };
      });
    } finally {
      input.dispose();
    }
  }

  async function run(image: RawImage): Promise<FaceWithExpressions[]> {
    const started = performance.now();
    let view = await makeView(image, maxInputSide, 0);
    let found = await analyse(view);
    let pass = 1;
    if (found.length === 0) {
      // Second chance for close-ups: the same photo, smaller, inside a grey border.
      view = await makeView(image, maxInputSide, CLOSE_UP_PAD);
      found = await analyse(view);
      pass = 2;
    }
    const toX = (x: number) => (x - view.ox) * view.sx;
    const toY = (y: number) => (y - view.oy) * view.sy;
    const faces = found.map(
      (f): FaceWithExpressions => ({
        box: clampRect(
          { x: toX(f.box.x), y: toY(f.box.y), width: f.box.width * view.sx, height: f.box.height * view.sy },
          image.width,
          image.height,
        ),
        score: f.score,
        // Landmarks stay unclamped: a chin below the frame is real information for the crop.
        landmarks: f.landmarks.map((p) => ({ x: toX(p.x), y: toY(p.y) })),
        descriptor: f.descriptor,
        ...(f.expressions ? { expressions: f.expressions } : {}),
      }),
    );
    faces.sort((a, b) => b.score - a.score);
    logger.debug(
      {
        width: image.width,
        height: image.height,
        view: `${view.width}x${view.height}`,
        pass,
        faces: faces.length,
        ms: Math.round(performance.now() - started),
      },
      'faces detected',
    );
    return faces;
  }

  return {
    maxInputSide,
    async detect(image: RawImage): Promise<FaceWithExpressions[]> {
      if (disposed) throw new BoothError('FACE_MODEL', 'this face detector was disposed; create a new one');
      checkImage(image);
      pending++;
      const result = queue
        .then(() => run(image))
        .catch((err: unknown) => {
          if (err instanceof BoothError) throw err;
          throw new BoothError('FACE_MODEL', `face detection failed on a ${image.width}×${image.height} image: ${errorMessage(err)}`, {
            cause: err,
          });
        })
        .finally(() => {
          pending--;
          if (disposed && pending === 0) free();
        });
      queue = result.catch(() => undefined);
      return result;
    },
    dispose(): void {
      disposed = true;
      // Calls made before dispose() still get their answer; the weights go when the last is done.
      if (pending === 0) free();
    },
  };
}
