import { Counter, Gauge, Histogram, collectDefaultMetrics, type Registry } from 'prom-client';
import type { StoreStats } from '../store/index.ts';

/** The registry endpoint's metrics, registered on a prom-client Registry the node owns. */
export class RegistryMetrics {
  readonly requests: Counter<'route' | 'method' | 'status'>;
  readonly duration: Histogram<'route' | 'method'>;
  readonly servedBytes: Counter<'kind'>;
  readonly receivedBytes: Counter<'kind'>;
  readonly storageFull: Counter<'route'>;

  constructor(registry: Registry, storeStats: () => Promise<StoreStats>) {
    collectDefaultMetrics({ register: registry, prefix: 'shoal_process_' });
    this.requests = new Counter({
      name: 'shoal_http_requests_total',
      help: 'HTTP requests handled, by route, method and status',
      labelNames: ['route', 'method', 'status'],
      registers: [registry],
    });
    this.duration = new Histogram({
      name: 'shoal_http_request_duration_seconds',
      help: 'Time until the response was complete',
      labelNames: ['route', 'method'],
      buckets: [0.001, 0.005, 0.02, 0.1, 0.5, 2, 10, 60],
      registers: [registry],
    });
    this.servedBytes = new Counter({
      name: 'shoal_served_bytes_total',
      help: 'Bytes of blobs and manifests sent to clients',
      labelNames: ['kind'],
      registers: [registry],
    });
    this.receivedBytes = new Counter({
      name: 'shoal_received_bytes_total',
      help: 'Bytes of blobs and manifests received from clients',
      labelNames: ['kind'],
      registers: [registry],
    });
    this.storageFull = new Counter({
      name: 'shoal_storage_full_total',
      help: "Requests refused with 507 because the node's disk or quota was full, by route",
      labelNames: ['route'],
      registers: [registry],
    });
    new Gauge({
      name: 'shoal_store_bytes',
      help: 'Bytes of committed blobs in the store',
      registers: [registry],
      async collect() {
        this.set((await storeStats()).bytes);
      },
    });
    new Gauge({
      name: 'shoal_store_blobs',
      help: 'Committed blobs in the store',
      registers: [registry],
      async collect() {
        this.set((await storeStats()).blobs);
      },
    });
  }
}
