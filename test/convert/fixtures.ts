/**
 * Test fixtures for the converter: Diffusers folders with the exact tensor names of SD 1.5,
 * SD 2.1 and SDXL base (from the configs in ../shared/models, optionally with every width divided
 * so the data stays tiny), written by a small safetensors writer and read by a small reader that
 * are independent of src/convert, plus a reverse key map (single-file → Diffusers) of our own.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { clipConfig, diffusersUNetShapes, diffusersVaeShapes, hfClipShapes, unetConfig, vaeConfig } from '../../src/convert/layouts.js';

export const SHARED_MODELS = fileURLToPath(new URL('../../../shared/models', import.meta.url));
export const haveShared = existsSync(path.join(SHARED_MODELS, 'sd15', 'unet', 'config.json'));
export const sharedSkipReason = `skipping: ${SHARED_MODELS} is absent (the real SD configs live in ../shared/models)`;

export type ModelName = 'sd15' | 'sd21' | 'sdxl-base';
export type Json = Record<string, unknown>;
export interface Configs {
  unet: Json;
  vae: Json;
  text_encoder: Json;
  text_encoder_2?: Json;
  scheduler?: Json;
}

export async function sharedConfigs(model: ModelName): Promise<Configs> {
  const read = async (c: string) => JSON.parse(await readFile(path.join(SHARED_MODELS, model, c, c === 'scheduler' ? 'scheduler_config.json' : 'config.json'), 'utf8')) as Json;
  const out: Configs = { unet: await read('unet'), vae: await read('vae'), text_encoder: await read('text_encoder'), scheduler: await read('scheduler') };
  if (model === 'sdxl-base') out.text_encoder_2 = await read('text_encoder_2');
  return out;
}

/** Divide every width by `f` (names and structure unchanged), so tensors hold a few values each. */
export function shrink(c: Configs, f: number): Configs {
  const d = (v: unknown) => Math.max(1, Math.round((v as number) / f));
  const unet: Json = { ...c.unet, block_out_channels: (c.unet.block_out_channels as number[]).map(d), cross_attention_dim: d(c.unet.cross_attention_dim) };
  if (unet.projection_class_embeddings_input_dim !== undefined && unet.projection_class_embeddings_input_dim !== null) unet.projection_class_embeddings_input_dim = d(unet.projection_class_embeddings_input_dim);
  const vae = { ...c.vae, block_out_channels: (c.vae.block_out_channels as number[]).map(d) };
  const te = (t: Json) => ({ ...t, hidden_size: d(t.hidden_size), intermediate_size: d(t.intermediate_size), projection_dim: d(t.projection_dim), vocab_size: 32, max_position_embeddings: 7 });
  return { ...c, unet, vae, text_encoder: te(c.text_encoder), ...(c.text_encoder_2 ? { text_encoder_2: te(c.text_encoder_2) } : {}) };
}

/** A tiny safetensors writer, independent of src/convert: names sorted, 8-byte padded header. */
export function safetensorsBytes(tensors: Map<string, { dtype: string; shape: number[]; data: Uint8Array }>, metadata?: Record<string, string>): Buffer {
  const names = [...tensors.keys()].sort();
  const header: Record<string, unknown> = metadata ? { __metadata__: metadata } : {};
  let off = 0;
  for (const n of names) {
    const t = tensors.get(n);
    if (!t) continue;
    header[n] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.data.byteLength] };
    off += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += ' ';
  const hb = Buffer.from(json);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hb.byteLength));
  return Buffer.concat([len, hb, ...names.map((n) => tensors.get(n)?.data ?? new Uint8Array(0))]);
}

/** A tiny reader, independent of src/convert. */
export function readSafetensors(buf: Buffer): { metadata: Record<string, string>; tensors: Map<string, { dtype: string; shape: number[]; data: Buffer }> } {
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const { __metadata__: meta, ...rest } = header as Record<string, unknown>;
  const tensors = new Map<string, { dtype: string; shape: number[]; data: Buffer }>();
  for (const [k, v] of Object.entries(rest as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>)) {
    tensors.set(k, { dtype: v.dtype, shape: v.shape, data: buf.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]) });
  }
  return { metadata: (meta ?? {}) as Record<string, string>, tensors };
}

/** Deterministic pseudo-random floats (xorshift), different per tensor name. */
export function values(name: string, count: number): Float32Array {
  let s = 2166136261;
  for (const ch of name) s = Math.imul(s ^ ch.charCodeAt(0), 16777619) >>> 0;
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = ((s / 4294967296) * 2 - 1) * 0.1;
  }
  return out;
}

export interface FolderOptions {
  dtype?: 'F32' | 'F16';
  /** Split the UNet into this many shards with an index. */
  shards?: number;
  /** Write `<base>.<variant>.safetensors` names. */
  variant?: string;
  /** Include the position_ids buffer in text encoders (older transformers saved it). */
  positionIds?: boolean;
}

/** The Diffusers tensors (name → shape) of each component for these configs. */
export function componentShapes(c: Configs): Record<string, Map<string, number[]>> {
  const out: Record<string, Map<string, number[]>> = {
    unet: diffusersUNetShapes(unetConfig(c.unet)),
    vae: diffusersVaeShapes(vaeConfig(c.vae)),
    text_encoder: hfClipShapes(clipConfig(c.text_encoder), false),
  };
  if (c.text_encoder_2) out.text_encoder_2 = hfClipShapes(clipConfig(c.text_encoder_2), true);
  return out;
}

function f32ToF16Bytes(v: Float32Array): Uint8Array {
  const F16 = (globalThis as unknown as { Float16Array: new (a: ArrayLike<number>) => { buffer: ArrayBuffer } }).Float16Array;
  return new Uint8Array(new F16(v).buffer);
}

/** Write a Diffusers folder; returns every tensor's data (fp32 values) by component and name. */
export async function writeDiffusersFolder(dir: string, c: Configs, o: FolderOptions = {}): Promise<Record<string, Map<string, Float32Array>>> {
  const shapes = componentShapes(c);
  const all: Record<string, Map<string, Float32Array>> = {};
  for (const [comp, s] of Object.entries(shapes)) {
    await mkdir(path.join(dir, comp), { recursive: true });
    await writeFile(path.join(dir, comp, 'config.json'), JSON.stringify(c[comp as keyof Configs]));
    const data = new Map<string, Float32Array>();
    const tensors = new Map<string, { dtype: string; shape: number[]; data: Uint8Array }>();
    for (const [name, shape] of s) {
      const v = values(`${comp}/${name}`, shape.reduce((a, b) => a * b, 1));
      data.set(name, v);
      tensors.set(name, { dtype: o.dtype ?? 'F32', shape, data: o.dtype === 'F16' ? f32ToF16Bytes(v) : new Uint8Array(v.buffer) });
    }
    if (o.positionIds && comp.startsWith('text_encoder')) {
      const n = (c.text_encoder.max_position_embeddings as number) ?? 77;
      const ids = new BigInt64Array(n).map((_, i) => BigInt(i));
      tensors.set('text_model.embeddings.position_ids', { dtype: 'I64', shape: [1, n], data: new Uint8Array(ids.buffer) });
    }
    all[comp] = data;
    const base = comp.startsWith('text_encoder') ? 'model' : 'diffusion_pytorch_model';
    const v = o.variant ? `.${o.variant}` : '';
    if (comp === 'unet' && o.shards && o.shards > 1) {
      const names = [...tensors.keys()];
      const per = Math.ceil(names.length / o.shards);
      const weightMap: Record<string, string> = {};
      for (let k = 0; k < o.shards; k++) {
        const file = `${base}${v}-${String(k + 1).padStart(5, '0')}-of-${String(o.shards).padStart(5, '0')}.safetensors`;
        const part = new Map(names.slice(k * per, (k + 1) * per).map((n) => [n, tensors.get(n) ?? { dtype: 'F32', shape: [0], data: new Uint8Array(0) }]));
        for (const n of part.keys()) weightMap[n] = file;
        await writeFile(path.join(dir, comp, file), safetensorsBytes(part));
      }
      await writeFile(path.join(dir, comp, `${base}.safetensors.index${v}.json`), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    } else {
      await writeFile(path.join(dir, comp, `${base}${v}.safetensors`), safetensorsBytes(tensors));
    }
  }
  if (c.scheduler) {
    await mkdir(path.join(dir, 'scheduler'), { recursive: true });
    await writeFile(path.join(dir, 'scheduler', 'scheduler_config.json'), JSON.stringify(c.scheduler));
  }
  return all;
}

// ---------------------------------------------------------------------------------------------
// Reverse map: single-file names → Diffusers names (our own, written from the original layout).

const RES_BACK: Record<string, string> = {
  'in_layers.0': 'norm1',
  'in_layers.2': 'conv1',
  'emb_layers.1': 'time_emb_proj',
  'out_layers.0': 'norm2',
  'out_layers.3': 'conv2',
  skip_connection: 'conv_shortcut',
};
function resBack(rest: string): string {
  for (const [k, v] of Object.entries(RES_BACK)) if (rest.startsWith(`${k}.`)) return v + rest.slice(k.length);
  throw new Error(`unknown resnet param ${rest}`);
}

/** Reverse of the UNet map for layers-per-block L. */
export function unetBack(name: string, L: number): string {
  const fixed: Record<string, string> = { 'time_embed.0': 'time_embedding.linear_1', 'time_embed.2': 'time_embedding.linear_2', 'label_emb.0.0': 'add_embedding.linear_1', 'label_emb.0.2': 'add_embedding.linear_2', 'input_blocks.0.0': 'conv_in', 'out.0': 'conv_norm_out', 'out.2': 'conv_out' };
  const m0 = /^(.*)\.(weight|bias)$/.exec(name);
  if (m0?.[1] !== undefined && fixed[m0[1]] !== undefined) return `${fixed[m0[1]]}.${m0[2]}`;
  let m = /^input_blocks\.(\d+)\.(\d)\.(.+)$/.exec(name);
  if (m) {
    const n = Number(m[1]) - 1;
    const i = Math.floor(n / (L + 1));
    const j = n % (L + 1);
    if (j === L) return `down_blocks.${i}.downsamplers.0.conv.${(m[3] ?? '').replace(/^op\./, '')}`;
    return m[2] === '0' ? `down_blocks.${i}.resnets.${j}.${resBack(m[3] ?? '')}` : `down_blocks.${i}.attentions.${j}.${m[3]}`;
  }
  m = /^middle_block\.(\d)\.(.+)$/.exec(name);
  if (m) return m[1] === '1' ? `mid_block.attentions.0.${m[2]}` : `mid_block.resnets.${Number(m[1]) / 2}.${resBack(m[2] ?? '')}`;
  m = /^output_blocks\.(\d+)\.(\d)\.(.+)$/.exec(name);
  if (m) {
    const n = Number(m[1]);
    const i = Math.floor(n / (L + 1));
    const j = n % (L + 1);
    const rest = m[3] ?? '';
    if (m[2] === '0') return `up_blocks.${i}.resnets.${j}.${resBack(rest)}`;
    if (rest.startsWith('conv.')) return `up_blocks.${i}.upsamplers.0.${rest}`;
    return `up_blocks.${i}.attentions.${j}.${rest}`;
  }
  throw new Error(`unknown unet key ${name}`);
}

/** Reverse of the VAE map for `levels` resolution levels. */
export function vaeBack(name: string, levels: number): string {
  const attn: Record<string, string> = { norm: 'group_norm', q: 'to_q', k: 'to_k', v: 'to_v', proj_out: 'to_out.0' };
  let m = /^(encoder|decoder)\.(down|up)\.(\d+)\.(block|downsample|upsample)\.(.+)$/.exec(name);
  if (m) {
    const i = m[2] === 'up' ? levels - 1 - Number(m[3]) : Number(m[3]);
    const blocks = m[2] === 'up' ? 'up_blocks' : 'down_blocks';
    if (m[4] === 'block') {
      const [j, ...rest] = (m[5] ?? '').split('.');
      return `${m[1]}.${blocks}.${i}.resnets.${j}.${rest.join('.').replace(/^nin_shortcut/, 'conv_shortcut')}`;
    }
    return `${m[1]}.${blocks}.${i}.${m[2] === 'up' ? 'upsamplers' : 'downsamplers'}.0.${m[5]}`;
  }
  m = /^(encoder|decoder)\.mid\.(block_1|block_2|attn_1)\.(.+)$/.exec(name);
  if (m) {
    if (m[2] !== 'attn_1') return `${m[1]}.mid_block.resnets.${m[2] === 'block_1' ? 0 : 1}.${m[3]}`;
    const [p, wb] = (m[3] ?? '').split('.');
    return `${m[1]}.mid_block.attentions.0.${attn[p ?? '']}.${wb}`;
  }
  m = /^(encoder|decoder)\.norm_out\.(.+)$/.exec(name);
  if (m) return `${m[1]}.conv_norm_out.${m[2]}`;
  return name;
}

/** Reverse of the OpenCLIP map; q/k/v come back as three names for in_proj (split along dim 0). */
export function openClipBack(name: string): string[] {
  const fixed: Record<string, string> = { 'token_embedding.weight': 'text_model.embeddings.token_embedding.weight', positional_embedding: 'text_model.embeddings.position_embedding.weight', 'ln_final.weight': 'text_model.final_layer_norm.weight', 'ln_final.bias': 'text_model.final_layer_norm.bias', text_projection: 'text_projection.weight' };
  if (fixed[name]) return [fixed[name]];
  const m = /^transformer\.resblocks\.(\d+)\.(.+)$/.exec(name);
  if (!m) throw new Error(`unknown openclip key ${name}`);
  const p = `text_model.encoder.layers.${m[1]}`;
  const rest = m[2] ?? '';
  if (rest === 'attn.in_proj_weight') return ['q', 'k', 'v'].map((x) => `${p}.self_attn.${x}_proj.weight`);
  if (rest === 'attn.in_proj_bias') return ['q', 'k', 'v'].map((x) => `${p}.self_attn.${x}_proj.bias`);
  const map: Record<string, string> = { 'attn.out_proj': 'self_attn.out_proj', ln_1: 'layer_norm1', ln_2: 'layer_norm2', 'mlp.c_fc': 'mlp.fc1', 'mlp.c_proj': 'mlp.fc2' };
  for (const [k, v] of Object.entries(map)) if (rest.startsWith(`${k}.`)) return [`${p}.${v}${rest.slice(k.length)}`];
  throw new Error(`unknown openclip key ${name}`);
}

/** SD 1.5's configs (the fields that matter), for runs without ../shared: a fresh clone still converts. */
export const SD15_INLINE: Configs = {
  unet: {
    block_out_channels: [320, 640, 1280, 1280],
    down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
    up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
    layers_per_block: 2,
    cross_attention_dim: 768,
    in_channels: 4,
    out_channels: 4,
    sample_size: 64,
  },
  vae: { block_out_channels: [128, 256, 512, 512], layers_per_block: 2, latent_channels: 4, in_channels: 3, out_channels: 3 },
  text_encoder: { hidden_size: 768, intermediate_size: 3072, num_hidden_layers: 12, vocab_size: 49408, max_position_embeddings: 77, projection_dim: 768 },
};
