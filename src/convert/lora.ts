/**
 * LoRA conversion: a Diffusers/peft LoRA file (`pytorch_lora_weights.safetensors` as
 * `save_lora_weights` writes it since diffusers 0.27 — `unet.<module>.lora_A.weight` /
 * `.lora_B.weight`, `text_encoder.…`, `text_encoder_2.…`; the older `.lora.down.weight` /
 * `.lora.up.weight` spelling is read too) → the single-file layout AUTOMATIC1111, ComfyUI and
 * kohya's sd-scripts load: `lora_unet_<module>` / `lora_te_<module>` (SDXL: `lora_te1_`,
 * `lora_te2_`) with dots turned into underscores, `.lora_down.weight` (= peft's A, [rank, in…]),
 * `.lora_up.weight` (= B, [out, rank, …]) and a scalar `.alpha`. UNet module names follow
 * sd-scripts: Diffusers names for SD 1.x/2.x, original (`input_blocks…`) names for SDXL. Alpha
 * comes from the file's `booth.lora_alpha` metadata, else equals the rank (peft's default
 * scaling alpha/rank = 1 is then preserved).
 */
import { BoothError } from '../errors.js';
import { f32BitsToBf16, f32BitsToF16 } from './dtype.js';
import type { ByteSource } from './io.js';
import { clipTextName, unetKey } from './keymap.js';
import type { UNetConfig } from './layouts.js';
import { modelspecMetadata, type Architecture, type ModelFacts, type PredictionType } from './metadata.js';
import { detectFlowArchitecture, isFlowLora, planFlowLora, type FlowLoraFormat } from './lora-flow.js';
import { readHeader, type DType, type SafetensorsFile } from './safetensors.js';
import { floatDType, isFloat, makePlan, type OutputDType, type PlannedTensor, type WritePlan } from './writer.js';

/** Name of the LoRA file in a run's `model/` folder. */
export const LORA_FILE = 'pytorch_lora_weights.safetensors';

/** The UNet facts that decide original names (layers per block, which up blocks have attention). */
const STANDARD_UNET: Record<'sd1' | 'sd2' | 'sdxl', Pick<UNetConfig, 'layersPerBlock' | 'upAttention'>> = {
  sd1: { layersPerBlock: 2, upAttention: [false, true, true, true] },
  sd2: { layersPerBlock: 2, upAttention: [false, true, true, true] },
  sdxl: { layersPerBlock: 2, upAttention: [true, true, false] },
};

const TEXT_MODULE = /^text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$/;

/** Options of {@link planLora}. */
export interface LoraOptions {
  architecture?: Architecture;
  /** FLUX.1/SD 3.5 only: tensor names of the output (default kohya for FLUX.1, diffusers for SD 3.5; see lora-flow.ts). */
  loraFormat?: FlowLoraFormat;
  /** FLUX.1 `dev`/`schnell` (not visible in a LoRA's tensors; default dev), SD 3.5 `medium`/`large` (default from the width). */
  release?: 'dev' | 'schnell' | 'medium' | 'large';
  dtype?: OutputDType;
  predictionType?: PredictionType;
  resolution?: number;
  title?: string;
  triggerPhrase?: string;
  metadata?: Record<string, string>;
}

/** A LoRA ready to be written. */
export interface LoraPlan {
  plan: WritePlan;
  facts: ModelFacts;
  rank: number;
  alpha: number;
  modules: number;
  close(): Promise<void>;
}

function parsePositive(v: string | undefined, what: string, where: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new BoothError('INVALID_ARGUMENT', `${where}: metadata "${what}" must be a positive number, got ${JSON.stringify(v)}`);
  return n;
}

/** Detect the base architecture from the tensors' widths (cross-attention input, text width). */
function detect(file: SafetensorsFile): Architecture | undefined {
  for (const [name, t] of file.tensors) {
    if (name.startsWith('text_encoder_2.')) return 'sdxl';
    if (/attn2\.to_k\.lora(_A|\.down)\.weight$/.test(name)) {
      const w = t.shape[1];
      if (w === 2048) return 'sdxl';
      if (w === 1024) return 'sd2';
      if (w === 768) return 'sd1';
    }
  }
  for (const [name, t] of file.tensors) {
    if (/^text_encoder\..*q_proj\.lora(_A|\.down)\.weight$/.test(name)) {
      if (t.shape[1] === 1024) return 'sd2';
      if (t.shape[1] === 768) return 'sd1';
    }
  }
  return undefined;
}

function encodeScalar(value: number, dtype: DType): Uint8Array {
  const b = new Uint8Array(dtype === 'F32' ? 4 : 2);
  const bits = new Int32Array(new Float32Array([value]).buffer)[0] ?? 0;
  const v = new DataView(b.buffer);
  if (dtype === 'F32') v.setInt32(0, bits, true);
  else v.setUint16(0, dtype === 'F16' ? f32BitsToF16(bits) : f32BitsToBf16(bits), true);
  return b;
}

/**
 * Plan the conversion of a Diffusers/peft LoRA file.
 *
 * @param source - the LoRA file (it is closed by the plan's `close()`)
 * @param options - architecture (detected from widths when absent), dtype, facts, metadata
 * @returns the plan with rank, alpha and module count
 * @throws BoothError `INVALID_ARGUMENT` for unknown keys, a module missing A or B, mismatched
 *   ranks, or an architecture that cannot be detected
 * @example
 * const lp = await planLora(await openFileSource('pytorch_lora_weights.safetensors'), { dtype: 'fp16' });
 */
export async function planLora(source: ByteSource, options: LoraOptions = {}): Promise<LoraPlan> {
  try {
    const file = await readHeader(source);
    const where = source.name;
    if (isFlowLora(file)) return await planTransformerLora(file, options, () => source.close());
    const arch = options.architecture ?? detect(file);
    if (!arch) throw new BoothError('INVALID_ARGUMENT', `${where}: cannot tell the base architecture from the LoRA's tensors; pass --arch sd1|sd2|sdxl`);
    if (arch === 'flux' || arch === 'sd3') throw new BoothError('INVALID_ARGUMENT', `${where}: --arch ${arch} but the file has UNet/text-encoder adapters, not transformer ones (transformer.…)`);
    const dtype = options.dtype ?? 'fp16';
    const modules = new Map<string, { prefix: string; a?: string; b?: string }>();
    const unknown: string[] = [];
    for (const name of file.tensors.keys()) {
      const m = /^(unet|text_encoder|text_encoder_2)\.(.+)\.(lora_A|lora_B|lora\.down|lora\.up)\.weight$/.exec(name);
      if (!m) {
        unknown.push(name);
        continue;
      }
      const [, comp = '', module = '', kind = ''] = m;
      let kohya: string | null = null;
      if (comp === 'unet') {
        const original = unetKey(`${module}.weight`, STANDARD_UNET[arch] as UNetConfig);
        if (original !== null) kohya = `lora_unet_${(arch === 'sdxl' ? original.replace(/\.weight$/, '') : module).replace(/\./g, '_')}`;
      } else if (TEXT_MODULE.test(clipTextName(module)) && !(comp === 'text_encoder_2' && arch !== 'sdxl')) {
        const te = arch === 'sdxl' ? (comp === 'text_encoder' ? 'lora_te1_' : 'lora_te2_') : 'lora_te_';
        kohya = te + clipTextName(module).replace(/\./g, '_');
      }
      if (kohya === null) {
        unknown.push(name);
        continue;
      }
      const entry = modules.get(kohya) ?? { prefix: kohya };
      if (kind === 'lora_A' || kind === 'lora.down') entry.a = name;
      else entry.b = name;
      modules.set(kohya, entry);
    }
    if (unknown.length > 0) {
      throw new BoothError(
        'INVALID_ARGUMENT',
        `${where}: ${unknown.length} tensor(s) are not LoRA weights of a known ${arch} module: ${unknown.slice(0, 10).join('; ')}${unknown.length > 10 ? '; …' : ''}; nothing was written`,
      );
    }
    if (modules.size === 0) throw new BoothError('INVALID_ARGUMENT', `${where} contains no LoRA weights`);
    const metaRank = parsePositive(file.metadata['booth.lora_rank'], 'booth.lora_rank', where);
    const metaAlpha = parsePositive(file.metadata['booth.lora_alpha'], 'booth.lora_alpha', where);
    const out = floatDType(dtype);
    const tensors: PlannedTensor[] = [];
    let rank = 0;
    for (const m of modules.values()) {
      const a = m.a === undefined ? undefined : file.tensors.get(m.a);
      const b = m.b === undefined ? undefined : file.tensors.get(m.b);
      if (!a || !b) throw new BoothError('INVALID_ARGUMENT', `${where}: module ${m.prefix} has only its ${a ? 'A (down)' : 'B (up)'} matrix; the LoRA file is incomplete`);
      const r = a.shape[0] ?? 0;
      if (b.shape[1] !== r) throw new BoothError('INVALID_ARGUMENT', `${where}: module ${m.prefix}: A is ${JSON.stringify(a.shape)} but B is ${JSON.stringify(b.shape)} (ranks differ)`);
      if (!isFloat(a.dtype) || !isFloat(b.dtype)) throw new BoothError('INVALID_ARGUMENT', `${where}: module ${m.prefix} is not a float tensor`);
      rank = Math.max(rank, r);
      tensors.push({ name: `${m.prefix}.lora_down.weight`, dtype: out, shape: [...a.shape], parts: [{ ref: { file, info: a } }] });
      tensors.push({ name: `${m.prefix}.lora_up.weight`, dtype: out, shape: [...b.shape], parts: [{ ref: { file, info: b } }] });
      tensors.push({ name: `${m.prefix}.alpha`, dtype: out, shape: [], parts: [{ bytes: encodeScalar(metaAlpha ?? metaRank ?? r, out) }] });
    }
    const alpha = metaAlpha ?? metaRank ?? rank;
    const resolution = options.resolution ?? (arch === 'sdxl' ? 1024 : arch === 'sd2' ? 768 : 512);
    const facts: ModelFacts = {
      architecture: arch,
      predictionType: options.predictionType ?? (arch === 'sd2' && resolution >= 768 ? 'v_prediction' : 'epsilon'),
      resolution,
      title: options.title ?? (where.split('/').filter(Boolean).at(-1) ?? 'lora').replace(/\.safetensors$/, ''),
      lora: true,
      ...(options.triggerPhrase ? { triggerPhrase: options.triggerPhrase } : {}),
    };
    const metadata = {
      ...modelspecMetadata(facts),
      ss_network_module: 'networks.lora',
      ss_network_dim: String(metaRank ?? rank),
      ss_network_alpha: String(alpha),
      'booth.dtype': dtype,
      ...options.metadata,
    };
    return { plan: makePlan(tensors, metadata), facts, rank: metaRank ?? rank, alpha, modules: modules.size, close: () => source.close() };
  } catch (err) {
    await source.close();
    throw err;
  }
}

/** The α a LoRA file states: `booth.lora_alpha`, else the transformer's entry of diffusers' `lora_adapter_metadata`. */
function statedAlpha(file: SafetensorsFile, where: string): number | undefined {
  const booth = parsePositive(file.metadata['booth.lora_alpha'], 'booth.lora_alpha', where);
  if (booth !== undefined) return booth;
  const raw = file.metadata.lora_adapter_metadata;
  if (raw === undefined) return undefined;
  try {
    const meta = JSON.parse(raw) as Record<string, unknown>;
    const v = meta['transformer.lora_alpha'] ?? (meta.transformer as Record<string, unknown> | undefined)?.lora_alpha;
    return typeof v === 'number' && v > 0 ? v : undefined;
  } catch {
    return undefined;
  }
}

/** {@link planLora} for a FLUX.1 or SD 3.5 LoRA (`transformer.` adapters; see lora-flow.ts). */
async function planTransformerLora(file: SafetensorsFile, options: LoraOptions, close: () => Promise<void>): Promise<LoraPlan> {
  const where = file.source.name;
  const detected = detectFlowArchitecture(file);
  const arch = options.architecture ?? detected;
  if (arch !== 'flux' && arch !== 'sd3') {
    throw new BoothError('INVALID_ARGUMENT', `${where}: a transformer LoRA is for FLUX.1 or SD 3.5${arch ? `, not ${arch}` : ' and its widths do not say which'}; pass --arch flux|sd3`);
  }
  if (detected !== undefined && detected !== arch) throw new BoothError('INVALID_ARGUMENT', `${where} looks like a ${detected} LoRA, not ${arch}; drop --arch or check the file`);
  const format = options.loraFormat ?? (arch === 'flux' ? 'kohya' : 'diffusers');
  const dtype = options.dtype ?? 'fp16';
  const fp = await planFlowLora(file, arch, format, statedAlpha(file, where), dtype);
  const release = options.release ?? (arch === 'sd3' ? (fp.width >= 2432 ? 'large' : 'medium') : 'dev');
  const facts: ModelFacts = {
    architecture: arch,
    predictionType: 'flow',
    resolution: options.resolution ?? 1024,
    title: options.title ?? (where.split('/').filter(Boolean).at(-1) ?? 'lora').replace(/\.safetensors$/, ''),
    lora: true,
    release,
    loraLayout: format,
    ...(options.triggerPhrase ? { triggerPhrase: options.triggerPhrase } : {}),
  };
  const metadata: Record<string, string> = {
    ...modelspecMetadata(facts),
    ...(format === 'kohya' ? { ss_network_module: 'networks.lora_flux', ss_network_dim: String(fp.rank), ss_network_alpha: String(fp.alpha) } : {}),
    'booth.lora_rank': String(fp.rank),
    'booth.lora_alpha': String(format === 'diffusers' ? fp.rank : fp.alpha),
    'booth.lora_layout': format,
    'booth.dtype': dtype,
    ...options.metadata,
  };
  return { plan: makePlan(fp.tensors, metadata), facts, rank: fp.rank, alpha: fp.alpha, modules: fp.modules, close };
}
