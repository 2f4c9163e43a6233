#!/usr/bin/env node
/**
 * Benchmark of the single-file export (`npm run bench:convert`): generates full-size Diffusers
 * checkpoints with the exact tensor names and shapes of SD 1.5 and SDXL base (configs from
 * ../shared/models; values are a repeated pseudo-random pattern), converts each with the built
 * converter (dist/) and copies the same input bytes with `cp` in the same run, then prints wall
 * time, the ratio to the copy and the converter's peak RSS. Both sides end durable: the converter
 * fsyncs its output, so the copy is followed by an fsync of every copied file. Each side runs
 * twice after a warm-up read and the faster run counts (both then read from the page cache).
 * Disk use stays under ~14 GB (inputs are deleted after their cases); BENCH_DIR picks the folder.
 * Cases: SD 1.5 fp32→fp16, SD 1.5 fp16→fp16, SDXL fp16→fp16 (SDXL fp32 input would be 14 GB
 * alone; set BENCH_SDXL_FP32=1 to add it where there is room).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const dist = path.join(root, 'dist', 'convert', 'index.js');
const models = path.join(root, '..', 'shared', 'models');
if (!existsSync(dist)) {
  console.error(`${dist} is missing; run \`npm run build\` first`);
  process.exit(1);
}
if (!existsSync(path.join(models, 'sd15'))) {
  console.error(`${models} is missing: the benchmark needs the real SD configs in ../shared/models`);
  process.exit(1);
}
const conv = await import(dist);

const PATTERN_FLOATS = 4 * 1024 * 1024;
const pattern32 = new Float32Array(PATTERN_FLOATS);
let s = 1;
for (let i = 0; i < PATTERN_FLOATS; i++) {
  s = (Math.imul(s, 1103515245) + 12345) >>> 0;
  pattern32[i] = ((s / 4294967296) * 2 - 1) * 0.05;
}
const pattern16 = new Uint8Array(PATTERN_FLOATS * 2);
conv.convertFloats(new Uint8Array(pattern32.buffer), 'F32', 'F16', pattern16);
const bytes32 = new Uint8Array(pattern32.buffer);

async function readConfig(model, comp) {
  return JSON.parse(await readFile(path.join(models, model, comp, 'config.json'), 'utf8'));
}

/** Write one safetensors file with these shapes, streaming the pattern as data. */
async function writeComponent(file, shapes, dtype) {
  const size = dtype === 'F32' ? 4 : 2;
  const header = {};
  let off = 0;
  for (const [name, shape] of shapes) {
    const n = shape.reduce((a, b) => a * b, 1) * size;
    header[name] = { dtype, shape, data_offsets: [off, off + n] };
    off += n;
  }
  let json = JSON.stringify(header);
  while ((json.length + 8) % 8) json += ' ';
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const fh = await open(file, 'w');
  await fh.write(Buffer.concat([len, Buffer.from(json)]));
  const pat = dtype === 'F32' ? bytes32 : pattern16;
  let left = off;
  while (left > 0) {
    const n = Math.min(left, pat.byteLength);
    await fh.write(pat, 0, n);
    left -= n;
  }
  await fh.close();
  return 8 + json.length + off;
}

async function makeModel(dir, model, dtype) {
  const comps = { unet: 'diffusion_pytorch_model', vae: 'diffusion_pytorch_model', text_encoder: 'model' };
  if (model === 'sdxl-base') comps.text_encoder_2 = 'model';
  let total = 0;
  for (const [comp, base] of Object.entries(comps)) {
    const cfg = await readConfig(model, comp);
    await mkdir(path.join(dir, comp), { recursive: true });
    await writeFile(path.join(dir, comp, 'config.json'), JSON.stringify(cfg));
    const shapes =
      comp === 'unet'
        ? conv.diffusersUNetShapes(conv.unetConfig(cfg))
        : comp === 'vae'
          ? conv.diffusersVaeShapes(conv.vaeConfig(cfg))
          : conv.hfClipShapes(conv.clipConfig(cfg), comp === 'text_encoder_2');
    total += await writeComponent(path.join(dir, comp, `${base}.safetensors`), shapes, dtype);
  }
  return total;
}

async function filesUnder(dir) {
  const out = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) if (e.isFile()) out.push(path.join(e.parentPath, e.name));
  return out;
}

async function fsyncAll(files) {
  for (const f of files) {
    const fh = await open(f, 'r+');
    await fh.sync();
    await fh.close();
  }
}

async function timeCopy(src, dst) {
  const t0 = performance.now();
  const r = spawnSync('cp', ['-r', src, dst], { stdio: 'inherit' });
  if (r.status !== 0) throw new Error('cp failed');
  await fsyncAll(await filesUnder(dst));
  const ms = performance.now() - t0;
  await rm(dst, { recursive: true, force: true });
  return ms;
}

const CHILD = `
const conv = await import(process.argv[1]);
const t0 = performance.now();
const r = await conv.convertCheckpoint(conv.localFolder(process.argv[2]), { file: process.argv[3] }, { dtype: process.argv[4] });
const ms = performance.now() - t0;
console.log(JSON.stringify({ ms, size: r.size, sha256: r.sha256, maxRssKiB: process.resourceUsage().maxRSS }));
`;

function timeConvert(src, out, dtype) {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', CHILD, dist, src, out, dtype], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`convert failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1));
}

const base = await mkdtemp(path.join(process.env.BENCH_DIR ?? tmpdir(), 'booth-bench-convert-'));
const cases = [
  { model: 'sd15', input: 'F32', out: 'fp16' },
  { model: 'sd15', input: 'F16', out: 'fp16' },
  { model: 'sdxl-base', input: 'F16', out: 'fp16' },
  ...(process.env.BENCH_SDXL_FP32 === '1' ? [{ model: 'sdxl-base', input: 'F32', out: 'fp16' }] : []),
];
const rows = [];
console.log(`native Float16Array: ${conv.nativeFloat16}; folder ${base}`);
try {
  for (const c of cases) {
    const src = path.join(base, `${c.model}-${c.input}`);
    const gen0 = performance.now();
    const inBytes = await makeModel(src, c.model, c.input);
    console.log(`${c.model} ${c.input}: generated ${(inBytes / 1e9).toFixed(2)} GB in ${((performance.now() - gen0) / 1000).toFixed(1)} s`);
    spawnSync('sh', ['-c', `cat ${JSON.stringify(src)}/*/*.safetensors > /dev/null`]);
    const out = path.join(base, 'out.safetensors');
    let cp = Infinity;
    let best;
    for (let i = 0; i < 2; i++) {
      cp = Math.min(cp, await timeCopy(src, path.join(base, 'copy')));
      const r = timeConvert(src, out, c.out);
      await rm(out, { force: true });
      if (!best || r.ms < best.ms) best = { ...r, maxRssKiB: Math.max(r.maxRssKiB, best?.maxRssKiB ?? 0) };
      else best.maxRssKiB = Math.max(best.maxRssKiB, r.maxRssKiB);
    }
    const row = {
      case: `${c.model} ${c.input === 'F32' ? 'fp32' : 'fp16'}→${c.out}`,
      inputGB: +(inBytes / 1e9).toFixed(2),
      outputGB: +(best.size / 1e9).toFixed(2),
      convertS: +(best.ms / 1000).toFixed(2),
      cpS: +(cp / 1000).toFixed(2),
      ratio: +(best.ms / cp).toFixed(2),
      peakRssMB: Math.round((best.maxRssKiB * 1024) / 1e6),
    };
    rows.push(row);
    console.log(JSON.stringify(row));
    await rm(src, { recursive: true, force: true });
  }
} finally {
  await rm(base, { recursive: true, force: true });
}
console.log('\ncase                     input GB  output GB  convert s  cp+fsync s  ratio  peak RSS MB');
for (const r of rows) {
  console.log(
    `${r.case.padEnd(24)} ${String(r.inputGB).padStart(8)} ${String(r.outputGB).padStart(10)} ${String(r.convertS).padStart(10)} ${String(r.cpS).padStart(11)} ${String(r.ratio).padStart(6)} ${String(r.peakRssMB).padStart(12)}`,
  );
}

