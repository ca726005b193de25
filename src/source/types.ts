import type { Readable } from 'node:stream';
import type { ByteRange, IoOptions } from '../store/index.ts';

/** What the pull path needs from a seed registry (src/upstream's SeedClient provides it). */
export interface UpstreamRegistry {
  /** Where it is, for logs and metrics. */
  readonly url: string;
  resolveTag(repository: string, tag: string, opts?: IoOptions): Promise<{ digest: string; mediaType: string; size: number }>;
  getManifest(repository: string, reference: string, opts?: IoOptions): Promise<{ bytes: Buffer; mediaType: string; digest: string }>;
  /**
   * With `verify: 'caller'` a whole blob's stream checks only its length (`verified` false) and the caller must check
   * the digest before it trusts the bytes; by default the stream checks it (see SeedClient.getBlob).
   */
  getBlob(
    repository: string,
    digest: string,
    opts?: IoOptions & { range?: ByteRange; verify?: 'stream' | 'caller' },
  ): Promise<{ stream: Readable; size: number; status: number; verified?: boolean }>;
}

/** The seeds of one registry namespace, in the order to try them. */
export interface SeedSet {
  /** The registry host the seeds stand for (`docker.io`), or `default` for requests without `?ns=`. */
  registry: string;
  seeds: UpstreamRegistry[];
}

/** Which seeds serve a request: by `?ns=`, else the default ones. */
export interface SeedDirectory {
  /** Undefined when this node has no seed for that registry. */
  seedsFor(namespace: string | undefined): SeedSet | undefined;
}

/** A blob as the registry endpoint serves it, wherever it came from. */
export interface BlobResponse {
  size: number;
  /** Where the bytes come from: the store, or a fetch from peers and seeds in flight (which counts its own bytes). */
  source: 'local' | 'fetch';
  /** For a fetch: where its bytes came from so far (peers, the seed, or both). */
  origin?: () => 'peer' | 'seed' | 'peer+seed';
  /**
   * For a fetch: resolves once the blob is verified and committed to the store (rejects with what failed the fetch,
   * or when `opts.signal` aborts; the fetch goes on). Waiting on it reads no bytes.
   */
  stored?: (opts?: IoOptions) => Promise<void>;
  /** The bytes of `range` (or of the whole blob). Fails mid-way if a fetch turns out corrupt. */
  open(range: ByteRange | undefined, opts?: IoOptions): Promise<Readable>;
}

/** Network causes that mean the seed is not there at all (as opposed to failing or slow): the cluster's answer stands. */
const GONE_CAUSES = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ENOTFOUND', 'ENETDOWN']);

/** True when a seed error says the seed cannot be reached at all (refused, no route, no such host). */
export function isSeedGone(err: unknown): boolean {
  const detail = (err as { detail?: { cause?: unknown } })?.detail;
  return typeof detail?.cause === 'string' && GONE_CAUSES.has(detail.cause);
}
