/**
 * The worker's multi-GPU path without GPUs: `train` goes through a launcher in between (as
 * `accelerate launch` is), which forwards SIGTERM to the trainer but does not pass exit 75 on.
 * The worker must signal the launcher with SIGTERM (never USR1, which would kill it) and count the
 * trainer's `preempted` event as a save, so a Slurm warning still ends in a resumable run.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import type { SessionStore } from '../../src/sessions/store.js';
import { createFsStore } from '../../src/storage/drivers/fs.js';
import type { ObjectStore } from '../../src/storage/types.js';
import { buildSpec } from '../../src/training/control.js';
import { RunStore, newRunId } from '../../src/training/runs.js';
import { startWorker } from '../../src/training/worker.js';
import { STAND_IN, preparedSession, standInCommand } from '../helpers/training.js';

let dir: string;
let store: ObjectStore;
let sessions: SessionStore;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'booth-multi-gpu-'));
  store = createFsStore({ root: path.join(dir, 'store') });
  sessions = await preparedSession(store, 'bag', dir);
}, 120_000);

afterAll(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

/** A stand-in for `accelerate launch`: runs the trainer, forwards SIGTERM, dies on USR1, exits 1 whatever the trainer did. */
const LAUNCHER = `
const { spawn } = require('node:child_process');
const child = spawn(process.execPath, [${JSON.stringify(STAND_IN)}, ...process.argv.slice(1)], { stdio: 'inherit' });
process.on('SIGTERM', () => child.kill('SIGTERM'));
process.on('SIGUSR1', () => { process.stderr.write('launcher killed by USR1\\n'); process.exit(9); });
child.on('exit', () => process.exit(1));
`;

describe('worker through a multi-process launcher', () => {
  it('turns a USR1 warning into SIGTERM for the launcher and reports preempted after the save', { timeout: 60_000 }, async () => {
    const run = newRunId();
    const { spec } = await buildSpec(sessions, 'bag', run, { preset: 'object-sd15', set: ['schedule.textEncoder.steps=0', 'schedule.unet.steps=200', 'resumeState.every=50', 'prior.enabled=false', 'samples.every=0'] });
    const runs = new RunStore(store);
    await runs.create(spec, 'object-sd15');
    const w = startWorker({
      store, session: 'bag', run, attempt: 1, workDir: path.join(dir, 'work', run),
      trainer: standInCommand(), trainCommand: [process.execPath, '-e', LAUNCHER, '--'],
      env: { ...process.env, STANDIN_STEP_MS: '30' }, logger: silentLogger(), statusIntervalMs: 50, logIntervalMs: 100, graceMs: 10_000,
    });
    for (;;) {
      const s = await runs.status('bag', run);
      if (s && s.step >= 6) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    w.stop('SIGUSR1');
    const result = await w.done;
    expect(result).toMatchObject({ state: 'preempted', exitCode: 75 });
    expect(result.message).toMatch(/saved its state/);
    expect(result.step).toBeLessThan(200);
    expect((await runs.resumeStates('bag', run)).at(-1)).toBe(result.step);
    const status = await runs.status('bag', run);
    expect(status?.error).toBeNull();
    expect(JSON.stringify(status)).not.toContain('launcher killed by USR1');
  });
});
