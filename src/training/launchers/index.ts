/**
 * Picking a launcher by the name a person types (`--launcher local|slurm`) or the name recorded
 * in a run's launch, and asking the launcher that made a launch about it. The Slurm launcher's
 * settings are resolved here (file, `BOOTH_SLURM_*`, flags), so callers only pass the flags.
 */
import { BoothError } from '../../errors.js';
import type { Launch } from '../runs.js';
import { createLocalLauncher } from './local.js';
import { loadSlurmSettings, slurmSettingsSchema, type SlurmSettingsInput } from './slurm-settings.js';
import { createSlurmLauncher } from './slurm.js';
import type { LaunchProbe, Launcher } from './types.js';

/** Launcher names. */
export const LAUNCHERS = ['local', 'slurm'] as const;
/** One of {@link LAUNCHERS}. */
export type LauncherName = (typeof LAUNCHERS)[number];

/** Options of {@link launcherByName}. */
export interface LauncherChoice {
  /** Extra `booth worker` arguments (e.g. `--no-check`). */
  workerArgs?: string[];
  /** Slurm settings from the command line (win over `BOOTH_SLURM_*` and the settings file). */
  slurm?: SlurmSettingsInput;
  /** Environment (default `process.env`). */
  env?: Record<string, string | undefined>;
}

/**
 * The launcher called `name`.
 * @throws BoothError `INVALID_ARGUMENT` for an unknown name or invalid Slurm settings
 * @example launcherByName('slurm', { slurm: { partition: 'gpu', time: '04:00:00' } })
 */
export function launcherByName(name: string, choice: LauncherChoice = {}): Launcher {
  const env = choice.env ?? process.env;
  if (name === 'local') return createLocalLauncher({ env, ...(choice.workerArgs ? { workerArgs: choice.workerArgs } : {}) });
  if (name === 'slurm') return createSlurmLauncher({ settings: loadSlurmSettings(choice.slurm ?? {}, env), env, ...(choice.workerArgs ? { workerArgs: choice.workerArgs } : {}) });
  throw new BoothError('INVALID_ARGUMENT', `--launcher ${name}: choose one of ${LAUNCHERS.join(', ')}`);
}

/**
 * The launcher that acts on an existing launch (stop, probe). It needs no settings, so a broken
 * Slurm settings file never keeps a person from stopping a job or seeing a run's state.
 * @example await existingLauncher('slurm').stop(record.launches.at(-1)!.handle)
 */
export function existingLauncher(name: Launch['launcher'], env: Record<string, string | undefined> = process.env): Launcher {
  return name === 'slurm' ? createSlurmLauncher({ settings: slurmSettingsSchema.parse({}), env }) : createLocalLauncher({ env });
}

/**
 * Asks the launcher recorded in a launch about it.
 * @example await probeLaunch(record.launches.at(-1)!) // { state: 'pending', detail: 'Slurm job PENDING (Priority)' }
 */
export async function probeLaunch(launch: Launch, env: Record<string, string | undefined> = process.env): Promise<LaunchProbe> {
  return existingLauncher(launch.launcher, env).probe(launch.handle);
}
