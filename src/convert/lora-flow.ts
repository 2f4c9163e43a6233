/**
 * LoRA files of the flow-matching bases (FLUX.1, SD 3.5) as Booth's trainer writes them — the
 * Diffusers/peft layout `transformer.<module>.lora_A.weight` / `.lora_B.weight` that
 * `FluxPipeline.save_lora_weights` and `StableDiffusion3Pipeline.save_lora_weights` produce —
 * turned into the single files the image tools load:
 *
 * - **FLUX.1, `kohya` layout** (ComfyUI, Forge, kohya's sd-scripts; diffusers reads it back with
 *   its kohya converter): module names of Black Forest Labs' reference implementation with
 *   underscores, `lora_unet_double_blocks_<i>_img_attn_qkv`, `…_txt_mlp_0`,
 *   `lora_unet_single_blocks_<i>_linear1`, …, with `.lora_down.weight`, `.lora_up.weight` and a
 *   scalar `.alpha`. The reference model fuses projections that Diffusers keeps apart: an image or
 *   text stream's q, k and v are one `qkv` linear, and a single-stream block's q, k, v and MLP input
 *   are one `linear1`. A fused module gets an exact LoRA of rank n·r: its down matrix is the parts'
 *   down matrices stacked ([n·r, in]) and its up matrix is block-diagonal ([Σ outᵢ, n·r], part i's
 *   up matrix at rows of part i and columns i·r…(i+1)·r, zeros elsewhere), so up·down is the
 *   parts' updates stacked; its alpha is n·α so the scale alpha/rank stays α/r. A part without an
 *   adapter contributes zero blocks. This block-diagonal form is the one diffusers' kohya
 *   converter recognises and splits back losslessly.
 * - **`diffusers` layout** (the default for SD 3.5, which ComfyUI and Forge read under the
 *   `transformer.` prefix; also offered for FLUX.1): the trainer's names kept, the scale α/r
 *   multiplied into the up matrix so every loader applies it the same way without alpha tensors
 *   or adapter configs.
 *
 * Module correspondence (Diffusers → reference), from the published conversion tables of
 * diffusers (`convert_flux_to_diffusers.py`, `convert_sd3_to_diffusers.py`): double block
 * `attn.to_q|to_k|to_v` → `img_attn.qkv`, `attn.add_q_proj|add_k_proj|add_v_proj` →
 * `txt_attn.qkv`, `attn.to_out.0` → `img_attn.proj`, `attn.to_add_out` → `txt_attn.proj`,
 * `ff.net.0.proj|ff.net.2` → `img_mlp.0|2`, `ff_context.…` → `txt_mlp.0|2`, `norm1.linear` →
 * `img_mod.lin`, `norm1_context.linear` → `txt_mod.lin`; single block `attn.to_q|to_k|to_v` +
 * `proj_mlp` → `linear1`, `proj_out` → `linear2`, `norm.linear` → `modulation.lin`.
 */
import { BoothError } from '../errors.js';
import { convertFloats, type FloatDType } from './dtype.js';
import type { SafetensorsFile, TensorInfo } from './safetensors.js';
import { floatDType, isFloat, type OutputDType, type PlannedTensor } from './writer.js';

/** Output layouts of a flow-base LoRA. */
export const FLOW_LORA_FORMATS = ['kohya', 'diffusers'] as const;
/** One of {@link FLOW_LORA_FORMATS}. */
export type FlowLoraFormat = (typeof FLOW_LORA_FORMATS)[number];

/** One adapter of the input: the Diffusers module path (without `transformer.`) and its A and B. */
interface Adapter {
  module: string;
  a: TensorInfo;
  b: TensorInfo;
}

/** A planned flow LoRA: output tensors and what was found. */
export interface FlowLoraPlan {
  tensors: PlannedTensor[];
  /** Rank r of the input adapters. */
  rank: number;
  /** Alpha α of the input adapters (the update is scaled by α/r). */
  alpha: number;
  /** Output modules. */
  modules: number;
  /** Transformer width (3072 for FLUX.1, 1536 SD 3.5 Medium, 2432 SD 3.5 Large). */
  width: number;
}

const KEY = /^transformer\.(.+)\.(lora_A|lora_B|lora\.down|lora\.up)\.weight$/;

/** True when the file holds adapters of a transformer (`transformer.` prefix, FLUX.1 or SD 3.5). */
export function isFlowLora(file: SafetensorsFile): boolean {
  for (const name of file.tensors.keys()) if (name.startsWith('transformer.')) return true;
  return false;
}

/**
 * FLUX.1 or SD 3.5 from a flow LoRA's module names and widths: single-stream blocks exist only in
 * FLUX.1, whose width is 3072.
 */
export function detectFlowArchitecture(file: SafetensorsFile): 'flux' | 'sd3' | undefined {
  let width: number | undefined;
  for (const [name, t] of file.tensors) {
    if (name.startsWith('transformer.single_transformer_blocks.')) return 'flux';
    if (/\.attn\.to_q\.lora(_A|\.down)\.weight$/.test(name)) width = t.shape[1];
  }
  if (width === undefined) return undefined;
  return width === 3072 ? 'flux' : 'sd3';
}

function collect(file: SafetensorsFile, where: string): Adapter[] {
  const partial = new Map<string, { a?: TensorInfo; b?: TensorInfo }>();
  const unknown: string[] = [];
  for (const [name, info] of file.tensors) {
    const m = KEY.exec(name);
    if (!m) {
      unknown.push(name);
      continue;
    }
    const entry = partial.get(m[1]!) ?? {};
    if (m[2] === 'lora_A' || m[2] === 'lora.down') entry.a = info;
    else entry.b = info;
    partial.set(m[1]!, entry);
  }
  if (unknown.length > 0) {
    throw new BoothError('INVALID_ARGUMENT', `${where}: ${unknown.length} tensor(s) are not transformer LoRA weights: ${unknown.slice(0, 10).join('; ')}${unknown.length > 10 ? '; …' : ''}; nothing was written`);
  }
  const out: Adapter[] = [];
  for (const [module, e] of partial) {
    if (!e.a || !e.b) throw new BoothError('INVALID_ARGUMENT', `${where}: module ${module} has only its ${e.a ? 'A (down)' : 'B (up)'} matrix; the LoRA file is incomplete`);
    if (e.a.shape.length !== 2 || e.b.shape.length !== 2 || e.b.shape[1] !== e.a.shape[0]) {
      throw new BoothError('INVALID_ARGUMENT', `${where}: module ${module}: A is ${JSON.stringify(e.a.shape)} but B is ${JSON.stringify(e.b.shape)}; they do not form a rank-r update`);
    }
    if (!isFloat(e.a.dtype) || !isFloat(e.b.dtype)) throw new BoothError('INVALID_ARGUMENT', `${where}: module ${module} is not a float tensor`);
    out.push({ module, a: e.a, b: e.b });
  }
  if (out.length === 0) throw new BoothError('INVALID_ARGUMENT', `${where} contains no LoRA weights`);
  return out;
}

/** A tensor's values as float32 (LoRA matrices are small: read whole). */
async function readF32(file: SafetensorsFile, info: TensorInfo): Promise<Float32Array> {
  const raw = await file.source.readBytes(info.start, info.end);
  const n = (info.end - info.start) / (info.dtype === 'F32' ? 4 : 2);
  const out = new Float32Array(n);
  convertFloats(new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength), info.dtype as FloatDType, 'F32', new Uint8Array(out.buffer));
  return out;
}

/** float32 values as bytes of `dtype`. */
function encode(values: Float32Array, dtype: FloatDType): Uint8Array {
  const out = new Uint8Array(values.length * (dtype === 'F32' ? 4 : 2));
  convertFloats(new Uint8Array(values.buffer, values.byteOffset, values.byteLength), 'F32', dtype, out);
  return out;
}

function scalar(value: number, dtype: FloatDType): Uint8Array {
  return encode(new Float32Array([value]), dtype);
}

/** A fused reference module and the Diffusers parts it is made of, in order. */
interface FusedModule {
  name: string;
  parts: string[];
  /** Output rows of each part, for parts without an adapter (from the model's width). */
  rows: (width: number) => number[];
}

/** The reference name of every FLUX.1 module Booth may put an adapter on, fused ones grouped. */
function fluxModules(blocks: { double: number[]; single: number[] }): { fused: FusedModule[]; plain: Map<string, string> } {
  const fused: FusedModule[] = [];
  const plain = new Map<string, string>();
  for (const i of blocks.double) {
    const d = `transformer_blocks.${i}`;
    fused.push({ name: `lora_unet_double_blocks_${i}_img_attn_qkv`, parts: [`${d}.attn.to_q`, `${d}.attn.to_k`, `${d}.attn.to_v`], rows: (h) => [h, h, h] });
    fused.push({ name: `lora_unet_double_blocks_${i}_txt_attn_qkv`, parts: [`${d}.attn.add_q_proj`, `${d}.attn.add_k_proj`, `${d}.attn.add_v_proj`], rows: (h) => [h, h, h] });
    for (const [from, to] of [
      ['attn.to_out.0', 'img_attn_proj'],
      ['attn.to_add_out', 'txt_attn_proj'],
      ['ff.net.0.proj', 'img_mlp_0'],
      ['ff.net.2', 'img_mlp_2'],
      ['ff_context.net.0.proj', 'txt_mlp_0'],
      ['ff_context.net.2', 'txt_mlp_2'],
      ['norm1.linear', 'img_mod_lin'],
      ['norm1_context.linear', 'txt_mod_lin'],
    ] as const) {
      plain.set(`${d}.${from}`, `lora_unet_double_blocks_${i}_${to}`);
    }
  }
  for (const i of blocks.single) {
    const s = `single_transformer_blocks.${i}`;
    // FLUX.1's single-stream MLP is 4x the width (mlp_ratio 4).
    fused.push({ name: `lora_unet_single_blocks_${i}_linear1`, parts: [`${s}.attn.to_q`, `${s}.attn.to_k`, `${s}.attn.to_v`, `${s}.proj_mlp`], rows: (h) => [h, h, h, 4 * h] });
    plain.set(`${s}.proj_out`, `lora_unet_single_blocks_${i}_linear2`);
    plain.set(`${s}.norm.linear`, `lora_unet_single_blocks_${i}_modulation_lin`);
  }
  return { fused, plain };
}

/**
 * Plan a flow-base LoRA in the chosen layout.
 *
 * @param file - the trainer's LoRA file (header read; data read here for fused modules)
 * @param arch - `flux` or `sd3`
 * @param format - `kohya` (FLUX.1 only) or `diffusers`
 * @param alphaHint - α from the file's metadata, if it says; default r (scale 1)
 * @param dtype - output precision
 * @throws BoothError `INVALID_ARGUMENT` for tensors that are not transformer adapters, unequal
 *   ranks, a module the chosen layout has no place for, or `kohya` asked for SD 3.5
 */
export async function planFlowLora(file: SafetensorsFile, arch: 'flux' | 'sd3', format: FlowLoraFormat, alphaHint: number | undefined, dtype: OutputDType): Promise<FlowLoraPlan> {
  const where = file.source.name;
  const adapters = collect(file, where);
  const rank = adapters[0]!.a.shape[0]!;
  const uneven = adapters.find((x) => x.a.shape[0] !== rank);
  if (uneven) throw new BoothError('INVALID_ARGUMENT', `${where}: modules have different ranks (${rank} and ${uneven.a.shape[0]} at ${uneven.module}); Booth converts LoRAs of one rank`);
  const alpha = alphaHint ?? rank;
  const out = floatDType(dtype);
  const width = adapters.find((x) => /\.attn\.to_q$/.test(x.module))?.a.shape[1] ?? adapters[0]!.a.shape[1]!;
  const tensors: PlannedTensor[] = [];

  if (format === 'diffusers') {
    const scale = alpha / rank;
    for (const x of adapters) {
      tensors.push({ name: `transformer.${x.module}.lora_A.weight`, dtype: out, shape: [...x.a.shape], parts: [{ ref: { file, info: x.a } }] });
      const b = await readF32(file, x.b);
      if (scale !== 1) for (let i = 0; i < b.length; i++) b[i] = b[i]! * scale;
      tensors.push({ name: `transformer.${x.module}.lora_B.weight`, dtype: out, shape: [...x.b.shape], parts: [{ bytes: encode(b, out) }] });
    }
    return { tensors, rank, alpha, modules: adapters.length, width };
  }
  if (arch !== 'flux') throw new BoothError('INVALID_ARGUMENT', `${where}: the kohya layout is offered for FLUX.1 LoRAs; SD 3.5 LoRAs are written in the diffusers layout, which ComfyUI and Forge load (--lora-format diffusers)`);

  const byModule = new Map(adapters.map((x) => [x.module, x]));
  const indices = (re: RegExp) => [...new Set(adapters.map((x) => re.exec(x.module)?.[1]).filter((v): v is string => v !== undefined).map(Number))].sort((p, q) => p - q);
  const { fused, plain } = fluxModules({ double: indices(/^transformer_blocks\.(\d+)\./), single: indices(/^single_transformer_blocks\.(\d+)\./) });
  const used = new Set<string>();
  let modules = 0;
  for (const f of fused) {
    const present = f.parts.map((p) => byModule.get(p));
    if (present.every((p) => p === undefined)) continue;
    const n = f.parts.length;
    const rows = f.rows(width).map((r, i) => present[i]?.b.shape[0] ?? r);
    const inWidth = present.find((p) => p !== undefined)!.a.shape[1]!;
    // down: the parts' A stacked (zeros for a part without an adapter).
    const downParts = present.map((p) => (p ? { ref: { file, info: p.a } } : { bytes: new Uint8Array(rank * inWidth * (out === 'F32' ? 4 : 2)) }));
    tensors.push({ name: `${f.name}.lora_down.weight`, dtype: out, shape: [n * rank, inWidth], parts: downParts });
    // up: block-diagonal, part i's B at its rows and at columns i*r..(i+1)*r.
    const total = rows.reduce((s, r) => s + r, 0);
    const up = new Float32Array(total * n * rank);
    let row0 = 0;
    for (let i = 0; i < n; i++) {
      const p = present[i];
      if (p) {
        const b = await readF32(file, p.b);
        for (let r = 0; r < rows[i]!; r++) up.set(b.subarray(r * rank, (r + 1) * rank), (row0 + r) * n * rank + i * rank);
        used.add(p.module);
      }
      row0 += rows[i]!;
    }
    tensors.push({ name: `${f.name}.lora_up.weight`, dtype: out, shape: [total, n * rank], parts: [{ bytes: encode(up, out) }] });
    tensors.push({ name: `${f.name}.alpha`, dtype: out, shape: [], parts: [{ bytes: scalar(n * alpha, out) }] });
    modules++;
  }
  for (const [module, name] of plain) {
    const x = byModule.get(module);
    if (!x) continue;
    tensors.push({ name: `${name}.lora_down.weight`, dtype: out, shape: [...x.a.shape], parts: [{ ref: { file, info: x.a } }] });
    tensors.push({ name: `${name}.lora_up.weight`, dtype: out, shape: [...x.b.shape], parts: [{ ref: { file, info: x.b } }] });
    tensors.push({ name: `${name}.alpha`, dtype: out, shape: [], parts: [{ bytes: scalar(alpha, out) }] });
    used.add(module);
    modules++;
  }
  const left = adapters.filter((x) => !used.has(x.module)).map((x) => x.module);
  if (left.length > 0) {
    throw new BoothError('INVALID_ARGUMENT', `${where}: ${left.length} adapted module(s) have no place in the kohya FLUX.1 layout: ${left.slice(0, 10).join('; ')}${left.length > 10 ? '; …' : ''}; use --lora-format diffusers`);
  }
  return { tensors, rank, alpha, modules, width };
}
