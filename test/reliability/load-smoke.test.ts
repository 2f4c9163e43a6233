/**
 * Load properties that must hold however fast the machine is (the timings live in
 * `npm run bench:load`): a real listening server, real sockets.
 * - 100 concurrent SSE clients of one run all receive the same step events, in order, with the
 *   same ids, through one shared poll of the run (not one per client);
 * - when they hang up, the server closes every stream and stops polling the run — including for
 *   clients that hung up before their stream had started (while the run was being read);
 * - 10 concurrent 3-photo uploads over two sessions all land (no 5xx, every photo listed), and
 *   photo intake never runs more decodes at once than its slots allow.
 * No timed assertions: waits are bounded only so that a broken server fails instead of hanging.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/server/app.js';
import { JobRegistry } from '../../src/server/jobs.js';
import { eventStreamStats } from '../../src/server/sse.js';
import { silentLogger } from '../../src/log.js';
import { createFsStore } from '../../src/storage/drivers/fs.js';
import type { ObjectStore } from '../../src/storage/types.js';
import { RunStore, newRunId, runKeys, type RunStatus } from '../../src/training/runs.js';
import { presetSpec } from '../../src/training/spec.js';
import { noiseImage } from '../helpers/images.js';
import { multipart, parseSse, until, type SseEvent } from '../server/helpers.js';

const TOKEN = 'load-smoke-token-0123456789';
const AUTH = { authorization: `Bearer ${TOKEN}` };
const CLIENTS = 100;
const EVENTS = 10;

let dir: string;
let store: ObjectStore;
let app: FastifyInstance;
let port: number;
/** Event-stream requests the server has received (to know the early hang-ups reached the handler). */
let eventRequests = 0;
/** While set, reads of run records wait on it (to hold a connection inside its first read of the run). */
let gate: { open: Promise<void>; release: () => void; waiting: number } | null = null;

/** The store, with reads of `run.json` held while {@link gate} is set. */
function gated(inner: ObjectStore): ObjectStore {
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop !== 'get') return Reflect.get(target, prop, receiver) as unknown;
      return async (key: string, options?: Parameters<ObjectStore['get']>[1]) => {
        const g = gate;
        if (g && key.endsWith('/run.json')) {
          g.waiting++;
          await g.open;
        }
        return target.get(key, options);
      };
    },
  });
}

function status(session: string, run: string, state: RunStatus['state'], step: number): RunStatus {
  const now = new Date().toISOString();
  return {
    version: 1, session, run, attempt: 1, state, message: null, step, total: EVENTS, stage: 'unet', stageStep: step, stageTotal: EVENTS,
    loss: null, lr: null, itPerS: null, etaS: null, vramGb: null, lossHistory: [], resumeStates: [], samples: [], model: null, error: null,
    worker: { host: hostname(), pid: process.pid }, startedAt: now, updatedAt: now, finishedAt: state === 'running' ? null : now,
  };
}

/** A run as `booth train` and a live local worker (this process) leave it: spec, record, status, empty log. */
async function liveRun(session: string): Promise<string> {
  const runs = new RunStore(store);
  const run = newRunId();
  const record = await runs.create(presetSpec('object-sd15', { session, run, trigger: 'zwx', classNoun: 'backpack', base: 'sd15' }), 'object-sd15');
  record.launches.push({ attempt: 1, at: new Date().toISOString(), launcher: 'local', handle: { pid: process.pid, host: hostname(), logFile: 'unused' }, reason: 'train' });
  await runs.saveRecord(record);
  await runs.saveStatus(status(session, run, 'running', 0));
  await store.put(runKeys(session, run).log(1), Buffer.alloc(0));
  return run;
}

interface Client {
  status: number;
  text: string;
  error: string | null;
  req: http.ClientRequest;
}

function connect(urlPath: string): Client {
  const c: Client = { status: 0, text: '', error: null, req: http.get({ host: '127.0.0.1', port, path: urlPath, agent: false, headers: { ...AUTH, accept: 'text/event-stream' } }) };
  c.req.on('response', (res) => {
    c.status = res.statusCode ?? 0;
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => (c.text += chunk));
    res.on('error', () => undefined);
  });
  c.req.on('error', (err: NodeJS.ErrnoException) => (c.error = err.code ?? err.message));
  return c;
}

const stepsOf = (events: SseEvent[]) => events.filter((e) => e.event === 'step');
/** Complete events so far (a chunk may end inside one). */
const eventsOf = (c: Client) => parseSse(c.text.slice(0, c.text.lastIndexOf('\n\n') + 2));

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'booth-load-smoke-'));
  store = createFsStore({ root: path.join(dir, 'store') });
  app = await buildApp({ store: gated(store), token: TOKEN, logger: silentLogger(), ui: false, scanRuns: false, sse: { pollMs: 100, heartbeatMs: 5000, finalGraceMs: 300 } });
  app.addHook('onRequest', async (req) => {
    if (req.url.includes('/events')) eventRequests++;
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  port = (app.server.address() as AddressInfo).port;
  for (const name of ['live', 'up-a', 'up-b']) {
    const r = await app.inject({ method: 'POST', url: '/api/sessions', headers: AUTH, payload: { name, trigger: 'zwx', classNoun: 'backpack', kind: 'object' } });
    expect(r.statusCode, r.body).toBe(201);
  }
});

afterAll(async () => {
  gate?.release();
  await app?.close();
  await store?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('load smoke', () => {
  const figures: string[] = [];
  afterAll(() => console.log(`[reliability] load smoke: ${figures.join('; ')}`));

  it('delivers the same events in order to 100 SSE clients through one poll, and frees everything when they hang up', async () => {
    const run = await liveRun('live');
    const keys = runKeys('live', run);
    const clients = Array.from({ length: CLIENTS }, () => connect(`/api/sessions/live/runs/${run}/events`));
    try {
      await until(async () => (eventStreamStats(app.booth).streams === CLIENTS ? true : undefined), `${CLIENTS} open streams`, 600, 50);
      expect(clients.every((c) => c.status === 200)).toBe(true);
      // One poll of the run for all of its clients: the store load does not grow with the audience.
      expect(eventStreamStats(app.booth).runPolls).toBe(1);

      let log = '';
      for (let step = 1; step <= EVENTS; step++) {
        log += `${JSON.stringify({ event: 'step', time: new Date().toISOString(), step, total: EVENTS, stage: 'unet', stage_step: step, stage_total: EVENTS, loss: 0.5, lr: 1e-6, it_per_s: 1, eta_s: 1, vram_gb: null, epoch: 0 })}\n`;
        await store.put(keys.log(1), Buffer.from(log));
        await new RunStore(store).saveStatus(status('live', run, 'running', step));
        // Let some polls land between writes, so events arrive over several reads.
        if (step % 3 === 0) await until(async () => (clients.every((c) => stepsOf(eventsOf(c)).length >= step) ? true : undefined), `step ${step} everywhere`, 600, 20);
      }
      await until(async () => (clients.every((c) => stepsOf(eventsOf(c)).length >= EVENTS) ? true : undefined), 'every step at every client', 600, 50);

      const reference = stepsOf(eventsOf(clients[0]!));
      expect(reference.map((e) => (e.data as { step: number }).step)).toEqual(Array.from({ length: EVENTS }, (_, i) => i + 1));
      for (const c of clients) {
        const steps = stepsOf(eventsOf(c));
        expect(steps.map((e) => e.id)).toEqual(reference.map((e) => e.id));
        expect(steps.map((e) => (e.data as { step: number }).step)).toEqual(reference.map((e) => (e.data as { step: number }).step));
        expect(eventsOf(c).filter((e) => e.event === 'error')).toEqual([]);
      }
      expect(clients.every((c) => c.error === null)).toBe(true);
    } finally {
      for (const c of clients) c.req.destroy();
    }
    await until(async () => {
      const s = eventStreamStats(app.booth);
      return s.streams === 0 && s.runPolls === 0 ? true : undefined;
    }, 'every stream and poll released after hang-up', 600, 50);
    figures.push(`${CLIENTS} SSE clients x ${EVENTS} events identical and in order via 1 poll, 0 streams/polls left after hang-up`);
  });

  it('releases streams whose client hung up while the run was still being read', async () => {
    const run = await liveRun('live');
    let release!: () => void;
    gate = { open: new Promise<void>((r) => (release = r)), release: () => release(), waiting: 0 };
    const before = eventRequests;
    const openedBefore = eventStreamStats(app.booth).opened;
    const early = Array.from({ length: 20 }, () => connect(`/api/sessions/live/runs/${run}/events`));
    try {
      // Every request has reached the server, and the run's first read is held.
      await until(async () => (gate!.waiting >= 1 && eventRequests - before === early.length ? true : undefined), 'connections held in the first read', 600, 20);
      // A moment for the last ones to pass validation into the handler (a late one is covered too: it finds its socket closed).
      await new Promise((r) => setTimeout(r, 200));
      for (const c of early) c.req.destroy();
      await until(async () => (early.every((c) => c.req.destroyed) ? true : undefined), 'client sockets closed', 100, 20);
    } finally {
      gate.release();
      gate = null;
    }
    // Every one of them got as far as opening its stream (after the read), and then let it go.
    await until(async () => (eventStreamStats(app.booth).opened - openedBefore === early.length ? true : undefined), 'streams of early hang-ups opened', 600, 20);
    await until(async () => {
      const s = eventStreamStats(app.booth);
      return s.streams === 0 && s.runPolls === 0 ? true : undefined;
    }, 'streams of early hang-ups released', 600, 50);
    figures.push('20 clients gone before their stream started: released');
  });

  it('takes in 10 concurrent 3-photo uploads completely, with no 5xx', async () => {
    const photos = await Promise.all(Array.from({ length: 30 }, (_, i) => noiseImage(640, 480, 9000 + i)));
    const responses = await Promise.all(
      Array.from({ length: 10 }, async (_, u) => {
        const body = multipart(photos.slice(u * 3, u * 3 + 3).map((data, i) => ({ name: `u${u}-${i}.jpg`, data })));
        const res = await fetch(`http://127.0.0.1:${port}/api/sessions/${u % 2 ? 'up-b' : 'up-a'}/photos`, { method: 'POST', headers: { ...AUTH, ...body.headers }, body: body.payload });
        return { status: res.status, json: (await res.json()) as { summary?: { added: number } } };
      }),
    );
    expect(responses.map((r) => r.status), JSON.stringify(responses[0]?.json)).toEqual(Array(10).fill(201));
    expect(responses.map((r) => r.json.summary?.added)).toEqual(Array(10).fill(3));
    let listed = 0;
    for (const name of ['up-a', 'up-b']) {
      const r = await app.inject({ url: `/api/sessions/${name}/photos`, headers: AUTH });
      const photosListed = r.json<{ photos: Array<{ name: string }> }>().photos;
      expect(photosListed).toHaveLength(15);
      listed += photosListed.length;
    }
    // Every intake slot is back once the uploads are answered.
    expect(app.booth.jobs.intakeLoad().waiting).toBe(0);
    figures.push(`10 uploads x 3 photos: ${listed} listed, 0 5xx`);
  });

  it('runs at most its slots of photo intakes at once, in arrival order', async () => {
    const jobs = new JobRegistry(silentLogger(), { intakeSlots: 2 });
    let running = 0;
    let most = 0;
    const started: number[] = [];
    const gates: Array<() => void> = [];
    const all = Array.from({ length: 6 }, (_, i) =>
      jobs.intake(async () => {
        started.push(i);
        running++;
        most = Math.max(most, running);
        await new Promise<void>((r) => gates.push(r));
        running--;
        return i;
      }),
    );
    // Finish them one by one as they start; only two may be in at any time.
    for (let done = 0; done < 6; done++) {
      await until(async () => (gates.length > done ? true : undefined), `intake ${done} started`, 100, 5);
      expect(running).toBeLessThanOrEqual(2);
      gates[done]!();
    }
    expect(await Promise.all(all)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(most).toBe(2);
    expect(started).toEqual([0, 1, 2, 3, 4, 5]);
    expect(jobs.intakeLoad()).toEqual({ waiting: 0, free: 2 });
    expect(() => new JobRegistry(silentLogger(), { intakeSlots: 0 })).toThrow(/intakeSlots/);
  });
});
