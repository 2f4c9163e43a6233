/**
 * Security of the control plane (issue 8): nobody gets in without the token, nothing secret leaks.
 *
 * 1. Every route the real app registers (collected from fastify, not a hand-written list) is called
 *    with real ids and a valid body, but without a usable credential (no header, a wrong token, one
 *    character short or long, `Bearer` alone, Basic, cookie, query-string token, …): all 401 except
 *    the documented public allow-list, which serves no session data; the store is byte-for-byte
 *    unchanged afterwards. Signed URLs work only for their exact path, query, method and expiry.
 * 2. Token and signature checks refuse every prefix and every length, and no secret is compared with
 *    `===` anywhere in src (timing figures: `npm run bench:auth`, scripts/bench-auth-timing.js).
 * 3. Crafted ids (`..`, encoded and double-encoded separators, NUL, look-alikes, another session's
 *    photo/run/export ids, paths in spec folders, file:// webhooks) get 4xx and never another
 *    session's data, and the other session's objects are unchanged.
 * 4. The token, signatures, webhook secrets, S3 and OpenAI keys appear in no log line, error
 *    response, CLI output, run log, status.json or webhook listing, including when S3, the webhook
 *    receiver and the captioning service fail.
 * Plus: UI security headers, no CORS, static-file traversal, the non-loopback binding rule.
 */
import { spawn } from 'node:child_process';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertSafeBinding, bearerToken, createUrlSigner, isLoopback, SIGNED_URL_TTL_S, signedPathOf, tokenMatches } from '../../src/server/auth.js';
import { buildApp } from '../../src/server/app.js';
import { createS3Store, listAll, putJson, readAll } from '../../src/storage/index.js';
import type { ObjectStore } from '../../src/storage/types.js';
import { redactUrl } from '../../src/log.js';
import { noiseImage } from '../helpers/images.js';
import { preparedSession } from '../helpers/training.js';
import { AUTH, multipart, testApp, TOKEN, until } from '../server/helpers.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const BIN = path.join(ROOT, 'dist/cli/bin.js');
const A = 'sec-alpha';
const B = 'sec-bravo';
const SMALL = ['schedule.unet.steps=12', 'resumeState.every=6', 'prior.classImages=2', 'samples.every=6'];

/** Secret values planted everywhere a secret can travel; none may come back out. */
const SECRETS = {
  token: TOKEN,
  webhook: 'whsec-plant-Zq8v1N3m5B7c9X2k4',
  aws: 'awsplant-Vb7Nq2Lp9Xw4Rt6Yz1KsQe3',
  openai: 'sk-plant-openai-Hn4Jm8Qw2Ez6Rt0Yu',
  s3url: 'urlplant-Gh5Jk7Lm9Nb2Vc4Xz',
  shortToken: 'plant-short1',
  /** A token in the webhook receiver's URL: the API shows the URL back to its owner, but logs mask it. */
  hookUrl: 'hookplant-Tt3Yy5Uu7Ii9Oo1Pp',
};

/**
 * The routes served without the token, and why each is safe: the liveness probe (no data), the
 * OpenAPI description and its UI assets (route shapes only), and the static web UI shell (it asks
 * for the token itself). docs/server.md lists the same set.
 */
const PUBLIC_ROUTES = ['GET /health', 'GET /docs', 'GET /docs/json', 'GET /docs/yaml', 'GET /docs/static/*', 'GET /docs/static/index.html', 'GET /docs/static/swagger-initializer.js', 'GET /*'];

let app: FastifyInstance;
let store: ObjectStore;
let dir: string;
let close: () => Promise<void>;
let stub: Server;
let stubUrl: string;
const stubSeen: Array<{ url: string; authorization: string | undefined }> = [];
const logLines: string[] = [];
/** Every response body the app sent (the webhook PUT that shows its own secret once is left out). */
const responses: string[] = [];
/** Signatures the app handed out: they must not reach the log either. */
const signatures = new Set<string>();
const ids = { shaA: '', shaB: '', runA: '', runB: '', sampleA: '', jobA: '' };
const counts = { routes: 0, publicRoutes: 0, unauth: 0, signed: 0, crafted: 0, scanned: 0, cli: 0 };

type Inject = InjectOptions;
let base = '';

/**
 * Whether `inject` would send another path than `url` (it resolves `..`, `%2e%2e` and `\` as a
 * browser or curl does); such requests are tried over the socket only, where the path arrives as written.
 */
const normalises = (url: string): boolean => new URL(url, 'http://x').pathname !== url.split('?')[0];

/**
 * The same request over a real socket, with the path sent byte for byte: `inject` parses the URL
 * first, which resolves `..` segments, so traversal must also be tried the way a client sends it.
 */
function viaHttp(opts: { method?: string; url: string; headers?: Record<string, string>; payload?: unknown }): Promise<{ statusCode: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  const body = opts.payload === undefined ? undefined : Buffer.isBuffer(opts.payload) ? opts.payload : Buffer.from(typeof opts.payload === 'string' ? opts.payload : JSON.stringify(opts.payload));
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: u.hostname, port: u.port, method: opts.method ?? 'GET', path: opts.url, headers: { ...(body && !Buffer.isBuffer(opts.payload) ? { 'content-type': 'application/json' } : {}), ...opts.headers } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          responses.push(text);
          resolve({ statusCode: res.statusCode ?? 0, headers: res.headers, body: text });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** `app.inject`, keeping the body for the leak scan and the signatures for the log scan. */
async function call(opts: Inject, target: FastifyInstance = app, keep = true): Promise<LightMyRequestResponse> {
  const r = await target.inject(opts);
  if (keep) responses.push(r.body);
  for (const m of r.body.matchAll(/[?&]sig=([A-Za-z0-9_-]{20,})/g)) signatures.add(m[1]!);
  return r;
}

/** Every key under a prefix with its etag and size. */
async function snapshot(prefix: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for await (const o of listAll(store, prefix)) out.set(o.key, `${o.etag}/${o.size}`);
  return out;
}

/** Strings that identify a session's data: its name, photo hashes, run id, export name. */
function dataOf(session: 'A' | 'B'): string[] {
  return session === 'A' ? [A, ids.shaA, ids.runA, 'alpha-exp'] : [B, ids.shaB, ids.runB, 'bravo-exp'];
}

async function waitDone(name: string, run: string): Promise<void> {
  await until(async () => {
    const s = (await call({ url: `/api/sessions/${name}/runs/${run}`, headers: AUTH })).json<{ state: string }>().state;
    if (s === 'failed' || s === 'lost') throw new Error(`run ${run} ended ${s}`);
    return s === 'done' ? true : undefined;
  }, `run ${run} done`);
}

function runCli(args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { PATH: process.env.PATH ?? '', HOME: dir, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Asserts that none of the planted secrets occurs in `text`. */
function expectNoSecret(text: string, where: string, extra: Iterable<string> = []): void {
  counts.scanned++;
  for (const s of [...Object.values(SECRETS), ...extra]) {
    if (text.includes(s)) throw new Error(`${where} contains the secret ${s.slice(0, 6)}…: ${text.slice(Math.max(0, text.indexOf(s) - 200), text.indexOf(s) + 50)}`);
  }
}

beforeAll(async () => {
  stub = createServer((req, res) => {
    stubSeen.push({ url: req.url ?? '', authorization: req.headers.authorization });
    req.resume();
    req.on('end', () => {
      // The webhook receiver is down, and the "OpenAI" endpoint refuses the key, as a real one does (without echoing it).
      if (req.url?.startsWith('/hook')) res.writeHead(500).end('down');
      else res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { message: 'Incorrect API key provided.', type: 'invalid_request_error', code: 'invalid_api_key' } }));
    });
  });
  await new Promise<void>((r) => stub.listen(0, '127.0.0.1', r));
  stubUrl = `http://127.0.0.1:${(stub.address() as AddressInfo).port}`;
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logLines.push(chunk.toString());
      cb();
    },
  });
  ({ app, store, dir, close } = await testApp(
    {
      logger: pino({ level: 'debug' }, sink),
      captions: { apiKey: SECRETS.openai, baseURL: `${stubUrl}/v1` },
      webhooks: { backoffMs: 20, maxAttempts: 2, watchMs: 100, timeoutMs: 2000 },
    },
    // The worker inherits these, as it would inherit `booth serve`'s environment.
    { AWS_SECRET_ACCESS_KEY: SECRETS.aws, OPENAI_API_KEY: SECRETS.openai, BOOTH_TOKEN: TOKEN },
  ));
  await Promise.all([preparedSession(store, A, dir, 2), preparedSession(store, B, dir, 2)]);
  const hook = await call({ method: 'PUT', url: `/api/sessions/${A}/webhooks`, headers: AUTH, payload: { url: `${stubUrl}/hook?token=${SECRETS.hookUrl}`, secret: SECRETS.webhook } }, app, false);
  expect(hook.statusCode, hook.body).toBe(200);
  for (const s of ['A', 'B'] as const) {
    const name = s === 'A' ? A : B;
    const r = await call({ method: 'POST', url: `/api/sessions/${name}/runs`, headers: AUTH, payload: { set: SMALL } });
    expect(r.statusCode, r.body).toBe(201);
    ids[s === 'A' ? 'runA' : 'runB'] = r.json<{ run: string }>().run;
  }
  await waitDone(A, ids.runA);
  await waitDone(B, ids.runB);
  for (const [name, exp] of [[A, 'alpha-exp'], [B, 'bravo-exp']] as const) {
    const bytes = Buffer.from(`weights of ${name}`);
    await store.put(`sessions/${name}/exports/${exp}.safetensors`, bytes);
    await putJson(store, `sessions/${name}/exports/${exp}.json`, { name: exp, session: name, run: '20260101-000000-abcd', kind: 'checkpoint', architecture: 'sd1', predictionType: 'epsilon', dtype: 'fp16', key: `sessions/${name}/exports/${exp}.safetensors`, yamlKey: null, size: bytes.length, sha256: 'ab'.repeat(32), autov2: 'abababab', metadata: {}, createdAt: new Date().toISOString() });
  }
  const photos = async (name: string) => (await call({ url: `/api/sessions/${name}/photos`, headers: AUTH })).json<{ photos: Array<{ sha256: string; status: string }> }>().photos;
  ids.shaA = (await photos(A)).find((p) => p.status === 'accepted')?.sha256 ?? '';
  // The fixture's photos are the same in every session (same seeds); B gets one of its own.
  const own = multipart([{ name: 'bravo-only.jpg', data: await noiseImage(400, 300, 9001) }]);
  const up = await call({ method: 'POST', url: `/api/sessions/${B}/photos`, headers: { ...AUTH, ...own.headers }, payload: own.payload });
  ids.shaB = up.json<{ results: Array<{ sha256: string }> }>().results[0]?.sha256 ?? '';
  expect((await photos(A)).some((p) => p.sha256 === ids.shaB)).toBe(false);
  const view = (await call({ url: `/api/sessions/${A}/runs/${ids.runA}`, headers: AUTH })).json<{ samples: Array<{ step: number; index: number }> }>();
  const sample = view.samples[0];
  ids.sampleA = sample ? `${sample.step}/${sample.index}.png` : '';
  const job = await call({ method: 'POST', url: `/api/sessions/${A}/captions`, headers: AUTH, payload: { captioner: 'offline', dryRun: true } });
  ids.jobA = job.json<{ id: string }>().id;
  await app.booth.jobs.idle();
  await app.booth.webhooks.idle();
  expect(Object.values(ids).every((v) => v !== '')).toBe(true);
  base = await app.listen({ host: '127.0.0.1', port: 0 });
}, 150_000);

afterAll(async () => {
  await close?.();
  await new Promise((r) => stub?.close(r));
  console.log(
    `[reliability] security: ${counts.routes} routes (${counts.publicRoutes} public); unauthenticated requests refused 401: ${counts.unauth}/${counts.unauth}; ` +
      `signed-URL abuses refused: ${counts.signed}; crafted-id requests rejected 4xx: ${counts.crafted} (0 leaks, other session unchanged); ` +
      `secret scans: ${counts.scanned} texts (${logLines.length} log lines, ${responses.length} responses, ${counts.cli} CLI runs), 0 secrets found`,
  );
});

/** Fills a route pattern with real ids of session A. */
function concrete(url: string): string {
  return url
    .replace(':name', A)
    .replace(':sha256', ids.shaA)
    .replace(':run', ids.runA)
    .replace(':export', 'alpha-exp')
    .replace(':step/:file', ids.sampleA)
    .replace(':id', ids.jobA)
    .replace(/\*$/, 'index.html');
}

/** A body the handler would accept with the token. */
async function bodyFor(method: string, url: string): Promise<{ payload?: unknown; headers?: Record<string, string> }> {
  const key = `${method} ${url}`;
  const bodies: Record<string, unknown> = {
    'POST /api/sessions': { name: 'sec-new', trigger: 'zwx', classNoun: 'cat' },
    'PATCH /api/sessions/:name': { trigger: 'qwx' },
    'POST /api/sessions/:name/runs': { set: SMALL },
    'POST /api/sessions/:name/runs/estimate': { set: SMALL },
    'POST /api/sessions/:name/runs/:run/extend': { steps: 40 },
    'PUT /api/webhooks': { url: `${stubUrl}/hook`, secret: SECRETS.webhook },
    'PUT /api/sessions/:name/webhooks': { url: `${stubUrl}/hook`, secret: SECRETS.webhook },
    'POST /api/sessions/:name/exports': { name: 'unauth-exp' },
    'POST /api/sessions/:name/prepare': {},
    'POST /api/sessions/:name/captions': { captioner: 'offline' },
    'PATCH /api/sessions/:name/photos/:sha256': { decision: 'exclude' },
    'PUT /api/sessions/:name/photos/:sha256/crop': { x: 0, y: 0, width: 64, height: 64 },
  };
  if (key === 'POST /api/sessions/:name/photos') {
    const m = multipart([{ name: 'new.jpg', data: await noiseImage(320, 240, 9) }]);
    return { payload: m.payload, headers: m.headers };
  }
  return key in bodies ? { payload: bodies[key] } : {};
}

describe('1. every route needs the token', () => {
  it('collects the registered routes, and only the documented allow-list is public', () => {
    const routes = app.booth.routes;
    counts.routes = routes.length;
    const pub = routes.filter((r) => r.public && r.method !== 'HEAD').map((r) => `${r.method} ${r.url}`);
    counts.publicRoutes = pub.length;
    expect(new Set(pub)).toEqual(new Set(PUBLIC_ROUTES));
    expect(routes.filter((r) => r.public).every((r) => !r.url.startsWith('/api'))).toBe(true);
    expect(routes.filter((r) => r.url.startsWith('/api')).length).toBeGreaterThan(35);
    // Signed URLs only for reads a browser opens without a header.
    expect(routes.filter((r) => r.signable).every((r) => r.method === 'GET' || r.method === 'HEAD')).toBe(true);
  });

  it('the ids are real: with the token, every GET route of the API succeeds', async () => {
    for (const r of app.booth.routes.filter((x) => x.method === 'GET' && x.url.startsWith('/api'))) {
      const res = await call({ url: concrete(r.url), headers: AUTH });
      expect([200, 206], `${r.url}: ${res.body.slice(0, 200)}`).toContain(res.statusCode);
    }
  });

  it('refuses every API route with every kind of missing or wrong credential, leaks nothing and changes nothing', async () => {
    const b64 = (s: string) => Buffer.from(s).toString('base64');
    const variants: Array<[string, Record<string, string>, string?]> = [
      ['no credential', {}],
      ['a wrong token of the same length', { authorization: `Bearer ${'x'.repeat(TOKEN.length)}` }],
      ['the token minus its last character', { authorization: `Bearer ${TOKEN.slice(0, -1)}` }],
      ['the token plus one character', { authorization: `Bearer ${TOKEN}0` }],
      ['the token upper-cased', { authorization: `Bearer ${TOKEN.toUpperCase()}` }],
      ['a very long token', { authorization: `Bearer ${TOKEN.repeat(200)}` }],
      ['Bearer with an empty token', { authorization: 'Bearer ' }],
      ['Bearer alone', { authorization: 'Bearer' }],
      ['the token without a scheme', { authorization: TOKEN }],
      ['two tokens', { authorization: `Bearer ${TOKEN} ${TOKEN}` }],
      ['Basic with the token as password', { authorization: `Basic ${b64(`booth:${TOKEN}`)}` }],
      ['Basic with the token as user', { authorization: `Basic ${b64(`${TOKEN}:`)}` }],
      ['the token in a cookie', { cookie: `token=${TOKEN}; booth.token=${TOKEN}` }],
      ['the token as X-Api-Key', { 'x-api-key': TOKEN }],
      ['the token in the query string', {}, `token=${TOKEN}&access_token=${TOKEN}`],
    ];
    const api = app.booth.routes.filter((r) => !r.public);
    expect(api.length).toBeGreaterThan(35);
    const before = await snapshot('');
    const leaks = [...dataOf('A'), ...dataOf('B'), TOKEN, SECRETS.webhook];
    for (const r of api) {
      const url = concrete(r.url);
      const body = await bodyFor(r.method, r.url);
      for (const [what, headers, query] of variants) {
        const res = await call({ method: r.method as 'GET', url: query ? `${url}${url.includes('?') ? '&' : '?'}${query}` : url, headers: { ...body.headers, ...headers }, ...(body.payload !== undefined ? { payload: body.payload as string } : {}) });
        counts.unauth++;
        expect(res.statusCode, `${r.method} ${r.url} with ${what}: ${res.body.slice(0, 200)}`).toBe(401);
        if (r.method !== 'HEAD') {
          expect(res.json<{ error: { code: string } }>().error.code).toBe('UNAUTHORIZED');
          for (const s of leaks) expect(res.body, `${r.method} ${r.url} with ${what}`).not.toContain(s);
        }
        expect(res.headers['www-authenticate']).toBe('Bearer realm="booth"');
      }
    }
    await app.booth.jobs.idle();
    expect(await snapshot('')).toEqual(before);
    expect(app.booth.jobs.ofSession(A).length).toBe(1); // only the dry-run caption job of the set-up
  });

  it('the public routes serve no session data', async () => {
    const leaks = [...dataOf('A'), ...dataOf('B'), TOKEN, SECRETS.webhook, 'zwx'];
    for (const r of app.booth.routes.filter((x) => x.public)) {
      const res = await call({ method: r.method as 'GET', url: concrete(r.url) });
      expect(res.statusCode, `${r.method} ${r.url}`).toBeLessThan(500);
      for (const s of leaks) expect(res.body, `${r.method} ${r.url}`).not.toContain(s);
    }
    expect((await call({ url: '/health' })).json()).toEqual({ ok: true, store: 'fs' });
  });
});

describe('1b. signed URLs open one path, one query, one method, until expiry, under one token', () => {
  it('refuses a signature on another path, with another query, after expiry, with a tampered expiry, or under another token', async () => {
    const photo = (await call({ url: `/api/sessions/${A}/photos/${ids.shaA}`, headers: AUTH })).json<{ urls: { preview: string; original: string; crop: string } }>();
    const signedQuery = (u: string) => u.slice(u.indexOf('?'));
    const sigOf = (u: string) => new URLSearchParams(signedQuery(u)).get('sig') ?? '';
    const expOf = (u: string) => new URLSearchParams(signedQuery(u)).get('exp') ?? '';
    // Positive controls: each signed URL opens its own image without the header.
    for (const u of Object.values(photo.urls)) expect((await call({ url: u })).statusCode, u).toBe(200);
    expect((await call({ method: 'HEAD', url: photo.urls.original })).statusCode).toBe(200);

    const base = `/api/sessions/${A}/photos/${ids.shaA}`;
    const q = signedQuery(photo.urls.preview);
    const crop = new URL(photo.urls.crop, 'http://x');
    const cropPath = crop.pathname;
    const exp = expOf(photo.urls.preview);
    const sig = sigOf(photo.urls.preview);
    const abuses: Array<[string, Inject]> = [
      ['the original with the preview signature', { url: `${base}/original${q}` }],
      ['the crop with the preview signature', { url: `${cropPath}${q}` }],
      ['another session with the same signature', { url: `/api/sessions/${B}/photos/${ids.shaB}/preview${q}` }],
      ['dot segments resolving to the signed path', { url: `${base}/original/../preview${q}` }],
      ['encoded dot segments', { url: `${base}/original/%2e%2e/preview${q}` }],
      ['the crop with its cache-buster changed', { url: `${cropPath}?v=other&exp=${expOf(photo.urls.crop)}&sig=${sigOf(photo.urls.crop)}` }],
      ['the crop without its cache-buster', { url: `${cropPath}?exp=${expOf(photo.urls.crop)}&sig=${sigOf(photo.urls.crop)}` }],
      ['an extra query parameter', { url: `${base}/preview?attempt=2&exp=${exp}&sig=${sig}` }],
      ['a later expiry with the same signature', { url: `${base}/preview?exp=${Number(exp) + 3600}&sig=${sig}` }],
      ['a repeated sig parameter', { url: `${base}/preview?exp=${exp}&sig=x&sig=${sig}` }],
      ['a truncated signature', { url: `${base}/preview?exp=${exp}&sig=${sig.slice(0, -1)}` }],
      ['an expired signature', { url: createUrlSigner(TOKEN, () => Date.now() - (SIGNED_URL_TTL_S + 60) * 1000).sign(`${base}/preview`) }],
      ['a signature under another token', { url: createUrlSigner(`${TOKEN}-rotated`).sign(`${base}/preview`) }],
      ['a signature of a non-signable route', { url: app.booth.signer.sign(`/api/sessions/${A}`) }],
      ['a signature of the photo list', { url: app.booth.signer.sign(`/api/sessions/${A}/photos`) }],
      ['a signed DELETE', { method: 'DELETE', url: app.booth.signer.sign(base) }],
      ['a signed POST to a signable path', { method: 'POST', url: app.booth.signer.sign(`${base}/preview`) }],
      ['a signed run stop', { method: 'POST', url: app.booth.signer.sign(`/api/sessions/${A}/runs/${ids.runA}/stop`) }],
      ['the export download with a photo signature', { url: `/api/sessions/${A}/exports/alpha-exp/download${q}` }],
      ['the run log with a sample signature', { url: `/api/sessions/${A}/runs/${ids.runA}/logs${signedQuery(app.booth.signer.sign(`/api/sessions/${A}/runs/${ids.runA}/samples/${ids.sampleA}`))}` }],
    ];
    const before = await snapshot('');
    for (const [what, opts] of abuses) {
      const url = String(opts.url);
      for (const res of [...(normalises(url) ? [] : [await call(opts)]), await viaHttp({ method: opts.method ?? 'GET', url })]) {
        counts.signed++;
        // 403: the static handler's answer to a path with `..` in it.
        expect([401, 403, 404], `${what}: ${res.statusCode} ${res.body.slice(0, 160)}`).toContain(res.statusCode);
        expect(String(res.headers['content-type'] ?? ''), what).not.toMatch(/image|octet-stream|event-stream/);
      }
    }
    expect(await snapshot('')).toEqual(before);
  });
});

describe('2. token and signature comparison', () => {
  it('refuses every prefix, every single-character change and every other length of the token', () => {
    expect(tokenMatches(TOKEN, TOKEN)).toBe(true);
    let refused = 0;
    for (let i = 0; i <= TOKEN.length + 8; i++) {
      const prefix = TOKEN.slice(0, i);
      if (i < TOKEN.length) {
        expect(tokenMatches(prefix, TOKEN), `prefix ${i}`).toBe(false);
        refused++;
      }
      if (i > TOKEN.length) {
        expect(tokenMatches(TOKEN.padEnd(i, 'x'), TOKEN), `padded to ${i}`).toBe(false);
        expect(tokenMatches(`${'x'.repeat(i - TOKEN.length)}${TOKEN}`, TOKEN), `prefixed to ${i}`).toBe(false);
        refused += 2;
      }
      if (i < TOKEN.length) {
        const flipped = `${prefix}${TOKEN[i] === 'z' ? 'y' : 'z'}${TOKEN.slice(i + 1)}`;
        expect(tokenMatches(flipped, TOKEN), `changed at ${i}`).toBe(false);
        refused++;
      }
    }
    expect(tokenMatches('', TOKEN)).toBe(false);
    expect(tokenMatches(`${TOKEN}\0`, TOKEN)).toBe(false);
    expect(refused).toBeGreaterThan(2 * TOKEN.length);
    expect(bearerToken(`Bearer ${TOKEN}`)).toBe(TOKEN);
    expect(bearerToken(`bearer  ${TOKEN} `)).toBe(TOKEN);
    for (const h of [undefined, '', 'Bearer', 'Bearer ', `Basic ${TOKEN}`, `Bearer ${TOKEN} x`, `Token ${TOKEN}`, TOKEN]) expect(bearerToken(h), String(h)).toBeNull();
  });

  it('refuses every prefix and every single-character change of a URL signature', () => {
    const now = Date.now();
    const signer = createUrlSigner(TOKEN, () => now);
    const url = signer.sign('/api/sessions/x/photos/y/preview?v=1');
    const q = new URLSearchParams(url.slice(url.indexOf('?')));
    const sig = q.get('sig') ?? '';
    const exp = q.get('exp') ?? '';
    expect(signer.verify('/api/sessions/x/photos/y/preview?v=1', sig, exp)).toBe(true);
    for (let i = 0; i < sig.length; i++) {
      expect(signer.verify('/api/sessions/x/photos/y/preview?v=1', sig.slice(0, i), exp)).toBe(false);
      expect(signer.verify('/api/sessions/x/photos/y/preview?v=1', `${sig.slice(0, i)}${sig[i] === 'A' ? 'B' : 'A'}${sig.slice(i + 1)}`, exp)).toBe(false);
    }
    expect(signer.verify('/api/sessions/x/photos/y/preview?v=1', `${sig}A`, exp)).toBe(false);
    expect(signer.verify('/api/sessions/x/photos/y/preview?v=2', sig, exp)).toBe(false);
    expect(createUrlSigner(null).verify('/api/x', sig, exp)).toBe(false);
    // The signature covers the path as sent: no dot-segment resolution, one sig and one exp only.
    expect(signedPathOf(`/api/a/x/../b?v=1&exp=${exp}&sig=${sig}`)).toEqual({ path: '/api/a/x/../b?v=1', sig, exp });
    expect(signedPathOf(`/api/a/%2e%2e/b?exp=${exp}&sig=${sig}`).path).toBe('/api/a/%2e%2e/b');
    expect(signedPathOf(`/api/b?exp=${exp}&sig=${sig}&sig=${sig}`).sig).toBeUndefined();
  });

  it('compares no secret with === or !== anywhere in src', async () => {
    // Equality on a secret stops at the first differing character; the auth code hashes and uses
    // timingSafeEqual instead. Comparisons with null/undefined/'' (presence checks) are fine.
    const secretName = String.raw`[\w.]*(?:token|secret|signature|sig|apiKey|password|hmac|mac|digest)\b[\w.]*`;
    const literal = String.raw`(?:null|undefined|true|false|\d+|'[^']*'|"[^"]*")`;
    const left = new RegExp(String.raw`\b${secretName}\s*[!=]==?(?!=)(?!\s*${literal})`, 'gi');
    const right = new RegExp(String.raw`(?<!${literal}\s*)[!=]==?\s*${secretName}`, 'gi');
    // Lock ownership tokens of the job registry are random per lock and never leave the process.
    const allowed = [/src\/server\/jobs\.ts: .*this\.busy\.get\(session\) === token/];
    const files: string[] = [];
    const walk = async (d: string): Promise<void> => {
      for (const e of await readdir(d, { withFileTypes: true })) {
        if (e.isDirectory()) await walk(path.join(d, e.name));
        else if (/\.(ts|js)$/.test(e.name)) files.push(path.join(d, e.name));
      }
    };
    await walk(path.join(ROOT, 'src'));
    const hits: string[] = [];
    for (const f of files) {
      const lines = (await readFile(f, 'utf8')).split('\n');
      lines.forEach((line, i) => {
        if (/^\s*(\*|\/\/)/.test(line)) return;
        if (left.test(line) || right.test(line)) {
          const hit = `${path.relative(ROOT, f)}: ${line.trim()}`;
          if (!allowed.some((a) => a.test(hit))) hits.push(`${hit} (line ${i + 1})`);
        }
        left.lastIndex = 0;
        right.lastIndex = 0;
      });
    }
    expect(files.length).toBeGreaterThan(50);
    expect(hits).toEqual([]);
  });
});

describe('3. crafted ids never reach another session', () => {
  it('answers 400/404 to traversal, encodings, NUL, look-alikes and foreign ids, without B data, and B is unchanged', async () => {
    const before = await snapshot(`sessions/${B}/`);
    const bData = [...dataOf('B').filter((s) => s !== B), 'bravo-only.jpg', 'weights of sec-bravo'];
    const names = [
      '..', '.', '%2e%2e', '%2E%2E', '.%2e', `..%2F${B}`, `%2e%2e%2f${B}`, `${A}%2F..%2F${B}`, `..%5C${B}`, `${A}%5C..%5C${B}`,
      `%252e%252e%252f${B}`, `${B}%00`, `${A}%00${B}`, '%00', `http:%2F%2Fevil.example%2F${B}`, `https%3A%2F%2Fevil.example%2F${B}`,
      encodeURIComponent('ｓｅｃ-ｂｒａｖｏ'), encodeURIComponent('sec-brаvo'), `${B}%20`, `%20${B}`, `~${B}`, `${B}%2F`, `${B}%23x`, `%2F${B}`,
      encodeURIComponent('ѕес-bravo'), `${B}%E2%80%8B`, `${B.replace('-', '%E2%80%90')}`,
    ];
    const templates: Array<[string, string, unknown?]> = [
      ['GET', '/api/sessions/{n}'],
      ['GET', '/api/sessions/{n}/photos'],
      ['GET', `/api/sessions/{n}/photos/${ids.shaB}/original`],
      ['PATCH', `/api/sessions/{n}/photos/${ids.shaB}`, { decision: 'exclude' }],
      ['DELETE', `/api/sessions/{n}/photos/${ids.shaB}`],
      ['DELETE', '/api/sessions/{n}?confirm={n}'],
      ['PATCH', '/api/sessions/{n}', { trigger: 'pwned' }],
      ['GET', `/api/sessions/{n}/runs/${ids.runB}`],
      ['GET', `/api/sessions/{n}/runs/${ids.runB}/logs`],
      ['POST', `/api/sessions/{n}/runs/${ids.runB}/resume`],
      ['GET', '/api/sessions/{n}/exports/bravo-exp/download'],
      ['PUT', '/api/sessions/{n}/webhooks', { url: `${stubUrl}/hook` }],
    ];
    const tried: Array<[string, string, unknown?]> = [];
    for (const n of names) for (const [m, t, body] of templates) tried.push([m, t.replaceAll('{n}', n), body]);
    // Valid session A with B's ids, and ids crafted in the other segments.
    const foreign: Array<[string, string, unknown?]> = [
      ['GET', `/api/sessions/${A}/photos/${ids.shaB}`],
      ['GET', `/api/sessions/${A}/photos/${ids.shaB}/preview`],
      ['GET', `/api/sessions/${A}/photos/${ids.shaB}/original`],
      ['GET', `/api/sessions/${A}/photos/${ids.shaB}/crop`],
      ['PATCH', `/api/sessions/${A}/photos/${ids.shaB}`, { decision: 'exclude' }],
      ['DELETE', `/api/sessions/${A}/photos/${ids.shaB}`],
      ['PUT', `/api/sessions/${A}/photos/${ids.shaB}/crop`, { x: 0, y: 0, width: 64, height: 64 }],
      ['DELETE', `/api/sessions/${A}/photos/${ids.shaB}/crop`],
      ['GET', `/api/sessions/${A}/runs/${ids.runB}`],
      ['GET', `/api/sessions/${A}/runs/${ids.runB}/logs`],
      ['GET', `/api/sessions/${A}/runs/${ids.runB}/events`],
      ['GET', `/api/sessions/${A}/runs/${ids.runB}/samples/${ids.sampleA}`],
      ['POST', `/api/sessions/${A}/runs/${ids.runB}/stop`],
      ['POST', `/api/sessions/${A}/runs/${ids.runB}/resume`],
      ['POST', `/api/sessions/${A}/runs/${ids.runB}/extend`, { steps: 50 }],
      ['GET', `/api/sessions/${A}/exports/bravo-exp`],
      ['GET', `/api/sessions/${A}/exports/bravo-exp/download`],
      ['GET', `/api/sessions/${A}/photos/${ids.shaA.toUpperCase()}`],
      ['GET', `/api/sessions/${A}/photos/..%2F..%2F${B}%2Fsession.json`],
      ['GET', `/api/sessions/${A}/photos/${ids.shaA}%00/original`],
      ['GET', `/api/sessions/${A}/runs/..%2F..%2F${B}%2Fruns%2F${ids.runB}`],
      ['GET', `/api/sessions/${A}/runs/${ids.runA}/samples/..%2F..%2F..%2F..%2F${B}/0.png`],
      ['GET', `/api/sessions/${A}/runs/${ids.runA}/samples/1/..%2F..%2F..%2F${ids.runB}%2Fstatus.json`],
      ['GET', `/api/sessions/${A}/exports/..%2F..%2F${B}%2Fexports%2Fbravo-exp/download`],
      ['GET', `/api/sessions/${A}/exports/%2e%2e/download`],
      ['GET', `/api/sessions/${A}/exports/bravo-exp%00/download`],
      ['GET', `/api/sessions/${A}/runs/${ids.runA}/logs?attempt=-1`],
      ['GET', `/api/sessions/${A}/runs/${ids.runA}/logs?attempt=..%2F..%2F${B}`],
      ['GET', `/api/jobs/..%2F${B}`],
      ['GET', `/api/sessions/${A}/../${B}`],
      ['GET', `/api/sessions/${A}/..%2F${B}`],
      ['GET', `/api/sessions/${A}\\..\\${B}`],
      ['GET', `/api/sessions/${A}/photos/${ids.shaB}/preview?sig=&exp=`],
      ['POST', `/api/sessions/${A}/exports`, { run: ids.runB, name: `..%2F${B}` }],
      ['POST', `/api/sessions/${A}/exports`, { run: ids.runA, name: '../sec-bravo/exports/x' }],
      ['POST', `/api/sessions/${A}/runs/estimate`, { set: [...SMALL, 'data.instanceDir=../../../../etc'] }],
      ['POST', `/api/sessions/${A}/runs/estimate`, { set: [...SMALL, 'prior.classDir=/etc'] }],
      ['POST', `/api/sessions/${A}/runs/estimate`, { set: [...SMALL, 'prior.classDir=dataset'] }],
      ['POST', `/api/sessions/${A}/runs/estimate`, { set: [...SMALL, 'data.instanceDir=logs'] }],
      ['POST', `/api/sessions/${A}/runs`, { set: [...SMALL, `data.instanceDir=..\\..\\${B}`] }],
      ['POST', `/api/sessions/${A}/captions`, { captioner: 'offline', style: '../../../../etc/passwd' }],
      ['PUT', `/api/sessions/${A}/webhooks`, { url: 'file:///etc/passwd' }],
      ['PUT', `/api/sessions/${A}/webhooks`, { url: `http://user:${SECRETS.s3url}@127.0.0.1/hook` }],
      ['PUT', '/api/webhooks', { url: 'ftp://127.0.0.1/x' }],
    ];
    for (const [method, url, payload] of [...tried, ...foreign]) {
      const sent = `${url} ${JSON.stringify(payload ?? null)}`;
      const injected = normalises(url) ? [] : [await call({ method: method as 'GET', url, headers: AUTH, ...(payload !== undefined ? { payload: payload as string } : {}) })];
      for (const res of [...injected, await viaHttp({ method, url, headers: AUTH, payload })]) {
        counts.crafted++;
        // 403: the static handler's answer to a raw path with `..` in it (it never reaches the API).
        expect([400, 403, 404], `${method} ${url}: ${res.statusCode} ${res.body.slice(0, 200)}`).toContain(res.statusCode);
        // Only what the request itself named may come back (an id echoed in "no such photo").
        for (const s of bData) if (!sent.includes(s)) expect(res.body, `${method} ${url}`).not.toContain(s);
        expect(res.body).not.toMatch(/root:x:0:0/);
      }
    }
    // A run of B named in A's export: accepted as a job, which then fails without touching B.
    const job = await call({ method: 'POST', url: `/api/sessions/${A}/exports`, headers: AUTH, payload: { run: ids.runB } });
    expect(job.statusCode).toBe(202);
    await app.booth.jobs.idle();
    const done = (await call({ url: `/api/jobs/${job.json<{ id: string }>().id}`, headers: AUTH })).json<{ state: string; error: { code: string } | null }>();
    expect(done.state).toBe('failed');
    expect(done.error?.code).toBe('NOT_FOUND');
    // A spec or an override naming session B: refused, or trained as A's (session and run come from the path).
    const est = await call({ method: 'POST', url: `/api/sessions/${A}/runs/estimate`, headers: AUTH, payload: { set: [...SMALL, `session=${B}`, 'run=../x'] } });
    expect(est.statusCode, est.body).toBe(400);
    expect(est.json<{ error: { message: string } }>().error.message).toMatch(/cannot be set/);
    const whole = await call({ method: 'POST', url: `/api/sessions/${A}/runs/estimate`, headers: AUTH, payload: { set: SMALL } });
    const spec = { ...whole.json<{ spec: Record<string, unknown> }>().spec, session: B, run: '../x' };
    const viaSpec = await call({ method: 'POST', url: `/api/sessions/${A}/runs/estimate`, headers: AUTH, payload: { spec } });
    expect(viaSpec.statusCode, viaSpec.body).toBe(200);
    expect(viaSpec.json<{ spec: { session: string; run: string } }>().spec).toMatchObject({ session: A, run: 'dry-run' });
    // A base model path is a path on the GPU host, recorded, never read by the server.
    const model = await call({ method: 'POST', url: `/api/sessions/${A}/runs/estimate`, headers: AUTH, payload: { set: SMALL, baseModel: '/etc/passwd' } });
    expect(model.body).not.toMatch(/root:x:0:0/);
    // Upload file names are display names, never paths.
    const up = multipart([{ name: `../../${B}/session.json`, data: await noiseImage(320, 240, 77) }, { name: '..\\..\\x.jpg', data: await noiseImage(320, 240, 78) }]);
    const added = await call({ method: 'POST', url: `/api/sessions/${A}/photos`, headers: { ...AUTH, ...up.headers }, payload: up.payload });
    expect(added.statusCode, added.body).toBeLessThan(300);
    const results = added.json<{ results: Array<{ name: string }> }>().results;
    expect(results.map((r) => r.name).every((n) => !n.includes('/') && !n.startsWith('.'))).toBe(true);
    expect(await snapshot(`sessions/${B}/`)).toEqual(before);
    expect((await call({ url: `/api/sessions/${B}`, headers: AUTH })).json<{ subject: { trigger: string } }>().subject.trigger).toBe('zwx');
  });
});

describe('4. secrets stay out of logs, errors, CLI output and stored records', () => {
  it('a failing S3 store with credentials: the error response and its log carry no credential', async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    const lines: string[] = [];
    const logger = pino({ level: 'debug' }, new Writable({ write: (c: Buffer, _e, cb) => (lines.push(c.toString()), cb()) }));
    const s3 = await createS3Store({ bucket: 'booth', endpoint: `http://127.0.0.1:${port}`, credentials: { accessKeyId: 'AKIAPLANT', secretAccessKey: SECRETS.aws }, logger });
    const s3app = await buildApp({ store: s3, token: TOKEN, logger, scanRuns: false, ui: false });
    try {
      const r = await call({ url: '/api/sessions', headers: AUTH }, s3app);
      expect(r.statusCode).toBe(502);
      expect(r.json<{ error: { code: string } }>().error.code).toBe('STORAGE');
      const r2 = await call({ url: `/api/sessions/${A}/photos/${ids.shaA}/preview?exp=1&sig=${'a'.repeat(43)}`, headers: AUTH }, s3app);
      expect(r2.statusCode).toBeGreaterThanOrEqual(400);
    } finally {
      await s3app.close();
      await s3.close();
    }
    expect(lines.some((l) => /request failed|STORAGE/.test(l))).toBe(true);
    for (const l of lines) expectNoSecret(l, 's3 app log');
    logLines.push(...lines);
  });

  it('a failing captioning service: the key reaches the service only, never the job error or the log', async () => {
    const job = await call({ method: 'POST', url: `/api/sessions/${A}/captions`, headers: AUTH, payload: { captioner: 'openai', force: true } });
    expect(job.statusCode, job.body).toBe(202);
    await app.booth.jobs.idle();
    const done = await call({ url: `/api/jobs/${job.json<{ id: string }>().id}`, headers: AUTH });
    expect(done.json<{ state: string }>().state).toBe('failed');
    expect(stubSeen.some((s) => s.url.startsWith('/v1') && s.authorization === `Bearer ${SECRETS.openai}`)).toBe(true);
  });

  it('the webhook secret is in no listing, delivery record or log; the failing deliveries were logged', async () => {
    await until(async () => {
      await app.booth.webhooks.idle();
      const d = (await call({ url: `/api/sessions/${A}/webhooks/deliveries`, headers: AUTH })).json<{ deliveries: Array<{ state: string }> }>().deliveries;
      return d.length > 0 && d.every((x) => x.state === 'failed') ? true : undefined;
    }, 'failed webhook deliveries');
    const listing = await call({ url: `/api/sessions/${A}/webhooks`, headers: AUTH });
    expect(listing.json()).toMatchObject({ webhook: { secretSet: true } });
    expect(stubSeen.some((s) => s.url.startsWith('/hook'))).toBe(true);
    expect(logLines.some((l) => l.includes('webhook delivery failed'))).toBe(true);
    for (const key of ['deliveries', 'webhooks']) {
      for await (const o of listAll(store, `sessions/${A}/${key === 'deliveries' ? 'webhooks/deliveries/' : 'webhooks'}`)) {
        if (o.key.endsWith('/webhooks.json')) continue; // the configuration itself must keep the secret to sign with
        expectNoSecret((await readAll(store, o.key)).toString(), o.key);
      }
    }
  });

  it('run logs and status.json hold none of the environment secrets the worker inherited', async () => {
    let n = 0;
    for (const name of [A, B]) {
      for await (const o of listAll(store, `sessions/${name}/runs/`)) {
        if (!/\.(json|log|txt|jsonl)$/.test(o.key)) continue;
        expectNoSecret((await readAll(store, o.key)).toString(), o.key);
        n++;
      }
    }
    expect(n).toBeGreaterThan(4);
  });

  it('the booth CLI prints no credential when the store setting or S3 fails', async () => {
    const closedEndpoint = 'http://127.0.0.1:9';
    const cases: Array<[string[], Record<string, string>]> = [
      [['--store', `s3://AKIAPLANT:${SECRETS.s3url}@bucket/prefix`, 'session', 'list', '--json'], {}],
      [['--store', 's3://bucket/prefix', 'session', 'list', '--json'], { BOOTH_S3_ENDPOINT: `http://AKIAPLANT:${SECRETS.s3url}@127.0.0.1:9` }],
      [['--store', 's3://bucket/prefix', '--log-level', 'debug', 'session', 'list', '--json'], { BOOTH_S3_ENDPOINT: closedEndpoint, AWS_ACCESS_KEY_ID: 'AKIAPLANT', AWS_SECRET_ACCESS_KEY: SECRETS.aws, OPENAI_API_KEY: SECRETS.openai, AWS_MAX_ATTEMPTS: '1' }],
      [['--store', `${dir}/cli-store`, 'serve', '--host', '0.0.0.0', '--token', SECRETS.shortToken], {}],
      [['--store', `ftp://u:${SECRETS.s3url}@host/x`, 'session', 'list', '--json'], {}],
    ];
    const results = await Promise.all(cases.map(([args, env]) => runCli(args, env)));
    for (const [i, [args]] of cases.entries()) {
      const r = results[i]!;
      counts.cli++;
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).not.toBe(0);
      expect(r.stderr.length + r.stdout.length).toBeGreaterThan(0);
      expectNoSecret(r.stdout, `stdout of booth ${args.join(' ')}`);
      expectNoSecret(r.stderr, `stderr of booth ${args.join(' ')}`);
    }
  });

  it('no log line and no response body holds the token, a signature, a webhook secret or a key', async () => {
    expect(signatures.size).toBeGreaterThan(3);
    expect(logLines.length).toBeGreaterThan(100);
    // The signed requests were logged, with their signature masked.
    expect(logLines.some((l) => l.includes('sig=[redacted]'))).toBe(true);
    for (const l of logLines) expectNoSecret(l, 'log line', signatures);
    for (const r of responses) expectNoSecret(r, 'response body');
    expect(redactUrl(`s3://AKIA:${SECRETS.aws}@b/p`)).not.toContain(SECRETS.aws);
  });
});

describe('5. the web surface', () => {
  it('serves the UI with security headers and the API without CORS', async () => {
    for (const url of ['/', '/index.html', '/app.js', '/style.css']) {
      const r = await call({ url });
      expect(r.statusCode, url).toBe(200);
      expect(r.headers['content-security-policy'], url).toMatch(/default-src 'self'.*frame-ancestors 'none'/);
      expect(r.headers['x-content-type-options']).toBe('nosniff');
      expect(r.headers['referrer-policy']).toBe('no-referrer');
    }
    const cross = await call({ url: '/api/sessions', headers: { ...AUTH, origin: 'https://evil.example' } });
    expect(cross.statusCode).toBe(200);
    expect(cross.headers['access-control-allow-origin']).toBeUndefined();
    const preflight = await call({ method: 'OPTIONS', url: '/api/sessions', headers: { origin: 'https://evil.example', 'access-control-request-method': 'DELETE', 'access-control-request-headers': 'authorization' } });
    expect(preflight.statusCode).toBeGreaterThanOrEqual(400);
    expect(preflight.headers['access-control-allow-origin']).toBeUndefined();
    expect(preflight.headers['access-control-allow-headers']).toBeUndefined();
  });

  it('serves no file outside the UI folder, however the path is written', async () => {
    const pkg = await readFile(path.join(ROOT, 'package.json'), 'utf8');
    const paths = [
      '/../package.json', '/../../package.json', '/ui/../../package.json', '/ui/../../../package.json', '/%2e%2e/%2e%2e/package.json', '/%2e%2e%2f%2e%2e%2fpackage.json',
      '/..%2f..%2f..%2fpackage.json', '/%252e%252e/%252e%252e/package.json', '/..%5c..%5c..%5cpackage.json', '/..\\..\\..\\package.json', '/%c0%ae%c0%ae/%c0%ae%c0%ae/package.json',
      '/index.html%00../../../package.json', '/....//....//package.json', '/docs/static/../../../../package.json', '/docs/static/%2e%2e%2f%2e%2e%2f%2e%2e%2fpackage.json',
      '//etc/passwd', '/%2fetc%2fpasswd', '/file:%2f%2f%2fetc%2fpasswd', '/../../../../../../etc/passwd', '/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd',
      `/../../../../../..${dir}/store/sessions/${B}/session.json`,
    ];
    for (const url of paths) {
      for (const r of [...(normalises(url) ? [] : [await call({ url })]), await viaHttp({ url })]) {
        expect(r.statusCode, `${url}: ${r.statusCode}`).toBeGreaterThanOrEqual(400);
        expect(r.body).not.toContain('"devDependencies"');
        expect(r.body).not.toContain(pkg.slice(0, 40));
        expect(r.body).not.toMatch(/root:x:0:0|"trigger"/);
      }
    }
  });

  it('refuses to bind a non-loopback address without a proper token', () => {
    for (const host of ['0.0.0.0', '::', '192.168.1.10', 'example.com', '127.0.0.1.nip.io', 'localhost.evil.example', '[::ffff:127.0.0.1]']) {
      expect(() => assertSafeBinding(host, null), host).toThrow(/token is required/);
      expect(() => assertSafeBinding(host, 'short-token'), host).toThrow(/at least 16/);
      expect(() => assertSafeBinding(host, TOKEN)).not.toThrow();
    }
    for (const host of ['127.0.0.1', '127.8.9.10', 'localhost', '::1', '[::1]']) {
      expect(isLoopback(host), host).toBe(true);
      expect(() => assertSafeBinding(host, null)).not.toThrow();
    }
  });
});
