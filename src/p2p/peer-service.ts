import '../polyfill.ts';
import { lookup } from 'node:dns/promises';
import { yamux } from '@chainsafe/libp2p-yamux';
import { identify } from '@libp2p/identify';
import type { Connection, Libp2p, PeerId, Stream } from '@libp2p/interface';
import { mdns } from '@libp2p/mdns';
import { ping, type Ping } from '@libp2p/ping';
import { tcp } from '@libp2p/tcp';
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import { createLibp2p } from 'libp2p';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { AbortedError, NotFoundError, UnavailableError } from '../oci/index.ts';
import { TokenBucket } from '../limits/token-bucket.ts';
import type { IoOptions } from '../store/index.ts';
import { loadOrCreateIdentity } from './keys.ts';
import { clusterNoise } from './cluster-key.ts';
import { PeerMetrics } from './metrics.ts';
import {
  PROTOCOLS,
  type ChunkRequest,
  type ContentProvider,
  type PeerNetwork,
  type PeerSummary,
  type PeerTagRecord,
} from './types.ts';
import { DATA_FRAME, framed, readFrame, readJson, writeJson } from './wire.ts';

export interface PeerServiceOptions {
  /** HOST:PORT to listen on for peers. */
  listen: { host: string; port: number };
  /** Private-network key: the 32 bytes of the cluster key file. */
  clusterKey: Uint8Array;
  /** Where the peer identity is kept. */
  identityFile: string;
  /** HOST:PORT of peers to dial (their ids need not be known). */
  bootstrap: string[];
  /** A name whose A/AAAA records are peers (a headless Service); resolved every `dnsIntervalMs`. */
  peersDns?: string;
  /** Port peers listen on when found by DNS (default: ours). */
  peersDnsPort?: number;
  mdns: boolean;
  /** Topology label; peers in the same zone are preferred. */
  zone?: string;
  /** Serving cap in bytes per second (0: unlimited). */
  maxUploadRate: number;
  /** Chunk streams served at once; more get BUSY. */
  maxChunkStreams: number;
  /** How long a peer that sent bad bytes is ignored, in ms. */
  banMs: number;
  /** How often discovery and RTT probes run, in ms. */
  maintenanceIntervalMs?: number;
  provider: ContentProvider;
  logger: Logger;
  metrics: Registry;
}

interface PeerState {
  id: PeerId;
  inventory: Set<string>;
  rttMs?: number;
  throughput?: number;
  bytesIn: number;
  bytesOut: number;
  zone?: string;
  bannedUntil?: number;
  /** Our open inventory stream to this peer, for updates. */
  outbox?: Stream;
}

type ChunkHeader = { status: 'OK'; size: number } | { status: 'NOT_FOUND' } | { status: 'BUSY' } | { status: 'ERROR'; message: string };

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

/**
 * This node's place in the cluster: a libp2p node (TCP, private network, Noise, Yamux, identify, ping) that
 * finds peers (static list, DNS, mDNS), keeps every connected peer's inventory of digests (a snapshot when a
 * connection opens, then additions and removals), and serves and fetches chunks, chunk maps, manifests and tags.
 *
 * Content routing is by inventory exchange: each node tells each connected peer what it holds, so "who has D"
 * is answered from memory at once, a "no" costs nothing, and a peer's records vanish with its connection.
 */
export class PeerService implements PeerNetwork {
  private readonly opts: PeerServiceOptions;
  private node?: Libp2p<{ ping: Ping }>;
  private readonly peersById = new Map<string, PeerState>();
  private readonly upload: TokenBucket;
  private readonly metrics: PeerMetrics;
  private activeChunkStreams = 0;
  private timer?: NodeJS.Timeout;
  private pending: { type: 'add' | 'remove'; digest: string }[] = [];
  private flushTimer?: NodeJS.Timeout;
  private unwatch?: () => void;
  private stopping = false;

  constructor(opts: PeerServiceOptions) {
    this.opts = opts;
    this.upload = new TokenBucket(opts.maxUploadRate);
    this.metrics = new PeerMetrics(opts.metrics, () => this.connectedIds().length);
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
    const privateKey = await loadOrCreateIdentity(this.opts.identityFile);
    const listenAddr = listen.host.includes(':') ? `/ip6/${listen.host}/tcp/${listen.port}` : `/ip4/${listen.host}/tcp/${listen.port}`;
    // A whole chunk fits in a stream's first window, so a chunk costs one round trip (gotchas: notes on yamux).
    const streamOptions = { initialStreamWindowSize: 8 * 1024 * 1024, maxStreamWindowSize: 16 * 1024 * 1024, maxReadBufferLength: 40 * 1024 * 1024 };
    this.node = (await createLibp2p({
      privateKey,
      addresses: { listen: [listenAddr] },
      transports: [tcp()],
      connectionEncrypters: [clusterNoise(clusterKey)],
      streamMuxers: [yamux({ streamOptions } as Parameters<typeof yamux>[0])],
      peerDiscovery: this.opts.mdns ? [mdns({ interval: 5_000 })] : [],
      connectionManager: { maxConnections: 2_000 },
      services: { identify: identify(), ping: ping() },
    })) as unknown as Libp2p<{ ping: Ping }>;
    const node = this.node;
    node.addEventListener('peer:connect', (evt) => void this.onConnect(evt.detail));
    node.addEventListener('peer:disconnect', (evt) => this.onDisconnect(evt.detail));
    node.addEventListener('peer:discovery', (evt) => {
      if (this.stopping) return;
      void node.dial(evt.detail.id, { signal: AbortSignal.timeout(5_000) }).catch(() => undefined);
    });
    await node.handle(PROTOCOLS.chunk, (stream, conn) => void this.serveChunk(stream, conn), { maxInboundStreams: 256, runOnLimitedConnection: false });
    await node.handle(PROTOCOLS.chunkMap, (stream) => void this.serveChunkMap(stream), { maxInboundStreams: 64 });
    await node.handle(PROTOCOLS.manifest, (stream) => void this.serveManifest(stream), { maxInboundStreams: 64 });
    await node.handle(PROTOCOLS.tag, (stream) => void this.serveTag(stream), { maxInboundStreams: 64 });
    await node.handle(PROTOCOLS.inventory, (stream, conn) => void this.receiveInventory(stream, conn), { maxInboundStreams: 8 });
    this.unwatch = this.opts.provider.watch((e) => this.queueAnnouncement(e.type === 'added' ? 'add' : 'remove', e.digest));
    logger.info({ peerId: this.selfId, addresses: this.addresses() }, 'p2p listening');
    // The first round of discovery runs in the background: a slow DNS server must not hold the node's start.
    void this.maintain();
    this.timer = setInterval(() => void this.maintain(), this.opts.maintenanceIntervalMs ?? 5_000);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.timer) clearInterval(this.timer);
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.unwatch?.();
    await this.node?.stop();
  }

  // ---- discovery and upkeep ---------------------------------------------------------------------

  private connectedIds(): string[] {
    return [...this.peersById.keys()].filter((id) => (this.node?.getConnections().some((c) => c.remotePeer.toString() === id) ?? false));
  }

  private async bootstrapAddresses(): Promise<Multiaddr[]> {
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
        const port = this.opts.peersDnsPort ?? this.opts.listen.port;
        for (const r of records) out.push(multiaddr(`/${r.family === 6 ? 'ip6' : 'ip4'}/${r.address}/tcp/${port}`));
      } catch (err) {
        this.opts.logger.debug({ name: this.opts.peersDns, err: (err as Error).message }, 'peer DNS lookup failed');
      }
    }
    return out;
  }

  /** Dials configured peers that are not connected, and measures RTT to connected ones. */
  private async maintain(): Promise<void> {
    const node = this.node;
    if (!node || this.stopping) return;
    const own = new Set(node.getMultiaddrs().map((a) => a.toString().replace(/\/p2p\/.*$/, '')));
    const connectedAddrs = new Set(node.getConnections().map((c) => c.remoteAddr.toString().replace(/\/p2p\/.*$/, '')));
    const targets = (await this.bootstrapAddresses()).filter((a) => !own.has(a.toString()) && !connectedAddrs.has(a.toString()));
    await Promise.allSettled(
      targets.map((a) =>
        node.dial(a, { signal: AbortSignal.timeout(3_000) }).catch((err: Error) => {
          this.opts.logger.debug({ peer: a.toString(), err: err.message }, 'peer dial failed');
        }),
      ),
    );
    await Promise.allSettled(
      [...this.peersById.values()].map(async (p) => {
        try {
          p.rttMs = await node.services.ping.ping(p.id, { signal: AbortSignal.timeout(2_000) });
        } catch {
          // unreachable for now; the connection manager will notice
        }
      }),
    );
  }

  private async onConnect(id: PeerId): Promise<void> {
    const key = id.toString();
    if (!this.peersById.has(key)) this.peersById.set(key, { id, inventory: new Set(), bytesIn: 0, bytesOut: 0 });
    this.opts.logger.info({ peer: key }, 'peer connected');
    await this.sendSnapshot(key);
  }

  private onDisconnect(id: PeerId): void {
    const key = id.toString();
    const state = this.peersById.get(key);
    if (!state) return;
    // Keep counters and bans; drop what it held: its records vanish with it.
    this.peersById.delete(key);
    this.opts.logger.info({ peer: key }, 'peer disconnected');
  }

  // ---- inventory ----------------------------------------------------------------------------------

  private async sendSnapshot(peer: string): Promise<void> {
    const node = this.node;
    const state = this.peersById.get(peer);
    if (!node || !state) return;
    try {
      const stream = await node.dialProtocol(state.id, PROTOCOLS.inventory, { signal: AbortSignal.timeout(5_000) });
      state.outbox = stream;
      const lp = framed(stream);
      const digests = await this.opts.provider.inventory();
      // Large inventories go in slices so no frame gets near the limit.
      for (let i = 0; i < digests.length || i === 0; i += 20_000) {
        await writeJson(lp, { type: i === 0 ? 'snapshot' : 'add', zone: this.opts.zone, digests: digests.slice(i, i + 20_000) });
      }
    } catch (err) {
      this.opts.logger.debug({ peer, err: (err as Error).message }, 'inventory snapshot failed');
    }
  }

  private queueAnnouncement(type: 'add' | 'remove', digest: string): void {
    this.pending.push({ type, digest });
    this.flushTimer ??= setTimeout(() => {
      this.flushTimer = undefined;
      void this.flushAnnouncements();
    }, 50);
  }

  private async flushAnnouncements(): Promise<void> {
    const batch = this.pending;
    this.pending = [];
    const adds = batch.filter((b) => b.type === 'add').map((b) => b.digest);
    const removes = batch.filter((b) => b.type === 'remove').map((b) => b.digest);
    await Promise.allSettled(
      [...this.peersById.values()].map(async (p) => {
        if (!p.outbox || p.outbox.status !== 'open') return;
        const lp = framed(p.outbox);
        if (adds.length) await writeJson(lp, { type: 'add', digests: adds });
        if (removes.length) await writeJson(lp, { type: 'remove', digests: removes });
      }),
    );
  }

  private async receiveInventory(stream: Stream, conn: Connection): Promise<void> {
    const peer = conn.remotePeer.toString();
    const lp = framed(stream);
    try {
      for (;;) {
        const msg = await readJson<{ type: 'snapshot' | 'add' | 'remove'; digests: string[]; zone?: string }>(lp);
        let state = this.peersById.get(peer);
        if (!state) {
          state = { id: conn.remotePeer, inventory: new Set(), bytesIn: 0, bytesOut: 0 };
          this.peersById.set(peer, state);
        }
        if (msg.type === 'snapshot') {
          state.inventory = new Set(msg.digests);
          state.zone = msg.zone;
        } else if (msg.type === 'add') for (const d of msg.digests) state.inventory.add(d);
        else for (const d of msg.digests) state.inventory.delete(d);
      }
    } catch {
      // the peer closed the stream or went away
    }
  }

  // ---- ranking ------------------------------------------------------------------------------------

  private usable(p: PeerState): boolean {
    return p.bannedUntil === undefined || p.bannedUntil < Date.now();
  }

  /** Same zone first, then lower RTT, then higher measured throughput. */
  private rank(states: PeerState[]): string[] {
    const zone = this.opts.zone;
    return states
      .filter((p) => this.usable(p))
      .sort((a, b) => {
        const za = zone && a.zone === zone ? 0 : 1;
        const zb = zone && b.zone === zone ? 0 : 1;
        if (za !== zb) return za - zb;
        const ra = a.rttMs ?? 1_000;
        const rb = b.rttMs ?? 1_000;
        if (Math.abs(ra - rb) > 2) return ra - rb;
        return (b.throughput ?? 0) - (a.throughput ?? 0);
      })
      .map((p) => p.id.toString());
  }

  holders(digest: string): string[] {
    const found = this.rank([...this.peersById.values()].filter((p) => p.inventory.has(digest)));
    this.metrics.lookups.inc({ result: found.length > 0 ? 'hit' : 'miss' });
    return found;
  }

  peers(): string[] {
    return this.rank([...this.peersById.values()]);
  }

  ban(peer: string, reason: string): void {
    const state = this.peersById.get(peer);
    if (!state) return;
    // Chunks in flight from the same peer report it again: one ban per peer, counted once.
    if (state.bannedUntil !== undefined && state.bannedUntil > Date.now()) return;
    state.bannedUntil = Date.now() + this.opts.banMs;
    this.metrics.bans.inc();
    this.opts.logger.warn({ peer, reason, untilMs: this.opts.banMs }, 'peer banned');
  }

  recordTransfer(peer: string, bytes: number, ms: number): void {
    const state = this.peersById.get(peer);
    if (!state || ms <= 0) return;
    const rate = (bytes / ms) * 1000;
    state.throughput = state.throughput === undefined ? rate : state.throughput * 0.7 + rate * 0.3;
  }

  summary(): PeerSummary[] {
    const node = this.node;
    return [...this.peersById.values()].map((p) => ({
      id: p.id.toString(),
      addresses: node?.getConnections(p.id).map((c) => c.remoteAddr.toString()) ?? [],
      rttMs: p.rttMs,
      throughput: p.throughput,
      bytesIn: p.bytesIn,
      bytesOut: p.bytesOut,
      zone: p.zone,
      blobs: p.inventory.size,
      bannedUntil: p.bannedUntil && p.bannedUntil > Date.now() ? p.bannedUntil : undefined,
    }));
  }

  // ---- client side --------------------------------------------------------------------------------

  private async open(peer: string, protocol: string, signal?: AbortSignal): Promise<Stream> {
    const state = this.peersById.get(peer);
    if (!this.node || !state) throw new UnavailableError(`peer ${peer} is not connected`);
    try {
      return await this.node.dialProtocol(state.id, protocol, { signal: signal ?? AbortSignal.timeout(5_000) });
    } catch (err) {
      if (signal?.aborted) throw new AbortedError();
      throw new UnavailableError(`peer ${peer} did not open ${protocol}: ${(err as Error).message}`);
    }
  }

  async fetchRange(peer: string, req: ChunkRequest, opts: IoOptions = {}): Promise<{ size: number; stream: AsyncIterable<Uint8Array> }> {
    const stream = await this.open(peer, PROTOCOLS.chunk, opts.signal);
    const state = this.peersById.get(peer);
    const lp = framed(stream);
    const fail = (err: unknown): never => {
      this.metrics.chunkRequests.inc({ direction: 'out', outcome: err instanceof NotFoundError ? 'not_found' : 'error' });
      stream.abort(err instanceof Error ? err : new Error(String(err)));
      if (opts.signal?.aborted) throw new AbortedError();
      if (err instanceof NotFoundError || err instanceof UnavailableError) throw err;
      throw new UnavailableError(`chunk transfer from peer ${peer} failed: ${(err as Error).message}`);
    };
    let size: number;
    try {
      await writeJson(lp, req, opts);
      const header = await readJson<ChunkHeader>(lp, opts);
      if (header.status === 'NOT_FOUND') throw new NotFoundError('BLOB_UNKNOWN', `peer ${peer} does not have ${req.digest}`);
      if (header.status !== 'OK') throw new UnavailableError(`peer ${peer} answered ${header.status}${header.status === 'ERROR' ? `: ${header.message}` : ''}`);
      size = header.size;
    } catch (err) {
      return fail(err);
    }
    const want = Math.min(req.end, size - 1) - req.start + 1;
    const metrics = this.metrics;
    async function* frames(): AsyncIterable<Uint8Array> {
      let received = 0;
      try {
        while (received < want) {
          const frame = await readFrame(lp, opts);
          if (frame.length === 0) throw new UnavailableError(`peer ${peer} ended a chunk early`);
          received += frame.length;
          if (received > want) throw new UnavailableError(`peer ${peer} sent more bytes than asked`);
          if (state) state.bytesIn += frame.length;
          metrics.bytes.inc({ direction: 'in' }, frame.length);
          yield frame;
        }
        metrics.chunkRequests.inc({ direction: 'out', outcome: 'ok' });
        await stream.close().catch(() => undefined);
      } catch (err) {
        fail(err);
      }
    }
    return { size, stream: frames() };
  }

  async fetchChunkMap(peer: string, digest: string, opts: IoOptions = {}): Promise<{ size: number; chunks: string[] } | undefined> {
    return this.request(peer, PROTOCOLS.chunkMap, { digest }, opts, async (lp) => {
      const res = await readJson<{ found: boolean; size?: number; chunks?: string[] }>(lp, opts);
      return res.found && res.chunks && res.size !== undefined ? { size: res.size, chunks: res.chunks } : undefined;
    });
  }

  async fetchManifest(peer: string, digest: string, opts: IoOptions = {}): Promise<{ bytes: Uint8Array; mediaType: string } | undefined> {
    return this.request(peer, PROTOCOLS.manifest, { digest }, opts, async (lp) => {
      const res = await readJson<{ found: boolean; mediaType?: string }>(lp, opts);
      if (!res.found || !res.mediaType) return undefined;
      return { bytes: await readFrame(lp, opts), mediaType: res.mediaType };
    });
  }

  async queryTag(repository: string, tag: string, opts: IoOptions = {}): Promise<PeerTagRecord[]> {
    const results = await Promise.allSettled(
      this.peers().map((peer) =>
        this.request(peer, PROTOCOLS.tag, { repository, tag }, opts, async (lp) => {
          const res = await readJson<{ found: boolean; digest?: string; updated?: number }>(lp, opts);
          return res.found && res.digest ? { peer, digest: res.digest, updated: res.updated ?? 0 } : undefined;
        }),
      ),
    );
    return results.flatMap((r) => (r.status === 'fulfilled' && r.value ? [r.value] : []));
  }

  private async request<T>(
    peer: string,
    protocol: string,
    body: unknown,
    opts: IoOptions,
    read: (lp: ReturnType<typeof framed>) => Promise<T>,
  ): Promise<T> {
    const signal = opts.signal ? AbortSignal.any([opts.signal, AbortSignal.timeout(10_000)]) : AbortSignal.timeout(10_000);
    const stream = await this.open(peer, protocol, signal);
    try {
      const lp = framed(stream);
      await writeJson(lp, body, { signal });
      const out = await read(lp);
      await stream.close().catch(() => undefined);
      return out;
    } catch (err) {
      stream.abort(err instanceof Error ? err : new Error(String(err)));
      if (opts.signal?.aborted) throw new AbortedError();
      throw new UnavailableError(`${protocol} request to peer ${peer} failed: ${(err as Error).message}`);
    }
  }

  // ---- server side --------------------------------------------------------------------------------

  private async serveChunk(stream: Stream, conn: Connection): Promise<void> {
    const lp = framed(stream);
    const peer = conn.remotePeer.toString();
    const signal = AbortSignal.timeout(10 * 60_000);
    if (this.activeChunkStreams >= this.opts.maxChunkStreams) {
      await writeJson(lp, { status: 'BUSY' } satisfies ChunkHeader).catch(() => undefined);
      await stream.close().catch(() => undefined);
      this.metrics.chunkRequests.inc({ direction: 'in', outcome: 'busy' });
      return;
    }
    this.activeChunkStreams++;
    try {
      const req = await readJson<ChunkRequest>(lp, { signal: AbortSignal.timeout(10_000) });
      if (typeof req.digest !== 'string' || !Number.isSafeInteger(req.start) || !Number.isSafeInteger(req.end) || req.start < 0 || req.end < req.start) {
        await writeJson(lp, { status: 'ERROR', message: 'malformed chunk request' } satisfies ChunkHeader);
        return;
      }
      const opened = await this.opts.provider.openRange(req, { signal }).catch((err: Error) => {
        this.opts.logger.debug({ peer, digest: req.digest, err: err.message }, 'chunk request could not be served');
        return undefined;
      });
      if (!opened) {
        await writeJson(lp, { status: 'NOT_FOUND' } satisfies ChunkHeader);
        this.metrics.chunkRequests.inc({ direction: 'in', outcome: 'not_found' });
        return;
      }
      await writeJson(lp, { status: 'OK', size: opened.size } satisfies ChunkHeader);
      const state = this.peersById.get(peer);
      for await (const chunk of opened.stream) {
        for (let i = 0; i < chunk.length; i += DATA_FRAME) {
          const piece = chunk.subarray(i, i + DATA_FRAME);
          await this.upload.take(piece.length, signal);
          await lp.write(piece, { signal });
          if (state) state.bytesOut += piece.length;
          this.metrics.bytes.inc({ direction: 'out' }, piece.length);
        }
      }
      this.metrics.chunkRequests.inc({ direction: 'in', outcome: 'ok' });
      await stream.close();
    } catch (err) {
      this.metrics.chunkRequests.inc({ direction: 'in', outcome: 'error' });
      stream.abort(err instanceof Error ? err : new Error(String(err)));
    } finally {
      this.activeChunkStreams--;
    }
  }

  private async serveChunkMap(stream: Stream): Promise<void> {
    await this.serveSmall(stream, async (lp, signal) => {
      const { digest } = await readJson<{ digest: string }>(lp, { signal });
      const map = await this.opts.provider.chunkMap(digest, { signal });
      await writeJson(lp, map ? { found: true, ...map } : { found: false }, { signal });
    });
  }

  private async serveManifest(stream: Stream): Promise<void> {
    await this.serveSmall(stream, async (lp, signal) => {
      const { digest } = await readJson<{ digest: string }>(lp, { signal });
      const m = await this.opts.provider.manifest(digest, { signal });
      if (!m) return writeJson(lp, { found: false }, { signal });
      await writeJson(lp, { found: true, mediaType: m.mediaType }, { signal });
      await lp.write(m.bytes, { signal });
    });
  }

  private async serveTag(stream: Stream): Promise<void> {
    await this.serveSmall(stream, async (lp, signal) => {
      const { repository, tag } = await readJson<{ repository: string; tag: string }>(lp, { signal });
      const rec = await this.opts.provider.tag(repository, tag, { signal });
      await writeJson(lp, rec ? { found: true, digest: rec.digest, updated: rec.updated } : { found: false }, { signal });
    });
  }

  private async serveSmall(stream: Stream, fn: (lp: ReturnType<typeof framed>, signal: AbortSignal) => Promise<void>): Promise<void> {
    const signal = AbortSignal.timeout(30_000);
    try {
      await fn(framed(stream), signal);
      await stream.close();
    } catch (err) {
      stream.abort(err instanceof Error ? err : new Error(String(err)));
    }
  }
}
