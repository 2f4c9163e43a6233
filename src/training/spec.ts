/**
 * The job spec: one zod schema for everything a training run needs, from the base model to the
 * resume-state interval. The control plane writes it to `runs/<run>/spec.json`; the worker copies
 * it next to the dataset; the Python trainer validates it again against `trainer/spec.schema.json`,
 * which is generated from this schema (`npm run gen:schema`; a test fails when it drifts), so both
 * sides agree on one contract. Presets give the common cases; their defaults follow
 * fast-DreamBooth (batch 1, 8-bit AdamW, fp16, text encoder 350 steps at 1e-6 then UNet 1500 steps
 * at 2e-6, linear schedule without warmup) where that is what people expect, and are documented
 * next to each value that differs.
 */
import { z } from 'zod';
import { BoothError } from '../errors.js';
import { BASE_MODEL_INFO, type BaseModel } from '../sessions/base-models.js';

/** Version of the spec format; the trainer refuses a spec of another version. */
export const SPEC_VERSION = 1;

/**
 * Architecture families the trainer and the converter know: the UNet families (`sd1`, `sd2`,
 * `sdxl`; denoising diffusion) and the transformer families trained by flow matching (`flux`:
 * FLUX.1 [dev]/[schnell]; `sd3`: Stable Diffusion 3.5 Medium/Large).
 */
export const ARCHITECTURES = ['sd1', 'sd2', 'sdxl', 'flux', 'sd3'] as const;
/** One of {@link ARCHITECTURES}. */
export type Architecture = (typeof ARCHITECTURES)[number];

/** The architectures whose denoiser is a transformer trained by flow matching. */
export const FLOW_ARCHITECTURES: ReadonlySet<Architecture> = new Set(['flux', 'sd3']);

/** Whether `arch` is trained by flow matching (FLUX.1, SD 3.5) rather than denoising diffusion. */
export function isFlowArchitecture(arch: Architecture): boolean {
  return FLOW_ARCHITECTURES.has(arch);
}

/**
 * Hugging Face ids of the public base releases, used when a session names a base model by its
 * short name and no local folder is given. `stable-diffusion-v1-5/stable-diffusion-v1-5` is the
 * maintained mirror of the withdrawn `runwayml/stable-diffusion-v1-5`.
 */
export const DEFAULT_BASE_MODEL_IDS: Readonly<Record<BaseModel, string>> = {
  sd15: 'stable-diffusion-v1-5/stable-diffusion-v1-5',
  sd21: 'stabilityai/stable-diffusion-2-1',
  sdxl: 'stabilityai/stable-diffusion-xl-base-1.0',
  'flux-dev': 'black-forest-labs/FLUX.1-dev',
  'flux-schnell': 'black-forest-labs/FLUX.1-schnell',
  'sd35-medium': 'stabilityai/stable-diffusion-3.5-medium',
  'sd35-large': 'stabilityai/stable-diffusion-3.5-large',
};

const positiveInt = z.number().int().positive();
const nonNegativeInt = z.number().int().nonnegative();
const learningRate = z.number().positive().max(1);

const baseSchema = z
  .object({
    /** A local Diffusers folder (absolute path on the GPU host) or a Hugging Face model id. */
    model: z.string().min(1).max(512),
    /** Git revision (branch, tag or commit) for a Hugging Face id; ignored for a local folder. */
    revision: z.string().min(1).max(128).optional(),
    architecture: z.enum(ARCHITECTURES),
    /**
     * What the UNet predicts. Absent: read from the base model's scheduler config
     * (SD 2.1 768 is `v_prediction`, SD 1.5 and SDXL base are `epsilon`). Not used by the flow
     * families (FLUX.1, SD 3.5), whose transformer always predicts the velocity `ε − x₀`.
     */
    predictionType: z.enum(['epsilon', 'v_prediction']).optional(),
    /** Optional separate VAE (folder or id), e.g. the fp16-safe SDXL VAE. */
    vae: z.string().min(1).max(512).optional(),
  })
  .strict();

const modeSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('full') }).strict(),
  z
    .object({
      type: z.literal('lora'),
      /** LoRA rank r (the inner dimension of the low-rank update). */
      rank: positiveInt.max(1024),
      /** LoRA alpha; the update is scaled by alpha / rank (Hu et al., 2021). */
      alpha: z.number().positive().max(4096),
      dropout: z.number().min(0).max(1).default(0),
      /** Also train LoRA adapters on the text encoder(s) when the text-encoder learning rate is non-zero. */
      textEncoder: z.boolean().default(false),
      /**
       * Which layers of the denoiser get adapters: `attention` (the attention projections) or
       * `attention-mlp` (also the feed-forward projections). Absent: `attention` for the UNet
       * families, `attention-mlp` for FLUX.1 and SD 3.5 (docs/training.md gives the layers).
       */
      targets: z.enum(['attention', 'attention-mlp']).optional(),
    })
    .strict(),
]);

/**
 * A folder of the worker's work dir named by a spec: one plain name, never a path, and none of the
 * worker's own folders. The worker empties such a folder and mirrors store objects into it, and
 * uploads the class folder back, so `../..` or `/` here would delete or publish files of the
 * GPU host; the spec can come from the REST API.
 */
const RESERVED_WORK_FOLDERS = new Set(['logs', 'state', 'samples', 'cache', 'model', 'spec.json']);
const workFolder = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'must be one folder name (letters, digits, ".", "_", "-"), not a path')
  .refine((n) => !RESERVED_WORK_FOLDERS.has(n), { message: `must not be one of the worker's own folders (${[...RESERVED_WORK_FOLDERS].join(', ')})` });

const dataSchema = z
  .object({
    /** Folder of instance images with same-named `.txt` captions, relative to the work dir. */
    instanceDir: workFolder.default('dataset'),
    /**
     * `files`: each image's `.txt` caption (Booth's captions); `prompt`: the one instance prompt
     * for every image (classic DreamBooth).
     */
    captions: z.enum(['files', 'prompt']).default('files'),
    /** The instance prompt, e.g. `photo of ohwx man`; used for `prompt` captions and for missing `.txt` files. */
    instancePrompt: z.string().min(1).max(1000),
    /** Horizontal flip as augmentation. Off by default: faces are not symmetric and text flips. */
    randomFlip: z.boolean().default(false),
  })
  .strict();

const priorSchema = z
  .object({
    enabled: z.boolean(),
    /** Class prompt, e.g. `photo of a man`. */
    classPrompt: z.string().min(1).max(1000),
    /** How many class images to train with; missing ones are generated by the base model first. */
    classImages: positiveInt.max(10000).default(200),
    /** Weight of the prior-preservation loss term (Ruiz et al., 2023, eq. 2). */
    lossWeight: z.number().min(0).max(10).default(1),
    /** Folder of class images relative to the work dir. */
    classDir: workFolder.default('class'),
    /** Inference steps used to generate missing class images. */
    generationSteps: positiveInt.max(200).default(30),
  })
  .strict();

const stageSchema = z
  .object({
    steps: nonNegativeInt.max(1_000_000),
    learningRate,
  })
  .strict();

const scheduleSchema = z.discriminatedUnion('type', [
  z
    .object({
      /** Text encoder (UNet frozen) for `textEncoder.steps`, then UNet (text encoder frozen), as fast-DreamBooth does. */
      type: z.literal('two-stage'),
      textEncoder: stageSchema,
      unet: stageSchema,
    })
    .strict(),
  z
    .object({
      /**
       * The denoiser and the text encoder trained together (text encoder frozen when its learning
       * rate is 0). The denoiser's learning rate is `unetLearningRate` for the UNet families and
       * `transformerLearningRate` for FLUX.1 and SD 3.5; exactly one of the two is given.
       */
      type: z.literal('joint'),
      steps: positiveInt.max(1_000_000),
      unetLearningRate: learningRate.optional(),
      transformerLearningRate: learningRate.optional(),
      textEncoderLearningRate: z.number().min(0).max(1).default(0),
    })
    .strict(),
]);

const optimizerSchema = z
  .object({
    type: z.enum(['adamw', 'adamw8bit']),
    beta1: z.number().min(0).lt(1).default(0.9),
    beta2: z.number().min(0).lt(1).default(0.999),
    weightDecay: z.number().min(0).max(1).default(0.01),
    epsilon: z.number().positive().max(1).default(1e-8),
    /** Gradient-norm clipping; 0 disables it. */
    maxGradNorm: z.number().min(0).default(1),
  })
  .strict();

const lrSchedulerSchema = z
  .object({
    /** Per stage: each stage has its own schedule over its own steps. */
    type: z.enum(['constant', 'constant_with_warmup', 'linear', 'cosine']),
    warmupSteps: nonNegativeInt.default(0),
  })
  .strict();

const resumeSchema = z
  .object({
    /** Save a resume state every N optimizer steps (and always on SIGTERM/SIGUSR1 and at the end). */
    every: positiveInt.max(1_000_000).default(250),
    /** How many complete resume states to keep in the store (the newest ones). */
    keep: positiveInt.max(100).default(2),
  })
  .strict();

const samplesSchema = z
  .object({
    prompts: z.array(z.string().min(1).max(1000)).max(16).default([]),
    negativePrompt: z.string().max(1000).default(''),
    /** Render samples every N steps; 0 renders only at the end. */
    every: nonNegativeInt.default(0),
    steps: positiveInt.max(200).default(25),
    guidanceScale: z.number().min(0).max(50).default(7.5),
    seed: nonNegativeInt.default(1234),
  })
  .strict();

/**
 * Flow-matching settings of the transformer families (FLUX.1, SD 3.5). Noising is the rectified
 * flow `x_σ = (1 − σ)·x₀ + σ·ε` with the velocity target `ε − x₀` (Esser et al. 2024, "Scaling
 * Rectified Flow Transformers", sec. 2–3); σ is drawn by `timestepSampling` and then shifted.
 */
const flowSchema = z
  .object({
    /**
     * How σ is drawn: `logit_normal` (σ = sigmoid(N(logitMean, logitStd)); SD3 paper's best,
     * eq. 19), `mode` (mode sampling with heavy tails, eq. 20, `modeScale`), `uniform`.
     */
    timestepSampling: z.enum(['logit_normal', 'mode', 'uniform']).default('logit_normal'),
    logitMean: z.number().min(-10).max(10).default(0),
    logitStd: z.number().positive().max(10).default(1),
    modeScale: z.number().min(0).max(10).default(1.29),
    /**
     * Shift of σ towards noise: a number `s` maps σ to `s·σ / (1 + (s − 1)·σ)` (SD3 paper eq. 23;
     * SD 3.5 uses 3.0); `resolution` uses FLUX.1's shift from the image token count (μ between
     * 0.5 at 256 tokens and 1.15 at 4096, σ ↦ e^μ / (e^μ + 1/σ − 1)). Absent: `resolution` for
     * FLUX.1, 3.0 for SD 3.5.
     */
    shift: z.union([z.literal('resolution'), z.number().positive().max(100)]).optional(),
    /** Loss weight per sample: `none`, `sigma_sqrt` (σ⁻²) or `cosmap` (SD3 paper, sec. 3.1). */
    lossWeighting: z.enum(['none', 'sigma_sqrt', 'cosmap']).default('none'),
    /**
     * The guidance value fed to FLUX.1 [dev]'s guidance embedding while training (the distilled
     * model has no classifier-free guidance); ignored by models without one ([schnell], SD 3.5).
     */
    guidanceScale: z.number().min(0).max(100).default(1),
    /** T5 tokens per caption (T5's window is 512). Absent: 512 for FLUX.1 [dev], 256 otherwise. */
    maxSequenceLength: positiveInt.max(512).optional(),
  })
  .strict();

/**
 * Speed settings: none of them changes what a step computes beyond floating-point rounding
 * (tested), so they are left out of the resume fingerprint and may differ between attempts.
 */
const performanceSchema = z
  .object({
    /**
     * `torch.compile` of the denoiser: `auto` compiles on CUDA only when at least 20 000 steps are
     * left (on an H200 compiling the SD 1.5 UNet took 167 s for +27 % steps/s on top of the CUDA
     * graph, docs/benchmarks.md), `default` and `max-autotune-no-cudagraphs` are torch.compile
     * modes, `off` runs eagerly.
     */
    compile: z.enum(['auto', 'off', 'default', 'max-autotune-no-cudagraphs']).default('auto'),
    /**
     * Capture a whole optimizer step (forward, backward, clipping, optimizer) in one CUDA graph and
     * replay it: `auto` where the step has static shapes and graph-safe parts (one process, cached
     * latents, frozen text encoders, AdamW), `on` fails when that is not the case, `off` never.
     */
    cudaGraph: z.enum(['auto', 'on', 'off']).default('auto'),
    /** UNet activations and weights in channels-last layout on CUDA (faster convolutions). */
    channelsLast: z.boolean().default(true),
    /** TensorFloat-32 matmuls and convolutions for the float32 parts on CUDA. */
    tf32: z.boolean().default(true),
    /**
     * Optimizer steps the host may queue ahead of the GPU. The loss of a step is read when its
     * step has finished, so the host never waits for the GPU inside a step.
     */
    maxInFlightSteps: positiveInt.max(8).default(2),
  })
  .strict();

/** The job spec schema. See the module comment and `docs/training.md` for every field. */
export const jobSpecSchema = z
  .object({
    version: z.literal(SPEC_VERSION),
    session: z.string().min(1).max(64),
    run: z.string().min(1).max(64),
    base: baseSchema,
    mode: modeSchema,
    data: dataSchema,
    prior: priorSchema.optional(),
    /** Training resolution in pixels (square side); a multiple of 64. */
    resolution: positiveInt
      .min(256)
      .max(2048)
      .multipleOf(64),
    batchSize: positiveInt.max(64).default(1),
    gradientAccumulation: positiveInt.max(128).default(1),
    schedule: scheduleSchema,
    optimizer: optimizerSchema,
    lrScheduler: lrSchedulerSchema,
    mixedPrecision: z.enum(['no', 'fp16', 'bf16']).default('fp16'),
    gradientCheckpointing: z.boolean().default(false),
    /** Offset noise strength (Guttenberg, 2023); 0 disables it. Typical 0.05–0.1. */
    noiseOffset: z.number().min(0).max(1).default(0),
    /** Min-SNR loss weighting gamma (Hang et al., 2023); null disables it. Typical 5. */
    minSnrGamma: z.number().positive().max(100).nullable().default(null),
    seed: nonNegativeInt.max(2 ** 32 - 1).default(42),
    resumeState: resumeSchema.default({ every: 250, keep: 2 }),
    samples: samplesSchema.default({ prompts: [], negativePrompt: '', every: 0, steps: 25, guidanceScale: 7.5, seed: 1234 }),
    /** Encode every instance/class image with the VAE once, before training (no random flip then). */
    cacheLatents: z.boolean().default(true),
    /** Flow-matching settings (FLUX.1, SD 3.5 only). */
    flow: flowSchema.optional(),
    performance: performanceSchema.default({ compile: 'auto', cudaGraph: 'auto', channelsLast: true, tf32: true, maxInFlightSteps: 2 }),
  })
  .strict();

/** A validated job spec with every default filled in. */
export type JobSpec = z.output<typeof jobSpecSchema>;
/** What a caller may write: defaults may be left out. */
export type JobSpecInput = z.input<typeof jobSpecSchema>;

/** One training stage in execution order, as the trainer and the progress display count them. */
export interface StagePlan {
  /** `text_encoder`, `unet` (two-stage) or `joint`. */
  name: 'text_encoder' | 'unet' | 'joint';
  /** Optimizer steps in this stage. */
  steps: number;
  /** Global step at which the stage starts (0-based: steps before it). */
  start: number;
}

/**
 * The stages of a spec in order with their global offsets; stages with 0 steps are left out.
 * The global step of the run is the sum over stages, which is what `total` means in progress events.
 * @example stagesOf(spec) // [{name:'text_encoder',steps:350,start:0},{name:'unet',steps:1500,start:350}]
 */
export function stagesOf(spec: Pick<JobSpec, 'schedule'>): StagePlan[] {
  const s = spec.schedule;
  if (s.type === 'joint') return [{ name: 'joint', steps: s.steps, start: 0 }];
  const out: StagePlan[] = [];
  let start = 0;
  for (const [name, stage] of [
    ['text_encoder', s.textEncoder],
    ['unet', s.unet],
  ] as const) {
    if (stage.steps > 0) out.push({ name, steps: stage.steps, start });
    start += stage.steps;
  }
  return out;
}

/** Total optimizer steps of a spec (all stages). */
export function totalSteps(spec: Pick<JobSpec, 'schedule'>): number {
  return stagesOf(spec).reduce((n, s) => n + s.steps, 0);
}

/** A piece of a message, at most 200 characters. */
function clip(text: string): string {
  return text.length > 200 ? `${text.slice(0, 199)}…` : text;
}

/**
 * Deepest nesting a spec may have. The schema itself is three levels deep; the margin covers
 * unknown fields, which are refused by name anyway.
 */
export const MAX_SPEC_DEPTH = 32;

/**
 * Refuse a parsed spec nested deeper than {@link MAX_SPEC_DEPTH}, before anything walks it
 * recursively: copying a 100 000-level JSON document for a `--set` override, or printing it,
 * overflows the stack, which would surface as an internal error instead of a message. Walks
 * iteratively, so the check itself cannot overflow.
 * @param value - parsed JSON
 * @param source - where it came from, named in the error
 * @throws BoothError `INVALID_ARGUMENT` naming the field where the limit was crossed
 */
export function assertSpecDepth(value: unknown, source = 'job spec'): void {
  const stack: Array<{ v: unknown; depth: number; at: string }> = [{ v: value, depth: 0, at: '' }];
  for (let item = stack.pop(); item !== undefined; item = stack.pop()) {
    const { v, depth, at } = item;
    if (v === null || typeof v !== 'object') continue;
    if (depth >= MAX_SPEC_DEPTH) {
      throw new BoothError('INVALID_ARGUMENT', `${source} is invalid: ${at} is nested more than ${MAX_SPEC_DEPTH} levels deep; a job spec is a few levels deep (see docs/training.md)`);
    }
    for (const [k, child] of Object.entries(v)) stack.push({ v: child, depth: depth + 1, at: at ? `${at}.${k}` : k });
  }
}

/**
 * The rules that tie a spec's fields to its architecture family, which the schema alone cannot
 * say (the trainer's `semantic_problems` applies the same rules):
 * - the joint schedule names the denoiser's learning rate as `unetLearningRate` (UNet families)
 *   or `transformerLearningRate` (FLUX.1, SD 3.5), exactly one of them;
 * - FLUX.1 and SD 3.5 train the transformer only (text encoders frozen, their embeddings computed
 *   once), so they take the joint schedule with a text-encoder learning rate of 0;
 * - `flow` settings belong to FLUX.1 and SD 3.5;
 * - FLUX.1 is trained as a LoRA.
 * @returns the first problem, naming the field, or null
 */
export function familyProblem(spec: JobSpec): string | null {
  const arch = spec.base.architecture;
  const flow = isFlowArchitecture(arch);
  const s = spec.schedule;
  if (s.type === 'joint') {
    const want = flow ? 'transformerLearningRate' : 'unetLearningRate';
    const other = flow ? 'unetLearningRate' : 'transformerLearningRate';
    if (s[other] !== undefined) return `schedule.${other}: a ${arch} model's denoiser is ${flow ? 'a transformer' : 'a UNet'}; name its learning rate schedule.${want}`;
    if (s[want] === undefined) return `schedule.${want}: required (the learning rate of the ${flow ? 'transformer' : 'UNet'})`;
  }
  if (flow) {
    if (arch === 'flux' && spec.mode.type !== 'lora') {
      return 'mode.type: FLUX.1 is trained as a LoRA (a full fine-tune of its 12-billion-parameter transformer needs about 190 GB for weights and AdamW alone); set mode.type to lora';
    }
    if (s.type !== 'joint') return `schedule.type: ${arch} runs train the transformer only; use the joint schedule with transformerLearningRate`;
    if (s.textEncoderLearningRate > 0) return `schedule.textEncoderLearningRate: ${arch} runs keep the text encoders frozen (their embeddings are computed once and T5 is freed); set it to 0`;
    if (spec.base.predictionType !== undefined) return `base.predictionType: ${arch} transformers predict the flow velocity; leave predictionType out`;
  } else if (spec.flow !== undefined) {
    return `flow: flow-matching settings apply to FLUX.1 and SD 3.5 only, not to ${arch}`;
  }
  return null;
}

/**
 * Parses and validates a spec, filling defaults.
 * @param value parsed JSON (from a file, the API or the store)
 * @param source where it came from, named in the error
 * @throws BoothError `INVALID_ARGUMENT` naming every bad field (`schedule.unet.steps: …`), or
 *   when the spec trains nothing (0 total steps)
 */
export function parseJobSpec(value: unknown, source = 'job spec'): JobSpec {
  assertSpecDepth(value, source);
  const r = jobSpecSchema.safeParse(value);
  if (!r.success) {
    // Capped: an unknown key or a bad value can be megabytes long, and the message is printed and sent back.
    const problems = r.error.issues.slice(0, 10).map((i) => `${clip(i.path.join('.') || '(root)')}: ${clip(i.message)}`).join('; ') + (r.error.issues.length > 10 ? `; and ${r.error.issues.length - 10} more` : '');
    throw new BoothError('INVALID_ARGUMENT', `${source} is invalid: ${problems}`);
  }
  if (totalSteps(r.data) === 0) throw new BoothError('INVALID_ARGUMENT', `${source} is invalid: schedule: every stage has 0 steps; give the UNet stage some steps`);
  if (r.data.prior && r.data.prior.classDir === r.data.data.instanceDir) {
    throw new BoothError('INVALID_ARGUMENT', `${source} is invalid: prior.classDir and data.instanceDir are both "${r.data.data.instanceDir}"; the class images would replace the dataset, so give them different folders`);
  }
  const { mode, schedule } = r.data;
  const problem = familyProblem(r.data);
  if (problem) throw new BoothError('INVALID_ARGUMENT', `${source} is invalid: ${problem}`);
  if (mode.type === 'lora' && !mode.textEncoder && schedule.type === 'two-stage' && schedule.textEncoder.steps > 0) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `${source} is invalid: schedule.textEncoder.steps is ${schedule.textEncoder.steps} but mode.textEncoder is false, so that LoRA stage would train nothing; set mode.textEncoder to true or the text-encoder steps to 0`,
    );
  }
  return r.data;
}

/** Names of the built-in presets. */
export const PRESETS = ['face-sd15', 'object-sd15', 'face-lora-sd15', 'face-lora-sdxl', 'face-lora-flux', 'object-lora-flux', 'face-sd35-medium', 'face-lora-sd35'] as const;
/** One of {@link PRESETS}. */
export type PresetName = (typeof PRESETS)[number];

/** What a preset needs from the session. */
export interface PresetInput {
  session: string;
  run: string;
  trigger: string;
  classNoun: string;
  /** Base model short name of the session; decides architecture and resolution. */
  base: BaseModel;
  /** Local Diffusers folder or Hugging Face id; default from {@link DEFAULT_BASE_MODEL_IDS}. */
  baseModel?: string;
  /** Training resolution; default the base model's native one. */
  resolution?: number;
}

/** Presets with one line each for `--help` and the docs (sources in docs/training.md). */
export const PRESET_INFO: Readonly<Record<PresetName, string>> = {
  'face-sd15': 'a person on SD 1.5: fast-DreamBooth two-stage (text encoder 350 steps at 1e-6, UNet 1500 at 2e-6), 8-bit AdamW, fp16, batch 1',
  'object-sd15': 'an object or pet on SD 1.5: UNet-only 1200 steps at 2e-6 with prior preservation (200 class images), 8-bit AdamW, fp16',
  'face-lora-sd15': 'a person as an SD 1.5 LoRA: rank 16, UNet 1500 steps at 1e-4, AdamW, fp16, batch 1',
  'face-lora-sdxl': 'a person as an SDXL LoRA at 1024 px: rank 16, UNet 1500 steps at 1e-4, AdamW, bf16, gradient checkpointing',
  'face-lora-flux': 'a person as a FLUX.1 LoRA: rank 16 on attention and MLP layers, transformer 1500 steps at 1e-4, AdamW, bf16, guidance 1, logit-normal timesteps',
  'object-lora-flux': 'an object or pet as a FLUX.1 LoRA: as face-lora-flux with 1000 steps',
  'face-sd35-medium': 'a person on SD 3.5 Medium, full fine-tune: transformer 500 steps at 1e-4, batch 1 x 4 accumulated, 8-bit AdamW, bf16',
  'face-lora-sd35': 'a person as an SD 3.5 Medium/Large LoRA: rank 16 on attention and MLP layers, 1500 steps at 1e-4, AdamW, bf16',
};

/** The base models each preset is made for. */
export const PRESET_BASES: Readonly<Record<PresetName, readonly BaseModel[]>> = {
  'face-sd15': ['sd15', 'sd21'],
  'object-sd15': ['sd15', 'sd21'],
  'face-lora-sd15': ['sd15', 'sd21'],
  'face-lora-sdxl': ['sdxl'],
  'face-lora-flux': ['flux-dev', 'flux-schnell'],
  'object-lora-flux': ['flux-dev', 'flux-schnell'],
  'face-sd35-medium': ['sd35-medium'],
  'face-lora-sd35': ['sd35-medium', 'sd35-large'],
};

/**
 * The preset a session trains with when none is named: by base model, then by subject kind.
 * @example defaultPreset('flux-dev', 'object') // 'object-lora-flux'
 */
export function defaultPreset(base: BaseModel, kind: 'person' | 'object' | 'style'): PresetName {
  switch (BASE_MODEL_INFO[base].architecture) {
    case 'sdxl':
      return 'face-lora-sdxl';
    case 'flux':
      return kind === 'person' ? 'face-lora-flux' : 'object-lora-flux';
    case 'sd3':
      return 'face-lora-sd35';
    default:
      return kind === 'person' ? 'face-sd15' : 'object-sd15';
  }
}

/**
 * Builds the spec of a preset for a session. Sources of every default are in docs/training.md.
 * @throws BoothError `INVALID_ARGUMENT` when the preset does not fit the session's base model
 *   (e.g. `face-lora-sdxl` on an SD 1.5 session), naming the presets that do
 * @example presetSpec('face-sd15', { session: 'alice', run: 'r1', trigger: 'ohwx', classNoun: 'woman', base: 'sd15' })
 */
export function presetSpec(name: PresetName, input: PresetInput): JobSpec {
  const info = BASE_MODEL_INFO[input.base];
  if (!PRESET_BASES[name].includes(input.base)) {
    const fits = PRESETS.filter((p) => PRESET_BASES[p].includes(input.base));
    throw new BoothError('INVALID_ARGUMENT', `preset "${name}" is for ${PRESET_BASES[name].map((b) => BASE_MODEL_INFO[b].label).join(' / ')} sessions but "${input.session}" targets ${info.label}; pick ${fits.join(' or ')}`);
  }
  const prompt = `photo of ${input.trigger} ${input.classNoun}`;
  const common = {
    version: SPEC_VERSION,
    session: input.session,
    run: input.run,
    base: { model: input.baseModel ?? DEFAULT_BASE_MODEL_IDS[input.base], architecture: info.architecture },
    data: { instanceDir: 'dataset', captions: 'files', instancePrompt: prompt, randomFlip: false },
    resolution: input.resolution ?? info.resolution,
    batchSize: 1,
    gradientAccumulation: 1,
    lrScheduler: { type: 'linear', warmupSteps: 0 },
    resumeState: { every: 250, keep: 2 },
    samples: { prompts: [prompt], every: 500 },
    cacheLatents: true,
  } satisfies Partial<JobSpecInput>;
  const schnell = input.base === 'flux-schnell';
  // FLUX.1 and SD 3.5: the sampling defaults of their reference pipelines (FluxPipeline: 28 steps,
  // embedded guidance 3.5; [schnell]: 4 steps, no guidance; StableDiffusion3Pipeline: 28, CFG 7).
  const flowSamples = info.architecture === 'flux'
    ? { prompts: [prompt], every: 250, steps: schnell ? 4 : 28, guidanceScale: schnell ? 0 : 3.5 }
    : { prompts: [prompt], every: 250, steps: 28, guidanceScale: 7 };
  const fluxLora = (steps: number): JobSpecInput => ({
    ...common,
    mode: { type: 'lora', rank: 16, alpha: 16, targets: 'attention-mlp' },
    schedule: { type: 'joint', steps, transformerLearningRate: 1e-4, textEncoderLearningRate: 0 },
    optimizer: { type: 'adamw', weightDecay: 1e-2 },
    mixedPrecision: 'bf16',
    gradientCheckpointing: true,
    lrScheduler: { type: 'constant', warmupSteps: 0 },
    samples: flowSamples,
    flow: { timestepSampling: 'logit_normal', guidanceScale: 1, ...(schnell ? { maxSequenceLength: 256 } : {}) },
  });
  let spec: JobSpecInput;
  switch (name) {
    case 'face-sd15':
      spec = {
        ...common,
        mode: { type: 'full' },
        schedule: { type: 'two-stage', textEncoder: { steps: 350, learningRate: 1e-6 }, unet: { steps: 1500, learningRate: 2e-6 } },
        optimizer: { type: 'adamw8bit' },
        mixedPrecision: 'fp16',
      };
      break;
    case 'object-sd15':
      spec = {
        ...common,
        mode: { type: 'full' },
        prior: { enabled: true, classPrompt: `photo of a ${input.classNoun}`, classImages: 200, lossWeight: 1 },
        schedule: { type: 'two-stage', textEncoder: { steps: 0, learningRate: 1e-6 }, unet: { steps: 1200, learningRate: 2e-6 } },
        optimizer: { type: 'adamw8bit' },
        mixedPrecision: 'fp16',
      };
      break;
    case 'face-lora-sd15':
      spec = {
        ...common,
        mode: { type: 'lora', rank: 16, alpha: 16 },
        schedule: { type: 'joint', steps: 1500, unetLearningRate: 1e-4, textEncoderLearningRate: 0 },
        optimizer: { type: 'adamw', weightDecay: 1e-2 },
        mixedPrecision: 'fp16',
        lrScheduler: { type: 'constant', warmupSteps: 0 },
        samples: { prompts: [prompt], every: 250 },
      };
      break;
    case 'face-lora-sdxl':
      spec = {
        ...common,
        mode: { type: 'lora', rank: 16, alpha: 16 },
        schedule: { type: 'joint', steps: 1500, unetLearningRate: 1e-4, textEncoderLearningRate: 0 },
        optimizer: { type: 'adamw', weightDecay: 1e-2 },
        // fp16 overflows in the stock SDXL VAE; bf16 is the safe default on Ampere and newer.
        mixedPrecision: 'bf16',
        gradientCheckpointing: true,
        lrScheduler: { type: 'constant', warmupSteps: 0 },
      };
      break;
    case 'face-lora-flux':
      spec = fluxLora(1500);
      break;
    case 'object-lora-flux':
      spec = fluxLora(1000);
      break;
    case 'face-sd35-medium':
      spec = {
        ...common,
        mode: { type: 'full' },
        gradientAccumulation: 4,
        schedule: { type: 'joint', steps: 500, transformerLearningRate: 1e-4, textEncoderLearningRate: 0 },
        optimizer: { type: 'adamw8bit' },
        mixedPrecision: 'bf16',
        gradientCheckpointing: true,
        lrScheduler: { type: 'constant', warmupSteps: 0 },
        samples: { ...flowSamples, every: 100 },
        flow: { timestepSampling: 'logit_normal' },
      };
      break;
    case 'face-lora-sd35':
      spec = {
        ...common,
        mode: { type: 'lora', rank: 16, alpha: 16, targets: 'attention-mlp' },
        schedule: { type: 'joint', steps: 1500, transformerLearningRate: 1e-4, textEncoderLearningRate: 0 },
        optimizer: { type: 'adamw', weightDecay: 1e-2 },
        mixedPrecision: 'bf16',
        gradientCheckpointing: true,
        lrScheduler: { type: 'constant', warmupSteps: 0 },
        samples: flowSamples,
        flow: { timestepSampling: 'logit_normal' },
      };
      break;
  }
  return parseJobSpec(spec, `preset ${name}`);
}

/**
 * Returns a copy of `spec` with its last stage extended so the total becomes `newTotal` steps,
 * the way `booth extend` raises a finished run's step count. The LR schedule of that stage is then
 * evaluated over its new length (a linear decay resumes from the value it has at the current step
 * of the longer schedule), which is documented in `docs/training.md`.
 * @throws BoothError `INVALID_ARGUMENT` when `newTotal` is not larger than the current total
 */
export function extendSpec(spec: JobSpec, newTotal: number): JobSpec {
  const current = totalSteps(spec);
  if (!Number.isInteger(newTotal) || newTotal <= current) {
    throw new BoothError('INVALID_ARGUMENT', `--steps must be an integer above the run's current total of ${current} steps (got ${newTotal})`);
  }
  const add = newTotal - current;
  const s = spec.schedule;
  const schedule: JobSpec['schedule'] =
    s.type === 'joint' ? { ...s, steps: s.steps + add } : { ...s, unet: { ...s.unet, steps: s.unet.steps + add } };
  return parseJobSpec({ ...spec, schedule }, 'extended spec');
}

/**
 * JSON Schema (draft 2020-12) of the spec as the trainer validates it. Generated from
 * {@link jobSpecSchema}; written to `trainer/booth_trainer/spec.schema.json` by `npm run gen:schema`.
 */
export function jobSpecJsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(jobSpecSchema, { io: 'input', target: 'draft-2020-12' }) as Record<string, unknown>;
}
