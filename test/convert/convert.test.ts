import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertCheckpoint, planCheckpoint } from '../../src/convert/checkpoint.js';
import { localFolder } from '../../src/convert/diffusers.js';
import { f32BitsToF16 } from '../../src/convert/dtype.js';
import { ldmUNetShapes, unetConfig } from '../../src/convert/layouts.js';
import {
  componentShapes,
  haveShared,
  openClipBack,
  readSafetensors,
  SD15_INLINE,
  sharedConfigs,
  sharedSkipReason,
  shrink,
  unetBack,
  vaeBack,
  writeDiffusersFolder,
  type Configs,
} from './fixtures.js';

if (!haveShared) console.warn(sharedSkipReason);

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'booth-convert-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Diffusers tensors recovered from a single-file checkpoint with our own reverse map. */
function reverse(out: Map<string, { shape: number[]; data: Buffer }>, c: Configs): Map<string, Buffer> {
  const L = c.unet.layers_per_block as number;
  const levels = (c.vae.block_out_channels as number[]).length;
  const back = new Map<string, Buffer>();
  for (const [name, t] of out) {
    let m: RegExpExecArray | null;
    if ((m = /^model\.diffusion_model\.(.+)$/.exec(name))) back.set(`unet/${unetBack(m[1] ?? '', L)}`, t.data);
    else if ((m = /^first_stage_model\.(.+)$/.exec(name))) back.set(`vae/${vaeBack(m[1] ?? '', levels)}`, t.data);
    else if ((m = /^(?:cond_stage_model|conditioner\.embedders\.0)\.transformer\.(.+)$/.exec(name))) back.set(`text_encoder/${m[1]}`, t.data);
    else if ((m = /^(cond_stage_model|conditioner\.embedders\.1)\.model\.(.+)$/.exec(name))) {
      const comp = m[1] === 'cond_stage_model' ? 'text_encoder' : 'text_encoder_2';
      const names = openClipBack(m[2] ?? '');
      if (names.length === 3) {
        const third = t.data.byteLength / 3;
        names.forEach((n, i) => back.set(`${comp}/${n}`, t.data.subarray(i * third, (i + 1) * third)));
      } else if (m[2] === 'text_projection') {
        // Transpose back: stored [d, proj] → Linear weight [proj, d].
        const [d = 0, p = 0] = t.shape;
        const src = new Float32Array(t.data.buffer, t.data.byteOffset, d * p);
        const dst = new Float32Array(d * p);
        for (let i = 0; i < d; i++) for (let j = 0; j < p; j++) dst[j * d + i] = src[i * p + j] ?? 0;
        back.set(`${comp}/text_projection.weight`, Buffer.from(dst.buffer));
      } else back.set(`${comp}/${names[0]}`, t.data);
    } else throw new Error(`unexpected output key ${name}`);
  }
  return back;
}

function expectBitExact(inputs: Record<string, Map<string, Float32Array>>, back: Map<string, Buffer>): void {
  let n = 0;
  for (const [comp, tensors] of Object.entries(inputs)) {
    for (const [name, v] of tensors) {
      const got = back.get(`${comp}/${name}`);
      expect(got, `${comp}/${name} missing from the output`).toBeDefined();
      expect(Buffer.compare(got ?? Buffer.alloc(0), Buffer.from(v.buffer)), `${comp}/${name} bytes`).toBe(0);
      n++;
    }
  }
  expect(back.size).toBe(n);
}

async function roundTrip(c: Configs, label: string, arch: 'sd1' | 'sd2' | 'sdxl', extra: { positionIds?: boolean } = {}) {
  const folder = path.join(dir, label);
  const inputs = await writeDiffusersFolder(folder, c, extra);
  const out = path.join(dir, `${label}.safetensors`);
  const r = await convertCheckpoint(localFolder(folder), { file: out }, { dtype: 'fp32', architecture: arch });
  const file = readSafetensors(await readFile(out));
  return { r, file, inputs };
}

describe('Diffusers → single file (SD 1.5 structure, no ../shared needed)', () => {
  const c = shrink(SD15_INLINE, 16);
  it('fp32: every tensor lands under its original name; a reverse map recovers the Diffusers tensors bit-exactly', async () => {
    const { r, file, inputs } = await roundTrip(c, 'sd1', 'sd1', { positionIds: true });
    expect(file.tensors.has('model.diffusion_model.input_blocks.1.1.proj_in.weight')).toBe(true);
    expect(file.tensors.get('model.diffusion_model.output_blocks.2.1.conv.weight')?.shape).toEqual([80, 80, 3, 3]);
    expect(file.tensors.get('first_stage_model.encoder.mid.attn_1.q.weight')?.shape).toEqual([32, 32, 1, 1]);
    expect(file.tensors.get('first_stage_model.encoder.mid.attn_1.q.bias')?.shape).toEqual([32]);
    expect(file.tensors.get('cond_stage_model.transformer.text_model.embeddings.position_ids')?.dtype).toBe('I64');
    file.tensors.delete('cond_stage_model.transformer.text_model.embeddings.position_ids');
    expectBitExact(inputs, reverse(file.tensors, c));
    expect(r.facts.architecture).toBe('sd1');
    expect(file.metadata['modelspec.architecture']).toBe('stable-diffusion-v1');
    expect(file.metadata['modelspec.sai_model_spec']).toBe('1.0.0');
    expect(file.metadata['modelspec.resolution']).toBe('512x512');
    expect(r.sha256).toMatch(/^[0-9a-f]{64}$/);
    const { createHash } = await import('node:crypto');
    expect(r.sha256).toBe(createHash('sha256').update(await readFile(path.join(dir, 'sd1.safetensors'))).digest('hex'));
  });

  it('fp16 and bf16: values correctly rounded, alignment valid, integers kept', async () => {
    const folder = path.join(dir, 'sd1-h');
    const inputs = await writeDiffusersFolder(folder, c, { positionIds: true });
    for (const dtype of ['fp16', 'bf16'] as const) {
      const out = path.join(dir, `sd1-${dtype}.safetensors`);
      await convertCheckpoint(localFolder(folder), { file: out }, { dtype, architecture: 'sd1' });
      const file = readSafetensors(await readFile(out));
      const v = inputs.unet?.get('down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight') ?? new Float32Array();
      const t = file.tensors.get('model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight');
      expect(t?.dtype).toBe(dtype === 'fp16' ? 'F16' : 'BF16');
      const got = new Uint16Array(new Uint8Array(t?.data ?? []).buffer);
      const bits = new Int32Array(v.buffer);
      for (let i = 0; i < v.length; i++) {
        const want = dtype === 'fp16' ? f32BitsToF16(bits[i] ?? 0) : ((bits[i] ?? 0) + 0x7fff + (((bits[i] ?? 0) >>> 16) & 1)) >>> 16 & 0xffff;
        expect(got[i]).toBe(want);
      }
      expect(file.tensors.get('cond_stage_model.transformer.text_model.embeddings.position_ids')?.dtype).toBe('I64');
    }
  });

  it('reads sharded and fp16-variant inputs', async () => {
    const folder = path.join(dir, 'sd1-shard');
    const inputs = await writeDiffusersFolder(folder, c, { shards: 3, variant: 'fp16', dtype: 'F16' });
    const out = path.join(dir, 'sd1-shard.safetensors');
    const r = await convertCheckpoint(localFolder(folder), { file: out }, { dtype: 'fp16', architecture: 'sd1' });
    const file = readSafetensors(await readFile(out));
    expect(r.tensors).toBe(Object.values(inputs).reduce((a, m) => a + m.size, 0));
    const v = inputs.unet?.get('conv_in.weight') ?? new Float32Array();
    const got = new Uint16Array(new Uint8Array(file.tensors.get('model.diffusion_model.input_blocks.0.0.weight')?.data ?? []).buffer);
    expect(got[3]).toBe(f32BitsToF16(new Int32Array(v.buffer)[3] ?? 0));
    expect((await readdir(path.join(folder, 'unet'))).filter((n) => n.includes('-of-')).length).toBe(3);
  });

  describe('corrupt inputs fail clearly and leave no partial output', () => {
    const previous = Buffer.from('previous export');
    async function attempt(label: string, damage: (folder: string) => Promise<void>): Promise<Error> {
      const folder = path.join(dir, label);
      await writeDiffusersFolder(folder, c, { shards: 2 });
      await damage(folder);
      const out = path.join(dir, `${label}-out`, 'model.safetensors');
      await mkdir(path.dirname(out), { recursive: true });
      await writeFile(out, previous);
      const err = await convertCheckpoint(localFolder(folder), { file: out }, { dtype: 'fp16', architecture: 'sd1' }).then(
        () => new Error('no error'),
        (e: unknown) => e as Error,
      );
      expect(await readFile(out)).toEqual(previous);
      expect(await readdir(path.dirname(out))).toEqual(['model.safetensors']);
      return err;
    }
    const shard = (folder: string) => path.join(folder, 'unet', 'diffusion_pytorch_model-00002-of-00002.safetensors');

    it('a truncated shard', async () => {
      const err = await attempt('trunc', async (f) => {
        const fh = await open(shard(f), 'r+');
        const size = (await fh.stat()).size;
        await fh.truncate(size - 100);
        await fh.close();
      });
      expect(err.message).toMatch(/00002-of-00002\.safetensors.*(truncated|out-of-range)/);
    });
    it('a bad header', async () => {
      const err = await attempt('badheader', async (f) => {
        const b = await readFile(shard(f));
        b.write('{"x": oops', 8);
        await writeFile(shard(f), b);
      });
      expect(err.message).toMatch(/not a valid safetensors file/);
    });
    it('overlapping offsets', async () => {
      const err = await attempt('overlap', async (f) => {
        const b = await readFile(shard(f));
        const n = Number(b.readBigUInt64LE(0));
        const h = JSON.parse(b.subarray(8, 8 + n).toString()) as Record<string, { data_offsets: number[] }>;
        const names = Object.keys(h).filter((k) => k !== '__metadata__');
        const second = h[names[1] ?? ''];
        const first = h[names[0] ?? ''];
        if (second && first) second.data_offsets = [first.data_offsets[0] ?? 0, (first.data_offsets[0] ?? 0) + ((second.data_offsets[1] ?? 0) - (second.data_offsets[0] ?? 0))];
        let json = JSON.stringify(h);
        json = json.padEnd(n, ' ');
        b.write(json.slice(0, n), 8);
        await writeFile(shard(f), b);
      });
      expect(err.message).toMatch(/overlaps|needs|gap/);
    });
    it('a missing component', async () => {
      const err = await attempt('novae', async (f) => rm(path.join(f, 'vae'), { recursive: true }));
      expect(err.message).toMatch(/no "vae\/" component/);
    });
    it('a missing shard', async () => {
      const err = await attempt('noshard', async (f) => rm(shard(f)));
      expect(err.message).toMatch(/00002-of-00002\.safetensors is missing/);
    });
    it('an unknown tensor is reported by name', async () => {
      const folder = path.join(dir, 'extra');
      await writeDiffusersFolder(folder, c);
      const file = path.join(folder, 'unet', 'diffusion_pytorch_model.safetensors');
      const parsed = readSafetensors(await readFile(file));
      const { safetensorsBytes } = await import('./fixtures.js');
      const t = new Map([...parsed.tensors].map(([k, v]) => [k, { dtype: v.dtype, shape: v.shape, data: new Uint8Array(v.data) }]));
      t.set('down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.lora.weight', { dtype: 'F32', shape: [1], data: new Uint8Array(4) });
      await writeFile(file, safetensorsBytes(t));
      await expect(planCheckpoint(localFolder(folder), { architecture: 'sd1' })).rejects.toThrow(/processor\.lora\.weight/);
    });
  });
});

describe.skipIf(!haveShared)('real configs from ../shared/models', () => {
  it('the Diffusers layouts have the published parameter counts', async () => {
    const count = (m: Map<string, number[]>) => [...m.values()].reduce((a, s) => a + s.reduce((x, y) => x * y, 1), 0);
    const sd15 = componentShapes(await sharedConfigs('sd15'));
    expect(count(sd15.unet ?? new Map())).toBe(859_520_964);
    expect(count(sd15.vae ?? new Map())).toBe(83_653_863);
    expect(count(sd15.text_encoder ?? new Map())).toBe(123_060_480);
    const sd21 = componentShapes(await sharedConfigs('sd21'));
    expect(count(sd21.unet ?? new Map())).toBe(865_910_724);
    expect(count(sd21.text_encoder ?? new Map())).toBe(340_387_840);
    const xl = componentShapes(await sharedConfigs('sdxl-base'));
    expect(count(xl.unet ?? new Map())).toBe(2_567_463_684);
    expect(count(xl.text_encoder_2 ?? new Map())).toBe(694_659_840);
  });

  /** A full-size folder whose files have real headers and sparse (unwritten) data. */
  async function sparseFolder(name: string, c: Configs): Promise<string> {
    const folder = path.join(dir, name);
    for (const [comp, shapes] of Object.entries(componentShapes(c))) {
      await mkdir(path.join(folder, comp), { recursive: true });
      await writeFile(path.join(folder, comp, 'config.json'), JSON.stringify(c[comp as keyof Configs]));
      const header: Record<string, unknown> = {};
      let off = 0;
      for (const [t, s] of shapes) {
        const bytes = s.reduce((a, b) => a * b, 1) * 4;
        header[t] = { dtype: 'F32', shape: s, data_offsets: [off, off + bytes] };
        off += bytes;
      }
      let json = JSON.stringify(header);
      while (json.length % 8) json += ' ';
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(json.length));
      const file = path.join(folder, comp, `${comp.startsWith('text') ? 'model' : 'diffusion_pytorch_model'}.safetensors`);
      await writeFile(file, Buffer.concat([len, Buffer.from(json)]));
      const fh = await open(file, 'r+');
      await fh.truncate(8 + json.length + off);
      await fh.close();
    }
    return folder;
  }

  it('full SD 1.5: the exact single-file key set and shapes', async () => {
    const c = await sharedConfigs('sd15');
    const cp = await planCheckpoint(localFolder(await sparseFolder('sd15-full', c)));
    try {
      const names = new Map(cp.plan.tensors.map((t) => [t.name, t.shape]));
      expect(cp.facts.architecture).toBe('sd1');
      expect(names.size).toBe(1130);
      const known: Array<[string, number[]]> = [
        ['model.diffusion_model.time_embed.0.weight', [1280, 320]],
        ['model.diffusion_model.input_blocks.1.1.proj_in.weight', [320, 320, 1, 1]],
        ['model.diffusion_model.input_blocks.3.0.op.weight', [320, 320, 3, 3]],
        ['model.diffusion_model.input_blocks.4.0.skip_connection.weight', [640, 320, 1, 1]],
        ['model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight', [1280, 768]],
        ['model.diffusion_model.output_blocks.2.1.conv.weight', [1280, 1280, 3, 3]],
        ['model.diffusion_model.output_blocks.5.2.conv.weight', [1280, 1280, 3, 3]],
        ['model.diffusion_model.output_blocks.11.1.proj_out.weight', [320, 320, 1, 1]],
        ['model.diffusion_model.out.2.weight', [4, 320, 3, 3]],
        ['first_stage_model.encoder.mid.attn_1.q.weight', [512, 512, 1, 1]],
        ['first_stage_model.decoder.up.0.block.0.nin_shortcut.weight', [128, 256, 1, 1]],
        ['first_stage_model.decoder.up.3.upsample.conv.weight', [512, 512, 3, 3]],
        ['first_stage_model.quant_conv.weight', [8, 8, 1, 1]],
        ['cond_stage_model.transformer.text_model.embeddings.token_embedding.weight', [49408, 768]],
        ['cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc1.weight', [3072, 768]],
      ];
      for (const [k, s] of known) expect(names.get(k), k).toEqual(s);
      expect(cp.plan.header.fileSize).toBeGreaterThan(2_100_000_000);
      expect(cp.plan.metadata['modelspec.architecture']).toBe('stable-diffusion-v1');
    } finally {
      await cp.close();
    }
  });

  it('full SDXL base: the exact single-file key set and shapes', async () => {
    const c = await sharedConfigs('sdxl-base');
    const cp = await planCheckpoint(localFolder(await sparseFolder('sdxl-full', c)));
    try {
      const names = new Map(cp.plan.tensors.map((t) => [t.name, t.shape]));
      expect(cp.facts.architecture).toBe('sdxl');
      expect(cp.facts.resolution).toBe(1024);
      const expected = ldmUNetShapes(unetConfig(c.unet));
      for (const [k, s] of expected) expect(names.get(`model.diffusion_model.${k}`), k).toEqual(s);
      const known: Array<[string, number[]]> = [
        ['model.diffusion_model.label_emb.0.0.weight', [1280, 2816]],
        ['model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight', [640, 2048]],
        ['model.diffusion_model.input_blocks.7.1.transformer_blocks.9.ff.net.0.proj.weight', [10240, 1280]],
        ['model.diffusion_model.output_blocks.2.2.conv.weight', [1280, 1280, 3, 3]],
        ['model.diffusion_model.output_blocks.5.2.conv.weight', [640, 640, 3, 3]],
        ['conditioner.embedders.0.transformer.text_model.final_layer_norm.weight', [768]],
        ['conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight', [3840, 1280]],
        ['conditioner.embedders.1.model.text_projection', [1280, 1280]],
        ['conditioner.embedders.1.model.positional_embedding', [77, 1280]],
        ['first_stage_model.decoder.mid.attn_1.proj_out.weight', [512, 512, 1, 1]],
      ];
      for (const [k, s] of known) expect(names.get(k), k).toEqual(s);
      expect(names.has('model.diffusion_model.input_blocks.1.1.proj_in.weight')).toBe(false);
      expect(names.has('model.diffusion_model.output_blocks.2.1.conv.weight')).toBe(false);
      expect(cp.plan.metadata['modelspec.architecture']).toBe('stable-diffusion-xl-v1-base');
    } finally {
      await cp.close();
    }
  });

  it('SD 2.1 (shrunk): OpenCLIP names with q/k/v concatenated, bit-exact; v-prediction recognised', async () => {
    const c = shrink(await sharedConfigs('sd21'), 16);
    const { r, file, inputs } = await roundTrip(c, 'sd21', 'sd2');
    expect(file.tensors.get('cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight')?.shape).toEqual([192, 64]);
    expect(file.tensors.has('cond_stage_model.model.text_projection')).toBe(false);
    expectBitExact(inputs, reverse(file.tensors, c));
    expect(r.facts.predictionType).toBe('v_prediction');
    expect(file.metadata['modelspec.architecture']).toBe('stable-diffusion-v2-768-v');
    expect(file.metadata['modelspec.prediction_type']).toBe('v');
  });

  it('SDXL (shrunk): both encoders, text_projection transposed, sharded fp16-variant UNet, bit-exact', async () => {
    const c = shrink(await sharedConfigs('sdxl-base'), 16);
    const { file, inputs } = await roundTrip(c, 'sdxl', 'sdxl');
    expect(file.tensors.has('conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight')).toBe(true);
    expectBitExact(inputs, reverse(file.tensors, c));
    const folder = path.join(dir, 'sdxl-var');
    await writeDiffusersFolder(folder, c, { shards: 4, variant: 'fp16', dtype: 'F16' });
    const r = await convertCheckpoint(localFolder(folder), { file: path.join(dir, 'sdxl-var.safetensors') }, { architecture: 'sdxl', variant: 'fp16' });
    expect(r.tensors).toBe(file.tensors.size);
    expect(existsSync(path.join(dir, 'sdxl-var.safetensors'))).toBe(true);
  });
});
