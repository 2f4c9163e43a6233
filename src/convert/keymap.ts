/**
 * Key maps from Diffusers/transformers tensor names to the original single-file names, per
 * component, as published by the reference code bases: the UNet's `down_blocks`/`mid_block`/
 * `up_blocks` become `input_blocks`/`middle_block`/`output_blocks` (resnet parameters renamed,
 * attention transformers kept by name, down/upsamplers placed after the last resnet of a level
 * — at index 2 when the level has attention, 1 otherwise), `time_embedding` → `time_embed`, SDXL's
 * `add_embedding` → `label_emb.0`; the VAE's blocks become `down.N.block`/`up.N.block` with the
 * decoder's order reversed and the mid-block attention as 1×1 convolutions (weights reshaped from
 * [C,C] to [C,C,1,1], biases unchanged); CLIP text encoders keep their transformers names under a
 * prefix (SD 1.x, SDXL's first encoder) or take OpenCLIP names (SD 2.x, SDXL's second encoder)
 * with q/k/v concatenated into `in_proj_*` and `text_projection` transposed. Every input tensor
 * comes back either mapped, dropped with a reason (a buffer the loader recomputes), or unknown —
 * callers refuse unknown tensors rather than silently losing weights.
 */
import type { UNetConfig } from './layouts.js';

/** One output tensor: its name, shape, and the input tensors whose data it is (concatenated along dim 0). */
export interface MappedTensor {
  /** Output name, prefix included. */
  name: string;
  /** Output shape. */
  shape: number[];
  /** Input tensor names, in order. */
  parts: string[];
  /** Per part, the rows `[start, end)` of dimension 0 to take (absent: the whole tensor). */
  slices?: Array<[number, number] | null>;
  /** The single 2-D part is written transposed. */
  transpose?: boolean;
}

/** Result of mapping one component. */
export interface ComponentMap {
  mapped: MappedTensor[];
  /** Known tensors with no place in the output (e.g. buffers recomputed on load), with why. */
  dropped: Array<{ name: string; reason: string }>;
  /** Tensors this map does not know: the caller reports them and refuses the conversion. */
  unknown: string[];
}

/** Input tensors of a component: name → shape. */
export type InputShapes = ReadonlyMap<string, readonly number[]>;

const RESNET: Record<string, string> = {
  norm1: 'in_layers.0',
  conv1: 'in_layers.2',
  time_emb_proj: 'emb_layers.1',
  norm2: 'out_layers.0',
  conv2: 'out_layers.3',
  conv_shortcut: 'skip_connection',
};

/**
 * Map one Diffusers UNet parameter name to its original name (without `model.diffusion_model.`).
 *
 * @param name - e.g. `down_blocks.1.attentions.0.proj_in.weight`
 * @param cfg - the UNet config (layers per block and which up blocks have attention decide indices)
 * @returns the original name, e.g. `input_blocks.4.1.proj_in.weight`, or null when unknown
 */
export function unetKey(name: string, cfg: UNetConfig): string | null {
  const L = cfg.layersPerBlock;
  const simple: Record<string, string> = {
    'time_embedding.linear_1': 'time_embed.0',
    'time_embedding.linear_2': 'time_embed.2',
    'add_embedding.linear_1': 'label_emb.0.0',
    'add_embedding.linear_2': 'label_emb.0.2',
    conv_in: 'input_blocks.0.0',
    conv_norm_out: 'out.0',
    conv_out: 'out.2',
  };
  const top = /^([a-z_]+(?:\.linear_[12])?)\.(weight|bias)$/.exec(name);
  if (top?.[1] !== undefined && simple[top[1]] !== undefined) return `${simple[top[1]]}.${top[2]}`;
  const resnet = (rest: string): string | null => {
    const m = /^([a-z_0-9]+)\.(weight|bias)$/.exec(rest);
    const to = m?.[1] === undefined ? undefined : RESNET[m[1]];
    return to === undefined ? null : `${to}.${m?.[2]}`;
  };
  let m = /^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$/.exec(name);
  if (m) {
    const i = Number(m[1]);
    const j = Number(m[3]);
    if (j >= L) return null;
    const at = `input_blocks.${(L + 1) * i + j + 1}`;
    if (m[2] === 'attentions') return `${at}.1.${m[4]}`;
    const r = resnet(m[4] ?? '');
    return r === null ? null : `${at}.0.${r}`;
  }
  m = /^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)$/.exec(name);
  if (m) return `input_blocks.${(L + 1) * (Number(m[1]) + 1)}.0.op.${m[2]}`;
  m = /^mid_block\.resnets\.([01])\.(.+)$/.exec(name);
  if (m) {
    const r = resnet(m[2] ?? '');
    return r === null ? null : `middle_block.${2 * Number(m[1])}.${r}`;
  }
  m = /^mid_block\.attentions\.0\.(.+)$/.exec(name);
  if (m) return `middle_block.1.${m[1]}`;
  m = /^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$/.exec(name);
  if (m) {
    const i = Number(m[1]);
    const j = Number(m[3]);
    if (j > L) return null;
    const at = `output_blocks.${(L + 1) * i + j}`;
    if (m[2] === 'attentions') return `${at}.1.${m[4]}`;
    const r = resnet(m[4] ?? '');
    return r === null ? null : `${at}.0.${r}`;
  }
  m = /^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)$/.exec(name);
  if (m) {
    const i = Number(m[1]);
    return `output_blocks.${(L + 1) * i + L}.${cfg.upAttention[i] ? 2 : 1}.conv.${m[2]}`;
  }
  return null;
}

/** Map a Diffusers UNet to `model.diffusion_model.…`. */
export function mapUNet(inputs: InputShapes, cfg: UNetConfig, prefix = 'model.diffusion_model.'): ComponentMap {
  const out: ComponentMap = { mapped: [], dropped: [], unknown: [] };
  for (const [name, shape] of inputs) {
    const to = unetKey(name, cfg);
    if (to === null) out.unknown.push(name);
    else out.mapped.push({ name: prefix + to, shape: [...shape], parts: [name] });
  }
  return out;
}

const VAE_ATTN: Record<string, string> = {
  group_norm: 'norm',
  to_q: 'q',
  query: 'q',
  to_k: 'k',
  key: 'k',
  to_v: 'v',
  value: 'v',
  'to_out.0': 'proj_out',
  proj_attn: 'proj_out',
};

/**
 * Map one Diffusers VAE parameter name to its original name (without `first_stage_model.`).
 * Accepts the attention names of diffusers before 0.14 (`query`, `key`, `value`, `proj_attn`) too.
 *
 * @param name - e.g. `decoder.up_blocks.0.resnets.2.conv1.weight`
 * @param levels - number of resolution levels (length of block_out_channels)
 * @returns the original name (e.g. `decoder.up.3.block.2.conv1.weight`) and whether the
 *   tensor is a mid-block attention weight (reshaped to 1×1 convolution), or null when unknown
 */
export function vaeKey(name: string, levels: number): { name: string; attentionWeight: boolean } | null {
  let m = /^(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)\.(weight|bias)$/.exec(name);
  if (m) return { name: `${m[1]}.${m[2] === 'conv_norm_out' ? 'norm_out' : m[2]}.${m[3]}`, attentionWeight: false };
  m = /^(quant_conv|post_quant_conv)\.(weight|bias)$/.exec(name);
  if (m) return { name, attentionWeight: false };
  const resnet = (rest: string) => rest.replace(/^conv_shortcut\./, 'nin_shortcut.');
  m = /^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.((?:norm1|norm2|conv1|conv2|conv_shortcut)\.(?:weight|bias))$/.exec(name);
  if (m) return { name: `encoder.down.${m[1]}.block.${m[2]}.${resnet(m[3] ?? '')}`, attentionWeight: false };
  m = /^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)$/.exec(name);
  if (m) return { name: `encoder.down.${m[1]}.downsample.conv.${m[2]}`, attentionWeight: false };
  m = /^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.((?:norm1|norm2|conv1|conv2|conv_shortcut)\.(?:weight|bias))$/.exec(name);
  if (m) return { name: `decoder.up.${levels - 1 - Number(m[1])}.block.${m[2]}.${resnet(m[3] ?? '')}`, attentionWeight: false };
  m = /^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)$/.exec(name);
  if (m) return { name: `decoder.up.${levels - 1 - Number(m[1])}.upsample.conv.${m[2]}`, attentionWeight: false };
  m = /^(encoder|decoder)\.mid_block\.resnets\.([01])\.((?:norm1|norm2|conv1|conv2)\.(?:weight|bias))$/.exec(name);
  if (m) return { name: `${m[1]}.mid.block_${Number(m[2]) + 1}.${m[3]}`, attentionWeight: false };
  m = /^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0|query|key|value|proj_attn)\.(weight|bias)$/.exec(name);
  if (m) {
    const to = VAE_ATTN[m[2] ?? ''] ?? '';
    return { name: `${m[1]}.mid.attn_1.${to}.${m[3]}`, attentionWeight: to !== 'norm' && m[3] === 'weight' };
  }
  return null;
}

/** Map a Diffusers VAE to `first_stage_model.…`. */
export function mapVae(inputs: InputShapes, levels: number, prefix = 'first_stage_model.'): ComponentMap {
  const out: ComponentMap = { mapped: [], dropped: [], unknown: [] };
  for (const [name, shape] of inputs) {
    const to = vaeKey(name, levels);
    if (to === null) {
      out.unknown.push(name);
      continue;
    }
    // The original attention is a 1×1 convolution: same bytes, two trailing unit dimensions.
    const s = to.attentionWeight && shape.length === 2 ? [...shape, 1, 1] : [...shape];
    out.mapped.push({ name: prefix + to.name, shape: s, parts: [name] });
  }
  return out;
}

/**
 * A transformers CLIP text-model tensor name in its classic form. transformers 5 saves
 * `CLIPTextModel` without the `text_model.` level (`embeddings.…`, `encoder.…`,
 * `final_layer_norm.…`), while checkpoints saved by earlier versions (and every published SD
 * release) have it; both load in transformers, so both are accepted here.
 * @example clipTextName('encoder.layers.0.mlp.fc1.weight') // 'text_model.encoder.layers.0.mlp.fc1.weight'
 */
export function clipTextName(name: string): string {
  return /^(embeddings|encoder|final_layer_norm)\./.test(name) ? `text_model.${name}` : name;
}

/** Map a transformers CLIP text model under a prefix, names unchanged (SD 1.x; SDXL's first encoder). */
export function mapHfClip(inputs: InputShapes, prefix: string): ComponentMap {
  const out: ComponentMap = { mapped: [], dropped: [], unknown: [] };
  for (const [name, shape] of inputs) {
    const classic = clipTextName(name);
    if (/^text_model\.(embeddings|encoder\.layers\.\d+|final_layer_norm)\./.test(classic)) out.mapped.push({ name: prefix + classic, shape: [...shape], parts: [name] });
    else out.unknown.push(name);
  }
  return out;
}

const OPENCLIP_LAYER: Record<string, string> = {
  'self_attn.out_proj': 'attn.out_proj',
  layer_norm1: 'ln_1',
  layer_norm2: 'ln_2',
  'mlp.fc1': 'mlp.c_fc',
  'mlp.fc2': 'mlp.c_proj',
};

/**
 * Map a transformers CLIP text model to OpenCLIP names under `prefix` (SD 2.x:
 * `cond_stage_model.model.`; SDXL's second encoder: `conditioner.embedders.1.model.`).
 * q/k/v projections are concatenated (q, k, v order) into `attn.in_proj_weight`/`in_proj_bias`;
 * `text_projection.weight` ([proj, d], a Linear's [out, in]) becomes `text_projection` ([d, proj],
 * OpenCLIP multiplies `x @ text_projection`), so it is transposed.
 */
export function mapOpenClip(inputs: InputShapes, prefix: string): ComponentMap {
  const out: ComponentMap = { mapped: [], dropped: [], unknown: [] };
  const qkv = new Map<string, Map<string, string>>();
  for (const [name, shape] of inputs) {
    const classic = clipTextName(name);
    let m = /^text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$/.exec(classic);
    if (m) {
      const key = `${m[1]}.${m[3]}`;
      const group = qkv.get(key) ?? new Map<string, string>();
      group.set(m[2] ?? '', name);
      qkv.set(key, group);
      continue;
    }
    m = /^text_model\.encoder\.layers\.(\d+)\.(self_attn\.out_proj|layer_norm1|layer_norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)$/.exec(classic);
    if (m) {
      out.mapped.push({ name: `${prefix}transformer.resblocks.${m[1]}.${OPENCLIP_LAYER[m[2] ?? '']}.${m[3]}`, shape: [...shape], parts: [name] });
      continue;
    }
    const fixed: Record<string, string> = {
      'text_model.embeddings.token_embedding.weight': 'token_embedding.weight',
      'text_model.embeddings.position_embedding.weight': 'positional_embedding',
      'text_model.final_layer_norm.weight': 'ln_final.weight',
      'text_model.final_layer_norm.bias': 'ln_final.bias',
    };
    const f = fixed[classic];
    if (f !== undefined) out.mapped.push({ name: prefix + f, shape: [...shape], parts: [name] });
    else if (classic === 'text_model.embeddings.position_ids') out.dropped.push({ name, reason: 'OpenCLIP has no position_ids buffer (positions are implicit)' });
    else if (name === 'text_projection.weight' && shape.length === 2) {
      out.mapped.push({ name: `${prefix}text_projection`, shape: [shape[1] ?? 0, shape[0] ?? 0], parts: [name], transpose: true });
    } else out.unknown.push(name);
  }
  for (const [key, group] of qkv) {
    const [layer, kind] = key.split('.');
    const q = group.get('q');
    const k = group.get('k');
    const v = group.get('v');
    const shapes = [q, k, v].map((n) => (n === undefined ? undefined : inputs.get(n)));
    const [sq, sk, sv] = shapes;
    const same = sq !== undefined && sk !== undefined && sv !== undefined && JSON.stringify(sq) === JSON.stringify(sk) && JSON.stringify(sq) === JSON.stringify(sv);
    if (q === undefined || k === undefined || v === undefined || !same || sq === undefined) {
      // An incomplete or inconsistent triple cannot be concatenated: report its members as unknown.
      out.unknown.push(...[q, k, v].filter((n): n is string => n !== undefined).map((n) => `${n} (q/k/v projections of layer ${layer} incomplete or of different shapes)`));
      continue;
    }
    const shape = [3 * (sq[0] ?? 0), ...sq.slice(1)];
    out.mapped.push({ name: `${prefix}transformer.resblocks.${layer}.attn.in_proj_${kind}`, shape, parts: [q, k, v] });
  }
  return out;
}
