/** The job spec: presets, validation messages, step arithmetic, extension, overrides, and the JSON Schema the trainer reads. */
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { BoothError } from '../../src/errors.js';
import { applySet } from '../../src/training/control.js';
import { estimateVramGb, assertHostFits, resumeStateBytes, signalGraceSeconds } from '../../src/training/requirements.js';
import { defaultPreset, extendSpec, jobSpecJsonSchema, parseJobSpec, presetSpec, stagesOf, totalSteps, PRESETS, PRESET_BASES } from '../../src/training/spec.js';
import { BASE_MODELS } from '../../src/sessions/base-models.js';
import type { CheckReport } from '../../src/training/protocol.js';

const input = { session: 'alice', run: '20261122-120000-abcd', trigger: 'ohwx', classNoun: 'woman', base: 'sd15' as const };

describe('presets', () => {
  it('face-sd15 carries the fast-DreamBooth defaults', () => {
    const s = presetSpec('face-sd15', input);
    expect(s).toMatchObject({
      batchSize: 1,
      optimizer: { type: 'adamw8bit' },
      mixedPrecision: 'fp16',
      schedule: { type: 'two-stage', textEncoder: { steps: 350, learningRate: 1e-6 }, unet: { steps: 1500, learningRate: 2e-6 } },
      lrScheduler: { type: 'linear', warmupSteps: 0 },
      resolution: 512,
      base: { architecture: 'sd1', model: 'stable-diffusion-v1-5/stable-diffusion-v1-5' },
      data: { instancePrompt: 'photo of ohwx woman' },
    });
    expect(stagesOf(s)).toEqual([
      { name: 'text_encoder', steps: 350, start: 0 },
      { name: 'unet', steps: 1500, start: 350 },
    ]);
    expect(totalSteps(s)).toBe(1850);
  });

  it('object-sd15 uses prior preservation and skips the empty text-encoder stage', () => {
    const s = presetSpec('object-sd15', { ...input, classNoun: 'backpack' });
    expect(s.prior).toMatchObject({ enabled: true, classPrompt: 'photo of a backpack', classImages: 200, lossWeight: 1 });
    expect(stagesOf(s).map((x) => x.name)).toEqual(['unet']);
  });

  it('face-lora-sdxl is a 1024 px LoRA and refuses SD 1.5 sessions (and vice versa)', () => {
    const s = presetSpec('face-lora-sdxl', { ...input, base: 'sdxl' });
    expect(s).toMatchObject({ mode: { type: 'lora', rank: 16, alpha: 16 }, resolution: 1024, base: { architecture: 'sdxl' }, gradientCheckpointing: true });
    expect(() => presetSpec('face-lora-sdxl', input)).toThrow(/is for Stable Diffusion XL base 1.0 sessions but "alice" targets Stable Diffusion 1.5; pick face-sd15 or object-sd15 or face-lora-sd15/);
    expect(() => presetSpec('face-sd15', { ...input, base: 'sdxl' })).toThrow(/face-lora-sdxl/);
  });

  it('a preset on SD 2.1 trains at 768 px on the sd2 architecture', () => {
    expect(presetSpec('face-sd15', { ...input, base: 'sd21' })).toMatchObject({ resolution: 768, base: { architecture: 'sd2' } });
  });

  it('face-lora-sd15 is an SD 1.5 LoRA without overrides', () => {
    const s = presetSpec('face-lora-sd15', input);
    expect(s).toMatchObject({ mode: { type: 'lora', rank: 16, alpha: 16 }, schedule: { type: 'joint', steps: 1500, unetLearningRate: 1e-4 }, resolution: 512, mixedPrecision: 'fp16' });
  });

  it('face-lora-flux: FLUX.1 [dev] LoRA at 1024 px with the flow settings, [schnell] samples in 4 steps with a 256-token T5 window', () => {
    const dev = presetSpec('face-lora-flux', { ...input, base: 'flux-dev' });
    expect(dev).toMatchObject({
      base: { architecture: 'flux', model: 'black-forest-labs/FLUX.1-dev' },
      mode: { type: 'lora', rank: 16, alpha: 16, targets: 'attention-mlp' },
      schedule: { type: 'joint', steps: 1500, transformerLearningRate: 1e-4, textEncoderLearningRate: 0 },
      resolution: 1024,
      mixedPrecision: 'bf16',
      gradientCheckpointing: true,
      flow: { timestepSampling: 'logit_normal', guidanceScale: 1 },
      samples: { steps: 28, guidanceScale: 3.5, every: 250 },
    });
    expect(dev.schedule).not.toHaveProperty('unetLearningRate');
    const schnell = presetSpec('face-lora-flux', { ...input, base: 'flux-schnell', resolution: 768 });
    expect(schnell).toMatchObject({ resolution: 768, samples: { steps: 4, guidanceScale: 0 }, flow: { maxSequenceLength: 256 }, base: { model: 'black-forest-labs/FLUX.1-schnell' } });
    expect(totalSteps(presetSpec('object-lora-flux', { ...input, base: 'flux-dev' }))).toBe(1000);
  });

  it('SD 3.5 presets: Medium full fine-tune with accumulation, LoRA for Medium and Large', () => {
    const full = presetSpec('face-sd35-medium', { ...input, base: 'sd35-medium' });
    expect(full).toMatchObject({ mode: { type: 'full' }, gradientAccumulation: 4, schedule: { steps: 500, transformerLearningRate: 1e-4 }, base: { architecture: 'sd3' } });
    expect(() => presetSpec('face-sd35-medium', { ...input, base: 'sd35-large' })).toThrow(/pick face-lora-sd35/);
    expect(presetSpec('face-lora-sd35', { ...input, base: 'sd35-large' })).toMatchObject({ base: { model: 'stabilityai/stable-diffusion-3.5-large' }, mode: { type: 'lora' } });
  });

  it('every base model has a default preset that fits it', () => {
    for (const base of BASE_MODELS) {
      for (const kind of ['person', 'object', 'style'] as const) {
        const p = defaultPreset(base, kind);
        expect(PRESET_BASES[p], `${base} ${kind}`).toContain(base);
        expect(() => presetSpec(p, { ...input, base })).not.toThrow();
      }
    }
  });
});

describe('resume-state size and the warning a run needs', () => {
  it('follows the trained parameters and the optimizer', () => {
    const face = presetSpec('face-sd15', input);
    // UNet 859.5 M + text encoder 123.1 M, float32 + 8-bit AdamW moments: (4 + 2) bytes each, an
    // upper bound (a stage's state holds only that stage's moments).
    expect(resumeStateBytes(face) / 1e9).toBeCloseTo(5.8956, 3);
    // The UNet alone with AdamW: the 9.61 GiB state measured on an H200 (docs/benchmarks.md).
    const adamw = parseJobSpec({ ...face, optimizer: { ...face.optimizer, type: 'adamw' }, schedule: { type: 'two-stage', textEncoder: { steps: 0, learningRate: 1e-6 }, unet: { steps: 500, learningRate: 2e-6 } } });
    expect(resumeStateBytes(adamw) / 2 ** 30).toBeCloseTo(9.61, 1);
    expect(signalGraceSeconds(adamw)).toBe(210);
    expect(signalGraceSeconds(presetSpec('face-lora-flux', { ...input, base: 'flux-dev' }))).toBe(120);
    const sdxlFull = parseJobSpec({ ...presetSpec('face-lora-sdxl', { ...input, base: 'sdxl' }), mode: { type: 'full' } });
    expect(signalGraceSeconds(sdxlFull)).toBeGreaterThan(signalGraceSeconds(adamw));
  });
});

describe('family rules', () => {
  const flux = presetSpec('face-lora-flux', { ...input, base: 'flux-dev' });

  it('the denoiser learning rate is named after the denoiser', () => {
    const s = flux.schedule as Record<string, unknown>;
    expect(() => parseJobSpec({ ...flux, schedule: { ...s, unetLearningRate: 1e-4, transformerLearningRate: undefined } })).toThrow(/schedule\.unetLearningRate: a flux model's denoiser is a transformer; name its learning rate schedule\.transformerLearningRate/);
    expect(() => parseJobSpec({ ...flux, schedule: { ...s, transformerLearningRate: undefined } })).toThrow(/schedule\.transformerLearningRate: required/);
    const sd = presetSpec('face-lora-sd15', input);
    expect(() => parseJobSpec({ ...sd, schedule: { ...sd.schedule, transformerLearningRate: 1e-4 } })).toThrow(/schedule\.transformerLearningRate: a sd1 model's denoiser is a UNet/);
  });

  it('FLUX.1 is a LoRA, the text encoders stay frozen, flow settings only on flow bases', () => {
    expect(() => parseJobSpec({ ...flux, mode: { type: 'full' } })).toThrow(/mode\.type: FLUX\.1 is trained as a LoRA/);
    expect(() => parseJobSpec({ ...flux, schedule: { ...flux.schedule, textEncoderLearningRate: 1e-5 } })).toThrow(/textEncoderLearningRate: flux runs keep the text encoders frozen/);
    expect(() => parseJobSpec({ ...flux, schedule: { type: 'two-stage', textEncoder: { steps: 0, learningRate: 1e-6 }, unet: { steps: 10, learningRate: 1e-4 } } })).toThrow(/schedule\.type: flux runs train the transformer only/);
    expect(() => parseJobSpec({ ...flux, base: { ...flux.base, predictionType: 'epsilon' } })).toThrow(/base\.predictionType/);
    expect(() => parseJobSpec({ ...presetSpec('face-sd15', input), flow: { guidanceScale: 1 } })).toThrow(/flow: flow-matching settings apply to FLUX\.1 and SD 3\.5 only, not to sd1/);
    expect(() => parseJobSpec({ ...flux, flow: { shift: 'auto' } })).toThrow(/flow\.shift/);
  });

  it('the VRAM estimate of a FLUX.1 LoRA is set by the 12 B transformer, T5 gone before training', () => {
    const e = estimateVramGb(flux);
    // bf16 transformer 22.2 GiB + LoRA + activations with checkpointing; the load phase (transformer + T5 + CLIP in bf16, 31.4 GiB) is smaller.
    expect(e.gb).toBeGreaterThan(25);
    expect(e.gb).toBeLessThan(45);
    expect(Object.keys(e.terms)).toContain('activations');
    const sd35 = estimateVramGb(presetSpec('face-lora-sd35', { ...input, base: 'sd35-medium' }));
    const large = estimateVramGb(presetSpec('face-lora-sd35', { ...input, base: 'sd35-large' }));
    expect(large.gb).toBeGreaterThan(sd35.gb + 8);
  });
});

describe('parseJobSpec', () => {
  const valid = presetSpec('face-sd15', input);

  it('names every bad field', () => {
    const bad = { ...valid, resolution: 500, optimizer: { type: 'sgd' }, schedule: { ...valid.schedule, unet: { steps: -1, learningRate: 2e-6 } } };
    let err: unknown;
    try {
      parseJobSpec(bad, 'spec.json');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(BoothError);
    const message = (err as BoothError).message;
    expect(message).toMatch(/^spec\.json is invalid/);
    expect(message).toMatch(/resolution: .*64/);
    expect(message).toMatch(/optimizer\.type/);
    expect(message).toMatch(/schedule\.unet\.steps/);
  });

  it('rejects unknown fields (typos must not be silently ignored) and a spec that trains nothing', () => {
    expect(() => parseJobSpec({ ...valid, gradientCheckpoint: true })).toThrow(/gradientCheckpoint/);
    expect(() => parseJobSpec({ ...valid, schedule: { type: 'two-stage', textEncoder: { steps: 0, learningRate: 1e-6 }, unet: { steps: 0, learningRate: 1e-6 } } })).toThrow(/0 steps/);
  });

  it('refuses a LoRA text-encoder stage without text-encoder adapters', () => {
    const lora = presetSpec('face-lora-sdxl', { ...input, base: 'sdxl' });
    const twoStage = { ...lora, schedule: { type: 'two-stage', textEncoder: { steps: 100, learningRate: 1e-5 }, unet: { steps: 500, learningRate: 1e-4 } } };
    expect(() => parseJobSpec(twoStage)).toThrow(/mode\.textEncoder is false/);
    expect(parseJobSpec({ ...twoStage, mode: { ...lora.mode, textEncoder: true } }).schedule.type).toBe('two-stage');
  });

  it('fills defaults', () => {
    const { resumeState, samples, ...rest } = valid;
    const s = parseJobSpec(rest);
    expect(s.resumeState).toEqual({ every: 250, keep: 2 });
    expect(s.samples.steps).toBe(25);
    expect(resumeState).toBeDefined();
    expect(samples).toBeDefined();
  });
});

describe('extendSpec', () => {
  it('grows the last stage to the new total', () => {
    const s = extendSpec(presetSpec('face-sd15', input), 2500);
    expect(s.schedule).toMatchObject({ textEncoder: { steps: 350 }, unet: { steps: 2150 } });
    expect(totalSteps(s)).toBe(2500);
  });
  it('refuses a total that is not larger', () => {
    expect(() => extendSpec(presetSpec('face-sd15', input), 1850)).toThrow(/above the run's current total of 1850/);
  });
});

describe('applySet', () => {
  it('sets nested fields with JSON values and plain strings', () => {
    expect(applySet({ a: { b: 1 } }, 'a.b=2')).toEqual({ a: { b: 2 } });
    expect(applySet({}, 'mixedPrecision=bf16')).toEqual({ mixedPrecision: 'bf16' });
    expect(applySet({}, 'samples.prompts=["a","b"]')).toEqual({ samples: { prompts: ['a', 'b'] } });
  });
  it('rejects malformed assignments and paths through non-objects', () => {
    expect(() => applySet({}, 'novalue')).toThrow(/field\.path=value/);
    expect(() => applySet({ a: 1 }, 'a.b=2')).toThrow(/"a" is not an object/);
    expect(() => applySet({}, '__proto__.x=1')).toThrow(/field\.path=value/);
  });
});

describe('requirements', () => {
  const report = (free: number, extra: Partial<CheckReport> = {}): CheckReport => ({
    event: 'check', protocol: 1, python: '3.11', torch: '2.5.1', cuda: '12.4', diffusers: '0.31.0', bitsandbytes: '0.44.1', bf16: true,
    gpus: [{ index: 0, name: 'GPU', total_gb: 80, free_gb: free }], problems: [], ...extra,
  });
  it('estimates more memory for full SDXL than for an SD 1.5 fine-tune, and less with 8-bit AdamW', () => {
    const sd15 = presetSpec('face-sd15', input);
    const sd15AdamW = parseJobSpec({ ...sd15, optimizer: { type: 'adamw' } });
    expect(estimateVramGb(sd15AdamW).gb).toBeGreaterThan(estimateVramGb(sd15).gb);
    const lora = presetSpec('face-lora-sdxl', { ...input, base: 'sdxl' });
    const fullXl = parseJobSpec({ ...lora, mode: { type: 'full' } });
    expect(estimateVramGb(fullXl).gb).toBeGreaterThan(estimateVramGb(lora).gb * 2);
  });
  it('refuses a host without a GPU, without enough free memory, or without bitsandbytes for 8-bit AdamW', () => {
    const s = presetSpec('face-sd15', input);
    expect(() => assertHostFits(s, report(79, { gpus: [] }))).toThrow(/no CUDA GPU/);
    expect(() => assertHostFits(s, report(2))).toThrow(/needs about .* GiB .* 2\.0 GiB free.*gradientCheckpointing true/);
    expect(() => assertHostFits(s, report(79, { bitsandbytes: null }))).toThrow(/bitsandbytes/);
    expect(() => assertHostFits(s, report(79, { problems: ['diffusers is not installed'] }))).toThrow(/diffusers is not installed/);
    expect(assertHostFits(s, report(79)).gb).toBe(estimateVramGb(s).gb);
  });
});

describe('JSON Schema for the trainer', () => {
  it('trainer/booth_trainer/spec.schema.json matches the zod schema (run `npm run gen:schema` after changing spec.ts)', async () => {
    const committed = JSON.parse(await readFile(new URL('../../trainer/booth_trainer/spec.schema.json', import.meta.url), 'utf8')) as unknown;
    expect(committed).toEqual(jobSpecJsonSchema());
  });
  it('every preset validates against its own schema shape (required fields present)', () => {
    const schema = jobSpecJsonSchema() as { required: string[] };
    for (const p of PRESETS) {
      const s = presetSpec(p, { ...input, base: PRESET_BASES[p][0]! }) as unknown as Record<string, unknown>;
      for (const field of schema.required) expect(s[field], `${p}.${field}`).toBeDefined();
    }
  });
});
