/**
 * A run's live events as Server-Sent Events, derived from the store (the worker writes
 * `status.json` and `logs/attempt-N.log`; nothing is pushed to this process, so any server
 * replica can serve any run, and a restarted server serves runs already in flight).
 *
 * Events: `status` (the whole run view: on connect and whenever it changes), `state` (from → to),
 * `step` (each trainer step event: step, loss, lr, ETA), `sample` (a new sample image with its
 * URL), `log` (every other log line, condensed as `booth logs` shows it), `end` (the run settled
 * and its log was read to the end; the stream then closes). Comment heartbeats keep proxies open.
 *
 * Reconnection: every event carries `id: <attempt>.<byte offset>` — the position in the run's log
 * up to which the client has everything. A client reconnecting with `Last-Event-ID` (the header
 * EventSource sends, or `?lastEventId=` for clients that cannot set it) continues exactly after
 * the last line it saw: nothing is repeated, nothing skipped. `?backlog=none` starts at the end
 * of the log instead of replaying it (the `status` event carries the loss history for charts).
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { errorMessage } from '../errors.js';
import { formatLogLine } from '../cli/train.js';
import { runInfo, type ReconcileOptions } from '../training/control.js';
import { parseEventLine } from '../training/protocol.js';
import { runKeys, type EffectiveState } from '../training/runs.js';
import type { ServerContext } from './context.js';
import { runView } from './views.js';

/** A position in a run's logs. */
export interface LogCursor {
  attempt: number;
  offset: number;
}

/** States in which nothing changes until a person acts. */
export const SETTLED_STATES: ReadonlySet<EffectiveState> = new Set(['done', 'failed', 'stopped', 'preempted', 'lost']);

/** Parse `<attempt>.<offset>`; null for anything else (then the stream starts from the beginning). */
export function parseCursor(id: string | undefined): LogCursor | null {
  const m = id ? /^(\d{1,6})\.(\d{1,15})$/.exec(id.trim()) : null;
  if (!m) return null;
  const attempt = Number(m[1]);
  return attempt >= 1 ? { attempt, offset: Number(m[2]) } : null;
}

/**
 * Stream a run's events until it settles or the client goes away.
 * @param backlog - `all` replays the log from the cursor; `none` starts at its end
 */
export async function streamRunEvents(request: FastifyRequest, reply: FastifyReply, ctx: ServerContext, session: string, run: string, backlog: 'all' | 'none'): Promise<void> {
  const keys = runKeys(session, run);
  const reconcile: ReconcileOptions = { probe: (launch) => ctx.launcher(launch.launcher).probe(launch.handle) };
  // Fail before hijacking, so a missing run is an ordinary JSON 404.
  let info = await runInfo(ctx.store, session, run, reconcile);
  const resumeFrom = parseCursor((request.headers['last-event-id'] as string | undefined) ?? (request.query as { lastEventId?: string }).lastEventId);
  const raw = reply.raw;
  reply.hijack();
  raw.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
    'x-request-id': request.id,
  });
  let closed = false;
  let wake: (() => void) | null = null;
  request.raw.on('close', () => {
    closed = true;
    wake?.();
  });
  raw.on('close', () => {
    closed = true;
    wake?.();
  });
  let lastWrite = Date.now();
  const write = (text: string) => {
    if (closed) return;
    raw.write(text);
    lastWrite = Date.now();
  };
  let cursor: LogCursor = resumeFrom ?? { attempt: 1, offset: 0 };
  const id = () => `${cursor.attempt}.${cursor.offset}`;
  const send = (event: string, data: unknown) => write(`id: ${id()}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  write('retry: 3000\n\n');

  const newestAttempt = () => Math.max(1, ...info.record.launches.map((l) => l.attempt), info.status?.attempt ?? 0);
  if (!resumeFrom && backlog === 'none') cursor = await endOfLogs(newestAttempt());

  let lastView = '';
  let lastState: EffectiveState | null = null;
  let samplesSeen: Set<string> | null = null;
  let settledAt: number | null = null;

  try {
    for (;;) {
      const view = runView(info, ctx.signer);
      const { samples, ...rest } = view;
      const fingerprint = JSON.stringify({ ...rest, samples: samples.length });
      if (fingerprint !== lastView) {
        lastView = fingerprint;
        send('status', view);
      }
      if (lastState !== null && info.state !== lastState) send('state', { from: lastState, to: info.state, step: view.step });
      lastState = info.state;
      const sampleIds = new Set(samples.map((s) => `${s.step}/${s.index}`));
      if (samplesSeen !== null) for (const s of samples) if (!samplesSeen.has(`${s.step}/${s.index}`)) send('sample', s);
      samplesSeen = sampleIds;

      await readLogs(newestAttempt());

      if (SETTLED_STATES.has(info.state)) {
        settledAt ??= Date.now();
        if (Date.now() - settledAt >= ctx.sse.finalGraceMs) {
          await readLogs(newestAttempt());
          send('end', { state: info.state, step: view.step });
          break;
        }
      } else settledAt = null;
      if (closed) break;
      if (Date.now() - lastWrite >= ctx.sse.heartbeatMs) write(`: ping ${new Date().toISOString()}\n\n`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(ctx.sse.pollMs, ctx.sse.heartbeatMs));
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      wake = null;
      if (closed) break;
      info = await runInfo(ctx.store, session, run, reconcile);
    }
  } catch (err) {
    ctx.logger.warn({ reqId: request.id, session, run, err: errorMessage(err) }, 'event stream failed');
    send('error', { code: 'STORAGE', message: `reading the run failed: ${errorMessage(err)}; reconnect to continue where you left off` });
  } finally {
    if (!raw.writableEnded) raw.end();
  }

  /** Emit complete lines from the cursor up to the newest attempt. */
  async function readLogs(newest: number): Promise<void> {
    while (!closed) {
      const key = keys.log(cursor.attempt);
      const head = await ctx.store.head(key);
      if (head && head.size > cursor.offset) {
        const stream = await ctx.store.get(key, { range: { start: cursor.offset, end: head.size - 1 } });
        const chunks: Buffer[] = [];
        for await (const c of stream as AsyncIterable<Buffer>) chunks.push(Buffer.from(c));
        const data = Buffer.concat(chunks);
        const lastNl = data.lastIndexOf(0x0a);
        const chunkStart = cursor.offset;
        let pos = 0;
        while (pos <= lastNl) {
          const nl = data.indexOf(0x0a, pos);
          const line = data.subarray(pos, nl).toString('utf8').replace(/\r$/, '');
          pos = nl + 1;
          // The id of a line's event is the position just after it: reconnecting continues with the next line.
          cursor = { attempt: cursor.attempt, offset: chunkStart + pos };
          emitLine(line);
        }
      }
      if (cursor.attempt >= newest) return;
      cursor = { attempt: cursor.attempt + 1, offset: 0 };
    }
  }

  function emitLine(line: string): void {
    if (line === '') return;
    const parsed = parseEventLine(line);
    if (parsed.kind === 'event' && parsed.event.event === 'step') {
      const e = parsed.event;
      send('step', { attempt: cursor.attempt, step: e.step, total: e.total, stage: e.stage, loss: e.loss, lr: e.lr, itPerS: e.it_per_s, etaS: e.eta_s });
      return;
    }
    const text = formatLogLine(line);
    if (text !== null) send('log', { attempt: cursor.attempt, text });
  }

  /** The cursor at the end of the newest attempt's log (at its last complete line). */
  async function endOfLogs(newest: number): Promise<LogCursor> {
    const key = keys.log(newest);
    const head = await ctx.store.head(key);
    if (!head || head.size === 0) return { attempt: newest, offset: 0 };
    const start = Math.max(0, head.size - 65536);
    const stream = await ctx.store.get(key, { range: { start, end: head.size - 1 } });
    const chunks: Buffer[] = [];
    for await (const c of stream as AsyncIterable<Buffer>) chunks.push(Buffer.from(c));
    const data = Buffer.concat(chunks);
    const lastNl = data.lastIndexOf(0x0a);
    return { attempt: newest, offset: lastNl >= 0 ? start + lastNl + 1 : start };
  }
}
