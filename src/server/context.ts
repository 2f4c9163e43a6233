/**
 * What every route module receives: the injected store and launcher factory, the session and run
 * stores on top of it, the job registry, the URL signer and the webhook dispatcher. Built once per
 * app by `buildApp`, never a process-wide global, so tests run several apps side by side.
 */
import type { Logger } from '../log.js';
import type { SessionStore } from '../sessions/store.js';
import type { ObjectStore } from '../storage/types.js';
import type { Launcher } from '../training/launchers/types.js';
import type { PrepareOptions } from '../preprocess/pipeline.js';
import type { UrlSigner } from './auth.js';
import type { JobRegistry } from './jobs.js';
import type { Webhooks } from './webhooks.js';

/** Launcher names a run can record. */
export type LauncherName = 'local' | 'slurm';

/** Makes the launcher of a name. */
export type LauncherFactory = (name: LauncherName, options?: { check?: boolean }) => Launcher;

/** Tunables of the run event stream. */
export interface SseOptions {
  /** How often the store is polled for status and log changes (default 1000 ms). */
  pollMs?: number;
  /** Comment line sent when nothing happened for this long, so proxies keep the stream (default 15000 ms). */
  heartbeatMs?: number;
  /** After a run ends, how long to keep reading for the worker's last log upload (default 2500 ms). */
  finalGraceMs?: number;
}

/** One registered route, as the auth hook sees it. */
export interface RouteSummary {
  /** HTTP method (`GET`, `HEAD`, `POST`, …). */
  method: string;
  /** fastify's route pattern, e.g. `/api/sessions/:name`. */
  url: string;
  /** Served without the token (`/health`, `/docs`, the UI shell). */
  public: boolean;
  /** May be opened with a signed URL instead of the header (GET/HEAD only). */
  signable: boolean;
}

/** Shared state of one app. */
export interface ServerContext {
  store: ObjectStore;
  sessions: SessionStore;
  logger: Logger;
  jobs: JobRegistry;
  signer: UrlSigner;
  webhooks: Webhooks;
  /**
   * The launcher a run's launches name (stop/probe use the one that started the attempt);
   * `check: false` asks for workers that skip the GPU host check.
   */
  launcher: LauncherFactory;
  /** Launcher for new runs. */
  defaultLauncher: LauncherName;
  /** Options merged into every prepare (tests inject a detector or `threads: 1`). */
  prepare: Partial<PrepareOptions>;
  sse: Required<SseOptions>;
  /** Model captioning: the key and endpoint `booth serve` found (null: offline captions only). */
  captions: { apiKey: string | null; baseURL: string | null };
  /** Every route the app registered, in registration order (filled while the app is built). */
  routes: readonly RouteSummary[];
}
