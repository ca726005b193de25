import { Counter, Gauge, type Registry } from 'prom-client';

/** Metrics of the store's lifecycle: quota, eviction, collection, scrub, corruption. */
export class LifecycleMetrics {
  readonly pinnedBytes: Gauge;
  readonly quotaBytes: Gauge;
  readonly pinsOverQuota: Gauge;
  readonly freeBytes: Gauge;
  readonly evictions: Counter;
  readonly evictedBytes: Counter;
  readonly gcRuns: Counter<'result'>;
  readonly gcFreedBytes: Counter;
  readonly scrubBytes: Counter;
  readonly scrubBlobs: Counter;
  readonly scrubPasses: Counter;
  readonly corrupt: Counter<'found_by'>;
  readonly refetches: Counter<'result'>;

  constructor(registry: Registry) {
    const registers = [registry];
    this.pinnedBytes = new Gauge({ name: 'shoal_store_pinned_bytes', help: 'Bytes of content that pins hold (as of the last quota check)', registers });
    this.quotaBytes = new Gauge({ name: 'shoal_store_quota_bytes', help: 'The store quota (maxStore) in bytes; 0 when none', registers });
    this.pinsOverQuota = new Gauge({ name: 'shoal_store_pins_over_quota', help: '1 when pinned content alone does not fit under the quota or free-space mark', registers });
    this.freeBytes = new Gauge({ name: 'shoal_store_free_bytes', help: 'Free bytes on the data file system (as of the last quota check)', registers });
    this.evictions = new Counter({ name: 'shoal_evictions_total', help: 'Blobs evicted to stay under the quota or free-space mark', registers });
    this.evictedBytes = new Counter({ name: 'shoal_evicted_bytes_total', help: 'Bytes evicted', registers });
    this.gcRuns = new Counter({ name: 'shoal_gc_runs_total', help: 'Garbage collections run (dry runs not counted)', labelNames: ['result'], registers });
    this.gcFreedBytes = new Counter({ name: 'shoal_gc_freed_bytes_total', help: 'Bytes freed by garbage collection', registers });
    this.scrubBytes = new Counter({ name: 'shoal_scrub_bytes_total', help: 'Bytes re-hashed by the background scrub', registers });
    this.scrubBlobs = new Counter({ name: 'shoal_scrub_blobs_total', help: 'Blobs re-hashed by the background scrub', registers });
    this.scrubPasses = new Counter({ name: 'shoal_scrub_passes_total', help: 'Complete passes of the scrub over the store', registers });
    // Shared with the pull path (a peer's report, a chunk that failed its check): whoever registers it first owns it.
    this.corrupt =
      (registry.getSingleMetric('shoal_corrupt_blobs_total') as Counter<'found_by'> | undefined) ??
      new Counter({ name: 'shoal_corrupt_blobs_total', help: 'Blobs whose bytes no longer matched their digest, by who found it', labelNames: ['found_by'], registers });
    this.refetches = new Counter({ name: 'shoal_pinned_refetches_total', help: 'Pinned content fetched again after it was lost', labelNames: ['result'], registers });
  }
}
