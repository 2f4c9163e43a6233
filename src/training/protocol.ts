/**
 * The trainer's progress events (docs/progress-protocol.md) as zod schemas, and the parser the
 * worker uses on each stdout line. Readers must ignore unknown fields and unknown event names
 * (forward compatibility), so every schema is loose and {@link parseEventLine} returns `null` for
 * anything that is not a known event instead of failing the run.
 */
import { z } from 'zod';

/** Protocol version this worker speaks. */
export const PROTOCOL_VERSION = 1;

/** Exit code of a trainer (and worker) that stopped on a signal with a resume state: EX_TEMPFAIL. */
export const EXIT_PREEMPTED = 75;
/**
 * Exit code of a worker stopped on a person's request (`booth stop`): resumable, but a scheduler
 * must not requeue it (75 asks for a requeue).
 */
export const EXIT_STOPPED = 76;
/** Exit code for an invalid command line or spec. */
export const EXIT_USAGE = 2;

const num = z.number();
const time = z.string();

/** Every event the protocol defines, discriminated by `event`. */
export const trainerEventSchema = z.discriminatedUnion('event', [
  z.looseObject({
    event: z.literal('started'),
    time,
    protocol: z.number().int(),
    total_steps: z.number().int().nonnegative(),
    start_step: z.number().int().nonnegative(),
    resumed_from: z.string().nullable(),
    stages: z.array(z.looseObject({ name: z.string(), steps: z.number().int(), start: z.number().int() })),
    device: z.string(),
    precision: z.string(),
  }),
  z.looseObject({ event: z.literal('class_images'), time, done: z.number().int(), total: z.number().int(), dir: z.string() }),
  z.looseObject({
    event: z.literal('step'),
    time,
    step: z.number().int().positive(),
    total: z.number().int().positive(),
    stage: z.string(),
    stage_step: z.number().int(),
    stage_total: z.number().int(),
    loss: num,
    lr: num,
    it_per_s: num.nullable(),
    eta_s: num.nullable(),
    vram_gb: num.nullable(),
    epoch: z.number().int().nonnegative(),
  }),
  z.looseObject({
    event: z.literal('resume_state'),
    time,
    step: z.number().int().nonnegative(),
    path: z.string(),
    reason: z.enum(['interval', 'stage_end', 'signal', 'final']),
    bytes: z.number().int().nonnegative(),
  }),
  z.looseObject({ event: z.literal('sample'), time, step: z.number().int().nonnegative(), index: z.number().int().nonnegative(), prompt: z.string(), path: z.string() }),
  z.looseObject({ event: z.literal('stage_done'), time, stage: z.string(), step: z.number().int() }),
  z.looseObject({ event: z.literal('done'), time, step: z.number().int(), output: z.string(), format: z.enum(['diffusers', 'lora']), bytes: z.number().int().nonnegative() }),
  z.looseObject({ event: z.literal('preempted'), time, step: z.number().int().nonnegative(), signal: z.string(), state: z.string().nullable() }),
  z.looseObject({ event: z.literal('error'), time, message: z.string(), kind: z.string(), step: z.number().int().nullable() }),
]);
/** A parsed trainer event. */
export type TrainerEvent = z.infer<typeof trainerEventSchema>;
/** The event with name `E`. */
export type EventOf<E extends TrainerEvent['event']> = Extract<TrainerEvent, { event: E }>;

/** Result of parsing one stdout line. */
export type ParsedLine =
  | { kind: 'event'; event: TrainerEvent }
  /** JSON with an unknown `event` name: ignored by design. */
  | { kind: 'unknown'; name: string }
  /** Not JSON, or a known event with bad fields: logged, never fatal. */
  | { kind: 'invalid'; reason: string };

/**
 * Parses one line of trainer stdout.
 * @example parseEventLine('{"event":"stage_done","time":"…","stage":"unet","step":10}')
 */
export function parseEventLine(line: string): ParsedLine {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return { kind: 'invalid', reason: 'not JSON' };
  }
  if (typeof value !== 'object' || value === null || typeof (value as { event?: unknown }).event !== 'string') {
    return { kind: 'invalid', reason: 'no "event" field' };
  }
  const name = (value as { event: string }).event;
  const known = trainerEventSchema.options.some((o) => o.shape.event.value === name);
  if (!known) return { kind: 'unknown', name };
  const r = trainerEventSchema.safeParse(value);
  if (!r.success) return { kind: 'invalid', reason: `${name}: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}` };
  return { kind: 'event', event: r.data };
}

/** `check` output (docs/progress-protocol.md). */
export const checkReportSchema = z.looseObject({
  event: z.literal('check'),
  protocol: z.number().int(),
  python: z.string().nullable(),
  torch: z.string().nullable(),
  cuda: z.string().nullable(),
  diffusers: z.string().nullable(),
  bitsandbytes: z.string().nullable().optional(),
  bf16: z.boolean().optional(),
  gpus: z.array(z.looseObject({ index: z.number().int(), name: z.string(), total_gb: num, free_gb: num })),
  problems: z.array(z.string()),
});
/** A parsed `check` report. */
export type CheckReport = z.infer<typeof checkReportSchema>;

/** The `COMPLETE` marker of a resume state: every other file with its size and SHA-256. */
export const completeMarkerSchema = z.looseObject({
  step: z.number().int().nonnegative(),
  files: z.record(z.string(), z.object({ size: z.number().int().nonnegative(), sha256: z.string().regex(/^[0-9a-f]{64}$/) })),
});
/** A parsed `COMPLETE` marker. */
export type CompleteMarker = z.infer<typeof completeMarkerSchema>;
