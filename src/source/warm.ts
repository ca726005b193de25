/**
 * The `warmImages` setting: images this node keeps warm (and, with `warmPin`, pinned). They are prefetched soon
 * after start-up and checked again every `warmInterval`: an image already whole costs a tag lookup; a tag that
 * moved brings in the new image's missing blobs.
 */
import type { Logger } from 'pino';
import type { ContentStore } from '../store/index.ts';
import { prefetchImages } from './prefetch.ts';
import type { PullThrough } from './pull-through.ts';

export interface WarmListOptions {
  images: string[];
  pin: boolean;
  /** 0: only once, at start-up. */
  intervalMs: number;
  /** Wait before the first round, so that the peer network finds its peers first (default 3 s). */
  firstDelayMs?: number;
  pull: PullThrough;
  store: ContentStore;
  logger: Logger;
}

export class WarmList {
  private readonly opts: WarmListOptions;
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;
  private readonly controller = new AbortController();

  constructor(opts: WarmListOptions) {
    this.opts = opts;
  }

  start(): void {
    if (this.opts.images.length === 0 || this.timer) return;
    const schedule = (ms: number): void => {
      this.timer = setTimeout(() => {
        this.running = this.round().finally(() => {
          this.running = undefined;
          if (this.opts.intervalMs > 0 && !this.controller.signal.aborted) schedule(this.opts.intervalMs);
        });
      }, ms);
      this.timer.unref();
    };
    schedule(this.opts.firstDelayMs ?? 3000);
  }

  async stop(): Promise<void> {
    this.controller.abort();
    if (this.timer) clearTimeout(this.timer);
    await this.running?.catch(() => undefined);
  }

  private async round(): Promise<void> {
    const { images, pin, pull, store, logger } = this.opts;
    try {
      const outcomes = await prefetchImages(pull, store, images, { pin, pinReason: 'warmImages', signal: this.controller.signal });
      const failed = outcomes.filter((o) => !o.ok);
      const fetched = outcomes.reduce((n, o) => n + (o.fetchedBytes ?? 0), 0);
      logger[failed.length ? 'warn' : 'info'](
        { images: outcomes.length, failed: failed.map((o) => ({ reference: o.reference, error: o.error })), fetchedBytes: fetched, pinned: pin },
        failed.length ? 'warm images: some could not be fetched; they are tried again next round' : 'warm images are on this node',
      );
    } catch (err) {
      if (!this.controller.signal.aborted) logger.warn({ err: (err as Error).message }, 'warm images: round failed');
    }
  }
}
