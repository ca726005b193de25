import { createHash } from 'node:crypto';
import { parseManifest } from '../oci/index.ts';
import { CHUNK_SIZE, type ChunkRequest, type ContentProvider } from '../p2p/types.ts';
import type { ContentStore, IoOptions, TagRecord } from '../store/index.ts';
import type { PullThrough } from './pull-through.ts';

/** Chunk maps kept in memory at most (each is ~70 bytes per 4 MiB chunk). */
const CHUNK_MAP_CACHE = 4096;

/** What this node offers its peers: the store, fetches in flight, and pull-through for the rendezvous owner. */
export class PeerContentProvider implements ContentProvider {
  private readonly store: ContentStore;
  private readonly pull: PullThrough;
  private readonly chunkMaps = new Map<string, { size: number; chunks: string[] }>();

  constructor(store: ContentStore, pull: PullThrough) {
    this.store = store;
    this.pull = pull;
  }

  openRange(req: ChunkRequest, opts?: IoOptions): Promise<{ size: number; stream: AsyncIterable<Uint8Array> } | undefined> {
    return this.pull.peerRange(req, opts);
  }

  async chunkMap(digest: string, opts: IoOptions = {}): Promise<{ size: number; chunks: string[] } | undefined> {
    const cached = this.chunkMaps.get(digest);
    if (cached) return cached;
    const info = await this.store.statContent(digest, opts);
    if (!info) return undefined;
    const chunks: string[] = [];
    let hash = createHash('sha256');
    let inChunk = 0;
    for await (const piece of await this.store.readContent(digest, undefined, opts)) {
      let buf = piece as Buffer;
      while (buf.length > 0) {
        const take = Math.min(buf.length, CHUNK_SIZE - inChunk);
        hash.update(buf.subarray(0, take));
        inChunk += take;
        buf = buf.subarray(take);
        if (inChunk === CHUNK_SIZE) {
          chunks.push(hash.digest('hex'));
          hash = createHash('sha256');
          inChunk = 0;
        }
      }
    }
    if (inChunk > 0) chunks.push(hash.digest('hex'));
    const map = { size: info.size, chunks };
    if (this.chunkMaps.size >= CHUNK_MAP_CACHE) this.chunkMaps.delete(this.chunkMaps.keys().next().value!);
    this.chunkMaps.set(digest, map);
    return map;
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

  watch(listener: (event: { type: 'added' | 'removed'; digest: string }) => void): () => void {
    return this.store.watch((e) => {
      if (e.type === 'removed') this.chunkMaps.delete(e.digest);
      listener(e);
    });
  }
}
