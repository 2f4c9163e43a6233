/**
 * Runs {@link analysePhoto} for many photos: in a pool of worker threads (piscina), one face
 * detector per worker, so a 2-core machine analyses two photos at once; or in-process with an
 * injected detector (tests, embedding, or when the compiled worker script is not available, as
 * when running the TypeScript sources directly under vitest).
 */
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { BoothError, type BoothErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import { analysePhoto, type Analysis, type AnalyseInput } from './analyse.js';
import type { WorkerResult, WorkerTask } from './analysis-worker.js';
import { createFaceDetector, type FaceDetector } from './faces.js';

/** Analyses photos, possibly several at once. */
export interface Analyser {
  /** How many photos it analyses at once; callers should keep about this many in flight. */
  readonly concurrency: number;
  /**
   * Analyse one photo.
   * @throws BoothError `IMAGE_*` for an undecodable photo; `FACE_MODEL` when detection fails
   */
  analyse(input: AnalyseInput): Promise<{ analysis: Analysis; preview: Buffer }>;
  /** Stop workers / dispose the detector it created. */
  close(): Promise<void>;
}

/** Options of {@link createAnalyser}. */
export interface AnalyserOptions {
  /** Detect faces (person sessions). */
  faces: boolean;
  /** Run in-process with this detector instead of a worker pool; the caller keeps ownership. */
  detector?: FaceDetector;
  /**
   * Worker threads; default one per core, at most 4 (each holds ~300 MB of models and buffers).
   * Without faces the default is 1: decoding and hashing take tens of milliseconds, less than a
   * worker needs to start.
   */
  threads?: number;
  /**
   * Photos expected; with fewer than {@link MIN_PHOTOS_PER_WORKER} per extra thread the pool is
   * not worth its start-up (each worker loads the face models, ~1.5 s) and analysis runs in-process.
   */
  photos?: number;
  logger?: Logger;
}

/**
 * Photos per worker below which a pool does not pay. Measured with `npm run bench:prepare` on a
 * 2-core machine: ~0.9 s detection per photo against ~1.5 s to load models in a worker.
 */
export const MIN_PHOTOS_PER_WORKER = 3;

const WORKER = fileURLToPath(new URL('./analysis-worker.js', import.meta.url));

/**
 * Create an analyser.
 * @param options - faces on/off, injected detector, thread count
 * @returns an analyser; call `close()` when done
 * @example
 * const analyser = await createAnalyser({ faces: true });
 * try { const { analysis } = await analyser.analyse({ bytes, sha256, name, targetSize: 512 }); } finally { await analyser.close(); }
 */
export async function createAnalyser(options: AnalyserOptions): Promise<Analyser> {
  let threads = options.threads ?? (options.faces ? Math.min(4, availableParallelism()) : 1);
  if (options.threads === undefined && options.photos !== undefined) {
    threads = Math.max(1, Math.min(threads, Math.floor(options.photos / MIN_PHOTOS_PER_WORKER)));
  }
  if (options.detector || threads <= 1 || !existsSync(WORKER)) return inProcess(options);
  const { Piscina } = await import('piscina');
  const pool = new Piscina<WorkerTask, WorkerResult>({
    filename: WORKER,
    minThreads: 0,
    maxThreads: threads,
    // Keep workers (and their loaded models) alive for the whole prepare.
    idleTimeout: 60_000,
  });
  options.logger?.debug({ threads }, 'analysis pool started');
  return {
    concurrency: threads,
    async analyse(input) {
      let result: WorkerResult;
      try {
        result = await pool.run({ input, faces: options.faces });
      } catch (err) {
        // The worker itself died (out of memory, native crash): not the photo's fault.
        throw new BoothError('FACE_MODEL', `analysis worker failed on ${input.name}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      }
      if (!result.ok) {
        // analysePhoto reports every failure about the photo as a BoothError, so INTERNAL means
        // the worker's own setup failed (models, backend): that stops the run, as in-process.
        throw new BoothError(result.code === 'INTERNAL' ? 'FACE_MODEL' : (result.code as BoothErrorCode), result.message);
      }
      return { analysis: result.analysis, preview: Buffer.from(result.preview) };
    },
    async close() {
      await pool.destroy();
    },
  };
}

function inProcess(options: AnalyserOptions): Analyser {
  let own: Promise<FaceDetector> | null = null;
  const detector = async (): Promise<FaceDetector | null> => {
    if (!options.faces) return null;
    if (options.detector) return options.detector;
    own ??= createFaceDetector({ logger: options.logger });
    return own;
  };
  return {
    concurrency: 1,
    async analyse(input: AnalyseInput) {
      return analysePhoto(input, await detector());
    },
    async close() {
      if (own) (await own).dispose();
    },
  };
}
