/**
 * Plumbing shared by every `booth` command module: the lazily opened context (store, sessions,
 * logger), JSON-or-human printing, usage errors (exit code 2) and phased progress bars. Command
 * groups live in their own files (`train.ts`, `caption.ts`, `export.ts`, …) and export a
 * `register…(cli)` function that `main.ts` calls, so each group can grow without touching the others.
 */
import { CommanderError, type Command } from 'commander';
import { errorMessage } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { openStore } from '../storage/index.js';
import type { ObjectStore } from '../storage/types.js';
import { SessionStore, assertSessionName } from '../sessions/store.js';
import { createProgress } from './progress.js';

/** Global options every command inherits. */
export interface GlobalOptions {
  store?: string;
  logLevel?: string;
}

/** Everything a command needs, opened lazily so `--help` never touches storage. */
export interface Context {
  store: ObjectStore;
  sessions: SessionStore;
  logger: Logger;
}

/** What a command module receives: the root program and the lazy context. */
export interface Cli {
  program: Command;
  /** Opens the store named by `--store`/`BOOTH_STORAGE` once; later calls return the same context. */
  context(): Promise<Context>;
  /** Closes whatever `context()` opened. Safe to call when nothing was opened. */
  close(): Promise<void>;
}

/** Builds the {@link Cli} handle for `program`. */
export function createCli(program: Command): Cli {
  let opened: Promise<Context> | null = null;
  return {
    program,
    context() {
      opened ??= (async () => {
        const opts = program.opts<GlobalOptions>();
        const logger = createLogger(opts.logLevel);
        const store = await openStore(opts.store);
        return { store, sessions: new SessionStore(store, { logger }), logger };
      })();
      return opened;
    },
    async close() {
      if (!opened) return;
      const ctx = await opened.catch(() => null);
      await ctx?.store.close();
    },
  };
}

/** Writes `value` as pretty JSON when `json`, else the human text from `human()`; both end in a newline. */
export function print(json: boolean, value: unknown, human: () => string): void {
  process.stdout.write(json ? `${JSON.stringify(value, null, 2)}\n` : `${human()}\n`);
}

/**
 * A command-line usage problem: `main` prints it and exits with code 2.
 * @throws always, a CommanderError with code `booth.usage`
 */
export function usage(message: string): never {
  throw new CommanderError(2, 'booth.usage', `error: ${message}`);
}

/** Validates a session name from the command line, turning a bad one into a usage error. */
export function checkName(name: string): string {
  try {
    assertSessionName(name);
  } catch (err) {
    usage(errorMessage(err));
  }
  return name;
}

/** Progress bars are drawn only for people: never with `--json`, never when stderr is not a TTY. */
export const showProgress = (json: boolean): boolean => !json && Boolean(process.stderr.isTTY);

/** A progress callback that starts a new bar whenever the phase name changes. */
export function phasedProgress(json: boolean) {
  const progress = createProgress(showProgress(json));
  let phase = '';
  return {
    onProgress(p: string, done: number, total: number, item: string) {
      if (p !== phase) {
        phase = p;
        progress.start(total, p);
      }
      progress.update(done, item);
    },
    stop() {
      progress.stop();
      phase = '';
    },
  };
}
