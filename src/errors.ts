/**
 * Booth's error type. Every error a person can act on is a {@link BoothError} with a stable
 * `code` (for `--json` output and, later, the REST API) and a message that names the file, key or
 * field at fault and says what to do. The original error is kept as `cause`, as execa does.
 */

/** Stable error codes. Add new ones at the end; scripts match on these strings. */
export type BoothErrorCode =
  | 'INVALID_KEY'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'INVALID_ARGUMENT'
  | 'INVALID_MANIFEST'
  | 'STORAGE'
  | 'UNSUPPORTED_STORAGE'
  | 'IMAGE_UNREADABLE'
  | 'IMAGE_UNSUPPORTED'
  | 'IMAGE_TOO_LARGE'
  | 'IMAGE_TOO_SMALL'
  | 'FACE_MODEL'
  | 'CONFLICT'
  /** The machine cannot run the job (no GPU, too little VRAM, trainer packages missing). */
  | 'ENVIRONMENT'
  /** The trainer failed or the run is in a state that does not allow the request. */
  | 'TRAINING'
  /** Captioning failed for one photo (refusal, malformed output, timeout after retries); the others go on. */
  | 'CAPTION_FAILED'
  /** The captioning endpoint refused the whole job (bad key, unknown model, bad request). */
  | 'CAPTION_SERVICE'
  /**
   * A conditional write found the object changed since it was read (`ifMatch`) or already there
   * (`ifNoneMatch`): read it again, re-apply the change and write again.
   */
  | 'PRECONDITION_FAILED';

/**
 * An error a person can act on.
 *
 * @example
 * throw new BoothError('NOT_FOUND', `session "${name}" does not exist; list sessions with \`booth session list\``);
 */
export class BoothError extends Error {
  /** Stable machine-readable code. */
  readonly code: BoothErrorCode;

  /**
   * @param code - stable code, see {@link BoothErrorCode}
   * @param message - what went wrong, naming the file/key/field, and what to do about it
   * @param options - `cause`: the underlying error, kept for debugging
   */
  constructor(code: BoothErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BoothError';
    this.code = code;
  }
}

/** True when `err` is a {@link BoothError} with the given code. */
export function isBoothError(err: unknown, code?: BoothErrorCode): err is BoothError {
  return err instanceof BoothError && (code === undefined || err.code === code);
}

/** The message of any thrown value, for reports that must not crash on non-Error throws. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
