/**
 * The control-plane HTTP server: `buildApp(options)` returns a fastify instance with the REST API
 * under `/api`, the OpenAPI description at `/docs` (generated from the same zod schemas that
 * validate requests), the web UI at `/`, and `/health`. Everything it needs is injected — the
 * store, the logger, the token, the launcher factory — so tests build as many apps as they like
 * and drive them with `app.inject()`; `booth serve` (src/cli/serve.ts) is the only place that
 * reads the environment.
 *
 * Cross-cutting behaviour lives here: request ids (`X-Request-Id`, echoed from a sane incoming
 * header or generated, and bound to every log line of the request), bearer-token auth with
 * signed-URL fallback for browser GETs (see `auth.ts`), the one error shape (see `errors.ts`),
 * secrets redacted from logs, rate limits on uploads, and security headers on the UI.
 */
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import fastify, { type FastifyInstance, type FastifyRequest } from 'fastify';
import fastifyMultipart from '@fastify/multipart';
import fastifyRateLimit from '@fastify/rate-limit';
import fastifyStatic from '@fastify/static';
import fastifySwagger from '@fastify/swagger';
import fastifySwaggerUi from '@fastify/swagger-ui';
import { jsonSchemaTransform, serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import type { Logger } from '../log.js';
import { REDACT, redactingLogger, redactUrl, silentLogger } from '../log.js';
import { SessionStore } from '../sessions/store.js';
import type { ObjectStore } from '../storage/types.js';
import { createLocalLauncher } from '../training/launchers/local.js';
import type { PrepareOptions } from '../preprocess/pipeline.js';
import { MAX_FILE_BYTES } from '../sessions/intake.js';
import { bearerToken, createUrlSigner, signedPathOf, tokenMatches } from './auth.js';
import type { LauncherFactory, LauncherName, RouteSummary, ServerContext, SseOptions } from './context.js';
import { ApiError, toApiError, type ErrorBody } from './errors.js';
import { JobRegistry } from './jobs.js';
import { Webhooks, type WebhookOptions } from './webhooks.js';
import { registerSessionRoutes } from './routes/sessions.js';
import { registerRunRoutes } from './routes/runs.js';
import { registerExportRoutes } from './routes/exports.js';
import { registerWebhookRoutes } from './routes/webhooks.js';
import { sweepStaleUploadDirs } from './upload-tmp.js';

/** Where the UI's static files are: `src/server/ui/`, from `src/server/` (tests) and `dist/server/` (built) alike. */
export const UI_ROOT = fileURLToPath(new URL('../../src/server/ui/', import.meta.url));

/** Limits on uploads. */
export interface UploadLimits {
  /** Files per request (default 200). */
  maxFiles?: number;
  /** Bytes per file (default intake's 200 MiB). */
  maxFileBytes?: number;
  /** Upload requests per client per minute (default 60). */
  perMinute?: number;
}

/** Options of {@link buildApp}. */
export interface AppOptions {
  /** Where sessions live. The app does not close it. */
  store: ObjectStore;
  /** pino logger; default silent. Request logs carry `reqId`. */
  logger?: Logger;
  /** Bearer token; null/undefined turns auth off (only sensible on loopback; `booth serve` enforces that). */
  token?: string | null;
  /** Launcher factory by name (default: the local launcher with the process environment). */
  launcher?: LauncherFactory;
  /** Launcher for new runs (default `local`). */
  defaultLauncher?: LauncherName;
  /** Merged into every prepare (tests: `{ threads: 1 }`). */
  prepare?: Partial<PrepareOptions>;
  sse?: SseOptions;
  webhooks?: WebhookOptions;
  uploads?: UploadLimits;
  /** Serve the web UI (default true). */
  ui?: boolean;
  /** OpenAI-compatible captioning (`OPENAI_API_KEY`, `OPENAI_BASE_URL` as `booth serve` reads them). */
  captions?: { apiKey?: string | null; baseURL?: string | null };
  /** Look for runs in flight at start-up and watch them for webhooks (default true). */
  scanRuns?: boolean;
  /**
   * Close a connection that sends and receives nothing for this long, in ms (default
   * {@link IDLE_TIMEOUT_MS}). It frees what a stalled client holds (an upload's temp folder and
   * its session's upload lock) without cutting slow uploads or downloads that still move bytes;
   * event streams stay open through their heartbeats, which must come more often than this.
   */
  idleTimeoutMs?: number;
}

/** Default idle-connection timeout: 2 minutes, 8 of the event stream's 15 s heartbeats. */
export const IDLE_TIMEOUT_MS = 120_000;

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Route may be opened with a signed URL instead of the header (browser GETs). */
    signable?: boolean;
    /** Route needs no token. */
    public?: boolean;
  }
}

/** Request id: a caller's `X-Request-Id` when it is short and plain (for tracing across proxies), else a new UUID. */
function requestId(req: { headers: Record<string, string | string[] | undefined> }): string {
  const given = req.headers['x-request-id'];
  return typeof given === 'string' && /^[A-Za-z0-9._:-]{8,100}$/.test(given) ? given : randomUUID();
}

/**
 * The answer to a request Node's HTTP parser cannot read (bad framing, oversized headers, a
 * request that timed out): the API's error shape instead of fastify's bare default, then the
 * connection is closed, since the parser cannot know where the next request would start. Nothing
 * from the request is echoed. A connection already gone is just destroyed.
 * @param err - the parser's error (`code` such as `HPE_HEADER_OVERFLOW`, `HPE_INVALID_CHUNK_SIZE`)
 * @param socket - the client's socket
 */
export function answerClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || socket.destroyed || !socket.writable) {
    socket.destroy();
    return;
  }
  const [status, code, message] =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? [431, 'HEADERS_TOO_LARGE', 'the request headers are too large; send fewer or shorter headers'] as const
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, 'REQUEST_TIMEOUT', 'the request took too long to arrive; send it again'] as const
        : [400, 'INVALID_ARGUMENT', `the request is not valid HTTP (${err.code ?? 'parse error'}); check its framing: Content-Length or chunked encoding, not both`] as const;
  const body = JSON.stringify({ error: { code, message, requestId: randomUUID() } } satisfies ErrorBody);
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_TEXT[status]}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

const STATUS_TEXT: Readonly<Record<number, string>> = { 400: 'Bad Request', 408: 'Request Timeout', 431: 'Request Header Fields Too Large' };

/** The URL as logged: signature and expiry masked, so a signed link in the log cannot be replayed. */
const loggedUrl = redactUrl;

/**
 * Build the server.
 * @param options - store, logger, token, launcher factory, tunables
 * @returns the fastify instance (not listening; call `listen` or use `inject`)
 * @throws BoothError from the store when the start-up scan fails (it is logged and skipped instead)
 * @example
 * const app = await buildApp({ store: createFsStore({ root: './booth-data' }), token: process.env.BOOTH_TOKEN });
 * await app.listen({ host: '127.0.0.1', port: 8080 });
 */
export async function buildApp(options: AppOptions): Promise<FastifyInstance> {
  // Every log line of the server, the request logs and the background jobs' alike, goes through
  // the redaction, whatever logger the caller handed in.
  const logger = redactingLogger(options.logger ?? silentLogger());
  const token = options.token ? options.token : null;
  const routes: RouteSummary[] = [];
  const app = fastify({
    loggerInstance: logger.child({}, {
      redact: REDACT,
      // fastify's own request serializer logs the raw URL, which holds the signature of a signed link.
      serializers: { req: (req: { method?: string; url?: string; ip?: string }) => ({ method: req.method, url: loggedUrl(req.url ?? ''), remoteAddress: req.ip }) },
    }),
    genReqId: requestId,
    bodyLimit: 4 * 1024 * 1024,
    // Fastify disables Node's timeouts by default, so a client that stops mid-upload would hold
    // the session's upload lock for as long as it keeps the socket open.
    connectionTimeout: options.idleTimeoutMs ?? IDLE_TIMEOUT_MS,
    trustProxy: false,
    clientErrorHandler: answerClientError,
    routerOptions: { maxParamLength: 200 },
  }).withTypeProvider();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  // Only /api holds data. The API description (/docs) and the UI's static shell (HTML, CSS,
  // scripts; it asks for the token itself) are public, like /health.
  app.addHook('onRoute', (route) => {
    if (!route.url.startsWith('/api')) route.config = { ...(route.config as object), public: true };
    const config = route.config as { public?: boolean; signable?: boolean } | undefined;
    for (const method of [route.method].flat()) routes.push({ method, url: route.url, public: Boolean(config?.public), signable: Boolean(config?.signable) });
  });

  const launcher: LauncherFactory = options.launcher ?? ((name, o) => {
    if (name !== 'local') throw new ApiError('INVALID_ARGUMENT', `this server has no ${name} launcher configured; start \`booth serve\` with its settings`);
    return createLocalLauncher(o?.check === false ? { workerArgs: ['--no-check'] } : {});
  });
  const webhooks = new Webhooks(options.store, logger, { ...options.webhooks, reconcile: { probe: (l) => launcher(l.launcher).probe(l.handle) } });
  const ctx: ServerContext = {
    store: options.store,
    sessions: new SessionStore(options.store, { logger }),
    logger,
    jobs: new JobRegistry(logger),
    signer: createUrlSigner(token),
    webhooks,
    launcher,
    defaultLauncher: options.defaultLauncher ?? 'local',
    prepare: options.prepare ?? {},
    sse: { pollMs: 1000, heartbeatMs: 15_000, finalGraceMs: 2500, ...options.sse },
    captions: { apiKey: options.captions?.apiKey || null, baseURL: options.captions?.baseURL || null },
    routes,
  };

  app.addHook('onRequest', async (req, reply) => {
    reply.header('x-request-id', req.id);
    reply.header('x-content-type-options', 'nosniff');
    if (token === null || req.routeOptions.config?.public) return;
    const presented = bearerToken(req.headers.authorization);
    if (presented !== null && tokenMatches(presented, token)) return;
    if (req.routeOptions.config?.signable && (req.method === 'GET' || req.method === 'HEAD')) {
      const { path, sig, exp } = signedPathOf(req.url);
      if (ctx.signer.verify(path, sig, exp)) return;
    }
    reply.header('www-authenticate', 'Bearer realm="booth"');
    throw new ApiError('UNAUTHORIZED', presented === null ? 'this route needs the API token: send "Authorization: Bearer <token>" (the token `booth serve` was started with)' : 'the token is not valid for this server');
  });

  app.setErrorHandler((err, req, reply) => {
    const e = toApiError(err);
    if (e.internal) req.log.error({ err }, 'request failed');
    else req.log.info({ code: e.code, msg: e.message }, 'request refused');
    const body: ErrorBody = { error: { code: e.code, message: e.message, requestId: req.id } };
    return reply.code(e.status).type('application/json; charset=utf-8').send(body);
  });
  app.setNotFoundHandler((req, reply) => {
    const body: ErrorBody = { error: { code: 'NOT_FOUND', message: `no route ${req.method} ${loggedUrl(req.url.split('?')[0] ?? '')}; the API is described at /docs`, requestId: req.id } };
    return reply.code(404).send(body);
  });

  await app.register(fastifyRateLimit, {
    global: false,
    errorResponseBuilder: (_req, context) => new ApiError('RATE_LIMITED', `too many requests: at most ${context.max} per ${context.after === '' ? 'minute' : 'window'}; retry in ${context.after}`),
  });
  await app.register(fastifyMultipart, {
    // An oversized file is a per-file result ("rejected"), not a failed request.
    throwFileSizeLimit: false,
    limits: {
      files: options.uploads?.maxFiles ?? 200,
      fileSize: options.uploads?.maxFileBytes ?? MAX_FILE_BYTES,
      fields: 20,
      fieldSize: 64 * 1024,
      parts: (options.uploads?.maxFiles ?? 200) + 20,
    },
  });
  await app.register(fastifySwagger, {
    openapi: {
      info: {
        title: 'Booth control plane',
        description:
          'DreamBooth sessions, preparation, training runs and exports. Authenticate with `Authorization: Bearer <token>`; ' +
          'image, download and event-stream URLs returned by the API are signed and work without the header until they expire. ' +
          'Errors are `{ "error": { "code", "message", "requestId" } }`.',
        version: '1',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
    transform: jsonSchemaTransform,
  });
  await app.register(fastifySwaggerUi, { routePrefix: '/docs', uiConfig: { docExpansion: 'list' } });

  app.get('/health', { config: { public: true }, schema: { hide: true } }, async () => ({ ok: true, store: options.store.url.startsWith('s3:') ? 's3' : 'fs' }));

  await app.register(async (api) => {
    registerSessionRoutes(api, ctx, { perMinute: options.uploads?.perMinute ?? 60, maxFileBytes: options.uploads?.maxFileBytes ?? MAX_FILE_BYTES });
    registerRunRoutes(api, ctx);
    registerExportRoutes(api, ctx);
    registerWebhookRoutes(api, ctx);
  }, { prefix: '/api' });

  if (options.ui ?? true) {
    if (!existsSync(UI_ROOT)) logger.warn({ root: UI_ROOT }, 'web UI folder missing; serving the API only');
    else {
      await app.register(fastifyStatic, {
        root: UI_ROOT,
        prefix: '/',
        index: ['index.html'],
        wildcard: true,
        setHeaders(res) {
          res.header('content-security-policy', "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'");
          res.header('referrer-policy', 'no-referrer');
          res.header('cache-control', 'no-cache');
        },
      });
    }
  }

  app.addHook('onReady', async () => {
    // Upload temp folders of a server that was killed mid-upload; fresh ones (a live server beside
    // this one) are kept.
    const swept = await sweepStaleUploadDirs();
    if (swept.length > 0) logger.info({ folders: swept }, 'removed upload temp folders left by a server that stopped mid-upload');
    if (options.scanRuns ?? true) {
      try {
        await webhooks.scan();
      } catch (err) {
        logger.warn({ err }, 'could not scan for runs in flight; webhooks cover runs launched from now on');
      }
    }
  });
  app.addHook('onClose', async () => {
    await ctx.jobs.idle();
    await webhooks.close();
  });
  app.decorate('booth', ctx);
  return app as unknown as FastifyInstance;
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The app's shared state (tests reach jobs and webhooks through it). */
    booth: ServerContext;
  }
}

/** Type of an authenticated request (for handlers that need the raw request). */
export type AppRequest = FastifyRequest;
