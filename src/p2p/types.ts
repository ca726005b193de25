import type { ChunkMap } from '../oci/index.ts';
import type { ByteRange, IoOptions, TagRecord, VerifyOutcome } from '../store/index.ts';

export { CHUNK_SIZE } from '../oci/index.ts';

/** Most references one prefetch request may carry (over HTTP or the control protocol). */
export const MAX_PREFETCH_REFS = 100;

export const PROTOCOLS = {
  chunk: '/shoal/chunk/1.0.0',
  chunkMap: '/shoal/chunkmap/1.0.0',
  /** 1.1: every message is acknowledged before the next is sent (flow control). */
  inventory: '/shoal/inventory/1.1.0',
  manifest: '/shoal/manifest/1.0.0',
  tag: '/shoal/tag/1.0.0',
  report: '/shoal/report/1.0.0',
  /** A node's summary (`shoal status --cluster`) and prefetch requests (`shoal prefetch --all-nodes`). */
  control: '/shoal/control/1.0.0',
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
  /** The asking node can take the bytes on the holder's data channel (data-channel.ts). */
  channel?: boolean;
  /** With `channel`: the asking node takes those bytes unsealed, its peer connection being clear-data (clear-data.ts). */
  clear?: boolean;
}

/** What a holder found when it re-checked a blob a peer reported (`busy`: it will not check again so soon). */
export type ReportOutcome = VerifyOutcome | 'busy' | 'unknown';

/** Bytes of a blob served to a peer. */
export interface PeerRange {
  size: number;
  stream: AsyncIterable<Uint8Array>;
  /** Takes back a piece of `stream` once the server copied it out and no longer refers to it (a pooled read buffer). */
  recycle?: (chunk: Uint8Array) => void;
}

/** What this node serves to peers; implemented by the pull path, which also knows fetches in flight. */
export interface ContentProvider {
  /** Bytes of a blob this node has or is fetching; undefined when it has neither (NOT_FOUND). */
  openRange(req: ChunkRequest, opts?: IoOptions): Promise<PeerRange | undefined>;
  /** sha256 of every CHUNK_SIZE chunk of a blob this node holds whole and can vouch for. */
  chunkMap(digest: string, opts?: IoOptions): Promise<ChunkMap | undefined>;
  manifest(digest: string, opts?: IoOptions): Promise<{ bytes: Uint8Array; mediaType: string } | undefined>;
  tag(repository: string, tag: string, opts?: IoOptions): Promise<TagRecord | undefined>;
  /** Every digest this node holds. */
  inventory(opts?: IoOptions): Promise<string[]>;
  /** Calls back when a digest is added or removed; returns the unsubscribe function. */
  watch(listener: (event: { type: 'added' | 'removed'; digest: string }) => void): () => void;
  /**
   * Re-hashes a blob a peer says it received bad bytes of; bytes that no longer match the digest are taken out of
   * the store (and so out of routing). Without it, reports are answered `unknown`.
   */
  verify?(digest: string, opts?: IoOptions): Promise<VerifyOutcome>;
}

/** Why a peer was banned; the label of `shoal_peer_bans_total{reason}`. */
export type BanReason =
  /** It sent bytes that did not match the digest (proven once the blob verified). */
  | 'bad-bytes'
  /** It gave a chunk map that did not match the blob. */
  | 'bad-map'
  /** It announced more blobs than the inventory cap allows. */
  | 'inventory-cap'
  /** It sent a message larger than the protocol allows. */
  | 'oversize-message'
  /** It sent a message that does not parse or does not validate. */
  | 'invalid-message';

export const BAN_REASONS: readonly BanReason[] = ['bad-bytes', 'bad-map', 'inventory-cap', 'oversize-message', 'invalid-message'];

export interface BanSummary {
  reason: BanReason;
  detail: string;
  /** ms since the epoch. */
  since: number;
  /** ms since the epoch. */
  until: number;
}

export interface PeerSummary {
  id: string;
  addresses: string[];
  /** False for a banned peer that is not connected (it is listed for its ban). */
  connected: boolean;
  rttMs?: number;
  /** Measured receive throughput from this peer, bytes per second. */
  throughput?: number;
  bytesIn: number;
  bytesOut: number;
  zone?: string;
  blobs: number;
  bannedUntil?: number;
  ban?: BanSummary;
  /** This node could not reach the peer's data port: chunks from it come over the peer connection until then. */
  dataPortUnreachableUntil?: number;
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
  /** A holder's chunk map, checked for shape (and against `size` when the caller knows it); undefined: none. */
  fetchChunkMap(peer: string, digest: string, opts?: IoOptions & { size?: number }): Promise<ChunkMap | undefined>;
  fetchManifest(peer: string, digest: string, opts?: IoOptions): Promise<{ bytes: Uint8Array; mediaType: string } | undefined>;
  /** Every connected peer's record of a tag (validated). */
  queryTag(repository: string, tag: string, opts?: IoOptions): Promise<PeerTagRecord[]>;
  /** Tells a holder that it sent bad bytes of `digest` (chunk indexes), so that it re-checks its copy. */
  report(peer: string, digest: string, chunks: number[], opts?: IoOptions): Promise<ReportOutcome>;
  /** Bans a peer (keyed by its id, for the configured time, across reconnects); disconnects it. */
  ban(peer: string, reason: BanReason, detail: string): void;
  /** Reports a finished transfer, to prefer fast peers. */
  recordTransfer(peer: string, bytes: number, ms: number): void;
  summary(): PeerSummary[];
}

export type { ByteRange };
