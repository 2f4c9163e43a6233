/**
 * The REST API's one error shape, `{ error: { code, message, requestId } }`, and the mapping from
 * every error a handler can meet to it: a {@link BoothError} keeps its stable code (scripts match
 * on it, as on the CLI's `--json` output) and gets the HTTP status its code means; a request that
 * fails schema validation names the field at fault; fastify's and its plugins' own errors (body
 * too large, rate limited, unsupported media type) get codes of the same family. Anything else is
 * `INTERNAL` with a generic message, so stack traces and internal details never reach a client
 * (they are logged with the request id instead).
 */
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { BoothError, type BoothErrorCode } from '../errors.js';

/** Codes the API adds to {@link BoothErrorCode} for HTTP-only situations. */
export type ApiErrorCode =
  | BoothErrorCode
  | 'UNAUTHORIZED'
  | 'RATE_LIMITED'
  | 'PAYLOAD_TOO_LARGE'
  | 'UNSUPPORTED_MEDIA_TYPE'
  | 'RANGE_NOT_SATISFIABLE'
  | 'METHOD_NOT_ALLOWED'
  | 'HEADERS_TOO_LARGE'
  | 'REQUEST_TIMEOUT'
  | 'INTERNAL';

/** HTTP status of each code. */
export const STATUS_OF: Readonly<Record<ApiErrorCode, number>> = {
  INVALID_KEY: 400,
  INVALID_ARGUMENT: 400,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  CONFLICT: 409,
  TRAINING: 409,
  INVALID_MANIFEST: 500,
  STORAGE: 502,
  UNSUPPORTED_STORAGE: 500,
  IMAGE_UNREADABLE: 422,
  IMAGE_UNSUPPORTED: 422,
  IMAGE_TOO_LARGE: 422,
  IMAGE_TOO_SMALL: 422,
  FACE_MODEL: 500,
  ENVIRONMENT: 503,
  CAPTION_FAILED: 502,
  CAPTION_SERVICE: 502,
  PRECONDITION_FAILED: 412,
  UNAUTHORIZED: 401,
  RATE_LIMITED: 429,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  RANGE_NOT_SATISFIABLE: 416,
  METHOD_NOT_ALLOWED: 405,
  HEADERS_TOO_LARGE: 431,
  REQUEST_TIMEOUT: 408,
  INTERNAL: 500,
};

/**
 * An error raised by the HTTP layer itself (auth, ranges, limits).
 * @example throw new ApiError('UNAUTHORIZED', 'send the token as "Authorization: Bearer <token>"');
 */
export class ApiError extends Error {
  /** Stable code. */
  readonly code: ApiErrorCode;
  /** HTTP status (from {@link STATUS_OF}). */
  readonly statusCode: number;

  /**
   * @param code - stable code
   * @param message - what went wrong and what to do
   */
  constructor(code: ApiErrorCode, message: string) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
    this.statusCode = STATUS_OF[code];
  }
}

/** The body every failed request gets. */
export interface ErrorBody {
  error: { code: ApiErrorCode; message: string; requestId: string };
}

const FASTIFY_STATUS_CODES: Readonly<Record<number, ApiErrorCode>> = {
  400: 'INVALID_ARGUMENT',
  401: 'UNAUTHORIZED',
  404: 'NOT_FOUND',
  405: 'METHOD_NOT_ALLOWED',
  413: 'PAYLOAD_TOO_LARGE',
  415: 'UNSUPPORTED_MEDIA_TYPE',
  416: 'RANGE_NOT_SATISFIABLE',
  429: 'RATE_LIMITED',
};

/** At most 200 characters of a message part. */
function clip(text: string): string {
  return text.length > 200 ? `${text.slice(0, 199)}…` : text;
}

/**
 * Turn anything thrown into the status, code and message to send.
 * @param err - what a handler or hook threw
 * @returns `internal: true` when the details must be logged and hidden from the client
 */
export function toApiError(err: unknown): { status: number; code: ApiErrorCode; message: string; internal: boolean } {
  if (err instanceof ApiError) return { status: err.statusCode, code: err.code, message: err.message, internal: false };
  if (err instanceof BoothError) {
    const status = STATUS_OF[err.code] ?? 500;
    // Storage and manifest problems name keys of the store, which is the operator's business, not a secret.
    return { status, code: err.code, message: err.message, internal: status >= 500 };
  }
  if (hasZodFastifySchemaValidationErrors(err)) {
    const first = err.validation[0];
    const where = err.validationContext ?? 'request';
    // Clipped: an unknown key or a bad value in the body can be megabytes long, and zod quotes it.
    const field = clip(first ? first.instancePath.replace(/^\//, '').replaceAll('/', '.') : '');
    const detail = clip(first?.message ?? 'is invalid');
    return {
      status: 400,
      code: 'INVALID_ARGUMENT',
      message: `${where}${field ? ` field "${field}"` : ''}: ${detail}${err.validation.length > 1 ? ` (and ${err.validation.length - 1} more problem(s))` : ''}`,
      internal: false,
    };
  }
  const e = err as { statusCode?: unknown; message?: unknown; code?: unknown };
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    const code = FASTIFY_STATUS_CODES[e.statusCode] ?? 'INVALID_ARGUMENT';
    return { status: e.statusCode, code, message: typeof e.message === 'string' ? e.message : code, internal: false };
  }
  return { status: 500, code: 'INTERNAL', message: 'the server failed to handle this request; the log has the details under this request id', internal: true };
}
