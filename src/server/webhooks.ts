/**
 * Outgoing webhooks: a URL per session (`sessions/<id>/webhooks.json`) and/or one for all
 * sessions (`config/webhooks.json`), called with a JSON body on run state changes (`run.state`)
 * and finished exports (`export.completed`).
 *
 * Each delivery is signed: `Booth-Webhook-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`
 * with `Booth-Webhook-Timestamp` (Unix seconds) and `Booth-Webhook-Id`, so a receiver checks both
 * the origin and the freshness (reject timestamps older than a few minutes to stop replays).
 * Network errors, timeouts, 408, 429 and 5xx are retried with exponential backoff; other answers
 * are final. Every delivery has a log record, rewritten after each attempt, at
 * `sessions/<id>/webhooks/deliveries/<time>-<id>.json` (one writer: this server).
 *
 * Run state changes are observed, not pushed: the worker writes `status.json`, so a watcher polls
 * the runs this server launched or found active at start-up ({@link Webhooks.scan}); a restarted
 * server re-attaches to runs in flight from the store. A change that happens entirely while no
 * server is running is not announced (the store has no history of states to replay).
 */
import { createHmac, randomBytes, randomUUID } from 'node:crypto';
import { z } from 'zod';
import { BoothError, errorMessage, isBoothError } from '../errors.js';
import { redactUrl, type Logger } from '../log.js';
import { listAll, putJson, readJson } from '../storage/index.js';
import type { ObjectStore } from '../storage/types.js';
import { sessionKeys } from '../sessions/store.js';
import { runInfo, type ReconcileOptions } from '../training/control.js';
import { RunStore, type EffectiveState } from '../training/runs.js';

/** Event types a webhook can subscribe to. */
export const WEBHOOK_EVENTS = ['run.state', 'export.completed'] as const;
/** One of {@link WEBHOOK_EVENTS}. */
export type WebhookEvent = (typeof WEBHOOK_EVENTS)[number];

/** A stored webhook configuration. */
export const webhookConfigSchema = z.object({
  url: z.url({ protocol: /^https?$/ }).max(2000),
  secret: z.string().min(16).max(200),
  events: z.array(z.enum(WEBHOOK_EVENTS)).min(1),
  createdAt: z.string(),
});
/** A webhook configuration. */
export type WebhookConfig = z.infer<typeof webhookConfigSchema>;

/** One attempt of a delivery. */
export interface DeliveryAttempt {
  at: string;
  status: number | null;
  error: string | null;
  durationMs: number;
}

/** The delivery log record. */
export interface Delivery {
  id: string;
  type: WebhookEvent;
  scope: 'session' | 'global';
  url: string;
  session: string;
  createdAt: string;
  state: 'pending' | 'delivered' | 'failed';
  attempts: DeliveryAttempt[];
  /** The body as sent (no secret in it). */
  payload: unknown;
}

/** Options of {@link Webhooks}. */
export interface WebhookOptions {
  /** First retry delay; doubled per attempt (default 2000 ms). */
  backoffMs?: number;
  /** Attempts in all (default 6: retries after 2, 4, 8, 16, 32 s). */
  maxAttempts?: number;
  /** Per-attempt timeout (default 10000 ms). */
  timeoutMs?: number;
  /** How often watched runs are polled (default 2000 ms). */
  watchMs?: number;
  /** Probe used to reconcile scheduler launches. */
  reconcile?: ReconcileOptions;
}

const GLOBAL_KEY = 'config/webhooks.json';
const configKey = (session: string | null): string => (session === null ? GLOBAL_KEY : `${sessionKeys(session).root}webhooks.json`);
const deliveriesPrefix = (session: string): string => `${sessionKeys(session).root}webhooks/deliveries/`;

/** States after which a run changes only when a person acts (resume, extend). */
const SETTLED: ReadonlySet<EffectiveState> = new Set(['done', 'failed', 'stopped', 'preempted', 'lost']);

/**
 * The signature header value for a body.
 * @example signPayload('whsec…', 1767225600, '{"type":"run.state"}') // 'v1=5d41…'
 */
export function signPayload(secret: string, timestamp: number, body: string): string {
  return `v1=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}

/** Webhook configuration, dispatch, delivery log and the run watcher. */
export class Webhooks {
  private readonly watched = new Map<string, { session: string; run: string; state: EffectiveState | null }>();
  private readonly inflight = new Set<Promise<void>>();
  private timer: NodeJS.Timeout | null = null;
  private polling = false;
  private closed = false;
  private readonly backoffMs: number;
  private readonly maxAttempts: number;
  private readonly timeoutMs: number;
  private readonly watchMs: number;

  /**
   * @param store - where configs and delivery logs live
   * @param logger - delivery failures are logged (never the secret)
   * @param options - retry and polling tunables
   */
  constructor(private readonly store: ObjectStore, private readonly logger: Logger, private readonly options: WebhookOptions = {}) {
    this.backoffMs = options.backoffMs ?? 2000;
    this.maxAttempts = options.maxAttempts ?? 6;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.watchMs = options.watchMs ?? 2000;
  }

  /** The configuration of a session (or the global one with `null`), or null. */
  async config(session: string | null): Promise<WebhookConfig | null> {
    try {
      return await readJson(this.store, configKey(session), (v) => webhookConfigSchema.parse(v));
    } catch (err) {
      if (isBoothError(err, 'NOT_FOUND')) return null;
      throw err;
    }
  }

  /**
   * Set a configuration. A secret is generated when none is given.
   * @returns the stored configuration (the caller shows the secret once)
   */
  async setConfig(session: string | null, input: { url: string; secret?: string | undefined; events?: WebhookEvent[] | undefined }): Promise<WebhookConfig> {
    // fetch refuses URLs with user info, and they would put a password into every delivery record.
    if (/^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*@/.test(input.url)) {
      throw new BoothError('INVALID_ARGUMENT', `webhook field "url": ${JSON.stringify(redactUrl(input.url))} has credentials in it, which cannot be sent; the receiver should check the Booth-Webhook-Signature instead`);
    }
    const previous = await this.config(session);
    const parsed = webhookConfigSchema.safeParse({
      url: input.url,
      secret: input.secret ?? previous?.secret ?? `whsec_${randomBytes(24).toString('hex')}`,
      events: input.events ?? [...WEBHOOK_EVENTS],
      createdAt: new Date().toISOString(),
    });
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new BoothError('INVALID_ARGUMENT', `webhook field "${issue?.path.join('.') ?? '?'}": ${issue?.message ?? 'invalid'} (url must be http:// or https://, secret 16–200 characters)`);
    }
    await putJson(this.store, configKey(session), parsed.data);
    return parsed.data;
  }

  /** Remove a configuration (no error when there is none). */
  async deleteConfig(session: string | null): Promise<void> {
    await this.store.delete(configKey(session));
  }

  /** The newest deliveries of a session, newest first. */
  async deliveries(session: string, limit = 50): Promise<Delivery[]> {
    const keys: string[] = [];
    for await (const info of listAll(this.store, deliveriesPrefix(session))) keys.push(info.key);
    const out: Delivery[] = [];
    for (const key of keys.slice(-limit).reverse()) out.push(await readJson<Delivery>(this.store, key));
    return out;
  }

  /**
   * Send an event to the session's and the global webhook (when configured and subscribed).
   * Returns once the deliveries are queued; they run in the background.
   */
  async emit(session: string, type: WebhookEvent, data: Record<string, unknown>): Promise<void> {
    if (this.closed) return;
    const targets: Array<{ scope: 'session' | 'global'; config: WebhookConfig }> = [];
    for (const scope of ['session', 'global'] as const) {
      const config = await this.config(scope === 'session' ? session : null).catch((err: unknown) => {
        this.logger.warn({ session, scope, err: errorMessage(err) }, 'webhook configuration unreadable; skipped');
        return null;
      });
      if (config && config.events.includes(type)) targets.push({ scope, config });
    }
    for (const t of targets) {
      const p = this.deliver(session, type, data, t.scope, t.config).catch((err: unknown) => {
        this.logger.error({ session, type, err: errorMessage(err) }, 'webhook delivery bookkeeping failed');
      });
      this.inflight.add(p);
      void p.finally(() => this.inflight.delete(p));
    }
  }

  /**
   * Watch a run for state changes. `known` is the state the caller already announced (or the
   * state at start-up, not to be announced again); null announces the first state seen.
   */
  watch(session: string, run: string, known: EffectiveState | null = null): void {
    this.watched.set(`${session}/${run}`, { session, run, state: known });
    if (!this.timer && !this.closed) {
      this.timer = setInterval(() => void this.poll(), this.watchMs);
      this.timer.unref();
    }
  }

  /** Find runs in flight in the store (after a restart) and watch them. */
  async scan(): Promise<number> {
    const runs = new RunStore(this.store);
    let n = 0;
    for await (const info of listAll(this.store, 'sessions/')) {
      const m = /^sessions\/([^/]+)\/runs\/([^/]+)\/run\.json$/.exec(info.key);
      if (!m?.[1] || !m[2]) continue;
      try {
        await runs.record(m[1], m[2]);
        const state = (await runInfo(this.store, m[1], m[2], this.options.reconcile)).state;
        if (!SETTLED.has(state)) {
          this.watch(m[1], m[2], state);
          n++;
        }
      } catch (err) {
        this.logger.warn({ key: info.key, err: errorMessage(err) }, 'run not watched: unreadable');
      }
    }
    return n;
  }

  /** Poll the watched runs once (the timer calls this; tests may too). */
  async poll(): Promise<void> {
    if (this.polling || this.closed) return;
    this.polling = true;
    try {
      for (const [id, w] of [...this.watched]) {
        let info;
        try {
          info = await runInfo(this.store, w.session, w.run, this.options.reconcile);
        } catch (err) {
          this.logger.warn({ session: w.session, run: w.run, err: errorMessage(err) }, 'watched run unreadable');
          continue;
        }
        if (info.state !== w.state) {
          const previous = w.state;
          w.state = info.state;
          await this.emit(w.session, 'run.state', {
            run: w.run,
            state: info.state,
            previous,
            step: info.status?.step ?? 0,
            total: info.status?.total ?? null,
            message: info.status?.message ?? null,
            error: info.status?.error?.message ?? null,
          });
        }
        if (SETTLED.has(info.state)) this.watched.delete(id);
      }
      if (this.watched.size === 0 && this.timer) {
        clearInterval(this.timer);
        this.timer = null;
      }
    } finally {
      this.polling = false;
    }
  }

  /** Wait for queued deliveries (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
  }

  /** Stop watching and let in-flight deliveries finish their current attempt. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.idle();
  }

  private async deliver(session: string, type: WebhookEvent, data: Record<string, unknown>, scope: 'session' | 'global', config: WebhookConfig): Promise<void> {
    const id = randomUUID();
    const createdAt = new Date().toISOString();
    const payload = { id, type, createdAt, session, data };
    const body = JSON.stringify(payload);
    const key = `${deliveriesPrefix(session)}${createdAt.replace(/[^0-9]/g, '').slice(0, 17)}-${id}.json`;
    // The record is listed by the API: the receiver URL's own credentials stay out of it.
    const delivery: Delivery = { id, type, scope, url: redactUrl(config.url), session, createdAt, state: 'pending', attempts: [], payload };
    await putJson(this.store, key, delivery);
    for (let attempt = 1; attempt <= this.maxAttempts; attempt++) {
      const started = Date.now();
      const timestamp = Math.floor(started / 1000);
      let status: number | null = null;
      let error: string | null = null;
      try {
        const res = await fetch(config.url, {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            'user-agent': 'booth-webhooks/1',
            'booth-webhook-id': id,
            'booth-webhook-timestamp': String(timestamp),
            'booth-webhook-signature': signPayload(config.secret, timestamp, body),
          },
          body,
          signal: AbortSignal.timeout(this.timeoutMs),
          redirect: 'manual',
        });
        status = res.status;
        await res.body?.cancel().catch(() => undefined);
      } catch (err) {
        error = errorMessage(err);
      }
      delivery.attempts.push({ at: new Date(started).toISOString(), status, error, durationMs: Date.now() - started });
      const ok = status !== null && status >= 200 && status < 300;
      const retryable = status === null || status === 408 || status === 429 || status >= 500;
      if (ok || !retryable || attempt === this.maxAttempts || this.closed) {
        delivery.state = ok ? 'delivered' : 'failed';
        await putJson(this.store, key, delivery);
        if (!ok) this.logger.warn({ session, type, url: redactUrl(config.url), status, error, attempts: attempt }, 'webhook delivery failed');
        return;
      }
      await putJson(this.store, key, delivery);
      await new Promise((r) => setTimeout(r, this.backoffMs * 2 ** (attempt - 1)));
    }
  }
}
