/**
 * Entry point of the storage layer: `openStore` turns ONE setting (`BOOTH_STORAGE`, or the CLI's
 * `--store`) into a store: `file:///abs/path`, `file://./relative/path`, a bare path, or
 * `s3://bucket/prefix` (with the standard AWS environment plus `BOOTH_S3_ENDPOINT` for
 * S3-compatible services). The default is the folder `./booth-data`. It also holds the small
 * helpers every caller needs on top of the streaming contract (whole-object reads, JSON, listing
 * all pages, existence). The environment is read only here, through an injectable `env`, so that
 * the drivers themselves stay free of process-wide settings.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BoothError, errorMessage } from '../errors.js';
import { redactUrl, type Logger } from '../log.js';
import { createFsStore } from './drivers/fs.js';
import { createS3Store, type ChecksumMode, type S3StoreOptions } from './drivers/s3.js';
import type { ListOptions, ObjectInfo, ObjectStore, PutOptions } from './types.js';

export type { ByteRange, GetOptions, ListOptions, ListPage, ObjectInfo, ObjectStore, PutBody, PutOptions } from './types.js';
export { assertValidKey, assertValidPrefix, compareKeys, isValidKey, joinKey, MAX_KEY_BYTES } from './keys.js';
export { createFsStore, type FsStoreOptions } from './drivers/fs.js';
export { createS3Store, type ChecksumMode, type S3StoreOptions } from './drivers/s3.js';

/** The store used when neither the argument nor `BOOTH_STORAGE` names one. */
export const DEFAULT_STORAGE = 'file://./booth-data';

const FORMS =
  '"file:///absolute/path", "file://./relative/path", a plain path such as "./booth-data", or "s3://bucket/prefix" ' +
  '(S3-compatible services: also set BOOTH_S3_ENDPOINT)';

/** Options of {@link openStore}. */
export interface OpenStoreOptions {
  /** Environment to read `BOOTH_STORAGE`, `BOOTH_S3_*` and `AWS_*` settings from. Default `process.env`. */
  env?: Record<string, string | undefined>;
  /** Folder that relative paths are resolved against. Default `process.cwd()`. */
  cwd?: string;
  /** Logger handed to the driver. */
  logger?: Logger;
  /** Overrides for the S3 driver (they win over the environment), e.g. `credentials` or `partSize`. */
  s3?: Partial<S3StoreOptions>;
}

/** What a storage setting resolves to, before any driver is loaded. */
export type StorageTarget =
  | { driver: 'fs'; root: string }
  | {
      driver: 's3';
      bucket: string;
      prefix: string;
      region: string;
      endpoint?: string;
      forcePathStyle: boolean;
      requestChecksumCalculation?: ChecksumMode;
      responseChecksumValidation?: ChecksumMode;
    };

/**
 * Work out which driver and settings a storage setting means, without opening anything.
 *
 * @param url - the setting; default `BOOTH_STORAGE` from `options.env`, then {@link DEFAULT_STORAGE}
 * @param options - `env` and `cwd` (see {@link OpenStoreOptions})
 * @returns the driver and its settings
 * @throws BoothError `UNSUPPORTED_STORAGE` for an unknown scheme (listing the supported forms);
 *   `INVALID_ARGUMENT` for a malformed `file:` or `s3:` setting or a bad `BOOTH_S3_*` variable
 * @example
 * parseStorageUrl('s3://booth/prod', { env: { BOOTH_S3_ENDPOINT: 'http://127.0.0.1:9000' } });
 * // { driver: 's3', bucket: 'booth', prefix: 'prod', endpoint: 'http://127.0.0.1:9000', forcePathStyle: true, … }
 */
export function parseStorageUrl(url?: string, options: Pick<OpenStoreOptions, 'env' | 'cwd'> = {}): StorageTarget {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const fromEnv = url === undefined || url === '';
  const setting = fromEnv ? nonEmpty(env.BOOTH_STORAGE) ?? DEFAULT_STORAGE : url;
  const source = fromEnv && nonEmpty(env.BOOTH_STORAGE) !== undefined ? 'BOOTH_STORAGE' : 'the storage setting';

  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(setting)?.[1]?.toLowerCase();
  // "C:\data" or "C:/data" is a Windows path, not a URL with scheme "c".
  const windowsDrive = /^[A-Za-z]:[\\/]/.test(setting);
  if (scheme === undefined || windowsDrive) return { driver: 'fs', root: path.resolve(cwd, setting) };
  if (scheme === 'file') return { driver: 'fs', root: parseFileUrl(setting, cwd, source) };
  if (scheme === 's3') return parseS3Url(setting, env, source);
  throw new BoothError(
    'UNSUPPORTED_STORAGE',
    `${source} ${JSON.stringify(redactUrl(setting))} uses the unsupported scheme "${scheme}:"; use ${FORMS}`,
  );
}

function parseFileUrl(setting: string, cwd: string, source: string): string {
  const rest = setting.slice('file:'.length);
  if (!rest.startsWith('//')) {
    throw new BoothError('INVALID_ARGUMENT', `${source} ${JSON.stringify(redactUrl(setting))} is not a file URL; use ${FORMS}`);
  }
  const afterSlashes = rest.slice(2);
  // "file://./data" and "file://../data" are not URLs in the WHATWG sense (the host would be
  // "."), but they are the natural way to write a relative folder, so they mean exactly that.
  if (afterSlashes === '.' || afterSlashes === '..' || afterSlashes.startsWith('./') || afterSlashes.startsWith('../')) {
    return path.resolve(cwd, decode(afterSlashes, setting, source));
  }
  try {
    return fileURLToPath(new URL(setting));
  } catch (err) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `${source} ${JSON.stringify(redactUrl(setting))} is not a usable file URL (${errorMessage(err)}); use ${FORMS}`,
      { cause: err },
    );
  }
}

function decode(value: string, setting: string, source: string): string {
  try {
    return decodeURIComponent(value);
  } catch (err) {
    throw new BoothError('INVALID_ARGUMENT', `${source} ${JSON.stringify(redactUrl(setting))} has a malformed %-escape; write "%" as "%25"`, {
      cause: err,
    });
  }
}

function parseS3Url(setting: string, env: Record<string, string | undefined>, source: string): StorageTarget {
  if (/[?#]/.test(setting)) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `${source} ${JSON.stringify(redactUrl(setting))} has a query or fragment, which s3:// settings do not take; ` +
        'set the endpoint with BOOTH_S3_ENDPOINT and the region with AWS_REGION',
    );
  }
  // Credentials in the URL would end up in shell history, process listings and every message
  // that quotes the setting; S3 credentials come from the AWS chain instead.
  if (/^s3:\/\/[^/]*@/i.test(setting)) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `${source} ${JSON.stringify(redactUrl(setting))} has credentials in it, which s3:// settings do not take; ` +
        'set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment instead',
    );
  }
  const m = /^s3:\/\/([^/]*)\/*(.*)$/i.exec(setting);
  const bucket = m?.[1] ?? '';
  if (!m || bucket === '') {
    throw new BoothError('INVALID_ARGUMENT', `${source} ${JSON.stringify(redactUrl(setting))} names no bucket; write "s3://bucket" or "s3://bucket/prefix"`);
  }
  const prefix = decode((m[2] ?? '').replace(/\/+$/, ''), setting, source);

  const endpointVar = ['BOOTH_S3_ENDPOINT', 'AWS_ENDPOINT_URL_S3', 'AWS_ENDPOINT_URL'].find((name) => nonEmpty(env[name]) !== undefined);
  const endpoint = endpointVar === undefined ? undefined : nonEmpty(env[endpointVar]);
  if (endpoint !== undefined && !/^https?:\/\/[^/]/i.test(endpoint)) {
    throw new BoothError('INVALID_ARGUMENT', `${endpointVar} must be an http:// or https:// URL such as "http://127.0.0.1:9000", got ${JSON.stringify(redactUrl(endpoint))}`);
  }
  if (endpoint !== undefined && /^https?:\/\/[^/?#]*@/i.test(endpoint)) {
    throw new BoothError('INVALID_ARGUMENT', `${endpointVar} ${JSON.stringify(redactUrl(endpoint))} has credentials in it; the S3 client ignores them: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead`);
  }
  const forcePathStyle = parseFlag('BOOTH_S3_FORCE_PATH_STYLE', env.BOOTH_S3_FORCE_PATH_STYLE) ?? endpoint !== undefined;
  const region = nonEmpty(env.AWS_REGION) ?? nonEmpty(env.AWS_DEFAULT_REGION) ?? 'us-east-1';
  const requestChecksumCalculation = parseChecksumMode('AWS_REQUEST_CHECKSUM_CALCULATION', env.AWS_REQUEST_CHECKSUM_CALCULATION);
  const responseChecksumValidation = parseChecksumMode('AWS_RESPONSE_CHECKSUM_VALIDATION', env.AWS_RESPONSE_CHECKSUM_VALIDATION);
  return {
    driver: 's3',
    bucket,
    prefix,
    region,
    forcePathStyle,
    ...(endpoint !== undefined ? { endpoint } : {}),
    ...(requestChecksumCalculation !== undefined ? { requestChecksumCalculation } : {}),
    ...(responseChecksumValidation !== undefined ? { responseChecksumValidation } : {}),
  };
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === '' ? undefined : value.trim();
}

function parseFlag(name: string, value: string | undefined): boolean | undefined {
  const v = nonEmpty(value)?.toLowerCase();
  if (v === undefined) return undefined;
  if (['1', 'true', 'yes', 'on'].includes(v)) return true;
  if (['0', 'false', 'no', 'off'].includes(v)) return false;
  throw new BoothError('INVALID_ARGUMENT', `${name} must be 1 or 0 (true or false), got ${JSON.stringify(value)}`);
}

function parseChecksumMode(name: string, value: string | undefined): ChecksumMode | undefined {
  const v = nonEmpty(value)?.toUpperCase();
  if (v === undefined) return undefined;
  if (v === 'WHEN_SUPPORTED' || v === 'WHEN_REQUIRED') return v;
  throw new BoothError('INVALID_ARGUMENT', `${name} must be WHEN_SUPPORTED or WHEN_REQUIRED, got ${JSON.stringify(value)}`);
}

/**
 * Open the store a setting names.
 *
 * @param url - `file:///abs/path`, `file://./relative`, a bare path, or `s3://bucket/prefix`;
 *   default `BOOTH_STORAGE`, then `file://./booth-data`
 * @param options - environment, working folder, logger and S3 overrides
 * @returns the opened store; `close()` it when done
 * @throws BoothError `UNSUPPORTED_STORAGE` for an unknown scheme; `INVALID_ARGUMENT` for a
 *   malformed setting; `STORAGE` when the S3 SDK cannot be loaded
 * @example
 * const store = await openStore(); // BOOTH_STORAGE, or ./booth-data
 * const s3 = await openStore('s3://booth/prod', { env: { BOOTH_S3_ENDPOINT: 'http://127.0.0.1:9000' } });
 */
export async function openStore(url?: string, options: OpenStoreOptions = {}): Promise<ObjectStore> {
  const target = parseStorageUrl(url, options);
  const logger = options.logger !== undefined ? { logger: options.logger } : {};
  if (target.driver === 'fs') return createFsStore({ root: target.root, ...logger });
  const { driver: _driver, ...s3 } = target;
  return createS3Store({ ...s3, ...logger, ...options.s3 });
}

/**
 * Read a whole object into memory. For objects that fit comfortably (manifests, images);
 * stream large ones with `store.get`.
 *
 * @param store - the store
 * @param key - the object's key
 * @returns its bytes
 * @throws BoothError `NOT_FOUND` when the key does not exist; `STORAGE` when reading fails
 * @example
 * const png = await readAll(store, 'sessions/alice/dataset/1.png');
 */
export async function readAll(store: ObjectStore, key: string): Promise<Buffer> {
  const stream = await store.get(key);
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of stream as AsyncIterable<Buffer | Uint8Array | string>) {
      chunks.push(Buffer.isBuffer(chunk) ? chunk : typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : Buffer.from(chunk));
    }
  } catch (err) {
    throw new BoothError('STORAGE', `reading key "${key}" from ${store.url} failed midway: ${errorMessage(err)}; try again`, { cause: err });
  }
  return Buffer.concat(chunks);
}

/**
 * Read and parse a JSON object. The result is `unknown` on purpose: validate it (zod) before use,
 * or pass `parse` to do so here.
 *
 * @param store - the store
 * @param key - the object's key
 * @param parse - optional validator, e.g. `(v) => Manifest.parse(v)`
 * @returns the parsed (and validated) value
 * @throws BoothError `NOT_FOUND` when the key does not exist; `STORAGE` when the object is not
 *   valid JSON; whatever `parse` throws
 * @example
 * const manifest = await readJson(store, 'sessions/alice/session.json', (v) => Manifest.parse(v));
 */
export async function readJson<T = unknown>(store: ObjectStore, key: string, parse?: (value: unknown) => T): Promise<T> {
  const text = (await readAll(store, key)).toString('utf8');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new BoothError(
      'STORAGE',
      `object "${key}" in ${store.url} is not valid JSON (${errorMessage(err)}); it was not written by Booth or is damaged`,
      { cause: err },
    );
  }
  return parse ? parse(value) : (value as T);
}

/**
 * Write a value as pretty-printed JSON (2-space indent, final newline) with content type
 * `application/json`, atomically like every put.
 *
 * @param store - the store
 * @param key - the object's key
 * @param value - anything `JSON.stringify` accepts
 * @param options - `signal` to abort
 * @returns the stored object's info
 * @throws BoothError `INVALID_ARGUMENT` when `value` has no JSON form (undefined, a function,
 *   a cycle); `INVALID_KEY`, `STORAGE` as `put`
 * @example
 * await putJson(store, 'sessions/alice/session.json', manifest);
 */
export async function putJson(store: ObjectStore, key: string, value: unknown, options: Pick<PutOptions, 'signal'> = {}): Promise<ObjectInfo> {
  let text: string | undefined;
  try {
    text = JSON.stringify(value, null, 2);
  } catch (err) {
    throw new BoothError('INVALID_ARGUMENT', `putJson of key "${key}": the value cannot be written as JSON: ${errorMessage(err)}`, { cause: err });
  }
  if (text === undefined) {
    throw new BoothError('INVALID_ARGUMENT', `putJson of key "${key}": the value (${typeof value}) has no JSON form`);
  }
  return store.put(key, `${text}\n`, { ...options, contentType: 'application/json' });
}

/**
 * Every object under a prefix, page after page, in key order.
 *
 * @param store - the store
 * @param prefix - key prefix, e.g. `sessions/alice/`; `''` for everything
 * @param options - `limit`: page size (default the driver's)
 * @returns an async iterable of object infos
 * @throws BoothError `INVALID_KEY` for a bad prefix; `STORAGE` when a page fails
 * @example
 * for await (const info of listAll(store, 'sessions/')) console.log(info.key);
 */
export async function* listAll(store: ObjectStore, prefix: string, options: Pick<ListOptions, 'limit'> = {}): AsyncGenerator<ObjectInfo> {
  let cursor: string | undefined;
  do {
    const page = await store.list(prefix, { ...options, ...(cursor !== undefined ? { cursor } : {}) });
    yield* page.items;
    cursor = page.cursor;
  } while (cursor !== undefined);
}

/**
 * Whether an object exists.
 *
 * @param store - the store
 * @param key - the object's key
 * @returns true when `head` finds it
 * @throws BoothError `INVALID_KEY`; `STORAGE`
 * @example
 * if (!(await exists(store, marker))) return;
 */
export async function exists(store: ObjectStore, key: string): Promise<boolean> {
  return (await store.head(key)) !== null;
}
