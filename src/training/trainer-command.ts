/**
 * Which command starts the trainer on this host. `BOOTH_TRAINER` overrides everything (a JSON
 * array such as `["/opt/venv/bin/python","-m","booth_trainer"]`, or a plain command line split on
 * spaces); otherwise the Python of `BOOTH_PYTHON`, else the venv that `scripts/setup-gpu-host.sh`
 * creates (`~/.cache/booth/trainer-venv`), else `python3`, runs `-m booth_trainer` with this
 * package's `trainer/` folder on `PYTHONPATH`, so a checkout needs no separate install of the
 * trainer's own code.
 */
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BoothError } from '../errors.js';

/** The `trainer/` folder of this installation (dist/training → ../../trainer). */
export const TRAINER_DIR = fileURLToPath(new URL('../../trainer/', import.meta.url));

/** Default venv created by scripts/setup-gpu-host.sh. */
export const DEFAULT_VENV = path.join(homedir(), '.cache', 'booth', 'trainer-venv');

/** The trainer command and the environment to run it with. */
export interface TrainerCommand {
  command: string[];
  env: Record<string, string | undefined>;
}

/**
 * Resolves the trainer command from the environment.
 * @throws BoothError `INVALID_ARGUMENT` when `BOOTH_TRAINER` is malformed JSON or empty
 * @example resolveTrainerCommand({ BOOTH_PYTHON: '/opt/venv/bin/python' }).command // ['/opt/venv/bin/python', '-m', 'booth_trainer']
 */
export function resolveTrainerCommand(env: Record<string, string | undefined> = process.env): TrainerCommand {
  const pythonPath = [TRAINER_DIR, env.PYTHONPATH].filter((p): p is string => Boolean(p)).join(path.delimiter);
  const outEnv = { ...env, PYTHONPATH: pythonPath, PYTHONUNBUFFERED: '1' };
  const custom = env.BOOTH_TRAINER?.trim();
  if (custom) {
    let command: unknown;
    if (custom.startsWith('[')) {
      try {
        command = JSON.parse(custom);
      } catch {
        throw new BoothError('INVALID_ARGUMENT', `BOOTH_TRAINER is not a valid JSON array: ${custom}`);
      }
    } else {
      command = custom.split(/\s+/);
    }
    if (!Array.isArray(command) || command.length === 0 || !command.every((c) => typeof c === 'string' && c.length > 0)) {
      throw new BoothError('INVALID_ARGUMENT', 'BOOTH_TRAINER must be a non-empty JSON array of strings or a command line');
    }
    return { command: command as string[], env: outEnv };
  }
  const venvPython = path.join(DEFAULT_VENV, 'bin', 'python');
  const python = env.BOOTH_PYTHON?.trim() || (existsSync(venvPython) ? venvPython : 'python3');
  return { command: [python, '-m', 'booth_trainer'], env: outEnv };
}
