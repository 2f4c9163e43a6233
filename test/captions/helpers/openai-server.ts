/**
 * A local stand-in for the OpenAI API, for tests only: a real HTTP server on 127.0.0.1 (port 0)
 * that the real `openai` SDK talks to through `baseURL`. It checks every request the way the API
 * does — Bearer key, model, a user message with an `image_url` part holding a JPEG data URL and a
 * valid `detail`, `response_format` of type `json_schema` with `strict: true` and a schema that
 * obeys Structured Outputs' strict rules (every object closed with `additionalProperties: false`
 * and every property required) — and answers with the API's own response shapes: chat
 * completions with `usage`, refusals in `message.refusal`, errors as `{ error: { message, type,
 * code } }` with 401/404/429/500 statuses and `Retry-After`. Batch endpoints follow the Batch
 * API: `POST /v1/files` (multipart, purpose `batch`, JSONL lines `{custom_id, method, url, body}`),
 * `POST /v1/batches`, `GET /v1/batches[/id]`, `GET /v1/files/{id}/content` (output lines
 * `{id, custom_id, response: {status_code, request_id, body}, error}`).
 *
 * Which answer an image gets is decided by the image itself: test photos are tinted so that the
 * mean level of the JPEG the captioner sends encodes a scenario index ({@link scenarioLevel}).
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import sharp from 'sharp';
import { blockNoise } from '../../helpers/images.js';

/** What the server does for one image. */
export type Scenario = 'ok' | 'noun' | 'rate-limit' | 'server-error' | 'refusal' | 'malformed' | 'slow' | 'long-flags';

/** Scenario index → base level of the tinted test photo: mean ≈ level + 15.5. */
export const scenarioLevel = (index: number): number => 20 + 28 * index;

/** Usage reported for every successful completion. */
export const USAGE = { prompt_tokens: 3000, completion_tokens: 50 };

export interface FakeOpenAI {
  baseURL: string;
  key: string;
  model: string;
  /** Scenarios by index (the test photo's tint). */
  scenarios: Scenario[];
  /** Every request seen: path, scenario index (chat), status answered. */
  log: Array<{ path: string; index: number | null; status: number }>;
  /** Contract violations found in requests (should stay empty). */
  violations: string[];
  /** Force an answer for every chat request regardless of scenario (e.g. 'refusal'), or null. */
  override: Scenario | null;
  /** Mark every batch completed (results computed now). */
  completeBatches(): void;
  close(): Promise<void>;
}

type Json = Record<string, unknown>;

function err(res: ServerResponse, status: number, message: string, type: string, code: string | null, headers: Record<string, string> = {}): number {
  res.writeHead(status, { 'content-type': 'application/json', 'x-request-id': `req_${Math.random().toString(36).slice(2)}`, ...headers });
  res.end(JSON.stringify({ error: { message, type, param: null, code } }));
  return status;
}

function sendJson(res: ServerResponse, body: unknown): number {
  res.writeHead(200, { 'content-type': 'application/json', 'x-request-id': `req_${Math.random().toString(36).slice(2)}` });
  res.end(JSON.stringify(body));
  return 200;
}

/** Structured Outputs' strict-mode rules, checked recursively. */
function strictSchemaProblems(schema: unknown, where = 'schema'): string[] {
  if (!schema || typeof schema !== 'object') return [`${where} is not an object`];
  const s = schema as Json;
  const out: string[] = [];
  if (s.type === 'object') {
    const props = (s.properties ?? {}) as Json;
    if (s.additionalProperties !== false) out.push(`${where}: additionalProperties must be false`);
    const required = Array.isArray(s.required) ? (s.required as string[]) : [];
    for (const k of Object.keys(props)) if (!required.includes(k)) out.push(`${where}: property "${k}" must be required`);
    for (const [k, v] of Object.entries(props)) out.push(...strictSchemaProblems(v, `${where}.${k}`));
  } else if (!['string', 'boolean', 'number', 'integer', 'array'].includes(String(s.type))) {
    out.push(`${where}: unsupported type ${String(s.type)}`);
  }
  return out;
}

/** Validate a chat completions body; returns problems (empty when valid) and the JPEG bytes. */
function checkChatBody(body: Json, model: string): { problems: string[]; jpeg: Buffer | null } {
  const problems: string[] = [];
  if (body.model !== model) problems.push(`model is ${JSON.stringify(body.model)}, expected ${model}`);
  if (body.stream) problems.push('stream must be off');
  const messages = Array.isArray(body.messages) ? (body.messages as Json[]) : [];
  if (messages.length === 0) problems.push('messages missing');
  let jpeg: Buffer | null = null;
  for (const m of messages) {
    if (!['system', 'user', 'assistant', 'developer'].includes(String(m.role))) problems.push(`bad role ${String(m.role)}`);
    if (m.role === 'user' && Array.isArray(m.content)) {
      for (const part of m.content as Json[]) {
        if (part.type === 'image_url') {
          const iu = part.image_url as Json | undefined;
          const url = typeof iu?.url === 'string' ? iu.url : '';
          const match = /^data:image\/jpeg;base64,([A-Za-z0-9+/=]+)$/.exec(url);
          if (!match?.[1]) problems.push('image_url.url is not a JPEG data URL');
          else {
            jpeg = Buffer.from(match[1], 'base64');
            if (jpeg[0] !== 0xff || jpeg[1] !== 0xd8) problems.push('data URL does not hold a JPEG');
          }
          if (iu?.detail !== undefined && !['low', 'high', 'auto'].includes(String(iu.detail))) problems.push(`bad detail ${String(iu.detail)}`);
        } else if (part.type !== 'text' || typeof part.text !== 'string') problems.push(`bad content part ${JSON.stringify(part).slice(0, 80)}`);
      }
    }
  }
  if (!jpeg) problems.push('no image content part in a user message');
  const rf = body.response_format as Json | undefined;
  if (rf?.type !== 'json_schema') problems.push('response_format.type must be json_schema');
  const js = rf?.json_schema as Json | undefined;
  if (!js || typeof js.name !== 'string' || !/^[a-zA-Z0-9_-]{1,64}$/.test(js.name)) problems.push('json_schema.name missing or invalid');
  if (js?.strict !== true) problems.push('json_schema.strict must be true');
  problems.push(...strictSchemaProblems(js?.schema));
  if (body.max_completion_tokens !== undefined && !(Number.isInteger(body.max_completion_tokens) && (body.max_completion_tokens as number) > 0)) problems.push('bad max_completion_tokens');
  return { problems, jpeg };
}

async function scenarioIndex(jpeg: Buffer): Promise<number> {
  const { channels } = await sharp(jpeg).stats();
  const mean = channels.slice(0, 3).reduce((s, c) => s + c.mean, 0) / 3;
  return Math.round((mean - 15.5 - scenarioLevel(0)) / 28);
}

function completion(model: string, content: string | null, refusal: string | null, finish = 'stop'): Json {
  return {
    id: `chatcmpl-${Math.random().toString(36).slice(2)}`,
    object: 'chat.completion',
    created: Math.floor(Date.now() / 1000),
    model: `${model}-2024-07-18`,
    choices: [{ index: 0, message: { role: 'assistant', content, refusal, annotations: [] }, logprobs: null, finish_reason: finish }],
    usage: { ...USAGE, total_tokens: USAGE.prompt_tokens + USAGE.completion_tokens },
    system_fingerprint: 'fp_test',
  };
}

const noFlags = { multiple_people: false, face_covered: false, blurry: false, text_watermark: false, heavy_filter: false };

/** The completion for a scenario that answers (not an HTTP error). */
function answer(model: string, s: Scenario, index: number): Json {
  switch (s) {
    case 'refusal':
      return completion(model, null, "I'm sorry, I can't help with that.");
    case 'malformed':
      return completion(model, '{"caption": "a photo of <subject>", "flags": {', null);
    case 'noun':
      return completion(model, JSON.stringify({ caption: 'a close-up photo of a backpack on a wooden table', flags: noFlags }), null);
    case 'long-flags':
      return completion(
        model,
        JSON.stringify({
          caption: `a photo of <subject> ${'next to a very long row of colourful umbrellas and market stalls under bright morning light '.repeat(6)}`.trim(),
          flags: { ...noFlags, multiple_people: true, text_watermark: true },
        }),
        null,
      );
    default:
      return completion(model, JSON.stringify({ caption: `a photo of <subject> on a plain background, image ${index}`, flags: noFlags }), null);
  }
}

/**
 * Start the stand-in server.
 * @param scenarios - answer per tint index
 */
export async function startFakeOpenAI(scenarios: Scenario[], opts: { key?: string; model?: string; slowMs?: number } = {}): Promise<FakeOpenAI> {
  const key = opts.key ?? 'sk-test-booth';
  const model = opts.model ?? 'gpt-4o-mini';
  const slowMs = opts.slowMs ?? 3000;
  const attempts = new Map<number, number>();
  const files = new Map<string, { purpose: string; filename: string; text: string }>();
  const batches = new Map<string, Json>();
  const sockets = new Set<Socket>();
  let seq = 0;

  const state: FakeOpenAI = {
    baseURL: '',
    key,
    model,
    scenarios,
    log: [],
    violations: [],
    override: null,
    completeBatches() {
      for (const b of batches.values()) {
        if (b.status === 'completed') continue;
        const input = files.get(String(b.input_file_id));
        const out: string[] = [];
        const errs: string[] = [];
        for (const line of (input?.text ?? '').split('\n').filter((l) => l.trim() !== '')) {
          const req = JSON.parse(line) as { custom_id: string; body: Json };
          const idx = (req.body as { __index?: number }).__index ?? 0;
          const s = scenarioFor(idx);
          if (s === 'server-error') {
            errs.push(JSON.stringify({ id: `batch_req_${++seq}`, custom_id: req.custom_id, response: { status_code: 500, request_id: `req_${seq}`, body: { error: { message: 'The server had an error while processing your request.', type: 'server_error', param: null, code: null } } }, error: null }));
          } else {
            out.push(JSON.stringify({ id: `batch_req_${++seq}`, custom_id: req.custom_id, response: { status_code: 200, request_id: `req_${seq}`, body: answer(model, s === 'rate-limit' || s === 'slow' ? 'ok' : s, idx) }, error: null }));
          }
        }
        const outId = `file-out-${++seq}`;
        files.set(outId, { purpose: 'batch_output', filename: 'batch_output.jsonl', text: out.length ? `${out.join('\n')}\n` : '' });
        let errId: string | null = null;
        if (errs.length) {
          errId = `file-err-${++seq}`;
          files.set(errId, { purpose: 'batch_output', filename: 'batch_errors.jsonl', text: `${errs.join('\n')}\n` });
        }
        Object.assign(b, {
          status: 'completed',
          output_file_id: outId,
          error_file_id: errId,
          completed_at: Math.floor(Date.now() / 1000),
          request_counts: { total: out.length + errs.length, completed: out.length, failed: errs.length },
        });
      }
    },
    async close() {
      for (const s of sockets) s.destroy();
      server.close();
      await once(server, 'close').catch(() => undefined);
    },
  };

  function scenarioFor(index: number): Scenario {
    return state.override ?? scenarios[index] ?? 'ok';
  }

  async function readBody(req: IncomingMessage): Promise<Buffer> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    return Buffer.concat(chunks);
  }

  async function handle(req: IncomingMessage, res: ServerResponse, entry: { index: number | null }): Promise<{ index: number | null; status: number }> {
    const url = new URL(req.url ?? '/', 'http://x');
    if (req.headers.authorization !== `Bearer ${key}`) {
      state.violations.push(`${url.pathname}: Authorization header is ${JSON.stringify(req.headers.authorization)}`);
      return { index: null, status: err(res, 401, 'Incorrect API key provided.', 'invalid_request_error', 'invalid_api_key') };
    }
    const raw = await readBody(req);
    if (req.method === 'POST' && url.pathname === '/v1/chat/completions') {
      if (!String(req.headers['content-type']).startsWith('application/json')) state.violations.push('chat: content-type is not JSON');
      const body = JSON.parse(raw.toString('utf8')) as Json;
      const { problems, jpeg } = checkChatBody(body, model);
      if (problems.length > 0) {
        state.violations.push(...problems.map((p) => `chat: ${p}`));
        if (body.model !== model) return { index: null, status: err(res, 404, `The model \`${String(body.model)}\` does not exist or you do not have access to it.`, 'invalid_request_error', 'model_not_found') };
        return { index: null, status: err(res, 400, problems.join('; '), 'invalid_request_error', null) };
      }
      const index = await scenarioIndex(jpeg as Buffer);
      entry.index = index;
      const n = (attempts.get(index) ?? 0) + 1;
      attempts.set(index, n);
      const s = scenarioFor(index);
      if (s === 'rate-limit' && n === 1) {
        return { index, status: err(res, 429, 'Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3, Requested 1.', 'requests', 'rate_limit_exceeded', { 'retry-after': '1' }) };
      }
      if (s === 'server-error' && n === 1) return { index, status: err(res, 500, 'The server had an error while processing your request. Sorry about that!', 'server_error', null) };
      if (s === 'slow') {
        await new Promise((r) => setTimeout(r, slowMs));
        if (res.destroyed || req.destroyed) return { index, status: 0 };
      }
      return { index, status: sendJson(res, answer(model, s, index)) };
    }
    if (req.method === 'POST' && url.pathname === '/v1/files') {
      const form = await new Request('http://x/', { method: 'POST', headers: { 'content-type': String(req.headers['content-type']) }, body: raw }).formData();
      const purpose = form.get('purpose');
      const file = form.get('file');
      if (purpose !== 'batch') state.violations.push(`files: purpose is ${String(purpose)}`);
      if (!file || typeof file === 'string') {
        state.violations.push('files: no file part');
        return { index: null, status: err(res, 400, 'file is required', 'invalid_request_error', null) };
      }
      let text = await file.text();
      // Validate every batch line as the Batch API does, and tag it with its scenario for later.
      const lines: string[] = [];
      const ids = new Set<string>();
      for (const line of text.split('\n').filter((l) => l.trim() !== '')) {
        const r = JSON.parse(line) as { custom_id?: unknown; method?: unknown; url?: unknown; body?: Json };
        if (typeof r.custom_id !== 'string' || ids.has(r.custom_id)) state.violations.push(`batch line: custom_id missing or repeated: ${String(r.custom_id)}`);
        ids.add(String(r.custom_id));
        if (r.method !== 'POST' || r.url !== '/v1/chat/completions') state.violations.push('batch line: method/url must be POST /v1/chat/completions');
        const { problems, jpeg } = checkChatBody(r.body ?? {}, model);
        state.violations.push(...problems.map((p) => `batch line: ${p}`));
        const index = jpeg ? await scenarioIndex(jpeg) : 0;
        lines.push(JSON.stringify({ ...r, body: { ...r.body, __index: index } }));
      }
      text = `${lines.join('\n')}\n`;
      const id = `file-${++seq}`;
      files.set(id, { purpose: String(purpose), filename: file.name, text });
      return { index: null, status: sendJson(res, { id, object: 'file', bytes: raw.length, created_at: Math.floor(Date.now() / 1000), filename: file.name, purpose: 'batch', status: 'processed', expires_at: null, status_details: null }) };
    }
    if (req.method === 'POST' && url.pathname === '/v1/batches') {
      const body = JSON.parse(raw.toString('utf8')) as Json;
      if (!files.has(String(body.input_file_id))) return { index: null, status: err(res, 400, `Invalid input_file_id ${String(body.input_file_id)}`, 'invalid_request_error', null) };
      if (body.endpoint !== '/v1/chat/completions') state.violations.push(`batches: endpoint ${String(body.endpoint)}`);
      if (body.completion_window !== '24h') state.violations.push(`batches: completion_window ${String(body.completion_window)}`);
      const id = `batch_${++seq}`;
      const total = (files.get(String(body.input_file_id))?.text.split('\n').filter((l) => l.trim() !== '').length ?? 0);
      const b: Json = {
        id,
        object: 'batch',
        endpoint: body.endpoint,
        errors: null,
        input_file_id: body.input_file_id,
        completion_window: '24h',
        status: 'in_progress',
        output_file_id: null,
        error_file_id: null,
        created_at: Math.floor(Date.now() / 1000),
        in_progress_at: Math.floor(Date.now() / 1000),
        expires_at: Math.floor(Date.now() / 1000) + 86400,
        request_counts: { total, completed: 0, failed: 0 },
        metadata: body.metadata ?? null,
      };
      batches.set(id, b);
      return { index: null, status: sendJson(res, b) };
    }
    if (req.method === 'GET' && url.pathname === '/v1/batches') {
      const data = [...batches.values()].reverse();
      return { index: null, status: sendJson(res, { object: 'list', data, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null, has_more: false }) };
    }
    const batchMatch = /^\/v1\/batches\/([^/]+)$/.exec(url.pathname);
    if (req.method === 'GET' && batchMatch?.[1]) {
      const b = batches.get(batchMatch[1]);
      if (!b) return { index: null, status: err(res, 404, `No batch found with id '${batchMatch[1]}'.`, 'invalid_request_error', null) };
      return { index: null, status: sendJson(res, b) };
    }
    const contentMatch = /^\/v1\/files\/([^/]+)\/content$/.exec(url.pathname);
    if (req.method === 'GET' && contentMatch?.[1]) {
      const f = files.get(contentMatch[1]);
      if (!f) return { index: null, status: err(res, 404, `No such File object: ${contentMatch[1]}`, 'invalid_request_error', null) };
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.end(f.text);
      return { index: null, status: 200 };
    }
    state.violations.push(`unknown endpoint ${req.method ?? ''} ${url.pathname}`);
    return { index: null, status: err(res, 404, `Invalid URL (${req.method ?? ''} ${url.pathname})`, 'invalid_request_error', null) };
  }

  const server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    // Logged on arrival (index filled in as soon as it is known), so a request still being
    // answered slowly is already counted when the client gives up on it.
    const entry: { path: string; index: number | null; status: number } = { path, index: null, status: 0 };
    state.log.push(entry);
    handle(req, res, entry)
      .then(({ index, status }) => {
        entry.index = index;
        entry.status = status;
      })
      .catch((e: unknown) => {
        state.violations.push(`server error on ${path}: ${String(e)}`);
        if (!res.headersSent) err(res, 500, 'test server failure', 'server_error', null);
      });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  state.baseURL = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
  return state;
}

/**
 * A test photo whose mean level encodes a scenario index: blocky noise (distinct per seed, so no
 * two photos are near-duplicates) of amplitude 32 on a base level.
 */
export async function tintedPhoto(index: number, seed: number, width = 448, height = 392): Promise<Buffer> {
  const base = scenarioLevel(index);
  const data = blockNoise(width, height, seed, (v) => [base + (v & 31), base + ((v >> 5) & 31), base + ((v >> 10) & 31)]);
  return sharp(data, { raw: { width, height, channels: 3 } }).jpeg({ quality: 92 }).toBuffer();
}
