/**
 * What a run needs from the GPU host, and the check the worker makes before it spends any GPU
 * time: a CUDA GPU must be visible, the trainer's packages must import, and the free VRAM must
 * cover an estimate of the run's peak.
 *
 * The estimate is arithmetic on parameter counts, not a measurement: trained weights in fp32
 * (4 bytes/param) + their gradients (4) + AdamW moments (8, or 2 with 8-bit AdamW), frozen modules
 * in half precision (2), plus activations per sample at the native resolution, scaled by batch
 * size and by (resolution / native)², and cut to 40% by gradient checkpointing. Parameter counts
 * are those of the released checkpoints (SD 1.5 UNet 859.5 M, SD 2.1 UNet 865.9 M, SDXL UNet
 * 2567.5 M; CLIP ViT-L text encoder 123.1 M, OpenCLIP ViT-H 340.4 M, OpenCLIP ViT-bigG 694.7 M;
 * VAE 83.7 M; FLUX.1 transformer 11 901.4 M, T5-XXL encoder 4 762.3 M, FLUX VAE 83.8 M; SD 3.5
 * Medium transformer 2 243.3 M, SD 3.5 Large transformer 8 056.3 M). The activation figures are
 * rough (SDPA attention, mixed precision) and will be replaced by the GPU benchmark's
 * measurements (docs/benchmarks.md) when a GPU run records them.
 *
 * FLUX.1 and SD 3.5 runs load their text encoders (T5-XXL is 9 GiB in bf16), compute the
 * embeddings of every caption once and free them before the first step, so their peak is the
 * larger of the load phase (every part in half precision) and the training phase (the
 * transformer, its trained weights and activations).
 */
import type { CheckReport } from './protocol.js';
import type { JobSpec } from './spec.js';
import { BoothError } from '../errors.js';

const ARCH_LABEL = { sd1: 'SD 1.x', sd2: 'SD 2.x', sdxl: 'SDXL', flux: 'FLUX.1', sd3: 'SD 3.5' } as const;

const GIB = 2 ** 30;
const M = 1e6;

const PARAMS = {
  sd1: { unet: 859.5 * M, textEncoders: 123.1 * M, native: 512, activationGb: 3 },
  sd2: { unet: 865.9 * M, textEncoders: 340.4 * M, native: 768, activationGb: 6 },
  sdxl: { unet: 2567.5 * M, textEncoders: (123.1 + 694.7) * M, native: 1024, activationGb: 12 },
  flux: { unet: 11901.4 * M, textEncoders: (123.1 + 4762.3) * M, native: 1024, activationGb: 24 },
  // SD 3.5 Medium; Large is told apart by its transformer size below.
  sd3: { unet: 2243.3 * M, textEncoders: (123.1 + 694.7 + 4762.3) * M, native: 1024, activationGb: 10 },
} as const;
/** SD 3.5 Large's transformer, for specs whose base model names it (`…large…`). */
const SD35_LARGE_PARAMS = 8056.3 * M;
const VAE_PARAMS = 83.7 * M;
/** CUDA context, allocator fragmentation and cuDNN workspaces. */
const OVERHEAD_GB = 1.5;

/** An estimate of peak VRAM with the terms that make it up (GiB). */
export interface VramEstimate {
  gb: number;
  terms: Record<string, number>;
}

/**
 * Estimated peak VRAM of a run in GiB (see the module comment for the formula).
 * @example estimateVramGb(presetSpec('face-sd15', …)).gb // ≈ 12
 */
export function estimateVramGb(spec: JobSpec): VramEstimate {
  const arch = spec.base.architecture;
  const p0 = PARAMS[arch];
  const p = arch === 'sd3' && /large/i.test(spec.base.model) ? { ...p0, unet: SD35_LARGE_PARAMS, activationGb: 18 } : p0;
  const flow = arch === 'flux' || arch === 'sd3';
  const trainedBytesPerParam = 4 + 4 + (spec.optimizer.type === 'adamw8bit' ? 2 : 8);
  const trainsTextEncoder =
    spec.schedule.type === 'two-stage' ? spec.schedule.textEncoder.steps > 0 : spec.schedule.textEncoderLearningRate > 0;
  let trained = 0;
  let frozen = VAE_PARAMS;
  let lora = 0;
  if (spec.mode.type === 'full') {
    // Two-stage trains one module at a time, but keeps both optimizers' states; count the larger set.
    trained = p.unet + (trainsTextEncoder ? p.textEncoders : 0);
    frozen += trainsTextEncoder ? 0 : p.textEncoders;
  } else {
    frozen += p.unet + p.textEncoders;
    // Rank-r adapters on the attention projections: under 1% of the UNet at the ranks people use.
    lora = p.unet * Math.min(0.05, spec.mode.rank / 1600);
  }
  const scale = (spec.resolution / p.native) ** 2 * spec.batchSize * (spec.prior?.enabled ? 2 : 1);
  const activations = p.activationGb * scale * (spec.gradientCheckpointing ? 0.4 : 1);
  const halfBytes = spec.mixedPrecision === 'no' ? 4 : 2;
  if (flow) {
    // The text encoders are gone before the first step; the load phase holds every part at once.
    frozen -= p.textEncoders;
    const loadPhase = ((p.unet + p.textEncoders + VAE_PARAMS) * halfBytes) / GIB;
    const trainPhase = (trained * trainedBytesPerParam + lora * trainedBytesPerParam + frozen * halfBytes) / GIB + activations;
    if (loadPhase > trainPhase) {
      const terms = { load: loadPhase, overhead: OVERHEAD_GB };
      return { gb: Math.round((loadPhase + OVERHEAD_GB) * 10) / 10, terms };
    }
  }
  const terms = {
    trained: (trained * trainedBytesPerParam) / GIB,
    lora: (lora * trainedBytesPerParam) / GIB,
    frozen: (frozen * halfBytes) / GIB,
    activations,
    overhead: OVERHEAD_GB,
  };
  const gb = Object.values(terms).reduce((a, b) => a + b, 0);
  return { gb: Math.round(gb * 10) / 10, terms };
}

/**
 * Bytes of one resume state of a run: the trained weights in float32 plus the optimizer's moments
 * (AdamW 8 bytes per parameter, 8-bit AdamW 2) for a full fine-tune; the adapters and their
 * moments for a LoRA (the same count as in {@link estimateVramGb}). Measured against a real
 * state: a full SD 1.5 UNet stage state was 9.61 GiB (estimate 9.6 GiB; docs/benchmarks.md).
 */
export function resumeStateBytes(spec: JobSpec): number {
  const arch = spec.base.architecture;
  const p = arch === 'sd3' && /large/i.test(spec.base.model) ? SD35_LARGE_PARAMS : PARAMS[arch].unet;
  const perParam = 4 + (spec.optimizer.type === 'adamw8bit' ? 2 : 8);
  const trainsTe = spec.schedule.type === 'two-stage' ? spec.schedule.textEncoder.steps > 0 : spec.schedule.textEncoderLearningRate > 0;
  if (spec.mode.type === 'full') return (p + (trainsTe ? PARAMS[arch].textEncoders : 0)) * perParam;
  return p * Math.min(0.05, spec.mode.rank / 1600) * perParam;
}

/** Write and upload rate assumed for the worst case: a network disk or a busy shared store. */
const WORST_BYTES_PER_S = 200e6;

/**
 * Seconds of warning a run needs before its job is killed (Slurm's `--signal=B:USR1@N`): the
 * worst-case time to write a resume state at {@link WORST_BYTES_PER_S} plus 30 s to finish the
 * step, the same again to upload it to the store, and 60 s for the final status and exit;
 * rounded up to 30 s, at least 120 s. Booth's trainer writes a 9.6 GiB state in 8.7 s on an H200
 * host (1.1 GB/s, docs/benchmarks.md), so this is a bound for slow disks, not the usual case.
 * @example signalGraceSeconds(presetSpec('object-sd15', …)) // 150 (SD 1.5 UNet, 8-bit AdamW: 5.2 GB)
 */
export function signalGraceSeconds(spec: JobSpec): number {
  const transfer = resumeStateBytes(spec) / WORST_BYTES_PER_S;
  const s = transfer + 30 + transfer + 60;
  return Math.max(120, Math.ceil(s / 30) * 30);
}

/**
 * Checks a host's `check` report against a spec.
 * @returns the estimate the decision was based on
 * @throws BoothError `ENVIRONMENT` naming what is missing and what to do: no CUDA GPU, trainer
 *   packages missing, too little free VRAM (with the estimate and the settings that lower it),
 *   bf16 on a GPU without it, 8-bit AdamW without bitsandbytes
 */
export function assertHostFits(spec: JobSpec, report: CheckReport): VramEstimate {
  if (report.problems.length > 0) {
    throw new BoothError('ENVIRONMENT', `the GPU host cannot run the trainer: ${report.problems.join('; ')}. Set it up with scripts/setup-gpu-host.sh (see README, "GPU host")`);
  }
  if (report.gpus.length === 0) {
    throw new BoothError(
      'ENVIRONMENT',
      `no CUDA GPU is visible to the trainer (torch ${report.torch ?? 'missing'}, CUDA ${report.cuda ?? 'none'}). ` +
        'Run the worker on a machine with an NVIDIA GPU and a CUDA build of torch, check CUDA_VISIBLE_DEVICES, or launch on a cluster with --launcher slurm',
    );
  }
  const need = estimateVramGb(spec);
  const best = report.gpus.reduce((a, b) => (b.free_gb > a.free_gb ? b : a));
  if (best.free_gb < need.gb) {
    const hints = [
      spec.optimizer.type === 'adamw' ? 'optimizer.type adamw8bit' : null,
      spec.gradientCheckpointing ? null : 'gradientCheckpointing true',
      spec.mode.type === 'full' ? 'a LoRA (mode.type lora)' : null,
      spec.batchSize > 1 ? 'a smaller batchSize with gradientAccumulation' : null,
    ].filter((h): h is string => h !== null);
    throw new BoothError(
      'ENVIRONMENT',
      `this run needs about ${need.gb} GiB of GPU memory (estimate for ${ARCH_LABEL[spec.base.architecture]}, ` +
        `${spec.mode.type}, ${spec.resolution} px, batch ${spec.batchSize}) but GPU ${best.index} (${best.name}) has ${best.free_gb.toFixed(1)} GiB free. ` +
        `Free the GPU${hints.length ? ` or lower the need with ${hints.join(', ')}` : ''}; --no-check skips this check`,
    );
  }
  if (spec.mixedPrecision === 'bf16' && report.bf16 === false) {
    throw new BoothError('ENVIRONMENT', `GPU ${best.index} (${best.name}) has no bf16 support; set mixedPrecision to fp16 (--set mixedPrecision=fp16)`);
  }
  if (spec.optimizer.type === 'adamw8bit' && !report.bitsandbytes) {
    throw new BoothError('ENVIRONMENT', 'optimizer adamw8bit needs bitsandbytes, which is not installed on the GPU host: run scripts/setup-gpu-host.sh (it installs the [8bit] extra) or use optimizer.type adamw');
  }
  return need;
}
