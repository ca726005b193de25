import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { AbortedError, byteLength, NotFoundError, skipBytes, UnavailableError, type Bytes, type ChunkMap } from '../oci/index.ts';
import { CHUNK_SIZE, type PeerNetwork, type PullHint } from '../p2p/types.ts';

export interface PeerSource {
  peer: string;
  /** Set when the peer is asked to pull the blob through from its seed (it is the rendezvous owner). */
  pull?: PullHint;
}

/** One chunk a peer sent: judged against the blob's true chunk map once the blob verified. */
export interface ChunkReceipt {
  peer: string;
  index: number;
  /** sha256 hex of what it sent. */
  hash: string;
}

/** What peers said and sent during one blob's fetch, so that blame goes only to the source of bytes proven bad. */
export class TransferEvidence {
  /** The chunk map each holder gave. */
  readonly maps = new Map<string, ChunkMap>();
  readonly receipts: ChunkReceipt[] = [];
}

/** A chunk that takes this much longer than the median of the others is asked again elsewhere. */
const HEDGE_FACTOR = 4;
/** ...but never sooner than this. */
const MIN_HEDGE_MS = 1_000;
/** Before any chunk finished there is no median: the first chunks are hedged after this long. */
const FIRST_HEDGE_MS = 3_000;
/**
 * A peer that answers BUSY serves as many chunk streams as it may: it is asked again after a pause that grows from
 * BUSY_FIRST_MS to BUSY_MAX_MS, for BUSY_GIVE_UP_MS of pauses per chunk in all, before the chunk goes elsewhere (the
 * seed, when no other peer has it). A busy rendezvous owner is often pulling the blob from the seed for everyone: its
 * followers wait for it rather than fetch the same bytes from the seed again.
 */
const BUSY_FIRST_MS = 50;
const BUSY_MAX_MS = 1_000;
const BUSY_GIVE_UP_MS = 20_000;

/** The peer refused a chunk stream only because it serves as many as it may (its BUSY answer). */
export function isBusy(err: unknown): boolean {
  return err instanceof UnavailableError && (err.detail as { busy?: unknown } | undefined)?.busy === true;
}

export interface PeerTransferOptions {
  network: PeerNetwork;
  digest: string;
  sources: PeerSource[];
  /** Where to start (bytes before it are already in place). */
  offset: number;
  /** Known total size, if any (from a chunk map or an earlier transfer). */
  size?: number;
  /** The chunk map every chunk is checked against before it is used; none: the whole digest is the only check. */
  map?: ChunkMap;
  /** Chunks in flight at once. */
  parallel: number;
  /**
   * Receives the bytes strictly in order; `from` is the peer, or undefined for the seed. `hash` is the sha256 hex
   * of exactly `bytes` when they are a whole chunk whose hash was computed on arrival (so it need not be again).
   */
  append: (bytes: Bytes, from: string | undefined, hash?: string) => Promise<void>;
  /** Called once the total size is known. */
  onSize: (size: number) => void;
  /** A chunk's bytes from the seed by Range, for a chunk no peer could give; undefined when there is no seed. */
  seedRange?: (start: number, end: number, signal: AbortSignal) => Promise<Buffer>;
  /** Where what peers sent is noted. */
  evidence: TransferEvidence;
  /** Ask a slow chunk again from another peer (sources that hold the whole blob); off for a rendezvous owner. */
  hedge: boolean;
  /** Counts chunks asked again because they were slow. */
  onHedge?: () => void;
  logger: Logger;
  signal: AbortSignal;
  /** A single chunk request that takes longer than this is dropped (default 60 s). */
  chunkTimeoutMs?: number;
}

interface ChunkResult {
  /** The chunk, in the pieces it arrived in. */
  bytes: Bytes;
  /** sha256 hex of `bytes`, when computed on arrival (chunks from peers). */
  hash?: string;
  /** The peer it came from; undefined: the seed. */
  from: string | undefined;
  size: number;
}

interface LiveSource extends PeerSource {
  failures: number;
  /** Lost a hedge race: asked only when no other source is left. */
  slow: boolean;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}

/**
 * Fetches a blob's chunks from several peers at once and hands the bytes on in order. Each chunk is checked against
 * the chunk map when there is one; a chunk that fails, or does not come, is asked from the next peer, and when no
 * peer can give it, from the seed by Range. A chunk much slower than the others is asked again elsewhere (hedged)
 * and the first good copy wins. Nobody is banned here: what each peer sent is noted in the evidence and judged once
 * the whole blob verified. Returns the offset it reached; the caller fetches whatever is left from the seed.
 */
export async function transferFromPeers(opts: PeerTransferOptions): Promise<number> {
  const { network, digest, logger, evidence, map } = opts;
  // Chunks still in flight when the transfer ends (it failed, or the caller gave up) are dropped with it.
  const ended = new AbortController();
  const signal = AbortSignal.any([opts.signal, ended.signal]);
  let offset = opts.offset;
  let size = opts.size ?? map?.size;
  const live = new Map<string, LiveSource>(opts.sources.map((s) => [s.peer, { ...s, failures: 0, slow: false }]));
  const durations: number[] = [];
  const hedgeAfter = (): number => (durations.length >= 2 ? Math.max(MIN_HEDGE_MS, HEDGE_FACTOR * median(durations)) : FIRST_HEDGE_MS);

  const fetchChunk = (index: number, total: number | undefined): Promise<ChunkResult> => {
    const start = index * CHUNK_SIZE;
    const end = total === undefined ? start + CHUNK_SIZE - 1 : Math.min(total, start + CHUNK_SIZE) - 1;
    const expectedHash = map?.chunks[index];
    const tried = new Set<string>();
    const running = new Set<string>();
    const chunkDone = new AbortController();
    const chunkSignal = AbortSignal.any([signal, chunkDone.signal]);
    return new Promise<ChunkResult>((resolve, reject) => {
      let done = false;
      let inFlight = 0;
      let seedTried = false;
      let busyWaited = 0;
      let busyAttempts = 0;
      let hedgeTimer: NodeJS.Timeout | undefined;
      let lastError: unknown = new NotFoundError('BLOB_UNKNOWN', `no peer could serve ${digest}`);
      const finish = (settle: () => void): void => {
        if (done) return;
        done = true;
        if (hedgeTimer) clearTimeout(hedgeTimer);
        chunkDone.abort();
        settle();
      };
      // Spread chunks over sources (start at a different one for each chunk); sources that lost a hedge go last.
      const nextSource = (): LiveSource | undefined => {
        const order = [...live.values()].filter((s) => !tried.has(s.peer));
        const rotated = order.length ? [...order.slice(index % order.length), ...order.slice(0, index % order.length)] : [];
        return rotated.find((s) => !s.slow) ?? rotated[0];
      };
      const launch = (hedging: boolean): boolean => {
        const source = nextSource();
        if (source) {
          tried.add(source.peer);
          void fromPeer(source);
          return true;
        }
        // The seed gives a chunk no peer could; a chunk that is merely slow is not worth a seed request.
        if (!hedging && opts.seedRange && !seedTried && total !== undefined) {
          seedTried = true;
          void fromSeed();
          return true;
        }
        return false;
      };
      const settled = (): void => {
        inFlight--;
        if (done) return;
        if (signal.aborted) return finish(() => reject(new AbortedError('the transfer ended')));
        if (!launch(false) && inFlight === 0) finish(() => reject(lastError));
      };
      const armHedge = (): void => {
        if (!opts.hedge || done) return;
        hedgeTimer = setTimeout(() => {
          if (done) return;
          const slowOnes = [...running];
          if (launch(true)) {
            for (const p of slowOnes) {
              const s = live.get(p);
              if (s) s.slow = true;
            }
            opts.onHedge?.();
            logger.debug({ digest, chunk: index, slow: slowOnes, afterMs: Math.round(hedgeAfter()) }, 'slow chunk asked again from another peer');
            armHedge();
          }
        }, hedgeAfter());
        hedgeTimer.unref();
      };
      const fromPeer = async (source: LiveSource): Promise<void> => {
        inFlight++;
        running.add(source.peer);
        const began = Date.now();
        try {
          const deadline = AbortSignal.any([chunkSignal, AbortSignal.timeout(opts.chunkTimeoutMs ?? 60_000)]);
          const res = await network.fetchRange(source.peer, { digest, start, end, pull: source.pull }, { signal: deadline });
          // Hashed frame by frame as it arrives (while the next frame is on the wire), once per byte.
          const parts: Uint8Array[] = [];
          const hasher = createHash('sha256');
          let received = 0;
          for await (const p of res.stream) {
            if (done) break;
            parts.push(p);
            hasher.update(p);
            received += p.length;
          }
          if (done) return;
          const bytes = parts;
          if (total !== undefined && res.size !== total) {
            live.delete(source.peer);
            throw new UnavailableError(`peer ${source.peer} says ${digest} has ${res.size} bytes, not ${total}`);
          }
          const expectedLength = Math.min(res.size, start + CHUNK_SIZE) - start;
          if (received !== expectedLength) throw new UnavailableError(`peer ${source.peer} sent ${received} bytes of chunk ${index}, expected ${expectedLength}`);
          const hash = hasher.digest('hex');
          evidence.receipts.push({ peer: source.peer, index, hash });
          if (expectedHash !== undefined && hash !== expectedHash) {
            // Not asked again in this transfer; whether it is to blame is decided once the blob verified.
            live.delete(source.peer);
            throw new UnavailableError(`chunk ${index} from peer ${source.peer} does not match the chunk map`);
          }
          const ms = Date.now() - began;
          durations.push(ms);
          network.recordTransfer(source.peer, received, ms);
          logger.debug({ peer: source.peer, digest, chunk: index, bytes: received, ms }, 'chunk from peer');
          finish(() => resolve({ bytes, hash, from: source.peer, size: res.size }));
        } catch (err) {
          if (done) return;
          lastError = err;
          if (isBusy(err) && busyWaited < BUSY_GIVE_UP_MS) {
            // Not a failure: the same peer is asked again after a pause (the slot stays in flight meanwhile).
            const pause = Math.min(BUSY_MAX_MS, BUSY_FIRST_MS * 2 ** busyAttempts++);
            const wait = Math.round(pause * (0.5 + Math.random() / 2));
            busyWaited += wait;
            logger.debug({ peer: source.peer, digest, chunk: index, waitMs: wait }, 'peer busy: asking it again shortly');
            await sleep(wait, undefined, { signal: chunkSignal }).catch(() => undefined);
            tried.delete(source.peer);
            return;
          }
          source.failures++;
          if (err instanceof NotFoundError || source.failures >= 2) live.delete(source.peer);
          logger.debug({ peer: source.peer, digest, chunk: index, err: (err as Error).message }, 'chunk from peer failed');
        } finally {
          running.delete(source.peer);
          settled();
        }
      };
      const fromSeed = async (): Promise<void> => {
        inFlight++;
        try {
          const bytes = await opts.seedRange!(start, end, chunkSignal);
          if (done) return;
          if (bytes.length !== end - start + 1) throw new UnavailableError(`the seed sent ${bytes.length} bytes of chunk ${index}, expected ${end - start + 1}`);
          logger.debug({ digest, chunk: index, bytes: bytes.length }, 'chunk from the seed by Range');
          finish(() => resolve({ bytes, from: undefined, size: total! }));
        } catch (err) {
          if (done) return;
          lastError = err;
          logger.debug({ digest, chunk: index, err: (err as Error).message }, 'chunk from the seed failed');
        } finally {
          settled();
        }
      };
      if (!launch(false)) finish(() => reject(lastError));
      else armHedge();
    });
  };

  try {
    // The first chunk tells the size when nobody knew it.
    if (size === undefined) {
      const first = await fetchChunk(Math.floor(offset / CHUNK_SIZE), undefined);
      size = first.size;
      opts.onSize(size);
      const skip = offset % CHUNK_SIZE;
      const firstLength = byteLength(first.bytes);
      if (firstLength > skip) await opts.append(skip > 0 ? skipBytes(first.bytes, skip) : first.bytes, first.from, skip === 0 ? first.hash : undefined);
      offset += Math.max(0, firstLength - skip);
    } else opts.onSize(size);
    const total = size;
    const firstIndex = Math.floor(offset / CHUNK_SIZE);
    const count = Math.ceil(total / CHUNK_SIZE);
    const results = new Map<number, Promise<ChunkResult>>();
    let next = firstIndex;
    const schedule = (): void => {
      while (next < count && results.size < opts.parallel) {
        const i = next++;
        const p = fetchChunk(i, total);
        p.catch(() => undefined);
        results.set(i, p);
      }
    };
    schedule();
    for (let i = firstIndex; i < count; i++) {
      const res = await results.get(i)!;
      results.delete(i);
      const skip = i === firstIndex ? offset - i * CHUNK_SIZE : 0;
      await opts.append(skip > 0 ? skipBytes(res.bytes, skip) : res.bytes, res.from, skip > 0 ? undefined : res.hash);
      offset = Math.min(total, (i + 1) * CHUNK_SIZE);
      schedule();
    }
    return offset;
  } catch (err) {
    if (opts.signal.aborted) throw err instanceof AbortedError ? err : new AbortedError();
    logger.info({ digest, reached: offset, size, err: (err as Error).message }, 'peers could not give the whole blob');
    return offset;
  } finally {
    ended.abort();
  }
}
