import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { AbortedError, CHUNK_SIZE, NotFoundError, UnavailableError, isShoalError, parseManifest, effectiveArtifactType, parseStoreRepositoryName, storeRepositoryName } from '../oci/index.ts';
import type { ByteRange, ContentStore, IoOptions, ManifestRecord, TagRecord, VerifyOutcome } from '../store/index.ts';
import { recyclerOf } from '../store/index.ts';
import { BlobFetch } from './blob-fetch.ts';
import type { PullMetrics } from './metrics.ts';
import { isSeedGone, type BlobResponse, type SeedDirectory, type SeedSet } from './types.ts';
import type { PeerRange, ChunkRequest, PeerNetwork } from '../p2p/types.ts';
import type { TokenBucket } from '../limits/token-bucket.ts';
import { Digest } from '../oci/index.ts';

/** The error a client sees when a seed failed: the seed's own (unauthorized, unavailable), or a timeout said plainly. */
function seedError(err: unknown, seedUrl: string, what: string, timeoutMs: number): unknown {
  if (isShoalError(err) && err.code !== 'INTERNAL') return err;
  if ((err as Error)?.name === 'TimeoutError' || (err as Error)?.name === 'AbortError') {
    return new UnavailableError(`seed ${seedUrl} did not answer for ${what} within ${timeoutMs} ms, and no node of the cluster knows it`, { seed: seedUrl });
  }
  return new UnavailableError(`seed ${seedUrl} failed for ${what}: ${(err as Error)?.message ?? String(err)}`, { seed: seedUrl });
}

/** Waits for `p`, or throws AbortedError as soon as the client goes away (what it waited on goes on). */
function untilAborted<T>(p: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(new AbortedError('client went away'));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(new AbortedError('client went away'));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

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
  /** The peer network, when P2P is on. */
  network?: PeerNetwork;
  /** Chunks fetched from peers at once, per blob. */
  parallelChunks?: number;
  /** Caps the seed link (bytes per second), shared by every fetch. */
  seedRate?: TokenBucket;
  /** Refuses a seed transfer that cannot fit in the store (see BlobFetchOptions). */
  ensureRoom?: (bytes: number, what: string) => Promise<void>;
  /** When no seed answers, may a peer's newer record of a tag answer (default true)? */
  peerTags?: boolean;
}

/**
 * The pull path: the local store first, then the seeds of the request's registry. Whatever comes from a seed
 * is verified and committed to the store; each digest is fetched once however many clients ask at once.
 */
export class PullThrough {
  private readonly opts: PullThroughOptions;
  private readonly fetches = new Map<string, BlobFetch>();
  private readonly manifestFetches = new Map<string, Promise<ManifestRecord>>();
  /** Streams of stored blobs open to clients: cut when the blob turns out corrupt. */
  private readonly localReads = new Map<string, Set<Readable>>();
  private readonly rechecks = new Map<string, Promise<VerifyOutcome>>();
  private readonly unwatch: () => void;

  constructor(opts: PullThroughOptions) {
    this.opts = { ...opts };
    // Once the node knows a blob's bytes are bad (a peer's report, its own check, fsck, the scrub), no client gets
    // the rest of them: a read under way is cut, and the next request fetches the blob again.
    this.unwatch = opts.store.watch((e) => {
      if (e.type !== 'removed' || e.reason !== 'corrupt') return;
      const reads = this.localReads.get(e.digest);
      if (!reads) return;
      this.localReads.delete(e.digest);
      for (const r of reads) r.destroy(new UnavailableError(`blob ${e.digest} was found corrupt while it was read; ask again`));
      this.opts.logger.warn({ digest: e.digest, reads: reads.size }, 'cut reads of a blob found corrupt');
    });
  }

  /** Joins the peer network once it is up (it needs this pull path to serve, so it comes second). */
  connectNetwork(network: PeerNetwork): void {
    this.opts.network = network;
  }

  /** Stops fetches in flight (their clients get an error) and waits for them to clean up. */
  async stop(): Promise<void> {
    this.unwatch();
    for (const f of this.fetches.values()) f.cancel();
    await Promise.allSettled([...this.fetches.values()].map((f) => f.done));
  }

  private seedsFor(target: RepositoryTarget): SeedSet | undefined {
    return this.opts.seeds.seedsFor(target.namespace);
  }

  /** Throws NAME_UNKNOWN when the repository is neither local nor pull-through. */
  async requireRepository(target: RepositoryTarget, opts: IoOptions = {}): Promise<void> {
    if (this.seedsFor(target) || this.opts.network) return;
    if (!(await this.opts.store.repositoryExists(target.repository, opts))) {
      throw new NotFoundError('NAME_UNKNOWN', `repository ${target.repository} is not known to this node`, { name: target.repository });
    }
  }

  // ---- manifests ---------------------------------------------------------------------------------

  /** The manifest a reference names: a tag asks the seed first (short timeout), a digest is local first. */
  async manifest(target: RepositoryTarget, ref: ManifestReference, opts: IoOptions = {}): Promise<ManifestRecord> {
    const { store, network } = this.opts;
    const seeds = this.seedsFor(target);
    let digest: string | undefined;
    let tagged: TagRecord | undefined;
    if (ref.kind === 'digest') digest = ref.digest;
    else {
      let seedFailure: unknown;
      if (seeds) ({ digest, failure: seedFailure } = await this.resolveTagFromSeed(target, seeds, ref.tag, opts));
      if (digest === undefined) {
        tagged = await this.newestTagRecord(target, ref.tag, seeds, opts);
        digest = tagged?.digest;
        // Nothing in the cluster knows the tag and the seed failed: say what the seed did, not "unknown".
        if (digest === undefined && seedFailure !== undefined) throw seedFailure;
      }
    }
    if (digest) {
      const local = await store.getManifest(target.repository, digest, opts);
      if (local) {
        if (ref.kind === 'tag') await this.retag(target, ref.tag, tagged ?? { digest, updated: Date.now() }, opts);
        return local;
      }
      let record: ManifestRecord | undefined;
      if (network) record = await this.manifestFromPeers(target, network, digest, opts);
      if (!record && seeds) {
        record = await this.fetchManifest(target, seeds, digest, opts).catch((err: unknown) => {
          if (isSeedGone(err)) return undefined;
          throw err;
        });
      }
      if (record) {
        if (ref.kind === 'tag') await this.retag(target, ref.tag, tagged ?? { digest, updated: Date.now() }, opts);
        return record;
      }
    }
    const shown = ref.kind === 'tag' ? ref.tag : ref.digest;
    throw new NotFoundError(
      'MANIFEST_UNKNOWN',
      seeds || network
        ? `manifest ${shown} of ${target.upstream} is neither on this node nor on its ${[network ? 'peers' : '', seeds ? `seeds for ${seeds.registry}` : ''].filter(Boolean).join(' or ')}`
        : `manifest ${shown} is not in repository ${target.repository}`,
      { name: target.repository, reference: shown },
    );
  }

  /** Points a tag at a manifest when it points elsewhere (or nowhere) now; never over a newer record. */
  private async retag(target: RepositoryTarget, tag: string, record: TagRecord, opts: IoOptions): Promise<void> {
    const current = await this.opts.store.getTag(target.repository, tag, opts);
    if (current?.digest === record.digest) return;
    if (current && current.updated > record.updated) return;
    await this.opts.store.setTag(target.repository, tag, { digest: record.digest, updated: record.updated }, opts);
  }

  /**
   * When no seed answered: this node's record of the tag, or a peer's newer one (a fallback that `peerTags: false`
   * turns off). The log line and `shoal_tag_resolutions_total{via}` say which.
   */
  private async newestTagRecord(target: RepositoryTarget, tag: string, seeds: SeedSet | undefined, opts: IoOptions): Promise<TagRecord | undefined> {
    const { store, network, metrics, logger, tagTimeoutMs } = this.opts;
    let best: (TagRecord & { peer?: string }) | undefined = await store.getTag(target.repository, tag, opts);
    if (network && this.opts.peerTags !== false) {
      const signal = opts.signal ? AbortSignal.any([opts.signal, AbortSignal.timeout(tagTimeoutMs)]) : AbortSignal.timeout(tagTimeoutMs);
      for (const r of await network.queryTag(target.repository, tag, { signal }).catch(() => [])) {
        if (!best || r.updated > best.updated) best = r;
      }
    }
    if (best) {
      metrics.tagResolutions.inc({ via: best.peer ? 'peer' : 'cache' });
      // Only a fallback (a seed that did not answer) is worth a warning; a repository without seeds (pushed to
      // the cluster) resolves its tags here on every pull, by design.
      logger[seeds ? 'warn' : 'debug'](
        { repository: target.repository, tag, digest: best.digest, from: best.peer ? `peer ${best.peer}` : 'this node', updated: new Date(best.updated).toISOString(), seed: seeds ? 'unreachable' : 'none' },
        best.peer
          ? `${seeds ? 'seed unreachable: ' : ''}tag resolved from a peer's record`
          : `${seeds ? 'seed unreachable: ' : ''}tag resolved from this node's last record`,
      );
    }
    return best;
  }

  /** A manifest by digest from a peer that holds it, verified before it is stored. */
  private async manifestFromPeers(target: RepositoryTarget, network: PeerNetwork, digest: string, opts: IoOptions): Promise<ManifestRecord | undefined> {
    for (const peer of network.holders(digest).slice(0, 3)) {
      try {
        const m = await network.fetchManifest(peer, digest, opts);
        if (!m) continue;
        const actual = Digest.of(m.bytes, Digest.parse(digest).algorithm).toString();
        if (actual !== digest) {
          // The whole digest proves the bytes bad: tell the holder (it may heal itself), and ban it.
          this.opts.logger.warn({ peer, digest, actual }, 'a peer sent a manifest whose bytes do not match its digest');
          void network.report(peer, digest, []);
          network.ban(peer, 'bad-bytes', `manifest ${digest} came back as ${actual}`);
          continue;
        }
        const parsed = parseManifest(m.bytes, m.mediaType);
        this.opts.metrics.pullBytes.inc({ source: 'peer' }, m.bytes.length);
        return await this.opts.store.putManifest(
          { repository: target.repository, bytes: m.bytes, mediaType: parsed.mediaType, subject: parsed.subject?.digest, artifactType: effectiveArtifactType(parsed), annotations: parsed.annotations, cached: true },
          opts,
        );
      } catch (err) {
        if (opts.signal?.aborted) throw new AbortedError('client went away');
        this.opts.logger.debug({ peer, digest, err: (err as Error).message }, 'manifest from peer failed');
      }
    }
    return undefined;
  }

  /** The seed's digest for a tag; undefined when no seed answered in time (then the cached tag answers). */
  private async resolveTagFromSeed(target: RepositoryTarget, seeds: SeedSet, tag: string, opts: IoOptions): Promise<{ digest?: string; failure?: unknown }> {
    const { metrics, logger, tagTimeoutMs } = this.opts;
    const signal = opts.signal ? AbortSignal.any([opts.signal, AbortSignal.timeout(tagTimeoutMs)]) : AbortSignal.timeout(tagTimeoutMs);
    let notFound = 0;
    let failure: unknown;
    for (const seed of seeds.seeds) {
      try {
        const resolved = await seed.resolveTag(target.upstream, tag, { signal });
        metrics.seedRequests.inc({ registry: seeds.registry, outcome: 'ok' });
        metrics.tagResolutions.inc({ via: 'seed' });
        return { digest: resolved.digest };
      } catch (err) {
        if (opts.signal?.aborted) throw new AbortedError('client went away');
        const missing = isShoalError(err) && err.code === 'MANIFEST_UNKNOWN';
        metrics.seedRequests.inc({ registry: seeds.registry, outcome: missing ? 'not_found' : 'error' });
        if (missing) notFound++;
        // A seed that is simply not there (refused, no route) leaves the answer to the cluster: not found is 404.
        else if (!isSeedGone(err)) failure ??= seedError(err, seed.url, `tag ${tag} of ${target.upstream}`, tagTimeoutMs);
        if (!missing) logger.warn({ seed: seed.url, repository: target.upstream, tag, err: (err as Error).message }, 'seed unreachable for tag lookup');
      }
    }
    // No seed knows the tag (or none answered): the newest record in the cluster, if any, answers.
    if (notFound === seeds.seeds.length) logger.info({ repository: target.upstream, tag, registry: seeds.registry }, 'tag not on the seeds; looking in the cluster');
    return { failure };
  }

  /** Fetches a manifest by digest from the seeds (verified by the client) and stores it. Single-flight. */
  private fetchManifest(target: RepositoryTarget, seeds: SeedSet, digest: string, opts: IoOptions): Promise<ManifestRecord> {
    const key = `${target.repository}@${digest}`;
    let flight = this.manifestFetches.get(key);
    if (!flight) {
      flight = this.fetchManifestOnce(target, seeds, digest).finally(() => this.manifestFetches.delete(key));
      this.manifestFetches.set(key, flight);
    }
    // The client may give up; the fetch others wait on goes on.
    return untilAborted(flight, opts.signal);
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
          cached: true,
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

  /**
   * A blob from the store, or fetched from peers and seeds (once per digest, streamed while it arrives). `size`,
   * when the caller knows it from a descriptor, is what every source must agree with.
   */
  async blob(target: RepositoryTarget, digest: string, opts: IoOptions & { size?: number } = {}): Promise<BlobResponse> {
    const { store } = this.opts;
    let info = await store.statBlob(target.repository, digest, opts);
    // In a mirror (seeds or peers), content is content: a blob held for another repository serves this one too.
    // A plain registry repository keeps its own blob list, so a deleted blob stays deleted there.
    if (!info && (this.seedsFor(target) || this.opts.network) && (await store.statContent(digest, opts))) {
      info = await store.mountBlob(target.repository, digest, undefined, opts);
    }
    if (info) {
      const size = info.size;
      return { size, source: 'local', open: (range, o) => this.readLocal(digest, range, o) };
    }
    const seeds = this.seedsFor(target);
    const network = this.opts.network;
    if (!seeds && !network) throw new NotFoundError('BLOB_UNKNOWN', `blob ${digest} is not in repository ${target.repository}`, { digest });
    const fetch = this.startFetch(target, digest, seeds, true, opts.size);
    const size = await untilAborted(fetch.size, opts.signal);
    return { size, source: 'fetch', origin: () => fetch.origin, stored: (o) => untilAborted(fetch.done, o?.signal), open: async (range, o) => fetch.read(range, o) };
  }

  /** A stored blob's bytes for a client; cut if the blob is found corrupt meanwhile. */
  private async readLocal(digest: string, range: ByteRange | undefined, opts?: IoOptions): Promise<Readable> {
    const stream = await this.opts.store.readContent(digest, range, opts);
    let reads = this.localReads.get(digest);
    if (!reads) this.localReads.set(digest, (reads = new Set()));
    reads.add(stream);
    stream.once('close', () => {
      const set = this.localReads.get(digest);
      set?.delete(stream);
      if (set?.size === 0) this.localReads.delete(digest);
    });
    return stream;
  }

  /**
   * Re-hashes a stored blob that someone found bad bytes of; when its bytes no longer match the digest the store
   * takes it out (and so out of routing, and away from clients), and it is logged and counted. One check per
   * digest at a time.
   */
  recheck(digest: string, foundBy: 'peer-report' | 'peer-serve', opts: IoOptions = {}): Promise<VerifyOutcome> {
    let running = this.rechecks.get(digest);
    if (!running) {
      running = this.opts.store.verifyContent(digest, opts).then((outcome) => {
        if (outcome === 'corrupt') {
          this.opts.metrics.corruptFound(foundBy);
          this.opts.logger.warn({ digest, foundBy }, 'a stored blob no longer matches its digest: taken out of the store');
        }
        return outcome;
      });
      const settled = running.finally(() => this.rechecks.delete(digest));
      settled.catch(() => undefined);
      this.rechecks.set(digest, running);
    }
    return running;
  }

  /**
   * Fetches content of a stored repository again (from peers, then seeds) and resolves once it is stored: pinned
   * content that was lost (taken out as corrupt, a file gone) must not leave its image incomplete.
   */
  async refetch(repository: string, digest: string, kind: 'manifest' | 'blob', opts: IoOptions = {}): Promise<void> {
    const target = this.targetOf(repository);
    if (kind === 'manifest') await this.manifest(target, { kind: 'digest', digest }, opts);
    else await untilAborted(this.startFetch(target, digest, this.seedsFor(target), true).done, opts.signal);
  }

  /**
   * The target an image reference names, as containerd would ask this node for it: `registry.local:5000/app` is
   * `app` of `?ns=registry.local:5000` when this node has seeds for that registry; otherwise the bare repository
   * (the default seeds, peers, and what was pushed here).
   */
  targetFor(registry: string, repository: string): RepositoryTarget {
    const namespace = registry.toLowerCase();
    if (this.opts.seeds.seedsFor(namespace)) return { repository: storeRepositoryName(namespace, repository), upstream: repository, namespace };
    return { repository, upstream: repository };
  }

  /** The request target of a stored repository: `docker.io/library/nginx` is `library/nginx` of `docker.io`. */
  private targetOf(repository: string): RepositoryTarget {
    const stored = parseStoreRepositoryName(repository);
    if (stored && this.opts.seeds.seedsFor(stored.registry)) return { repository, upstream: stored.repository, namespace: stored.registry };
    return { repository, upstream: repository };
  }

  /** The fetch of a digest in flight, or a new one. */
  private startFetch(target: RepositoryTarget, digest: string, seeds: SeedSet | undefined, usePeers = true, expectedSize?: number): BlobFetch {
    // Keyed by registry too: a fetch stuck on one registry's seed must not hold a client of another registry.
    const key = `${target.namespace ?? ''}@${digest}`;
    const existing = this.fetches.get(key);
    if (existing) return existing;
    const created = new BlobFetch({
      store: this.opts.store,
      seeds,
      network: usePeers ? this.opts.network : undefined,
      pull: { namespace: target.namespace, repository: target.repository, upstream: target.upstream },
      parallelChunks: this.opts.parallelChunks,
      seedRate: this.opts.seedRate,
      digest,
      expectedSize,
      repository: target.repository,
      upstreamRepository: target.upstream,
      metrics: this.opts.metrics,
      logger: this.opts.logger,
      ensureRoom: this.opts.ensureRoom,
    });
    this.fetches.set(key, created);
    void created.done.catch(() => undefined).finally(() => this.fetches.delete(key));
    return created;
  }

  /**
   * A stored chunk as it is read, checked against its hash before its last piece goes out: rotten bytes never
   * leave this node whole, and the blob is re-checked (and taken out when bad) at once.
   */
  private async *vouched(stream: Readable, digest: string, index: number, expected: string): AsyncIterable<Uint8Array> {
    const hash = createHash('sha256');
    let held: Uint8Array | undefined;
    for await (const piece of stream as AsyncIterable<Uint8Array>) {
      if (held) yield held;
      hash.update(piece);
      held = piece;
    }
    if (hash.digest('hex') !== expected) {
      this.opts.logger.warn({ digest, chunk: index }, 'a stored chunk does not match its hash: not served, and the blob is checked');
      void this.recheck(digest, 'peer-serve').catch(() => undefined);
      throw new UnavailableError(`chunk ${index} of ${digest} is corrupt on this node`);
    }
    if (held) yield held;
  }

  /**
   * Serves a peer's chunk request: from the store, from a fetch in flight (the bytes verified so far, waiting for
   * more), or, when the peer names this node as the rendezvous owner, by pulling the blob through from this node's
   * seed. Undefined: not here (NOT_FOUND).
   */
  async peerRange(req: ChunkRequest, opts: IoOptions = {}): Promise<PeerRange | undefined> {
    const { store } = this.opts;
    const digest = Digest.parse(req.digest).toString();
    const info = await store.statContent(digest, opts);
    if (info) {
      if (req.start >= info.size) return undefined;
      // Only what this node can vouch for: a blob whose chunk map came from verified bytes (the store re-hashes it
      // when it has none, and drops it when it is bad).
      const map = await store.chunkMap(digest, opts);
      if (!map) return undefined;
      const end = Math.min(req.end, info.size - 1);
      const stream = await store.readContent(digest, { start: req.start, end }, opts);
      const index = req.start / CHUNK_SIZE;
      const wholeChunk = Number.isInteger(index) && end === Math.min(info.size, req.start + CHUNK_SIZE) - 1;
      // A piece the caller copied out (the data channel encrypts it) may go back to the store's read buffers.
      return { size: info.size, stream: wholeChunk ? this.vouched(stream, digest, index, map.chunks[index]!) : stream, recycle: recyclerOf(stream) };
    }
    let fetch = [...this.fetches.values()].find((f) => f.digest === digest);
    if (!fetch && req.pull) {
      const target: RepositoryTarget = { repository: req.pull.repository, upstream: req.pull.upstream, namespace: req.pull.namespace };
      const seeds = this.seedsFor(target);
      // Only a node that can reach a seed pulls for others; it asks no peer for this blob (it is the owner).
      if (seeds) fetch = this.startFetch(target, digest, seeds, false);
    }
    if (!fetch) return undefined;
    const size = await fetch.size;
    if (req.start >= size) return undefined;
    const stream = fetch.read({ start: req.start, end: Math.min(req.end, size - 1) }, opts);
    return { size, stream, recycle: recyclerOf(stream) };
  }
}
