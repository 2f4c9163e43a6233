/**
 * SessionStore: sessions on an {@link ObjectStore}. Knows the key layout of DESIGN.md
 * (`sessions/<name>/session.json`, `uploads/`, `dataset/`, `review/`, `cache/`) and is the only
 * code that reads or writes manifests. Every write validates the manifest first, so nothing
 * invalid is ever stored, and goes through the store's atomic `put`, so a crash leaves the
 * previous manifest intact.
 *
 * Concurrency: any number of processes may edit one session at once (two CLI commands, the CLI
 * and the server, two servers on one store) without losing an edit. {@link SessionStore.update}
 * is an optimistic-concurrency loop: read the manifest and its etag, apply the change to a copy,
 * write it only if the etag is still current (`ifMatch`), and on a conflict read again and
 * re-apply, a bounded number of times with jittered backoff. `create` writes only if the name is
 * free (`ifNoneMatch`). Long operations (adding photos, prepare, captioning) compute outside the
 * loop and merge their own results into the fresh manifest inside it, so an edit made while they
 * ran (a trigger phrase, a crop, a hand caption) survives. {@link SessionStore.save} writes
 * unconditionally unless given the etag it expects, and is kept for whole-manifest writes by the
 * session's only writer (tests, tools).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { BoothError, isBoothError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { ObjectInfo, ObjectStore } from '../storage/types.js';
import { listAll, readJson } from '../storage/index.js';
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

/** A manifest and the etag of the stored version it was read from (or written as). */
export interface ManifestVersion {
  manifest: SessionManifest;
  /** Opaque entity tag of the stored manifest; pass it as `ifMatch` to write only over this version. */
  etag: string;
}

/** Options of {@link SessionStore.update}. */
export interface UpdateOptions {
  /**
   * Apply the change only to this version of the manifest (an etag the caller read earlier, e.g.
   * from an HTTP `If-Match`): when the session has changed since, fail with `PRECONDITION_FAILED`
   * instead of re-applying the change to the newer version.
   */
  ifMatch?: string;
  /** What is being saved, for messages and logs, e.g. `the caption run`. Default `the change`. */
  what?: string;
}

/** Options of the {@link SessionStore} constructor. */
export interface SessionStoreOptions {
  /** Where re-applied conflicts are logged (debug). Default: silent. */
  logger?: Logger;
  /** Attempts of one update before it fails with `CONFLICT`. Default 12. */
  maxAttempts?: number;
}

/** Default of {@link SessionStoreOptions.maxAttempts}. */
export const DEFAULT_UPDATE_ATTEMPTS = 12;

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
  /** Updates re-applied because another writer changed the manifest first (since this instance was made). */
  conflictsRetried = 0;
  private readonly logger: Logger;
  private readonly maxAttempts: number;

  /**
   * @param store - where sessions live
   * @param options - logger and retry bound, see {@link SessionStoreOptions}
   */
  constructor(
    readonly store: ObjectStore,
    options: SessionStoreOptions = {},
  ) {
    this.logger = options.logger ?? silentLogger();
    this.maxAttempts = options.maxAttempts ?? DEFAULT_UPDATE_ATTEMPTS;
    if (!Number.isInteger(this.maxAttempts) || this.maxAttempts < 1) {
      throw new BoothError('INVALID_ARGUMENT', `SessionStore: option "maxAttempts" must be a whole number ≥ 1, got ${String(options.maxAttempts)}`);
    }
  }

  /**
   * Create a session.
   * @returns the new manifest
   * @throws BoothError `ALREADY_EXISTS` when the name is taken; `INVALID_ARGUMENT`/`INVALID_MANIFEST` for bad input.
   * @example
   * await sessions.create({ name: 'alice', subject: { trigger: 'ohwx', classNoun: 'woman', kind: 'person' }, base: 'sd15' });
   */
  async create(input: CreateSessionInput): Promise<SessionManifest> {
    assertSessionName(input.name);
    const info = BASE_MODEL_INFO[input.base];
    const resolution = input.settings?.resolution;
    if (resolution !== undefined && !info.resolutions.includes(resolution)) {
      throw new BoothError('INVALID_ARGUMENT', `resolution ${resolution} px is not one ${info.label} trains at; use ${info.resolutions.join(' or ')}`);
    }
    const keys = sessionKeys(input.name);
    const taken = (cause?: unknown) =>
      new BoothError('ALREADY_EXISTS', `session "${input.name}" already exists; pick another name or delete it first`, cause === undefined ? undefined : { cause });
    if (await this.store.head(keys.manifest)) throw taken();
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
    try {
      // Create-only: of two creates of one name, from any processes, exactly one succeeds.
      await this.write(manifest, { ifNoneMatch: '*' });
    } catch (err) {
      if (isBoothError(err, 'PRECONDITION_FAILED')) throw taken(err);
      throw err;
    }
    return manifest;
  }

  /**
   * Read a session's manifest.
   * @throws BoothError `NOT_FOUND` (with a hint to list sessions); `INVALID_MANIFEST` when stored data is invalid.
   */
  async get(name: string): Promise<SessionManifest> {
    assertSessionName(name);
    return this.parse(name);
  }

  /**
   * Read a session's manifest with the etag of the version read, for a later conditional write.
   * The etag is taken before the content: a write in between can only make that later write
   * fail and retry, never succeed over a version the caller did not see.
   * @throws as {@link SessionStore.get}
   */
  async read(name: string): Promise<ManifestVersion> {
    assertSessionName(name);
    const info = await this.store.head(sessionKeys(name).manifest);
    if (!info) throw this.missing(name);
    return { manifest: await this.parse(name), etag: info.etag };
  }

  private missing(name: string, cause?: unknown): BoothError {
    return new BoothError(
      'NOT_FOUND',
      `session "${name}" does not exist in ${this.store.url}; list sessions with \`booth session list\``,
      cause === undefined ? undefined : { cause },
    );
  }

  private async parse(name: string): Promise<SessionManifest> {
    let raw: unknown;
    try {
      raw = await readJson(this.store, sessionKeys(name).manifest);
    } catch (err) {
      if (isBoothError(err, 'NOT_FOUND')) throw this.missing(name, err);
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
   * Validate and store a whole manifest (atomically), stamping `updatedAt`. Without `ifMatch` the
   * write is unconditional and replaces whatever another writer stored since: use
   * {@link SessionStore.update} to change a session that others may edit.
   * @param options - `ifMatch`: write only over this version (from {@link SessionStore.read})
   * @returns the stored manifest
   * @throws BoothError `PRECONDITION_FAILED` when `ifMatch` is not the current version; `INVALID_MANIFEST`
   */
  async save(manifest: SessionManifest, options: { ifMatch?: string } = {}): Promise<SessionManifest> {
    const next = this.validate({ ...manifest, updatedAt: new Date().toISOString() }, manifest.name);
    try {
      await this.write(next, options.ifMatch !== undefined ? { ifMatch: options.ifMatch } : {});
    } catch (err) {
      if (isBoothError(err, 'PRECONDITION_FAILED')) throw this.stale(manifest.name, 'the change', err);
      throw err;
    }
    return next;
  }

  /**
   * Read-modify-write a manifest without losing concurrent edits: `fn` is applied to a copy of
   * the current manifest and the result is written only if nobody wrote in between; otherwise
   * the manifest is read again and `fn` applied again (so `fn` must be a pure function of the
   * manifest it gets: merge your own change into it, and do slow work before calling update).
   * @param fn - receives a copy of the manifest; returns the new one (or mutates and returns it)
   * @param options - `ifMatch` to apply only to a known version; `what` for messages
   * @returns the stored manifest
   * @throws BoothError `NOT_FOUND`; `INVALID_MANIFEST` when `fn`'s result is invalid (nothing written);
   *   `PRECONDITION_FAILED` when `ifMatch` is not the current version; `CONFLICT` when other writers
   *   won every one of the attempts; whatever `fn` throws
   * @example
   * await sessions.update('alice', (m) => { m.subject.trigger = 'sks'; return m; });
   */
  async update(name: string, fn: (m: SessionManifest) => SessionManifest | Promise<SessionManifest>, options: UpdateOptions = {}): Promise<SessionManifest> {
    return (await this.updateVersion(name, fn, options)).manifest;
  }

  /**
   * {@link SessionStore.update}, also returning the etag of the version written (for an HTTP `ETag`).
   * @throws as {@link SessionStore.update}
   */
  async updateVersion(name: string, fn: (m: SessionManifest) => SessionManifest | Promise<SessionManifest>, options: UpdateOptions = {}): Promise<ManifestVersion> {
    const what = options.what ?? 'the change';
    for (let attempt = 1; ; attempt++) {
      const { manifest, etag } = await this.read(name);
      if (options.ifMatch !== undefined && options.ifMatch !== etag) throw this.stale(name, what);
      const next = this.validate({ ...(await fn(structuredClone(manifest))), updatedAt: new Date().toISOString() }, name);
      if (next.name !== name) throw new BoothError('INVALID_ARGUMENT', `session "${name}": ${what} must not rename the session (to "${next.name}")`);
      try {
        const info = await this.write(next, { ifMatch: etag });
        return { manifest: next, etag: info.etag };
      } catch (err) {
        if (!isBoothError(err, 'PRECONDITION_FAILED')) throw err;
        if (options.ifMatch !== undefined) throw this.stale(name, what, err);
        if (attempt >= this.maxAttempts) {
          throw new BoothError(
            'CONFLICT',
            `session "${name}" was changed by other writers ${attempt} times in a row while saving ${what}; nothing of it was saved. Try again`,
            { cause: err },
          );
        }
        this.conflictsRetried++;
        this.logger.debug({ session: name, attempt, what }, 'session manifest changed concurrently; re-applying the change to the new version');
        // Jittered exponential backoff (about 5 ms, 10 ms, … up to 250 ms) so that writers that
        // collided do not collide again in lockstep.
        await sleep(Math.min(250, 5 * 2 ** (attempt - 1)) * (0.5 + Math.random()));
      }
    }
  }

  private stale(name: string, what: string, cause?: unknown): BoothError {
    return new BoothError(
      'PRECONDITION_FAILED',
      `session "${name}" was changed by someone else since you read it, so ${what} was not applied; read the session again and re-apply the change`,
      cause === undefined ? undefined : { cause },
    );
  }

  /** Store a validated manifest as pretty JSON, as `putJson` does, under an optional condition. */
  private async write(manifest: SessionManifest, condition: { ifMatch?: string; ifNoneMatch?: '*' }): Promise<ObjectInfo> {
    return this.store.put(sessionKeys(manifest.name).manifest, `${JSON.stringify(manifest, null, 2)}\n`, { contentType: 'application/json', ...condition });
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
