/**
 * Background jobs of the server (prepare, caption, export): started by a request that returns at
 * once with the job, followed by polling `GET /api/jobs/<id>` (progress: phase, done, total, item)
 * or the session's job list. Jobs live in memory on purpose — the store stays the truth: a prepare
 * that finished is visible as the manifest's `state: prepared`, an export as its record under
 * `exports/`, so a restarted server loses only the progress figures of jobs that were in flight
 * (and those steps are restartable themselves: running them again finishes the work).
 *
 * One manifest-writing job per session at a time ({@link JobRegistry.lock}): the manifest has one
 * writer per process, and two concurrent read-modify-writes would lose one's changes.
 *
 * Photo intake across sessions shares a few slots ({@link JobRegistry.intake}): each photo taken
 * in is decoded at full size (a 12 MP photo is ~36 MB of pixels plus sharp's working memory), so
 * uploads to many sessions at once would otherwise need memory in proportion to their number —
 * the load bench measured +700 MiB for 50 concurrent uploads to 50 sessions. Decoding is
 * CPU-bound, so more slots than cores would not finish sooner anyway.
 */
import { randomUUID } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { BoothError, errorMessage, isBoothError } from '../errors.js';
import type { Logger } from '../log.js';

/** What a job does. */
export type JobKind = 'prepare' | 'caption' | 'export';

/** A job as the API shows it. */
export interface Job {
  id: string;
  kind: JobKind;
  session: string;
  state: 'running' | 'succeeded' | 'failed';
  progress: { phase: string; done: number; total: number; item: string } | null;
  /** The operation's report once it succeeded. */
  result: unknown;
  error: { code: string; message: string } | null;
  startedAt: string;
  finishedAt: string | null;
}

/** Reports progress from inside a job. */
export type ProgressReporter = (phase: string, done: number, total: number, item: string) => void;

/** Keeps the jobs of this process (the newest {@link MAX_JOBS}). */
export const MAX_JOBS = 200;

/** Jobs and per-session locks. */
export class JobRegistry {
  private readonly jobs = new Map<string, Job>();
  private readonly busy = new Map<string, string>();
  private readonly running = new Set<Promise<unknown>>();
  private readonly ops = new Map<string, Promise<unknown>>();
  private freeIntakeSlots: number;
  private readonly intakeQueue: Array<() => void> = [];

  /**
   * @param logger - where job failures are logged
   * @param options.intakeSlots - photos taken in at once across all sessions (default: the number of cores)
   * @throws RangeError when `intakeSlots` is not a positive whole number
   */
  constructor(
    private readonly logger: Logger,
    options: { intakeSlots?: number } = {},
  ) {
    const slots = options.intakeSlots ?? availableParallelism();
    if (!Number.isInteger(slots) || slots < 1) throw new RangeError(`JobRegistry: intakeSlots must be a positive whole number, got ${String(slots)}`);
    this.freeIntakeSlots = slots;
  }

  /**
   * Run `fn` (taking photos in: decode and store) in one of the process's intake slots, waiting in
   * arrival order while all are taken. See the module comment for why.
   */
  async intake<T>(fn: () => Promise<T>): Promise<T> {
    if (this.freeIntakeSlots > 0) this.freeIntakeSlots--;
    else await new Promise<void>((resolve) => this.intakeQueue.push(resolve));
    try {
      return await fn();
    } finally {
      // The slot passes straight to the next waiter, so a newcomer cannot overtake the queue.
      const next = this.intakeQueue.shift();
      if (next) next();
      else this.freeIntakeSlots++;
    }
  }

  /** Photo intakes running and waiting for a slot. */
  intakeLoad(): { waiting: number; free: number } {
    return { waiting: this.intakeQueue.length, free: this.freeIntakeSlots };
  }

  /**
   * Start `work` as a job on `session`, holding the session's lock until it ends.
   * @param onDone - called with the finished job (webhooks)
   * @throws BoothError `CONFLICT` when another job holds the session
   */
  start(kind: JobKind, session: string, work: (progress: ProgressReporter) => Promise<unknown>, onDone?: (job: Job) => void): Job {
    this.acquire(session, kind);
    const job: Job = { id: randomUUID(), kind, session, state: 'running', progress: null, result: null, error: null, startedAt: new Date().toISOString(), finishedAt: null };
    this.jobs.set(job.id, job);
    this.prune();
    this.busy.set(session, job.id);
    const promise = (async () => {
      try {
        job.result = await work((phase, done, total, item) => {
          job.progress = { phase, done, total, item };
        });
        job.state = 'succeeded';
      } catch (err) {
        job.state = 'failed';
        job.error = { code: isBoothError(err) ? err.code : 'INTERNAL', message: errorMessage(err) };
        this.logger.warn({ job: job.id, kind, session, err: job.error }, 'job failed');
      } finally {
        job.finishedAt = new Date().toISOString();
        if (this.busy.get(session) === job.id) this.busy.delete(session);
      }
      try {
        onDone?.(job);
      } catch (err) {
        this.logger.error({ job: job.id, err: errorMessage(err) }, 'job completion hook failed');
      }
    })();
    this.running.add(promise);
    void promise.finally(() => this.running.delete(promise));
    return job;
  }

  /**
   * Run a short manifest-writing operation (an upload, a caption edit) under the session's lock.
   * Operations on one session queue behind each other (two browser tabs uploading at once both
   * succeed); a background job holding the session makes them fail fast instead.
   * @throws BoothError `CONFLICT` while a job holds the session
   */
  async lock<T>(session: string, what: string, fn: () => Promise<T>): Promise<T> {
    for (;;) {
      const pending = this.ops.get(session);
      if (pending) {
        await pending.catch(() => undefined);
        continue;
      }
      this.acquire(session, what);
      break;
    }
    const token = `op:${randomUUID()}`;
    this.busy.set(session, token);
    const op = fn();
    this.ops.set(session, op);
    try {
      return await op;
    } finally {
      if (this.ops.get(session) === op) this.ops.delete(session);
      if (this.busy.get(session) === token) this.busy.delete(session);
    }
  }

  /** A job by id. @throws BoothError `NOT_FOUND` */
  get(id: string): Job {
    const job = this.jobs.get(id);
    if (!job) throw new BoothError('NOT_FOUND', `no job ${JSON.stringify(id)} in this server process (jobs are kept in memory; the session's manifest shows what finished)`);
    return job;
  }

  /** Jobs of a session, newest first. */
  ofSession(session: string): Job[] {
    return [...this.jobs.values()].filter((j) => j.session === session).reverse();
  }

  /** Wait for every running job (shutdown, tests). */
  async idle(): Promise<void> {
    while (this.running.size > 0) await Promise.allSettled([...this.running]);
  }

  private acquire(session: string, what: string): void {
    const holder = this.busy.get(session);
    if (holder === undefined) return;
    const job = holder.startsWith('op:') ? null : this.jobs.get(holder);
    throw new BoothError(
      'CONFLICT',
      job
        ? `session "${session}" is busy with a ${job.kind} job (${job.id}); wait for it to finish (GET /api/jobs/${job.id}) before the ${what}`
        : `session "${session}" is being changed by another request; retry the ${what} in a moment`,
    );
  }

  private prune(): void {
    if (this.jobs.size <= MAX_JOBS) return;
    for (const [id, job] of this.jobs) {
      if (this.jobs.size <= MAX_JOBS) break;
      if (job.state !== 'running') this.jobs.delete(id);
    }
  }
}
