import { parseManifest, type ChunkMap } from '../oci/index.ts';
import type { ChunkRequest, ContentProvider, PeerRange } from '../p2p/types.ts';
import type { ContentStore, IoOptions, TagRecord, VerifyOutcome } from '../store/index.ts';
import type { PullThrough } from './pull-through.ts';

/** What this node offers its peers: the store, fetches in flight, and pull-through for the rendezvous owner. */
export class PeerContentProvider implements ContentProvider {
  private readonly store: ContentStore;
  private readonly pull: PullThrough;

  constructor(store: ContentStore, pull: PullThrough) {
    this.store = store;
    this.pull = pull;
  }

  openRange(req: ChunkRequest, opts?: IoOptions): Promise<PeerRange | undefined> {
    return this.pull.peerRange(req, opts);
  }

  /** Only from bytes verified against the digest (the store re-hashes a blob it has no map for, and drops it if bad). */
  chunkMap(digest: string, opts: IoOptions = {}): Promise<ChunkMap | undefined> {
    return this.store.chunkMap(digest, opts);
  }

  async manifest(digest: string, opts: IoOptions = {}): Promise<{ bytes: Uint8Array; mediaType: string } | undefined> {
    const info = await this.store.statContent(digest, opts);
    if (!info || info.size > 4 * 1024 * 1024) return undefined;
    const bytes = Buffer.concat((await (await this.store.readContent(digest, undefined, opts)).toArray()) as Buffer[]);
    try {
      return { bytes, mediaType: parseManifest(bytes, undefined).mediaType };
    } catch {
      return undefined;
    }
  }

  tag(repository: string, tag: string, opts?: IoOptions): Promise<TagRecord | undefined> {
    return this.store.getTag(repository, tag, opts);
  }

  async inventory(opts?: IoOptions): Promise<string[]> {
    return (await this.store.listContent(opts)).map((b) => b.digest);
  }

  /** A peer says it got bad bytes of this blob from us: re-hash it; bad bytes leave the store (and routing). */
  verify(digest: string, opts: IoOptions = {}): Promise<VerifyOutcome> {
    return this.pull.recheck(digest, 'peer-report', opts);
  }

  watch(listener: (event: { type: 'added' | 'removed'; digest: string }) => void): () => void {
    return this.store.watch(listener);
  }
}
