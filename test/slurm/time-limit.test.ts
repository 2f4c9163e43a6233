/**
 * A run longer than its Slurm time limit crosses allocations on its own: `--time=1` with
 * `--signal=B:USR1@30` makes Slurm warn the batch shell (Slurm checks limits about every 30 s,
 * so the warning lands 0–30 s into each one-minute allocation); the worker saves a resume state
 * and exits 75; the script requeues the job; the next allocation is a new attempt that resumes at
 * the next step. The stand-in needs about 40 s of steps, more than one allocation gives it. Kept in
 * its own file so it runs beside the other Slurm tests.
 */
import { readFile, rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { json } from '../helpers/cli.js';
import { slurm, slurmFixture, slurmReady, status, stepsOf, waitFor, type SlurmFixture } from './helpers.js';

const ready = slurmReady();
let f: SlurmFixture;

beforeAll(async () => {
  if (ready) f = await slurmFixture('kite', 250);
}, 120_000);

afterAll(async () => {
  if (!f) return;
  const ids = await slurm('squeue', ['-h', '-o', '%i|%j']).catch(() => '');
  for (const line of ids.split('\n')) if (line.endsWith('|booth-kite')) await slurm('scancel', [line.split('|')[0]!]).catch(() => undefined);
  await rm(f.dir, { recursive: true, force: true });
});

describe.skipIf(!ready)('Slurm time limit with the warning signal', () => {
  it('saves a resume state on USR1, requeues itself and completes with every step exactly once', { timeout: 240_000 }, async () => {
    const TOTAL = 160;
    const started = await f.booth([
      'train', 'kite', '--launcher', 'slurm', '--time', '1', '--signal-grace', '30',
      '--set', `schedule.unet.steps=${TOTAL}`, '--set', 'schedule.textEncoder.steps=0', '--set', 'resumeState.every=50',
      '--set', 'prior.enabled=false', '--set', 'samples.every=0', '--json',
    ]);
    expect(started.code, started.stderr).toBe(0);
    const { run, handle } = json<{ run: string; handle: { jobId: string; script: string } }>(started.stdout);
    const script = await readFile(handle.script, 'utf8');
    expect(script).toContain('#SBATCH --time=1');
    expect(script).toContain('#SBATCH --signal=B:USR1@30');

    // Between the save and the next allocation the worker's last word is `preempted`, but the job
    // is queued again: a fresh control plane must show the run as launched, and refuse a resume
    // that would start a second copy.
    const between = await waitFor(f, 'kite', (s) => s.status?.state === 'preempted', 'the first save on the warning signal', 120_000);
    expect(between.state).toBe('launched');
    expect(['pending', 'running']).toContain(between.scheduler?.state);
    const resume = await f.booth(['resume', 'kite']);
    expect(resume.code).toBe(1);
    expect(resume.stderr).toMatch(/cannot resume run .*it is (launched|starting|running)/);

    const done = await waitFor(f, 'kite', (s) => s.state === 'done', 'done after requeues', 200_000);
    expect(done.record.launches).toHaveLength(1);
    const attempts = done.status!.attempt;
    expect(attempts).toBeGreaterThanOrEqual(2);

    // Every attempt has its own log; together they hold each step exactly once, and each attempt
    // but the last ended on a signal save at its last step.
    const all: number[] = [];
    for (let a = 1; a <= attempts; a++) {
      const steps = (await stepsOf(f.storeDir, 'kite', run, a)).map((e) => e.step);
      all.push(...steps);
    }
    expect(all).toEqual(Array.from({ length: TOTAL }, (_, i) => i + 1));
    const log = await f.booth(['logs', 'kite', run, '--raw', '--attempt', '1']);
    expect(log.stdout).toMatch(/"event":"preempted".*"signal":"SIGUSR1"/);

    const out = await f.booth(['logs', 'kite', '--slurm']);
    expect(out.stdout).toMatch(/received SIGUSR1/);
    expect(out.stdout).toMatch(/requeueing job/);
    expect(out.stdout).toMatch(/attempt 2 \(restart 1\)/);
    expect(await status(f, 'kite')).toMatchObject({ state: 'done' });
  });
});
