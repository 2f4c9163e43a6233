/**
 * Model captioning through the real `openai` SDK against a local OpenAI-compatible server
 * (`helpers/openai-server.ts`) that checks each request and answers deterministically: success,
 * a caption without the placeholder, a 429 with Retry-After, a 500, a refusal, malformed JSON, a
 * response slower than the timeout, and a long caption with flags. Every photo must end captioned
 * or with a clear error, nothing already captioned may be lost, and nothing is paid for twice.
 * Then the Batch API: submit, a "restart" (new captioner, new client), poll, apply.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore } from '../../src/storage/index.js';
import type { ObjectStore } from '../../src/storage/types.js';
import { SessionStore } from '../../src/sessions/store.js';
import { addPhotos } from '../../src/sessions/intake.js';
import { prepareSession } from '../../src/preprocess/pipeline.js';
import { createOpenAICaptioner, retryAfterMs } from '../../src/captions/openai.js';
import { captionSession, captionSessionBatch, setHandCaption } from '../../src/captions/session.js';
import { loadStyle } from '../../src/captions/styles.js';
import { loadClipTokenizer, type ClipTokenizer } from '../../src/captions/clip-tokenizer.js';
import { USAGE, startFakeOpenAI, tintedPhoto, type FakeOpenAI, type Scenario } from './helpers/openai-server.js';

const TOKENIZER = path.resolve('../shared/models/clip-tokenizer');
const SCENARIOS: Scenario[] = ['ok', 'noun', 'rate-limit', 'server-error', 'refusal', 'malformed', 'slow', 'long-flags'];

describe('OpenAI captioner against a local OpenAI-compatible server', () => {
  let dir: string;
  let store: ObjectStore;
  let sessions: SessionStore;
  let server: FakeOpenAI;
  let tokenizer: ClipTokenizer | null = null;
  const names = SCENARIOS.map((s, i) => `${i}-${s}.jpg`);

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'booth-captions-openai-'));
    store = await openStore(`file://${path.join(dir, 'store')}`);
    sessions = new SessionStore(store);
    server = await startFakeOpenAI(SCENARIOS, { slowMs: 1500 });
    if (existsSync(TOKENIZER)) tokenizer = await loadClipTokenizer(TOKENIZER);
    else console.warn(`token counts estimated: ${TOKENIZER} is absent`);
    await sessions.create({ name: 's', subject: { trigger: 'zwx', classNoun: 'backpack', kind: 'object' }, base: 'sd15' });
    const files: string[] = [];
    for (const [i, n] of names.entries()) {
      const f = path.join(dir, n);
      await writeFile(f, await tintedPhoto(i, 100 + i));
      files.push(f);
    }
    await addPhotos(sessions, 's', files);
    await prepareSession(sessions, 's', { threads: 1 });
  });
  afterAll(async () => {
    await server.close();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  const delays: number[] = [];
  async function captioner(overrides: { key?: string; model?: string } = {}) {
    return createOpenAICaptioner({
      apiKey: overrides.key ?? server.key,
      baseURL: server.baseURL,
      model: overrides.model,
      style: await loadStyle('natural'),
      timeoutMs: 400,
      maxRetries: 2,
      // Recorded, not waited: the test asserts what was asked for, not how long it took.
      sleep: async (ms) => {
        delays.push(ms);
      },
    });
  }
  const photo = async (i: number) => (await sessions.get('s')).photos.find((p) => p.name === names[i])!;
  const chatRequests = (i: number) => server.log.filter((l) => l.path === '/v1/chat/completions' && l.index === i).length;

  it('captions every photo or records a clear error, honouring Retry-After and retrying 500s', async () => {
    const report = await captionSession(sessions, 's', { captioner: await captioner(), concurrency: 3, tokenizer });
    expect(server.violations).toEqual([]);
    const by = new Map(report.photos.map((p) => [p.name, p]));
    for (const i of [0, 1, 2, 3, 7]) expect(by.get(names[i]!)?.outcome, names[i]).toBe('captioned');
    for (const i of [4, 5, 6]) expect(by.get(names[i]!)?.outcome, names[i]).toBe('failed');
    expect(by.get(names[4]!)?.error).toMatch(/4-refusal\.jpg: the model refused to caption it: "I'm sorry/);
    expect(by.get(names[5]!)?.error).toMatch(/5-malformed\.jpg: .*not JSON \(malformed output\)/);
    expect(by.get(names[6]!)?.error).toMatch(/6-slow\.jpg: no answer within 400 ms \(3 attempts\)/);

    // Retry-After: 1 was honoured (1000 ms asked for); the 500 was retried and then succeeded.
    expect(delays).toContain(1000);
    expect(chatRequests(2)).toBe(2);
    expect(chatRequests(3)).toBe(2);
    expect(chatRequests(6)).toBe(3);

    const m = await sessions.get('s');
    for (const p of m.photos.filter((q) => q.status === 'accepted')) {
      expect(p.caption, p.name).toMatch(/zwx backpack/);
      expect(p.caption!.split('zwx backpack').length - 1, p.name).toBe(1);
      // The dataset .txt is the manifest's caption.
      const txt = await readFile(path.join(dir, 'store', p.datasetKey!.replace(/\.png$/, '.txt')), 'utf8');
      expect(txt).toBe(`${p.caption}\n`);
    }
    expect((await photo(0)).caption).toBe('a photo of zwx backpack on a plain background, image 0');
    expect((await photo(0)).captionSource).toBe('model');
    expect((await photo(1)).caption).toBe('a close-up photo of zwx backpack on a wooden table');
    // Failed photos keep what they had (prepare's template caption) and say why.
    for (const i of [4, 5, 6]) {
      const p = await photo(i);
      expect(p.caption).toBe('photo of zwx backpack');
      expect(p.captionSource).toBe('template');
      expect(p.captionError).toMatch(new RegExp(names[i]!.replace('.', '\\.')));
    }
    const long = await photo(7);
    expect(long.captionMeta?.flags).toEqual(['multiple-people', 'text-watermark']);
    expect(long.captionMeta?.tokens?.count).toBeGreaterThan(77);
    expect(long.captionMeta?.tokens?.exact).toBe(tokenizer !== null);
    expect(by.get(names[7]!)?.warning).toMatch(/over the text encoder's 77-token window/);
    expect(by.get(names[0]!)?.warning).toBeNull();

    // The contact sheet was re-rendered with the captions, who wrote them and the model's flags.
    const html = await readFile(path.join(dir, 'store', 'sessions/s/review/contact-sheet.html'), 'utf8');
    expect(html).toContain('a photo of zwx backpack on a plain background, image 0');
    expect(html).toContain('(gpt-4o-mini-2024-07-18)');
    expect(html).toContain('caption:multiple-people');
    expect(html).toContain('caption-error');

    // Cost: usage × $0.15/$0.60 per 1M for the five answered requests.
    expect(report.usage.inputTokens).toBe(5 * USAGE.prompt_tokens);
    expect(report.usage.outputTokens).toBe(5 * USAGE.completion_tokens);
    expect(report.usage.costUsd).toBeCloseTo((5 * USAGE.prompt_tokens * 0.15 + 5 * USAGE.completion_tokens * 0.6) / 1e6, 12);
  });

  it('re-runs only what changed, serves the cache, and never touches hand captions', async () => {
    const before = server.log.length;
    server.scenarios[4] = 'ok'; // the refusal now succeeds
    const again = await captionSession(sessions, 's', { review: false, captioner: await captioner(), tokenizer });
    const by = new Map(again.photos.map((p) => [p.name, p.outcome]));
    for (const i of [0, 1, 2, 3, 7]) expect(by.get(names[i]!)).toBe('unchanged');
    expect(by.get(names[4]!)).toBe('captioned');
    expect((await photo(4)).captionError).toBeNull();
    // Only the three previous failures were requested again (slow one three times).
    expect(server.log.slice(before).filter((l) => l.path === '/v1/chat/completions').map((l) => l.index).sort()).toEqual([4, 5, 6, 6, 6]);

    // A photo whose caption was replaced is served from the cache: no new request.
    await setHandCaption(sessions, 's', names[1]!, 'zwx backpack leaning on a chair', { review: false });
    await setHandCaption(sessions, 's', names[1]!, null, { review: false });
    expect((await photo(1)).captionSource).toBe('template');
    const mark = server.log.length;
    const cached = await captionSession(sessions, 's', { review: false, captioner: await captioner(), tokenizer });
    expect(cached.photos.find((p) => p.name === names[1])?.outcome).toBe('cached');
    expect(cached.usage.requests).toBe(0); // only 5-malformed and 6-slow were asked again, and they fail again
    expect(server.log.slice(mark).filter((l) => l.index === 1)).toEqual([]);
    expect((await photo(1)).caption).toBe('a close-up photo of zwx backpack on a wooden table');

    // Hand caption, then a forced run where the server refuses everything: nothing is lost.
    await setHandCaption(sessions, 's', names[0]!, 'zwx backpack photographed by hand', { review: false });
    const captionsBefore = (await sessions.get('s')).photos.map((p) => [p.name, p.caption, p.captionSource]);
    server.override = 'refusal';
    const mark2 = server.log.length;
    const forced = await captionSession(sessions, 's', { review: false, captioner: await captioner(), force: true, tokenizer });
    server.override = null;
    expect(forced.photos.find((p) => p.name === names[0])?.outcome).toBe('hand');
    expect(server.log.slice(mark2).some((l) => l.index === 0)).toBe(false);
    expect(forced.counts.failed).toBe(7);
    expect((await sessions.get('s')).photos.map((p) => [p.name, p.caption, p.captionSource])).toEqual(captionsBefore);
    const txt = await readFile(path.join(dir, 'store', (await photo(0)).datasetKey!.replace(/\.png$/, '.txt')), 'utf8');
    expect(txt).toBe('zwx backpack photographed by hand\n');
  });

  it('stops the job on a rejected key or an unknown model, naming what to fix', async () => {
    await expect(captionSession(sessions, 's', { review: false, captioner: await captioner({ key: 'sk-wrong' }), force: true })).rejects.toMatchObject({
      code: 'CAPTION_SERVICE',
      message: expect.stringMatching(/rejected the API key \(HTTP 401.*OPENAI_API_KEY/),
    });
    await expect(captionSession(sessions, 's', { review: false, captioner: await captioner({ model: 'gpt-nope' }), force: true })).rejects.toMatchObject({
      code: 'CAPTION_SERVICE',
      message: expect.stringMatching(/model "gpt-nope" is not available/),
    });
    // The rejected attempts are contract violations the server noticed; clear them for later tests.
    server.violations.length = 0;
    expect((await photo(0)).caption).toBe('zwx backpack photographed by hand');
  });

  it('estimates before paying with dryRun and calls nothing', async () => {
    const mark = server.log.length;
    const dry = await captionSession(sessions, 's', { review: false, captioner: await captioner(), force: true, dryRun: true });
    expect(server.log.length).toBe(mark);
    expect(dry.estimate?.photos).toBe(7);
    // gpt-4o-mini bills a low-detail image at 2833 tokens.
    expect(dry.estimate!.inputTokens).toBeGreaterThan(7 * 2833);
    expect(dry.estimate!.costUsd).toBeGreaterThan(0);
    expect(dry.estimate!.batchCostUsd).toBeCloseTo(dry.estimate!.costUsd! / 2, 12);
  });

  it('reads Retry-After in seconds, as an HTTP date, and retry-after-ms', () => {
    expect(retryAfterMs(new Headers({ 'retry-after': '2' }))).toBe(2000);
    expect(retryAfterMs(new Headers({ 'retry-after-ms': '250', 'retry-after': '9' }))).toBe(250);
    expect(retryAfterMs(new Headers({ 'retry-after': new Date(10_000 + 3000).toUTCString() }), 10_000)).toBe(3000);
    expect(retryAfterMs(new Headers({}))).toBeNull();
  });
});

describe('Batch API mode against the same server', () => {
  let dir: string;
  let store: ObjectStore;
  let sessions: SessionStore;
  let server: FakeOpenAI;
  const scenarios: Scenario[] = ['ok', 'noun', 'server-error', 'refusal'];

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'booth-captions-batch-'));
    store = await openStore(`file://${path.join(dir, 'store')}`);
    sessions = new SessionStore(store);
    server = await startFakeOpenAI(scenarios);
    await sessions.create({ name: 'b', subject: { trigger: 'zwx', classNoun: 'backpack', kind: 'object' }, base: 'sd15' });
    const files: string[] = [];
    for (let i = 0; i < scenarios.length; i++) {
      const f = path.join(dir, `${i}.jpg`);
      await writeFile(f, await tintedPhoto(i, 300 + i));
      files.push(f);
    }
    await addPhotos(sessions, 'b', files);
    await prepareSession(sessions, 'b', { threads: 1 });
  });
  afterAll(async () => {
    await server.close();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  const make = async () => createOpenAICaptioner({ apiKey: server.key, baseURL: server.baseURL, style: await loadStyle('tags'), timeoutMs: 2000, maxRetries: 0 });

  it('submits, survives a restart between submit and apply, then applies results and errors per photo', async () => {
    const submitted = await captionSessionBatch(sessions, 'b', { review: false, captioner: await make() });
    expect(submitted.batch?.status).toBe('in_progress');
    expect(submitted.counts.submitted).toBe(4);
    const pending = (await sessions.get('b')).captioning?.batch;
    expect(pending?.id).toMatch(/^batch_/);
    expect(pending?.requests).toHaveLength(4);
    // No captions changed yet; a synchronous run is refused while the batch is out.
    expect((await sessions.get('b')).photos.every((p) => p.captionSource === 'template')).toBe(true);
    await expect(captionSession(sessions, 'b', { review: false, captioner: await make() })).rejects.toMatchObject({ code: 'CONFLICT' });

    // "Restart": a new captioner (new SDK client) finds the batch id in the session and polls.
    const polled = await captionSessionBatch(sessions, 'b', { review: false, captioner: await make() });
    expect(polled.batch).toMatchObject({ id: pending?.id, status: 'in_progress' });

    server.completeBatches();
    const applied = await captionSessionBatch(sessions, 'b', { review: false, captioner: await make() });
    expect(server.violations).toEqual([]);
    expect(applied.batch?.status).toBe('completed');
    const m = await sessions.get('b');
    expect(m.captioning?.batch).toBeNull();
    const byName = new Map(m.photos.map((p) => [p.name, p]));
    expect(byName.get('0.jpg')?.caption).toBe('a photo of zwx backpack on a plain background, image 0');
    expect(byName.get('1.jpg')?.caption).toBe('a close-up photo of zwx backpack on a wooden table');
    expect(byName.get('2.jpg')?.captionError).toMatch(/2\.jpg: the batch request failed: The server had an error/);
    expect(byName.get('2.jpg')?.caption).toBe('photo of zwx backpack');
    expect(byName.get('3.jpg')?.captionError).toMatch(/3\.jpg: the model refused/);
    // Batch pricing: half of usage × list price, for the two answered requests.
    expect(applied.usage.costUsd).toBeCloseTo(((2 * USAGE.prompt_tokens * 0.15 + 2 * USAGE.completion_tokens * 0.6) / 1e6) * 0.5, 12);
    for (const p of m.photos.filter((q) => q.status === 'accepted')) {
      const txt = await readFile(path.join(dir, 'store', p.datasetKey!.replace(/\.png$/, '.txt')), 'utf8');
      expect(txt).toBe(`${p.caption}\n`);
    }
    // The results are cached: a synchronous run now pays only for the two failures.
    const mark = server.log.length;
    const sync = await captionSession(sessions, 'b', { review: false, captioner: await make() });
    expect(sync.photos.filter((p) => p.outcome === 'unchanged').map((p) => p.name).sort()).toEqual(['0.jpg', '1.jpg']);
    expect(server.log.slice(mark).filter((l) => l.path === '/v1/chat/completions').map((l) => l.index).sort()).toEqual([2, 3]);
  });

  it('finds a batch created just before a crash by its input file instead of submitting twice', async () => {
    // Simulate the crash: a batch was created at the server but the session only recorded the upload.
    server.scenarios[3] = 'ok';
    const first = await captionSessionBatch(sessions, 'b', { review: false, captioner: await make(), force: true });
    const id = first.batch?.id;
    await sessions.update('b', (m) => {
      m.captioning!.batch!.id = null;
      return m;
    });
    const batchesBefore = server.log.filter((l) => l.path === '/v1/batches' && l.status === 200).length;
    const resumed = await captionSessionBatch(sessions, 'b', { review: false, captioner: await make() });
    expect(resumed.batch?.id).toBe(id);
    expect(server.log.filter((l) => l.path === '/v1/batches' && l.status === 200).length - batchesBefore).toBe(1); // the list call, no create
    server.completeBatches();
    const done = await captionSessionBatch(sessions, 'b', { review: false, captioner: await make() });
    expect(done.batch?.status).toBe('completed');
    expect(server.violations).toEqual([]);
  });
});
