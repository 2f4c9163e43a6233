/**
 * The text side of captioning: the CLIP BPE tokenizer against token ids published for the
 * reference implementation, the labelled estimate, inserting the subject into model output
 * (repairs and refusals), the price arithmetic and the prompt templates.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm, symlink, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { countCaptionTokens, estimateClipTokens, loadClipTokenizer, tokenWarning } from '../../src/captions/clip-tokenizer.js';
import { insertSubject } from '../../src/captions/subject.js';
import { imageTokens, priceFor, tokenCost } from '../../src/captions/prices.js';
import { listStyles, loadStyle, renderStyle } from '../../src/captions/styles.js';

const TOKENIZER = path.resolve('../shared/models/clip-tokenizer');
const haveTokenizer = existsSync(TOKENIZER);
if (!haveTokenizer) console.warn(`skipping exact CLIP token tests: ${TOKENIZER} is absent`);
const man = { trigger: 'ohwx', classNoun: 'man', kind: 'person' as const };

describe.skipIf(!haveTokenizer)('CLIP BPE tokenizer', () => {
  it('reproduces the reference token ids', async () => {
    const tok = await loadClipTokenizer(TOKENIZER);
    // Ids as CLIP's reference tokenizer gives them (BOS 49406 / EOS 49407 stripped).
    expect(tok.encode('a photo of a cat')).toEqual([320, 1125, 539, 320, 2368]);
    expect(tok.encode('a photo of an astronaut riding a horse on mars')).toEqual([320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496]);
    expect(tok.encode('Apple CoreML developer tools on a Macbook Air are fast')).toEqual([3055, 19622, 5780, 10929, 5771, 525, 320, 20617, 1922, 631, 1953]);
    expect(tok.encode('Hello, World! 123')).toEqual([3306, 267, 1002, 256, 272, 273, 274]);
    expect(tok.encode('  A  Photo of\na CAT ')).toEqual(tok.encode('a photo of a cat'));
    expect(tok.count('a photo of a cat')).toBe(7);
  });

  it('loads a Diffusers model folder (tokenizer/ inside) and counts against 77', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'booth-tok-'));
    try {
      await mkdir(path.join(dir, 'model'));
      await symlink(TOKENIZER, path.join(dir, 'model', 'tokenizer'));
      const tok = await loadClipTokenizer(path.join(dir, 'model'));
      const long = `a photo of ohwx man ${'standing in a sunny park with many trees '.repeat(12)}`;
      const t = countCaptionTokens(long, tok);
      expect(t.exact).toBe(true);
      expect(t.count).toBeGreaterThan(77);
      expect(tokenWarning(t)).toMatch(/^caption is \d+ CLIP tokens, over the text encoder's 77-token window/);
      expect(tokenWarning(countCaptionTokens('a photo of ohwx man', tok))).toBeNull();
      await expect(loadClipTokenizer(dir)).rejects.toMatchObject({ code: 'NOT_FOUND', message: expect.stringMatching(/tokenizer\/vocab\.json/) });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('the estimate stays near the real count and says it is one', async () => {
    const tok = await loadClipTokenizer(TOKENIZER);
    for (const text of [
      'a close-up photo of ohwx man, smiling, looking at the camera',
      'ohwx man, close-up, smile, looking at viewer, red scarf, outdoors, bokeh',
      'a photograph of ohwx woman wearing a blue denim jacket in front of a brick wall on a sunny afternoon',
    ]) {
      const exact = tok.count(text);
      const est = estimateClipTokens(text);
      expect(Math.abs(est - exact) / exact, text).toBeLessThan(0.25);
    }
    const t = countCaptionTokens('word '.repeat(100), null);
    expect(t.exact).toBe(false);
    expect(tokenWarning(t)).toMatch(/estimated: no tokenizer files given/);
  });
});

describe('inserting the subject', () => {
  const ins = (text: string, subject = man) => insertSubject(text, subject, 'p.jpg').caption;
  it('replaces the placeholder exactly once, dropping an article before it', () => {
    expect(ins('a close-up photo of <subject>, smiling')).toBe('a close-up photo of ohwx man, smiling');
    expect(ins('a photo of a <subject> in a park')).toBe('a photo of ohwx man in a park');
    expect(ins('<subject>, close-up, smile')).toBe('ohwx man, close-up, smile');
    expect(ins('"a photo of [subject] at night"')).toBe('a photo of ohwx man at night');
  });
  it('repairs common slips', () => {
    expect(ins('a photo of a man smiling at the camera')).toBe('a photo of ohwx man smiling at the camera');
    expect(ins('a photo of a person on a bench')).toBe('a photo of ohwx man on a bench');
    expect(ins('<subject> talks while <subject> waves')).toBe('ohwx man talks while the man waves');
    expect(ins('a photo of ohwx man on a boat')).toBe('a photo of ohwx man on a boat');
    expect(ins('a photo of ohwx <subject>')).toBe('a photo of ohwx man');
    expect(ins('a backpack on a table', { trigger: 'zwx', classNoun: 'backpack', kind: 'object' as never })).toBe('zwx backpack on a table');
  });
  it('refuses what cannot be fixed, naming the photo', () => {
    expect(() => ins('a sunset over the sea')).toThrow(/p\.jpg: the caption "a sunset over the sea" does not say where the subject is/);
    expect(() => ins('   ')).toThrow(/p\.jpg: the captioner returned an empty caption/);
  });
});

describe('prices and prompt templates', () => {
  it('prices usage from the table, with the batch discount', () => {
    expect(priceFor('gpt-4o-mini')).toEqual({ input: 0.15, output: 0.6 });
    expect(priceFor('gpt-4o-mini-2024-07-18')).toEqual({ input: 0.15, output: 0.6 });
    expect(priceFor('llava:13b')).toBeNull();
    expect(tokenCost({ inputTokens: 1_000_000, outputTokens: 1_000_000 }, priceFor('gpt-4o-mini'))).toBeCloseTo(0.75, 12);
    expect(tokenCost({ inputTokens: 1_000_000, outputTokens: 0 }, priceFor('gpt-4o-mini'), true)).toBeCloseTo(0.075, 12);
    expect(tokenCost({ inputTokens: 10, outputTokens: 10 }, null)).toBeNull();
  });
  it('estimates image tokens per the vision pricing rules', () => {
    expect(imageTokens('gpt-4o', { width: 512, height: 512 }, 'low')).toBe(85);
    expect(imageTokens('gpt-4o', { width: 1024, height: 1024 }, 'high')).toBe(765);
    expect(imageTokens('gpt-4o-mini', { width: 512, height: 512 }, 'low')).toBe(2833);
    expect(imageTokens('gpt-4.1-mini', { width: 1024, height: 1024 }, 'low')).toBe(Math.ceil(1024 * 1.62));
  });
  it('ships the natural and tags styles, each naming the placeholder', async () => {
    expect(listStyles()).toEqual(expect.arrayContaining(['natural', 'tags']));
    const tags = await loadStyle('tags');
    expect(tags.tags).toBe(true);
    const text = renderStyle(await loadStyle('natural'), man);
    expect(text).toContain('<subject>');
    expect(text).toContain('"man"');
    await expect(loadStyle('nope')).rejects.toMatchObject({ code: 'NOT_FOUND', message: expect.stringMatching(/natural, tags/) });
  });
});
