/**
 * The base models a session can target and what follows from each: the training resolution,
 * the architecture family and the text encoders' token windows. Resolutions are the native ones
 * of the releases (SD 1.5: 512 px; SD 2.1 768-v: 768 px; SDXL base 1.0, FLUX.1 and SD 3.5:
 * 1024 px), as in their Diffusers `sample_size` × 8 (see `../shared/models/<base>/unet/config.json`
 * and `test/fixtures/models/`). The transformer bases also train well at 512 and 768 px (their
 * position embeddings cover those sizes), which sessions may choose.
 */

/** Base model identifiers accepted by `--base`. */
export const BASE_MODELS = ['sd15', 'sd21', 'sdxl', 'flux-dev', 'flux-schnell', 'sd35-medium', 'sd35-large'] as const;

/** One of {@link BASE_MODELS}. */
export type BaseModel = (typeof BASE_MODELS)[number];

/** What a base model implies. */
export interface BaseModelInfo {
  /** Human name. */
  label: string;
  /** Native training resolution in pixels (square side); the default of a session. */
  resolution: number;
  /** Resolutions a session on this base may choose (pixels, square side). */
  resolutions: readonly number[];
  /** Architecture family used by the trainer and the converter. */
  architecture: 'sd1' | 'sd2' | 'sdxl' | 'flux' | 'sd3';
  /**
   * Tokens of a caption the model reads: CLIP's window of 77 for the SD bases; for FLUX.1 and
   * SD 3.5 the T5 encoder's (512 for FLUX.1 [dev], 256 for [schnell] and SD 3.5, the reference
   * pipelines' `max_sequence_length`), where CLIP still sees only the first 77.
   */
  captionWindow: { encoder: 'clip' | 't5'; tokens: number };
}

/** Facts per base model. */
export const BASE_MODEL_INFO: Readonly<Record<BaseModel, BaseModelInfo>> = {
  sd15: { label: 'Stable Diffusion 1.5', resolution: 512, resolutions: [512], architecture: 'sd1', captionWindow: { encoder: 'clip', tokens: 77 } },
  sd21: { label: 'Stable Diffusion 2.1 (768-v)', resolution: 768, resolutions: [768], architecture: 'sd2', captionWindow: { encoder: 'clip', tokens: 77 } },
  sdxl: { label: 'Stable Diffusion XL base 1.0', resolution: 1024, resolutions: [1024], architecture: 'sdxl', captionWindow: { encoder: 'clip', tokens: 77 } },
  'flux-dev': { label: 'FLUX.1 [dev]', resolution: 1024, resolutions: [512, 768, 1024], architecture: 'flux', captionWindow: { encoder: 't5', tokens: 512 } },
  'flux-schnell': { label: 'FLUX.1 [schnell]', resolution: 1024, resolutions: [512, 768, 1024], architecture: 'flux', captionWindow: { encoder: 't5', tokens: 256 } },
  'sd35-medium': { label: 'Stable Diffusion 3.5 Medium', resolution: 1024, resolutions: [512, 768, 1024], architecture: 'sd3', captionWindow: { encoder: 't5', tokens: 256 } },
  'sd35-large': { label: 'Stable Diffusion 3.5 Large', resolution: 1024, resolutions: [512, 768, 1024], architecture: 'sd3', captionWindow: { encoder: 't5', tokens: 256 } },
};

/**
 * The base models as `--help` and the UI list them.
 * @example baseModelChoices() // 'sd15 (SD 1.5, 512 px), …'
 */
export function baseModelChoices(): string {
  return BASE_MODELS.map((b) => `${b} (${BASE_MODEL_INFO[b].label}, ${BASE_MODEL_INFO[b].resolutions.join('/')} px)`).join(', ');
}
