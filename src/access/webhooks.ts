/**
 * Webhooks: every push and delete is POSTed to the configured URLs as a notification envelope of the form CNCF
 * distribution sends (`{"events":[{id, timestamp, action, target: {mediaType, size, digest, repository, tag},
 * actor: {name}, request, source}]}`), so tools that already read those notifications read these.
 *
 * `notify()` only queues: a request never waits for a webhook. Each target has its own queue, delivered in order
 * by one worker; a failed delivery (an error, a timeout, or an answer that is not 2xx) is retried with
 * exponential backoff up to `attempts` times, then dropped and logged. A queue holds at most `maxQueue` events;
 * beyond that the oldest are dropped (and counted).
 */
import { randomUUID } from 'node:crypto';
import { Agent, request } from 'undici';

export type WebhookEventAction = 'push' | 'delete';

export interface WebhookConfig {
  url: string;
  /** Which actions to send; default both. */
  events?: WebhookEventAction[];
  /** Extra request headers, e.g. Authorization for the receiver. */
  headers?: Record<string, string>;
  /** Per attempt, ms. */
  timeoutMs?: number;
  /** Deliveries tried before an event is dropped. */
  attempts?: number;
  /** The first retry's delay in ms; each next one doubles, up to a minute. */
  backoffMs?: number;
}

export const WEBHOOK_DEFAULTS = { timeoutMs: 5_000, attempts: 6, backoffMs: 1_000, maxQueue: 1_000 } as const;
const MAX_BACKOFF_MS = 60_000;

/** Checks webhook settings as they come from the config file or the environment; throws with what is wrong. */
export function parseWebhooks(value: unknown, origin: string, parseDurationMs: (v: string, setting: string) => number): WebhookConfig[] {
  const items = typeof value === 'string' ? value.split(',').map((v) => v.trim()).filter(Boolean) : value;
  if (!Array.isArray(items)) throw new Error(`${origin}: expected a list of webhooks such as [{url: http://scanner:8080/hook}]`);
  return items.map((raw, i) => {
    const where = `${origin}[${i}]`;
    const w: Record<string, unknown> = typeof raw === 'string' ? { url: raw } : (raw as Record<string, unknown>);
    if (typeof w !== 'object' || w === null || Array.isArray(w)) throw new Error(`${where}: expected a URL or {url, events, headers, timeout, attempts, backoff}`);
    for (const k of Object.keys(w)) {
      if (!['url', 'events', 'headers', 'timeout', 'attempts', 'backoff'].includes(k)) throw new Error(`${where}: unknown key ${JSON.stringify(k)}`);
    }
    let url: URL;
    try {
      url = new URL(String(w.url));
    } catch {
      throw new Error(`${where}.url: ${JSON.stringify(w.url)} is not a URL`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`${where}.url: must be http:// or https://`);
    const out: WebhookConfig = { url: url.toString() };
    if (w.events !== undefined) {
      if (!Array.isArray(w.events) || w.events.length === 0 || w.events.some((e) => e !== 'push' && e !== 'delete')) {
        throw new Error(`${where}.events: expected a list of push and delete`);
      }
      out.events = w.events as WebhookEventAction[];
    }
    if (w.headers !== undefined) {
      if (typeof w.headers !== 'object' || w.headers === null || Array.isArray(w.headers) || Object.values(w.headers).some((v) => typeof v !== 'string')) {
        throw new Error(`${where}.headers: expected a mapping of header name to value`);
      }
      out.headers = w.headers as Record<string, string>;
    }
    const duration = (k: 'timeout' | 'backoff'): number | undefined => {
      const v = w[k];
      if (v === undefined) return undefined;
      const ms = parseDurationMs(String(v), `${where}.${k}`);
      if (ms <= 0) throw new Error(`${where}.${k}: must be more than 0`);
      return ms;
    };
    out.timeoutMs = duration('timeout');
    out.backoffMs = duration('backoff');
    if (w.attempts !== undefined) {
      if (typeof w.attempts !== 'number' || !Number.isInteger(w.attempts) || w.attempts < 1 || w.attempts > 100) throw new Error(`${where}.attempts: expected a whole number from 1 to 100`);
      out.attempts = w.attempts;
    }
    return out;
  });
}

/** What happened, as a receiver gets it. */
export interface WebhookEvent {
  id: string;
  timestamp: string;
  action: WebhookEventAction;
  target: {
    mediaType?: string;
    size?: number;
    digest?: string;
    repository: string;
    tag?: string;
    url?: string;
  };
  request?: { addr?: string; method?: string; useragent?: string; host?: string };
  actor: { name: string };
  source?: { addr?: string };
}

export type WebhookEventInput = Omit<WebhookEvent, 'id' | 'timestamp'>;

export const WEBHOOK_CONTENT_TYPE = 'application/vnd.docker.distribution.events.v1+json';

export interface WebhookLog {
  warn(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

export type DeliveryResult = 'delivered' | 'retried' | 'dropped';

interface Target {
  config: Required<Omit<WebhookConfig, 'headers' | 'events'>> & Pick<WebhookConfig, 'headers' | 'events'>;
  queue: WebhookEvent[];
  working: boolean;
}

export class WebhookDispatcher {
  private readonly targets: Target[];
  private readonly agent = new Agent({ connections: 4 });
  private readonly log: WebhookLog;
  private readonly maxQueue: number;
  private readonly onResult: (url: string, result: DeliveryResult) => void;
  private readonly stopping = new AbortController();
  private readonly workers = new Set<Promise<void>>();

  constructor(webhooks: WebhookConfig[], opts: { logger: WebhookLog; maxQueue?: number; onResult?: (url: string, result: DeliveryResult) => void }) {
    this.targets = webhooks.map((w) => ({
      config: {
        url: w.url,
        events: w.events,
        headers: w.headers,
        timeoutMs: w.timeoutMs ?? WEBHOOK_DEFAULTS.timeoutMs,
        attempts: w.attempts ?? WEBHOOK_DEFAULTS.attempts,
        backoffMs: w.backoffMs ?? WEBHOOK_DEFAULTS.backoffMs,
      },
      queue: [],
      working: false,
    }));
    this.log = opts.logger;
    this.maxQueue = opts.maxQueue ?? WEBHOOK_DEFAULTS.maxQueue;
    this.onResult = opts.onResult ?? (() => undefined);
  }

  get enabled(): boolean {
    return this.targets.length > 0;
  }

  /** Queues an event for every target that wants it; returns at once. */
  notify(input: WebhookEventInput): void {
    if (this.stopping.signal.aborted || this.targets.length === 0) return;
    const event: WebhookEvent = { id: randomUUID(), timestamp: new Date().toISOString(), ...input };
    for (const t of this.targets) {
      if (t.config.events && !t.config.events.includes(event.action)) continue;
      t.queue.push(event);
      if (t.queue.length > this.maxQueue) {
        const dropped = t.queue.shift()!;
        this.onResult(t.config.url, 'dropped');
        this.log.warn({ webhook: t.config.url, event: dropped.id, queued: t.queue.length }, 'webhook queue full: oldest event dropped');
      }
      if (!t.working) this.startWorker(t);
    }
  }

  private startWorker(t: Target): void {
    t.working = true;
    const w = this.work(t).finally(() => {
      t.working = false;
      this.workers.delete(w);
    });
    this.workers.add(w);
  }

  private async work(t: Target): Promise<void> {
    const signal = this.stopping.signal;
    while (t.queue.length > 0 && !signal.aborted) {
      const event = t.queue[0]!;
      let delivered = false;
      for (let attempt = 1; attempt <= t.config.attempts && !signal.aborted; attempt++) {
        const error = await this.deliver(t, event);
        if (error === undefined) {
          delivered = true;
          break;
        }
        if (attempt === t.config.attempts || signal.aborted) {
          this.log.warn({ webhook: t.config.url, event: event.id, attempts: attempt, err: error }, 'webhook delivery failed; event dropped');
          break;
        }
        const delay = Math.min(MAX_BACKOFF_MS, t.config.backoffMs * 2 ** (attempt - 1));
        this.onResult(t.config.url, 'retried');
        this.log.debug({ webhook: t.config.url, event: event.id, attempt, retryInMs: delay, err: error }, 'webhook delivery failed; retrying');
        await sleep(delay, signal);
      }
      if (t.queue[0] === event) t.queue.shift();
      if (!signal.aborted) this.onResult(t.config.url, delivered ? 'delivered' : 'dropped');
    }
  }

  /** One attempt; undefined on success, else what went wrong. */
  private async deliver(t: Target, event: WebhookEvent): Promise<string | undefined> {
    const timeout = AbortSignal.timeout(t.config.timeoutMs);
    const signal = AbortSignal.any([timeout, this.stopping.signal]);
    try {
      const res = await request(t.config.url, {
        method: 'POST',
        headers: { 'content-type': WEBHOOK_CONTENT_TYPE, 'user-agent': 'shoal-webhook', ...t.config.headers },
        body: JSON.stringify({ events: [event] }),
        dispatcher: this.agent,
        signal,
        headersTimeout: t.config.timeoutMs,
        bodyTimeout: t.config.timeoutMs,
      });
      await res.body.dump().catch(() => undefined);
      if (res.statusCode >= 200 && res.statusCode < 300) return undefined;
      return `HTTP ${res.statusCode}`;
    } catch (err) {
      if (timeout.aborted) return `no answer within ${t.config.timeoutMs} ms`;
      const e = err as { code?: string; message?: string; cause?: { code?: string } };
      return e.code ?? e.cause?.code ?? e.message ?? String(err);
    }
  }

  /** Events still waiting, per target URL. */
  pending(): Record<string, number> {
    return Object.fromEntries(this.targets.map((t) => [t.config.url, t.queue.length]));
  }

  /** Stops delivering (what is queued is dropped and logged) and closes the connections. */
  async stop(): Promise<void> {
    this.stopping.abort();
    for (const t of this.targets) {
      if (t.queue.length > 0) this.log.warn({ webhook: t.config.url, dropped: t.queue.length }, 'stopping: queued webhook events not delivered');
    }
    await Promise.allSettled([...this.workers]);
    await this.agent.destroy().catch(() => undefined);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((ok) => {
    if (signal.aborted) return ok();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      ok();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
