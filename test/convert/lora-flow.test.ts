/**
 * FLUX.1 and SD 3.5 LoRA layouts (src/convert/lora-flow.ts) without torch: a LoRA file with the
 * trainer's names is converted, and the output is checked against the math it must satisfy —
 * every kohya module's scaled update (alpha/rank · up·down) equals the stacked scaled updates of
 * the Diffusers modules it fuses, exactly in float32; zero blocks for parts without an adapter;
 * names ComfyUI/Forge/sd-scripts use; the diffusers layout with the scale folded into B.
 * diffusers itself loading the files back is test/convert/flow-formats.test.ts (needs torch).
 */
import { mkdtemp, rm, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openFileSource } from '../../src/convert/io.js';
import { planLora } from '../../src/convert/lora.js';
import { writePlanToFile } from '../../src/convert/writer.js';
import { readSafetensors, safetensorsBytes, values } from './fixtures.js';

const H = 8; // transformer width
const R = 2; // LoRA rank
const ALPHA = 4;

type Tensor = { dtype: string; shape: number[]; data: Uint8Array };

function f32(name: string, shape: number[]): Tensor & { v: Float32Array } {
  const v = values(name, shape.reduce((a, b) => a * b, 1));
  return { dtype: 'F32', shape, data: new Uint8Array(v.buffer), v };
}

/** The trainer's adapters on FLUX.1 modules (out, in widths); proj_mlp left out on purpose. */
const FLUX_MODULES: Array<[string, number, number]> = [
  ['transformer_blocks.0.attn.to_q', H, H],
  ['transformer_blocks.0.attn.to_k', H, H],
  ['transformer_blocks.0.attn.to_v', H, H],
  ['transformer_blocks.0.attn.add_q_proj', H, H],
  ['transformer_blocks.0.attn.add_k_proj', H, H],
  ['transformer_blocks.0.attn.add_v_proj', H, H],
  ['transformer_blocks.0.attn.to_out.0', H, H],
  ['transformer_blocks.0.attn.to_add_out', H, H],
  ['transformer_blocks.0.ff.net.0.proj', 4 * H, H],
  ['transformer_blocks.0.ff.net.2', H, 4 * H],
  ['single_transformer_blocks.0.attn.to_q', H, H],
  ['single_transformer_blocks.0.attn.to_k', H, H],
  ['single_transformer_blocks.0.attn.to_v', H, H],
  ['single_transformer_blocks.0.proj_out', H, 5 * H],
];

function loraFile(modules: Array<[string, number, number]>, meta: Record<string, string>) {
  const tensors = new Map<string, Tensor>();
  const ab = new Map<string, { a: Float32Array; b: Float32Array; out: number; inp: number }>();
  for (const [m, out, inp] of modules) {
    const a = f32(`${m}.A`, [R, inp]);
    const b = f32(`${m}.B`, [out, R]);
    tensors.set(`transformer.${m}.lora_A.weight`, a);
    tensors.set(`transformer.${m}.lora_B.weight`, b);
    ab.set(m, { a: a.v, b: b.v, out, inp });
  }
  return { bytes: safetensorsBytes(tensors, meta), ab };
}

/** up · down for row-major [o, r] and [r, i]. */
function matmul(up: Float32Array, down: Float32Array, o: number, r: number, i: number): Float32Array {
  const out = new Float32Array(o * i);
  for (let y = 0; y < o; y++) for (let k = 0; k < r; k++) for (let x = 0; x < i; x++) out[y * i + x]! += up[y * r + k]! * down[k * i + x]!;
  return out;
}

function asF32(t: { data: Buffer }): Float32Array {
  return new Float32Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.byteLength));
}

describe('FLUX.1 / SD 3.5 LoRA layouts', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'booth-lora-flow-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function convert(bytes: Buffer, options: Parameters<typeof planLora>[1]) {
    const input = join(dir, `in-${Math.random().toString(16).slice(2)}.safetensors`);
    const output = `${input}.out.safetensors`;
    await writeFile(input, bytes);
    const lp = await planLora(await openFileSource(input), options);
    try {
      await writePlanToFile(lp.plan, output);
    } finally {
      await lp.close();
    }
    return { lp, out: readSafetensors(await readFile(output)) };
  }

  it('kohya layout: fused qkv and linear1 are exact block-diagonal LoRAs of rank n·r with alpha n·α', async () => {
    const { bytes, ab } = loraFile(FLUX_MODULES, { 'booth.lora_rank': String(R), 'booth.lora_alpha': String(ALPHA) });
    const { lp, out } = await convert(bytes, { dtype: 'fp32', title: 'alice' });
    expect(lp.facts).toMatchObject({ architecture: 'flux', release: 'dev', lora: true, loraLayout: 'kohya' });
    expect(out.metadata['modelspec.architecture']).toBe('flux-1-dev/lora');
    expect(out.metadata.ss_network_module).toBe('networks.lora_flux');
    expect([...out.tensors.keys()].filter((k) => k.endsWith('.lora_down.weight')).sort()).toEqual(
      [
        'double_blocks_0_img_attn_proj',
        'double_blocks_0_img_attn_qkv',
        'double_blocks_0_img_mlp_0',
        'double_blocks_0_img_mlp_2',
        'double_blocks_0_txt_attn_proj',
        'double_blocks_0_txt_attn_qkv',
        'single_blocks_0_linear1',
        'single_blocks_0_linear2',
      ].map((n) => `lora_unet_${n}.lora_down.weight`),
    );

    const check = (kohya: string, parts: Array<string | null>, rows: number[]) => {
      const down = out.tensors.get(`${kohya}.lora_down.weight`)!;
      const up = out.tensors.get(`${kohya}.lora_up.weight`)!;
      const alpha = asF32(out.tensors.get(`${kohya}.alpha`)!)[0]!;
      const n = parts.length;
      expect(down.shape).toEqual([n * R, H]);
      expect(up.shape).toEqual([rows.reduce((a, b) => a + b, 0), n * R]);
      expect(alpha).toBe(n * ALPHA);
      const fused = matmul(asF32(up), asF32(down), up.shape[0]!, n * R, H);
      let row = 0;
      parts.forEach((p, j) => {
        const want = p ? matmul(ab.get(p)!.b, ab.get(p)!.a, rows[j]!, R, H) : new Float32Array(rows[j]! * H);
        const got = fused.subarray(row * H, (row + rows[j]!) * H);
        // Same scale: alpha_fused / rank_fused = α / r; so the unscaled products must be equal.
        expect(Array.from(got).map((x) => Math.fround(x))).toEqual(Array.from(want).map((x) => Math.fround(x)));
        row += rows[j]!;
      });
      // Off-diagonal blocks of up are zero (the form diffusers' kohya converter splits back).
      const u = asF32(up);
      row = 0;
      rows.forEach((r, j) => {
        for (let y = row; y < row + r; y++) for (let c = 0; c < n * R; c++) if (Math.floor(c / R) !== j) expect(u[y * n * R + c]).toBe(0);
        row += r;
      });
    };
    check('lora_unet_double_blocks_0_img_attn_qkv', ['transformer_blocks.0.attn.to_q', 'transformer_blocks.0.attn.to_k', 'transformer_blocks.0.attn.to_v'], [H, H, H]);
    check('lora_unet_double_blocks_0_txt_attn_qkv', ['transformer_blocks.0.attn.add_q_proj', 'transformer_blocks.0.attn.add_k_proj', 'transformer_blocks.0.attn.add_v_proj'], [H, H, H]);
    // proj_mlp has no adapter: its rows of linear1 (4·H) carry a zero update.
    check('lora_unet_single_blocks_0_linear1', ['single_transformer_blocks.0.attn.to_q', 'single_transformer_blocks.0.attn.to_k', 'single_transformer_blocks.0.attn.to_v', null], [H, H, H, 4 * H]);

    const proj = ab.get('transformer_blocks.0.attn.to_out.0')!;
    expect(Array.from(asF32(out.tensors.get('lora_unet_double_blocks_0_img_attn_proj.lora_down.weight')!))).toEqual(Array.from(proj.a));
    expect(Array.from(asF32(out.tensors.get('lora_unet_double_blocks_0_img_attn_proj.lora_up.weight')!))).toEqual(Array.from(proj.b));
    expect(asF32(out.tensors.get('lora_unet_double_blocks_0_img_attn_proj.alpha')!)[0]).toBe(ALPHA);
  });

  it('diffusers layout folds α/r into B and keeps the trainer names; SD 3.5 Large is told by its width', async () => {
    const modules: Array<[string, number, number]> = [
      ['transformer_blocks.0.attn.to_q', 2432, 2432],
      ['transformer_blocks.0.attn.add_k_proj', 2432, 2432],
    ];
    const { bytes, ab } = loraFile(modules, { 'booth.lora_rank': String(R), 'booth.lora_alpha': String(ALPHA) });
    const { lp, out } = await convert(bytes, { dtype: 'fp32' });
    expect(lp.facts).toMatchObject({ architecture: 'sd3', release: 'large', loraLayout: 'diffusers' });
    expect(out.metadata['modelspec.architecture']).toBe('stable-diffusion-3-5-large/lora');
    expect(out.metadata['modelspec.implementation']).toBe('diffusers');
    expect(out.metadata['modelspec.prediction_type']).toBeUndefined();
    const q = ab.get('transformer_blocks.0.attn.to_q')!;
    expect(Array.from(asF32(out.tensors.get('transformer.transformer_blocks.0.attn.to_q.lora_A.weight')!))).toEqual(Array.from(q.a));
    expect(Array.from(asF32(out.tensors.get('transformer.transformer_blocks.0.attn.to_q.lora_B.weight')!))).toEqual(Array.from(q.b, (x) => Math.fround(x * (ALPHA / R))));
    expect([...out.tensors.keys()].some((k) => k.endsWith('.alpha'))).toBe(false);
  });

  it('refuses what has no place: kohya for SD 3.5, a module the kohya FLUX.1 layout lacks, a half adapter', async () => {
    const sd3 = loraFile([['transformer_blocks.0.attn.to_q', 1536, 1536]], {});
    await expect(convert(sd3.bytes, { loraFormat: 'kohya' })).rejects.toThrow(/kohya layout is offered for FLUX\.1 LoRAs/);
    const odd = loraFile([...FLUX_MODULES, ['x_embedder', H, 64]], {});
    await expect(convert(odd.bytes, {})).rejects.toThrow(/1 adapted module\(s\) have no place in the kohya FLUX\.1 layout: x_embedder/);
    const tensors = new Map<string, Tensor>([['transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight', f32('a', [R, H])]]);
    await expect(convert(safetensorsBytes(tensors), {})).rejects.toThrow(/has only its A \(down\) matrix/);
    await expect(convert(safetensorsBytes(tensors), { architecture: 'sd1' })).rejects.toThrow(/transformer LoRA is for FLUX\.1 or SD 3\.5, not sd1/);
  });
});
