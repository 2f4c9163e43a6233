/**
 * SD 3.5 Diffusers folder → single file (src/convert/mmdit.ts) without torch. The Diffusers
 * tensors are generated here from how `SD3Transformer2DModel` builds its blocks (written for this
 * test, independently of the converter's MMDiT layout), with values that identify each tensor;
 * the converted file must have exactly the MMDiT layout, q/k/v stacked into `qkv` in that order,
 * the (scale, shift) halves swapped where the two code bases differ, everything else byte-equal.
 * test/convert/flow-formats.test.ts proves the same file loads in diffusers (needs torch).
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { planCheckpoint } from '../../src/convert/checkpoint.js';
import { localFolder } from '../../src/convert/diffusers.js';
import { diffusersVaeShapes, vaeConfig } from '../../src/convert/layouts.js';
import { mmditShapes, sd3Config } from '../../src/convert/mmdit.js';
import { writePlanToFile } from '../../src/convert/writer.js';
import { readSafetensors, safetensorsBytes, values } from './fixtures.js';

const FIXTURES = new URL('../fixtures/models/sd3.5-medium/', import.meta.url);

/** The tensors of a Diffusers `SD3Transformer2DModel` for this config, as diffusers names them. */
function diffusersSd3(cfg: Record<string, number | number[] | string>): Map<string, number[]> {
  const heads = cfg.num_attention_heads as number;
  const hd = cfg.attention_head_dim as number;
  const h = heads * hd;
  const layers = cfg.num_layers as number;
  const p = cfg.patch_size as number;
  const dual = cfg.dual_attention_layers as number[];
  const s = new Map<string, number[]>();
  const lin = (n: string, o: number, i: number) => {
    s.set(`${n}.weight`, [o, i]);
    s.set(`${n}.bias`, [o]);
  };
  s.set('pos_embed.pos_embed', [1, (cfg.pos_embed_max_size as number) ** 2, h]);
  s.set('pos_embed.proj.weight', [h, cfg.in_channels as number, p, p]);
  s.set('pos_embed.proj.bias', [h]);
  lin('time_text_embed.timestep_embedder.linear_1', h, 256);
  lin('time_text_embed.timestep_embedder.linear_2', h, h);
  lin('time_text_embed.text_embedder.linear_1', h, cfg.pooled_projection_dim as number);
  lin('time_text_embed.text_embedder.linear_2', h, h);
  lin('context_embedder', cfg.caption_projection_dim as number, cfg.joint_attention_dim as number);
  for (let i = 0; i < layers; i++) {
    const b = `transformer_blocks.${i}`;
    const last = i === layers - 1;
    lin(`${b}.norm1.linear`, (dual.includes(i) ? 9 : 6) * h, h);
    lin(`${b}.norm1_context.linear`, (last ? 2 : 6) * h, h);
    for (const q of ['to_q', 'to_k', 'to_v', 'add_q_proj', 'add_k_proj', 'add_v_proj', 'to_out.0']) lin(`${b}.attn.${q}`, h, h);
    if (!last) lin(`${b}.attn.to_add_out`, h, h);
    for (const n of ['norm_q', 'norm_k', 'norm_added_q', 'norm_added_k']) s.set(`${b}.attn.${n}.weight`, [hd]);
    if (dual.includes(i)) {
      for (const q of ['to_q', 'to_k', 'to_v', 'to_out.0']) lin(`${b}.attn2.${q}`, h, h);
      for (const n of ['norm_q', 'norm_k']) s.set(`${b}.attn2.${n}.weight`, [hd]);
    }
    lin(`${b}.ff.net.0.proj`, 4 * h, h);
    lin(`${b}.ff.net.2`, h, 4 * h);
    if (!last) {
      lin(`${b}.ff_context.net.0.proj`, 4 * h, h);
      lin(`${b}.ff_context.net.2`, h, 4 * h);
    }
  }
  lin('norm_out.linear', 2 * h, h);
  lin('proj_out', p * p * (cfg.out_channels as number), h);
  return s;
}

describe('SD 3.5 Diffusers → single file (MMDiT names)', () => {
  let dir: string;
  let tcfg: Record<string, number | number[] | string>;
  const data = new Map<string, Float32Array>();

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'booth-mmdit-'));
    const real = JSON.parse(await readFile(new URL('transformer/config.json', FIXTURES), 'utf8')) as Record<string, number | number[] | string>;
    tcfg = { ...real, num_layers: 3, num_attention_heads: 2, attention_head_dim: 4, caption_projection_dim: 8, joint_attention_dim: 12, pooled_projection_dim: 6, pos_embed_max_size: 4, dual_attention_layers: [0, 1], sample_size: 4 };
    const vcfg = { ...(JSON.parse(await readFile(new URL('vae/config.json', FIXTURES), 'utf8')) as Record<string, unknown>), block_out_channels: [4, 8], layers_per_block: 1, norm_num_groups: 2 };
    for (const [comp, shapes, cfg] of [
      ['transformer', diffusersSd3(tcfg), tcfg],
      ['vae', diffusersVaeShapes(vaeConfig(vcfg)), vcfg],
    ] as const) {
      await mkdir(path.join(dir, comp), { recursive: true });
      await writeFile(path.join(dir, comp, 'config.json'), JSON.stringify(cfg));
      const tensors = new Map<string, { dtype: string; shape: number[]; data: Uint8Array }>();
      for (const [name, shape] of shapes) {
        const v = values(`${comp}/${name}`, shape.reduce((a, b) => a * b, 1));
        data.set(`${comp}/${name}`, v);
        tensors.set(name, { dtype: 'F32', shape, data: new Uint8Array(v.buffer) });
      }
      await writeFile(path.join(dir, comp, 'diffusion_pytorch_model.safetensors'), safetensorsBytes(tensors));
    }
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('maps every tensor, stacks q/k/v, swaps (scale, shift), and says SD 3.5 in the metadata', async () => {
    const cp = await planCheckpoint(localFolder(dir), { dtype: 'fp32', title: 'bob' });
    const out = path.join(dir, 'out.safetensors');
    try {
      await writePlanToFile(cp.plan, out);
    } finally {
      await cp.close();
    }
    const file = readSafetensors(await readFile(out));
    expect(file.metadata['modelspec.architecture']).toBe('stable-diffusion-3-5-medium');
    expect(file.metadata['modelspec.implementation']).toBe('https://github.com/Stability-AI/generative-models');
    const expected = [...mmditShapes(sd3Config(tcfg)).keys()].map((k) => `model.diffusion_model.${k}`);
    const got = [...file.tensors.keys()];
    expect(got.filter((k) => k.startsWith('model.diffusion_model.')).sort()).toEqual(expected.sort());
    expect(got.some((k) => k.startsWith('first_stage_model.encoder.'))).toBe(true);
    expect(got.includes('first_stage_model.quant_conv.weight')).toBe(false); // SD 3.5's VAE has none

    const f = (name: string) => Array.from(new Float32Array(new Uint8Array(file.tensors.get(`model.diffusion_model.${name}`)!.data).buffer));
    const d = (name: string) => Array.from(data.get(`transformer/${name}`)!);
    expect(f('pos_embed')).toEqual(d('pos_embed.pos_embed'));
    expect(f('joint_blocks.1.x_block.attn.qkv.weight')).toEqual([...d('transformer_blocks.1.attn.to_q.weight'), ...d('transformer_blocks.1.attn.to_k.weight'), ...d('transformer_blocks.1.attn.to_v.weight')]);
    expect(f('joint_blocks.0.context_block.attn.qkv.bias')).toEqual([...d('transformer_blocks.0.attn.add_q_proj.bias'), ...d('transformer_blocks.0.attn.add_k_proj.bias'), ...d('transformer_blocks.0.attn.add_v_proj.bias')]);
    expect(f('joint_blocks.1.x_block.attn2.ln_k.weight')).toEqual(d('transformer_blocks.1.attn2.norm_k.weight'));
    expect(f('joint_blocks.0.context_block.mlp.fc2.weight')).toEqual(d('transformer_blocks.0.ff_context.net.2.weight'));
    // Not the last block: context adaLN kept as is; the last block and the final layer: halves swapped.
    expect(f('joint_blocks.1.context_block.adaLN_modulation.1.bias')).toEqual(d('transformer_blocks.1.norm1_context.linear.bias'));
    const swap = (v: number[]) => [...v.slice(v.length / 2), ...v.slice(0, v.length / 2)];
    expect(f('joint_blocks.2.context_block.adaLN_modulation.1.weight')).toEqual(swap(d('transformer_blocks.2.norm1_context.linear.weight')));
    expect(f('final_layer.adaLN_modulation.1.bias')).toEqual(swap(d('norm_out.linear.bias')));
    expect(f('final_layer.linear.weight')).toEqual(d('proj_out.weight'));
  });

  it('refuses a folder with a tensor it cannot place, naming it', async () => {
    const bad = path.join(dir, 'bad');
    await mkdir(path.join(bad, 'transformer'), { recursive: true });
    await mkdir(path.join(bad, 'vae'), { recursive: true });
    await writeFile(path.join(bad, 'transformer', 'config.json'), JSON.stringify(tcfg));
    await writeFile(path.join(bad, 'vae', 'config.json'), await readFile(path.join(dir, 'vae', 'config.json')));
    await writeFile(path.join(bad, 'vae', 'diffusion_pytorch_model.safetensors'), await readFile(path.join(dir, 'vae', 'diffusion_pytorch_model.safetensors')));
    const t = readSafetensors(await readFile(path.join(dir, 'transformer', 'diffusion_pytorch_model.safetensors'))).tensors;
    const tensors = new Map([...t].map(([k, v]) => [k, { dtype: v.dtype, shape: v.shape, data: new Uint8Array(v.data) }]));
    tensors.set('transformer_blocks.0.attn.extra.weight', { dtype: 'F32', shape: [1], data: new Uint8Array(4) });
    await writeFile(path.join(bad, 'transformer', 'diffusion_pytorch_model.safetensors'), safetensorsBytes(tensors));
    await expect(planCheckpoint(localFolder(bad), {})).rejects.toThrow(/transformer: transformer_blocks\.0\.attn\.extra\.weight/);
  });
});
