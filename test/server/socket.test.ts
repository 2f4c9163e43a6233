/**
 * Real sockets on 127.0.0.1 port 0: health, auth refusal and a ranged download over HTTP, plus the
 * refusal to bind a non-loopback address without a (long enough) token.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { assertSafeBinding, isLoopback, tokenMatches } from '../../src/server/auth.js';
import { putJson } from '../../src/storage/index.js';
import type { ObjectStore } from '../../src/storage/types.js';
import { AUTH, testApp } from './helpers.js';

let app: FastifyInstance;
let store: ObjectStore;
let close: () => Promise<void>;
let base: string;

beforeAll(async () => {
  ({ app, store, close } = await testApp());
  base = await app.listen({ host: '127.0.0.1', port: 0 });
});
afterAll(async () => {
  await close();
});

describe('over a real socket', () => {
  it('answers health, refuses the API without the token, serves the UI shell with a CSP', async () => {
    expect(await (await fetch(`${base}/health`)).json()).toMatchObject({ ok: true });
    const r = await fetch(`${base}/api/sessions`);
    expect(r.status).toBe(401);
    expect(((await r.json()) as { error: { code: string } }).error.code).toBe('UNAUTHORIZED');
    expect((await fetch(`${base}/api/sessions`, { headers: AUTH })).status).toBe(200);
    const ui = await fetch(`${base}/`);
    expect(ui.status).toBe(200);
    expect(ui.headers.get('content-security-policy')).toMatch(/default-src 'self'/);
    expect(await ui.text()).toMatch(/<script type="module" src="\/app.js">/);
  });

  it('resumes a download with Range over HTTP', async () => {
    await (await fetch(`${base}/api/sessions`, { method: 'POST', headers: { ...AUTH, 'content-type': 'application/json' }, body: JSON.stringify({ name: 's1', trigger: 'zwx', classNoun: 'dog', kind: 'object' }) })).json();
    const data = Buffer.alloc(50_000, 7);
    const sha = createHash('sha256').update(data).digest('hex');
    await store.put('sessions/s1/exports/e1.safetensors', data);
    await putJson(store, 'sessions/s1/exports/e1.json', { name: 'e1', session: 's1', run: '20260101-000000-abcd', kind: 'lora', architecture: 'sd1', predictionType: 'epsilon', dtype: 'fp16', key: 'sessions/s1/exports/e1.safetensors', yamlKey: null, size: data.length, sha256: sha, autov2: sha.slice(0, 10), metadata: {}, createdAt: new Date().toISOString() });
    const a = await fetch(`${base}/api/sessions/s1/exports/e1/download`, { headers: { ...AUTH, range: 'bytes=0-19999' } });
    const b = await fetch(`${base}/api/sessions/s1/exports/e1/download`, { headers: { ...AUTH, range: 'bytes=20000-' } });
    expect([a.status, b.status]).toEqual([206, 206]);
    const whole = Buffer.concat([Buffer.from(await a.arrayBuffer()), Buffer.from(await b.arrayBuffer())]);
    expect(createHash('sha256').update(whole).digest('hex')).toBe(sha);
  });
});

describe('binding and token checks', () => {
  it('refuses a non-loopback host without a token, or with a short one', () => {
    expect(isLoopback('127.0.0.1')).toBe(true);
    expect(isLoopback('::1')).toBe(true);
    expect(isLoopback('0.0.0.0')).toBe(false);
    expect(() => assertSafeBinding('127.0.0.1', null)).not.toThrow();
    expect(() => assertSafeBinding('0.0.0.0', null)).toThrow(/token is required/);
    expect(() => assertSafeBinding('0.0.0.0', 'short')).toThrow(/at least 16/);
    expect(() => assertSafeBinding('0.0.0.0', 'a-long-enough-token-123')).not.toThrow();
    expect(tokenMatches('abc', 'abc')).toBe(true);
    expect(tokenMatches('abc', 'abcd')).toBe(false);
  });
});
