/** Fixtures for the server tests: an app on a temp folder store, multipart bodies, SSE parsing, polling. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { buildApp, type AppOptions } from '../../src/server/app.js';
import { createFsStore } from '../../src/storage/drivers/fs.js';
import type { ObjectStore } from '../../src/storage/types.js';
// The launcher from the build: it spawns the worker from dist/cli/main.js next to it (the source
// tree has no runnable .js), as `booth serve` does; `npm test` builds first.
import { createLocalLauncher } from '../../dist/training/launchers/local.js';
import { STAND_IN } from '../helpers/training.js';

/** The token the test apps use. */
export const TOKEN = 'test-token-0123456789abcdef';
/** The Authorization header for {@link TOKEN}. */
export const AUTH = { authorization: `Bearer ${TOKEN}` };

/** The built local launcher (see the import above). */
export { createLocalLauncher };

/** An app on a fresh folder store whose local launcher runs the stand-in trainer. */
export async function testApp(overrides: Partial<AppOptions> = {}, env: Record<string, string> = {}): Promise<{ app: FastifyInstance; store: ObjectStore; dir: string; close: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'booth-server-'));
  const store = createFsStore({ root: path.join(dir, 'store') });
  const launcherEnv = { ...process.env, BOOTH_TRAINER: JSON.stringify([process.execPath, STAND_IN]), BOOTH_WORK_DIR: path.join(dir, 'work'), STANDIN_STEP_MS: '15', BOOTH_LOG_LEVEL: 'error', ...env };
  const app = await buildApp({
    store,
    token: TOKEN,
    launcher: () => createLocalLauncher({ env: launcherEnv }),
    prepare: { threads: 1 },
    sse: { pollMs: 100, heartbeatMs: 5000, finalGraceMs: 300 },
    webhooks: { backoffMs: 50, watchMs: 150, timeoutMs: 2000 },
    ...overrides,
  });
  await app.ready();
  return {
    app,
    store,
    dir,
    close: async () => {
      await app.close();
      await store.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A multipart/form-data body with one file part per entry. */
export function multipart(files: Array<{ name: string; data: Buffer; field?: string; type?: string }>): { payload: Buffer; headers: Record<string, string> } {
  const boundary = `----booth${Math.random().toString(16).slice(2)}`;
  const parts: Buffer[] = [];
  for (const f of files) {
    parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${f.field ?? 'photos'}"; filename="${f.name}"\r\nContent-Type: ${f.type ?? 'image/jpeg'}\r\n\r\n`));
    parts.push(f.data, Buffer.from('\r\n'));
  }
  parts.push(Buffer.from(`--${boundary}--\r\n`));
  return { payload: Buffer.concat(parts), headers: { 'content-type': `multipart/form-data; boundary=${boundary}` } };
}

/** One parsed Server-Sent Event. */
export interface SseEvent {
  id: string | null;
  event: string;
  data: unknown;
}

/** Parse an SSE body (comments and `retry:` skipped). */
export function parseSse(text: string): SseEvent[] {
  const out: SseEvent[] = [];
  for (const block of text.split('\n\n')) {
    let id: string | null = null;
    let event = 'message';
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith('id: ')) id = line.slice(4);
      else if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('data: ')) data.push(line.slice(6));
    }
    if (data.length) out.push({ id, event, data: JSON.parse(data.join('\n')) });
  }
  return out;
}

/** Poll `fn` until it returns a value (not undefined); fails after `tries` polls. */
export async function until<T>(fn: () => Promise<T | undefined>, what: string, tries = 900, everyMs = 100): Promise<T> {
  for (let i = 0; i < tries; i++) {
    const v = await fn();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out waiting for ${what}`);
}
