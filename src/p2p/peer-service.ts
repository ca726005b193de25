import '../polyfill.ts';
import { yamux } from '@chainsafe/libp2p-yamux';
import { identify } from '@libp2p/identify';
import type { Libp2p, PeerId, Stream } from '@libp2p/interface';
import { mdns } from '@libp2p/mdns';
import { ping, type Ping } from '@libp2p/ping';
import { tcp } from '@libp2p/tcp';
import { createLibp2p } from 'libp2p';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { TokenBucket } from '../limits/token-bucket.ts';
import type { ChunkMap } from '../oci/index.ts';
import type { IoOptions } from '../store/index.ts';
import { BanList } from './bans.ts';
import { clusterNoise } from './cluster-key.ts';
import { clusterClearData } from './clear-data.ts';
import { ContentClient } from './content-client.ts';
import { ContentServer } from './content-server.ts';
import { bareAddress, Discovery, DIAL_TIMEOUT_MS } from './discovery.ts';
import { InventoryExchange } from './inventory.ts';
import { loadOrCreateIdentity } from './keys.ts';
import { PeerMetrics } from './metrics.ts';
import { PeerTable } from './peer-table.ts';
import { ReportDesk } from './reports.ts';
import {
  PROTOCOLS,
  type BanReason,
  type ChunkRequest,
  type ContentProvider,
  type PeerNetwork,
  type PeerSummary,
  type PeerTagRecord,
  type ReportOutcome,
} from './types.ts';
import type { ProtocolViolation } from './wire.ts';
import { DataChannelServer } from './data-channel.ts';

export { peerAddress } from './discovery.ts';

/** Default cap on the blobs one peer may announce. */
export const DEFAULT_MAX_PEER_INVENTORY = 100_000;

export interface PeerServiceOptions {
  /** HOST:PORT to listen on for peers. */
  listen: { host: string; port: number };
  /** Private-network key: the 32 bytes of the cluster key file. */
  clusterKey: Uint8Array;
  /** Where the peer identity is kept. */
  identityFile: string;
  /** HOST:PORT of peers to dial (their ids need not be known). */
  bootstrap: string[];
  /** A name whose A/AAAA records are peers (a headless Service); resolved every `maintenanceIntervalMs`. */
  peersDns?: string;
  /** Port peers listen on when found by DNS (default: ours). */
  peersDnsPort?: number;
  mdns: boolean;
  /** Offer the clear-data connection security (clear-data.ts) before Noise. */
  clearData?: boolean;
  /** Port of the data channel for chunk bytes (data-channel.ts), on the listen host; 0: any free port; none: off. */
  dataPort?: number;
  /** dataPort is the default, not a setting: when it is taken, any free port does. */
  dataPortIsDefault?: boolean;
  /** Topology label; peers in the same zone are preferred. */
  zone?: string;
  /** Serving cap in bytes per second (0: unlimited). */
  maxUploadRate: number;
  /** Chunk streams served at once; more get BUSY. */
  maxChunkStreams: number;
  /** How long a banned peer is refused, in ms. */
  banMs: number;
  /** Where bans are kept across restarts; none: they last until this node stops. */
  banFile?: string;
  /** Most blobs one peer may announce; a peer past it is cut off and banned (default 100000). */
  maxPeerInventory?: number;
  /** How often discovery and RTT probes run, in ms. */
  maintenanceIntervalMs?: number;
  provider: ContentProvider;
  logger: Logger;
  metrics: Registry;
}

/**
 * This node's place in the cluster: a libp2p node (TCP, cluster-keyed Noise, Yamux, identify, ping) composed of
 * one part per role: Discovery (finding and keeping peers), InventoryExchange (who holds what), PeerTable
 * (ranking), BanList (peers refused, across reconnects and restarts), ContentServer and ContentClient (both sides
 * of the chunk, chunk map, manifest, tag and report protocols) and ReportDesk (re-checking what a peer says is bad).
 */
export class PeerService implements PeerNetwork {
  private readonly opts: PeerServiceOptions;
  private node?: Libp2p<{ ping: Ping }>;
  private readonly table: PeerTable;
  private readonly bans: BanList;
  private readonly metrics: PeerMetrics;
  private readonly discovery: Discovery;
  private readonly inventory: InventoryExchange;
  private readonly client: ContentClient;
  private readonly server: ContentServer;
  private timer?: NodeJS.Timeout;
  private stopping = false;
  /** Reports on their way to a peer: its connection stays up until they are answered. */
  private readonly reportsInFlight = new Map<string, Promise<unknown>>();
  /** When a peer that sent bad bytes last proved it was its disk, not the peer: forgiven once per ban time. */
  private readonly forgiven = new Map<string, number>();
  private readonly dataChannel?: DataChannelServer;

  constructor(opts: PeerServiceOptions) {
    this.opts = opts;
    const { logger } = opts;
    this.table = new PeerTable(opts.zone);
    this.bans = new BanList({ banMs: opts.banMs, file: opts.banFile, logger });
    this.metrics = new PeerMetrics(opts.metrics, {
      connected: () => this.connectedIds().length,
      inventoryEntries: () => this.inventory.index.size,
      banned: () => this.bans.list().length,
    });
    const isBanned = (peer: string): boolean => this.bans.isBanned(peer);
    const onViolation = (peer: string, v: ProtocolViolation): void => this.ban(peer, v.reason, v.message);
    this.discovery = new Discovery({
      bootstrap: opts.bootstrap,
      peersDns: opts.peersDns,
      peersDnsPort: opts.peersDnsPort ?? opts.listen.port,
      table: this.table,
      isBanned,
      isBannedAddress: (addr) => this.bans.isBannedAddress(addr),
      intervalMs: opts.maintenanceIntervalMs ?? 5_000,
      logger,
    });
    this.inventory = new InventoryExchange({
      provider: opts.provider,
      maxEntriesPerPeer: opts.maxPeerInventory ?? DEFAULT_MAX_PEER_INVENTORY,
      zone: opts.zone,
      logger,
      open: async (peer, signal) => {
        const state = this.table.get(peer);
        if (!this.node || !state) throw new Error('not connected');
        return this.node.dialProtocol(state.id, PROTOCOLS.inventory, { signal });
      },
      peers: () => this.table.ids(),
      onZone: (peer, zone) => {
        const state = this.table.get(peer);
        if (state) state.zone = zone;
      },
      onViolation,
    });
    if (opts.dataPort !== undefined) this.dataChannel = new DataChannelServer({ host: opts.listen.host, port: opts.dataPort, portIsDefault: opts.dataPortIsDefault, logger });
    this.client = new ContentClient({
      dataChannel: this.dataChannel !== undefined,
      node: () => this.node,
      table: this.table,
      isBanned,
      metrics: this.metrics,
      logger,
      onViolation,
      redial: (peer) => {
        const state = this.table.get(peer);
        if (this.node && state) this.discovery.redial(this.node, state.id);
      },
    });
    this.server = new ContentServer({
      provider: opts.provider,
      table: this.table,
      upload: new TokenBucket(opts.maxUploadRate),
      maxChunkStreams: opts.maxChunkStreams,
      reports: new ReportDesk({ provider: opts.provider, logger, reports: this.metrics.reports }),
      isBanned,
      metrics: this.metrics,
      logger,
      onViolation,
      dataChannel: this.dataChannel,
    });
  }

  get selfId(): string {
    return this.node?.peerId.toString() ?? '';
  }

  /** Multiaddrs peers can dial, with this node's id. */
  addresses(): string[] {
    return this.node?.getMultiaddrs().map((a) => a.toString()) ?? [];
  }

  async start(): Promise<void> {
    const { listen, clusterKey, logger } = this.opts;
    await this.bans.load();
    const privateKey = await loadOrCreateIdentity(this.opts.identityFile);
    const listenAddr = listen.host.includes(':') ? `/ip6/${listen.host}/tcp/${listen.port}` : `/ip4/${listen.host}/tcp/${listen.port}`;
    // A whole chunk fits in a stream's first window, so a chunk costs one round trip.
    const streamOptions = { initialStreamWindowSize: 8 * 1024 * 1024, maxStreamWindowSize: 16 * 1024 * 1024, maxReadBufferLength: 40 * 1024 * 1024 };
    const banned = (id: PeerId): boolean => this.bans.isBanned(id.toString());
    this.node = (await createLibp2p({
      privateKey,
      addresses: { listen: [listenAddr] },
      transports: [tcp()],
      connectionEncrypters: this.opts.clearData ? [clusterClearData(clusterKey), clusterNoise(clusterKey)] : [clusterNoise(clusterKey)],
      streamMuxers: [yamux({ streamOptions } as Parameters<typeof yamux>[0])],
      peerDiscovery: this.opts.mdns ? [mdns({ interval: 5_000 })] : [],
      connectionManager: { maxConnections: 2_000, dialTimeout: DIAL_TIMEOUT_MS },
      // A banned peer is neither dialed nor accepted: the gate refuses it as soon as the handshake names it.
      connectionGater: {
        denyDialPeer: banned,
        denyInboundEncryptedConnection: banned,
        denyOutboundEncryptedConnection: banned,
      },
      services: { identify: identify(), ping: ping() },
    })) as unknown as Libp2p<{ ping: Ping }>;
    const node = this.node;
    node.addEventListener('peer:connect', (evt) => void this.onConnect(evt.detail));
    node.addEventListener('peer:disconnect', (evt) => this.onDisconnect(evt.detail));
    node.addEventListener('peer:discovery', (evt) => this.discovery.discovered(node, evt.detail.id));
    const server = this.server;
    await node.handle(PROTOCOLS.chunk, (stream, conn) => void server.serveChunk(stream, conn), { maxInboundStreams: 256, maxOutboundStreams: 256, runOnLimitedConnection: false });
    await node.handle(PROTOCOLS.chunkMap, (stream, conn) => void server.serveChunkMap(stream, conn), { maxInboundStreams: 64 });
    await node.handle(PROTOCOLS.manifest, (stream, conn) => void server.serveManifest(stream, conn), { maxInboundStreams: 64 });
    await node.handle(PROTOCOLS.tag, (stream, conn) => void server.serveTag(stream, conn), { maxInboundStreams: 64 });
    await node.handle(PROTOCOLS.report, (stream, conn) => void server.serveReport(stream, conn), { maxInboundStreams: 8 });
    await node.handle(PROTOCOLS.inventory, (stream, conn) => void this.inventory.receive(stream, conn), { maxInboundStreams: 2 });
    await this.dataChannel?.start();
    this.inventory.start();
    logger.info({ peerId: this.selfId, addresses: this.addresses() }, 'p2p listening');
    // The first round of discovery runs in the background: a slow DNS server must not hold the node's start.
    void this.maintain();
    this.timer = setInterval(() => void this.maintain(), this.opts.maintenanceIntervalMs ?? 5_000);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.timer) clearInterval(this.timer);
    this.discovery.stop();
    this.inventory.stop();
    await this.dataChannel?.stop();
    await this.node?.stop();
    await this.bans.flush();
  }

  private async maintain(): Promise<void> {
    if (this.node && !this.stopping) await this.discovery.maintain(this.node);
  }

  private connectedIds(): string[] {
    const node = this.node;
    if (!node) return [];
    return this.table.ids().filter((id) => node.getConnections(this.table.get(id)!.id).length > 0);
  }

  private async onConnect(id: PeerId): Promise<void> {
    const key = id.toString();
    if (this.bans.isBanned(key)) {
      await this.node?.hangUp(id).catch(() => undefined);
      return;
    }
    this.table.upsert(id);
    this.opts.logger.info({ peer: key }, 'peer connected');
    await this.inventory.sendSnapshot(key);
  }

  private onDisconnect(id: PeerId): void {
    const key = id.toString();
    this.inventory.forget(key);
    if (!this.table.get(key)) return;
    this.table.delete(key);
    this.opts.logger.info({ peer: key }, 'peer disconnected');
  }

  // ---- routing -------------------------------------------------------------------------------------

  holders(digest: string): string[] {
    const found = this.table.rank(this.inventory.index.holders(digest).filter((p) => !this.bans.isBanned(p)));
    this.metrics.lookups.inc({ result: found.length > 0 ? 'hit' : 'miss' });
    return found;
  }

  peers(): string[] {
    return this.table.rank(this.table.ids().filter((p) => !this.bans.isBanned(p)));
  }

  // ---- bans and scores -----------------------------------------------------------------------------

  ban(peer: string, reason: BanReason, detail: string): void {
    const state = this.table.get(peer);
    const node = this.node;
    const addresses = state && node ? node.getConnections(state.id).map((c) => bareAddress(c.remoteAddr)) : [];
    // Chunks in flight from the same peer report it again: one ban per peer, counted once.
    const ban = this.bans.add(peer, reason, detail, addresses);
    if (!ban) return;
    this.metrics.bans.inc({ reason });
    this.opts.logger.warn({ peer, reason, detail, until: new Date(ban.until).toISOString() }, 'peer banned');
    // Its inventory goes with its connection; until then a banned peer is no holder (holders() leaves it out).
    if (!state || !node) return;
    const report = this.reportsInFlight.get(peer);
    void (async () => {
      // Where it listens (from identify), so that discovery does not dial it while the ban lasts.
      const known = await node.peerStore.get(state.id).catch(() => undefined);
      for (const a of known?.addresses ?? []) {
        const bare = bareAddress(a.multiaddr);
        if (!ban.addresses.includes(bare)) ban.addresses.push(bare);
      }
      // A report on its way is answered first: the peer may show that its disk, not the peer, was at fault.
      await report?.catch(() => undefined);
      if (this.bans.isBanned(peer)) await node.hangUp(state.id).catch(() => undefined);
    })();
  }

  recordTransfer(peer: string, bytes: number, ms: number): void {
    this.table.recordTransfer(peer, bytes, ms);
  }

  summary(): PeerSummary[] {
    const node = this.node;
    const rows: PeerSummary[] = this.table.all().map((p) => {
      const id = p.id.toString();
      const ban = this.bans.get(id);
      return {
        id,
        addresses: node?.getConnections(p.id).map((c) => c.remoteAddr.toString()) ?? [],
        connected: true,
        rttMs: p.rttMs,
        throughput: p.throughput,
        bytesIn: p.bytesIn,
        bytesOut: p.bytesOut,
        zone: p.zone,
        blobs: this.inventory.index.count(id),
        ...(ban ? { bannedUntil: ban.until, ban: { reason: ban.reason, detail: ban.detail, since: ban.since, until: ban.until } } : {}),
        ...(this.client.dataPortUnreachableUntil(id) ? { dataPortUnreachableUntil: this.client.dataPortUnreachableUntil(id) } : {}),
      };
    });
    for (const ban of this.bans.list()) {
      if (rows.some((r) => r.id === ban.peer)) continue;
      rows.push({
        id: ban.peer,
        addresses: ban.addresses,
        connected: false,
        bytesIn: 0,
        bytesOut: 0,
        blobs: 0,
        bannedUntil: ban.until,
        ban: { reason: ban.reason, detail: ban.detail, since: ban.since, until: ban.until },
      });
    }
    return rows;
  }

  // ---- other protocols -----------------------------------------------------------------------------

  /** Serves one more protocol on the peer network (after start); the handler gets the stream and the peer's id. */
  async handle(protocol: string, handler: (stream: Stream, peer: string) => void, opts: { maxInboundStreams?: number } = {}): Promise<void> {
    if (!this.node) throw new Error('the peer network is not started');
    await this.node.handle(protocol, (stream, conn) => {
      const peer = conn.remotePeer.toString();
      if (this.bans.isBanned(peer)) {
        stream.abort(new Error('banned'));
        return;
      }
      handler(stream, peer);
    }, { maxInboundStreams: opts.maxInboundStreams ?? 8 });
  }

  /** Opens a stream of `protocol` to a connected peer. */
  async dial(peer: string, protocol: string, opts: IoOptions = {}): Promise<Stream> {
    const state = this.table.get(peer);
    if (!this.node || !state) throw new Error(`peer ${peer} is not connected`);
    return this.node.dialProtocol(state.id, protocol, { signal: opts.signal });
  }

  // ---- asking peers --------------------------------------------------------------------------------

  fetchRange(peer: string, req: ChunkRequest, opts: IoOptions = {}): Promise<{ size: number; stream: AsyncIterable<Uint8Array> }> {
    return this.client.fetchRange(peer, req, opts);
  }

  fetchChunkMap(peer: string, digest: string, opts: IoOptions & { size?: number } = {}): Promise<ChunkMap | undefined> {
    return this.client.fetchChunkMap(peer, digest, opts);
  }

  fetchManifest(peer: string, digest: string, opts: IoOptions = {}): Promise<{ bytes: Uint8Array; mediaType: string } | undefined> {
    return this.client.fetchManifest(peer, digest, opts);
  }

  queryTag(repository: string, tag: string, opts: IoOptions = {}): Promise<PeerTagRecord[]> {
    return this.client.queryTag(this.peers(), repository, tag, opts);
  }

  /**
   * Tells a holder it sent bad bytes. Call it before banning the holder: when the holder answers that its copy was
   * corrupt and it took it out, it was its disk that failed, not the peer, and the ban is lifted (once per ban time).
   */
  async report(peer: string, digest: string, chunks: number[], opts: IoOptions = {}): Promise<ReportOutcome> {
    const sent = this.client.report(peer, digest, chunks, opts);
    this.reportsInFlight.set(peer, sent);
    let outcome: ReportOutcome;
    try {
      outcome = await sent;
    } catch (err) {
      this.opts.logger.debug({ peer, digest, err: (err as Error).message }, 'report to peer failed');
      outcome = 'unknown';
    } finally {
      if (this.reportsInFlight.get(peer) === sent) this.reportsInFlight.delete(peer);
    }
    this.metrics.reports.inc({ direction: 'out', outcome });
    const ban = this.bans.get(peer);
    if (outcome === 'corrupt' && ban?.reason === 'bad-bytes' && (this.forgiven.get(peer) ?? 0) + this.opts.banMs < Date.now()) {
      this.forgiven.set(peer, Date.now());
      this.bans.lift(peer);
      this.opts.logger.info({ peer, digest }, 'the peer found its copy corrupt and took it out: its ban is lifted');
    }
    return outcome;
  }
}
