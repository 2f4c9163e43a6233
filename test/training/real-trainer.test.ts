/**
 * The real Python trainer behind the real worker, on a tiny random SD 1.5 pipeline built from the
 * configs in ../shared/models, on CPU or GPU: launch → progress → SIGTERM → resume at the exact
 * step → done, model uploaded with its marker → exported as one .safetensors that diffusers'
 * `from_single_file` loads with the same weights. Runs wherever torch and diffusers import (set
 * BOOTH_TEST_PYTHONPATH to a folder holding them); skips with the reason elsewhere, as in CI.
 */
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createFsStore } from '../../src/storage/drivers/fs.js';
import type { ObjectStore } from '../../src/storage/types.js';
import { readAll } from '../../src/storage/index.js';
import { silentLogger } from '../../src/log.js';
import type { SessionStore } from '../../src/sessions/store.js';
import { buildSpec } from '../../src/training/control.js';
import { parseEventLine, type EventOf } from '../../src/training/protocol.js';
import { RunStore, newRunId, runKeys } from '../../src/training/runs.js';
import { resolveTrainerCommand, TRAINER_DIR } from '../../src/training/trainer-command.js';
import { startWorker } from '../../src/training/worker.js';
import { exportKeys, exportRun } from '../../src/convert/index.js';
import { preparedSession } from '../helpers/training.js';

const SHARED_MODELS = fileURLToPath(new URL('../../../shared/models/sd15/unet/config.json', import.meta.url));
const extra = process.env.BOOTH_TEST_PYTHONPATH ?? '';
const env = { ...process.env, PYTHONPATH: [extra, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter), BOOTH_TRAINER: '' };

async function skipReason(): Promise<string | null> {
  if (!existsSync(SHARED_MODELS)) return '../shared/models is absent';
  const r = await execa('python3', ['-c', 'import torch, diffusers, transformers, peft, safetensors'], { env, reject: false });
  return r.exitCode === 0 ? null : `torch/diffusers not importable by python3 (set BOOTH_TEST_PYTHONPATH): ${String(r.stderr).trim().split('\n').at(-1)}`;
}
const reason = await skipReason();
if (reason) console.log(`real-trainer tests skipped: ${reason}`);

let dir: string;
let store: ObjectStore;
let sessions: SessionStore;
let tiny: string;

describe.skipIf(reason !== null)('the real trainer behind the worker (tiny SD 1.5)', () => {
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'booth-real-trainer-'));
    store = createFsStore({ root: path.join(dir, 'store') });
    sessions = await preparedSession(store, 'bag', dir);
    tiny = path.join(dir, 'tiny-sd15');
    await execa('python3', ['-c', 'import sys; from tests.tiny_models import build_sd15; build_sd15(sys.argv[1])', tiny], { cwd: TRAINER_DIR, env: { ...env, PYTHONPATH: [TRAINER_DIR, env.PYTHONPATH].join(path.delimiter) } });
  }, 300_000);
  afterAll(async () => {
    await store?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('stops on SIGTERM with a resume state and resumes at the exact step with the same learning rates', async () => {
    const run = newRunId();
    const set = ['resolution=256', 'optimizer.type=adamw', 'mixedPrecision=no', 'prior.enabled=false', 'samples.every=0', 'samples.steps=2', 'resumeState.every=4', 'resumeState.keep=2', 'lrScheduler.type=linear'];
    const { spec } = await buildSpec(sessions, 'bag', run, { preset: 'object-sd15', baseModel: tiny, set, steps: 24 });
    await new RunStore(store).create(spec, null);
    const trainer = resolveTrainerCommand(env);
    const start = (attempt: number) =>
      startWorker({ store, session: 'bag', run, attempt, workDir: path.join(dir, 'work'), trainer: trainer.command, env: trainer.env, logger: silentLogger(), check: false, statusIntervalMs: 100, logIntervalMs: 500 });
    const first = start(1);
    const runs = new RunStore(store);
    for (;;) {
      const s = await runs.status('bag', run);
      if (s && s.step >= 6) break;
      if (s && ['failed', 'done'].includes(s.state)) throw new Error(`run ended early: ${JSON.stringify(s.error ?? s.message)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    first.stop('SIGTERM');
    const stopped = await first.done;
    expect(stopped.state, stopped.message).toBe('preempted');
    expect(stopped.step).toBeLessThan(24);
    const second = await start(2).done;
    expect(second.state, second.message).toBe('done');

    const events = async (attempt: number) =>
      (await readAll(store, runKeys('bag', run).log(attempt)))
        .toString('utf8')
        .split('\n')
        .map(parseEventLine)
        .flatMap((p) => (p.kind === 'event' && p.event.event === 'step' ? [p.event as EventOf<'step'>] : []));
    const all = [...(await events(1)), ...(await events(2))];
    expect(all.map((e) => e.step)).toEqual(Array.from({ length: 24 }, (_, i) => i + 1));
    // Linear decay from 2e-6 over 24 steps, no warmup: step k uses lr · (24 − (k − 1)) / 24.
    for (const e of all) expect(e.lr).toBeCloseTo((2e-6 * (24 - (e.step - 1))) / 24, 12);
    expect(await readAll(store, runKeys('bag', run).modelMarker)).toBeTruthy();

    // The export loads in diffusers' own single-file loader and equals the trained Diffusers
    // weights up to fp16 rounding.
    const exported = await exportRun(store, 'bag', { run, dtype: 'fp16' });
    const file = path.join(dir, 'store', exportKeys('bag', exported.name).file);
    const model = path.join(dir, 'store', runKeys('bag', run).modelPrefix);
    const check = [
      'import sys, json',
      'from diffusers import StableDiffusionPipeline',
      'single = StableDiffusionPipeline.from_single_file(sys.argv[1], config=sys.argv[2], local_files_only=True)',
      'ref = StableDiffusionPipeline.from_pretrained(sys.argv[2], local_files_only=True)',
      'out = {}',
      'for c in ["unet", "vae", "text_encoder"]:',
      '    a, b = getattr(single, c).state_dict(), getattr(ref, c).state_dict()',
      '    out[c] = [len([k for k in b if k in a]), len(b), max(float((a[k].float() - b[k].float()).abs().max()) for k in b if k in a)]',
      'print(json.dumps(out))',
    ].join('\n');
    const r = await execa('python3', ['-c', check, file, model], { env });
    const cmp = JSON.parse(String(r.stdout).trim().split('\n').at(-1)!) as Record<string, [number, number, number]>;
    for (const [component, [found, total, maxDiff]] of Object.entries(cmp)) {
      expect(found, component).toBe(total);
      expect(maxDiff, component).toBeLessThan(2e-3);
    }
  }, 600_000);
});
