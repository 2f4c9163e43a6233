/**
 * Human-readable CLI output: session lists and per-photo tables. Plain text, aligned columns,
 * no colours (output is often piped into logs).
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SessionManifest } from '../sessions/manifest.js';
import type { ObjectStore } from '../storage/types.js';

/** Local file path of a key when the store is a folder; null for remote stores. */
export function localPath(store: ObjectStore, key: string): string | null {
  if (!store.url.startsWith('file:')) return null;
  return path.join(fileURLToPath(store.url), ...key.split('/'));
}

function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, [...cell].length)));
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join('  ')).join('\n');
}

/** The `session list` table. */
export function formatSessionList(all: Array<{ name: string; manifest: SessionManifest | null; error: string | null }>): string {
  if (all.length === 0) return 'No sessions yet. Create one with: booth session create <name> --trigger ohwx --class man';
  const rows = [['NAME', 'SUBJECT', 'KIND', 'BASE', 'STATE', 'PHOTOS', 'ACCEPTED']];
  for (const s of all) {
    const m = s.manifest;
    if (!m) {
      rows.push([s.name, `(unreadable: ${s.error ?? 'unknown error'})`, '', '', '', '', '']);
      continue;
    }
    rows.push([
      m.name,
      `${m.subject.trigger} ${m.subject.classNoun}`,
      m.subject.kind,
      m.base,
      m.state,
      String(m.photos.length),
      String(m.photos.filter((p) => p.status === 'accepted').length),
    ]);
  }
  return table(rows);
}

const rect = (r: { x: number; y: number; width: number; height: number } | null) => (r ? `${r.width}x${r.height}+${r.x}+${r.y}` : '-');

/** The `session show` view: header plus one row per photo. */
export function formatPhotoTable(m: SessionManifest, store: ObjectStore): string {
  const head = [
    `Session ${m.name}: ${m.subject.trigger} ${m.subject.classNoun} (${m.subject.kind}), base ${m.base}, ${m.settings.resolution} px, framing ${m.settings.framing}, identity ${m.settings.identity}`,
    `State: ${m.state}${m.prepared ? ` (prepared ${m.prepared.at})` : ''} · store ${store.url}`,
  ];
  if (m.photos.length === 0) return `${head.join('\n')}\nNo photos yet: booth add ${m.name} <files or folder>`;
  const rows = [['PHOTO', 'SHA256', 'STATUS', 'FACE', 'CROP', 'FLAGS / REASON']];
  for (const p of m.photos) {
    const flags = p.checks.map((c) => (c.value === null ? c.flag : `${c.flag}=${c.value}`)).join(', ');
    const note = [flags, p.status === 'accepted' ? '' : (p.reason ?? '')].filter(Boolean).join(' — ');
    rows.push([p.name, p.sha256.slice(0, 8), p.status + (p.override ? ` (${p.override} by hand)` : ''), rect(p.face), rect(p.crop), note]);
  }
  return `${head.join('\n')}\n\n${table(rows)}`;
}
