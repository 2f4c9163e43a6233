/**
 * The ONE contract suite every object-store driver must pass (as unstorage's `testDriver`): each
 * guarantee of `src/storage/types.ts` is a test here, and `fs.test.ts` and `s3.test.ts` run it
 * against their driver. It also exports the deterministic data streams the driver suites use.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BoothError } from '../../src/errors.js';
import { compareKeys } from '../../src/storage/keys.js';
import { readAll } from '../../src/storage/index.js';
import type { ObjectInfo, ObjectStore } from '../../src/storage/types.js';

/** A store under test and how to dispose of it. */
export interface StoreUnderTest {
  store: ObjectStore;
  cleanup(): Promise<void>;
}

/** Extra inputs of {@link testStoreContract}. */
export interface ContractOptions {
  /**
   * A store of the same driver on which every I/O fails (an unreachable endpoint, a root inside
   * a regular file). Key validation must reject bad keys there with `INVALID_KEY`, which proves
   * it runs before any I/O.
   */
  broken: () => Promise<ObjectStore>;
}

const MiB = 1024 * 1024;

/** Keys that break each key rule, with the rule's words expected in the message. */
export const INVALID_KEYS: Array<[rule: string, key: string, message: RegExp]> = [
  ['empty', '', /empty/],
  ['dot-dot segment', 'a/../b', /"\.\." segment/],
  ['dot-dot alone', '..', /"\.\." segment/],
  ['dot segment', 'a/./b', /"\." segment/],
  ['empty segment', 'a//b', /empty segment/],
  ['trailing slash', 'a/', /empty segment/],
  ['leading slash', '/a', /starts with "\/"/],
  ['backslash', 'a\\b', /backslash/],
  ['NUL', 'a\u0000b', /NUL/],
  ['C0 control', 'a\u0001b', /control character U\+0001/],
  ['newline', 'a\nb', /control character U\+000A/],
  ['DEL', 'a\u007fb', /control character U\+007F/],
  ['C1 control', 'a\u0085b', /control character U\+0085/],
  ['bidi override', 'a\u202eb', /bidirectional-override character U\+202E/],
  ['bidi isolate', 'a\u2066b', /bidirectional-override character U\+2066/],
  ['lone surrogate', 'a\ud800b', /lone surrogate/],
  ['too long', 'é'.repeat(513), /1026 UTF-8 bytes/],
  ['segment too long', `a/${'x'.repeat(256)}`, /segment of 256 UTF-8 bytes/],
  ['reserved temp prefix', 'a/.booth-tmp-123', /reserved/],
];

/** Deterministic pseudo-random bytes (xorshift32), the same for the same seed and offset. */
export function patternBytes(size: number, seed = 1, offset = 0): Buffer {
  const words = new Uint32Array(Math.ceil(size / 4));
  // Seed each chunk from its offset so that chunked generation equals one-shot generation.
  let x = (seed * 0x9e3779b1 + (offset / 4) * 0x85ebca6b + 1) >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  return Buffer.from(words.buffer, 0, size);
}

/** What a {@link patternStream} does after its last byte. */
export type StreamEnding = 'end' | 'hang' | Error;

/** A deterministic stream and what the test needs to know about it. */
export interface PatternStream {
  stream: Readable;
  /** SHA-256 of every byte produced so far (all of them once the stream has ended). */
  sha256(): string;
  /** Resolves when the consumer has taken every byte and asked for more (for `hang` and errors). */
  drained: Promise<void>;
}

/**
 * A stream of `size` deterministic bytes in `chunkSize` chunks that then ends, hangs (never ends
 * until destroyed, like a stalled upload) or fails with the given error. It produces a chunk only
 * when asked, so a 100 MiB stream never sits in memory.
 */
export function patternStream(size: number, options: { seed?: number; chunkSize?: number; then?: StreamEnding } = {}): PatternStream {
  const { seed = 1, chunkSize = MiB, then = 'end' } = options;
  const hash = createHash('sha256');
  let produced = 0;
  let onDrained: () => void = () => undefined;
  const drained = new Promise<void>((resolve) => (onDrained = resolve));
  const stream = new Readable({
    read() {
      if (produced < size) {
        const n = Math.min(chunkSize, size - produced);
        const chunk = patternBytes(n, seed, produced);
        produced += n;
        hash.update(chunk);
        this.push(chunk);
        return;
      }
      onDrained();
      if (then === 'end') this.push(null);
      else if (then instanceof Error) this.destroy(then);
      // 'hang': push nothing; the reader waits until someone destroys the stream.
    },
  });
  return { stream, sha256: () => hash.copy().digest('hex'), drained };
}

/** SHA-256 and length of a stream's content, read without holding it in memory. */
export async function digestOf(stream: Readable): Promise<{ sha256: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of stream) {
    const buf = chunk as Buffer;
    hash.update(buf);
    size += buf.length;
  }
  return { sha256: hash.digest('hex'), size };
}

async function text(store: ObjectStore, key: string): Promise<string> {
  return (await readAll(store, key)).toString('utf8');
}

async function keysOf(store: ObjectStore, prefix = ''): Promise<string[]> {
  const keys: string[] = [];
  let cursor: string | undefined;
  do {
    const page = await store.list(prefix, cursor === undefined ? {} : { cursor });
    keys.push(...page.items.map((i) => i.key));
    cursor = page.cursor;
  } while (cursor !== undefined);
  return keys;
}

async function expectBoothError(promise: Promise<unknown>, code: string, message?: RegExp): Promise<BoothError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected a BoothError ${code}`).toBeInstanceOf(BoothError);
  const boothError = err as BoothError;
  expect(boothError.code, boothError.message).toBe(code);
  if (message) expect(boothError.message).toMatch(message);
  return boothError;
}

/**
 * Run the storage contract against one driver.
 *
 * @param name - the driver's name, shown in the test titles
 * @param factory - makes a fresh, empty store for each test
 * @param options - see {@link ContractOptions}
 * @example
 * testStoreContract('fs', async () => ({ store: createFsStore({ root }), cleanup }), { broken });
 */
export function testStoreContract(name: string, factory: () => Promise<StoreUnderTest>, options: ContractOptions): void {
  describe(`ObjectStore contract: ${name}`, () => {
    let store: ObjectStore;
    let cleanup: () => Promise<void>;

    beforeEach(async () => {
      ({ store, cleanup } = await factory());
    });
    afterEach(async () => {
      await store.close();
      await cleanup();
    });

    describe('put and get', () => {
      it('stores a Buffer and reports its info', async () => {
        const body = Buffer.from('hello, booth');
        const info = await store.put('a/b/hello.txt', body);
        expect(info).toMatchObject({ key: 'a/b/hello.txt', size: body.length });
        expect(info.etag).toMatch(/\S/);
        expect(info.mtime).toBeInstanceOf(Date);
        expect(await readAll(store, 'a/b/hello.txt')).toEqual(body);
      });

      it('stores a string as UTF-8', async () => {
        await store.put('s.txt', 'grüße 😀');
        expect(await readAll(store, 's.txt')).toEqual(Buffer.from('grüße 😀', 'utf8'));
      });

      it('stores a Uint8Array view with an offset exactly', async () => {
        const backing = new Uint8Array([9, 9, 1, 2, 3, 9]);
        await store.put('u8', backing.subarray(2, 5));
        expect([...(await readAll(store, 'u8'))]).toEqual([1, 2, 3]);
      });

      it('stores a stream of Buffers and strings', async () => {
        await store.put('stream.txt', Readable.from([Buffer.from('one '), 'two ', Buffer.from('three')]));
        expect(await text(store, 'stream.txt')).toBe('one two three');
      });

      it('stores an empty object', async () => {
        const info = await store.put('empty', '');
        expect(info.size).toBe(0);
        expect((await store.head('empty'))?.size).toBe(0);
        expect(await readAll(store, 'empty')).toEqual(Buffer.alloc(0));
      });

      it('accepts keys with spaces, dots, Unicode and URL-special characters', async () => {
        const keys = ['a b/c d.txt', '.hidden', '..foo/a..b/...', 'é/ü/😀.png', 'q/a+b%25c?d#e&f=g;h,i:j@k$l!m'];
        for (const key of keys) await store.put(key, key);
        for (const key of keys) expect(await text(store, key)).toBe(key);
        expect(await keysOf(store)).toEqual([...keys].sort(compareKeys));
      });

      it('replaces an existing object', async () => {
        const first = await store.put('k', 'first version');
        const second = await store.put('k', 'v2');
        expect(await text(store, 'k')).toBe('v2');
        expect(second.size).toBe(2);
        expect(second.etag).not.toBe(first.etag);
      });

      it('returns the same info from put as from head', async () => {
        const info = await store.put('same', 'abc');
        const head = await store.head('same');
        expect(head).toEqual(info);
      });

      it('streams a 5 MiB object in and out intact', async () => {
        const source = patternStream(5 * MiB + 123, { chunkSize: 64 * 1024 });
        const info = await store.put('big/five.bin', source.stream);
        expect(info.size).toBe(5 * MiB + 123);
        expect(await digestOf(await store.get('big/five.bin'))).toEqual({ sha256: source.sha256(), size: 5 * MiB + 123 });
      });

      it('keeps a read in progress on the version it started with', async () => {
        const v1 = patternBytes(256 * 1024, 1);
        await store.put('pinned', v1);
        const reading = await store.get('pinned');
        await store.put('pinned', patternBytes(256 * 1024, 2));
        expect((await readAllFrom(reading)).equals(v1)).toBe(true);
      });
    });

    describe('get with a byte range', () => {
      beforeEach(async () => {
        await store.put('r', '0123456789');
      });
      it.each([
        [{ start: 0, end: 0 }, '0'],
        [{ start: 2, end: 5 }, '2345'],
        [{ start: 3 }, '3456789'],
        [{ start: 9 }, '9'],
        [{ start: 7, end: 100 }, '789'],
        [{ start: 10 }, ''],
        [{ start: 50, end: 60 }, ''],
      ])('reads %j', async (range, expected) => {
        expect((await readAllFrom(await store.get('r', { range }))).toString()).toBe(expected);
      });
      it.each([[{ start: -1 }], [{ start: 5, end: 4 }], [{ start: 1.5 }], [{ start: 0, end: Number.NaN }]])(
        'rejects %j before reading',
        async (range) => {
          await expectBoothError(store.get('r', { range }), 'INVALID_ARGUMENT', /range/);
        },
      );
    });

    describe('head', () => {
      it('returns null for a missing key', async () => {
        expect(await store.head('nope/never')).toBeNull();
      });

      it('reports size, an etag and a plausible mtime', async () => {
        const before = Date.now();
        await store.put('h/x', 'twelve bytes');
        const after = Date.now();
        const info = await store.head('h/x');
        expect(info).toMatchObject({ key: 'h/x', size: 12 });
        // Second-resolution servers truncate; neither side sleeps, so this checks sanity, not timing.
        expect(info?.mtime.getTime()).toBeGreaterThanOrEqual(Math.floor(before / 1000) * 1000 - 1000);
        expect(info?.mtime.getTime()).toBeLessThanOrEqual(after + 1000);
      });

      it('gives a new etag whenever the content changes, even at the same size and at once', async () => {
        const etags: string[] = [];
        for (const body of ['aaaa', 'bbbb', 'aaaa', 'cccc', 'bbbb']) {
          await store.put('e', body);
          etags.push((await store.head('e'))?.etag ?? '');
        }
        for (let i = 1; i < etags.length; i++) expect(etags[i], `version ${i}`).not.toBe(etags[i - 1]);
        await store.delete('e');
        await store.put('e', 'dddd');
        expect((await store.head('e'))?.etag).not.toBe(etags.at(-1));
      });

      it('does not report a "folder" of other objects as an object', async () => {
        await store.put('dir/child', 'x');
        expect(await store.head('dir')).toBeNull();
        await expectBoothError(store.get('dir'), 'NOT_FOUND');
      });
    });

    describe('list', () => {
      // Byte order traps: "a-c" < "a.txt" < "a/…" < "a0"; "Ａ" (U+FF21) < "😀" in UTF-8 but not in UTF-16.
      const keys = ['a/c/d', 'b', '😀.png', 'a0', 'a/b', 'A', 'a-c', 'Ａ', 'é', 'a.txt'];
      const sorted = [...keys].sort(compareKeys);

      beforeEach(async () => {
        for (const key of keys) await store.put(key, key);
      });

      it('returns every key in UTF-8 byte order with its info', async () => {
        const page = await store.list('');
        expect(page.items.map((i) => i.key)).toEqual(sorted);
        expect(page.cursor).toBeUndefined();
        const b = page.items.find((i) => i.key === 'b') as ObjectInfo;
        expect(b).toEqual(await store.head('b'));
      });

      it('paginates with a small limit without losing or repeating keys', async () => {
        const seen: string[] = [];
        let cursor: string | undefined;
        let pages = 0;
        do {
          const page = await store.list('', { limit: 3, ...(cursor === undefined ? {} : { cursor }) });
          expect(page.items.length).toBeLessThanOrEqual(3);
          seen.push(...page.items.map((i) => i.key));
          cursor = page.cursor;
          if (cursor !== undefined) expect(typeof cursor).toBe('string');
          pages++;
        } while (cursor !== undefined && pages < 20);
        expect(seen).toEqual(sorted);
        expect(pages).toBeGreaterThanOrEqual(4);
      });

      it.each([
        ['a/', ['a/b', 'a/c/d']],
        ['a', ['a-c', 'a.txt', 'a/b', 'a/c/d', 'a0']],
        ['a/c', ['a/c/d']],
        ['a/c/d', ['a/c/d']],
        ['zzz', []],
        ['a/zz/', []],
      ])('filters by prefix %j', async (prefix, expected) => {
        expect(await keysOf(store, prefix)).toEqual(expected);
      });

      it('paginates inside a prefix', async () => {
        const first = await store.list('a', { limit: 2 });
        expect(first.items.map((i) => i.key)).toEqual(['a-c', 'a.txt']);
        const second = await store.list('a', { limit: 2, cursor: first.cursor as string });
        expect(second.items.map((i) => i.key)).toEqual(['a/b', 'a/c/d']);
        const third = await store.list('a', { limit: 2, cursor: second.cursor as string });
        expect(third.items.map((i) => i.key)).toEqual(['a0']);
        expect(third.cursor).toBeUndefined();
      });

      it('rejects a bad limit and a bad prefix', async () => {
        await expectBoothError(store.list('', { limit: 0 }), 'INVALID_ARGUMENT', /limit/);
        await expectBoothError(store.list('', { limit: 1.5 }), 'INVALID_ARGUMENT', /limit/);
        await expectBoothError(store.list('/a'), 'INVALID_KEY');
        await expectBoothError(store.list('a/../'), 'INVALID_KEY');
      });

      it('never shows an object whose put is still in flight, nor its temporary data', async () => {
        const source = patternStream(300 * 1024, { chunkSize: 64 * 1024, then: 'hang' });
        const controller = new AbortController();
        const put = store.put('a/inflight', source.stream, { signal: controller.signal });
        await source.drained;
        expect(await keysOf(store)).toEqual(sorted);
        expect(await store.head('a/inflight')).toBeNull();
        controller.abort();
        await expect(put).rejects.toBeDefined();
        expect(await keysOf(store)).toEqual(sorted);
      });
    });

    describe('delete', () => {
      it('removes an object and is idempotent', async () => {
        await store.put('d/x', 'x');
        await store.put('d/y', 'y');
        await store.delete('d/x');
        expect(await store.head('d/x')).toBeNull();
        await store.delete('d/x');
        await store.delete('never/existed');
        expect(await keysOf(store)).toEqual(['d/y']);
      });

      it('leaves the objects under a "folder" of the same name alone', async () => {
        await store.put('f/inner', 'x');
        await store.delete('f');
        expect(await keysOf(store)).toEqual(['f/inner']);
      });

      it('races safely with a put into the same folder', async () => {
        for (let i = 0; i < 20; i++) {
          await store.put(`race/${i}/old`, 'x');
          await Promise.all([store.delete(`race/${i}/old`), store.put(`race/${i}/new`, 'y')]);
          expect(await text(store, `race/${i}/new`)).toBe('y');
        }
      });
    });

    describe('copy', () => {
      it('copies content into an independent object', async () => {
        await store.put('c/src', 'original');
        const info = await store.copy('c/src', 'c/dst/copy');
        expect(info).toMatchObject({ key: 'c/dst/copy', size: 8 });
        await store.put('c/src', 'changed');
        expect(await text(store, 'c/dst/copy')).toBe('original');
      });

      it('replaces the target', async () => {
        await store.put('c/a', 'aaa');
        await store.put('c/b', 'bbbbbb');
        await store.copy('c/a', 'c/b');
        expect(await text(store, 'c/b')).toBe('aaa');
      });

      it('copies keys with characters that need escaping', async () => {
        const from = 'q/a b+c%d?e#f é&g=h.txt';
        await store.put(from, 'special');
        await store.copy(from, 'q/copy of it');
        expect(await text(store, 'q/copy of it')).toBe('special');
      });

      it('treats a copy onto itself as a no-op', async () => {
        const info = await store.put('c/self', 'me');
        expect(await store.copy('c/self', 'c/self')).toMatchObject({ key: 'c/self', size: 2, etag: info.etag });
        expect(await text(store, 'c/self')).toBe('me');
      });

      it('fails with NOT_FOUND naming a missing source', async () => {
        await expectBoothError(store.copy('c/missing', 'c/x'), 'NOT_FOUND', /c\/missing/);
        await expectBoothError(store.copy('c/missing', 'c/missing'), 'NOT_FOUND');
        expect(await store.head('c/x')).toBeNull();
      });
    });

    describe('errors', () => {
      it('fails get of a missing key with NOT_FOUND naming the key', async () => {
        await expectBoothError(store.get('no/such/key'), 'NOT_FOUND', /no\/such\/key/);
      });

      it('rejects a body of the wrong type', async () => {
        await expectBoothError(store.put('x', 42 as unknown as string), 'INVALID_ARGUMENT', /body/);
      });

      it.each(INVALID_KEYS)('rejects a key with %s in every operation', async (_rule, key, message) => {
        await expectBoothError(store.put(key, 'x'), 'INVALID_KEY', message);
        await expectBoothError(store.get(key), 'INVALID_KEY', message);
        await expectBoothError(store.head(key), 'INVALID_KEY', message);
        await expectBoothError(store.delete(key), 'INVALID_KEY', message);
        await expectBoothError(store.copy(key, 'ok'), 'INVALID_KEY', message);
        await expectBoothError(store.copy('ok', key), 'INVALID_KEY', message);
        expect(await keysOf(store)).toEqual([]);
      });

      it('shows the offending key JSON-escaped in the message', async () => {
        const err = await expectBoothError(store.put('bad\u0007key\u202e', 'x'), 'INVALID_KEY');
        expect(err.message).toContain('"bad\\u0007key\\u202e"');
      });

      it('validates keys before any I/O', async () => {
        const broken = await options.broken();
        try {
          // The control: with a valid key, this store does fail on I/O.
          await expectBoothError(broken.put('valid/key', 'x'), 'STORAGE');
          for (const [, key] of INVALID_KEYS) {
            await expectBoothError(broken.put(key, 'x'), 'INVALID_KEY');
            await expectBoothError(broken.get(key), 'INVALID_KEY');
            await expectBoothError(broken.head(key), 'INVALID_KEY');
            await expectBoothError(broken.delete(key), 'INVALID_KEY');
            await expectBoothError(broken.copy('valid', key), 'INVALID_KEY');
          }
          await expectBoothError(broken.list('/abs'), 'INVALID_KEY');
          await expectBoothError(broken.get('valid', { range: { start: -1 } }), 'INVALID_ARGUMENT');
        } finally {
          await broken.close();
        }
      });

      it('destroys a stream body it rejects', async () => {
        const body = Readable.from(['x']);
        await expectBoothError(store.put('a//b', body), 'INVALID_KEY');
        expect(body.destroyed).toBe(true);
      });
    });

    describe('failed and aborted puts', () => {
      it('keeps the previous object when the source stream fails', async () => {
        await store.put('p/obj', 'previous');
        const source = patternStream(200 * 1024, { chunkSize: 64 * 1024, then: new Error('disk unplugged') });
        const err = await expectBoothError(store.put('p/obj', source.stream), 'STORAGE', /disk unplugged/);
        expect(err.message).toMatch(/p\/obj/);
        expect(err.cause).toBeInstanceOf(Error);
        expect(await text(store, 'p/obj')).toBe('previous');
        expect(await keysOf(store)).toEqual(['p/obj']);
      });

      it('creates nothing when the source of a new key fails', async () => {
        const source = patternStream(10, { then: new Error('boom') });
        await expectBoothError(store.put('p/new', source.stream), 'STORAGE', /boom/);
        expect(await store.head('p/new')).toBeNull();
        expect(await keysOf(store)).toEqual([]);
      });

      it('rejects with the abort reason and keeps the previous object when aborted mid-stream', async () => {
        await store.put('p/obj', 'previous');
        const source = patternStream(256 * 1024, { chunkSize: 32 * 1024, then: 'hang' });
        const controller = new AbortController();
        const reason = new Error('user cancelled');
        const put = store.put('p/obj', source.stream, { signal: controller.signal });
        await source.drained;
        controller.abort(reason);
        await expect(put).rejects.toBe(reason);
        expect(source.stream.destroyed).toBe(true);
        expect(await text(store, 'p/obj')).toBe('previous');
        expect(await keysOf(store)).toEqual(['p/obj']);
      });

      it('writes nothing for an already aborted signal', async () => {
        const controller = new AbortController();
        controller.abort();
        await expect(store.put('p/never', Buffer.from('x'), { signal: controller.signal })).rejects.toMatchObject({ name: 'AbortError' });
        await expect(store.put('p/never', 'x', { signal: controller.signal })).rejects.toBe(controller.signal.reason);
        expect(await store.head('p/never')).toBeNull();
      });

      it('completes a put whose signal is never aborted', async () => {
        const controller = new AbortController();
        await store.put('p/fine', Readable.from(['ok']), { signal: controller.signal });
        expect(await text(store, 'p/fine')).toBe('ok');
      });
    });

    describe('conditional writes', () => {
      it('replaces with ifMatch when the etag is current, and reports the new version', async () => {
        const first = await store.put('c/m.json', '{"n":1}');
        const second = await store.put('c/m.json', '{"n":2}', { ifMatch: first.etag });
        expect(await text(store, 'c/m.json')).toBe('{"n":2}');
        expect(second.etag).not.toBe(first.etag);
        expect((await store.head('c/m.json'))?.etag).toBe(second.etag);
        // The etag put returned is good for the next conditional write.
        await store.put('c/m.json', '{"n":3}', { ifMatch: second.etag, contentType: 'application/json' });
        expect(await text(store, 'c/m.json')).toBe('{"n":3}');
      });

      it('refuses ifMatch with a stale etag, naming the key, and leaves the object intact', async () => {
        const first = await store.put('c/m.json', 'one');
        const second = await store.put('c/m.json', 'two');
        const err = await expectBoothError(store.put('c/m.json', 'three', { ifMatch: first.etag }), 'PRECONDITION_FAILED', /"c\/m\.json"/);
        expect(err.message).toMatch(/changed since it was read/);
        expect(await text(store, 'c/m.json')).toBe('two');
        expect((await store.head('c/m.json'))?.etag).toBe(second.etag);
        expect(await keysOf(store)).toEqual(['c/m.json']);
      });

      it('refuses ifMatch on a missing or deleted object and creates nothing', async () => {
        const info = await store.put('c/gone', 'x');
        await store.delete('c/gone');
        await expectBoothError(store.put('c/gone', 'y', { ifMatch: info.etag }), 'PRECONDITION_FAILED', /"c\/gone"/);
        await expectBoothError(store.put('c/never', 'y', { ifMatch: info.etag }), 'PRECONDITION_FAILED');
        expect(await store.head('c/gone')).toBeNull();
        expect(await keysOf(store)).toEqual([]);
      });

      it('creates with ifNoneMatch "*" once, then refuses and keeps the first', async () => {
        const created = await store.put('c/new', 'first', { ifNoneMatch: '*' });
        const err = await expectBoothError(store.put('c/new', 'second', { ifNoneMatch: '*' }), 'PRECONDITION_FAILED', /"c\/new"/);
        expect(err.message).toMatch(/already exists/);
        expect(await text(store, 'c/new')).toBe('first');
        expect((await store.head('c/new'))?.etag).toBe(created.etag);
      });

      it('takes a stream body under a condition', async () => {
        const first = await store.put('c/s', 'a');
        await store.put('c/s', Readable.from(['b', Buffer.from('c')]), { ifMatch: first.etag });
        expect(await text(store, 'c/s')).toBe('bc');
        await expectBoothError(store.put('c/s', Readable.from(['d']), { ifMatch: first.etag }), 'PRECONDITION_FAILED');
        expect(await text(store, 'c/s')).toBe('bc');
      });

      it('rejects malformed conditions before any I/O', async () => {
        const bad: Array<Record<string, unknown>> = [{ ifMatch: '' }, { ifMatch: 42 }, { ifNoneMatch: 'abc' }, { ifMatch: 'e', ifNoneMatch: '*' }];
        for (const options of bad) {
          await expectBoothError(store.put('c/bad', 'x', options as never), 'INVALID_ARGUMENT', /"c\/bad"/);
        }
        expect(await store.head('c/bad')).toBeNull();
      });

      it('lets exactly one of many concurrent ifMatch writers win each round', async () => {
        const writers = 6;
        let info = await store.put('c/race', 'round 0');
        for (let round = 1; round <= 4; round++) {
          const base = info.etag;
          const outcomes = await Promise.allSettled(Array.from({ length: writers }, (_, w) => store.put('c/race', `round ${round} by ${w}`, { ifMatch: base })));
          const won = outcomes.flatMap((o, w) => (o.status === 'fulfilled' ? [{ w, info: o.value }] : []));
          const lost = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
          expect(won, `round ${round}`).toHaveLength(1);
          for (const l of lost) expect((l.reason as BoothError).code).toBe('PRECONDITION_FAILED');
          const winner = won[0] as { w: number; info: ObjectInfo };
          expect(await text(store, 'c/race')).toBe(`round ${round} by ${winner.w}`);
          expect((await store.head('c/race'))?.etag).toBe(winner.info.etag);
          info = winner.info;
        }
      });

      it('lets exactly one of many concurrent ifNoneMatch creators win', async () => {
        const outcomes = await Promise.allSettled(Array.from({ length: 6 }, (_, w) => store.put('c/once', `by ${w}`, { ifNoneMatch: '*' })));
        const won = outcomes.flatMap((o, w) => (o.status === 'fulfilled' ? [w] : []));
        expect(won).toHaveLength(1);
        expect(await text(store, 'c/once')).toBe(`by ${String(won[0])}`);
        for (const o of outcomes) if (o.status === 'rejected') expect((o.reason as BoothError).code).toBe('PRECONDITION_FAILED');
      });

      it('loses no increment when concurrent read-modify-write loops retry on conflict', async () => {
        await store.put('c/counter', '0');
        const workers = 4;
        const each = 8;
        const worker = async (): Promise<void> => {
          for (let i = 0; i < each; i++) {
            for (;;) {
              // Head before get: a write in between only makes the put fail and retry, never succeed on stale data.
              const info = (await store.head('c/counter')) as ObjectInfo;
              const n = Number(await text(store, 'c/counter'));
              try {
                await store.put('c/counter', String(n + 1), { ifMatch: info.etag });
                break;
              } catch (err) {
                if ((err as BoothError).code !== 'PRECONDITION_FAILED') throw err;
              }
            }
          }
        };
        await Promise.all(Array.from({ length: workers }, worker));
        expect(Number(await text(store, 'c/counter'))).toBe(workers * each);
      });
    });

    describe('concurrency', () => {
      it('handles many puts into one folder at once', async () => {
        const keys = Array.from({ length: 25 }, (_, i) => `many/${String(i).padStart(2, '0')}`);
        await Promise.all(keys.map((key) => store.put(key, key)));
        expect(await keysOf(store, 'many/')).toEqual(keys);
      });
    });
  });
}

async function readAllFrom(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
