import { Counter, Gauge, type Registry } from 'prom-client';
import { BAN_REASONS } from './types.ts';

/** Metrics of the peer network, registered on the node's prom-client Registry. */
export class PeerMetrics {
  readonly lookups: Counter<'result'>;
  readonly bans: Counter<'reason'>;
  readonly bytes: Counter<'direction'>;
  readonly chunkRequests: Counter<'direction' | 'outcome'>;
  readonly reports: Counter<'direction' | 'outcome'>;
  readonly channelTransfers: Counter<'direction' | 'sealed'>;
  readonly channelFallbacks: Counter;

  constructor(registry: Registry, state: { connected: () => number; inventoryEntries: () => number; banned: () => number }) {
    new Gauge({
      name: 'shoal_peers_connected',
      help: 'Peers this node has a connection to',
      registers: [registry],
      collect() {
        this.set(state.connected());
      },
    });
    new Gauge({
      name: 'shoal_peer_inventory_entries',
      help: "Entries of the peers' inventories this node keeps (digest, peer), over all peers; each peer is capped by maxPeerInventory",
      registers: [registry],
      collect() {
        this.set(state.inventoryEntries());
      },
    });
    new Gauge({
      name: 'shoal_peers_banned',
      help: 'Peers banned now',
      registers: [registry],
      collect() {
        this.set(state.banned());
      },
    });
    this.lookups = new Counter({
      name: 'shoal_peer_lookups_total',
      help: 'Lookups of which peers hold a digest, by result (hit: some peer has it, miss: none)',
      labelNames: ['result'],
      registers: [registry],
    });
    this.bans = new Counter({
      name: 'shoal_peer_bans_total',
      help: 'Peers banned, by reason (bad-bytes, bad-map, inventory-cap, oversize-message, invalid-message)',
      labelNames: ['reason'],
      registers: [registry],
    });
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
    this.reports = new Counter({
      name: 'shoal_peer_reports_total',
      help: 'Reports of bad bytes, by direction (out: sent to the holder, in: received) and what the holder found (ok, corrupt, missing, busy, unknown)',
      labelNames: ['direction', 'outcome'],
      registers: [registry],
    });
    this.channelTransfers = new Counter({
      name: 'shoal_peer_data_channel_transfers_total',
      help: 'Chunk ranges that went over the data channel instead of the peer connection, by direction (in: received, out: served) and sealed (false: sent as they are between two --p2p-clear-data nodes)',
      labelNames: ['direction', 'sealed'],
      registers: [registry],
    });
    this.channelFallbacks = new Counter({
      name: 'shoal_peer_data_channel_fallbacks_total',
      help: "Chunk ranges this node took on the peer connection because the holder's data port could not be reached",
      registers: [registry],
    });
    for (const direction of ['in', 'out']) for (const sealed of ['true', 'false']) this.channelTransfers.inc({ direction, sealed }, 0);
    for (const result of ['hit', 'miss']) this.lookups.inc({ result }, 0);
    for (const direction of ['in', 'out']) this.bytes.inc({ direction }, 0);
    for (const reason of BAN_REASONS) this.bans.inc({ reason }, 0);
  }
}
