import type { PeerId } from '@libp2p/interface';

/** What this node knows of one connected peer, beyond its inventory. */
export interface PeerState {
  id: PeerId;
  rttMs?: number;
  /** Measured receive throughput, bytes per second (moving average). */
  throughput?: number;
  bytesIn: number;
  bytesOut: number;
  zone?: string;
  /** RTT probes that failed in a row; a peer that stops answering is disconnected. */
  missedProbes: number;
}

/** Connected peers and how good they are as sources: zone, RTT, throughput. */
export class PeerTable {
  private readonly zone?: string;
  private readonly states = new Map<string, PeerState>();

  constructor(zone?: string) {
    this.zone = zone;
  }

  /** The state of a peer, created on first sight. */
  upsert(id: PeerId): PeerState {
    const key = id.toString();
    let s = this.states.get(key);
    if (!s) {
      s = { id, bytesIn: 0, bytesOut: 0, missedProbes: 0 };
      this.states.set(key, s);
    }
    return s;
  }

  get(peer: string): PeerState | undefined {
    return this.states.get(peer);
  }

  delete(peer: string): void {
    this.states.delete(peer);
  }

  all(): PeerState[] {
    return [...this.states.values()];
  }

  ids(): string[] {
    return [...this.states.keys()];
  }

  recordTransfer(peer: string, bytes: number, ms: number): void {
    const state = this.states.get(peer);
    if (!state || ms <= 0) return;
    const rate = (bytes / ms) * 1000;
    state.throughput = state.throughput === undefined ? rate : state.throughput * 0.7 + rate * 0.3;
  }

  /** Same zone first, then lower RTT, then higher measured throughput. */
  rank(peers: string[]): string[] {
    const zone = this.zone;
    return peers
      .map((p) => this.states.get(p))
      .filter((s): s is PeerState => s !== undefined)
      .sort((a, b) => {
        const za = zone && a.zone === zone ? 0 : 1;
        const zb = zone && b.zone === zone ? 0 : 1;
        if (za !== zb) return za - zb;
        const ra = a.rttMs ?? 1_000;
        const rb = b.rttMs ?? 1_000;
        if (Math.abs(ra - rb) > 2) return ra - rb;
        return (b.throughput ?? 0) - (a.throughput ?? 0);
      })
      .map((s) => s.id.toString());
  }
}
