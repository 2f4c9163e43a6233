/**
 * SessionStore: sessions on an {@link ObjectStore}. Knows the key layout of DESIGN.md
 * (`sessions/<name>/session.json`, `uploads/`, `dataset/`, `review/`, `cache/`) and is the only
 * code that reads or writes manifests. Every write validates the manifest first, so nothing
 * invalid is ever stored, and goes through the store's atomic `put`, so a crash leaves the
 * previous manifest intact.
 *
 * Concurrency: one control plane process per session at a time is assumed (as the CLI runs);
 * two writers would be last-writer-wins. Conditional writes are on the reliability roadmap.
 */
import { BoothError, isBoothError } from '../errors.js';
import type { ObjectStore } from '../storage/types.js';
import { listAll, putJson, readJson } from '../storage/index.js';
import { BASE_MODEL_INFO, type BaseModel } from './base-models.js';
import {
  MANIFEST_VERSION,
  SESSION_NAME_PATTERN,
  manifestSchema,
  type SessionManifest,
  type SessionSettings,
  type Subject,
} from './manifest.js';

/** Default caption template until real captioning lands: `photo of ohwx man`. */
export const DEFAULT_CAPTION_TEMPLATE = 'photo of {trigger} {class}';

/** Inputs of {@link SessionStore.create}. */
export interface CreateSessionInput {
  name: string;
  subject: Subject;
  base: BaseModel;
  /** Overrides of the defaults derived from `base` and `subject.kind`. */
  settings?: Partial<SessionSettings>;
}

/** Keys of one session, relative to the store root. */
export function sessionKeys(name: string) {
  const root = `sessions/${name}`;
  return {
    root: `${root}/`,
    manifest: `${root}/session.json`,
    upload: (sha256: string, ext: string) => `${root}/uploads/${sha256}.${ext}`,
    datasetPrefix: `${root}/dataset/`,
    datasetImage: (stem: string) => `${root}/dataset/${stem}.png`,
    datasetCaption: (stem: string) => `${root}/dataset/${stem}.txt`,
    analysis: (sha256: string) => `${root}/cache/analysis/${sha256}.json`,
    preview: (sha256: string) => `${root}/cache/preview/${sha256}.jpg`,
    contactSheetPng: `${root}/review/contact-sheet.png`,
    contactSheetHtml: `${root}/review/contact-sheet.html`,
  };
}

/**
 * Validate a session name.
 * @throws BoothError `INVALID_ARGUMENT` naming the rule.
 */
export function assertSessionName(name: string): void {
  if (!SESSION_NAME_PATTERN.test(name)) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `invalid session name ${JSON.stringify(name)}: use 1–64 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  }
}

/** Sessions stored in an object store. */
export class SessionStore {
  /** @param store - where sessions live */
  constructor(readonly store: ObjectStore) {}

  /**
   * Create a session.
   * @returns the new manifest
   * @throws BoothError `ALREADY_EXISTS` when the name is taken; `INVALID_ARGUMENT`/`INVALID_MANIFEST` for bad input.
   * @example
   * await sessions.create({ name: 'alice', subject: { trigger: 'ohwx', classNoun: 'woman', kind: 'person' }, base: 'sd15' });
   */
  async create(input: CreateSessionInput): Promise<SessionManifest> {
    assertSessionName(input.name);
    const keys = sessionKeys(input.name);
    if (await this.store.head(keys.manifest)) {
      throw new BoothError('ALREADY_EXISTS', `session "${input.name}" already exists; pick another name or delete it first`);
    }
    const now = new Date().toISOString();
    const manifest = this.validate(
      {
        version: MANIFEST_VERSION,
        name: input.name,
        createdAt: now,
        updatedAt: now,
        subject: input.subject,
        base: input.base,
        settings: {
          resolution: BASE_MODEL_INFO[input.base].resolution,
          framing: 'face',
          identity: input.subject.kind === 'person' ? 'auto' : 'off',
          captionTemplate: DEFAULT_CAPTION_TEMPLATE,
          ...input.settings,
        },
        state: 'created',
        photos: [],
        prepared: null,
      },
      input.name,
    );
    await putJson(this.store, keys.manifest, manifest);
    return manifest;
  }

  /**
   * Read a session's manifest.
   * @throws BoothError `NOT_FOUND` (with a hint to list sessions); `INVALID_MANIFEST` when stored data is invalid.
   */
  async get(name: string): Promise<SessionManifest> {
    assertSessionName(name);
    let raw: unknown;
    try {
      raw = await readJson(this.store, sessionKeys(name).manifest);
    } catch (err) {
      if (isBoothError(err, 'NOT_FOUND')) {
        throw new BoothError('NOT_FOUND', `session "${name}" does not exist in ${this.store.url}; list sessions with \`booth session list\``, {
          cause: err,
        });
      }
      throw err;
    }
    return this.validate(raw, name);
  }

  /** All sessions, sorted by name. Manifests that fail validation are reported, not thrown. */
  async list(): Promise<Array<{ name: string; manifest: SessionManifest | null; error: string | null }>> {
    const out: Array<{ name: string; manifest: SessionManifest | null; error: string | null }> = [];
    for await (const info of listAll(this.store, 'sessions/')) {
      const m = /^sessions\/([^/]+)\/session\.json$/.exec(info.key);
      if (!m?.[1]) continue;
      const name = m[1];
      try {
        out.push({ name, manifest: await this.get(name), error: null });
      } catch (err) {
        out.push({ name, manifest: null, error: err instanceof Error ? err.message : String(err) });
      }
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /**
   * Validate and store a manifest (atomically), stamping `updatedAt`.
   * @returns the stored manifest
   */
  async save(manifest: SessionManifest): Promise<SessionManifest> {
    const next = this.validate({ ...manifest, updatedAt: new Date().toISOString() }, manifest.name);
    await putJson(this.store, sessionKeys(manifest.name).manifest, next);
    return next;
  }

  /**
   * Read-modify-write a manifest.
   * @param fn - receives a copy of the manifest; returns the new one (or mutates and returns it)
   */
  async update(name: string, fn: (m: SessionManifest) => SessionManifest | Promise<SessionManifest>): Promise<SessionManifest> {
    const current = await this.get(name);
    return this.save(await fn(structuredClone(current)));
  }

  /**
   * Delete a session and everything under its prefix. The manifest goes first, so the session
   * disappears at once; a crash midway leaves only unreferenced objects, which a later session of
   * the same name overwrites or `prepare` removes.
   * @returns number of objects deleted
   */
  async delete(name: string): Promise<number> {
    const keys = sessionKeys(name);
    await this.get(name);
    await this.store.delete(keys.manifest);
    let n = 1;
    const rest: string[] = [];
    for await (const info of listAll(this.store, keys.root)) rest.push(info.key);
    for (const key of rest) {
      await this.store.delete(key);
      n++;
    }
    return n;
  }

  private validate(raw: unknown, name: string): SessionManifest {
    const parsed = manifestSchema.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const where = issue ? issue.path.join('.') || '(root)' : '(root)';
      throw new BoothError(
        'INVALID_MANIFEST',
        `session "${name}": manifest field "${where}" is invalid: ${issue?.message ?? 'unknown error'}` +
          ` (${parsed.error.issues.length} problem(s) in ${sessionKeys(name).manifest})`,
        { cause: parsed.error },
      );
    }
    return parsed.data;
  }
}
