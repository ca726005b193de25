import type { Logger } from 'pino';
import { AbortedError, NotFoundError, isShoalError, parseManifest, effectiveArtifactType } from '../oci/index.ts';
import type { ContentStore, IoOptions, ManifestRecord } from '../store/index.ts';
import { BlobFetch } from './blob-fetch.ts';
import type { PullMetrics } from './metrics.ts';
import type { BlobResponse, SeedDirectory, SeedSet } from './types.ts';

/** Which repository a request is about: on this node, on the seed, and which registry (`?ns=`). */
export interface RepositoryTarget {
  /** The repository in this node's store (namespaced by registry when the request named one). */
  repository: string;
  /** The repository as the seed knows it. */
  upstream: string;
  /** The registry host of `?ns=`, if any. */
  namespace?: string;
}

export type ManifestReference = { kind: 'digest'; digest: string } | { kind: 'tag'; tag: string };

export interface PullThroughOptions {
  store: ContentStore;
  seeds: SeedDirectory;
  metrics: PullMetrics;
  logger: Logger;
  /** How long a tag waits for the seed before the last known digest answers. */
  tagTimeoutMs: number;
}

/**
 * The pull path: the local store first, then the seeds of the request's registry. Whatever comes from a seed
 * is verified and committed to the store; each digest is fetched once however many clients ask at once.
 */
export class PullThrough {
  private readonly opts: PullThroughOptions;
  private readonly fetches = new Map<string, BlobFetch>();
  private readonly manifestFetches = new Map<string, Promise<ManifestRecord>>();

  constructor(opts: PullThroughOptions) {
    this.opts = opts;
  }

  /** Stops fetches in flight (their clients get an error) and waits for them to clean up. */
  async stop(): Promise<void> {
    for (const f of this.fetches.values()) f.cancel();
    await Promise.allSettled([...this.fetches.values()].map((f) => f.done));
  }

  private seedsFor(target: RepositoryTarget): SeedSet | undefined {
    return this.opts.seeds.seedsFor(target.namespace);
  }

  /** Throws NAME_UNKNOWN when the repository is neither local nor pull-through. */
  async requireRepository(target: RepositoryTarget, opts: IoOptions = {}): Promise<void> {
    if (this.seedsFor(target)) return;
    if (!(await this.opts.store.repositoryExists(target.repository, opts))) {
      throw new NotFoundError('NAME_UNKNOWN', `repository ${target.repository} is not known to this node`, { name: target.repository });
    }
  }

  // ---- manifests ---------------------------------------------------------------------------------

  /** The manifest a reference names: a tag asks the seed first (short timeout), a digest is local first. */
  async manifest(target: RepositoryTarget, ref: ManifestReference, opts: IoOptions = {}): Promise<ManifestRecord> {
    const { store } = this.opts;
    const seeds = this.seedsFor(target);
    let digest: string | undefined;
    if (ref.kind === 'digest') digest = ref.digest;
    else {
      if (seeds) digest = await this.resolveTagFromSeed(target, seeds, ref.tag, opts);
      digest ??= await store.resolveTag(target.repository, ref.tag, opts);
    }
    if (digest) {
      const local = await store.getManifest(target.repository, digest, opts);
      if (local) return local;
      if (seeds) return this.fetchManifest(target, seeds, digest, ref.kind === 'tag' ? ref.tag : undefined, opts);
    }
    const shown = ref.kind === 'tag' ? ref.tag : ref.digest;
    throw new NotFoundError(
      'MANIFEST_UNKNOWN',
      seeds
        ? `manifest ${shown} is neither on this node nor on its seeds for ${seeds.registry}`
        : `manifest ${shown} is not in repository ${target.repository}`,
      { name: target.repository, reference: shown },
    );
  }

  /** The seed's digest for a tag; undefined when no seed answered in time (then the cached tag answers). */
  private async resolveTagFromSeed(target: RepositoryTarget, seeds: SeedSet, tag: string, opts: IoOptions): Promise<string | undefined> {
    const { store, metrics, logger, tagTimeoutMs } = this.opts;
    const signal = opts.signal ? AbortSignal.any([opts.signal, AbortSignal.timeout(tagTimeoutMs)]) : AbortSignal.timeout(tagTimeoutMs);
    let notFound = 0;
    for (const seed of seeds.seeds) {
      try {
        const resolved = await seed.resolveTag(target.upstream, tag, { signal });
        metrics.seedRequests.inc({ registry: seeds.registry, outcome: 'ok' });
        metrics.tagResolutions.inc({ via: 'seed' });
        return resolved.digest;
      } catch (err) {
        if (opts.signal?.aborted) throw new AbortedError('client went away');
        const missing = isShoalError(err) && err.code === 'MANIFEST_UNKNOWN';
        metrics.seedRequests.inc({ registry: seeds.registry, outcome: missing ? 'not_found' : 'error' });
        if (missing) notFound++;
        else logger.warn({ seed: seed.url, repository: target.upstream, tag, err: (err as Error).message }, 'seed unreachable for tag lookup');
      }
    }
    const cached = await store.resolveTag(target.repository, tag, opts);
    if (cached && notFound < seeds.seeds.length) {
      metrics.tagResolutions.inc({ via: 'cache' });
      logger.warn({ repository: target.repository, tag, digest: cached, registry: seeds.registry }, 'seed unreachable: serving the last known digest of the tag');
    }
    return cached;
  }

  /** Fetches a manifest by digest from the seeds (verified by the client), stores it, tags it. Single-flight. */
  private fetchManifest(target: RepositoryTarget, seeds: SeedSet, digest: string, tag: string | undefined, opts: IoOptions): Promise<ManifestRecord> {
    const key = `${target.repository}@${digest}`;
    let flight = this.manifestFetches.get(key);
    if (!flight) {
      flight = this.fetchManifestOnce(target, seeds, digest).finally(() => this.manifestFetches.delete(key));
      this.manifestFetches.set(key, flight);
    }
    return flight.then(async (record) => {
      if (tag) await this.opts.store.putManifest({ repository: target.repository, bytes: await this.readAll(record.digest, opts), mediaType: record.mediaType, tag, subject: record.subject, artifactType: record.artifactType, annotations: record.annotations }, opts);
      return record;
    });
  }

  private async readAll(digest: string, opts: IoOptions): Promise<Buffer> {
    return Buffer.concat((await (await this.opts.store.readContent(digest, undefined, opts)).toArray()) as Buffer[]);
  }

  private async fetchManifestOnce(target: RepositoryTarget, seeds: SeedSet, digest: string): Promise<ManifestRecord> {
    const { store, metrics, logger } = this.opts;
    let lastError: unknown;
    for (const seed of seeds.seeds) {
      try {
        const m = await seed.getManifest(target.upstream, digest, { signal: AbortSignal.timeout(30_000) });
        metrics.seedRequests.inc({ registry: seeds.registry, outcome: 'ok' });
        const parsed = parseManifest(m.bytes, m.mediaType);
        return await store.putManifest({
          repository: target.repository,
          bytes: m.bytes,
          mediaType: parsed.mediaType,
          subject: parsed.subject?.digest,
          artifactType: effectiveArtifactType(parsed),
          annotations: parsed.annotations,
        });
      } catch (err) {
        const code = isShoalError(err) ? err.code : undefined;
        metrics.seedRequests.inc({ registry: seeds.registry, outcome: code === 'MANIFEST_UNKNOWN' ? 'not_found' : code === 'DIGEST_INVALID' ? 'corrupt' : 'error' });
        logger.warn({ seed: seed.url, digest, err: (err as Error).message }, 'manifest fetch from seed failed');
        lastError = err;
      }
    }
    throw lastError;
  }

  // ---- blobs -------------------------------------------------------------------------------------

  /** A blob from the store, or fetched from the seeds (once per digest, streamed while it arrives). */
  async blob(target: RepositoryTarget, digest: string, opts: IoOptions = {}): Promise<BlobResponse> {
    const { store } = this.opts;
    let info = await store.statBlob(target.repository, digest, opts);
    // Content is content: a blob this node holds for another repository serves this one too.
    if (!info && (await store.statContent(digest, opts))) info = await store.mountBlob(target.repository, digest, undefined, opts);
    if (info) {
      const size = info.size;
      return { size, source: 'local', open: (range, o) => store.readContent(digest, range, o) };
    }
    const seeds = this.seedsFor(target);
    if (!seeds) throw new NotFoundError('BLOB_UNKNOWN', `blob ${digest} is not in repository ${target.repository}`, { digest });
    let fetch = this.fetches.get(digest);
    if (!fetch) {
      const created = new BlobFetch({
        store,
        seeds,
        digest,
        repository: target.repository,
        upstreamRepository: target.upstream,
        metrics: this.opts.metrics,
        logger: this.opts.logger,
      });
      this.fetches.set(digest, created);
      void created.done.catch(() => undefined).finally(() => this.fetches.delete(digest));
      fetch = created;
    }
    const active = fetch;
    const size = await active.size;
    return { size, source: 'seed', open: async (range, o) => active.read(range, o) };
  }
}
