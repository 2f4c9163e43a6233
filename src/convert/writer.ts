/**
 * The streaming writer: turns a list of planned output tensors (each one or more input tensor
 * ranges, or literal bytes) into a safetensors byte stream — header first, then each tensor's
 * data converted to the output dtype chunk by chunk — and sends it, hashed on the way, to a local
 * file or an object-store key through an atomic write. Memory stays bounded by a few 16 MiB
 * blocks whatever the model size: input is read in ranges, converted into fresh shared output
 * blocks, and large passthrough chunks are forwarded without a copy. The byte count is checked
 * against the header before the write completes, so a short or failed source can never make a
 * partial file visible.
 */
import { Readable } from 'node:stream';
import { BoothError } from '../errors.js';
import type { ObjectStore } from '../storage/types.js';
import type { TensorRef } from './diffusers.js';
import { convertFloats, FLOAT_DTYPES, FLOAT_SIZE, type FloatDType } from './dtype.js';
import { BlockPool, CHUNK_BYTES, createStreamHasher, sharedBuffer, writeFileAtomic, type Chunk } from './io.js';
import { buildHeader, DTYPE_SIZES, numel, orderForAlignment, parseHeader, type BuiltHeader, type DType } from './safetensors.js';

/** Output precisions offered to people (`--dtype`). */
export const OUTPUT_DTYPES = ['fp16', 'bf16', 'fp32'] as const;
/** One of {@link OUTPUT_DTYPES}. */
export type OutputDType = (typeof OUTPUT_DTYPES)[number];

/** The safetensors dtype of an output precision. */
export function floatDType(d: OutputDType): FloatDType {
  return d === 'fp16' ? 'F16' : d === 'bf16' ? 'BF16' : 'F32';
}

/** True for F32/F16/BF16. */
export function isFloat(d: DType): d is FloatDType {
  return (FLOAT_DTYPES as readonly string[]).includes(d);
}

/** Data of a planned tensor: an input tensor, or bytes already in the output dtype. */
export type Part = { ref: TensorRef } | { bytes: Uint8Array };

/** One tensor of the output. */
export interface PlannedTensor {
  name: string;
  /** Output dtype. */
  dtype: DType;
  shape: number[];
  /** Concatenated along dimension 0, in order. */
  parts: Part[];
  /** Write the single 2-D part transposed. */
  transpose?: boolean;
}

/** A complete output: tensors in data order, the header, and the metadata it carries. */
export interface WritePlan {
  tensors: PlannedTensor[];
  header: BuiltHeader;
  metadata: Record<string, string>;
}

/** Largest tensor that may be transposed (it is held in memory whole). */
const MAX_TRANSPOSE_BYTES = 256 * 1024 * 1024;

/** A forwarded input chunk at least this large is not copied into an output block. */
const FORWARD_BYTES = 1024 * 1024;

function sortKey(t: PlannedTensor, fileOrder: Map<unknown, number>): [number, number] {
  const first = t.parts[0];
  if (!first || !('ref' in first)) return [Number.MAX_SAFE_INTEGER, 0];
  let i = fileOrder.get(first.ref.file);
  if (i === undefined) {
    i = fileOrder.size;
    fileOrder.set(first.ref.file, i);
  }
  return [i, first.ref.info.start];
}

/**
 * Order tensors for writing and build the header: widest dtype first (alignment), and within a
 * width in input-file order, so that every input file is read front to back.
 *
 * @param tensors - the output tensors, any order; input files are numbered in order of first use
 * @param metadata - `__metadata__` entries
 * @returns the plan
 * @throws BoothError `INVALID_ARGUMENT` when parts do not add up to a tensor's shape, a dtype
 *   conversion is not possible, or the header would not parse back
 */
export function makePlan(tensors: PlannedTensor[], metadata: Record<string, string>): WritePlan {
  for (const t of tensors) {
    let bytes = 0;
    for (const p of t.parts) {
      if ('bytes' in p) {
        bytes += p.bytes.byteLength;
        continue;
      }
      const from = p.ref.info.dtype;
      if (from !== t.dtype && !(isFloat(from) && isFloat(t.dtype))) {
        throw new BoothError('INVALID_ARGUMENT', `tensor "${p.ref.info.name}" is ${from}; only float tensors can be converted to ${t.dtype}`);
      }
      bytes += numel(p.ref.info.shape) * DTYPE_SIZES[t.dtype];
    }
    if (bytes !== numel(t.shape) * DTYPE_SIZES[t.dtype]) {
      throw new BoothError('INVALID_ARGUMENT', `output tensor "${t.name}" ${JSON.stringify(t.shape)} does not match the ${bytes} bytes of its inputs`);
    }
    if (t.transpose && (t.parts.length !== 1 || t.shape.length !== 2)) throw new BoothError('INVALID_ARGUMENT', `output tensor "${t.name}": only a single 2-D tensor can be transposed`);
  }
  const fileOrder = new Map<unknown, number>();
  const keyed = tensors.map((t) => ({ t, dtype: t.dtype, k: sortKey(t, fileOrder) }));
  keyed.sort((a, b) => a.k[0] - b.k[0] || a.k[1] - b.k[1]);
  const ordered = orderForAlignment(keyed).map((x) => x.t);
  const header = buildHeader(ordered, metadata);
  // Parse our own header back with the same checks we apply to inputs: writer and reader agree.
  parseHeader(header.bytes.subarray(8), header.fileSize, 'the output header');
  return { tensors: ordered, header, metadata };
}

/**
 * Collects output bytes into pooled 16 MiB blocks; full blocks (and large forwarded input chunks)
 * queue in `ready` as {@link Chunk}s whose `release` returns the buffer to the pool.
 */
class Blocks {
  ready: Chunk[] = [];
  private block: Buffer | undefined;
  private used = 0;

  constructor(private readonly pool: BlockPool) {}

  /** A region of `n` bytes (n ≤ CHUNK_BYTES) at an offset aligned like the data written so far. */
  async reserve(n: number): Promise<Uint8Array> {
    if (!this.block || this.used + n > this.block.byteLength) {
      this.flush();
      this.block = await this.pool.acquire();
    }
    const r = this.block.subarray(this.used, this.used + n);
    this.used += n;
    return r;
  }

  /** Append bytes that need no conversion; `release` (if any) is called once they are no longer needed. */
  async pass(chunk: Uint8Array, release?: () => void): Promise<void> {
    if (release && chunk.byteLength >= FORWARD_BYTES) {
      this.flush();
      this.ready.push({ bytes: chunk, release });
      return;
    }
    let off = 0;
    while (off < chunk.byteLength) {
      const room = this.block ? this.block.byteLength - this.used : 0;
      const n = Math.min(room > 0 ? room : CHUNK_BYTES, chunk.byteLength - off);
      (await this.reserve(n)).set(chunk.subarray(off, off + n));
      off += n;
    }
    release?.();
  }

  flush(): void {
    const b = this.block;
    if (b && this.used > 0) this.ready.push({ bytes: b.subarray(0, this.used), release: () => this.pool.release(b) });
    else if (b) this.pool.release(b);
    this.block = undefined;
    this.used = 0;
  }
}

/** Progress callback: bytes of the output produced so far and in all. */
export type ProgressFn = (done: number, total: number) => void;

/** The whole pool buffer behind a chunk read from it. */
function whole(c: Uint8Array): Buffer {
  return Buffer.from(c.buffer, 0, CHUNK_BYTES);
}

/**
 * The output file's bytes, in order: header, then tensor data, as pooled chunks. The consumer
 * must call each chunk's `release` once done with it: the pool (8 blocks) bounds memory and
 * production waits for released blocks.
 *
 * @param plan - from {@link makePlan}
 * @param pool - the buffer pool (default a new one of 8 × 16 MiB)
 * @param onProgress - called after each block
 * @returns an async iterable of chunks
 * @throws BoothError `STORAGE` when an input ends early; `INVALID_ARGUMENT` when the bytes
 *   produced do not match the header (a bug, caught before the write completes)
 */
export async function* planChunks(plan: WritePlan, pool: BlockPool = new BlockPool(), onProgress?: ProgressFn): AsyncGenerator<Chunk> {
  const total = plan.header.fileSize;
  let done = 0;
  const blocks = new Blocks(pool);
  function* drain(): Generator<Chunk> {
    const list = blocks.ready;
    blocks.ready = [];
    for (const c of list) {
      done += c.bytes.byteLength;
      yield c;
    }
    if (list.length > 0) onProgress?.(done, total);
  }
  await blocks.pass(plan.header.bytes);
  for (const t of plan.tensors) {
    const out = t.dtype;
    for (const part of t.parts) {
      if ('bytes' in part) {
        await blocks.pass(part.bytes);
        continue;
      }
      const { file, info } = part.ref;
      if (t.transpose) {
        await blocks.pass(await transposed(part.ref, out, t.shape));
        yield* drain();
        continue;
      }
      if (info.dtype === out) {
        for await (const c of file.source.read(info.start, info.end, { pool })) {
          const pooled = c.buffer instanceof SharedArrayBuffer && c.byteOffset === 0 && c.buffer.byteLength === CHUNK_BYTES;
          await blocks.pass(c, pooled ? () => pool.release(whole(c)) : undefined);
          yield* drain();
        }
        continue;
      }
      const from = info.dtype as FloatDType;
      const to = out as FloatDType;
      const inSize = FLOAT_SIZE[from];
      const outSize = FLOAT_SIZE[to];
      let carry: Uint8Array | undefined;
      for await (const raw of file.source.read(info.start, info.end, { pool })) {
        const pooled = raw.buffer instanceof SharedArrayBuffer && raw.byteOffset === 0 && raw.buffer.byteLength === CHUNK_BYTES;
        let c = raw;
        if (carry) {
          const joined = new Uint8Array(carry.byteLength + raw.byteLength);
          joined.set(carry);
          joined.set(raw, carry.byteLength);
          c = joined;
          carry = undefined;
        }
        const whole2 = c.byteLength - (c.byteLength % inSize);
        if (whole2 < c.byteLength) carry = c.slice(whole2);
        // Convert in pieces whose output fits one block.
        const step = Math.floor(CHUNK_BYTES / outSize) * inSize;
        for (let off = 0; off < whole2; off += step) {
          const piece = c.subarray(off, Math.min(whole2, off + step));
          convertFloats(piece, from, to, await blocks.reserve((piece.byteLength / inSize) * outSize));
        }
        if (pooled) pool.release(whole(raw));
        yield* drain();
      }
      if (carry) throw new BoothError('STORAGE', `tensor "${info.name}" in ${file.source.name} ended inside an element`);
    }
  }
  blocks.flush();
  yield* drain();
  if (done !== total) throw new BoothError('INVALID_ARGUMENT', `internal error: wrote ${done} bytes but the header describes ${total}; nothing was saved`);
}

/** Read a whole 2-D tensor, convert it, and return it transposed ([r, c] → [c, r]). */
async function transposed(ref: TensorRef, out: DType, outShape: number[]): Promise<Uint8Array> {
  const { info, file } = ref;
  if (info.end - info.start > MAX_TRANSPOSE_BYTES) throw new BoothError('INVALID_ARGUMENT', `tensor "${info.name}" is too large to transpose in memory`);
  const raw = await file.source.readBytes(info.start, info.end);
  const rows = info.shape[0] ?? 0;
  const cols = info.shape[1] ?? 0;
  if (outShape[0] !== cols || outShape[1] !== rows) throw new BoothError('INVALID_ARGUMENT', `tensor "${info.name}": transposed shape mismatch`);
  const size = DTYPE_SIZES[out];
  const conv = new Uint8Array(rows * cols * size);
  if (info.dtype === out) conv.set(raw);
  else convertFloats(raw, info.dtype as FloatDType, out as FloatDType, conv);
  const result = sharedBuffer(conv.byteLength);
  if (size === 4) {
    const s = new Uint32Array(conv.buffer, 0, rows * cols);
    const d = new Uint32Array(result.buffer, result.byteOffset, rows * cols);
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) d[c * rows + r] = s[r * cols + c] ?? 0;
  } else if (size === 2) {
    const s = new Uint16Array(conv.buffer, 0, rows * cols);
    const d = new Uint16Array(result.buffer, result.byteOffset, rows * cols);
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) d[c * rows + r] = s[r * cols + c] ?? 0;
  } else throw new BoothError('INVALID_ARGUMENT', `tensor "${info.name}": cannot transpose ${out}`);
  return result;
}

/** What a write produced. */
export interface WriteResult {
  /** Hex SHA-256 of the whole file. */
  sha256: string;
  /** Bytes written. */
  size: number;
}

/** Options of the write functions. */
export interface WriteOptions {
  onProgress?: ProgressFn;
  /** Hash in a worker thread (default true). */
  parallelHash?: boolean;
  /** Abort the write (store writes); the previous object stays. */
  signal?: AbortSignal;
}

/**
 * Hash each chunk on the way; a chunk is released to the pool only when both the hash worker and
 * the consumer (which calls the returned chunk's `release`) are done with it.
 */
async function* hashed(plan: WritePlan, hasher: ReturnType<typeof createStreamHasher>, onProgress?: ProgressFn): AsyncGenerator<Chunk> {
  const failures: unknown[] = [];
  for await (const c of planChunks(plan, new BlockPool(), onProgress)) {
    if (failures.length > 0) throw failures[0];
    let users = 2;
    const done = () => {
      if (--users === 0) c.release();
    };
    hasher.update(c.bytes).then(done, (err: unknown) => failures.push(err));
    yield { bytes: c.bytes, release: done };
  }
  if (failures.length > 0) throw failures[0];
}

/**
 * Write a plan to a local file atomically (temporary file, fsync, rename).
 *
 * @param plan - from {@link makePlan}
 * @param target - the output path; an existing file there is replaced only on success
 * @returns SHA-256 and size
 * @throws BoothError `STORAGE` for I/O failures; the previous file (if any) is intact
 * @example const { sha256 } = await writePlanToFile(plan, 'alice.safetensors');
 */
export async function writePlanToFile(plan: WritePlan, target: string, options: WriteOptions = {}): Promise<WriteResult> {
  const hasher = createStreamHasher(options.parallelHash ?? true);
  try {
    const size = await writeFileAtomic(target, hashed(plan, hasher, options.onProgress));
    return { sha256: await hasher.digest(), size };
  } finally {
    hasher.close();
  }
}

/**
 * Write a plan to a store key with the store's atomic put (streamed, never whole in memory).
 *
 * @param plan - from {@link makePlan}
 * @param store - the store
 * @param key - the object's key; an existing object stays intact unless the put succeeds
 * @returns SHA-256 and size
 * @throws BoothError `STORAGE` (and the source's own errors); nothing partial becomes visible
 * @example await writePlanToStore(plan, store, 'sessions/alice/exports/alice.safetensors');
 */
export async function writePlanToStore(plan: WritePlan, store: ObjectStore, key: string, options: WriteOptions = {}): Promise<WriteResult> {
  const hasher = createStreamHasher(options.parallelHash ?? true);
  try {
    // The store keeps chunks for as long as its driver needs them (S3 gathers parts), so it gets
    // its own copies and the pooled blocks go back at once. objectMode off and a 1-byte
    // high-water mark: the stream reads one chunk ahead, no more.
    async function* copies(): AsyncGenerator<Buffer> {
      for await (const c of hashed(plan, hasher, options.onProgress)) {
        const b = Buffer.allocUnsafeSlow(c.bytes.byteLength);
        b.set(c.bytes);
        c.release();
        yield b;
      }
    }
    const body = Readable.from(copies(), { objectMode: false, highWaterMark: 1 });
    const info = await store.put(key, body, { contentType: 'application/octet-stream', ...(options.signal ? { signal: options.signal } : {}) });
    const sha256 = await hasher.digest();
    if (info.size !== plan.header.fileSize) throw new BoothError('STORAGE', `the store reports ${info.size} bytes for "${key}" but ${plan.header.fileSize} were written; export again`);
    return { sha256, size: info.size };
  } finally {
    hasher.close();
  }
}
