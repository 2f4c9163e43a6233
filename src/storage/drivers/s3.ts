/**
 * The S3 driver: any S3-compatible service (AWS, MinIO, Cloudflare R2, Ceph RGW, Backblaze B2)
 * through `@aws-sdk/client-s3`, which this module imports only when a store is created, so folder
 * users never load the SDK. Small known-size bodies go up in one `PutObject`; streams and large
 * bodies go through `@aws-sdk/lib-storage`'s `Upload`, which sends one `PutObject` when the data
 * fits in one part and a multipart upload otherwise; S3 makes either visible only when it is
 * complete, which gives the contract's atomic put. When a multipart upload fails or is aborted
 * the parts already sent are discarded (`AbortMultipartUpload`) before `put` rejects; a process
 * killed mid-upload leaves them behind, so give the bucket an `AbortIncompleteMultipartUpload`
 * lifecycle rule. Credentials come from the standard AWS chain (environment, shared config,
 * SSO, instance or container roles) unless given. Conditional puts (`ifMatch`, `ifNoneMatch`)
 * send S3's `If-Match` / `If-None-Match` headers (AWS S3, MinIO, Cloudflare R2 and Ceph RGW
 * evaluate them atomically); they always go up in one `PutObject`, so a conditional body is
 * limited to the single-request size (`multipartThreshold`, at least 5 MiB) — manifests are a few
 * KiB. Left out: server-side copies above 5 GiB (S3 refuses a single `CopyObject` that large),
 * conditional multipart uploads, object versions and storage classes.
 */
import { addAbortSignal, Readable } from 'node:stream';
import type * as S3Sdk from '@aws-sdk/client-s3';
import type * as LibStorage from '@aws-sdk/lib-storage';
import { BoothError, errorMessage } from '../../errors.js';
import { createLogger, type Logger } from '../../log.js';
import { assertValidKey, assertValidPrefix, isValidKey, MAX_KEY_BYTES } from '../keys.js';
import type { GetOptions, ListOptions, ListPage, ObjectInfo, ObjectStore, PutBody, PutOptions } from '../types.js';
import { assertBody, checkCondition, checkCursor, checkLimit, checkRange, closedError, preconditionFailed, type PutCondition } from './shared.js';

/** S3's smallest part (except the last). */
const MIN_PART_SIZE = 5 * 1024 * 1024;
/** S3's largest part. */
const MAX_PART_SIZE = 5 * 1024 * 1024 * 1024;
const DEFAULT_MULTIPART_THRESHOLD = 16 * 1024 * 1024;

/** When the SDK computes or checks integrity checksums (the SDK's own setting, passed through). */
export type ChecksumMode = 'WHEN_SUPPORTED' | 'WHEN_REQUIRED';

/** Options of {@link createS3Store}. */
export interface S3StoreOptions {
  /** Bucket name. It must exist; Booth does not create buckets. */
  bucket: string;
  /** Key prefix inside the bucket (`booth` or `booth/`); keys are relative to it. Default: none. */
  prefix?: string;
  /** Region. Default `us-east-1` (what MinIO and most S3-compatible services expect). */
  region?: string;
  /** Endpoint URL of an S3-compatible service, e.g. `http://127.0.0.1:9000`. Default: AWS. */
  endpoint?: string;
  /**
   * Address buckets as `endpoint/bucket/key` instead of `bucket.endpoint/key`. Default: true when
   * `endpoint` is set (MinIO, Ceph and most self-hosted services need it), else false.
   */
  forcePathStyle?: boolean;
  /** Static credentials or a provider. Default: the standard AWS chain. */
  credentials?: S3Sdk.S3ClientConfig['credentials'];
  /**
   * Buffers and strings up to this many bytes go up in one `PutObject`; larger ones, and streams
   * that do not end within the first part, as a multipart upload. Default 16 MiB.
   */
  multipartThreshold?: number;
  /**
   * Part size of multipart uploads, between 5 MiB and 5 GiB. Default: `multipartThreshold` (at
   * least 5 MiB), so that a stream is sent in one request exactly when a buffer would be. S3
   * allows 10 000 parts, so the default part size caps a streamed object at about 160 GiB.
   */
  partSize?: number;
  /** Parts uploaded at once; memory use is about `queueSize × partSize`. Default 4. */
  queueSize?: number;
  /**
   * When the SDK adds CRC32 checksums to uploads. Default: `WHEN_REQUIRED` when `endpoint` is
   * set, because S3-compatible services differ in their support for the SDK's newer default
   * (`WHEN_SUPPORTED`, sent as headers or, for streams, as `aws-chunked` trailers); otherwise the
   * SDK's default (which also reads `AWS_REQUEST_CHECKSUM_CALCULATION`).
   */
  requestChecksumCalculation?: ChecksumMode;
  /** When the SDK validates checksums of downloads. Default: as `requestChecksumCalculation`. */
  responseChecksumValidation?: ChecksumMode;
  /**
   * Build the client from the configuration this driver computed, e.g. to add middleware, a
   * custom HTTP agent or retry settings. Default: `new S3Client(config)`.
   */
  createClient?: (config: S3Sdk.S3ClientConfig) => S3Sdk.S3Client;
  /** Logger for steps that fail without failing the operation. Default: stderr, `warn`. */
  logger?: Logger;
}

type Sdk = typeof S3Sdk;
type Storage = typeof LibStorage;

/**
 * Open a bucket (or a prefix inside one) as an object store. The SDK is imported here, on first
 * use, not when this module loads.
 *
 * A stream body passed to `put` is consumed, or destroyed when the put fails or is aborted. An
 * abort is honoured until the last byte of the body has been read; after that the upload is
 * completed and `put` resolves.
 *
 * @param options - see {@link S3StoreOptions}
 * @returns an {@link ObjectStore} whose `url` is `s3://bucket/prefix/`
 * @throws BoothError `INVALID_ARGUMENT` for a bad option (named in the message); `STORAGE` when
 *   the AWS SDK packages cannot be loaded
 * @example
 * const store = await createS3Store({ bucket: 'booth', prefix: 'prod', endpoint: 'http://127.0.0.1:9000' });
 * await store.put('sessions/alice/session.json', '{}', { contentType: 'application/json' });
 */
export async function createS3Store(options: S3StoreOptions): Promise<ObjectStore> {
  const bucket = checkBucket(options.bucket);
  const prefix = normalizePrefix(options.prefix);
  const endpoint = checkEndpoint(options.endpoint);
  const forcePathStyle = options.forcePathStyle ?? endpoint !== undefined;
  const multipartThreshold = checkSize('multipartThreshold', options.multipartThreshold ?? DEFAULT_MULTIPART_THRESHOLD, 0, Infinity);
  const partSize = checkSize('partSize', options.partSize ?? Math.max(multipartThreshold, MIN_PART_SIZE), MIN_PART_SIZE, MAX_PART_SIZE);
  const queueSize = checkSize('queueSize', options.queueSize ?? 4, 1, 64);
  const checksumDefault: ChecksumMode | undefined = endpoint !== undefined ? 'WHEN_REQUIRED' : undefined;
  const requestChecksumCalculation = checkChecksumMode('requestChecksumCalculation', options.requestChecksumCalculation) ?? checksumDefault;
  const responseChecksumValidation =
    checkChecksumMode('responseChecksumValidation', options.responseChecksumValidation) ?? requestChecksumCalculation;
  const logger = options.logger ?? createLogger();
  const url = `s3://${bucket}/${prefix}`;
  const where = endpoint ?? 'AWS S3';

  const { sdk, storage } = await loadSdk();
  const config: S3Sdk.S3ClientConfig = {
    region: options.region ?? 'us-east-1',
    forcePathStyle,
    ...(endpoint !== undefined ? { endpoint } : {}),
    ...(options.credentials !== undefined ? { credentials: options.credentials } : {}),
    ...(requestChecksumCalculation !== undefined ? { requestChecksumCalculation } : {}),
    ...(responseChecksumValidation !== undefined ? { responseChecksumValidation } : {}),
  };
  const client = options.createClient ? options.createClient(config) : new sdk.S3Client(config);
  let closed = false;

  const fullKey = (key: string): string => prefix + key;
  const location = (key: string): string => `s3://${bucket}/${fullKey(key)}`;

  /** Validate a key for this store: the key rules, plus S3's limit on prefix + key. */
  function checkKey(key: string): void {
    if (closed) throw closedError(url);
    assertValidKey(key);
    const bytes = Buffer.byteLength(fullKey(key), 'utf8');
    if (bytes > MAX_KEY_BYTES) {
      throw new BoothError(
        'INVALID_KEY',
        `invalid storage key "${key}": with the store prefix "${prefix}" it is ${bytes} UTF-8 bytes, over S3's limit of ${MAX_KEY_BYTES}`,
      );
    }
  }

  /** Turn an SDK error into one a person can act on, naming bucket, key and likely fixes. */
  function storageError(op: string, key: string | undefined, err: unknown): BoothError {
    if (err instanceof BoothError) return err;
    const e = err as { name?: string; message?: string; code?: string; $metadata?: { httpStatusCode?: number } };
    const name = e.name ?? 'Error';
    const status = e.$metadata?.httpStatusCode;
    const target = key === undefined ? `s3://${bucket}/${prefix}` : location(key);
    const detail = `${name}: ${errorMessage(err)}${status !== undefined ? ` (HTTP ${status})` : ''}`;
    let advice: string;
    if (name === 'NoSuchBucket') {
      advice = `the bucket "${bucket}" does not exist at ${where}; create it, or point BOOTH_STORAGE at an existing bucket`;
    } else if (
      status === 403 ||
      ['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'ExpiredToken', 'InvalidToken'].includes(name)
    ) {
      advice = `check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and that they may use bucket "${bucket}"`;
    } else if (name === 'CredentialsProviderError') {
      advice = 'no AWS credentials were found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE';
    } else if (name === 'PermanentRedirect' || name === 'AuthorizationHeaderMalformed' || status === 301) {
      advice = `bucket "${bucket}" is in another region; set AWS_REGION to its region`;
    } else if (['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH'].includes(e.code ?? '')) {
      advice = `cannot reach ${where}; check the endpoint (BOOTH_S3_ENDPOINT) and the network`;
    } else {
      advice = `check the credentials and the endpoint (${where})`;
    }
    return new BoothError('STORAGE', `${op} of ${target} failed: ${detail}; ${advice}`, { cause: err });
  }

  function notFound(key: string, cause?: unknown): BoothError {
    return new BoothError('NOT_FOUND', `no object "${key}" in ${url}`, cause === undefined ? undefined : { cause });
  }

  function infoOf(key: string, size: number | undefined, etag: string | undefined, mtime: Date | undefined): ObjectInfo {
    return { key, size: size ?? 0, etag: unquote(etag ?? ''), mtime: mtime ?? new Date(0) };
  }

  async function head(key: string): Promise<ObjectInfo | null> {
    checkKey(key);
    try {
      const out = await client.send(new sdk.HeadObjectCommand({ Bucket: bucket, Key: fullKey(key) }));
      return infoOf(key, out.ContentLength, out.ETag, out.LastModified);
    } catch (err) {
      if (isNotFound(err)) return null;
      throw storageError('head', key, err);
    }
  }

  /** The stored object's info right after a write (S3 reads are strongly consistent). */
  async function infoAfterWrite(op: string, key: string): Promise<ObjectInfo> {
    const info = await head(key);
    if (!info) throw new BoothError('STORAGE', `${op} of ${location(key)} succeeded but the object is not there; was it deleted concurrently?`);
    return info;
  }

  /**
   * The info of the version a single `PutObject` wrote. The response's ETag is authoritative: a
   * HEAD right after may already see another writer's version, and reporting that etag would let
   * the caller's next `ifMatch` overwrite a change it never saw.
   */
  async function infoOfPut(key: string, size: number, etag: string | undefined): Promise<ObjectInfo> {
    if (etag === undefined) return infoAfterWrite('put', key);
    const own = unquote(etag);
    const info = await head(key);
    return info && info.etag === own ? info : { key, size, etag: own, mtime: new Date() };
  }

  /** Read a conditional put's stream body into memory, refusing one over the single-request limit. */
  async function collect(key: string, body: Readable, limit: number, signal: AbortSignal | undefined): Promise<Buffer> {
    if (signal) addAbortSignal(signal, body);
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of body as AsyncIterable<Buffer | string>) {
        const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
        size += bytes.byteLength;
        if (size > limit) throw conditionalTooLarge(key, limit);
        chunks.push(bytes);
      }
    } catch (err) {
      if (!body.destroyed) body.destroy();
      if (signal?.aborted) throw signal.reason;
      if (err instanceof BoothError) throw err;
      throw new BoothError('STORAGE', `put of ${location(key)} failed: the source stream failed: ${errorMessage(err)}; the previous object (if any) is intact`, {
        cause: err,
      });
    }
    return Buffer.concat(chunks);
  }

  function conditionalTooLarge(key: string, limit: number): BoothError {
    return new BoothError(
      'INVALID_ARGUMENT',
      `conditional put of ${location(key)}: the body is over ${limit} bytes, the most this store sends in one request; ` +
        'conditional writes are meant for small records such as manifests; write large objects without ifMatch/ifNoneMatch',
    );
  }

  /** One conditional `PutObject`; a failed condition becomes `PRECONDITION_FAILED`. */
  async function putConditional(key: string, bytes: Uint8Array, contentType: string, condition: PutCondition, signal: AbortSignal | undefined): Promise<ObjectInfo> {
    let out: S3Sdk.PutObjectCommandOutput;
    try {
      out = await client.send(
        new sdk.PutObjectCommand({
          Bucket: bucket,
          Key: fullKey(key),
          Body: bytes,
          ContentType: contentType,
          ContentLength: bytes.byteLength,
          ...('ifMatch' in condition ? { IfMatch: quote(condition.ifMatch) } : { IfNoneMatch: '*' }),
        }),
        signal ? { abortSignal: signal } : {},
      );
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      // 412 PreconditionFailed: the condition does not hold. 409 ConditionalRequestConflict: a
      // concurrent write of the key won the race. 404 under If-Match: the object is gone (S3
      // answers NoSuchKey where some compatible services answer 412).
      const status = statusOf(err);
      const name = errorName(err);
      if (status === 412 || name === 'PreconditionFailed' || status === 409 || name === 'ConditionalRequestConflict') {
        throw preconditionFailed(url, key, condition, undefined, err);
      }
      if ('ifMatch' in condition && isNotFound(err) && name !== 'NoSuchBucket') throw preconditionFailed(url, key, condition, null, err);
      throw new BoothError('STORAGE', `${storageError('put', key, err).message}; the previous object (if any) is intact`, { cause: err });
    }
    return infoOfPut(key, bytes.byteLength, out.ETag);
  }

  async function put(key: string, body: PutBody, options?: PutOptions): Promise<ObjectInfo> {
    const signal = options?.signal;
    let condition: PutCondition | undefined;
    try {
      checkKey(key);
      assertBody(key, body);
      condition = checkCondition(key, options);
      signal?.throwIfAborted();
    } catch (err) {
      if (body instanceof Readable) body.destroy();
      throw err;
    }
    const contentType = options?.contentType ?? 'application/octet-stream';
    if (condition) {
      const limit = Math.max(multipartThreshold, MIN_PART_SIZE);
      const bytes = body instanceof Readable ? await collect(key, body, limit, signal) : typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
      if (bytes.byteLength > limit) throw conditionalTooLarge(key, limit);
      return putConditional(key, bytes, contentType, condition, signal);
    }
    let source: Readable;
    try {
      if (!(body instanceof Readable)) {
        const bytes = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
        if (bytes.byteLength <= multipartThreshold) {
          const out = await client.send(
            new sdk.PutObjectCommand({ Bucket: bucket, Key: fullKey(key), Body: bytes, ContentType: contentType, ContentLength: bytes.byteLength }),
            signal ? { abortSignal: signal } : {},
          );
          return await infoOfPut(key, bytes.byteLength, out.ETag);
        }
        source = Readable.from(slices(bytes, partSize), { objectMode: false });
      } else {
        source = body;
      }
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      throw storageError('put', key, err);
    }

    // Cancellation fails the source rather than calling upload.abort(): lib-storage then sends
    // AbortMultipartUpload and settles done() only after it, whereas upload.abort() settles done()
    // at once and discards the parts later, in the background.
    if (signal) addAbortSignal(signal, source);
    let upload: LibStorage.Upload | undefined;
    try {
      upload = new storage.Upload({
        client,
        params: { Bucket: bucket, Key: fullKey(key), Body: source, ContentType: contentType },
        partSize,
        queueSize,
        leavePartsOnError: false,
      });
      await upload.done();
    } catch (err) {
      if (!source.destroyed) source.destroy();
      await discardParts(key, upload?.uploadId);
      if (signal?.aborted) throw signal.reason;
      const fromSource = source.errored !== null && source.errored === err;
      throw new BoothError(
        'STORAGE',
        fromSource
          ? `put of ${location(key)} failed: the source stream failed: ${errorMessage(err)}; the previous object (if any) is intact`
          : `${storageError('put', key, err).message}; the previous object (if any) is intact`,
        { cause: err },
      );
    }
    return infoAfterWrite('put', key);
  }

  /**
   * Make sure a failed multipart upload's parts are gone. lib-storage already aborts the upload
   * on failure; this second request covers the case where its abort itself failed, and is
   * answered `NoSuchUpload` otherwise.
   */
  async function discardParts(key: string, uploadId: string | undefined): Promise<void> {
    if (uploadId === undefined) return;
    try {
      await client.send(new sdk.AbortMultipartUploadCommand({ Bucket: bucket, Key: fullKey(key), UploadId: uploadId }));
    } catch (err) {
      if (isNotFound(err)) return;
      logger.warn(
        { bucket, key: fullKey(key), uploadId, err: errorMessage(err) },
        's3 store: could not abort a failed multipart upload; its parts stay billed until a lifecycle rule removes them',
      );
    }
  }

  async function get(key: string, options?: GetOptions): Promise<Readable> {
    checkKey(key);
    const range = checkRange(key, options?.range);
    try {
      const out = await client.send(
        new sdk.GetObjectCommand({
          Bucket: bucket,
          Key: fullKey(key),
          ...(range ? { Range: `bytes=${range.start}-${range.end ?? ''}` } : {}),
        }),
      );
      if (!(out.Body instanceof Readable)) {
        throw new BoothError('STORAGE', `get of ${location(key)} returned no readable body; is this Node.js with the Node build of the AWS SDK?`);
      }
      return out.Body;
    } catch (err) {
      if (isNotFound(err)) throw notFound(key, err);
      // A range that starts at or past the end reads nothing, as on the folder driver.
      if (range && (errorName(err) === 'InvalidRange' || statusOf(err) === 416)) return Readable.from([]);
      throw storageError('get', key, err);
    }
  }

  async function list(listPrefix: string, options?: ListOptions): Promise<ListPage> {
    if (closed) throw closedError(url);
    assertValidPrefix(listPrefix);
    const limit = checkLimit(options?.limit);
    const cursor = checkCursor(options?.cursor);
    let out: S3Sdk.ListObjectsV2CommandOutput;
    try {
      out = await client.send(
        new sdk.ListObjectsV2Command({
          Bucket: bucket,
          Prefix: prefix + listPrefix,
          MaxKeys: limit,
          ...(cursor !== undefined ? { ContinuationToken: cursor } : {}),
        }),
      );
    } catch (err) {
      throw storageError('list', listPrefix === '' ? undefined : listPrefix, err);
    }
    const items: ObjectInfo[] = [];
    for (const obj of out.Contents ?? []) {
      const key = obj.Key?.slice(prefix.length);
      // Objects written by other tools ("folder" markers ending in "/", names with "//") cannot
      // be addressed by a valid key, so they are not part of this store.
      if (key === undefined || !obj.Key?.startsWith(prefix) || !isValidKey(key)) {
        logger.debug({ bucket, key: obj.Key }, 's3 store: skipping an object whose name is not a valid key');
        continue;
      }
      items.push(infoOf(key, obj.Size, obj.ETag, obj.LastModified));
    }
    return out.IsTruncated && out.NextContinuationToken ? { items, cursor: out.NextContinuationToken } : { items };
  }

  async function del(key: string): Promise<void> {
    checkKey(key);
    try {
      await client.send(new sdk.DeleteObjectCommand({ Bucket: bucket, Key: fullKey(key) }));
    } catch (err) {
      // S3 answers 204 for a missing key; some compatible services answer 404.
      if (isNotFound(err) && errorName(err) !== 'NoSuchBucket') return;
      throw storageError('delete', key, err);
    }
  }

  async function copy(from: string, to: string): Promise<ObjectInfo> {
    checkKey(from);
    checkKey(to);
    if (from === to) {
      // S3 refuses to copy an object onto itself unchanged; it would be a no-op anyway.
      const info = await head(from);
      if (!info) throw notFound(from);
      return info;
    }
    try {
      await client.send(
        new sdk.CopyObjectCommand({ Bucket: bucket, Key: fullKey(to), CopySource: encodeCopySource(bucket, fullKey(from)) }),
      );
    } catch (err) {
      if (isNotFound(err) && errorName(err) !== 'NoSuchBucket') throw notFound(from, err);
      throw storageError(`copy to "${to}"`, from, err);
    }
    return infoAfterWrite('copy', to);
  }

  return {
    url,
    get,
    put,
    head,
    list,
    delete: del,
    copy,
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      client.destroy();
    },
  };
}

/**
 * The `x-amz-copy-source` value: bucket and key, each key segment percent-encoded (S3 decodes
 * the header, so `+`, `%`, `?`, `#` and non-ASCII characters must be escaped; `/` must not).
 *
 * @param bucket - source bucket
 * @param key - full source key (store prefix included)
 * @returns the header value
 * @example
 * encodeCopySource('b', 'a b/c+d.txt'); // 'b/a%20b/c%2Bd.txt'
 * @internal exported for tests
 */
export function encodeCopySource(bucket: string, key: string): string {
  return `${bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
}

async function loadSdk(): Promise<{ sdk: Sdk; storage: Storage }> {
  try {
    const [sdk, storage] = await Promise.all([import('@aws-sdk/client-s3'), import('@aws-sdk/lib-storage')]);
    return { sdk, storage };
  } catch (err) {
    throw new BoothError(
      'STORAGE',
      `s3:// stores need the packages @aws-sdk/client-s3 and @aws-sdk/lib-storage, which could not be loaded (${errorMessage(err)}); ` +
        'install them with `npm install @aws-sdk/client-s3 @aws-sdk/lib-storage`',
      { cause: err },
    );
  }
}

/** Cut a large buffer into part-sized views (no copies) for a stream the driver can cancel. */
function* slices(bytes: Uint8Array, size: number): Generator<Buffer> {
  for (let offset = 0; offset < bytes.byteLength; offset += size) {
    yield Buffer.from(bytes.buffer, bytes.byteOffset + offset, Math.min(size, bytes.byteLength - offset));
  }
}

function errorName(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'name' in err && typeof err.name === 'string' ? err.name : undefined;
}

function statusOf(err: unknown): number | undefined {
  const meta = typeof err === 'object' && err !== null && '$metadata' in err ? (err.$metadata as { httpStatusCode?: number }) : undefined;
  return meta?.httpStatusCode;
}

/** NoSuchKey from GET, NotFound (no body) from HEAD, NoSuchUpload from multipart calls, or a bare 404. */
function isNotFound(err: unknown): boolean {
  const name = errorName(err);
  return name === 'NoSuchKey' || name === 'NotFound' || name === 'NoSuchUpload' || (name !== 'NoSuchBucket' && statusOf(err) === 404);
}

function quote(etag: string): string {
  return /^(W\/)?".*"$/.test(etag) ? etag : `"${etag}"`;
}

function unquote(etag: string): string {
  return etag.replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
}

function checkBucket(bucket: unknown): string {
  // S3's rules, loosened to what S3-compatible services also accept (upper case, underscores).
  if (typeof bucket !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$/.test(bucket)) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `s3 store: option "bucket" must be a bucket name such as "booth-data" (3 to 255 letters, digits, ".", "-", "_"), got ${JSON.stringify(bucket)}`,
    );
  }
  return bucket;
}

function normalizePrefix(prefix: string | undefined): string {
  if (prefix === undefined) return '';
  const trimmed = prefix.replace(/^\/+/, '').replace(/\/+$/, '');
  if (trimmed === '') return '';
  if (!isValidKey(trimmed)) {
    try {
      assertValidKey(trimmed);
    } catch (err) {
      throw new BoothError('INVALID_ARGUMENT', `s3 store: option "prefix" is not usable: ${errorMessage(err)}`, { cause: err });
    }
  }
  return `${trimmed}/`;
}

function checkEndpoint(endpoint: string | undefined): string | undefined {
  if (endpoint === undefined || endpoint === '') return undefined;
  let parsed: URL;
  try {
    parsed = new URL(endpoint);
  } catch (err) {
    throw new BoothError('INVALID_ARGUMENT', `s3 store: option "endpoint" must be a URL such as "http://127.0.0.1:9000", got ${JSON.stringify(endpoint)}`, {
      cause: err,
    });
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new BoothError('INVALID_ARGUMENT', `s3 store: option "endpoint" must be an http:// or https:// URL, got ${JSON.stringify(endpoint)}`);
  }
  return endpoint;
}

function checkSize(name: string, value: number, min: number, max: number): number {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    const range = max === Infinity ? `at least ${min}` : `between ${min} and ${max}`;
    throw new BoothError('INVALID_ARGUMENT', `s3 store: option "${name}" must be a whole number ${range}, got ${String(value)}`);
  }
  return value;
}

function checkChecksumMode(name: string, value: string | undefined): ChecksumMode | undefined {
  if (value === undefined) return undefined;
  if (value === 'WHEN_SUPPORTED' || value === 'WHEN_REQUIRED') return value;
  throw new BoothError('INVALID_ARGUMENT', `s3 store: option "${name}" must be "WHEN_SUPPORTED" or "WHEN_REQUIRED", got ${JSON.stringify(value)}`);
}
