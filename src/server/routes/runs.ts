/**
 * Training routes: presets, the estimate before launch (the `booth train --dry-run` logic: the
 * resulting spec, its steps and GPU-memory estimate), launch with a preset or a full spec, the
 * runs of a session, one run's status, stop/resume/extend, its log, its sample images, and its
 * live events (Server-Sent Events, see `sse.ts`). All state is read from the store on each
 * request (the worker writes status and logs), so a restarted server knows every run.
 */
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { BoothError, errorMessage } from '../../errors.js';
import { assertSessionName } from '../../sessions/store.js';
import { buildSpec, extendRun, resumeRun, runInfo, stopRun, trainSession, type ReconcileOptions, type SpecRequest } from '../../training/control.js';
import { estimateVramGb } from '../../training/requirements.js';
import { RUN_ID_PATTERN, RunStore, runKeys } from '../../training/runs.js';
import { PRESETS, PRESET_BASES, PRESET_INFO, stagesOf, totalSteps } from '../../training/spec.js';
import { BASE_MODELS, BASE_MODEL_INFO } from '../../sessions/base-models.js';
import type { ServerContext } from '../context.js';
import { sendObject } from '../download.js';
import { streamRunEvents } from '../sse.js';
import { runView } from '../views.js';
import { nameParam } from './shared.js';

const runParams = nameParam.extend({ run: z.string().regex(RUN_ID_PATTERN, 'a run id such as 20261122-153012-9f3a') });

const specRequest = z
  .object({
    preset: z.enum(PRESETS).optional().describe('starting point; default from the session'),
    spec: z.record(z.string(), z.unknown()).optional().describe('a whole job spec instead of a preset (session, run and version are filled in)'),
    set: z.array(z.string().max(500)).max(100).default([]).describe('field.path=value overrides, e.g. schedule.unet.steps=2000'),
    steps: z.number().int().positive().max(1_000_000).optional().describe('total optimizer steps (resizes the last stage)'),
    baseModel: z.string().min(1).max(500).optional().describe('local Diffusers folder on the GPU host, or a Hugging Face id'),
  })
  .strict()
  .refine((b) => !(b.preset && b.spec), { message: 'give either preset or spec, not both', path: ['spec'] });

const launchBody = z
  .object({
    preset: z.enum(PRESETS).optional(),
    spec: z.record(z.string(), z.unknown()).optional(),
    set: z.array(z.string().max(500)).max(100).default([]),
    steps: z.number().int().positive().max(1_000_000).optional(),
    baseModel: z.string().min(1).max(500).optional(),
    check: z.boolean().default(true).describe('check the GPU host (GPU, packages, free VRAM) before training'),
  })
  .strict()
  .refine((b) => !(b.preset && b.spec), { message: 'give either preset or spec, not both', path: ['spec'] });

function toSpecRequest(b: { preset?: (typeof PRESETS)[number] | undefined; spec?: Record<string, unknown> | undefined; set: string[]; steps?: number | undefined; baseModel?: string | undefined }): SpecRequest {
  return { ...(b.preset ? { preset: b.preset } : {}), ...(b.spec ? { spec: b.spec } : {}), set: b.set, ...(b.steps ? { steps: b.steps } : {}), ...(b.baseModel ? { baseModel: b.baseModel } : {}) };
}

/** Registers the run routes on the `/api` scope. */
export function registerRunRoutes(parent: FastifyInstance, ctx: ServerContext): void {
  const api = parent.withTypeProvider<ZodTypeProvider>();
  const { store, sessions, signer } = ctx;
  const reconcile: ReconcileOptions = { probe: (launch) => ctx.launcher(launch.launcher).probe(launch.handle) };

  api.get('/presets', { schema: { tags: ['training'], summary: 'Training presets' } }, async () => ({
    presets: PRESETS.map((name) => ({ name, description: PRESET_INFO[name], bases: PRESET_BASES[name] })),
  }));
  api.get('/base-models', { schema: { tags: ['training'], summary: 'Base models a session can target' } }, async () => ({
    baseModels: BASE_MODELS.map((name) => ({ name, ...BASE_MODEL_INFO[name] })),
  }));

  api.post(
    '/sessions/:name/runs/estimate',
    { schema: { tags: ['training'], summary: 'Build and validate the job spec of a new run and estimate it, launching nothing', params: nameParam, body: specRequest } },
    async (req) => {
      assertSessionName(req.params.name);
      const built = await buildSpec(sessions, req.params.name, 'dry-run', toSpecRequest(req.body));
      const est = estimateVramGb(built.spec);
      return {
        preset: built.preset,
        spec: built.spec,
        totalSteps: totalSteps(built.spec),
        stages: stagesOf(built.spec),
        estimatedVramGb: est.gb,
        estimateTerms: est.terms,
        // Time depends on the GPU; the worker reports it/s and the ETA once the run starts.
        note: 'GPU memory is an estimate from parameter counts and activation figures (docs/training.md); time is reported as ETA once the run starts',
      };
    },
  );

  api.post('/sessions/:name/runs', { schema: { tags: ['training'], summary: 'Launch a training run of a prepared session', params: nameParam, body: launchBody } }, async (req, reply) => {
    const { name } = req.params;
    assertSessionName(name);
    const b = req.body;
    const r = await trainSession(store, sessions, ctx.launcher(ctx.defaultLauncher, { check: b.check }), name, toSpecRequest(b));
    ctx.webhooks.watch(name, r.run, null);
    return reply.code(201).send({ session: name, run: r.run, attempt: r.attempt, estimatedVramGb: r.estimate.gb, totalSteps: totalSteps(r.spec), spec: r.spec, urls: { self: `/api/sessions/${name}/runs/${r.run}`, events: signer.sign(`/api/sessions/${name}/runs/${r.run}/events`) } });
  });

  api.get('/sessions/:name/runs', { schema: { tags: ['training'], summary: 'Runs of a session, oldest first', params: nameParam } }, async (req) => {
    const { name } = req.params;
    assertSessionName(name);
    await sessions.get(name);
    const ids = await new RunStore(store).list(name);
    const runs = [];
    for (const id of ids) {
      try {
        const info = await runInfo(store, name, id, reconcile);
        const v = runView(info, signer);
        runs.push({ run: id, state: v.state, step: v.step, total: v.total, loss: v.loss, preset: v.preset, createdAt: v.createdAt, attempt: v.attempt, model: v.model });
      } catch (err) {
        runs.push({ run: id, error: errorMessage(err) });
      }
    }
    return { session: name, runs };
  });

  api.get('/sessions/:name/runs/:run', { schema: { tags: ['training'], summary: 'A run: state, step, loss, ETA, samples, errors, spec', params: runParams } }, async (req) => {
    assertSessionName(req.params.name);
    runKeys(req.params.name, req.params.run);
    const info = await runInfo(store, req.params.name, req.params.run, reconcile);
    return { ...runView(info, signer), spec: info.spec, events: signer.sign(`/api/sessions/${req.params.name}/runs/${req.params.run}/events`) };
  });

  api.post('/sessions/:name/runs/:run/stop', { schema: { tags: ['training'], summary: 'Ask a run to stop; it saves a resume state and becomes resumable', params: runParams } }, async (req, reply) => {
    const { name, run } = req.params;
    assertSessionName(name);
    runKeys(name, run);
    const info = await stopRun(store, (n) => ctx.launcher(n), name, run, reconcile);
    ctx.webhooks.watch(name, run, info.state);
    return reply.code(202).send({ session: name, run, state: 'stopping', step: info.status?.step ?? 0 });
  });

  api.post('/sessions/:name/runs/:run/resume', { schema: { tags: ['training'], summary: 'Continue a stopped, preempted, failed or lost run from its newest resume state', params: runParams } }, async (req, reply) => {
    const { name, run } = req.params;
    assertSessionName(name);
    runKeys(name, run);
    const info = await runInfo(store, name, run, reconcile);
    const r = await resumeRun(store, ctx.launcher(info.record.launches.at(-1)?.launcher ?? ctx.defaultLauncher), name, run, reconcile);
    ctx.webhooks.watch(name, run, null);
    return reply.code(202).send({ session: name, run, attempt: r.attempt, totalSteps: totalSteps(r.spec) });
  });

  api.post(
    '/sessions/:name/runs/:run/extend',
    { schema: { tags: ['training'], summary: 'Raise the total step count and continue from the newest resume state', params: runParams, body: z.object({ steps: z.number().int().positive().max(1_000_000) }).strict() } },
    async (req, reply) => {
      const { name, run } = req.params;
      assertSessionName(name);
      runKeys(name, run);
      const info = await runInfo(store, name, run, reconcile);
      const r = await extendRun(store, ctx.launcher(info.record.launches.at(-1)?.launcher ?? ctx.defaultLauncher), name, run, req.body.steps, reconcile);
      ctx.webhooks.watch(name, run, null);
      return reply.code(202).send({ session: name, run, attempt: r.attempt, totalSteps: totalSteps(r.spec) });
    },
  );

  api.get(
    '/sessions/:name/runs/:run/events',
    {
      config: { signable: true },
      schema: {
        tags: ['training'],
        summary: 'Live events (text/event-stream): status, state, step, sample, log, end; ids are log positions, reconnect with Last-Event-ID',
        params: runParams,
        querystring: z.object({ backlog: z.enum(['all', 'none']).default('all'), lastEventId: z.string().max(40).optional(), exp: z.string().optional(), sig: z.string().optional() }),
      },
    },
    async (req, reply) => {
      const { name, run } = req.params;
      assertSessionName(name);
      runKeys(name, run);
      await streamRunEvents(req, reply, ctx, name, run, req.query.backlog);
    },
  );

  api.get(
    '/sessions/:name/runs/:run/logs',
    {
      config: { signable: true },
      schema: {
        tags: ['training'],
        summary: "One attempt's log as text (default the newest); supports Range for following it",
        params: runParams,
        querystring: z.object({ attempt: z.coerce.number().int().positive().max(100000).optional(), exp: z.string().optional(), sig: z.string().optional() }),
      },
    },
    async (req, reply) => {
      const { name, run } = req.params;
      assertSessionName(name);
      const info = await runInfo(store, name, run);
      const attempt = req.query.attempt ?? Math.max(1, info.record.launches.at(-1)?.attempt ?? 1, info.status?.attempt ?? 1);
      const key = runKeys(name, run).log(attempt);
      const head = await store.head(key);
      if (!head) throw new BoothError('NOT_FOUND', `run ${run} has no log for attempt ${attempt} yet`);
      return sendObject(req, reply, store, { key, size: head.size, etag: head.etag, mtime: head.mtime, contentType: 'text/plain; charset=utf-8' });
    },
  );

  api.get(
    '/sessions/:name/runs/:run/samples/:step/:file',
    {
      config: { signable: true },
      schema: {
        tags: ['training'],
        summary: 'A sample image rendered during training',
        params: runParams.extend({ step: z.string().regex(/^\d{1,9}$/), file: z.string().regex(/^\d{1,4}\.png$/) }),
        querystring: z.object({ exp: z.string().optional(), sig: z.string().optional() }),
      },
    },
    async (req, reply) => {
      const { name, run, step, file } = req.params;
      assertSessionName(name);
      const key = `${runKeys(name, run).samplesPrefix}${Number(step)}/${file}`;
      const head = await store.head(key);
      if (!head) throw new BoothError('NOT_FOUND', `run ${run} has no sample ${step}/${file}`);
      return sendObject(req, reply, store, { key, size: head.size, etag: head.etag, contentType: 'image/png', cacheControl: 'private, max-age=86400' });
    },
  );
}
