/** Run the built `booth` CLI (dist/cli/main.js) as a child process, as a person or a script would. */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';

export const CLI = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));

/**
 * Whether the CLI is built; when it is not, prints why the tests of `what` skip (`npm test`
 * builds before it runs vitest, so they run there).
 * @param what - the tests that need it, for the message, e.g. `the restart tests`
 */
export function cliBuilt(what: string): boolean {
  const built = existsSync(CLI);
  if (!built) console.warn(`skipping ${what}: ${CLI} is missing; run \`npm run build\` (npm test does)`);
  return built;
}

/** Run `booth ...args` against the given store; never throws on a non-zero exit. */
export async function booth(store: string, args: string[], env: Record<string, string> = {}) {
  const r = await execa(process.execPath, [CLI, ...args], {
    env: { BOOTH_STORAGE: store, BOOTH_LOG_LEVEL: 'error', ...env },
    reject: false,
    stdin: 'ignore',
  });
  return { code: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** Start `booth ...args` without waiting (for kill tests). */
export function boothSpawn(store: string, args: string[]): ResultPromise {
  return execa(process.execPath, [CLI, ...args], { env: { BOOTH_STORAGE: store, BOOTH_LOG_LEVEL: 'error' }, reject: false, stdin: 'ignore' });
}

/** Parse JSON printed by `--json`, with the raw text in the error when it is not JSON. */
export function json<T = Record<string, unknown>>(text: string): T {
  try {
    return JSON.parse(text) as T;
  } catch (err) {
    throw new Error(`not JSON: ${text.slice(0, 500)}`, { cause: err });
  }
}
