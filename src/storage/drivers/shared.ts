/**
 * Argument checks every driver runs before any I/O, kept in one place so that the drivers agree
 * on what is an error (the shared contract suite holds them to it). Internal to the storage
 * folder; callers see these only through the errors they throw.
 */
import { Readable } from 'node:stream';
import { BoothError } from '../../errors.js';
import type { ByteRange, PutBody } from '../types.js';

/** Default and maximum page size of `list`, as on S3. */
export const MAX_PAGE = 1000;

/**
 * Validate a page size.
 *
 * @param limit - the caller's `limit`, or undefined for the default
 * @returns a page size between 1 and {@link MAX_PAGE}
 * @throws BoothError `INVALID_ARGUMENT` for anything but a positive integer
 * @example
 * checkLimit(undefined); // 1000
 */
export function checkLimit(limit: number | undefined): number {
  if (limit === undefined) return MAX_PAGE;
  if (!Number.isInteger(limit) || limit < 1) {
    throw new BoothError('INVALID_ARGUMENT', `list: option "limit" must be a positive integer, got ${String(limit)}`);
  }
  return Math.min(limit, MAX_PAGE);
}

/**
 * Validate a list cursor's type (its content is the driver's business).
 *
 * @param cursor - the caller's `cursor`
 * @returns the cursor, or undefined for the first page
 * @throws BoothError `INVALID_ARGUMENT` for a non-string or empty cursor
 * @example
 * checkCursor(page.cursor);
 */
export function checkCursor(cursor: unknown): string | undefined {
  if (cursor === undefined) return undefined;
  if (typeof cursor !== 'string' || cursor === '') {
    throw new BoothError('INVALID_ARGUMENT', 'list: option "cursor" must be the string returned as `cursor` by the previous page');
  }
  return cursor;
}

/**
 * Validate a byte range.
 *
 * @param key - the key being read, for the message
 * @param range - the caller's range
 * @returns the range, or undefined for the whole object
 * @throws BoothError `INVALID_ARGUMENT` unless 0 <= start <= end (both whole numbers)
 * @example
 * checkRange('a', { start: 10 }); // { start: 10 }
 */
export function checkRange(key: string, range: ByteRange | undefined): ByteRange | undefined {
  if (range === undefined) return undefined;
  const { start, end } = range;
  const valid = Number.isSafeInteger(start) && start >= 0 && (end === undefined || (Number.isSafeInteger(end) && end >= start));
  if (!valid) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `get of key "${key}": range ${JSON.stringify(range)} is not valid; use whole numbers with 0 <= start <= end ` +
        '(end is inclusive, or omitted for "to the end")',
    );
  }
  return end === undefined ? { start } : { start, end };
}

/**
 * Check that a put body is one of the accepted types (JavaScript callers can pass anything).
 *
 * @param key - the key being written, for the message
 * @param body - the caller's body
 * @throws BoothError `INVALID_ARGUMENT` for any other type
 * @example
 * assertBody('a', Buffer.from('x'));
 */
export function assertBody(key: string, body: unknown): asserts body is PutBody {
  if (typeof body === 'string' || body instanceof Uint8Array || body instanceof Readable) return;
  const type = body === null ? 'null' : typeof body === 'object' ? ((body as object).constructor?.name ?? 'object') : typeof body;
  throw new BoothError(
    'INVALID_ARGUMENT',
    `put of key "${key}": the body must be a Buffer, Uint8Array, string or Readable stream, got ${type}`,
  );
}

/**
 * A store used after `close()`: a programming error, reported as such.
 *
 * @param url - the store's URL
 * @returns the error to throw
 * @example
 * if (closed) throw closedError(url);
 */
export function closedError(url: string): BoothError {
  return new BoothError('STORAGE', `the store ${url} is closed; open a new one with openStore()`);
}
