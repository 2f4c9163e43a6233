/**
 * The worker (`booth worker`): the process on the GPU host that turns a stored run into a trainer
 * process and back. It pulls the spec, the dataset and the newest complete, checksum-verified
 * resume state from the store into a local work directory, checks the host (GPU, packages, free
 * VRAM), starts the Python trainer with execa, relays its progress events into
 * `runs/<run>/status.json`, uploads resume states, samples and the final model as they appear
 * (marker last; only the newest `resumeState.keep` states are kept), and appends every trainer
 * line to the run's log. On SIGTERM/SIGUSR1 it forwards the signal, waits for the trainer's
 * resume state, uploads it and exits 75 (preempted), escalating to SIGKILL only after a grace
 * period. The store is the truth: the local work directory is a cache that any other machine can
 * rebuild. The trainer contract is docs/progress-protocol.md.
 */
import { createReadStream, createWriteStream, type WriteStream } from 'node:fs';
import { mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { execa, type ResultPromise } from 'execa';
import { BoothError, errorMessage, isBoothError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ObjectStore } from '../storage/types.js';
import { sessionKeys } from '../sessions/store.js';
import { EXIT_PREEMPTED, EXIT_STOPPED, checkReportSchema, parseEventLine, type TrainerEvent } from './protocol.js';
import { assertHostFits } from './requirements.js';
import { RunStore, runKeys, type RunState, type RunStatus } from './runs.js';
import { totalSteps, type JobSpec } from './spec.js';
import { downloadVerifiedState, mirrorDown, pruneStoredStates, uploadFolder } from './transfer.js';

/** Options of {@link startWorker}. */
export interface WorkerOptions {
  store: ObjectStore;
  session: string;
  run: string;
  /** Launch attempt this worker serves (1 for the first launch); names the log object. */
  attempt: number;
  /** Local work directory for this run (created; may hold a previous attempt's cache). */
  workDir: string;
  /** Command that starts the trainer, e.g. `['python3', '-m', 'booth_trainer']` (see `trainer-command.ts`). */
  trainer: string[];
  /**
   * Command for `train` when it differs from `trainer`: multi-GPU runs go through
   * `accelerate launch` (see `trainer-command.ts`). Stop signals are then sent as SIGTERM, the
   * signal Accelerate's launcher passes on to every process.
   */
  trainCommand?: string[];
  /** Environment for the trainer (default `process.env`). */
  env?: Record<string, string | undefined>;
  logger: Logger;
  /** Check the host before training (default true). */
  check?: boolean;
  /** How long the trainer gets to save after a stop signal before SIGKILL, in ms (default 120 000). */
  graceMs?: number;
  /** Minimum interval between status writes during steps, in ms (default 1000). */
  statusIntervalMs?: number;
  /** Interval between log uploads, in ms (default 2000). */
  logIntervalMs?: number;
  /**
   * Retries of a failed upload, and of the final status write, before it counts as failed
   * (default 4; backoff 0.5 s × 2ⁿ, so about 7.5 s of outage is ridden out). Once one upload has
   * failed for good, later ones get a single try.
   */
  uploadRetries?: number;
}

/** How the worker ended. */
export interface WorkerResult {
  state: RunState;
  /** Process exit code to use: 0 done, 75 preempted (resumable; a scheduler may requeue), 76 stopped on request (resumable), 1 failed. */
  exitCode: number;
  step: number;
  message: string;
}

/** A running worker. */
export interface WorkerHandle {
  /** Resolves when the worker has finished (never rejects: failures are a `failed` result). */
  done: Promise<WorkerResult>;
  /** Asks the worker to stop: the trainer saves a resume state and the run becomes resumable. */
  stop(signal?: 'SIGTERM' | 'SIGUSR1' | 'SIGINT'): void;
}

const TAIL_LINES = 40;

/** Backoff before retry `attempt` (0-based) of a store write: 0.5 s, 1 s, 2 s, 4 s, … */
const retryDelayMs = (attempt: number): number => 500 * 2 ** attempt;

/**
 * Starts a worker for one run.
 * @example
 * const w = startWorker({ store, session: 'alice', run, attempt: 1, workDir, trainer: ['python3', '-m', 'booth_trainer'], logger });
 * process.on('SIGTERM', () => w.stop('SIGTERM'));
 * process.exitCode = (await w.done).exitCode;
 */
export function startWorker(options: WorkerOptions): WorkerHandle {
  const w = new Worker(options);
  return { done: w.run(), stop: (signal = 'SIGTERM') => w.stop(signal) };
}

class Worker {
  private readonly runs: RunStore;
  private readonly keys: ReturnType<typeof runKeys>;
  private readonly o: Required<Omit<WorkerOptions, 'env' | 'trainCommand'>> & { env: Record<string, string | undefined>; trainCommand?: string[] };
  private status!: RunStatus;
  private spec!: JobSpec;
  private child: ResultPromise | null = null;
  private stopSignal: 'SIGTERM' | 'SIGUSR1' | 'SIGINT' | null = null;
  private killTimer: NodeJS.Timeout | null = null;
  private queue: Promise<void> = Promise.resolve();
  private lastStatusWrite = 0;
  private statusTimer: NodeJS.Timeout | null = null;
  private statusWrites: Promise<void> = Promise.resolve();
  private log: WriteStream | null = null;
  private logPath = '';
  private logDirty = false;
  private logTimer: NodeJS.Timeout | null = null;
  private readonly stderrTail: string[] = [];
  private lastError: { message: string; kind: string } | null = null;
  private sawDone = false;
  private sawPreempted = false;
  private uploadFailure: string | null = null;

  constructor(options: WorkerOptions) {
    this.o = {
      check: true,
      graceMs: 120_000,
      statusIntervalMs: 1000,
      logIntervalMs: 2000,
      uploadRetries: 4,
      ...options,
      env: options.env ?? process.env,
    };
    this.runs = new RunStore(options.store);
    this.keys = runKeys(options.session, options.run);
  }

  stop(signal: 'SIGTERM' | 'SIGUSR1' | 'SIGINT'): void {
    if (this.stopSignal) return; // a second signal must not interrupt the save in progress
    this.stopSignal = signal;
    this.o.logger.info({ signal }, 'stop requested; asking the trainer to save a resume state');
    if (this.status) {
      this.status.state = 'stopping';
      this.status.message = `stopping on ${signal}: saving a resume state`;
      this.writeStatus(true);
    }
    if (this.child) this.signalTrainer();
  }

  private signalTrainer(): void {
    const child = this.child;
    if (!child || !this.stopSignal) return;
    child.kill(this.stopSignal === 'SIGUSR1' && !this.o.trainCommand ? 'SIGUSR1' : 'SIGTERM');
    this.killTimer = setTimeout(() => {
      this.o.logger.warn({ graceMs: this.o.graceMs }, 'the trainer did not stop within the grace period; killing it');
      child.kill('SIGKILL');
    }, this.o.graceMs);
    this.killTimer.unref();
  }

  async run(): Promise<WorkerResult> {
    const now = new Date().toISOString();
    this.status = {
      version: 1,
      session: this.o.session,
      run: this.o.run,
      attempt: this.o.attempt,
      state: 'starting',
      message: 'preparing the work directory',
      step: 0,
      total: 0,
      stage: null,
      stageStep: null,
      stageTotal: null,
      loss: null,
      lr: null,
      itPerS: null,
      etaS: null,
      vramGb: null,
      lossHistory: [],
      resumeStates: [],
      samples: [],
      model: null,
      error: null,
      worker: { host: hostname(), pid: process.pid },
      startedAt: now,
      updatedAt: now,
      finishedAt: null,
    };
    let result: WorkerResult;
    try {
      await mkdir(path.join(this.o.workDir, 'logs'), { recursive: true });
      this.logPath = path.join(this.o.workDir, 'logs', `attempt-${this.o.attempt}.log`);
      this.log = createWriteStream(this.logPath, { flags: 'a' });
      this.logTimer = setInterval(() => void this.uploadLog(), this.o.logIntervalMs);
      this.logTimer.unref();
      await this.recoverEarlierLogs();
      // Carry what earlier attempts knew (loss curve, samples) so status stays whole across resumes.
      const previous = await this.runs.status(this.o.session, this.o.run).catch(() => null);
      if (previous) {
        this.status.lossHistory = previous.lossHistory;
        this.status.samples = previous.samples;
        this.status.step = previous.step;
      }
      this.spec = await this.runs.spec(this.o.session, this.o.run);
      this.status.total = totalSteps(this.spec);
      await this.writeStatusNow();
      result = await this.prepareAndTrain();
    } catch (err) {
      const message = errorMessage(err);
      this.o.logger.error({ err: message }, 'worker failed');
      result = { state: 'failed', exitCode: 1, step: this.status.step, message };
      this.status.error ??= { message, kind: isBoothError(err) ? err.code.toLowerCase() : 'worker', tail: this.stderrTail.slice(-TAIL_LINES) };
    }
    if (this.killTimer) clearTimeout(this.killTimer);
    if (this.statusTimer) clearTimeout(this.statusTimer);
    this.status.state = result.state;
    this.status.message = result.message;
    this.status.finishedAt = new Date().toISOString();
    // The final status is what people and schedulers act on: it gets the same retries as an upload
    // (a store outage at the very end must not leave the run showing `running`).
    for (let attempt = 0; ; attempt++) {
      try {
        await this.writeStatusNow();
        break;
      } catch (err) {
        if (attempt >= this.o.uploadRetries) {
          this.o.logger.error({ err: errorMessage(err) }, 'could not write the final status');
          break;
        }
        const delay = retryDelayMs(attempt);
        this.o.logger.warn({ err: errorMessage(err), retryInMs: delay }, 'final status write failed; retrying');
        await new Promise((r) => setTimeout(r, delay));
      }
    }
    if (this.logTimer) clearInterval(this.logTimer);
    this.logLine(`[worker] ${result.state}: ${result.message}`);
    await new Promise<void>((resolve) => (this.log ? this.log.end(resolve) : resolve()));
    await this.uploadLog();
    return result;
  }

  private async prepareAndTrain(): Promise<WorkerResult> {
    const work = this.o.workDir;
    const specPath = path.join(work, 'spec.json');
    await writeFile(specPath, `${JSON.stringify(this.spec, null, 2)}\n`);

    this.say('downloading the dataset');
    const data = await mirrorDown(this.o.store, sessionKeys(this.o.session).datasetPrefix, path.join(work, this.spec.data.instanceDir), {
      alwaysRefresh: (rel) => rel.endsWith('.txt'),
    });
    const images = (await readdir(path.join(work, this.spec.data.instanceDir))).filter((f) => /\.(png|jpe?g|webp)$/i.test(f));
    if (images.length === 0) {
      throw new BoothError('TRAINING', `session "${this.o.session}" has no prepared dataset in the store; run \`booth prepare ${this.o.session}\` first`);
    }
    this.o.logger.info({ ...data, images: images.length }, 'dataset ready');
    if (this.spec.prior?.enabled) await mirrorDown(this.o.store, this.keys.classPrefix, path.join(work, this.spec.prior.classDir));

    const from = await this.fetchResumeState();
    if (this.stopSignal) return this.stoppedBeforeTraining(from);

    if (this.o.check) {
      this.say('checking the GPU host');
      const r = await execa(this.o.trainer[0]!, [...this.o.trainer.slice(1), 'check', '--spec', specPath], { cwd: work, env: this.o.env, reject: false, timeout: 120_000 });
      const line = String(r.stdout).trim().split('\n').at(-1) ?? '';
      let report;
      try {
        report = checkReportSchema.parse(JSON.parse(line));
      } catch {
        throw new BoothError(
          'ENVIRONMENT',
          `the trainer's host check did not answer (${this.o.trainer.join(' ')} check exited ${r.exitCode ?? r.signal}): ${String(r.stderr).trim().split('\n').slice(-5).join(' | ') || 'no output'}. Set up the GPU host with scripts/setup-gpu-host.sh or point BOOTH_PYTHON at its Python`,
        );
      }
      const need = assertHostFits(this.spec, report);
      this.logLine(`[worker] host check: ${report.gpus.map((g) => `${g.name} ${g.free_gb.toFixed(1)}/${g.total_gb.toFixed(1)} GiB free`).join(', ')}; estimated need ${need.gb} GiB`);
    }
    if (this.stopSignal) return this.stoppedBeforeTraining(from);

    this.say(from === null ? 'starting the trainer' : `resuming the trainer from step ${from}`);
    const train = this.o.trainCommand ?? this.o.trainer;
    const child = execa(train[0]!, [...train.slice(1), 'train', '--spec', specPath, '--work', work, '--resume', 'auto'], {
      cwd: work,
      // accelerate's launcher (torch elastic) SIGKILLs its ranks 30 s after forwarding a SIGTERM
      // unless told otherwise; a full fine-tune's state can take longer to write than that.
      env: { TORCH_ELASTIC_SHUTDOWN_TIMEOUT: String(Math.ceil(this.o.graceMs / 1000)), ...this.o.env },
      reject: false,
      buffer: false,
      stdin: 'ignore',
      stdout: 'pipe',
      stderr: 'pipe',
    });
    this.child = child;
    if (this.stopSignal) this.signalTrainer();

    const stdoutDone = new Promise<void>((resolve) => {
      const rl = createInterface({ input: child.stdout! });
      rl.on('line', (line) => this.onStdout(line));
      rl.on('close', resolve);
    });
    const stderrDone = new Promise<void>((resolve) => {
      const rl = createInterface({ input: child.stderr! });
      rl.on('line', (line) => {
        this.logLine(line);
        this.stderrTail.push(line);
        if (this.stderrTail.length > TAIL_LINES) this.stderrTail.shift();
      });
      rl.on('close', resolve);
    });
    const exit = await child;
    await Promise.all([stdoutDone, stderrDone]);
    await this.queue;
    if (this.killTimer) clearTimeout(this.killTimer);
    this.child = null;
    return this.outcome(exit.exitCode, exit.signal ?? null);
  }

  /** Downloads the newest stored state that verifies; older ones are tried when it does not. */
  private async fetchResumeState(): Promise<number | null> {
    const stateDir = path.join(this.o.workDir, 'state');
    // Local states may be newer than the store's (a worker killed mid-upload) or stale; the store decides.
    await rm(stateDir, { recursive: true, force: true });
    await mkdir(stateDir, { recursive: true });
    const steps = await this.runs.resumeStates(this.o.session, this.o.run);
    this.status.resumeStates = steps;
    for (const step of [...steps].reverse()) {
      this.say(`downloading the resume state of step ${step}`);
      try {
        await downloadVerifiedState(this.o.store, this.keys.state(step), path.join(stateDir, String(step)));
        this.logLine(`[worker] resuming from the stored state of step ${step}`);
        this.status.step = step;
        return step;
      } catch (err) {
        if (!isBoothError(err, 'INVALID_MANIFEST') && !isBoothError(err, 'NOT_FOUND')) throw err;
        this.o.logger.warn({ step, err: errorMessage(err) }, 'resume state unusable; trying an older one');
        this.logLine(`[worker] resume state of step ${step} is unusable (${errorMessage(err)}); trying an older one`);
      }
    }
    this.status.step = 0;
    return null;
  }

  private async stoppedBeforeTraining(from: number | null): Promise<WorkerResult> {
    const state = await this.stoppedState();
    return { state, exitCode: state === 'stopped' ? EXIT_STOPPED : EXIT_PREEMPTED, step: from ?? 0, message: `${state} before training started; \`booth resume ${this.o.session}\` continues from ${from === null ? 'the beginning' : `step ${from}`}` };
  }

  /** `stopped` when a person asked (`booth stop` recorded it), `preempted` when the scheduler did. */
  private async stoppedState(): Promise<'stopped' | 'preempted'> {
    const record = await this.runs.record(this.o.session, this.o.run).catch(() => null);
    return record?.stopRequestedAt ? 'stopped' : 'preempted';
  }

  private async outcome(code: number | undefined, signal: string | null): Promise<WorkerResult> {
    const step = this.status.step;
    const last = this.status.resumeStates.at(-1);
    const resumeHint = `\`booth resume ${this.o.session}\` continues from ${last === undefined ? 'the beginning' : `step ${last}`}`;
    if (this.uploadFailure) {
      return { state: 'failed', exitCode: 1, step, message: `uploading to the store failed: ${this.uploadFailure}; ${resumeHint}` };
    }
    if (code === 0 && this.sawDone && this.status.model) {
      return { state: 'done', exitCode: 0, step, message: `finished ${step} steps; the model is in ${this.status.model.key}` };
    }
    // A launcher in between (accelerate) exits 1 whatever its ranks returned, so the `preempted`
    // event (a complete state saved on a signal) is what counts, whoever sent the signal.
    if (code === EXIT_PREEMPTED || this.sawPreempted || (this.stopSignal && signal === 'SIGKILL')) {
      const state = await this.stoppedState();
      const how = code === EXIT_PREEMPTED || this.sawPreempted ? 'saved its state' : `did not save within ${this.o.graceMs / 1000} s and was killed`;
      return { state, exitCode: state === 'stopped' ? EXIT_STOPPED : EXIT_PREEMPTED, step, message: `${state} at step ${step}: the trainer ${how}; ${resumeHint}` };
    }
    const message =
      this.lastError?.message ??
      (code === 0 ? 'the trainer exited without reporting `done`' : `the trainer exited with ${signal ? `signal ${signal}` : `code ${code}`}`);
    this.status.error = { message, kind: this.lastError?.kind ?? 'crash', tail: this.stderrTail.slice(-TAIL_LINES) };
    return { state: 'failed', exitCode: 1, step, message: `failed at step ${step}: ${message}; ${resumeHint} after fixing the cause` };
  }

  private onStdout(line: string): void {
    this.logLine(line);
    const parsed = parseEventLine(line);
    if (parsed.kind === 'invalid') {
      this.o.logger.warn({ line: line.slice(0, 200), reason: parsed.reason }, 'trainer printed a line that is not a protocol event');
      return;
    }
    if (parsed.kind === 'unknown') return;
    const event = parsed.event;
    // Events are handled strictly in order (an upload finishes before the next event's), while
    // the trainer keeps running: it never waits for the worker.
    this.queue = this.queue.then(() => this.handle(event)).catch((err: unknown) => {
      this.o.logger.error({ err: errorMessage(err), event: event.event }, 'handling a trainer event failed');
    });
  }

  private async handle(e: TrainerEvent): Promise<void> {
    const s = this.status;
    switch (e.event) {
      case 'started':
        s.state = this.stopSignal ? 'stopping' : 'running';
        s.total = e.total_steps;
        s.step = e.start_step;
        s.message = e.resumed_from ? `resumed at step ${e.start_step} on ${e.device}` : `training on ${e.device}`;
        this.writeStatus(true);
        break;
      case 'class_images':
        s.message = `generating class images: ${e.done}/${e.total}`;
        if (e.done >= e.total && this.spec.prior) {
          await this.withRetry('class images', () => uploadFolder(this.o.store, path.join(this.o.workDir, this.spec.prior!.classDir), this.keys.classPrefix));
        }
        this.writeStatus(e.done >= e.total);
        break;
      case 'step':
        Object.assign(s, { step: e.step, total: e.total, stage: e.stage, stageStep: e.stage_step, stageTotal: e.stage_total, loss: e.loss, lr: e.lr, itPerS: e.it_per_s, etaS: e.eta_s, vramGb: e.vram_gb });
        s.lossHistory.push([e.step, e.loss]);
        if (s.lossHistory.length > 1000) s.lossHistory = s.lossHistory.filter((_, i) => i % 2 === 0 || i === s.lossHistory.length - 1);
        this.writeStatus(false);
        break;
      case 'resume_state': {
        const local = path.join(this.o.workDir, e.path);
        const uploaded = await this.withRetry(`resume state ${e.step}`, () => uploadFolder(this.o.store, local, this.keys.state(e.step), e.step));
        // The state is resumable from the moment its marker is stored, whatever happens next: the
        // status (and the "resume continues from" hint) must say so even if the store goes away
        // before the listing below.
        if (uploaded !== undefined) s.resumeStates = [...new Set([...s.resumeStates, e.step])].sort((a, b) => a - b);
        try {
          await pruneStoredStates(this.o.store, this.keys.statePrefix, this.spec.resumeState.keep);
          s.resumeStates = await this.runs.resumeStates(this.o.session, this.o.run);
        } catch (err) {
          // Pruning is housekeeping: the next state's pruning catches up.
          this.o.logger.warn({ step: e.step, err: errorMessage(err) }, 'could not prune or list the stored resume states');
        }
        if (uploaded !== undefined) await this.pruneLocalStates(e.step);
        this.writeStatus(true);
        break;
      }
      case 'sample': {
        const key = `${this.keys.samplesPrefix}${e.step}/${e.index}.png`;
        await this.withRetry(`sample ${e.step}/${e.index}`, () => this.o.store.put(key, createReadStream(path.join(this.o.workDir, e.path)), { contentType: 'image/png' }));
        s.samples.push({ step: e.step, index: e.index, prompt: e.prompt, key });
        if (s.samples.length > 64) s.samples.splice(0, s.samples.length - 64);
        this.writeStatus(true);
        break;
      }
      case 'stage_done':
        s.message = `stage ${e.stage} done at step ${e.step}`;
        this.writeStatus(true);
        break;
      case 'done':
        s.message = 'uploading the final model';
        this.writeStatus(true);
        await this.withRetry('the final model', () => uploadFolder(this.o.store, path.join(this.o.workDir, e.output), this.keys.modelPrefix, e.step));
        s.model = { key: this.keys.modelPrefix, format: e.format };
        this.sawDone = true;
        break;
      case 'preempted':
        this.sawPreempted = true;
        s.message = `the trainer saved step ${e.step} on ${e.signal}`;
        break;
      case 'error':
        this.lastError = { message: e.message, kind: e.kind };
        break;
    }
  }

  /** Keeps only the newest local state: the trainer never reads older ones again. */
  private async pruneLocalStates(newest: number): Promise<void> {
    const dir = path.join(this.o.workDir, 'state');
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (/^\d+$/.test(name) && Number(name) < newest) await rm(path.join(dir, name), { recursive: true, force: true });
    }
  }

  private async withRetry<T>(what: string, fn: () => Promise<T>): Promise<T | undefined> {
    // Once one upload has failed for good the run ends `failed` whatever follows; later uploads
    // still get one try each (a later state is a better resume point), but no backoff, so a long
    // outage does not hold the worker for the full retry budget per file.
    const retries = this.uploadFailure === null ? this.o.uploadRetries : 0;
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        if (attempt >= retries) {
          this.uploadFailure ??= `${what}: ${errorMessage(err)}`;
          this.o.logger.error({ what, err: errorMessage(err) }, 'upload failed for good');
          return undefined;
        }
        const delay = retryDelayMs(attempt);
        this.o.logger.warn({ what, err: errorMessage(err), retryInMs: delay }, 'upload failed; retrying');
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  private say(message: string): void {
    this.status.message = message;
    this.logLine(`[worker] ${message}`);
    this.writeStatus(true);
  }

  private logLine(line: string): void {
    this.log?.write(`${line}\n`);
    this.logDirty = true;
  }

  /**
   * A worker killed outright (SIGKILL, OOM killer) never uploads the last seconds of its log; its
   * local copy is still in the work directory when the run resumes on the same host, so the
   * store's copy is completed from it. Best effort: the run does not depend on old logs.
   */
  private async recoverEarlierLogs(): Promise<void> {
    for (let attempt = 1; attempt < this.o.attempt; attempt++) {
      const local = path.join(this.o.workDir, 'logs', `attempt-${attempt}.log`);
      const size = await stat(local).then((st) => st.size, () => null);
      if (size === null) continue;
      try {
        const stored = await this.o.store.head(this.keys.log(attempt));
        if (stored && stored.size >= size) continue;
        await this.o.store.put(this.keys.log(attempt), createReadStream(local), { contentType: 'text/plain; charset=utf-8' });
        this.o.logger.info({ attempt, bytes: size - (stored?.size ?? 0) }, 'completed the stored log of an earlier attempt from the local copy');
      } catch (err) {
        this.o.logger.warn({ attempt, err: errorMessage(err) }, 'could not complete the log of an earlier attempt');
      }
    }
  }

  private async uploadLog(): Promise<void> {
    if (!this.logDirty || !this.logPath) return;
    this.logDirty = false;
    try {
      await this.o.store.put(this.keys.log(this.o.attempt), createReadStream(this.logPath), { contentType: 'text/plain; charset=utf-8' });
    } catch (err) {
      this.logDirty = true;
      this.o.logger.warn({ err: errorMessage(err) }, 'log upload failed; will retry');
    }
  }

  /** Throttled status write: at most one per interval, the latest values always land. */
  private writeStatus(force: boolean): void {
    const due = this.lastStatusWrite + this.o.statusIntervalMs - Date.now();
    if (force || due <= 0) {
      if (this.statusTimer) clearTimeout(this.statusTimer);
      this.statusTimer = null;
      void this.writeStatusNow().catch((err: unknown) => this.o.logger.warn({ err: errorMessage(err) }, 'status write failed'));
    } else {
      this.statusTimer ??= setTimeout(() => {
        this.statusTimer = null;
        void this.writeStatusNow().catch((err: unknown) => this.o.logger.warn({ err: errorMessage(err) }, 'status write failed'));
      }, due);
    }
  }

  /** Status writes are serialised so an older snapshot never lands after a newer one. */
  private writeStatusNow(): Promise<void> {
    this.lastStatusWrite = Date.now();
    const snapshot = structuredClone({ ...this.status, updatedAt: new Date().toISOString() });
    this.statusWrites = this.statusWrites.catch(() => undefined).then(() => this.runs.saveStatus(snapshot));
    return this.statusWrites;
  }
}
