/**
 * The object-store contract every driver implements. Booth keeps ALL state in one store (a local
 * folder or an S3-compatible bucket) so the control plane is stateless and a session can resume
 * on any machine.
 *
 * Guarantees every driver gives:
 * - `put` is atomic: readers see the old object or the whole new one, never a partial one; a
 *   failed put (error, abort, crash) leaves the previous object intact.
 * - keys are validated with {@link assertValidKey} before any I/O (no `..`, no absolute paths,
 *   no backslashes, no control characters); see `keys.ts`.
 * - `list` returns keys in ascending UTF-8 byte order, paginated by an opaque cursor.
 * - conditional writes: a `put` with `ifMatch` replaces the object only while its etag is the one
 *   given, and one with `ifNoneMatch: '*'` creates it only while it is absent; the check and the
 *   write are one atomic step with respect to every other put and delete of that key, from this
 *   process or any other (the folder driver uses a lock file per key, S3 its own `If-Match` /
 *   `If-None-Match` support). A failed condition throws `PRECONDITION_FAILED` and writes nothing.
 *   This is what makes read-modify-write safe with several writers (see `SessionStore.update`).
 *
 * Left out on purpose (as bullmq's backend contract states its omissions): conditional deletes
 * and copies, object metadata beyond content type, versioning, and cross-store copy. Multi-object
 * writes are made visible by writing a marker object last (see docs/architecture.md); the store
 * itself knows nothing about that convention.
 */
import type { Readable } from 'node:stream';

/** What `head` and `list` report about one object. */
export interface ObjectInfo {
  /** The full key, relative to the store's root/prefix. */
  key: string;
  /** Size in bytes. */
  size: number;
  /**
   * Entity tag: changes whenever the content changes. Opaque; do not parse. (S3: the ETag
   * without quotes; fs: derived from size, mtime and inode.)
   */
  etag: string;
  /** Last modification time. */
  mtime: Date;
}

/** One page of a listing. */
export interface ListPage {
  /** Objects on this page, ascending by key. */
  items: ObjectInfo[];
  /** Pass to the next `list` call to continue; undefined when this was the last page. */
  cursor?: string;
}

/** Options of {@link ObjectStore.list}. */
export interface ListOptions {
  /** Cursor from the previous page. */
  cursor?: string;
  /** Maximum items per page (driver may return fewer). Default 1000. */
  limit?: number;
}

/** A byte range, both ends inclusive (as in HTTP `Range: bytes=start-end`). */
export interface ByteRange {
  start: number;
  /** Inclusive end; omitted means to the end of the object. */
  end?: number;
}

/** Options of {@link ObjectStore.get}. */
export interface GetOptions {
  /** Read only this byte range. */
  range?: ByteRange;
}

/** Options of {@link ObjectStore.put}. */
export interface PutOptions {
  /** MIME type stored with the object where the driver supports it (S3). */
  contentType?: string;
  /** Abort the write; the previous object (if any) stays intact. */
  signal?: AbortSignal;
  /**
   * Replace the object only if it exists and its etag (as `head`, `list` or `put` reported it)
   * is this one; otherwise throw `PRECONDITION_FAILED` and leave it as it is. Entity tags are
   * compared as opaque strings: pass the value Booth gave, unquoted.
   */
  ifMatch?: string;
  /** `'*'`: create the object only if no object has this key; otherwise throw `PRECONDITION_FAILED`. */
  ifNoneMatch?: '*';
}

/** Body accepted by {@link ObjectStore.put}. */
export type PutBody = Buffer | Uint8Array | string | Readable;

/** An object store. Implementations: `drivers/fs.ts`, `drivers/s3.ts`. */
export interface ObjectStore {
  /** Human-readable location, e.g. `file:///srv/booth-data` or `s3://bucket/prefix`. */
  readonly url: string;

  /**
   * Read an object as a stream.
   * @throws BoothError `NOT_FOUND` when the key does not exist; `INVALID_KEY` for a bad key.
   */
  get(key: string, options?: GetOptions): Promise<Readable>;

  /**
   * Write an object atomically (replace if it exists), optionally only under a condition
   * (`ifMatch`, `ifNoneMatch`; see {@link PutOptions}).
   * @returns the stored object's info: the version this put wrote, even when another writer has
   *   replaced it since (so its etag is the one to pass as the next `ifMatch`)
   * @throws BoothError `INVALID_KEY`; `INVALID_ARGUMENT` for bad options (both conditions at
   *   once, an empty `ifMatch`, an `ifNoneMatch` other than `'*'`, a conditional body over the
   *   driver's single-request limit); `PRECONDITION_FAILED` naming the key when the condition does
   *   not hold (nothing written); `STORAGE` when the write failed (previous object intact).
   */
  put(key: string, body: PutBody, options?: PutOptions): Promise<ObjectInfo>;

  /** Object info, or `null` when the key does not exist. */
  head(key: string): Promise<ObjectInfo | null>;

  /** One page of the objects whose key starts with `prefix` (recursive, no delimiter). */
  list(prefix: string, options?: ListOptions): Promise<ListPage>;

  /** Delete an object; deleting a missing key is not an error. */
  delete(key: string): Promise<void>;

  /**
   * Copy `from` to `to` inside this store (server-side where the driver can).
   * @throws BoothError `NOT_FOUND` when `from` does not exist.
   */
  copy(from: string, to: string): Promise<ObjectInfo>;

  /** Release resources (sockets, handles). The store must not be used afterwards. */
  close(): Promise<void>;
}
