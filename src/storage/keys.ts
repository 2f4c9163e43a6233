/**
 * Object keys: the one place that decides what a key may look like. Keys come from people
 * (session names, file names) as much as from code, and the fs driver turns them into paths, so
 * every driver validates with these functions BEFORE any I/O. The rules are the intersection of
 * what S3 and common file systems accept, so that a key valid in one store is valid in every store
 * and a session can move between a folder and a bucket unchanged: `/`-separated segments, no
 * empty, `.` or `..` segment, no leading `/`, no backslash, no control or bidi-override
 * characters (they make keys that look alike but differ, or that hide their real text in
 * terminals), well-formed Unicode, at most 1024 UTF-8 bytes in all and 255 per segment, and no
 * segment starting with the fs driver's temporary-file prefix.
 */
import { BoothError } from '../errors.js';

/** Longest key in UTF-8 bytes (S3's limit). */
export const MAX_KEY_BYTES = 1024;

/** Longest segment in UTF-8 bytes (the file-name limit of ext4, XFS, APFS, NTFS). */
export const MAX_SEGMENT_BYTES = 255;

/**
 * Segment prefix reserved for the fs driver's in-flight temporary files, which listings never
 * show. Rejected in every store so that a key never silently disappears from a folder store.
 */
export const RESERVED_SEGMENT_PREFIX = '.booth-tmp-';

/** True for C0 controls (NUL included), DEL and C1 controls. */
function isControl(cp: number): boolean {
  return cp <= 0x1f || (cp >= 0x7f && cp <= 0x9f);
}

/** Embedding/override controls and isolates: they reorder how the rest of the key is displayed. */
function isBidiOverride(cp: number): boolean {
  return (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
}

/** A string iterator yields an unpaired surrogate on its own; paired ones come out as one astral char. */
function isLoneSurrogate(cp: number): boolean {
  return cp >= 0xd800 && cp <= 0xdfff;
}

/** The first character rule `value` breaks (these apply to keys and prefixes alike). */
function characterProblem(value: string): string | undefined {
  for (const ch of value) {
    const cp = ch.codePointAt(0) ?? 0;
    if (cp === 0) return 'it contains a NUL character';
    if (isControl(cp)) return `it contains the control character U+${hex(cp)}`;
    if (isBidiOverride(cp)) return `it contains the bidirectional-override character U+${hex(cp)}`;
    // Such a key cannot be encoded as UTF-8: Buffer.from would replace the surrogate with U+FFFD,
    // so two different keys would name the same object.
    if (isLoneSurrogate(cp)) return `it is not well-formed Unicode (lone surrogate U+${hex(cp)})`;
    if (ch === '\\') return 'it contains a backslash (use "/" to separate segments)';
  }
  return undefined;
}

function segmentProblem(segment: string): string | undefined {
  if (segment === '') return 'it has an empty segment (a leading, trailing or doubled "/")';
  if (segment === '.' || segment === '..') return `it has a "${segment}" segment`;
  if (segment.startsWith(RESERVED_SEGMENT_PREFIX)) {
    return `it has a segment starting with "${RESERVED_SEGMENT_PREFIX}", which is reserved for temporary files`;
  }
  const bytes = Buffer.byteLength(segment, 'utf8');
  if (bytes > MAX_SEGMENT_BYTES) return `it has a segment of ${bytes} UTF-8 bytes (at most ${MAX_SEGMENT_BYTES})`;
  return undefined;
}

function hex(cp: number): string {
  return cp.toString(16).toUpperCase().padStart(4, '0');
}

/**
 * The first rule `key` breaks, or undefined for a valid key.
 * Kept separate from the assertion so that listings can skip foreign objects without throwing.
 */
function keyProblem(key: unknown): string | undefined {
  if (typeof key !== 'string') return `it is a ${typeof key}, not a string`;
  if (key === '') return 'it is empty';
  const bytes = Buffer.byteLength(key, 'utf8');
  if (bytes > MAX_KEY_BYTES) return `it is ${bytes} UTF-8 bytes long (at most ${MAX_KEY_BYTES})`;
  const chars = characterProblem(key);
  if (chars) return chars;
  if (key.startsWith('/')) return 'it starts with "/" (keys are relative to the store)';
  for (const segment of key.split('/')) {
    const problem = segmentProblem(segment);
    if (problem) return problem;
  }
  return undefined;
}

function prefixProblem(prefix: unknown): string | undefined {
  if (typeof prefix !== 'string') return `it is a ${typeof prefix}, not a string`;
  if (prefix === '') return undefined;
  const bytes = Buffer.byteLength(prefix, 'utf8');
  if (bytes > MAX_KEY_BYTES) return `it is ${bytes} UTF-8 bytes long (at most ${MAX_KEY_BYTES})`;
  const chars = characterProblem(prefix);
  if (chars) return chars;
  if (prefix.startsWith('/')) return 'it starts with "/" (prefixes are relative to the store)';
  // The last segment may be partial ("sessions/ab" matches "sessions/abc/…") or empty (a
  // trailing "/"); only the complete segments before it must be valid segments.
  const complete = prefix.split('/').slice(0, -1);
  for (const segment of complete) {
    const problem = segmentProblem(segment);
    if (problem) return problem;
  }
  return undefined;
}

/** Quote a key for an error message so that control, bidi and other invisible characters show. */
function quote(value: unknown): string {
  if (typeof value !== 'string') return String(value);
  const shown = value.length > 120 ? `${value.slice(0, 120)}…` : value;
  // JSON.stringify escapes C0 controls and lone surrogates but leaves DEL, C1, bidi controls and
  // the line/paragraph separators raw.
  let out = '';
  for (const ch of JSON.stringify(shown)) {
    const cp = ch.codePointAt(0) ?? 0;
    const invisible = isControl(cp) || isBidiOverride(cp) || cp === 0x200e || cp === 0x200f || cp === 0x2028 || cp === 0x2029;
    out += invisible ? `\\u${hex(cp).toLowerCase()}` : ch;
  }
  return out;
}

/**
 * Check a key against Booth's key rules.
 *
 * @param key - the key to check, e.g. `sessions/alice/session.json`
 * @throws BoothError `INVALID_KEY` naming the key (JSON-escaped) and the rule it breaks
 * @example
 * assertValidKey('sessions/alice/session.json'); // ok
 * assertValidKey('sessions/../etc/passwd');      // throws INVALID_KEY: it has a ".." segment
 */
export function assertValidKey(key: string): void {
  const problem = keyProblem(key);
  if (problem !== undefined) {
    throw new BoothError(
      'INVALID_KEY',
      `invalid storage key ${quote(key)}: ${problem}; keys are "/"-separated relative names such as "sessions/alice/session.json"`,
    );
  }
}

/**
 * Check a listing prefix. The empty prefix (everything) is valid; the last segment may be partial
 * or empty; every complete segment before it follows the key rules.
 *
 * @param prefix - the prefix to check, e.g. `sessions/alice/`
 * @throws BoothError `INVALID_KEY` naming the prefix (JSON-escaped) and the rule it breaks
 * @example
 * assertValidPrefix('sessions/'); // ok
 * assertValidPrefix('/sessions'); // throws INVALID_KEY
 */
export function assertValidPrefix(prefix: string): void {
  const problem = prefixProblem(prefix);
  if (problem !== undefined) {
    throw new BoothError(
      'INVALID_KEY',
      `invalid storage prefix ${quote(prefix)}: ${problem}; prefixes are the start of a key, such as "sessions/" or "sessions/ali"`,
    );
  }
}

/**
 * Whether `key` follows the key rules; for filtering names that did not come from Booth (files
 * dropped into a folder store, objects written by other tools).
 *
 * @param key - candidate key
 * @returns true when {@link assertValidKey} would accept it
 * @example
 * isValidKey('a/b.png'); // true
 * isValidKey('a//b');    // false
 */
export function isValidKey(key: string): boolean {
  return keyProblem(key) === undefined;
}

/**
 * Join key parts with `/` and validate the result. A part may itself hold several segments
 * (`runs/3`), but nothing is trimmed or normalised: `joinKey('a/', 'b')` is rejected rather than
 * silently repaired, because a stray slash usually means a bug upstream.
 *
 * @param parts - segments or sub-paths; numbers are converted with `String`
 * @returns the joined key
 * @throws BoothError `INVALID_KEY` when the joined key breaks a rule (e.g. an empty part)
 * @example
 * joinKey('sessions', 'alice', 'runs', 3, 'status.json'); // 'sessions/alice/runs/3/status.json'
 */
export function joinKey(...parts: Array<string | number>): string {
  const key = parts.map(String).join('/');
  assertValidKey(key);
  return key;
}

/**
 * Compare two keys in UTF-8 byte order, the order every driver lists in (S3's order). JavaScript's
 * `<` compares UTF-16 code units, which differs for characters beyond U+FFFF.
 *
 * @param a - first key
 * @param b - second key
 * @returns negative, zero or positive, as for `Array.prototype.sort`
 * @example
 * ['b', 'a/b', 'a-c'].sort(compareKeys); // ['a-c', 'a/b', 'b']
 */
export function compareKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}
