/**
 * Async generators that pass a blob body through while checking it, so that a consumer never holds a
 * complete copy of bad content: the whole-blob check keeps the last piece back until the digest verifies.
 */
import { Digest, DigestHasher, DigestMismatchError, UnavailableError } from '../oci/index.ts';

import type { ByteRange } from '../oci/index.ts';
export type { ByteRange };

export interface WholeBlobCheck {
  digest: Digest;
  /** Content-Length the seed announced; the body must be exactly this long. */
  declaredLength?: number;
  /** Emit only these bytes of the blob (the seed ignored a Range request); the whole body is still verified. */
  slice?: ByteRange;
  /** Says where the bytes came from, for messages: "blob repo@sha256:... from seed http://...". */
  source: string;
  /** Maps an error from the body (network, abort) into the taxonomy. */
  mapError: (err: unknown) => Error;
  /** False when the caller hashes the bytes itself (the store's hashing thread): only the length is checked here. */
  hash?: boolean;
}

function toBuffer(chunk: Uint8Array | string): Buffer {
  return typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
}

/**
 * Yields the body's bytes (or the `slice` of them), hashing everything (unless `hash` is false). At the end, throws
 * DigestMismatchError when the length differs from `declaredLength` or the bytes do not hash to `digest`;
 * the last piece is yielded only after that check passes.
 */
export async function* verifiedBlobBytes(body: AsyncIterable<Uint8Array | string>, check: WholeBlobCheck): AsyncGenerator<Buffer> {
  const hasher = check.hash === false ? undefined : new DigestHasher(check.digest.algorithm);
  let held: Buffer | undefined;
  let position = 0;
  try {
    for await (const raw of body) {
      const chunk = toBuffer(raw);
      hasher?.update(chunk);
      let piece: Buffer | undefined = chunk;
      if (check.slice) {
        const from = Math.max(check.slice.start, position);
        const to = Math.min(check.slice.end + 1, position + chunk.length);
        piece = from < to ? chunk.subarray(from - position, to - position) : undefined;
      }
      position += chunk.length;
      if (check.declaredLength !== undefined && position > check.declaredLength) break;
      if (piece && piece.length > 0) {
        if (held) yield held;
        held = piece;
      }
    }
  } catch (err) {
    throw check.mapError(err);
  }
  const expected = check.digest.toString();
  if (check.declaredLength !== undefined && position !== check.declaredLength) {
    throw new DigestMismatchError(
      expected,
      hasher?.digest().toString() ?? 'unknown',
      `${check.source} had ${position > check.declaredLength ? 'more' : 'fewer'} bytes than its Content-Length ${check.declaredLength}; it cannot be ${expected}`,
    );
  }
  const actual = hasher?.digest();
  if (actual && !actual.equals(check.digest)) {
    throw new DigestMismatchError(expected, actual.toString(), `${check.source} hashes to ${actual} (${position} bytes), not to ${expected}`);
  }
  if (held) yield held;
}

/** Yields a partial body, failing when it carries more or fewer bytes than the range it answers. */
export async function* exactLengthBytes(
  body: AsyncIterable<Uint8Array | string>,
  length: number,
  source: string,
  mapError: (err: unknown) => Error,
): AsyncGenerator<Buffer> {
  let received = 0;
  try {
    for await (const raw of body) {
      const chunk = toBuffer(raw);
      received += chunk.length;
      if (received > length) break;
      yield chunk;
    }
  } catch (err) {
    throw mapError(err);
  }
  if (received !== length) {
    throw new UnavailableError(`${source} carried ${received > length ? 'more than' : received} bytes where the range has ${length}`, {
      expected: length,
      received,
    });
  }
}
