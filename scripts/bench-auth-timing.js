#!/usr/bin/env node
/**
 * Timing-leak benchmark of the API token and signed-URL checks (`node scripts/bench-auth-timing.js`,
 * after `npm run build`). A comparison that stops at the first differing character answers faster
 * for a guess that is wrong early than for one that is wrong late, which lets an attacker recover a
 * token character by character. This measures, with the built code (dist/):
 *
 * 1. `tokenMatches` in process: wrong tokens that share 0 vs all-but-one leading characters with
 *    the real one, the right token, and wrong tokens of other lengths;
 * 2. the URL signer's `verify`: a signature wrong in its first vs its last character;
 * 3. over HTTP against a listening server (loopback, keep-alive): `GET /api/sessions` with the
 *    same wrong tokens (the whole request path: header parsing, auth hook, 401 reply).
 *
 * Cases are interleaved: every round runs one batch of each case in a fresh random order, so drift
 * (CPU frequency, GC, other load) hits all cases alike; the figure is the median per-call time
 * over the rounds. The ratio "late / early" should be 1.00 within noise; an early-exit comparison
 * shows a ratio that grows with the shared prefix. The noise floor is measured too: the first case
 * runs twice under two names, and their ratio ("same case twice") is what chance alone gives.
 *
 * Settings: BENCH_ROUNDS (default 101), BENCH_BATCH (calls per batch in process, default 1000;
 * a quarter of it for the slower signature check), BENCH_HTTP_ROUNDS (default 1001; one request
 * per case per round), BENCH_HTTP=0 skips part 3. About a minute on a 2-core machine.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, URLSearchParams } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const dist = (p) => path.join(root, 'dist', p);
if (!existsSync(dist('server/auth.js'))) {
  console.error(`${dist('server/auth.js')} is missing; run \`npm run build\` first`);
  process.exit(1);
}
const { tokenMatches, createUrlSigner } = await import(dist('server/auth.js'));

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 101);
const BATCH = Number(process.env.BENCH_BATCH ?? 1000);
const HTTP_ROUNDS = Number(process.env.BENCH_HTTP_ROUNDS ?? 1001);

const TOKEN = 'b00th-bench-token-7f3a9c1e5d2b8a4f6e0c9d7b';
/** The same string with the character at `i` changed, as a flat string (as a parsed header is). */
const flip = (s, i) => Buffer.from(`${s.slice(0, i)}${s[i] === 'x' ? 'y' : 'x'}${s.slice(i + 1)}`).toString();
const flat = (s) => Buffer.from(s).toString();

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};
const shuffle = (xs) => {
  const a = [...xs];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
};

/** Runs `fn(arg)` `batch` times per case per round, interleaved; returns median ns per call by case. */
function measure(cases, fn, batch = BATCH) {
  const times = new Map(cases.map((c) => [c.name, []]));
  let sink = 0;
  for (let w = 0; w < 3; w++) for (const c of cases) for (let i = 0; i < batch; i++) sink += fn(c.arg) ? 1 : 0;
  for (let r = 0; r < ROUNDS; r++) {
    for (const c of shuffle(cases)) {
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < batch; i++) sink += fn(c.arg) ? 1 : 0;
      times.get(c.name).push(Number(process.hrtime.bigint() - t0) / batch);
    }
  }
  if (sink < 0) console.log(sink); // keeps the calls from being optimised away
  return new Map([...times].map(([k, v]) => [k, median(v)]));
}

function report(title, medians, unit, pairs) {
  console.log(`\n${title}`);
  for (const [name, v] of medians) console.log(`  ${name.padEnd(44)} ${v.toFixed(unit === 'ns' ? 1 : 2).padStart(10)} ${unit}`);
  const out = {};
  for (const [label, late, early] of pairs) {
    const ratio = medians.get(late) / medians.get(early);
    out[label] = Number(ratio.toFixed(3));
    console.log(`  ratio ${label.padEnd(38)} ${ratio.toFixed(3).padStart(10)}`);
  }
  return out;
}

console.log(`booth auth timing: ${ROUNDS} interleaved rounds; token of ${TOKEN.length} characters; node ${process.version}`);

// 1. tokenMatches
const tokenCases = [
  { name: 'wrong at char 0 (shares 0 leading chars)', arg: flip(TOKEN, 0) },
  { name: 'wrong at char 0, again (noise floor)', arg: flip(TOKEN, 0) },
  { name: `wrong at char ${TOKEN.length - 1} (shares all but one)`, arg: flip(TOKEN, TOKEN.length - 1) },
  { name: 'the right token', arg: flat(TOKEN) },
  { name: '1 character', arg: 'b' },
  { name: 'half the length (a true prefix)', arg: flat(TOKEN.slice(0, TOKEN.length >> 1)) },
  { name: 'one character longer', arg: flat(`${TOKEN}0`) },
];
const t = measure(tokenCases, (p) => tokenMatches(p, TOKEN));
const figures = {
  tokenMatches: report(`tokenMatches (${BATCH} calls per batch), median per call`, t, 'ns', [
    ['same case twice (noise floor)', tokenCases[1].name, tokenCases[0].name],
    ['late-wrong / early-wrong', tokenCases[2].name, tokenCases[0].name],
    ['right / early-wrong', tokenCases[3].name, tokenCases[0].name],
    ['true prefix / early-wrong', tokenCases[5].name, tokenCases[0].name],
  ]),
};

// 2. signed URL verification
const signer = createUrlSigner(TOKEN);
const signed = signer.sign('/api/sessions/alice/exports/alice-1/download');
const q = new URLSearchParams(signed.slice(signed.indexOf('?')));
const sig = q.get('sig');
const exp = q.get('exp');
const p = '/api/sessions/alice/exports/alice-1/download';
const sigCases = [
  { name: 'signature wrong at char 0', arg: flip(sig, 0) },
  { name: 'signature wrong at char 0, again', arg: flip(sig, 0) },
  { name: `signature wrong at char ${sig.length - 1}`, arg: flip(sig, sig.length - 1) },
  { name: 'the right signature', arg: flat(sig) },
];
const sigBatch = Math.max(1, Math.round(BATCH / 4));
const s = measure(sigCases, (g) => signer.verify(p, g, exp), sigBatch);
figures.verify = report(`UrlSigner.verify (${sigBatch} calls per batch), median per call`, s, 'ns', [
  ['same case twice (noise floor)', sigCases[1].name, sigCases[0].name],
  ['late-wrong / early-wrong', sigCases[2].name, sigCases[0].name],
  ['right / early-wrong', sigCases[3].name, sigCases[0].name],
]);

// 3. over HTTP
if (process.env.BENCH_HTTP !== '0') {
  const { buildApp } = await import(dist('server/app.js'));
  const { createFsStore } = await import(dist('storage/index.js'));
  const dir = await mkdtemp(path.join(tmpdir(), 'booth-bench-auth-'));
  const store = createFsStore({ root: path.join(dir, 'store') });
  const app = await buildApp({ store, token: TOKEN, scanRuns: false, ui: false });
  try {
    const base = new URL(await app.listen({ host: '127.0.0.1', port: 0 }));
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const get = (authorization) =>
      new Promise((resolve, reject) => {
        const t0 = process.hrtime.bigint();
        const req = request({ host: base.hostname, port: base.port, path: '/api/sessions', agent, headers: { authorization } }, (res) => {
          res.resume();
          res.on('end', () => resolve([res.statusCode, Number(process.hrtime.bigint() - t0) / 1000]));
        });
        req.on('error', reject);
        req.end();
      });
    const httpCases = [
      { name: 'wrong at char 0', arg: `Bearer ${flip(TOKEN, 0)}` },
      { name: 'wrong at char 0, again (noise floor)', arg: `Bearer ${flip(TOKEN, 0)}` },
      { name: `wrong at char ${TOKEN.length - 1}`, arg: `Bearer ${flip(TOKEN, TOKEN.length - 1)}` },
      { name: 'half the length (a true prefix)', arg: `Bearer ${TOKEN.slice(0, TOKEN.length >> 1)}` },
      { name: 'the right token (200, for scale)', arg: `Bearer ${TOKEN}` },
    ];
    const times = new Map(httpCases.map((c) => [c.name, []]));
    for (let w = 0; w < 50; w++) for (const c of httpCases) await get(c.arg);
    for (let r = 0; r < HTTP_ROUNDS; r++) {
      for (const c of shuffle(httpCases)) {
        const [status, us] = await get(c.arg);
        if (status !== (c === httpCases[4] ? 200 : 401)) throw new Error(`${c.name}: HTTP ${status}`);
        times.get(c.name).push(us);
      }
    }
    agent.destroy();
    figures.http = report(`HTTP GET /api/sessions over loopback (${HTTP_ROUNDS} requests per case), median latency`, new Map([...times].map(([k, v]) => [k, median(v)])), 'µs', [
      ['same case twice (noise floor)', httpCases[1].name, httpCases[0].name],
      ['late-wrong / early-wrong', httpCases[2].name, httpCases[0].name],
      ['true prefix / early-wrong', httpCases[3].name, httpCases[0].name],
    ]);
  } finally {
    await app.close();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
}

console.log(`\n${JSON.stringify({ bench: 'auth-timing', rounds: ROUNDS, batch: BATCH, httpRounds: HTTP_ROUNDS, ratios: figures })}`);
