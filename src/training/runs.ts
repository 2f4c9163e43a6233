/**
 * Training runs in the object store: the key layout under `sessions/<id>/runs/<run>/`, the run
 * record (`run.json`, written by the control plane: launches, stop requests, extensions), the
 * status (`status.json`, written only by the worker: step, loss, ETA, state) and the resume
 * states (`state/<step>/…` with the `COMPLETE` marker written last). Each key has exactly one
 * writer (DESIGN.md), so the control plane and a worker never race on an object; what a person
 * sees as "the run's state" is derived from both plus, for local runs, whether the worker process
 * is still alive ({@link effectiveState}).
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { BoothError, isBoothError } from '../errors.js';
import type { ObjectStore } from '../storage/types.js';
import { exists, listAll, putJson, readJson } from '../storage/index.js';
import { sessionKeys } from '../sessions/store.js';
import { parseJobSpec, type JobSpec } from './spec.js';
import type { LaunchProbe } from './launchers/types.js';

/** Run ids: `YYYYMMDD-HHMMSS-xxxx` (UTC), so they sort by launch time and stay valid keys. */
export const RUN_ID_PATTERN = /^\d{8}-\d{6}-[0-9a-f]{4}$/;

/**
 * A new run id for `now`.
 * @example newRunId(new Date('2026-11-22T15:30:12Z')) // '20261122-153012-9f3a'
 */
export function newRunId(now = new Date()): string {
  const iso = now.toISOString();
  return `${iso.slice(0, 10).replaceAll('-', '')}-${iso.slice(11, 19).replaceAll(':', '')}-${randomBytes(2).toString('hex')}`;
}

/**
 * Keys of one run, relative to the store root.
 * @throws BoothError `INVALID_ARGUMENT` for a run id that is not {@link RUN_ID_PATTERN}
 */
export function runKeys(session: string, run: string) {
  if (!RUN_ID_PATTERN.test(run)) {
    throw new BoothError('INVALID_ARGUMENT', `invalid run id ${JSON.stringify(run)}: run ids look like 20261122-153012-9f3a; list them with \`booth runs ${session}\``);
  }
  const root = `${sessionKeys(session).root}runs/${run}`;
  return {
    root: `${root}/`,
    spec: `${root}/spec.json`,
    record: `${root}/run.json`,
    status: `${root}/status.json`,
    statePrefix: `${root}/state/`,
    state: (step: number) => `${root}/state/${step}/`,
    stateMarker: (step: number) => `${root}/state/${step}/COMPLETE`,
    samplesPrefix: `${root}/samples/`,
    classPrefix: `${root}/class/`,
    modelPrefix: `${root}/model/`,
    modelMarker: `${root}/model/COMPLETE`,
    log: (attempt: number) => `${root}/logs/attempt-${attempt}.log`,
  };
}

/** The prefix under which a session's runs live. */
export const runsPrefix = (session: string): string => `${sessionKeys(session).root}runs/`;

const launchSchema = z.object({
  attempt: z.number().int().positive(),
  at: z.string(),
  launcher: z.enum(['local', 'slurm']),
  /** Launcher-specific handle: local `{pid, host, logFile}`, Slurm `{jobId, output, script, submitHost}`. */
  handle: z.record(z.string(), z.union([z.string(), z.number()])),
  /** Why this attempt was started. */
  reason: z.enum(['train', 'resume', 'extend']),
});

/** The run record, `runs/<run>/run.json` (control plane only). */
export const runRecordSchema = z.object({
  version: z.literal(1),
  session: z.string(),
  run: z.string().regex(RUN_ID_PATTERN),
  createdAt: z.string(),
  preset: z.string().nullable(),
  launches: z.array(launchSchema),
  /** Set by `booth stop`; cleared by `resume`/`extend`. The worker reads it to tell "stopped" from "preempted". */
  stopRequestedAt: z.string().nullable(),
  extensions: z.array(z.object({ at: z.string(), from: z.number().int(), to: z.number().int() })),
});
/** A validated run record. */
export type RunRecord = z.infer<typeof runRecordSchema>;
/** One launch of a run. */
export type Launch = z.infer<typeof launchSchema>;

/** Run states as the worker reports them. */
export const RUN_STATES = ['starting', 'running', 'stopping', 'stopped', 'preempted', 'failed', 'done'] as const;
/** One of {@link RUN_STATES}. */
export type RunState = (typeof RUN_STATES)[number];
/** States in which a worker is (or should be) alive. */
export const ACTIVE_STATES: ReadonlySet<string> = new Set(['starting', 'running', 'stopping']);

/** Status of a run, `runs/<run>/status.json` (worker only). */
export const runStatusSchema = z.object({
  version: z.literal(1),
  session: z.string(),
  run: z.string(),
  attempt: z.number().int().positive(),
  state: z.enum(RUN_STATES),
  /** Human sentence for the state (what happened, what to do). */
  message: z.string().nullable(),
  step: z.number().int().nonnegative(),
  total: z.number().int().nonnegative(),
  stage: z.string().nullable(),
  stageStep: z.number().int().nonnegative().nullable(),
  stageTotal: z.number().int().nonnegative().nullable(),
  loss: z.number().nullable(),
  lr: z.number().nullable(),
  itPerS: z.number().nullable(),
  etaS: z.number().nullable(),
  vramGb: z.number().nullable(),
  /** [step, loss] pairs, thinned to at most 500 points, for charts. */
  lossHistory: z.array(z.tuple([z.number(), z.number()])),
  /** Steps of the complete resume states in the store, ascending. */
  resumeStates: z.array(z.number().int().nonnegative()),
  samples: z.array(z.object({ step: z.number().int(), index: z.number().int(), prompt: z.string(), key: z.string() })),
  /** The final model once uploaded with its marker. */
  model: z.object({ key: z.string(), format: z.enum(['diffusers', 'lora']) }).nullable(),
  error: z.object({ message: z.string(), kind: z.string(), tail: z.array(z.string()) }).nullable(),
  worker: z.object({ host: z.string(), pid: z.number().int() }),
  startedAt: z.string(),
  updatedAt: z.string(),
  finishedAt: z.string().nullable(),
});
/** A validated run status. */
export type RunStatus = z.infer<typeof runStatusSchema>;

/** Runs of sessions in a store. Thin: validation and key layout, no policy. */
export class RunStore {
  /** @param store - where sessions live */
  constructor(readonly store: ObjectStore) {}

  /** Stores a new run's spec and record. @throws BoothError `ALREADY_EXISTS` when the run id is taken. */
  async create(spec: JobSpec, preset: string | null): Promise<RunRecord> {
    const keys = runKeys(spec.session, spec.run);
    if (await exists(this.store, keys.record)) throw new BoothError('ALREADY_EXISTS', `run ${spec.run} of session "${spec.session}" already exists`);
    // The spec goes first: a record without its spec would be a run nobody can start.
    await putJson(this.store, keys.spec, spec);
    const record: RunRecord = { version: 1, session: spec.session, run: spec.run, createdAt: new Date().toISOString(), preset, launches: [], stopRequestedAt: null, extensions: [] };
    await putJson(this.store, keys.record, record);
    return record;
  }

  /** @throws BoothError `NOT_FOUND` naming the run and how to list runs; `INVALID_MANIFEST` when damaged. */
  async record(session: string, run: string): Promise<RunRecord> {
    return this.readValidated(session, run, runKeys(session, run).record, (v) => runRecordSchema.parse(v));
  }

  /** Replaces the run record (control plane only). */
  async saveRecord(record: RunRecord): Promise<void> {
    await putJson(this.store, runKeys(record.session, record.run).record, runRecordSchema.parse(record));
  }

  /** The run's job spec. @throws BoothError `NOT_FOUND`, `INVALID_ARGUMENT` for a bad stored spec. */
  async spec(session: string, run: string): Promise<JobSpec> {
    const key = runKeys(session, run).spec;
    return this.readValidated(session, run, key, (v) => parseJobSpec(v, `stored spec ${key}`));
  }

  /** Replaces the run's job spec (control plane only: `booth extend`). */
  async saveSpec(spec: JobSpec): Promise<void> {
    await putJson(this.store, runKeys(spec.session, spec.run).spec, parseJobSpec(spec));
  }

  /** The worker's status, or null before the worker first wrote it. */
  async status(session: string, run: string): Promise<RunStatus | null> {
    try {
      return await this.readValidated(session, run, runKeys(session, run).status, (v) => runStatusSchema.parse(v));
    } catch (err) {
      if (isBoothError(err, 'NOT_FOUND')) return null;
      throw err;
    }
  }

  /** Writes the status (worker only). */
  async saveStatus(status: RunStatus): Promise<void> {
    await putJson(this.store, runKeys(status.session, status.run).status, runStatusSchema.parse(status));
  }

  /** Run ids of a session, oldest first. */
  async list(session: string): Promise<string[]> {
    const ids = new Set<string>();
    for await (const info of listAll(this.store, runsPrefix(session))) {
      const m = /^[^/]+\/[^/]+\/runs\/([^/]+)\/run\.json$/.exec(info.key);
      if (m?.[1] && RUN_ID_PATTERN.test(m[1])) ids.add(m[1]);
    }
    return [...ids].sort();
  }

  /**
   * The newest run of a session, or the one named.
   * @throws BoothError `NOT_FOUND` when the session has no runs (saying how to start one)
   */
  async resolve(session: string, run?: string): Promise<string> {
    if (run) {
      runKeys(session, run);
      return run;
    }
    const all = await this.list(session);
    const last = all.at(-1);
    if (!last) throw new BoothError('NOT_FOUND', `session "${session}" has no training runs yet; start one with \`booth train ${session}\``);
    return last;
  }

  /** Steps of the complete resume states (marker present) in the store, ascending. */
  async resumeStates(session: string, run: string): Promise<number[]> {
    const keys = runKeys(session, run);
    const steps: number[] = [];
    for await (const info of listAll(this.store, keys.statePrefix)) {
      const m = /\/state\/(\d+)\/COMPLETE$/.exec(info.key);
      if (m?.[1]) steps.push(Number(m[1]));
    }
    return steps.sort((a, b) => a - b);
  }

  private async readValidated<T>(session: string, run: string, key: string, parse: (v: unknown) => T): Promise<T> {
    let raw: unknown;
    try {
      raw = await readJson(this.store, key);
    } catch (err) {
      if (isBoothError(err, 'NOT_FOUND')) {
        throw new BoothError('NOT_FOUND', `run ${run} of session "${session}" has no ${key.slice(key.lastIndexOf('/') + 1)}; list runs with \`booth runs ${session}\``, { cause: err });
      }
      throw err;
    }
    try {
      return parse(raw);
    } catch (err) {
      if (err instanceof BoothError) throw err;
      throw new BoothError('INVALID_MANIFEST', `${key} is damaged or was not written by this version of Booth: ${err instanceof Error ? err.message.slice(0, 300) : String(err)}`, { cause: err });
    }
  }
}

/** Whether a process with this pid exists on this machine (signal 0 probes without sending). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** What a person should see as the run's state: the worker's report, corrected by what we can observe. */
export type EffectiveState = RunState | 'launched' | 'lost';

/**
 * The state to show for a run. The worker's status can be stale when the worker died without
 * writing it (SIGKILL, machine crash): a local run whose status says active but whose worker
 * process is gone is `lost` (resumable from its last complete state). A launch with no status yet
 * is `launched`.
 *
 * For a scheduler launch (Slurm) the caller passes what the scheduler says about the last launch's
 * job (`probe`, from {@link LaunchProbe}); the worker's `status.json` is never rewritten, the state
 * is derived:
 * - no status for the launch yet: `launched` while the job is pending or starting; once the job is
 *   gone, `stopped` when a stop was requested, else `lost` (it died before the worker reported);
 * - status active but the job gone: `lost` (killed without a final report, e.g. node failure or the
 *   time limit passing before the save); active but the job pending again: `launched` (Slurm
 *   requeued it after a failure);
 * - status `preempted` while the job is still queued or running: `launched` (the job requeued
 *   itself and will resume on its own), or `stopped` when `booth stop` cancelled the requeued job.
 * Without a probe (`undefined`/`unknown`) the worker's report stands.
 * @param probe - the scheduler's view of the last launch; ignored for local launches
 */
export function effectiveState(record: RunRecord, status: RunStatus | null, host = hostname(), probe?: LaunchProbe | null): EffectiveState {
  const last = record.launches.at(-1);
  const sched = last && last.launcher !== 'local' && probe && probe.state !== 'unknown' ? probe.state : null;
  if (!status || (last && status.attempt < last.attempt)) {
    if (!last) return 'stopped';
    if (last.launcher === 'local' && last.handle.host === host && typeof last.handle.pid === 'number' && !processAlive(last.handle.pid)) return 'lost';
    if (sched === 'gone') return record.stopRequestedAt ? 'stopped' : 'lost';
    return 'launched';
  }
  if (sched) {
    if (ACTIVE_STATES.has(status.state)) {
      if (sched === 'gone') return 'lost';
      if (sched === 'pending') return 'launched';
    }
    if (status.state === 'preempted') {
      if (sched !== 'gone') return record.stopRequestedAt ? 'stopping' : 'launched';
      if (record.stopRequestedAt) return 'stopped';
    }
  }
  if (ACTIVE_STATES.has(status.state) && last?.launcher === 'local' && status.worker.host === host && !processAlive(status.worker.pid)) return 'lost';
  return status.state;
}

/**
 * Whether the scheduler must be asked to tell a run's state: a scheduler launch whose worker has
 * not reported a final state, or whose last report was `preempted` (the job may have requeued).
 */
export function needsProbe(record: RunRecord, status: RunStatus | null): boolean {
  const last = record.launches.at(-1);
  if (!last || last.launcher === 'local') return false;
  if (!status || status.attempt < last.attempt) return true;
  return ACTIVE_STATES.has(status.state) || status.state === 'preempted';
}
