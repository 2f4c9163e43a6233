/**
 * Authentication of the REST API: one bearer token for everything but `/health` (and the static,
 * data-free UI shell and API description), compared in constant time; and short-lived signed URLs
 * for the few GET routes a browser must open without being able to set a header (`<img>` sources,
 * a file download, an `EventSource`). A signature covers exactly one path and an expiry, is an
 * HMAC keyed by the token, and is worthless once the token changes — so no token ever appears in a
 * URL, a log line or a browser history. Binding to a non-loopback address without a token is
 * refused by {@link assertSafeBinding}.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import { BoothError } from '../errors.js';

/**
 * Constant-time comparison of a presented token with the configured one. Both are hashed first,
 * so neither the comparison time nor an early length mismatch tells an attacker anything.
 * @example tokenMatches('s3cret', 's3cret') // true
 */
export function tokenMatches(presented: string, expected: string): boolean {
  const a = createHash('sha256').update(presented, 'utf8').digest();
  const b = createHash('sha256').update(expected, 'utf8').digest();
  return timingSafeEqual(a, b);
}

/** The token from an `Authorization: Bearer <token>` header, or null. */
export function bearerToken(header: string | undefined): string | null {
  if (!header) return null;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m?.[1] ?? null;
}

/** Whether a host string names a loopback interface (127.0.0.0/8, ::1, localhost). */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return h === '::1' || h === '0:0:0:0:0:0:0:1';
  return false;
}

/**
 * Refuse to listen on a non-loopback address without a token: anyone on the network could
 * otherwise read photos and start GPU jobs.
 * @throws BoothError `INVALID_ARGUMENT` naming the host and what to do
 */
export function assertSafeBinding(host: string, token: string | null | undefined): void {
  if (isLoopback(host)) return;
  if (!token) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `--host ${host} is reachable from other machines, so a token is required: pass --token <secret> or set BOOTH_TOKEN (at least 16 characters), or bind to 127.0.0.1`,
    );
  }
  if (token.length < 16) {
    throw new BoothError('INVALID_ARGUMENT', `the token is ${token.length} characters; use at least 16 (e.g. \`openssl rand -hex 24\`) when binding to ${host}`);
  }
}

/** Signs and checks path-scoped, expiring URLs. */
export interface UrlSigner {
  /**
   * A URL for `path` (with any query it already has) that works without a header until `ttlS`
   * seconds from now. Without a token (loopback, auth off) the path is returned as is.
   */
  sign(path: string, ttlS?: number): string;
  /** Whether `sig`/`exp` are a valid, unexpired signature of `path`. */
  verify(path: string, sig: string | undefined, exp: string | undefined): boolean;
}

/** Default lifetime of a signed URL: long enough to review a session or finish a slow download. */
export const SIGNED_URL_TTL_S = 6 * 3600;

/**
 * Create the signer for a token.
 * @param token - the API token, or null when auth is off
 * @param now - clock (tests)
 * @example const signer = createUrlSigner('s3cret'); signer.sign('/api/sessions/a/photos/…/preview')
 */
export function createUrlSigner(token: string | null, now: () => number = Date.now): UrlSigner {
  // A key derived from the token, not the token itself, so a signature is no oracle for it.
  const key = token === null ? null : createHash('sha256').update(`booth-url-signing:${token}`).digest();
  const mac = (path: string, exp: string): string => createHmac('sha256', key as Buffer).update(`${exp}\n${path}`).digest('base64url');
  return {
    sign(path, ttlS = SIGNED_URL_TTL_S) {
      if (key === null) return path;
      const exp = String(Math.floor(now() / 1000) + ttlS);
      return `${path}${path.includes('?') ? '&' : '?'}exp=${exp}&sig=${mac(path, exp)}`;
    },
    verify(path, sig, exp) {
      if (key === null || !sig || !exp || !/^\d{1,12}$/.test(exp)) return false;
      if (Number(exp) * 1000 < now()) return false;
      const expected = Buffer.from(mac(path, exp));
      const given = Buffer.from(sig);
      return given.length === expected.length && timingSafeEqual(given, expected);
    },
  };
}

/**
 * The path a signature covers: the URL's path exactly as the request sent it (no dot-segment or
 * percent-decoding normalisation, so `/a/x/../b` is not the `/a/b` that was signed) plus its query
 * minus `exp` and `sig`, so a signed download URL cannot be replayed against another object or
 * with other parameters. A repeated `sig` or `exp` yields none (the request is then refused).
 */
export function signedPathOf(url: string): { path: string; sig: string | undefined; exp: string | undefined } {
  const cut = url.search(/[?#]/);
  const rawPath = cut === -1 ? url : url.slice(0, cut);
  const query = new URLSearchParams(cut === -1 || url[cut] === '#' ? '' : url.slice(cut + 1).split('#')[0]);
  const one = (name: string): string | undefined => {
    const all = query.getAll(name);
    return all.length === 1 ? all[0] : undefined;
  };
  const sig = one('sig');
  const exp = one('exp');
  query.delete('sig');
  query.delete('exp');
  const q = query.toString();
  return { path: `${rawPath}${q ? `?${q}` : ''}`, sig, exp };
}
