/**
 * The worker against the protocol-exact stand-in trainer and a real folder store: progress into
 * status.json, resume states uploaded with their marker and pruned, SIGTERM → resume state →
 * exact continuation, corrupt and incomplete states skipped, crashes and missing GPUs reported.
 */
import { mkdtemp, rm, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createFsStore } from '../../src/storage/drivers/fs.js';
import type { ObjectStore } from '../../src/storage/types.js';
import { listAll, readAll } from '../../src/storage/index.js';
import { silentLogger } from '../../src/log.js';
import { RunStore, newRunId, runKeys } from '../../src/training/runs.js';
import { buildSpec } from '../../src/training/control.js';
import { startWorker, type WorkerOptions } from '../../src/training/worker.js';
import { parseEventLine, type EventOf } from '../../src/training/protocol.js';
import type { SessionStore } from '../../src/sessions/store.js';
import { preparedSession, standInCommand } from '../helpers/training.js';

let dir: string;
let store: ObjectStore;
let sessions: SessionStore;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'booth-worker-'));
  store = createFsStore({ root: path.join(dir, 'store') });
  sessions = await preparedSession(store, 'bag', dir);
}, 120_000);

afterAll(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

/** A new run with a small two-stage spec (te 4 + unet 16 steps, state every 5). */
async function newRun(set: string[] = []): Promise<string> {
  const run = newRunId();
  const { spec } = await buildSpec(sessions, 'bag', run, {
    preset: 'object-sd15',
    set: ['schedule.textEncoder.steps=4', 'schedule.unet.steps=16', 'resumeState.every=5', 'resumeState.keep=2', 'samples.every=10', 'prior.classImages=3', ...set],
  });
  await new RunStore(store).create(spec, 'object-sd15');
  return run;
}

function worker(run: string, attempt: number, env: Record<string, string> = {}, extra: Partial<WorkerOptions> = {}) {
  return startWorker({
    store,
    session: 'bag',
    run,
    attempt,
    workDir: path.join(dir, 'work', run),
    trainer: standInCommand(),
    env: { ...process.env, STANDIN_STEP_MS: '15', ...env },
    logger: silentLogger(),
    statusIntervalMs: 50,
    logIntervalMs: 100,
    graceMs: 10_000,
    ...extra,
  });
}

async function steps(run: string, attempt: number): Promise<Array<EventOf<'step'>>> {
  const text = (await readAll(store, runKeys('bag', run).log(attempt))).toString('utf8');
  return text
    .split('\n')
    .map(parseEventLine)
    .flatMap((p) => (p.kind === 'event' && p.event.event === 'step' ? [p.event] : []));
}

/** Waits until the worker reports `step`; fails with the status when the run ended first. */
async function waitForStep(run: string, step: number): Promise<void> {
  const runs = new RunStore(store);
  for (;;) {
    const s = await runs.status('bag', run);
    if (s && s.step >= step) return;
    if (s && ['done', 'failed', 'stopped', 'preempted'].includes(s.state)) throw new Error(`run ended before step ${step}: ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function keysUnder(prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const info of listAll(store, prefix)) out.push(info.key.slice(prefix.length));
  return out;
}

describe('worker with the stand-in trainer', () => {
  it('runs to the end: status done, states pruned to keep, samples, class images and the model uploaded with markers', async () => {
    const run = await newRun();
    const result = await worker(run, 1).done;
    expect(result).toMatchObject({ state: 'done', exitCode: 0, step: 20 });
    const runs = new RunStore(store);
    const status = await runs.status('bag', run);
    expect(status).toMatchObject({ state: 'done', step: 20, total: 20, stage: 'unet', finishedAt: expect.any(String) });
    expect(status!.lossHistory.map(([s]) => s)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    // keep = 2: the final state (20) and the one before it (15).
    expect(await runs.resumeStates('bag', run)).toEqual([15, 20]);
    const keys = runKeys('bag', run);
    expect(await keysUnder(keys.modelPrefix)).toEqual(['COMPLETE', 'model_index.json', 'unet/diffusion_pytorch_model.safetensors']);
    const marker = JSON.parse((await readAll(store, keys.modelMarker)).toString('utf8')) as { step: number; files: Record<string, { size: number }> };
    expect(marker.step).toBe(20);
    expect(marker.files['unet/diffusion_pytorch_model.safetensors']?.size).toBe(8192);
    expect(status!.samples.map((s) => s.step)).toEqual([10, 20]);
    expect((await keysUnder(keys.classPrefix)).filter((k) => k.endsWith('.png')).length).toBe(3);
    expect(await keysUnder(keys.classPrefix)).toContain('COMPLETE');
    // Only the newest local state is kept on the GPU host's disk.
    expect(await readdir(path.join(dir, 'work', run, 'state'))).toEqual(['20']);
  });

  it('SIGTERM saves a resume state and resume continues at the next step with the same learning rates', async () => {
    const reference = await newRun();
    await worker(reference, 1).done;
    const expected = await steps(reference, 1);

    const run = await newRun();
    // The stand-in waits after step 12 until the signal: the middle of the UNet stage, between interval states.
    const w = worker(run, 1, { STANDIN_PAUSE_AT: '12' });
    const runs = new RunStore(store);
    await waitForStep(run, 12);
    w.stop('SIGTERM');
    const stopped = await w.done;
    expect(stopped).toMatchObject({ state: 'preempted', exitCode: 75 });
    const at = stopped.step;
    expect(at).toBe(12);
    expect((await runs.resumeStates('bag', run)).at(-1)).toBe(at);

    const resumed = await worker(run, 2).done;
    expect(resumed).toMatchObject({ state: 'done', step: 20 });
    const first = await steps(run, 1);
    const second = await steps(run, 2);
    const all = [...first, ...second];
    // No step done twice, none skipped.
    expect(all.map((e) => e.step)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    expect(second[0]?.step).toBe(at + 1);
    // The learning rate of every step equals the uninterrupted run's.
    expect(all.map((e) => e.lr)).toEqual(expected.map((e) => e.lr));
    const status = await runs.status('bag', run);
    expect(status?.lossHistory.length).toBe(20);
  });

  it('skips a corrupt newest state and an incomplete one, resuming from the newest that verifies', async () => {
    const run = await newRun();
    const first = await worker(run, 1, { STANDIN_HARD_CRASH_AT: '12' }).done;
    expect(first.state).toBe('failed');
    const runs = new RunStore(store);
    expect(await runs.resumeStates('bag', run)).toEqual([5, 10]);
    const keys = runKeys('bag', run);
    // Corrupt state 10's weights (marker intact) and leave an incomplete state 11 (no marker).
    await store.put(`${keys.state(10)}trainable.safetensors`, Buffer.alloc(4096, 0xee));
    await store.put(`${keys.state(11)}state.json`, '{"step":11}');
    const second = await worker(run, 2).done;
    expect(second.state).toBe('done');
    const resumedSteps = await steps(run, 2);
    expect(resumedSteps[0]?.step).toBe(6);
    const log = (await readAll(store, keys.log(2))).toString('utf8');
    expect(log).toMatch(/resume state of step 10 is unusable .*SHA-256/);
    // The leftover incomplete state is pruned once newer complete states exist.
    expect(await keysUnder(keys.state(11))).toEqual([]);
  });

  it('a trainer crash marks the run failed with the error and the last lines of stderr', async () => {
    const run = await newRun();
    const result = await worker(run, 1, { STANDIN_CRASH_AT: '7' }).done;
    expect(result).toMatchObject({ state: 'failed', exitCode: 1, step: 7 });
    const status = await new RunStore(store).status('bag', run);
    expect(status?.error?.message).toMatch(/illegal memory access/);
    expect(status?.error?.kind).toBe('internal');
    expect(status?.error?.tail.join('\n')).toMatch(/Traceback/);
    expect(status?.message).toMatch(/booth resume bag.*step 5/);
  });

  it('refuses to start without a GPU, saying what to do', async () => {
    const run = await newRun();
    const result = await worker(run, 1, { STANDIN_NO_GPU: '1' }).done;
    expect(result.state).toBe('failed');
    expect(result.message).toMatch(/no CUDA GPU is visible/);
    const status = await new RunStore(store).status('bag', run);
    expect(status?.error?.kind).toBe('environment');
    expect(status?.step).toBe(0);
  });

  it('escalates to SIGKILL when the trainer ignores the stop signal, and the run stays resumable', async () => {
    const run = await newRun();
    // Paused after step 7 and deaf to signals: only SIGKILL ends it.
    const w = worker(run, 1, { STANDIN_IGNORE_SIGNALS: '1', STANDIN_PAUSE_AT: '7' }, { graceMs: 300 });
    const runs = new RunStore(store);
    await waitForStep(run, 7);
    w.stop('SIGTERM');
    const result = await w.done;
    expect(result).toMatchObject({ state: 'preempted', exitCode: 75 });
    expect(result.message).toMatch(/did not save within/);
    expect((await runs.resumeStates('bag', run)).at(-1)).toBe(5);
    expect(result.message).toContain('continues from step 5');
  });
});
