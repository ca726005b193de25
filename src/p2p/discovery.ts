import { lookup } from 'node:dns/promises';
import type { Libp2p, PeerId } from '@libp2p/interface';
import type { Ping } from '@libp2p/ping';
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import type { Logger } from 'pino';
import type { PeerTable } from './peer-table.ts';

/** A dial to a peer that is not there gives up after this long. */
export const DIAL_TIMEOUT_MS = 3_000;
/** A peer that misses this many RTT probes in a row, and sent nothing meanwhile, is disconnected (its inventory goes with it). */
const MAX_MISSED_PROBES = 3;
/** Longest wait between dials of an address that keeps failing. */
const MAX_BACKOFF_MS = 5 * 60_000;

/** Parses `HOST:PORT` (or `[v6]:PORT`) into a TCP multiaddr. */
export function peerAddress(value: string): Multiaddr {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:]+)):(\d{1,5})$/.exec(value.trim());
  if (!m) throw new Error(`peer address ${JSON.stringify(value)} is not HOST:PORT`);
  const port = m[3];
  if (m[1]) return multiaddr(`/ip6/${m[1]}/tcp/${port}`);
  const host = m[2]!;
  if (/^\d+\.\d+\.\d+\.\d+$/.test(host)) return multiaddr(`/ip4/${host}/tcp/${port}`);
  return multiaddr(`/dns/${host}/tcp/${port}`);
}

/** A multiaddr without its `/p2p/<id>` part, as addresses are compared. */
export function bareAddress(addr: Multiaddr | string): string {
  return addr.toString().replace(/\/p2p\/.*$/, '');
}

export interface DiscoveryOptions {
  /** HOST:PORT of peers to dial (their ids need not be known). */
  bootstrap: string[];
  /** A name whose A/AAAA records are peers (a headless Service). */
  peersDns?: string;
  /** Port peers listen on when found by DNS. */
  peersDnsPort: number;
  table: PeerTable;
  /** True for an address where a banned peer listens: it is not dialed. */
  isBannedAddress(addr: string): boolean;
  isBanned(peer: string): boolean;
  /** How often `maintain` runs; a failing address waits twice as long after each failure. */
  intervalMs: number;
  logger: Logger;
}

/**
 * Finding peers and keeping the connections healthy: dials the configured and DNS-listed addresses that are not
 * connected (each failing address backs off), dials peers found by mDNS, measures RTT, and disconnects a peer that
 * stopped answering. All of it runs in the background, never on a pull's path.
 */
export class Discovery {
  private readonly opts: DiscoveryOptions;
  private readonly backoff = new Map<string, { failures: number; next: number }>();
  private readonly redialing = new Set<string>();
  private stopping = false;

  constructor(opts: DiscoveryOptions) {
    this.opts = opts;
  }

  stop(): void {
    this.stopping = true;
  }

  private async candidates(): Promise<Multiaddr[]> {
    const out: Multiaddr[] = [];
    for (const p of this.opts.bootstrap) {
      try {
        out.push(peerAddress(p));
      } catch (err) {
        this.opts.logger.warn({ peer: p, err: (err as Error).message }, 'ignoring a peer address');
      }
    }
    if (this.opts.peersDns) {
      try {
        const records = await lookup(this.opts.peersDns, { all: true });
        for (const r of records) out.push(multiaddr(`/${r.family === 6 ? 'ip6' : 'ip4'}/${r.address}/tcp/${this.opts.peersDnsPort}`));
      } catch (err) {
        this.opts.logger.debug({ name: this.opts.peersDns, err: (err as Error).message }, 'peer DNS lookup failed');
      }
    }
    return out;
  }

  /** A peer found by mDNS: dialed once, in the background, unless banned. */
  discovered(node: Libp2p, id: PeerId): void {
    if (this.stopping || this.opts.isBanned(id.toString())) return;
    void node.dial(id, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) }).catch(() => undefined);
  }

  /** Reconnects a known peer whose connection is gone, once at a time, in the background. */
  redial(node: Libp2p, id: PeerId): void {
    const key = id.toString();
    if (this.stopping || this.redialing.has(key) || this.opts.isBanned(key)) return;
    this.redialing.add(key);
    void node
      .dial(id, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) })
      .catch((err: Error) => this.opts.logger.debug({ peer: key, err: err.message }, 'redial failed'))
      .finally(() => this.redialing.delete(key));
  }

  /** One round: dial what is not connected (unless it is backing off or banned), then probe RTT. */
  async maintain(node: Libp2p<{ ping: Ping }>): Promise<void> {
    if (this.stopping) return;
    const own = new Set(node.getMultiaddrs().map(bareAddress));
    const connected = new Set(node.getConnections().map((c) => bareAddress(c.remoteAddr)));
    const now = Date.now();
    const targets = (await this.candidates()).filter((a) => {
      const key = bareAddress(a);
      return !own.has(key) && !connected.has(key) && !this.opts.isBannedAddress(key) && (this.backoff.get(key)?.next ?? 0) <= now;
    });
    await Promise.allSettled(
      targets.map(async (a) => {
        const key = bareAddress(a);
        try {
          await node.dial(a, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) });
          this.backoff.delete(key);
        } catch (err) {
          const failures = (this.backoff.get(key)?.failures ?? 0) + 1;
          this.backoff.set(key, { failures, next: Date.now() + Math.min(MAX_BACKOFF_MS, this.opts.intervalMs * 2 ** (failures - 1)) });
          this.opts.logger.debug({ peer: key, failures, err: (err as Error).message }, 'peer dial failed');
        }
      }),
    );
    await Promise.allSettled(
      this.opts.table.all().map(async (p) => {
        const bytesBefore = p.bytesIn + p.bytesOut;
        try {
          p.rttMs = await node.services.ping.ping(p.id, { signal: AbortSignal.timeout(2_000) });
          p.missedProbes = 0;
        } catch {
          // A busy connection may answer late; bytes moving to or from the peer show it is alive.
          if (p.bytesIn + p.bytesOut !== bytesBefore) return;
          if (++p.missedProbes >= MAX_MISSED_PROBES && !this.stopping) {
            this.opts.logger.info({ peer: p.id.toString(), missed: p.missedProbes }, 'peer stopped answering; disconnecting');
            await node.hangUp(p.id).catch(() => undefined);
          }
        }
      }),
    );
  }
}
