/**
 * The web UI end to end in headless Chromium (Debian's `chromium`, driven by playwright-core)
 * against a real server on 127.0.0.1 port 0: sign in with the token, create a session, upload real
 * photos with per-file progress, prepare, see faces and crops, edit a caption, move a crop with the
 * keyboard, estimate and launch a run (stand-in trainer via the local launcher), watch it reach the
 * end over SSE, see the exports page, and download an export interrupted halfway and resumed with
 * `Range`, checking the SHA-256. Screenshots of every page go to test/artifacts/ (git-ignored).
 * No console errors are allowed. Without Chromium the suite skips with the reason, except on CI.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import type { FastifyInstance } from 'fastify';
import type { ObjectStore } from '../../src/storage/types.js';
import { putJson, readAll } from '../../src/storage/index.js';
import { TOKEN, testApp } from './helpers.js';

// The predicates given to page.waitForFunction run in the browser. The test program is compiled
// without DOM types, so this file declares the little it uses (module scope: nothing leaks); they
// cannot be strings, since the UI's Content-Security-Policy rightly forbids eval.
interface PageElement {
  textContent: string | null;
  complete: boolean;
  naturalWidth: number;
}
declare const document: { querySelector(selector: string): PageElement | null; querySelectorAll(selector: string): Iterable<PageElement> };

const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'].find((p) => existsSync(p)) ?? null;
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const ARTIFACTS = path.join(ROOT, 'test', 'artifacts');
const SHARED = path.join(ROOT, '..', 'shared', 'data', 'photos', 'person-a');
const DEMO = path.join(ROOT, 'node_modules', '@vladmandic', 'face-api', 'demo');

if (!CHROMIUM) {
  if (process.env.CI === 'true') throw new Error('Chromium is required on CI (apt-get install chromium); .ci/run installs it');
  console.log('browser tests skipped: no Chromium found at /usr/bin/chromium (apt-get install chromium)');
}

async function photos(): Promise<string[]> {
  if (existsSync(SHARED)) {
    const files = (await readdir(SHARED)).filter((f) => /\.(jpe?g|png|webp)$/i.test(f)).sort().slice(0, 4);
    if (files.length >= 3) return files.map((f) => path.join(SHARED, f));
  }
  return ['sample1.jpg', 'sample2.jpg', 'sample6.jpg'].map((f) => path.join(DEMO, f));
}

describe.skipIf(!CHROMIUM)('web UI in Chromium', () => {
  let app: FastifyInstance;
  let store: ObjectStore;
  let close: () => Promise<void>;
  let base: string;
  let browser: Browser;
  let page: Page;
  const errors: string[] = [];

  beforeAll(async () => {
    ({ app, store, close } = await testApp({ sse: { pollMs: 300, heartbeatMs: 5000, finalGraceMs: 500 } }, { STANDIN_STEP_MS: '40' }));
    base = await app.listen({ host: '127.0.0.1', port: 0 });
    const { chromium } = await import('playwright-core');
    browser = await chromium.launch({ executablePath: CHROMIUM!, args: ['--no-sandbox'] });
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('console', (m) => {
      // A 401 before signing in is the expected way to find out a token is needed.
      if (m.type() === 'error' && !/401/.test(m.text())) errors.push(`${m.text()} ${m.location().url}`);
    });
    page.on('pageerror', (e) => errors.push(e.message));
    await mkdir(ARTIFACTS, { recursive: true });
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await close?.();
  });

  const shot = (name: string) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });

  it('walks the whole flow: sign in, session, upload, review, train, run, exports, resumed download', async () => {
    await page.goto(`${base}/`);
    await page.waitForSelector('#token');
    await shot('01-login');
    await page.fill('#token', TOKEN);
    await page.click('button[type=submit]');
    await page.waitForSelector('form[aria-label="New session"]');
    await page.fill('input[name=name]', 'alice');
    await page.fill('input[name=classNoun]', 'woman');
    await shot('02-sessions');
    await page.click('form[aria-label="New session"] button[type=submit]');
    await page.waitForSelector('.drop');

    const files = await photos();
    await page.setInputFiles('#files', files);
    await page.waitForFunction((n) => [...document.querySelectorAll('.uploads li > span:last-child')].filter((s) => !/^(waiting|uploading)$/.test(s.textContent ?? '')).length === n, files.length, { timeout: 60_000 });
    const outcomes = await page.$$eval('.uploads li', (lis) => lis.map((li) => li.textContent ?? ''));
    expect(outcomes.every((t) => /added/.test(t)), outcomes.join('\n')).toBe(true);
    await shot('03-upload');

    await page.click('#prepare');
    await page.waitForFunction(() => /Prepared:/.test(document.querySelector('#prep-status')?.textContent ?? ''), undefined, { timeout: 150_000 });
    await page.waitForSelector('.photo .box.crop');
    expect(await page.locator('.photo .box.face').count()).toBeGreaterThan(0);
    await page.waitForFunction(() => [...document.querySelectorAll('.frame img')].every((i) => i.complete && i.naturalWidth > 0));
    await shot('04-review');

    // Caption by hand, then nudge a crop with the keyboard and save it with Enter.
    const card = page.locator('.photo.accepted').first();
    await card.locator('textarea').fill('a photo of ohwx woman smiling at the camera');
    await card.locator('button', { hasText: 'Save caption' }).click();
    await page.waitForFunction(() => /Caption saved/.test(document.querySelector('#toast')?.textContent ?? ''));
    const crop = page.locator('.photo.accepted .box.crop').first();
    await crop.focus();
    await page.keyboard.press('ArrowLeft');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => /Crop of .* saved/.test(document.querySelector('#toast')?.textContent ?? ''));
    await page.setViewportSize({ width: 390, height: 844 });
    await shot('05-review-phone');
    await page.setViewportSize({ width: 1280, height: 900 });

    await page.click('.tabs a:has-text("Train")');
    await page.waitForSelector('#advanced');
    await page.fill('#advanced', 'schedule.textEncoder.steps=10\nschedule.unet.steps=30\nresumeState.every=10\nsamples.every=10');
    await page.click('#estimate-btn');
    await page.waitForSelector('#estimate .stat');
    await shot('06-train');
    await page.click('#launch');
    await page.waitForSelector('#run-state');
    await page.waitForFunction(() => /finished: done/.test(document.querySelector('#conn')?.textContent ?? ''), undefined, { timeout: 120_000 }).catch(async (err: unknown) => {
      await shot('failure-run');
      throw err;
    });
    expect(await page.textContent('#stat-step')).toMatch(/^40\/40$/);
    expect(await page.locator('#samples img').count()).toBeGreaterThan(0);
    await page.waitForFunction(() => [...document.querySelectorAll('#samples img')].every((i) => i.complete));
    await shot('07-run');

    // The stand-in trainer's weights are not a real model, so the export is put in the store as
    // `booth export` would leave it; the UI lists it and the download is resumed with Range.
    const data = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 31) % 251));
    const sha = createHash('sha256').update(data).digest('hex');
    await store.put('sessions/alice/exports/alice-test.safetensors', data);
    await putJson(store, 'sessions/alice/exports/alice-test.json', { name: 'alice-test', session: 'alice', run: '20260101-000000-abcd', kind: 'checkpoint', architecture: 'sd1', predictionType: 'epsilon', dtype: 'fp16', key: 'sessions/alice/exports/alice-test.safetensors', yamlKey: null, size: data.length, sha256: sha, autov2: sha.slice(0, 10), metadata: {}, createdAt: new Date().toISOString() });
    await page.click('.tabs a:has-text("Exports")');
    await page.waitForSelector('a[download]');
    expect(await page.textContent('code.hash')).toBe(sha);
    await shot('08-exports');
    const href = await page.getAttribute('a[download]', 'href');
    const url = new URL(href!, base).toString();
    // An interrupted download: the connection drops after the first part…
    const first = await fetch(url, { headers: { range: 'bytes=0-99999' } });
    expect(first.status).toBe(206);
    const part1 = Buffer.from(await first.arrayBuffer());
    // …and the client resumes from where it stopped, guarded by If-Range.
    const rest = await fetch(url, { headers: { range: `bytes=${part1.length}-`, 'if-range': first.headers.get('etag')! } });
    expect(rest.status).toBe(206);
    expect(rest.headers.get('content-range')).toBe(`bytes 100000-${data.length - 1}/${data.length}`);
    const whole = Buffer.concat([part1, Buffer.from(await rest.arrayBuffer())]);
    expect(createHash('sha256').update(whole).digest('hex')).toBe(sha);
    expect(rest.headers.get('x-checksum-sha256')).toBe(sha);

    expect(errors, errors.join('\n')).toEqual([]);
  }, 400_000);

  it('a FLUX.1 session: the base picker offers its resolutions and the train form only its presets', async () => {
    await page.goto(`${base}/#/`);
    await page.waitForSelector('form[aria-label="New session"], #token');
    if ((await page.locator('#token').count()) > 0) {
      // Run alone (vitest -t): sign in first.
      await page.fill('#token', TOKEN);
      await page.click('button[type=submit]');
      await page.waitForSelector('form[aria-label="New session"]');
    }
    await page.fill('input[name=name]', 'carol');
    await page.fill('input[name=classNoun]', 'woman');
    await page.selectOption('select[name=base]', 'flux-dev');
    const resolutions = await page.$$eval('select[name=resolution] option', (os) => os.map((o) => (o as unknown as { value: string }).value));
    expect(resolutions).toEqual(['512', '768', '1024']);
    expect(await page.inputValue('select[name=resolution]')).toBe('1024');
    await page.selectOption('select[name=resolution]', '768');
    await page.click('form[aria-label="New session"] button[type=submit]');
    await page.waitForSelector('.drop');
    const created = JSON.parse((await readAll(store, 'sessions/carol/session.json')).toString('utf8')) as { base: string; settings: { resolution: number } };
    expect([created.base, created.settings.resolution]).toEqual(['flux-dev', 768]);
    await page.click('.tabs a:has-text("Train")');
    await page.waitForSelector('#preset');
    const presets = await page.$$eval('#preset option', (os) => os.map((o) => (o as unknown as { value: string }).value));
    expect(presets).toEqual(['', 'face-lora-flux', 'object-lora-flux']);
    await shot('09-flux-train');
    expect(errors, errors.join('\n')).toEqual([]);
  }, 120_000);
});
