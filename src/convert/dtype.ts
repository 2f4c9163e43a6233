/**
 * Floating-point conversion between the dtypes a Stable Diffusion checkpoint uses (F32, F16,
 * BF16), on typed arrays, chunk by chunk, so a converter never holds more than one chunk of a
 * tensor. Rounding is IEEE 754 round-to-nearest-even in both narrowing directions; subnormals are
 * produced where the target has them (F16), values beyond the target's range become infinities,
 * infinities stay infinities and NaN stays NaN (quiet, sign kept). F32→F16 uses the engine's
 * `Float16Array` where it exists (Node 24: a native, correctly rounded conversion, ~5× faster than
 * JavaScript bit twiddling) and a bit-exact JavaScript fallback elsewhere (Node 22); the two agree
 * on every non-NaN input (`test/convert/dtype.test.ts` checks both against an independent oracle).
 * Formats: IEEE 754-2008 binary16/binary32; bfloat16 is the upper half of a binary32.
 */
import { BoothError } from '../errors.js';

/** Floating-point dtypes the converter reads and writes (safetensors names). */
export const FLOAT_DTYPES = ['F32', 'F16', 'BF16'] as const;

/** One of {@link FLOAT_DTYPES}. */
export type FloatDType = (typeof FLOAT_DTYPES)[number];

/** Bytes per element of each float dtype. */
export const FLOAT_SIZE: Readonly<Record<FloatDType, number>> = { F32: 4, F16: 2, BF16: 2 };

interface Float16ArrayLike {
  readonly length: number;
  set(source: ArrayLike<number>): void;
}
type Float16Ctor = new (buffer: ArrayBufferLike, byteOffset: number, length: number) => Float16ArrayLike & ArrayLike<number>;

/** The engine's Float16Array (Node ≥ 24), or undefined. */
const NativeFloat16 = (globalThis as { Float16Array?: Float16Ctor }).Float16Array;

/**
 * F32 bit pattern (as a signed 32-bit integer) → F16 bit pattern, round-to-nearest-even.
 *
 * @param f - the binary32 bits, e.g. from an `Int32Array` view
 * @returns the binary16 bits (0..0xffff)
 * @example
 * f32BitsToF16(0x3f800000); // 0x3c00 (1.0)
 */
export function f32BitsToF16(f: number): number {
  const sign = (f >>> 16) & 0x8000;
  const a = f & 0x7fffffff;
  // Infinity, or NaN with the quiet bit set and the top of the payload kept.
  if (a >= 0x7f800000) return sign | (a === 0x7f800000 ? 0x7c00 : 0x7e00 | ((a >>> 13) & 0x3ff));
  // 65520 and above round to infinity (65504 is the largest finite half; the tie goes to even).
  if (a >= 0x477ff000) return sign | 0x7c00;
  if (a >= 0x38800000) {
    // Normal range: rebias the exponent (127 → 15), then round the 13 dropped mantissa bits to
    // nearest even; a carry runs into the exponent, which is exactly right.
    const r = a - 0x38000000;
    return sign | ((r + 0x0fff + ((r >>> 13) & 1)) >>> 13);
  }
  if (a > 0x33000000) {
    // Subnormal result: the value is m · 2^(e-150) with the implicit bit restored; in units of
    // 2^-24 that is m >> (126 - e), rounded to nearest even on the shifted-out bits.
    const e = a >>> 23;
    const m = (a & 0x7fffff) | 0x800000;
    const s = 126 - e;
    const hm = m >>> s;
    const rem = m & ((1 << s) - 1);
    const half = 1 << (s - 1);
    return sign | (hm + (rem > half || (rem === half && (hm & 1) === 1) ? 1 : 0));
  }
  // At most 2^-25 (half the smallest subnormal): rounds to a signed zero (the tie goes to even 0).
  return sign;
}

/**
 * F32 bit pattern → BF16 bit pattern, round-to-nearest-even; NaN stays a quiet NaN.
 *
 * @param f - the binary32 bits as a signed 32-bit integer
 * @returns the bfloat16 bits (0..0xffff)
 */
export function f32BitsToBf16(f: number): number {
  if ((f & 0x7fffffff) > 0x7f800000) return ((f >>> 16) | 0x40) & 0xffff;
  return ((f + 0x7fff + ((f >>> 16) & 1)) >>> 16) & 0xffff;
}

/** F16 bit pattern → F32 value (exact: every half is a float). */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 31) return m === 0 ? sign * Infinity : NaN;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

let f16Table: Float32Array | undefined;
/** All 65536 halves as floats, built once (256 KiB) for the fallback widening path. */
function halfTable(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToF32(h);
  }
  return f16Table;
}

/** Whether the fast native F32→F16 path is in use (reported by the benchmark). */
export const nativeFloat16 = NativeFloat16 !== undefined;

function f32ToF16(src: Int32Array, dst: Uint16Array, useNative: boolean): void {
  if (useNative && NativeFloat16) {
    new NativeFloat16(dst.buffer, dst.byteOffset, dst.length).set(new Float32Array(src.buffer, src.byteOffset, src.length));
    return;
  }
  for (let i = 0; i < src.length; i++) dst[i] = f32BitsToF16(src[i] ?? 0);
}

function f32ToBf16(src: Int32Array, dst: Uint16Array): void {
  for (let i = 0; i < src.length; i++) dst[i] = f32BitsToBf16(src[i] ?? 0);
}

function f16ToF32(src: Uint16Array, dst: Float32Array): void {
  if (NativeFloat16) {
    dst.set(new NativeFloat16(src.buffer, src.byteOffset, src.length));
    return;
  }
  const t = halfTable();
  for (let i = 0; i < src.length; i++) dst[i] = t[src[i] ?? 0] ?? 0;
}

function bf16ToF32(src: Uint16Array, dst: Int32Array): void {
  for (let i = 0; i < src.length; i++) dst[i] = (src[i] ?? 0) << 16;
}

/** Views `bytes` as `T`, copying first when its offset is not a multiple of the element size. */
function view<T>(bytes: Uint8Array, size: number, make: (b: ArrayBufferLike, o: number, n: number) => T): T {
  if (bytes.byteOffset % size === 0) return make(bytes.buffer, bytes.byteOffset, bytes.byteLength / size);
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return make(copy.buffer, 0, bytes.byteLength / size);
}
const i32 = (b: ArrayBufferLike, o: number, n: number) => new Int32Array(b, o, n);
const u16 = (b: ArrayBufferLike, o: number, n: number) => new Uint16Array(b, o, n);
const f32 = (b: ArrayBufferLike, o: number, n: number) => new Float32Array(b, o, n);

/** Options of {@link convertFloats}. */
export interface ConvertFloatsOptions {
  /** Use the engine's Float16Array when present (default true); false forces the JS path (tests). */
  native?: boolean;
}

/**
 * Convert whole elements of one float dtype into another. `src` must hold a whole number of
 * elements; `dst` must be exactly `src.byteLength / size(from) * size(to)` bytes and aligned to
 * the target element size (the caller owns the output buffers, so it can make them so).
 *
 * @param src - input bytes (little-endian), any alignment
 * @param from - input dtype
 * @param to - output dtype
 * @param dst - output bytes, 2- or 4-byte aligned as `to` needs
 * @throws BoothError `INVALID_ARGUMENT` when the sizes do not match or `dst` is misaligned
 * @example
 * const out = new Uint8Array(src.byteLength / 2);
 * convertFloats(src, 'F32', 'F16', out);
 */
export function convertFloats(src: Uint8Array, from: FloatDType, to: FloatDType, dst: Uint8Array, options: ConvertFloatsOptions = {}): void {
  const n = src.byteLength / FLOAT_SIZE[from];
  if (!Number.isInteger(n) || dst.byteLength !== n * FLOAT_SIZE[to]) {
    throw new BoothError('INVALID_ARGUMENT', `convertFloats: ${src.byteLength} bytes of ${from} do not make ${dst.byteLength} bytes of ${to}`);
  }
  if (dst.byteOffset % FLOAT_SIZE[to] !== 0) {
    throw new BoothError('INVALID_ARGUMENT', `convertFloats: the output buffer is not aligned to ${FLOAT_SIZE[to]} bytes`);
  }
  if (from === to) {
    dst.set(src);
    return;
  }
  const native = options.native ?? true;
  if (from === 'F32') {
    const s = view(src, 4, i32);
    const d = u16(dst.buffer, dst.byteOffset, n);
    if (to === 'F16') f32ToF16(s, d, native);
    else f32ToBf16(s, d);
    return;
  }
  // F16 or BF16 in: widen to F32 (exact), then narrow if the target is the other 16-bit type.
  const s = view(src, 2, u16);
  const wide = to === 'F32' ? f32(dst.buffer, dst.byteOffset, n) : new Float32Array(n);
  if (from === 'F16') f16ToF32(s, wide);
  else bf16ToF32(s, new Int32Array(wide.buffer, wide.byteOffset, n));
  if (to === 'F32') return;
  const d = u16(dst.buffer, dst.byteOffset, n);
  const w = new Int32Array(wide.buffer, wide.byteOffset, n);
  if (to === 'F16') f32ToF16(w, d, native);
  else f32ToBf16(w, d);
}
