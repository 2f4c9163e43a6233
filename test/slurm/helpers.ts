/**
 * Shared set-up of the tests against a real Slurm (scripts/slurm-local.sh): whether one is
 * reachable (skip with a printed reason on a dev machine without it; fail loudly under CI=true,
 * which installs it), a prepared session in a folder store, the `booth` CLI with the stand-in
 * trainer and CPU-only jobs, and polling helpers.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { createFsStore } from '../../src/storage/drivers/fs.js';
import { readAll } from '../../src/storage/index.js';
import { parseEventLine, type EventOf } from '../../src/training/protocol.js';
import { runKeys } from '../../src/training/runs.js';
import { booth as runBooth, json } from '../helpers/cli.js';
import { STAND_IN, preparedSession } from '../helpers/training.js';

/** Why the Slurm tests cannot run here, or null when a local Slurm answers. */
export function slurmUnavailable(): string | null {
  try {
    execFileSync('sbatch', ['--version'], { stdio: 'ignore' });
  } catch {
    return 'sbatch is not on PATH (start a local Slurm with `scripts/slurm-local.sh start`)';
  }
  try {
    execFileSync('scontrol', ['ping'], { stdio: 'pipe', timeout: 20_000 });
  } catch {
    return 'slurmctld does not answer `scontrol ping` (run `scripts/slurm-local.sh start`)';
  }
  return null;
}

/**
 * Decides whether a Slurm suite runs: true when Slurm answers; false (after printing why) on a
 * dev machine without it.
 * @throws Error under `CI=true`, where a missing Slurm is a broken CI set-up, not a reason to skip
 */
export function slurmReady(): boolean {
  const why = slurmUnavailable();
  if (why === null) return true;
  if (process.env.CI === 'true') throw new Error(`CI=true but Slurm is not usable: ${why}. .ci/run must run scripts/slurm-local.sh start before npm test`);
  console.log(`skipping the Slurm tests: ${why}`);
  return false;
}

/** What a test file needs: a store with a prepared session and the CLI bound to it. */
export interface SlurmFixture {
  dir: string;
  storeDir: string;
  env: Record<string, string>;
  booth(args: string[], extraEnv?: Record<string, string>): ReturnType<typeof runBooth>;
}

/**
 * Prepares `session` in a fresh folder store; jobs run the stand-in trainer without GPUs.
 * @param stepMs - the stand-in's time per step (inherited by the job through sbatch's environment)
 */
export async function slurmFixture(session: string, stepMs: number): Promise<SlurmFixture> {
  const dir = await mkdtemp(path.join(tmpdir(), 'booth-slurm-'));
  const storeDir = path.join(dir, 'store');
  const store = createFsStore({ root: storeDir });
  await preparedSession(store, session, dir);
  await store.close();
  const env: Record<string, string> = {
    BOOTH_TRAINER: JSON.stringify([process.execPath, STAND_IN]),
    BOOTH_WORK_DIR: path.join(dir, 'work'),
    BOOTH_SLURM_LOG_DIR: path.join(dir, 'slurm'),
    // An empty settings file, so a developer's ~/.config/booth/slurm.json never leaks into the tests.
    BOOTH_SLURM_CONFIG: path.join(dir, 'slurm-settings.json'),
    BOOTH_SLURM_GPUS: '0',
    STANDIN_STEP_MS: String(stepMs),
  };
  await writeFile(env.BOOTH_SLURM_CONFIG!, '{}\n');
  return { dir, storeDir, env, booth: (args, extraEnv = {}) => runBooth(storeDir, args, { ...env, ...extraEnv }) };
}

/** The parts of `booth status --json` the tests read. */
export interface StatusJson {
  state: string;
  scheduler?: { state: string; detail?: string };
  record: { run: string; stopRequestedAt: string | null; launches: Array<{ attempt: number; launcher: string; handle: { jobId?: string; output?: string } }> };
  status: { state: string; attempt: number; step: number; total: number; resumeStates: number[]; message: string; worker: { host: string; pid: number } } | null;
}

/** `booth status <session> [run] --json` from a fresh CLI process (a fresh control plane each time). */
export async function status(f: SlurmFixture, session: string, run?: string): Promise<StatusJson> {
  const r = await f.booth(['status', session, ...(run ? [run] : []), '--json']);
  if (r.code !== 0) throw new Error(`booth status failed: ${r.stderr}`);
  return json<StatusJson>(r.stdout);
}

/** Polls `booth status` until `predicate` holds; fails after `timeoutMs` naming what it waited for and the last state. */
export async function waitFor(f: SlurmFixture, session: string, predicate: (s: StatusJson) => boolean, what: string, timeoutMs = 90_000, run?: string): Promise<StatusJson> {
  const deadline = Date.now() + timeoutMs;
  let last: StatusJson | null = null;
  while (Date.now() < deadline) {
    last = await status(f, session, run);
    if (predicate(last)) return last;
    await new Promise((r) => setTimeout(r, 400));
  }
  throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}; last: ${JSON.stringify({ state: last?.state, scheduler: last?.scheduler, status: last?.status && { state: last.status.state, attempt: last.status.attempt, step: last.status.step } })}`);
}

/** Step events of one attempt's log in the store, in order. */
export async function stepsOf(storeDir: string, session: string, run: string, attempt: number): Promise<Array<EventOf<'step'>>> {
  const store = createFsStore({ root: storeDir });
  try {
    const text = (await readAll(store, runKeys(session, run).log(attempt))).toString('utf8');
    return text
      .split('\n')
      .map(parseEventLine)
      .flatMap((p) => (p.kind === 'event' && p.event.event === 'step' ? [p.event] : []));
  } finally {
    await store.close();
  }
}

/** Runs a Slurm command for a test (e.g. `scontrol release`), failing on a non-zero exit. */
export async function slurm(command: string, args: string[]): Promise<string> {
  const r = await execa(command, args, { timeout: 30_000 });
  return String(r.stdout);
}

/** Polls `scontrol show job -o <id>` until it matches; returns the line. */
export async function waitForJob(jobId: string, pattern: RegExp, timeoutMs = 60_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let line = '';
  while (Date.now() < deadline) {
    line = await slurm('scontrol', ['show', 'job', '-o', jobId]).catch((err: unknown) => String(err));
    if (pattern.test(line)) return line;
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error(`timed out waiting for Slurm job ${jobId} to match ${pattern}; last: ${line.slice(0, 300)}`);
}
