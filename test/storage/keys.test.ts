/**
 * The key rules, on their own: every rule rejects, the near misses pass, the messages show the
 * key so that invisible characters are visible, and the helpers agree with the rules.
 */
import { describe, expect, it } from 'vitest';
import { BoothError } from '../../src/errors.js';
import {
  assertValidKey,
  assertValidPrefix,
  compareKeys,
  isValidKey,
  joinKey,
  MAX_KEY_BYTES,
} from '../../src/storage/keys.js';
import { INVALID_KEYS } from './contract.js';

function errorOf(fn: () => void): BoothError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(BoothError);
    return err as BoothError;
  }
  throw new Error('expected an error');
}

describe('assertValidKey', () => {
  it.each(INVALID_KEYS)('rejects a key with %s, naming the rule', (_rule, key, message) => {
    const err = errorOf(() => assertValidKey(key));
    expect(err.code).toBe('INVALID_KEY');
    expect(err.message).toMatch(message);
    expect(isValidKey(key)).toBe(false);
  });

  it.each([
    'a',
    'sessions/alice/session.json',
    'a b/c d',
    '.hidden',
    '..foo',
    'a..b',
    '...',
    'é/ü/😀.png',
    'x'.repeat(255),
    'a+b%c?d#e&f=g',
    'booth-tmp-not-hidden',
    '.booth-tmp',
  ])('accepts %j', (key) => {
    expect(() => assertValidKey(key)).not.toThrow();
    expect(isValidKey(key)).toBe(true);
  });

  it('accepts exactly 1024 UTF-8 bytes and rejects 1025', () => {
    const key = ['x'.repeat(255), 'x'.repeat(255), 'x'.repeat(255), 'x'.repeat(250), 'xxxxx'].join('/');
    expect(Buffer.byteLength(key)).toBe(MAX_KEY_BYTES);
    expect(() => assertValidKey(key)).not.toThrow();
    expect(() => assertValidKey(`${key}x`)).toThrow(/1025 UTF-8 bytes/);
  });

  it('counts bytes, not characters', () => {
    expect(() => assertValidKey(`a/${'é'.repeat(127)}`)).not.toThrow();
    expect(() => assertValidKey(`a/${'é'.repeat(128)}`)).toThrow(/segment of 256 UTF-8 bytes/);
  });

  it('accepts a surrogate pair but not half of one', () => {
    expect(isValidKey('\ud83d\ude00')).toBe(true);
    expect(isValidKey('\ude00\ud83d')).toBe(false);
  });

  it('shows control, bidi and separator characters escaped in the message', () => {
    const err = errorOf(() => assertValidKey('a\u0000b\u007f\u0085\u202e\u2028'));
    expect(err.message).toContain('"a\\u0000b\\u007f\\u0085\\u202e\\u2028"');
    for (const invisible of ['\u0000', '\u007f', '\u0085', '\u202e', '\u2028']) expect(err.message).not.toContain(invisible);
  });

  it('shortens very long keys in the message', () => {
    const err = errorOf(() => assertValidKey('k'.repeat(5000)));
    expect(err.message.length).toBeLessThan(400);
    expect(err.message).toContain('5000 UTF-8 bytes');
  });

  it('rejects non-strings from JavaScript callers', () => {
    expect(errorOf(() => assertValidKey(undefined as unknown as string)).message).toMatch(/undefined, not a string/);
    expect(isValidKey(42 as unknown as string)).toBe(false);
  });
});

describe('assertValidPrefix', () => {
  it.each(['', 'sessions/', 'sessions/ali', 'a/b/', '.', '..x', 'a/..'])('accepts %j', (prefix) => {
    expect(() => assertValidPrefix(prefix)).not.toThrow();
  });

  it.each([
    ['/a', /starts with "\/"/],
    ['a//', /empty segment/],
    ['../a', /"\.\." segment/],
    ['a/./', /"\." segment/],
    ['a\\b', /backslash/],
    ['a\u0000', /NUL/],
    ['a\u202e', /bidirectional/],
    ['x'.repeat(1025), /1025 UTF-8 bytes/],
  ])('rejects %j', (prefix, message) => {
    const err = errorOf(() => assertValidPrefix(prefix));
    expect(err.code).toBe('INVALID_KEY');
    expect(err.message).toMatch(/storage prefix/);
    expect(err.message).toMatch(message);
  });
});

describe('joinKey', () => {
  it('joins segments and sub-paths with "/"', () => {
    expect(joinKey('sessions', 'alice', 'runs/3', 7, 'status.json')).toBe('sessions/alice/runs/3/7/status.json');
  });

  it('validates the result instead of repairing it', () => {
    expect(() => joinKey('a/', 'b')).toThrow(/empty segment/);
    expect(() => joinKey('sessions', '')).toThrow(/empty segment/);
    expect(() => joinKey('sessions', '..', 'x')).toThrow(/"\.\." segment/);
    expect(() => joinKey()).toThrow(/empty/);
  });
});

describe('compareKeys', () => {
  it('orders by UTF-8 bytes, as S3 lists', () => {
    const keys = ['😀', 'Ａ', 'a0', 'a/b', 'a-c', 'a.txt', 'B', 'a'];
    expect([...keys].sort(compareKeys)).toEqual(['B', 'a', 'a-c', 'a.txt', 'a/b', 'a0', 'Ａ', '😀']);
    // JavaScript's default order puts the astral character first; S3 and the drivers do not.
    expect([...keys].sort()).not.toEqual([...keys].sort(compareKeys));
  });
});
