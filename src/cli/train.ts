/**
 * Training commands: `train`, `runs`, `status`, `logs`, `stop`, `resume`, `extend` (the control
 * plane, on any machine that reaches the store) and `worker` (on the GPU host, started by a
 * launcher). A run is named by its session and, optionally, its id; without an id the newest run
 * of the session is meant. Exit codes: 0 ok, 1 failure, 2 usage; `worker` exits 75 when it was
 * preempted with a resume state (a scheduler should requeue it) and 76 when a person stopped it.
 */
import { readFile } from 'node:fs/promises';
import { Option, type Command } from 'commander';
import { BoothError, errorMessage, isBoothError } from '../errors.js';
import { extendRun, resumeRun, runInfo, stopRun, trainSession, type LaunchResult, type ReconcileOptions, type RunInfo } from '../training/control.js';
import { LAUNCHERS, existingLauncher, launcherByName, probeLaunch } from '../training/launchers/index.js';
import { defaultWorkRoot, runWorkDir } from '../training/launchers/local.js';
import type { SlurmSettingsInput } from '../training/launchers/slurm-settings.js';
import { slurmOutputFile } from '../training/launchers/slurm.js';
import type { Launcher } from '../training/launchers/types.js';
import { parseEventLine } from '../training/protocol.js';
import { estimateVramGb } from '../training/requirements.js';
import { RunStore, runKeys, type EffectiveState } from '../training/runs.js';
import { PRESETS, PRESET_INFO, stagesOf, totalSteps, type PresetName } from '../training/spec.js';
import { resolveTrainerCommand } from '../training/trainer-command.js';
import { startWorker } from '../training/worker.js';
import { checkName, print, usage, type Cli } from './shared.js';

const TERMINAL: ReadonlySet<EffectiveState> = new Set(['done', 'failed', 'stopped', 'preempted', 'lost']);

/** Reconciling with the scheduler: every command that shows or acts on a run's state asks it. */
const RECONCILE: ReconcileOptions = { probe: (launch) => probeLaunch(launch) };

/** Slurm flags shared by train, resume and extend (they win over BOOTH_SLURM_* and the settings file). */
interface SlurmFlags {
  partition?: string;
  gpus?: number;
  gpuType?: string;
  cpus?: number;
  mem?: string;
  time?: string;
  account?: string;
  qos?: string;
  constraint?: string;
  signalGrace?: number;
  sbatch: string[];
}

function addLauncherOptions(cmd: Command, defaultHint: string): Command {
  return cmd
    .addOption(new Option('--launcher <name>', `where the worker runs: local (this machine) or slurm (a batch job; see docs/slurm.md) (default: ${defaultHint})`).choices([...LAUNCHERS]))
    .option('--partition <name>', 'Slurm: partition ($BOOTH_SLURM_PARTITION)')
    .option('--gpus <n>', 'Slurm: GPUs on the node, 0 for none; more than 1 trains with accelerate, one process per GPU ($BOOTH_SLURM_GPUS, default 1)', nonNegativeInt('--gpus'))
    .option('--gpu-type <type>', 'Slurm: GPU type in the request, e.g. a100 ($BOOTH_SLURM_GPU_TYPE)')
    .option('--cpus <n>', 'Slurm: --cpus-per-task ($BOOTH_SLURM_CPUS)', positiveInt('--cpus'))
    .option('--mem <size>', 'Slurm: memory, e.g. 64G ($BOOTH_SLURM_MEM)')
    .option('--time <limit>', 'Slurm: time limit per allocation, e.g. 04:00:00; the run requeues itself to go on ($BOOTH_SLURM_TIME)')
    .option('--account <name>', 'Slurm: account ($BOOTH_SLURM_ACCOUNT)')
    .option('--qos <name>', 'Slurm: quality of service ($BOOTH_SLURM_QOS)')
    .option('--constraint <expr>', 'Slurm: node features ($BOOTH_SLURM_CONSTRAINT)')
    .option('--signal-grace <seconds>', 'Slurm: warning before the time limit for saving a resume state ($BOOTH_SLURM_SIGNAL_GRACE, default 300)', positiveInt('--signal-grace'))
    .option('--sbatch <option>', 'Slurm: one more #SBATCH option, repeatable: --sbatch=--exclusive', (v: string, prev: string[]) => [...prev, v], [] as string[]);
}

function slurmInput(o: SlurmFlags): SlurmSettingsInput {
  const { partition, gpus, gpuType, cpus, mem, time, account, qos, constraint, signalGrace, sbatch } = o;
  return { partition, gpus, gpuType, cpus, mem, time, account, qos, constraint, signalGrace, sbatch };
}

function launcherFor(name: string, workerArgs: string[] = [], flags?: SlurmFlags): Launcher {
  if (!(LAUNCHERS as readonly string[]).includes(name)) usage(`--launcher ${name}: choose one of ${LAUNCHERS.join(', ')}`);
  return launcherByName(name, { workerArgs, ...(flags ? { slurm: slurmInput(flags) } : {}) });
}

/** The launcher a resume/extend uses: the one asked for, else the one of the run's last launch, else local. */
async function resumeLauncher(store: Parameters<typeof runInfo>[0], session: string, run: string | undefined, o: SlurmFlags & { launcher?: string; check: boolean }): Promise<Launcher> {
  let name = o.launcher;
  if (!name) {
    const info = await runInfo(store, session, run);
    name = info.record.launches.at(-1)?.launcher ?? 'local';
  }
  return launcherFor(name, o.check ? [] : ['--no-check'], o);
}

function nonNegativeInt(flag: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 0) usage(`${flag} must be a whole number (0 or more), got ${JSON.stringify(value)}`);
    return n;
  };
}

function positiveInt(flag: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n <= 0) usage(`${flag} must be a positive integer, got ${JSON.stringify(value)}`);
    return n;
  };
}

/** `1h 02m`, `4m 05s`, `12s`. */
export function formatDuration(seconds: number | null): string {
  if (seconds === null || !Number.isFinite(seconds)) return '–';
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (h > 0) return `${h}h ${String(m).padStart(2, '0')}m`;
  if (m > 0) return `${m}m ${String(s % 60).padStart(2, '0')}s`;
  return `${s}s`;
}

function bar(done: number, total: number, width = 30): string {
  const f = total > 0 ? Math.min(1, done / total) : 0;
  const n = Math.round(f * width);
  return `[${'#'.repeat(n)}${'-'.repeat(width - n)}] ${(f * 100).toFixed(1)}%`;
}

/** The human view of a run for `booth status`. */
export function formatRun(info: RunInfo): string {
  const { record, status, spec } = info;
  const total = status?.total || totalSteps(spec);
  const step = status?.step ?? 0;
  const lines = [`Run ${record.run} of "${record.session}": ${info.state.toUpperCase()}${record.preset ? ` (preset ${record.preset})` : ''}`];
  lines.push(`  ${bar(step, total)}  step ${step}/${total}${status?.stage ? `  stage ${status.stage} ${status.stageStep ?? 0}/${status.stageTotal ?? 0}` : ''}`);
  if (status) {
    const facts = [
      status.loss !== null ? `loss ${status.loss.toFixed(4)}` : null,
      status.lr !== null ? `lr ${status.lr.toExponential(2)}` : null,
      status.itPerS !== null ? `${status.itPerS.toFixed(2)} it/s` : null,
      ['running', 'starting'].includes(info.state) && status.etaS !== null ? `ETA ${formatDuration(status.etaS)}` : null,
      status.vramGb !== null ? `VRAM ${status.vramGb.toFixed(1)} GiB` : null,
    ].filter(Boolean);
    if (facts.length) lines.push(`  ${facts.join('  ')}`);
    if (status.message) lines.push(`  ${status.message}`);
    lines.push(`  resume states: ${status.resumeStates.length ? status.resumeStates.join(', ') : 'none yet'}; samples: ${status.samples.length}; attempt ${status.attempt} on ${status.worker.host}`);
    if (status.model) lines.push(`  model: ${status.model.key} (${status.model.format})`);
    if (status.error) {
      lines.push(`  error: ${status.error.message}`);
      for (const l of status.error.tail.slice(-10)) lines.push(`    | ${l}`);
    }
  }
  const last = record.launches.at(-1);
  if (last?.launcher === 'slurm') {
    const out = slurmOutputFile(last.handle);
    lines.push(`  Slurm job ${String(last.handle.jobId)}${info.scheduler?.detail ? `: ${info.scheduler.detail.replace(/^Slurm job /, '')}` : ''}${out ? `; output ${out}` : ''}`);
  }
  if (info.state === 'lost') {
    lines.push(
      last?.launcher === 'slurm'
        ? `  the Slurm job ended without a final report from the worker (killed, node failure or time limit before the save); \`booth resume ${record.session}\` continues from the last complete resume state`
        : `  the worker process is gone without a final report; \`booth resume ${record.session}\` continues from the last complete resume state`,
    );
  }
  const s = record.session;
  const next: Record<string, string> = {
    running: `booth logs ${s} -f  ·  booth stop ${s}`,
    starting: `booth logs ${s} -f`,
    launched: `booth logs ${s} -f`,
    stopping: `booth status ${s} --watch`,
    stopped: `booth resume ${s}`,
    preempted: `booth resume ${s}`,
    failed: `booth logs ${s}  ·  booth resume ${s}`,
    lost: `booth resume ${s}`,
    done: `booth extend ${s} --steps ${total + 500}`,
  };
  if (next[info.state]) lines.push(`Next: ${next[info.state]}`);
  return lines.join('\n');
}

/**
 * One log line as a person reads it: protocol events condensed, everything else as is; `null`
 * for lines not worth a line of their own (class-image progress between tenths).
 */
export function formatLogLine(line: string): string | null {
  const p = parseEventLine(line);
  if (p.kind !== 'event') return line;
  const e = p.event;
  switch (e.event) {
    case 'started':
      return `started: ${e.total_steps} steps from step ${e.start_step} on ${e.device} (${e.precision})${e.resumed_from ? `, resumed from ${e.resumed_from}` : ''}`;
    case 'step':
      return `step ${e.step}/${e.total} ${e.stage} loss ${e.loss.toFixed(4)} lr ${e.lr.toExponential(2)}${e.it_per_s !== null ? ` ${e.it_per_s.toFixed(2)} it/s` : ''}${e.eta_s !== null ? ` ETA ${formatDuration(e.eta_s)}` : ''}`;
    case 'resume_state':
      return `resume state saved at step ${e.step} (${e.reason}, ${(e.bytes / 2 ** 20).toFixed(1)} MiB)`;
    case 'sample':
      return `sample ${e.path}: ${e.prompt}`;
    case 'stage_done':
      return `stage ${e.stage} done at step ${e.step}`;
    case 'class_images':
      return e.done === e.total || e.done % Math.max(1, Math.ceil(e.total / 10)) === 0 ? `class images ${e.done}/${e.total}` : null;
    case 'done':
      return `done at step ${e.step}: ${e.format} weights in ${e.output}/`;
    case 'preempted':
      return `preempted by ${e.signal} at step ${e.step}; state ${e.state ?? 'none'}`;
    case 'error':
      return `ERROR (${e.kind}): ${e.message}`;
  }
}

function launched(json: boolean, r: LaunchResult, session: string, verb: string): void {
  const stages = stagesOf(r.spec).map((s) => `${s.name} ${s.steps}`).join(' + ');
  print(json, { session, run: r.run, attempt: r.attempt, handle: r.handle, estimatedVramGb: r.estimate.gb, spec: r.spec }, () =>
    [
      `${verb} run ${r.run} of "${session}" (attempt ${r.attempt}): ${totalSteps(r.spec)} steps (${stages}), ${r.spec.mode.type}, ${r.spec.resolution} px, ${r.spec.base.model}.`,
      r.handle.jobId !== undefined
        ? `Estimated GPU memory: ${r.estimate.gb} GiB. Slurm job ${String(r.handle.jobId)}, its output ${slurmOutputFile(r.handle) ?? '?'} (booth logs ${session} --slurm)`
        : `Estimated GPU memory: ${r.estimate.gb} GiB. Worker pid ${String(r.handle.pid ?? '?')}, its own log ${String(r.handle.logFile ?? '')}`,
      `Follow: booth logs ${session} -f   ·   booth status ${session}   ·   booth stop ${session}`,
    ].join('\n'),
  );
}

/** Registers the training commands on the root program. */
export function registerTrainCommands(cli: Cli): void {
  const { program } = cli;

  addLauncherOptions(program
    .command('train <session>')
    .description(
      'start a training run of a prepared session on a GPU (the worker runs detached; this command returns at once).\n' +
        `Presets:\n${PRESETS.map((p) => `  ${p.padEnd(17)} ${PRESET_INFO[p]}`).join('\n')}\n` +
        'Examples:\n  booth train alice\n  booth train alice --preset face-sd15 --steps 2000 --set optimizer.type=adamw\n  booth train alice --spec my-spec.json --dry-run --json',
    )
    .addOption(
      new Option('--preset <name>', 'starting point (default from the session: SD 1.5/2.1 person → face-sd15, else object-sd15; SDXL → face-lora-sdxl; FLUX.1 → face-lora-flux or object-lora-flux; SD 3.5 → face-lora-sd35)').choices([
        ...PRESETS,
      ]),
    )
    .option('--spec <file>', 'a whole job spec as JSON instead of a preset (see docs/training.md)')
    .option('--set <path=value>', 'override one spec field, repeatable: --set schedule.unet.steps=2000 --set mixedPrecision=bf16', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--steps <n>', 'total optimizer steps (resizes the last stage)', positiveInt('--steps'))
    .option('--base-model <path-or-id>', 'local Diffusers folder on the GPU host, or a Hugging Face model id'), 'local')
    .option('--no-check', 'skip the GPU host check (GPU present, packages, free VRAM) before training')
    .option('--dry-run', 'print the spec and the memory estimate; launch nothing')
    .option('--json', 'print JSON')
    .action(async (session: string, o: SlurmFlags & { preset?: PresetName; spec?: string; set: string[]; steps?: number; baseModel?: string; launcher?: string; check: boolean; dryRun?: boolean; json?: boolean }) => {
      checkName(session);
      const { store, sessions } = await cli.context();
      let spec: unknown;
      if (o.spec) {
        if (o.preset) usage('--spec and --preset exclude each other');
        try {
          spec = JSON.parse(await readFile(o.spec, 'utf8'));
        } catch (err) {
          usage(`--spec ${o.spec}: ${errorMessage(err)}`);
        }
      }
      const file = o.spec;
      // A person may keep several spec files: problems found in one name it.
      const namingFile = async <T>(fn: () => Promise<T>): Promise<T> => {
        try {
          return await fn();
        } catch (err) {
          if (file !== undefined && isBoothError(err, 'INVALID_ARGUMENT') && err.message.startsWith('the spec ')) throw new BoothError('INVALID_ARGUMENT', `--spec ${file}: ${err.message}`, { cause: err });
          throw err;
        }
      };
      const req = { ...(o.preset ? { preset: o.preset } : {}), ...(spec !== undefined ? { spec } : {}), set: o.set, ...(o.steps ? { steps: o.steps } : {}), ...(o.baseModel ? { baseModel: o.baseModel } : {}) };
      if (o.dryRun) {
        const { buildSpec } = await import('../training/control.js');
        const built = await namingFile(() => buildSpec(sessions, session, 'dry-run', req));
        const est = estimateVramGb(built.spec);
        print(Boolean(o.json), { spec: built.spec, preset: built.preset, estimatedVramGb: est.gb, estimateTerms: est.terms }, () =>
          `${JSON.stringify(built.spec, null, 2)}\n\n${totalSteps(built.spec)} steps; estimated GPU memory ${est.gb} GiB (${Object.entries(est.terms).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ')}). Nothing launched (--dry-run).`,
        );
        return;
      }
      const launcher = launcherFor(o.launcher ?? 'local', o.check ? [] : ['--no-check'], o);
      launched(Boolean(o.json), await namingFile(() => trainSession(store, sessions, launcher, session, req)), session, 'Launched');
    });

  program
    .command('runs <session>')
    .description('list the training runs of a session, oldest first')
    .option('--json', 'print JSON')
    .action(async (session: string, o: { json?: boolean }) => {
      checkName(session);
      const { store } = await cli.context();
      const ids = await new RunStore(store).list(session);
      type Row = { run: string; state: EffectiveState; step: number; total: number; preset: string | null; createdAt: string; attempts: number } | { run: string; error: string };
      const rows: Row[] = [];
      for (const id of ids) {
        try {
          const info = await runInfo(store, session, id, RECONCILE);
          rows.push({ run: id, state: info.state, step: info.status?.step ?? 0, total: info.status?.total || totalSteps(info.spec), preset: info.record.preset, createdAt: info.record.createdAt, attempts: info.record.launches.length });
        } catch (err) {
          rows.push({ run: id, error: errorMessage(err) });
        }
      }
      print(Boolean(o.json), { session, runs: rows }, () =>
        rows.length === 0
          ? `No runs yet. Start one: booth train ${session}`
          : rows.map((r) => ('error' in r ? `${r.run}  ERROR ${r.error}` : `${r.run}  ${r.state.padEnd(9)} ${String(r.step).padStart(6)}/${r.total}  ${r.preset ?? 'custom'}  ${r.attempts} attempt(s)`)).join('\n'),
      );
    });

  program
    .command('status <session> [run]')
    .description('show a run: state, step, loss, learning rate, speed, ETA, resume states, errors (default: the newest run)')
    .option('--watch', 'refresh every 2 s until the run ends')
    .option('--json', 'print JSON (record, status, spec, state)')
    .action(async (session: string, run: string | undefined, o: { watch?: boolean; json?: boolean }) => {
      checkName(session);
      const { store } = await cli.context();
      for (;;) {
        const info = await runInfo(store, session, run, RECONCILE);
        if (o.watch && !o.json && process.stdout.isTTY) process.stdout.write('\x1b[2J\x1b[H');
        print(Boolean(o.json), info, () => formatRun(info));
        if (!o.watch || TERMINAL.has(info.state)) break;
        await new Promise((r) => setTimeout(r, 2000));
      }
    });

  program
    .command('logs <session> [run]')
    .description("print a run's log: trainer events condensed into lines, the trainer's stderr, the worker's notes (default: the newest run, all attempts)")
    .option('-f, --follow', 'keep printing new lines until the run ends')
    .option('--attempt <n>', 'only this attempt', positiveInt('--attempt'))
    .option('--raw', 'print protocol events as raw JSON lines')
    .option('--slurm', "print the Slurm output files of the run's Slurm jobs instead (readable where the log directory is)")
    .action(async (session: string, run: string | undefined, o: { follow?: boolean; attempt?: number; raw?: boolean; slurm?: boolean }) => {
      checkName(session);
      const { store } = await cli.context();
      const id = await new RunStore(store).resolve(session, run);
      if (o.slurm) {
        const info = await runInfo(store, session, id);
        const files = [...new Set(info.record.launches.filter((l) => l.launcher === 'slurm').map((l) => slurmOutputFile(l.handle)).filter((f): f is string => f !== null))];
        if (files.length === 0) usage(`run ${id} has no Slurm launches; its log is \`booth logs ${session} ${id}\``);
        for (const file of files) {
          process.stdout.write(`==> ${file} <==\n`);
          try {
            process.stdout.write(await readFile(file, 'utf8'));
          } catch (err) {
            process.stdout.write(`(cannot read it here: ${errorMessage(err)}; it is on the cluster's shared filesystem)\n`);
          }
        }
        return;
      }
      const keys = runKeys(session, id);
      const offsets = new Map<number, number>();
      const partial = new Map<number, string>();
      const emit = (attempt: number, text: string, final: boolean) => {
        const buf = (partial.get(attempt) ?? '') + text;
        const lines = buf.split('\n');
        partial.set(attempt, final ? '' : lines.pop()!);
        for (const line of lines) {
          const text = o.raw ? line : formatLogLine(line);
          if (text !== null && (line !== '' || !final)) process.stdout.write(`${text}\n`);
        }
      };
      const readNew = async (attempt: number): Promise<void> => {
        const key = keys.log(attempt);
        const head = await store.head(key);
        const from = offsets.get(attempt) ?? 0;
        if (!head || head.size <= from) return;
        const stream = await store.get(key, { range: { start: from } });
        const chunks: Buffer[] = [];
        for await (const c of stream as AsyncIterable<Buffer>) chunks.push(Buffer.from(c));
        const data = Buffer.concat(chunks);
        offsets.set(attempt, from + data.length);
        emit(attempt, data.toString('utf8'), false);
      };
      for (;;) {
        const info = await runInfo(store, session, id, RECONCILE);
        // Attempts are numbered 1…n without gaps; a scheduler's requeues add attempts that only
        // the worker's status knows about.
        const newest = Math.max(0, ...info.record.launches.map((l) => l.attempt), info.status?.attempt ?? 0);
        const attempts = o.attempt ? [o.attempt] : Array.from({ length: newest }, (_, i) => i + 1);
        for (const a of attempts) await readNew(a);
        if (!o.follow || TERMINAL.has(info.state)) {
          // One more read: the worker uploads its log after its final status.
          if (o.follow) {
            await new Promise((r) => setTimeout(r, 1500));
            for (const a of attempts) await readNew(a);
          }
          for (const a of attempts) emit(a, '', true);
          if (o.follow) process.stderr.write(`run ${id}: ${info.state}${info.status?.message ? ` — ${info.status.message}` : ''}\n`);
          break;
        }
        await new Promise((r) => setTimeout(r, 1000));
      }
      if (offsets.size === 0 && !o.follow) {
        const info = await runInfo(store, session, id);
        if (info.record.launches.length === 0) process.stderr.write(`run ${id} has no log yet\n`);
      }
    });

  program
    .command('stop <session> [run]')
    .description('stop a run gracefully: the trainer saves a resume state, the worker uploads it, the run becomes resumable')
    .option('--wait', 'wait until the run has stopped')
    .option('--json', 'print JSON')
    .action(async (session: string, run: string | undefined, o: { wait?: boolean; json?: boolean }) => {
      checkName(session);
      const { store } = await cli.context();
      // The run's last launch says which launcher stops it (a Slurm job is cancelled with scancel).
      const info = await stopRun(store, (name) => existingLauncher(name), session, run, RECONCILE);
      let state: EffectiveState = 'stopping';
      let final: RunInfo = info;
      if (o.wait) {
        for (;;) {
          final = await runInfo(store, session, info.record.run, RECONCILE);
          state = final.state;
          if (TERMINAL.has(state)) break;
          await new Promise((r) => setTimeout(r, 1000));
        }
      }
      print(Boolean(o.json), { session, run: info.record.run, state, step: final.status?.step ?? null }, () =>
        o.wait ? `Run ${info.record.run} ${state} at step ${final.status?.step ?? 0}. Continue with: booth resume ${session}` : `Asked run ${info.record.run} to stop; it saves a resume state first. Watch: booth status ${session} --watch`,
      );
    });

  addLauncherOptions(program
    .command('resume <session> [run]')
    .description('continue a stopped, preempted, failed or lost run from its newest complete resume state, at the exact step'), "the run's last launcher")
    .option('--no-check', 'skip the GPU host check')
    .option('--json', 'print JSON')
    .action(async (session: string, run: string | undefined, o: SlurmFlags & { launcher?: string; check: boolean; json?: boolean }) => {
      checkName(session);
      const { store } = await cli.context();
      launched(Boolean(o.json), await resumeRun(store, await resumeLauncher(store, session, run, o), session, run, RECONCILE), session, 'Resumed');
    });

  addLauncherOptions(program
    .command('extend <session> [run]')
    .description('train a run further: raise its total step count and continue from its newest resume state (a finished run continues from its final state)'), "the run's last launcher")
    .requiredOption('--steps <n>', 'the new total number of steps (above the current total)', positiveInt('--steps'))
    .option('--no-check', 'skip the GPU host check')
    .option('--json', 'print JSON')
    .action(async (session: string, run: string | undefined, o: SlurmFlags & { steps: number; launcher?: string; check: boolean; json?: boolean }) => {
      checkName(session);
      const { store } = await cli.context();
      launched(Boolean(o.json), await extendRun(store, await resumeLauncher(store, session, run, o), session, run, o.steps, RECONCILE), session, 'Extended');
    });

  program
    .command('worker <session> <run>')
    .description(
      'run one attempt of a training run on this GPU host (launchers start this; you rarely need to). ' +
        'Pulls spec, dataset and the newest resume state from the store, checks the GPU, runs the trainer, uploads progress, states and the model. ' +
        'Exit 0 done, 75 preempted (resumable; requeue it), 76 stopped by `booth stop` (resumable), 1 failed. Trainer command: $BOOTH_TRAINER, else $BOOTH_PYTHON -m booth_trainer',
    )
    .option('--attempt <n>', 'attempt number (names the log object)', positiveInt('--attempt'), 1)
    .option('--work-dir <dir>', 'local work directory (default $BOOTH_WORK_DIR/<session>/<run> or ~/.cache/booth/work/…)')
    .option('--no-check', 'skip the GPU host check')
    .option('--grace <seconds>', 'how long the trainer gets to save after a stop signal', positiveInt('--grace'), 120)
    .option('--processes <n>', 'trainer processes, one per GPU on this node; above 1 the trainer runs under `accelerate launch` (default $BOOTH_TRAINER_PROCESSES or 1)', positiveInt('--processes'))
    .action(async (session: string, run: string, o: { attempt: number; workDir?: string; check: boolean; grace: number; processes?: number }) => {
      checkName(session);
      runKeys(session, run);
      const { store, logger } = await cli.context();
      const trainer = resolveTrainerCommand(process.env, o.processes ? { processes: o.processes } : {});
      const handle = startWorker({
        store,
        session,
        run,
        attempt: o.attempt,
        workDir: o.workDir ?? runWorkDir(defaultWorkRoot(), session, run),
        trainer: trainer.command,
        ...(trainer.train ? { trainCommand: trainer.train } : {}),
        env: trainer.env,
        logger,
        check: o.check,
        graceMs: o.grace * 1000,
      });
      const onSignal = (sig: 'SIGTERM' | 'SIGUSR1' | 'SIGINT') => () => handle.stop(sig);
      process.on('SIGTERM', onSignal('SIGTERM'));
      process.on('SIGUSR1', onSignal('SIGUSR1'));
      process.on('SIGINT', onSignal('SIGINT'));
      const result = await handle.done;
      process.stderr.write(`booth worker: ${result.state}: ${result.message}\n`);
      process.exitCode = result.exitCode;
    });
}
