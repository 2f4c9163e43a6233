/**
 * Tensor layouts derived from model configs: which tensors (names and shapes) a Diffusers
 * component has, and which the original single-file layout (CompVis/Stability "LDM"/"SGM" code,
 * the one AUTOMATIC1111, ComfyUI and `from_single_file` load) has for the same config. The two
 * derivations are written independently on purpose — the Diffusers one follows how
 * `UNet2DConditionModel`, `AutoencoderKL` and `CLIPTextModel` build their blocks, the LDM one
 * follows how `openaimodel.UNetModel`, `ldm…model.Encoder/Decoder` and OpenCLIP build theirs — so
 * checking the converter's output against the LDM layout catches a wrong key map instead of
 * repeating it. The Diffusers layouts also generate test and benchmark checkpoints with the exact
 * names and shapes of real models. Configs are read defensively: only the fields that decide
 * tensor shapes are used, with the library defaults where a field is absent.
 */
import { BoothError } from '../errors.js';

/** Tensor name → shape. Insertion order is the order modules are built in. */
export type Shapes = Map<string, number[]>;

/** The fields of a Diffusers `UNet2DConditionModel` config that decide its tensors. */
export interface UNetConfig {
  inChannels: number;
  outChannels: number;
  blockOutChannels: number[];
  layersPerBlock: number;
  /** Per down block: has cross-attention transformers. */
  downAttention: boolean[];
  /** Per up block (Diffusers order, deepest first): has cross-attention transformers. */
  upAttention: boolean[];
  /** Transformer blocks per down block (the up path uses the reverse; the mid block the last). */
  transformerLayers: number[];
  crossAttentionDim: number;
  useLinearProjection: boolean;
  /** SDXL's `text_time` additional embedding input width, or null. */
  additionEmbedInput: number | null;
  convInKernel: number;
  convOutKernel: number;
  /** Latent sample size (`sample_size`); × 8 is the native resolution in pixels. */
  sampleSize: number;
}

/** The fields of a Diffusers `AutoencoderKL` config that decide its tensors. */
export interface VaeConfig {
  inChannels: number;
  outChannels: number;
  latentChannels: number;
  blockOutChannels: number[];
  layersPerBlock: number;
  /** The 1×1 convolutions around the latent (`use_quant_conv`/`use_post_quant_conv`); the 16-channel VAEs of FLUX.1 and SD 3.5 have none. */
  useQuantConv: boolean;
  usePostQuantConv: boolean;
}

/** The fields of a transformers `CLIPTextConfig` that decide its tensors. */
export interface ClipConfig {
  hiddenSize: number;
  intermediateSize: number;
  layers: number;
  vocabSize: number;
  maxPositions: number;
  projectionDim: number;
}

function int(raw: Record<string, unknown>, key: string, where: string, dflt?: number): number {
  const v = raw[key] ?? dflt;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new BoothError('INVALID_ARGUMENT', `${where}: "${key}" must be a non-negative integer, got ${JSON.stringify(v)}; is this a Diffusers config.json?`);
  }
  return v;
}
function ints(raw: Record<string, unknown>, key: string, where: string, dflt?: number[]): number[] {
  const v = raw[key] ?? dflt;
  if (!Array.isArray(v) || v.length === 0 || !v.every((x) => typeof x === 'number' && Number.isSafeInteger(x) && x > 0)) {
    throw new BoothError('INVALID_ARGUMENT', `${where}: "${key}" must be a list of positive integers, got ${JSON.stringify(v)}`);
  }
  return v as number[];
}
function strs(raw: Record<string, unknown>, key: string, where: string): string[] {
  const v = raw[key];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
    throw new BoothError('INVALID_ARGUMENT', `${where}: "${key}" must be a list of block type names, got ${JSON.stringify(v)}`);
  }
  return v as string[];
}
function asObject(raw: unknown, where: string): Record<string, unknown> {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new BoothError('INVALID_ARGUMENT', `${where} is not a JSON object`);
  return raw as Record<string, unknown>;
}

/**
 * Read the shape-deciding fields of a UNet config.
 * @throws BoothError `INVALID_ARGUMENT` naming the field, or for features Booth does not convert
 */
export function unetConfig(raw: unknown, where = 'unet/config.json'): UNetConfig {
  const c = asObject(raw, where);
  const blocks = ints(c, 'block_out_channels', where);
  const down = strs(c, 'down_block_types', where);
  const up = strs(c, 'up_block_types', where);
  if (down.length !== blocks.length || up.length !== blocks.length) {
    throw new BoothError('INVALID_ARGUMENT', `${where}: down_block_types, up_block_types and block_out_channels must have the same length`);
  }
  if (typeof c.layers_per_block !== 'number') throw new BoothError('INVALID_ARGUMENT', `${where}: "layers_per_block" must be one integer (per-block lists are not supported)`);
  if (typeof c.cross_attention_dim !== 'number') throw new BoothError('INVALID_ARGUMENT', `${where}: "cross_attention_dim" must be one integer`);
  for (const k of ['class_embed_type', 'encoder_hid_dim', 'time_cond_proj_dim', 'num_class_embeds'] as const) {
    if (c[k] !== undefined && c[k] !== null) throw new BoothError('INVALID_ARGUMENT', `${where}: "${k}" is set; only Stable Diffusion 1.x/2.x/XL UNets can be converted`);
  }
  const tl = c.transformer_layers_per_block ?? 1;
  const transformerLayers = typeof tl === 'number' ? blocks.map(() => tl) : ints(c, 'transformer_layers_per_block', where);
  if (transformerLayers.length !== blocks.length) throw new BoothError('INVALID_ARGUMENT', `${where}: "transformer_layers_per_block" needs one entry per block`);
  const addType = c.addition_embed_type;
  if (addType !== undefined && addType !== null && addType !== 'text_time') {
    throw new BoothError('INVALID_ARGUMENT', `${where}: addition_embed_type "${String(addType)}" is not supported (only SDXL's "text_time")`);
  }
  return {
    inChannels: int(c, 'in_channels', where, 4),
    outChannels: int(c, 'out_channels', where, 4),
    blockOutChannels: blocks,
    layersPerBlock: int(c, 'layers_per_block', where),
    downAttention: down.map((t) => t.includes('CrossAttn')),
    upAttention: up.map((t) => t.includes('CrossAttn')),
    transformerLayers,
    crossAttentionDim: int(c, 'cross_attention_dim', where),
    useLinearProjection: c.use_linear_projection === true,
    additionEmbedInput: addType === 'text_time' ? int(c, 'projection_class_embeddings_input_dim', where) : null,
    convInKernel: int(c, 'conv_in_kernel', where, 3),
    convOutKernel: int(c, 'conv_out_kernel', where, 3),
    sampleSize: int(c, 'sample_size', where, 64),
  };
}

/** Read the shape-deciding fields of a VAE config. */
export function vaeConfig(raw: unknown, where = 'vae/config.json'): VaeConfig {
  const c = asObject(raw, where);
  return {
    inChannels: int(c, 'in_channels', where, 3),
    outChannels: int(c, 'out_channels', where, 3),
    latentChannels: int(c, 'latent_channels', where, 4),
    blockOutChannels: ints(c, 'block_out_channels', where, [64]),
    layersPerBlock: int(c, 'layers_per_block', where, 1),
    useQuantConv: c.use_quant_conv !== false,
    usePostQuantConv: c.use_post_quant_conv !== false,
  };
}

/** Read the shape-deciding fields of a CLIP text config. */
export function clipConfig(raw: unknown, where = 'text_encoder/config.json'): ClipConfig {
  const c = asObject(raw, where);
  return {
    hiddenSize: int(c, 'hidden_size', where),
    intermediateSize: int(c, 'intermediate_size', where),
    layers: int(c, 'num_hidden_layers', where),
    vocabSize: int(c, 'vocab_size', where, 49408),
    maxPositions: int(c, 'max_position_embeddings', where, 77),
    projectionDim: int(c, 'projection_dim', where, 512),
  };
}

// ---------------------------------------------------------------------------------------------
// Shared pieces: the attention transformer block has the same parameter names in both code bases.

function linear(s: Shapes, name: string, out: number, inp: number, bias = true): void {
  s.set(`${name}.weight`, [out, inp]);
  if (bias) s.set(`${name}.bias`, [out]);
}
function conv(s: Shapes, name: string, out: number, inp: number, k: number): void {
  s.set(`${name}.weight`, [out, inp, k, k]);
  s.set(`${name}.bias`, [out]);
}
function norm(s: Shapes, name: string, c: number): void {
  s.set(`${name}.weight`, [c]);
  s.set(`${name}.bias`, [c]);
}

/** `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward (inner 4c, projected to 8c). */
function transformerBlock(s: Shapes, p: string, c: number, ctx: number): void {
  norm(s, `${p}.norm1`, c);
  for (const [attn, kv] of [['attn1', c], ['attn2', ctx]] as const) {
    linear(s, `${p}.${attn}.to_q`, c, c, false);
    linear(s, `${p}.${attn}.to_k`, c, kv, false);
    linear(s, `${p}.${attn}.to_v`, c, kv, false);
    linear(s, `${p}.${attn}.to_out.0`, c, c);
    if (attn === 'attn1') norm(s, `${p}.norm2`, c);
  }
  norm(s, `${p}.norm3`, c);
  linear(s, `${p}.ff.net.0.proj`, 8 * c, c);
  linear(s, `${p}.ff.net.2`, c, 4 * c);
}

/** `Transformer2DModel` / `SpatialTransformer`: group norm, projection in, N blocks, projection out. */
function spatialTransformer(s: Shapes, p: string, c: number, depth: number, cfg: UNetConfig): void {
  norm(s, `${p}.norm`, c);
  const proj = (name: string) => (cfg.useLinearProjection ? linear(s, name, c, c) : conv(s, name, c, c, 1));
  proj(`${p}.proj_in`);
  for (let k = 0; k < depth; k++) transformerBlock(s, `${p}.transformer_blocks.${k}`, c, cfg.crossAttentionDim);
  proj(`${p}.proj_out`);
}

// ---------------------------------------------------------------------------------------------
// Diffusers layouts.

function diffusersResnet(s: Shapes, p: string, cin: number, cout: number, temb: number | null): void {
  norm(s, `${p}.norm1`, cin);
  conv(s, `${p}.conv1`, cout, cin, 3);
  if (temb !== null) linear(s, `${p}.time_emb_proj`, cout, temb);
  norm(s, `${p}.norm2`, cout);
  conv(s, `${p}.conv2`, cout, cout, 3);
  if (cin !== cout) conv(s, `${p}.conv_shortcut`, cout, cin, 1);
}

/**
 * Tensors of a Diffusers `UNet2DConditionModel` with this config.
 * @example diffusersUNetShapes(unetConfig(json)).get('conv_in.weight') // [320, 4, 3, 3]
 */
export function diffusersUNetShapes(cfg: UNetConfig): Shapes {
  const s: Shapes = new Map();
  const b = cfg.blockOutChannels;
  const b0 = b[0] ?? 0;
  const temb = 4 * b0;
  const n = b.length;
  conv(s, 'conv_in', b0, cfg.inChannels, cfg.convInKernel);
  linear(s, 'time_embedding.linear_1', temb, b0);
  linear(s, 'time_embedding.linear_2', temb, temb);
  if (cfg.additionEmbedInput !== null) {
    linear(s, 'add_embedding.linear_1', temb, cfg.additionEmbedInput);
    linear(s, 'add_embedding.linear_2', temb, temb);
  }
  let out = b0;
  for (let i = 0; i < n; i++) {
    const cin = out;
    out = b[i] ?? 0;
    for (let j = 0; j < cfg.layersPerBlock; j++) {
      diffusersResnet(s, `down_blocks.${i}.resnets.${j}`, j === 0 ? cin : out, out, temb);
      if (cfg.downAttention[i]) spatialTransformer(s, `down_blocks.${i}.attentions.${j}`, out, cfg.transformerLayers[i] ?? 1, cfg);
    }
    if (i < n - 1) conv(s, `down_blocks.${i}.downsamplers.0.conv`, out, out, 3);
  }
  const last = b[n - 1] ?? 0;
  diffusersResnet(s, 'mid_block.resnets.0', last, last, temb);
  spatialTransformer(s, 'mid_block.attentions.0', last, cfg.transformerLayers[n - 1] ?? 1, cfg);
  diffusersResnet(s, 'mid_block.resnets.1', last, last, temb);
  const rev = [...b].reverse();
  const revLayers = [...cfg.transformerLayers].reverse();
  out = rev[0] ?? 0;
  for (let i = 0; i < n; i++) {
    const prev = out;
    out = rev[i] ?? 0;
    const skipIn = rev[Math.min(i + 1, n - 1)] ?? 0;
    for (let j = 0; j <= cfg.layersPerBlock; j++) {
      const skip = j === cfg.layersPerBlock ? skipIn : out;
      const resIn = j === 0 ? prev : out;
      diffusersResnet(s, `up_blocks.${i}.resnets.${j}`, resIn + skip, out, temb);
      if (cfg.upAttention[i]) spatialTransformer(s, `up_blocks.${i}.attentions.${j}`, out, revLayers[i] ?? 1, cfg);
    }
    if (i < n - 1) conv(s, `up_blocks.${i}.upsamplers.0.conv`, out, out, 3);
  }
  norm(s, 'conv_norm_out', b0);
  conv(s, 'conv_out', cfg.outChannels, b0, cfg.convOutKernel);
  return s;
}

function diffusersVaeMid(s: Shapes, p: string, c: number): void {
  diffusersResnet(s, `${p}.resnets.0`, c, c, null);
  norm(s, `${p}.attentions.0.group_norm`, c);
  for (const q of ['to_q', 'to_k', 'to_v', 'to_out.0']) linear(s, `${p}.attentions.0.${q}`, c, c);
  diffusersResnet(s, `${p}.resnets.1`, c, c, null);
}

/** Tensors of a Diffusers `AutoencoderKL` with this config. */
export function diffusersVaeShapes(cfg: VaeConfig): Shapes {
  const s: Shapes = new Map();
  const b = cfg.blockOutChannels;
  const n = b.length;
  const b0 = b[0] ?? 0;
  const last = b[n - 1] ?? 0;
  conv(s, 'encoder.conv_in', b0, cfg.inChannels, 3);
  let out = b0;
  for (let i = 0; i < n; i++) {
    const cin = out;
    out = b[i] ?? 0;
    for (let j = 0; j < cfg.layersPerBlock; j++) diffusersResnet(s, `encoder.down_blocks.${i}.resnets.${j}`, j === 0 ? cin : out, out, null);
    if (i < n - 1) conv(s, `encoder.down_blocks.${i}.downsamplers.0.conv`, out, out, 3);
  }
  diffusersVaeMid(s, 'encoder.mid_block', last);
  norm(s, 'encoder.conv_norm_out', last);
  conv(s, 'encoder.conv_out', 2 * cfg.latentChannels, last, 3);
  conv(s, 'decoder.conv_in', last, cfg.latentChannels, 3);
  diffusersVaeMid(s, 'decoder.mid_block', last);
  const rev = [...b].reverse();
  out = rev[0] ?? 0;
  for (let i = 0; i < n; i++) {
    const prev = out;
    out = rev[i] ?? 0;
    for (let j = 0; j <= cfg.layersPerBlock; j++) diffusersResnet(s, `decoder.up_blocks.${i}.resnets.${j}`, j === 0 ? prev : out, out, null);
    if (i < n - 1) conv(s, `decoder.up_blocks.${i}.upsamplers.0.conv`, out, out, 3);
  }
  norm(s, 'decoder.conv_norm_out', b0);
  conv(s, 'decoder.conv_out', cfg.outChannels, b0, 3);
  if (cfg.useQuantConv) conv(s, 'quant_conv', 2 * cfg.latentChannels, 2 * cfg.latentChannels, 1);
  if (cfg.usePostQuantConv) conv(s, 'post_quant_conv', cfg.latentChannels, cfg.latentChannels, 1);
  return s;
}

/**
 * Tensors of a transformers `CLIPTextModel` (or `…WithProjection` when `projection`). The
 * `position_ids` buffer is not included: newer transformers do not save it.
 */
export function hfClipShapes(cfg: ClipConfig, projection: boolean): Shapes {
  const s: Shapes = new Map();
  const d = cfg.hiddenSize;
  s.set('text_model.embeddings.token_embedding.weight', [cfg.vocabSize, d]);
  s.set('text_model.embeddings.position_embedding.weight', [cfg.maxPositions, d]);
  for (let i = 0; i < cfg.layers; i++) {
    const p = `text_model.encoder.layers.${i}`;
    for (const q of ['k_proj', 'v_proj', 'q_proj', 'out_proj']) linear(s, `${p}.self_attn.${q}`, d, d);
    norm(s, `${p}.layer_norm1`, d);
    linear(s, `${p}.mlp.fc1`, cfg.intermediateSize, d);
    linear(s, `${p}.mlp.fc2`, d, cfg.intermediateSize);
    norm(s, `${p}.layer_norm2`, d);
  }
  norm(s, 'text_model.final_layer_norm', d);
  if (projection) s.set('text_projection.weight', [cfg.projectionDim, d]);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Original (LDM/SGM/OpenCLIP) layouts, without the checkpoint prefixes.

function ldmResBlock(s: Shapes, p: string, cin: number, cout: number, temb: number): void {
  norm(s, `${p}.in_layers.0`, cin);
  conv(s, `${p}.in_layers.2`, cout, cin, 3);
  linear(s, `${p}.emb_layers.1`, cout, temb);
  norm(s, `${p}.out_layers.0`, cout);
  conv(s, `${p}.out_layers.3`, cout, cout, 3);
  if (cin !== cout) conv(s, `${p}.skip_connection`, cout, cin, 1);
}

/**
 * Tensors of the original `UNetModel` (names under `model.diffusion_model.`) for a Diffusers
 * UNet config: model_channels = block_out_channels[0], channel_mult from the ratios, attention at
 * the levels whose Diffusers blocks have cross-attention.
 */
export function ldmUNetShapes(cfg: UNetConfig): Shapes {
  const s: Shapes = new Map();
  const mc = cfg.blockOutChannels[0] ?? 0;
  const levels = cfg.blockOutChannels.length;
  const ted = 4 * mc;
  linear(s, 'time_embed.0', ted, mc);
  linear(s, 'time_embed.2', ted, ted);
  if (cfg.additionEmbedInput !== null) {
    linear(s, 'label_emb.0.0', ted, cfg.additionEmbedInput);
    linear(s, 'label_emb.0.2', ted, ted);
  }
  conv(s, 'input_blocks.0.0', mc, cfg.inChannels, cfg.convInKernel);
  const chans = [mc];
  let ch = mc;
  let idx = 1;
  for (let level = 0; level < levels; level++) {
    const width = cfg.blockOutChannels[level] ?? 0;
    for (let r = 0; r < cfg.layersPerBlock; r++) {
      ldmResBlock(s, `input_blocks.${idx}.0`, ch, width, ted);
      ch = width;
      if (cfg.downAttention[level]) spatialTransformer(s, `input_blocks.${idx}.1`, ch, cfg.transformerLayers[level] ?? 1, cfg);
      chans.push(ch);
      idx++;
    }
    if (level !== levels - 1) {
      conv(s, `input_blocks.${idx}.0.op`, ch, ch, 3);
      chans.push(ch);
      idx++;
    }
  }
  ldmResBlock(s, 'middle_block.0', ch, ch, ted);
  spatialTransformer(s, 'middle_block.1', ch, cfg.transformerLayers[levels - 1] ?? 1, cfg);
  ldmResBlock(s, 'middle_block.2', ch, ch, ted);
  idx = 0;
  for (let level = levels - 1; level >= 0; level--) {
    const width = cfg.blockOutChannels[level] ?? 0;
    // The up path mirrors the down path level by level (Diffusers' up block levels-1-level).
    const attention = cfg.upAttention[levels - 1 - level] ?? false;
    for (let i = 0; i <= cfg.layersPerBlock; i++) {
      const skip = chans.pop() ?? 0;
      ldmResBlock(s, `output_blocks.${idx}.0`, ch + skip, width, ted);
      ch = width;
      let layer = 1;
      if (attention) {
        spatialTransformer(s, `output_blocks.${idx}.1`, ch, cfg.transformerLayers[level] ?? 1, cfg);
        layer = 2;
      }
      if (level !== 0 && i === cfg.layersPerBlock) conv(s, `output_blocks.${idx}.${layer}.conv`, ch, ch, 3);
      idx++;
    }
  }
  norm(s, 'out.0', mc);
  conv(s, 'out.2', cfg.outChannels, mc, cfg.convOutKernel);
  return s;
}

function ldmVaeBlock(s: Shapes, p: string, cin: number, cout: number): void {
  norm(s, `${p}.norm1`, cin);
  conv(s, `${p}.conv1`, cout, cin, 3);
  norm(s, `${p}.norm2`, cout);
  conv(s, `${p}.conv2`, cout, cout, 3);
  if (cin !== cout) conv(s, `${p}.nin_shortcut`, cout, cin, 1);
}
function ldmVaeMid(s: Shapes, p: string, c: number): void {
  ldmVaeBlock(s, `${p}.block_1`, c, c);
  norm(s, `${p}.attn_1.norm`, c);
  for (const q of ['q', 'k', 'v', 'proj_out']) conv(s, `${p}.attn_1.${q}`, c, c, 1);
  ldmVaeBlock(s, `${p}.block_2`, c, c);
}

/** Tensors of the original `AutoencoderKL` (names under `first_stage_model.`). */
export function ldmVaeShapes(cfg: VaeConfig): Shapes {
  const s: Shapes = new Map();
  const ch = cfg.blockOutChannels[0] ?? 0;
  const n = cfg.blockOutChannels.length;
  const z = cfg.latentChannels;
  conv(s, 'encoder.conv_in', ch, cfg.inChannels, 3);
  let bin = ch;
  for (let level = 0; level < n; level++) {
    const bout = cfg.blockOutChannels[level] ?? 0;
    for (let j = 0; j < cfg.layersPerBlock; j++) {
      ldmVaeBlock(s, `encoder.down.${level}.block.${j}`, bin, bout);
      bin = bout;
    }
    if (level !== n - 1) conv(s, `encoder.down.${level}.downsample.conv`, bin, bin, 3);
  }
  ldmVaeMid(s, 'encoder.mid', bin);
  norm(s, 'encoder.norm_out', bin);
  conv(s, 'encoder.conv_out', 2 * z, bin, 3);
  if (cfg.useQuantConv) conv(s, 'quant_conv', 2 * z, 2 * z, 1);
  if (cfg.usePostQuantConv) conv(s, 'post_quant_conv', z, z, 1);
  conv(s, 'decoder.conv_in', bin, z, 3);
  ldmVaeMid(s, 'decoder.mid', bin);
  for (let level = n - 1; level >= 0; level--) {
    const bout = cfg.blockOutChannels[level] ?? 0;
    for (let j = 0; j <= cfg.layersPerBlock; j++) {
      ldmVaeBlock(s, `decoder.up.${level}.block.${j}`, bin, bout);
      bin = bout;
    }
    if (level !== 0) conv(s, `decoder.up.${level}.upsample.conv`, bin, bin, 3);
  }
  norm(s, 'decoder.norm_out', bin);
  conv(s, 'decoder.conv_out', cfg.outChannels, bin, 3);
  return s;
}

/** Tensors of an OpenCLIP text tower (names under `…model.`), with `text_projection` when `projection`. */
export function openClipShapes(cfg: ClipConfig, projection: boolean): Shapes {
  const s: Shapes = new Map();
  const d = cfg.hiddenSize;
  s.set('token_embedding.weight', [cfg.vocabSize, d]);
  s.set('positional_embedding', [cfg.maxPositions, d]);
  for (let i = 0; i < cfg.layers; i++) {
    const p = `transformer.resblocks.${i}`;
    norm(s, `${p}.ln_1`, d);
    s.set(`${p}.attn.in_proj_weight`, [3 * d, d]);
    s.set(`${p}.attn.in_proj_bias`, [3 * d]);
    linear(s, `${p}.attn.out_proj`, d, d);
    norm(s, `${p}.ln_2`, d);
    linear(s, `${p}.mlp.c_fc`, cfg.intermediateSize, d);
    linear(s, `${p}.mlp.c_proj`, d, cfg.intermediateSize);
  }
  norm(s, 'ln_final', d);
  if (projection) s.set('text_projection', [d, cfg.projectionDim]);
  return s;
}
