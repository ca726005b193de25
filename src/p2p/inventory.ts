import type { Connection, Stream } from '@libp2p/interface';
import type { Logger } from 'pino';
import type { ContentProvider } from './types.ts';
import { framed, INVENTORY_SLICE, MAX_INVENTORY_FRAME, ProtocolViolation, readJson, violationOf, writeJson, type Framed } from './wire.ts';
import { parseInventoryMessage } from './validate.ts';

/**
 * Who holds which digest, from the peers' own announcements: digest -> peer ids, with a count per peer. Each digest
 * string is kept once however many peers hold it; a peer's entries are capped.
 */
export class RoutingIndex {
  private readonly byDigest = new Map<string, string[]>();
  private readonly counts = new Map<string, number>();

  holders(digest: string): string[] {
    return this.byDigest.get(digest) ?? [];
  }

  count(peer: string): number {
    return this.counts.get(peer) ?? 0;
  }

  /** Every entry, over all peers. */
  get size(): number {
    let n = 0;
    for (const c of this.counts.values()) n += c;
    return n;
  }

  /** False when the peer already had it. */
  add(peer: string, digest: string): boolean {
    const list = this.byDigest.get(digest);
    if (list?.includes(peer)) return false;
    if (list) list.push(peer);
    else this.byDigest.set(digest, [peer]);
    this.counts.set(peer, this.count(peer) + 1);
    return true;
  }

  remove(peer: string, digest: string): void {
    const list = this.byDigest.get(digest);
    const i = list?.indexOf(peer) ?? -1;
    if (!list || i < 0) return;
    if (list.length === 1) this.byDigest.delete(digest);
    else list.splice(i, 1);
    const n = this.count(peer) - 1;
    if (n > 0) this.counts.set(peer, n);
    else this.counts.delete(peer);
  }

  /** Forgets everything a peer announced. */
  clear(peer: string): void {
    if (!this.counts.has(peer)) return;
    for (const [digest, list] of this.byDigest) {
      const i = list.indexOf(peer);
      if (i < 0) continue;
      if (list.length === 1) this.byDigest.delete(digest);
      else list.splice(i, 1);
    }
    this.counts.delete(peer);
  }
}

/** How long a peer may take to acknowledge an inventory message. */
const ACK_MS = 30_000;

/**
 * Our inventory stream to one peer: one message in flight at a time, each acknowledged before the next goes out,
 * so a receiver never holds more than one message unread (and one that does is not keeping to the protocol).
 */
class Outbox {
  private chain: Promise<void> = Promise.resolve();
  private readonly lp: Framed;

  constructor(readonly stream: Stream) {
    this.lp = framed(stream, 4096);
  }

  send(message: unknown): Promise<void> {
    const sent = this.chain.then(async () => {
      const signal = AbortSignal.timeout(ACK_MS);
      await writeJson(this.lp, message, { signal });
      await readJson(this.lp, { signal });
    });
    this.chain = sent.catch(() => undefined);
    return sent;
  }
}

export interface InventoryExchangeOptions {
  provider: ContentProvider;
  /** Most digests one peer may announce; past it the peer is cut off. */
  maxEntriesPerPeer: number;
  zone?: string;
  logger: Logger;
  /** Opens our inventory stream to a connected peer. */
  open(peer: string, signal: AbortSignal): Promise<Stream>;
  /** The peers to tell about additions and removals. */
  peers(): string[];
  /** A peer told us its zone. */
  onZone(peer: string, zone: string | undefined): void;
  /** A peer broke the protocol (a cap, a malformed message): it is banned and disconnected. */
  onViolation(peer: string, violation: ProtocolViolation): void;
}

/**
 * The inventory protocol: each node tells each connected peer what it holds (a snapshot when they connect, then
 * additions and removals as they happen), so "who has D" is answered from memory; a peer's entries go with it.
 */
export class InventoryExchange {
  readonly index = new RoutingIndex();
  private readonly opts: InventoryExchangeOptions;
  private readonly outboxes = new Map<string, Outbox>();
  private pending: { type: 'add' | 'remove'; digest: string }[] = [];
  private flushTimer?: NodeJS.Timeout;
  private unwatch?: () => void;
  private stopped = false;

  constructor(opts: InventoryExchangeOptions) {
    this.opts = opts;
  }

  start(): void {
    this.unwatch = this.opts.provider.watch((e) => this.queue(e.type === 'added' ? 'add' : 'remove', e.digest));
  }

  stop(): void {
    this.stopped = true;
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    this.unwatch?.();
  }

  /** Sends our snapshot to a peer that just connected, on a stream that stays open for updates. */
  async sendSnapshot(peer: string): Promise<void> {
    let outbox: Outbox | undefined;
    try {
      const stream = await this.opts.open(peer, AbortSignal.timeout(5_000));
      outbox = new Outbox(stream);
      const current = outbox;
      this.outboxes.set(peer, current);
      stream.addEventListener('close', () => {
        if (this.outboxes.get(peer) === current) this.outboxes.delete(peer);
      });
      const digests = await this.opts.provider.inventory();
      for (let i = 0; i < digests.length || i === 0; i += INVENTORY_SLICE) {
        await outbox.send({ type: i === 0 ? 'snapshot' : 'add', zone: this.opts.zone, digests: digests.slice(i, i + INVENTORY_SLICE) });
      }
    } catch (err) {
      this.opts.logger.debug({ peer, err: (err as Error).message }, 'inventory snapshot failed');
      this.drop(peer, outbox);
    }
  }

  /** An outbox that failed is closed; the peer gets a fresh snapshot while it stays connected. */
  private drop(peer: string, outbox: Outbox | undefined): void {
    if (!outbox || this.outboxes.get(peer) !== outbox) return;
    this.outboxes.delete(peer);
    outbox.stream.abort(new Error('inventory stream failed'));
    if (!this.stopped && this.opts.peers().includes(peer)) {
      const retry = setTimeout(() => {
        if (!this.stopped && this.opts.peers().includes(peer)) void this.sendSnapshot(peer);
      }, 1_000);
      retry.unref();
    }
  }

  /** A peer went away (or was cut off): its entries go. */
  forget(peer: string): void {
    this.outboxes.delete(peer);
    this.index.clear(peer);
  }

  private queue(type: 'add' | 'remove', digest: string): void {
    this.pending.push({ type, digest });
    this.flushTimer ??= setTimeout(() => {
      this.flushTimer = undefined;
      void this.flush();
    }, 50);
  }

  private async flush(): Promise<void> {
    const batch = this.pending;
    this.pending = [];
    const messages: { type: 'add' | 'remove'; digests: string[] }[] = [];
    for (const type of ['add', 'remove'] as const) {
      const digests = batch.filter((b) => b.type === type).map((b) => b.digest);
      for (let i = 0; i < digests.length; i += INVENTORY_SLICE) messages.push({ type, digests: digests.slice(i, i + INVENTORY_SLICE) });
    }
    await Promise.allSettled(
      this.opts.peers().map(async (peer) => {
        const outbox = this.outboxes.get(peer);
        if (!outbox) return;
        try {
          for (const m of messages) await outbox.send(m);
        } catch (err) {
          this.opts.logger.debug({ peer, err: (err as Error).message }, 'inventory update failed');
          this.drop(peer, outbox);
        }
      }),
    );
  }

  /** Reads a peer's announcements until its stream ends; caps and validation apply to every message. */
  async receive(stream: Stream, conn: Connection): Promise<void> {
    const peer = conn.remotePeer.toString();
    const lp = framed(stream, MAX_INVENTORY_FRAME);
    const cap = this.opts.maxEntriesPerPeer;
    let unacknowledged = 0;
    try {
      for (;;) {
        const msg = parseInventoryMessage(await readJson(lp), INVENTORY_SLICE);
        if (msg.type === 'snapshot') {
          this.index.clear(peer);
          this.opts.onZone(peer, msg.zone);
        }
        if (msg.type === 'remove') {
          for (const d of msg.digests) this.index.remove(peer, d);
        } else {
          for (const d of msg.digests) {
            if (this.index.count(peer) >= cap && !this.index.holders(d).includes(peer)) {
              throw new ProtocolViolation('inventory-cap', `it announced more than ${cap} blobs (maxPeerInventory)`);
            }
            this.index.add(peer, d);
          }
        }
        // The sender waits for this before its next message. Not awaited; a peer that keeps sending without
        // reading them is not keeping to the protocol.
        if (++unacknowledged > 64) throw new ProtocolViolation('oversize-message', 'it keeps sending inventory messages without waiting for their acknowledgements');
        void writeJson(lp, { ack: true }).then(
          () => unacknowledged--,
          () => undefined,
        );
      }
    } catch (err) {
      const violation = violationOf(err);
      if (violation) {
        this.index.clear(peer);
        stream.abort(violation);
        this.opts.onViolation(peer, violation);
      }
      // otherwise the peer closed the stream or went away
    }
  }
}
