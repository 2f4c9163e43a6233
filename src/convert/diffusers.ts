/**
 * Reading a Diffusers model folder — `unet/`, `vae/`, `text_encoder/`, `text_encoder_2/`, each
 * with `config.json` and its weights as one `*.safetensors`, a sharded set named by
 * `*.safetensors.index.json` (`weight_map`: tensor → shard file), or a variant of either
 * (`diffusion_pytorch_model.fp16.safetensors`, `….safetensors.index.fp16.json`) — from a local
 * folder or a prefix in the object store, through one small {@link ModelFolder} interface. Only
 * headers are read here; tensor data stays on disk until the writer streams it. Pickle weights
 * (`.bin`) are refused: loading them means running code from the file.
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { BoothError, errorMessage, isBoothError } from '../errors.js';
import { listAll, readAll } from '../storage/index.js';
import type { ObjectStore } from '../storage/types.js';
import { openFileSource, openStoreSource, type ByteSource } from './io.js';
import { readHeader, type SafetensorsFile, type TensorInfo } from './safetensors.js';

/** A folder of model files, local or in a store. */
export interface ModelFolder {
  /** Path or `store-url/prefix`, for messages. */
  readonly where: string;
  /** Names of the files directly inside `sub` ('' for the top), sorted; [] when it does not exist. */
  list(sub: string): Promise<string[]>;
  /** A file's text, or null when it does not exist. */
  readText(rel: string): Promise<string | null>;
  /** Open a file for ranged reads. */
  open(rel: string): Promise<ByteSource>;
}

/**
 * A local folder as a {@link ModelFolder}.
 * @example const folder = localFolder('./my-model');
 */
export function localFolder(dir: string): ModelFolder {
  const root = path.resolve(dir);
  return {
    where: root,
    async list(sub) {
      try {
        const entries = await readdir(path.join(root, sub), { withFileTypes: true });
        return entries.filter((e) => e.isFile()).map((e) => e.name).sort();
      } catch (err) {
        if (['ENOENT', 'ENOTDIR'].includes((err as NodeJS.ErrnoException).code ?? '')) return [];
        throw new BoothError('STORAGE', `cannot list "${path.join(root, sub)}": ${errorMessage(err)}`, { cause: err });
      }
    },
    async readText(rel) {
      try {
        return await readFile(path.join(root, rel), 'utf8');
      } catch (err) {
        if (['ENOENT', 'ENOTDIR'].includes((err as NodeJS.ErrnoException).code ?? '')) return null;
        throw new BoothError('STORAGE', `cannot read "${path.join(root, rel)}": ${errorMessage(err)}`, { cause: err });
      }
    },
    open: (rel) => openFileSource(path.join(root, rel)),
  };
}

/**
 * A prefix of an object store as a {@link ModelFolder}.
 * @param prefix - e.g. `sessions/alice/runs/r1/model` (no trailing slash)
 * @example const folder = storeFolder(store, 'sessions/alice/runs/r1/model');
 */
export function storeFolder(store: ObjectStore, prefix: string): ModelFolder {
  const base = prefix.replace(/\/+$/, '');
  const key = (rel: string) => (rel === '' ? base : `${base}/${rel}`);
  return {
    where: `${store.url}/${base}`,
    async list(sub) {
      const p = `${key(sub)}/`;
      const names: string[] = [];
      for await (const info of listAll(store, p)) {
        const rest = info.key.slice(p.length);
        if (!rest.includes('/')) names.push(rest);
      }
      return names.sort();
    },
    async readText(rel) {
      try {
        return (await readAll(store, key(rel))).toString('utf8');
      } catch (err) {
        if (isBoothError(err, 'NOT_FOUND')) return null;
        throw err;
      }
    },
    open: (rel) => openStoreSource(store, key(rel)),
  };
}

/** Where one tensor of a component lives. */
export interface TensorRef {
  file: SafetensorsFile;
  info: TensorInfo;
}

/** One component's weights and config. */
export interface Component {
  /** Folder name (`unet`, `vae`, …). */
  name: string;
  /** Parsed config.json. */
  config: unknown;
  /** The weight files used (relative paths). */
  files: string[];
  /** All tensors, by name. */
  tensors: Map<string, TensorRef>;
  /** The opened weight files (closed by {@link closeComponent}). */
  opened: SafetensorsFile[];
}

/** Parse JSON text, naming the file when it is not JSON. */
export function parseJson(text: string, where: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new BoothError('INVALID_ARGUMENT', `${where} is not valid JSON (${errorMessage(err)})`, { cause: err });
  }
}

/**
 * Choose the weight files of a component: `<base>.safetensors`, else the sharded index, else
 * the one variant present (or the requested `variant`).
 */
function chooseWeights(names: string[], base: string, variant: string | undefined, where: string): { single?: string; index?: string; variant?: string } {
  const esc = base.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const singleRe = new RegExp(`^${esc}\\.([A-Za-z0-9_-]+)\\.safetensors$`);
  const indexRe = new RegExp(`^${esc}\\.safetensors\\.index\\.([A-Za-z0-9_-]+)\\.json$`);
  const pick = (v: string | undefined) => {
    const single = v === undefined ? `${base}.safetensors` : `${base}.${v}.safetensors`;
    const index = v === undefined ? `${base}.safetensors.index.json` : `${base}.safetensors.index.${v}.json`;
    if (names.includes(single)) return { single, ...(v !== undefined ? { variant: v } : {}) };
    if (names.includes(index)) return { index, ...(v !== undefined ? { variant: v } : {}) };
    return null;
  };
  if (variant !== undefined) {
    const r = pick(variant);
    if (r) return r;
    throw new BoothError('NOT_FOUND', `${where} has no "${variant}" variant weights (${base}.${variant}.safetensors or ${base}.safetensors.index.${variant}.json); files: ${names.join(', ') || 'none'}`);
  }
  const plain = pick(undefined);
  if (plain) return plain;
  const variants = new Set<string>();
  for (const n of names) {
    const m = singleRe.exec(n) ?? indexRe.exec(n);
    // Shards of a variant ("base.fp16-00001-of-00002.safetensors") are found through their index.
    if (m?.[1] !== undefined && !/-\d+-of-\d+$/.test(m[1])) variants.add(m[1]);
  }
  if (variants.size === 1) return pick([...variants][0]) ?? {};
  if (variants.size > 1) throw new BoothError('INVALID_ARGUMENT', `${where} has several weight variants (${[...variants].join(', ')}); choose one with --variant`);
  const pickle = names.some((n) => n.endsWith('.bin') || n.endsWith('.ckpt') || n.endsWith('.pt'));
  throw new BoothError(
    'NOT_FOUND',
    pickle
      ? `${where} has only pickle weights (.bin); Booth reads safetensors only — re-save the model with safe_serialization=True`
      : `${where} has no ${base}.safetensors (or sharded index); files: ${names.join(', ') || 'none'}`,
  );
}

/** Options of {@link loadComponent}. */
export interface LoadComponentOptions {
  /** Weight variant to require, e.g. `fp16`. */
  variant?: string;
}

/**
 * Read a component's config and the headers of its weight files.
 *
 * @param folder - the model folder
 * @param name - `unet`, `vae`, `text_encoder` or `text_encoder_2`
 * @param base - weight file stem: `diffusion_pytorch_model` (unet, vae) or `model` (text encoders)
 * @returns the component; its sources stay open until {@link closeComponent}
 * @throws BoothError `NOT_FOUND` for a missing component, config or shard; `INVALID_ARGUMENT`
 *   for a bad header, a bad index, or a tensor found in two shards
 * @example
 * const unet = await loadComponent(localFolder('./model'), 'unet', 'diffusion_pytorch_model');
 */
export async function loadComponent(folder: ModelFolder, name: string, base: string, options: LoadComponentOptions = {}): Promise<Component> {
  const where = `${folder.where}/${name}`;
  const names = await folder.list(name);
  if (names.length === 0) throw new BoothError('NOT_FOUND', `the model folder ${folder.where} has no "${name}/" component; is it a complete Diffusers folder?`);
  const configText = await folder.readText(`${name}/config.json`);
  if (configText === null) throw new BoothError('NOT_FOUND', `${where}/config.json is missing; the converter needs it to know the architecture`);
  const config = parseJson(configText, `${where}/config.json`);
  const choice = chooseWeights(names, base, options.variant, where);
  const files: string[] = [];
  const expectedIn = new Map<string, string>();
  if (choice.single !== undefined) files.push(choice.single);
  else if (choice.index !== undefined) {
    const text = (await folder.readText(`${name}/${choice.index}`)) ?? '';
    const index = parseJson(text, `${where}/${choice.index}`) as { weight_map?: unknown };
    const map = index.weight_map;
    if (map === null || typeof map !== 'object' || Array.isArray(map)) throw new BoothError('INVALID_ARGUMENT', `${where}/${choice.index} has no "weight_map" object`);
    for (const [tensor, shard] of Object.entries(map as Record<string, unknown>)) {
      if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\') || !shard.endsWith('.safetensors')) {
        throw new BoothError('INVALID_ARGUMENT', `${where}/${choice.index}: tensor "${tensor}" names the shard ${JSON.stringify(shard)}, which is not a .safetensors file in that folder`);
      }
      expectedIn.set(tensor, shard);
      if (!files.includes(shard)) files.push(shard);
    }
    files.sort();
  }
  const tensors = new Map<string, TensorRef>();
  const opened: SafetensorsFile[] = [];
  try {
    for (const f of files) {
      if (!names.includes(f)) throw new BoothError('NOT_FOUND', `${where}/${f} is missing (named by ${choice.index ?? 'the index'}); the download or upload is incomplete`);
      const source = await folder.open(`${name}/${f}`);
      let file: SafetensorsFile;
      try {
        file = await readHeader(source);
      } catch (err) {
        await source.close();
        throw err;
      }
      opened.push(file);
      for (const [t, info] of file.tensors) {
        const other = tensors.get(t);
        if (other) throw new BoothError('INVALID_ARGUMENT', `${where}: tensor "${t}" is in both ${other.file.source.name} and ${f}; the shards are inconsistent`);
        const want = expectedIn.get(t);
        if (choice.index !== undefined && want !== f) {
          throw new BoothError('INVALID_ARGUMENT', `${where}: tensor "${t}" is in ${f} but ${choice.index} ${want === undefined ? 'does not list it' : `says ${want}`}`);
        }
        tensors.set(t, { file, info });
      }
    }
    for (const [t, shard] of expectedIn) {
      if (!tensors.has(t)) throw new BoothError('INVALID_ARGUMENT', `${where}: ${choice.index} puts tensor "${t}" in ${shard}, which does not contain it`);
    }
  } catch (err) {
    await Promise.all(opened.map((f) => f.source.close().catch(() => undefined)));
    throw err;
  }
  return { name, config, files: files.map((f) => `${name}/${f}`), tensors, opened };
}

/** Close the sources a component holds open. */
export async function closeComponent(c: Component | undefined): Promise<void> {
  if (!c) return;
  await Promise.all(c.opened.map((f) => f.source.close().catch(() => undefined)));
}
