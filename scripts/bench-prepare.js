#!/usr/bin/env node
// `npm run bench:prepare`: how fast Booth prepares real photos, against a baseline that only
// decodes and resizes the same photos (the floor any preparation pays), measured in the same run.
// Each mode runs in its own child process so peak RSS is that mode's alone. Model loading is
// included: it is part of what a person waits for.
// Photos: face-api's demo group photos (always present after `npm ci`) plus ../shared/data/photos
// when present. Usage: npm run bench:prepare [-- --repeat N]
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const dist = path.join(root, 'dist');
if (!existsSync(path.join(dist, 'cli', 'main.js'))) {
  console.error('dist/ is missing: run `npm run build` first');
  process.exit(1);
}

/** The fixed photo sets: [session kind, class noun, files]. */
function photoSets() {
  const sets = [];
  const demo = path.join(root, 'node_modules', '@vladmandic', 'face-api', 'demo');
  const faces = [1, 2, 3, 4, 5, 6].map((i) => path.join(demo, `sample${i}.jpg`));
  const shared = path.join(root, '..', 'shared', 'data', 'photos');
  const haveShared = existsSync(shared);
  const dir = (d) => readdirSync(path.join(shared, d)).sort().map((f) => path.join(shared, d, f));
  // One face session of realistic size (10 photos when ../shared is present): group photos and
  // portraits, identity off so every photo is cropped on its most prominent face.
  if (haveShared) faces.push(...dir('person-a'), ...dir('person-b'));
  sets.push({ name: 'faces', kind: 'person', cls: 'person', identity: 'off', files: faces });
  if (haveShared) {
    sets.push({ name: 'dog', kind: 'object', cls: 'dog', identity: 'off', files: dir('dog') });
    sets.push({ name: 'backpack', kind: 'object', cls: 'backpack', identity: 'off', files: dir('backpack') });
  } else {
    console.warn('note: ../shared/data/photos is absent; benchmarking the face-api demo photos only');
  }
  return sets;
}

async function child(mode, repeat) {
  const sets = photoSets();
  const photos = sets.reduce((n, s) => n + s.files.length, 0) * repeat;
  const t0 = performance.now();
  let phases = null;
  if (mode === 'baseline') {
    const { decodePhoto } = await import(path.join(dist, 'preprocess', 'decode.js'));
    const sharp = (await import('sharp')).default;
    for (let r = 0; r < repeat; r++) {
      for (const set of sets) {
        for (const f of set.files) {
          const d = await decodePhoto(await readFile(f), path.basename(f), { targetSize: 512 });
          const side = Math.min(d.image.width, d.image.height);
          await sharp(d.image.data, { raw: { width: d.image.width, height: d.image.height, channels: 3 } })
            .extract({ left: 0, top: 0, width: side, height: side })
            .resize(512, 512, { kernel: 'lanczos3' })
            .png()
            .toBuffer();
        }
      }
    }
  } else {
    const { openStore } = await import(path.join(dist, 'storage', 'index.js'));
    const { SessionStore } = await import(path.join(dist, 'sessions', 'store.js'));
    const { addPhotos } = await import(path.join(dist, 'sessions', 'intake.js'));
    const { prepareSession } = await import(path.join(dist, 'preprocess', 'pipeline.js'));
    const threads = mode === 'booth-1' ? 1 : undefined;
    phases = {};
    const dir = mkdtempSync(path.join(tmpdir(), 'booth-bench-'));
    const store = await openStore(`file://${dir}`);
    const sessions = new SessionStore(store);
    try {
      for (let r = 0; r < repeat; r++) {
        for (const set of sets) {
          const name = `${set.name}-${r}`;
          await sessions.create({ name, subject: { trigger: 'ohwx', classNoun: set.cls, kind: set.kind }, base: 'sd15', settings: { identity: set.identity } });
          await addPhotos(sessions, name, set.files);
          const report = await prepareSession(sessions, name, { threads });
          for (const [k, v] of Object.entries(report.phaseMs)) phases[k] = (phases[k] ?? 0) + v;
        }
      }
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const ms = performance.now() - t0;
  const rssMiB = process.resourceUsage().maxRSS / 1024;
  process.stdout.write(JSON.stringify({ mode, photos, ms, rssMiB, phases }));
}

function run(mode, repeat) {
  const out = execFileSync(process.execPath, [fileURLToPath(import.meta.url), '--child', mode, '--repeat', String(repeat)], {
    encoding: 'utf8',
    env: { ...process.env, BOOTH_LOG_LEVEL: 'error' },
  });
  return JSON.parse(out);
}

const args = process.argv.slice(2);
const repeat = Number(args[args.indexOf('--repeat') + 1] ?? 1) || 1;
if (args[0] === '--child') {
  await child(args[1], repeat);
} else {
  const sets = photoSets();
  console.log(`photos: ${sets.map((s) => `${s.name} ${s.files.length}`).join(', ')} (x${repeat})`);
  const base = run('baseline', repeat);
  const single = run('booth-1', repeat);
  const booth = run('booth', repeat);
  const rate = (r) => (r.photos / r.ms) * 1000;
  const fmt = (r) =>
    `${r.mode.padEnd(9)} ${rate(r).toFixed(2).padStart(6)} photos/s  ${(r.ms / r.photos).toFixed(0).padStart(5)} ms/photo  peak RSS ${r.rssMiB.toFixed(0)} MiB` +
    (r.phases ? `  phases ms: ${Object.entries(r.phases).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(', ')}` : '');
  console.log(fmt(base));
  console.log(fmt(single));
  console.log(fmt(booth));
  console.log(`ratio     booth/booth-1 time per photo: ${(booth.ms / single.ms).toFixed(2)}x (worker pool vs one thread)`);
  console.log(`ratio     booth/baseline time per photo: ${(booth.ms / booth.photos / (base.ms / base.photos)).toFixed(2)}x; peak RSS ${(booth.rssMiB / base.rssMiB).toFixed(2)}x`);
  console.log('baseline = decode (EXIF, sRGB, 8-bit) + square extract + lanczos3 resize to 512 px + PNG encode, nothing else');
  console.log('booth-1  = booth with analysis in-process on one thread; booth = analysis in a worker pool, one thread per core (max 4)');
  console.log('booth    = add (hash, validate, store) + prepare (analyse, faces, identity, crop, quality, captions, contact sheet), file store');
}
