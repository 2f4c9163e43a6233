/**
 * The safetensors format, read and written by Booth itself. A file is: an unsigned 64-bit
 * little-endian length N; N bytes of UTF-8 JSON mapping tensor names to `{dtype, shape,
 * data_offsets: [begin, end]}` (offsets relative to the byte after the header) plus an optional
 * `__metadata__` map of strings; then the tensor bytes, little-endian, C order. Format as
 * published by Hugging Face (github.com/huggingface/safetensors, "Format" section); the checks
 * below follow its reference reader: header at most 100 MB and starting with `{`, known dtypes,
 * `end - begin` equal to the element count times the dtype size, and the tensors covering the
 * data section exactly, without overlaps or gaps. The writer lays tensors out back to back in the
 * order given (callers sort by dtype size, widest first, so every tensor starts at a multiple of
 * its element size) and pads the header with spaces so that the data starts at a multiple of 8.
 * Tensor data is never read here: callers stream it through a {@link ByteSource}.
 */
import { BoothError } from '../errors.js';
import type { ByteSource } from './io.js';

/** Element size in bytes of every dtype the format defines (and this reader accepts). */
export const DTYPE_SIZES = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
} as const;

/** A safetensors dtype name. */
export type DType = keyof typeof DTYPE_SIZES;

/** Largest header accepted, in bytes (the reference reader's limit). */
export const MAX_HEADER_BYTES = 100_000_000;

/** One tensor as the header describes it. */
export interface TensorInfo {
  name: string;
  dtype: DType;
  /** Dimensions; `[]` is a scalar (one element). */
  shape: number[];
  /** Absolute byte offset of the first data byte in the file. */
  start: number;
  /** Absolute byte offset one past the last data byte. */
  end: number;
}

/** A parsed header, bound to the source its tensors are read from. */
export interface SafetensorsFile {
  source: ByteSource;
  /** Offset of the data section (8 + header length). */
  dataStart: number;
  /** `__metadata__`, or `{}`. */
  metadata: Record<string, string>;
  /** Tensors in data order. */
  tensors: Map<string, TensorInfo>;
}

/** True for a dtype name this module knows. */
export function isDType(value: unknown): value is DType {
  return typeof value === 'string' && Object.hasOwn(DTYPE_SIZES, value);
}

/** Number of elements of a shape (1 for a scalar). */
export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function bad(where: string, problem: string): BoothError {
  return new BoothError('INVALID_ARGUMENT', `${where} is not a valid safetensors file: ${problem}; re-export or re-download it`);
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/**
 * Parse and validate a header.
 *
 * @param json - the N header bytes (after the 8-byte length)
 * @param fileSize - total size of the file in bytes
 * @param where - file path or store key, for messages
 * @returns metadata and tensors (absolute offsets), tensors in data order
 * @throws BoothError `INVALID_ARGUMENT` naming the file, the tensor and the rule broken
 * @example
 * const { tensors } = parseHeader(headerBytes, stat.size, 'unet/diffusion_pytorch_model.safetensors');
 */
export function parseHeader(json: Uint8Array, fileSize: number, where: string): { metadata: Record<string, string>; tensors: Map<string, TensorInfo> } {
  const dataStart = 8 + json.byteLength;
  if (json[0] !== 0x7b) throw bad(where, 'the header does not start with "{"');
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(json));
  } catch (err) {
    throw bad(where, `the header is not UTF-8 JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw bad(where, 'the header is not a JSON object');
  const metadata: Record<string, string> = {};
  const list: TensorInfo[] = [];
  for (const [name, value] of Object.entries(raw)) {
    if (name === '__metadata__') {
      if (value === null || typeof value !== 'object' || Array.isArray(value)) throw bad(where, '"__metadata__" is not an object of strings');
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        if (typeof v !== 'string') throw bad(where, `metadata "${k}" is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    const t = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
    if (t === null || typeof t !== 'object') throw bad(where, `tensor "${name}" is not an object`);
    if (!isDType(t.dtype)) throw bad(where, `tensor "${name}" has the unknown dtype ${JSON.stringify(t.dtype)}`);
    if (!Array.isArray(t.shape) || !t.shape.every(isCount)) throw bad(where, `tensor "${name}" has an invalid shape ${JSON.stringify(t.shape)}`);
    const off = t.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !isCount(off[0]) || !isCount(off[1]) || off[0] > off[1]) {
      throw bad(where, `tensor "${name}" has invalid data_offsets ${JSON.stringify(off)}`);
    }
    const shape = t.shape as number[];
    const bytes = numel(shape) * DTYPE_SIZES[t.dtype];
    if (!Number.isSafeInteger(bytes) || off[1] - off[0] !== bytes) {
      throw bad(where, `tensor "${name}" (${t.dtype} ${JSON.stringify(shape)}) needs ${bytes} bytes but data_offsets span ${off[1] - off[0]}`);
    }
    list.push({ name, dtype: t.dtype, shape, start: dataStart + off[0], end: dataStart + off[1] });
  }
  list.sort((a, b) => a.start - b.start || a.end - b.end);
  let at = dataStart;
  for (const t of list) {
    if (t.start < at) throw bad(where, `tensor "${t.name}" overlaps the tensor before it (data_offsets start at ${t.start - dataStart}, previous ends at ${at - dataStart})`);
    if (t.start > at) throw bad(where, `there is a gap of ${t.start - at} bytes before tensor "${t.name}"`);
    if (t.end > fileSize) throw bad(where, `tensor "${t.name}" ends at byte ${t.end} but the file has ${fileSize} bytes (truncated or out-of-range offsets)`);
    at = t.end;
  }
  if (at !== fileSize) throw bad(where, `the tensors end at byte ${at} but the file has ${fileSize} bytes (trailing data)`);
  return { metadata, tensors: new Map(list.map((t) => [t.name, t])) };
}

/**
 * Read and validate the header of a safetensors source.
 *
 * @param source - the file (local or in a store)
 * @returns the parsed header bound to `source`
 * @throws BoothError `INVALID_ARGUMENT` for a truncated file, a header over
 *   {@link MAX_HEADER_BYTES} or any rule {@link parseHeader} checks; `STORAGE` when reading fails
 * @example
 * const file = await readHeader(await openFileSource('unet/diffusion_pytorch_model.safetensors'));
 */
export async function readHeader(source: ByteSource): Promise<SafetensorsFile> {
  if (source.size < 8) throw bad(source.name, `it has ${source.size} bytes, fewer than the 8-byte header length`);
  const len = (await source.readBytes(0, 8)).readBigUInt64LE(0);
  if (len > BigInt(MAX_HEADER_BYTES)) throw bad(source.name, `the header claims ${len} bytes, over the ${MAX_HEADER_BYTES}-byte limit`);
  const n = Number(len);
  if (8 + n > source.size) throw bad(source.name, `the header claims ${n} bytes but the file has only ${source.size - 8} after the length (truncated)`);
  const json = await source.readBytes(8, 8 + n);
  const { metadata, tensors } = parseHeader(json, source.size, source.name);
  return { source, dataStart: 8 + n, metadata, tensors };
}

/** A tensor to be written: name, dtype and shape; the data follows in the same order. */
export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: number[];
}

/** What {@link buildHeader} returns. */
export interface BuiltHeader {
  /** The 8-byte length plus the padded JSON: the first bytes of the file. */
  bytes: Buffer;
  /** Byte length of each tensor's data, in the order given. */
  sizes: number[];
  /** Total file size (header plus data). */
  fileSize: number;
}

/**
 * Sort tensor specs so that each one starts at a multiple of its element size when laid out
 * back to back: widest dtype first (stable, so callers keep their own order within a width).
 */
export function orderForAlignment<T extends { dtype: DType }>(specs: readonly T[]): T[] {
  return [...specs].sort((a, b) => DTYPE_SIZES[b.dtype] - DTYPE_SIZES[a.dtype]);
}

/**
 * Build a header for tensors written back to back in the given order.
 *
 * @param specs - tensors in data order (see {@link orderForAlignment})
 * @param metadata - `__metadata__` entries (strings only)
 * @returns the header bytes, per-tensor sizes and the final file size
 * @throws BoothError `INVALID_ARGUMENT` for a duplicate or reserved name, an invalid shape, or an
 *   order that would leave a tensor misaligned
 * @example
 * const h = buildHeader(orderForAlignment(specs), { 'modelspec.title': 'alice' });
 */
export function buildHeader(specs: readonly TensorSpec[], metadata: Record<string, string> = {}): BuiltHeader {
  const seen = new Set<string>();
  const parts: string[] = [];
  if (Object.keys(metadata).length > 0) parts.push(`"__metadata__":${JSON.stringify(metadata)}`);
  const sizes: number[] = [];
  let offset = 0;
  for (const s of specs) {
    if (s.name === '__metadata__' || seen.has(s.name)) throw new BoothError('INVALID_ARGUMENT', `tensor name "${s.name}" is reserved or used twice`);
    seen.add(s.name);
    if (!s.shape.every(isCount)) throw new BoothError('INVALID_ARGUMENT', `tensor "${s.name}" has an invalid shape ${JSON.stringify(s.shape)}`);
    const size = DTYPE_SIZES[s.dtype];
    if (offset % size !== 0) {
      throw new BoothError('INVALID_ARGUMENT', `tensor "${s.name}" (${s.dtype}) would start at offset ${offset}, not a multiple of ${size}; order tensors with orderForAlignment`);
    }
    const bytes = numel(s.shape) * size;
    parts.push(`${JSON.stringify(s.name)}:${JSON.stringify({ dtype: s.dtype, shape: s.shape, data_offsets: [offset, offset + bytes] })}`);
    sizes.push(bytes);
    offset += bytes;
  }
  const json = Buffer.from(`{${parts.join(',')}}`, 'utf8');
  // Spaces after the JSON are valid JSON whitespace; they put the data start on an 8-byte boundary.
  const padded = Math.ceil(json.byteLength / 8) * 8;
  const bytes = Buffer.alloc(8 + padded, 0x20);
  bytes.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(bytes, 8);
  return { bytes, sizes, fileSize: 8 + padded + offset };
}
