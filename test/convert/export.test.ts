import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { downloadExport, exportRun, listExports } from '../../src/convert/export.js';
import { createFsStore } from '../../src/storage/index.js';
import type { ObjectStore } from '../../src/storage/types.js';
import { readSafetensors, safetensorsBytes, SD15_INLINE, shrink, values, writeDiffusersFolder } from './fixtures.js';

let dir: string;
let store: ObjectStore;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'booth-export-'));
  store = createFsStore({ root: path.join(dir, 'store') });
  await store.put('sessions/alice/session.json', JSON.stringify({ name: 'alice', subject: { trigger: 'ohwx', classNoun: 'woman', kind: 'person' } }));
});
afterAll(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

/** Upload a local folder under a store prefix. */
async function upload(local: string, prefix: string): Promise<void> {
  for (const e of await readdir(local, { withFileTypes: true, recursive: true })) {
    if (!e.isFile()) continue;
    const full = path.join(e.parentPath, e.name);
    await store.put(`${prefix}/${path.relative(local, full).split(path.sep).join('/')}`, await readFile(full));
  }
}

async function makeRun(run: string, spec: unknown, complete = true, local?: string): Promise<void> {
  const folder = local ?? path.join(dir, `model-${run}`);
  if (!local) await writeDiffusersFolder(folder, shrink(SD15_INLINE, 16), { shards: 2 });
  await upload(folder, `sessions/alice/runs/${run}/model`);
  await store.put(`sessions/alice/runs/${run}/spec.json`, JSON.stringify(spec));
  await store.put(`sessions/alice/runs/${run}/status.json`, JSON.stringify({ step: 800, state: 'done' }));
  if (complete) await store.put(`sessions/alice/runs/${run}/model/COMPLETE`, '');
}

const spec = { base: { architecture: 'sd1', model: 'runwayml/stable-diffusion-v1-5' }, resolution: 512, mode: { type: 'full' }, extra: { kept: true } };

describe('booth export (library)', () => {
  it('refuses a session without a complete run', async () => {
    await makeRun('20250101-000000-0a0a', spec, false);
    await expect(exportRun(store, 'alice')).rejects.toThrow(/no run with a complete model/);
    await expect(exportRun(store, 'alice', { run: '20250101-000000-0a0a' })).rejects.toThrow(/model\/COMPLETE is missing/);
  });

  it('exports the newest complete run with metadata, hashes and a record; download verifies the hash', async () => {
    await makeRun('20250102-000000-0a0a', spec);
    await makeRun('20250103-000000-0a0a', spec);
    await makeRun('20250104-000000-0a0a', spec, false);
    const rec = await exportRun(store, 'alice', { dtype: 'fp16' });
    expect(rec.run).toBe('20250103-000000-0a0a');
    expect(rec.name).toBe('alice-20250103-000000-0a0a');
    expect(rec.key).toBe('sessions/alice/exports/alice-20250103-000000-0a0a.safetensors');
    expect(rec.autov2).toBe(rec.sha256.slice(0, 10));
    expect(rec.yamlKey).toBeNull();
    const stored = await readFile(path.join(dir, 'store', rec.key));
    expect(createHash('sha256').update(stored).digest('hex')).toBe(rec.sha256);
    const file = readSafetensors(stored);
    expect(file.metadata['modelspec.trigger_phrase']).toBe('ohwx woman');
    expect(file.metadata['booth.base_model']).toBe('runwayml/stable-diffusion-v1-5');
    expect(file.metadata['booth.steps']).toBe('800');
    expect(file.metadata['booth.session']).toBe('alice');
    expect(file.tensors.get('model.diffusion_model.input_blocks.0.0.weight')?.dtype).toBe('F16');
    expect((await listExports(store, 'alice')).map((e) => e.name)).toEqual([rec.name]);

    const dl = await downloadExport(store, 'alice', rec.name, dir);
    expect(dl.file).toBe(path.join(dir, `${rec.name}.safetensors`));
    expect(dl.sha256).toBe(rec.sha256);
    // A damaged stored copy is caught and the local file is not created.
    const damaged = Buffer.from(stored);
    damaged.writeUInt8((damaged.readUInt8(damaged.length - 1) ^ 0xff) & 0xff, damaged.length - 1);
    await store.put(rec.key, damaged);
    await expect(downloadExport(store, 'alice', rec.name, path.join(dir, 'bad.safetensors'))).rejects.toThrow(/does not match its recorded SHA-256/);
    expect((await readdir(dir)).filter((n) => n.startsWith('bad') || n.includes('booth-tmp'))).toEqual([]);
    await store.put(rec.key, stored);
  });

  it('a failing export leaves an earlier export of the same name intact', async () => {
    const before = await readFile(path.join(dir, 'store', 'sessions/alice/exports/alice-20250103-000000-0a0a.safetensors'));
    const broken = path.join(dir, 'model-broken');
    await writeDiffusersFolder(broken, shrink(SD15_INLINE, 16), { shards: 2 });
    const shard = path.join(broken, 'unet', 'diffusion_pytorch_model-00002-of-00002.safetensors');
    const b = await readFile(shard);
    await writeFile(shard, b.subarray(0, b.byteLength - 64));
    await makeRun('20250105-000000-0a0a', spec, true, broken);
    await expect(exportRun(store, 'alice', { run: '20250105-000000-0a0a', name: 'alice-20250103-000000-0a0a' })).rejects.toThrow(/truncated|out-of-range/);
    expect(await readFile(path.join(dir, 'store', 'sessions/alice/exports/alice-20250103-000000-0a0a.safetensors'))).toEqual(before);
  });

  it('refuses --step with a clear message', async () => {
    await expect(exportRun(store, 'alice', { step: 400 })).rejects.toThrow(/only the final model/);
  });

  it('exports a peft LoRA (SD 1.x) to lora_unet_/lora_te_ names with alpha from the metadata', async () => {
    const tensors = new Map<string, { dtype: string; shape: number[]; data: Uint8Array }>();
    const add = (name: string, shape: number[]) => tensors.set(name, { dtype: 'F32', shape, data: new Uint8Array(values(name, shape.reduce((a, b) => a * b, 1)).buffer) });
    add('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight', [4, 320]);
    add('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight', [320, 4]);
    add('unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k.lora_A.weight', [4, 768]);
    add('unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k.lora_B.weight', [1280, 4]);
    add('unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.lora_A.weight', [4, 1280]);
    add('unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.lora_B.weight', [10240, 4]);
    add('text_encoder.text_model.encoder.layers.3.self_attn.q_proj.lora_A.weight', [4, 768]);
    add('text_encoder.text_model.encoder.layers.3.self_attn.q_proj.lora_B.weight', [768, 4]);
    const local = path.join(dir, 'lora');
    await mkdir(local, { recursive: true });
    await writeFile(path.join(local, 'pytorch_lora_weights.safetensors'), safetensorsBytes(tensors, { 'booth.lora_rank': '4', 'booth.lora_alpha': '2' }));
    await makeRun('20250106-000000-0a0a', { base: { architecture: 'sd1', model: 'x' }, resolution: 512, mode: { type: 'lora', rank: 4, alpha: 2 } }, true, local);
    const rec = await exportRun(store, 'alice', { run: '20250106-000000-0a0a', dtype: 'fp32', name: 'alice-lora' });
    expect(rec.kind).toBe('lora');
    const file = readSafetensors(await readFile(path.join(dir, 'store', rec.key)));
    const k = 'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q';
    expect(file.tensors.get(`${k}.lora_down.weight`)?.shape).toEqual([4, 320]);
    expect(file.tensors.get(`${k}.lora_up.weight`)?.shape).toEqual([320, 4]);
    expect(Buffer.compare(file.tensors.get(`${k}.lora_down.weight`)?.data ?? Buffer.alloc(0), Buffer.from(tensors.get('unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight')?.data ?? []))).toBe(0);
    const alpha = file.tensors.get(`${k}.alpha`);
    expect(alpha?.shape).toEqual([]);
    expect(alpha?.data.readFloatLE(0)).toBe(2);
    expect(file.tensors.has('lora_te_text_model_encoder_layers_3_self_attn_q_proj.lora_up.weight')).toBe(true);
    expect(file.tensors.has('lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj.alpha')).toBe(true);
    expect(file.tensors.size).toBe(12);
    expect(file.metadata['modelspec.architecture']).toBe('stable-diffusion-v1/lora');
    expect(file.metadata.ss_network_alpha).toBe('2');
  });
});

describe('LoRA (SDXL naming)', () => {
  it('uses original UNet block names and lora_te1_/lora_te2_; alpha defaults to the rank', async () => {
    const { planLora } = await import('../../src/convert/lora.js');
    const { openFileSource } = await import('../../src/convert/io.js');
    const tensors = new Map<string, { dtype: string; shape: number[]; data: Uint8Array }>();
    const add = (name: string, shape: number[]) => tensors.set(name, { dtype: 'F16', shape, data: new Uint8Array(shape.reduce((a, b) => a * b, 1) * 2) });
    add('unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.lora_A.weight', [8, 2048]);
    add('unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.lora_B.weight', [640, 8]);
    add('unet.up_blocks.0.upsamplers.0.conv.lora_A.weight', [8, 1280, 3, 3]);
    add('unet.up_blocks.0.upsamplers.0.conv.lora_B.weight', [1280, 8, 1, 1]);
    add('text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight', [8, 768]);
    add('text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_B.weight', [3072, 8]);
    add('text_encoder_2.text_model.encoder.layers.31.self_attn.out_proj.lora_A.weight', [8, 1280]);
    add('text_encoder_2.text_model.encoder.layers.31.self_attn.out_proj.lora_B.weight', [1280, 8]);
    const f = path.join(dir, 'xl-lora.safetensors');
    await writeFile(f, safetensorsBytes(tensors));
    const lp = await planLora(await openFileSource(f), { dtype: 'fp16' });
    try {
      const names = lp.plan.tensors.map((t) => t.name);
      expect(lp.facts.architecture).toBe('sdxl');
      expect(names).toContain('lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k.lora_down.weight');
      expect(names).toContain('lora_unet_output_blocks_2_2_conv.lora_up.weight');
      expect(names).toContain('lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha');
      expect(names).toContain('lora_te2_text_model_encoder_layers_31_self_attn_out_proj.lora_down.weight');
      const alpha = lp.plan.tensors.find((t) => t.name.endsWith('.alpha'));
      const part = alpha?.parts[0];
      expect(part && 'bytes' in part ? new DataView(part.bytes.buffer).getUint16(0, true) : 0).toBe(0x4800); // 8.0 in fp16
    } finally {
      await lp.close();
    }
    // A module with only one matrix is refused.
    tensors.delete('unet.up_blocks.0.upsamplers.0.conv.lora_B.weight');
    await writeFile(f, safetensorsBytes(tensors));
    await expect(planLora(await openFileSource(f))).rejects.toThrow(/has only its A \(down\) matrix/);
  });
});
