/**
 * What the fault tests (faults.test.ts, faults.slow.test.ts) share: a temporary folder with a
 * prepared session to copy, the learning rates of an uninterrupted run to compare resumed runs
 * with, ways to watch runs through the CLI, `booth serve` as a child process, a stored model to
 * export, and a tmpfs to fill. See docs/reliability.md.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, statfs, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, expect } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { createFsStore, listAll, readAll } from '../../src/storage/index.js';
import type { ObjectStore } from '../../src/storage/types.js';
import { STALE_TEMP_MS } from '../../src/storage/drivers/fs.js';
import { buildSpec } from '../../src/training/control.js';
import { parseEventLine, type EventOf } from '../../src/training/protocol.js';
import { RunStore, newRunId, runKeys } from '../../src/training/runs.js';
import { startWorker } from '../../src/training/worker.js';
import { SessionStore } from '../../src/sessions/store.js';
import { CLI, booth, cliBuilt, json } from '../helpers/cli.js';
import { STAND_IN, preparedSession, standInCommand } from '../helpers/training.js';
import { SD15_INLINE, shrink, writeDiffusersFolder } from '../convert/fixtures.js';

/** Whether the CLI is built (the tests spawn dist/cli/main.js); prints why the fault tests skip when not. */
export const built = cliBuilt('the fault tests');

/** The wall-clock shim for skewed processes (test/fixtures/clock-shift.mjs), as a URL for --import. */
export const CLOCK_SHIFT = pathToFileURL(path.resolve('test/fixtures/clock-shift.mjs')).href;

/** The run every training fault uses: text encoder 4 + UNet 16 steps, a state every 5, 3 kept. */
export const SPEC_SET = ['schedule.textEncoder.steps=4', 'schedule.unet.steps=16', 'resumeState.every=5', 'resumeState.keep=3', 'prior.classImages=2', 'samples.every=0'];
/** Steps of a run of {@link SPEC_SET}. */
export const TOTAL = 20;
/** {@link SPEC_SET} as `--set` arguments. */
export const setArgs = SPEC_SET.flatMap((s) => ['--set', s]);
/** The whole numbers from..to. */
export const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i);
/** Waits `ms` milliseconds. */
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Hex SHA-256. */
export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** The temporary folder of the file's faults. */
export let dir: string;
/** A folder store holding a prepared session "bag", copied for each fault that needs one. */
export let seedRoot: string;
/** Learning rate of each step (index step-1) in an uninterrupted run of {@link SPEC_SET}. */
export let referenceLr: number[];

/** Creates {@link dir}, the seed store and the reference learning rates; call from `beforeAll`. */
export async function setupFaults(): Promise<void> {
  dir = await mkdtemp(path.join(tmpdir(), 'booth-faults-'));
  seedRoot = path.join(dir, 'seed');
  const store = createFsStore({ root: seedRoot });
  try {
    await preparedSession(store, 'bag', dir);
    const run = await newRun(store);
    const r = await startWorker({ store, session: 'bag', run, attempt: 1, workDir: path.join(dir, 'seed-work'), trainer: standInCommand(), env: { ...process.env, STANDIN_STEP_MS: '1' }, logger: silentLogger(), statusIntervalMs: 50 }).done;
    expect(r.state).toBe('done');
    referenceLr = (await stepEvents(store, run, 1)).map((e) => e.lr);
    expect(referenceLr).toHaveLength(TOTAL);
    // The seed keeps only the session: each fault starts without runs.
    for await (const info of listAll(store, 'sessions/bag/runs/')) await store.delete(info.key);
  } finally {
    await store.close();
  }
}

/** Removes {@link dir}; call from `afterAll`. */
export async function cleanupFaults(): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

/** A new run of {@link SPEC_SET} in `store` (as `booth train` makes it, without launching). */
export async function newRun(store: ObjectStore): Promise<string> {
  const run = newRunId();
  const { spec } = await buildSpec(new SessionStore(store), 'bag', run, { preset: 'object-sd15', set: SPEC_SET });
  await new RunStore(store).create(spec, 'object-sd15');
  return run;
}

/** A fresh folder store with the prepared session. */
export async function seededRoot(name: string): Promise<string> {
  const root = path.join(dir, name);
  await cp(seedRoot, root, { recursive: true });
  return root;
}

/** The `step` events of one attempt, from the run's log in the store. */
export async function stepEvents(store: ObjectStore, run: string, attempt: number): Promise<Array<EventOf<'step'>>> {
  const text = (await readAll(store, runKeys('bag', run).log(attempt))).toString('utf8');
  return text
    .split('\n')
    .map(parseEventLine)
    .flatMap((p) => (p.kind === 'event' && p.event.event === 'step' ? [p.event] : []));
}

/** Every key under `prefix`. */
export async function keysUnder(store: ObjectStore, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const info of listAll(store, prefix)) out.push(info.key);
  return out;
}

/** Files under a folder whose name starts with `.booth-tmp-` (what killed puts leave). */
export async function tempFiles(root: string): Promise<string[]> {
  const all = await readdir(root, { recursive: true, withFileTypes: true }).catch(() => []);
  return all.filter((e) => e.isFile() && e.name.startsWith('.booth-tmp-')).map((e) => path.join(e.parentPath, e.name));
}

/** Ages files past the sweeper's threshold, as an hour of wall time would. */
export async function age(files: string[]): Promise<void> {
  const past = new Date(Date.now() - STALE_TEMP_MS - 60_000);
  for (const f of files) await utimes(f, past, past);
}

/** The steps and learning rates of attempts, checked against the uninterrupted run. */
export function expectExactContinuation(before: Array<EventOf<'step'>>, after: Array<EventOf<'step'>>, resumedAt: number): void {
  // The resumed attempt runs every step after the resume point exactly once, to the end…
  expect(after.map((e) => e.step)).toEqual(range(resumedAt + 1, TOTAL));
  // …so together with what the state held, every step 1..N ran once…
  expect([...before.filter((e) => e.step <= resumedAt), ...after].map((e) => e.step)).toEqual(range(1, TOTAL));
  // …with the learning rate of the uninterrupted run at every step.
  expect(after.map((e) => e.lr)).toEqual(referenceLr.slice(resumedAt));
}

/** What `booth status --json` prints (the parts the tests read). */
export interface StatusJson {
  state: string;
  record: { run: string; launches: Array<{ attempt: number; handle: { pid: number } }> };
  status: { step: number; total: number; resumeStates: number[]; message: string | null; etaS: number | null; state: string } | null;
}

/** `booth status --json` until `predicate` holds; `each` sees every answer on the way. */
export async function waitStatus(store: string, env: Record<string, string>, predicate: (s: StatusJson) => boolean, what: string, each?: (s: StatusJson) => void): Promise<StatusJson> {
  for (let i = 0; i < 400; i++) {
    const r = await booth(store, ['status', 'bag', '--json'], env);
    if (r.code === 0) {
      const s = json<StatusJson>(r.stdout);
      each?.(s);
      if (predicate(s)) return s;
    }
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Environment that makes the local launcher's workers run the stand-in trainer, work under `work`. */
export function trainerEnv(work: string): Record<string, string> {
  return { BOOTH_TRAINER: JSON.stringify([process.execPath, STAND_IN]), BOOTH_WORK_DIR: work, STANDIN_STEP_MS: '10' };
}

/**
 * A small tmpfs for disk-full faults, mounted in `beforeAll` and unmounted in `afterAll` (even
 * when a test failed). Where mounting is not permitted the tests skip with the reason, except
 * under CI=true, where that is a failure: CI runs as root and must run them.
 */
export function useTmpfs(name: string, size: string): { readonly mnt: string; readonly mounted: boolean; readonly skipReason: string; fill(leave: number): Promise<string> } {
  const state = { mnt: '', mounted: false, skipReason: '' };
  beforeAll(async () => {
    state.mnt = path.join(dir, name);
    await mkdir(state.mnt, { recursive: true });
    const r = await execa('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', state.mnt], { reject: false });
    if (r.exitCode === 0) state.mounted = true;
    else {
      state.skipReason = `cannot mount a tmpfs at ${state.mnt} (${String(r.stderr).trim() || `exit ${r.exitCode}`}); the disk-full faults need root or CAP_SYS_ADMIN`;
      if (process.env.CI === 'true') throw new Error(`${state.skipReason}; CI must run them`);
      console.warn(`skipping: ${state.skipReason}`);
    }
  });
  afterAll(async () => {
    if (!state.mounted) return;
    const r = await execa('umount', [state.mnt], { reject: false });
    if (r.exitCode !== 0) await execa('umount', ['-l', state.mnt]);
  });
  return {
    get mnt() {
      return state.mnt;
    },
    get mounted() {
      return state.mounted;
    },
    get skipReason() {
      return state.skipReason;
    },
    /** Fills the tmpfs until `leave` bytes are free; returns the filler's path (delete it to free the space). */
    async fill(leave: number): Promise<string> {
      const fs = await statfs(state.mnt);
      const free = fs.bavail * fs.bsize;
      const filler = path.join(state.mnt, `filler-${Math.random().toString(16).slice(2)}`);
      await writeFile(filler, Buffer.alloc(Math.max(0, free - leave)));
      return filler;
    },
  };
}

/** `booth serve` on a store, as a child process on a free port. */
export async function startServe(root: string, tmp: string): Promise<{ url: string; child: ChildProcess; stopped: Promise<void>; stop: () => Promise<void> }> {
  const child = spawn(process.execPath, [CLI, '--store', root, 'serve', '--port', '0'], { env: { ...process.env, BOOTH_LOG_LEVEL: 'error', TMPDIR: tmp }, stdio: ['ignore', 'ignore', 'pipe'] });
  const stopped = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let err = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      err += d;
      const m = /booth serve: (http:\/\/\S+?) \(/.exec(err);
      if (m?.[1]) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`booth serve exited ${code}: ${err}`)));
  });
  return {
    url,
    child,
    stopped,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      // A request the test left hanging keeps a graceful close waiting: do not wait for it.
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await stopped;
      clearTimeout(timer);
    },
  };
}

/** A multipart body of photo parts, kept as one buffer per part (the last one carries the end). */
export function multipartBody(photos: Array<{ name: string; data: Buffer }>): { contentType: string; parts: Buffer[] } {
  const boundary = `----booth${Math.random().toString(16).slice(2)}`;
  const parts = photos.map((p, i) =>
    Buffer.concat([
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="photos"; filename="${p.name}"\r\nContent-Type: image/jpeg\r\n\r\n`),
      p.data,
      Buffer.from(i === photos.length - 1 ? `\r\n--${boundary}--\r\n` : '\r\n'),
    ]),
  );
  return { contentType: `multipart/form-data; boundary=${boundary}`, parts };
}

/** Uploads photos in one multipart request to `booth serve`. */
export async function upload(url: string, photos: Array<{ name: string; data: Buffer }>): Promise<{ status: number; body: unknown }> {
  const body = multipartBody(photos);
  const res = await fetch(`${url}/api/sessions/s/photos`, { method: 'POST', headers: { 'content-type': body.contentType }, body: Buffer.concat(body.parts) });
  return { status: res.status, body: await res.json() };
}

/** What a store holds under a prefix (base64 by key), and the manifest's photo records without times. */
export async function snapshot(root: string, prefix = 'sessions/s/uploads/'): Promise<{ objects: Map<string, string>; photos: unknown[] }> {
  const store = createFsStore({ root });
  try {
    const objects = new Map<string, string>();
    for await (const info of listAll(store, prefix)) objects.set(info.key, (await readAll(store, info.key)).toString('base64'));
    const m = JSON.parse((await readAll(store, 'sessions/s/session.json')).toString('utf8')) as { photos: Array<Record<string, unknown>> };
    const photos = m.photos.map(({ name, sha256: h, key, status }) => ({ name, sha256: h, key, status }));
    return { objects, photos };
  } finally {
    await store.close();
  }
}

/** A session "s" with one finished run whose model is a small SD 1.5 Diffusers folder (channels / `factor`). */
export async function storeModel(store: ObjectStore, run: string, factor: number): Promise<void> {
  const local = await mkdtemp(path.join(dir, 'model-'));
  await writeDiffusersFolder(local, shrink(SD15_INLINE, factor));
  for (const e of await readdir(local, { withFileTypes: true, recursive: true })) {
    if (!e.isFile()) continue;
    const full = path.join(e.parentPath, e.name);
    await store.put(`sessions/s/runs/${run}/model/${path.relative(local, full).split(path.sep).join('/')}`, await readFile(full));
  }
  await rm(local, { recursive: true, force: true });
  await store.put('sessions/s/session.json', JSON.stringify({ name: 's', subject: { trigger: 'zwx', classNoun: 'thing', kind: 'object' } }));
  await store.put(`sessions/s/runs/${run}/spec.json`, JSON.stringify({ base: { architecture: 'sd1', model: 'runwayml/stable-diffusion-v1-5' }, resolution: 512, mode: { type: 'full' } }));
  await store.put(`sessions/s/runs/${run}/status.json`, JSON.stringify({ step: 800, state: 'done' }));
  await store.put(`sessions/s/runs/${run}/model/COMPLETE`, '');
}
