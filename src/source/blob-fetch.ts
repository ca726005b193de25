import type { Logger } from 'pino';
import { Readable } from 'node:stream';
import { AbortedError, NotFoundError, UnavailableError, isShoalError } from '../oci/index.ts';
import type { ByteRange, ContentStore, Ingest, IoOptions } from '../store/index.ts';
import type { PullMetrics } from './metrics.ts';
import type { SeedSet } from './types.ts';

export interface BlobFetchOptions {
  store: ContentStore;
  seeds: SeedSet;
  digest: string;
  /** Repository the blob is committed into. */
  repository: string;
  /** Repository name on the seed. */
  upstreamRepository: string;
  metrics: PullMetrics;
  logger: Logger;
  /** Transfers tried in all (across seeds, resuming by Range) before giving up. */
  maxAttempts?: number;
}

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

  private async run(): Promise<void> {
    const { store, seeds, digest, upstreamRepository, metrics, logger } = this.opts;
    const maxAttempts = this.opts.maxAttempts ?? Math.max(3, seeds.seeds.length);
    const signal = this.controller.signal;
    this.ingest = await store.openIngest({ signal });
    const notFound = new Set<number>();
    let attempt = 0;
    let index = 0;
    try {
      for (;;) {
        const seed = seeds.seeds[index % seeds.seeds.length]!;
        attempt++;
        try {
          const range: ByteRange | undefined = this.written > 0 && this.total !== undefined ? { start: this.written, end: this.total - 1 } : undefined;
          const res = await seed.getBlob(upstreamRepository, digest, { signal, range });
          if (this.total === undefined) {
            this.total = res.size;
            this.resolveSize(res.size);
          } else if (res.size !== this.total) {
            throw new UnavailableError(`seed ${seed.url} reports ${res.size} bytes for ${digest}, earlier ${this.total}`);
          }
          for await (const chunk of res.stream as AsyncIterable<Uint8Array>) {
            await this.ingest.append(chunk, { signal });
            this.written += chunk.length;
            metrics.seedBytes.inc({ registry: seeds.registry }, chunk.length);
            this.notify();
          }
          metrics.seedRequests.inc({ registry: seeds.registry, outcome: 'ok' });
          break;
        } catch (err) {
          if (signal.aborted) throw new AbortedError('node is stopping');
          const code = isShoalError(err) ? err.code : undefined;
          const outcome = code === 'BLOB_UNKNOWN' ? 'not_found' : code === 'DIGEST_INVALID' ? 'corrupt' : 'error';
          metrics.seedRequests.inc({ registry: seeds.registry, outcome });
          logger.warn({ seed: seed.url, digest, attempt, written: this.written, err: (err as Error).message }, 'seed transfer failed');
          if (outcome === 'corrupt') throw err;
          if (outcome === 'not_found') {
            notFound.add(index % seeds.seeds.length);
            if (notFound.size >= seeds.seeds.length) {
              throw new NotFoundError('BLOB_UNKNOWN', `blob ${digest} is neither on this node nor on its seeds for ${seeds.registry}`, { digest });
            }
          }
          if (attempt >= maxAttempts) throw err;
          index++;
        }
      }
      await this.ingest.commit(this.opts.repository, { digest, size: this.total }, { signal });
      logger.info({ digest, size: this.total, registry: seeds.registry }, 'blob fetched from seed and committed');
    } catch (err) {
      await this.ingest.abort();
      throw err;
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
          // The ingest was committed (renamed) or dropped while we read: loop and look at the state again.
          if (!isMissingFile(err)) throw err;
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
