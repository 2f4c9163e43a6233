/**
 * SD 3.5's transformer: Diffusers' `SD3Transformer2DModel` → the original MMDiT names that
 * Stability AI's single files use (`model.diffusion_model.joint_blocks.<i>.x_block.attn.qkv…`),
 * which ComfyUI, Forge and `SD3Transformer2DModel.from_single_file` load.
 *
 * Two derivations, written independently as for the UNet (layouts.ts): {@link mmditShapes} builds
 * the original tensor list from the config the way Stability's `mmditx.py` builds its modules —
 * `x_embedder` patch convolution, learned `pos_embed` over `pos_embed_max_size`², timestep (`t_`)
 * and pooled-text (`y_`) embedders, `context_embedder`, `joint_blocks` of an image (`x_block`) and
 * a text (`context_block`) half with adaLN modulation (6 chunks, 9 for MMDiT-X dual-attention
 * blocks, 2 for the last block's text half, which only feeds attention), fused `qkv`, `proj`, RMS
 * `ln_q`/`ln_k`, a 4× `mlp`, and `final_layer` — and {@link mapSd3Transformer} renames the
 * Diffusers tensors; the plan is checked against the former.
 *
 * Correspondence (the inverse of diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`):
 * `pos_embed.pos_embed` → `pos_embed`, `pos_embed.proj` → `x_embedder.proj`,
 * `time_text_embed.timestep_embedder.linear_1|2` → `t_embedder.mlp.0|2`, `…text_embedder…` →
 * `y_embedder.mlp.0|2`; per block `norm1.linear` → `x_block.adaLN_modulation.1`,
 * `norm1_context.linear` → `context_block.adaLN_modulation.1`, `attn.to_q|to_k|to_v` (stacked) →
 * `x_block.attn.qkv`, `attn.to_out.0` → `x_block.attn.proj`, `attn.norm_q|norm_k` →
 * `x_block.attn.ln_q|ln_k`, the `add_*` projections and `norm_added_*` → `context_block.attn…`,
 * `attn2.*` → `x_block.attn2.*`, `ff.net.0.proj|ff.net.2` → `x_block.mlp.fc1|fc2`,
 * `ff_context…` → `context_block.mlp…`; `norm_out.linear` → `final_layer.adaLN_modulation.1`,
 * `proj_out` → `final_layer.linear`. Diffusers' `AdaLayerNormContinuous` (the last block's text
 * half and the final layer) orders its output (scale, shift); the original orders (shift, scale),
 * so those two tensors are written with their halves swapped.
 */
import { BoothError } from '../errors.js';
import type { ComponentMap, InputShapes } from './keymap.js';
import type { Shapes } from './layouts.js';

/** The fields of a Diffusers `SD3Transformer2DModel` config that decide its tensors. */
export interface Sd3Config {
  layers: number;
  heads: number;
  headDim: number;
  patchSize: number;
  inChannels: number;
  outChannels: number;
  jointAttentionDim: number;
  captionProjectionDim: number;
  pooledProjectionDim: number;
  posEmbedMaxSize: number;
  /** RMS QK-norm (`rms_norm`) or none. */
  qkNorm: boolean;
  /** Blocks with MMDiT-X's second image self-attention. */
  dualAttentionLayers: number[];
  /** Latent sample size; × 8 is the native resolution. */
  sampleSize: number;
}

function num(c: Record<string, unknown>, key: string, where: string, dflt?: number): number {
  const v = c[key] ?? dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw new BoothError('INVALID_ARGUMENT', `${where}: "${key}" must be a whole number, got ${JSON.stringify(v)}`);
  return v;
}

/**
 * Read the shape-deciding fields of an SD3 transformer config.
 * @throws BoothError `INVALID_ARGUMENT` naming a missing or malformed field
 */
export function sd3Config(raw: unknown, where = 'transformer/config.json'): Sd3Config {
  if (typeof raw !== 'object' || raw === null) throw new BoothError('INVALID_ARGUMENT', `${where} is not a JSON object`);
  const c = raw as Record<string, unknown>;
  const heads = num(c, 'num_attention_heads', where, 18);
  const headDim = num(c, 'attention_head_dim', where, 64);
  const dual = c.dual_attention_layers ?? [];
  if (!Array.isArray(dual) || dual.some((x) => typeof x !== 'number')) throw new BoothError('INVALID_ARGUMENT', `${where}: "dual_attention_layers" must be a list of block indices`);
  const inChannels = num(c, 'in_channels', where, 16);
  return {
    layers: num(c, 'num_layers', where, 18),
    heads,
    headDim,
    patchSize: num(c, 'patch_size', where, 2),
    inChannels,
    outChannels: c.out_channels === null || c.out_channels === undefined ? inChannels : num(c, 'out_channels', where),
    jointAttentionDim: num(c, 'joint_attention_dim', where, 4096),
    captionProjectionDim: num(c, 'caption_projection_dim', where, heads * headDim),
    pooledProjectionDim: num(c, 'pooled_projection_dim', where, 2048),
    posEmbedMaxSize: num(c, 'pos_embed_max_size', where, 96),
    qkNorm: c.qk_norm === 'rms_norm',
    dualAttentionLayers: dual as number[],
    sampleSize: num(c, 'sample_size', where, 128),
  };
}

/** Tensors of the original MMDiT (names under `model.diffusion_model.`) for a config. */
export function mmditShapes(cfg: Sd3Config): Shapes {
  const s: Shapes = new Map();
  const h = cfg.heads * cfg.headDim;
  const lin = (name: string, out: number, inp: number) => {
    s.set(`${name}.weight`, [out, inp]);
    s.set(`${name}.bias`, [out]);
  };
  s.set('pos_embed', [1, cfg.posEmbedMaxSize * cfg.posEmbedMaxSize, h]);
  s.set('x_embedder.proj.weight', [h, cfg.inChannels, cfg.patchSize, cfg.patchSize]);
  s.set('x_embedder.proj.bias', [h]);
  // The timestep is embedded sinusoidally in 256 frequencies before the MLP.
  lin('t_embedder.mlp.0', h, 256);
  lin('t_embedder.mlp.2', h, h);
  lin('y_embedder.mlp.0', h, cfg.pooledProjectionDim);
  lin('y_embedder.mlp.2', h, h);
  lin('context_embedder', cfg.captionProjectionDim, cfg.jointAttentionDim);
  const attention = (p: string, withProj: boolean) => {
    lin(`${p}.qkv`, 3 * h, h);
    if (withProj) lin(`${p}.proj`, h, h);
    if (cfg.qkNorm) {
      s.set(`${p}.ln_q.weight`, [cfg.headDim]);
      s.set(`${p}.ln_k.weight`, [cfg.headDim]);
    }
  };
  for (let i = 0; i < cfg.layers; i++) {
    const last = i === cfg.layers - 1;
    const dual = cfg.dualAttentionLayers.includes(i);
    const x = `joint_blocks.${i}.x_block`;
    lin(`${x}.adaLN_modulation.1`, (dual ? 9 : 6) * h, h);
    attention(`${x}.attn`, true);
    if (dual) attention(`${x}.attn2`, true);
    lin(`${x}.mlp.fc1`, 4 * h, h);
    lin(`${x}.mlp.fc2`, h, 4 * h);
    const c = `joint_blocks.${i}.context_block`;
    lin(`${c}.adaLN_modulation.1`, (last ? 2 : 6) * h, h);
    attention(`${c}.attn`, !last);
    if (!last) {
      lin(`${c}.mlp.fc1`, 4 * h, h);
      lin(`${c}.mlp.fc2`, h, 4 * h);
    }
  }
  lin('final_layer.adaLN_modulation.1', 2 * h, h);
  lin('final_layer.linear', cfg.patchSize * cfg.patchSize * cfg.outChannels, h);
  return s;
}

const TOP: Record<string, string> = {
  'pos_embed.pos_embed': 'pos_embed',
  'pos_embed.proj.weight': 'x_embedder.proj.weight',
  'pos_embed.proj.bias': 'x_embedder.proj.bias',
  'time_text_embed.timestep_embedder.linear_1': 't_embedder.mlp.0',
  'time_text_embed.timestep_embedder.linear_2': 't_embedder.mlp.2',
  'time_text_embed.text_embedder.linear_1': 'y_embedder.mlp.0',
  'time_text_embed.text_embedder.linear_2': 'y_embedder.mlp.2',
  context_embedder: 'context_embedder',
  proj_out: 'final_layer.linear',
};

const BLOCK: Record<string, string> = {
  'norm1.linear': 'x_block.adaLN_modulation.1',
  'attn.to_out.0': 'x_block.attn.proj',
  'attn.norm_q': 'x_block.attn.ln_q',
  'attn.norm_k': 'x_block.attn.ln_k',
  'attn.to_add_out': 'context_block.attn.proj',
  'attn.norm_added_q': 'context_block.attn.ln_q',
  'attn.norm_added_k': 'context_block.attn.ln_k',
  'attn2.to_out.0': 'x_block.attn2.proj',
  'attn2.norm_q': 'x_block.attn2.ln_q',
  'attn2.norm_k': 'x_block.attn2.ln_k',
  'ff.net.0.proj': 'x_block.mlp.fc1',
  'ff.net.2': 'x_block.mlp.fc2',
  'ff_context.net.0.proj': 'context_block.mlp.fc1',
  'ff_context.net.2': 'context_block.mlp.fc2',
};

/** Fused projections: original name → the Diffusers projections stacked in it, q, k, v. */
const QKV: Record<string, string[]> = {
  'x_block.attn.qkv': ['attn.to_q', 'attn.to_k', 'attn.to_v'],
  'context_block.attn.qkv': ['attn.add_q_proj', 'attn.add_k_proj', 'attn.add_v_proj'],
  'x_block.attn2.qkv': ['attn2.to_q', 'attn2.to_k', 'attn2.to_v'],
};

/**
 * Map a Diffusers SD3 transformer to `model.diffusion_model.…`.
 *
 * @param inputs - the transformer's tensors (name → shape)
 * @param cfg - its config (the number of blocks decides which block's text half is the last)
 * @returns mapped tensors (q, k, v stacked into `qkv`; (scale, shift) halves swapped where the
 *   two code bases order them differently), and the tensors it does not know
 */
export function mapSd3Transformer(inputs: InputShapes, cfg: Sd3Config, prefix = 'model.diffusion_model.'): ComponentMap {
  const out: ComponentMap = { mapped: [], dropped: [], unknown: [] };
  const taken = new Set<string>();
  const swapped = (from: string, to: string) => {
    const shape = inputs.get(from);
    if (!shape) return;
    const half = (shape[0] ?? 0) / 2;
    out.mapped.push({ name: prefix + to, shape: [...shape], parts: [from, from], slices: [[half, 2 * half], [0, half]] });
    taken.add(from);
  };
  const lastContext = `transformer_blocks.${cfg.layers - 1}.norm1_context.linear`;
  for (const suffix of ['weight', 'bias']) {
    swapped(`norm_out.linear.${suffix}`, `final_layer.adaLN_modulation.1.${suffix}`);
    swapped(`${lastContext}.${suffix}`, `joint_blocks.${cfg.layers - 1}.context_block.adaLN_modulation.1.${suffix}`);
  }
  for (let i = 0; i < cfg.layers; i++) {
    for (const [to, froms] of Object.entries(QKV)) {
      for (const suffix of ['weight', 'bias']) {
        const names = froms.map((f) => `transformer_blocks.${i}.${f}.${suffix}`);
        const shapes = names.map((n) => inputs.get(n));
        if (shapes.every((x) => x === undefined)) continue;
        if (shapes.some((x) => x === undefined)) {
          out.unknown.push(...names.filter((n) => !inputs.has(n)).map((n) => `${n} (missing, needed for ${to})`));
          continue;
        }
        const first = shapes[0]!;
        out.mapped.push({ name: `${prefix}joint_blocks.${i}.${to}.${suffix}`, shape: [3 * (first[0] ?? 0), ...first.slice(1)], parts: names });
        for (const n of names) taken.add(n);
      }
    }
  }
  for (const [name, shape] of inputs) {
    if (taken.has(name)) continue;
    let to: string | undefined;
    const top = /^(.+)\.(weight|bias)$/.exec(name);
    if (name === 'pos_embed.pos_embed') to = TOP[name];
    else if (top && TOP[top[1]!] !== undefined) to = `${TOP[top[1]!]}.${top[2]}`;
    else if (TOP[name] !== undefined) to = TOP[name];
    else {
      const m = /^transformer_blocks\.(\d+)\.(.+)\.(weight|bias)$/.exec(name);
      const part = m ? BLOCK[m[2]!] ?? (m[2] === 'norm1_context.linear' ? 'context_block.adaLN_modulation.1' : undefined) : undefined;
      if (m && part) to = `joint_blocks.${m[1]}.${part}.${m[3]}`;
    }
    if (to === undefined) out.unknown.push(name);
    else out.mapped.push({ name: prefix + to, shape: [...shape], parts: [name] });
  }
  return out;
}
