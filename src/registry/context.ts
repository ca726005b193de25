import type { Logger } from 'pino';
import type { ContentStore } from '../store/index.ts';
import type { RegistryMetrics } from './metrics.ts';

/** What every handler gets besides the Koa context. */
export interface RegistryDeps {
  store: ContentStore;
  logger: Logger;
  metrics: RegistryMetrics;
  maxManifestBytes: number;
  deleteEnabled: boolean;
  /** True while the node accepts work; /readyz reports it. */
  ready: () => boolean;
}

/** Parameters a route pattern extracted from the path. */
export interface RouteParams {
  name: string;
  reference?: string;
  digest?: string;
  uploadId?: string;
}

/** Per-request state the middlewares share. */
export interface RegistryState {
  route: string;
  /** Aborted when the client goes away. */
  signal: AbortSignal;
}
