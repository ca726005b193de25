import type { ByteRange, IoOptions, TagRecord } from '../store/index.ts';

export { CHUNK_SIZE } from '../oci/index.ts';

export const PROTOCOLS = {
  chunk: '/shoal/chunk/1.0.0',
  chunkMap: '/shoal/chunkmap/1.0.0',
  inventory: '/shoal/inventory/1.0.0',
  manifest: '/shoal/manifest/1.0.0',
  tag: '/shoal/tag/1.0.0',
} as const;

/** Ask a peer to pull a blob through from its seed when it does not have it (rendezvous owner). */
export interface PullHint {
  namespace?: string;
  repository: string;
  upstream: string;
}

export interface ChunkRequest {
  digest: string;
  start: number;
  end: number;
  pull?: PullHint;
}

/** What this node serves to peers; implemented by the pull path, which also knows fetches in flight. */
export interface ContentProvider {
  /** Bytes of a blob this node has or is fetching; undefined when it has neither (NOT_FOUND). */
  openRange(req: ChunkRequest, opts?: IoOptions): Promise<{ size: number; stream: AsyncIterable<Uint8Array> } | undefined>;
  /** sha256 of every CHUNK_SIZE chunk of a blob this node holds whole. */
  chunkMap(digest: string, opts?: IoOptions): Promise<{ size: number; chunks: string[] } | undefined>;
  manifest(digest: string, opts?: IoOptions): Promise<{ bytes: Uint8Array; mediaType: string } | undefined>;
  tag(repository: string, tag: string, opts?: IoOptions): Promise<TagRecord | undefined>;
  /** Every digest this node holds. */
  inventory(opts?: IoOptions): Promise<string[]>;
  /** Calls back when a digest is added or removed; returns the unsubscribe function. */
  watch(listener: (event: { type: 'added' | 'removed'; digest: string }) => void): () => void;
}

export interface PeerSummary {
  id: string;
  addresses: string[];
  rttMs?: number;
  /** Measured receive throughput from this peer, bytes per second. */
  throughput?: number;
  bytesIn: number;
  bytesOut: number;
  zone?: string;
  blobs: number;
  bannedUntil?: number;
}

export interface PeerTagRecord extends TagRecord {
  peer: string;
}

/** What the pull path needs from the peer network. */
export interface PeerNetwork {
  readonly selfId: string;
  /** Peers that hold a digest (by their inventories), best first; banned peers left out. Answers at once. */
  holders(digest: string): string[];
  /** Connected, unbanned peers, best first. */
  peers(): string[];
  /** Opens a chunk transfer: `size` is the whole blob's; `stream` carries bytes start..min(end, size-1). */
  fetchRange(peer: string, req: ChunkRequest, opts?: IoOptions): Promise<{ size: number; stream: AsyncIterable<Uint8Array> }>;
  fetchChunkMap(peer: string, digest: string, opts?: IoOptions): Promise<{ size: number; chunks: string[] } | undefined>;
  fetchManifest(peer: string, digest: string, opts?: IoOptions): Promise<{ bytes: Uint8Array; mediaType: string } | undefined>;
  /** Every connected peer's record of a tag. */
  queryTag(repository: string, tag: string, opts?: IoOptions): Promise<PeerTagRecord[]>;
  ban(peer: string, reason: string): void;
  /** Reports a finished transfer, to prefer fast peers. */
  recordTransfer(peer: string, bytes: number, ms: number): void;
  summary(): PeerSummary[];
}

export type { ByteRange };
