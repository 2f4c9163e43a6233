/**
 * A client that stops sending in the middle of an upload and keeps its socket open. Without an
 * idle timeout the server would wait for the promised bytes forever, keeping the upload's temp
 * folder and the session's upload lock, so every later upload to that session would hang.
 */
import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AUTH, multipart, testApp } from '../server/helpers.js';
import { STALE_UPLOAD_TMP_MS, sweepStaleUploadDirs, UPLOAD_TMP_PREFIX } from '../../src/server/upload-tmp.js';
import { photo, rawHttp } from './corpus.js';

const SESSION = 'stalled';
let env: Awaited<ReturnType<typeof testApp>>;
let work: string;
let uploadTmp: string;
const savedTmp = process.env.TMPDIR;

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'booth-stall-'));
  uploadTmp = path.join(work, 'tmp');
  await mkdir(uploadTmp);
  env = await testApp({ idleTimeoutMs: 1000, uploads: { perMinute: 1000 } });
  // Uploads spool to the OS temp folder; point it at an empty one we can watch.
  process.env.TMPDIR = uploadTmp;
  const created = await env.app.inject({ method: 'POST', url: '/api/sessions', headers: AUTH, payload: { name: SESSION, kind: 'person', trigger: 'ohwx', classNoun: 'man' } });
  expect(created.statusCode, created.body).toBe(201);
  await env.app.listen({ host: '127.0.0.1', port: 0 });
});

afterAll(async () => {
  if (savedTmp === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = savedTmp;
  await env?.close();
  await rm(work, { recursive: true, force: true });
});

describe('a client that stalls mid-upload', () => {
  it('is disconnected after the idle timeout, its temp files go, and the session takes uploads again', async () => {
    const port = (env.app.server.address() as AddressInfo).port;
    const jpeg = await photo(320, 320, 4242);
    const { payload, headers } = multipart([{ name: 'half.jpg', data: jpeg }]);
    const head = `POST /api/sessions/${SESSION}/photos HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: ${AUTH.authorization}\r\nContent-Type: ${headers['content-type']}\r\nContent-Length: ${payload.length}\r\n\r\n`;

    // Send the head and half the body, then nothing, without closing our side.
    const socket = net.connect({ host: '127.0.0.1', port });
    const closedByServer = new Promise<string>((resolve) => {
      const chunks: Buffer[] = [];
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.on('error', () => undefined);
      socket.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    });
    socket.write(Buffer.concat([Buffer.from(head), payload.subarray(0, Math.floor(payload.length / 2))]));
    // vitest's test timeout bounds this wait; the server must end it, not us.
    const answer = await closedByServer;
    expect(answer).not.toMatch(/^HTTP\/1\.1 5/);

    // A normal upload to the same session is not stuck behind the stalled one's lock.
    const whole = multipart([{ name: 'whole.jpg', data: await photo(320, 320, 4243) }]);
    const ok = await env.app.inject({ method: 'POST', url: `/api/sessions/${SESSION}/photos`, headers: { ...AUTH, ...whole.headers }, payload: whole.payload });
    expect(ok.statusCode, ok.body).toBe(201);
    const names = (await env.app.inject({ url: `/api/sessions/${SESSION}/photos`, headers: AUTH })).json<{ photos: Array<{ name: string }> }>().photos.map((p) => p.name);
    expect(names).toEqual(['whole.jpg']);
    expect(await readdir(uploadTmp)).toEqual([]);
    console.log('[reliability] stalled upload: server closed the idle connection, temp files removed, next upload 201');
  });
});

describe('upload temp folders left by a killed server', () => {
  it('are removed by the next start once untouched for an hour; fresh ones (a live upload) stay', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'booth-sweep-'));
    try {
      const make = async (name: string, ageMs: number): Promise<string> => {
        const folder = path.join(dir, name);
        await mkdir(path.join(folder, '0'), { recursive: true });
        await writeFile(path.join(folder, '0', 'a.jpg'), 'x');
        const t = new Date(Date.now() - ageMs);
        for (const p of [path.join(folder, '0', 'a.jpg'), path.join(folder, '0'), folder]) await utimes(p, t, t);
        return folder;
      };
      await make(`${UPLOAD_TMP_PREFIX}old`, STALE_UPLOAD_TMP_MS + 60_000);
      const fresh = await make(`${UPLOAD_TMP_PREFIX}fresh`, 1000);
      // An old folder whose file is still being written to belongs to a live upload.
      const writing = await make(`${UPLOAD_TMP_PREFIX}writing`, STALE_UPLOAD_TMP_MS + 60_000);
      await writeFile(path.join(writing, '0', 'a.jpg'), 'more');
      const unrelated = await make('not-booth', STALE_UPLOAD_TMP_MS + 60_000);
      const removed = await sweepStaleUploadDirs(dir);
      expect(removed.map((p) => path.basename(p))).toEqual([`${UPLOAD_TMP_PREFIX}old`]);
      expect((await readdir(dir)).sort()).toEqual([path.basename(fresh), path.basename(writing), path.basename(unrelated)].sort());
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('requests the HTTP parser cannot read', () => {
  it('get the API error shape, the right status and a closed connection; the server keeps serving', async () => {
    const port = (env.app.server.address() as AddressInfo).port;
    const head = (extra: string) => `PATCH /api/sessions/${SESSION} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: ${AUTH.authorization}\r\n${extra}\r\n`;
    const cases = [
      { id: 'content-length with chunked', bytes: `${head('Content-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n')}0\r\n\r\n`, status: 400, code: 'INVALID_ARGUMENT' },
      { id: 'non-hex chunk size', bytes: `${head('Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n')}zz\r\n{}\r\n0\r\n\r\n`, status: 400, code: 'INVALID_ARGUMENT' },
      { id: '64 KB of headers', bytes: head(`X-Filler: ${'a'.repeat(64 * 1024)}\r\n`), status: 431, code: 'HEADERS_TOO_LARGE' },
    ];
    for (const c of cases) {
      const r = await rawHttp(port, Buffer.from(c.bytes, 'latin1'));
      expect(r.status, c.id).toBe(c.status);
      const [headers = '', body = ''] = r.text.split('\r\n\r\n');
      expect(headers, c.id).toMatch(/\r\nConnection: close/i);
      const parsed = JSON.parse(body) as { error: { code: string; message: string; requestId: string } };
      expect(parsed.error.code, c.id).toBe(c.code);
      expect(parsed.error.message.length, c.id).toBeGreaterThan(10);
      expect(parsed.error.requestId, c.id).toMatch(/^[0-9a-f-]{36}$/);
      // Nothing of the request comes back.
      expect(body, c.id).not.toContain('aaaa');
    }
    const ok = await env.app.inject({ url: '/health' });
    expect(ok.statusCode).toBe(200);
  });
});
