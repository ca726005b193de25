import type { Logger } from 'pino';
import { TokenBucket } from '../limits/token-bucket.ts';
import type { ContentStore } from '../store/index.ts';
import type { LifecycleMetrics } from './metrics.ts';

export interface ScrubOptions {
  store: ContentStore;
  /** Bytes re-hashed per second at most; 0 turns the scrub off. */
  rate: number;
  /** Pause between two passes over the store. */
  pauseMs?: number;
  logger: Logger;
  metrics: LifecycleMetrics;
}

export interface ScrubStatus {
  enabled: boolean;
  rate: number;
  passes: number;
  /** The pass under way: blobs and bytes checked out of the store's total at its start. */
  current?: { started: string; blobs: number; bytes: number; totalBlobs: number; totalBytes: number };
  lastPass?: { finished: string; blobs: number; bytes: number; corrupt: number };
  corruptFound: number;
}

/** Waits `ms`, or less when `signal` aborts (also when it already has). */
function pauseUnlessAborted(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    if (signal.aborted) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}

/**
 * Re-hashes every stored blob at a bounded rate, over and over. A blob whose bytes no longer match its digest is
 * taken out of the store (and so out of routing); the lifecycle service fetches it again when it is pinned.
 */
export class Scrubber {
  private readonly opts: ScrubOptions;
  private readonly controller = new AbortController();
  private loop?: Promise<void>;
  private readonly state: ScrubStatus;

  constructor(opts: ScrubOptions) {
    this.opts = opts;
    this.state = { enabled: opts.rate > 0, rate: opts.rate, passes: 0, corruptFound: 0 };
  }

  start(): void {
    if (this.opts.rate <= 0 || this.loop) return;
    this.loop = this.run().catch((err) => {
      if (!this.controller.signal.aborted) this.opts.logger.error({ err }, 'scrub stopped');
    });
  }

  async stop(): Promise<void> {
    this.controller.abort();
    await this.loop;
  }

  status(): ScrubStatus {
    return structuredClone(this.state);
  }

  private async run(): Promise<void> {
    const { store, logger, metrics } = this.opts;
    const signal = this.controller.signal;
    const bucket = new TokenBucket(this.opts.rate);
    while (!signal.aborted) {
      const entries = await store.listEntries({ signal });
      const current = {
        started: new Date().toISOString(),
        blobs: 0,
        bytes: 0,
        totalBlobs: entries.length,
        totalBytes: entries.reduce((n, e) => n + e.size, 0),
      };
      this.state.current = current;
      let corrupt = 0;
      for (const e of entries) {
        // Paid before the read, in pieces, so that a big blob does not read in one burst.
        for (let left = e.size; left > 0; left -= 4 * 1024 * 1024) await bucket.take(Math.min(left, 4 * 1024 * 1024), signal);
        const outcome = await store.verifyContent(e.digest, { signal });
        if (outcome === 'missing') continue;
        current.blobs++;
        current.bytes += e.size;
        metrics.scrubBlobs.inc();
        metrics.scrubBytes.inc(e.size);
        if (outcome === 'corrupt') {
          corrupt++;
          this.state.corruptFound++;
          metrics.corrupt.inc({ found_by: 'scrub' });
          logger.error({ digest: e.digest, size: e.size }, 'scrub: stored bytes no longer match their digest; the blob was taken out of the store');
        }
      }
      this.state.passes++;
      metrics.scrubPasses.inc();
      this.state.lastPass = { finished: new Date().toISOString(), blobs: current.blobs, bytes: current.bytes, corrupt };
      this.state.current = undefined;
      logger.info({ blobs: current.blobs, bytes: current.bytes, corrupt }, 'scrub pass finished');
      await pauseUnlessAborted(this.opts.pauseMs ?? 3_600_000, signal);
    }
  }
}
