import type { Logger } from 'pino';
import { bytesOfShare, type SizeOrPercent } from '../limits/size.ts';
import type { ContentStore, IoOptions } from '../store/index.ts';
import { diskSpace } from '../store/disk-space.ts';
import type { LifecycleMetrics } from './metrics.ts';
import { pinnedDigests } from './reachability.ts';

export interface QuotaOptions {
  store: ContentStore;
  /** Where the store lives, for free space. */
  dataDir: string;
  /** Bytes of stored content allowed; 0: no quota. */
  maxStore: number;
  /** Free space to keep on the data file system; undefined: none. */
  minFree?: SizeOrPercent;
  /** Eviction goes down to this fraction of the quota (and this much above the free-space mark). */
  lowWatermark?: number;
  logger: Logger;
  metrics: LifecycleMetrics;
  /** How often usage is checked besides after each write. */
  intervalMs?: number;
}

export interface QuotaStatus {
  storedBytes: number;
  maxStore: number;
  /** Free and total bytes of the data file system. */
  freeBytes?: number;
  totalBytes?: number;
  minFreeBytes?: number;
  pinnedBytes: number;
  pinsOverQuota: boolean;
  lastEviction?: { at: string; blobs: number; bytes: number; reason: string };
}

/** What a full disk makes free at least (a share of the file system), whatever the configured marks. */
const DISK_FULL_RESERVE = 0.05;

/** Usage of the data file system: free and total bytes (undefined when the file system cannot say). */
function diskUsage(dir: string): Promise<{ free: number; total: number } | undefined> {
  return diskSpace(dir).catch(() => undefined);
}

/**
 * Keeps the store under its quota and the file system above its free-space mark: when either is crossed, the
 * least recently used blobs that are not pinned, not manifests and not in use are evicted until usage is under the
 * low watermark. Checked after every write (coalesced), periodically, and when a write hit a full disk.
 */
export class StoreQuota {
  private readonly opts: QuotaOptions;
  private timer?: NodeJS.Timeout;
  private unwatch?: () => void;
  private running?: Promise<void>;
  private again = false;
  /** Set when a write hit a full disk: the next check frees at least DISK_FULL_RESERVE of the file system. */
  private diskFull = false;
  private stopped = false;
  private readonly controller = new AbortController();
  private state: QuotaStatus;

  constructor(opts: QuotaOptions) {
    this.opts = opts;
    this.state = { storedBytes: 0, maxStore: opts.maxStore, pinnedBytes: 0, pinsOverQuota: false };
    opts.metrics.quotaBytes.set(opts.maxStore);
  }

  /** Whether usage is watched; a disk that filled up is handled either way (storageFull, makeRoom). */
  get enabled(): boolean {
    return this.opts.maxStore > 0 || this.opts.minFree !== undefined;
  }

  start(): void {
    if (!this.enabled) return;
    this.unwatch = this.opts.store.watch((e) => {
      if (e.type === 'added') this.poke();
    });
    this.timer = setInterval(() => this.poke(), this.opts.intervalMs ?? 30_000);
    this.timer.unref();
    this.poke();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.controller.abort();
    clearInterval(this.timer);
    this.unwatch?.();
    await this.running?.catch(() => undefined);
  }

  /** Asks for a check soon; checks never overlap (one more runs after the current one when asked meanwhile). */
  poke(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = (async () => {
      do {
        this.again = false;
        try {
          await this.check({ signal: this.controller.signal });
        } catch (err) {
          if (!this.controller.signal.aborted) this.opts.logger.error({ err }, 'quota check failed');
        }
      } while (this.again && !this.stopped);
    })().finally(() => (this.running = undefined));
  }

  /** Waits for the check under way, if any (tests and `shoal status`). */
  async settled(): Promise<void> {
    while (this.running) await this.running;
  }

  async status(opts: IoOptions = {}): Promise<QuotaStatus> {
    const stats = await this.opts.store.stats(opts);
    const disk = await diskUsage(this.opts.dataDir);
    return {
      ...this.state,
      storedBytes: stats.bytes,
      freeBytes: disk?.free,
      totalBytes: disk?.total,
      minFreeBytes: disk ? this.minFreeBytes(disk.total) : undefined,
    };
  }

  private minFreeBytes(total: number): number | undefined {
    const m = this.opts.minFree;
    if (!m) return undefined;
    return bytesOfShare(m, total);
  }

  /** A write failed for lack of space: evict until a reserve of the file system is free, marks or not. */
  relieve(): void {
    this.diskFull = true;
    this.poke();
  }

  /**
   * Makes room for a write of `bytes` that is about to start (a blob fetched from a seed): evicts until the store
   * stays under its marks with it. Resolves when done; what cannot be freed is for the write itself to find out.
   */
  async makeRoom(bytes: number, opts: IoOptions = {}): Promise<void> {
    await this.settled();
    await this.check(opts, bytes);
  }

  /** How many bytes must go now, for a write of `extra` bytes to fit (0: under both marks). */
  private async excess(extra = 0): Promise<{ need: number; reason: string; disk?: { free: number; total: number } }> {
    const { store, maxStore } = this.opts;
    const low = this.opts.lowWatermark ?? 0.9;
    const stored = (await store.stats()).bytes;
    const disk = await diskUsage(this.opts.dataDir);
    if (disk) this.opts.metrics.freeBytes.set(disk.free);
    let need = 0;
    let reason = '';
    if (maxStore > 0 && stored + extra > maxStore) {
      need = stored + extra - Math.floor(maxStore * low);
      reason = extra > 0 ? `a ${extra}-byte write would take the store over its quota of ${maxStore}` : `the store holds ${stored} bytes, over its quota of ${maxStore}`;
    }
    let minFree = (disk ? this.minFreeBytes(disk.total) : undefined) ?? (extra > 0 ? 0 : undefined);
    if (this.diskFull && disk) {
      this.diskFull = false;
      minFree = Math.max(minFree ?? 0, Math.ceil(disk.total * DISK_FULL_RESERVE));
    }
    if (disk && minFree !== undefined && disk.free < minFree + extra) {
      const want = Math.ceil(minFree + minFree * (1 - low)) + extra - disk.free;
      if (want > need) {
        need = want;
        reason = extra > 0 ? `a ${extra}-byte write needs room on the data file system (${disk.free} bytes free, mark ${minFree})` : `the data file system has ${disk.free} bytes free, under the mark of ${minFree}`;
      }
    }
    return { need, reason, disk };
  }

  private async check(opts: IoOptions, extra = 0): Promise<void> {
    const { store, logger, metrics } = this.opts;
    const { need, reason } = await this.excess(extra);
    this.state.storedBytes = (await store.stats()).bytes;
    if (need <= 0) {
      if (this.state.pinsOverQuota) {
        this.state.pinsOverQuota = false;
        metrics.pinsOverQuota.set(0);
      }
      return;
    }
    const pinned = await pinnedDigests(store, opts);
    const manifests = new Set((await store.listManifests(opts)).map((m) => m.digest));
    const entries = await store.listEntries(opts);
    let pinnedBytes = 0;
    for (const e of entries) if (pinned.has(e.digest)) pinnedBytes += e.size;
    this.state.pinnedBytes = pinnedBytes;
    metrics.pinnedBytes.set(pinnedBytes);
    const candidates = entries.filter((e) => !pinned.has(e.digest) && !manifests.has(e.digest)).sort((a, b) => a.accessed - b.accessed);
    let freed = 0;
    let blobs = 0;
    for (const c of candidates) {
      if (freed >= need || opts.signal?.aborted) break;
      // Re-checked under the digest's lock: read since the list was made, or being read, it stays.
      const removed = await store.removeContent(c.digest, 'evicted', { onlyIf: (e) => !store.inUse(e.digest) && e.accessed <= c.accessed });
      if (!removed) continue;
      freed += c.size;
      blobs++;
      metrics.evictions.inc();
      metrics.evictedBytes.inc(c.size);
    }
    if (blobs > 0) {
      this.state.lastEviction = { at: new Date().toISOString(), blobs, bytes: freed, reason };
      logger.info({ blobs, bytes: freed, reason }, 'evicted least recently used blobs');
    }
    const over = freed < need;
    if (over && !this.state.pinsOverQuota) {
      logger.warn(
        { pinnedBytes, need, freed, reason },
        'cannot get under the quota or free-space mark without evicting pinned content, which stays: raise the quota, free disk space or unpin images (shoal pins lists them)',
      );
    }
    this.state.pinsOverQuota = over;
    metrics.pinsOverQuota.set(over ? 1 : 0);
    this.state.storedBytes = (await store.stats()).bytes;
  }
}
