/**
 * Worker-thread side of the analysis pool (piscina). Each worker keeps its own face detector, so
 * detections of several photos run in parallel on several cores — TensorFlow.js's WASM backend
 * is single-threaded in Node. Results and failures come back as plain data: an Error's `code`
 * does not survive the structured clone between threads.
 */
import { BoothError, errorMessage, isBoothError, type BoothErrorCode } from '../errors.js';
import { analysePhoto, type Analysis, type AnalyseInput } from './analyse.js';
import { createFaceDetector, type FaceDetector } from './faces.js';

/** A task sent to the worker. */
export interface WorkerTask {
  input: AnalyseInput;
  faces: boolean;
}

/** What the worker sends back. */
export type WorkerResult =
  | { ok: true; analysis: Analysis; preview: Uint8Array }
  | { ok: false; code: BoothErrorCode | 'INTERNAL'; message: string };

let detector: Promise<FaceDetector> | null = null;

/** piscina entry point: analyse one photo. Never throws; failures are returned as data. */
export default async function run(task: WorkerTask): Promise<WorkerResult> {
  try {
    if (task.faces) detector ??= createFaceDetector();
    const input = { ...task.input, bytes: Buffer.from(task.input.bytes) };
    const { analysis, preview } = await analysePhoto(input, task.faces ? await (detector as Promise<FaceDetector>) : null);
    return { ok: true, analysis, preview };
  } catch (err) {
    if (err instanceof BoothError || isBoothError(err)) return { ok: false, code: err.code, message: err.message };
    return { ok: false, code: 'INTERNAL', message: errorMessage(err) };
  }
}
