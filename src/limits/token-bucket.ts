/** Waits `ms`, or rejects as soon as `signal` aborts; leaves no listener behind either way. */
function sleepUnlessAborted(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason ?? new Error('aborted'));
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal!.reason ?? new Error('aborted'));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * A byte-rate limiter: `take(n)` resolves when `n` bytes may pass at `rate` bytes per second, with bursts of up
 * to `burst` bytes. A rate of 0 means unlimited. Each instance keeps its own state.
 */
export class TokenBucket {
  private readonly rate: number;
  private readonly burst: number;
  private tokens: number;
  private last: number;
  private queue: Promise<void> = Promise.resolve();

  constructor(bytesPerSecond: number, burst = Math.max(bytesPerSecond / 4, 256 * 1024)) {
    this.rate = bytesPerSecond;
    this.burst = burst;
    this.tokens = burst;
    this.last = Date.now();
  }

  get unlimited(): boolean {
    return this.rate <= 0;
  }

  /** Waits until `n` bytes may pass. Callers are served in order. */
  take(n: number, signal?: AbortSignal): Promise<void> {
    if (this.unlimited) return Promise.resolve();
    const next = this.queue.then(() => this.wait(n, signal));
    this.queue = next.catch(() => undefined);
    return next;
  }

  private async wait(n: number, signal?: AbortSignal): Promise<void> {
    for (;;) {
      if (signal?.aborted) throw signal.reason ?? new Error('aborted');
      const now = Date.now();
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate);
      this.last = now;
      // A request bigger than the burst passes once the bucket is full, and leaves it in debt.
      if (this.tokens >= Math.min(n, this.burst)) {
        this.tokens -= n;
        return;
      }
      const ms = Math.ceil(((Math.min(n, this.burst) - this.tokens) / this.rate) * 1000);
      await sleepUnlessAborted(ms, signal);
    }
  }
}
