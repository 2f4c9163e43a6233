/**
 * Hostile inputs (issue 8): a corpus of broken and malicious photos, file names, job specs, REST
 * bodies, HTTP transports and safetensors headers, thrown at the real paths — the fastify app
 * (in-process `inject`, and a real socket for the transport cases), the built CLI, and the
 * safetensors reader — with the outcome of each asserted: a clear 4xx or CLI error naming the
 * file or field, or acceptance with correct handling; never a 5xx or a crash; the server still
 * answering after each input; nothing written outside the store. The long CLI variants of the
 * spec, `--set` and safetensors corpora run in `hostile-inputs.slow.test.ts`.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { BoothError } from '../../src/errors.js';
import { openFileSource } from '../../src/convert/io.js';
import { readHeader } from '../../src/convert/safetensors.js';
import { createFsStore } from '../../src/storage/drivers/fs.js';
import { SessionStore } from '../../src/sessions/store.js';
import { parseJobSpec } from '../../src/training/spec.js';
import { json, cliBuilt } from '../helpers/cli.js';
import { AUTH, multipart, testApp } from '../server/helpers.js';
import { BAD_SETS, HOSTILE_NAMES, Tally, cli, filesUnder, imageCases, judgeCli, markPrepared, photo, rawHttp, safetensorsCases, specCases, validSpec, type ImageCase } from './corpus.js';

const tally = new Tally();
const built = cliBuilt('the hostile-input CLI tests');

let app: FastifyInstance;
let appDir: string;
let closeApp: () => Promise<void>;
let limited: Awaited<ReturnType<typeof testApp>>;
let work: string;
let uploadTmp: string;
const savedTmp = process.env.TMPDIR;
let cases: ImageCase[];
const SESSION = 'hostile';

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'booth-hostile-'));
  ({ app, dir: appDir, close: closeApp } = await testApp({ uploads: { perMinute: 100_000, maxFileBytes: 8 * 2 ** 20, maxFiles: 100 } }));
  limited = await testApp({ uploads: { perMinute: 100_000, maxFileBytes: 64 * 1024, maxFiles: 3 } });
  // A sentinel folder beside the store: nothing may ever appear in it.
  await mkdir(path.join(appDir, 'sentinel'));
  // Upload temp files go here (os.tmpdir() reads TMPDIR on each call), so leftovers are visible.
  uploadTmp = path.join(work, 'tmp');
  await mkdir(uploadTmp);
  process.env.TMPDIR = uploadTmp;
  cases = await imageCases();
  const r = await app.inject({ method: 'POST', url: '/api/sessions', headers: AUTH, payload: { name: SESSION, trigger: 'ohwx', classNoun: 'man' } });
  expect(r.statusCode).toBe(201);
  expect((await limited.app.inject({ method: 'POST', url: '/api/sessions', headers: AUTH, payload: { name: SESSION, trigger: 'ohwx', classNoun: 'man' } })).statusCode).toBe(201);
});

afterAll(async () => {
  if (savedTmp === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = savedTmp;
  await closeApp?.();
  await limited?.close();
  if (work) await rm(work, { recursive: true, force: true });
  const s = tally.summary();
  console.log(`[reliability] hostile inputs: tried ${s.tried}, rejected ${s.rejected} (4xx/CLI error), accepted-as-valid ${s.accepted}, crashed ${s.crashed}`);
  expect(s.crashed).toBe(0);
  expect(s.tried).toBeGreaterThanOrEqual(40);
});

/** The server still answers: /health and a normal API request. */
async function stillServing(a: FastifyInstance = app): Promise<void> {
  expect((await a.inject({ url: '/health' })).statusCode).toBe(200);
  expect((await a.inject({ url: `/api/sessions/${SESSION}`, headers: AUTH })).statusCode).toBe(200);
}

interface UploadResult {
  name: string;
  sha256: string | null;
  outcome: string;
  reason: string | null;
  warnings: string[];
}

describe('photos over HTTP', () => {
  it('handles every hostile image in one upload: clear per-file rejections, correct handling of the valid ones', async () => {
    const body = multipart(cases.map((c) => ({ name: c.name, data: c.bytes })));
    const r = await app.inject({ method: 'POST', url: `/api/sessions/${SESSION}/photos`, headers: { ...AUTH, ...body.headers }, payload: body.payload });
    expect(r.statusCode, r.body).toBe(201);
    const results = r.json<{ results: UploadResult[] }>().results;
    expect(results).toHaveLength(cases.length);
    const problems: string[] = [];
    for (const [i, c] of cases.entries()) {
      const got = results[i]!;
      const verdict = tally.judge(`image ${c.id}`, 'POST /photos', c.expect.outcome, got.outcome === 'added' ? 'accepted' : got.outcome === 'rejected' ? 'rejected' : 'other');
      if (verdict) problems.push(`${verdict}: ${got.reason ?? ''}`);
      if (c.expect.outcome === 'rejected') {
        if (!c.expect.reason.test(got.reason ?? '')) problems.push(`${c.id}: reason ${JSON.stringify(got.reason)} does not match ${String(c.expect.reason)}`);
        // The message names the file.
        if (!(got.reason ?? '').includes(JSON.stringify(got.name))) problems.push(`${c.id}: reason does not name the file ${got.name}`);
      } else if (got.sha256) {
        const view = await app.inject({ url: `/api/sessions/${SESSION}/photos/${got.sha256}`, headers: AUTH });
        const p = view.json<{ source: { width: number; height: number; format: string } | null; warnings: string[] }>();
        const want = c.accepted ?? {};
        if (want.width !== undefined && p.source?.width !== want.width) problems.push(`${c.id}: width ${p.source?.width} ≠ ${want.width}`);
        if (want.height !== undefined && p.source?.height !== want.height) problems.push(`${c.id}: height ${p.source?.height} ≠ ${want.height}`);
        if (want.format !== undefined && p.source?.format !== want.format) problems.push(`${c.id}: format ${p.source?.format} ≠ ${want.format}`);
        if (want.warning && !p.warnings.some((w) => want.warning!.test(w))) problems.push(`${c.id}: no warning matching ${String(want.warning)} in ${JSON.stringify(p.warnings)}`);
      }
    }
    expect(problems).toEqual([]);
    await stillServing();
    expect(await readdir(uploadTmp)).toEqual([]);
  });

  it('serves a polyglot original as the image it claims to be, never as HTML or script', async () => {
    const list = (await app.inject({ url: `/api/sessions/${SESSION}/photos`, headers: AUTH })).json<{ photos: Array<{ name: string; sha256: string }> }>().photos;
    const html = list.find((p) => p.name === 'polyglot-html.jpg');
    expect(html).toBeDefined();
    const r = await app.inject({ url: `/api/sessions/${SESSION}/photos/${html!.sha256}/original`, headers: AUTH });
    expect(r.statusCode).toBe(200);
    expect(r.headers['content-type']).toBe('image/jpeg');
    expect(r.headers['x-content-type-options']).toBe('nosniff');
  });

  it('accepts hostile file names under a safe display name and writes nothing outside the store', async () => {
    const files = await Promise.all(HOSTILE_NAMES.map(async (n, i) => ({ name: n.name, data: await photo(300, 300, 500 + i) })));
    // Unicode normalisation twins with the same bytes: the second is a duplicate, not a second photo.
    files.push({ name: 'cafe\u0301.jpg', data: files.find((f) => f.name === 'caf\u00e9.jpg')!.data });
    const body = multipart(files);
    const r = await app.inject({ method: 'POST', url: `/api/sessions/${SESSION}/photos`, headers: { ...AUTH, ...body.headers }, payload: body.payload });
    expect(r.statusCode, r.body).toBe(201);
    const results = r.json<{ results: UploadResult[] }>().results;
    expect(results).toHaveLength(files.length);
    const problems: string[] = [];
    for (const [i, got] of results.entries()) {
      const id = HOSTILE_NAMES[i]?.id ?? 'nfd-same-bytes';
      const want = i < HOSTILE_NAMES.length ? 'added' : 'duplicate';
      const verdict = tally.judge(`name ${id}`, 'POST /photos', 'accepted', got.outcome === want ? 'accepted' : 'other');
      if (verdict) problems.push(`${verdict}: ${got.outcome} ${got.reason ?? ''}`);
      // eslint-disable-next-line no-control-regex
      if (/[/\u0000-\u001f\u202e]/.test(got.name) || got.name === '' || /^\.+$/.test(got.name) || got.name.length > 255) problems.push(`${id}: unsafe display name ${JSON.stringify(got.name)}`);
    }
    expect(problems).toEqual([]);
    expect(results[0]!.name).toBe('booth-escape.jpg');
    await stillServing();
    // Nothing outside the store: the app folder holds only the store (and the sentinel, empty),
    // the upload temp folder is empty again, and no traversal target exists.
    expect((await readdir(appDir)).sort()).toEqual(['sentinel', 'store']);
    expect(await readdir(path.join(appDir, 'sentinel'))).toEqual([]);
    expect(await readdir(uploadTmp)).toEqual([]);
    for (const f of await filesUnder(path.join(appDir, 'store'))) expect(f).toMatch(/^sessions\/hostile\//);
    for (const target of ['/tmp/booth-escape.jpg', path.join(tmpdir(), 'booth-escape.jpg'), '/etc/cron.d/booth-escape.jpg', path.resolve(appDir, '..', 'booth-escape.jpg')]) {
      expect(existsSync(target), target).toBe(false);
    }
  });
});

/** One REST request that must be refused with a 4xx whose message matches `reason`. */
interface RestCase {
  id: string;
  method: 'POST' | 'PATCH' | 'GET' | 'PUT' | 'DELETE';
  url: string;
  /** Raw body text (sent as is) or a value sent as JSON. */
  body?: string | Buffer | object;
  contentType?: string;
  reason: RegExp;
  /** Exact status when it matters (default: any 4xx). */
  status?: number;
}

/** A request that gets no answer within 20 s counts as a hang (a crash of the request). */
async function notHung<T>(p: Promise<T>): Promise<T | 'hung'> {
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<'hung'>((resolve) => (timer = setTimeout(() => resolve('hung'), 20_000)));
  try {
    return await Promise.race([p, hung]);
  } finally {
    clearTimeout(timer);
  }
}

/** Send one REST case and judge it: a 4xx with the error shape and a matching message. */
async function restCase(c: RestCase, a: FastifyInstance = app): Promise<string | null> {
  const raw = typeof c.body === 'string' || Buffer.isBuffer(c.body);
  const r = await notHung(
    a.inject({
      method: c.method,
      url: c.url,
      headers: { ...AUTH, ...(c.body !== undefined ? { 'content-type': c.contentType ?? 'application/json' } : {}) },
      ...(c.body !== undefined ? { payload: raw ? (c.body as string | Buffer) : JSON.stringify(c.body) } : {}),
    }),
  );
  if (r === 'hung') return tally.judge(c.id, `${c.method} ${c.url}`, 'rejected', 'crashed') + ' (no answer in 20 s)';
  const got = r.statusCode >= 500 ? 'crashed' : r.statusCode >= 400 ? 'rejected' : 'other';
  let problem = tally.judge(c.id, `${c.method} ${c.url.replace(/\?.*/, '')}`, 'rejected', got);
  if (!problem) {
    const body = r.json<{ error?: { code: string; message: string; requestId: string } }>();
    if (!body.error?.code || !body.error.requestId) problem = `${c.id}: no error shape in ${r.body.slice(0, 200)}`;
    else if (!c.reason.test(body.error.message)) problem = `${c.id}: message ${JSON.stringify(body.error.message.slice(0, 300))} does not match ${String(c.reason)}`;
    else if (c.status !== undefined && r.statusCode !== c.status) problem = `${c.id}: status ${r.statusCode}, expected ${c.status}`;
    // A clear message is a short one: never the megabytes of input echoed back.
    else if (body.error.message.length > 1000) problem = `${c.id}: message is ${body.error.message.length} characters long`;
  } else problem += ` (${r.statusCode} ${r.body.slice(0, 300)})`;
  await stillServing(a);
  return problem;
}

describe('REST bodies', () => {
  const S = `/api/sessions/${SESSION}`;

  it('refuses bad session bodies with a 4xx naming the field', async () => {
    const cases: RestCase[] = [
      { id: 'patch-unknown-field', method: 'PATCH', url: S, body: { turbo: true }, reason: /turbo/ },
      { id: 'patch-huge-string', method: 'PATCH', url: S, body: { trigger: 'x'.repeat(2 * 2 ** 20) }, reason: /trigger/ },
      { id: 'patch-huge-unknown-key', method: 'PATCH', url: S, body: `{"${'k'.repeat(2 * 2 ** 20)}":1}`, reason: /Unrecognized key|k{10}/ },
      { id: 'patch-wrong-type', method: 'PATCH', url: S, body: { trigger: 42 }, reason: /trigger/ },
      { id: 'patch-bad-enum', method: 'PATCH', url: S, body: { framing: 'everything' }, reason: /framing/ },
      { id: 'patch-body-array', method: 'PATCH', url: S, body: '[{"trigger":"ohwx"}]', reason: /object|array/i },
      { id: 'patch-body-string', method: 'PATCH', url: S, body: '"ohwx"', reason: /object|string/i },
      { id: 'patch-body-number', method: 'PATCH', url: S, body: '42', reason: /object|number/i },
      { id: 'patch-malformed-json', method: 'PATCH', url: S, body: '{"trigger": "ohwx",', reason: /JSON/i, status: 400 },
      { id: 'patch-empty-json', method: 'PATCH', url: S, body: '', reason: /empty|JSON/i, status: 400 },
      { id: 'patch-proto', method: 'PATCH', url: S, body: '{"__proto__":{"admin":true}}', reason: /JSON|prototype/i, status: 400 },
      { id: 'patch-deeply-nested', method: 'PATCH', url: S, body: `{"trigger":${'['.repeat(100_000)}${']'.repeat(100_000)}}`, reason: /trigger/ },
      { id: 'patch-over-body-limit', method: 'PATCH', url: S, body: `{"trigger":"${'x'.repeat(5 * 2 ** 20)}"}`, reason: /too large|limit/i, status: 413 },
      { id: 'patch-text-plain', method: 'PATCH', url: S, body: 'trigger=ohwx', contentType: 'text/plain', reason: /object|string|content type/i },
      { id: 'create-traversal-name', method: 'POST', url: '/api/sessions', body: { name: '../../etc', trigger: 'ohwx', classNoun: 'man' }, reason: /name/ },
      { id: 'create-nul-name', method: 'POST', url: '/api/sessions', body: { name: 'a\u0000b', trigger: 'ohwx', classNoun: 'man' }, reason: /name/ },
      { id: 'create-1000-char-name', method: 'POST', url: '/api/sessions', body: { name: 'a'.repeat(1000), trigger: 'ohwx', classNoun: 'man' }, reason: /name/ },
      { id: 'session-path-traversal', method: 'GET', url: '/api/sessions/..%2F..%2Fetc%2Fpasswd', reason: /session name|name/ },
      { id: 'photo-bad-sha', method: 'GET', url: `${S}/photos/..%2F..%2Fsession.json`, reason: /sha256|SHA-256/ },
      { id: 'crop-negative', method: 'PUT', url: `${S}/photos/${'0'.repeat(64)}/crop`, body: { x: -5, y: 0, width: 1e9, height: 'big' }, reason: /x|height/ },
      { id: 'export-traversal-name', method: 'POST', url: `${S}/exports`, body: { name: '../../../tmp/evil' }, reason: /name/ },
      { id: 'export-bad-dtype', method: 'POST', url: `${S}/exports`, body: { dtype: 'fp8' }, reason: /dtype/ },
      { id: 'export-bad-run', method: 'POST', url: `${S}/exports`, body: { run: '../../x' }, reason: /run/ },
      { id: 'delete-without-confirm', method: 'DELETE', url: S, reason: /confirm/ },
    ];
    const problems = [];
    for (const c of cases) problems.push(await restCase(c));
    expect(problems.filter(Boolean)).toEqual([]);
    // Nothing above changed the session.
    const m = (await app.inject({ url: S, headers: AUTH })).json<{ subject: { trigger: string } }>();
    expect(m.subject.trigger).toBe('ohwx');
  });

  it('refuses bad job specs, overrides and step counts on estimate and launch, launching nothing', async () => {
    await markPrepared(app.booth.sessions, SESSION);
    const cases: RestCase[] = [
      // fastify's JSON parser refuses `__proto__` keys before the spec is looked at ("Body is not valid JSON").
      ...specCases().map((c) => ({ id: `rest-${c.id}`, method: 'POST' as const, url: `${S}/runs/estimate`, body: `{"spec":${c.text}}`, reason: c.id === 'spec-proto-pollution' ? /JSON/ : c.reason })),
      ...BAD_SETS.map((c) => ({ id: `rest-${c.id}`, method: 'POST' as const, url: `${S}/runs/estimate`, body: { set: [c.set] }, reason: c.reason })),
      { id: 'rest-steps-negative', method: 'POST', url: `${S}/runs/estimate`, body: { steps: -1 }, reason: /steps/ },
      { id: 'rest-steps-huge', method: 'POST', url: `${S}/runs/estimate`, body: { steps: 1e12 }, reason: /steps/ },
      { id: 'rest-steps-string', method: 'POST', url: `${S}/runs/estimate`, body: { steps: 'NaN' }, reason: /steps/ },
      { id: 'rest-steps-fraction', method: 'POST', url: `${S}/runs/estimate`, body: { steps: 1.5 }, reason: /steps/ },
      { id: 'rest-preset-and-spec', method: 'POST', url: `${S}/runs/estimate`, body: { preset: 'face-sd15', spec: validSpec() }, reason: /either preset or spec/ },
      { id: 'rest-base-model-huge', method: 'POST', url: `${S}/runs/estimate`, body: { baseModel: 'x'.repeat(100_000) }, reason: /baseModel/ },
      { id: 'rest-set-too-many', method: 'POST', url: `${S}/runs/estimate`, body: { set: Array.from({ length: 1000 }, () => 'seed=1') }, reason: /set/ },
      { id: 'rest-launch-bad-spec', method: 'POST', url: `${S}/runs`, body: { spec: { ...validSpec(), resolution: 3 } }, reason: /resolution/ },
      {
        id: 'rest-spec-200000-deep-with-set',
        method: 'POST',
        url: `${S}/runs/estimate`,
        body: `{"spec":${JSON.stringify(validSpec()).replace(/}$/, `,"extra":${'{"a":'.repeat(200_000)}1${'}'.repeat(200_000)}}`)},"set":["seed=7"]}`,
        reason: /extra(\.a)+ is nested more than 32 levels deep/,
      },
      { id: 'rest-launch-body-array', method: 'POST', url: `${S}/runs`, body: '[]', reason: /object|array/i },
    ];
    const problems = [];
    for (const c of cases) problems.push(await restCase(c));
    expect(problems.filter(Boolean)).toEqual([]);
    // A normal estimate still works, and no run was created by any of the above.
    const ok = await app.inject({ method: 'POST', url: `${S}/runs/estimate`, headers: AUTH, payload: { spec: validSpec() } });
    expect(ok.statusCode, ok.body).toBe(200);
    expect((await app.inject({ url: `${S}/runs`, headers: AUTH })).json<{ runs: unknown[] }>().runs).toEqual([]);
  });
});

describe('HTTP transport and multipart framing', () => {
  let port: number;
  beforeAll(async () => {
    await app.listen({ host: '127.0.0.1', port: 0 });
    port = (app.server.address() as AddressInfo).port;
  });

  /** Judge a raw exchange: a 4xx, or the server closing without an answer; never a 5xx. */
  function judgeRaw(id: string, r: { status: number | null }, expectStatus = true): string | null {
    const got = r.status !== null && r.status >= 500 ? 'crashed' : (r.status !== null && r.status >= 400) || (r.status === null && !expectStatus) ? 'rejected' : 'other';
    const p = tally.judge(id, 'socket', 'rejected', got);
    return p ? `${p} (status ${r.status})` : null;
  }

  const head = (method: string, url: string, headers: Record<string, string | number>) =>
    `${method} ${url} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: ${AUTH.authorization}\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n`;

  it('survives bodies that lie about their length and broken framing', async () => {
    const S = `/api/sessions/${SESSION}`;
    const jpeg = await photo(300, 300, 900);
    const boundary = 'hostileboundary';
    const part = Buffer.concat([Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="photos"; filename="lie.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`), jpeg, Buffer.from(`\r\n--${boundary}--\r\n`)]);
    const problems: Array<string | null> = [];
    // Promises 1000 bytes, sends 20, then gives up (half-close).
    const short = Buffer.from('{"trigger": "ohwx"}');
    problems.push(judgeRaw('json-content-length-too-long', await rawHttp(port, Buffer.concat([Buffer.from(head('PATCH', S, { 'Content-Type': 'application/json', 'Content-Length': 1000 })), short]), { halfClose: true }), false));
    // Promises 5 bytes and sends a whole body: the rest is read as a (garbage) next request.
    problems.push(judgeRaw('json-content-length-too-short', await rawHttp(port, Buffer.concat([Buffer.from(head('PATCH', S, { 'Content-Type': 'application/json', 'Content-Length': 5 })), Buffer.from('{"trigger":"ohwx","classNoun":"man"}')]))));
    // A multipart upload that promises twice its size and stops halfway.
    problems.push(
      judgeRaw(
        'multipart-content-length-too-long',
        await rawHttp(port, Buffer.concat([Buffer.from(head('POST', `${S}/photos`, { 'Content-Type': `multipart/form-data; boundary=${boundary}`, 'Content-Length': part.length * 2 })), part.subarray(0, part.length / 2)]), { halfClose: true }),
        false,
      ),
    );
    // Both Content-Length and Transfer-Encoding (request smuggling).
    problems.push(judgeRaw('content-length-and-chunked', await rawHttp(port, Buffer.from(`${head('PATCH', S, { 'Content-Type': 'application/json', 'Content-Length': 4, 'Transfer-Encoding': 'chunked' })}0\r\n\r\n`))));
    // Chunked body whose chunk sizes are not hex.
    problems.push(judgeRaw('chunked-garbage-size', await rawHttp(port, Buffer.from(`${head('PATCH', S, { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked' })}zz\r\n{}\r\n0\r\n\r\n`))));
    // 64 KB of headers.
    problems.push(judgeRaw('oversized-headers', await rawHttp(port, Buffer.from(head('GET', S, { 'X-Filler': 'a'.repeat(64 * 1024) })))));
    expect(problems.filter(Boolean)).toEqual([]);
    await stillServing();
    // No half-uploaded photo was recorded, and no temp file is left.
    const names = (await app.inject({ url: `${S}/photos`, headers: AUTH })).json<{ photos: Array<{ name: string }> }>().photos.map((p) => p.name);
    expect(names).not.toContain('lie.jpg');
    expect(await readdir(uploadTmp)).toEqual([]);
  });

  it('refuses malformed multipart and wrong content types with a 4xx', async () => {
    const S = `/api/sessions/${SESSION}/photos`;
    const jpeg = await photo(300, 300, 901);
    const body = (b: string, extra = '') => Buffer.concat([Buffer.from(`--${b}\r\nContent-Disposition: form-data; name="photos"; filename="x.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`), jpeg, Buffer.from(`\r\n${extra}`)]);
    const cases: RestCase[] = [
      { id: 'multipart-no-boundary', method: 'POST', url: S, contentType: 'multipart/form-data', body: body('abc', '--abc--\r\n'), reason: /boundary|multipart/i },
      { id: 'multipart-boundary-mismatch', method: 'POST', url: S, contentType: 'multipart/form-data; boundary=expected', body: body('actual', '--actual--\r\n'), reason: /multipart|file part|form/i },
      { id: 'multipart-no-closing-boundary', method: 'POST', url: S, contentType: 'multipart/form-data; boundary=abc', body: body('abc'), reason: /multipart|end|form/i },
      { id: 'multipart-empty-body', method: 'POST', url: S, contentType: 'multipart/form-data; boundary=abc', body: '', reason: /no file parts|multipart/i },
      { id: 'multipart-garbage', method: 'POST', url: S, contentType: 'multipart/form-data; boundary=abc', body: Buffer.from('\u0000\u0001garbage\r\n\r\n--abc\r\n\r\n'), reason: /multipart|file part|form/i },
      {
        id: 'multipart-no-file-part',
        method: 'POST',
        url: S,
        contentType: 'multipart/form-data; boundary=abc',
        body: '--abc\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--abc--\r\n',
        reason: /no file parts/,
      },
      {
        id: 'multipart-proto-field',
        method: 'POST',
        url: S,
        contentType: 'multipart/form-data; boundary=abc',
        body: '--abc\r\nContent-Disposition: form-data; name="__proto__"\r\n\r\nx\r\n--abc--\r\n',
        reason: /prototype|__proto__|no file parts/i,
      },
      { id: 'upload-as-json', method: 'POST', url: S, body: { photos: ['x.jpg'] }, reason: /multipart\/form-data/, status: 415 },
      { id: 'upload-as-octet-stream', method: 'POST', url: S, contentType: 'application/octet-stream', body: jpeg, reason: /content type|media type|multipart/i, status: 415 },
      { id: 'upload-as-text', method: 'POST', url: S, contentType: 'text/plain', body: 'hello', reason: /multipart\/form-data/, status: 415 },
    ];
    const problems = [];
    for (const c of cases) problems.push(await restCase(c));
    expect(problems.filter(Boolean)).toEqual([]);
    expect(await readdir(uploadTmp)).toEqual([]);
  });

  it('turns per-file and per-request limits into per-file results without sinking the other photos', async () => {
    const a = limited.app;
    const S = `/api/sessions/${SESSION}/photos`;
    const small = await Promise.all([0, 1, 2, 3, 4].map((i) => photo(260, 260, 950 + i)));
    for (const s of small) expect(s.length).toBeLessThan(64 * 1024);
    const big = Buffer.concat([await photo(300, 300, 960), Buffer.alloc(200 * 1024)]);
    const problems: Array<string | null> = [];

    // One file over the per-file limit between two good ones.
    let mp = multipart([{ name: 'a.jpg', data: small[0]! }, { name: 'too-big.jpg', data: big }, { name: 'b.jpg', data: small[1]! }]);
    let r = await a.inject({ method: 'POST', url: S, headers: { ...AUTH, ...mp.headers }, payload: mp.payload });
    let res = r.statusCode < 300 ? r.json<{ results: UploadResult[] }>().results : [];
    problems.push(tally.judge('multipart-file-over-limit', 'POST /photos (64 KiB limit)', 'rejected', r.statusCode >= 500 ? 'crashed' : res[1]?.outcome === 'rejected' ? 'rejected' : 'other'));
    expect(res.map((x) => x.outcome)).toEqual(['added', 'rejected', 'added']);
    expect(res[1]!.reason).toMatch(/"?too-big\.jpg"?: over this server's per-file upload limit/);

    // More files than the per-request limit (3): the first three are handled and kept, the rest
    // refused with one result that says to send them again.
    mp = multipart([small[2]!, small[0]!, small[3]!, small[4]!, small[1]!].map((data, i) => ({ name: `n${i}.jpg`, data })));
    r = await a.inject({ method: 'POST', url: S, headers: { ...AUTH, ...mp.headers }, payload: mp.payload });
    res = r.statusCode < 300 ? r.json<{ results: UploadResult[] }>().results : [];
    problems.push(tally.judge('multipart-too-many-files', 'POST /photos (3 files limit)', 'rejected', r.statusCode >= 500 ? 'crashed' : res.at(-1)?.outcome === 'rejected' ? 'rejected' : 'other'));
    expect(r.statusCode, r.body).toBe(201);
    expect(res.map((x) => x.outcome)).toEqual(['added', 'duplicate', 'added', 'rejected']);
    expect(res[3]!.reason).toMatch(/the 3 file\(s\) before were handled, send the rest in another request/);
    const kept = (await a.inject({ url: S, headers: AUTH })).json<{ photos: Array<{ name: string }> }>().photos.map((p) => p.name);
    expect(kept).toEqual(expect.arrayContaining(['a.jpg', 'b.jpg', 'n0.jpg', 'n2.jpg']));
    expect(kept).not.toContain('n3.jpg');

    // More fields than the parts limit.
    const many = ['--abc'];
    for (let i = 0; i < 40; i++) many.push(`Content-Disposition: form-data; name="f${i}"\r\n\r\nv\r\n--abc`);
    many[many.length - 1] += '--\r\n';
    problems.push(await restCase({ id: 'multipart-too-many-fields', method: 'POST', url: S, contentType: 'multipart/form-data; boundary=abc', body: many.join('\r\n'), reason: /fields|parts|limit|no file parts/i }, a));
    expect(problems.filter(Boolean)).toEqual([]);
    await stillServing(a);
    expect(await readdir(uploadTmp)).toEqual([]);
  });
});

describe('job specs and safetensors headers, in-process', () => {
  it('parseJobSpec refuses every bad spec, naming the field', () => {
    const problems: Array<string | null> = [];
    for (const c of specCases()) {
      let value: unknown;
      try {
        value = JSON.parse(c.text);
      } catch {
        continue; // JSON syntax errors never reach the validator; the CLI and REST cases cover them
      }
      let got: 'accepted' | 'rejected' | 'crashed' = 'accepted';
      let message = '';
      try {
        parseJobSpec(value, 'the spec');
      } catch (err) {
        got = err instanceof BoothError && err.code === 'INVALID_ARGUMENT' ? 'rejected' : 'crashed';
        message = err instanceof Error ? err.message : String(err);
      }
      const p = tally.judge(`in-process ${c.id}`, 'parseJobSpec', 'rejected', got);
      problems.push(p ? `${p}: ${message.slice(0, 200)}` : c.reason.test(message) ? null : `${c.id}: ${JSON.stringify(message.slice(0, 300))} does not match ${String(c.reason)}`);
    }
    expect(problems.filter(Boolean)).toEqual([]);
    // The corpus base is itself valid, so each refusal above is about the one change made.
    expect(parseJobSpec(validSpec()).resolution).toBe(512);
  });

  it('the safetensors reader refuses every malicious header with INVALID_ARGUMENT naming the file and the rule', async () => {
    const dir = path.join(work, 'safetensors');
    await mkdir(dir);
    const problems: Array<string | null> = [];
    for (const c of safetensorsCases()) {
      const file = path.join(dir, `${c.id}.safetensors`);
      await writeFile(file, c.bytes);
      const before = process.memoryUsage().rss;
      const source = await openFileSource(file);
      let got: 'accepted' | 'rejected' | 'crashed' = 'accepted';
      let message = '';
      try {
        await readHeader(source);
      } catch (err) {
        got = err instanceof BoothError && err.code === 'INVALID_ARGUMENT' ? 'rejected' : 'crashed';
        message = err instanceof Error ? err.message : String(err);
      } finally {
        await source.close();
      }
      const p = tally.judge(c.id, 'readHeader', 'rejected', got);
      if (p) problems.push(`${p}: ${message.slice(0, 200)}`);
      else if (!c.reason.test(message) || !message.includes(file)) problems.push(`${c.id}: ${JSON.stringify(message.slice(0, 300))} does not name the file and match ${String(c.reason)}`);
      // A declared length is never allocated before it is checked against the file.
      if (process.memoryUsage().rss - before > 64 * 2 ** 20) problems.push(`${c.id}: RSS grew by ${((process.memoryUsage().rss - before) / 2 ** 20).toFixed(0)} MiB`);
    }
    expect(problems.filter(Boolean)).toEqual([]);
  });
});

describe.skipIf(!built)('the CLI', () => {
  let root: string;
  let store: string;
  let sessions: SessionStore;
  beforeAll(async () => {
    root = path.join(work, 'cli');
    for (const d of ['cwd', 'tmp', 'inputs', 'sentinel']) await mkdir(path.join(root, d), { recursive: true });
    store = `file://${path.join(root, 'store')}`;
    sessions = new SessionStore(createFsStore({ root: path.join(root, 'store') }));
    await sessions.create({ name: SESSION, subject: { trigger: 'ohwx', classNoun: 'man', kind: 'person' }, base: 'sd15', settings: {} });
  });
  afterAll(async () => {
    await sessions?.store.close();
  });

  it('booth add: one call with every hostile file, a clear per-file outcome for each, nothing written outside the store', async () => {
    const inputs = path.join(root, 'inputs');
    const args: string[] = [];
    const expected = new Map<string, { id: string; want: 'added' | 'rejected' | 'skipped'; reason?: RegExp }>();
    for (const [i, c] of cases.entries()) {
      const dir = path.join(inputs, 'images', String(i));
      await mkdir(dir, { recursive: true });
      const file = path.join(dir, c.name);
      await writeFile(file, c.bytes);
      args.push(file);
      expected.set(file, { id: `cli image ${c.id}`, want: c.expect.outcome === 'accepted' ? 'added' : 'rejected', ...(c.expect.outcome === 'rejected' ? { reason: c.expect.reason } : {}) });
    }
    const diskNames = ['photo\u202Egpj.exe.jpg', 'CON', 'NUL.jpg', '...', 'back\\slash.jpg', `${'n'.repeat(250)}.jpg`, 'caf\u00e9.jpg', 'cafe\u0301.jpg', 'new\nline.jpg', '-rf.jpg', ' leading space.jpg'];
    await mkdir(path.join(inputs, 'names'));
    for (const [i, n] of diskNames.entries()) {
      const file = path.join(inputs, 'names', n);
      await writeFile(file, await photo(280, 280, 700 + i));
      // Given through a `..` detour for the first one: a path, not a name, and it is fine.
      const given = i === 0 ? path.join(inputs, 'images', '..', 'names', n) : file;
      args.push(given);
      expected.set(given, { id: `cli name ${JSON.stringify(n).slice(0, 40)}`, want: 'added' });
    }
    const { execa } = await import('execa');
    await execa('mkfifo', [path.join(inputs, 'fifo.jpg')]);
    // 201 MiB, sparse: refused from its size before a byte is read.
    await writeFile(path.join(inputs, 'huge.jpg'), '');
    await truncate(path.join(inputs, 'huge.jpg'), 201 * 2 ** 20);
    args.push(path.join(inputs, 'huge.jpg'));
    expected.set(path.join(inputs, 'huge.jpg'), { id: 'cli 201 MiB file', want: 'rejected', reason: /over the 200 MiB limit/ });
    for (const [given, id, reason] of [
      [path.join(inputs, 'fifo.jpg'), 'cli fifo (would block forever if read)', /not a regular file/],
      ['/dev/zero', 'cli /dev/zero (endless)', /not a regular file/],
      [path.join(inputs, 'missing.jpg'), 'cli missing file', /no such file/],
    ] as const) {
      args.push(given);
      expected.set(given, { id, want: 'skipped', reason });
    }
    const r = await cli(root, store, ['add', SESSION, ...args, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = json<{ results: Array<{ path: string; name: string; outcome: string; reason: string | null }> }>(r.stdout);
    expect(out.results).toHaveLength(expected.size);
    const problems: Array<string | null> = [];
    for (const res of out.results) {
      const e = expected.get(res.path);
      if (!e) {
        problems.push(`unexpected result for ${res.path}`);
        continue;
      }
      const got = res.outcome === e.want ? (e.want === 'added' ? 'accepted' : 'rejected') : 'other';
      problems.push(tally.judge(e.id, 'booth add', e.want === 'added' ? 'accepted' : 'rejected', got));
      if (e.reason && !e.reason.test(res.reason ?? '')) problems.push(`${e.id}: reason ${JSON.stringify(res.reason)} does not match ${String(e.reason)}`);
      // eslint-disable-next-line no-control-regex
      if (/[/\u0000-\u001f\u202e]/.test(res.name)) problems.push(`${e.id}: unsafe display name ${JSON.stringify(res.name)}`);
    }
    // The valid oddities were handled as over HTTP: upright size and real format recorded.
    const manifest = await sessions.get(SESSION);
    for (const c of cases.filter((x) => x.expect.outcome === 'accepted' && x.accepted)) {
      const rec = manifest.photos.find((p) => p.name === c.name);
      const want = c.accepted!;
      if (want.width !== undefined && rec?.source?.width !== want.width) problems.push(`cli ${c.id}: width ${rec?.source?.width} ≠ ${want.width}`);
      if (want.height !== undefined && rec?.source?.height !== want.height) problems.push(`cli ${c.id}: height ${rec?.source?.height} ≠ ${want.height}`);
      if (want.format !== undefined && rec?.source?.format !== want.format) problems.push(`cli ${c.id}: format ${rec?.source?.format} ≠ ${want.format}`);
    }
    expect(problems.filter(Boolean)).toEqual([]);
    // Nothing outside the store: cwd, TMPDIR and the sentinel are empty, the store holds only this session.
    for (const d of ['cwd', 'tmp', 'sentinel']) expect(await readdir(path.join(root, d)), d).toEqual([]);
    for (const f of await filesUnder(path.join(root, 'store'))) expect(f).toMatch(/^sessions\/hostile\//);
  });

  it('booth session create refuses a hostile session name; booth train refuses bad specs and overrides by file and field', async () => {
    await markPrepared(sessions, SESSION);
    const specDir = path.join(root, 'inputs', 'specs');
    await mkdir(specDir);
    // The rest of the spec and --set corpus goes through the CLI in hostile-inputs.slow.test.ts.
    const ci = new Set(['spec-malformed-json', 'spec-not-object', 'spec-resolution-3', 'spec-deeply-nested', 'spec-huge-unknown-key']);
    const runs: Array<{ id: string; args: string[]; reason: RegExp }> = [
      { id: 'cli-session-create-traversal', args: ['session', 'create', '../../evil', '--trigger', 'ohwx', '--class', 'man'], reason: /session name|name/ },
    ];
    for (const c of specCases().filter((s) => ci.has(s.id))) {
      const file = path.join(specDir, `${c.id}.json`);
      await writeFile(file, c.text);
      // Parse errors name the file; validation errors name the field.
      runs.push({ id: `cli-${c.id}`, args: ['train', SESSION, '--spec', file, '--dry-run', '--json'], reason: new RegExp(`${c.id}\\.json: .*(${c.reason.source})`) });
    }
    for (const c of BAD_SETS.filter((b) => b.id === 'set-proto')) {
      runs.push({ id: `cli-${c.id}`, args: ['train', SESSION, '--preset', 'face-sd15', '--set', c.set, '--dry-run'], reason: c.reason });
    }
    const problems: Array<string | null> = [];
    // Two at a time: the machine has two cores.
    for (let i = 0; i < runs.length; i += 2) {
      const batch = runs.slice(i, i + 2);
      const results = await Promise.all(batch.map((b) => cli(root, store, b.args)));
      for (const [j, b] of batch.entries()) problems.push(judgeCli(tally, b.id, results[j]!, b.reason));
    }
    expect(problems.filter(Boolean)).toEqual([]);
    // The same command with a valid spec works, and launched nothing.
    await writeFile(path.join(specDir, 'valid.json'), JSON.stringify(validSpec()));
    const ok = await cli(root, store, ['train', SESSION, '--spec', path.join(specDir, 'valid.json'), '--dry-run', '--json']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(json<{ spec: { resolution: number } }>(ok.stdout).spec.resolution).toBe(512);
    expect((await filesUnder(path.join(root, 'store'))).filter((f) => f.includes('/runs/'))).toEqual([]);
  });

  it('booth convert refuses malicious safetensors files, naming the file, and leaves no output behind', async () => {
    const dir = path.join(root, 'inputs', 'st');
    const outDir = path.join(root, 'out');
    await mkdir(dir);
    await mkdir(outDir);
    const picked = safetensorsCases().filter((c) => ['st-header-2^63', 'st-offsets-overlap'].includes(c.id));
    const problems: Array<string | null> = [];
    for (let i = 0; i < picked.length; i += 2) {
      const batch = picked.slice(i, i + 2);
      const results = await Promise.all(
        batch.map(async (c) => {
          const file = path.join(dir, `${c.id.replace(/\W/g, '_')}.safetensors`);
          await writeFile(file, c.bytes);
          return { c, file, r: await cli(root, store, ['convert', file, path.join(outDir, `${c.id.replace(/\W/g, '_')}-out.safetensors`)]) };
        }),
      );
      for (const { c, file, r } of results) problems.push(judgeCli(tally, `cli-convert-${c.id}`, r, new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}.*${c.reason.source}`)));
    }
    expect(problems.filter(Boolean)).toEqual([]);
    expect(await readdir(outDir)).toEqual([]);
    for (const d of ['cwd', 'tmp', 'sentinel']) expect(await readdir(path.join(root, d)), d).toEqual([]);
  });
});
