/**
 * The longer faults (`npm run test:reliability`; CI runs faults.test.ts): S3 stopped and started
 * again under a running worker (a short outage the retries ride out, a long one that fails the
 * run resumably) and the CLI while S3 is down; SIGKILL of `booth serve` mid photo upload and of
 * `booth export` mid write (of `booth add` and `booth prepare`: test/cli/restart.test.ts); a
 * worker whose clock is two hours off; the disk filling up under `booth prepare`. See faults.test.ts for the
 * rest and docs/reliability.md for the outcomes asserted.
 */
import { request } from 'node:http';
import { mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { createFsStore, createS3Store, listAll, readAll } from '../../src/storage/index.js';
import type { ObjectStore } from '../../src/storage/types.js';
import { downloadVerifiedState } from '../../src/training/transfer.js';
import { startWorker } from '../../src/training/worker.js';
import { startS3rver, type S3rverHandle } from '../helpers/s3rver.js';
import { standInCommand } from '../helpers/training.js';
import { RunStore, runKeys } from '../../src/training/runs.js';
import { CLI, booth, json } from '../helpers/cli.js';
import { noiseImage } from '../helpers/images.js';
import {
  CLOCK_SHIFT, TOTAL, age, built, cleanupFaults, dir, expectExactContinuation, keysUnder, multipartBody, newRun, range, referenceLr, seedRoot, seededRoot, setArgs, setupFaults, sha256, sleep, snapshot, startServe, stepEvents, storeModel,
  tempFiles, trainerEnv, upload, useTmpfs, waitStatus, type StatusJson,
} from './faults-support.js';

beforeAll(setupFaults, 120_000);
afterAll(cleanupFaults);

/** A logger that keeps every line, so a test can count retries and wait for a message. */
function capturingLogger(): { logger: Logger; lines: Array<{ msg?: string; err?: string }>; until(msg: string): Promise<void> } {
  const lines: Array<{ msg?: string; err?: string }> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) lines.push(JSON.parse(line) as { msg?: string });
      cb();
    },
  });
  return {
    logger: pino({ level: 'info' }, sink),
    lines,
    async until(msg: string) {
      for (let i = 0; !lines.some((l) => l.msg === msg); i++) {
        if (i > 6000) throw new Error(`the worker never logged "${msg}"`);
        await sleep(10);
      }
    },
  };
}

describe.skipIf(!built)('faults (slow)', () => {
  describe('3. S3 stopped and started again under a running worker (same port, same folder)', () => {
    let s3: S3rverHandle;
    let store: ObjectStore;
    beforeAll(async () => {
      s3 = await startS3rver();
      store = await createS3Store({ bucket: s3.bucket, endpoint: s3.endpoint, credentials: s3.credentials, logger: pino({ level: 'silent' }) });
      const seed = createFsStore({ root: seedRoot });
      for await (const info of listAll(seed, '')) await store.put(info.key, await readAll(seed, info.key));
      await seed.close();
    });
    afterAll(async () => {
      await store?.close();
      await s3?.stop();
    });
    const cliEnv = () => ({
      ...trainerEnv(path.join(dir, 'f3-work')),
      BOOTH_S3_ENDPOINT: s3.endpoint,
      AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
      AWS_REGION: 'us-east-1',
    });
    const storeUrl = () => `s3://${s3.bucket}`;
    /**
     * The store as the worker sees it, resolving `stored` once `key` has been written: the
     * outage starts right after resume state 5 is complete, so the upload of state 10 meets it
     * however fast the machine is.
     */
    const watched = (suffix: string): { store: ObjectStore; stored: Promise<void> } => {
      let seen: () => void = () => undefined;
      const stored = new Promise<void>((resolve) => (seen = resolve));
      const put: ObjectStore['put'] = async (key, body, options) => {
        const info = await store.put(key, body, options);
        if (key.endsWith(suffix)) seen();
        return info;
      };
      return { store: { ...store, url: store.url, put }, stored };
    };
    const worker = (run: string, logger: Logger, on: ObjectStore) =>
      startWorker({ store: on, session: 'bag', run, attempt: 1, workDir: path.join(dir, 'f3-work', 'bag', run), trainer: standInCommand(), env: { ...process.env, STANDIN_STEP_MS: '100' }, logger, statusIntervalMs: 100, logIntervalMs: 300 });

    it('a 3 s outage is ridden out by the retries: the run completes with every state and the model intact', { timeout: 120_000 }, async () => {
      const run = await newRun(store);
      const cap = capturingLogger();
      const seen = watched(`/state/5/${'COMPLETE'}`);
      const w = worker(run, cap.logger, seen.store);
      await seen.stored;
      await s3.kill();
      const down = Date.now();
      await sleep(3000);
      await s3.restart();
      const outage = (Date.now() - down) / 1000;
      const result = await w.done;
      expect(result.state, result.message).toBe('done');
      const retries = cap.lines.filter((l) => l.msg === 'upload failed; retrying').length;
      expect(retries).toBeGreaterThan(0);
      const runs = new RunStore(store);
      const states = await runs.resumeStates('bag', run);
      expect(states).toEqual([10, 15, 20]);
      const keys = runKeys('bag', run);
      for (const step of states) await downloadVerifiedState(store, keys.state(step), path.join(dir, 'f3-verify', run, String(step)));
      // The model folder verifies against its marker just the same.
      await downloadVerifiedState(store, keys.modelPrefix, path.join(dir, 'f3-verify', run, 'model'));
      expect((await runs.status('bag', run))?.state).toBe('done');
      const steps = await stepEvents(store, run, 1);
      expect(steps.map((e) => e.step)).toEqual(range(1, TOTAL));
      expect(steps.map((e) => e.lr)).toEqual(referenceLr);
      console.log(`[reliability] S3 outage ${outage.toFixed(1)} s mid-run: ${retries} upload retries, run done, ${states.length}/${states.length} kept states and the model verified against their markers`);
    });

    it('an outage longer than the retries fails the run clearly, the CLI names the store, and `booth resume` continues from the last complete state', { timeout: 120_000 }, async () => {
      const run = await newRun(store);
      const cap = capturingLogger();
      const seen = watched(`/state/5/${'COMPLETE'}`);
      const w = worker(run, cap.logger, seen.store);
      await seen.stored;
      await s3.kill();
      const down = Date.now();
      await cap.until('upload failed; retrying');
      // The control plane while S3 is down: a clear error naming the store, no stack trace.
      const cli = await booth(storeUrl(), ['status', 'bag'], cliEnv());
      expect(cli.code).toBe(1);
      expect(cli.stderr).toContain(`s3://${s3.bucket}/`);
      expect(cli.stderr).toContain(s3.endpoint);
      expect(cli.stderr).not.toMatch(/^\s+at /m);
      // S3 comes back only when the worker, its uploads given up, retries its final status.
      await cap.until('final status write failed; retrying');
      await s3.restart();
      const outage = (Date.now() - down) / 1000;
      const result = await w.done;
      expect(result.state).toBe('failed');
      expect(result.message).toMatch(/uploading to the store failed: resume state 10: .*cannot reach/);
      expect(result.message).toContain('`booth resume bag` continues from step 5');
      const status = await new RunStore(store).status('bag', run);
      expect(status).toMatchObject({ state: 'failed', message: result.message });
      expect(await new RunStore(store).resumeStates('bag', run)).toEqual([4, 5]);

      const resumed = await booth(storeUrl(), ['resume', 'bag', run, '--json'], cliEnv());
      expect(resumed.code, resumed.stderr).toBe(0);
      await waitStatus(storeUrl(), cliEnv(), (s: StatusJson) => s.state === 'done' && (s.status?.step ?? 0) === TOTAL, 'done after resume');
      expectExactContinuation(await stepEvents(store, run, 1), await stepEvents(store, run, 2), 5);
      const given = cap.lines.filter((l) => l.msg === 'upload failed for good').length;
      console.log(
        `[reliability] S3 outage ${outage.toFixed(1)} s (past the ~7.5 s retry budget): ${cap.lines.filter((l) => l.msg === 'upload failed; retrying').length} retries, ${given} upload(s) given up, ` +
          `run failed naming the store, CLI exit 1 naming ${s3.endpoint} (no stack), booth resume continued from state 5 with exact steps and reference LRs`,
      );
    });
  });

  it('2a. SIGKILL of `booth serve` mid photo upload: no partial object, the re-upload matches an uninterrupted one byte for byte', { timeout: 60_000 }, async () => {
    const photos = await Promise.all([0, 1, 2, 3].map(async (i) => ({ name: `p${i}.jpg`, data: await noiseImage(600, 520, 3000 + i) })));
    const fresh = async (name: string): Promise<string> => {
      const root = path.join(dir, name);
      const r = await booth(root, ['session', 'create', 's', '--trigger', 'zwx', '--class', 'thing', '--kind', 'object']);
      expect(r.code, r.stderr).toBe(0);
      return root;
    };
    const reference = await fresh('f2a-ref');
    const killed = await fresh('f2a');
    const serverTmp = path.join(dir, 'f2a-server-tmp');
    await mkdir(serverTmp);

    let server = await startServe(reference, serverTmp);
    try {
      expect((await upload(server.url, photos)).status).toBe(201);
    } finally {
      await server.stop();
    }

    server = await startServe(killed, serverTmp);
    const uploads = path.join(killed, 'sessions', 's', 'uploads');
    try {
      // One whole photo, then half of the next one, then the server dies.
      const body = multipartBody(photos);
      const req = request(`${server.url}/api/sessions/s/photos`, { method: 'POST', headers: { 'content-type': body.contentType } });
      const failed = new Promise<string>((resolve) => {
        req.on('error', (err) => resolve(err.message));
        req.on('response', (res) => resolve(`answered ${res.statusCode}`));
      });
      // The parser knows the first part has ended only when the next one begins.
      const second = body.parts[1]!;
      req.write(Buffer.concat([body.parts[0]!, second.subarray(0, second.length >> 1)]));
      for (let i = 0; (await readdir(uploads).catch(() => [])).filter((f) => f.endsWith('.jpg')).length < 1; i++) {
        if (i > 2000) throw new Error('the first photo was never stored');
        await sleep(5);
      }
      await sleep(200);
      server.child.kill('SIGKILL');
      await server.stopped;
      expect(await failed).not.toMatch(/answered/);
    } finally {
      await server.stop();
    }
    const store = createFsStore({ root: killed });
    try {
      const listed = await keysUnder(store, 'sessions/s/');
      expect(listed.filter((k) => k.includes('.booth-tmp-'))).toEqual([]);
      const midManifest = JSON.parse((await readAll(store, 'sessions/s/session.json')).toString('utf8')) as { photos: Array<{ key: string; sha256: string }> };
      expect(midManifest.photos).toHaveLength(1);
      // Every listed upload is a whole photo that the manifest names.
      const storedUploads = listed.filter((k) => k.startsWith('sessions/s/uploads/'));
      expect(storedUploads).toEqual(midManifest.photos.map((p) => p.key));
      expect(sha256(await readAll(store, storedUploads[0]!))).toBe(midManifest.photos[0]!.sha256);
    } finally {
      await store.close();
    }
    const leakedTmp = (await readdir(serverTmp)).filter((n) => n.startsWith('booth-upload-')).length;

    server = await startServe(killed, serverTmp);
    try {
      const again = await upload(server.url, photos);
      expect(again.status).toBe(201);
      expect((again.body as { summary: unknown }).summary).toEqual({ added: 3, duplicate: 1, rejected: 0, skipped: 0 });
    } finally {
      await server.stop();
    }
    const [a, b] = await Promise.all([snapshot(reference), snapshot(killed)]);
    expect(b.photos).toEqual(a.photos);
    expect([...b.objects.keys()]).toEqual([...a.objects.keys()]);
    for (const [k, v] of b.objects) expect(v, k).toBe(a.objects.get(k));
    console.log(
      `[reliability] booth serve SIGKILL mid upload (photo 2 of 4 half sent): 1 whole photo stored, 0 partial objects listed, re-upload added 3 + 1 duplicate, ` +
        `store byte-identical to an uninterrupted upload (${b.objects.size} objects); ${leakedTmp} request temp folder(s) left in the server's TMPDIR`,
    );
  });

  it('2c. SIGKILL of `booth export` mid write: the previous export stays intact and downloadable, the re-run is byte-identical, temp files swept', { timeout: 90_000 }, async () => {
    const root = path.join(dir, 'f2c');
    const store = createFsStore({ root });
    const run = '20250102-000000-0a0a';
    try {
      await storeModel(store, run, 8);
      const name = `s-${run}`;
      const fp32 = await booth(root, ['export', 's', '--dtype', 'fp32', '--json']);
      expect(fp32.code, fp32.stderr).toBe(0);
      const uninterrupted = json<{ sha256: string; size: number }>(fp32.stdout);
      const fp16 = await booth(root, ['export', 's', '--dtype', 'fp16', '--json']);
      expect(fp16.code, fp16.stderr).toBe(0);
      const previous = json<{ sha256: string; size: number; name: string }>(fp16.stdout);
      expect(previous.name).toBe(name);

      const exportsDir = path.join(root, 'sessions', 's', 'exports');
      const child = execa(process.execPath, [CLI, '--store', root, 'export', 's', '--dtype', 'fp32'], { env: { BOOTH_LOG_LEVEL: 'error' }, reject: false, stdin: 'ignore' });
      let exited = false;
      void child.then(() => (exited = true));
      let written = 0;
      for (;;) {
        if (exited) throw new Error('the export finished before it was seen writing');
        const temps = (await readdir(exportsDir)).filter((n) => n.startsWith('.booth-tmp-'));
        const sizes = await Promise.all(temps.map((t) => stat(path.join(exportsDir, t)).then((st) => st.size, () => 0)));
        written = Math.max(0, ...sizes);
        if (written > 2 * 2 ** 20) break;
        await sleep(2);
      }
      child.kill('SIGKILL');
      expect((await child).signal).toBe('SIGKILL');

      const listed = await keysUnder(store, 'sessions/s/exports/');
      expect(listed).toEqual([`sessions/s/exports/${name}.json`, `sessions/s/exports/${name}.safetensors`]);
      expect(sha256(await readAll(store, `sessions/s/exports/${name}.safetensors`))).toBe(previous.sha256);
      const dl = await booth(root, ['download', 's', name, path.join(dir, 'f2c-download.safetensors'), '--json']);
      expect(dl.code, dl.stderr).toBe(0);
      expect(json<{ sha256: string }>(dl.stdout).sha256).toBe(previous.sha256);

      const rerun = await booth(root, ['export', 's', '--dtype', 'fp32', '--json']);
      expect(rerun.code, rerun.stderr).toBe(0);
      expect(json<{ sha256: string }>(rerun.stdout).sha256).toBe(uninterrupted.sha256);

      const leftovers = await tempFiles(exportsDir);
      expect(leftovers.length).toBeGreaterThan(0);
      await age(leftovers);
      expect((await booth(root, ['exports', 's'])).code).toBe(0);
      expect(await tempFiles(exportsDir)).toEqual([]);
      console.log(
        `[reliability] booth export SIGKILL at ${(written / 2 ** 20).toFixed(1)} of ${(uninterrupted.size / 2 ** 20).toFixed(1)} MiB: previous export intact (SHA-256 and download verified), ` +
          `re-run byte-identical to an uninterrupted export, ${leftovers.length} temp file(s) swept by the next listing an hour on`,
      );
    } finally {
      await store.close();
    }
  });

  it('6. a worker clock 2 h ahead, then 2 h behind: never shown lost, ETA sane, newest state chosen by step not mtime', { timeout: 90_000 }, async () => {
    const root = await seededRoot('f6');
    const url = pathToFileURL(root).href;
    const env = trainerEnv(path.join(dir, 'f6-work'));
    const HOUR = 3_600_000;
    const skewed = (ms: number) => ({ NODE_OPTIONS: `--import=${CLOCK_SHIFT}`, BOOTH_TEST_CLOCK_SHIFT_MS: String(ms) });
    let polls = 0;
    /** While the skewed worker lives, the control plane (true clock) must see it healthy. */
    const healthy = (s: StatusJson) => {
      polls++;
      expect(s.state).not.toBe('lost');
      if (s.status?.etaS !== null && s.status?.etaS !== undefined) {
        expect(s.status.etaS).toBeGreaterThanOrEqual(0);
        expect(s.status.etaS).toBeLessThan(600);
      }
    };
    const paused = async (step: number, state: number, shift: number) => {
      const s = await waitStatus(url, env, (x) => (x.status?.step ?? 0) >= step && (x.status?.resumeStates ?? []).includes(state), `step ${step}`, healthy);
      // The skew is real: the worker stamps its status with its own clock.
      const stamped = Date.parse((s.status as unknown as { updatedAt: string }).updatedAt);
      expect(Math.abs(stamped - (Date.now() + shift))).toBeLessThan(10 * 60_000);
      for (let i = 0; i < 2; i++) healthy(await waitStatus(url, env, () => true, 'status'));
      const human = await booth(url, ['status', 'bag'], env);
      expect(human.stdout).toMatch(/RUNNING/);
      const eta = /ETA (\S+)/.exec(human.stdout)?.[1];
      if (eta !== undefined) expect(eta).toMatch(/^(\d+s|\dm \d\ds)$/);
      return s;
    };

    const first = await booth(url, ['train', 'bag', '--json', ...setArgs], { ...env, ...skewed(2 * HOUR), STANDIN_PAUSE_AT: '12' });
    expect(first.code, first.stderr).toBe(0);
    const { run, handle } = json<{ run: string; handle: { pid: number } }>(first.stdout);
    await paused(12, 10, 2 * HOUR);
    process.kill(-handle.pid, 'SIGKILL');
    await waitStatus(url, env, (s) => s.state === 'lost', 'lost');

    const second = await booth(url, ['resume', 'bag', '--json'], { ...env, ...skewed(-2 * HOUR), STANDIN_PAUSE_AT: '17' });
    expect(second.code, second.stderr).toBe(0);
    const s2 = await paused(17, 15, -2 * HOUR);
    process.kill(-s2.record.launches.at(-1)!.handle.pid, 'SIGKILL');
    await waitStatus(url, env, (s) => s.state === 'lost', 'lost');
    // By modification time state 10 (written 2 h ahead) is the newest; by step it is 15.
    const stateFile = (step: number) => path.join(root, 'sessions', 'bag', 'runs', run, 'state', String(step), 'COMPLETE');
    const [m10, m15] = await Promise.all([stat(stateFile(10)), stat(stateFile(15))]);
    expect(m10.mtimeMs).toBeGreaterThan(m15.mtimeMs + HOUR);

    const third = await booth(url, ['resume', 'bag', '--json'], env);
    expect(third.code, third.stderr).toBe(0);
    await waitStatus(url, env, (s) => s.state === 'done' && s.record.launches.length === 3, 'done', (s) => expect(s.state).not.toBe('lost'));
    const store = createFsStore({ root });
    try {
      const log3 = (await readAll(store, runKeys('bag', run).log(3))).toString('utf8');
      expect(log3).toContain('resuming from the stored state of step 15');
      const [a1, a2, a3] = await Promise.all([1, 2, 3].map((n) => stepEvents(store, run, n)));
      expect(a2!.map((e) => e.step)).toEqual(range(11, 17));
      expect(a2!.map((e) => e.lr)).toEqual(referenceLr.slice(10, 17));
      expectExactContinuation([...a1!.filter((e) => e.step <= 10), ...a2!], a3!, 15);
      expect(await new RunStore(store).resumeStates('bag', run)).toEqual([10, 15, 20]);
    } finally {
      await store.close();
    }
    console.log(`[reliability] worker clock +2 h then -2 h vs the control plane: ${polls} status polls, 0 shown lost or stale while alive, ETA within 0-600 s, resumed from state 15 (by step) although state 10 is 4 h newer by mtime`);
  });


  describe('4. disk full on the folder store (tmpfs)', () => {
    const disk = useTmpfs('tmpfs', '32m');
    it('(a) `booth prepare` on a store that fills up mid-dataset: clear error, nothing partial, re-run after freeing space succeeds', { timeout: 60_000 }, async (ctx) => {
      if (!disk.mounted) ctx.skip(disk.skipReason);
      const photos = path.join(dir, 'f4-photos');
      await mkdir(photos);
      for (let i = 0; i < 8; i++) await writeFile(path.join(photos, `p${i}.jpg`), await noiseImage(600, 520, 4000 + i));
      const session = async (root: string) => {
        expect((await booth(root, ['session', 'create', 's', '--trigger', 'zwx', '--class', 'thing', '--kind', 'object'])).code).toBe(0);
        expect((await booth(root, ['add', 's', photos])).code).toBe(0);
      };
      // An uninterrupted prepare on an ordinary disk shows how much each part needs.
      const refRoot = path.join(dir, 'f4-ref');
      await session(refRoot);
      expect((await booth(refRoot, ['prepare', 's'])).code).toBe(0);
      const pages = async (sub: string) => {
        const all = await readdir(path.join(refRoot, 'sessions', 's', sub), { recursive: true, withFileTypes: true });
        let n = 0;
        for (const e of all) if (e.isFile()) n += Math.ceil((await stat(path.join(e.parentPath, e.name))).size / 4096) * 4096 + 4096;
        return n;
      };
      const cache = await pages('cache');
      const dataset = await pages('dataset');

      const root = path.join(disk.mnt, 'prepare');
      await session(root);
      const filler = await disk.fill(cache + (dataset >> 1));
      const full = await booth(root, ['prepare', 's']);
      expect(full.code).toBe(1);
      expect(full.stderr).toMatch(/disk is full/i);
      expect(full.stderr).toMatch(/free (some )?space/i);
      expect(full.stderr).toContain(root);
      expect(full.stderr).not.toMatch(/^\s+at /m);
      const store = createFsStore({ root });
      let storedDataset: string[];
      try {
        const listed = await keysUnder(store, 'sessions/s/');
        expect(listed.filter((k) => k.includes('.booth-tmp-'))).toEqual([]);
        storedDataset = listed.filter((k) => k.startsWith('sessions/s/dataset/') && k.endsWith('.png'));
        expect(storedDataset.length).toBeLessThan(8);
        // Whatever the store lists is whole: every PNG ends with its IEND chunk.
        for (const k of storedDataset) expect((await readAll(store, k)).subarray(-8).toString('latin1'), k).toBe('IEND\xaeB`\x82');
        expect(JSON.parse((await readAll(store, 'sessions/s/session.json')).toString('utf8')).state).not.toBe('prepared');
      } finally {
        await store.close();
      }
      await rm(filler);
      const again = await booth(root, ['prepare', 's']);
      expect(again.code, again.stderr).toBe(0);
      const [a, b] = await Promise.all([snapshot(refRoot, 'sessions/s/dataset/'), snapshot(root, 'sessions/s/dataset/')]);
      expect([...b.objects.keys()]).toEqual([...a.objects.keys()]);
      for (const [k, v] of b.objects) expect(v, k).toBe(a.objects.get(k));
      await rm(root, { recursive: true, force: true });
      console.log(`[reliability] disk full during booth prepare (${storedDataset.length}/8 dataset images fitted): exit 1 with "${/disk is full[^;]*/i.exec(full.stderr)?.[0]}", 0 partial objects listed, re-run after freeing space byte-identical to an uninterrupted prepare`);
    });

  });
});
