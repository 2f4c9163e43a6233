/**
 * Session routes: create, list, read, update and delete sessions; upload photos (multipart,
 * streamed to a temp file and hashed on the way, then handed to intake, one result per file);
 * delete a photo; prepare and caption as background jobs; the review data per photo with its
 * images; include/exclude, caption edits and hand-set crops (re-rendered from the original with
 * prepare's own crop code). Every id from a request is validated (`assertSessionName`, SHA-256
 * pattern) before it reaches a key; photo file names are display names only, never paths.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Multipart } from '@fastify/multipart';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { BoothError } from '../../errors.js';
import { listStyles, loadStyle } from '../../captions/styles.js';
import { BASE_MODELS } from '../../sessions/base-models.js';
import { displayName, addPhotos } from '../../sessions/intake.js';
import { SESSION_NAME_PATTERN, type PhotoRecord, type SessionManifest } from '../../sessions/manifest.js';
import { assertSessionName, sessionKeys, type SessionStore } from '../../sessions/store.js';
import { FRAMINGS, type Framing } from '../../preprocess/types.js';
import { readAll } from '../../storage/index.js';
import { ApiError } from '../errors.js';
import type { ServerContext } from '../context.js';
import { sendObject } from '../download.js';
import { photoView, sessionSummary } from '../views.js';
import { nameParam } from './shared.js';
import { UPLOAD_TMP_PREFIX } from '../upload-tmp.js';

export { nameParam };
/** Session name and photo SHA-256 in a path. */
const photoParams = nameParam.extend({ sha256: z.string().regex(/^[0-9a-f]{64}$/, 'the photo\'s SHA-256 (64 lowercase hex digits)') });

const framingEnum = z.enum(FRAMINGS as unknown as [Framing, ...Framing[]]);
const text48 = z.string().trim().min(1).max(48);

const createBody = z.object({
  name: z.string().regex(SESSION_NAME_PATTERN, 'use 1–64 letters, digits, ".", "_" or "-", starting with a letter or digit'),
  trigger: text48.describe('rare-token trigger phrase, e.g. ohwx'),
  classNoun: text48.describe('class noun, e.g. man, woman, dog'),
  kind: z.enum(['person', 'object', 'style']).default('person'),
  base: z.enum(BASE_MODELS).default('sd15'),
  resolution: z.number().int().positive().optional().describe('training resolution when the base allows several (FLUX.1, SD 3.5: 512, 768 or 1024)'),
  framing: framingEnum.optional(),
  captionTemplate: z.string().min(1).max(500).optional(),
});

const patchBody = z
  .object({
    trigger: text48.optional(),
    classNoun: text48.optional(),
    framing: framingEnum.optional(),
    identity: z.enum(['auto', 'off']).optional(),
    captionTemplate: z.string().min(1).max(500).optional(),
  })
  .strict();

const photoPatch = z
  .object({
    decision: z.enum(['include', 'exclude', 'auto']).optional().describe('override the automatic decision; applied by the next prepare'),
    caption: z.string().max(2000).nullable().optional().describe('a hand caption (null: back to automatic)'),
    checkCaption: z.boolean().default(true).describe('require "<trigger> <class>" exactly once in the caption'),
  })
  .strict();

const cropBody = z.object({ x: z.number().int().min(0), y: z.number().int().min(0), width: z.number().int().min(16), height: z.number().int().min(16) }).strict();

/** A file name to write the upload under: intake records the base name as the photo's display name. */
function uploadFileName(filename: string | undefined): string {
  let name = displayName(filename || 'upload');
  if (name === '.' || name === '..' || name.startsWith('.')) name = `upload${name.replace(/^\.+/, '-')}`;
  name = name.replace(/\//g, '_');
  // File systems limit names to 255 bytes; display names are limited in characters.
  while (Buffer.byteLength(name) > 200) name = name.slice(0, -1);
  return name || 'upload';
}

/**
 * The parts of a multipart request, failing as soon as the client goes away before the body has
 * ended. @fastify/multipart only notices a connection that closes while it is parsing: one that
 * closed earlier (a client that sent part of its body and hung up while the handler was still
 * checking the session) leaves the parts iterator, and a part's file stream, waiting forever — and
 * with them the session's upload lock, so every later upload to that session would hang too.
 * `onGone` is called once with the error, so the caller can end a file stream it is reading.
 */
async function* partsWhileConnected(req: FastifyRequest, onGone: (err: Error) => void): AsyncGenerator<Multipart> {
  const raw = req.raw;
  let reject: (err: Error) => void = () => undefined;
  const gone = new Promise<never>((_, r) => (reject = r));
  gone.catch(() => undefined);
  const check = () => {
    if (raw.readableEnded) return;
    const err = new ApiError('INVALID_ARGUMENT', 'the connection closed before the upload was complete; nothing from the unfinished photo was kept, send it again');
    onGone(err);
    reject(err);
  };
  raw.once('close', check);
  if (raw.destroyed) check();
  try {
    let it: AsyncIterator<Multipart>;
    try {
      it = req.parts()[Symbol.asyncIterator]();
    } catch (err) {
      throw malformedMultipart(err);
    }
    for (;;) {
      const r = await Promise.race([it.next().catch((err: unknown) => Promise.reject(malformedMultipart(err))), gone]);
      if (r.done) return;
      yield r.value;
    }
  } finally {
    raw.off('close', check);
  }
}

/** Multipart limits: reaching one ends the upload early, but the photos before it are kept. */
const MULTIPART_LIMIT_CODES = new Set(['FST_FILES_LIMIT', 'FST_PARTS_LIMIT', 'FST_FIELDS_LIMIT']);

/**
 * The error for a body the multipart parser cannot read (no boundary, a boundary that never
 * appears, a body that ends mid-part). busboy reports these as plain errors, which would otherwise
 * become a 500; the multipart plugin's own errors already carry a 4xx status and pass through.
 */
function malformedMultipart(err: unknown): unknown {
  const status = (err as { statusCode?: unknown }).statusCode;
  if (err instanceof ApiError || err instanceof BoothError || (typeof status === 'number' && status < 500)) return err;
  const detail = err instanceof Error ? err.message : String(err);
  return new ApiError('INVALID_ARGUMENT', `the multipart body cannot be read (${detail}); send the photos as multipart/form-data, one file part per photo, framed by the boundary named in the Content-Type header`);
}

/** The `ETag` header value of a session version (the manifest's etag, quoted as HTTP wants). */
function etagHeader(etag: string): string {
  return `"${etag}"`;
}

/**
 * The session version an `If-Match` header asks for: undefined without the header or for `*`
 * (any version; the session must merely exist), else the etag, quotes and `W/` removed. A list
 * of etags is matched against the current version.
 * @throws BoothError `PRECONDITION_FAILED` when none of a list is current
 */
async function ifMatchOf(req: FastifyRequest, sessions: SessionStore, name: string): Promise<string | undefined> {
  const raw = req.headers['if-match'];
  if (raw === undefined) return undefined;
  const tags = (Array.isArray(raw) ? raw.join(',') : raw)
    .split(',')
    .map((t) => t.trim().replace(/^W\//, '').replace(/^"(.*)"$/, '$1'))
    .filter((t) => t !== '');
  if (tags.length === 0 || tags.includes('*')) return undefined;
  if (tags.length === 1) return tags[0];
  const { etag } = await sessions.read(name);
  if (!tags.includes(etag)) throw staleSession(name);
  return etag;
}

/** The 412 of an edit sent with an `If-Match` that is no longer the session's version. */
function staleSession(name: string, cause?: unknown): BoothError {
  return new BoothError(
    'PRECONDITION_FAILED',
    `session "${name}" was changed by someone else since you read it (If-Match is not its current ETag), so your change was not applied; ` +
      `GET /api/sessions/${name} again, re-apply your change to what it returns and send it with the new ETag`,
    cause === undefined ? undefined : { cause },
  );
}

/** Run a conditional edit, turning a failed condition into {@link staleSession}'s message. */
async function conditional<T>(name: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof BoothError && err.code === 'PRECONDITION_FAILED') throw staleSession(name, err);
    throw err;
  }
}

function findBySha(m: SessionManifest, sha256: string): PhotoRecord {
  const p = m.photos.find((x) => x.sha256 === sha256);
  if (!p) throw new BoothError('NOT_FOUND', `session "${m.name}" has no photo ${sha256.slice(0, 12)}…; list photos with GET /api/sessions/${m.name}/photos`);
  return p;
}

/** Registers the session routes on the `/api` scope. */
export function registerSessionRoutes(parent: FastifyInstance, ctx: ServerContext, limits: { perMinute: number; maxFileBytes: number }): void {
  const api = parent.withTypeProvider<ZodTypeProvider>();
  const { sessions, store, jobs, signer } = ctx;

  api.get('/sessions', { schema: { tags: ['sessions'], summary: 'List sessions' } }, async () => {
    const all = await sessions.list();
    return { sessions: all.map((s) => (s.manifest ? sessionSummary(s.manifest) : { name: s.name, error: s.error })) };
  });

  api.post('/sessions', { schema: { tags: ['sessions'], summary: 'Create a session', body: createBody } }, async (req, reply) => {
    const b = req.body;
    const m = await sessions.create({
      name: b.name,
      subject: { trigger: b.trigger, classNoun: b.classNoun, kind: b.kind },
      base: b.base,
      settings: { ...(b.framing ? { framing: b.framing } : {}), ...(b.captionTemplate ? { captionTemplate: b.captionTemplate } : {}), ...(b.resolution !== undefined ? { resolution: b.resolution } : {}) },
    });
    return reply.code(201).send(sessionSummary(m));
  });

  api.get(
    '/sessions/:name',
    { schema: { tags: ['sessions'], summary: 'A session: subject, settings, state, counts, jobs; the ETag header is its version, for If-Match on edits', params: nameParam } },
    async (req, reply) => {
      assertSessionName(req.params.name);
      const { manifest: m, etag } = await sessions.read(req.params.name);
      void reply.header('etag', etagHeader(etag));
      return { ...sessionSummary(m), jobs: jobs.ofSession(m.name).slice(0, 10) };
    },
  );

  api.patch(
    '/sessions/:name',
    {
      schema: {
        tags: ['sessions'],
        summary: 'Update subject or preparation settings (the session then needs preparing again)',
        description:
          'Only the fields sent are changed, on the current version of the session, so concurrent edits of other fields are kept. ' +
          'With If-Match (the ETag of GET /api/sessions/:name) the change is applied only if the session has not changed since: else 412 PRECONDITION_FAILED. ' +
          'The response ETag is the new version.',
        params: nameParam,
        body: patchBody,
      },
    },
    async (req, reply) => {
      const { name } = req.params;
      assertSessionName(name);
      const b = req.body;
      const ifMatch = await ifMatchOf(req, sessions, name);
      const { manifest: m, etag } = await jobs.lock(name, 'update', () =>
        conditional(name, () =>
          sessions.updateVersion(
            name,
            (m) => {
              const before = JSON.stringify([m.subject, m.settings]);
              if (b.trigger !== undefined) m.subject.trigger = b.trigger;
              if (b.classNoun !== undefined) m.subject.classNoun = b.classNoun;
              if (b.framing !== undefined) m.settings.framing = b.framing;
              if (b.identity !== undefined) m.settings.identity = b.identity;
              if (b.captionTemplate !== undefined) m.settings.captionTemplate = b.captionTemplate;
              if (JSON.stringify([m.subject, m.settings]) !== before) m.state = 'created';
              return m;
            },
            { what: 'the settings change', ...(ifMatch !== undefined ? { ifMatch } : {}) },
          ),
        ),
      );
      void reply.header('etag', etagHeader(etag));
      return sessionSummary(m);
    },
  );

  api.delete(
    '/sessions/:name',
    {
      schema: {
        tags: ['sessions'],
        summary: 'Delete a session and everything stored under it (photos, dataset, runs, exports)',
        params: nameParam,
        querystring: z.object({ confirm: z.string().optional().describe('must repeat the session name') }),
      },
    },
    async (req) => {
      const { name } = req.params;
      assertSessionName(name);
      if (req.query.confirm !== name) {
        throw new BoothError('INVALID_ARGUMENT', `deleting "${name}" removes its photos, dataset, runs and exports for good; repeat its name as ?confirm=${name} to confirm`);
      }
      const objects = await jobs.lock(name, 'deletion', () => sessions.delete(name));
      return { deleted: name, objects };
    },
  );

  // ---- photos ---------------------------------------------------------------------------

  api.post(
    '/sessions/:name/photos',
    {
      config: { rateLimit: { max: limits.perMinute, timeWindow: '1 minute' } },
      schema: {
        tags: ['photos'],
        summary: 'Upload photos (multipart/form-data, any number of file fields); one result per file',
        description: 'Each file is streamed to a temporary file while its SHA-256 is computed, then decoded and stored content-addressed. Outcomes: added, duplicate, rejected (with the reason).',
        params: nameParam,
        consumes: ['multipart/form-data'],
      },
    },
    async (req, reply) => {
      const { name } = req.params;
      assertSessionName(name);
      await sessions.get(name);
      if (!req.isMultipart()) throw new ApiError('UNSUPPORTED_MEDIA_TYPE', 'send the photos as multipart/form-data, one file part per photo');
      const dir = await mkdtemp(path.join(tmpdir(), UPLOAD_TMP_PREFIX));
      const results: Array<{ name: string; sha256: string | null; size: number; outcome: string; reason: string | null; warnings: string[] }> = [];
      try {
        await jobs.lock(name, 'upload', async () => {
          let i = 0;
          let current: Multipart | null = null;
          // A file stream left waiting for bytes that will never come is ended with the error.
          const parts = partsWhileConnected(req, (err) => (current?.type === 'file' ? current.file.destroy(err) : undefined));
          try {
            for await (const part of parts) {
              current = part;
              if (part.type !== 'file') continue;
              const shown = uploadFileName(part.filename);
              const sub = path.join(dir, String(i++));
              await mkdir(sub);
              const file = path.join(sub, shown);
              const hash = createHash('sha256');
              let size = 0;
              try {
                await pipeline(
                  part.file,
                  new Transform({
                    transform(chunk: Buffer, _enc, cb) {
                      hash.update(chunk);
                      size += chunk.length;
                      cb(null, chunk);
                    },
                  }),
                  createWriteStream(file),
                );
              } catch (err) {
                // A failing temp-file write (disk full) is the server's problem; anything else is the body's.
                if ((err as NodeJS.ErrnoException).syscall !== undefined) throw err;
                throw malformedMultipart(err);
              }
              if (part.file.truncated) {
                results.push({ name: shown, sha256: null, size, outcome: 'rejected', reason: `${shown}: over this server's per-file upload limit (${Math.round(limits.maxFileBytes / 2 ** 20)} MiB); export a smaller JPEG`, warnings: [] });
                await rm(sub, { recursive: true, force: true });
                continue;
              }
              // Decoding takes a process-wide slot: memory stays bounded however many sessions upload at once.
              const [r] = await jobs.intake(() => addPhotos(sessions, name, [file], { logger: ctx.logger.child({ reqId: req.id }) }));
              await rm(sub, { recursive: true, force: true });
              results.push({ name: r?.name ?? shown, sha256: r?.sha256 ?? hash.digest('hex'), size, outcome: r?.outcome ?? 'rejected', reason: r?.reason ?? null, warnings: r?.warnings ?? [] });
            }
          } catch (err) {
            const code = (err as { code?: unknown }).code;
            if (results.length === 0 || typeof code !== 'string' || !MULTIPART_LIMIT_CODES.has(code)) throw err;
            // The photos before the limit are stored; say so instead of failing the whole request.
            results.push({
              name: '(the remaining files)',
              sha256: null,
              size: 0,
              outcome: 'rejected',
              reason: `this upload has more files or fields than the server takes in one request; the ${results.length} file(s) before were handled, send the rest in another request`,
              warnings: [],
            });
          }
        });
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
      if (results.length === 0) throw new BoothError('INVALID_ARGUMENT', 'the request had no file parts; send each photo as a multipart file field');
      const count = (k: string) => results.filter((r) => r.outcome === k).length;
      const summary = { added: count('added'), duplicate: count('duplicate'), rejected: count('rejected'), skipped: count('skipped') };
      return reply.code(summary.added > 0 ? 201 : 200).send({ session: name, summary, results });
    },
  );

  api.get('/sessions/:name/photos', { schema: { tags: ['photos'], summary: 'Review data of every photo: status, flags with measured values, faces, crop, caption, image URLs', params: nameParam } }, async (req) => {
    assertSessionName(req.params.name);
    const m = await sessions.get(req.params.name);
    return { session: sessionSummary(m), photos: m.photos.map((p) => photoView(m, p, signer)) };
  });

  api.get('/sessions/:name/photos/:sha256', { schema: { tags: ['photos'], summary: 'Review data of one photo', params: photoParams } }, async (req) => {
    assertSessionName(req.params.name);
    const m = await sessions.get(req.params.name);
    return photoView(m, findBySha(m, req.params.sha256), signer);
  });

  api.delete('/sessions/:name/photos/:sha256', { schema: { tags: ['photos'], summary: 'Remove a photo (its original and training image); the session needs preparing again', params: photoParams } }, async (req) => {
    const { name, sha256 } = req.params;
    assertSessionName(name);
    const ifMatch = await ifMatchOf(req, sessions, name);
    return jobs.lock(name, 'photo deletion', async () => {
      let removed: PhotoRecord | null = null;
      await conditional(name, () =>
        sessions.update(
          name,
          (m) => {
            removed = findBySha(m, sha256);
            m.photos = m.photos.filter((p) => p.sha256 !== sha256);
            m.state = 'created';
            return m;
          },
          { what: 'the photo deletion', ...(ifMatch !== undefined ? { ifMatch } : {}) },
        ),
      );
      // Only once the manifest no longer names them: a crash in between leaves unreferenced objects, never a dangling reference.
      const keys = sessionKeys(name);
      const r = removed as PhotoRecord | null;
      if (r?.key) await store.delete(r.key);
      const stem = sha256.slice(0, 16);
      await store.delete(keys.datasetImage(stem));
      await store.delete(keys.datasetCaption(stem));
      return { deleted: sha256, name: r?.name ?? null };
    });
  });

  const imageRoute = (kind: 'preview' | 'original' | 'crop') =>
    api.get(
      `/sessions/:name/photos/:sha256/${kind}`,
      {
        config: { signable: true },
        schema: {
          tags: ['photos'],
          summary: kind === 'preview' ? 'The photo, upright, at most 512 px (face and crop coordinates are in source pixels: scale by source.width)' : kind === 'original' ? 'The original file as uploaded' : 'The training image (the crop at the training resolution)',
          params: photoParams,
          querystring: z.object({ v: z.string().max(200).optional(), exp: z.string().optional(), sig: z.string().optional() }),
        },
      },
      async (req, reply) => {
        assertSessionName(req.params.name);
        const m = await sessions.get(req.params.name);
        const p = findBySha(m, req.params.sha256);
        const keys = sessionKeys(m.name);
        let key: string | null = kind === 'original' ? p.key : kind === 'crop' ? p.datasetKey : keys.preview(p.sha256);
        let head = key ? await store.head(key) : null;
        if (!head && kind === 'preview' && p.key) {
          key = p.key;
          head = await store.head(key);
        }
        if (!key || !head) throw new BoothError('NOT_FOUND', `photo ${p.name} has no ${kind} image${kind === 'crop' ? ' (it is not accepted, or the session is not prepared)' : kind === 'preview' ? ' yet (prepare the session)' : ''}`);
        const ext = path.extname(key).slice(1).toLowerCase();
        const type = ext === 'png' ? 'image/png' : ext === 'jpg' || ext === 'jpeg' ? 'image/jpeg' : ext === 'webp' ? 'image/webp' : ext === 'gif' ? 'image/gif' : ext === 'avif' ? 'image/avif' : 'application/octet-stream';
        return sendObject(req, reply, store, { key, size: head.size, etag: head.etag, mtime: head.mtime, contentType: type, cacheControl: kind === 'crop' ? 'private, no-cache' : 'private, max-age=3600' });
      },
    );
  imageRoute('preview');
  imageRoute('original');
  imageRoute('crop');

  api.patch('/sessions/:name/photos/:sha256', { schema: { tags: ['photos'], summary: 'Include/exclude a photo, or set its caption by hand', params: photoParams, body: photoPatch } }, async (req) => {
    const { name, sha256 } = req.params;
    assertSessionName(name);
    const b = req.body;
    // If-Match guards the whole request: its first write must find that version, the second the one the first wrote.
    let ifMatch = await ifMatchOf(req, sessions, name);
    return jobs.lock(name, 'photo change', async () => {
      if (b.decision !== undefined) {
        const written = await conditional(name, () =>
          sessions.updateVersion(
            name,
            (m) => {
              const p = findBySha(m, sha256);
              const next = b.decision === 'auto' ? null : (b.decision ?? null);
              if (p.override !== next) {
                p.override = next;
                m.state = 'created';
              }
              return m;
            },
            { what: 'the decision', ...(ifMatch !== undefined ? { ifMatch } : {}) },
          ),
        );
        if (ifMatch !== undefined) ifMatch = written.etag;
      }
      let warning: string | null = null;
      if (b.caption !== undefined) {
        const { setHandCaption } = await import('../../captions/session.js');
        const caption = b.caption;
        // The review UI is the review here; the contact sheet is re-rendered by the next prepare or caption run.
        const r = await conditional(name, () => setHandCaption(sessions, name, sha256, caption, { check: b.checkCaption, review: false, ...(ifMatch !== undefined ? { ifMatch } : {}) }));
        warning = r.warning;
      }
      const m = await sessions.get(name);
      return { ...photoView(m, findBySha(m, sha256), signer), captionWarning: warning, needsPrepare: m.state !== 'prepared' };
    });
  });

  api.put(
    '/sessions/:name/photos/:sha256/crop',
    { schema: { tags: ['photos'], summary: 'Set the crop by hand (source pixels; made square and kept inside the photo) and re-render the training image', params: photoParams, body: cropBody } },
    async (req) => {
      const { name, sha256 } = req.params;
      assertSessionName(name);
      const ifMatch = await ifMatchOf(req, sessions, name);
      return jobs.lock(name, 'crop change', async () => {
        const { manifest: m, etag } = await sessions.read(name);
        if (ifMatch !== undefined && ifMatch !== etag) throw staleSession(name);
        const p = findBySha(m, sha256);
        if (p.key === null || p.source === null || p.status === 'rejected') throw new BoothError('CONFLICT', `photo ${p.name} was rejected (${p.reason ?? 'not decodable'}); there is nothing to crop`);
        const { clampSquare } = await import('../../preprocess/pipeline.js');
        const rect = clampSquare(req.body, p.source);
        const resolution = m.settings.resolution;
        if (p.status === 'accepted' && p.datasetKey !== null) {
          const { decodePhoto } = await import('../../preprocess/decode.js');
          const { renderCrop } = await import('../../preprocess/crop.js');
          const image = (await decodePhoto(await readAll(store, p.key), p.name, { targetSize: resolution })).image;
          const png = await renderCrop(image, rect, resolution);
          await store.put(p.datasetKey, png, { contentType: 'image/png' });
        }
        // Recorded on the current manifest: edits others made while the image was rendered are kept.
        const saved = await conditional(name, () =>
          sessions.update(
            name,
            (fresh) => {
              const q = findBySha(fresh, sha256);
              q.cropOverride = rect;
              q.crop = rect;
              q.upscale = Math.round((fresh.settings.resolution / rect.width) * 1000) / 1000;
              return fresh;
            },
            { what: 'the crop', ...(ifMatch !== undefined ? { ifMatch: etag } : {}) },
          ),
        );
        return photoView(saved, findBySha(saved, sha256), signer);
      });
    },
  );

  api.delete('/sessions/:name/photos/:sha256/crop', { schema: { tags: ['photos'], summary: 'Drop a hand-set crop (the automatic one returns at the next prepare)', params: photoParams } }, async (req) => {
    const { name, sha256 } = req.params;
    assertSessionName(name);
    const ifMatch = await ifMatchOf(req, sessions, name);
    return jobs.lock(name, 'crop change', async () => {
      const m = await conditional(name, () =>
        sessions.update(
          name,
          (m) => {
            const p = findBySha(m, sha256);
            if (p.cropOverride) {
              p.cropOverride = null;
              m.state = 'created';
            }
            return m;
          },
          { what: 'the crop removal', ...(ifMatch !== undefined ? { ifMatch } : {}) },
        ),
      );
      return { ...photoView(m, findBySha(m, sha256), signer), needsPrepare: m.state !== 'prepared' };
    });
  });

  // ---- jobs -----------------------------------------------------------------------------

  api.post(
    '/sessions/:name/prepare',
    {
      schema: {
        tags: ['jobs'],
        summary: 'Prepare the session in the background (faces, identity, crops, quality flags, captions, contact sheet); returns the job',
        params: nameParam,
        body: z.object({ framing: framingEnum.optional(), identity: z.enum(['auto', 'off']).optional() }).strict().nullish(),
      },
    },
    async (req, reply) => {
      const { name } = req.params;
      assertSessionName(name);
      const m = await sessions.get(name);
      if (m.photos.filter((p) => p.key !== null).length === 0) throw new BoothError('INVALID_ARGUMENT', `session "${name}" has no usable photos yet; upload some first`);
      const o = req.body ?? {};
      const job = jobs.start('prepare', name, async (progress) => {
        const { prepareSession } = await import('../../preprocess/pipeline.js');
        const report = await prepareSession(sessions, name, { ...ctx.prepare, ...o, logger: ctx.logger.child({ reqId: req.id }), onProgress: progress });
        return { counts: report.counts, analysed: report.analysed, elapsedMs: report.elapsedMs };
      });
      return reply.code(202).send(job);
    },
  );

  api.post(
    '/sessions/:name/captions',
    {
      schema: {
        tags: ['jobs'],
        summary: 'Caption the accepted photos in the background: offline (no key) or with an OpenAI-compatible vision model; hand captions are kept',
        params: nameParam,
        body: z
          .object({
            captioner: z.enum(['auto', 'offline', 'openai']).default('auto'),
            style: z.string().max(64).optional(),
            model: z.string().min(1).max(100).optional(),
            force: z.boolean().default(false),
            dryRun: z.boolean().default(false),
          })
          .strict()
          .nullish(),
      },
    },
    async (req, reply) => {
      const { name } = req.params;
      assertSessionName(name);
      await sessions.get(name);
      const o = req.body ?? { captioner: 'auto' as const, force: false, dryRun: false };
      // Styles are files under templates/captions; only their names are accepted, never a path.
      if (o.style !== undefined && !listStyles().includes(o.style)) throw new BoothError('INVALID_ARGUMENT', `style ${JSON.stringify(o.style)} is not one of ${listStyles().join(', ')}`);
      const apiKey = ctx.captions.apiKey;
      const useModel = o.captioner === 'openai' || (o.captioner === 'auto' && apiKey !== null);
      if (useModel && apiKey === null) throw new BoothError('INVALID_ARGUMENT', 'captioner "openai" needs OPENAI_API_KEY in the environment of `booth serve`; use "offline" without a key');
      const job = jobs.start('caption', name, async (progress) => {
        const { captionSession } = await import('../../captions/session.js');
        const style = await loadStyle(o.style);
        let captioner;
        if (useModel) {
          const { createOpenAICaptioner } = await import('../../captions/openai.js');
          captioner = createOpenAICaptioner({ apiKey: apiKey as string, baseURL: ctx.captions.baseURL, style, logger: ctx.logger.child({ reqId: req.id }), ...(o.model ? { model: o.model } : {}) });
        } else {
          const { createOfflineCaptioner } = await import('../../captions/offline.js');
          captioner = createOfflineCaptioner({ style });
        }
        const report = await captionSession(sessions, name, { captioner, force: o.force, dryRun: o.dryRun, logger: ctx.logger.child({ reqId: req.id }), onProgress: progress });
        return { counts: report.counts, usage: report.usage, estimate: report.estimate, captioner: report.captioner };
      });
      return reply.code(202).send(job);
    },
  );

  api.get('/sessions/:name/jobs', { schema: { tags: ['jobs'], summary: "This server process's jobs of a session, newest first", params: nameParam } }, async (req) => {
    assertSessionName(req.params.name);
    return { jobs: jobs.ofSession(req.params.name) };
  });

  api.get('/jobs/:id', { schema: { tags: ['jobs'], summary: 'A job: state, progress, result or error', params: z.object({ id: z.uuid() }) } }, async (req) => jobs.get(req.params.id));
}
