import type { Logger } from 'pino';
import type { Counter } from 'prom-client';
import type { IoOptions, VerifyOutcome } from '../store/index.ts';
import type { ContentProvider, ReportOutcome } from './types.ts';

/** A blob found fine is not re-hashed again on a report for this long. */
const RECHECK_AFTER_MS = 60_000;
/** Reports one peer may make per minute; more are answered `busy`. */
const REPORTS_PER_PEER_MINUTE = 30;

export interface ReportDeskOptions {
  provider: ContentProvider;
  logger: Logger;
  reports: Counter<'direction' | 'outcome'>;
}

/**
 * The holder's side of self-healing: a peer says it received bad bytes of a blob from us, so we re-hash our copy.
 * If it no longer matches its digest the store takes it out (and out of routing: the removal is announced at
 * once); the provider counts it, and it is logged here. One check per digest at a time, none again soon after a
 * clean one, and a bound per peer: a report cannot make a node re-hash its store over and over.
 */
export class ReportDesk {
  private readonly opts: ReportDeskOptions;
  private readonly inFlight = new Map<string, Promise<VerifyOutcome>>();
  private readonly cleanUntil = new Map<string, number>();
  private readonly perPeer = new Map<string, { windowStart: number; count: number }>();

  constructor(opts: ReportDeskOptions) {
    this.opts = opts;
  }

  async handle(peer: string, digest: string, chunks: number[], opts: IoOptions = {}): Promise<ReportOutcome> {
    const { logger } = this.opts;
    const outcome = await this.check(peer, digest, opts);
    this.opts.reports.inc({ direction: 'in', outcome });
    if (outcome === 'corrupt') {
      logger.warn({ peer, digest, chunks }, 'a peer reported bad bytes of a blob; it no longer matches its digest and was taken out of the store');
    } else if (outcome === 'ok') {
      logger.info({ peer, digest, chunks }, 'a peer reported bad bytes of a blob; this copy matches its digest');
    }
    return outcome;
  }

  private async check(peer: string, digest: string, opts: IoOptions): Promise<ReportOutcome> {
    const verify = this.opts.provider.verify?.bind(this.opts.provider);
    if (!verify) return 'unknown';
    const now = Date.now();
    const window = this.perPeer.get(peer);
    if (!window || now - window.windowStart > 60_000) {
      for (const [p, w] of this.perPeer) if (now - w.windowStart > 60_000) this.perPeer.delete(p);
      this.perPeer.set(peer, { windowStart: now, count: 1 });
    }
    else if (++window.count > REPORTS_PER_PEER_MINUTE) return 'busy';
    const running = this.inFlight.get(digest);
    if (running) return running;
    if ((this.cleanUntil.get(digest) ?? 0) > now) return 'ok';
    const p = verify(digest, opts).finally(() => this.inFlight.delete(digest));
    this.inFlight.set(digest, p);
    const outcome = await p;
    if (outcome === 'ok') this.cleanUntil.set(digest, Date.now() + RECHECK_AFTER_MS);
    else this.cleanUntil.delete(digest);
    for (const [d, until] of this.cleanUntil) if (until <= now) this.cleanUntil.delete(d);
    return outcome;
  }
}
