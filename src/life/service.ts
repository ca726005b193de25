import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { SizeOrPercent } from '../limits/size.ts';
import type { ContentEvent, ContentStore, IoOptions } from '../store/index.ts';
import { collectGarbage, type GcReport } from './gc.ts';
import { LifecycleMetrics } from './metrics.ts';
import { StoreQuota, type QuotaStatus } from './quota.ts';
import { ReachabilityWalk } from './reachability.ts';
import type { RetentionRule } from './retention.ts';
import { Scrubber, type ScrubStatus } from './scrub.ts';

export interface LifecycleOptions {
  store: ContentStore;
  dataDir: string;
  logger: Logger;
  metrics: Registry;
  maxStore: number;
  minFree?: SizeOrPercent;
  gcIntervalMs: number;
  gcGraceMs: number;
  /** Told of each scheduled collection's outcome (the audit log records it). */
  onScheduledGc?: (outcome: { report?: GcReport; error?: Error }) => void;
  uploadTimeoutMs: number;
  scrubRate: number;
  /** Rest between two scrub passes. */
  scrubIntervalMs?: number;
  retention: RetentionRule[];
  /**
   * Fetches content again into `repository` (from peers or a seed) and waits until it is stored; used for pinned
   * content that was lost (corrupt bytes, a lost file). Without it, lost pinned content is only reported.
   */
  refetch?: (repository: string, digest: string, kind: 'manifest' | 'blob', opts: IoOptions) => Promise<void>;
  /** How long after start the first check for missing pinned content runs (default 5 s). */
  pinCheckDelayMs?: number;
}

export interface GcSummary {
  at: string;
  dryRun: boolean;
  tags: number;
  manifests: number;
  blobs: number;
  uploads: number;
  bytesFreed: number;
  ms: number;
  error?: string;
}

export interface LifecycleStatus {
  quota: QuotaStatus;
  pins: number;
  scrub: ScrubStatus;
  lastGc?: GcSummary;
  gcIntervalMs: number;
}

/** The store's lifecycle services, started and stopped by the node: quota and eviction, GC, scrub, pin repair. */
export class StoreLifecycle {
  readonly metrics: LifecycleMetrics;
  private readonly opts: LifecycleOptions;
  private readonly quota: StoreQuota;
  private readonly scrub: Scrubber;
  private readonly controller = new AbortController();
  private gcTimer?: NodeJS.Timeout;
  private pinCheckTimer?: NodeJS.Timeout;
  private gcRunning?: Promise<GcReport>;
  private lastGc?: GcSummary;
  private unwatch?: () => void;
  private readonly repairs = new Set<Promise<void>>();

  constructor(opts: LifecycleOptions) {
    this.opts = opts;
    this.metrics = new LifecycleMetrics(opts.metrics);
    this.quota = new StoreQuota({ store: opts.store, dataDir: opts.dataDir, maxStore: opts.maxStore, minFree: opts.minFree, logger: opts.logger, metrics: this.metrics });
    this.scrub = new Scrubber({ store: opts.store, rate: opts.scrubRate, pauseMs: opts.scrubIntervalMs, logger: opts.logger, metrics: this.metrics });
  }

  start(): void {
    this.quota.start();
    this.scrub.start();
    this.unwatch = this.opts.store.watch((e) => this.onContentEvent(e));
    // Pinned content lost while the node was down (a file the file system lost, a blob fsck --repair removed).
    this.track(this.restorePins());
    if (this.opts.gcIntervalMs > 0) {
      this.gcTimer = setInterval(() => {
        void this.runGc({})
          .then((report) => {
            this.opts.onScheduledGc?.({ report });
            this.track(this.restorePins());
          })
          .catch((err) => {
            this.opts.logger.error({ err }, 'garbage collection failed');
            this.opts.onScheduledGc?.({ error: err as Error });
          });
      }, this.opts.gcIntervalMs);
      this.gcTimer.unref();
    }
    // Pinned content lost while the node was down (fsck --repair removed it, a disk lost it) comes back once the
    // node has had a moment to reach its peers and seeds, then every 10 minutes while anything is still missing.
    const check = (): void => {
      const run = this.restoreMissingPinned()
        .catch((err) => this.opts.logger.warn({ err }, 'checking pinned content failed'))
        .then((missing) => {
          if (missing && !this.controller.signal.aborted) this.pinCheckTimer = setTimeout(check, 10 * 60_000).unref();
        });
      this.repairs.add(run);
      void run.finally(() => this.repairs.delete(run));
    };
    this.pinCheckTimer = setTimeout(check, this.opts.pinCheckDelayMs ?? 5_000).unref();
  }

  /** Fetches pinned content that is not in the store; true when some is still missing afterwards. */
  private async restoreMissingPinned(): Promise<boolean> {
    const { store, logger } = this.opts;
    const signal = this.controller.signal;
    const pins = await store.listPins({ signal });
    if (pins.length === 0) return false;
    const walk = new ReachabilityWalk(store, await store.listManifests({ signal }));
    let stillMissing = false;
    for (const pin of pins) {
      for (const digest of await walk.closure([pin.digest], { signal })) {
        if (signal.aborted) return false;
        if (await store.statContent(digest, { signal })) continue;
        if (!this.opts.refetch) {
          logger.error({ digest, repository: pin.repository }, 'pinned content is missing and this node has no peers or seeds to fetch it from');
          stillMissing = true;
          continue;
        }
        try {
          await this.opts.refetch(pin.repository, digest, walk.manifestDigests.has(digest) ? 'manifest' : 'blob', { signal });
          this.metrics.refetches.inc({ result: 'ok' });
          logger.info({ digest, repository: pin.repository }, 'missing pinned content fetched again');
        } catch (err) {
          this.metrics.refetches.inc({ result: 'error' });
          logger.warn({ digest, repository: pin.repository, err: (err as Error).message }, 'missing pinned content could not be fetched yet');
          stillMissing = true;
        }
      }
    }
    return stillMissing;
  }

  /** Runs a background repair; stop() waits for it; its failure is logged. */
  private track(work: Promise<unknown>): void {
    const repair = work.then(
      () => undefined,
      (err) => {
        if (!this.controller.signal.aborted) this.opts.logger.warn({ err }, 'could not fetch lost pinned content again');
      },
    );
    this.repairs.add(repair);
    void repair.finally(() => this.repairs.delete(repair));
  }

  /**
   * Fetches again every piece of pinned content the store lacks: a pin's manifest, the manifests it reaches, their
   * configs and layers, referrers. A missing manifest hides what it names, so this goes round until nothing more is
   * found missing or nothing more could be fetched.
   */
  async restorePins(): Promise<{ missing: number; fetched: number }> {
    const { store, logger } = this.opts;
    const signal = this.controller.signal;
    const pins = await store.listPins({ signal });
    let missing = 0;
    let fetched = 0;
    const tried = new Set<string>();
    for (let round = 0; round < 8 && pins.length > 0; round++) {
      const walk = new ReachabilityWalk(store, await store.listManifests({ signal }));
      const lost = new Map<string, { repository: string; kind: 'manifest' | 'blob' }>();
      for (const pin of pins) {
        for (const digest of await walk.closure([pin.digest], { signal })) {
          if (lost.has(digest) || tried.has(digest) || (await store.statContent(digest, { signal }))) continue;
          lost.set(digest, { repository: pin.repository, kind: walk.manifestDigests.has(digest) ? 'manifest' : 'blob' });
        }
      }
      if (lost.size === 0) break;
      missing += lost.size;
      if (!this.opts.refetch) {
        logger.error({ missing: lost.size, digests: [...lost.keys()].slice(0, 20) }, 'pinned content is missing and this node has no peers or seeds to fetch it from again');
        break;
      }
      let now = 0;
      for (const [digest, { repository, kind }] of lost) {
        tried.add(digest);
        try {
          await this.opts.refetch(repository, digest, kind, { signal });
          this.metrics.refetches.inc({ result: 'ok' });
          now++;
        } catch (err) {
          if (signal.aborted) throw err;
          this.metrics.refetches.inc({ result: 'error' });
          logger.warn({ err, digest, repository }, 'could not fetch lost pinned content again');
        }
      }
      fetched += now;
      if (now === 0) break;
    }
    if (missing > 0) logger.info({ missing, fetched }, 'pinned content that was missing fetched again');
    return { missing, fetched };
  }

  async stop(): Promise<void> {
    this.controller.abort();
    clearInterval(this.gcTimer);
    clearTimeout(this.pinCheckTimer);
    this.unwatch?.();
    await Promise.allSettled([this.quota.stop(), this.scrub.stop(), this.gcRunning, ...this.repairs]);
  }

  /** A write failed for lack of space: evict now. */
  storageFull(): void {
    this.quota.relieve();
  }

  /** Evicts what must go for a write of `bytes` to fit (see StoreQuota.makeRoom). */
  makeRoom(bytes: number, opts: IoOptions = {}): Promise<void> {
    return this.quota.makeRoom(bytes, opts);
  }

  /** Waits for the quota check under way (tests, status). */
  settled(): Promise<void> {
    return this.quota.settled();
  }

  async status(opts: IoOptions = {}): Promise<LifecycleStatus> {
    return {
      quota: await this.quota.status(opts),
      pins: (await this.opts.store.listPins(opts)).length,
      scrub: this.scrub.status(),
      lastGc: this.lastGc,
      gcIntervalMs: this.opts.gcIntervalMs,
    };
  }

  /** One collection at a time: a request while one runs waits for it and then runs its own. */
  async runGc(opts: { dryRun?: boolean; signal?: AbortSignal }): Promise<GcReport> {
    while (this.gcRunning) await this.gcRunning.catch(() => undefined);
    const signal = opts.signal ? AbortSignal.any([opts.signal, this.controller.signal]) : this.controller.signal;
    const run = collectGarbage(this.opts.store, {
      graceMs: this.opts.gcGraceMs,
      uploadTimeoutMs: this.opts.uploadTimeoutMs,
      retention: this.opts.retention,
      dryRun: opts.dryRun,
      signal,
    });
    this.gcRunning = run;
    try {
      const report = await run;
      const { items: _items, started, ...counts } = report;
      this.lastGc = { at: started, ...counts };
      if (!report.dryRun) {
        this.metrics.gcRuns.inc({ result: 'ok' });
        this.metrics.gcFreedBytes.inc(report.bytesFreed);
      }
      this.opts.logger.info({ ...counts }, report.dryRun ? 'garbage collection (dry run)' : 'garbage collection');
      return report;
    } catch (err) {
      if (!opts.dryRun) this.metrics.gcRuns.inc({ result: 'error' });
      this.lastGc = { at: new Date().toISOString(), dryRun: opts.dryRun === true, tags: 0, manifests: 0, blobs: 0, uploads: 0, bytesFreed: 0, ms: 0, error: (err as Error).message };
      throw err;
    } finally {
      this.gcRunning = undefined;
    }
  }

  /** Lost pinned content (corrupt, or its file gone) is fetched again. */
  private onContentEvent(e: ContentEvent): void {
    if (e.type !== 'removed' || (e.reason !== 'corrupt' && e.reason !== 'missing')) return;
    this.track(this.repairPinned(e.digest));
  }

  private async repairPinned(digest: string): Promise<void> {
    const { store, logger } = this.opts;
    const signal = this.controller.signal;
    const pins = await store.listPins({ signal });
    if (pins.length === 0) return;
    const walk = new ReachabilityWalk(store, await store.listManifests({ signal }));
    for (const pin of pins) {
      if (!(await walk.closure([pin.digest], { signal })).has(digest)) continue;
      if (!this.opts.refetch) {
        logger.error({ digest, repository: pin.repository }, 'pinned content was lost and this node has no peers or seeds to fetch it from again');
        return;
      }
      try {
        await this.opts.refetch(pin.repository, digest, walk.manifestDigests.has(digest) ? 'manifest' : 'blob', { signal });
        this.metrics.refetches.inc({ result: 'ok' });
        logger.info({ digest, repository: pin.repository }, 'lost pinned content fetched again');
      } catch (err) {
        this.metrics.refetches.inc({ result: 'error' });
        throw err;
      }
      return;
    }
  }
}
