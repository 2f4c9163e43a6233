import { describe, expect, it } from 'vitest';
import { convertFloats, f16BitsToF32, f32BitsToBf16, f32BitsToF16, nativeFloat16 } from '../../src/convert/dtype.js';

/** Independent oracle: the nearest half by search over all finite halves, ties to the even one. */
const halves = (() => {
  const list: Array<{ v: number; bits: number }> = [];
  for (let h = 0; h < 0x7c00; h++) list.push({ v: f16BitsToF32(h), bits: h });
  return list;
})();
function oracleF16(x: number): number {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  const max = 65504;
  if (a >= max + 16) return sign | 0x7c00; // 65520 is the midpoint to 2^16: it rounds to infinity (even)
  let lo = 0;
  let hi = halves.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if ((halves[mid]?.v ?? 0) <= a) lo = mid;
    else hi = mid;
  }
  const l = halves[lo] ?? { v: 0, bits: 0 };
  const h = halves[hi] ?? l;
  if (a - l.v < h.v - a) return sign | l.bits;
  if (a - l.v > h.v - a) return sign | h.bits;
  return sign | ((l.bits & 1) === 0 ? l.bits : h.bits);
}
function oracleBf16(x: number): number {
  // Exact: a float is representable as a double; pick between the two truncations by distance.
  const bits = new Uint32Array(new Float32Array([x]).buffer)[0] ?? 0;
  if (Number.isNaN(x)) return -1;
  const down = bits >>> 16;
  const asF = (b: number) => new Float32Array(new Uint32Array([b << 16]).buffer)[0] ?? 0;
  const lowV = asF(down);
  const upBits = down + 1;
  // Past the largest finite value the next step up is 2^128 (IEEE rounds against that, then overflows).
  const upV = (upBits & 0x7fff) >= 0x7f80 ? (x < 0 ? -(2 ** 128) : 2 ** 128) : asF(upBits);
  const dl = Math.abs(x - lowV);
  const du = Math.abs(upV - x);
  if (dl < du) return down;
  if (du < dl) return upBits & 0xffff;
  return (down & 1) === 0 ? down : upBits & 0xffff;
}
function f32(bits: number): number {
  return new Float32Array(new Uint32Array([bits >>> 0]).buffer)[0] ?? 0;
}
const EDGES = [
  0, 0x80000000, 0x3f800000, 0xbf800000, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0xffc00001, 0x477fe000, 0x477fefff, 0x477ff000, 0x477ff001, 0x7f7fffff,
  0x38800000, 0x387fffff, 0x33800000, 0x33000000, 0x33000001, 0x337fffff, 0xb3000001, 0x00000001, 0x3f801000, 0x3f803000, 0x3f802fff, 0x38801000, 0x387fe000,
  0x3f808000, 0x3f818000, 0x3f80ffff,
];
function randomBits(n: number): number[] {
  let s = 12345;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const t = (Math.imul(s ^ (s >>> 15), 2654435761) >>> 0) ^ (i * 7919);
    out.push(t >>> 0);
  }
  return out;
}

if (!nativeFloat16) console.log('skipping the native Float16Array comparison: this Node has no Float16Array (Node 24 has); the JavaScript fallback is tested either way');

describe('fp32 → fp16', () => {
  const inputs = [...EDGES, ...randomBits(60_000)];
  it('the JavaScript path rounds to nearest even, with subnormals, overflow to infinity, NaN kept', () => {
    for (const b of inputs) {
      const x = f32(b);
      const got = f32BitsToF16(b | 0);
      if (Number.isNaN(x)) {
        expect((got & 0x7c00) === 0x7c00 && (got & 0x3ff) !== 0, `NaN ${b.toString(16)}`).toBe(true);
        expect(got & 0x8000).toBe((b >>> 16) & 0x8000);
      } else expect(got, `input 0x${b.toString(16)} (${x})`).toBe(oracleF16(x));
    }
  });
  it.skipIf(!nativeFloat16)('the native path gives the same bits on non-NaN input (array conversion)', () => {
    const src = new Uint32Array(inputs.map((b) => b >>> 0));
    const bytes = new Uint8Array(src.buffer);
    const a = new Uint8Array(src.length * 2);
    const b = new Uint8Array(src.length * 2);
    convertFloats(bytes, 'F32', 'F16', a, { native: true });
    convertFloats(bytes, 'F32', 'F16', b, { native: false });
    const ua = new Uint16Array(a.buffer);
    const ub = new Uint16Array(b.buffer);
    for (let i = 0; i < src.length; i++) {
      if (Number.isNaN(f32(src[i] ?? 0))) expect((ua[i] ?? 0) & 0x7fff).toBeGreaterThan(0x7c00);
      else expect(ua[i], `0x${(src[i] ?? 0).toString(16)}`).toBe(ub[i]);
    }
  });
});

describe('fp32 → bf16', () => {
  it('rounds to nearest even; huge values become infinity; NaN stays NaN', () => {
    for (const b of [...EDGES, 0x3f80_8000, 0x3f81_8000, 0x7f7f_8000, ...randomBits(60_000)]) {
      const x = f32(b);
      const got = f32BitsToBf16(b | 0);
      if (Number.isNaN(x)) expect((got & 0x7f80) === 0x7f80 && (got & 0x7f) !== 0).toBe(true);
      else expect(got, `0x${b.toString(16)}`).toBe(oracleBf16(x));
    }
  });
});

describe('convertFloats', () => {
  it('widens fp16 and bf16 exactly and narrows between them through fp32', () => {
    const halvesIn = new Uint16Array([0x3c00, 0x0001, 0x7bff, 0xfc00, 0x8000, 0x3555]);
    const out = new Uint8Array(halvesIn.length * 4);
    convertFloats(new Uint8Array(halvesIn.buffer), 'F16', 'F32', out);
    expect([...new Float32Array(out.buffer)]).toEqual([1, 2 ** -24, 65504, -Infinity, -0, f16BitsToF32(0x3555)]);
    const bf = new Uint8Array(halvesIn.length * 2);
    convertFloats(new Uint8Array(halvesIn.buffer), 'F16', 'BF16', bf);
    const back = new Uint8Array(halvesIn.length * 4);
    convertFloats(bf, 'BF16', 'F32', back);
    expect(new Float32Array(back.buffer)[0]).toBe(1);
    expect(new Float32Array(back.buffer)[3]).toBe(-Infinity);
  });
  it('accepts unaligned input and rejects size mismatches and unaligned output', () => {
    const buf = new Uint8Array(9);
    new DataView(buf.buffer).setFloat32(1, 1.5, true);
    const out = new Uint8Array(2);
    convertFloats(buf.subarray(1, 5), 'F32', 'F16', out);
    expect(new DataView(out.buffer).getUint16(0, true)).toBe(0x3e00);
    expect(() => convertFloats(buf.subarray(0, 4), 'F32', 'F16', new Uint8Array(4))).toThrow(/do not make/);
    expect(() => convertFloats(buf.subarray(0, 4), 'F32', 'F16', new Uint8Array(3).subarray(1))).toThrow(/aligned/);
  });
});
