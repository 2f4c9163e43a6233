/**
 * Jobs killed without warning (OOM killer, crash, node failure), on a real local Slurm: a fresh
 * control plane (every `booth` call is a new process) finds the run `lost` from the store and the
 * scheduler, without rewriting the worker's status; `booth resume`, or Slurm's own requeue,
 * continues from the newest complete resume state. Separate from lifecycle.test.ts so the two run
 * side by side.
 */
import { readFile, rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createFsStore } from '../../src/storage/drivers/fs.js';
import { RunStore } from '../../src/training/runs.js';
import { json } from '../helpers/cli.js';
import { slurm, slurmFixture, slurmReady, status, stepsOf, waitFor, waitForJob, type SlurmFixture } from './helpers.js';

const ready = slurmReady();
let f: SlurmFixture;

beforeAll(async () => {
  if (ready) f = await slurmFixture('tarp', 300);
}, 120_000);

afterAll(async () => {
  if (!f) return;
  const ids = await slurm('squeue', ['-h', '-o', '%i|%j']).catch(() => '');
  for (const line of ids.split('\n')) if (line.endsWith('|booth-tarp')) await slurm('scancel', [line.split('|')[0]!]).catch(() => undefined);
  await rm(f.dir, { recursive: true, force: true });
});

const small = (steps: number) => ['--launcher', 'slurm', '--set', `schedule.unet.steps=${steps}`, '--set', 'schedule.textEncoder.steps=0', '--set', 'resumeState.every=5', '--set', 'prior.enabled=false', '--set', 'samples.every=0'];
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe.skipIf(!ready)('Slurm jobs killed without warning', () => {
  it('a job killed without warning and not requeueable is lost for a restarted control plane; booth resume continues from the last complete state', { timeout: 120_000 }, async () => {
    const started = await f.booth(['train', 'tarp', ...small(60), '--json'], { BOOTH_SLURM_REQUEUE: 'false' });
    expect(started.code, started.stderr).toBe(0);
    const { run, handle } = json<{ run: string; handle: { jobId: string; script: string } }>(started.stdout);
    expect(await readFile(handle.script, 'utf8')).toContain('#SBATCH --no-requeue');
    const last = await killWithoutWarning(run, handle.jobId);
    const lost = await waitFor(f, 'tarp', (s) => s.state === 'lost', 'lost');
    expect(lost.status?.state).toBe('running'); // the worker's file is left as it was: the state is derived
    expect(lost.scheduler?.state).toBe('gone');
    expect((await f.booth(['status', 'tarp'])).stdout).toMatch(/LOST[\s\S]*Slurm job ended without a final report/);

    const resumed = await f.booth(['resume', 'tarp', '--json']);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(json<{ attempt: number }>(resumed.stdout).attempt).toBe(2);
    await waitFor(f, 'tarp', (s) => s.state === 'done', 'done after resume');
    expect((await stepsOf(f.storeDir, 'tarp', run, 2)).map((e) => e.step)).toEqual(range(last + 1, 60));
  });

  it('a requeueable job killed without warning resumes on its own from the last complete state when Slurm requeues it', { timeout: 150_000 }, async () => {
    const started = await f.booth(['train', 'tarp', ...small(60), '--json']);
    expect(started.code, started.stderr).toBe(0);
    const { run, handle } = json<{ run: string; handle: { jobId: string } }>(started.stdout);
    const last = await killWithoutWarning(run, handle.jobId);
    // The job failed; Slurm requeues it (as after a node failure, or an administrator's requeue).
    await waitFor(f, 'tarp', (s) => s.state === 'lost', 'lost');
    await slurm('scontrol', ['requeue', handle.jobId]);
    const requeued = await status(f, 'tarp');
    expect(['launched', 'starting', 'running']).toContain(requeued.state);
    const done = await waitFor(f, 'tarp', (s) => s.state === 'done', 'done after the requeue', 120_000);
    expect(done.record.launches).toHaveLength(1); // no control-plane launch: the scheduler did it
    expect(done.status?.attempt).toBe(2);
    expect(await slurm('scontrol', ['show', 'job', '-o', handle.jobId])).toMatch(/Restarts=1/);
    expect((await stepsOf(f.storeDir, 'tarp', run, 2)).map((e) => e.step)).toEqual(range(last + 1, 60));
  });
});

/**
 * Waits for two resume states, then SIGKILLs the job's worker and trainer (as the kernel's OOM
 * killer or a crash would: no handler runs, nothing is saved, status.json still says running) and
 * returns the newest complete state in the store. Signals sent through Slurm are not used: Slurm
 * follows the batch shell's death with SIGTERM to the rest, which the worker would handle.
 */
async function killWithoutWarning(run: string, jobId: string): Promise<number> {
  const s = await waitFor(f, 'tarp', (x) => x.record.run === run && (x.status?.resumeStates.length ?? 0) >= 2, 'two resume states');
  const worker = s.status!.worker.pid;
  const children = (await readFile(`/proc/${worker}/task/${worker}/children`, 'utf8')).trim().split(/\s+/).filter(Boolean).map(Number);
  for (const pid of [worker, ...children]) process.kill(pid, 'SIGKILL');
  await waitForJob(jobId, /JobState=(?!RUNNING)/);
  const store = createFsStore({ root: f.storeDir });
  try {
    const states = await new RunStore(store).resumeStates('tarp', run);
    expect(states.length).toBeGreaterThanOrEqual(2);
    return states.at(-1)!;
  } finally {
    await store.close();
  }
}
