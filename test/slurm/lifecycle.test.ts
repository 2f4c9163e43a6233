/**
 * `booth train --launcher slurm` end to end on a real single-node Slurm (scripts/slurm-local.sh):
 * the batch script runs the real worker with the stand-in trainer. Every `booth` call is a fresh
 * process, i.e. a freshly started control plane that knows only the store and the scheduler.
 * Proves: pending → running → progress → finished; `booth stop` → stopped and resumable (running
 * and pending jobs). Kills without warning: killed.test.ts; time limits: time-limit.test.ts.
 */
import { readFile, rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { json } from '../helpers/cli.js';
import { slurm, slurmFixture, slurmReady, status, stepsOf, waitFor, waitForJob, type SlurmFixture } from './helpers.js';

const ready = slurmReady();
let f: SlurmFixture;

beforeAll(async () => {
  if (ready) f = await slurmFixture('tent', 300);
}, 120_000);

afterAll(async () => {
  if (!f) return;
  // Leave no job of ours behind on a shared test cluster.
  const ids = await slurm('squeue', ['-h', '-o', '%i|%j']).catch(() => '');
  for (const line of ids.split('\n')) if (line.endsWith('|booth-tent')) await slurm('scancel', [line.split('|')[0]!]).catch(() => undefined);
  await rm(f.dir, { recursive: true, force: true });
});

const small = (steps: number) => ['--launcher', 'slurm', '--set', `schedule.unet.steps=${steps}`, '--set', 'schedule.textEncoder.steps=0', '--set', 'resumeState.every=5', '--set', 'prior.enabled=false', '--set', 'samples.every=0'];
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe.skipIf(!ready)('Slurm launcher with a real local Slurm', () => {
  it('submit → pending → running → progress in the store → finished, with the job id and output file recorded', { timeout: 120_000 }, async () => {
    // Held at submission, so "pending" is observed for certain, not by luck of timing.
    const started = await f.booth(['train', 'tent', ...small(30), '--sbatch=--hold', '--json']);
    expect(started.code, started.stderr).toBe(0);
    const { run, handle } = json<{ run: string; handle: { jobId: string; output: string; script: string } }>(started.stdout);
    expect(handle.jobId).toMatch(/^\d+$/);
    const script = await readFile(handle.script, 'utf8');
    expect(script).toContain('#SBATCH --requeue');
    // No lead in the settings: the run's own, object-sd15's 5.2 GB state (SD 1.5 UNet, 8-bit AdamW)
    // written and uploaded at 200 MB/s plus margins (signalGraceSeconds) = 150 s.
    expect(script).toContain('#SBATCH --signal=B:USR1@150');
    expect(script).not.toContain('--gres');

    const pending = await status(f, 'tent');
    expect(pending.state).toBe('launched');
    expect(pending.scheduler?.state).toBe('pending');
    expect(pending.status).toBeNull();
    const human = await f.booth(['status', 'tent']);
    expect(human.stdout).toMatch(/LAUNCHED/);
    expect(human.stdout).toContain(`Slurm job ${handle.jobId}: PENDING`);

    await slurm('scontrol', ['release', handle.jobId]);
    const running = await waitFor(f, 'tent', (s) => s.state === 'running' && (s.status?.step ?? 0) >= 3, 'running with progress');
    expect(running.scheduler?.state).toBe('running');
    const done = await waitFor(f, 'tent', (s) => s.state === 'done', 'done');
    expect(done.status).toMatchObject({ step: 30, total: 30, attempt: 1 });
    expect((await stepsOf(f.storeDir, 'tent', run, 1)).map((e) => e.step)).toEqual(range(1, 30));

    // The job's own output: the batch script's notes, readable through `booth logs --slurm`.
    await waitForJob(handle.jobId, /JobState=COMPLETED/);
    const out = await f.booth(['logs', 'tent', '--slurm']);
    expect(out.code, out.stderr).toBe(0);
    expect(out.stdout).toContain(`slurm-${handle.jobId}.out`);
    expect(out.stdout).toMatch(/booth: job \d+ attempt 1 \(restart 0\)/);
    const runs = json<{ runs: Array<{ state: string }> }>((await f.booth(['runs', 'tent', '--json'])).stdout);
    expect(runs.runs.map((r) => r.state)).toEqual(['done']);
  });

  it('booth stop → the worker saves and the run is stopped; resume goes back to Slurm and continues at the next step', { timeout: 150_000 }, async () => {
    const started = await f.booth(['train', 'tent', ...small(40), '--json']);
    expect(started.code, started.stderr).toBe(0);
    const { run, handle } = json<{ run: string; handle: { jobId: string } }>(started.stdout);
    await waitFor(f, 'tent', (s) => s.record.run === run && (s.status?.step ?? 0) >= 8, 'step 8');

    const stopped = await f.booth(['stop', 'tent', '--wait', '--json']);
    expect(stopped.code, stopped.stderr).toBe(0);
    const at = json<{ state: string; step: number }>(stopped.stdout);
    expect(at.state).toBe('stopped');
    expect(at.step).toBeLessThan(40);
    const after = await status(f, 'tent');
    expect(after.status?.resumeStates.at(-1)).toBe(at.step);
    // The job ended by itself once the worker had saved (no requeue for a stop).
    expect(await waitForJob(handle.jobId, /JobState=COMPLETED/)).toMatch(/Restarts=0/);
    expect((await status(f, 'tent')).state).toBe('stopped');

    // No --launcher: resume uses the run's last launcher (Slurm).
    const resumed = await f.booth(['resume', 'tent', '--json']);
    expect(resumed.code, resumed.stderr).toBe(0);
    const second = json<{ attempt: number; handle: { jobId?: string } }>(resumed.stdout);
    expect(second.attempt).toBe(2);
    expect(second.handle.jobId).toMatch(/^\d+$/);
    expect(second.handle.jobId).not.toBe(handle.jobId);
    await waitFor(f, 'tent', (s) => s.state === 'done', 'done after resume');
    const first = (await stepsOf(f.storeDir, 'tent', run, 1)).map((e) => e.step);
    const rest = (await stepsOf(f.storeDir, 'tent', run, 2)).map((e) => e.step);
    expect(first.at(-1)).toBe(at.step);
    expect([...first, ...rest]).toEqual(range(1, 40));
  });

  it('booth stop on a job that has not started cancels it; the run is stopped, never ran, and resumable', { timeout: 60_000 }, async () => {
    const started = await f.booth(['train', 'tent', ...small(10), '--sbatch=--hold', '--json']);
    expect(started.code, started.stderr).toBe(0);
    const { run } = json<{ run: string }>(started.stdout);
    const stop = await f.booth(['stop', 'tent', '--wait', '--json']);
    expect(stop.code, stop.stderr).toBe(0);
    expect(json<{ state: string }>(stop.stdout).state).toBe('stopped');
    const s = await status(f, 'tent', run);
    expect(s.state).toBe('stopped');
    expect(s.status).toBeNull();
    const again = await f.booth(['stop', 'tent']);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/cannot stop run .*stopped/);
  });

});
