/**
 * Sessions, photos, prepare, review, captions and crops through the REST API, in-process
 * (`app.inject`): auth refusals, the one error shape, validation messages naming the field,
 * multipart uploads with per-file results, background prepare with progress, signed image URLs,
 * hand captions, include/exclude, a hand-set crop re-rendered from the original and kept by the
 * next prepare, photo and session deletion with confirmation.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { noiseImage } from '../helpers/images.js';
import { AUTH, multipart, testApp, until } from './helpers.js';

let app: FastifyInstance;
let close: () => Promise<void>;

beforeAll(async () => {
  ({ app, close } = await testApp());
});
afterAll(async () => {
  await close();
});

interface Photo {
  sha256: string;
  name: string;
  status: string;
  crop: { x: number; y: number; width: number; height: number } | null;
  cropOverride: unknown;
  caption: string | null;
  captionSource: string | null;
  source: { width: number; height: number };
  urls: { preview: string | null; crop: string | null; original: string | null };
}

async function waitJob(id: string): Promise<{ state: string; result: unknown; error: unknown }> {
  return until(async () => {
    const r = await app.inject({ url: `/api/jobs/${id}`, headers: AUTH });
    const job = r.json<{ state: string; result: unknown; error: unknown }>();
    return job.state === 'running' ? undefined : job;
  }, `job ${id}`);
}

describe('auth and errors', () => {
  it('serves /health without a token and refuses the API without one, with the error shape and a request id', async () => {
    expect((await app.inject({ url: '/health' })).json()).toMatchObject({ ok: true });
    const r = await app.inject({ url: '/api/sessions' });
    expect(r.statusCode).toBe(401);
    expect(r.headers['www-authenticate']).toMatch(/Bearer/);
    const body = r.json<{ error: { code: string; message: string; requestId: string } }>();
    expect(body.error.code).toBe('UNAUTHORIZED');
    expect(body.error.message).toMatch(/Authorization: Bearer/);
    expect(body.error.requestId).toBe(r.headers['x-request-id']);
    const wrong = await app.inject({ url: '/api/sessions', headers: { authorization: 'Bearer nope' } });
    expect(wrong.statusCode).toBe(401);
    expect(wrong.json<{ error: { message: string } }>().error.message).toMatch(/not valid/);
    expect((await app.inject({ url: '/api/sessions', headers: AUTH })).statusCode).toBe(200);
  });

  it('echoes a plain X-Request-Id and answers unknown routes with NOT_FOUND', async () => {
    const r = await app.inject({ url: '/api/nothing-here', headers: { ...AUTH, 'x-request-id': 'trace-12345678' } });
    expect(r.statusCode).toBe(404);
    expect(r.json<{ error: { code: string; requestId: string } }>().error).toMatchObject({ code: 'NOT_FOUND', requestId: 'trace-12345678' });
  });

  it('validates bodies and path ids, naming the field', async () => {
    const bad = await app.inject({ method: 'POST', url: '/api/sessions', headers: AUTH, payload: { name: '../etc', trigger: 'ohwx', classNoun: 'man' } });
    expect(bad.statusCode).toBe(400);
    expect(bad.json<{ error: { code: string; message: string } }>().error).toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(bad.json<{ error: { message: string } }>().error.message).toMatch(/body field "name"/);
    const missing = await app.inject({ method: 'POST', url: '/api/sessions', headers: AUTH, payload: { name: 'x1' } });
    expect(missing.json<{ error: { message: string } }>().error.message).toMatch(/trigger|classNoun/);
    const badId = await app.inject({ url: '/api/sessions/..%2F..%2Fetc/photos', headers: AUTH });
    expect(badId.statusCode).toBe(400);
    const nope = await app.inject({ url: '/api/sessions/nope', headers: AUTH });
    expect(nope.statusCode).toBe(404);
    expect(nope.json<{ error: { message: string } }>().error.message).toMatch(/session "nope" does not exist/);
  });

  it('serves the OpenAPI description at /docs', async () => {
    const r = await app.inject({ url: '/docs/json' });
    expect(r.statusCode).toBe(200);
    const doc = r.json<{ paths: Record<string, unknown> }>();
    expect(Object.keys(doc.paths)).toEqual(expect.arrayContaining(['/api/sessions', '/api/sessions/{name}/photos', '/api/sessions/{name}/runs/{run}/events', '/api/sessions/{name}/exports/{export}/download']));
  });
});

describe('a session from upload to review', () => {
  let photos: Photo[] = [];

  it('creates, lists, refuses a duplicate name', async () => {
    const r = await app.inject({ method: 'POST', url: '/api/sessions', headers: AUTH, payload: { name: 'bag', trigger: 'zwx', classNoun: 'backpack', kind: 'object' } });
    expect(r.statusCode, r.body).toBe(201);
    expect(r.json()).toMatchObject({ name: 'bag', state: 'created', subject: { trigger: 'zwx', classNoun: 'backpack', kind: 'object' }, base: 'sd15' });
    const dup = await app.inject({ method: 'POST', url: '/api/sessions', headers: AUTH, payload: { name: 'bag', trigger: 'zwx', classNoun: 'backpack' } });
    expect(dup.statusCode).toBe(409);
    expect(dup.json<{ error: { code: string } }>().error.code).toBe('ALREADY_EXISTS');
    const list = (await app.inject({ url: '/api/sessions', headers: AUTH })).json<{ sessions: Array<{ name: string }> }>();
    expect(list.sessions.map((s) => s.name)).toContain('bag');
  });

  it('uploads many files in one multipart request with a result per file', async () => {
    const a = await noiseImage(640, 480, 1);
    const b = await noiseImage(600, 600, 2);
    const c = await noiseImage(700, 500, 3);
    const body = multipart([
      { name: 'a.jpg', data: a },
      { name: 'b.jpg', data: b },
      { name: 'c.jpg', data: c },
      { name: 'again.jpg', data: a },
      { name: 'notes.jpg', data: Buffer.from('not an image at all') },
      { name: '../../evil.jpg', data: Buffer.from('x') },
    ]);
    const r = await app.inject({ method: 'POST', url: '/api/sessions/bag/photos', headers: { ...AUTH, ...body.headers }, payload: body.payload });
    expect(r.statusCode, r.body).toBe(201);
    const out = r.json<{ summary: Record<string, number>; results: Array<{ name: string; outcome: string; reason: string | null; sha256: string | null }> }>();
    expect(out.summary).toEqual({ added: 3, duplicate: 1, rejected: 2, skipped: 0 });
    expect(out.results.map((x) => x.outcome)).toEqual(['added', 'added', 'added', 'duplicate', 'rejected', 'rejected']);
    expect(out.results[3]?.reason).toMatch(/same content as "a.jpg"/);
    expect(out.results[5]?.name).toBe('evil.jpg');
    const notMultipart = await app.inject({ method: 'POST', url: '/api/sessions/bag/photos', headers: AUTH, payload: { x: 1 } });
    expect(notMultipart.statusCode).toBe(415);
  });

  it('prepares in the background with progress, then shows the review data with signed image URLs', async () => {
    const r = await app.inject({ method: 'POST', url: '/api/sessions/bag/prepare', headers: AUTH });
    expect(r.statusCode, r.body).toBe(202);
    const job = r.json<{ id: string; kind: string; state: string }>();
    expect(job).toMatchObject({ kind: 'prepare', state: 'running' });
    // A second manifest writer is refused while the job holds the session.
    const busy = await app.inject({ method: 'PATCH', url: '/api/sessions/bag', headers: AUTH, payload: { framing: 'face' } });
    expect([200, 409]).toContain(busy.statusCode);
    const done = await waitJob(job.id);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    expect(done.result).toMatchObject({ counts: { accepted: 3, rejected: 2 } });
    const review = (await app.inject({ url: '/api/sessions/bag/photos', headers: AUTH })).json<{ session: { state: string }; photos: Photo[] }>();
    expect(review.session.state).toBe('prepared');
    photos = review.photos.filter((p) => p.status === 'accepted');
    expect(photos).toHaveLength(3);
    const p = photos[0]!;
    expect(p.crop?.width).toBeGreaterThan(100);
    expect(p.caption).toBe('photo of zwx backpack');
    expect(p.urls.crop).toMatch(/sig=/);
    // The signed URL works without the header; a tampered one does not; the bare path needs the token.
    const img = await app.inject({ url: p.urls.crop! });
    expect(img.statusCode).toBe(200);
    expect(img.headers['content-type']).toBe('image/png');
    expect((await app.inject({ url: p.urls.crop!.replace(/sig=./, 'sig=A') })).statusCode).toBe(401);
    expect((await app.inject({ url: p.urls.crop!.replace(/\?.*/, '') })).statusCode).toBe(401);
    expect((await app.inject({ url: p.urls.preview! })).headers['content-type']).toBe('image/jpeg');
    const jobs = (await app.inject({ url: '/api/sessions/bag/jobs', headers: AUTH })).json<{ jobs: Array<{ id: string }> }>();
    expect(jobs.jobs[0]?.id).toBe(job.id);
  });

  it('sets a hand caption, refuses one without the trigger phrase, and excludes a photo until the next prepare', async () => {
    const p = photos[0]!;
    const ok = await app.inject({ method: 'PATCH', url: `/api/sessions/bag/photos/${p.sha256}`, headers: AUTH, payload: { caption: 'a photo of zwx backpack on a rock' } });
    expect(ok.statusCode, ok.body).toBe(200);
    expect(ok.json()).toMatchObject({ caption: 'a photo of zwx backpack on a rock', captionSource: 'hand', needsPrepare: false });
    const bad = await app.inject({ method: 'PATCH', url: `/api/sessions/bag/photos/${p.sha256}`, headers: AUTH, payload: { caption: 'a red backpack' } });
    expect(bad.statusCode).toBe(400);
    expect(bad.json<{ error: { message: string } }>().error.message).toMatch(/zwx backpack/);
    const ex = await app.inject({ method: 'PATCH', url: `/api/sessions/bag/photos/${photos[2]!.sha256}`, headers: AUTH, payload: { decision: 'exclude' } });
    expect(ex.json()).toMatchObject({ override: 'exclude', needsPrepare: true });
    const back = await app.inject({ method: 'PATCH', url: `/api/sessions/bag/photos/${photos[2]!.sha256}`, headers: AUTH, payload: { decision: 'auto' } });
    expect(back.json()).toMatchObject({ override: null });
  });

  it('re-renders a hand-set crop from the original, and the next prepare keeps it', async () => {
    const p = photos[1]!;
    const before = (await app.inject({ url: p.urls.crop! })).rawPayload;
    const r = await app.inject({ method: 'PUT', url: `/api/sessions/bag/photos/${p.sha256}/crop`, headers: AUTH, payload: { x: 5, y: 7, width: 300, height: 320 } });
    expect(r.statusCode, r.body).toBe(200);
    const after = r.json<Photo>();
    expect(after.crop).toEqual({ x: 5, y: 7, width: 300, height: 300 });
    expect(after.cropOverride).toEqual(after.crop);
    const img = await app.inject({ url: after.urls.crop! });
    expect(Buffer.compare(img.rawPayload, before)).not.toBe(0);
    const outside = await app.inject({ method: 'PUT', url: `/api/sessions/bag/photos/${p.sha256}/crop`, headers: AUTH, payload: { x: 5000, y: 0, width: 300, height: 300 } });
    expect(outside.json<Photo>().crop).toEqual({ x: 300, y: 0, width: 300, height: 300 });
    const tiny = await app.inject({ method: 'PUT', url: `/api/sessions/bag/photos/${p.sha256}/crop`, headers: AUTH, payload: { x: 0, y: 0, width: 2, height: 2 } });
    expect(tiny.statusCode).toBe(400);
    const job = (await app.inject({ method: 'POST', url: '/api/sessions/bag/prepare', headers: AUTH })).json<{ id: string }>();
    expect((await waitJob(job.id)).state).toBe('succeeded');
    const again = (await app.inject({ url: `/api/sessions/bag/photos/${p.sha256}`, headers: AUTH })).json<Photo>();
    expect(again.crop).toEqual({ x: 300, y: 0, width: 300, height: 300 });
    // The hand caption survived the prepare too.
    expect((await app.inject({ url: `/api/sessions/bag/photos/${photos[0]!.sha256}`, headers: AUTH })).json<Photo>().captionSource).toBe('hand');
  });

  it('captions offline as a background job', async () => {
    const r = await app.inject({ method: 'POST', url: '/api/sessions/bag/captions', headers: AUTH, payload: { captioner: 'offline' } });
    expect(r.statusCode, r.body).toBe(202);
    const done = await waitJob(r.json<{ id: string }>().id);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    const noKey = await app.inject({ method: 'POST', url: '/api/sessions/bag/captions', headers: AUTH, payload: { captioner: 'openai' } });
    expect(noKey.statusCode).toBe(400);
    const badStyle = await app.inject({ method: 'POST', url: '/api/sessions/bag/captions', headers: AUTH, payload: { style: '../../etc/passwd' } });
    expect(badStyle.statusCode).toBe(400);
  });

  it('deletes a photo, and a session only with confirmation', async () => {
    const p = photos[2]!;
    const del = await app.inject({ method: 'DELETE', url: `/api/sessions/bag/photos/${p.sha256}`, headers: AUTH });
    expect(del.statusCode, del.body).toBe(200);
    const s = (await app.inject({ url: '/api/sessions/bag', headers: AUTH })).json<{ state: string; photos: { total: number } }>();
    expect(s).toMatchObject({ state: 'created', photos: { total: 4 } });
    expect((await app.inject({ method: 'DELETE', url: `/api/sessions/bag/photos/${p.sha256}`, headers: AUTH })).statusCode).toBe(404);
    const refuse = await app.inject({ method: 'DELETE', url: '/api/sessions/bag', headers: AUTH });
    expect(refuse.statusCode).toBe(400);
    expect(refuse.json<{ error: { message: string } }>().error.message).toMatch(/\?confirm=bag/);
    const ok = await app.inject({ method: 'DELETE', url: '/api/sessions/bag?confirm=bag', headers: AUTH });
    expect(ok.statusCode).toBe(200);
    expect((await app.inject({ url: '/api/sessions/bag', headers: AUTH })).statusCode).toBe(404);
  });
});
