/**
 * Logging. Library code logs through a pino logger passed in by the caller (or this module's
 * default, which writes JSON lines to stderr so that stdout stays clean for `--json` output).
 * Level from `BOOTH_LOG_LEVEL` (default `warn` for the CLI, so a person sees only what matters).
 *
 * Secrets never reach a log line: fields named like credentials are censored by pino wherever a
 * caller puts them ({@link SECRET_LOG_PATHS}), and URLs are logged through {@link redactUrl}, which
 * masks passwords in the authority and signature-like query parameters.
 */
import { pino, type Logger } from 'pino';

export type { Logger } from 'pino';

/** What a censored value is replaced with. */
export const REDACTED = '[redacted]';

const SECRET_FIELDS = ['authorization', 'cookie', 'secret', 'token', 'apiKey', 'password', 'secretAccessKey', 'sessionToken', 'credentials'];

/**
 * pino redaction paths: each secret-like field at the top level and up to three levels down
 * (`{ err: { config: { apiKey } } }`), plus request headers. pino has no recursive wildcard, so
 * the depths are spelled out.
 */
export const SECRET_LOG_PATHS: readonly string[] = [
  ...SECRET_FIELDS.flatMap((f) => [f, `*.${f}`, `*.*.${f}`, `*.*.*.${f}`]),
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["x-api-key"]',
  'headers.authorization',
  'headers.cookie',
];

/** The pino `redact` option every Booth logger uses. */
export const REDACT = { paths: [...SECRET_LOG_PATHS], censor: REDACTED };

/** Query parameters whose values are credentials or signatures. */
const SECRET_QUERY = /([?&](?:sig|signature|exp|token|access_token|key|api_key|apikey|secret|password|x-amz-signature|x-amz-credential|x-amz-security-token)=)[^&#]*/gi;

/**
 * A URL (absolute or a path with a query) as it may be logged or shown in an error: the user
 * info of `scheme://user:password@host` (a user name alone is often a token too) and
 * signature-like query values (`sig`, `exp`, `token`,
 * `X-Amz-Signature`, …) replaced by `[redacted]`. Anything that is not URL-shaped is returned
 * with only those two patterns masked, so it is safe on any string.
 * @example redactUrl('s3://AKIA:wJalr@bucket/x') // 's3://[redacted]@bucket/x'
 * @example redactUrl('/api/x?exp=1&sig=abc') // '/api/x?exp=[redacted]&sig=[redacted]'
 */
export function redactUrl(url: string): string {
  return url.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/)[^/?#]*@/, `$1${REDACTED}@`).replace(SECRET_QUERY, `$1${REDACTED}`);
}

/**
 * Create a logger writing JSON lines to stderr.
 *
 * @param level - pino level; defaults to `BOOTH_LOG_LEVEL` or `warn`
 * @returns a pino logger
 */
export function createLogger(level?: string): Logger {
  return pino({ level: level ?? process.env.BOOTH_LOG_LEVEL ?? 'warn', base: undefined, redact: REDACT }, pino.destination(2));
}

/**
 * A child of `logger` that censors {@link SECRET_LOG_PATHS}, for loggers handed in from outside
 * (an embedding application's or a test's) that were not created with Booth's redaction.
 */
export function redactingLogger(logger: Logger): Logger {
  return logger.child({}, { redact: REDACT });
}

/** A logger that discards everything (for tests and embedding). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
