import type { Logger } from 'pino';
import { Readable } from 'node:stream';
import { AbortedError, NotFoundError, UnavailableError, diskFullCode, isShoalError, storageFullError } from '../oci/index.ts';
import type { ByteRange, ContentStore, Ingest, IoOptions } from '../store/index.ts';
import type { PullMetrics } from './metrics.ts';
import { isSeedGone, type SeedSet } from './types.ts';
import type { PeerNetwork, PullHint } from '../p2p/types.ts';
import type { TokenBucket } from '../limits/token-bucket.ts';
import { transferFromPeers, type PeerSource } from './peer-transfer.ts';
import { rendezvousOrder } from './rendezvous.ts';

export interface BlobFetchOptions {
  store: ContentStore;
  /** Undefined when this node has no seed for the blob's registry: peers only. */
  seeds?: SeedSet;
  /** The peer network, when P2P is on. */
  network?: PeerNetwork;
  /** What a rendezvous owner needs to pull the blob through for the cluster. */
  pull: PullHint;
  /** Chunks fetched from peers at once. */
  parallelChunks?: number;
  /** Caps the seed link, shared by every fetch of the node. */
  seedRate?: TokenBucket;
  digest: string;
  /** Repository the blob is committed into. */
  repository: string;
  /** Repository name on the seed. */
  upstreamRepository: string;
  metrics: PullMetrics;
  logger: Logger;
  /**
   * Fails (with StorageFullError) when the store has no room for `bytes` more: a seed transfer that cannot fit
   * is refused before any client gets a response.
   */
  ensureRoom?: (bytes: number, what: string) => Promise<void>;
}

/** How often a seed transfer that broke after making progress is resumed by Range. */
const MAX_SEED_RESUMES = 2;

function isMissingFile(err: unknown): boolean {
  return (err as NodeJS.ErrnoException)?.code === 'ENOENT';
}

/**
 * One fetch of one blob from the seeds into the store, however many clients want it. The bytes land in an
 * ingest as they arrive; every client follows that ingest at its own pace, so a slow client does not slow the
 * others, and a client that gives up does not stop the fetch. The last byte is released only after the whole
 * digest verified, so a client never receives a complete response of corrupt content.
 */
export class BlobFetch {
  readonly digest: string;
  private readonly opts: BlobFetchOptions;
  private readonly controller = new AbortController();
  private ingest?: Ingest;
  private written = 0;
  private total?: number;
  private state: 'running' | 'committed' | 'failed' = 'running';
  private failure?: unknown;
  private readonly waiters = new Set<() => void>();
  /** Resolves with the blob's size once a seed answered; rejects if the fetch fails before. */
  readonly size: Promise<number>;
  /** Settles when the blob is committed (or the fetch failed). */
  readonly done: Promise<void>;
  private resolveSize!: (n: number) => void;
  private rejectSize!: (err: unknown) => void;

  constructor(opts: BlobFetchOptions) {
    this.opts = opts;
    this.digest = opts.digest;
    this.size = new Promise<number>((ok, fail) => {
      this.resolveSize = ok;
      this.rejectSize = fail;
    });
    this.size.catch(() => undefined);
    this.done = this.run().then(
      () => {
        this.state = 'committed';
        this.notify();
      },
      (err: unknown) => {
        this.state = 'failed';
        this.failure = err;
        this.rejectSize(err);
        this.notify();
        throw err;
      },
    );
    this.done.catch(() => undefined);
  }

  /** Stops the fetch (node shutdown). */
  cancel(): void {
    this.controller.abort(new AbortedError('node is stopping'));
  }

  private notify(): void {
    for (const w of this.waiters) w();
    this.waiters.clear();
  }

  private async changed(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) throw new AbortedError('client went away');
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        this.waiters.delete(wake);
        reject(new AbortedError('client went away'));
      };
      const wake = (): void => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      this.waiters.add(wake);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  private learnSize(size: number): void {
    if (this.total === undefined) {
      this.total = size;
      this.resolveSize(size);
    } else if (size !== this.total) {
      throw new UnavailableError(`sources disagree on the size of ${this.digest}: ${size} and ${this.total} bytes`);
    }
  }

  private async appendBytes(chunk: Uint8Array, source: 'peer' | 'seed', signal: AbortSignal): Promise<void> {
    await this.ingest!.append(chunk, { signal });
    this.written += chunk.length;
    this.opts.metrics.pullBytes.inc({ source }, chunk.length);
    this.notify();
  }

  private async run(): Promise<void> {
    const { store, digest, logger } = this.opts;
    const signal = this.controller.signal;
    this.ingest = await store.openIngest({ signal });
    const began = Date.now();
    try {
      if (this.opts.network) await this.fromPeers(this.opts.network, signal);
      const fromPeers = this.written;
      const peersMs = Date.now() - began;
      if (this.total === undefined || this.written < this.total) await this.fromSeeds(signal);
      const transferMs = Date.now() - began;
      await this.ingest.commit(this.opts.repository, { digest, size: this.total }, { signal });
      logger.info(
        { digest, size: this.total, fromPeers, fromSeed: this.written - fromPeers, peersMs, transferMs, commitMs: Date.now() - began - transferMs },
        'blob fetched and committed',
      );
    } catch (err) {
      await this.ingest.abort();
      if (diskFullCode(err)) logger.warn({ digest, written: this.written, err: (err as Error).message }, 'blob fetch stopped: the disk is full; its bytes were removed');
      throw err;
    }
  }

  /**
   * Peers first: holders of the whole blob, in parallel chunks. When nobody holds it, the rendezvous owner of the
   * digest among the connected peers fetches it from its seed once and everyone else streams from the owner; the
   * owner itself goes to the seed.
   */
  private async fromPeers(network: PeerNetwork, signal: AbortSignal): Promise<void> {
    const { digest, logger } = this.opts;
    const holders = network.holders(digest);
    let sources: PeerSource[];
    let chunkHashes: string[] | undefined;
    let size: number | undefined;
    if (holders.length > 0) {
      sources = holders.map((peer) => ({ peer }));
      for (const peer of holders.slice(0, 2)) {
        try {
          const map = await network.fetchChunkMap(peer, digest, { signal: AbortSignal.any([signal, AbortSignal.timeout(3_000)]) });
          if (map) {
            chunkHashes = map.chunks;
            size = map.size;
            break;
          }
        } catch (err) {
          logger.debug({ peer, digest, err: (err as Error).message }, 'no chunk map from peer');
        }
      }
    } else {
      const order = rendezvousOrder(digest, [network.selfId, ...network.peers()]);
      const owner = order[0];
      if (owner === undefined || owner === network.selfId) return;
      sources = [{ peer: owner, pull: this.opts.pull }];
    }
    await transferFromPeers({
      network,
      digest,
      sources,
      offset: this.written,
      size,
      chunkHashes,
      parallel: this.opts.parallelChunks ?? 4,
      append: (bytes) => this.appendBytes(bytes, 'peer', signal),
      onSize: (n) => this.learnSize(n),
      logger,
      signal,
    });
  }

  private async fromSeeds(signal: AbortSignal): Promise<void> {
    const { seeds, digest, upstreamRepository, metrics, logger } = this.opts;
    if (!seeds || seeds.seeds.length === 0) {
      if (this.written > 0) throw new UnavailableError(`peers gave ${this.written} bytes of ${digest} and then went away, and this node has no seed for the rest`);
      throw new NotFoundError('BLOB_UNKNOWN', `blob ${digest} is neither on this node nor on its peers`, { digest });
    }
    // Each seed is asked once (its client already retried); a transfer that broke after making progress is
    // resumed by Range up to MAX_SEED_RESUMES times.
    const maxResumes = MAX_SEED_RESUMES;
    const notFound = new Set<number>();
    let tried = 0;
    let resumes = 0;
    let index = 0;
    for (;;) {
      const seed = seeds.seeds[index % seeds.seeds.length]!;
      const before = this.written;
      tried++;
      try {
        const range: ByteRange | undefined = this.written > 0 && this.total !== undefined ? { start: this.written, end: this.total - 1 } : undefined;
        const res = await seed.getBlob(upstreamRepository, digest, { signal, range });
        if (this.total === undefined && this.opts.ensureRoom) {
          // Before the size is known to clients (they get their response headers on it): a blob that cannot fit
          // fails them with a clear error instead of a connection cut half way.
          try {
            await this.opts.ensureRoom(res.size, `blob ${digest} from seed ${seed.url}`);
          } catch (err) {
            res.stream.destroy();
            throw err;
          }
        }
        this.learnSize(res.size);
        for await (const chunk of res.stream as AsyncIterable<Uint8Array>) {
          await this.opts.seedRate?.take(chunk.length, signal);
          metrics.seedBytes.inc({ registry: seeds.registry }, chunk.length);
          await this.appendBytes(chunk, 'seed', signal);
        }
        metrics.seedRequests.inc({ registry: seeds.registry, outcome: 'ok' });
        return;
      } catch (err) {
        if (signal.aborted) throw new AbortedError('node is stopping');
        // A full disk is this node's, not the seed's: no other seed and no resume can help.
        const full = diskFullCode(err);
        if (full) throw isShoalError(err) ? err : storageFullError(full, `storing blob ${digest} fetched from seed ${seed.url}`);
        const code = isShoalError(err) ? err.code : undefined;
        const outcome = code === 'BLOB_UNKNOWN' ? 'not_found' : code === 'DIGEST_INVALID' ? 'corrupt' : 'error';
        metrics.seedRequests.inc({ registry: seeds.registry, outcome });
        logger.warn({ seed: seed.url, digest, attempt: tried, written: this.written, err: (err as Error).message }, 'seed transfer failed');
        if (outcome === 'corrupt') throw err;
        if (outcome === 'not_found') {
          notFound.add(index % seeds.seeds.length);
          if (notFound.size >= seeds.seeds.length) {
            throw new NotFoundError('BLOB_UNKNOWN', `blob ${digest} is neither on this node nor on its seeds for ${seeds.registry}`, { digest });
          }
        }
        const progressed = this.written > before;
        if (progressed && resumes < maxResumes) {
          resumes++;
          continue;
        }
        if (tried >= seeds.seeds.length && !progressed) {
          if (outcome === 'error' && isSeedGone(err) && this.written === 0) {
            const cause = (err as { detail?: { cause?: string } }).detail?.cause;
            throw new NotFoundError('BLOB_UNKNOWN', `blob ${digest} is on no node of the cluster, and seed ${seed.url} cannot be reached`, { digest, seed: seed.url, cause });
          }
          throw err;
        }
        if (progressed) throw err;
        index++;
      }
    }
  }

  /**
   * The bytes of `range` (whole blob when undefined), as they arrive. Errors if the fetch fails, including
   * after some bytes went out; the caller must then cut the client's connection.
   */
  read(range: ByteRange | undefined, opts: IoOptions = {}): Readable {
    return Readable.from(this.follow(range, opts.signal), { objectMode: false });
  }

  private async *follow(range: ByteRange | undefined, signal?: AbortSignal): AsyncGenerator<Uint8Array> {
    const total = await this.size;
    const end = range?.end ?? total - 1;
    let pos = range?.start ?? 0;
    while (pos <= end) {
      if (this.state === 'committed') {
        for await (const c of await this.opts.store.readContent(this.digest, { start: pos, end }, { signal })) yield c as Uint8Array;
        return;
      }
      if (this.state === 'failed') throw this.failure;
      // Hold back the blob's last byte until the digest verified.
      const available = Math.min(this.written, total - 1);
      if (available > pos && this.ingest) {
        const until = Math.min(available - 1, end);
        try {
          for await (const c of await this.ingest.read({ start: pos, end: until }, { signal })) {
            pos += (c as Uint8Array).length;
            yield c as Uint8Array;
          }
        } catch (err) {
          // The ingest was committed (its handle closed, the file renamed) or dropped while we read: wait for
          // the fetch to say which, then look at the state again.
          if (!isMissingFile(err) && (err as NodeJS.ErrnoException)?.code !== 'EBADF') throw err;
          if (this.state === 'running') await this.changed(signal);
        }
        continue;
      }
      await this.changed(signal);
    }
    // A zero-length read, or a range that ended before the last byte: the caller still learns of failure.
    if (total === 0 || end === total - 1) {
      while (this.state === 'running') await this.changed(signal);
      if (this.state === 'failed') throw this.failure;
    }
  }
}
