/**
 * `openStore` and `parseStorageUrl`: the one storage setting and the environment around it, and
 * the JSON/listing helpers every caller uses. (`s3.test.ts` opens a real s3:// store.)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BoothError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { DEFAULT_STORAGE, exists, listAll, openStore, parseStorageUrl, putJson, readAll, readJson } from '../../src/storage/index.js';
import type { ObjectStore } from '../../src/storage/types.js';

const cwd = '/srv/booth';

describe('parseStorageUrl', () => {
  it.each([
    ['file:///var/lib/booth', '/var/lib/booth'],
    ['file:///var/lib/booth%20data', '/var/lib/booth data'],
    ['file://localhost/var/lib/booth', '/var/lib/booth'],
    ['file://./booth-data', '/srv/booth/booth-data'],
    ['file://../shared/data', '/srv/shared/data'],
    ['file://.', '/srv/booth'],
    ['file://./my%20data', '/srv/booth/my data'],
    ['./booth-data', '/srv/booth/booth-data'],
    ['booth-data', '/srv/booth/booth-data'],
    ['/abs/path', '/abs/path'],
    ['../up', '/srv/up'],
  ])('reads %j as the folder %j', (url, root) => {
    expect(parseStorageUrl(url, { cwd, env: {} })).toEqual({ driver: 'fs', root });
  });

  it('defaults to BOOTH_STORAGE, then ./booth-data', () => {
    expect(DEFAULT_STORAGE).toBe('file://./booth-data');
    expect(parseStorageUrl(undefined, { cwd, env: {} })).toEqual({ driver: 'fs', root: '/srv/booth/booth-data' });
    expect(parseStorageUrl('', { cwd, env: { BOOTH_STORAGE: '  ' } })).toEqual({ driver: 'fs', root: '/srv/booth/booth-data' });
    expect(parseStorageUrl(undefined, { cwd, env: { BOOTH_STORAGE: 'file:///data' } })).toEqual({ driver: 'fs', root: '/data' });
    // An explicit argument wins over the environment.
    expect(parseStorageUrl('/explicit', { cwd, env: { BOOTH_STORAGE: 'file:///data' } })).toEqual({ driver: 'fs', root: '/explicit' });
  });

  it('reads s3://bucket/prefix with AWS defaults', () => {
    expect(parseStorageUrl('s3://my-bucket/some/prefix/', { env: {} })).toEqual({
      driver: 's3',
      bucket: 'my-bucket',
      prefix: 'some/prefix',
      region: 'us-east-1',
      forcePathStyle: false,
    });
    expect(parseStorageUrl('S3://my-bucket', { env: {} })).toMatchObject({ bucket: 'my-bucket', prefix: '' });
  });

  it('takes the endpoint from BOOTH_S3_ENDPOINT, then AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL, with path style on', () => {
    const all = { BOOTH_S3_ENDPOINT: 'http://minio:9000', AWS_ENDPOINT_URL_S3: 'http://s3-specific', AWS_ENDPOINT_URL: 'http://generic' };
    expect(parseStorageUrl('s3://b', { env: all })).toMatchObject({ endpoint: 'http://minio:9000', forcePathStyle: true });
    expect(parseStorageUrl('s3://b', { env: { ...all, BOOTH_S3_ENDPOINT: '' } })).toMatchObject({ endpoint: 'http://s3-specific' });
    expect(parseStorageUrl('s3://b', { env: { AWS_ENDPOINT_URL: 'https://r2.example' } })).toMatchObject({
      endpoint: 'https://r2.example',
      forcePathStyle: true,
    });
  });

  it('lets BOOTH_S3_FORCE_PATH_STYLE override the default either way', () => {
    expect(parseStorageUrl('s3://b', { env: { BOOTH_S3_FORCE_PATH_STYLE: '1' } })).toMatchObject({ forcePathStyle: true });
    expect(parseStorageUrl('s3://b', { env: { BOOTH_S3_ENDPOINT: 'http://x:9000', BOOTH_S3_FORCE_PATH_STYLE: '0' } })).toMatchObject({
      forcePathStyle: false,
    });
    expect(() => parseStorageUrl('s3://b', { env: { BOOTH_S3_FORCE_PATH_STYLE: 'maybe' } })).toThrow(/BOOTH_S3_FORCE_PATH_STYLE must be 1 or 0/);
  });

  it('takes the region from AWS_REGION, then AWS_DEFAULT_REGION', () => {
    expect(parseStorageUrl('s3://b', { env: { AWS_REGION: 'eu-west-3', AWS_DEFAULT_REGION: 'us-west-2' } })).toMatchObject({ region: 'eu-west-3' });
    expect(parseStorageUrl('s3://b', { env: { AWS_DEFAULT_REGION: 'us-west-2' } })).toMatchObject({ region: 'us-west-2' });
  });

  it('passes the SDK checksum settings through, validated', () => {
    expect(parseStorageUrl('s3://b', { env: { AWS_REQUEST_CHECKSUM_CALCULATION: 'when_supported' } })).toMatchObject({
      requestChecksumCalculation: 'WHEN_SUPPORTED',
    });
    expect(() => parseStorageUrl('s3://b', { env: { AWS_RESPONSE_CHECKSUM_VALIDATION: 'never' } })).toThrow(/AWS_RESPONSE_CHECKSUM_VALIDATION/);
  });

  it('rejects an unknown scheme with UNSUPPORTED_STORAGE listing the supported forms', () => {
    for (const url of ['gs://bucket/x', 'http://minio:9000/bucket', 'azure://c']) {
      const err = (() => {
        try {
          parseStorageUrl(url, { env: {} });
        } catch (e) {
          return e as BoothError;
        }
        throw new Error(`no error for ${url}`);
      })();
      expect(err).toBeInstanceOf(BoothError);
      expect(err.code).toBe('UNSUPPORTED_STORAGE');
      expect(err.message).toContain(JSON.stringify(url));
      expect(err.message).toMatch(/file:\/\/\/absolute\/path.*file:\/\/\.\/relative\/path.*s3:\/\/bucket\/prefix/);
    }
  });

  it('names BOOTH_STORAGE when the bad setting came from it', () => {
    expect(() => parseStorageUrl(undefined, { env: { BOOTH_STORAGE: 'ftp://x' } })).toThrow(/^BOOTH_STORAGE "ftp:\/\/x"/);
  });

  it('rejects malformed file: and s3: settings and endpoints', () => {
    expect(() => parseStorageUrl('s3://', { env: {} })).toThrow(/names no bucket/);
    expect(() => parseStorageUrl('s3:///prefix', { env: {} })).toThrow(/names no bucket/);
    expect(() => parseStorageUrl('s3://b/p?endpoint=http://x', { env: {} })).toThrow(/BOOTH_S3_ENDPOINT/);
    expect(() => parseStorageUrl('file:relative', { env: {} })).toThrow(/not a file URL/);
    expect(() => parseStorageUrl('file://otherhost/x', { env: {} })).toThrow(/not a usable file URL/);
    expect(() => parseStorageUrl('file://./50%', { env: {} })).toThrow(/%25/);
    expect(() => parseStorageUrl('s3://b', { env: { BOOTH_S3_ENDPOINT: 'minio:9000' } })).toThrow(/BOOTH_S3_ENDPOINT must be an http/);
  });
});

describe('openStore and the helpers', () => {
  let dir: string;
  let store: ObjectStore;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'booth-open-store-'));
    store = await openStore('file://./data', { cwd: dir, env: {}, logger: silentLogger() });
  });
  afterEach(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('opens a folder store relative to cwd', () => {
    expect(store.url).toBe(pathToFileURL(path.join(dir, 'data')).href);
  });

  it('writes pretty JSON with a final newline and reads it back', async () => {
    const info = await putJson(store, 'j/doc.json', { b: [1, 2], a: 'x' });
    const raw = (await readAll(store, 'j/doc.json')).toString();
    expect(raw).toBe('{\n  "b": [\n    1,\n    2\n  ],\n  "a": "x"\n}\n');
    expect(info.size).toBe(Buffer.byteLength(raw));
    expect(await readJson(store, 'j/doc.json')).toEqual({ b: [1, 2], a: 'x' });
    expect(await readJson(store, 'j/doc.json', (v) => (v as { a: string }).a)).toBe('x');
  });

  it('rejects values without a JSON form and objects that are not JSON', async () => {
    await expect(putJson(store, 'j/u', undefined)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    await expect(putJson(store, 'j/c', cyclic)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await store.put('j/bad.json', '{"truncated":');
    await expect(readJson(store, 'j/bad.json')).rejects.toThrow(/"j\/bad\.json".*not valid JSON/);
    await expect(readJson(store, 'j/missing.json')).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('lists every page and checks existence', async () => {
    const keys = Array.from({ length: 7 }, (_, i) => `l/${i}`);
    for (const key of keys) await store.put(key, key);
    await store.put('other', 'x');
    const seen: string[] = [];
    for await (const info of listAll(store, 'l/', { limit: 2 })) seen.push(info.key);
    expect(seen).toEqual(keys);
    expect(await exists(store, 'l/3')).toBe(true);
    expect(await exists(store, 'l/9')).toBe(false);
  });
});
