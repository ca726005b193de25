import { Counter, Gauge, type Registry } from 'prom-client';

/** Metrics of the peer network, registered on the node's prom-client Registry. */
export class PeerMetrics {
  readonly lookups: Counter<'result'>;
  readonly bans: Counter;
  readonly bytes: Counter<'direction'>;
  readonly chunkRequests: Counter<'direction' | 'outcome'>;

  constructor(registry: Registry, connected: () => number) {
    new Gauge({
      name: 'shoal_peers_connected',
      help: 'Peers this node has a connection to',
      registers: [registry],
      collect() {
        this.set(connected());
      },
    });
    this.lookups = new Counter({
      name: 'shoal_peer_lookups_total',
      help: 'Lookups of which peers hold a digest, by result (hit: some peer has it, miss: none)',
      labelNames: ['result'],
      registers: [registry],
    });
    this.bans = new Counter({ name: 'shoal_peer_bans_total', help: 'Peers banned for sending bad bytes', registers: [registry] });
    this.bytes = new Counter({
      name: 'shoal_peer_bytes_total',
      help: 'Blob bytes exchanged with peers, by direction (in: received, out: served)',
      labelNames: ['direction'],
      registers: [registry],
    });
    this.chunkRequests = new Counter({
      name: 'shoal_peer_chunk_requests_total',
      help: 'Chunk requests, by direction and outcome',
      labelNames: ['direction', 'outcome'],
      registers: [registry],
    });
    for (const result of ['hit', 'miss']) this.lookups.inc({ result }, 0);
    for (const direction of ['in', 'out']) this.bytes.inc({ direction }, 0);
  }
}
