/**
 * The node as a member of the cluster, for operators: its summary (`shoal status --cluster` asks every peer for
 * theirs over the control protocol), and prefetching images on it and, when asked, on every peer at once.
 *
 * Peers are asked over the peer network rather than over their HTTP endpoints: the peer network already connects
 * every node with every other and admits only holders of the cluster key, whereas a node's HTTP endpoint may
 * listen on loopback only, sit behind TLS with its own CA, or refuse admin calls from other hosts; and a node does
 * not know its peers' HTTP addresses.
 */
import type { Logger } from 'pino';
import { askControl, serveControl } from './p2p/control.ts';
import type { PeerService } from './p2p/peer-service.ts';
import { PROTOCOLS } from './p2p/types.ts';
import { checkPrefetchReferences, prefetchImages, type PrefetchOutcome } from './source/prefetch.ts';
import type { PullThrough } from './source/pull-through.ts';
import type { ContentStore, IoOptions } from './store/index.ts';

/** One node's line in `shoal status --cluster`. */
export interface NodeSummary {
  id?: string;
  version: string;
  uptimeSeconds: number;
  zone?: string;
  store: { blobs: number; bytes: number };
  maxStore: number;
  freeBytes?: number;
  totalBytes?: number;
  images: number;
  pins: number;
  peers: number;
}

export interface NodeControlOptions {
  pull: PullThrough;
  store: ContentStore;
  peers?: PeerService;
  logger: Logger;
  summary: (opts: IoOptions) => Promise<NodeSummary>;
}

/** How long a peer has to answer a status request. */
const STATUS_TIMEOUT_MS = 5_000;

export class NodeControl {
  private readonly opts: NodeControlOptions;

  constructor(opts: NodeControlOptions) {
    this.opts = opts;
  }

  /** Serves the control protocol to peers. */
  async start(): Promise<void> {
    const peers = this.opts.peers;
    if (!peers) return;
    await peers.handle(PROTOCOLS.control, (stream, peer) => {
      void serveControl(stream, {
        status: async (o) => ({ ...(await this.opts.summary(o)) }),
        prefetch: async (refs, pin, progress, o) => {
          this.opts.logger.info({ peer, refs, pin }, 'prefetch asked by a peer');
          const outcomes = await this.prefetchHere(refs, pin, progress, o);
          return { outcomes };
        },
      });
    });
  }

  /** This node's summary and each connected peer's (a peer that does not answer in time says so). */
  async cluster(opts: IoOptions = {}): Promise<{ self: NodeSummary; peers: Array<{ id: string; address?: string; zone?: string; summary?: NodeSummary; error?: string }> }> {
    const self = await this.opts.summary(opts);
    const network = this.opts.peers;
    if (!network) return { self, peers: [] };
    const rows = network.summary().filter((p) => p.connected && !p.bannedUntil);
    const peers = await Promise.all(
      rows.map(async (p) => {
        const signal = opts.signal ? AbortSignal.any([opts.signal, AbortSignal.timeout(STATUS_TIMEOUT_MS)]) : AbortSignal.timeout(STATUS_TIMEOUT_MS);
        const base = { id: p.id, address: p.addresses[0], zone: p.zone };
        try {
          const stream = await network.dial(p.id, PROTOCOLS.control, { signal });
          const summary = (await askControl(stream, { op: 'status' }, undefined, { signal })) as unknown as NodeSummary;
          return { ...base, summary };
        } catch (err) {
          return { ...base, error: signal.aborted ? `no answer within ${STATUS_TIMEOUT_MS} ms` : (err as Error).message };
        }
      }),
    );
    return { self, peers };
  }

  private prefetchHere(refs: string[], pin: boolean, progress: (event: Record<string, unknown>) => void, opts: IoOptions): Promise<PrefetchOutcome[]> {
    return prefetchImages(this.opts.pull, this.opts.store, refs, { pin, pinReason: 'prefetch', signal: opts.signal, onEvent: (e) => progress({ ...e }) });
  }

  /**
   * Prefetches on this node and, with `allNodes`, on every connected peer at the same time (so the rendezvous
   * owner of each layer pulls it from the seed once). Every event names its node; the result has one entry per node.
   */
  async prefetch(
    request: { refs: string[]; allNodes: boolean; pin: boolean },
    progress: (event: Record<string, unknown>) => void,
    opts: IoOptions = {},
  ): Promise<{ nodes: Array<{ node: string; ok: boolean; outcomes?: PrefetchOutcome[]; error?: string }> }> {
    const refs = checkPrefetchReferences(request.refs);
    const network = this.opts.peers;
    const selfName = network?.selfId || 'this node';
    const jobs: Array<Promise<{ node: string; ok: boolean; outcomes?: PrefetchOutcome[]; error?: string }>> = [];
    jobs.push(
      this.prefetchHere(refs, request.pin, (e) => progress({ node: selfName, self: true, ...e }), opts).then(
        (outcomes) => ({ node: selfName, ok: outcomes.every((o) => o.ok), outcomes }),
        (err: unknown) => ({ node: selfName, ok: false, error: (err as Error).message }),
      ),
    );
    if (request.allNodes && network) {
      for (const p of network.summary().filter((x) => x.connected && !x.bannedUntil)) {
        jobs.push(
          (async () => {
            try {
              const stream = await network.dial(p.id, PROTOCOLS.control, opts);
              const result = await askControl(stream, { op: 'prefetch', refs, pin: request.pin }, (e) => progress({ node: p.id, address: p.addresses[0], ...e }), opts);
              const outcomes = (Array.isArray(result.outcomes) ? result.outcomes : []) as PrefetchOutcome[];
              return { node: p.id, ok: outcomes.length === refs.length && outcomes.every((o) => o.ok === true), outcomes };
            } catch (err) {
              progress({ node: p.id, type: 'failed', error: (err as Error).message });
              return { node: p.id, ok: false, error: (err as Error).message };
            }
          })(),
        );
      }
    }
    return { nodes: await Promise.all(jobs) };
  }
}
