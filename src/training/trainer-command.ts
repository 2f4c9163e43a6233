/**
 * Which command starts the trainer on this host. `BOOTH_TRAINER` overrides everything (a JSON
 * array such as `["/opt/venv/bin/python","-m","booth_trainer"]`, or a plain command line split on
 * spaces); otherwise the Python of `BOOTH_PYTHON`, else the venv that `scripts/setup-gpu-host.sh`
 * creates (`~/.cache/booth/trainer-venv`), else `python3`, runs `-m booth_trainer` with this
 * package's `trainer/` folder on `PYTHONPATH`, so a checkout needs no separate install of the
 * trainer's own code.
 *
 * Multi-GPU: with `processes` > 1 the `train` command goes through Hugging Face Accelerate,
 * `<python> -m accelerate.commands.launch --num_processes N [--multi_gpu] -m booth_trainer`, one
 * process per GPU on this node (data parallel: the global batch is batchSize × gradientAccumulation
 * × N per optimizer step; step counts in the spec are optimizer steps, unchanged). `check` always
 * runs as one plain process. `BOOTH_ACCELERATE` (JSON array or command line) replaces the
 * launcher prefix, e.g. `["accelerate","launch","--config_file","/etc/booth/accel.yaml"]`.
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
  /** Runs `check` (and `train` when {@link TrainerCommand.train} is absent). */
  command: string[];
  /** Runs `train` when it differs from `command` (multi-GPU through Accelerate). */
  train?: string[];
  env: Record<string, string | undefined>;
}

/** Options of {@link resolveTrainerCommand}. */
export interface TrainerCommandOptions {
  /** Trainer processes on this node, one per GPU (default `BOOTH_TRAINER_PROCESSES` or 1). */
  processes?: number;
}

function parseCommandLine(name: string, custom: string): string[] {
  let command: unknown;
  if (custom.startsWith('[')) {
    try {
      command = JSON.parse(custom);
    } catch {
      throw new BoothError('INVALID_ARGUMENT', `${name} is not a valid JSON array: ${custom}`);
    }
  } else {
    command = custom.split(/\s+/);
  }
  if (!Array.isArray(command) || command.length === 0 || !command.every((c) => typeof c === 'string' && c.length > 0)) {
    throw new BoothError('INVALID_ARGUMENT', `${name} must be a non-empty JSON array of strings or a command line`);
  }
  return command as string[];
}

/**
 * Resolves the trainer command from the environment.
 * @throws BoothError `INVALID_ARGUMENT` when `BOOTH_TRAINER` is malformed JSON or empty
 * @example resolveTrainerCommand({ BOOTH_PYTHON: '/opt/venv/bin/python' }).command // ['/opt/venv/bin/python', '-m', 'booth_trainer']
 */
export function resolveTrainerCommand(env: Record<string, string | undefined> = process.env, options: TrainerCommandOptions = {}): TrainerCommand {
  const pythonPath = [TRAINER_DIR, env.PYTHONPATH].filter((p): p is string => Boolean(p)).join(path.delimiter);
  // Hugging Face progress bars (loading, saving) are carriage-return animations: noise in a log
  // that is read line by line. A user's own setting wins.
  const outEnv = { HF_HUB_DISABLE_PROGRESS_BARS: '1', ...env, PYTHONPATH: pythonPath, PYTHONUNBUFFERED: '1' };
  const processes = options.processes ?? (env.BOOTH_TRAINER_PROCESSES?.trim() ? Number(env.BOOTH_TRAINER_PROCESSES) : 1);
  if (!Number.isInteger(processes) || processes < 1) {
    throw new BoothError('INVALID_ARGUMENT', `trainer processes must be a positive whole number (BOOTH_TRAINER_PROCESSES or --processes), got ${String(env.BOOTH_TRAINER_PROCESSES ?? processes)}`);
  }
  const custom = env.BOOTH_TRAINER?.trim();
  const venvPython = path.join(DEFAULT_VENV, 'bin', 'python');
  const python = env.BOOTH_PYTHON?.trim() || (existsSync(venvPython) ? venvPython : 'python3');
  // A custom command is taken as a whole; with several processes it is the module part that
  // Accelerate launches, so it must be `<python> -m <module>` (or BOOTH_ACCELERATE says how).
  const command = custom ? parseCommandLine('BOOTH_TRAINER', custom) : [python, '-m', 'booth_trainer'];
  if (processes === 1) return { command, env: outEnv };
  const accel = env.BOOTH_ACCELERATE?.trim();
  const prefix = accel ? parseCommandLine('BOOTH_ACCELERATE', accel) : [command[0]!, '-m', 'accelerate.commands.launch'];
  const moduleAt = command.indexOf('-m');
  const target = moduleAt >= 0 ? command.slice(moduleAt) : command.slice(1);
  return { command, train: [...prefix, '--num_processes', String(processes), '--num_machines', '1', '--multi_gpu', ...target], env: outEnv };
}
