/**
 * Run operations as the control plane performs them — train, stop, resume, extend, inspect —
 * shared by the CLI and (later) the REST API. Each operation reads the run's record and the
 * worker's status, refuses what the run's state does not allow with a message that says what
 * to do instead, writes the run record (the control plane's key), and asks the launcher to act.
 * Progress itself is never computed here: the worker reports it in `status.json`.
 */
import { BoothError } from '../errors.js';
import type { ObjectStore } from '../storage/types.js';
import type { SessionStore } from '../sessions/store.js';
import type { LaunchProbe, Launcher } from './launchers/types.js';
import { RunStore, effectiveState, needsProbe, newRunId, type EffectiveState, type Launch, type RunRecord, type RunStatus } from './runs.js';
import { assertSpecDepth, extendSpec, parseJobSpec, defaultPreset, presetSpec, totalSteps, type JobSpec, type PresetName } from './spec.js';
import { estimateVramGb, signalGraceSeconds, type VramEstimate } from './requirements.js';

/** How to build a new run's spec. */
export interface SpecRequest {
  /** A preset; default from the session's base and subject kind ({@link defaultPreset}). */
  preset?: PresetName;
  /** A whole spec (JSON), used instead of a preset; `session`, `run` and `version` are filled in. */
  spec?: unknown;
  /** `path=value` overrides applied last, e.g. `schedule.unet.steps=2000`; values are JSON or plain strings. */
  set?: string[];
  /** Total steps: raises or lowers the last stage so the run has this many. */
  steps?: number;
  /** Local Diffusers folder or Hugging Face id of the base model. */
  baseModel?: string;
}

/**
 * Builds and validates the spec of a new run of a prepared session.
 * @throws BoothError `TRAINING` when the session is not prepared or has no accepted photos;
 *   `INVALID_ARGUMENT` for a bad spec, override or step count (naming the field)
 */
export async function buildSpec(sessions: SessionStore, session: string, run: string, req: SpecRequest): Promise<{ spec: JobSpec; preset: string | null }> {
  const m = await sessions.get(session);
  if (m.state !== 'prepared') throw new BoothError('TRAINING', `session "${session}" is not prepared (photos changed since the last prepare, or it never ran); run \`booth prepare ${session}\` first`);
  const accepted = m.photos.filter((p) => p.status === 'accepted').length;
  if (accepted === 0) throw new BoothError('TRAINING', `session "${session}" has no accepted photos to train on; add photos or include flagged ones with \`booth photo include\``);
  let value: Record<string, unknown>;
  let preset: string | null = null;
  if (req.spec !== undefined) {
    if (typeof req.spec !== 'object' || req.spec === null || Array.isArray(req.spec)) throw new BoothError('INVALID_ARGUMENT', 'the spec must be a JSON object');
    assertSpecDepth(req.spec, 'the spec');
    value = { ...(req.spec as Record<string, unknown>) };
  } else {
    preset = req.preset ?? defaultPreset(m.base, m.subject.kind);
    value = presetSpec(preset as PresetName, {
      session,
      run,
      trigger: m.subject.trigger,
      classNoun: m.subject.classNoun,
      base: m.base,
      resolution: m.settings.resolution,
      ...(req.baseModel ? { baseModel: req.baseModel } : {}),
    });
  }
  value = { ...value, version: 1, session, run };
  if (req.baseModel && req.spec !== undefined) value.base = { ...(value.base as object), model: req.baseModel };
  for (const assignment of req.set ?? []) {
    // The run's identity comes from the request path (and the store layout), never from an override.
    const field = assignment.slice(0, Math.max(0, assignment.indexOf('='))).split('.')[0];
    if (field === 'session' || field === 'run' || field === 'version') throw new BoothError('INVALID_ARGUMENT', `--set ${JSON.stringify(assignment)}: session, run and version are filled in by Booth and cannot be set`);
    value = applySet(value, assignment);
  }
  let spec = parseJobSpec(value, preset ? `preset ${preset} with your overrides` : 'the spec');
  if (req.steps !== undefined) spec = withTotalSteps(spec, req.steps);
  return { spec, preset };
}

/**
 * Applies one `path=value` override to a plain object (copy-on-write).
 * @throws BoothError `INVALID_ARGUMENT` for a malformed assignment or a path into a non-object
 * @example applySet({ a: { b: 1 } }, 'a.b=2') // { a: { b: 2 } }
 */
export function applySet(obj: Record<string, unknown>, assignment: string): Record<string, unknown> {
  const eq = assignment.indexOf('=');
  const pathText = eq > 0 ? assignment.slice(0, eq) : '';
  if (!/^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*$/.test(pathText)) {
    throw new BoothError('INVALID_ARGUMENT', `--set ${JSON.stringify(assignment)}: write field.path=value, e.g. --set schedule.unet.steps=2000`);
  }
  const raw = assignment.slice(eq + 1);
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    value = raw;
  }
  const parts = pathText.split('.');
  const root = structuredClone(obj);
  let cur: Record<string, unknown> = root;
  for (const part of parts.slice(0, -1)) {
    const next = cur[part] ?? {};
    if (typeof next !== 'object' || next === null || Array.isArray(next)) throw new BoothError('INVALID_ARGUMENT', `--set ${pathText}: "${part}" is not an object in the spec`);
    cur[part] = next;
    cur = next as Record<string, unknown>;
  }
  cur[parts.at(-1)!] = value;
  return root;
}

/** Sets the total step count by resizing the last stage. @throws BoothError `INVALID_ARGUMENT` when it would leave the last stage empty. */
function withTotalSteps(spec: JobSpec, steps: number): JobSpec {
  const diff = steps - totalSteps(spec);
  const s = spec.schedule;
  const last = s.type === 'joint' ? s.steps : s.unet.steps;
  if (!Number.isInteger(steps) || last + diff <= 0) {
    throw new BoothError('INVALID_ARGUMENT', `--steps ${steps}: the run needs more steps than its earlier stages (${totalSteps(spec) - last}) so the last stage is not empty`);
  }
  const schedule = s.type === 'joint' ? { ...s, steps: last + diff } : { ...s, unet: { ...s.unet, steps: last + diff } };
  return parseJobSpec({ ...spec, schedule });
}

/** Everything known about a run. */
export interface RunInfo {
  record: RunRecord;
  status: RunStatus | null;
  spec: JobSpec;
  /** The state to show: the worker's report corrected by what can be observed (`lost`, `launched`). */
  state: EffectiveState;
  /** What the scheduler said about the last launch, when it was asked (Slurm runs not yet final). */
  scheduler?: LaunchProbe;
}

/** Asks the launcher that made a launch about it (see `launchers/index.ts` for the CLI's). */
export type ProbeLaunch = (launch: Launch) => Promise<LaunchProbe>;

/** How run operations reconcile the store with the scheduler. */
export interface ReconcileOptions {
  /**
   * Asks the scheduler about a run's last launch. Without it, scheduler launches are shown as the
   * worker last reported them. Only called when the worker's report is not final ({@link needsProbe}).
   */
  probe?: ProbeLaunch;
}

/**
 * Reads a run's record, spec and status, and reconciles them with the scheduler: this is how a
 * restarted control plane finds runs in flight again (the store holds every launch's handle).
 * @throws BoothError `NOT_FOUND` when the session has no such run
 */
export async function runInfo(store: ObjectStore, session: string, run?: string, options: ReconcileOptions = {}): Promise<RunInfo> {
  const runs = new RunStore(store);
  const id = await runs.resolve(session, run);
  const [record, spec, status] = await Promise.all([runs.record(session, id), runs.spec(session, id), runs.status(session, id)]);
  const last = record.launches.at(-1);
  const scheduler = options.probe && last && needsProbe(record, status) ? await options.probe(last) : undefined;
  return { record, spec, status, state: effectiveState(record, status, undefined, scheduler), ...(scheduler ? { scheduler } : {}) };
}

/** Result of a launch-like operation. */
export interface LaunchResult {
  run: string;
  attempt: number;
  spec: JobSpec;
  handle: Launch['handle'];
  estimate: VramEstimate;
}

async function launchAttempt(store: ObjectStore, launcher: Launcher, record: RunRecord, spec: JobSpec, reason: Launch['reason'], status: RunStatus | null = null): Promise<LaunchResult> {
  const runs = new RunStore(store);
  // A scheduler may have run more attempts than were launched (Slurm requeues: launch attempt +
  // restart count); they are only in the worker's status, and their logs must not be overwritten.
  const attempt = Math.max(record.launches.at(-1)?.attempt ?? 0, status?.attempt ?? 0) + 1;
  const handle = await launcher.launch({ session: record.session, run: record.run, attempt, storeUrl: store.url, signalGrace: signalGraceSeconds(spec) });
  record.launches.push({ attempt, at: new Date().toISOString(), launcher: launcher.name, handle, reason });
  await runs.saveRecord(record);
  return { run: record.run, attempt, spec, handle, estimate: estimateVramGb(spec) };
}

/**
 * Creates a run from a prepared session and launches its first attempt.
 * @throws BoothError as {@link buildSpec}; `ENVIRONMENT` when the launcher cannot start the worker
 */
export async function trainSession(store: ObjectStore, sessions: SessionStore, launcher: Launcher, session: string, req: SpecRequest): Promise<LaunchResult> {
  const run = newRunId();
  const { spec, preset } = await buildSpec(sessions, session, run, req);
  const record = await new RunStore(store).create(spec, preset);
  return launchAttempt(store, launcher, record, spec, 'train');
}

const RESUMABLE: ReadonlySet<EffectiveState> = new Set(['stopped', 'preempted', 'failed', 'lost']);

function refuse(info: RunInfo, verb: string): never {
  const id = info.record.run;
  const s = info.record.session;
  const hint =
    info.state === 'done'
      ? `it finished; use \`booth extend ${s} ${id} --steps N\` to train further`
      : info.state === 'launched' || info.state === 'starting' || info.state === 'running' || info.state === 'stopping'
        ? `it is ${info.state}; \`booth stop ${s} ${id}\` first, or watch it with \`booth logs ${s} ${id} -f\``
        : `it is ${info.state}`;
  throw new BoothError('CONFLICT', `cannot ${verb} run ${id} of "${s}": ${hint}`);
}

/**
 * Asks a run to stop gracefully; it becomes `stopped` and resumable once the worker has uploaded
 * its resume state.
 * @throws BoothError `CONFLICT` when the run is not active
 */
export async function stopRun(store: ObjectStore, launcher: Launcher | ((name: Launch['launcher']) => Launcher), session: string, run?: string, options: ReconcileOptions = {}): Promise<RunInfo> {
  const info = await runInfo(store, session, run, options);
  if (!['launched', 'starting', 'running', 'stopping'].includes(info.state)) refuse(info, 'stop');
  const last = info.record.launches.at(-1);
  info.record.stopRequestedAt = new Date().toISOString();
  await new RunStore(store).saveRecord(info.record);
  // The attempt is stopped by the launcher that started it, whatever this command was given.
  if (last) await (typeof launcher === 'function' ? launcher(last.launcher) : launcher).stop(last.handle);
  return info;
}

/**
 * Starts a new attempt of a stopped, preempted, failed or lost run; the worker resumes from the
 * newest complete resume state.
 * @throws BoothError `CONFLICT` when the run is active or done
 */
export async function resumeRun(store: ObjectStore, launcher: Launcher, session: string, run?: string, options: ReconcileOptions = {}): Promise<LaunchResult> {
  const info = await runInfo(store, session, run, options);
  if (!RESUMABLE.has(info.state)) refuse(info, 'resume');
  info.record.stopRequestedAt = null;
  return launchAttempt(store, launcher, info.record, info.spec, 'resume', info.status);
}

/**
 * Raises a run's total step count and launches it again; it continues from its newest resume
 * state (the final one when it had finished).
 * @throws BoothError `CONFLICT` when the run is active; `INVALID_ARGUMENT` when `steps` is not above the current total
 */
export async function extendRun(store: ObjectStore, launcher: Launcher, session: string, run: string | undefined, steps: number, options: ReconcileOptions = {}): Promise<LaunchResult> {
  const info = await runInfo(store, session, run, options);
  if (!RESUMABLE.has(info.state) && info.state !== 'done') refuse(info, 'extend');
  const from = totalSteps(info.spec);
  const spec = extendSpec(info.spec, steps);
  await new RunStore(store).saveSpec(spec);
  info.record.extensions.push({ at: new Date().toISOString(), from, to: steps });
  info.record.stopRequestedAt = null;
  return launchAttempt(store, launcher, info.record, spec, 'extend', info.status);
}
