/**
 * Byte-level I/O for the converter: sources that hand out byte ranges of a local file or a stored
 * object as a stream of large chunks, an atomic local-file writer, and a SHA-256 hasher that runs
 * in a worker thread. Everything is built for throughput at bounded memory: local reads are 16 MiB
 * positional reads with one read in flight ahead of the consumer; store reads keep one ranged
 * stream open and skip forward across small gaps, because the converter asks for tensors in file
 * order and a GET per tensor would be thousands of requests on S3; chunks live in
 * `SharedArrayBuffer`s so the hashing thread reads them without a copy while the main thread
 * converts and writes, which is what lets hashing overlap the I/O (hashing alone runs at about
 * the speed of a page-cache copy).
 */
import { createHash, randomBytes } from 'node:crypto';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { Worker } from 'node:worker_threads';
import { BoothError, errorMessage } from '../errors.js';
import type { ObjectStore } from '../storage/types.js';

/** Size of one read or output block. Large enough for sequential disk speed, small enough to keep RSS low. */
export const CHUNK_BYTES = 16 * 1024 * 1024;

/** Gaps up to this size are read and dropped by a store source instead of opening a new request. */
const SKIP_LIMIT = 8 * 1024 * 1024;

/** A readable byte sequence: a local file or a stored object. */
export interface ByteSource {
  /** Path or store key, for messages. */
  readonly name: string;
  /** Size in bytes. */
  readonly size: number;
  /**
   * Bytes `[start, end)` as chunks of at most {@link CHUNK_BYTES}.
   * @throws BoothError `STORAGE` when the data ends early (the file changed or was truncated)
   */
  read(start: number, end: number, options?: ReadOptions): AsyncIterable<Uint8Array>;
  /** Bytes `[start, end)` in one buffer (for headers and other small reads). */
  readBytes(start: number, end: number): Promise<Buffer>;
  /** Release the file handle or stream. */
  close(): Promise<void>;
}

/** A zero-filled Buffer backed by a SharedArrayBuffer (so the hash worker can read it without a copy). */
export function sharedBuffer(size: number): Buffer {
  return Buffer.from(new SharedArrayBuffer(size));
}

/**
 * A fixed set of {@link CHUNK_BYTES} shared buffers, reused. Allocating a fresh buffer per chunk
 * would fault in new zeroed pages every time, and shared buffers handed to the hash worker are
 * only freed when that thread happens to collect garbage — RSS then grows with the model. The
 * pool bounds memory by construction: `acquire` waits until a buffer is released.
 */
export class BlockPool {
  private free: Buffer[] = [];
  private waiting: Array<(b: Buffer) => void> = [];
  private created = 0;

  /** @param max - most buffers alive at once (default 8, i.e. 128 MiB) */
  constructor(private readonly max = 8) {}

  /** A buffer of {@link CHUNK_BYTES}; resolves when one is free. */
  acquire(): Promise<Buffer> {
    const b = this.free.pop();
    if (b) return Promise.resolve(b);
    if (this.created < this.max) {
      this.created++;
      return Promise.resolve(sharedBuffer(CHUNK_BYTES));
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  /** Give a buffer back (only buffers from `acquire`, once each). */
  release(b: Buffer): void {
    const w = this.waiting.shift();
    if (w) w(b);
    else this.free.push(b);
  }
}

/** A chunk of output with the duty to call `release` once its bytes are no longer needed. */
export interface Chunk {
  bytes: Uint8Array;
  /** Called once by whoever consumes the chunk last (write and hash both done). */
  release(): void;
}

/** Options of {@link ByteSource.read}. */
export interface ReadOptions {
  /** Read into buffers from this pool; the caller releases them (local files only). */
  pool?: BlockPool;
}

function shortRead(name: string, at: number): BoothError {
  return new BoothError('STORAGE', `"${name}" ended early at byte ${at}; the file is truncated or changed while being read — check it and try again`);
}

/**
 * Open a local file as a {@link ByteSource}.
 *
 * @param file - path of the file
 * @returns the source; `close()` it
 * @throws BoothError `NOT_FOUND` when the file does not exist; `STORAGE` for other errors
 * @example
 * const src = await openFileSource('model/unet/diffusion_pytorch_model.safetensors');
 */
export async function openFileSource(file: string): Promise<ByteSource> {
  let fh: FileHandle;
  try {
    fh = await open(file, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw new BoothError('NOT_FOUND', `no file "${file}"`, { cause: err });
    throw new BoothError('STORAGE', `cannot open "${file}": ${errorMessage(err)}`, { cause: err });
  }
  const size = (await fh.stat()).size;

  async function readExactly(pos: number, len: number, pool?: BlockPool): Promise<Buffer> {
    const buf = pool && len <= CHUNK_BYTES ? (await pool.acquire()).subarray(0, len) : Buffer.alloc(len);
    let got = 0;
    while (got < len) {
      let n: number;
      try {
        ({ bytesRead: n } = await fh.read(buf, got, len - got, pos + got));
      } catch (err) {
        throw new BoothError('STORAGE', `reading "${file}" at byte ${pos + got} failed: ${errorMessage(err)}`, { cause: err });
      }
      if (n === 0) throw shortRead(file, pos + got);
      got += n;
    }
    return buf;
  }

  return {
    name: file,
    size,
    async *read(start: number, end: number, options?: ReadOptions) {
      let pos = start;
      const next = () => {
        const len = Math.min(CHUNK_BYTES, end - pos);
        const p = readExactly(pos, len, options?.pool);
        pos += len;
        return p;
      };
      // One read in flight ahead of the consumer: the disk works while the caller converts.
      let pending = pos < end ? next() : undefined;
      try {
        while (pending) {
          const buf = await pending;
          pending = pos < end ? next() : undefined;
          yield buf;
        }
      } finally {
        // A read still in flight when the consumer stops: give its buffer back when it lands.
        pending?.then((b) => options?.pool?.release(Buffer.from(b.buffer, 0, CHUNK_BYTES)), () => undefined);
      }
    },
    readBytes: (start, end) => (end > start ? readExactly(start, end - start) : Promise.resolve(Buffer.alloc(0))),
    close: () => fh.close(),
  };
}

/**
 * Open a stored object as a {@link ByteSource}. Reads in increasing order share one ranged GET.
 *
 * @param store - the store
 * @param key - the object's key
 * @returns the source; `close()` it
 * @throws BoothError `NOT_FOUND` when the key does not exist
 * @example
 * const src = await openStoreSource(store, 'sessions/alice/runs/r1/model/unet/diffusion_pytorch_model.safetensors');
 */
export async function openStoreSource(store: ObjectStore, key: string): Promise<ByteSource> {
  const info = await store.head(key);
  if (!info) throw new BoothError('NOT_FOUND', `no object "${key}" in ${store.url}`);
  const size = info.size;
  let stream: Readable | undefined;
  let iter: AsyncIterator<Buffer | Uint8Array | string> | undefined;
  let pos = 0;
  let leftover: Uint8Array = new Uint8Array(0);

  const drop = () => {
    stream?.destroy();
    stream = undefined;
    iter = undefined;
    leftover = new Uint8Array(0);
  };

  async function pull(): Promise<Uint8Array> {
    if (leftover.byteLength > 0) {
      const l = leftover;
      leftover = new Uint8Array(0);
      return l;
    }
    if (!iter) throw shortRead(key, pos);
    let r: IteratorResult<Buffer | Uint8Array | string>;
    try {
      r = await iter.next();
    } catch (err) {
      drop();
      throw new BoothError('STORAGE', `reading "${key}" from ${store.url} failed at byte ${pos}: ${errorMessage(err)}; try again`, { cause: err });
    }
    if (r.done) throw shortRead(key, pos);
    return typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
  }

  async function seek(start: number): Promise<void> {
    if (iter && start >= pos && start - pos <= SKIP_LIMIT) {
      while (pos < start) {
        const c = await pull();
        const take = Math.min(c.byteLength, start - pos);
        if (take < c.byteLength) leftover = c.subarray(take);
        pos += take;
      }
      return;
    }
    drop();
    stream = await store.get(key, { range: { start } });
    iter = (stream as AsyncIterable<Buffer | Uint8Array | string>)[Symbol.asyncIterator]();
    pos = start;
  }

  async function* read(start: number, end: number): AsyncGenerator<Uint8Array> {
    if (end <= start) return;
    if (end > size) throw shortRead(key, size);
    await seek(start);
    while (pos < end) {
      const c = await pull();
      const take = Math.min(c.byteLength, end - pos);
      if (take < c.byteLength) leftover = c.subarray(take);
      pos += take;
      yield c.subarray(0, take);
    }
  }

  return {
    name: key,
    size,
    read,
    async readBytes(start: number, end: number) {
      const chunks: Uint8Array[] = [];
      for await (const c of read(start, end)) chunks.push(c);
      return Buffer.concat(chunks);
    },
    async close() {
      drop();
    },
  };
}

/** A SHA-256 over a sequence of chunks. */
export interface StreamHasher {
  /**
   * Add the next chunk. Returns a promise that resolves once the chunk has been hashed (its
   * buffer may then be reused); do not modify the chunk before that.
   */
  update(chunk: Uint8Array): Promise<void>;
  /** The hex digest of everything added. */
  digest(): Promise<string>;
  /** Stop the worker (after an error). */
  close(): void;
}

/**
 * Source of the hashing worker, run with `eval` so it works from the TypeScript sources in tests
 * too. `process.getBuiltinModule` works whether the eval'd code is taken as CommonJS or as a
 * module (a parent started with `--input-type=module` makes it a module, where `require` is absent).
 */
const HASH_WORKER = `
const { parentPort } = process.getBuiltinModule('node:worker_threads');
const { createHash } = process.getBuiltinModule('node:crypto');
const hash = createHash('sha256');
parentPort.on('message', (m) => {
  if (m.end) { parentPort.postMessage({ digest: hash.digest('hex') }); return; }
  hash.update(new Uint8Array(m.sab, m.offset, m.length));
  parentPort.postMessage({ done: m.id });
});`;

/**
 * Create a SHA-256 hasher. With `parallel` (default) it hashes in a worker thread, reading the
 * chunks' SharedArrayBuffers in place (other chunks are copied once). Memory is bounded by the
 * caller, which reuses a chunk's buffer only after its `update` promise resolved.
 *
 * @param parallel - hash in a worker thread (default true)
 * @returns the hasher
 * @example
 * const h = createStreamHasher(); await h.update(chunk); const hex = await h.digest();
 */
export function createStreamHasher(parallel = true): StreamHasher {
  if (!parallel) {
    const h = createHash('sha256');
    return { update: async (c) => void h.update(c), digest: async () => h.digest('hex'), close: () => undefined };
  }
  const worker = new Worker(HASH_WORKER, { eval: true });
  let failure: unknown;
  let seq = 0;
  const pending = new Map<number, { resolve: () => void; reject: (e: unknown) => void }>();
  let onDigest: ((hex: string) => void) | undefined;
  let onFail: ((err: unknown) => void) | undefined;
  worker.on('message', (m: { done?: number; digest?: string }) => {
    if (m.done !== undefined) {
      pending.get(m.done)?.resolve();
      pending.delete(m.done);
    } else if (m.digest !== undefined) onDigest?.(m.digest);
  });
  worker.on('error', (err) => {
    failure = err;
    for (const p of pending.values()) p.reject(err);
    pending.clear();
    onFail?.(err);
  });
  return {
    update(chunk) {
      if (failure) return Promise.reject(failure);
      if (chunk.byteLength === 0) return Promise.resolve();
      let c = chunk;
      if (!(c.buffer instanceof SharedArrayBuffer)) {
        const copy = new Uint8Array(new SharedArrayBuffer(c.byteLength));
        copy.set(c);
        c = copy;
      }
      const id = ++seq;
      const done = new Promise<void>((resolve, reject) => pending.set(id, { resolve, reject }));
      worker.postMessage({ sab: c.buffer, offset: c.byteOffset, length: c.byteLength, id });
      return done;
    },
    async digest() {
      if (failure) throw failure;
      const hex = await new Promise<string>((resolve, reject) => {
        onDigest = resolve;
        onFail = reject;
        worker.postMessage({ end: true });
      });
      await worker.terminate();
      return hex;
    },
    close() {
      void worker.terminate();
    },
  };
}

/**
 * Write a sequence of chunks to a local file atomically: a temporary file in the same folder,
 * fsync, rename over the target, fsync the folder. On any error the temporary file is removed and
 * an existing file at `target` is left as it was. The next chunk is produced while the current
 * one is being written.
 *
 * @param target - the file to create or replace
 * @param chunks - the content
 * @returns the number of bytes written
 * @throws BoothError `STORAGE` when writing fails; whatever the chunk source throws
 * @example
 * await writeFileAtomic('out.safetensors', chunks());
 */
export async function writeFileAtomic(target: string, chunks: AsyncIterable<Uint8Array | Chunk>): Promise<number> {
  const dir = path.dirname(path.resolve(target));
  const tmp = path.join(dir, `.${path.basename(target)}.booth-tmp-${randomBytes(6).toString('hex')}`);
  let fh: FileHandle | undefined;
  let written = 0;
  const it = chunks[Symbol.asyncIterator]();
  let next: Promise<IteratorResult<Uint8Array | Chunk>> | undefined;
  try {
    try {
      fh = await open(tmp, 'wx');
    } catch (err) {
      throw new BoothError('STORAGE', `cannot create a file in "${dir}": ${errorMessage(err)}; check that the folder exists and is writable`, { cause: err });
    }
    // The next chunk is requested before the current one is written; its failure is handled when
    // it is awaited, so mark it handled now (it may settle while the write is in progress).
    const ask = () => {
      const p = it.next();
      p.catch(() => undefined);
      return p;
    };
    next = ask();
    for (;;) {
      const r = await next;
      if (r.done) break;
      next = ask();
      const item = r.value;
      const c = item instanceof Uint8Array ? item : item.bytes;
      let off = 0;
      while (off < c.byteLength) {
        try {
          off += (await fh.write(c, off, c.byteLength - off)).bytesWritten;
        } catch (err) {
          throw new BoothError('STORAGE', `writing "${target}" failed: ${errorMessage(err)}; the previous file (if any) is intact`, { cause: err });
        }
      }
      written += c.byteLength;
      if (!(item instanceof Uint8Array)) item.release();
    }
    next = undefined;
    await fh.sync();
    await fh.close();
    fh = undefined;
    await rename(tmp, target);
    const d = await open(dir, 'r');
    await d.sync().catch(() => undefined);
    await d.close();
    return written;
  } catch (err) {
    next?.catch(() => undefined);
    await it.return?.().catch(() => undefined);
    await fh?.close().catch(() => undefined);
    await rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
}
