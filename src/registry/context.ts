import type { Logger } from 'pino';
import type { ContentStore } from '../store/index.ts';
import type { PullThrough } from '../source/pull-through.ts';
import type { PullMetrics } from '../source/metrics.ts';
import type { PullTraffic } from '../source/traffic.ts';
import type { RegistryMetrics } from './metrics.ts';
import type { AccessControl, Principal } from '../access/index.ts';
import type { PolicyEngine } from '../policy/index.ts';

/** What every handler gets besides the Koa context. */
export interface RegistryDeps {
  store: ContentStore;
  logger: Logger;
  metrics: RegistryMetrics;
  pullMetrics: PullMetrics;
  /** The pull path: local store, then seeds. */
  pull: PullThrough;
  maxManifestBytes: number;
  deleteEnabled: boolean;
  /** This node's peers for `GET /shoal/peers` (undefined: P2P is off). */
  peerStatus?: () => unknown;
  /** True while the node accepts work; /readyz reports it. */
  ready: () => boolean;
  /** The node's own operations (status, garbage collection) for the admin API. */
  admin?: NodeAdmin;
  /** Users, roles, audit log, webhooks and immutable tags; undefined: every request is allowed (tests of the API alone). */
  access?: AccessControl;
  /**
   * Called each time a request failed because the node's disk (or quota) is full, after its partial bytes were
   * freed: the place to start eviction. Must not block; what it throws is logged and ignored.
   */
  onStorageFull?: () => void;
  /** Bytes by source over the last hour and the recent pulls (`GET /shoal/traffic`); blob pulls are recorded in it. */
  traffic?: PullTraffic;
  /** The signature policy (`serve --policy FILE`); undefined: every image is served. */
  policy?: PolicyEngine;
}

/** Operations on the node as a whole, served under /shoal/. */
export interface NodeAdmin {
  /** What `GET /shoal/status` answers: disk, quota, pins, last GC and scrub, peers. */
  status(opts: { signal?: AbortSignal }): Promise<unknown>;
  /** Runs a garbage collection (or reports what one would remove) and returns its report. */
  runGc(opts: { dryRun: boolean; signal?: AbortSignal }): Promise<unknown>;
  /** What `GET /shoal/images` answers: the images held, with tags, size, platforms, pin and last pull. */
  images?(opts: { prefix?: string; signal?: AbortSignal }): Promise<unknown>;
  /** Pulls images onto this node (and, with `allNodes`, onto its peers), reporting progress (`POST /shoal/prefetch`). */
  prefetch?(request: PrefetchRequest, progress: (event: Record<string, unknown>) => void, opts: { signal?: AbortSignal }): Promise<Record<string, unknown>>;
  /** What `GET /shoal/cluster` answers: this node's summary and each peer's, asked over the peer network. */
  cluster?(opts: { signal?: AbortSignal }): Promise<unknown>;
}

/** What `POST /shoal/prefetch` asks. */
export interface PrefetchRequest {
  /** Image references as `shoal prefetch` takes them: `registry/repo:tag`, `repo@sha256:...`. */
  refs: string[];
  /** Ask every peer to prefetch too. */
  allNodes: boolean;
  /** Pin what was prefetched. */
  pin: boolean;
}

/** Parameters a route pattern extracted from the path. */
export interface RouteParams {
  /** The repository in this node's store: `<registry>/<name>` when the request carried `?ns=<registry>`. */
  name: string;
  /** The repository as the client (and the seed) name it. */
  upstream: string;
  /** The registry of `?ns=`, lower-cased, if any. */
  namespace?: string;
  reference?: string;
  digest?: string;
  uploadId?: string;
}

/** Per-request state the middlewares share. */
export interface RegistryState {
  route: string;
  /** Aborted when the client goes away. */
  signal: AbortSignal;
  /** Who is calling (set by the access middleware). */
  principal?: Principal;
  /** Whether the caller may pull from a repository: the catalog lists only those (set by the access middleware). */
  mayPull?: (repository: string) => boolean;
  /** Whether the caller may administer a repository: the pin list shows only those (set by the access middleware). */
  mayAdmin?: (repository: string) => boolean;
  /** What a handler tells the audit log about the request it served (an admin call's arguments). */
  auditDetail?: string;
}
