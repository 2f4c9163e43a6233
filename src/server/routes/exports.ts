/**
 * Export routes: convert a finished run into a single-file `.safetensors` in the background
 * (`convert/export.ts`'s `exportRun`, as `booth export` does), list a session's exports, and
 * download one with `Content-Length`, a strong `ETag` (its SHA-256), HTTP `Range` (206/416) for
 * resumable multi-GB downloads, and the SHA-256 in `Repr-Digest`/`X-Checksum-SHA256`. The list
 * gives a signed download URL per export, so a browser link or `curl -C -` works without the header.
 * An `export.completed` webhook fires when an export job succeeds.
 *
 * Presigned S3 URLs are not offered: `@aws-sdk/s3-request-presigner` is not a dependency; downloads
 * stream through this server with ranged reads from the store instead.
 */
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { BoothError, isBoothError } from '../../errors.js';
import { EXPORT_NAME_PATTERN, exportKeys, listExports, type ExportRecord } from '../../convert/export.js';
import { readJson } from '../../storage/index.js';
import { assertSessionName } from '../../sessions/store.js';
import { RUN_ID_PATTERN } from '../../training/runs.js';
import type { ServerContext } from '../context.js';
import { sendObject } from '../download.js';
import { nameParam, sessionPathFor } from './shared.js';

const exportParams = nameParam.extend({ export: z.string().regex(EXPORT_NAME_PATTERN, 'an export name: letters, digits, ".", "_" or "-"') });

/** Registers the export routes on the `/api` scope. */
export function registerExportRoutes(parent: FastifyInstance, ctx: ServerContext): void {
  const api = parent.withTypeProvider<ZodTypeProvider>();
  const { store, sessions, signer, jobs } = ctx;

  const view = (r: ExportRecord) => {
    const path = `${sessionPathFor(r.session)}/exports/${r.name}/download`;
    return { ...r, downloadUrl: signer.sign(path), downloadPath: path };
  };

  async function record(session: string, name: string): Promise<ExportRecord> {
    try {
      return await readJson<ExportRecord>(store, exportKeys(session, name).record);
    } catch (err) {
      if (isBoothError(err, 'NOT_FOUND')) throw new BoothError('NOT_FOUND', `session "${session}" has no export "${name}"; list them with GET /api/sessions/${session}/exports`, { cause: err });
      throw err;
    }
  }

  api.post(
    '/sessions/:name/exports',
    {
      schema: {
        tags: ['exports'],
        summary: 'Export a finished run as a single-file .safetensors (background job)',
        params: nameParam,
        body: z
          .object({
            run: z.string().regex(RUN_ID_PATTERN).optional().describe('default: the newest complete run'),
            name: z.string().regex(EXPORT_NAME_PATTERN).optional().describe('file stem; default <session>-<run>'),
            dtype: z.enum(['fp16', 'bf16', 'fp32']).default('fp16'),
          })
          .strict()
          .nullish(),
      },
    },
    async (req, reply) => {
      const { name } = req.params;
      assertSessionName(name);
      await sessions.get(name);
      const o = req.body ?? { dtype: 'fp16' as const };
      const job = jobs.start(
        'export',
        name,
        async (progress) => {
          const { exportRun } = await import('../../convert/export.js');
          const r = await exportRun(store, name, {
            ...(o.run ? { run: o.run } : {}),
            ...(o.name ? { name: o.name } : {}),
            dtype: o.dtype,
            logger: ctx.logger.child({ reqId: req.id }),
            onProgress: (done: number, total: number) => progress('convert', done, total, ''),
          });
          return view(r);
        },
        (job) => {
          if (job.state === 'succeeded') {
            const r = job.result as ExportRecord;
            void ctx.webhooks.emit(name, 'export.completed', { export: r.name, run: r.run, size: r.size, sha256: r.sha256, autov2: r.autov2, kind: r.kind, dtype: r.dtype });
          }
        },
      );
      return reply.code(202).send(job);
    },
  );

  api.get('/sessions/:name/exports', { schema: { tags: ['exports'], summary: 'Exports of a session with size, SHA-256, AutoV2 hash and a signed download URL', params: nameParam } }, async (req) => {
    assertSessionName(req.params.name);
    await sessions.get(req.params.name);
    return { exports: (await listExports(store, req.params.name)).map(view) };
  });

  api.get('/sessions/:name/exports/:export', { schema: { tags: ['exports'], summary: 'One export record', params: exportParams } }, async (req) => {
    assertSessionName(req.params.name);
    return view(await record(req.params.name, req.params.export));
  });

  api.get(
    '/sessions/:name/exports/:export/download',
    {
      config: { signable: true },
      schema: {
        tags: ['exports'],
        summary: 'Download the .safetensors: Content-Length, ETag (SHA-256), Range requests (206/416), Repr-Digest',
        params: exportParams,
        querystring: z.object({ exp: z.string().optional(), sig: z.string().optional() }),
      },
    },
    async (req, reply) => {
      const { name, export: exportName } = req.params;
      assertSessionName(name);
      const r = await record(name, exportName);
      const key = exportKeys(name, exportName).file;
      const head = await store.head(key);
      if (!head) throw new BoothError('NOT_FOUND', `export "${exportName}" of "${name}" has a record but no file; export it again`);
      return sendObject(req, reply, store, {
        key,
        size: head.size,
        etag: r.sha256,
        mtime: head.mtime,
        contentType: 'application/octet-stream',
        filename: `${exportName}.safetensors`,
        sha256: r.sha256,
      });
    },
  );
}
