/**
 * Proof of format for FLUX.1 and SD 3.5 exports: diffusers itself reads Booth's files back.
 * trainer/tests/flow_formats.py builds tiny models from the published configs with random LoRA
 * adapters (as the trainer writes them) and the adapted transformer's output; Booth converts
 * (kohya and diffusers layouts for FLUX.1, the diffusers layout for SD 3.5, and the SD 3.5
 * transformer + VAE as a single file); diffusers loads each — its kohya FLUX.1 converter,
 * `load_lora_weights`, `from_single_file` — and the outputs and tensors must equal the originals.
 * Runs wherever torch and diffusers import (BOOTH_TEST_PYTHONPATH), skips with the reason in CI.
 */
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { planCheckpoint } from '../../src/convert/checkpoint.js';
import { localFolder } from '../../src/convert/diffusers.js';
import { openFileSource } from '../../src/convert/io.js';
import { planLora, type LoraOptions } from '../../src/convert/lora.js';
import { writePlanToFile } from '../../src/convert/writer.js';
import { TRAINER_DIR } from '../../src/training/trainer-command.js';

const TOKENIZER = fileURLToPath(new URL('../../../shared/models/clip-tokenizer/vocab.json', import.meta.url));
const extra = process.env.BOOTH_TEST_PYTHONPATH ?? '';
const env = { ...process.env, PYTHONPATH: [TRAINER_DIR, extra, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter) };

async function skipReason(): Promise<string | null> {
  if (!existsSync(TOKENIZER)) return '../shared/models/clip-tokenizer is absent';
  const r = await execa('python3', ['-c', 'import torch, diffusers, transformers, peft, safetensors, tokenizers'], { env, reject: false });
  return r.exitCode === 0 ? null : `torch/diffusers not importable by python3 (set BOOTH_TEST_PYTHONPATH): ${String(r.stderr).trim().split('\n').at(-1)}`;
}
const reason = await skipReason();
if (reason) console.log(`FLUX.1/SD 3.5 format tests skipped: ${reason}`);

describe.skipIf(reason !== null)('FLUX.1 and SD 3.5 exports load in diffusers with the same effect', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'booth-flow-formats-'));
    await execa('python3', ['-m', 'tests.flow_formats', 'make', dir], { cwd: TRAINER_DIR, env });
  }, 600_000);
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function lora(input: string, output: string, options: LoraOptions) {
    const lp = await planLora(await openFileSource(path.join(dir, input)), { dtype: 'fp32', ...options });
    try {
      await writePlanToFile(lp.plan, path.join(dir, output));
    } finally {
      await lp.close();
    }
    return lp;
  }

  it('kohya and diffusers FLUX.1 LoRAs, the SD 3.5 LoRA and the SD 3.5 single file', async () => {
    const kohya = await lora('flux-lora.safetensors', 'flux-kohya.safetensors', {});
    expect(kohya.facts.loraLayout).toBe('kohya');
    await lora('flux-lora.safetensors', 'flux-diffusers.safetensors', { loraFormat: 'diffusers' });
    const sd3 = await lora('sd35-lora.safetensors', 'sd35-lora-out.safetensors', {});
    expect(sd3.facts).toMatchObject({ architecture: 'sd3', loraLayout: 'diffusers' });
    const cp = await planCheckpoint(localFolder(path.join(dir, 'sd35')), { dtype: 'fp32' });
    try {
      await writePlanToFile(cp.plan, path.join(dir, 'sd35-full.safetensors'));
    } finally {
      await cp.close();
    }
    expect(cp.facts).toMatchObject({ architecture: 'sd3', release: 'medium', predictionType: 'flow' });
    expect(cp.plan.metadata['modelspec.architecture']).toBe('stable-diffusion-3-5-medium');

    const r = await execa('python3', ['-m', 'tests.flow_formats', 'check', dir], { cwd: TRAINER_DIR, env });
    const got = JSON.parse(String(r.stdout).trim().split('\n').at(-1) ?? '{}') as Record<string, number | string[]>;
    // Relative to the output's largest value; float32 files, so only summation order differs.
    expect(got.flux_kohya).toBeLessThan(1e-5);
    expect(got.flux_diffusers).toBeLessThan(1e-5);
    expect(got.sd35_lora).toBeLessThan(1e-5);
    expect(got.sd35_lora_effect).toBeGreaterThan(1e-3);
    expect(got.sd35_full_keys).toEqual([]);
    expect(got.sd35_full_max_diff).toBe(0);
    expect(got.sd35_vae_keys).toEqual([]);
    expect(got.sd35_vae_max_diff).toBe(0);
    expect(got.sd35_full_output_diff).toBeLessThan(1e-5);
  }, 600_000);
});
