import { Counter, type Registry } from 'prom-client';

/** Metrics of the pull path, registered on the node's prom-client Registry. */
export class PullMetrics {
  readonly pullBytes: Counter<'source'>;
  readonly seedRequests: Counter<'registry' | 'outcome'>;
  readonly seedBytes: Counter<'registry'>;
  readonly tagResolutions: Counter<'via'>;

  constructor(registry: Registry) {
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
      help: 'Tags resolved for clients, by how: asking the seed, or the last known digest when the seed was unreachable',
      labelNames: ['via'],
      registers: [registry],
    });
    for (const via of ['seed', 'cache']) this.tagResolutions.inc({ via }, 0);
  }
}
