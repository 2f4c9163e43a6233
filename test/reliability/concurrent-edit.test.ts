/**
 * Two clients editing one session at once lose nothing. Every writer of a session manifest goes
 * through `SessionStore.update` (read with the etag, apply, write with `ifMatch`, re-apply on a
 * conflict), so:
 * (a) two or more `booth` CLI processes editing one session at the same moment (hand captions,
 *     include/exclude) keep every edit;
 * (b) concurrent HTTP PATCHes of different fields and photos, sent to two servers that share one
 *     store, all survive; a PATCH with a stale `If-Match` gets 412 and changes nothing;
 * (c) two `booth add` processes adding different photos (and one photo in common) to one session
 *     at once: every photo ends up in the manifest, the common one once;
 * (d) long operations merge into the fresh manifest: a trigger change, a decision and a crop made
 *     while `prepare` runs, and a hand caption set while a caption run goes on, are kept (an edit
 *     is injected at a fixed point of the operation, so the interleaving is the same every run).
 * Prints one `[reliability]` line: edits attempted, edits that survived, conflicts re-applied.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createOfflineCaptioner } from '../../src/captions/offline.js';
import { captionSession } from '../../src/captions/session.js';
import { silentLogger } from '../../src/log.js';
import { prepareSession } from '../../src/preprocess/pipeline.js';
import { addPhotos } from '../../src/sessions/intake.js';
import type { SessionManifest } from '../../src/sessions/manifest.js';
import { SessionStore, sessionKeys } from '../../src/sessions/store.js';
import { createFsStore } from '../../src/storage/drivers/fs.js';
import type { ObjectStore, PutBody, PutOptions } from '../../src/storage/types.js';
import { booth, json, cliBuilt } from '../helpers/cli.js';
import { noiseImage } from '../helpers/images.js';
import { AUTH, testApp } from '../server/helpers.js';

const built = cliBuilt('the concurrent-edit tests');

/** The debug line `SessionStore.update` logs each time it re-applies a change after a conflict. */
const RETRY_LOG = 'session manifest changed concurrently';

const tally = { attempted: 0, survived: 0, conflicts: 0 };

describe.skipIf(!built)('concurrent edits of one session', () => {
  let dir: string;
  let root: string;
  let storeUrl: string;
  let store: ObjectStore;
  let sessions: SessionStore;

  /** `count` small distinct photos (noise, so no two are near-duplicates) named `<prefix><i>.jpg` in `folder`. */
  async function photos(folder: string, prefix: string, seeds: number[]): Promise<string[]> {
    await mkdir(folder, { recursive: true });
    const files: string[] = [];
    for (const [i, seed] of seeds.entries()) {
      const file = path.join(folder, `${prefix}${i}.jpg`);
      await writeFile(file, await noiseImage(480, 360, seed));
      files.push(file);
    }
    return files;
  }

  async function newSession(name: string, kind: 'person' | 'object' = 'person'): Promise<void> {
    await sessions.create({ name, subject: { trigger: 'ohwx', classNoun: kind === 'person' ? 'man' : 'backpack', kind }, base: 'sd15' });
  }

  /** Run `booth` with debug logs, counting the conflicts it re-applied. */
  async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    const r = await booth(storeUrl, args, { BOOTH_LOG_LEVEL: 'debug' });
    tally.conflicts += r.stderr.split(RETRY_LOG).length - 1;
    return r;
  }

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'booth-concurrent-'));
    root = path.join(dir, 'store');
    storeUrl = `file://${root}`;
    store = createFsStore({ root, logger: silentLogger() });
    sessions = new SessionStore(store);
  });
  afterAll(async () => {
    await store?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
    console.log(`[reliability] concurrent edits: attempted ${tally.attempted}, survived ${tally.survived}, lost ${tally.attempted - tally.survived}, conflicts retried ${tally.conflicts}`);
  });

  it('keeps every edit of CLI processes that edit one session at the same moment', async () => {
    await newSession('cli');
    const files = await photos(path.join(dir, 'cli-photos'), 'p', [11, 12, 13, 14, 15, 16]);
    await addPhotos(sessions, 'cli', files);
    const names = files.map((f) => path.basename(f));
    const caption = (i: number) => `a photo of ohwx man, take ${i}`;
    // Pairs of processes, then all at once: hand captions on some photos, decisions on others.
    const waves: Array<Array<{ args: string[]; check: (m: SessionManifest) => boolean }>> = [
      [0, 1].map((i) => edit(i)),
      [2, 3].map((i) => edit(i)),
      [0, 1, 2, 3, 4, 5].map((i) => edit(i + 6)),
    ];
    function edit(n: number) {
      const i = n % names.length;
      const name = names[i] as string;
      if (n % 2 === 0) {
        const text = caption(n);
        return { args: ['caption', 'cli', name, text], check: (m: SessionManifest) => m.photos[i]?.caption === text && m.photos[i]?.captionSource === 'hand' };
      }
      const verb = n >= 6 ? 'include' : 'exclude';
      return { args: ['photo', verb, 'cli', name], check: (m: SessionManifest) => m.photos[i]?.override === verb };
    }
    for (const wave of waves) {
      const results = await Promise.all(wave.map((e) => cli(e.args)));
      for (const r of results) expect(r.code, r.stderr).toBe(0);
      const m = await sessions.get('cli');
      tally.attempted += wave.length;
      const kept = wave.filter((e) => e.check(m));
      tally.survived += kept.length;
      expect(kept.map((e) => e.args.join(' '))).toEqual(wave.map((e) => e.args.join(' ')));
    }
    expect((await sessions.get('cli')).photos).toHaveLength(6);
  });

  it('adds every photo when two `booth add` processes add to one session at once', async () => {
    await newSession('adds');
    const a = await photos(path.join(dir, 'add-a'), 'a', [21, 22, 23, 24]);
    const b = await photos(path.join(dir, 'add-b'), 'b', [31, 32, 33, 34]);
    // The same bytes in both folders: whichever process records it first wins, the other reports a duplicate.
    await writeFile(path.join(dir, 'add-a', 'common.jpg'), await noiseImage(480, 360, 99));
    await writeFile(path.join(dir, 'add-b', 'common.jpg'), await noiseImage(480, 360, 99));
    const [ra, rb] = await Promise.all([cli(['add', 'adds', path.join(dir, 'add-a'), '--json']), cli(['add', 'adds', path.join(dir, 'add-b'), '--json'])]);
    expect(ra?.code, ra?.stderr).toBe(0);
    expect(rb?.code, rb?.stderr).toBe(0);
    const summaries = [ra, rb].map((r) => json<{ summary: { added: number; duplicate: number } }>(r?.stdout ?? '').summary);
    expect(summaries.reduce((n, s) => n + s.added, 0)).toBe(9);
    expect(summaries.reduce((n, s) => n + s.duplicate, 0)).toBe(1);
    const m = await sessions.get('adds');
    const stored = m.photos.map((p) => p.name).sort();
    expect(stored.filter((n) => n === 'common.jpg')).toHaveLength(1);
    expect(stored.filter((n) => n !== 'common.jpg')).toEqual([...a, ...b].map((f) => path.basename(f)).sort());
    expect(new Set(m.photos.map((p) => p.sha256)).size).toBe(9);
    for (const p of m.photos) expect(await store.head(p.key as string), p.name).not.toBeNull();
    tally.attempted += 9;
    tally.survived += m.photos.length;
  });

  describe('through the REST API', () => {
    let apps: Array<{ app: FastifyInstance; close: () => Promise<void> }> = [];
    beforeAll(async () => {
      // Two servers on one store, as behind a load balancer: each serialises its own requests
      // per session, so the conflicts here are between the servers.
      apps = [await testApp({ store }), await testApp({ store })];
    });
    afterAll(async () => {
      for (const a of apps) tally.conflicts += (a.app as unknown as { booth: { sessions: SessionStore } }).booth.sessions.conflictsRetried;
      for (const a of apps) await a.close();
    });
    const app = (i: number): FastifyInstance => (apps[i % apps.length] as { app: FastifyInstance }).app;

    it('keeps every field of many concurrent PATCHes sent to two servers', async () => {
      await newSession('http');
      const files = await photos(path.join(dir, 'http-photos'), 'h', [41, 42, 43, 44]);
      await addPhotos(sessions, 'http', files);
      const shas = (await sessions.get('http')).photos.map((p) => p.sha256);
      for (let round = 1; round <= 4; round++) {
        const want = {
          trigger: `sks${round}`,
          classNoun: round % 2 ? 'person' : 'man',
          framing: round % 2 ? 'upper-body' : 'head-and-shoulders',
          identity: round % 2 ? 'off' : 'auto',
          captionTemplate: `photo of {trigger} {class}, round ${round}`,
        } as const;
        const decision = round % 2 ? 'exclude' : 'include';
        const requests = [
          ...Object.entries(want).map(([field, value]) => ({ method: 'PATCH' as const, url: '/api/sessions/http', payload: { [field]: value } })),
          ...shas.map((sha, i) => ({ method: 'PATCH' as const, url: `/api/sessions/http/photos/${sha}`, payload: i % 2 ? { decision } : { caption: `hand caption ${round}.${i}`, checkCaption: false } })),
        ];
        const replies = await Promise.all(requests.map((r, i) => app(i).inject({ ...r, headers: AUTH })));
        for (const [i, r] of replies.entries()) expect(r.statusCode, `${requests[i]?.url} ${JSON.stringify(requests[i]?.payload)}: ${r.body}`).toBe(200);
        const m = await sessions.get('http');
        const kept = [
          m.subject.trigger === want.trigger,
          m.subject.classNoun === want.classNoun,
          m.settings.framing === want.framing,
          m.settings.identity === want.identity,
          m.settings.captionTemplate === want.captionTemplate,
          ...shas.map((sha, i) => {
            const p = m.photos.find((x) => x.sha256 === sha);
            return i % 2 ? p?.override === decision : p?.caption === `hand caption ${round}.${i}` && p.captionSource === 'hand';
          }),
        ];
        tally.attempted += requests.length;
        tally.survived += kept.filter(Boolean).length;
        expect(kept, `round ${round}`).toEqual(requests.map(() => true));
      }
    });

    it('answers a PATCH with a stale If-Match with 412 and applies nothing; a current one works', async () => {
      const read = await app(0).inject({ url: '/api/sessions/http', headers: AUTH });
      const etag = read.headers.etag as string;
      expect(etag).toMatch(/^"[^"]+"$/);
      const ok = await app(1).inject({ method: 'PATCH', url: '/api/sessions/http', headers: { ...AUTH, 'if-match': etag }, payload: { trigger: 'zwx' } });
      expect(ok.statusCode, ok.body).toBe(200);
      const next = ok.headers.etag as string;
      expect(next).toMatch(/^"[^"]+"$/);
      expect(next).not.toBe(etag);
      // Another client that read before the change still holds the old ETag.
      const stale = await app(0).inject({ method: 'PATCH', url: '/api/sessions/http', headers: { ...AUTH, 'if-match': etag }, payload: { trigger: 'lost' } });
      expect(stale.statusCode).toBe(412);
      const body = stale.json<{ error: { code: string; message: string } }>();
      expect(body.error.code).toBe('PRECONDITION_FAILED');
      expect(body.error.message).toMatch(/GET \/api\/sessions\/http again, re-apply your change/);
      const sha = (await sessions.get('http')).photos[0]?.sha256 as string;
      const stalePhoto = await app(1).inject({ method: 'PATCH', url: `/api/sessions/http/photos/${sha}`, headers: { ...AUTH, 'if-match': etag }, payload: { decision: 'exclude' } });
      expect(stalePhoto.statusCode).toBe(412);
      const after = await app(1).inject({ url: '/api/sessions/http', headers: AUTH });
      expect(after.headers.etag).toBe(next);
      expect(after.json<{ subject: { trigger: string } }>().subject.trigger).toBe('zwx');
      // The current ETag works, through either server.
      const again = await app(0).inject({ method: 'PATCH', url: '/api/sessions/http', headers: { ...AUTH, 'if-match': next }, payload: { classNoun: 'woman' } });
      expect(again.statusCode, again.body).toBe(200);
      expect((await sessions.get('http')).subject).toMatchObject({ trigger: 'zwx', classNoun: 'woman' });
      tally.attempted += 2;
      tally.survived += 2;
    });
  });

  it('keeps a trigger change, a decision and a crop made while prepare runs, and a hand caption made while captioning', async () => {
    await newSession('long', 'object');
    const files = await photos(path.join(dir, 'long-photos'), 'l', [51, 52, 53]);
    await addPhotos(sessions, 'long', files);
    const [first, second, third] = (await sessions.get('long')).photos.map((p) => p.sha256) as [string, string, string];
    const crop = { x: 10, y: 10, width: 200, height: 200 };
    // Another client (its own SessionStore on the same folder) edits when prepare writes its
    // contact sheet: after prepare has read the manifest and computed everything, before it saves.
    const otherStore = createFsStore({ root, logger: silentLogger() });
    const other = new SessionStore(otherStore);
    let edited = false;
    const hooked: ObjectStore = Object.assign(Object.create(store) as ObjectStore, {
      async put(key: string, body: PutBody, options?: PutOptions) {
        if (!edited && key === sessionKeys('long').contactSheetPng) {
          edited = true;
          await other.update('long', (m) => {
            m.subject.trigger = 'sks';
            const a = m.photos.find((p) => p.sha256 === first);
            const b = m.photos.find((p) => p.sha256 === second);
            if (a) a.override = 'exclude';
            if (b) b.cropOverride = crop;
            return m;
          });
        }
        return store.put(key, body, options);
      },
    });
    const report = await prepareSession(new SessionStore(hooked), 'long', { threads: 1 });
    expect(edited).toBe(true);
    expect(report.counts.accepted).toBe(3);
    const m = await sessions.get('long');
    const byId = (sha: string) => m.photos.find((p) => p.sha256 === sha);
    const kept = [m.subject.trigger === 'sks', byId(first)?.override === 'exclude', JSON.stringify(byId(second)?.cropOverride) === JSON.stringify(crop)];
    expect(kept).toEqual([true, true, true]);
    // The edits came after prepare read its inputs: the session must be prepared again.
    expect(m.state).toBe('created');
    // The third photo's inputs did not change: it carries prepare's result.
    expect(byId(third)).toMatchObject({ status: 'accepted', datasetKey: expect.stringMatching(/dataset\//) });
    tally.attempted += 3;
    tally.survived += kept.filter(Boolean).length;

    // A caption run and a person captioning the same photo by hand meanwhile: the hand caption wins.
    await prepareSession(sessions, 'long', { threads: 1 });
    const offline = createOfflineCaptioner();
    let handSet = false;
    const captioner = {
      ...offline,
      async caption(input: Parameters<typeof offline.caption>[0]) {
        if (!handSet) {
          handSet = true;
          await other.update('long', (x) => {
            const p = x.photos.find((q) => q.sha256 === third);
            if (p) {
              p.caption = 'a photo of sks backpack on a table, by hand';
              p.captionSource = 'hand';
            }
            return x;
          });
        }
        return offline.caption(input);
      },
    };
    const run = await captionSession(sessions, 'long', { captioner, concurrency: 1, review: false });
    expect(handSet).toBe(true);
    const after = await sessions.get('long');
    const hand = after.photos.find((p) => p.sha256 === third);
    expect(hand).toMatchObject({ caption: 'a photo of sks backpack on a table, by hand', captionSource: 'hand' });
    // The run still recorded its other captions.
    expect(run.counts.captioned).toBeGreaterThan(0);
    expect(after.photos.filter((p) => p.status === 'accepted' && p.sha256 !== third).every((p) => p.captionSource === 'offline')).toBe(true);
    tally.attempted += 1;
    tally.survived += hand?.captionSource === 'hand' ? 1 : 0;
    tally.conflicts += sessions.conflictsRetried + other.conflictsRetried;
    await otherStore.close();
  });
});
