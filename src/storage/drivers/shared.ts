/**
 * Argument checks every driver runs before any I/O, kept in one place so that the drivers agree
 * on what is an error (the shared contract suite holds them to it). Internal to the storage
 * folder; callers see these only through the errors they throw.
 */
import { Readable } from 'node:stream';
import { BoothError } from '../../errors.js';
import type { ByteRange, PutBody, PutOptions } from '../types.js';

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

/** The condition of a conditional put, validated. */
export type PutCondition = { ifMatch: string } | { ifNoneMatch: '*' };

/**
 * Validate a put's conditional-write options (JavaScript callers can pass anything).
 *
 * @param key - the key being written, for the message
 * @param options - the caller's put options
 * @returns the condition, or undefined for an unconditional put
 * @throws BoothError `INVALID_ARGUMENT` for both conditions at once, an `ifMatch` that is not a
 *   non-empty string, or an `ifNoneMatch` other than `'*'`
 * @example
 * checkCondition('a', { ifMatch: info.etag }); // { ifMatch: '…' }
 */
export function checkCondition(key: string, options: PutOptions | undefined): PutCondition | undefined {
  const ifMatch: unknown = options?.ifMatch;
  const ifNoneMatch: unknown = options?.ifNoneMatch;
  if (ifMatch !== undefined && ifNoneMatch !== undefined) {
    throw new BoothError('INVALID_ARGUMENT', `put of key "${key}": give either "ifMatch" or "ifNoneMatch", not both`);
  }
  if (ifMatch !== undefined) {
    if (typeof ifMatch !== 'string' || ifMatch === '') {
      throw new BoothError('INVALID_ARGUMENT', `put of key "${key}": option "ifMatch" must be the etag that head, list or put reported, got ${JSON.stringify(ifMatch)}`);
    }
    return { ifMatch };
  }
  if (ifNoneMatch !== undefined) {
    if (ifNoneMatch !== '*') {
      throw new BoothError('INVALID_ARGUMENT', `put of key "${key}": option "ifNoneMatch" must be '*' (create only if absent), got ${JSON.stringify(ifNoneMatch)}`);
    }
    return { ifNoneMatch: '*' };
  }
  return undefined;
}

/**
 * The error of a conditional put whose condition did not hold.
 *
 * @param url - the store's URL
 * @param key - the key written
 * @param condition - the condition that failed
 * @param current - what the store holds now, when the driver knows it: an etag, or null for no object
 * @returns a `PRECONDITION_FAILED` error naming the key and what to do
 * @example
 * throw preconditionFailed(url, key, { ifNoneMatch: '*' }, existing.etag);
 */
export function preconditionFailed(url: string, key: string, condition: PutCondition, current?: string | null, cause?: unknown): BoothError {
  const why =
    'ifMatch' in condition
      ? current === null
        ? `it was expected at version "${condition.ifMatch}" but no longer exists`
        : `it changed since it was read (expected version "${condition.ifMatch}"${current !== undefined ? `, found "${current}"` : ''})`
      : 'it already exists (ifNoneMatch "*": create only)';
  return new BoothError(
    'PRECONDITION_FAILED',
    `conditional put of key "${key}" in ${url} was refused: ${why}; nothing was written. Read the object again, re-apply the change and write again`,
    cause === undefined ? undefined : { cause },
  );
}
