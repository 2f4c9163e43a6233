/**
 * What an exported file says about itself: the Stability AI model spec keys (`modelspec.*`,
 * github.com/Stability-AI/ModelSpec, version 1.0.0) that UIs and loaders read to pick a code path,
 * Booth's own training facts (`booth.*`), and, for SD 2.x v-prediction checkpoints, the `.yaml`
 * sidecar that AUTOMATIC1111 (and Forge, InvokeAI) read next to a checkpoint to choose the
 * v-parameterisation instead of guessing from test inference. The sidecar's values are those of
 * the published `v2-inference-v.yaml` of Stability-AI/stablediffusion. Also the two hashes model
 * sites show: SHA-256 of the whole file and its AutoV2 short form (the first 10 hex digits).
 */

/** Architecture families the converter knows. */
export type Architecture = 'sd1' | 'sd2' | 'sdxl' | 'flux' | 'sd3';

/** Diffusers' names for the prediction targets; `flow` is the velocity of FLUX.1 and SD 3.5. */
export type PredictionType = 'epsilon' | 'v_prediction' | 'flow';

/** Facts that decide the metadata of an export. */
export interface ModelFacts {
  architecture: Architecture;
  predictionType: PredictionType;
  /** Native square resolution in pixels. */
  resolution: number;
  /** Title shown by UIs. */
  title: string;
  /** The trigger phrase (e.g. `ohwx man`), if the model was trained on one. */
  triggerPhrase?: string;
  /** True for a LoRA (adapter) file. */
  lora?: boolean;
  /** The release within a family: FLUX.1 `dev`/`schnell`, SD 3.5 `medium`/`large`. */
  release?: 'dev' | 'schnell' | 'medium' | 'large';
  /** The tensor names of a LoRA: kohya's (`lora_unet_…`, the default) or Diffusers' (`transformer.…`). */
  loraLayout?: 'kohya' | 'diffusers';
  /** Creation time; default now. */
  date?: Date;
}

/**
 * The model spec architecture id, e.g. `stable-diffusion-v1`, `stable-diffusion-v2-768-v`,
 * `stable-diffusion-xl-v1-base`, `flux-1-dev`, `stable-diffusion-3-5-large`, and for adapters the
 * spec's `/lora` suffix (the ids and the suffix as kohya's sd-scripts write them,
 * `library/sai_model_spec.py`: `ARCH_FLUX_1_DEV = "flux-1-dev"`, `ARCH_SD3_M = "stable-diffusion-3"`
 * followed by the release, `arch += "/lora"`).
 *
 * @example architectureId({ architecture: 'sd2', predictionType: 'v_prediction', resolution: 768, title: 'x' }) // 'stable-diffusion-v2-768-v'
 */
export function architectureId(f: Pick<ModelFacts, 'architecture' | 'predictionType' | 'lora' | 'release'>): string {
  let base: string;
  switch (f.architecture) {
    case 'sd1':
      base = 'stable-diffusion-v1';
      break;
    case 'sdxl':
      base = 'stable-diffusion-xl-v1-base';
      break;
    case 'flux':
      base = `flux-1-${f.release === 'schnell' ? 'schnell' : 'dev'}`;
      break;
    case 'sd3':
      base = `stable-diffusion-3-5-${f.release === 'large' ? 'large' : 'medium'}`;
      break;
    default:
      base = f.predictionType === 'v_prediction' ? 'stable-diffusion-v2-768-v' : 'stable-diffusion-v2-512';
  }
  return f.lora ? `${base}/lora` : base;
}

/** The implementation string: the code base whose variable names the tensor keys match. */
function implementation(f: ModelFacts): string {
  if (f.lora) return f.loraLayout === 'diffusers' ? 'diffusers' : 'https://github.com/kohya-ss/sd-scripts';
  if (f.architecture === 'flux') return 'https://github.com/black-forest-labs/flux';
  if (f.architecture === 'sdxl' || f.architecture === 'sd3') return 'https://github.com/Stability-AI/generative-models';
  if (f.architecture === 'sd2') return 'https://github.com/Stability-AI/stablediffusion';
  return 'https://github.com/CompVis/stable-diffusion';
}

/**
 * The `modelspec.*` keys for an export, plus `ss_v_parameterization` for v-prediction (the
 * kohya convention many loaders also check).
 *
 * @param f - the model facts
 * @returns metadata entries (strings)
 * @example modelspecMetadata({ architecture: 'sd1', predictionType: 'epsilon', resolution: 512, title: 'alice' })['modelspec.architecture'] // 'stable-diffusion-v1'
 */
export function modelspecMetadata(f: ModelFacts): Record<string, string> {
  const m: Record<string, string> = {
    'modelspec.sai_model_spec': '1.0.0',
    'modelspec.architecture': architectureId(f),
    'modelspec.implementation': implementation(f),
    'modelspec.title': f.title,
    'modelspec.resolution': `${f.resolution}x${f.resolution}`,
    'modelspec.date': (f.date ?? new Date()).toISOString().replace(/\.\d{3}Z$/, 'Z'),
  };
  // The spec names epsilon and v; flow-matching models carry none (their loaders know the family).
  if (f.predictionType !== 'flow') m['modelspec.prediction_type'] = f.predictionType === 'v_prediction' ? 'v' : 'epsilon';
  if (f.triggerPhrase) {
    m['modelspec.trigger_phrase'] = f.triggerPhrase;
    m['modelspec.usage_hint'] = `Trigger phrase: ${f.triggerPhrase}`;
  }
  if (f.predictionType === 'v_prediction') m.ss_v_parameterization = 'True';
  return m;
}

/** True when the export needs the `.yaml` sidecar (SD 2.x with v-prediction). */
export function needsV2Yaml(f: Pick<ModelFacts, 'architecture' | 'predictionType' | 'lora'>): boolean {
  return !f.lora && f.architecture === 'sd2' && f.predictionType === 'v_prediction';
}

/**
 * The LDM config AUTOMATIC1111 reads from `<name>.yaml` beside an SD 2.x v-prediction checkpoint
 * (the values of `v2-inference-v.yaml`: `parameterization: "v"`, OpenCLIP penultimate layer).
 *
 * @returns YAML text
 */
export function v2VPredictionYaml(): string {
  return [
    '# Written by Booth: Stable Diffusion 2.x with v-prediction (values of v2-inference-v.yaml).',
    'model:',
    '  base_learning_rate: 1.0e-4',
    '  target: ldm.models.diffusion.ddpm.LatentDiffusion',
    '  params:',
    '    parameterization: "v"',
    '    linear_start: 0.00085',
    '    linear_end: 0.0120',
    '    num_timesteps_cond: 1',
    '    log_every_t: 200',
    '    timesteps: 1000',
    '    first_stage_key: "jpg"',
    '    cond_stage_key: "txt"',
    '    image_size: 64',
    '    channels: 4',
    '    cond_stage_trainable: false',
    '    conditioning_key: crossattn',
    '    monitor: val/loss_simple_ema',
    '    scale_factor: 0.18215',
    '    use_ema: false',
    '    unet_config:',
    '      target: ldm.modules.diffusionmodules.openaimodel.UNetModel',
    '      params:',
    '        use_checkpoint: true',
    '        use_fp16: true',
    '        image_size: 32',
    '        in_channels: 4',
    '        out_channels: 4',
    '        model_channels: 320',
    '        attention_resolutions: [4, 2, 1]',
    '        num_res_blocks: 2',
    '        channel_mult: [1, 2, 4, 4]',
    '        num_head_channels: 64',
    '        use_spatial_transformer: true',
    '        use_linear_in_transformer: true',
    '        transformer_depth: 1',
    '        context_dim: 1024',
    '        legacy: false',
    '    first_stage_config:',
    '      target: ldm.models.autoencoder.AutoencoderKL',
    '      params:',
    '        embed_dim: 4',
    '        monitor: val/rec_loss',
    '        ddconfig:',
    '          double_z: true',
    '          z_channels: 4',
    '          resolution: 256',
    '          in_channels: 3',
    '          out_ch: 3',
    '          ch: 128',
    '          ch_mult: [1, 2, 4, 4]',
    '          num_res_blocks: 2',
    '          attn_resolutions: []',
    '          dropout: 0.0',
    '        lossconfig:',
    '          target: torch.nn.Identity',
    '    cond_stage_config:',
    '      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder',
    '      params:',
    '        freeze: true',
    '        layer: "penultimate"',
    '',
  ].join('\n');
}

/**
 * AutoV2: the first 10 hex digits of the file's SHA-256, lower case as AUTOMATIC1111 writes it
 * into image infotext ("Model hash: …"); Civitai shows the same digits upper case.
 */
export function autoV2(sha256: string): string {
  return sha256.slice(0, 10).toLowerCase();
}
