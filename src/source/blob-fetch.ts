import type { Logger } from 'pino';
import { setImmediate } from 'node:timers/promises';
import { Readable } from 'node:stream';
import { AbortedError, byteLength, Digest, DigestMismatchError, NotFoundError, UnavailableError, diskFullCode, isShoalError, storageFullError, type Bytes, type ChunkMap } from '../oci/index.ts';
import { RECYCLE, recyclerOf, type ByteRange, type ContentStore, type Ingest, type IoOptions, type Recycling } from '../store/index.ts';
import type { PullMetrics } from './metrics.ts';
import { isSeedGone, type SeedSet } from './types.ts';
import type { PeerNetwork, PullHint } from '../p2p/types.ts';
import type { TokenBucket } from '../limits/token-bucket.ts';
import { transferFromPeers, TransferEvidence, type PeerSource } from './peer-transfer.ts';
import { rendezvousOrder } from './rendezvous.ts';

export interface BlobFetchOptions {
  store: ContentStore;
  /** Undefined when this node has no seed for the blob's registry: peers only. */
  seeds?: SeedSet;
  /** The peer network, when P2P is on. */
  network?: PeerNetwork;
  /** What a rendezvous owner needs to pull the blob through for the cluster. */
  pull: PullHint;
  /** Chunks fetched from peers at once. */
  parallelChunks?: number;
  /** Caps the seed link, shared by every fetch of the node. */
  seedRate?: TokenBucket;
  digest: string;
  /** The blob's size when the caller knows it from a descriptor: sources that say otherwise are wrong. */
  expectedSize?: number;
  /** Repository the blob is committed into. */
  repository: string;
  /** Repository name on the seed. */
  upstreamRepository: string;
  metrics: PullMetrics;
  logger: Logger;
  /**
   * Fails (with StorageFullError) when the store has no room for `bytes` more: a seed transfer that cannot fit
   * is refused before any client gets a response.
   */
  ensureRoom?: (bytes: number, what: string) => Promise<void>;
}

/** How often a seed transfer that broke after making progress is resumed by Range. */
const MAX_SEED_RESUMES = 2;
/** Bytes from a seed are written to the ingest in batches of at least this much. */
const SEED_BATCH = 1024 * 1024;
/** Holders asked for their chunk map (in rank order). */
const MAP_HOLDERS = 3;
/** How long the holders have to give their chunk maps... */
const MAP_WAIT_MS = 3_000;
/** ...and how long the others have once the first map came. */
const MAP_GRACE_MS = 1_000;
/** A transfer from peers may take this long plus a second per PEER_MIN_RATE bytes; then the seed gives the rest. */
const PEER_DEADLINE_BASE_MS = 30_000;
const PEER_MIN_RATE = 512 * 1024;

/** How long a transfer of `size` bytes from peers may take. */
export function peerTransferDeadlineMs(size: number): number {
  return PEER_DEADLINE_BASE_MS + Math.ceil((size / PEER_MIN_RATE) * 1000);
}

function isMissingFile(err: unknown): boolean {
  return (err as NodeJS.ErrnoException)?.code === 'ENOENT';
}

/** The store refused the bytes: they do not hash to the digest (or are not the size expected). */
function isBadContent(err: unknown): boolean {
  return isShoalError(err) && (err.code === 'DIGEST_INVALID' || err.code === 'SIZE_INVALID');
}

function sameMap(a: ChunkMap, b: ChunkMap): boolean {
  return a.size === b.size && a.chunks.length === b.chunks.length && a.chunks.every((c, i) => c === b.chunks[i]);
}

/** One way to get the blob from peers: which peers, checked against which chunk map. */
interface PeerPlan {
  what: string;
  sources: PeerSource[];
  map?: ChunkMap;
  /** Holders disagree, so nothing is trusted before the whole digest verifies: clients get no byte until then. */
  hold: boolean;
  hedge: boolean;
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (v: T) => void;
  reject: (e: unknown) => void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((ok, fail) => {
    resolve = ok;
    reject = fail;
  });
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

/**
 * One fetch of one blob from peers and seeds into the store, however many clients want it. The bytes land in an
 * ingest as they arrive; every client follows that ingest at its own pace, so a slow client does not slow the
 * others, and a client that gives up does not stop the fetch. The last byte is released only after the whole
 * digest verified, so a client never receives a complete response of corrupt content.
 *
 * Peers are trusted for nothing: chunks are checked against the holders' chunk map, a chunk that fails comes from
 * another holder or the seed, and when holders disagree on the map nothing is released before the digest verifies.
 * A blob that does not verify is fetched again another way (the next map, or the seed alone). Once it verified, its
 * true chunk map tells who sent bad bytes or a bad map: only those are banned, and a holder that sent bad bytes is
 * told, so that it can heal itself.
 */
export class BlobFetch {
  readonly digest: string;
  private readonly opts: BlobFetchOptions;
  private readonly controller = new AbortController();
  private ingest?: Ingest;
  private written = 0;
  private fromPeerBytes = 0;
  private total?: number;
  /** The size clients were told, if any. */
  private published?: number;
  private sizeGate = deferred<number>();
  /** While true, clients get no bytes before the digest verified. */
  private holdBack = false;
  /** Bumped when the bytes so far are dropped to start again: a client that had some of them is cut. */
  private generation = 0;
  private state: 'running' | 'committed' | 'failed' = 'running';
  private failure?: unknown;
  private readonly waiters = new Set<() => void>();
  /** Settles when the blob is committed (or the fetch failed). */
  readonly done: Promise<void>;

  constructor(opts: BlobFetchOptions) {
    this.opts = opts;
    this.digest = opts.digest;
    this.done = this.run().then(
      () => {
        this.state = 'committed';
        this.notify();
      },
      (err: unknown) => {
        this.state = 'failed';
        this.failure = err;
        this.sizeGate.reject(err);
        this.notify();
        throw err;
      },
    );
    this.done.catch(() => undefined);
  }

  /** Where the bytes written so far came from: peers, the seed, or both. */
  get origin(): 'peer' | 'seed' | 'peer+seed' {
    if (this.fromPeerBytes === 0) return 'seed';
    return this.fromPeerBytes >= this.written ? 'peer' : 'peer+seed';
  }

  /** Resolves with the blob's size once clients may be told it; rejects if the fetch fails before. */
  get size(): Promise<number> {
    return this.sizeGate.promise;
  }

  /** Stops the fetch (node shutdown). */
  cancel(): void {
    this.controller.abort(new AbortedError('node is stopping'));
  }

  private notify(): void {
    for (const w of this.waiters) w();
    this.waiters.clear();
  }

  private async changed(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) throw new AbortedError('client went away');
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        this.waiters.delete(wake);
        reject(new AbortedError('client went away'));
      };
      const wake = (): void => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      this.waiters.add(wake);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  private publishSize(size: number): void {
    if (this.published !== undefined) return;
    this.published = size;
    this.sizeGate.resolve(size);
  }

  private learnSize(size: number): void {
    const expected = this.opts.expectedSize;
    if (expected !== undefined && size !== expected) throw new UnavailableError(`a source says ${this.digest} has ${size} bytes; its descriptor says ${expected}`);
    if (this.total === undefined) this.total = size;
    else if (size !== this.total) throw new UnavailableError(`sources disagree on the size of ${this.digest}: ${size} and ${this.total} bytes`);
    if (!this.holdBack) this.publishSize(size);
  }

  private async appendBytes(chunk: Bytes, source: 'peer' | 'seed', signal: AbortSignal, chunkHash?: string): Promise<void> {
    await this.ingest!.append(chunk, { signal, chunkHash });
    const length = byteLength(chunk);
    this.written += length;
    if (source === 'peer') this.fromPeerBytes += length;
    this.opts.metrics.pullBytes.inc({ source }, length);
    this.notify();
  }

  /** Drops what was written so far and starts a new ingest; clients that got some of it are cut. */
  private async reset(signal: AbortSignal): Promise<void> {
    await this.ingest?.abort();
    this.ingest = await this.opts.store.openIngest({ signal });
    this.written = 0;
    this.fromPeerBytes = 0;
    this.total = undefined;
    if (this.published !== undefined) {
      this.published = undefined;
      this.sizeGate = deferred<number>();
    }
    this.generation++;
    this.notify();
  }

  private hasSeeds(): boolean {
    return (this.opts.seeds?.seeds.length ?? 0) > 0;
  }

  private async run(): Promise<void> {
    const { store, digest, logger, network } = this.opts;
    const signal = this.controller.signal;
    this.ingest = await store.openIngest({ signal });
    const began = Date.now();
    const evidence = new TransferEvidence();
    try {
      let plans = network ? await this.planPeers(network, evidence, signal) : [];
      let seedOnly = plans.length === 0;
      let peersMs = 0;
      for (;;) {
        const plan = plans.shift();
        this.holdBack = plan?.hold ?? false;
        if (plan && network) await this.fromPeers(network, plan, evidence, signal);
        peersMs = Date.now() - began;
        if (this.total === undefined || this.written < this.total) {
          if (!this.hasSeeds() && plans.length > 0) {
            logger.info({ digest, plan: plan?.what, reached: this.written }, 'peers could not give the blob this way; trying the next');
            await this.reset(signal);
            continue;
          }
          await this.fromSeeds(signal);
        }
        try {
          await this.ingest!.commit(this.opts.repository, { digest, size: this.opts.expectedSize ?? this.total }, { signal });
          break;
        } catch (err) {
          if (!isBadContent(err)) throw err;
          // Some source sent bytes that do not make the blob: start again another way.
          const next = plans.length > 0 ? 'the next chunk map' : !seedOnly && this.hasSeeds() ? 'the seed alone' : undefined;
          logger.warn({ digest, plan: plan?.what, fromPeers: this.fromPeerBytes, err: (err as Error).message, next: next ?? 'none' }, 'the blob did not verify');
          if (!next) throw err;
          if (next === 'the seed alone') {
            seedOnly = true;
            plans = [];
          }
          await this.reset(signal);
        }
      }
      this.publishSize(this.total!);
      const transferMs = Date.now() - began;
      logger.info({ digest, size: this.total, fromPeers: this.fromPeerBytes, fromSeed: this.written - this.fromPeerBytes, peersMs, transferMs }, 'blob fetched and committed');
      await this.blame(evidence);
    } catch (err) {
      await this.ingest?.abort();
      if (diskFullCode(err)) logger.warn({ digest, written: this.written, err: (err as Error).message }, 'blob fetch stopped: the disk is full; its bytes were removed');
      throw err;
    }
  }

  /**
   * How to get the blob from peers. Holders of the whole blob: their chunk maps, one plan per distinct map (most
   * holders first), streamed to clients when they all agree and held back until the digest verified when they do
   * not. Nobody holds it: the rendezvous owner of the digest among the connected peers fetches it from its seed once
   * and everyone else streams from the owner; the owner itself goes to the seed (no plan).
   */
  private async planPeers(network: PeerNetwork, evidence: TransferEvidence, signal: AbortSignal): Promise<PeerPlan[]> {
    const { digest, logger } = this.opts;
    const holders = network.holders(digest);
    if (holders.length === 0) {
      const order = rendezvousOrder(digest, [network.selfId, ...network.peers()]);
      const owner = order[0];
      if (owner === undefined || owner === network.selfId) return [];
      return [{ what: 'rendezvous owner', sources: [{ peer: owner, pull: this.opts.pull }], hold: false, hedge: false }];
    }
    const answers = await this.chunkMaps(network, holders.slice(0, MAP_HOLDERS), signal);
    const groups: { map: ChunkMap; givers: string[] }[] = [];
    for (const { peer, map } of answers) {
      if (!map) continue;
      evidence.maps.set(peer, map);
      const group = groups.find((g) => sameMap(g.map, map));
      if (group) group.givers.push(peer);
      else groups.push({ map, givers: [peer] });
    }
    // A holder that broke the protocol meanwhile is banned, and no longer a holder.
    const usable = network.holders(digest);
    if (groups.length === 0) return [{ what: 'holders without a chunk map', sources: usable.map((peer) => ({ peer })), hold: true, hedge: true }];
    groups.sort((a, b) => b.givers.length - a.givers.length);
    const unanimous = groups.length === 1;
    if (!unanimous) {
      logger.warn(
        { digest, maps: groups.map((g) => ({ size: g.map.size, givers: g.givers })) },
        'holders disagree on the chunk map: clients get the blob once it verified, and whoever was wrong is banned then',
      );
    }
    return groups.map((g, i) => {
      const dissenters = new Set(groups.flatMap((o) => (o === g ? [] : o.givers)));
      const sources = [...g.givers, ...usable.filter((p) => !g.givers.includes(p) && !dissenters.has(p))].filter((p) => usable.includes(p));
      return { what: `chunk map ${i + 1} of ${groups.length} (${g.givers.length} holder(s))`, sources: sources.map((peer) => ({ peer })), map: g.map, hold: !unanimous, hedge: true };
    });
  }

  /**
   * The chunk maps of `asked` (in their order): all of them within MAP_WAIT_MS, but no longer than MAP_GRACE_MS
   * after the first map came, so a holder that froze does not hold every pull. A holder that answers late is still
   * a source: its chunks are checked against the map that is used.
   */
  private async chunkMaps(network: PeerNetwork, asked: string[], signal: AbortSignal): Promise<{ peer: string; map?: ChunkMap }[]> {
    const { digest, logger } = this.opts;
    const answers = new Map<string, ChunkMap | undefined>();
    const stop = new AbortController();
    const mapSignal = AbortSignal.any([signal, stop.signal, AbortSignal.timeout(MAP_WAIT_MS)]);
    let grace: NodeJS.Timeout | undefined;
    try {
      await new Promise<void>((resolve) => {
        let pending = asked.length;
        mapSignal.addEventListener('abort', () => resolve(), { once: true });
        for (const peer of asked) {
          network
            .fetchChunkMap(peer, digest, { signal: mapSignal, size: this.opts.expectedSize })
            .then(
              (map) => {
                answers.set(peer, map);
                if (map) grace ??= setTimeout(resolve, MAP_GRACE_MS);
              },
              (err: Error) => logger.debug({ peer, digest, err: err.message }, 'no chunk map from peer'),
            )
            .finally(() => {
              if (--pending === 0) resolve();
            });
        }
        if (pending === 0) resolve();
      });
    } finally {
      if (grace) clearTimeout(grace);
      stop.abort();
    }
    if (signal.aborted) throw new AbortedError();
    return asked.filter((p) => answers.has(p)).map((peer) => ({ peer, map: answers.get(peer) }));
  }

  private async fromPeers(network: PeerNetwork, plan: PeerPlan, evidence: TransferEvidence, signal: AbortSignal): Promise<void> {
    const { digest, logger, metrics } = this.opts;
    // The whole transfer has a deadline that grows with the size; past it, what is left comes from the seed.
    const deadline = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const peerSignal = AbortSignal.any([signal, deadline.signal]);
    try {
      await transferFromPeers({
        network,
        digest,
        sources: plan.sources,
        offset: this.written,
        size: this.total ?? plan.map?.size,
        map: plan.map,
        parallel: this.opts.parallelChunks ?? 4,
        append: (bytes, from, hash) => this.appendBytes(bytes, from === undefined ? 'seed' : 'peer', signal, hash),
        onSize: (n) => {
          this.learnSize(n);
          timer ??= setTimeout(() => deadline.abort(), peerTransferDeadlineMs(n));
          timer.unref();
        },
        seedRange: this.hasSeeds() ? (start, end, s) => this.seedRange(start, end, s) : undefined,
        evidence,
        hedge: plan.hedge,
        onHedge: () => metrics.peerHedges.inc(),
        logger,
        signal: peerSignal,
      });
    } catch (err) {
      if (signal.aborted || !deadline.signal.aborted) throw err;
      logger.warn({ digest, reached: this.written, size: this.total, deadlineMs: peerTransferDeadlineMs(this.total ?? 0) }, 'the transfer from peers passed its deadline');
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  /** A chunk no peer could give, from the seeds by Range. */
  private async seedRange(start: number, end: number, signal: AbortSignal): Promise<Buffer> {
    const { seeds, digest, upstreamRepository, metrics } = this.opts;
    let lastError: unknown = new NotFoundError('BLOB_UNKNOWN', `no seed for ${digest}`);
    for (const seed of seeds?.seeds ?? []) {
      try {
        const res = await seed.getBlob(upstreamRepository, digest, { signal, range: { start, end } });
        const parts: Buffer[] = [];
        for await (const c of res.stream as AsyncIterable<Buffer>) {
          await this.opts.seedRate?.take(c.length, signal);
          metrics.seedBytes.inc({ registry: seeds!.registry }, c.length);
          parts.push(c);
        }
        metrics.seedRequests.inc({ registry: seeds!.registry, outcome: 'ok' });
        return Buffer.concat(parts);
      } catch (err) {
        if (signal.aborted) throw new AbortedError();
        const code = isShoalError(err) ? err.code : undefined;
        metrics.seedRequests.inc({ registry: seeds!.registry, outcome: code === 'BLOB_UNKNOWN' ? 'not_found' : 'error' });
        lastError = err;
      }
    }
    throw lastError;
  }

  /**
   * After the blob verified: its true chunk map (from the store, computed from the verified bytes) shows who gave a
   * wrong map and who sent bad chunks. Those, and only those, are banned; a holder that sent bad chunks is told
   * first, so that it re-checks its copy (and when it finds it rotten, it was its disk, not the peer: the ban is
   * lifted). A peer that disagreed with a bad map, but sent good bytes, is not blamed.
   */
  private async blame(evidence: TransferEvidence): Promise<void> {
    const { network, digest, logger } = this.opts;
    if (!network || (evidence.maps.size === 0 && evidence.receipts.length === 0)) return;
    const truth = await this.opts.store.chunkMap(digest).catch(() => undefined);
    if (!truth) return;
    const mapLiars = new Set<string>();
    for (const [peer, map] of evidence.maps) {
      if (sameMap(map, truth)) continue;
      mapLiars.add(peer);
      const detail = map.size !== truth.size ? `its chunk map of ${digest} says ${map.size} bytes; the blob has ${truth.size}` : `its chunk map of ${digest} does not match the blob`;
      logger.warn({ peer, digest }, detail);
      network.ban(peer, 'bad-map', detail);
    }
    const bad = new Map<string, number[]>();
    for (const r of evidence.receipts) {
      if (r.hash === truth.chunks[r.index]) continue;
      const list = bad.get(r.peer) ?? [];
      if (!list.includes(r.index)) list.push(r.index);
      bad.set(r.peer, list);
    }
    for (const [peer, chunks] of bad) {
      const detail = `chunk(s) ${chunks.join(', ')} of ${digest} it sent did not match the blob`;
      logger.warn({ peer, digest, chunks }, 'a peer sent bad bytes');
      if (!mapLiars.has(peer)) void network.report(peer, digest, chunks);
      network.ban(peer, 'bad-bytes', detail);
    }
  }

  private async fromSeeds(signal: AbortSignal): Promise<void> {
    const { seeds, digest, upstreamRepository, metrics, logger } = this.opts;
    if (!seeds || seeds.seeds.length === 0) {
      if (this.written > 0) throw new UnavailableError(`peers gave ${this.written} bytes of ${digest} and then went away, and this node has no seed for the rest`);
      throw new NotFoundError('BLOB_UNKNOWN', `blob ${digest} is neither on this node nor on its peers`, { digest });
    }
    // Each seed is asked once (its client already retried); a transfer that broke after making progress is
    // resumed by Range up to MAX_SEED_RESUMES times.
    const maxResumes = MAX_SEED_RESUMES;
    const notFound = new Set<number>();
    let tried = 0;
    let resumes = 0;
    let index = 0;
    for (;;) {
      const seed = seeds.seeds[index % seeds.seeds.length]!;
      const before = this.written;
      tried++;
      try {
        const range: ByteRange | undefined = this.written > 0 && this.total !== undefined ? { start: this.written, end: this.total - 1 } : undefined;
        // A whole blob's digest is checked by the store's hashing thread, which hashes the bytes anyway, instead of
        // a second pass on this thread; the check below makes a bad body the seed's fault, as the stream's would.
        const whole = range === undefined && before === 0 && Digest.parse(digest).algorithm === 'sha256';
        const res = await seed.getBlob(upstreamRepository, digest, { signal, range, verify: whole ? 'caller' : 'stream' });
        if (this.total === undefined && this.opts.ensureRoom) {
          // Before the size is known to clients (they get their response headers on it): a blob that cannot fit
          // fails them with a clear error instead of a connection cut half way.
          try {
            await this.opts.ensureRoom(res.size, `blob ${digest} from seed ${seed.url}`);
          } catch (err) {
            res.stream.destroy();
            throw err;
          }
        }
        this.learnSize(res.size);
        // The seed's pieces (64 KiB or less) are written in batches of up to SEED_BATCH: one file write, one hash
        // update and one wake-up of the clients that follow the fetch per batch instead of per piece. A batch goes
        // out as soon as the seed has nothing more at once, so no byte waits on the next one.
        let batch: Uint8Array[] = [];
        let batched = 0;
        const flush = async (): Promise<void> => {
          if (batched === 0) return;
          // Written as pieces (one writev), not copied into one buffer first.
          const bytes = batch;
          batch = [];
          batched = 0;
          await this.appendBytes(bytes, 'seed', signal);
        };
        const pieces = (res.stream as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]();
        let ended = false;
        try {
          for (;;) {
            const next = pieces.next();
            if (batched > 0 && (await Promise.race([next.then(() => false, () => false), setImmediate().then(() => true)]))) await flush();
            const piece = await next;
            if (piece.done) {
              ended = true;
              break;
            }
            const chunk = piece.value;
            await this.opts.seedRate?.take(chunk.length, signal);
            metrics.seedBytes.inc({ registry: seeds.registry }, chunk.length);
            batch.push(chunk);
            batched += chunk.length;
            if (batched >= SEED_BATCH) await flush();
          }
        } catch (err) {
          // What arrived before the transfer broke is kept, as piece by piece it would have been: a resume
          // starts after it.
          if (!signal.aborted) await flush().catch(() => undefined);
          throw err;
        } finally {
          if (!ended) await pieces.return?.().catch(() => undefined);
        }
        await flush();
        if (whole && res.verified !== true) {
          const actual = await this.ingest!.sha256({ signal });
          if (actual !== digest) {
            throw new DigestMismatchError(digest, actual, `blob ${upstreamRepository}@${digest} from seed ${seed.url} hashes to ${actual} (${this.written} bytes), not to ${digest}`);
          }
        }
        metrics.seedRequests.inc({ registry: seeds.registry, outcome: 'ok' });
        return;
      } catch (err) {
        if (signal.aborted) throw new AbortedError('node is stopping');
        // A full disk is this node's, not the seed's: no other seed and no resume can help.
        const full = diskFullCode(err);
        if (full) throw isShoalError(err) ? err : storageFullError(full, `storing blob ${digest} fetched from seed ${seed.url}`);
        const code = isShoalError(err) ? err.code : undefined;
        const outcome = code === 'BLOB_UNKNOWN' ? 'not_found' : code === 'DIGEST_INVALID' ? 'corrupt' : 'error';
        metrics.seedRequests.inc({ registry: seeds.registry, outcome });
        logger.warn({ seed: seed.url, digest, attempt: tried, written: this.written, err: (err as Error).message }, 'seed transfer failed');
        if (outcome === 'corrupt') throw err;
        if (outcome === 'not_found') {
          notFound.add(index % seeds.seeds.length);
          if (notFound.size >= seeds.seeds.length) {
            throw new NotFoundError('BLOB_UNKNOWN', `blob ${digest} is neither on this node nor on its seeds for ${seeds.registry}`, { digest });
          }
        }
        const progressed = this.written > before;
        if (progressed && resumes < maxResumes) {
          resumes++;
          continue;
        }
        if (tried >= seeds.seeds.length && !progressed) {
          if (outcome === 'error' && isSeedGone(err) && this.written === 0) {
            const cause = (err as { detail?: { cause?: string } }).detail?.cause;
            throw new NotFoundError('BLOB_UNKNOWN', `blob ${digest} is on no node of the cluster, and seed ${seed.url} cannot be reached`, { digest, seed: seed.url, cause });
          }
          throw err;
        }
        if (progressed) throw err;
        index++;
      }
    }
  }

  /**
   * The bytes of `range` (whole blob when undefined), as they arrive. Errors if the fetch fails, including
   * after some bytes went out; the caller must then cut the client's connection.
   */
  read(range: ByteRange | undefined, opts: IoOptions = {}): Readable & Recycling {
    // The chunks come from pooled reads (of the ingest, then of the stored blob): each may go back to its pool once
    // the caller wrote it out.
    const owners = new WeakMap<Uint8Array, (chunk: Uint8Array) => void>();
    const stream = Readable.from(this.follow(range, opts.signal, owners), { objectMode: false });
    return Object.assign(stream, {
      [RECYCLE]: (chunk: Uint8Array): void => {
        const give = owners.get(chunk);
        owners.delete(chunk);
        give?.(chunk);
      },
    });
  }

  private async *follow(range: ByteRange | undefined, signal: AbortSignal | undefined, owners: WeakMap<Uint8Array, (chunk: Uint8Array) => void>): AsyncGenerator<Uint8Array> {
    const total = await this.size;
    const end = range?.end ?? total - 1;
    let pos = range?.start ?? 0;
    let generation = this.generation;
    const cut = (): never => {
      throw new UnavailableError(`the bytes of ${this.digest} sent so far did not verify; the node fetches it again: ask again`);
    };
    while (pos <= end) {
      if (this.generation !== generation) {
        // The bytes were dropped to start again: fine for a reader that got none of them and expects the same size.
        if (pos > (range?.start ?? 0) || (this.total !== undefined && this.total !== total)) cut();
        generation = this.generation;
      }
      if (this.state === 'committed') {
        const stored = await this.opts.store.readContent(this.digest, { start: pos, end }, { signal });
        const give = recyclerOf(stored);
        for await (const c of stored as AsyncIterable<Uint8Array>) {
          if (give) owners.set(c, give);
          yield c;
        }
        return;
      }
      if (this.state === 'failed') throw this.failure;
      // Hold back the blob's last byte until the digest verified (and all of it while holders disagree).
      const available = this.holdBack ? 0 : Math.min(this.written, total - 1);
      if (available > pos && this.ingest) {
        const until = Math.min(available - 1, end);
        const reading = this.generation;
        try {
          const part = await this.ingest.read({ start: pos, end: until }, { signal });
          const give = recyclerOf(part);
          for await (const c of part as AsyncIterable<Uint8Array>) {
            if (this.generation !== reading) break;
            pos += c.length;
            if (give) owners.set(c, give);
            yield c;
          }
        } catch (err) {
          // The ingest was committed (its handle closed, the file renamed) or dropped while we read: wait for
          // the fetch to say which, then look at the state again.
          if (!isMissingFile(err) && (err as NodeJS.ErrnoException)?.code !== 'EBADF') throw err;
          if (this.state === 'running' && this.generation === reading) await this.changed(signal);
        }
        continue;
      }
      await this.changed(signal);
    }
    // A zero-length read, or a range that ended before the last byte: the caller still learns of failure.
    if (total === 0 || end === total - 1) {
      while (this.state === 'running') await this.changed(signal);
      if (this.state === 'failed') throw this.failure;
    }
  }
}
