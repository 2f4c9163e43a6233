import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openFileSource } from '../../src/convert/io.js';
import { buildHeader, orderForAlignment, parseHeader, readHeader } from '../../src/convert/safetensors.js';
import { readSafetensors, safetensorsBytes } from './fixtures.js';

function header(obj: unknown, pad = 0): Buffer {
  const json = Buffer.from(JSON.stringify(obj) + ' '.repeat(pad));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.byteLength));
  return Buffer.concat([len, json]);
}

describe('safetensors header', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'booth-st-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const read = async (bytes: Buffer) => {
    const f = path.join(dir, `f${Math.random()}.safetensors`);
    await writeFile(f, bytes);
    const src = await openFileSource(f);
    try {
      return await readHeader(src);
    } finally {
      await src.close();
    }
  };

  it('reads a valid file written by an independent writer', async () => {
    const data = new Map([
      ['a', { dtype: 'F32', shape: [2, 2], data: new Uint8Array(16) }],
      ['b', { dtype: 'I64', shape: [1], data: new Uint8Array(8) }],
      ['s', { dtype: 'F16', shape: [], data: new Uint8Array(2) }],
    ]);
    const h = await read(safetensorsBytes(data, { k: 'v' }));
    expect(h.metadata).toEqual({ k: 'v' });
    expect([...h.tensors.keys()]).toEqual(['a', 'b', 's']);
    expect(h.tensors.get('s')?.shape).toEqual([]);
    expect(h.dataStart % 8).toBe(0);
  });

  const cases: Array<[string, Buffer, RegExp]> = [
    ['truncated length', Buffer.alloc(5), /fewer than the 8-byte/],
    ['header over the limit', (() => { const b = Buffer.alloc(16); b.writeBigUInt64LE(200_000_000n); return b; })(), /over the 100000000-byte limit/],
    ['header longer than the file', (() => { const b = Buffer.alloc(16); b.writeBigUInt64LE(100n); return b; })(), /truncated/],
    ['not JSON', Buffer.concat([header({}).subarray(0, 8), Buffer.from('{nope}')]).subarray(0, 14), /not UTF-8 JSON|claims/],
    ['does not start with {', header([1]), /does not start with/],
    ['unknown dtype', Buffer.concat([header({ a: { dtype: 'F17', shape: [1], data_offsets: [0, 4] } }), Buffer.alloc(4)]), /unknown dtype "F17"/],
    ['overlapping offsets', Buffer.concat([header({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }), Buffer.alloc(8)]), /"b" overlaps/],
    ['out-of-range offsets', Buffer.concat([header({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }), Buffer.alloc(8)]), /truncated or out-of-range/],
    ['shape and offsets disagree', Buffer.concat([header({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }), Buffer.alloc(8)]), /needs 12 bytes/],
    ['a gap', Buffer.concat([header({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }), Buffer.alloc(8)]), /gap of 4 bytes/],
    ['trailing bytes', Buffer.concat([header({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }), Buffer.alloc(8)]), /trailing data/],
    ['non-string metadata', Buffer.concat([header({ __metadata__: { n: 1 } })]), /metadata "n" is not a string/],
    ['negative offsets', Buffer.concat([header({ a: { dtype: 'F32', shape: [1], data_offsets: [-4, 0] } })]), /invalid data_offsets/],
  ];
  for (const [what, bytes, re] of cases) {
    it(`rejects ${what}, naming the file`, async () => {
      await expect(read(bytes)).rejects.toThrow(re);
      await expect(read(bytes)).rejects.toThrow(/is not a valid safetensors file/);
    });
  }

  it('writes headers padded to 8 bytes, tensors aligned, readable by an independent reader', () => {
    const specs = orderForAlignment([
      { name: 'h', dtype: 'F16' as const, shape: [3] },
      { name: 'f', dtype: 'F32' as const, shape: [3] },
      { name: 'i', dtype: 'I64' as const, shape: [1] },
      { name: 'u', dtype: 'U8' as const, shape: [5] },
    ]);
    expect(specs.map((s) => s.name)).toEqual(['i', 'f', 'h', 'u']);
    const h = buildHeader(specs, { 'modelspec.title': 'ü' });
    expect((h.bytes.byteLength) % 8).toBe(0);
    const file = Buffer.concat([h.bytes, Buffer.alloc(h.fileSize - h.bytes.byteLength)]);
    const parsed = readSafetensors(file);
    expect(parsed.metadata['modelspec.title']).toBe('ü');
    expect(parseHeader(h.bytes.subarray(8), h.fileSize, 'x').tensors.get('h')?.start).toBe(h.bytes.byteLength + 8 + 12);
    expect(() => buildHeader([specs[2] ?? specs[0]!, specs[1] ?? specs[0]!])).toThrow(/not a multiple of 4/);
    expect(() => buildHeader([specs[0]!, specs[0]!])).toThrow(/used twice/);
  });
});
