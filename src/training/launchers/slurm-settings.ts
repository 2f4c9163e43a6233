/**
 * Slurm settings: what the batch job asks the scheduler for (partition, GPUs, CPUs, memory, time
 * limit, account, QoS, constraint, extra `#SBATCH` lines) and how the job's shell is prepared on
 * the compute node (module lines, setup lines, exported variables). One zod schema; values come
 * from three layers, later ones winning: a JSON file (`BOOTH_SLURM_CONFIG`, else
 * `~/.config/booth/slurm.json` when it exists), `BOOTH_SLURM_*` environment variables, and the
 * command-line flags of `booth train/resume/extend`. docs/slurm.md lists every field.
 */
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { BoothError, errorMessage } from '../../errors.js';

/** A value that goes into an `#SBATCH` line: sbatch parses those itself, so no blanks or quotes. */
const directiveValue = z.string().min(1).regex(/^[^\s'"\\]+$/, 'must not contain blanks, quotes or backslashes');

/** The Slurm settings schema (all optional except the defaults shown). */
export const slurmSettingsSchema = z
  .object({
    /** `--partition`. Default: the cluster's default partition. */
    partition: directiveValue.optional(),
    /** GPUs on the one node (0 = CPU only, as in the local test cluster). Default 1. */
    gpus: z.number().int().min(0).max(64).default(1),
    /** How GPUs are requested: `gres` → `--gres=gpu[:type]:N` (works everywhere), `gpus` → `--gpus=[type:]N`. */
    gpuFlag: z.enum(['gres', 'gpus']).default('gres'),
    /** GPU type in the request, e.g. `a100` (cluster-specific names). */
    gpuType: directiveValue.optional(),
    /** `--cpus-per-task`. */
    cpus: z.number().int().positive().optional(),
    /** `--mem`, e.g. `64G`. */
    mem: directiveValue.optional(),
    /** `--time`, any Slurm form: minutes (`90`), `HH:MM:SS`, `D-HH`. */
    time: directiveValue.optional(),
    account: directiveValue.optional(),
    qos: directiveValue.optional(),
    constraint: directiveValue.optional(),
    /**
     * Seconds before the time limit at which Slurm signals the job (`--signal=B:USR1@N`); the
     * trainer saves then. Default: what the run's resume state needs (its size at a slow disk's
     * speed, saved and uploaded; docs/slurm.md), else {@link DEFAULT_SIGNAL_GRACE}.
     */
    signalGrace: z.number().int().min(10).max(65535).optional(),
    /** Ask to be requeued (`--requeue`) and requeue itself after a preemption or time-limit save. */
    requeue: z.boolean().default(true),
    /** Extra `#SBATCH` options, one per entry, e.g. `--exclusive` or `--mail-type=END`. */
    sbatch: z.array(z.string()).default([]),
    /** Environment modules to load (`module load <name>`). */
    modules: z.array(directiveValue).default([]),
    /** Shell lines run before the worker, as written (e.g. `source ~/venvs/booth/bin/activate`). */
    setup: z.array(z.string()).default([]),
    /** Variables exported in the job (values shell-quoted), e.g. `{ "HF_HOME": "/scratch/hf" }`. */
    env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'is not a variable name'), z.string()).default({}),
    /** Job name; default `booth-<session>`. */
    jobName: directiveValue.optional(),
    /** Where batch scripts and Slurm's output files go; must be visible from the compute nodes. Default `~/.cache/booth/slurm`. */
    logDir: z.string().min(1).optional(),
    /** The worker's work directory on the node (default: the worker's own, `$BOOTH_WORK_DIR` or `~/.cache/booth/work/<session>/<run>`). */
    workDir: z.string().min(1).optional(),
    /** Node.js on the compute nodes (default: this one's path, which assumes a shared software tree). */
    node: z.string().min(1).optional(),
    /** The booth CLI entry on the compute nodes (default: this installation's `dist/cli/main.js`). */
    cli: z.string().min(1).optional(),
  })
  .strict();

/** The signal lead when neither the settings nor the run say (seconds). */
export const DEFAULT_SIGNAL_GRACE = 300;

/** Validated Slurm settings. */
export type SlurmSettings = z.infer<typeof slurmSettingsSchema>;
/** Slurm settings before defaults (what a file, the environment or flags provide). */
export type SlurmSettingsInput = z.input<typeof slurmSettingsSchema>;

/** Environment variable → setting, for the scalar settings. */
export const SLURM_ENV: Readonly<Record<string, keyof SlurmSettingsInput>> = {
  BOOTH_SLURM_PARTITION: 'partition',
  BOOTH_SLURM_GPUS: 'gpus',
  BOOTH_SLURM_GPU_FLAG: 'gpuFlag',
  BOOTH_SLURM_GPU_TYPE: 'gpuType',
  BOOTH_SLURM_CPUS: 'cpus',
  BOOTH_SLURM_MEM: 'mem',
  BOOTH_SLURM_TIME: 'time',
  BOOTH_SLURM_ACCOUNT: 'account',
  BOOTH_SLURM_QOS: 'qos',
  BOOTH_SLURM_CONSTRAINT: 'constraint',
  BOOTH_SLURM_SIGNAL_GRACE: 'signalGrace',
  BOOTH_SLURM_REQUEUE: 'requeue',
  BOOTH_SLURM_JOB_NAME: 'jobName',
  BOOTH_SLURM_LOG_DIR: 'logDir',
  BOOTH_SLURM_WORK_DIR: 'workDir',
  BOOTH_SLURM_NODE: 'node',
  BOOTH_SLURM_CLI: 'cli',
};
/** List-valued variables: one entry per line. */
const SLURM_ENV_LISTS: Readonly<Record<string, 'sbatch' | 'modules' | 'setup'>> = {
  BOOTH_SLURM_SBATCH: 'sbatch',
  BOOTH_SLURM_MODULES: 'modules',
  BOOTH_SLURM_SETUP: 'setup',
};

const NUMERIC = new Set(['gpus', 'cpus', 'signalGrace']);

/** The settings file to read: `BOOTH_SLURM_CONFIG`, else `~/.config/booth/slurm.json` when present, else none. */
export function slurmConfigPath(env: Record<string, string | undefined> = process.env): string | null {
  const explicit = env.BOOTH_SLURM_CONFIG?.trim();
  if (explicit) return explicit;
  const home = path.join(homedir(), '.config', 'booth', 'slurm.json');
  return existsSync(home) ? home : null;
}

/** Turns one environment string into the setting's type. */
function fromEnv(name: string, key: string, raw: string): unknown {
  if (NUMERIC.has(key)) {
    const n = Number(raw);
    if (!Number.isInteger(n)) throw new BoothError('INVALID_ARGUMENT', `${name}=${JSON.stringify(raw)}: expected a whole number`);
    return n;
  }
  if (key === 'requeue') {
    if (/^(1|true|yes)$/i.test(raw)) return true;
    if (/^(0|false|no)$/i.test(raw)) return false;
    throw new BoothError('INVALID_ARGUMENT', `${name}=${JSON.stringify(raw)}: expected true or false`);
  }
  return raw;
}

/**
 * Resolves the Slurm settings from file, environment and flags (in that order, later wins).
 * @param flags - values from the command line (undefined entries are ignored)
 * @param env - the environment (default `process.env`)
 * @returns validated settings with defaults
 * @throws BoothError `INVALID_ARGUMENT` naming the file, variable or field and the bad value
 * @example loadSlurmSettings({ partition: 'gpu', time: '04:00:00' }, { BOOTH_SLURM_GPUS: '2' }).gpus // 2
 */
export function loadSlurmSettings(flags: SlurmSettingsInput = {}, env: Record<string, string | undefined> = process.env): SlurmSettings {
  let merged: Record<string, unknown> = {};
  let source = 'the defaults';
  const file = slurmConfigPath(env);
  if (file) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(file, 'utf8'));
    } catch (err) {
      throw new BoothError('INVALID_ARGUMENT', `Slurm settings file ${file} (BOOTH_SLURM_CONFIG) cannot be read as JSON: ${errorMessage(err)}`, { cause: err });
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new BoothError('INVALID_ARGUMENT', `Slurm settings file ${file} must hold a JSON object`);
    merged = { ...(parsed as Record<string, unknown>) };
    source = file;
  }
  for (const [name, key] of Object.entries(SLURM_ENV)) {
    const raw = env[name]?.trim();
    if (raw) merged[key] = fromEnv(name, key, raw);
  }
  for (const [name, key] of Object.entries(SLURM_ENV_LISTS)) {
    const raw = env[name];
    if (raw?.trim()) merged[key] = raw.split('\n').map((l) => l.trim()).filter(Boolean);
  }
  for (const [key, value] of Object.entries(flags)) {
    if (value === undefined || (Array.isArray(value) && value.length === 0)) continue;
    merged[key] = value;
  }
  const result = slurmSettingsSchema.safeParse(merged);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const field = issue.path.join('.') || '(settings)';
    const envName = Object.entries({ ...SLURM_ENV, ...SLURM_ENV_LISTS }).find(([, k]) => k === issue.path[0])?.[0];
    throw new BoothError(
      'INVALID_ARGUMENT',
      `Slurm setting "${field}" is invalid (${issue.message}); set it in ${source === 'the defaults' ? 'a flag' : `${source}, a flag`}${envName ? ` or ${envName}` : ''}. See docs/slurm.md`,
    );
  }
  return result.data;
}
