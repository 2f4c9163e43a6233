/**
 * A real S3-compatible server for the tests: s3rver 3.7.1 on 127.0.0.1, a free port, a temporary
 * folder and one bucket, run in a child process. A separate process keeps its disk and hashing
 * work off the test's event loop (and on the second core), and lets it start Node with
 * `--openssl-legacy-provider`, without which its ListObjectsV2 continuation tokens (DES-encrypted)
 * fail with ERR_OSSL_EVP_UNSUPPORTED on OpenSSL 3. The child also corrects the places where
 * s3rver 3.7.1 departs from S3 in ways the storage contract depends on, so that the suite tests
 * the driver and not the fake:
 * - listings come in UTF-8 byte order (s3rver walks folders, so `a/b` came before `a-c`, and
 *   pagination by `startAfter` then skipped keys);
 * - `AbortMultipartUpload` is implemented (s3rver answers 405, so no abort could be observed);
 * - a multipart object's ETag is S3's `md5-of-part-md5s-N`, so a test can see that the
 *   multipart path was taken;
 * - object and part writes finish before the response is sent, and an object is replaced by a
 *   rename, so a failed PutObject cannot truncate the previous one (s3rver resolved its write
 *   when the hashing stage finished, before the file was flushed, and wrote in place);
 * - `Range: bytes=0-0` reads one byte (s3rver read `end || Infinity`, so it sent everything);
 * - `x-amz-copy-source` is fully percent-decoded (s3rver used `decodeURI`, which leaves `%2B`,
 *   `%3F`, `%23`, `%26`, `%3D` … encoded, so keys with `+ ? # & =` could not be copied);
 * - conditional PutObject is implemented (s3rver ignored `If-Match` and `If-None-Match` on PUT and
 *   always wrote): `If-None-Match: *` writes only when no object has the key, `If-Match: "<etag>"`
 *   only when the object exists with that ETag (`*` for any), else the answer is 412 with S3's
 *   `PreconditionFailed` error body and nothing is written; an `If-None-Match` other than `*` is
 *   501 `NotImplemented`, as on S3. Every request for one object (read, write, delete) is
 *   serialised (the server is one process), so a condition is evaluated atomically with the write
 *   it guards, and a read never sees a metadata file that a write is replacing, as on S3.
 *
 * This file is both the helper (imported by tests) and the child's program (run by Node's
 * built-in TypeScript type stripping), so it uses only erasable TypeScript syntax.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';

/** s3rver's hard-coded account. */
export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

/** A running server. */
export interface S3rverHandle {
  /** `http://127.0.0.1:<port>` */
  endpoint: string;
  /** The bucket created at start. */
  bucket: string;
  /** Credentials s3rver accepts. */
  credentials: { accessKeyId: string; secretAccessKey: string };
  /** Multipart uploads started and neither completed nor aborted (they hold parts on disk). */
  pendingUploads(): Promise<number>;
  /**
   * An outage: kill the server process (SIGKILL, connections dropped) but keep its folder, so
   * that {@link S3rverHandle.restart} brings the same objects back on the same port.
   */
  kill(): Promise<void>;
  /** Start the server again after {@link S3rverHandle.kill}: same port, same folder, same objects. */
  restart(): Promise<void>;
  /** The folder holding the bucket's files (objects are `<key>._S3rver_object`). */
  directory: string;
  /** Stop the server and remove its folder. */
  stop(): Promise<void>;
}

const SERVE_FLAG = '--booth-s3rver-serve';
const SELF = fileURLToPath(import.meta.url);

/**
 * Start s3rver with one empty bucket.
 *
 * @param options - `bucket`: its name (default `booth-test`)
 * @returns the running server
 * @throws Error when the child process cannot start (its stderr is in the message)
 * @example
 * const s3 = await startS3rver();
 * const store = await createS3Store({ bucket: s3.bucket, endpoint: s3.endpoint, credentials: s3.credentials });
 * // …
 * await s3.stop();
 */
export async function startS3rver(options: { bucket?: string } = {}): Promise<S3rverHandle> {
  const bucket = options.bucket ?? 'booth-test';
  const directory = await mkdtemp(path.join(os.tmpdir(), 'booth-s3rver-'));
  let server: { child: ChildProcess; exited: Promise<void> };
  let port: number;
  try {
    const first = await spawnServer(directory, bucket, 0);
    server = first;
    port = first.port;
  } catch (err) {
    await rm(directory, { recursive: true, force: true });
    throw err;
  }
  const halt = async (signal: NodeJS.Signals): Promise<void> => {
    const { child, exited } = server;
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    await exited;
  };

  return {
    endpoint: `http://127.0.0.1:${port}`,
    bucket,
    credentials: { ...S3RVER_CREDENTIALS },
    directory: path.join(directory, bucket),
    async pendingUploads(): Promise<number> {
      const uploads = path.join(directory, bucket, '._S3rver_uploads');
      const entries = await readdir(uploads).catch(() => []);
      return entries.length;
    },
    async kill(): Promise<void> {
      await halt('SIGKILL');
    },
    async restart(): Promise<void> {
      await halt('SIGKILL');
      server = await spawnServer(directory, bucket, port);
    },
    async stop(): Promise<void> {
      await halt('SIGTERM');
      await rm(directory, { recursive: true, force: true });
    },
  };
}

/** Start the child on `port` (0: a free one); resolves once it listens. */
async function spawnServer(directory: string, bucket: string, port: number): Promise<{ child: ChildProcess; exited: Promise<void>; port: number }> {
  const child = spawn(
    process.execPath,
    // --experimental-strip-types: on by default since Node 22.18/23.6, needed before (engines: >=22.12).
    ['--openssl-legacy-provider', '--experimental-strip-types', '--disable-warning=ExperimentalWarning', SELF, SERVE_FLAG, directory, bucket, String(port)],
    // stdin stays open as a lifeline: the child exits when it closes, even if this process dies.
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    return { child, exited, port: await readyPort(child, () => stderr) };
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    throw err;
  }
}

function readyPort(child: ChildProcess, stderr: () => string): Promise<number> {
  return new Promise((resolve, reject) => {
    let out = '';
    const onData = (d: string): void => {
      out += d;
      const line = out.split('\n')[0];
      if (out.includes('\n') && line !== undefined) {
        cleanup();
        const port = /^\{"port":(\d+)\}$/.exec(line)?.[1];
        if (port !== undefined) resolve(Number(port));
        else reject(new Error(`s3rver child printed ${JSON.stringify(line)} instead of its port:\n${stderr()}`));
      }
    };
    const onExit = (code: number | null, signal: string | null): void => {
      cleanup();
      reject(new Error(`s3rver child exited (${signal ?? code}) before listening:\n${stderr()}`));
    };
    const cleanup = (): void => {
      child.stdout?.off('data', onData);
      child.off('exit', onExit);
    };
    child.stdout?.setEncoding('utf8').on('data', onData);
    child.once('exit', onExit);
  });
}

// ---------------------------------------------------------------------------------------------
// The child: s3rver with the corrections listed at the top.

interface S3rverAddress {
  port: number;
}
interface KoaContext {
  req: NodeJS.ReadableStream;
  method: string;
  headers: Record<string, string | string[] | undefined>;
  path: string;
  query: Record<string, string | string[] | undefined>;
  status: number;
  body: unknown;
  type: string;
}
type KoaMiddleware = (ctx: KoaContext, next: () => Promise<void>) => Promise<void>;
interface S3rverServer {
  middleware: KoaMiddleware[];
  store: FsStore;
  run(): Promise<S3rverAddress>;
}
type S3rverConstructor = new (options: Record<string, unknown>) => S3rverServer;
interface StoredObject {
  bucket: string;
  key: string;
  content: Buffer | Readable;
  metadata: Record<string, unknown>;
}
interface FsStore {
  getBucketPath(bucket: string): string;
  getResourcePath(bucket: string, key: string | undefined, resource: string): string;
  getMetadata(bucket: string, key: string): Promise<Record<string, unknown>>;
  putMetadata(bucket: string, key: string, metadata: Record<string, unknown>, md5?: string): Promise<void>;
  listObjects(bucket: string, options: ListObjectsOptions): Promise<unknown>;
  putObject(object: StoredObject): Promise<{ size: number; md5: string }>;
  putPart(bucket: string, uploadId: string, partNumber: string | number, content: Readable): Promise<{ size: number; md5: string }>;
  putObjectMultipart(bucket: string, uploadId: string, parts: Array<{ number: number; etag: string }>): Promise<{ size: number; md5: string }>;
  getObject(bucket: string, key: string, options?: { start?: number; end?: number }): Promise<S3ObjectInstance | null>;
}
interface S3ObjectInstance {
  content: Readable | null;
  range?: { start: number; end: number };
}
interface ObjectController {
  putObjectCopy(ctx: KoaContext): Promise<void>;
}
interface ListObjectsOptions {
  delimiter?: string;
  startAfter?: string;
  prefix?: string;
  maxKeys?: number;
}
type FsStoreClass = { prototype: FsStore };
type S3ObjectConstructor = new (bucket: string, key: string, content: null, metadata: Record<string, unknown>) => S3ObjectInstance;

const OBJECT_SUFFIX = '._S3rver_object';

/** Write `content` to `file` through a temporary name, hashing it; resolves once flushed. */
async function writeHashed(content: Buffer | Readable, file: string): Promise<{ size: number; md5: string }> {
  await mkdir(path.dirname(file), { recursive: true });
  // Short, so that a long key's object file name (already near 255 bytes) still fits.
  const tmp = path.join(path.dirname(file), `.tmp-${randomBytes(6).toString('hex')}`);
  const hash = createHash('md5');
  let size = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      hash.update(chunk);
      size += chunk.length;
      callback(null, chunk);
    },
  });
  try {
    if (Buffer.isBuffer(content)) {
      meter.end(content);
      await pipeline(meter, createWriteStream(tmp));
    } else {
      await pipeline(content, meter, createWriteStream(tmp));
    }
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  return { size, md5: hash.digest('hex') };
}

async function* objectKeys(dir: string, keyPrefix: string): AsyncGenerator<string> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) {
      if (keyPrefix === '' && entry.name === '._S3rver_uploads') continue;
      yield* objectKeys(path.join(dir, entry.name), `${keyPrefix}${entry.name}/`);
    } else if (entry.name.endsWith(OBJECT_SUFFIX)) {
      yield keyPrefix + entry.name.slice(0, -OBJECT_SUFFIX.length);
    }
  }
}

function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function patchStore(Store: FsStoreClass, S3Object: S3ObjectConstructor): void {
  Store.prototype.listObjects = async function listObjects(this: FsStore, bucket, options) {
    const { delimiter = '', startAfter = '', prefix = '', maxKeys = Infinity } = options;
    const all: string[] = [];
    for await (const key of objectKeys(this.getBucketPath(bucket), '')) all.push(key);
    all.sort(byteOrder);
    const keys: string[] = [];
    const commonPrefixes = new Set<string>();
    let isTruncated = false;
    for (const key of all) {
      if (!key.startsWith(prefix) || byteOrder(key, startAfter) <= 0) continue;
      const cut = delimiter ? key.indexOf(delimiter, prefix.length) : -1;
      if (cut !== -1) {
        commonPrefixes.add(key.slice(0, cut + delimiter.length));
        continue;
      }
      if (keys.length === maxKeys) {
        isTruncated = true;
        break;
      }
      keys.push(key);
    }
    const objects = [];
    for (const key of keys) {
      const metadata = await this.getMetadata(bucket, key).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return undefined;
        throw err;
      });
      if (metadata) objects.push(new S3Object(bucket, key, null, metadata));
    }
    return { objects, commonPrefixes: [...commonPrefixes].sort(byteOrder), isTruncated };
  };

  Store.prototype.putObject = async function putObject(this: FsStore, object) {
    const result = await writeHashed(object.content, this.getResourcePath(object.bucket, object.key, 'object'));
    await this.putMetadata(object.bucket, object.key, object.metadata, result.md5);
    return result;
  };

  Store.prototype.putPart = async function putPart(this: FsStore, bucket, uploadId, partNumber, content) {
    const partPath = path.join(this.getResourcePath(bucket, undefined, 'uploads'), uploadId, String(partNumber));
    const result = await writeHashed(content, partPath);
    await writeFile(`${partPath}.md5`, result.md5);
    return result;
  };

  const assemble = Store.prototype.putObjectMultipart;
  Store.prototype.putObjectMultipart = async function putObjectMultipart(this: FsStore, bucket, uploadId, parts) {
    const uploadDir = path.join(this.getResourcePath(bucket, undefined, 'uploads'), uploadId);
    const key = await readFile(path.join(uploadDir, 'key'), 'utf8');
    const sorted = [...parts].sort((a, b) => a.number - b.number);
    const etag = `${createHash('md5')
      .update(Buffer.concat(sorted.map((p) => Buffer.from(p.etag, 'hex'))))
      .digest('hex')}-${sorted.length}`;
    const { size } = await assemble.call(this, bucket, uploadId, parts);
    await writeFile(this.getResourcePath(bucket, key, 'object.md5'), etag);
    return { size, md5: etag };
  };
}

/** Open a file for reading, failing here (not later on the stream) when it is missing. */
function openForRead(file: string, range: { start?: number; end?: number }): Promise<Readable> {
  return new Promise((resolve, reject) => {
    const stream = createReadStream(file, range);
    stream.once('error', reject).once('open', () => resolve(stream));
  });
}

function patchGetObject(Store: FsStoreClass, S3Object: S3ObjectConstructor): void {
  Store.prototype.getObject = async function getObject(this: FsStore, bucket, key, options) {
    let metadata: Record<string, unknown>;
    try {
      metadata = await this.getMetadata(bucket, key);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    const object = new S3Object(bucket, key, null, metadata);
    const file = this.getResourcePath(bucket, key, 'object');
    if (options?.start === undefined && options?.end === undefined) {
      object.content = await openForRead(file, {});
      return object;
    }
    const size = Number(metadata['content-length']);
    const start = options.start ?? 0;
    const end = Math.min(options.end ?? Infinity, size - 1);
    object.range = { start, end };
    // Left without content, the controller answers 416 InvalidRange, as S3 does.
    if (start < size && start <= end) object.content = await openForRead(file, { start, end });
    return object;
  };
}

function patchCopySource(controller: ObjectController): void {
  const copy = controller.putObjectCopy;
  controller.putObjectCopy = async (ctx) => {
    const source = ctx.headers['x-amz-copy-source'];
    // s3rver applies decodeURI; hand it a value on which decodeURI gives the fully decoded key.
    if (typeof source === 'string') ctx.headers['x-amz-copy-source'] = encodeURI(decodeURIComponent(source));
    return copy(ctx);
  };
}

function abortMultipartUpload(store: FsStore): KoaMiddleware {
  return async (ctx, next) => {
    const uploadId = ctx.query.uploadId;
    if (ctx.method !== 'DELETE' || typeof uploadId !== 'string') return next();
    const bucket = decodeURIComponent(ctx.path.split('/')[1] ?? '');
    const dir = path.join(store.getResourcePath(bucket, undefined, 'uploads'), uploadId);
    const known = /^[0-9a-f]+$/.test(uploadId) && (await readdir(dir).then(() => true, () => false));
    if (known) {
      await rm(dir, { recursive: true, force: true });
      ctx.status = 204;
      ctx.body = null;
    } else {
      ctx.status = 404;
      ctx.type = 'application/xml';
      ctx.body =
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchUpload</Code>' +
        `<Message>The specified upload does not exist.</Message><UploadId>${uploadId.replace(/[^0-9a-zA-Z]/g, '')}</UploadId></Error>`;
    }
  };
}

/** A bare ETag: quotes and a weak prefix removed. */
function bareEtag(etag: string): string {
  return etag.trim().replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
}

function s3ErrorXml(code: string, message: string, extra: Record<string, string> = {}): string {
  const escape = (v: string): string => v.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  const fields = Object.entries(extra).map(([k, v]) => `<${k}>${escape(v)}</${k}>`).join('');
  return `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${escape(message)}</Message>${fields}<RequestId>${randomBytes(8).toString('hex')}</RequestId></Error>`;
}

/** Read and drop a request body we answer without storing, so the client is not cut off mid-send. */
function drain(req: NodeJS.ReadableStream): Promise<void> {
  return new Promise((resolve) => {
    req.on('end', resolve).on('error', () => resolve()).on('close', resolve);
    req.resume();
  });
}

function conditionalWrites(store: FsStore): KoaMiddleware {
  const tails = new Map<string, Promise<void>>();
  return async (ctx, next) => {
    // Reads of an object join the queue too: s3rver rewrites an object's metadata file in place,
    // so a HEAD or GET racing a write could see it empty (an etag of ""), which S3 never shows.
    if (!['PUT', 'POST', 'DELETE', 'GET', 'HEAD'].includes(ctx.method)) return next();
    const [, rawBucket = '', ...rawKey] = ctx.path.split('/');
    const isPart = ctx.method === 'PUT' && ctx.query.partNumber !== undefined;
    if (rawKey.join('/') === '' || isPart) return next();
    const bucket = decodeURIComponent(rawBucket);
    const key = rawKey.map(decodeURIComponent).join('/');

    // Serialise the requests of one key: each waits until the previous one has answered.
    const id = `${bucket}/${key}`;
    const previous = tails.get(id) ?? Promise.resolve();
    let done = (): void => undefined;
    const mine = new Promise<void>((resolve) => (done = resolve));
    const tail = previous.then(() => mine);
    tails.set(id, tail);
    await previous;
    try {
      const header = (name: string): string | undefined => {
        const v = ctx.headers[name];
        return Array.isArray(v) ? v.join(',') : v;
      };
      const ifMatch = header('if-match');
      const ifNoneMatch = header('if-none-match');
      // PutObject proper: not a copy, a part or a sub-resource (the SDK adds `x-id=PutObject`).
      const subresources = Object.keys(ctx.query).filter((k) => k !== 'x-id');
      const isObjectPut = ctx.method === 'PUT' && ctx.headers['x-amz-copy-source'] === undefined && subresources.length === 0;
      if (isObjectPut && (ifMatch !== undefined || ifNoneMatch !== undefined)) {
        if (ifNoneMatch !== undefined && ifNoneMatch.trim() !== '*') {
          await drain(ctx.req);
          ctx.status = 501;
          ctx.type = 'application/xml';
          ctx.body = s3ErrorXml('NotImplemented', 'A header you provided implies functionality that is not implemented', { Header: 'If-None-Match' });
          return;
        }
        const current = await store.getMetadata(bucket, key).then(
          (m) => bareEtag(String(m.etag)),
          (err: NodeJS.ErrnoException) => {
            if (err.code === 'ENOENT') return null;
            throw err;
          },
        );
        const holds =
          ifNoneMatch !== undefined
            ? current === null
            : current !== null && (ifMatch ?? '').split(',').some((tag) => tag.trim() === '*' || bareEtag(tag) === current);
        if (!holds) {
          await drain(ctx.req);
          ctx.status = 412;
          ctx.type = 'application/xml';
          ctx.body = s3ErrorXml('PreconditionFailed', 'At least one of the pre-conditions you specified did not hold', {
            Condition: ifNoneMatch !== undefined ? 'If-None-Match' : 'If-Match',
          });
          return;
        }
      }
      await next();
    } finally {
      done();
      if (tails.get(id) === tail) tails.delete(id);
    }
  };
}

async function serve(directory: string, bucket: string, port: number): Promise<void> {
  const require = createRequire(import.meta.url);
  const S3rver = require('s3rver') as S3rverConstructor;
  const Store = require('s3rver/lib/stores/filesystem.js') as FsStoreClass;
  const S3Object = require('s3rver/lib/models/object.js') as S3ObjectConstructor;
  patchStore(Store, S3Object);
  patchGetObject(Store, S3Object);
  patchCopySource(require('s3rver/lib/controllers/object.js') as ObjectController);
  const server = new S3rver({
    address: '127.0.0.1',
    port,
    silent: true,
    directory,
    configureBuckets: [{ name: bucket, configs: [] }],
  });
  server.middleware.unshift(abortMultipartUpload(server.store));
  // First of all, so that the other corrections run inside its per-key serialisation.
  server.middleware.unshift(conditionalWrites(server.store));
  const address = await server.run();
  process.stdin.on('end', () => process.exit(0)).resume();
  process.stdout.write(`${JSON.stringify({ port: address.port })}\n`);
}

if (process.argv[2] === SERVE_FLAG && process.argv[1] === SELF) {
  const [directory, bucket, port] = process.argv.slice(3);
  if (directory === undefined || bucket === undefined) throw new Error(`usage: node s3rver.ts ${SERVE_FLAG} <directory> <bucket> [port]`);
  serve(directory, bucket, Number(port ?? 0)).catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
}
