/**
 * Exports of trained runs, inside the object store: pick the run (the newest whose
 * `runs/<run>/model/COMPLETE` marker exists, or the one asked for), read its job spec
 * defensively (the trainer owns that format), convert its Diffusers folder or LoRA file, and
 * write `sessions/<s>/exports/<name>.safetensors`, then the `<name>.yaml` sidecar for SD 2.x
 * v-prediction, then `<name>.json` (hashes, size, metadata) — each with the store's atomic put, so
 * a failed export leaves an earlier one of the same name intact. Also the way back out:
 * `downloadExport` copies an export to a local file, verifying its SHA-256 on the way.
 */
import { createHash } from 'node:crypto';
import { mkdir, stat } from 'node:fs/promises';
import { RUN_ID_PATTERN, runKeys as trainingRunKeys } from '../training/runs.js';
import path from 'node:path';
import { z } from 'zod';
import { BoothError, isBoothError } from '../errors.js';
import type { Logger } from '../log.js';
import { compareKeys, listAll, putJson, readJson } from '../storage/index.js';
import type { ObjectStore } from '../storage/types.js';
import { planCheckpoint } from './checkpoint.js';
import { storeFolder } from './diffusers.js';
import { openStoreSource, writeFileAtomic } from './io.js';
import { planLora, LORA_FILE } from './lora.js';
import type { FlowLoraFormat } from './lora-flow.js';
import { autoV2, needsV2Yaml, v2VPredictionYaml, type Architecture, type ModelFacts, type PredictionType } from './metadata.js';
import { writePlanToStore, type OutputDType, type ProgressFn } from './writer.js';

/** Export names: what a file name and a key segment both accept. */
export const EXPORT_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

/** The parts of a job spec an export reads; everything else passes through untouched. */
const specSchema = z.looseObject({
  base: z.looseObject({
    architecture: z.enum(['sd1', 'sd2', 'sdxl', 'flux', 'sd3']).optional(),
    model: z.string().optional(),
    predictionType: z.enum(['epsilon', 'v_prediction']).optional(),
  }).optional(),
  resolution: z.number().int().positive().optional(),
  mode: z.looseObject({ type: z.enum(['full', 'lora']).optional(), rank: z.number().optional(), alpha: z.number().optional() }).optional(),
  session: z.string().optional(),
  run: z.string().optional(),
  steps: z.number().int().nonnegative().optional(),
  maxSteps: z.number().int().nonnegative().optional(),
});
/** The job spec fields an export uses. */
export type ExportSpec = z.infer<typeof specSchema>;

const manifestSchema = z.looseObject({ subject: z.looseObject({ trigger: z.string().optional(), classNoun: z.string().optional() }).optional() });
const statusSchema = z.looseObject({ step: z.number().int().nonnegative().optional() });

/** Keys of a session's runs and exports. */
export function exportKeys(session: string, name: string) {
  const root = `sessions/${session}/exports/${name}`;
  return { file: `${root}.safetensors`, yaml: `${root}.yaml`, record: `${root}.json` };
}
/** Keys of one run that an export reads (the layout is owned by `training/runs.ts`). */
function runKeys(session: string, run: string) {
  const k = trainingRunKeys(session, run);
  return { spec: k.spec, status: k.status, model: k.modelPrefix.slice(0, -1), complete: k.modelMarker };
}

/**
 * The runs of a session whose final model is complete, oldest first (run ids sort by time).
 * @example const runs = await completeRuns(store, 'alice'); const newest = runs.at(-1);
 */
export async function completeRuns(store: ObjectStore, session: string): Promise<string[]> {
  const prefix = `sessions/${session}/runs/`;
  const runs: string[] = [];
  for await (const info of listAll(store, prefix)) {
    const m = /^([^/]+)\/model\/COMPLETE$/.exec(info.key.slice(prefix.length));
    if (m?.[1] !== undefined && RUN_ID_PATTERN.test(m[1])) runs.push(m[1]);
  }
  return runs.sort(compareKeys);
}

/** Options of {@link exportRun}. */
export interface ExportOptions {
  /** Run id; default the newest complete run. */
  run?: string;
  /** Resume-state step; not exportable yet (the trainer's state format is not final). */
  step?: number;
  /** Export name (file stem); default `<session>-<run>`. */
  name?: string;
  /** Output precision (default fp16). */
  dtype?: OutputDType;
  /** FLUX.1/SD 3.5 LoRAs: tensor names (default kohya for FLUX.1, diffusers for SD 3.5). */
  loraFormat?: FlowLoraFormat;
  logger?: Logger;
  onProgress?: ProgressFn;
}

/** The record stored as `exports/<name>.json` and returned by {@link exportRun}. */
export interface ExportRecord {
  name: string;
  session: string;
  run: string;
  kind: 'checkpoint' | 'lora';
  architecture: Architecture;
  predictionType: PredictionType;
  dtype: OutputDType;
  /** Store keys. */
  key: string;
  yamlKey: string | null;
  size: number;
  sha256: string;
  autov2: string;
  metadata: Record<string, string>;
  createdAt: string;
}

async function readOptional<T>(store: ObjectStore, key: string, parse: (v: unknown) => T): Promise<T | undefined> {
  try {
    return await readJson(store, key, parse);
  } catch (err) {
    if (isBoothError(err, 'NOT_FOUND')) return undefined;
    throw err;
  }
}

/**
 * The release of a FLUX.1 or SD 3.5 base from its model id or folder name (`…FLUX.1-schnell`,
 * `…stable-diffusion-3.5-large`), which a LoRA's tensors cannot tell; undefined for other families.
 */
export function releaseOf(arch: string | undefined, model: string | undefined): 'dev' | 'schnell' | 'medium' | 'large' | undefined {
  const m = (model ?? '').toLowerCase();
  if (arch === 'flux') return m.includes('schnell') ? 'schnell' : 'dev';
  if (arch === 'sd3') return m.includes('large') ? 'large' : m.includes('medium') ? 'medium' : undefined;
  return undefined;
}

function parseSpec(v: unknown, key: string): ExportSpec {
  const r = specSchema.safeParse(v);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new BoothError('INVALID_ARGUMENT', `${key}: field "${issue?.path.join('.') ?? '?'}" is invalid (${issue?.message ?? 'bad value'}); the run's spec is damaged`);
  }
  return r.data;
}

/**
 * Export one run of a session to `sessions/<session>/exports/<name>.safetensors`.
 *
 * @param store - the store holding the session
 * @param session - session name (validated by the caller)
 * @param options - run, name, dtype, progress
 * @returns the stored record (hashes, size, keys, metadata)
 * @throws BoothError `NOT_FOUND` when there is no complete run (or the named run has no
 *   `model/COMPLETE`); `INVALID_ARGUMENT` for a bad name, a `step`, or a model that does not
 *   convert; `STORAGE` for write failures — an earlier export of the same name stays intact
 * @example
 * const rec = await exportRun(store, 'alice', { dtype: 'fp16' });
 * console.log(rec.sha256, rec.autov2);
 */
export async function exportRun(store: ObjectStore, session: string, options: ExportOptions = {}): Promise<ExportRecord> {
  if (options.step !== undefined) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `--step ${options.step}: exporting a resume state is not supported yet (its format belongs to the trainer and is not final); only the final model of a run (runs/<run>/model/) can be exported — drop --step`,
    );
  }
  let run = options.run;
  if (run === undefined) {
    run = (await completeRuns(store, session)).at(-1);
    if (run === undefined) throw new BoothError('NOT_FOUND', `session "${session}" has no run with a complete model (runs/<run>/model/COMPLETE); train first or wait for the run to finish`);
  }
  const marker = await store.head(runKeys(session, run).complete);
  if (!marker) {
    throw new BoothError('NOT_FOUND', `run "${run}" of session "${session}" has no complete model (runs/${run}/model/COMPLETE is missing); wait for training to finish or pick another run`);
  }
  const name = options.name ?? `${session}-${run}`.replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 100);
  if (!EXPORT_NAME_PATTERN.test(name)) throw new BoothError('INVALID_ARGUMENT', `export name ${JSON.stringify(name)} is not valid: use 1–100 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  const rk = runKeys(session, run);
  const spec = (await readOptional(store, rk.spec, (v) => parseSpec(v, rk.spec))) ?? {};
  const status = await readOptional(store, rk.status, (v) => statusSchema.safeParse(v).data ?? {});
  const manifest = await readOptional(store, `sessions/${session}/session.json`, (v) => manifestSchema.safeParse(v).data ?? {});
  const dtype = options.dtype ?? 'fp16';
  const trigger = [manifest?.subject?.trigger, manifest?.subject?.classNoun].filter(Boolean).join(' ') || undefined;
  const arch = spec.base?.architecture;
  const resolution = spec.resolution;
  const release = releaseOf(arch, spec.base?.model);
  const predictionType: PredictionType | undefined =
    spec.base?.predictionType ?? (arch === 'sd2' && resolution !== undefined ? (resolution >= 768 ? 'v_prediction' : 'epsilon') : undefined);
  const steps = status?.step ?? spec.steps ?? spec.maxSteps;
  const facts: Record<string, string> = {
    // The model's date is when its marker was stored, not the time of the export: exporting the
    // same run with the same options again (after a crash, or to check) gives the same bytes.
    'modelspec.date': marker.mtime.toISOString().replace(/\.\d{3}Z$/, 'Z'),
    'booth.session': session,
    'booth.run': run,
    ...(spec.base?.model ? { 'booth.base_model': spec.base.model } : {}),
    ...(steps !== undefined ? { 'booth.steps': String(steps) } : {}),
    ...(resolution !== undefined ? { 'booth.resolution': String(resolution) } : {}),
    ...(spec.mode?.type ? { 'booth.mode': spec.mode.type } : {}),
  };
  const common = {
    dtype,
    title: name,
    metadata: facts,
    ...(arch ? { architecture: arch } : {}),
    ...(predictionType ? { predictionType } : {}),
    ...(trigger ? { triggerPhrase: trigger } : {}),
  };
  const flowLora = { ...(release ? { release } : {}), ...(options.loraFormat ? { loraFormat: options.loraFormat } : {}) };
  const keys = exportKeys(session, name);
  const isLora = spec.mode?.type === 'lora' || (spec.mode?.type === undefined && (await store.head(`${rk.model}/${LORA_FILE}`)) !== null);
  const planned = isLora
    ? await planLora(await openStoreSource(store, `${rk.model}/${LORA_FILE}`), { ...common, ...flowLora, ...(resolution !== undefined ? { resolution } : {}) })
    : await planCheckpoint(storeFolder(store, rk.model), { ...common, ...(release ? { release } : {}) });
  const factsOut: ModelFacts = planned.facts;
  let written;
  try {
    options.logger?.info({ session, run, name, tensors: planned.plan.tensors.length, bytes: planned.plan.header.fileSize }, 'export: writing');
    written = await writePlanToStore(planned.plan, store, keys.file, options.onProgress ? { onProgress: options.onProgress } : {});
  } finally {
    await planned.close();
  }
  let yamlKey: string | null = null;
  if (needsV2Yaml(factsOut)) {
    await store.put(keys.yaml, v2VPredictionYaml(), { contentType: 'application/yaml' });
    yamlKey = keys.yaml;
  } else {
    await store.delete(keys.yaml);
  }
  const record: ExportRecord = {
    name,
    session,
    run,
    kind: isLora ? 'lora' : 'checkpoint',
    architecture: factsOut.architecture,
    predictionType: factsOut.predictionType,
    dtype,
    key: keys.file,
    yamlKey,
    size: written.size,
    sha256: written.sha256,
    autov2: autoV2(written.sha256),
    metadata: planned.plan.metadata,
    createdAt: new Date().toISOString(),
  };
  await putJson(store, keys.record, record);
  return record;
}

/**
 * The exports of a session (their records), by name.
 * @example for (const e of await listExports(store, 'alice')) console.log(e.name, e.autov2);
 */
export async function listExports(store: ObjectStore, session: string): Promise<ExportRecord[]> {
  const prefix = `sessions/${session}/exports/`;
  const out: ExportRecord[] = [];
  for await (const info of listAll(store, prefix)) {
    if (!info.key.endsWith('.json')) continue;
    out.push(await readJson<ExportRecord>(store, info.key));
  }
  return out;
}

/** Result of {@link downloadExport}. */
export interface DownloadResult {
  file: string;
  yaml: string | null;
  size: number;
  sha256: string;
  autov2: string;
}

/**
 * Copy an export to a local file (atomically), checking its SHA-256 against the stored record.
 *
 * @param store - the store
 * @param session - session name
 * @param name - export name
 * @param dest - a file path, or an existing folder to put `<name>.safetensors` in
 * @returns the local paths and the verified hash
 * @throws BoothError `NOT_FOUND` when the export does not exist; `STORAGE` when the bytes do not
 *   match the record (the local file is then not created)
 * @example await downloadExport(store, 'alice', 'alice-r1', './models/');
 */
export async function downloadExport(store: ObjectStore, session: string, name: string, dest: string): Promise<DownloadResult> {
  if (!EXPORT_NAME_PATTERN.test(name)) throw new BoothError('INVALID_ARGUMENT', `export name ${JSON.stringify(name)} is not valid`);
  const keys = exportKeys(session, name);
  const record = await readOptional(store, keys.record, (v) => v as Partial<ExportRecord>);
  if (!record || !(await store.head(keys.file))) {
    throw new BoothError('NOT_FOUND', `session "${session}" has no export "${name}"; list them with \`booth exports ${session}\``);
  }
  // `./models/` names a folder even before it exists, as `cp` reads a trailing slash.
  if (/[\\/]$/.test(dest)) await mkdir(dest, { recursive: true });
  const isDir = await stat(dest).then((s) => s.isDirectory(), () => false);
  const file = isDir ? path.join(dest, `${name}.safetensors`) : dest;
  const source = await openStoreSource(store, keys.file);
  const hash = createHash('sha256');
  let size = 0;
  async function* chunks(): AsyncGenerator<Uint8Array> {
    for await (const c of source.read(0, source.size)) {
      hash.update(c);
      size += c.byteLength;
      yield c;
    }
    const hex = hash.digest('hex');
    if (record?.sha256 !== undefined && hex !== record.sha256) {
      throw new BoothError('STORAGE', `export "${name}" in ${store.url} does not match its recorded SHA-256 (${record.sha256.slice(0, 10)}… vs ${hex.slice(0, 10)}…); export it again`);
    }
    sha = hex;
  }
  let sha = '';
  try {
    await writeFileAtomic(file, chunks());
  } finally {
    await source.close();
  }
  let yaml: string | null = null;
  if (await store.head(keys.yaml)) {
    yaml = file.replace(/\.safetensors$/, '') + '.yaml';
    const ys = await openStoreSource(store, keys.yaml);
    try {
      const bytes = await ys.readBytes(0, ys.size);
      await writeFileAtomic(yaml, (async function* () {
        yield bytes;
      })());
    } finally {
      await ys.close();
    }
  }
  return { file, yaml, size, sha256: sha, autov2: autoV2(sha) };
}
