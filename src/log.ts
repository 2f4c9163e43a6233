/**
 * Logging. Library code logs through a pino logger passed in by the caller (or this module's
 * default, which writes JSON lines to stderr so that stdout stays clean for `--json` output).
 * Level from `BOOTH_LOG_LEVEL` (default `warn` for the CLI, so a person sees only what matters).
 */
import { pino, type Logger } from 'pino';

export type { Logger } from 'pino';

/**
 * Create a logger writing JSON lines to stderr.
 *
 * @param level - pino level; defaults to `BOOTH_LOG_LEVEL` or `warn`
 * @returns a pino logger
 */
export function createLogger(level?: string): Logger {
  return pino(
    {
      level: level ?? process.env.BOOTH_LOG_LEVEL ?? 'warn',
      base: undefined,
      redact: { paths: ['*.secretAccessKey', '*.sessionToken', '*.apiKey', '*.authorization'], censor: '[redacted]' },
    },
    pino.destination(2),
  );
}

/** A logger that discards everything (for tests and embedding). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
