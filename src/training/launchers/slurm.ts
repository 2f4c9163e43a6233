/**
 * The Slurm launcher: runs `booth worker` as a batch job. It renders
 * `templates/slurm/booth-worker.sbatch` with the run's settings (resources as `#SBATCH` lines,
 * modules, setup lines, exported variables; every value shell-quoted or checked), writes the
 * script next to Slurm's output file under the log directory, submits it with
 * `sbatch --parsable` and keeps the job id in the handle. The job is requeueable and asks for a
 * warning signal before its time limit; the script forwards it to the worker and requeues itself
 * when the worker exits 75 (preempted with a resume state), so a long run crosses allocations on
 * its own. `probe` asks `squeue`, then `scontrol show job`, then `sacct` (accounting may be off);
 * `stop` signals the batch shell (`scancel --batch --signal=TERM`), so the save is bounded by the
 * worker's grace rather than Slurm's KillWait, and cancels a job that has not started yet.
 *
 * Left out: job arrays, heterogeneous jobs and multi-node training (one node, N GPUs).
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { homedir, hostname } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { BoothError, errorMessage } from '../../errors.js';
import { DEFAULT_SIGNAL_GRACE, type SlurmSettings } from './slurm-settings.js';
import type { LaunchHandle, LaunchProbe, LaunchRequest, Launcher } from './types.js';

/** The compiled CLI entry (dist/training/launchers → dist/cli/main.js). */
const CLI = fileURLToPath(new URL('../../cli/main.js', import.meta.url));
/** The batch script template shipped with the package. */
export const SLURM_TEMPLATE = fileURLToPath(new URL('../../../templates/slurm/booth-worker.sbatch', import.meta.url));

/** Time limit of one sbatch/squeue/scancel/scontrol/sacct call, in ms: the controller may be slow, never silent. */
const COMMAND_TIMEOUT_MS = 60_000;

/** Default folder for batch scripts and Slurm output: `~/.cache/booth/slurm` (home is shared on most clusters). */
export const defaultSlurmLogDir = (): string => path.join(homedir(), '.cache', 'booth', 'slurm');

/**
 * Quotes a word for bash: bare when it only holds safe characters, else single-quoted.
 * @example shellQuote("it's") // `'it'"'"'s'`
 */
export function shellQuote(word: string): string {
  if (word !== '' && /^[A-Za-z0-9_./:=@%+,-]+$/.test(word)) return word;
  return `'${word.replaceAll("'", `'"'"'`)}'`;
}

/**
 * Fills `{{name}}` placeholders. Values are inserted as given: callers quote them.
 * @throws BoothError `INVALID_ARGUMENT` when the template names a placeholder that has no value
 * @example renderTemplate('a {{x}}', { x: '1' }) // 'a 1'
 */
export function renderTemplate(template: string, values: Record<string, string>): string {
  return template.replace(/\{\{(\w+)\}\}/g, (_, name: string) => {
    const value = values[name];
    if (value === undefined) throw new BoothError('INVALID_ARGUMENT', `the Slurm batch template uses {{${name}}}, which Booth does not know; check templates/slurm/booth-worker.sbatch`);
    return value;
  });
}

/** What {@link renderBatchScript} needs besides the settings. */
export interface BatchScriptInput {
  session: string;
  run: string;
  /** The control plane's launch attempt; the script adds `SLURM_RESTART_COUNT`. */
  attempt: number;
  storeUrl: string;
  /** Slurm's output file pattern (`%j` = job id). */
  output: string;
  /** The job's working directory. */
  chdir: string;
  /** Extra `booth worker` arguments (e.g. `--no-check`). */
  workerArgs?: string[];
  /** Extra variables exported in the job (after the settings' own). */
  env?: Record<string, string>;
}

/** `#SBATCH` option lines for the resources in the settings (without the template's fixed ones). */
export function sbatchDirectives(s: SlurmSettings): string[] {
  const lines: string[] = [];
  const add = (opt: string) => lines.push(`#SBATCH ${opt}`);
  if (s.partition) add(`--partition=${s.partition}`);
  add('--nodes=1');
  add('--ntasks=1');
  if (s.gpus > 0) {
    if (s.gpuFlag === 'gpus') add(`--gpus=${s.gpuType ? `${s.gpuType}:` : ''}${s.gpus}`);
    else add(`--gres=gpu:${s.gpuType ? `${s.gpuType}:` : ''}${s.gpus}`);
  }
  if (s.cpus) add(`--cpus-per-task=${s.cpus}`);
  if (s.mem) add(`--mem=${s.mem}`);
  if (s.time) add(`--time=${s.time}`);
  if (s.account) add(`--account=${s.account}`);
  if (s.qos) add(`--qos=${s.qos}`);
  if (s.constraint) add(`--constraint=${s.constraint}`);
  if (s.requeue) add('--requeue');
  else add('--no-requeue');
  add(`--signal=B:USR1@${s.signalGrace ?? DEFAULT_SIGNAL_GRACE}`);
  for (const raw of s.sbatch) {
    const opt = raw.trim().replace(/^#SBATCH\s+/, '');
    if (!/^-/.test(opt) || /[\r\n]/.test(opt)) {
      throw new BoothError('INVALID_ARGUMENT', `Slurm setting "sbatch" entry ${JSON.stringify(raw)} is not one sbatch option; write e.g. "--exclusive" or "--mail-type=END"`);
    }
    add(opt);
  }
  return lines;
}

/**
 * The worker's grace (seconds the trainer gets to save after the signal before it is killed):
 * the signal's lead minus time to upload the state and write the final status, at least 10 s.
 */
export function workerGraceSeconds(s: SlurmSettings): number {
  const grace = s.signalGrace ?? DEFAULT_SIGNAL_GRACE;
  return Math.max(10, grace - Math.max(15, Math.round(grace / 5)));
}

/**
 * Renders the batch script.
 * @param template - the template text (see {@link SLURM_TEMPLATE})
 * @throws BoothError `INVALID_ARGUMENT` for a bad extra `#SBATCH` line or an unknown placeholder
 * @example renderBatchScript(await readFile(SLURM_TEMPLATE, 'utf8'), settings, { session: 'alice', run, attempt: 1, storeUrl, output: '/home/me/slurm-%j.out', chdir: '/home/me' })
 */
export function renderBatchScript(template: string, s: SlurmSettings, input: BatchScriptInput): string {
  for (const [what, value] of [['output', input.output], ['chdir', input.chdir]] as const) {
    if (/[\s'"\\]/.test(value)) throw new BoothError('INVALID_ARGUMENT', `the Slurm ${what} path ${JSON.stringify(value)} contains blanks or quotes, which #SBATCH lines cannot carry; set BOOTH_SLURM_LOG_DIR to a simpler path`);
  }
  const worker = [s.node ?? process.execPath, s.cli ?? CLI, '--store', input.storeUrl, 'worker', input.session, input.run];
  if (s.workDir) worker.push('--work-dir', s.workDir);
  worker.push('--grace', String(workerGraceSeconds(s)));
  if (s.gpus > 1) worker.push('--processes', String(s.gpus));
  worker.push(...(input.workerArgs ?? []));
  const env = { ...s.env, ...input.env };
  const script = renderTemplate(template, {
    session: shellQuote(input.session),
    run: shellQuote(input.run),
    attempt: String(input.attempt),
    signalGrace: String(s.signalGrace ?? DEFAULT_SIGNAL_GRACE),
    jobName: s.jobName ?? `booth-${input.session}`,
    output: input.output,
    chdir: input.chdir,
    directives: sbatchDirectives(s).join('\n'),
    modules: s.modules.map((m) => `module load ${shellQuote(m)}`).join('\n'),
    setup: s.setup.join('\n'),
    exports: Object.entries(env)
      .map(([k, v]) => `export ${k}=${shellQuote(v)}`)
      .join('\n'),
    requeue: s.requeue ? '1' : '0',
    worker: worker.map(shellQuote).join(' '),
  });
  // Empty sections (no modules, no setup) would leave runs of blank lines.
  return script.replace(/\n{3,}/g, '\n\n');
}

/**
 * Parses `sbatch --parsable` output: `<jobid>` or `<jobid>;<cluster>`.
 * @throws BoothError `ENVIRONMENT` when it holds no job id
 * @example parseSbatchOutput('4242;gpu-cluster\n') // { jobId: '4242', cluster: 'gpu-cluster' }
 */
export function parseSbatchOutput(stdout: string): { jobId: string; cluster?: string } {
  const line = stdout.trim().split('\n').at(-1)?.trim() ?? '';
  const m = /^(\d+(?:_\d+)?)(?:;(\S+))?$/.exec(line);
  if (!m?.[1]) throw new BoothError('ENVIRONMENT', `sbatch did not print a job id (got ${JSON.stringify(stdout.trim().slice(0, 200))})`);
  return m[2] ? { jobId: m[1], cluster: m[2] } : { jobId: m[1] };
}

/** Slurm job states that mean "waiting for resources or to start again". */
const PENDING_STATES = new Set(['PENDING', 'CONFIGURING', 'REQUEUED', 'REQUEUE_HOLD', 'REQUEUE_FED', 'RESV_DEL_HOLD', 'SUSPENDED']);
/** States in which the job's processes exist (or are being cleaned up). */
const RUNNING_STATES = new Set(['RUNNING', 'COMPLETING', 'STAGE_OUT', 'SIGNALING', 'RESIZING', 'STOPPED']);

/**
 * Maps a Slurm job state (`RUNNING`, `CANCELLED by 0`, `PENDING+`, …) to a probe state.
 * @example probeStateOf('CANCELLED by 1000') // 'gone'
 */
export function probeStateOf(slurmState: string): LaunchProbe['state'] {
  const word = slurmState.trim().split(/[\s+]/)[0]?.toUpperCase() ?? '';
  if (word === '') return 'unknown';
  if (PENDING_STATES.has(word)) return 'pending';
  if (RUNNING_STATES.has(word)) return 'running';
  return 'gone';
}

/**
 * Parses one line of `squeue -h -o '%T|%r'` (state and reason).
 * @example parseSqueueLine('PENDING|BeginTime') // { state: 'pending', detail: 'Slurm job PENDING (BeginTime)' }
 */
export function parseSqueueLine(line: string): LaunchProbe | null {
  const [state, reason] = line.trim().split('|');
  if (!state) return null;
  const why = reason && reason !== 'None' ? ` (${reason})` : '';
  return { state: probeStateOf(state), detail: `Slurm job ${state}${why}` };
}

/**
 * Parses `scontrol show job -o <id>` (one line of `Key=Value` pairs).
 * @example parseScontrolJob('JobId=7 JobName=x JobState=RUNNING Reason=None ExitCode=0:0') // { state: 'running', detail: 'Slurm job RUNNING' }
 */
export function parseScontrolJob(text: string): LaunchProbe | null {
  const state = /\bJobState=(\S+)/.exec(text)?.[1];
  if (!state) return null;
  const reason = /\bReason=(\S+)/.exec(text)?.[1];
  const exit = /\bExitCode=(\S+)/.exec(text)?.[1];
  const why = reason && reason !== 'None' ? ` (${reason})` : '';
  return { state: probeStateOf(state), detail: `Slurm job ${state}${why}${probeStateOf(state) === 'gone' && exit ? `, exit ${exit}` : ''}` };
}

/**
 * Parses `sacct -n -X -P -o State,ExitCode -j <id>` (the allocation line; the last one wins for a requeued job).
 * @example parseSacct('TIMEOUT|0:0\n') // { state: 'gone', detail: 'Slurm job TIMEOUT, exit 0:0' }
 */
export function parseSacct(text: string): LaunchProbe | null {
  const line = text.trim().split('\n').filter(Boolean).at(-1);
  if (!line) return null;
  const [state, exit] = line.split('|');
  if (!state) return null;
  return { state: probeStateOf(state), detail: `Slurm job ${state}${exit ? `, exit ${exit}` : ''}` };
}

/** How the launcher runs Slurm's commands: execa by default; tests may pass a fake. */
export type SlurmRunner = (command: string, args: string[], options?: { env?: Record<string, string | undefined>; cwd?: string }) => Promise<{ exitCode: number; stdout: string; stderr: string }>;

/** Runs a Slurm client command with a timeout; a missing binary becomes a clear `ENVIRONMENT` error. */
export const execaRunner: SlurmRunner = async (command, args, options = {}) => {
  const r = await execa(command, args, { reject: false, timeout: COMMAND_TIMEOUT_MS, stdin: 'ignore', ...(options.env ? { env: options.env, extendEnv: false } : {}), ...(options.cwd ? { cwd: options.cwd } : {}) });
  if (r.failed && r.exitCode === undefined) {
    const code = (r.cause as NodeJS.ErrnoException | undefined)?.code;
    if (code === 'ENOENT') {
      throw new BoothError('ENVIRONMENT', `${command} is not on PATH: run this on the cluster's login node, or install Slurm's client tools (slurm-client)`, { cause: r.cause });
    }
    throw new BoothError('ENVIRONMENT', `${command} ${args.join(' ')} did not finish: ${r.timedOut ? `no answer within ${COMMAND_TIMEOUT_MS / 1000} s (is slurmctld up?)` : errorMessage(r.cause ?? r.message)}`, { cause: r.cause });
  }
  return { exitCode: r.exitCode ?? 1, stdout: String(r.stdout), stderr: String(r.stderr) };
};

/** Options of {@link createSlurmLauncher}. */
export interface SlurmLauncherOptions {
  settings: SlurmSettings;
  /** Environment sbatch runs with; the job inherits it (Slurm's default `--export=ALL`). Default `process.env`. */
  env?: Record<string, string | undefined>;
  /** Extra `booth worker` arguments, e.g. `['--no-check']`. */
  workerArgs?: string[];
  /** Template text; default read from {@link SLURM_TEMPLATE}. */
  template?: string;
  /** Command runner (default {@link execaRunner}). */
  runner?: SlurmRunner;
}

/** The Slurm output file of a job, from the pattern in the handle. */
export function slurmOutputFile(handle: LaunchHandle): string | null {
  const pattern = handle.output;
  const jobId = handle.jobId;
  if (typeof pattern !== 'string' || jobId === undefined) return null;
  return pattern.replaceAll('%j', String(jobId));
}

/**
 * Creates the Slurm launcher.
 * @example const launcher = createSlurmLauncher({ settings: loadSlurmSettings({ partition: 'gpu', time: '08:00:00' }) });
 */
export function createSlurmLauncher(options: SlurmLauncherOptions): Launcher {
  const s = options.settings;
  const env = options.env ?? process.env;
  const run = options.runner ?? execaRunner;
  const logRoot = path.resolve(s.logDir ?? defaultSlurmLogDir());

  async function probe(handle: LaunchHandle): Promise<LaunchProbe> {
    const jobId = handle.jobId;
    if (jobId === undefined) return { state: 'unknown', detail: 'no Slurm job id in the launch record' };
    const id = String(jobId);
    const notes: string[] = [];
    try {
      const q = await run('squeue', ['-h', '-j', id, '--states=all', '-o', '%T|%r'], { env });
      if (q.exitCode === 0) {
        const p = parseSqueueLine(q.stdout.split('\n')[0] ?? '');
        if (p) return p;
      } else notes.push(`squeue: ${q.stderr.trim() || `exit ${q.exitCode}`}`);
      // squeue prints nothing (or "Invalid job id") once the controller has forgotten the job.
      const c = await run('scontrol', ['show', 'job', '-o', id], { env });
      if (c.exitCode === 0) {
        const p = parseScontrolJob(c.stdout);
        if (p) return p;
      }
      const forgotten = /invalid job id/i.test(`${q.stderr}\n${c.stderr}`) || (q.exitCode === 0 && q.stdout.trim() === '');
      const a = await run('sacct', ['-n', '-X', '-P', '-o', 'State,ExitCode', '-j', id], { env }).catch(() => null);
      const acct = a && a.exitCode === 0 ? parseSacct(a.stdout) : null;
      if (acct) return acct;
      if (forgotten) return { state: 'gone', detail: `Slurm job ${id} has ended and is no longer known to the controller` };
      notes.push(`scontrol: ${c.stderr.trim() || `exit ${c.exitCode}`}`);
      return { state: 'unknown', detail: `cannot ask Slurm about job ${id}: ${notes.join('; ')}` };
    } catch (err) {
      return { state: 'unknown', detail: errorMessage(err) };
    }
  }

  return {
    name: 'slurm',
    async launch(req: LaunchRequest): Promise<LaunchHandle> {
      const dir = path.join(logRoot, req.session, req.run);
      await mkdir(dir, { recursive: true });
      const template = options.template ?? (await readFile(SLURM_TEMPLATE, 'utf8'));
      const output = path.join(dir, 'slurm-%j.out');
      // The settings' lead wins; else what this run's resume state needs (from its spec).
      const settings = s.signalGrace === undefined && req.signalGrace !== undefined ? { ...s, signalGrace: req.signalGrace } : s;
      const script = renderBatchScript(template, settings, { session: req.session, run: req.run, attempt: req.attempt, storeUrl: req.storeUrl, output, chdir: dir, workerArgs: options.workerArgs ?? [], ...(req.env ? { env: req.env } : {}) });
      const scriptPath = path.join(dir, `attempt-${req.attempt}.sbatch`);
      await writeFile(scriptPath, script, { mode: 0o700 });
      const r = await run('sbatch', ['--parsable', scriptPath], { env, cwd: dir });
      if (r.exitCode !== 0) {
        throw new BoothError('ENVIRONMENT', `sbatch refused the job (exit ${r.exitCode}): ${r.stderr.trim().split('\n').slice(-3).join(' | ') || 'no message'}. Check the Slurm settings (partition, account, GPUs, time; see docs/slurm.md); the script is ${scriptPath}`);
      }
      const { jobId, cluster } = parseSbatchOutput(r.stdout);
      return { jobId, ...(cluster ? { cluster } : {}), script: scriptPath, output, submitHost: hostname() };
    },
    async stop(handle: LaunchHandle): Promise<void> {
      const jobId = handle.jobId;
      if (jobId === undefined) return;
      const id = String(jobId);
      const p = await probe(handle);
      if (p.state === 'gone') return;
      // A running job: signal only the batch shell, which forwards it to the worker; the worker
      // saves and exits 76 in its own time instead of racing Slurm's KillWait. A pending job has
      // nothing to save and is simply cancelled.
      const args = p.state === 'running' ? ['--batch', '--signal=TERM', id] : [id];
      const r = await run('scancel', args, { env });
      if (r.exitCode !== 0 && !/invalid job id|already completing|job has already finished/i.test(r.stderr)) {
        throw new BoothError('ENVIRONMENT', `scancel ${args.join(' ')} failed (exit ${r.exitCode}): ${r.stderr.trim() || 'no message'}`);
      }
    },
    probe,
  };
}
