import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { Registry } from 'prom-client';
import './polyfill.ts';
import { isShoalError } from './oci/index.ts';
import { lifecycleSettings, parseListen, type ShoalConfig } from './config/index.ts';
import { StoreLifecycle } from './life/service.ts';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { TokenBucket } from './limits/token-bucket.ts';
import { parseRate } from './limits/size.ts';
import { readClusterKey } from './p2p/keys.ts';
import { PeerService } from './p2p/peer-service.ts';
import { MDNS_GROUP, multicastRouteProblem } from './p2p/multicast.ts';
import { PeerContentProvider } from './source/peer-provider.ts';
import { createLogger } from './logger.ts';
import { createRegistryApp } from './registry/app.ts';
import { startOpsServer, type OpsServer } from './registry/ops-server.ts';
import { RegistryMetrics } from './registry/metrics.ts';
import { openDiskStore, type ContentStore } from './store/index.ts';
import { ensureRoom } from './store/disk-space.ts';
import { PullMetrics } from './source/metrics.ts';
import { PullThrough } from './source/pull-through.ts';
import type { SeedDirectory, SeedSet } from './source/types.ts';
import type { RepositoryTarget } from './source/pull-through.ts';
import { SeedClient } from './upstream/index.ts';
import type { SeedConfig } from './config/index.ts';

/** The version `shoal status` reports. */
const NODE_VERSION = '0.1.0';

/** The configured seeds as clients: `seeds` for requests without `?ns=`, `registries` by host. */
class ConfiguredSeeds implements SeedDirectory {
  private readonly byRegistry = new Map<string, SeedSet>();
  private readonly fallback?: SeedSet;
  /** Registry hosts of the `seeds` (requests without `?ns=`), e.g. `registry.local:5000`. */
  private readonly fallbackHosts = new Set<string>();
  readonly clients: SeedClient[] = [];

  constructor(config: ShoalConfig, logger: Logger) {
    const build = (registry: string, seeds: SeedConfig[]): SeedSet => ({
      registry,
      seeds: seeds.map((s) => {
        const client = new SeedClient({ ...s, logger, timeoutMs: config.seedTimeoutMs, retries: config.seedRetries });
        this.clients.push(client);
        return client;
      }),
    });
    if (config.seeds.length > 0) this.fallback = build('default', config.seeds);
    for (const [host, seeds] of Object.entries(config.registries)) {
      if (seeds.length > 0) this.byRegistry.set(host.toLowerCase(), build(host.toLowerCase(), seeds));
    }
    // `--seed http://R` also serves what containerd asks as `?ns=R` (unless `registries` names R itself).
    for (const seed of config.seeds) this.fallbackHosts.add(new URL(seed.url).host.toLowerCase());
  }

  /** How a stored repository is pulled: `<registry>/<path>` of a configured registry is namespaced by it. */
  targetFor(repository: string): RepositoryTarget {
    const slash = repository.indexOf('/');
    if (slash > 0) {
      const first = repository.slice(0, slash);
      for (const host of [...this.byRegistry.keys(), ...this.fallbackHosts]) {
        if (host.replace(':', '-') === first) return { repository, upstream: repository.slice(slash + 1), namespace: host };
      }
      if (first === 'docker.io') return { repository, upstream: repository.slice(slash + 1), namespace: 'docker.io' };
    }
    return { repository, upstream: repository };
  }

  seedsFor(namespace: string | undefined): SeedSet | undefined {
    if (namespace === undefined) return this.fallback;
    return (
      this.byRegistry.get(namespace) ??
      (namespace === 'docker.io' ? this.byRegistry.get('registry-1.docker.io') : undefined) ??
      (this.fallbackHosts.has(namespace) ? this.fallback : undefined)
    );
  }

  /** The seeds' URLs (no credentials) for `GET /shoal/status`: what `shoal containerd-config` infers schemes from. */
  describe(): { default: string[]; registries: Record<string, string[]> } {
    const urls = (set?: SeedSet): string[] => set?.seeds.map((s) => s.url) ?? [];
    return { default: urls(this.fallback), registries: Object.fromEntries([...this.byRegistry].map(([host, set]) => [host, urls(set)])) };
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.clients.map((c) => c.close()));
  }
}

/** A running node: the composition root owns every service and stops them in order. */
export interface ShoalNode {
  readonly port: number;
  readonly url: string;
  readonly store: ContentStore;
  readonly metrics: Registry;
  readonly logger: Logger;
  /** The peer network, when P2P is on. */
  readonly peers?: PeerService;
  /** Quota and eviction, GC, scrub. */
  readonly lifecycle: StoreLifecycle;
  stop(): Promise<void>;
}

export interface StartOptions {
  logger?: Logger;
  signal?: AbortSignal;
}

export async function startNode(config: ShoalConfig, opts: StartOptions = {}): Promise<ShoalNode> {
  const logger = opts.logger ?? createLogger(config.logLevel);
  const dataDir = resolve(config.dataDir);
  const store = await openDiskStore(dataDir, { signal: opts.signal });
  const metricsRegistry = new Registry();
  const metrics = new RegistryMetrics(metricsRegistry, () => store.stats());
  const pullMetrics = new PullMetrics(metricsRegistry);
  const seeds = new ConfiguredSeeds(config, logger);
  // The lifecycle needs the pull path (to fetch lost pinned content) and the pull path asks it for room: built after.
  const lifecycleRef: { current?: StoreLifecycle } = {};
  const pull = new PullThrough({
    store,
    seeds,
    metrics: pullMetrics,
    logger,
    tagTimeoutMs: config.tagTimeoutMs,
    parallelChunks: config.parallelChunks,
    seedRate: new TokenBucket(parseRate(config.maxSeedRate)),
    // Room for a seed transfer: evict least recently used blobs first when the disk is short of it.
    ensureRoom: async (bytes, what) => {
      try {
        await ensureRoom(dataDir, bytes, what);
      } catch (err) {
        if (!isShoalError(err) || err.code !== 'STORAGE_FULL') throw err;
        await lifecycleRef.current?.makeRoom(bytes);
        await ensureRoom(dataDir, bytes, what);
      }
    },
  });
  let peers: PeerService | undefined;
  if (config.p2pListen) {
    peers = new PeerService({
      listen: parseListen(config.p2pListen, 'p2pListen'),
      clusterKey: await readClusterKey(config.clusterKeyFile),
      identityFile: join(dataDir, 'p2p', 'identity.key'),
      bootstrap: config.peers,
      peersDns: config.peersDns || undefined,
      mdns: config.mdns,
      zone: config.zone || undefined,
      maxUploadRate: parseRate(config.maxPeerUpload),
      maxChunkStreams: config.maxChunkStreams,
      banMs: 5 * 60_000,
      provider: new PeerContentProvider(store, pull),
      logger,
      metrics: metricsRegistry,
    });
    try {
      await peers.start();
    } catch (err) {
      await peers.stop().catch(() => undefined);
      await seeds.close();
      await store.close();
      throw err;
    }
    pull.connectNetwork(peers);
    if (config.mdns) {
      const problem = await multicastRouteProblem({ signal: opts.signal });
      if (problem) {
        logger.warn(
          { group: MDNS_GROUP, error: problem },
          'mDNS is on, but this host has no route for multicast: mDNS will neither find peers nor announce this node. ' +
            'Add one (e.g. ip route add 224.0.0.0/4 dev eth0), or name peers with --peer or --peers-dns',
        );
      }
    }
  }
  const peerService = peers;
  const startedAt = Date.now();
  const lifecycle = new StoreLifecycle({
    store,
    dataDir,
    logger,
    metrics: metricsRegistry,
    ...lifecycleSettings(config),
    retention: config.retention,
    refetch:
      seeds.clients.length > 0 || peerService
        ? async (repository, digest, kind, o) => {
            const target = seeds.targetFor(repository);
            if (kind === 'manifest') {
              await pull.manifest(target, { kind: 'digest', digest }, o);
              return;
            }
            const blob = await pull.blob(target, digest, o);
            // Reading it to the end is what makes the fetch commit it.
            await pipeline(Readable.from(await blob.open(undefined, o)), new Writable({ write: (_c, _e, cb) => cb() }), { signal: o.signal });
          }
        : undefined,
  });
  lifecycleRef.current = lifecycle;
  lifecycle.start();
  let accepting = true;
  const app = createRegistryApp({
    deps: {
      store,
      logger,
      metrics,
      pullMetrics,
      pull,
      maxManifestBytes: config.maxManifestBytes,
      deleteEnabled: config.deleteEnabled,
      ready: () => accepting,
      onStorageFull: () => lifecycle.storageFull(),
      admin: {
        status: async (o) => ({
          version: NODE_VERSION,
          uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
          dataDir,
          store: await store.stats(),
          ...(await lifecycle.status(o)),
          peers: peerService ? { enabled: true, connected: peerService.summary().length } : { enabled: false, connected: 0 },
          seeds: seeds.describe(),
        }),
        runGc: (o) => lifecycle.runGc(o),
      },
      peerStatus: peerService ? () => ({ enabled: true, self: peerService.selfId, addresses: peerService.addresses(), peers: peerService.summary() }) : undefined,
    },
    metricsRegistry,
  });
  const handle = app.callback();
  // Requests whose handlers are still running; the store closes only after the last one settles.
  let active = 0;
  let onIdle: (() => void) | undefined;
  const server: Server = createServer({ requestTimeout: 0, keepAliveTimeout: 65_000 }, (req, res) => {
    active++;
    // While stopping, every response closes its connection, so keep-alive clients cannot hold the server open.
    if (!accepting) res.setHeader('Connection', 'close');
    res.once('finish', () => {
      if (!accepting) server.closeIdleConnections();
    });
    void handle(req, res).finally(() => {
      active--;
      if (!accepting) server.closeIdleConnections();
      if (active === 0) onIdle?.();
    });
  });
  const sockets = new Set<Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  // /metrics, /healthz and /readyz also on `metricsListen` (e.g. the node's address, for Prometheus).
  let ops: OpsServer | undefined;
  const { host, port } = parseListen(config.listen);
  try {
    if (config.metricsListen) ops = await startOpsServer(parseListen(config.metricsListen, 'metricsListen'), handle);
    await new Promise<void>((ok, fail) => {
      server.once('error', fail);
      server.listen(port, host, () => {
        server.off('error', fail);
        ok();
      });
    });
  } catch (err) {
    await ops?.close();
    await lifecycle.stop();
    await peerService?.stop();
    await seeds.close();
    await store.close();
    throw err;
  }
  const bound = (server.address() as AddressInfo).port;
  const shownHost = host.includes(':') ? `[${host}]` : host === '0.0.0.0' ? '127.0.0.1' : host;
  const url = `http://${shownHost}:${bound}`;
  logger.info({ url, listen: `${host}:${bound}`, dataDir, ...(ops ? { metricsUrl: ops.url } : {}) }, 'listening');

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      accepting = false;
      logger.info({ graceMs: config.shutdownGraceMs }, 'stopping: no new connections; waiting for requests in flight');
      const closed = new Promise<void>((ok) => server.close(() => ok()));
      server.closeIdleConnections();
      const grace = new Promise<void>((ok) => setTimeout(ok, config.shutdownGraceMs).unref());
      await Promise.race([closed, grace]);
      // Requests still running (slow uploads) are cut: their sessions keep what was durable, or roll back.
      for (const s of sockets) s.destroy();
      // Fetches from seeds and peers stop too, so no handler waits on them.
      const fetchesStopped = pull.stop();
      await closed;
      // Handlers see their sockets close and finish their store work (commit, roll back or keep the session).
      if (active > 0) await new Promise<void>((ok) => (onIdle = ok));
      await fetchesStopped;
      await ops?.close();
      await lifecycle.stop();
      await peerService?.stop();
      await seeds.close();
      await store.close();
      logger.info('stopped');
      logger.flush?.();
    })();
    return stopping;
  };
  return { port: bound, url, store, metrics: metricsRegistry, logger, peers: peerService, lifecycle, stop };
}
