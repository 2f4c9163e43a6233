/** Text-encoder names as transformers 4 and 5 save them both map to the same single-file names. */
import { describe, expect, it } from 'vitest';
import { clipTextName, mapHfClip, mapOpenClip } from '../../src/convert/keymap.js';

describe('CLIP text-encoder names', () => {
  it('adds the text_model. level that transformers 5 no longer saves, and leaves classic names alone', () => {
    expect(clipTextName('encoder.layers.3.mlp.fc1.weight')).toBe('text_model.encoder.layers.3.mlp.fc1.weight');
    expect(clipTextName('embeddings.token_embedding.weight')).toBe('text_model.embeddings.token_embedding.weight');
    expect(clipTextName('final_layer_norm.bias')).toBe('text_model.final_layer_norm.bias');
    expect(clipTextName('text_model.final_layer_norm.bias')).toBe('text_model.final_layer_norm.bias');
    expect(clipTextName('text_projection.weight')).toBe('text_projection.weight');
  });

  it('maps both spellings of an SD 1.x encoder to cond_stage_model.transformer.text_model.*, reading the original name', () => {
    const v4 = mapHfClip(new Map([['text_model.encoder.layers.0.mlp.fc1.weight', [3072, 768]]]), 'cond_stage_model.transformer.');
    const v5 = mapHfClip(new Map([['encoder.layers.0.mlp.fc1.weight', [3072, 768]]]), 'cond_stage_model.transformer.');
    expect(v5.mapped.map((m) => m.name)).toEqual(v4.mapped.map((m) => m.name));
    expect(v5.mapped[0]).toMatchObject({ name: 'cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight', parts: ['encoder.layers.0.mlp.fc1.weight'] });
    expect(v5.unknown).toEqual([]);
  });

  it('maps transformers 5 names of an OpenCLIP-style encoder, q/k/v concatenated', () => {
    const inputs = new Map<string, number[]>([
      ['encoder.layers.0.self_attn.q_proj.weight', [4, 4]],
      ['encoder.layers.0.self_attn.k_proj.weight', [4, 4]],
      ['encoder.layers.0.self_attn.v_proj.weight', [4, 4]],
      ['final_layer_norm.weight', [4]],
    ]);
    const out = mapOpenClip(inputs, 'cond_stage_model.model.');
    expect(out.unknown).toEqual([]);
    expect(out.mapped.map((m) => m.name).sort()).toEqual(['cond_stage_model.model.ln_final.weight', 'cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight']);
  });
});
