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
 *
 * Many clients, one poll: every stream of a run shares one {@link RunFeed}, which reads the run
 * from the store once per poll interval and wakes its streams together; the log reads the streams
 * then make are shared too (one store read per range per poll, however many clients sit at that
 * position). So the store load of a run is independent of its audience, and a stream holds no
 * timer of its own: when the last client of a run goes, its feed stops polling and is dropped
 * ({@link eventStreamStats} shows both counts).
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { errorMessage } from '../errors.js';
import { formatLogLine } from '../cli/train.js';
import { runInfo, type ReconcileOptions, type RunInfo } from '../training/control.js';
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

/** One poll's view of a run, shared by every stream of the run until the next poll. */
interface Tick {
  info: RunInfo;
  /** The poll failed: streams report it and close (the client reconnects where it left off). */
  error: unknown;
  /** The run view, its change fingerprint and its serialized form, made once per poll. */
  view?: { view: ReturnType<typeof runView>; fingerprint: string; json: string };
  /** Store reads made while serving this poll (log heads and ranges), shared by the streams. */
  reads: Map<string, Promise<unknown>>;
}

/** The shared poll of one run (see the module comment). */
class RunFeed {
  streams = 0;
  private polling = false;
  private timer: NodeJS.Timeout | null = null;
  private wakeAll!: () => void;
  private next!: Promise<void>;

  constructor(
    private readonly ctx: ServerContext,
    private readonly session: string,
    private readonly run: string,
    public tick: Tick,
    private readonly dropped: (feed: RunFeed) => void,
  ) {
    this.arm();
  }

  /** Resolves once the next poll has landed in {@link tick}. */
  nextTick(): Promise<void> {
    return this.next;
  }

  join(): void {
    this.streams++;
    if (this.timer === null && !this.polling) this.schedule();
  }

  leave(): void {
    this.streams--;
    if (this.streams > 0) return;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.dropped(this);
  }

  /** A store read made at most once per poll (logs only grow, so a range read once is the same for everyone). */
  shared<T>(what: string, read: () => Promise<T>): Promise<T> {
    const reads = this.tick.reads;
    const known = reads.get(what) as Promise<T> | undefined;
    if (known) return known;
    const p = read();
    reads.set(what, p);
    // A failed read is not kept: the next stream asks again.
    p.catch(() => {
      if (reads.get(what) === p) reads.delete(what);
    });
    return p;
  }

  view(): NonNullable<Tick['view']> {
    const tick = this.tick;
    if (!tick.view) {
      const view = runView(tick.info, this.ctx.signer);
      const { samples, ...rest } = view;
      tick.view = { view, fingerprint: JSON.stringify({ ...rest, samples: samples.length }), json: JSON.stringify(view) };
    }
    return tick.view;
  }

  private arm(): void {
    this.next = new Promise<void>((resolve) => (this.wakeAll = resolve));
  }

  private schedule(): void {
    this.timer = setTimeout(() => void this.poll(), Math.min(this.ctx.sse.pollMs, this.ctx.sse.heartbeatMs));
  }

  private async poll(): Promise<void> {
    this.timer = null;
    if (this.streams === 0) return;
    this.polling = true;
    const reconcile: ReconcileOptions = { probe: (launch) => this.ctx.launcher(launch.launcher).probe(launch.handle) };
    try {
      this.tick = { info: await runInfo(this.ctx.store, this.session, this.run, reconcile), error: null, reads: new Map() };
    } catch (err) {
      this.tick = { info: this.tick.info, error: err, reads: new Map() };
    } finally {
      this.polling = false;
    }
    const wake = this.wakeAll;
    this.arm();
    wake();
    if (this.streams > 0) this.schedule();
  }
}

/** Per app: its open streams and the feeds they share (keyed by session/run). */
interface StreamRegistry {
  streams: number;
  /** Streams opened since the app started. */
  opened: number;
  feeds: Map<string, RunFeed>;
  /** First reads of runs that have no feed yet. */
  loading: Map<string, Promise<RunInfo>>;
}
const registries = new WeakMap<ServerContext, StreamRegistry>();

function registryOf(ctx: ServerContext): StreamRegistry {
  let r = registries.get(ctx);
  if (!r) {
    r = { streams: 0, opened: 0, feeds: new Map(), loading: new Map() };
    registries.set(ctx, r);
  }
  return r;
}

/**
 * How many event streams an app has open, how many run polls they share, and how many streams it
 * has opened in all. The first two fall back to 0 once every client has disconnected (a stream
 * that outlived its client would keep polling the store); load tests and the reliability suite
 * check that.
 */
export function eventStreamStats(ctx: ServerContext): { streams: number; runPolls: number; opened: number } {
  const r = registries.get(ctx);
  return { streams: r?.streams ?? 0, runPolls: r?.feeds.size ?? 0, opened: r?.opened ?? 0 };
}

/**
 * The feed of a run, joined by the caller. Throws like {@link runInfo} when the run cannot be read
 * (before anything is sent, so a missing run is an ordinary JSON 404).
 */
async function joinFeed(ctx: ServerContext, session: string, run: string): Promise<RunFeed> {
  const registry = registryOf(ctx);
  const key = `${session}/${run}`;
  let feed = registry.feeds.get(key);
  if (!feed || feed.tick.error) {
    // Clients of a run tend to arrive together (a page of viewers, a reconnect wave after a
    // restart): they share one read of the run.
    let loading = registry.loading.get(key);
    if (!loading) {
      loading = runInfo(ctx.store, session, run, { probe: (launch) => ctx.launcher(launch.launcher).probe(launch.handle) });
      registry.loading.set(key, loading);
      const done = () => {
        if (registry.loading.get(key) === loading) registry.loading.delete(key);
      };
      loading.then(done, done);
    }
    const info = await loading;
    // Another connection may have made the feed while this one read the run.
    feed = registry.feeds.get(key);
    if (!feed) {
      feed = new RunFeed(ctx, session, run, { info, error: null, reads: new Map() }, (f) => {
        if (registry.feeds.get(key) === f) registry.feeds.delete(key);
      });
      registry.feeds.set(key, feed);
    } else if (feed.tick.error) {
      // The feed's last poll failed but this read worked: start from it, not from the failure.
      feed.tick = { info, error: null, reads: new Map() };
    }
  }
  feed.join();
  return feed;
}

/**
 * Stream a run's events until it settles or the client goes away.
 * @param backlog - `all` replays the log from the cursor; `none` starts at its end
 */
export async function streamRunEvents(request: FastifyRequest, reply: FastifyReply, ctx: ServerContext, session: string, run: string, backlog: 'all' | 'none'): Promise<void> {
  const keys = runKeys(session, run);
  const feed = await joinFeed(ctx, session, run);
  const registry = registryOf(ctx);
  registry.streams++;
  registry.opened++;
  const resumeFrom = parseCursor((request.headers['last-event-id'] as string | undefined) ?? (request.query as { lastEventId?: string }).lastEventId);
  const raw = reply.raw;
  let closed = false;
  // Resolves the stream's current wait; one per wait, so nothing piles up on a long-lived promise.
  let wake: (() => void) | null = null;
  const close = () => {
    closed = true;
    wake?.();
  };
  try {
    reply.hijack();
    raw.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
      'x-request-id': request.id,
    });
    request.raw.on('close', close);
    raw.on('close', close);
    // A client that hung up while this request read the run is gone already, its close events
    // fired before anyone listened: without this check the stream would poll until the run ends.
    if (raw.destroyed || raw.socket?.destroyed === true) close();
    await pump();
  } finally {
    feed.leave();
    registry.streams--;
    request.raw.off('close', close);
    raw.off('close', close);
    if (!raw.writableEnded) raw.end();
  }

  async function pump(): Promise<void> {
    let lastWrite = Date.now();
    const write = (text: string) => {
      if (closed) return;
      raw.write(text);
      lastWrite = Date.now();
    };
    let cursor: LogCursor = resumeFrom ?? { attempt: 1, offset: 0 };
    const id = () => `${cursor.attempt}.${cursor.offset}`;
    const sendJson = (event: string, json: string) => write(`id: ${id()}\nevent: ${event}\ndata: ${json}\n\n`);
    const send = (event: string, data: unknown) => sendJson(event, JSON.stringify(data));
    write('retry: 3000\n\n');

    const newestAttempt = (info: RunInfo) => Math.max(1, ...info.record.launches.map((l) => l.attempt), info.status?.attempt ?? 0);
    if (!resumeFrom && backlog === 'none') cursor = await endOfLogs(newestAttempt(feed.tick.info));

    let lastView = '';
    let lastState: EffectiveState | null = null;
    let samplesSeen: Set<string> | null = null;
    let settledAt: number | null = null;

    try {
      for (;;) {
        const tick = feed.tick;
        if (tick.error) throw tick.error;
        const info = tick.info;
        const { view, fingerprint, json } = feed.view();
        if (fingerprint !== lastView) {
          lastView = fingerprint;
          sendJson('status', json);
        }
        if (lastState !== null && info.state !== lastState) send('state', { from: lastState, to: info.state, step: view.step });
        lastState = info.state;
        const samples = view.samples;
        const sampleIds = new Set(samples.map((s) => `${s.step}/${s.index}`));
        if (samplesSeen !== null) for (const s of samples) if (!samplesSeen.has(`${s.step}/${s.index}`)) send('sample', s);
        samplesSeen = sampleIds;

        await readLogs(newestAttempt(info));

        if (SETTLED_STATES.has(info.state)) {
          settledAt ??= Date.now();
          if (Date.now() - settledAt >= ctx.sse.finalGraceMs) {
            await readLogs(newestAttempt(info));
            send('end', { state: info.state, step: view.step });
            break;
          }
        } else settledAt = null;
        if (closed) break;
        if (Date.now() - lastWrite >= ctx.sse.heartbeatMs) write(`: ping ${new Date().toISOString()}\n\n`);
        await new Promise<void>((resolve) => {
          wake = resolve;
          void feed.nextTick().then(resolve);
        });
        wake = null;
        if (closed) break;
      }
    } catch (err) {
      ctx.logger.warn({ reqId: request.id, session, run, err: errorMessage(err) }, 'event stream failed');
      send('error', { code: 'STORAGE', message: `reading the run failed: ${errorMessage(err)}; reconnect to continue where you left off` });
    }

    /** Emit complete lines from the cursor up to the newest attempt. */
    async function readLogs(newest: number): Promise<void> {
      while (!closed) {
        const key = keys.log(cursor.attempt);
        const head = await feed.shared(`head ${key}`, () => ctx.store.head(key));
        if (head && head.size > cursor.offset) {
          const chunkStart = cursor.offset;
          const data = await feed.shared(`range ${key} ${chunkStart} ${head.size}`, () => readRange(key, chunkStart, head.size));
          const lastNl = data.lastIndexOf(0x0a);
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
      const head = await feed.shared(`head ${key}`, () => ctx.store.head(key));
      if (!head || head.size === 0) return { attempt: newest, offset: 0 };
      const start = Math.max(0, head.size - 65536);
      const data = await feed.shared(`range ${key} ${start} ${head.size}`, () => readRange(key, start, head.size));
      const lastNl = data.lastIndexOf(0x0a);
      return { attempt: newest, offset: lastNl >= 0 ? start + lastNl + 1 : start };
    }
  }

  /** Bytes [start, end) of an object. */
  async function readRange(key: string, start: number, end: number): Promise<Buffer> {
    const stream = await ctx.store.get(key, { range: { start, end: end - 1 } });
    const chunks: Buffer[] = [];
    for await (const c of stream as AsyncIterable<Buffer>) chunks.push(Buffer.from(c));
    return Buffer.concat(chunks);
  }
}
