import type { IncomingMessage } from 'node:http';
import getRawBody from 'raw-body';
import { AbortedError, InvalidError, ShoalError } from '../oci/index.ts';
import type { ByteRange } from '../store/index.ts';

/** Parses a `Range: bytes=...` request header against a blob of `size` bytes. Undefined = serve it all. */
export function parseRangeHeader(header: string | undefined, size: number): ByteRange | undefined {
  if (!header) return undefined;
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  // Malformed or multi-range headers are ignored, as RFC 9110 allows: the whole blob is served.
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  let start: number;
  let end: number;
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0) throw unsatisfiable(size);
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
    if (m[2] !== '' && Number(m[2]) < start) return undefined;
  }
  if (start >= size || size === 0) throw unsatisfiable(size);
  return { start, end };
}

function unsatisfiable(size: number): ShoalError {
  return new InvalidError('RANGE_INVALID', `requested range is not satisfiable: the blob has ${size} bytes`, { size }, { 'Content-Range': `bytes */${size}` });
}

/** Parses an upload `Content-Range: <start>-<end>` (inclusive; `bytes ` prefix tolerated). */
export function parseContentRange(header: string | undefined): ByteRange | undefined {
  if (header === undefined) return undefined;
  const m = /^\s*(?:bytes[ =])?\s*(\d+)\s*-\s*(\d+)\s*(?:\/\s*(?:\d+|\*))?\s*$/i.exec(header);
  if (!m) throw new InvalidError('BLOB_UPLOAD_INVALID', `invalid Content-Range ${JSON.stringify(header)}: expected <start>-<end>`);
  const start = Number(m[1]);
  const end = Number(m[2]);
  if (end < start) throw new InvalidError('RANGE_INVALID', `invalid Content-Range ${JSON.stringify(header)}: end is before start`);
  return { start, end };
}

/** The declared Content-Length, or undefined for a chunked (streamed) body. */
export function contentLength(req: IncomingMessage): number | undefined {
  const v = req.headers['content-length'];
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new InvalidError('SIZE_INVALID', `invalid Content-Length ${JSON.stringify(v)}`);
  return Number(v);
}

/** True when the request carries a body (a length above zero, or chunked transfer encoding). */
export function hasBody(req: IncomingMessage): boolean {
  const len = req.headers['content-length'];
  if (len !== undefined) return Number(len) > 0;
  return req.headers['transfer-encoding'] !== undefined;
}

/** Reads a small body whole, refusing more than `limit` bytes with 413. */
export async function readSmallBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = contentLength(req);
  if (declared !== undefined && declared > limit) {
    req.resume();
    throw new InvalidError('PAYLOAD_TOO_LARGE', `body of ${declared} bytes exceeds the limit of ${limit} bytes`, { limit });
  }
  try {
    return await getRawBody(req, { limit, length: declared });
  } catch (err) {
    const type = (err as { type?: string }).type;
    if (type === 'entity.too.large') throw new InvalidError('PAYLOAD_TOO_LARGE', `body exceeds the limit of ${limit} bytes`, { limit });
    if (type === 'request.size.invalid') throw new InvalidError('SIZE_INVALID', `body is shorter than its Content-Length of ${declared} bytes`);
    if (type === 'request.aborted') throw new AbortedError('client closed the connection before the body was complete');
    throw err;
  }
}
