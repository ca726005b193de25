import { Counter, type Registry } from 'prom-client';

/** Metrics of the pull path, registered on the node's prom-client Registry. */
export class PullMetrics {
  readonly pullBytes: Counter<'source'>;
  readonly seedRequests: Counter<'registry' | 'outcome'>;
  readonly seedBytes: Counter<'registry'>;
  readonly tagResolutions: Counter<'via'>;
  readonly peerHedges: Counter;
  private readonly registry: Registry;

  constructor(registry: Registry) {
    this.registry = registry;
    this.pullBytes = new Counter({
      name: 'shoal_pull_bytes_total',
      help: 'Blob bytes for clients by source: served from the local store (local), or obtained from peers (peer) or seeds (seed) once per fetch',
      labelNames: ['source'],
      registers: [registry],
    });
    for (const source of ['local', 'peer', 'seed']) this.pullBytes.inc({ source }, 0);
    this.seedRequests = new Counter({
      name: 'shoal_seed_requests_total',
      help: 'Requests to seed registries, by registry and outcome (ok, not_found, error, corrupt)',
      labelNames: ['registry', 'outcome'],
      registers: [registry],
    });
    this.seedBytes = new Counter({
      name: 'shoal_seed_bytes_total',
      help: 'Blob bytes received from seed registries',
      labelNames: ['registry'],
      registers: [registry],
    });
    this.tagResolutions = new Counter({
      name: 'shoal_tag_resolutions_total',
      help: "Tags resolved for clients, by how: asking the seed (seed), or, when no seed answered, this node's last record (cache) or a peer's newer one (peer)",
      labelNames: ['via'],
      registers: [registry],
    });
    for (const via of ['seed', 'cache', 'peer']) this.tagResolutions.inc({ via }, 0);
    this.peerHedges = new Counter({
      name: 'shoal_peer_chunk_hedges_total',
      help: 'Chunks asked again from another peer because the first was much slower than the others',
      registers: [registry],
    });
  }

  /**
   * Counts a blob found corrupt (`shoal_corrupt_blobs_total{found_by}`). The store's lifecycle services count on
   * the same metric, so it is looked up when first needed: whichever part registered it owns it.
   */
  corruptFound(foundBy: string): void {
    const name = 'shoal_corrupt_blobs_total';
    let counter = this.registry.getSingleMetric(name) as Counter<'found_by'> | undefined;
    counter ??= new Counter({ name, help: 'Blobs whose bytes no longer matched their digest, by who found it', labelNames: ['found_by'], registers: [this.registry] });
    counter.inc({ found_by: foundBy });
  }
}
