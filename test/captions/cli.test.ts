/**
 * `booth caption` through the built CLI, as a person runs it: offline captions with no key,
 * listing, a hand edit that survives `prepare` and later runs, and — with OPENAI_BASE_URL pointing
 * at the local OpenAI-compatible test server — a dry-run estimate that calls nothing, then model
 * captions with the cost reported.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { booth, json, cliBuilt } from '../helpers/cli.js';
import { startFakeOpenAI, tintedPhoto, type FakeOpenAI } from './helpers/openai-server.js';

const built = cliBuilt('the caption CLI tests');

interface Line {
  name: string;
  outcome: string;
  caption: string | null;
  source: string | null;
  tokens: { count: number; exact: boolean } | null;
}

describe.skipIf(!built)('booth caption', () => {
  let dir: string;
  let store: string;
  let server: FakeOpenAI;
  const noKey = { OPENAI_API_KEY: '' };
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'booth-caption-cli-'));
    store = `file://${path.join(dir, 'store')}`;
    server = await startFakeOpenAI(['ok', 'ok', 'ok']);
    const files: string[] = [];
    for (let i = 0; i < 3; i++) {
      const f = path.join(dir, `p${i}.jpg`);
      await writeFile(f, await tintedPhoto(i, 700 + i));
      files.push(f);
    }
    const r = await booth(store, ['new', 's', ...files, '--trigger', 'zwx', '--class', 'backpack', '--kind', 'object', '--json'], noKey);
    expect(r.code, r.stderr).toBe(0);
  });
  afterAll(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('captions offline without a key, lists, and keeps a hand caption through prepare and re-runs', async () => {
    const r = await booth(store, ['caption', 's', '--json'], noKey);
    expect(r.code, r.stderr).toBe(0);
    const report = json<{ captioner: { source: string }; counts: Record<string, number> }>(r.stdout);
    expect(report.captioner.source).toBe('offline');
    expect(report.counts.captioned).toBe(3);

    const hand = await booth(store, ['caption', 's', 'p1.jpg', 'zwx backpack on a hook, by hand'], noKey);
    expect(hand.code, hand.stderr).toBe(0);
    const bad = await booth(store, ['caption', 's', 'p2.jpg', 'a backpack without the trigger'], noKey);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/p2\.jpg contains "zwx backpack" 0 times.*--no-check/);

    expect((await booth(store, ['prepare', 's', '--json'], noKey)).code).toBe(0);
    expect((await booth(store, ['caption', 's', '--force', '--json'], noKey)).code).toBe(0);
    // The real CLIP vocabulary is in ../shared; without it the token count is a labelled estimate.
    const tokenizer = path.resolve('../shared/models/clip-tokenizer');
    const listed = await booth(store, ['caption', 's', '--list', '--json', ...(existsSync(tokenizer) ? ['--tokenizer', tokenizer] : [])], noKey);
    expect(listed.code, listed.stderr).toBe(0);
    const list = json<{ photos: Line[] }>(listed.stdout);
    const p1 = list.photos.find((p) => p.name === 'p1.jpg')!;
    expect([p1.caption, p1.source]).toEqual(['zwx backpack on a hook, by hand', 'hand']);
    for (const p of list.photos.filter((q) => q.name !== 'p1.jpg')) expect(p.source).toBe('offline');
    expect(p1.tokens?.exact).toBe(existsSync(tokenizer));

    const exported = path.join(dir, 'export');
    expect((await booth(store, ['dataset', 'export', 's', exported], noKey)).code).toBe(0);
    const meta = (await readFile(path.join(exported, 'metadata.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { text: string; original: string });
    expect(meta.find((l) => l.original === 'p1.jpg')?.text).toBe('zwx backpack on a hook, by hand');

    const human = await booth(store, ['caption', 's', '--list'], noKey);
    expect(human.stdout).toMatch(/p1\.jpg {2}hand {2}hand/);
  });

  it('with OPENAI_API_KEY and OPENAI_BASE_URL: estimates with --dry-run, then captions and reports the cost', async () => {
    const env = { OPENAI_API_KEY: server.key, OPENAI_BASE_URL: server.baseURL };
    const dry = await booth(store, ['caption', 's', '--dry-run'], env);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toMatch(/Estimate for 2 photo\(s\): ~\d+ input \+ ~\d+ output tokens ≈ \$0\.\d+ \(\$0\.\d+ with --batch\)/);
    expect(server.log).toEqual([]);

    const r = await booth(store, ['caption', 's'], env);
    expect(r.code, r.stderr).toBe(0);
    expect(server.violations).toEqual([]);
    expect(r.stdout).toMatch(/2 captioned, 1 by hand/);
    expect(r.stdout).toMatch(/Cost: 6000 input \+ 100 output tokens in 2 request\(s\) = \$0\.0010/);
    const html = await readFile(path.join(dir, 'store', 'sessions/s/review/contact-sheet.html'), 'utf8');
    expect(html).toContain('zwx backpack on a hook, by hand');
    expect(html).toContain('a photo of zwx backpack on a plain background');
  });
});
