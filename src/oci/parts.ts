/**
 * Bytes as a list of pieces, in order: a 4 MiB chunk received in 64 KiB pieces is written with one writev and
 * hashed piece by piece, rather than first copied into one buffer (a copy and a 4 MiB allocation per chunk, whose
 * garbage collection cost the receiving node more than the copy itself).
 */
export type Bytes = Uint8Array | readonly Uint8Array[];

/** The pieces of `bytes`, as a list. */
export function pieces(bytes: Bytes): readonly Uint8Array[] {
  return bytes instanceof Uint8Array ? [bytes] : bytes;
}

/** How many bytes `bytes` holds. */
export function byteLength(bytes: Bytes): number {
  if (bytes instanceof Uint8Array) return bytes.length;
  let n = 0;
  for (const p of bytes) n += p.length;
  return n;
}

/** `bytes` without its first `skip` bytes (no copy). */
export function skipBytes(bytes: Bytes, skip: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let left = skip;
  for (const p of pieces(bytes)) {
    if (left >= p.length) {
      left -= p.length;
      continue;
    }
    out.push(left > 0 ? p.subarray(left) : p);
    left = 0;
  }
  return out;
}
