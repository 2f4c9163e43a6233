/**
 * Model captions through the official `openai` SDK's Chat Completions API: GPT-4o mini by
 * default, any vision model by name, and any OpenAI-compatible server (vLLM, Ollama, LM Studio)
 * through `baseURL` / `OPENAI_BASE_URL`. Each prepared crop is sent as a downscaled JPEG data URL
 * with a configurable `detail`; the answer is constrained by Structured Outputs (a strict JSON
 * schema) to a caption that names the subject by a placeholder plus the reviewer flags hosted
 * services screen for. The trigger phrase and class noun are inserted by code (`subject.ts`).
 *
 * Reliability is ours, not the SDK's (its own retries are off): a per-request timeout; retries
 * on 408/409/429/5xx, timeouts and dropped connections with exponential backoff that waits what
 * `Retry-After` (or `retry-after-ms`) asks for instead, when the server says; and a failure
 * classified either as about ONE photo (`CAPTION_FAILED`: refusal, malformed output, retries
 * exhausted) or about the whole job (`CAPTION_SERVICE`: bad key, unknown model, unreachable
 * endpoint). The same request body and response parser serve the Batch API (`batch.ts`).
 * The API key is handed to the SDK and never logged.
 */
import { createHash } from 'node:crypto';
import OpenAI from 'openai';
import type { ChatCompletion, ChatCompletionCreateParamsNonStreaming } from 'openai/resources/chat/completions';
import sharp from 'sharp';
import { z } from 'zod';
import { BoothError, errorMessage } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { Subject } from '../sessions/manifest.js';
import { priceFor, tokenCost, type ModelPrice } from './prices.js';
import { renderStyle, type CaptionStyle } from './styles.js';
import { insertSubject } from './subject.js';
import { type CaptionFlag, type CaptionInput, type CaptionResult, type Captioner } from './types.js';

/** The model used when none is named. */
export const DEFAULT_MODEL = 'gpt-4o-mini';

/** How much of the image the model looks at (OpenAI's `detail`): `low` is one 512 px view, the cheapest. */
export type ImageDetail = 'low' | 'high' | 'auto';

/** Options of {@link createOpenAICaptioner}. */
export interface OpenAICaptionerOptions {
  /** API key (default `OPENAI_API_KEY`). A local server that needs none still wants a non-empty string. */
  apiKey: string;
  /** Endpoint, e.g. `http://localhost:11434/v1` for Ollama (default `OPENAI_BASE_URL`, else OpenAI's). */
  baseURL?: string | null;
  /** Model name (default {@link DEFAULT_MODEL}). */
  model?: string;
  /** Caption style (prompt template). */
  style: CaptionStyle;
  /** Default `low`. */
  detail?: ImageDetail;
  /** Longest side of the JPEG sent, px (default 512: what `low` detail looks at). */
  imageSide?: number;
  /** Per-request timeout, ms (default 60,000). */
  timeoutMs?: number;
  /** Retries after the first attempt (default 4). */
  maxRetries?: number;
  /** Longest wait between attempts, ms, even when `Retry-After` asks for more (default 120,000). */
  maxRetryDelayMs?: number;
  /** Price of the model; default from the public price table, null when unknown. */
  price?: ModelPrice | null;
  /** Most tokens the answer may take (default 400). */
  maxOutputTokens?: number;
  logger?: Logger;
  /** How to wait between attempts (tests record the delays here). Default: a timer. */
  sleep?: (ms: number) => Promise<void>;
}

/** The answer the model must give, as a strict JSON schema (every property required, nothing else allowed). */
export const CAPTION_SCHEMA = {
  type: 'object',
  properties: {
    caption: {
      type: 'string',
      description: 'The caption, naming the subject only with the placeholder <subject>, exactly once.',
    },
    flags: {
      type: 'object',
      description: 'What a reviewer should check before training on this image.',
      properties: {
        multiple_people: { type: 'boolean', description: 'More than one person (or more than one of the subject) is visible.' },
        face_covered: { type: 'boolean', description: "The subject's face is partly hidden: sunglasses, mask, hand, hair, hat brim, heavy shadow." },
        blurry: { type: 'boolean', description: 'The subject is out of focus or motion-blurred.' },
        text_watermark: { type: 'boolean', description: 'Visible text, a watermark, a logo overlay, a date stamp or a frame.' },
        heavy_filter: { type: 'boolean', description: 'A strong filter or edit: beauty filter, heavy colour grading, cartoon effect, stickers.' },
      },
      required: ['multiple_people', 'face_covered', 'blurry', 'text_watermark', 'heavy_filter'],
      additionalProperties: false,
    },
  },
  required: ['caption', 'flags'],
  additionalProperties: false,
} as const;

const answerSchema = z.object({
  caption: z.string(),
  flags: z.object({
    multiple_people: z.boolean(),
    face_covered: z.boolean(),
    blurry: z.boolean(),
    text_watermark: z.boolean(),
    heavy_filter: z.boolean(),
  }),
});

const FLAG_NAMES: Record<keyof z.infer<typeof answerSchema>['flags'], CaptionFlag> = {
  multiple_people: 'multiple-people',
  face_covered: 'face-covered',
  blurry: 'blurry',
  text_watermark: 'text-watermark',
  heavy_filter: 'heavy-filter',
};

/** The user message's instruction next to the image. */
const USER_TEXT = 'Caption this training image and set the flags.';

/**
 * Downscale a prepared crop to a JPEG data URL.
 * @param side - longest side in pixels (never enlarged)
 * @returns the data URL and the JPEG's size
 */
export async function imageDataUrl(image: Buffer, side: number): Promise<{ url: string; width: number; height: number; bytes: number }> {
  const { data, info } = await sharp(image)
    .resize(side, side, { fit: 'inside', withoutEnlargement: true })
    .flatten({ background: '#ffffff' })
    .jpeg({ quality: 85 })
    .toBuffer({ resolveWithObject: true });
  return { url: `data:image/jpeg;base64,${data.toString('base64')}`, width: info.width, height: info.height, bytes: data.length };
}

/**
 * The Chat Completions request body for one image (also one line's `body` in a batch file).
 * @returns a body for `POST /v1/chat/completions`
 */
export function captionRequestBody(opts: {
  model: string;
  style: CaptionStyle;
  subject: Subject;
  imageUrl: string;
  detail: ImageDetail;
  maxOutputTokens: number;
}): ChatCompletionCreateParamsNonStreaming {
  return {
    model: opts.model,
    messages: [
      { role: 'system', content: renderStyle(opts.style, opts.subject) },
      {
        role: 'user',
        content: [
          { type: 'text', text: USER_TEXT },
          { type: 'image_url', image_url: { url: opts.imageUrl, detail: opts.detail } },
        ],
      },
    ],
    response_format: {
      type: 'json_schema',
      json_schema: { name: 'booth_caption', description: 'A training caption and review flags', strict: true, schema: CAPTION_SCHEMA as unknown as Record<string, unknown> },
    },
    max_completion_tokens: opts.maxOutputTokens,
    temperature: 0.2,
    n: 1,
  };
}

/**
 * Turn a chat completion into a caption result.
 * @param completion - the response body
 * @param photo - photo name for messages
 * @param price - for the cost; null when unknown
 * @param batch - billed at the Batch API's discount
 * @throws BoothError `CAPTION_FAILED` for a refusal, a truncated or filtered answer, output that is
 *   not the schema's JSON, or a caption the subject cannot be inserted into
 */
export function parseCaptionCompletion(
  completion: ChatCompletion,
  ctx: { photo: string; subject: Subject; model: string; price: ModelPrice | null; batch?: boolean; attempts?: number },
): CaptionResult {
  const { photo } = ctx;
  const choice = completion.choices?.[0];
  if (!choice?.message) throw new BoothError('CAPTION_FAILED', `${photo}: the model's answer has no message (malformed response); caption it again`);
  const { message } = choice;
  if (message.refusal) {
    throw new BoothError('CAPTION_FAILED', `${photo}: the model refused to caption it: ${JSON.stringify(message.refusal.slice(0, 300))}; review the photo or set a caption by hand`);
  }
  if (choice.finish_reason === 'content_filter') {
    throw new BoothError('CAPTION_FAILED', `${photo}: the answer was stopped by the provider's content filter; review the photo or set a caption by hand`);
  }
  if (choice.finish_reason === 'length') {
    throw new BoothError('CAPTION_FAILED', `${photo}: the answer was cut off at the output token limit (malformed JSON); caption it again or raise the limit`);
  }
  const content = message.content ?? '';
  let parsed: unknown;
  try {
    parsed = JSON.parse(content);
  } catch {
    throw new BoothError('CAPTION_FAILED', `${photo}: the model's answer is not JSON (malformed output): ${JSON.stringify(content.slice(0, 120))}; caption it again`);
  }
  const answer = answerSchema.safeParse(parsed);
  if (!answer.success) {
    const issue = answer.error.issues[0];
    throw new BoothError(
      'CAPTION_FAILED',
      `${photo}: the model's JSON does not follow the caption schema (field "${issue?.path.join('.') ?? ''}": ${issue?.message ?? 'invalid'}); caption it again`,
    );
  }
  const { caption } = insertSubject(answer.data.caption, ctx.subject, photo);
  const flags = (Object.keys(FLAG_NAMES) as Array<keyof typeof FLAG_NAMES>).filter((k) => answer.data.flags[k]).map((k) => FLAG_NAMES[k]);
  const usage = completion.usage
    ? (() => {
        const u = { inputTokens: completion.usage.prompt_tokens, outputTokens: completion.usage.completion_tokens };
        return { ...u, costUsd: tokenCost(u, ctx.price, ctx.batch ?? false) };
      })()
    : null;
  return { caption, raw: answer.data.caption, source: 'model', model: completion.model || ctx.model, flags, usage, attempts: ctx.attempts ?? 1 };
}

/** Statuses worth another attempt: timeout, lock conflict, rate limit, server errors. */
const RETRY_STATUS = (status: number): boolean => status === 408 || status === 409 || status === 429 || status >= 500;

/**
 * How long the server asked us to wait, ms: `retry-after-ms` (OpenAI's), else `Retry-After` in
 * seconds or as an HTTP date (RFC 9110 §10.2.3); null when absent or unreadable.
 */
export function retryAfterMs(headers: Headers | undefined | null, now = Date.now()): number | null {
  if (!headers) return null;
  const ms = headers.get('retry-after-ms');
  if (ms !== null && Number.isFinite(Number.parseFloat(ms)) && Number.parseFloat(ms) >= 0) return Number.parseFloat(ms);
  const ra = headers.get('retry-after');
  if (ra === null) return null;
  if (/^\s*\d+(\.\d+)?\s*$/.test(ra)) return Number.parseFloat(ra) * 1000;
  const at = Date.parse(ra);
  return Number.isFinite(at) ? Math.max(0, at - now) : null;
}

/** A fingerprint of everything but the image and subject that shapes the answer. */
function fingerprintOf(model: string, style: CaptionStyle, detail: ImageDetail, side: number): string {
  return `openai:${model}:${style.name}:${style.sha256.slice(0, 16)}:${detail}:${side}:${createHash('sha256').update(JSON.stringify(CAPTION_SCHEMA)).digest('hex').slice(0, 8)}`;
}

/** The OpenAI captioner, with what batch mode reuses. */
export interface OpenAICaptioner extends Captioner {
  readonly model: string;
  readonly detail: ImageDetail;
  readonly imageSide: number;
  readonly price: ModelPrice | null;
  readonly maxOutputTokens: number;
  readonly baseURL: string;
  /** The SDK client (no SDK retries; our timeout). */
  readonly client: OpenAI;
  /** The request body for one image. */
  requestBody(input: Pick<CaptionInput, 'image' | 'subject'>): Promise<ChatCompletionCreateParamsNonStreaming>;
}

/**
 * Create a captioner for an OpenAI-compatible endpoint.
 * @param options - key, endpoint, model, style, detail, limits
 * @returns an {@link OpenAICaptioner}
 * @throws BoothError `INVALID_ARGUMENT` for an empty key or a bad option value
 * @example
 * const captioner = createOpenAICaptioner({ apiKey: process.env.OPENAI_API_KEY!, style: await loadStyle('natural') });
 * const { caption, usage } = await captioner.caption({ name, image, imageSha256, subject, facts: null });
 */
export function createOpenAICaptioner(options: OpenAICaptionerOptions): OpenAICaptioner {
  if (!options.apiKey) throw new BoothError('INVALID_ARGUMENT', 'the OpenAI API key is empty; set OPENAI_API_KEY (any non-empty value for a local server without keys)');
  const model = options.model ?? DEFAULT_MODEL;
  const detail = options.detail ?? 'low';
  const imageSide = options.imageSide ?? 512;
  const timeoutMs = options.timeoutMs ?? 60_000;
  const maxRetries = options.maxRetries ?? 4;
  const maxRetryDelayMs = options.maxRetryDelayMs ?? 120_000;
  const maxOutputTokens = options.maxOutputTokens ?? 400;
  const price = options.price === undefined ? priceFor(model) : options.price;
  const logger = options.logger ?? silentLogger();
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  for (const [name, v, min] of [
    ['imageSide', imageSide, 64],
    ['timeoutMs', timeoutMs, 1],
    ['maxOutputTokens', maxOutputTokens, 16],
  ] as const) {
    if (!Number.isInteger(v) || v < min) throw new BoothError('INVALID_ARGUMENT', `option ${name} must be an integer ≥ ${min}; got ${String(v)}`);
  }
  if (!Number.isInteger(maxRetries) || maxRetries < 0) throw new BoothError('INVALID_ARGUMENT', `option maxRetries must be an integer ≥ 0; got ${String(maxRetries)}`);
  const client = new OpenAI({ apiKey: options.apiKey, baseURL: options.baseURL ?? undefined, timeout: timeoutMs, maxRetries: 0 });
  const baseURL = client.baseURL;

  async function requestBody(input: Pick<CaptionInput, 'image' | 'subject'>): Promise<ChatCompletionCreateParamsNonStreaming> {
    const { url } = await imageDataUrl(input.image, imageSide);
    return captionRequestBody({ model, style: options.style, subject: input.subject, imageUrl: url, detail, maxOutputTokens });
  }

  return {
    source: 'model',
    model,
    style: options.style.name,
    detail,
    imageSide,
    price,
    maxOutputTokens,
    baseURL,
    client,
    fingerprint: fingerprintOf(model, options.style, detail, imageSide),
    requestBody,
    async caption(input: CaptionInput): Promise<CaptionResult> {
      const body = await requestBody(input);
      for (let attempt = 1; ; attempt++) {
        let completion: ChatCompletion;
        try {
          completion = await client.chat.completions.create(body, { timeout: timeoutMs, maxRetries: 0 });
        } catch (err) {
          const verdict = classify(err, input.name, attempt);
          if (verdict.retry && attempt <= maxRetries) {
            const asked = err instanceof OpenAI.APIError ? retryAfterMs(err.headers) : null;
            const backoff = Math.min(8_000, 500 * 2 ** (attempt - 1)) * (0.75 + Math.random() * 0.5);
            const delay = Math.min(maxRetryDelayMs, asked ?? backoff);
            logger.warn({ photo: input.name, attempt, status: verdict.status, delayMs: Math.round(delay), retryAfter: asked !== null }, 'caption request failed; retrying');
            await sleep(delay);
            continue;
          }
          throw verdict.error;
        }
        const result = parseCaptionCompletion(completion, { photo: input.name, subject: input.subject, model, price, attempts: attempt });
        logger.debug({ photo: input.name, attempts: attempt, usage: result.usage }, 'captioned');
        return result;
      }
    },
  };

  /** Whether to retry, and the error to throw when not. */
  function classify(err: unknown, photo: string, attempt: number): { retry: boolean; status: number | null; error: BoothError } {
    const tries = `${attempt} attempt${attempt === 1 ? '' : 's'}`;
    if (err instanceof OpenAI.APIConnectionTimeoutError) {
      return { retry: true, status: null, error: new BoothError('CAPTION_FAILED', `${photo}: no answer within ${timeoutMs} ms (${tries}); caption it again later or raise --timeout`, { cause: err }) };
    }
    if (err instanceof OpenAI.APIConnectionError) {
      return {
        retry: true,
        status: null,
        error: new BoothError('CAPTION_SERVICE', `cannot reach the captioning endpoint ${baseURL} (${tries}): ${errorMessage(err)}; check OPENAI_BASE_URL and the network`, { cause: err }),
      };
    }
    if (err instanceof OpenAI.APIError && typeof err.status === 'number') {
      const status = err.status;
      const detailText = err.message.replace(/\s+/g, ' ').slice(0, 300);
      if (status === 401 || status === 403) {
        return { retry: false, status, error: new BoothError('CAPTION_SERVICE', `the captioning endpoint ${baseURL} rejected the API key (HTTP ${status}: ${detailText}); check OPENAI_API_KEY`, { cause: err }) };
      }
      if (status === 404) {
        return { retry: false, status, error: new BoothError('CAPTION_SERVICE', `model "${model}" is not available at ${baseURL} (HTTP 404: ${detailText}); pick another with --model`, { cause: err }) };
      }
      if (RETRY_STATUS(status)) {
        const what = status === 429 ? 'rate limited' : `server error ${status}`;
        return { retry: true, status, error: new BoothError('CAPTION_FAILED', `${photo}: ${what} after ${tries} (${detailText}); caption it again later`, { cause: err }) };
      }
      return { retry: false, status, error: new BoothError('CAPTION_FAILED', `${photo}: the endpoint rejected the request (HTTP ${status}: ${detailText})`, { cause: err }) };
    }
    return { retry: false, status: null, error: new BoothError('CAPTION_FAILED', `${photo}: captioning failed: ${errorMessage(err)}`, { cause: err }) };
  }
}
