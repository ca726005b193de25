import { createHash, type Hash } from 'node:crypto';
import { byteLength, pieces, type Bytes } from './parts.ts';

/** Blobs travel between peers, and are vouched for, in chunks of this size (the last one shorter). */
export const CHUNK_SIZE = 4 * 1024 * 1024;

/** sha256 (hex) of every CHUNK_SIZE chunk of a blob, in order, and the blob's size. */
export interface ChunkMap {
  size: number;
  chunks: string[];
}

/** Whether `length` bytes at `offset` are exactly one whole chunk. */
export function isWholeChunk(offset: number, length: number): boolean {
  return offset % CHUNK_SIZE === 0 && length === CHUNK_SIZE;
}

/** How many chunks a blob of `size` bytes has. */
export function chunkCount(size: number): number {
  return Math.ceil(size / CHUNK_SIZE);
}

/** Hashes each CHUNK_SIZE chunk of a byte stream as it goes by; `map()` gives the chunk map so far. */
export class ChunkHasher {
  private hash: Hash = createHash('sha256');
  private inChunk = 0;
  private total = 0;
  private readonly chunks: string[] = [];

  /**
   * Adds bytes. With `knownHash` (the sha256 hex of exactly these bytes, computed by the caller as they arrived)
   * a whole chunk that starts on a chunk boundary is taken without hashing it again: each byte is hashed once for
   * the chunk map.
   */
  update(data: Bytes, knownHash?: string): void {
    if (knownHash !== undefined && isWholeChunk(this.total, byteLength(data))) {
      this.chunks.push(knownHash);
      this.total += CHUNK_SIZE;
      return;
    }
    for (const piece of pieces(data)) this.add(piece);
  }

  private add(data: Uint8Array): void {
    let buf = data;
    while (buf.length > 0) {
      const take = Math.min(buf.length, CHUNK_SIZE - this.inChunk);
      this.hash.update(take === buf.length ? buf : buf.subarray(0, take));
      this.inChunk += take;
      this.total += take;
      buf = buf.subarray(take);
      if (this.inChunk === CHUNK_SIZE) {
        this.chunks.push(this.hash.digest('hex'));
        this.hash = createHash('sha256');
        this.inChunk = 0;
      }
    }
  }

  /** The chunk map of everything so far (a partial last chunk counts as the last chunk). */
  map(): ChunkMap {
    const chunks = [...this.chunks];
    if (this.inChunk > 0) chunks.push(this.hash.copy().digest('hex'));
    return { size: this.total, chunks };
  }
}

/** Checks that a chunk map is well formed for a blob of `size` bytes (when known): a bound on what peers send. */
export function isValidChunkMap(map: unknown, size?: number): map is ChunkMap {
  if (typeof map !== 'object' || map === null) return false;
  const m = map as Partial<ChunkMap>;
  if (typeof m.size !== 'number' || !Number.isSafeInteger(m.size) || m.size < 0) return false;
  if (size !== undefined && m.size !== size) return false;
  if (!Array.isArray(m.chunks) || m.chunks.length !== chunkCount(m.size)) return false;
  return m.chunks.every((c) => typeof c === 'string' && /^[a-f0-9]{64}$/.test(c));
}
