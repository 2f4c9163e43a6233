/**
 * Serving store objects over HTTP the way download managers and `curl -C -` expect: a strong
 * `ETag`, `Content-Length`, `Accept-Ranges: bytes`, single `Range` requests answered with 206 and
 * `Content-Range`, unsatisfiable ones with 416, `If-Range` and `If-None-Match` honoured, and the
 * SHA-256 as `Repr-Digest` (RFC 9530) plus `X-Checksum-SHA256` when the caller knows it. Bytes
 * are streamed from the store's ranged `get`, never buffered, so a multi-GB export costs no memory.
 * Multi-range requests (`bytes=0-1,5-6`) are answered with the whole object, which RFC 9110 allows.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { ObjectStore } from '../storage/types.js';
import { ApiError } from './errors.js';

/** A parsed single byte range (inclusive end). */
export interface ParsedRange {
  start: number;
  end: number;
}

/**
 * Parse a `Range` header against an object size.
 * @returns null: serve the whole object (no header, another unit, several ranges, malformed);
 *   `'unsatisfiable'`: answer 416; otherwise the clamped range
 * @example parseRange('bytes=100-', 1000) // { start: 100, end: 999 }
 */
export function parseRange(header: string | undefined, size: number): ParsedRange | 'unsatisfiable' | null {
  if (!header) return null;
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  if (!m) return null;
  const [, a = '', b = ''] = m;
  if (a === '' && b === '') return null;
  if (a === '') {
    const n = Number(b);
    if (n === 0 || size === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(a);
  const end = b === '' ? size - 1 : Math.min(Number(b), size - 1);
  if (start >= size) return 'unsatisfiable';
  if (b !== '' && Number(b) < start) return null;
  return { start, end };
}

/** What {@link sendObject} needs to know about the object. */
export interface ObjectMeta {
  key: string;
  size: number;
  /** Entity tag without quotes (an export uses its SHA-256). */
  etag: string;
  mtime?: Date;
  contentType: string;
  /** `Content-Disposition: attachment` with this name; omitted for inline content. */
  filename?: string;
  /** Hex SHA-256 of the whole object, when known. */
  sha256?: string;
  /** `Cache-Control` (default `private, no-cache`: revalidate with the ETag). */
  cacheControl?: string;
}

/**
 * Send an object (or the requested range of it).
 * @throws ApiError `RANGE_NOT_SATISFIABLE` (416, with `Content-Range: bytes *\/size`)
 */
export async function sendObject(request: FastifyRequest, reply: FastifyReply, store: ObjectStore, meta: ObjectMeta): Promise<FastifyReply> {
  const etag = `"${meta.etag}"`;
  reply.header('accept-ranges', 'bytes');
  reply.header('etag', etag);
  reply.header('content-type', meta.contentType);
  reply.header('cache-control', meta.cacheControl ?? 'private, no-cache');
  if (meta.mtime) reply.header('last-modified', meta.mtime.toUTCString());
  if (meta.filename) reply.header('content-disposition', `attachment; filename="${meta.filename.replace(/[^A-Za-z0-9._-]/g, '_')}"`);
  if (meta.sha256) {
    reply.header('repr-digest', `sha-256=:${Buffer.from(meta.sha256, 'hex').toString('base64')}:`);
    reply.header('x-checksum-sha256', meta.sha256);
  }
  const inm = request.headers['if-none-match'];
  if (inm && inm.split(',').some((t) => t.trim() === etag || t.trim() === `W/${etag}` || t.trim() === '*')) {
    return reply.code(304).send();
  }
  const ifRange = request.headers['if-range'] as string | undefined;
  const rangeHeader = ifRange && ifRange.trim() !== etag ? undefined : request.headers.range;
  const range = parseRange(rangeHeader, meta.size);
  if (range === 'unsatisfiable') {
    reply.header('content-range', `bytes */${meta.size}`);
    throw new ApiError('RANGE_NOT_SATISFIABLE', `Range ${JSON.stringify(rangeHeader)} is outside the ${meta.size}-byte object; request bytes=0-${Math.max(0, meta.size - 1)} or less`);
  }
  const head = request.method === 'HEAD';
  // fastify recomputes Content-Length from the (empty) body of a HEAD reply; write it ourselves.
  const sendHead = (status: number): FastifyReply => {
    reply.hijack();
    reply.raw.writeHead(status, reply.getHeaders() as Record<string, string>);
    reply.raw.end();
    return reply;
  };
  if (range) {
    reply.code(206);
    reply.header('content-range', `bytes ${range.start}-${range.end}/${meta.size}`);
    reply.header('content-length', String(range.end - range.start + 1));
    if (head) return sendHead(206);
    return reply.send(await store.get(meta.key, { range: { start: range.start, end: range.end } }));
  }
  reply.header('content-length', String(meta.size));
  if (head) return sendHead(200);
  return reply.send(await store.get(meta.key));
}
