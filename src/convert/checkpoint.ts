/**
 * Full-model conversion: a Diffusers folder (SD 1.x, SD 2.x or SDXL) → one single-file
 * checkpoint. It loads the component headers, detects the architecture from the configs, maps
 * every tensor with the per-component key maps, refuses any tensor it cannot place, checks the
 * result against the original layout derived independently from the same configs (every key,
 * every shape), attaches the model spec metadata, and only then streams the data through the
 * atomic writer. Prefixes: `model.diffusion_model.` (UNet), `first_stage_model.` (VAE),
 * `cond_stage_model.transformer.` (SD 1.x text encoder), `cond_stage_model.model.` (SD 2.x,
 * OpenCLIP names), `conditioner.embedders.0.transformer.` and `conditioner.embedders.1.model.`
 * (SDXL's two encoders).
 */
import { BoothError } from '../errors.js';
import type { ObjectStore } from '../storage/types.js';
import { closeComponent, loadComponent, parseJson, type Component, type ModelFolder, type TensorRef } from './diffusers.js';
import { mapHfClip, mapOpenClip, mapUNet, mapVae, type ComponentMap } from './keymap.js';
import {
  clipConfig,
  hfClipShapes,
  ldmUNetShapes,
  ldmVaeShapes,
  openClipShapes,
  unetConfig,
  vaeConfig,
  type Shapes,
  type UNetConfig,
} from './layouts.js';
import { mapSd3Transformer, mmditShapes, sd3Config } from './mmdit.js';
import { modelspecMetadata, type Architecture, type ModelFacts, type PredictionType } from './metadata.js';
import { floatDType, isFloat, makePlan, writePlanToFile, writePlanToStore, type OutputDType, type PlannedTensor, type ProgressFn, type WritePlan, type WriteResult } from './writer.js';

/** Options of {@link planCheckpoint}. */
export interface CheckpointOptions {
  /** Architecture; detected from the configs when absent. */
  architecture?: Architecture;
  /** Output precision of float tensors (default fp16). */
  dtype?: OutputDType;
  /** Weight variant to read, e.g. `fp16`. */
  variant?: string;
  /** Prediction type; default from `scheduler/scheduler_config.json`, else v-prediction for SD 2.x at 768 px. */
  predictionType?: PredictionType;
  /** Title (`modelspec.title`); default the folder's last segment. */
  title?: string;
  /** Trigger phrase (`modelspec.trigger_phrase`). */
  triggerPhrase?: string;
  /** Further metadata entries (e.g. `booth.*` training facts); they win over computed ones. */
  metadata?: Record<string, string>;
  /** SD 3.5 `medium`/`large` for the metadata (default from the transformer's width). */
  release?: 'dev' | 'schnell' | 'medium' | 'large';
}

/** A checkpoint ready to be written, with what was decided on the way. */
export interface CheckpointPlan {
  plan: WritePlan;
  facts: ModelFacts;
  /** Input tensors left out on purpose, with the reason. */
  dropped: Array<{ name: string; reason: string }>;
  /** Tensors per component in the output. */
  counts: Record<string, number>;
  /** Close the input files. */
  close(): Promise<void>;
}

/** Keys that may be absent from an export without harm (buffers the loaders recompute). */
const OPTIONAL = [/\.text_model\.embeddings\.position_ids$/];

/**
 * Detect the architecture from component configs: a second text encoder or SDXL's `text_time`
 * embedding means SDXL; otherwise the cross-attention width tells SD 2.x (1024) from SD 1.x (768).
 */
export function detectArchitecture(unet: UNetConfig, hasTextEncoder2: boolean): Architecture | undefined {
  if (hasTextEncoder2 || unet.additionEmbedInput !== null) return 'sdxl';
  if (unet.crossAttentionDim === 1024) return 'sd2';
  if (unet.crossAttentionDim === 768) return 'sd1';
  return undefined;
}

function readPrediction(text: string | null, where: string): PredictionType | undefined {
  if (text === null) return undefined;
  const p = (parseJson(text, where) as { prediction_type?: unknown }).prediction_type;
  return p === 'v_prediction' || p === 'epsilon' ? p : undefined;
}

function withPrefix(shapes: Shapes, prefix: string): Shapes {
  return new Map([...shapes].map(([k, v]) => [prefix + k, v]));
}

/**
 * Compare mapped tensors with the expected original layout.
 * @throws BoothError `INVALID_ARGUMENT` listing (up to 10) missing, unexpected and mis-shaped keys
 */
export function checkAgainstLayout(mapped: ReadonlyArray<{ name: string; shape: number[] }>, expected: Shapes, where: string): void {
  const problems: string[] = [];
  const seen = new Set<string>();
  for (const t of mapped) {
    seen.add(t.name);
    const want = expected.get(t.name);
    if (want === undefined) {
      if (!OPTIONAL.some((re) => re.test(t.name))) problems.push(`unexpected ${t.name}`);
    } else if (JSON.stringify(want) !== JSON.stringify(t.shape)) problems.push(`${t.name} has shape ${JSON.stringify(t.shape)}, expected ${JSON.stringify(want)}`);
  }
  for (const k of expected.keys()) if (!seen.has(k)) problems.push(`missing ${k}`);
  if (problems.length > 0) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `${where}: the converted checkpoint does not match the expected layout (${problems.length} problem(s)): ${problems.slice(0, 10).join('; ')}${problems.length > 10 ? '; …' : ''}. ` +
        'The input folder is incomplete or not the architecture its configs say; nothing was written',
    );
  }
}

function reportUnknown(maps: Array<[string, ComponentMap]>, where: string): void {
  const unknown = maps.flatMap(([c, m]) => m.unknown.map((n) => `${c}: ${n}`));
  if (unknown.length > 0) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `${where}: ${unknown.length} tensor(s) have no place in a single-file checkpoint: ${unknown.slice(0, 10).join('; ')}${unknown.length > 10 ? '; …' : ''}. ` +
        'Is the model a plain SD 1.x/2.x/XL pipeline (no adapters merged in)? Nothing was written',
    );
  }
}

function planned(component: Component, map: ComponentMap, dtype: OutputDType): PlannedTensor[] {
  return map.mapped.map((m) => {
    const parts = m.parts.map((p, i) => {
      const ref = component.tensors.get(p);
      if (!ref) throw new BoothError('INVALID_ARGUMENT', `internal error: ${component.name} tensor "${p}" vanished`);
      const slice = m.slices?.[i];
      return { ref: slice ? rowSlice(ref, slice) : ref };
    });
    const first = parts[0]?.ref.info.dtype ?? 'F32';
    // Float tensors take the chosen precision; integer buffers (position_ids) keep theirs.
    const out = isFloat(first) ? floatDType(dtype) : first;
    return { name: m.name, dtype: out, shape: m.shape, parts, ...(m.transpose ? { transpose: true } : {}) };
  });
}

/** Rows `[r0, r1)` of a tensor as a tensor of its own: a byte range of the same file (row-major data). */
function rowSlice(ref: TensorRef, [r0, r1]: [number, number]): TensorRef {
  const rows = ref.info.shape[0] ?? 0;
  if (!(r0 >= 0 && r1 <= rows && r0 < r1)) throw new BoothError('INVALID_ARGUMENT', `internal error: rows ${r0}..${r1} of ${ref.info.name} (${rows} rows)`);
  const rowBytes = (ref.info.end - ref.info.start) / rows;
  return { file: ref.file, info: { ...ref.info, shape: [r1 - r0, ...ref.info.shape.slice(1)], start: ref.info.start + r0 * rowBytes, end: ref.info.start + r1 * rowBytes } };
}

function shapesOf(c: Component): Map<string, number[]> {
  return new Map([...c.tensors].map(([k, r]) => [k, r.info.shape]));
}

/**
 * Plan the conversion of a Diffusers folder: everything except streaming the data.
 *
 * @param folder - the Diffusers folder (local or in a store)
 * @param options - architecture, dtype, variant, prediction type, title, metadata
 * @returns the plan; call `close()` after writing (or on error)
 * @throws BoothError `NOT_FOUND` for a missing component/config/shard; `INVALID_ARGUMENT` for an
 *   unknown tensor, a layout mismatch, a corrupt header, or an architecture that disagrees with
 *   the configs
 * @example
 * const cp = await planCheckpoint(localFolder('./model'), { dtype: 'fp16' });
 * try { await writePlanToFile(cp.plan, 'model.safetensors'); } finally { await cp.close(); }
 */
export async function planCheckpoint(folder: ModelFolder, options: CheckpointOptions = {}): Promise<CheckpointPlan> {
  const dtype = options.dtype ?? 'fp16';
  const variant = options.variant !== undefined ? { variant: options.variant } : {};
  const components: Component[] = [];
  const close = async () => {
    await Promise.all(components.map((c) => closeComponent(c)));
  };
  try {
    const load = async (name: string, base: string) => {
      const c = await loadComponent(folder, name, base, variant);
      components.push(c);
      return c;
    };
    if ((await folder.list('unet')).length === 0 && (await folder.list('transformer')).length > 0) {
      return await planTransformerCheckpoint(folder, options, load, close);
    }
    const unet = await load('unet', 'diffusion_pytorch_model');
    const ucfg = unetConfig(unet.config, `${folder.where}/unet/config.json`);
    const hasTe2 = (await folder.list('text_encoder_2')).length > 0;
    const detected = detectArchitecture(ucfg, hasTe2);
    const arch = options.architecture ?? detected;
    if (arch === undefined) {
      throw new BoothError('INVALID_ARGUMENT', `cannot tell the architecture of ${folder.where} from unet/config.json (cross_attention_dim ${ucfg.crossAttentionDim}); pass --arch sd1|sd2|sdxl`);
    }
    if (detected !== undefined && arch !== detected) {
      throw new BoothError('INVALID_ARGUMENT', `${folder.where} looks like ${detected} (from unet/config.json${hasTe2 ? ' and text_encoder_2/' : ''}), not ${arch}; drop --arch or fix the folder`);
    }
    const vae = await load('vae', 'diffusion_pytorch_model');
    const vcfg = vaeConfig(vae.config, `${folder.where}/vae/config.json`);
    const te = await load('text_encoder', 'model');
    const tcfg = clipConfig(te.config, `${folder.where}/text_encoder/config.json`);
    const te2 = arch === 'sdxl' ? await load('text_encoder_2', 'model') : undefined;
    const t2cfg = te2 ? clipConfig(te2.config, `${folder.where}/text_encoder_2/config.json`) : undefined;

    const maps: Array<[string, ComponentMap, Component]> = [
      ['unet', mapUNet(shapesOf(unet), ucfg), unet],
      ['vae', mapVae(shapesOf(vae), vcfg.blockOutChannels.length), vae],
    ];
    const expected: Shapes = new Map([...withPrefix(ldmUNetShapes(ucfg), 'model.diffusion_model.'), ...withPrefix(ldmVaeShapes(vcfg), 'first_stage_model.')]);
    if (arch === 'sd1') {
      maps.push(['text_encoder', mapHfClip(shapesOf(te), 'cond_stage_model.transformer.'), te]);
      for (const [k, v] of withPrefix(hfClipShapes(tcfg, false), 'cond_stage_model.transformer.')) expected.set(k, v);
    } else if (arch === 'sd2') {
      maps.push(['text_encoder', mapOpenClip(shapesOf(te), 'cond_stage_model.model.'), te]);
      for (const [k, v] of withPrefix(openClipShapes(tcfg, false), 'cond_stage_model.model.')) expected.set(k, v);
    } else if (te2 && t2cfg) {
      maps.push(['text_encoder', mapHfClip(shapesOf(te), 'conditioner.embedders.0.transformer.'), te]);
      maps.push(['text_encoder_2', mapOpenClip(shapesOf(te2), 'conditioner.embedders.1.model.'), te2]);
      for (const [k, v] of withPrefix(hfClipShapes(tcfg, false), 'conditioner.embedders.0.transformer.')) expected.set(k, v);
      for (const [k, v] of withPrefix(openClipShapes(t2cfg, true), 'conditioner.embedders.1.model.')) expected.set(k, v);
    }
    reportUnknown(maps.map(([n, m]) => [n, m]), folder.where);
    const all = maps.flatMap(([, m]) => m.mapped);
    checkAgainstLayout(all, expected, folder.where);

    const predictionType =
      options.predictionType ??
      readPrediction(await folder.readText('scheduler/scheduler_config.json'), `${folder.where}/scheduler/scheduler_config.json`) ??
      (arch === 'sd2' && vaeScaled(ucfg, vcfg) >= 768 ? 'v_prediction' : 'epsilon');
    const facts: ModelFacts = {
      architecture: arch,
      predictionType,
      resolution: vaeScaled(ucfg, vcfg),
      title: options.title ?? (folder.where.split('/').filter(Boolean).at(-1) ?? 'model'),
      ...(options.triggerPhrase ? { triggerPhrase: options.triggerPhrase } : {}),
    };
    const metadata = { ...modelspecMetadata(facts), 'booth.dtype': dtype, ...options.metadata };
    const tensors = maps.flatMap(([, m, c]) => planned(c, m, dtype));
    const counts = Object.fromEntries(maps.map(([n, m]) => [n, m.mapped.length]));
    return { plan: makePlan(tensors, metadata), facts, dropped: maps.flatMap(([, m]) => m.dropped), counts, close };
  } catch (err) {
    await close();
    throw err;
  }
}

/**
 * {@link planCheckpoint} for a folder whose denoiser is a transformer: SD 3.5 (Medium, Large)
 * becomes `model.diffusion_model.…` (MMDiT names, mmdit.ts) plus `first_stage_model.…` (the
 * 16-channel VAE); the text encoders are left out, as Stability AI ships them beside the official
 * single files and loaders take them separately. FLUX.1 full checkpoints are refused: Booth
 * trains FLUX.1 as a LoRA, and the base single file comes from its publisher.
 */
async function planTransformerCheckpoint(
  folder: ModelFolder,
  options: CheckpointOptions,
  load: (name: string, base: string) => Promise<Component>,
  close: () => Promise<void>,
): Promise<CheckpointPlan> {
  const dtype = options.dtype ?? 'fp16';
  const transformer = await load('transformer', 'diffusion_pytorch_model');
  const cls = (transformer.config as Record<string, unknown> | null)?._class_name;
  if (cls === 'FluxTransformer2DModel' || options.architecture === 'flux') {
    throw new BoothError('INVALID_ARGUMENT', `${folder.where} is a FLUX.1 model: Booth exports FLUX.1 runs as LoRAs (booth convert <run>/model/pytorch_lora_weights.safetensors), not full checkpoints`);
  }
  if (cls !== undefined && cls !== 'SD3Transformer2DModel') throw new BoothError('INVALID_ARGUMENT', `${folder.where}/transformer is a ${String(cls)}; Booth converts SD3Transformer2DModel (SD 3.5) folders`);
  if (options.architecture !== undefined && options.architecture !== 'sd3') throw new BoothError('INVALID_ARGUMENT', `${folder.where} holds an SD 3.5 transformer, not ${options.architecture}; drop --arch`);
  const tcfg = sd3Config(transformer.config, `${folder.where}/transformer/config.json`);
  const vae = await load('vae', 'diffusion_pytorch_model');
  const vcfg = vaeConfig(vae.config, `${folder.where}/vae/config.json`);
  const maps: Array<[string, ComponentMap, Component]> = [
    ['transformer', mapSd3Transformer(shapesOf(transformer), tcfg), transformer],
    ['vae', mapVae(shapesOf(vae), vcfg.blockOutChannels.length), vae],
  ];
  reportUnknown(maps.map(([n, m]) => [n, m]), folder.where);
  const expected: Shapes = new Map([...withPrefix(mmditShapes(tcfg), 'model.diffusion_model.'), ...withPrefix(ldmVaeShapes(vcfg), 'first_stage_model.')]);
  checkAgainstLayout(maps.flatMap(([, m]) => m.mapped), expected, folder.where);
  const width = tcfg.heads * tcfg.headDim;
  const facts: ModelFacts = {
    architecture: 'sd3',
    predictionType: 'flow',
    resolution: tcfg.sampleSize * 2 ** (vcfg.blockOutChannels.length - 1),
    title: options.title ?? (folder.where.split('/').filter(Boolean).at(-1) ?? 'model'),
    release: options.release ?? (width >= 2432 ? 'large' : 'medium'),
    ...(options.triggerPhrase ? { triggerPhrase: options.triggerPhrase } : {}),
  };
  const metadata = { ...modelspecMetadata(facts), 'booth.dtype': dtype, ...options.metadata };
  const tensors = maps.flatMap(([, m, c]) => planned(c, m, dtype));
  const counts = Object.fromEntries(maps.map(([n, m]) => [n, m.mapped.length]));
  return { plan: makePlan(tensors, metadata), facts, dropped: maps.flatMap(([, m]) => m.dropped), counts, close };
}

/** Native resolution: the UNet's sample size times the VAE's downscale (2 per level after the first). */
function vaeScaled(u: UNetConfig, v: { blockOutChannels: number[] }): number {
  return u.sampleSize * 2 ** (v.blockOutChannels.length - 1);
}

/** Result of {@link convertCheckpoint}. */
export interface ConvertResult extends WriteResult {
  facts: ModelFacts;
  metadata: Record<string, string>;
  dropped: Array<{ name: string; reason: string }>;
  tensors: number;
}

/** Where a conversion writes: a local path, or a key in a store. */
export type ConvertTarget = { file: string } | { store: ObjectStore; key: string };

/**
 * Plan and write in one call.
 *
 * @param folder - the Diffusers folder
 * @param target - a local file or a store key
 * @param options - see {@link CheckpointOptions}; `onProgress` for bytes written
 * @returns hashes, size, facts and metadata
 * @throws BoothError as {@link planCheckpoint} and the writers; nothing partial becomes visible
 * @example
 * const r = await convertCheckpoint(localFolder('./model'), { file: 'model.safetensors' }, { dtype: 'fp16' });
 */
export async function convertCheckpoint(folder: ModelFolder, target: ConvertTarget, options: CheckpointOptions & { onProgress?: ProgressFn } = {}): Promise<ConvertResult> {
  const cp = await planCheckpoint(folder, options);
  try {
    const w = 'file' in target ? await writePlanToFile(cp.plan, target.file, opts(options)) : await writePlanToStore(cp.plan, target.store, target.key, opts(options));
    return { ...w, facts: cp.facts, metadata: cp.plan.metadata, dropped: cp.dropped, tensors: cp.plan.tensors.length };
  } finally {
    await cp.close();
  }
}

function opts(o: { onProgress?: ProgressFn }) {
  return o.onProgress ? { onProgress: o.onProgress } : {};
}
