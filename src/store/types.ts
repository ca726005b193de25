import type { Readable } from 'node:stream';
import type { Bytes, ChunkMap } from '../oci/index.ts';

/** The repository where an import stages blobs until the manifests that name them are in. */
export const STAGING_REPOSITORY = 'shoal-import';

import type { ByteRange, IoOptions } from '../oci/index.ts';
export type { ByteRange, IoOptions };

export interface BlobInfo {
  digest: string;
  size: number;
}


/** Expectations a write is verified against before anything becomes visible. */
export interface WriteExpectation {
  digest?: string;
  size?: number;
}

export interface ManifestRecord {
  digest: string;
  mediaType: string;
  size: number;
  subject?: string;
  artifactType?: string;
  annotations?: Record<string, string>;
  created: number;
  /** Fetched by the pull path (from a seed or a peer) rather than pushed: a cache entry, kept untagged. */
  cached?: boolean;
}

export interface ReferrerDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
}

export interface Pin {
  repository: string;
  digest: string;
  reason: string;
  created: number;
}

export interface UploadSession {
  id: string;
  repository: string;
  /** Bytes received and durable so far. */
  offset: number;
  created: number;
  updated: number;
}

/** Reads verified content: blobs and manifests are both content-addressed bytes. */
export interface BlobReader {
  /** Size of a blob linked into `repository`, or undefined. */
  statBlob(repository: string, digest: string, opts?: IoOptions): Promise<BlobInfo | undefined>;
  /** Size of a blob anywhere in the store, or undefined. */
  statContent(digest: string, opts?: IoOptions): Promise<BlobInfo | undefined>;
  /**
   * A stream of the blob's bytes (or a range of them). Throws BLOB_UNKNOWN when absent. A read counts as a use (its
   * access time, which eviction goes by) unless `touch` is false: listings that only look (`shoal ls`) say so.
   */
  readContent(digest: string, range?: ByteRange, opts?: IoOptions & { touch?: boolean }): Promise<Readable>;
  /**
   * The whole bytes of a small blob (a manifest the caller has just looked up), counted as a use like a read. Small
   * ones are kept in memory by digest (content by digest never changes), so a manifest asked for again opens no
   * file. Throws BLOB_UNKNOWN when absent.
   */
  readSmallContent(digest: string, opts?: IoOptions): Promise<Buffer>;
}

/**
 * A blob being written: bytes are appended (and hashed) as they arrive, can be read back while the write
 * goes on (so a fetch can be streamed to several clients), and become visible only through commit().
 */
export interface Ingest {
  /** Bytes appended so far. */
  readonly size: number;
  /** Appends bytes (one buffer, or pieces written together). */
  append(chunk: Bytes, opts?: IngestAppendOptions): Promise<void>;
  /** A range of the bytes appended so far (inclusive). */
  read(range: ByteRange, opts?: IoOptions): Promise<Readable>;
  /**
   * The sha256 digest of the bytes appended so far, from the hashing thread: what `commit` will check. Ends the
   * writing (a later `append` fails); `commit` or `abort` comes next.
   */
  sha256(opts?: IoOptions): Promise<string>;
  /** Verifies digest and size, then commits the blob into `repository`. On mismatch nothing is stored. */
  commit(repository: string, expect: WriteExpectation, opts?: IoOptions): Promise<BlobInfo>;
  /** Drops the bytes; safe to call more than once and after commit. */
  abort(): Promise<void>;
}

export interface IngestAppendOptions extends IoOptions {
  /**
   * sha256 (hex) of exactly this piece, when the caller already hashed it (a peer's chunk checked against its
   * chunk map): a whole chunk on a chunk boundary is then not hashed again for the stored chunk map. The blob's
   * digest is still computed from the bytes themselves.
   */
  chunkHash?: string;
}

/** Writes content: verified on commit, never visible half-written. */
export interface BlobIngester {
  /** Starts a blob write whose bytes arrive piece by piece. */
  openIngest(opts?: IoOptions): Promise<Ingest>;
  /** Streams `source` into the store and links it into `repository`; verifies digest and size when given. */
  writeBlob(repository: string, source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, expect: WriteExpectation, opts?: IoOptions): Promise<BlobInfo>;
  /** Links an existing blob into another repository (cross-repository mount). False when the blob is not there. */
  mountBlob(repository: string, digest: string, from: string | undefined, opts?: IoOptions): Promise<BlobInfo | undefined>;
  /** Removes the blob from `repository`; the bytes go when no repository links them any more. */
  deleteBlob(repository: string, digest: string, opts?: IoOptions): Promise<void>;
}

export interface AppendOptions extends IoOptions {
  /** Where the client says this chunk starts; must equal the session's offset. */
  start?: number;
  /** How many bytes the client says it sends; a shorter body rolls the chunk back. */
  length?: number;
}

/** Resumable upload sessions (the OCI push protocol). */
export interface UploadSessions {
  createUpload(repository: string, opts?: IoOptions): Promise<UploadSession>;
  /** Throws BLOB_UPLOAD_UNKNOWN when the session does not exist (or belongs to another repository). */
  getUpload(repository: string, id: string, opts?: IoOptions): Promise<UploadSession>;
  appendUpload(repository: string, id: string, source: AsyncIterable<Uint8Array>, opts?: AppendOptions): Promise<UploadSession>;
  /** Verifies the whole session against `digest` and commits it as a blob of `repository`. */
  commitUpload(repository: string, id: string, digest: string, opts?: IoOptions): Promise<BlobInfo>;
  deleteUpload(repository: string, id: string, opts?: IoOptions): Promise<void>;
  listUploads(opts?: IoOptions): Promise<UploadSession[]>;
}

export interface PutManifestInput {
  repository: string;
  bytes: Uint8Array;
  mediaType: string;
  tag?: string;
  /**
   * Digests of the blobs and manifests it names that must be stored (not foreign layers, not its subject). Checked
   * again under the store's locks, so a sweep or an eviction that races the put either loses (they stay) or wins
   * before the check (MANIFEST_BLOB_UNKNOWN).
   */
  references?: string[];
  /** Fetched by the pull path, not pushed (see ManifestRecord.cached). */
  cached?: boolean;
  subject?: string;
  artifactType?: string;
  annotations?: Record<string, string>;
}

/** Repositories, manifests, tags and the referrers index. */
export interface ManifestStore {
  putManifest(input: PutManifestInput, opts?: IoOptions): Promise<ManifestRecord>;
  getManifest(repository: string, digest: string, opts?: IoOptions): Promise<ManifestRecord | undefined>;
  resolveTag(repository: string, tag: string, opts?: IoOptions): Promise<string | undefined>;
  getTag(repository: string, tag: string, opts?: IoOptions): Promise<TagRecord | undefined>;
  /** Sets a tag to a stored manifest, keeping `updated` when given (a record learned from a peer). */
  setTag(repository: string, tag: string, record: TagRecord, opts?: IoOptions): Promise<void>;
  listTags(repository: string, opts?: IoOptions): Promise<string[]>;
  /** Deletes the manifest and every tag that points to it. */
  deleteManifest(repository: string, digest: string, opts?: IoOptions): Promise<void>;
  deleteTag(repository: string, tag: string, opts?: IoOptions): Promise<void>;
  listReferrers(repository: string, subject: string, opts?: IoOptions): Promise<ReferrerDescriptor[]>;
  repositoryExists(repository: string, opts?: IoOptions): Promise<boolean>;
  /** Marks a manifest (and so everything it references) as one the node must keep, e.g. an imported bundle's. */
  pinManifest(repository: string, digest: string, reason: string, opts?: IoOptions): Promise<void>;
  unpinManifest(repository: string, digest: string, opts?: IoOptions): Promise<void>;
  listPins(opts?: IoOptions): Promise<Pin[]>;
  listRepositories(opts?: IoOptions): Promise<string[]>;
}

/** Why content left the store. */
export type RemovalReason = 'deleted' | 'evicted' | 'corrupt' | 'collected' | 'missing';

/** What changed in the store, for peers that keep an inventory of this node. */
export interface ContentEvent {
  type: 'added' | 'removed';
  digest: string;
  size: number;
  /** Set on removals. */
  reason?: RemovalReason;
}

/** A stored blob (or manifest bytes) with what eviction and collection decide by. */
export interface ContentEntry {
  digest: string;
  size: number;
  created: number;
  /** Last read or reference, ms since the epoch (at least `created`). */
  accessed: number;
}

/** A link of a blob into a repository. */
export interface LinkEntry {
  repository: string;
  digest: string;
  size: number;
  /** When the link was made (0 for links older than this field). */
  created: number;
}

export interface ManifestEntry extends ManifestRecord {
  repository: string;
}

export interface TagEntry extends TagRecord {
  repository: string;
  tag: string;
}

/** Outcome of re-hashing a stored blob. */
export type VerifyOutcome = 'ok' | 'corrupt' | 'missing';

/**
 * A collection in progress: the store notes here every digest a write refers to while it runs (a manifest put's
 * references, a blob commit or mount), and a sweep step never removes a noted digest.
 */
export interface SweepGuard {
  readonly touched: ReadonlySet<string>;
  close(): void;
}

/** What the lifecycle services (eviction, collection, scrub) need beyond the registry's view. */
export interface ContentLifecycle {
  /** Every stored blob with size, creation and access time. */
  listEntries(opts?: IoOptions): Promise<ContentEntry[]>;
  listLinks(opts?: IoOptions): Promise<LinkEntry[]>;
  listManifests(opts?: IoOptions): Promise<ManifestEntry[]>;
  listAllTags(opts?: IoOptions): Promise<TagEntry[]>;
  /** True while a stream of the blob is open (a client or peer reading it). */
  inUse(digest: string): boolean;
  /** Starts noting referenced digests for a sweep; close() when the sweep ends. */
  openSweepGuard(): SweepGuard;
  /**
   * Removes a blob's bytes and every record naming them (blob, links, and for manifest bytes the manifest, its
   * tags and referrer entries). Refused (false) when `onlyIf` says no under the digest's lock, e.g. it is in use.
   */
  removeContent(digest: string, reason: RemovalReason, opts?: IoOptions & { onlyIf?: (entry: ContentEntry) => boolean }): Promise<boolean>;
  /** Removes one repository's link when the guard did not see the digest referenced and `onlyIf` agrees. */
  sweepLink(repository: string, digest: string, guard: SweepGuard, opts?: IoOptions & { olderThan?: number }): Promise<boolean>;
  /** Removes an untagged manifest (and its link) unless the guard saw it referenced or it was re-put since `olderThan`. */
  sweepManifest(repository: string, digest: string, guard: SweepGuard, opts?: IoOptions & { olderThan?: number }): Promise<boolean>;
  /** Re-hashes a blob's bytes against its digest; corrupt bytes are removed (reason `corrupt`). */
  verifyContent(digest: string, opts?: IoOptions): Promise<VerifyOutcome>;
  /** Upload sessions not updated since `olderThan` (ms since the epoch) are removed; returns them. */
  expireUploads(olderThan: number, opts?: IoOptions): Promise<UploadSession[]>;
}

export interface TagRecord {
  digest: string;
  /** When the tag was last set, ms since the epoch: the cluster's newest record wins. */
  updated: number;
}

export interface StoreStats {
  blobs: number;
  bytes: number;
}

/** Everything a registry node needs from its storage. */
export interface ContentStore extends BlobReader, BlobIngester, UploadSessions, ManifestStore, ContentLifecycle {
  open(opts?: IoOptions): Promise<void>;
  close(): Promise<void>;
  stats(opts?: IoOptions): Promise<StoreStats>;
  /** Every committed blob (and manifest) digest with its size. */
  listContent(opts?: IoOptions): Promise<BlobInfo[]>;
  /**
   * The chunk map of a blob this store can vouch for: computed from bytes verified against the digest (at commit,
   * or now by re-hashing the whole blob, which removes it when its bytes are wrong). Undefined when not held.
   */
  chunkMap(digest: string, opts?: IoOptions): Promise<ChunkMap | undefined>;
  /** Calls `listener` after each blob that becomes or stops being stored; returns the unsubscribe function. */
  watch(listener: (event: ContentEvent) => void): () => void;
}
