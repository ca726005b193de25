/**
 * Where a node's bytes came from, recently: blob bytes by source (local store, peers, seeds) per minute over the
 * last hour, and the last blob pulls with the source that served each. Kept in memory by the node (a restart
 * starts it empty); `GET /shoal/traffic` serves it to the node's page and the CLI.
 */
import type { PullMetrics } from './metrics.ts';

export const TRAFFIC_SOURCES = ['local', 'peer', 'seed'] as const;
export type TrafficSource = (typeof TRAFFIC_SOURCES)[number];

/** One blob served to a client. */
export interface PullRecord {
  /** When the response finished, ms since the epoch. */
  at: number;
  repository: string;
  digest: string;
  /** Bytes written to the client's socket (a pull cut short counts what reached the socket, not what was read for it). */
  bytes: number;
  /** local: from the store; peer, seed or peer+seed: fetched for this pull (or joined a fetch in flight). */
  source: 'local' | 'peer' | 'seed' | 'peer+seed';
  /** False when the client went away before the end. */
  complete: boolean;
}

export interface TrafficMinute {
  /** Start of the minute, ms since the epoch. */
  start: number;
  local: number;
  peer: number;
  seed: number;
}

export interface TrafficReport {
  /** Oldest first; minutes without bytes are present with zeros, the current minute last. */
  minutes: TrafficMinute[];
  totals: Record<TrafficSource, number>;
  /** Newest first. */
  recentPulls: PullRecord[];
}

export interface PullTrafficOptions {
  metrics: PullMetrics;
  /** Minutes kept (default 60). */
  minutes?: number;
  /** Pulls kept (default 50). */
  pulls?: number;
  /** How often the byte counters are sampled, ms (default 5000). */
  sampleMs?: number;
  now?: () => number;
}

const MINUTE = 60_000;

/** The ring of per-minute byte counts (sampled from `shoal_pull_bytes_total`) and the ring of recent pulls. */
export class PullTraffic {
  private readonly metrics: PullMetrics;
  private readonly keep: number;
  private readonly keepPulls: number;
  private readonly sampleMs: number;
  private readonly now: () => number;
  private readonly buckets = new Map<number, TrafficMinute>();
  private readonly pulls: PullRecord[] = [];
  private last?: Record<TrafficSource, number>;
  private timer?: NodeJS.Timeout;
  private sampling?: Promise<void>;

  constructor(opts: PullTrafficOptions) {
    this.metrics = opts.metrics;
    this.keep = opts.minutes ?? 60;
    this.keepPulls = opts.pulls ?? 50;
    this.sampleMs = opts.sampleMs ?? 5000;
    this.now = opts.now ?? Date.now;
  }

  start(): void {
    if (this.timer) return;
    void this.sample();
    this.timer = setInterval(() => void this.sample(), this.sampleMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.sampling;
  }

  /** A blob served to a client (the registry calls this when the response ends). */
  recordPull(pull: PullRecord): void {
    this.pulls.unshift(pull);
    if (this.pulls.length > this.keepPulls) this.pulls.length = this.keepPulls;
  }

  private async counters(): Promise<Record<TrafficSource, number>> {
    const out: Record<TrafficSource, number> = { local: 0, peer: 0, seed: 0 };
    const metric = await this.metrics.pullBytes.get();
    for (const v of metric.values) {
      const source = v.labels.source as TrafficSource | undefined;
      if (source && source in out) out[source] += v.value;
    }
    return out;
  }

  /** Adds the bytes counted since the last sample to the current minute. */
  sample(): Promise<void> {
    this.sampling ??= (async () => {
      try {
        const now = await this.counters();
        const previous = this.last;
        this.last = now;
        // The first sample only sets the baseline: what came before the node started its ring is not this hour's.
        if (!previous) return;
        const start = Math.floor(this.now() / MINUTE) * MINUTE;
        let bucket = this.buckets.get(start);
        if (!bucket) this.buckets.set(start, (bucket = { start, local: 0, peer: 0, seed: 0 }));
        for (const s of TRAFFIC_SOURCES) bucket[s] += Math.max(0, now[s] - previous[s]);
        for (const key of this.buckets.keys()) if (key <= start - this.keep * MINUTE) this.buckets.delete(key);
      } finally {
        this.sampling = undefined;
      }
    })();
    return this.sampling;
  }

  /** The last hour, minute by minute, with the bytes counted up to now. */
  async report(): Promise<TrafficReport> {
    await this.sample();
    const current = Math.floor(this.now() / MINUTE) * MINUTE;
    const minutes: TrafficMinute[] = [];
    const totals: Record<TrafficSource, number> = { local: 0, peer: 0, seed: 0 };
    for (let i = this.keep - 1; i >= 0; i--) {
      const start = current - i * MINUTE;
      const b = this.buckets.get(start) ?? { start, local: 0, peer: 0, seed: 0 };
      minutes.push({ ...b });
      for (const s of TRAFFIC_SOURCES) totals[s] += b[s];
    }
    return { minutes, totals, recentPulls: this.pulls.map((p) => ({ ...p })) };
  }
}
