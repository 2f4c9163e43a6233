/**
 * Webhook routes: the global webhook (`/api/webhooks`) and a session's (`/api/sessions/:name/webhooks`):
 * read (the secret is never shown again), set (the secret is returned once, generated when not
 * given), remove, and the session's delivery log. See `webhooks.ts` for the signature scheme.
 */
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { redactUrl } from '../../log.js';
import { assertSessionName } from '../../sessions/store.js';
import type { ServerContext } from '../context.js';
import { WEBHOOK_EVENTS, type WebhookConfig } from '../webhooks.js';
import { nameParam } from './shared.js';

const configBody = z
  .object({
    url: z.url({ protocol: /^https?$/ }).max(2000).describe('http(s) URL that receives POSTs'),
    secret: z.string().min(16).max(200).optional().describe('HMAC key; generated when omitted (returned once)'),
    events: z.array(z.enum(WEBHOOK_EVENTS)).min(1).optional().describe('default: all'),
  })
  .strict();

// The receiver URL may carry its own credentials (`?token=…`); like the secret, they are shown only when set.
const hidden = (c: WebhookConfig | null) => (c ? { url: redactUrl(c.url), events: c.events, createdAt: c.createdAt, secretSet: true } : null);

/** Registers the webhook routes on the `/api` scope. */
export function registerWebhookRoutes(parent: FastifyInstance, ctx: ServerContext): void {
  const api = parent.withTypeProvider<ZodTypeProvider>();
  const { webhooks, sessions } = ctx;

  api.get('/webhooks', { schema: { tags: ['webhooks'], summary: 'The global webhook (all sessions)' } }, async () => ({ webhook: hidden(await webhooks.config(null)) }));
  api.put('/webhooks', { schema: { tags: ['webhooks'], summary: 'Set the global webhook; the response shows the secret once', body: configBody } }, async (req) => ({ webhook: await webhooks.setConfig(null, req.body) }));
  api.delete('/webhooks', { schema: { tags: ['webhooks'], summary: 'Remove the global webhook' } }, async () => {
    await webhooks.deleteConfig(null);
    return { webhook: null };
  });

  api.get('/sessions/:name/webhooks', { schema: { tags: ['webhooks'], summary: "A session's webhook", params: nameParam } }, async (req) => {
    assertSessionName(req.params.name);
    await sessions.get(req.params.name);
    return { webhook: hidden(await webhooks.config(req.params.name)) };
  });
  api.put('/sessions/:name/webhooks', { schema: { tags: ['webhooks'], summary: "Set a session's webhook; the response shows the secret once", params: nameParam, body: configBody } }, async (req) => {
    assertSessionName(req.params.name);
    await sessions.get(req.params.name);
    return { webhook: await webhooks.setConfig(req.params.name, req.body) };
  });
  api.delete('/sessions/:name/webhooks', { schema: { tags: ['webhooks'], summary: "Remove a session's webhook", params: nameParam } }, async (req) => {
    assertSessionName(req.params.name);
    await webhooks.deleteConfig(req.params.name);
    return { webhook: null };
  });
  api.get(
    '/sessions/:name/webhooks/deliveries',
    { schema: { tags: ['webhooks'], summary: 'Delivery log: each event, its attempts with status or error, and the final outcome', params: nameParam, querystring: z.object({ limit: z.coerce.number().int().min(1).max(500).default(50) }) } },
    async (req) => {
      assertSessionName(req.params.name);
      await sessions.get(req.params.name);
      return { deliveries: await webhooks.deliveries(req.params.name, req.query.limit) };
    },
  );
}
