import { createServer, type RequestListener, type Server, type ServerOptions } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { Registry } from 'prom-client';
import './polyfill.ts';
import { isShoalError } from './oci/index.ts';
import { accessSettings, dataPortOf, lifecycleSettings, parseListen, type ShoalConfig } from './config/index.ts';
import { AccessControl, TlsFiles, gcAuditDetail, isLoopbackHost, protectImmutableTags } from './access/index.ts';
import { StoreLifecycle } from './life/service.ts';
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
import { SeedClient } from './upstream/index.ts';
import type { SeedConfig } from './config/index.ts';
import { parseDuration } from './config/index.ts';
import { countImages, listImages } from './life/images.ts';
import { PullTraffic } from './source/traffic.ts';
import { WarmList } from './source/warm.ts';
import { NodeControl } from './node-control.ts';
import { PolicyEngine } from './policy/index.ts';

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
  /** Users, roles, audit log, webhooks. */
  readonly access: AccessControl;
  stop(): Promise<void>;
}

export interface StartOptions {
  logger?: Logger;
  signal?: AbortSignal;
}

export async function startNode(config: ShoalConfig, opts: StartOptions = {}): Promise<ShoalNode> {
  const logger = opts.logger ?? createLogger(config.logLevel);
  const dataDir = resolve(config.dataDir);
  const metricsRegistry = new Registry();
  // The signature policy is read first: a node told to enforce one does not start without it.
  const policy = config.policyFile ? await PolicyEngine.open({ file: resolve(config.policyFile), logger, metrics: metricsRegistry }) : undefined;
  let store: Awaited<ReturnType<typeof openDiskStore>>;
  try {
    store = await openDiskStore(dataDir, { signal: opts.signal });
  } catch (err) {
    await policy?.stop();
    throw err;
  }
  if (store.recovered.orphanFiles > 0 || store.recovered.lostRecords > 0) {
    logger.warn({ ...store.recovered, dataDir }, 'start-up recovery: deleted files no record names (writes a crash cut short) and dropped records whose files were missing');
  }
  const metrics = new RegistryMetrics(metricsRegistry, () => store.stats());
  const pullMetrics = new PullMetrics(metricsRegistry);
  const seeds = new ConfiguredSeeds(config, logger);
  // The lifecycle needs the pull path (to fetch lost pinned content) and the pull path asks it for room: built after.
  const lifecycleRef: { current?: StoreLifecycle } = {};
  // Access control opens after the lifecycle; scheduled collections write to its audit log once it is there.
  const accessRef: { current?: AccessControl } = {};
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
    peerTags: config.peerTags,
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
      clearData: config.p2pClearData,
      dataPort: dataPortOf(config),
      dataPortIsDefault: config.p2pDataPort.trim() === '',
      zone: config.zone || undefined,
      maxUploadRate: parseRate(config.maxPeerUpload),
      maxChunkStreams: config.maxChunkStreams,
      banMs: config.peerBanMs,
      banFile: config.persistPeerBans ? join(dataDir, 'p2p', 'bans.json') : undefined,
      maxPeerInventory: config.maxPeerInventory,
      provider: new PeerContentProvider(store, pull),
      logger,
      metrics: metricsRegistry,
    });
    try {
      await peers.start();
    } catch (err) {
      await peers.stop().catch(() => undefined);
      await policy?.stop();
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
    // Retention never removes a tag that immutableTags protects.
    retention: protectImmutableTags(config.retention, config.immutableTags),
    refetch: seeds.clients.length > 0 || peerService ? (repository, digest, kind, o) => pull.refetch(repository, digest, kind, o) : undefined,
    // The node's own collections are in the audit log, as those an admin asks for are.
    onScheduledGc: ({ report, error }) =>
      void accessRef.current?.audit.append({
        user: 'shoal',
        from: 'local',
        action: 'gc',
        result: error ? 'failed' : 'ok',
        detail: `scheduled: ${error ? error.message : gcAuditDetail(report!)}`,
      }),
  });
  lifecycleRef.current = lifecycle;
  lifecycle.start();
  // Bytes by source over the last hour and the recent pulls, for the node's page (GET /shoal/traffic).
  const traffic = new PullTraffic({ metrics: pullMetrics });
  traffic.start();
  const imageCount = (o: { signal?: AbortSignal }): Promise<number> => countImages(store, o);
  const control = new NodeControl({
    pull,
    store,
    peers: peerService,
    logger,
    summary: async (o) => {
      const life = await lifecycle.status(o);
      return {
        id: peerService?.selfId,
        version: NODE_VERSION,
        uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
        zone: config.zone || undefined,
        store: await store.stats(),
        maxStore: life.quota.maxStore,
        freeBytes: life.quota.freeBytes,
        totalBytes: life.quota.totalBytes,
        images: await imageCount(o),
        pins: life.pins,
        peers: peerService?.peers().length ?? 0,
      };
    },
  });
  await control.start();
  // warmImages: prefetched soon after start-up, and again every warmInterval.
  const warm = new WarmList({ images: config.warmImages, pin: config.warmPin, intervalMs: parseDuration(config.warmInterval || '0', 'warmInterval'), pull, store, logger });
  warm.start();
  let access: AccessControl;
  let tls: TlsFiles | undefined;
  try {
    ({ access, tls } = await openAccess(config, dataDir, logger, metricsRegistry, (o) => (server as unknown as HttpsServer).setSecureContext(o)));
    accessRef.current = access;
  } catch (err) {
    await warm.stop();
    await traffic.stop();
    await lifecycle.stop();
    await peerService?.stop();
    await policy?.stop();
    await seeds.close();
    await store.close();
    throw err;
  }
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
      access,
      onStorageFull: () => lifecycle.storageFull(),
      policy,
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
        images: (o) => listImages(store, o),
        prefetch: (request, progress, o) => control.prefetch(request, progress, o),
        cluster: (o) => control.cluster(o),
      },
      traffic,
      peerStatus: peerService ? () => ({ enabled: true, self: peerService.selfId, addresses: peerService.addresses(), peers: peerService.summary() }) : undefined,
    },
    metricsRegistry,
  });
  const handle = app.callback();
  // Requests whose handlers are still running; the store closes only after the last one settles.
  let active = 0;
  let onIdle: (() => void) | undefined;
  // HTTPS when a certificate is configured; both kinds of server are driven the same way below.
  const createEndpoint = (options: ServerOptions, listener: RequestListener): Server =>
    tls ? (createHttpsServer({ ...options, ...tls.options() }, listener) as unknown as Server) : createServer(options, listener);
  const server: Server = createEndpoint({ requestTimeout: 0, keepAliveTimeout: 65_000 }, (req, res) => {
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
    await warm.stop();
    await traffic.stop();
    await tls?.close();
    await access.close();
    await ops?.close();
    await lifecycle.stop();
    await peerService?.stop();
    await policy?.stop();
    await seeds.close();
    await store.close();
    throw err;
  }
  const bound = (server.address() as AddressInfo).port;
  const shownHost = host.includes(':') ? `[${host}]` : host === '0.0.0.0' ? '127.0.0.1' : host;
  const url = `${tls ? 'https' : 'http'}://${shownHost}:${bound}`;
  if (!isLoopbackHost(host)) {
    if (!access.authEnabled) logger.warn({ listen: config.listen, anonymous: config.anonymous }, 'listening beyond loopback without users: pulls are open, and push, delete and admin calls are refused to other hosts unless anonymous allows them');
    else if (!tls) logger.warn({ listen: config.listen }, 'listening beyond loopback without TLS: passwords and tokens cross the network in clear; give --tls-cert and --tls-key');
  }
  logger.info({ url, listen: `${host}:${bound}`, dataDir, tls: tls?.summary, auth: access.authEnabled, ...(ops ? { metricsUrl: ops.url } : {}) }, 'listening');

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
      await warm.stop();
      await traffic.stop();
      await tls?.close();
      // Queued audit entries are written; queued webhook events are dropped (and logged).
      await access.close();
      await ops?.close();
      await lifecycle.stop();
      await peerService?.stop();
      await policy?.stop();
      await seeds.close();
      await store.close();
      logger.info('stopped');
      logger.flush?.();
    })();
    return stopping;
  };
  return { port: bound, url, store, metrics: metricsRegistry, logger, peers: peerService, lifecycle, access, stop };
}

/** Users, roles, audit log and webhooks from the config, and the TLS files (`onCertificate` gets a renewed pair). */
async function openAccess(
  config: ShoalConfig,
  dataDir: string,
  logger: Logger,
  metrics: Registry,
  onCertificate: (options: import('node:tls').SecureContextOptions) => void,
): Promise<{ access: AccessControl; tls?: TlsFiles }> {
  const { anonymous, auditMaxBytes } = accessSettings(config);
  const access = await AccessControl.open(
    {
      htpasswdFile: config.htpasswdFile || undefined,
      tokensFile: config.tokensFile || undefined,
      grants: config.grants,
      anonymous,
      immutableTags: config.immutableTags,
      audit: { file: config.auditLog ? resolve(config.auditLog) : join(dataDir, 'audit.log'), maxBytes: auditMaxBytes, keep: config.auditKeep },
      webhooks: config.webhooks,
    },
    { logger, metrics },
  );
  if (!config.tlsCert) return { access };
  try {
    return { access, tls: await TlsFiles.open(config.tlsCert, config.tlsKey, logger, onCertificate) };
  } catch (err) {
    await access.close();
    throw err;
  }
}
