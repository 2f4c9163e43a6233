/**
 * The launcher contract: how the control plane gets a worker running for a run, stops it and
 * asks after it. Implementations: `local.ts` (a detached process on this machine) and, later,
 * `slurm.ts` (a batch job). A launcher does not interpret training progress — that is in the
 * store, written by the worker — it only knows its own handle (a pid, a job id).
 *
 * Left out on purpose: queues and priorities (the scheduler's job), log streaming (the worker
 * uploads logs to the store, readable the same way whatever launched it), retries (a failed
 * attempt is resumed by a person or by the scheduler's requeue).
 */

/** What a launcher needs to start one worker attempt. */
export interface LaunchRequest {
  session: string;
  run: string;
  /** 1 for the first launch, then one more per resume/extend. */
  attempt: number;
  /** Absolute URL of the store the worker must open (`file:///…` or `s3://…`). */
  storeUrl: string;
  /** Extra environment for the worker (merged over the launcher's own). */
  env?: Record<string, string>;
  /**
   * Seconds of warning the run needs to save and upload a resume state before it is killed
   * (from the spec, `signalGraceSeconds` in requirements.ts); a scheduler's launcher uses it when
   * its own settings name none.
   */
  signalGrace?: number;
}

/** Launcher-specific facts that let it find the attempt again (stored in `run.json`). */
export type LaunchHandle = Record<string, string | number>;

/** What a launcher can observe about an attempt, independent of the worker's status. */
export interface LaunchProbe {
  /** `pending`: queued; `running`: the process/job exists; `gone`: it has ended; `unknown`: cannot tell from here. */
  state: 'pending' | 'running' | 'gone' | 'unknown';
  detail?: string;
}

/** A way to run workers. */
export interface Launcher {
  readonly name: 'local' | 'slurm';
  /**
   * Starts a worker attempt and returns at once.
   * @throws BoothError `ENVIRONMENT` when it cannot be started (binary missing, submission refused)
   */
  launch(request: LaunchRequest): Promise<LaunchHandle>;
  /** Asks the attempt to stop gracefully (the worker saves a resume state). No error if already gone. */
  stop(handle: LaunchHandle): Promise<void>;
  /** Looks at the attempt from outside. */
  probe(handle: LaunchHandle): Promise<LaunchProbe>;
}
