/**
 * `booth caption`: caption a prepared session (offline without a key, any OpenAI-compatible vision
 * model with one, optionally through the Batch API), list the captions, and set or clear one by
 * hand. The command forms:
 *   booth caption <session>                      caption what needs it
 *   booth caption <session> --list               show captions, sources, flags, token counts
 *   booth caption <session> <photo> "text"       set a caption by hand (never overwritten)
 *   booth caption <session> <photo> --clear      drop the hand caption
 */
import { Option } from 'commander';
import { BoothError } from '../errors.js';
import { loadClipTokenizer, type ClipTokenizer } from '../captions/clip-tokenizer.js';
import { createOfflineCaptioner } from '../captions/offline.js';
import { DEFAULT_MODEL, createOpenAICaptioner, type ImageDetail } from '../captions/openai.js';
import { formatUsd, priceFor } from '../captions/prices.js';
import {
  captionSession,
  captionSessionBatch,
  listCaptions,
  setHandCaption,
  type CaptionPhotoReport,
  type CaptionReport,
} from '../captions/session.js';
import { DEFAULT_STYLE, listStyles, loadStyle } from '../captions/styles.js';
import type { Captioner } from '../captions/types.js';
import { checkName, phasedProgress, print, usage, type Cli } from './shared.js';

interface CaptionOptions {
  list?: boolean;
  captioner: 'auto' | 'openai' | 'offline';
  model?: string;
  style: string;
  detail: ImageDetail;
  concurrency: string;
  timeout: string;
  retries: string;
  force?: boolean;
  dryRun?: boolean;
  batch?: boolean;
  wait?: boolean;
  poll: string;
  priceInput?: string;
  priceOutput?: string;
  tokenizer?: string;
  check: boolean;
  clear?: boolean;
  json?: boolean;
}

function positive(name: string, value: string, { integer = true, min = 1 } = {}): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) usage(`--${name} must be ${integer ? 'an integer' : 'a number'} ≥ ${min}; got ${JSON.stringify(value)}`);
  return n;
}

/** Registers `booth caption` on the program. */
export function registerCaptionCommands(cli: Cli): void {
  cli.program
    .command('caption <session> [photo] [text]')
    .description(
      'caption the accepted photos of a prepared session; with <photo> and "text", set one caption by hand (never overwritten). ' +
        'Without OPENAI_API_KEY the offline captioner writes captions from what prepare measured; with it, a vision model does ' +
        '(OPENAI_BASE_URL selects any OpenAI-compatible server)',
    )
    .option('--list', 'show every caption with its source, the captioner flags and its CLIP token count')
    .addOption(new Option('--captioner <which>', 'auto: openai when OPENAI_API_KEY is set, else offline').choices(['auto', 'openai', 'offline']).default('auto'))
    .option('--model <name>', `vision model (default $BOOTH_CAPTION_MODEL or ${DEFAULT_MODEL})`)
    .option('--style <style>', `caption style: ${listStyles().join(', ')} or a path to a .md prompt template`, DEFAULT_STYLE)
    .addOption(new Option('--detail <detail>', 'image detail sent to the model').choices(['low', 'high', 'auto']).default('low'))
    .option('--concurrency <n>', 'requests in flight at once', '4')
    .option('--timeout <seconds>', 'per-request timeout', '60')
    .option('--retries <n>', 'retries per photo on 429/5xx/timeouts (Retry-After is honoured)', '4')
    .option('--force', 'caption again even where an up-to-date caption or cached result exists (hand captions stay)')
    .option('--dry-run', 'show what would be captioned and an estimate of the cost; call nothing')
    .option('--batch', 'use the Batch API (half price, within 24 h): submit, or collect the pending batch')
    .option('--wait', 'with --batch: poll until the batch ends and apply it')
    .option('--poll <seconds>', 'with --batch --wait: seconds between polls', '30')
    .option('--price-input <usd>', 'price per 1M input tokens (default: the public price of the model)')
    .option('--price-output <usd>', 'price per 1M output tokens')
    .option('--tokenizer <dir>', "the base model's local Diffusers folder (or a tokenizer folder) for exact 77-token checks (default $BOOTH_TOKENIZER; else estimated)")
    .option('--no-check', 'with "text": store it even without the trigger phrase and class noun exactly once')
    .option('--clear', 'with <photo>: drop its hand caption so the next run captions it')
    .option('--json', 'print JSON')
    .action(async (session: string, photo: string | undefined, text: string | undefined, o: CaptionOptions) => {
      checkName(session);
      const json = Boolean(o.json);
      const { sessions, logger } = await cli.context();
      const tokenizerDir = o.tokenizer ?? process.env.BOOTH_TOKENIZER;
      const tokenizer: ClipTokenizer | null = tokenizerDir ? await loadClipTokenizer(tokenizerDir) : null;

      if (o.list) {
        if (photo !== undefined) usage('--list shows the whole session; leave out <photo>');
        const lines = await listCaptions(sessions, session, tokenizer);
        print(json, { session, photos: lines }, () => formatLines(lines, tokenizer));
        return;
      }
      if (photo !== undefined) {
        if (text === undefined && !o.clear) {
          const line = (await listCaptions(sessions, session, tokenizer)).find((l) => l.name === photo || (photo.length >= 6 && l.sha256.startsWith(photo.toLowerCase())));
          if (!line) throw new BoothError('INVALID_ARGUMENT', `no captioned photo in "${session}" matches ${JSON.stringify(photo)}; see \`booth caption ${session} --list\``);
          print(json, line, () => formatLines([line], tokenizer));
          return;
        }
        if (text !== undefined && o.clear) usage('give either "text" or --clear, not both');
        const line = await setHandCaption(sessions, session, photo, o.clear ? null : (text as string), { check: o.check, tokenizer });
        print(json, line, () => `${line.name}: ${line.caption ?? '(no caption)'} [${line.source ?? 'none'}]${line.warning ? `\nwarning: ${line.warning}` : ''}`);
        return;
      }

      const concurrency = positive('concurrency', o.concurrency);
      const timeoutMs = positive('timeout', o.timeout, { integer: false, min: 0.001 }) * 1000;
      const retries = positive('retries', o.retries, { min: 0 });
      const style = await loadStyle(o.style);
      const apiKey = process.env.OPENAI_API_KEY ?? '';
      const useModel = o.captioner === 'openai' || (o.captioner === 'auto' && apiKey !== '');
      if (o.captioner === 'openai' && apiKey === '') usage('--captioner openai needs OPENAI_API_KEY (any non-empty value for a local server without keys)');
      if (o.batch && !useModel) usage('--batch needs a model captioner: set OPENAI_API_KEY');
      let captioner: Captioner;
      if (useModel) {
        const model = o.model ?? process.env.BOOTH_CAPTION_MODEL ?? DEFAULT_MODEL;
        let price = priceFor(model);
        if (o.priceInput !== undefined || o.priceOutput !== undefined) {
          if (o.priceInput === undefined || o.priceOutput === undefined) usage('give both --price-input and --price-output');
          price = { input: positive('price-input', o.priceInput, { integer: false, min: 0 }), output: positive('price-output', o.priceOutput, { integer: false, min: 0 }) };
        }
        captioner = createOpenAICaptioner({
          apiKey,
          baseURL: process.env.OPENAI_BASE_URL || null,
          model,
          style,
          detail: o.detail,
          timeoutMs: Math.round(timeoutMs),
          maxRetries: retries,
          price,
          logger,
        });
      } else {
        captioner = createOfflineCaptioner({ style });
      }

      const bars = phasedProgress(json);
      let report: CaptionReport;
      try {
        report =
          o.batch && captioner.source === 'model'
            ? await captionSessionBatch(sessions, session, {
                captioner: captioner as ReturnType<typeof createOpenAICaptioner>,
                force: o.force,
                dryRun: o.dryRun,
                tokenizer,
                logger,
                wait: o.wait,
                pollMs: positive('poll', o.poll, { integer: false, min: 0.001 }) * 1000,
              })
            : await captionSession(sessions, session, { captioner, force: o.force, dryRun: o.dryRun, concurrency, tokenizer, logger, onProgress: bars.onProgress });
      } finally {
        bars.stop();
      }
      print(json, report, () => formatReport(report, tokenizer));
      if (report.counts.failed > 0) process.exitCode = 1;
    });
}

function formatLines(lines: CaptionPhotoReport[], tokenizer: ClipTokenizer | null): string {
  if (lines.length === 0) return 'No captions yet.';
  const out = lines.map((l) => {
    const tokens = l.tokens ? `${l.tokens.exact ? '' : '≈'}${l.tokens.count}/${l.tokens.limit}` : '-';
    const flags = l.flags.length ? ` [${l.flags.join(', ')}]` : '';
    const extra = [l.warning ? `  warning: ${l.warning}` : '', l.error ? `  error: ${l.error}` : ''].filter(Boolean);
    return [`${l.name}  ${l.outcome}  ${l.source ?? 'none'}  ${tokens}${flags}\n  ${l.caption ?? '(no caption)'}`, ...extra].join('\n');
  });
  out.push(tokenizer ? `Token counts: exact (CLIP tokenizer in ${tokenizer.source}).` : 'Token counts marked ≈ are estimates; pass --tokenizer <base model folder> for exact ones.');
  return out.join('\n');
}

function formatReport(r: CaptionReport, tokenizer: ClipTokenizer | null): string {
  const lines: string[] = [];
  const who = r.captioner.source === 'model' ? `${r.captioner.model} (style ${r.captioner.style})` : `offline captioner (style ${r.captioner.style})`;
  lines.push(`${r.dryRun ? 'Dry run: ' : ''}session ${r.session}, ${who}`);
  lines.push(formatLines(r.photos, tokenizer));
  const c = r.counts;
  lines.push(
    Object.entries(c)
      .filter(([, n]) => n > 0)
      .map(([k, n]) => `${n} ${k === 'hand' ? 'by hand' : k}`)
      .join(', ') || 'nothing to do',
  );
  if (r.estimate) {
    const e = r.estimate;
    lines.push(
      `Estimate for ${e.photos} photo(s): ~${e.inputTokens} input + ~${e.outputTokens} output tokens ≈ ${formatUsd(e.costUsd)}` +
        (r.captioner.source === 'model' ? ` (${formatUsd(e.batchCostUsd)} with --batch)` : ''),
    );
  }
  if (r.batch) lines.push(`Batch ${r.batch.id ?? '(being created)'}: ${r.batch.status}${r.batch.status === 'completed' ? '' : ` — run the same command again (or add --wait) to collect it`}`);
  if (!r.dryRun && r.captioner.source === 'model') {
    lines.push(`Cost: ${r.usage.inputTokens} input + ${r.usage.outputTokens} output tokens in ${r.usage.requests} request(s) = ${formatUsd(r.usage.costUsd)}`);
  }
  return lines.join('\n');
}
