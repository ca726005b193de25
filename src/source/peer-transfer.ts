import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { AbortedError, NotFoundError, UnavailableError } from '../oci/index.ts';
import { CHUNK_SIZE, type PeerNetwork, type PullHint } from '../p2p/types.ts';

export interface PeerSource {
  peer: string;
  /** Set when the peer is asked to pull the blob through from its seed (it is the rendezvous owner). */
  pull?: PullHint;
}

export interface PeerTransferOptions {
  network: PeerNetwork;
  digest: string;
  sources: PeerSource[];
  /** Where to start (bytes before it are already in place). */
  offset: number;
  /** Known total size, if any (from a chunk map or an earlier transfer). */
  size?: number;
  /** sha256 hex of every chunk, when a holder of the whole blob gave its chunk map. */
  chunkHashes?: string[];
  /** Chunks in flight at once. */
  parallel: number;
  /** Receives the bytes strictly in order. */
  append: (bytes: Uint8Array, from: string) => Promise<void>;
  /** Called once the total size is known. */
  onSize: (size: number) => void;
  logger: Logger;
  signal: AbortSignal;
  /** A chunk that takes longer than this is asked from the next peer (default 60 s). */
  chunkTimeoutMs?: number;
}

interface ChunkResult {
  bytes: Buffer;
  peer: string;
}

/**
 * Fetches a blob's chunks from several peers at once, verifying each chunk against the chunk map when there is
 * one (a peer that sends a bad chunk is banned and the chunk is asked elsewhere), re-asking a failed or missing
 * chunk from the next peer, and handing bytes on in order. Returns the offset it reached: the caller fetches
 * whatever is left from the seed.
 */
export async function transferFromPeers(opts: PeerTransferOptions): Promise<number> {
  const { network, digest, logger, signal } = opts;
  let offset = opts.offset;
  let size = opts.size;
  const live = new Map(opts.sources.map((s) => [s.peer, { ...s, failures: 0 }]));

  const fetchChunk = async (index: number, total: number | undefined, exclude: Set<string>): Promise<ChunkResult & { size: number }> => {
    const start = index * CHUNK_SIZE;
    const end = total === undefined ? start + CHUNK_SIZE - 1 : Math.min(total, start + CHUNK_SIZE) - 1;
    let lastError: unknown = new NotFoundError('BLOB_UNKNOWN', `no peer could serve ${digest}`);
    // Spread chunks over sources: start at a different one for each chunk.
    const order = [...live.values()].filter((s) => !exclude.has(s.peer));
    const rotated = order.length ? [...order.slice(index % order.length), ...order.slice(0, index % order.length)] : [];
    for (const source of rotated) {
      if (signal.aborted) throw new AbortedError();
      const began = Date.now();
      try {
        // A stalled peer must not hold the client: each chunk has a deadline, then the next peer is asked.
        const deadline = AbortSignal.any([signal, AbortSignal.timeout(opts.chunkTimeoutMs ?? 60_000)]);
        const res = await network.fetchRange(source.peer, { digest, start, end, pull: source.pull }, { signal: deadline });
        const parts: Uint8Array[] = [];
        for await (const p of res.stream) parts.push(p);
        const bytes = Buffer.concat(parts);
        const expectedLength = Math.min(res.size, start + CHUNK_SIZE) - start;
        if (bytes.length !== expectedLength) throw new UnavailableError(`peer ${source.peer} sent ${bytes.length} bytes of chunk ${index}, expected ${expectedLength}`);
        const hash = opts.chunkHashes?.[index];
        if (hash !== undefined && createHash('sha256').update(bytes).digest('hex') !== hash) {
          network.ban(source.peer, `chunk ${index} of ${digest} did not match its hash`);
          live.delete(source.peer);
          lastError = new UnavailableError(`peer ${source.peer} sent a corrupt chunk`);
          continue;
        }
        network.recordTransfer(source.peer, bytes.length, Date.now() - began);
        logger.debug({ peer: source.peer, digest, chunk: index, bytes: bytes.length, ms: Date.now() - began }, 'chunk from peer');
        return { bytes, peer: source.peer, size: res.size };
      } catch (err) {
        if (signal.aborted) throw new AbortedError();
        lastError = err;
        source.failures++;
        if (err instanceof NotFoundError || source.failures >= 2) live.delete(source.peer);
        logger.debug({ peer: source.peer, digest, chunk: index, err: (err as Error).message }, 'chunk from peer failed');
      }
    }
    throw lastError;
  };

  try {
    // The first chunk tells the size when nobody knew it.
    if (size === undefined) {
      const first = await fetchChunk(Math.floor(offset / CHUNK_SIZE), undefined, new Set());
      size = first.size;
      opts.onSize(size);
      const skip = offset % CHUNK_SIZE;
      if (first.bytes.length > skip) await opts.append(first.bytes.subarray(skip), first.peer);
      offset += Math.max(0, first.bytes.length - skip);
    } else opts.onSize(size);
    const total = size;
    const firstIndex = Math.floor(offset / CHUNK_SIZE);
    const count = Math.ceil(total / CHUNK_SIZE);
    const results = new Map<number, Promise<ChunkResult>>();
    let next = firstIndex;
    const schedule = (): void => {
      while (next < count && results.size < opts.parallel) {
        const i = next++;
        const p = fetchChunk(i, total, new Set());
        p.catch(() => undefined);
        results.set(i, p);
      }
    };
    schedule();
    for (let i = firstIndex; i < count; i++) {
      const pending = results.get(i)!;
      const res = await pending;
      results.delete(i);
      const skip = i === firstIndex ? offset - i * CHUNK_SIZE : 0;
      await opts.append(skip > 0 ? res.bytes.subarray(skip) : res.bytes, res.peer);
      offset = Math.min(total, (i + 1) * CHUNK_SIZE);
      schedule();
    }
    return offset;
  } catch (err) {
    if (signal.aborted) throw err;
    logger.info({ digest, reached: offset, size, err: (err as Error).message }, 'peers could not give the whole blob; the seed gives the rest');
    return offset;
  }
}
