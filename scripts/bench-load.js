#!/usr/bin/env node
// `npm run bench:load`: the real `booth serve` (dist/, as a child process on 127.0.0.1, a temp
// folder store and a token) under load, against a baseline measured in the same run: GET /health,
// the cheapest route the server has. Phases, each bounded in time or count:
//   0. baseline: GET /health with autocannon;
//   1. session status (GET /api/sessions/:name) and run status (GET /api/sessions/:name/runs/:run);
//   2. live events: N concurrent SSE clients (plain http.get, `Accept: text/event-stream`) on one
//      run while this script plays the worker (it appends step lines to the run's log and rewrites
//      status.json in the store, as the worker does); measured: connect latency, delivery latency
//      from the write to the receipt (bounded below by the server's 1 s store poll), missed /
//      repeated / out-of-order events (by step number and event id), and whether the server gives
//      back its sockets once the clients hang up (/proc/<pid>/fd);
//   3. concurrent multi-photo uploads (multipart, distinct JPEGs) spread over a few sessions;
//      measured: requests/s, MB/s, latency, 429s (the per-minute upload limit, reported apart),
//      and whether every accepted photo is listed in its session afterwards. It runs before the
//      SSE phases, so its RSS bound is not about the heap that 500 streams leave behind.
// Server RSS is sampled from /proc/<pid>/status every 100 ms (VmRSS, and VmHWM reset per phase).
// The script doubles as a check: it exits 1 when an event or a photo is lost, a 5xx comes back,
// SSE sockets are not released, or the server's peak RSS during uploads exceeds BENCH_RSS_LIMIT_MB
// or grows by as much as the bytes in flight (which would mean uploads are buffered in memory).
// Linux only for the RSS and fd figures (elsewhere they print as "-" and are not checked).
//
// Knobs (environment): BENCH_DURATION_S (5) seconds per autocannon phase; BENCH_CONNECTIONS (100);
// BENCH_SSE_CLIENTS ("200,500") one SSE phase per entry; BENCH_SSE_EVENTS (40) and BENCH_SSE_RATE
// (4, events/s) per SSE phase; BENCH_UPLOADS (50) concurrent uploads of BENCH_UPLOAD_PHOTOS (8)
// photos each, BENCH_PHOTO_PX (2000, long side) big, over BENCH_UPLOAD_SESSIONS (5) sessions;
// BENCH_RSS_LIMIT_MB (512). `--json` or BENCH_JSON=1 also prints a JSON summary.
// Usage: npm run build && npm run bench:load [-- --json]
/* global fetch */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import { hostname, tmpdir } from 'node:os';
import { clearInterval, setInterval } from 'node:timers';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const dist = path.join(root, 'dist');
const bin = path.join(dist, 'cli', 'bin.js');
if (!existsSync(bin)) {
  console.error('dist/ is missing: run `npm run build` first');
  process.exit(1);
}
const load = (rel) => import(pathToFileURL(path.join(dist, rel)).href);
const { default: autocannon } = await import('autocannon');
const { default: sharp } = await import('sharp');
const { openStore } = await load('storage/index.js');
const { RunStore, newRunId, runKeys } = await load('training/runs.js');
const { presetSpec } = await load('training/spec.js');

/** A positive number from the environment, or `fallback`; anything else stops the script naming the knob. */
function knob(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) {
    console.error(`${name} must be a positive number, got ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return n;
}
const DURATION_S = knob('BENCH_DURATION_S', 5);
const CONNECTIONS = Math.round(knob('BENCH_CONNECTIONS', 100));
const SSE_CLIENTS = (process.env.BENCH_SSE_CLIENTS ?? '200,500').split(',').map((s) => Number(s.trim()));
if (SSE_CLIENTS.some((n) => !Number.isInteger(n) || n <= 0)) {
  console.error(`BENCH_SSE_CLIENTS must be a comma-separated list of client counts, e.g. "200,500", got ${JSON.stringify(process.env.BENCH_SSE_CLIENTS)}`);
  process.exit(2);
}
const SSE_EVENTS = Math.round(knob('BENCH_SSE_EVENTS', 40));
const SSE_RATE = knob('BENCH_SSE_RATE', 4);
const UPLOADS = Math.round(knob('BENCH_UPLOADS', 50));
const UPLOAD_PHOTOS = Math.round(knob('BENCH_UPLOAD_PHOTOS', 8));
const PHOTO_PX = Math.round(knob('BENCH_PHOTO_PX', 2000));
const UPLOAD_SESSIONS = Math.min(UPLOADS, Math.round(knob('BENCH_UPLOAD_SESSIONS', 5)));
const RSS_LIMIT_MB = knob('BENCH_RSS_LIMIT_MB', 512);
const JSON_OUT = process.argv.includes('--json') || process.env.BENCH_JSON === '1';
const TOKEN = `bench-${Math.random().toString(16).slice(2)}-token`;
const AUTH = { authorization: `Bearer ${TOKEN}` };
/** The server's store poll (`booth serve` uses the default): delivery latency cannot be below it. */
const SERVER_POLL_MS = 1000;

/**
 * Decoding photos costs the server a fixed ~200 MiB (sharp's buffers and caches, a decode per
 * session at a time) whatever the upload volume, so "RSS grew as much as the bytes in flight" only
 * tells buffering from decoding once this much is in flight at once.
 */
const BUFFERING_MIN_BYTES = 256 * 2 ** 20;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const MiB = 2 ** 20;

/** Nearest-rank percentile of unsorted numbers; null for none. */
function pct(values, q) {
  if (values.length === 0) return null;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
}

// ---- the server under test ------------------------------------------------------------------

const dir = await mkdtemp(path.join(tmpdir(), 'booth-bench-load-'));
const storeDir = path.join(dir, 'store');
const serverLog = [];
const server = spawn(process.execPath, [bin, 'serve', '--host', '127.0.0.1', '--port', '0', '--token', TOKEN], {
  env: { ...process.env, BOOTH_STORAGE: storeDir, BOOTH_LOG_LEVEL: process.env.BOOTH_LOG_LEVEL ?? 'warn', BOOTH_WORK_DIR: path.join(dir, 'work') },
  stdio: ['ignore', 'ignore', 'pipe'],
});
let cleaned = false;
async function cleanup() {
  if (cleaned) return;
  cleaned = true;
  if (server.exitCode === null && server.signalCode === null) {
    server.kill('SIGTERM');
    const exited = await Promise.race([new Promise((r) => server.once('exit', () => r(true))), sleep(5000).then(() => false)]);
    if (!exited) server.kill('SIGKILL');
  }
  await rm(dir, { recursive: true, force: true });
}
process.once('SIGINT', () => void cleanup().then(() => process.exit(130)));

const baseUrl = await new Promise((resolve, reject) => {
  let text = '';
  server.stderr.setEncoding('utf8');
  server.stderr.on('data', (chunk) => {
    text += chunk;
    for (const line of chunk.split('\n')) if (line.trim() && serverLog.length < 200) serverLog.push(line);
    const m = /booth serve: (http:\/\/[\d.]+:\d+)/.exec(text);
    if (m) resolve(m[1]);
  });
  server.once('exit', (code) => reject(new Error(`booth serve exited (${code}) before listening:\n${text}`)));
  setTimeout(() => reject(new Error(`booth serve did not start within 30 s:\n${text}`)), 30_000).unref();
});
const { hostname: host, port } = new URL(baseUrl);
const pid = server.pid;

// ---- server-side figures (Linux /proc) ---------------------------------------------------------

function procStatus() {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (field) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
    return { rss: kb('VmRSS') * 1024, hwm: kb('VmHWM') * 1024 };
  } catch {
    return null;
  }
}
function fdCount() {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return null;
  }
}

/** Waits until the server's fd count holds still (sockets of the previous phase closing), up to 10 s. */
async function settledFds() {
  let last = fdCount();
  let still = 0;
  for (let i = 0; i < 50 && last !== null && still < 3; i++) {
    await sleep(200);
    const now = fdCount();
    still = now === last ? still + 1 : 0;
    last = now;
  }
  return last;
}

/** Samples the server's RSS every 100 ms during one phase; the peak is max(samples, VmHWM after a reset). */
function watchRss() {
  try {
    // "5" resets the peak (VmHWM) to the current RSS, so each phase's peak is its own.
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
  } catch {
    /* not Linux, or not permitted: the 100 ms samples remain */
  }
  const start = procStatus()?.rss ?? null;
  let peak = start ?? 0;
  const timer = setInterval(() => {
    const s = procStatus();
    if (s) peak = Math.max(peak, s.rss);
  }, 100);
  return {
    start,
    stop() {
      clearInterval(timer);
      const s = procStatus();
      if (!s) return { startMiB: null, peakMiB: null, endMiB: null };
      peak = Math.max(peak, s.rss, Number.isFinite(s.hwm) ? s.hwm : 0);
      return { startMiB: start / MiB, peakMiB: peak / MiB, endMiB: s.rss / MiB };
    },
  };
}

// ---- setup through the API and the store ------------------------------------------------------

async function api(method, urlPath, body) {
  const res = await fetch(baseUrl + urlPath, { method, headers: { ...AUTH, ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : undefined });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${urlPath}: ${res.status} ${text}`);
  return JSON.parse(text);
}

const store = await openStore(pathToFileURL(storeDir).href);
const runs = new RunStore(store);

/** Status as the worker writes it: `running` under this script's pid, so the server sees a live local worker. */
function workerStatus(session, run, state, step, total) {
  const now = new Date().toISOString();
  return {
    version: 1, session, run, attempt: 1, state, message: null, step, total, stage: 'unet', stageStep: step, stageTotal: total,
    loss: step ? 0.1 + 1 / (step + 1) : null, lr: step ? 1e-6 : null, itPerS: step ? SSE_RATE : null, etaS: step ? (total - step) / SSE_RATE : null, vramGb: null,
    lossHistory: [], resumeStates: [], samples: [], model: null, error: null,
    worker: { host: hostname(), pid: process.pid }, startedAt: now, updatedAt: now, finishedAt: state === 'running' ? null : now,
  };
}

/** A run in the store as `booth train` plus a worker would leave it: spec, record with one local launch, status, empty log. */
async function fakeRun(session) {
  const run = newRunId();
  const spec = presetSpec('object-sd15', { session, run, trigger: 'zwx', classNoun: 'backpack', base: 'sd15' });
  const record = await runs.create(spec, 'object-sd15');
  record.launches.push({ attempt: 1, at: new Date().toISOString(), launcher: 'local', handle: { pid: process.pid, host: hostname(), logFile: path.join(dir, 'unused.log') }, reason: 'train' });
  await runs.saveRecord(record);
  await runs.saveStatus(workerStatus(session, run, 'running', 0, SSE_EVENTS));
  await store.put(runKeys(session, run).log(1), Buffer.alloc(0));
  return run;
}

await api('POST', '/api/sessions', { name: 'load', trigger: 'zwx', classNoun: 'backpack', kind: 'object' });
const statusRun = await fakeRun('load');

// ---- phases -----------------------------------------------------------------------------------

const phases = [];
const failures = [];

async function cannon(name, urlPath, headers) {
  const watch = watchRss();
  const r = await autocannon({ url: baseUrl + urlPath, connections: CONNECTIONS, duration: DURATION_S, headers });
  const rss = watch.stop();
  const rps = r.requests.total / (r.duration || DURATION_S);
  const phase = {
    name, unit: 'req/s', throughput: rps, p50: r.latency.p50, p99: r.latency.p99,
    requests: r.requests.total, errors: r.errors + r.timeouts + r.non2xx + r.resets,
    detail: { non2xx: r.non2xx, errors: r.errors, timeouts: r.timeouts, resets: r.resets, connections: CONNECTIONS, durationS: DURATION_S },
    ...rss,
  };
  if (r['5xx'] > 0) failures.push(`${name}: ${r['5xx']} responses were 5xx`);
  phases.push(phase);
  return phase;
}

/** One EventSource-like client: keeps every event's id, name and step with its receipt time. */
function sseClient(urlPath) {
  const c = { status: 0, connectMs: null, steps: [], stepAt: [], ids: [], serverErrors: 0, error: null, closedEarly: false, buf: '' };
  const t0 = performance.now();
  let hangingUp = false;
  c.req = http.get({ host, port, path: urlPath, agent: false, headers: { ...AUTH, accept: 'text/event-stream' } });
  c.ready = new Promise((resolve) => {
    c.req.on('response', (res) => {
      c.status = res.statusCode;
      c.connectMs = performance.now() - t0;
      resolve();
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        const now = performance.now();
        c.buf += chunk;
        let cut;
        while ((cut = c.buf.indexOf('\n\n')) >= 0) {
          const block = c.buf.slice(0, cut);
          c.buf = c.buf.slice(cut + 2);
          let id = null;
          let event = 'message';
          let data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('id: ')) id = line.slice(4);
            else if (line.startsWith('event: ')) event = line.slice(7);
            else if (line.startsWith('data: ')) data += line.slice(6);
          }
          if (event === 'step') {
            c.steps.push(JSON.parse(data).step);
            c.stepAt.push(now);
            c.ids.push(id);
          } else if (event === 'error') c.serverErrors++;
        }
      });
      res.on('end', () => {
        if (!hangingUp) c.closedEarly = true;
      });
      res.on('error', () => undefined);
    });
    c.req.on('error', (err) => {
      if (!hangingUp) c.error = err.code ?? err.message;
      resolve();
    });
  });
  c.hangUp = () => {
    hangingUp = true;
    c.req.destroy();
  };
  return c;
}

/** `1.2345` → [1, 2345], for comparing event ids as log positions. */
const idKey = (id) => (id ?? '0.0').split('.').map(Number);
const idBefore = (a, b) => a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);

async function ssePhase(clients) {
  const session = 'load';
  const run = await fakeRun(session);
  const keys = runKeys(session, run);
  const fdBefore = await settledFds();
  const watch = watchRss();
  const all = [];
  for (let i = 0; i < clients; i++) all.push(sseClient(`/api/sessions/${session}/runs/${run}/events`));
  await Promise.race([Promise.all(all.map((c) => c.ready)), sleep(30_000)]);
  const fdDuring = fdCount();
  const connected = all.filter((c) => c.status === 200);

  // The worker's part: one step line per event, the whole log rewritten (as the worker uploads it), status updated.
  const writtenAt = new Map();
  let log = '';
  const t0 = performance.now();
  for (let step = 1; step <= SSE_EVENTS; step++) {
    const line = { event: 'step', time: new Date().toISOString(), step, total: SSE_EVENTS, stage: 'unet', stage_step: step, stage_total: SSE_EVENTS, loss: 0.1 + 1 / (step + 1), lr: 1e-6, it_per_s: SSE_RATE, eta_s: (SSE_EVENTS - step) / SSE_RATE, vram_gb: null, epoch: 0 };
    log += `${JSON.stringify(line)}\n`;
    writtenAt.set(step, performance.now());
    await store.put(keys.log(1), Buffer.from(log));
    await runs.saveStatus(workerStatus(session, run, 'running', step, SSE_EVENTS));
    const next = t0 + (step * 1000) / SSE_RATE;
    await sleep(Math.max(0, next - performance.now()));
  }
  const lastWrite = performance.now();
  // Every connected client should see the last step within a few polls.
  const deadline = lastWrite + SERVER_POLL_MS * 3 + 10_000;
  while (performance.now() < deadline && connected.some((c) => c.steps.at(-1) !== SSE_EVENTS && !c.closedEarly && !c.error)) await sleep(100);
  const done = performance.now();
  const rss = watch.stop();

  for (const c of all) c.hangUp();
  // The server should give back every stream's socket once the clients are gone.
  const releaseStart = performance.now();
  let fdAfter = fdCount();
  while (fdBefore !== null && fdAfter > fdBefore + 2 && performance.now() - releaseStart < 10_000) {
    await sleep(100);
    fdAfter = fdCount();
  }
  const releaseMs = performance.now() - releaseStart;
  await runs.saveStatus(workerStatus(session, run, 'done', SSE_EVENTS, SSE_EVENTS));

  let missed = 0;
  let repeated = 0;
  let outOfOrder = 0;
  let received = 0;
  const delivery = [];
  for (const c of connected) {
    const seen = new Set();
    let prevId = null;
    let prevStep = 0;
    c.steps.forEach((step, i) => {
      received++;
      if (seen.has(step)) repeated++;
      seen.add(step);
      if (step < prevStep) outOfOrder++;
      prevStep = step;
      const id = idKey(c.ids[i]);
      if (prevId && !idBefore(prevId, id)) outOfOrder++;
      prevId = id;
      const at = writtenAt.get(step);
      if (at !== undefined) delivery.push(c.stepAt[i] - at);
    });
    for (let s = 1; s <= SSE_EVENTS; s++) if (!seen.has(s)) missed++;
  }
  const errors = all.filter((c) => c.status !== 200 || c.error || c.closedEarly).length + all.reduce((n, c) => n + c.serverErrors, 0);
  const phase = {
    name: `SSE ${clients} clients`, unit: 'events/s', throughput: received / ((done - t0) / 1000),
    p50: pct(delivery, 0.5), p99: pct(delivery, 0.99), requests: clients, errors,
    detail: {
      clients, connected: connected.length, events: SSE_EVENTS, rate: SSE_RATE, received, missed, repeated, outOfOrder,
      connectP50: pct(connected.map((c) => c.connectMs), 0.5), connectP99: pct(connected.map((c) => c.connectMs), 0.99),
      statuses: Object.fromEntries([...new Set(all.map((c) => c.status))].map((s) => [s, all.filter((c) => c.status === s).length])),
      clientErrors: [...new Set(all.map((c) => c.error).filter(Boolean))],
      fdBefore, fdDuring, fdAfter, releaseMs,
      rssPerClientKiB: rss.peakMiB !== null && rss.startMiB !== null ? ((rss.peakMiB - rss.startMiB) * 1024) / clients : null,
    },
    ...rss,
  };
  phases.push(phase);
  if (missed || repeated || outOfOrder) failures.push(`${phase.name}: ${missed} events missed, ${repeated} repeated, ${outOfOrder} out of order`);
  if (errors) failures.push(`${phase.name}: ${errors} clients failed (statuses ${JSON.stringify(phase.detail.statuses)}, errors ${phase.detail.clientErrors.join(', ') || 'none'})`);
  if (fdBefore !== null && fdAfter > fdBefore + 2) failures.push(`${phase.name}: the server holds ${fdAfter - fdBefore} more file descriptors 10 s after every client hung up (${fdBefore} → ${fdAfter})`);
  return phase;
}

/** Distinct JPEGs of noise (noise does not compress, so each is a few MB like a phone photo). */
async function basePhotos(n) {
  const w = PHOTO_PX;
  const h = Math.round((PHOTO_PX * 3) / 4);
  const out = [];
  let s = 0x9e3779b9;
  for (let i = 0; i < n; i++) {
    const raw = Buffer.alloc(w * h * 3);
    for (let j = 0; j < raw.length; j += 4) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      raw.writeUInt32LE(s >>> 0, Math.min(j, raw.length - 4));
    }
    out.push(await sharp(raw, { raw: { width: w, height: h, channels: 3 } }).jpeg({ quality: 90 }).toBuffer());
  }
  return out;
}

/** One multipart upload of the base photos, each made unique by a JPEG comment segment after SOI (no copy of the pixels). */
function upload(session, index, photos) {
  const boundary = `----boothbench${index}x${Math.random().toString(16).slice(2)}`;
  const chunks = [];
  photos.forEach((jpeg, i) => {
    const comment = Buffer.from(`booth bench upload ${index} photo ${i}`);
    const com = Buffer.alloc(4);
    com.writeUInt16BE(0xfffe, 0);
    com.writeUInt16BE(comment.length + 2, 2);
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="photos"; filename="u${index}-${i}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n`));
    chunks.push(jpeg.subarray(0, 2), com, comment, jpeg.subarray(2), Buffer.from('\r\n'));
  });
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  const bytes = chunks.reduce((n, c) => n + c.length, 0);
  const t0 = performance.now();
  return new Promise((resolve) => {
    let settled = false;
    const finish = (r) => {
      if (settled) return;
      settled = true;
      resolve({ bytes, ms: performance.now() - t0, ...r });
    };
    const req = http.request({ host, port, method: 'POST', path: `/api/sessions/${session}/photos`, agent: false, headers: { ...AUTH, 'content-type': `multipart/form-data; boundary=${boundary}`, 'content-length': bytes } });
    req.setTimeout(240_000, () => req.destroy(new Error('timeout')));
    req.on('response', (res) => {
      const body = [];
      res.on('data', (c) => body.push(c));
      res.on('end', () => {
        let json = null;
        try {
          json = JSON.parse(Buffer.concat(body).toString('utf8'));
        } catch {
          /* reported as the status alone */
        }
        finish({ status: res.statusCode, json });
      });
      res.on('error', (err) => finish({ status: res.statusCode, error: err.code ?? err.message }));
    });
    req.on('error', (err) => finish({ status: 0, error: err.code ?? err.message }));
    (async () => {
      for (const c of chunks) {
        if (settled || req.destroyed) return;
        if (!req.write(c)) await new Promise((r) => { req.once('drain', r); req.once('close', r); });
      }
      req.end();
    })();
  });
}

async function uploadPhase(photos) {
  const sessions = Array.from({ length: UPLOAD_SESSIONS }, (_, i) => `upload-${i}`);
  for (const name of sessions) await api('POST', '/api/sessions', { name, trigger: 'zwx', classNoun: 'backpack', kind: 'object' });
  const watch = watchRss();
  const t0 = performance.now();
  const results = await Promise.all(Array.from({ length: UPLOADS }, (_, i) => upload(sessions[i % sessions.length], i, photos)));
  const wall = (performance.now() - t0) / 1000;
  const rss = watch.stop();
  const bytesInFlight = results.reduce((n, r) => n + r.bytes, 0);
  const ok = results.filter((r) => r.status >= 200 && r.status < 300);
  const limited = results.filter((r) => r.status === 429).length;
  const server5xx = results.filter((r) => r.status >= 500).length;
  const other = results.filter((r) => !(r.status >= 200 && r.status < 300) && r.status !== 429);
  const added = ok.reduce((n, r) => n + (r.json?.summary?.added ?? 0), 0);
  const notAdded = ok.reduce((n, r) => n + (r.json?.results?.length ?? 0) - (r.json?.summary?.added ?? 0), 0);
  let listed = 0;
  for (const name of sessions) listed += (await api('GET', `/api/sessions/${name}/photos`)).photos.filter((p) => p.key !== null).length;
  const uploadedBytes = ok.reduce((n, r) => n + r.bytes, 0);
  const growthMiB = rss.peakMiB !== null ? rss.peakMiB - rss.startMiB : null;
  const phase = {
    name: `upload ${UPLOADS}x${UPLOAD_PHOTOS}`, unit: 'req/s', throughput: ok.length / wall,
    p50: pct(ok.map((r) => r.ms), 0.5), p99: pct(ok.map((r) => r.ms), 0.99), requests: UPLOADS, errors: other.length,
    detail: {
      uploads: UPLOADS, photosEach: UPLOAD_PHOTOS, sessions: UPLOAD_SESSIONS, wallS: wall, mbPerS: uploadedBytes / 1e6 / wall,
      bytesInFlightMiB: bytesInFlight / MiB, uploadedMiB: uploadedBytes / MiB, rssGrowthMiB: growthMiB,
      growthPerUploadedByte: growthMiB !== null && uploadedBytes > 0 ? (growthMiB * MiB) / uploadedBytes : null,
      ok: ok.length, rateLimited: limited, server5xx, otherFailures: other.map((r) => r.status || r.error), added, notAdded, listed,
      expectedListed: ok.length * UPLOAD_PHOTOS, bufferingChecked: bytesInFlight >= BUFFERING_MIN_BYTES,
    },
    ...rss,
  };
  phases.push(phase);
  if (server5xx) failures.push(`${phase.name}: ${server5xx} uploads answered 5xx`);
  if (notAdded) failures.push(`${phase.name}: ${notAdded} photos in accepted uploads were not added (duplicate/rejected)`);
  if (listed !== added || added !== ok.length * UPLOAD_PHOTOS) failures.push(`${phase.name}: ${ok.length} uploads accepted with ${ok.length * UPLOAD_PHOTOS} photos, ${added} reported added, ${listed} listed in the sessions`);
  if (rss.peakMiB !== null && rss.peakMiB > RSS_LIMIT_MB) failures.push(`${phase.name}: server peak RSS ${rss.peakMiB.toFixed(0)} MiB is over BENCH_RSS_LIMIT_MB=${RSS_LIMIT_MB}`);
  if (growthMiB !== null && bytesInFlight >= BUFFERING_MIN_BYTES && growthMiB * MiB >= bytesInFlight) failures.push(`${phase.name}: server RSS grew by ${growthMiB.toFixed(0)} MiB, as much as the ${(bytesInFlight / MiB).toFixed(0)} MiB in flight: uploads are being buffered in memory`);
  return phase;
}

// ---- run --------------------------------------------------------------------------------------

let exitCode = 0;
try {
  const t0 = performance.now();
  const photos = await basePhotos(UPLOAD_PHOTOS);
  console.log(
    `booth serve pid ${pid} at ${baseUrl}; ${CONNECTIONS} connections x ${DURATION_S} s per request phase; SSE ${SSE_CLIENTS.join('/')} clients x ${SSE_EVENTS} events at ${SSE_RATE}/s; ` +
      `${UPLOADS} uploads x ${UPLOAD_PHOTOS} photos of ${(photos.reduce((n, p) => n + p.length, 0) / UPLOAD_PHOTOS / MiB).toFixed(1)} MiB over ${UPLOAD_SESSIONS} sessions`,
  );
  const base = await cannon('health (baseline)', '/health', {});
  await cannon('session status', '/api/sessions/load', AUTH);
  await cannon('run status', `/api/sessions/load/runs/${statusRun}`, AUTH);
  // Uploads before the SSE phases: V8 keeps the heap that 500 streams grew, and the upload
  // phase's absolute RSS bound is about what uploads need, not about that residue.
  await uploadPhase(photos);
  for (const n of SSE_CLIENTS) await ssePhase(n);

  const f = (v, d = 0) => (v === null || v === undefined || Number.isNaN(v) ? '-' : v.toFixed(d));
  console.log(`\n${'phase'.padEnd(20)} ${'throughput'.padStart(16)} ${'p50 ms'.padStart(8)} ${'p99 ms'.padStart(8)} ${'errors'.padStart(7)} ${'peak RSS MiB'.padStart(13)} ${'vs /health'.padStart(11)}`);
  for (const p of phases) {
    const tp = `${f(p.throughput, p.throughput < 100 ? 1 : 0)} ${p.unit}`;
    console.log(`${p.name.padEnd(20)} ${tp.padStart(16)} ${f(p.p50, 1).padStart(8)} ${f(p.p99, 1).padStart(8)} ${String(p.errors).padStart(7)} ${f(p.peakMiB).padStart(13)} ${`${(p.throughput / base.throughput).toPrecision(2)}x`.padStart(11)}`);
  }
  console.log('');
  for (const p of phases.filter((x) => x.name.startsWith('SSE'))) {
    const d = p.detail;
    console.log(
      `${p.name}: connected ${d.connected}/${d.clients}, connect p50 ${f(d.connectP50, 1)} / p99 ${f(d.connectP99, 1)} ms; ${d.received} step events received of ${d.connected * d.events} ` +
        `(missed ${d.missed}, repeated ${d.repeated}, out of order ${d.outOfOrder}); delivery p50/p99 ${f(p.p50)}/${f(p.p99)} ms (server polls the store every ${SERVER_POLL_MS} ms); ` +
        `RSS +${f(d.rssPerClientKiB)} KiB/client; server fds ${d.fdBefore} before, ${d.fdDuring} connected, ${d.fdAfter} ${f(d.releaseMs)} ms after hang-up`,
    );
  }
  const upPhase = phases.find((x) => x.name.startsWith('upload'));
  const up = upPhase.detail;
  console.log(
    `upload: ${up.ok} accepted, ${up.rateLimited} rate-limited (429), ${up.server5xx} 5xx, other failures [${up.otherFailures.join(', ')}]; ${f(up.mbPerS, 1)} MB/s; ` +
      `photos added ${up.added}, listed ${up.listed} (expected ${up.expectedListed}); ${f(up.uploadedMiB)} MiB uploaded, ${f(up.bytesInFlightMiB)} MiB in flight at once; ` +
      `server RSS +${f(up.rssGrowthMiB)} MiB (${f(up.growthPerUploadedByte, 3)} of the bytes uploaded), peak ${f(upPhase.peakMiB)} MiB (limit ${RSS_LIMIT_MB})` +
      (up.bufferingChecked ? '' : `; buffering check skipped (under ${BUFFERING_MIN_BYTES / MiB} MiB in flight)`),
  );
  console.log(`total ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  if (JSON_OUT) console.log(JSON.stringify({ server: baseUrl, phases, failures }, null, 2));
  if (failures.length) {
    exitCode = 1;
    console.error(`\nFAILED:\n- ${failures.join('\n- ')}`);
    if (serverLog.length) console.error(`server log (first lines):\n${serverLog.slice(0, 20).join('\n')}`);
  }
} catch (err) {
  exitCode = 1;
  console.error(err);
  if (serverLog.length) console.error(`server log (first lines):\n${serverLog.slice(0, 20).join('\n')}`);
} finally {
  await store.close();
  await cleanup();
}
process.exit(exitCode);
