/**
 * The S3 driver against a real S3-compatible server (s3rver in a child process, see
 * `test/helpers/s3rver.ts`): the shared contract, then what only S3 has: multipart uploads of a
 * 100 MiB stream, aborted and failed multipart uploads leaving no parts, the SDK's checksum
 * defaults, and errors that name the bucket and what to check.
 */
import { readFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BoothError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { createS3Store, encodeCopySource, type S3StoreOptions } from '../../src/storage/drivers/s3.js';
import { listAll, openStore, readAll } from '../../src/storage/index.js';
import type { ObjectStore } from '../../src/storage/types.js';
import { startS3rver, type S3rverHandle } from '../helpers/s3rver.js';
import { digestOf, patternStream, testStoreContract } from './contract.js';

const MiB = 1024 * 1024;

let server: S3rverHandle;
let storeCount = 0;

/** Options for a store on the test server, in its own prefix so tests never see each other. */
function storeOptions(extra: Partial<S3StoreOptions> = {}): S3StoreOptions {
  storeCount += 1;
  return {
    bucket: server.bucket,
    prefix: `t${storeCount}`,
    endpoint: server.endpoint,
    credentials: server.credentials,
    logger: silentLogger(),
    ...extra,
  };
}

/** A client factory that records every command the driver sends, and can react to them. */
function recordingClient(onDone?: (command: string) => void): { commands: string[]; createClient: (c: S3ClientConfig) => S3Client } {
  const commands: string[] = [];
  return {
    commands,
    createClient(config) {
      const client = new S3Client(config);
      client.middlewareStack.add(
        (next, context) => async (args) => {
          const result = await next(args);
          commands.push(context.commandName ?? '?');
          onDone?.(context.commandName ?? '?');
          return result;
        },
        { step: 'initialize', name: 'boothTestRecorder' },
      );
      return client;
    },
  };
}

beforeAll(async () => {
  server = await startS3rver();
});
afterAll(async () => {
  await server?.stop();
});

testStoreContract(
  's3 (s3rver)',
  async () => ({ store: await createS3Store(storeOptions()), cleanup: async () => undefined }),
  {
    // Nothing listens on port 1; one attempt, so the control request fails fast.
    broken: async () =>
      createS3Store({
        ...storeOptions({ endpoint: 'http://127.0.0.1:1' }),
        createClient: (config) => new S3Client({ ...config, maxAttempts: 1 }),
      }),
  },
);

describe('s3 driver specifics', () => {
  it(
    'streams a 100 MiB object through a multipart upload and reads it back intact',
    async () => {
      const size = 100 * MiB + 12_345;
      const partSize = 8 * MiB;
      const recorder = recordingClient();
      const store = await createS3Store(storeOptions({ multipartThreshold: partSize, partSize, createClient: recorder.createClient }));
      try {
        const source = patternStream(size, { seed: 42 });
        const info = await store.put('big/model.safetensors', source.stream);
        const parts = Math.ceil(size / partSize);
        expect(info.size).toBe(size);
        // The server's ETag of a multipart object is md5-of-parts-N; a single PUT has no suffix.
        expect(info.etag).toMatch(new RegExp(`^[0-9a-f]{32}-${parts}$`));
        expect(recorder.commands.filter((c) => c === 'UploadPartCommand')).toHaveLength(parts);
        expect(recorder.commands).toContain('CompleteMultipartUploadCommand');
        expect(recorder.commands).not.toContain('PutObjectCommand');
        expect(await digestOf(await store.get('big/model.safetensors'))).toEqual({ sha256: source.sha256(), size });
        expect(await server.pendingUploads()).toBe(0);
      } finally {
        await store.close();
      }
    },
    120_000,
  );

  it('sends a large Buffer in parts and a small stream in one PUT', async () => {
    const recorder = recordingClient();
    const store = await createS3Store(storeOptions({ multipartThreshold: 5 * MiB, createClient: recorder.createClient }));
    try {
      const big = Buffer.alloc(11 * MiB, 7);
      expect((await store.put('buf', big)).etag).toMatch(/-3$/);
      expect((await readAll(store, 'buf')).equals(big)).toBe(true);
      recorder.commands.length = 0;
      expect((await store.put('small', Readable.from([Buffer.from('tiny')]))).etag).not.toMatch(/-/);
      expect(recorder.commands).toEqual(['PutObjectCommand', 'HeadObjectCommand']);
    } finally {
      await store.close();
    }
  });

  it('aborts a multipart upload mid-way: rejects with the reason, discards the parts, keeps the previous object', async () => {
    const controller = new AbortController();
    const reason = new Error('cancelled by the user');
    // Abort as soon as the server has accepted the first part, so that there are parts to discard.
    const recorder = recordingClient((command) => {
      if (command === 'UploadPartCommand') controller.abort(reason);
    });
    const store = await createS3Store(storeOptions({ multipartThreshold: 5 * MiB, queueSize: 1, createClient: recorder.createClient }));
    try {
      await store.put('model', 'previous version');
      const source = patternStream(40 * MiB, { then: 'hang' });
      await expect(store.put('model', source.stream, { signal: controller.signal })).rejects.toBe(reason);
      expect(recorder.commands).toContain('CreateMultipartUploadCommand');
      expect(recorder.commands).toContain('AbortMultipartUploadCommand');
      expect(recorder.commands).not.toContain('CompleteMultipartUploadCommand');
      expect(await server.pendingUploads()).toBe(0);
      expect((await readAll(store, 'model')).toString()).toBe('previous version');
      expect((await store.list('')).items.map((i) => i.key)).toEqual(['model']);
    } finally {
      await store.close();
    }
  });

  it('discards the parts when the source fails after several parts', async () => {
    const recorder = recordingClient();
    const store = await createS3Store(storeOptions({ multipartThreshold: 5 * MiB, createClient: recorder.createClient }));
    try {
      const source = patternStream(17 * MiB, { then: new Error('camera disconnected') });
      await expect(store.put('fresh', source.stream)).rejects.toThrow(/source stream failed: camera disconnected/);
      expect(recorder.commands).toContain('UploadPartCommand');
      expect(recorder.commands).toContain('AbortMultipartUploadCommand');
      expect(await server.pendingUploads()).toBe(0);
      expect(await store.head('fresh')).toBeNull();
    } finally {
      await store.close();
    }
  });

  it('works with the SDK default checksums (WHEN_SUPPORTED) too', async () => {
    const store = await createS3Store(
      storeOptions({ requestChecksumCalculation: 'WHEN_SUPPORTED', responseChecksumValidation: 'WHEN_SUPPORTED', multipartThreshold: 5 * MiB }),
    );
    try {
      await store.put('c/buffer', Buffer.from('checksummed'));
      const source = patternStream(12 * MiB, { seed: 3 });
      await store.put('c/stream', source.stream);
      expect((await readAll(store, 'c/buffer')).toString()).toBe('checksummed');
      expect(await digestOf(await store.get('c/stream'))).toEqual({ sha256: source.sha256(), size: 12 * MiB });
      expect((await digestOf(await store.get('c/buffer', { range: { start: 0, end: 2 } }))).size).toBe(3);
      expect((await store.copy('c/buffer', 'c/copy')).size).toBe(11);
    } finally {
      await store.close();
    }
  });

  it('keeps each store inside its prefix', async () => {
    const a = await createS3Store(storeOptions({ prefix: 'shared/a/' }));
    const b = await createS3Store(storeOptions({ prefix: '/shared/b' }));
    const whole = await createS3Store(storeOptions({ prefix: '' }));
    try {
      expect(a.url).toBe(`s3://${server.bucket}/shared/a/`);
      await a.put('k', 'from a');
      await b.put('k', 'from b');
      expect((await a.list('')).items.map((i) => i.key)).toEqual(['k']);
      expect((await readAll(b, 'k')).toString()).toBe('from b');
      const keys: string[] = [];
      for await (const info of listAll(whole, 'shared/')) keys.push(info.key);
      expect(keys).toEqual(['shared/a/k', 'shared/b/k']);
    } finally {
      await Promise.all([a.close(), b.close(), whole.close()]);
    }
  });

  it('rejects a key that is too long once the prefix is added', async () => {
    const store = await createS3Store(storeOptions({ prefix: 'p'.repeat(100) }));
    try {
      const key = ['a', 'b', 'c', 'd'].map((c) => c.repeat(240)).join('/');
      await expect(store.put(key, 'x')).rejects.toMatchObject({ code: 'INVALID_KEY', message: expect.stringMatching(/over S3's limit/) });
    } finally {
      await store.close();
    }
  });

  it('names the bucket and the credentials when the server refuses them', async () => {
    const store = await createS3Store(storeOptions({ credentials: { accessKeyId: 'WRONG', secretAccessKey: 'nope' } }));
    try {
      const err = (await store.put('x', 'x').catch((e: unknown) => e)) as BoothError;
      expect(err).toBeInstanceOf(BoothError);
      expect(err.code).toBe('STORAGE');
      expect(err.message).toMatch(new RegExp(`s3://${server.bucket}/t\\d+/x`));
      expect(err.message).toMatch(/check the credentials/);
      expect(err.cause).toBeDefined();
    } finally {
      await store.close();
    }
  });

  it('says when the bucket does not exist', async () => {
    const store = await createS3Store(storeOptions({ bucket: 'no-such-bucket' }));
    try {
      await expect(store.list('')).rejects.toThrow(/bucket "no-such-bucket" does not exist/);
      await expect(store.put('x', 'x')).rejects.toThrow(/bucket "no-such-bucket" does not exist/);
    } finally {
      await store.close();
    }
  });

  it('says when the endpoint cannot be reached', async () => {
    const store = await createS3Store({
      ...storeOptions({ endpoint: 'http://127.0.0.1:1' }),
      createClient: (config) => new S3Client({ ...config, maxAttempts: 1 }),
    });
    try {
      await expect(store.head('x')).rejects.toThrow(/cannot reach http:\/\/127\.0\.0\.1:1/);
    } finally {
      await store.close();
    }
  });

  it('refuses bad options by name', async () => {
    await expect(createS3Store({ bucket: '' })).rejects.toThrow(/option "bucket"/);
    await expect(createS3Store({ bucket: 'bucket', partSize: 1024 })).rejects.toThrow(/option "partSize"/);
    await expect(createS3Store({ bucket: 'bucket', queueSize: 0 })).rejects.toThrow(/option "queueSize"/);
    await expect(createS3Store({ bucket: 'bucket', endpoint: 'localhost:9000' })).rejects.toThrow(/option "endpoint"/);
    await expect(createS3Store({ bucket: 'bucket', prefix: 'a/../b' })).rejects.toThrow(/option "prefix"/);
    await expect(createS3Store({ bucket: 'bucket', requestChecksumCalculation: 'ALWAYS' as 'WHEN_REQUIRED' })).rejects.toThrow(
      /requestChecksumCalculation/,
    );
  });

  it('sends a conditional put, stream or not, as one PutObject with the S3 condition headers', async () => {
    const headers: Array<Record<string, string>> = [];
    const recorder = recordingClient();
    const store = await createS3Store(
      storeOptions({
        multipartThreshold: 5 * MiB,
        createClient(config) {
          const client = recorder.createClient(config);
          client.middlewareStack.add(
            (next) => async (args) => {
              const request = args.request as { headers?: Record<string, string> };
              if (request.headers) headers.push({ ...request.headers });
              return next(args);
            },
            { step: 'finalizeRequest', name: 'boothTestHeaders' },
          );
          return client;
        },
      }),
    );
    try {
      const first = await store.put('m.json', Readable.from(['{"v":1}']), { ifNoneMatch: '*' });
      await store.put('m.json', Readable.from([Buffer.from('{"v":2}')]), { ifMatch: first.etag });
      expect(recorder.commands.filter((c) => c !== 'HeadObjectCommand')).toEqual(['PutObjectCommand', 'PutObjectCommand']);
      const puts = headers.filter((h) => h['if-none-match'] !== undefined || h['if-match'] !== undefined);
      expect(puts.map((h) => [h['if-none-match'], h['if-match']])).toEqual([
        ['*', undefined],
        [undefined, `"${first.etag}"`],
      ]);
      expect((await readAll(store, 'm.json')).toString()).toBe('{"v":2}');
    } finally {
      await store.close();
    }
  });

  it('refuses a conditional body over the single-request limit, writing nothing', async () => {
    const store = await createS3Store(storeOptions({ multipartThreshold: 5 * MiB }));
    try {
      await expect(store.put('big', Buffer.alloc(5 * MiB + 1), { ifNoneMatch: '*' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/5242880 bytes/) });
      const source = patternStream(6 * MiB, { then: 'hang' });
      await expect(store.put('big', source.stream, { ifNoneMatch: '*' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      expect(source.stream.destroyed).toBe(true);
      expect(await store.head('big')).toBeNull();
    } finally {
      await store.close();
    }
  });

  it('maps 409 ConditionalRequestConflict and 404 under If-Match to PRECONDITION_FAILED', async () => {
    let answer: { name: string; status: number } | null = null;
    const store = await createS3Store(
      storeOptions({
        createClient(config) {
          const client = new S3Client(config);
          // S3's answers to a conditional write that loses a race, or whose object was deleted.
          client.middlewareStack.add(
            (next, context) => async (args) => {
              if (context.commandName === 'PutObjectCommand' && answer) {
                throw Object.assign(new Error(answer.name), { name: answer.name, $metadata: { httpStatusCode: answer.status } });
              }
              return next(args);
            },
            { step: 'initialize', name: 'boothTestConflict' },
          );
          return client;
        },
      }),
    );
    try {
      const info = await store.put('m.json', 'v1');
      answer = { name: 'ConditionalRequestConflict', status: 409 };
      await expect(store.put('m.json', 'v2', { ifMatch: info.etag })).rejects.toMatchObject({ code: 'PRECONDITION_FAILED', message: expect.stringContaining('"m.json"') });
      answer = { name: 'NoSuchKey', status: 404 };
      await expect(store.put('m.json', 'v2', { ifMatch: info.etag })).rejects.toMatchObject({ code: 'PRECONDITION_FAILED', message: expect.stringMatching(/no longer exists/) });
      answer = { name: 'InternalError', status: 500 };
      await expect(store.put('m.json', 'v2', { ifMatch: info.etag })).rejects.toMatchObject({ code: 'STORAGE' });
      answer = null;
      expect((await readAll(store, 'm.json')).toString()).toBe('v1');
    } finally {
      await store.close();
    }
  });

  it('refuses to work after close', async () => {
    const store = await createS3Store(storeOptions());
    await store.close();
    await expect(store.head('x')).rejects.toThrow(/closed/);
  });

  it('is opened by openStore from an s3:// URL and the BOOTH_S3_* environment', async () => {
    const env = { BOOTH_S3_ENDPOINT: server.endpoint, AWS_REGION: 'us-east-1' };
    const store: ObjectStore = await openStore(`s3://${server.bucket}/opened/here`, {
      env,
      s3: { credentials: server.credentials, logger: silentLogger() },
    });
    try {
      expect(store.url).toBe(`s3://${server.bucket}/opened/here/`);
      await store.put('x', 'via openStore');
      expect((await readAll(store, 'x')).toString()).toBe('via openStore');
    } finally {
      await store.close();
    }
  });

  it('encodes the copy source so that S3 decodes it to the exact key', () => {
    expect(encodeCopySource('b', 'a b/c+d%e?f#g/é.txt')).toBe('b/a%20b/c%2Bd%25e%3Ff%23g/%C3%A9.txt');
  });

  it('loads the AWS SDK only when an S3 store is created', async () => {
    // Folder-only users must never pay for the SDK: only type imports at module level.
    for (const file of ['../../src/storage/drivers/s3.ts', '../../src/storage/index.ts', '../../src/storage/drivers/fs.ts']) {
      const source = await readFile(new URL(file, import.meta.url), 'utf8');
      expect(source, file).not.toMatch(/^import (?!type\b)[^;]*['"]@aws-sdk\//m);
    }
  });
});
