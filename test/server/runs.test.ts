/**
 * Training through the REST API with the protocol-exact stand-in trainer and the local launcher:
 * estimate, validation, launch, status, SSE until the end, reconnection with Last-Event-ID
 * (nothing repeated, nothing skipped), stop/resume conflicts, samples; webhooks on run state
 * changes against a local receiver (signature checked, a 500 retried, the delivery log); exports
 * downloaded with Content-Length, ETag, Range (206, suffix, 416), If-None-Match and HEAD.
 */
import { createHash, createHmac } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import type { ObjectStore } from '../../src/storage/types.js';
import { putJson } from '../../src/storage/index.js';
import { preparedSession } from '../helpers/training.js';
import { AUTH, createLocalLauncher, parseSse, testApp, until, type SseEvent } from './helpers.js';

let app: FastifyInstance;
let store: ObjectStore;
let dir: string;
let close: () => Promise<void>;
let receiver: Server;
const received: Array<{ headers: Record<string, string | string[] | undefined>; body: string }> = [];
let failFirst = true;

beforeAll(async () => {
  ({ app, store, dir, close } = await testApp());
  await preparedSession(store, 'bag', dir);
  receiver = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received.push({ headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
      // The first delivery fails once, to prove the retry.
      if (failFirst) {
        failFirst = false;
        res.writeHead(500).end('try again');
      } else res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
}, 120_000);

afterAll(async () => {
  await close();
  await new Promise((r) => receiver.close(r));
});

const small = ['schedule.unet.steps=30', 'resumeState.every=10', 'prior.classImages=2', 'samples.every=10'];

describe('training routes', () => {
  it('estimates before launch and validates specs, naming the field', async () => {
    const r = await app.inject({ method: 'POST', url: '/api/sessions/bag/runs/estimate', headers: AUTH, payload: { set: small } });
    expect(r.statusCode, r.body).toBe(200);
    expect(r.json()).toMatchObject({ preset: 'object-sd15', totalSteps: 30 });
    expect(r.json<{ estimatedVramGb: number }>().estimatedVramGb).toBeGreaterThan(5);
    const bad = await app.inject({ method: 'POST', url: '/api/sessions/bag/runs/estimate', headers: AUTH, payload: { set: ['optimizer.type=sgd'] } });
    expect(bad.statusCode).toBe(400);
    expect(bad.json<{ error: { message: string } }>().error.message).toMatch(/optimizer\.type/);
    const both = await app.inject({ method: 'POST', url: '/api/sessions/bag/runs/estimate', headers: AUTH, payload: { preset: 'face-sd15', spec: {} } });
    expect(both.statusCode).toBe(400);
    const steps = await app.inject({ method: 'POST', url: '/api/sessions/bag/runs/estimate', headers: AUTH, payload: { steps: -3 } });
    expect(steps.json<{ error: { message: string } }>().error.message).toMatch(/field "steps"/);
    expect((await app.inject({ url: '/api/sessions/bag/runs/not-a-run', headers: AUTH })).statusCode).toBe(400);
  });

  it('launches a run, streams it to the end over SSE, and resumes the stream from Last-Event-ID', async () => {
    const hook = await app.inject({ method: 'PUT', url: '/api/sessions/bag/webhooks', headers: AUTH, payload: { url: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook` } });
    expect(hook.statusCode, hook.body).toBe(200);
    const secret = hook.json<{ webhook: { secret: string } }>().webhook.secret;
    expect(secret).toMatch(/^whsec_/);
    expect((await app.inject({ url: '/api/sessions/bag/webhooks', headers: AUTH })).json()).toMatchObject({ webhook: { secretSet: true } });
    expect((await app.inject({ url: '/api/sessions/bag/webhooks', headers: AUTH })).body).not.toContain(secret);

    const r = await app.inject({ method: 'POST', url: '/api/sessions/bag/runs', headers: AUTH, payload: { set: small } });
    expect(r.statusCode, r.body).toBe(201);
    const { run } = r.json<{ run: string }>();
    expect((await app.inject({ method: 'POST', url: `/api/sessions/bag/runs/${run}/resume`, headers: AUTH })).statusCode).toBe(409);

    // The whole stream, from the start, until the run ends (inject returns when the stream closes).
    const full = await app.inject({ url: `/api/sessions/bag/runs/${run}/events`, headers: AUTH });
    expect(full.headers['content-type']).toMatch(/text\/event-stream/);
    const events = parseSse(full.body);
    const steps = events.filter((e) => e.event === 'step').map((e) => (e.data as { step: number }).step);
    expect(steps).toEqual(Array.from({ length: 30 }, (_, i) => i + 1));
    expect(events.at(-1)).toMatchObject({ event: 'end', data: { state: 'done', step: 30 } });
    const status = events.filter((e) => e.event === 'status').at(-1)?.data as { state: string; samples: Array<{ url: string }> };
    expect(status.state).toBe('done');
    expect(status.samples.length).toBeGreaterThan(0);
    const sample = await app.inject({ url: status.samples[0]!.url });
    expect(sample.statusCode).toBe(200);
    expect(sample.headers['content-type']).toBe('image/png');

    // Reconnect after the 12th step: exactly the rest, no step twice.
    const at12 = events.find((e): e is SseEvent => e.event === 'step' && (e.data as { step: number }).step === 12)!;
    const again = await app.inject({ url: `/api/sessions/bag/runs/${run}/events`, headers: { ...AUTH, 'last-event-id': at12.id! } });
    const rest = parseSse(again.body).filter((e) => e.event === 'step').map((e) => (e.data as { step: number }).step);
    expect(rest).toEqual(Array.from({ length: 18 }, (_, i) => i + 13));
    const ids = events.map((e) => e.id);
    expect(ids.every((id) => id !== null && /^\d+\.\d+$/.test(id))).toBe(true);
    // backlog=none starts at the end of the log: a status snapshot, no replay.
    const none = parseSse((await app.inject({ url: `/api/sessions/bag/runs/${run}/events?backlog=none`, headers: AUTH })).body);
    expect(none.filter((e) => e.event === 'step')).toHaveLength(0);
    expect(none[0]?.event).toBe('status');

    const runs = (await app.inject({ url: '/api/sessions/bag/runs', headers: AUTH })).json<{ runs: Array<{ run: string; state: string; step: number }> }>();
    expect(runs.runs).toEqual([expect.objectContaining({ run, state: 'done', step: 30 })]);
    const log = await app.inject({ url: `/api/sessions/bag/runs/${run}/logs`, headers: AUTH });
    expect(log.body).toMatch(/"event":"done"/);
    expect((await app.inject({ method: 'POST', url: `/api/sessions/bag/runs/${run}/stop`, headers: AUTH })).json<{ error: { code: string } }>().error.code).toBe('CONFLICT');

    // Webhooks: state changes up to done, signed; the first attempt got a 500 and was retried.
    const done = await until(async () => {
      await app.booth.webhooks.idle();
      const bodies = received.map((x) => JSON.parse(x.body) as { type: string; data: { state: string } });
      return bodies.some((b) => b.data.state === 'done') ? bodies : undefined;
    }, 'the done webhook');
    expect(done.every((b) => b.type === 'run.state')).toBe(true);
    for (const x of received) {
      const ts = String(x.headers['booth-webhook-timestamp']);
      expect(x.headers['booth-webhook-signature']).toBe(`v1=${createHmac('sha256', secret).update(`${ts}.${x.body}`).digest('hex')}`);
    }
    const log2 = (await app.inject({ url: '/api/sessions/bag/webhooks/deliveries', headers: AUTH })).json<{ deliveries: Array<{ state: string; attempts: Array<{ status: number }> }> }>();
    expect(log2.deliveries.every((d) => d.state === 'delivered')).toBe(true);
    expect(log2.deliveries.some((d) => d.attempts.length === 2 && d.attempts[0]?.status === 500)).toBe(true);
  });

  it('stops a running run and resumes it to the end', async () => {
    const { STAND_IN } = await import('../helpers/training.js');
    const path = await import('node:path');
    // A second app whose trainer pauses after step 5 until signalled, so the stop lands mid-run.
    const paused = await testApp({ store, launcher: () => createLocalLauncher({ env: { ...process.env, BOOTH_TRAINER: JSON.stringify([process.execPath, STAND_IN]), BOOTH_WORK_DIR: path.join(dir, 'work2'), STANDIN_STEP_MS: '15', STANDIN_PAUSE_AT: '5' } }) });
    try {
      const a = paused.app;
      const { run } = (await a.inject({ method: 'POST', url: '/api/sessions/bag/runs', headers: AUTH, payload: { set: small } })).json<{ run: string }>();
      await until(async () => ((await a.inject({ url: `/api/sessions/bag/runs/${run}`, headers: AUTH })).json<{ step: number }>().step >= 5 ? true : undefined), 'step 5');
      const stop = await a.inject({ method: 'POST', url: `/api/sessions/bag/runs/${run}/stop`, headers: AUTH });
      expect(stop.statusCode, stop.body).toBe(202);
      await until(async () => ((await a.inject({ url: `/api/sessions/bag/runs/${run}`, headers: AUTH })).json<{ state: string }>().state === 'stopped' ? true : undefined), 'stopped');
      const resumed = await app.inject({ method: 'POST', url: `/api/sessions/bag/runs/${run}/resume`, headers: AUTH });
      expect(resumed.statusCode, resumed.body).toBe(202);
      expect(resumed.json()).toMatchObject({ attempt: 2 });
      const events = parseSse((await app.inject({ url: `/api/sessions/bag/runs/${run}/events`, headers: AUTH })).body);
      const steps = events.filter((e) => e.event === 'step').map((e) => (e.data as { step: number }).step);
      expect(steps).toEqual(Array.from({ length: 30 }, (_, i) => i + 1));
      expect(events.at(-1)).toMatchObject({ event: 'end', data: { state: 'done' } });
      const ext = await app.inject({ method: 'POST', url: `/api/sessions/bag/runs/${run}/extend`, headers: AUTH, payload: { steps: 10 } });
      expect(ext.statusCode).toBe(400);
    } finally {
      await paused.app.close();
    }
  });
});

describe('export downloads', () => {
  const bytes = Buffer.from(Array.from({ length: 10_000 }, (_, i) => (i * 7) % 256));
  const sha = createHash('sha256').update(bytes).digest('hex');

  beforeAll(async () => {
    await store.put('sessions/bag/exports/bag-test.safetensors', bytes);
    await putJson(store, 'sessions/bag/exports/bag-test.json', { name: 'bag-test', session: 'bag', run: '20260101-000000-abcd', kind: 'checkpoint', architecture: 'sd1', predictionType: 'epsilon', dtype: 'fp16', key: 'sessions/bag/exports/bag-test.safetensors', yamlKey: null, size: bytes.length, sha256: sha, autov2: sha.slice(0, 10), metadata: {}, createdAt: new Date().toISOString() });
  });

  it('lists exports with a signed download URL and serves the whole file with its hash', async () => {
    const list = (await app.inject({ url: '/api/sessions/bag/exports', headers: AUTH })).json<{ exports: Array<{ name: string; sha256: string; downloadUrl: string }> }>();
    const e = list.exports.find((x) => x.name === 'bag-test')!;
    expect(e.sha256).toBe(sha);
    const r = await app.inject({ url: e.downloadUrl });
    expect(r.statusCode).toBe(200);
    expect(r.headers['content-length']).toBe(String(bytes.length));
    expect(r.headers.etag).toBe(`"${sha}"`);
    expect(r.headers['accept-ranges']).toBe('bytes');
    expect(r.headers['x-checksum-sha256']).toBe(sha);
    expect(r.headers['content-disposition']).toMatch(/bag-test\.safetensors/);
    expect(Buffer.compare(r.rawPayload, bytes)).toBe(0);
    const head = await app.inject({ method: 'HEAD', url: e.downloadUrl });
    expect(head.statusCode).toBe(200);
    expect(head.headers['content-length']).toBe(String(bytes.length));
    expect(head.rawPayload.length).toBe(0);
  });

  it('answers ranges with 206, suffix ranges, If-Range, 304 and 416', async () => {
    const url = '/api/sessions/bag/exports/bag-test/download';
    const part = await app.inject({ url, headers: { ...AUTH, range: 'bytes=100-199' } });
    expect(part.statusCode).toBe(206);
    expect(part.headers['content-range']).toBe(`bytes 100-199/${bytes.length}`);
    expect(part.headers['content-length']).toBe('100');
    expect(Buffer.compare(part.rawPayload, bytes.subarray(100, 200))).toBe(0);
    const open = await app.inject({ url, headers: { ...AUTH, range: 'bytes=9000-' } });
    expect(Buffer.compare(open.rawPayload, bytes.subarray(9000))).toBe(0);
    const suffix = await app.inject({ url, headers: { ...AUTH, range: 'bytes=-10' } });
    expect(suffix.headers['content-range']).toBe(`bytes 9990-9999/${bytes.length}`);
    const stale = await app.inject({ url, headers: { ...AUTH, range: 'bytes=0-9', 'if-range': '"other"' } });
    expect(stale.statusCode).toBe(200);
    const cached = await app.inject({ url, headers: { ...AUTH, 'if-none-match': `"${sha}"` } });
    expect(cached.statusCode).toBe(304);
    const bad = await app.inject({ url, headers: { ...AUTH, range: 'bytes=20000-' } });
    expect(bad.statusCode).toBe(416);
    expect(bad.headers['content-range']).toBe(`bytes */${bytes.length}`);
    expect(bad.json<{ error: { code: string } }>().error.code).toBe('RANGE_NOT_SATISFIABLE');
    expect((await app.inject({ url: '/api/sessions/bag/exports/nope/download', headers: AUTH })).statusCode).toBe(404);
    expect((await app.inject({ url: '/api/sessions/bag/exports/..%2Fsession/download', headers: AUTH })).statusCode).toBe(400);
    const job = await app.inject({ method: 'POST', url: '/api/sessions/bag/exports', headers: AUTH, payload: { run: '20260101-000000-abcd' } });
    expect(job.statusCode).toBe(202);
  });
});
