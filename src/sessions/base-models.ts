/**
 * The base models a session can target and what follows from each: the training resolution and
 * the architecture family. Resolutions are the native ones of the releases (SD 1.5: 512 px;
 * SD 2.1 768-v: 768 px; SDXL base 1.0: 1024 px), as in their Diffusers `sample_size` × 8
 * (see `../shared/models/<base>/unet/config.json`).
 */

/** Base model identifiers accepted by `--base`. */
export const BASE_MODELS = ['sd15', 'sd21', 'sdxl'] as const;

/** One of {@link BASE_MODELS}. */
export type BaseModel = (typeof BASE_MODELS)[number];

/** What a base model implies. */
export interface BaseModelInfo {
  /** Human name. */
  label: string;
  /** Native training resolution in pixels (square side). */
  resolution: number;
  /** Architecture family used by the trainer and the converter. */
  architecture: 'sd1' | 'sd2' | 'sdxl';
}

/** Facts per base model. */
export const BASE_MODEL_INFO: Readonly<Record<BaseModel, BaseModelInfo>> = {
  sd15: { label: 'Stable Diffusion 1.5', resolution: 512, architecture: 'sd1' },
  sd21: { label: 'Stable Diffusion 2.1 (768-v)', resolution: 768, architecture: 'sd2' },
  sdxl: { label: 'Stable Diffusion XL base 1.0', resolution: 1024, architecture: 'sdxl' },
};
