#!/usr/bin/env node
/**
 * Dependency audit gate: runs `npm audit --json --omit=dev` (what `booth` ships) and
 * `npm audit --json` (everything, test tools included), and fails on any high or critical advisory
 * that docs/audit-allowlist.json does not list with a written reason.
 *
 * An allow-list entry: `{ "package", "id", "scope", "versions", "reason", "date" }` —
 * `id` is the advisory's GHSA id (or `*`: every advisory of that package at those versions),
 * `scope` is `dev` (accepted only while the advisory is absent from the production audit: a dev
 * entry that shows up in production fails) or `prod`, `versions` the installed versions the reason
 * was written for (a new version needs a new look), `reason` why it is or is not reachable in
 * Booth, `date` (YYYY-MM-DD) when that was decided. Entries that match nothing are reported as
 * stale so the list shrinks when a dependency is upgraded.
 *
 * Exit codes: 0 nothing unlisted; 1 unlisted high/critical advisories (listed with their path);
 * 2 the audit could not run (no advisory service reachable, bad allow-list) — not a pass.
 * `--from <all.json> <prod.json>` checks saved `npm audit --json` outputs instead of running npm.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const ALLOWLIST = fileURLToPath(new URL('../docs/audit-allowlist.json', import.meta.url));
const GATED = new Set(['high', 'critical']);

function fail(code, message) {
  console.error(`audit-check: ${message}`);
  process.exit(code);
}

/** `npm audit --json [args]` parsed, or the saved file. */
function audit(args, saved) {
  let text;
  if (saved) text = readFileSync(saved, 'utf8');
  else {
    const r = spawnSync('npm', ['audit', '--json', ...args], { cwd: root, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
    if (r.error) fail(2, `could not run npm: ${r.error.message}`);
    text = r.stdout;
  }
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    fail(2, `${['npm audit', ...args].join(' ')} printed no JSON report (is the registry reachable?)`);
  }
  if (!json.vulnerabilities) {
    const why = json.error?.summary || json.message || json.error?.detail || JSON.stringify(json).slice(0, 200);
    fail(2, `${['npm audit', ...args].join(' ')} got no report from the advisory service: ${why}. This is not a pass; run it where the npm advisory endpoint is reachable.`);
  }
  return json;
}

/** Installed versions of a package, from the lockfile paths npm audit names. */
function versionsOf(lock, nodes) {
  return [...new Set((nodes ?? []).map((n) => lock.packages?.[n]?.version).filter(Boolean))];
}

/** Every high/critical advisory in a report: package, GHSA id, severity, title, installed versions. */
function advisories(report, lock) {
  const out = [];
  for (const [name, v] of Object.entries(report.vulnerabilities)) {
    for (const via of v.via) {
      if (typeof via !== 'object' || !GATED.has(via.severity)) continue;
      const ghsa = /GHSA-[\w-]+/.exec(via.url ?? '')?.[0] ?? String(via.source);
      out.push({ package: via.name ?? name, id: ghsa, severity: via.severity, title: via.title, url: via.url, range: via.range, versions: versionsOf(lock, v.nodes), nodes: v.nodes ?? [] });
    }
  }
  return out;
}

function loadAllowlist() {
  let list;
  try {
    list = JSON.parse(readFileSync(ALLOWLIST, 'utf8'));
  } catch (err) {
    fail(2, `${ALLOWLIST}: ${err.message}`);
  }
  const entries = list.advisories;
  if (!Array.isArray(entries)) fail(2, `${ALLOWLIST}: "advisories" must be an array (empty when nothing is accepted)`);
  entries.forEach((e, i) => {
    const where = `${ALLOWLIST} advisories[${i}]`;
    if (typeof e.package !== 'string' || !e.package) fail(2, `${where}.package: the npm package name is required`);
    if (typeof e.id !== 'string' || !/^(GHSA-[\w-]+|\d+|\*)$/.test(e.id)) fail(2, `${where}.id: a GHSA id, an npm advisory number or "*"`);
    if (e.scope !== 'dev' && e.scope !== 'prod') fail(2, `${where}.scope: "dev" or "prod"`);
    if (!Array.isArray(e.versions) || e.versions.length === 0) fail(2, `${where}.versions: the installed versions the reason was written for`);
    if (typeof e.reason !== 'string' || e.reason.length < 40) fail(2, `${where}.reason: say in a sentence or two why it is or is not reachable in Booth`);
    if (typeof e.date !== 'string' || !/^\d{4}-\d{2}-\d{2}$/.test(e.date)) fail(2, `${where}.date: YYYY-MM-DD`);
  });
  return entries;
}

const fromIndex = process.argv.indexOf('--from');
const saved = fromIndex === -1 ? [] : process.argv.slice(fromIndex + 1, fromIndex + 3);
const allowlist = loadAllowlist();
const lock = JSON.parse(readFileSync(new URL('../package-lock.json', import.meta.url), 'utf8'));
const prod = advisories(audit(['--omit=dev'], saved[1]), lock);
const all = advisories(audit([], saved[0]), lock);
const inProd = new Set(prod.map((a) => `${a.package}/${a.id}`));
const used = new Set();
const unlisted = [];
const accepted = [];
const seen = new Set();
for (const a of [...prod, ...all]) {
  const key = `${a.package}/${a.id}`;
  if (seen.has(key)) continue;
  seen.add(key);
  const entry = allowlist.findIndex(
    (e) => e.package === a.package && (e.id === a.id || e.id === '*') && a.versions.every((v) => e.versions.includes(v)) && (e.scope === 'prod' || !inProd.has(key)),
  );
  if (entry === -1) unlisted.push(a);
  else {
    used.add(entry);
    accepted.push(a);
  }
}

const line = (a) => `  ${a.severity.padEnd(8)} ${a.package}@${a.versions.join(',')} ${a.id} ${a.title}${inProd.has(`${a.package}/${a.id}`) ? ' [production]' : ' [dev only]'}\n           via ${a.nodes[0] ?? '?'}`;
console.log(`audit-check: ${prod.length} high/critical advisories in production dependencies, ${all.length} in all dependencies`);
if (accepted.length) console.log(`accepted by docs/audit-allowlist.json:\n${accepted.map(line).join('\n')}`);
allowlist.forEach((e, i) => {
  if (!used.has(i)) console.log(`stale allow-list entry (accepts nothing in this audit; remove it if the advisory is gone): ${e.package} ${e.id}`);
});
if (unlisted.length) {
  console.error(`NOT listed (upgrade, or add an entry with the reason to docs/audit-allowlist.json):\n${unlisted.map(line).join('\n')}`);
  process.exit(1);
}
console.log('audit-check: ok');
