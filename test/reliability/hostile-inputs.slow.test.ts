/**
 * The rest of the hostile-input corpus (see hostile-inputs.test.ts), behind
 * `npm run test:reliability`: every bad job spec, `--set` override and malicious safetensors
 * file through the built CLI (one process each, about a second apiece), decompression bombs
 * through `booth add`, and the memory a photo exactly at the pixel limit costs to decode.
 */
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_MAX_PIXELS, decodePhoto } from '../../src/preprocess/decode.js';
import { addPhotos } from '../../src/sessions/intake.js';
import { SessionStore } from '../../src/sessions/store.js';
import { createFsStore } from '../../src/storage/drivers/fs.js';
import { SD15_INLINE, shrink, writeDiffusersFolder } from '../convert/fixtures.js';
import { json, cliBuilt } from '../helpers/cli.js';
import { BAD_SETS, Tally, cli, filesUnder, jpegDeclaring, judgeCli, markPrepared, photo, pngBomb, pngDeclaring, safetensorsCases, specCases } from './corpus.js';

const built = cliBuilt('the hostile-input CLI corpus');
const tally = new Tally();
const SESSION = 'hostile';
let root: string;
let store: string;
let sessions: SessionStore;

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'booth-hostile-slow-'));
  for (const d of ['cwd', 'tmp', 'inputs', 'sentinel', 'out']) await mkdir(path.join(root, d));
  store = `file://${path.join(root, 'store')}`;
  sessions = new SessionStore(createFsStore({ root: path.join(root, 'store') }));
  await sessions.create({ name: SESSION, subject: { trigger: 'ohwx', classNoun: 'man', kind: 'person' }, base: 'sd15', settings: {} });
  const seed = path.join(root, 'inputs', 'seed.jpg');
  await writeFile(seed, await photo(320, 320, 4242));
  expect((await addPhotos(sessions, SESSION, [seed]))[0]?.outcome).toBe('added');
  await markPrepared(sessions, SESSION);
});

afterAll(async () => {
  await sessions?.store.close();
  if (root) await rm(root, { recursive: true, force: true });
  const s = tally.summary();
  console.log(`[reliability] hostile inputs (slow, whole corpus through the CLI): tried ${s.tried}, rejected ${s.rejected} (4xx/CLI error), accepted-as-valid ${s.accepted}, crashed ${s.crashed}`);
  expect(s.crashed).toBe(0);
});

/** Run `cases` two at a time (the machine has two cores) and collect the problems. */
async function inPairs<T>(cases: readonly T[], run: (c: T) => Promise<string | null>): Promise<string[]> {
  const problems: Array<string | null> = [];
  for (let i = 0; i < cases.length; i += 2) problems.push(...(await Promise.all(cases.slice(i, i + 2).map(run))));
  return problems.filter((p): p is string => p !== null);
}

/** Nothing was written outside the store by any CLI run. */
async function nothingOutside(): Promise<void> {
  for (const d of ['cwd', 'tmp', 'sentinel', 'out']) expect(await readdir(path.join(root, d)), d).toEqual([]);
  for (const f of await filesUnder(path.join(root, 'store'))) expect(f).toMatch(/^sessions\/hostile\//);
  // No run was launched (a launch writes the run's run.json) and no export written.
  expect((await filesUnder(path.join(root, 'store'))).filter((f) => /\/runs\/[^/]+\/run\.json$|\/exports\//.test(f))).toEqual([]);
}

describe.skipIf(!built)('the whole corpus through the CLI', () => {
  it('booth train --spec refuses every bad spec file, naming the file and the field', async () => {
    const dir = path.join(root, 'inputs', 'specs');
    await mkdir(dir);
    const problems = await inPairs(specCases(), async (c) => {
      const file = path.join(dir, `${c.id}.json`);
      await writeFile(file, c.text);
      const r = await cli(root, store, ['train', SESSION, '--spec', file, '--dry-run', '--json']);
      return judgeCli(tally, `cli-${c.id}`, r, new RegExp(`${c.id}\\.json: .*(${c.reason.source})`));
    });
    expect(problems).toEqual([]);
    await nothingOutside();
  });

  it('booth train --set refuses every bad override, naming the field', async () => {
    const problems = await inPairs(BAD_SETS, async (c) => judgeCli(tally, `cli-${c.id}`, await cli(root, store, ['train', SESSION, '--preset', 'face-sd15', '--set', c.set, '--dry-run']), c.reason));
    expect(problems).toEqual([]);
    // Bad --steps values are refused by the option parser or the spec check.
    const steps = await inPairs(['-5', '0', 'NaN', '1e400', '99999999999'], async (v) => judgeCli(tally, `cli-steps-${v}`, await cli(root, store, ['train', SESSION, '--preset', 'face-sd15', `--steps=${v}`, '--dry-run']), /steps/));
    expect(steps).toEqual([]);
    await nothingOutside();
  });

  it('booth convert refuses every malicious safetensors file, naming the file and the rule, and writes no output', async () => {
    const dir = path.join(root, 'inputs', 'st');
    await mkdir(dir);
    const problems = await inPairs(safetensorsCases(), async (c) => {
      const stem = c.id.replace(/\W/g, '_');
      const file = path.join(dir, `${stem}.safetensors`);
      await writeFile(file, c.bytes);
      const r = await cli(root, store, ['convert', file, path.join(root, 'out', `${stem}.safetensors`)]);
      return judgeCli(tally, `cli-convert-${c.id}`, r, new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}.*(${c.reason.source})`));
    });
    expect(problems).toEqual([]);
    await nothingOutside();
  });

  it('booth export refuses a run whose model holds a malicious safetensors file, naming the object, and stores no export', async () => {
    const local = path.join(root, 'inputs', 'model');
    await writeDiffusersFolder(local, shrink(SD15_INLINE, 16));
    const picked = safetensorsCases().filter((c) => ['st-offsets-out-of-bounds', 'st-header-2^63', 'st-shape-overflow'].includes(c.id));
    const problems: Array<string | null> = [];
    for (const [i, c] of picked.entries()) {
      const run = `20260101-00000${i}-0bad`;
      const prefix = `sessions/${SESSION}/runs/${run}`;
      for (const f of await filesUnder(local)) {
        const bytes = f === 'unet/diffusion_pytorch_model.safetensors' ? c.bytes : await readFile(path.join(local, f));
        await sessions.store.put(`${prefix}/model/${f}`, bytes);
      }
      await sessions.store.put(`${prefix}/spec.json`, JSON.stringify({ base: { architecture: 'sd1', model: 'stable-diffusion-v1-5/stable-diffusion-v1-5' }, resolution: 512, mode: { type: 'full' } }));
      await sessions.store.put(`${prefix}/status.json`, JSON.stringify({ step: 100, state: 'done' }));
      await sessions.store.put(`${prefix}/model/COMPLETE`, '');
      const r = await cli(root, store, ['export', SESSION, '--run', run]);
      problems.push(judgeCli(tally, `cli-export-${c.id}`, r, new RegExp(`${prefix}/model/unet/diffusion_pytorch_model\\.safetensors.*(${c.reason.source})`)));
    }
    expect(problems.filter(Boolean)).toEqual([]);
    expect((await filesUnder(path.join(root, 'store'))).filter((f) => f.includes('/exports/'))).toEqual([]);
    for (const d of ['cwd', 'tmp', 'sentinel']) expect(await readdir(path.join(root, d)), d).toEqual([]);
  });

  it('booth add refuses decompression bombs from their headers, without decoding them', async () => {
    const dir = path.join(root, 'inputs', 'bombs');
    await mkdir(dir);
    const bombs: Array<[string, Buffer, RegExp]> = [
      ['bomb-30000.png', pngBomb(30_000, 30_000), /30000×30000 pixels .* over the limit/],
      ['declares-60000.png', pngDeclaring(60_000, 60_000), /60000×60000 pixels .* over the limit/],
      ['declares-65535.jpg', jpegDeclaring(await photo(320, 320, 77), 65_535, 65_535), /65535×65535 pixels .* over the limit|header cannot be read .*Maximum supported image dimension/],
      ['just-over.png', pngBomb(10_001, 10_000), /10001×10000 pixels .* over the limit/],
    ];
    for (const [name, bytes] of bombs) await writeFile(path.join(dir, name), bytes);
    const r = await cli(root, store, ['add', SESSION, dir, '--json']);
    // Nothing added and nothing duplicate: the CLI reports failure for the batch, per file.
    expect(r.code, r.stderr).toBe(1);
    const results = json<{ results: Array<{ name: string; outcome: string; reason: string | null }> }>(r.stdout).results;
    const problems: Array<string | null> = [];
    for (const [name, , reason] of bombs) {
      const got = results.find((x) => x.name === name);
      problems.push(tally.judge(`cli-add-${name}`, 'booth add', 'rejected', got?.outcome === 'rejected' ? 'rejected' : 'other'));
      if (!reason.test(got?.reason ?? '')) problems.push(`${name}: ${JSON.stringify(got?.reason)} does not match ${String(reason)}`);
    }
    expect(problems.filter(Boolean)).toEqual([]);
    await nothingOutside();
  });

  it('decodes a photo exactly at the pixel limit with bounded memory, and refuses one pixel row more without decoding', async () => {
    const side = Math.floor(Math.sqrt(DEFAULT_MAX_PIXELS));
    const atLimit = pngBomb(side, side);
    const peakBefore = process.resourceUsage().maxRSS * 1024;
    const decoded = await decodePhoto(atLimit, 'at-limit.png', { targetSize: 512 });
    const peakGrowth = process.resourceUsage().maxRSS * 1024 - peakBefore;
    expect(decoded.image.width * decoded.image.height).toBe(side * side);
    tally.judge('png-bomb-at-limit-10000x10000', 'decodePhoto', 'accepted', 'accepted');
    // 300 MB of RGB output; libvips streams the decode, so the peak stays within a small multiple.
    console.log(`[reliability] decoding a ${side}×${side} (${(atLimit.length / 1024).toFixed(0)} KiB) PNG raised peak RSS by ${(peakGrowth / 2 ** 20).toFixed(0)} MiB`);
    expect(peakGrowth).toBeLessThan(1.5 * 2 ** 30);
    const over = pngBomb(side + 1, side);
    await expect(decodePhoto(over, 'over.png', { targetSize: 512 })).rejects.toMatchObject({ code: 'IMAGE_TOO_LARGE' });
    tally.judge('png-bomb-just-over-limit', 'decodePhoto', 'rejected', 'rejected');
  });
});
