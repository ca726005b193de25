import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { mkdir } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { AbortedError, byteLength, ChunkHasher, KeyedMutex, Digest, DigestHasher, DigestMismatchError, InvalidError, NotFoundError, ShoalError, UnsupportedError, diskFullCode, type ChunkMap } from '../oci/index.ts';
import { DiskBlobBytes, MemoryBlobBytes, type BlobBytes } from './bytes.ts';
import { keyParts, keys, lastPart } from './keys.ts';
import { migrateStore } from './migrations.ts';
import { LevelKeyValueStore, MemoryKeyValueStore, type KeyValueStore, type KvOp } from './kv.ts';
import { IngestHasher, inlineHashJob, type HashJob, type IngestHash } from './ingest-hasher.ts';
import { crashPoint } from './crash-points.ts';
import type {
  AppendOptions,
  BlobInfo,
  ByteRange,
  ContentEntry,
  ContentEvent,
  ContentStore,
  LinkEntry,
  ManifestEntry,
  RemovalReason,
  SweepGuard,
  TagEntry,
  VerifyOutcome,
  Ingest,
  IoOptions,
  ManifestRecord,
  Pin,
  PutManifestInput,
  ReferrerDescriptor,
  StoreStats,
  TagRecord,
  UploadSession,
  WriteExpectation,
} from './types.ts';

interface BlobRecord {
  size: number;
  created: number;
}

interface LinkRecord {
  size: number;
  created?: number;
}

/** A guard's set, writable by the store. */
class Guard implements SweepGuard {
  readonly touched = new Set<string>();
  constructor(private readonly onClose: (g: Guard) => void) {}
  close(): void {
    this.onClose(this);
  }
}

/** How often a blob's access time is rewritten at most. */
const ATIME_RESOLUTION_MS = 60_000;
/** readSmallContent keeps blobs up to this size in memory (manifests are a few KiB), up to SMALL_CACHE_BYTES. */
export const SMALL_CONTENT_MAX = 256 * 1024;
const SMALL_CACHE_BYTES = 8 * 1024 * 1024;

function checkAbort(signal?: AbortSignal): void {
  if (signal?.aborted) throw new AbortedError();
}

/**
 * The content store: records in an ordered key-value store, bytes in a BlobBytes. The same logic runs on
 * LevelDB + files (a node) and on memory (tests), so both behave the same by construction.
 */
export class KvContentStore implements ContentStore {
  private readonly kv: KeyValueStore;
  private readonly bytes: BlobBytes;
  private readonly uploadLocks = new KeyedMutex();
  private readonly digestLocks = new KeyedMutex();
  private readonly hashers = new Map<string, DigestHasher>();
  private readonly atimes = new Map<string, number>();
  private totals: StoreStats = { blobs: 0, bytes: 0 };
  private readonly listeners = new Set<(event: ContentEvent) => void>();
  /** Open read streams per digest. */
  private readonly readers = new Map<string, number>();
  /** Small blobs' bytes by digest, least recently read first (readSmallContent). */
  private readonly small = new Map<string, Buffer>();
  private smallBytes = 0;
  /** Removals begun so far, and under way: a small read that overlapped one keeps nothing in memory. */
  private removals = 0;
  private removing = 0;
  /** Digests that manifest puts in progress refer to (from their check until their records are written). */
  private readonly referenced = new Map<string, number>();
  private readonly guards = new Set<Guard>();
  /** Chunk maps of blobs just committed, still being computed by the hashing thread (see recordChunkMap). */
  private readonly pendingMaps = new Map<string, Promise<void>>();
  private opened = false;
  /** Hashes ingests on a thread of its own (started on the first ingest of a file on disk). */
  private readonly ingestHasher = new IngestHasher();

  constructor(kv: KeyValueStore, bytes: BlobBytes) {
    this.kv = kv;
    this.bytes = bytes;
  }

  async open(opts: IoOptions & { location?: string } = {}): Promise<void> {
    await this.kv.open();
    await this.bytes.init(opts);
    // The format version: a new store gets the current one, an older one is migrated in place (src/store/migrations.ts).
    try {
      await migrateStore(this.kv, opts.location ?? 'this data directory', opts);
    } catch (err) {
      await this.kv.close();
      throw err;
    }
    await this.recover(opts);
    this.opened = true;
  }

  async close(): Promise<void> {
    if (!this.opened) return;
    this.opened = false;
    await Promise.allSettled(this.pendingMaps.values());
    await this.ingestHasher.close();
    await this.kv.close();
  }

  /** Brings records and files back into agreement after a crash. */
  private async recover(opts: IoOptions): Promise<void> {
    // Upload sessions: the record's offset is what was durable; trim or shorten to agree with the file.
    const recorded = new Set<string>();
    for await (const [key, session] of this.kv.entries<UploadSession>(keys.uploadPrefix())) {
      checkAbort(opts.signal);
      recorded.add(session.id);
      const size = await this.bytes.sessionSize(session.id);
      if (size === undefined) await this.kv.batch([{ type: 'del', key }]);
      else if (size > session.offset) await this.bytes.sessionTruncate(session.id, session.offset);
      else if (size < session.offset) await this.kv.batch([{ type: 'put', key, value: { ...session, offset: size } }]);
    }
    for (const id of await this.bytes.sessionList()) if (!recorded.has(id)) await this.bytes.sessionRemove(id);
    // Files are renamed into place before their records are written, and records are removed before their files.
    // So a file without a record was never acknowledged, or its removal was: delete it. A record whose file is
    // gone (lost by the file system) is dropped together with everything that names the digest.
    const files = new Map((await this.bytes.list()).map((b) => [b.digest, b.size]));
    let blobs = 0;
    let bytes = 0;
    const lost: string[] = [];
    for await (const [key, rec] of this.kv.entries<BlobRecord>(keys.blobPrefix())) {
      checkAbort(opts.signal);
      const digest = key.slice(keys.blobPrefix().length);
      const size = files.get(digest);
      files.delete(digest);
      if (size === undefined || size !== rec.size) lost.push(digest);
      else {
        blobs++;
        bytes += rec.size;
      }
    }
    this.totals = { blobs, bytes };
    for (const digest of files.keys()) await this.bytes.remove(digest);
    for (const digest of lost) {
      const rec = await this.kv.get<BlobRecord>(keys.blob(digest));
      // Counted out of totals already: removeLocked subtracts, so add back first.
      if (rec) {
        this.totals.blobs++;
        this.totals.bytes += rec.size;
      }
      await this.removeLocked(digest, 'missing');
    }
    this.recovered = { orphanFiles: files.size, lostRecords: lost.length };
  }

  /** What the last open() repaired: files without records deleted, records without (whole) files dropped. */
  recovered = { orphanFiles: 0, lostRecords: 0 };

  async stats(): Promise<StoreStats> {
    return { ...this.totals };
  }

  async listContent(): Promise<BlobInfo[]> {
    const out: BlobInfo[] = [];
    for await (const [key, rec] of this.kv.entries<BlobRecord>(keys.blobPrefix())) out.push({ digest: key.slice(keys.blobPrefix().length), size: rec.size });
    return out;
  }

  async listEntries(opts: IoOptions = {}): Promise<ContentEntry[]> {
    const atimes = new Map<string, number>();
    for await (const [key, at] of this.kv.entries<number>(keys.atimePrefix())) atimes.set(key.slice(keys.atimePrefix().length), at);
    const out: ContentEntry[] = [];
    for await (const [key, rec] of this.kv.entries<BlobRecord>(keys.blobPrefix())) {
      checkAbort(opts.signal);
      const digest = key.slice(keys.blobPrefix().length);
      const accessed = Math.max(rec.created, atimes.get(digest) ?? 0, this.atimes.get(digest) ?? 0);
      out.push({ digest, size: rec.size, created: rec.created, accessed });
    }
    return out;
  }

  async listLinks(opts: IoOptions = {}): Promise<LinkEntry[]> {
    const out: LinkEntry[] = [];
    for await (const [key, rec] of this.kv.entries<LinkRecord>(keys.linkAll())) {
      checkAbort(opts.signal);
      const [repository, digest] = keyParts(key) as [string, string];
      out.push({ repository, digest, size: rec.size, created: rec.created ?? 0 });
    }
    return out;
  }

  async listManifests(opts: IoOptions = {}): Promise<ManifestEntry[]> {
    const out: ManifestEntry[] = [];
    for await (const [key, rec] of this.kv.entries<ManifestRecord>(keys.manifestAll())) {
      checkAbort(opts.signal);
      out.push({ ...rec, repository: keyParts(key)[0]! });
    }
    return out;
  }

  async listAllTags(opts: IoOptions = {}): Promise<TagEntry[]> {
    const out: TagEntry[] = [];
    for await (const [key, rec] of this.kv.entries<TagRecord>(keys.tagAll())) {
      checkAbort(opts.signal);
      const [repository, tag] = keyParts(key) as [string, string];
      out.push({ repository, tag, digest: rec.digest, updated: rec.updated });
    }
    return out;
  }

  inUse(digest: string): boolean {
    return (this.readers.get(digest) ?? 0) > 0 || this.referenced.has(digest);
  }

  openSweepGuard(): SweepGuard {
    const guard = new Guard((g) => this.guards.delete(g));
    // A manifest put under way checked its references before this guard existed, and its record may come after the
    // collection has listed manifests: what it refers to is kept as if it had been touched now.
    for (const d of this.referenced.keys()) guard.touched.add(d);
    this.guards.add(guard);
    return guard;
  }

  /** Notes digests that a write refers to, for every sweep under way, and refreshes their access time. */
  private touch(digests: Iterable<string>): void {
    const now = Date.now();
    for (const d of digests) {
      for (const g of this.guards) g.touched.add(d);
      this.atimes.set(d, now);
    }
  }

  /** Records a new blob's chunk map once the hashing thread has it; until then chunkMap() waits for it. */
  private recordChunkMap(digest: string, map: Promise<ChunkMap>): void {
    const recording: Promise<void> = map
      .then((m) => this.putWhileStored(digest, keys.chunks(digest), m, { ifAbsent: true }))
      // Without it, the map is computed from the stored bytes when a peer asks (chunkMap).
      .catch(() => undefined)
      .finally(() => {
        if (this.pendingMaps.get(digest) === recording) this.pendingMaps.delete(digest);
      });
    this.pendingMaps.set(digest, recording);
  }

  async chunkMap(digest: string, opts: IoOptions = {}): Promise<ChunkMap | undefined> {
    await this.pendingMaps.get(digest);
    const rec = await this.kv.get<BlobRecord>(keys.blob(digest));
    if (!rec) return undefined;
    const map = await this.kv.get<ChunkMap>(keys.chunks(digest));
    if (map && map.size === rec.size) return map;
    // No map recorded (content pushed by a client, or stored before maps were kept): vouch by re-hashing it all.
    const checked = await this.hashStored(digest, opts);
    if (checked === 'missing') return undefined;
    if (checked === 'corrupt') {
      await this.removeContent(digest, 'corrupt');
      return undefined;
    }
    await this.putWhileStored(digest, keys.chunks(digest), checked);
    return checked;
  }

  /**
   * Writes a record about a blob (chunk map, access time) only while the blob is stored, under its lock: a removal
   * that came meanwhile (an eviction during a scrub's hash, a delete during a read) leaves no record behind.
   */
  private async putWhileStored(digest: string, key: string, value: unknown, opts: { ifAbsent?: boolean } = {}): Promise<void> {
    await this.digestLocks.run(digest, async () => {
      if (!(await this.kv.get(keys.blob(digest)))) return;
      if (opts.ifAbsent && (await this.kv.get(key)) !== undefined) return;
      await this.kv.batch([{ type: 'put', key, value }], { sync: false });
    });
  }

  async verifyContent(digest: string, opts: IoOptions = {}): Promise<VerifyOutcome> {
    const checked = await this.hashStored(digest, opts);
    if (checked === 'missing') return 'missing';
    if (checked === 'corrupt') {
      await this.removeContent(digest, 'corrupt');
      return 'corrupt';
    }
    await this.putWhileStored(digest, keys.chunks(digest), checked, { ifAbsent: true });
    return 'ok';
  }

  /** Reads a stored blob whole: its chunk map when the bytes match the digest and the recorded size. */
  private async hashStored(digest: string, opts: IoOptions): Promise<ChunkMap | 'corrupt' | 'missing'> {
    const rec = await this.kv.get<BlobRecord>(keys.blob(digest));
    if (!rec) return 'missing';
    const parsed = Digest.parse(digest);
    const hasher = new DigestHasher(parsed.algorithm);
    const chunks = new ChunkHasher();
    let stream: Readable;
    try {
      stream = await this.bytes.read(digest);
    } catch {
      return 'corrupt';
    }
    for await (const piece of stream) {
      if (opts.signal?.aborted) {
        stream.destroy();
        throw new AbortedError();
      }
      hasher.update(piece as Uint8Array);
      chunks.update(piece as Uint8Array);
    }
    if (hasher.size !== rec.size || hasher.digest().toString() !== digest) return 'corrupt';
    return chunks.map();
  }

  async removeContent(digest: string, reason: RemovalReason, opts: IoOptions & { onlyIf?: (entry: ContentEntry) => boolean } = {}): Promise<boolean> {
    return this.digestLocks.run(digest, async () => {
      checkAbort(opts.signal);
      const rec = await this.kv.get<BlobRecord>(keys.blob(digest));
      if (!rec) return false;
      if (opts.onlyIf) {
        const at = Math.max(rec.created, (await this.kv.get<number>(keys.atime(digest))) ?? 0, this.atimes.get(digest) ?? 0);
        if (!opts.onlyIf({ digest, size: rec.size, created: rec.created, accessed: at })) return false;
      }
      await this.removeLocked(digest, reason);
      return true;
    });
  }

  /** Removes the bytes of `digest` and every record naming them: records first (synced), then the file. */
  private async removeLocked(digest: string, reason: RemovalReason, extra: KvOp[] = []): Promise<void> {
    this.removals++;
    this.removing++;
    try {
      const rec = await this.kv.get<BlobRecord>(keys.blob(digest));
      const ops: KvOp[] = [...extra, { type: 'del', key: keys.blob(digest) }, { type: 'del', key: keys.atime(digest) }, { type: 'del', key: keys.chunks(digest) }];
      for await (const [key] of this.kv.entries(keys.holderPrefix(digest))) {
        const repository = lastPart(key);
        ops.push({ type: 'del', key }, { type: 'del', key: keys.link(repository, digest) });
        const manifest = await this.kv.get<ManifestRecord>(keys.manifest(repository, digest));
        if (manifest) ops.push(...(await this.manifestRemovalOps(repository, manifest)));
      }
      await this.kv.batch(ops);
      crashPoint(`${reason}:records`);
      await this.bytes.remove(digest);
      crashPoint(`${reason}:unlinked`);
      this.atimes.delete(digest);
      this.forgetSmall(digest);
      if (rec) {
        this.totals.blobs--;
        this.totals.bytes -= rec.size;
        this.emit({ type: 'removed', digest, size: rec.size, reason });
      }
    } finally {
      this.removing--;
    }
  }

  /** The records of a manifest in a repository: itself, its tags, its referrer entry (not its link). */
  private async manifestRemovalOps(repository: string, record: ManifestRecord): Promise<KvOp[]> {
    const ops: KvOp[] = [{ type: 'del', key: keys.manifest(repository, record.digest) }];
    for await (const [key, value] of this.kv.entries<TagRecord>(keys.tagPrefix(repository))) {
      if (value.digest === record.digest) ops.push({ type: 'del', key });
    }
    if (record.subject) ops.push({ type: 'del', key: keys.referrer(repository, record.subject, record.digest) });
    return ops;
  }

  async sweepLink(repository: string, digest: string, guard: SweepGuard, opts: IoOptions & { olderThan?: number } = {}): Promise<boolean> {
    return this.digestLocks.run(digest, async () => {
      checkAbort(opts.signal);
      if (guard.touched.has(digest) || this.inUse(digest)) return false;
      const link = await this.kv.get<LinkRecord>(keys.link(repository, digest));
      if (!link) return false;
      if (opts.olderThan !== undefined && (link.created ?? 0) > opts.olderThan) return false;
      if (await this.kv.get(keys.manifest(repository, digest))) return false;
      await this.unlink(repository, digest, [], 'collected');
      return true;
    });
  }

  async sweepManifest(repository: string, digest: string, guard: SweepGuard, opts: IoOptions & { olderThan?: number } = {}): Promise<boolean> {
    return this.digestLocks.run(digest, async () => {
      checkAbort(opts.signal);
      if (guard.touched.has(digest) || this.inUse(digest)) return false;
      const record = await this.getManifest(repository, digest);
      if (!record) return false;
      if (opts.olderThan !== undefined && record.created > opts.olderThan) return false;
      const ops = await this.manifestRemovalOps(repository, record);
      // A tag set since the mark makes it live again.
      if (ops.some((o) => o.key.startsWith(keys.tagPrefix(repository)))) return false;
      await this.unlink(repository, digest, ops, 'collected');
      return true;
    });
  }

  async expireUploads(olderThan: number, opts: IoOptions = {}): Promise<UploadSession[]> {
    const expired: UploadSession[] = [];
    for (const session of await this.listUploads()) {
      checkAbort(opts.signal);
      if (session.updated > olderThan) continue;
      await this.uploadLocks.run(session.id, async () => {
        const current = await this.kv.get<UploadSession>(keys.upload(session.id));
        if (!current || current.updated > olderThan) return;
        await this.kv.batch([{ type: 'del', key: keys.upload(session.id) }]);
        await this.bytes.sessionRemove(session.id);
        this.hashers.delete(session.id);
        expired.push(current);
      });
    }
    return expired;
  }

  watch(listener: (event: ContentEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(event: ContentEvent): void {
    for (const l of this.listeners) {
      try {
        l(event);
      } catch {
        // a listener's failure is its own business
      }
    }
  }

  // ---- blobs -------------------------------------------------------------------------------------

  async statContent(digest: string): Promise<BlobInfo | undefined> {
    const rec = await this.kv.get<BlobRecord>(keys.blob(digest));
    return rec ? { digest, size: rec.size } : undefined;
  }

  async statBlob(repository: string, digest: string): Promise<BlobInfo | undefined> {
    if (!(await this.kv.get(keys.link(repository, digest)))) return undefined;
    return this.statContent(digest);
  }

  async readContent(digest: string, range?: ByteRange, opts?: IoOptions & { touch?: boolean }): Promise<Readable> {
    // Callers have just looked the blob up; the bytes say NOT_FOUND themselves, so the hot path reads no record.
    const stream = await this.bytes.read(digest, range);
    // While it is open the blob is in use: eviction and collection leave it alone.
    this.readers.set(digest, (this.readers.get(digest) ?? 0) + 1);
    stream.once('close', () => {
      const n = (this.readers.get(digest) ?? 1) - 1;
      if (n <= 0) this.readers.delete(digest);
      else this.readers.set(digest, n);
    });
    if (opts?.touch === false) return stream;
    await this.noteRead(digest);
    return stream;
  }

  async readSmallContent(digest: string, opts: IoOptions = {}): Promise<Buffer> {
    const held = this.small.get(digest);
    if (held) {
      this.small.delete(digest);
      this.small.set(digest, held);
      await this.noteRead(digest);
      return held;
    }
    const quiet = this.removing === 0;
    const epoch = this.removals;
    const bytes = await buffer(await this.readContent(digest, undefined, opts));
    if (bytes.length <= SMALL_CONTENT_MAX && quiet && this.removals === epoch) {
      this.small.set(digest, bytes);
      this.smallBytes += bytes.length;
      for (const [d, b] of this.small) {
        if (this.smallBytes <= SMALL_CACHE_BYTES) break;
        this.small.delete(d);
        this.smallBytes -= b.length;
      }
    }
    return bytes;
  }

  private forgetSmall(digest: string): void {
    const b = this.small.get(digest);
    if (!b) return;
    this.small.delete(digest);
    this.smallBytes -= b.length;
  }

  /** A read is a use: the access time eviction goes by (written at most once per ATIME_RESOLUTION_MS). */
  private async noteRead(digest: string): Promise<void> {
    const now = Date.now();
    const last = this.atimes.get(digest) ?? 0;
    this.atimes.set(digest, now);
    if (now - last > ATIME_RESOLUTION_MS) {
      // A full disk must not stop reads: the access time is a hint and waits for the next read.
      await this.putWhileStored(digest, keys.atime(digest), now).catch((err: unknown) => {
        if (!diskFullCode(err)) throw err;
      });
    }
  }

  /** Records for a blob that now has bytes in place, linked into `repository`. */
  private async linkOps(repository: string, info: BlobInfo): Promise<KvOp[]> {
    const ops: KvOp[] = [];
    if (!(await this.kv.get(keys.blob(info.digest)))) {
      ops.push({ type: 'put', key: keys.blob(info.digest), value: { size: info.size, created: Date.now() } satisfies BlobRecord });
    }
    if (!(await this.kv.get(keys.repo(repository)))) ops.push({ type: 'put', key: keys.repo(repository), value: { created: Date.now() } });
    ops.push({ type: 'put', key: keys.link(repository, info.digest), value: { size: info.size, created: Date.now() } satisfies LinkRecord });
    ops.push({ type: 'put', key: keys.holder(info.digest, repository), value: 1 });
    return ops;
  }

  /** Writes a link's records; true when they brought the blob into the store (it was not there). */
  private async applyLink(ops: KvOp[], info: BlobInfo): Promise<boolean> {
    const isNew = ops.some((o) => o.type === 'put' && o.key === keys.blob(info.digest));
    this.touch([info.digest]);
    await this.kv.batch(ops);
    if (isNew) {
      this.totals.blobs++;
      this.totals.bytes += info.size;
      this.emit({ type: 'added', digest: info.digest, size: info.size });
    }
    return isNew;
  }

  async openIngest(): Promise<Ingest> {
    const file = await this.bytes.ingest();
    // A file on disk is hashed on the hashing thread as it is written; bytes in memory (tests) on this one.
    let job: HashJob = inlineHashJob();
    if (file.path) {
      try {
        job = this.ingestHasher.track(file.path);
      } catch {
        // the store is closing: this thread hashes
      }
    }
    let size = 0;
    let open = true;
    let done = false;
    const finish = async (): Promise<void> => {
      if (done) return;
      done = true;
      open = false;
      await job.drop();
      await file.discard();
    };
    /**
     * The sha256 and chunk map of what was written; when the hashing thread failed, this thread hashes the file.
     * Once asked for, no more bytes may come.
     */
    let hashing: Promise<{ digest: string; chunks: Promise<ChunkMap> }> | undefined;
    const hashed = (): Promise<{ digest: string; chunks: Promise<ChunkMap> }> => (hashing ??= hashAll());
    const hashAll = async (): Promise<{ digest: string; chunks: Promise<ChunkMap> }> => {
      let h: IngestHash;
      try {
        h = await job.finish(size);
      } catch {
        const again = inlineHashJob();
        let offset = 0;
        if (size > 0) {
          for await (const c of await file.read({ start: 0, end: size - 1 })) {
            again.appended(c as Uint8Array, offset);
            offset += (c as Uint8Array).length;
          }
        }
        h = await again.finish(size);
      }
      const chunks = h.chunks.then((list) => ({ size, chunks: list }));
      chunks.catch(() => undefined);
      return { digest: `sha256:${h.digest}`, chunks };
    };
    const ingest: Ingest = {
      get size() {
        return size;
      },
      append: async (chunk, opts = {}) => {
        checkAbort(opts.signal);
        if (!open || hashing) throw new ShoalError('INTERNAL', 'write to a blob that is already committed, aborted or hashed');
        await file.append(chunk);
        job.appended(chunk, size, opts.chunkHash);
        size += byteLength(chunk);
      },
      read: (range) => file.read(range),
      sha256: async (opts = {}) => {
        checkAbort(opts.signal);
        if (!open) throw new ShoalError('INTERNAL', 'digest of a blob that is already committed or aborted');
        return (await hashed()).digest;
      },
      commit: async (repository, expect, opts = {}) => {
        checkAbort(opts.signal);
        if (!open) throw new ShoalError('INTERNAL', 'commit of a blob that is already committed or aborted');
        open = false;
        const { digest: sha256, chunks } = await hashed();
        let actual = sha256;
        if (expect.digest && Digest.parse(expect.digest).algorithm !== 'sha256') {
          const other = new DigestHasher(Digest.parse(expect.digest).algorithm);
          for await (const c of await file.read({ start: 0, end: size - 1 })) other.update(c as Uint8Array);
          actual = other.digest().toString();
        }
        try {
          if (expect.size !== undefined && size !== expect.size) {
            throw new InvalidError('SIZE_INVALID', `content is ${size} bytes, expected ${expect.size}; nothing was stored`, { expected: expect.size, actual: size });
          }
          if (expect.digest && actual !== expect.digest) {
            throw new DigestMismatchError(expect.digest, actual, `content has digest ${actual}, not ${expect.digest}; nothing was stored`);
          }
        } catch (err) {
          await finish();
          throw err;
        }
        const info: BlobInfo = { digest: actual, size };
        done = true;
        return this.digestLocks.run(info.digest, async () => {
          try {
            if ((await this.bytes.size(info.digest)) === undefined) {
              await file.commit(info.digest);
              crashPoint('commit:file');
            } else await file.discard();
          } catch (err) {
            await file.discard();
            throw err;
          }
          const isNew = await this.applyLink(await this.linkOps(repository, info), info);
          // The chunk map comes from the bytes just verified against the digest: this node can vouch for it. The
          // hashing thread gives it after the digest, so it is recorded when it comes (chunkMap waits for it).
          if (isNew && Digest.parse(info.digest).algorithm === 'sha256') this.recordChunkMap(info.digest, chunks);
          crashPoint('commit:records');
          return info;
        });
      },
      abort: finish,
    };
    return ingest;
  }

  async writeBlob(repository: string, source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, expect: WriteExpectation, opts: IoOptions = {}): Promise<BlobInfo> {
    const ingest = await this.openIngest();
    try {
      for await (const chunk of source) {
        await ingest.append(chunk, opts);
        if (expect.size !== undefined && ingest.size > expect.size) {
          throw new InvalidError('SIZE_INVALID', `content is larger than the expected ${expect.size} bytes; nothing was stored`);
        }
      }
      return await ingest.commit(repository, expect, opts);
    } catch (err) {
      await ingest.abort();
      throw err;
    }
  }

  async mountBlob(repository: string, digest: string, from: string | undefined): Promise<BlobInfo | undefined> {
    return this.digestLocks.run(digest, async () => {
      const info = from ? await this.statBlob(from, digest) : await this.statContent(digest);
      if (!info) return undefined;
      await this.applyLink(await this.linkOps(repository, info), info);
      return info;
    });
  }

  async deleteBlob(repository: string, digest: string): Promise<void> {
    await this.digestLocks.run(digest, async () => {
      if (!(await this.kv.get(keys.link(repository, digest)))) {
        throw new NotFoundError('BLOB_UNKNOWN', `blob ${digest} is not in repository ${repository}`, { digest });
      }
      // Its bytes are a manifest's: removing them alone would leave the manifest (and its tags) naming nothing.
      if (await this.kv.get(keys.manifest(repository, digest))) {
        throw new UnsupportedError(`${digest} is a manifest of repository ${repository}, not a blob: delete it with DELETE /v2/${repository}/manifests/${digest}`, { digest });
      }
      await this.unlink(repository, digest);
    });
  }

  /** Removes a repository's link; removes the bytes when nothing links them. Caller holds the digest lock. */
  private async unlink(repository: string, digest: string, extra: KvOp[] = [], reason: RemovalReason = 'deleted'): Promise<void> {
    const ops: KvOp[] = [...extra, { type: 'del', key: keys.link(repository, digest) }, { type: 'del', key: keys.holder(digest, repository) }];
    let others = 0;
    for await (const [key] of this.kv.entries(keys.holderPrefix(digest))) if (lastPart(key) !== repository) others++;
    if (others === 0) await this.removeLocked(digest, reason, ops);
    else {
      await this.kv.batch(ops);
      crashPoint(`${reason}:records`);
    }
  }

  // ---- uploads -----------------------------------------------------------------------------------

  async createUpload(repository: string): Promise<UploadSession> {
    const now = Date.now();
    const session: UploadSession = { id: randomUUID(), repository, offset: 0, created: now, updated: now };
    await this.bytes.sessionCreate(session.id);
    await this.kv.batch([{ type: 'put', key: keys.upload(session.id), value: session }]).catch(async (err: unknown) => {
      // No record, no session: its file goes too (a full disk fails here as well).
      await this.bytes.sessionRemove(session.id).catch(() => undefined);
      throw err;
    });
    this.hashers.set(session.id, new DigestHasher('sha256'));
    return session;
  }

  async getUpload(repository: string, id: string): Promise<UploadSession> {
    const session = /^[a-f0-9-]{36}$/.test(id) ? await this.kv.get<UploadSession>(keys.upload(id)) : undefined;
    if (!session || session.repository !== repository) {
      throw new NotFoundError('BLOB_UPLOAD_UNKNOWN', `upload session ${id} is unknown in repository ${repository}; start a new upload`, { id });
    }
    return session;
  }

  /** The session's running hasher, rebuilt from its bytes after a restart. */
  private async hasherFor(session: UploadSession, algorithm = 'sha256'): Promise<DigestHasher> {
    const cached = this.hashers.get(session.id);
    if (cached && cached.size === session.offset && cached.algorithm === algorithm) return cached;
    const hasher = new DigestHasher(algorithm);
    for await (const chunk of await this.bytes.sessionRead(session.id, session.offset)) hasher.update(chunk as Uint8Array);
    if (algorithm === 'sha256') this.hashers.set(session.id, hasher);
    return hasher;
  }

  async appendUpload(repository: string, id: string, source: AsyncIterable<Uint8Array>, opts: AppendOptions = {}): Promise<UploadSession> {
    return this.uploadLocks.run(id, () => this.appendLocked(repository, id, source, opts));
  }

  private async appendLocked(repository: string, id: string, source: AsyncIterable<Uint8Array>, opts: AppendOptions): Promise<UploadSession> {
    const session = await this.getUpload(repository, id);
    if (opts.start !== undefined && opts.start !== session.offset) {
      throw new InvalidError(
        'RANGE_INVALID',
        `chunk starts at byte ${opts.start} but the session has ${session.offset} bytes; send the chunk that starts at ${session.offset}`,
        { offset: session.offset },
      );
    }
    const hasher = await this.hasherFor(session);
    const before = hasher.copy();
    let written = 0;
    let failure: unknown;
    try {
      written = await this.bytes.sessionAppend(id, session.offset, source, (c) => {
        hasher.update(c);
        written += c.length;
        if (opts.length !== undefined && written > opts.length) {
          throw new InvalidError('SIZE_INVALID', `chunk is longer than its declared ${opts.length} bytes`);
        }
      }, opts);
    } catch (err) {
      failure = err;
    }
    const complete = failure === undefined && (opts.length === undefined || written === opts.length);
    if (!complete && (opts.length !== undefined || diskFullCode(failure))) {
      // A chunk with a declared length is all or nothing, so the client can simply send it again. So is one that
      // ran out of disk: its bytes (and a half-written tail) would only keep the disk full.
      await this.bytes.sessionTruncate(id, session.offset);
      this.hashers.set(id, before);
      if (failure) throw failure;
      throw new InvalidError('SIZE_INVALID', `chunk has ${written} bytes but Content-Length said ${opts.length}; the chunk was discarded, send it again`);
    }
    // A streamed upload keeps what arrived, so an interrupted client can ask for the offset and resume.
    const updated: UploadSession = { ...session, offset: session.offset + written, updated: Date.now() };
    await this.kv.batch([{ type: 'put', key: keys.upload(id), value: updated }]);
    if (failure) throw failure;
    return updated;
  }

  async commitUpload(repository: string, id: string, digest: string, opts: IoOptions = {}): Promise<BlobInfo> {
    const expected = Digest.parse(digest);
    return this.uploadLocks.run(id, async () => {
      const session = await this.getUpload(repository, id);
      const hasher = await this.hasherFor(session, expected.algorithm);
      checkAbort(opts.signal);
      const actual = hasher.digest().toString();
      if (actual !== expected.toString()) {
        throw new DigestMismatchError(expected.toString(), actual, `uploaded content has digest ${actual}, not ${expected}; nothing was stored`);
      }
      const info: BlobInfo = { digest: actual, size: session.offset };
      return this.digestLocks.run(actual, async () => {
        const ops = await this.linkOps(repository, info);
        ops.push({ type: 'del', key: keys.upload(id) });
        if ((await this.bytes.size(actual)) === undefined) {
          await this.bytes.sessionCommit(id, actual, session.offset);
          crashPoint('commit:file');
        } else await this.bytes.sessionRemove(id);
        await this.applyLink(ops, info);
        crashPoint('commit:records');
        this.hashers.delete(id);
        return info;
      });
    });
  }

  async deleteUpload(repository: string, id: string): Promise<void> {
    await this.uploadLocks.run(id, async () => {
      await this.getUpload(repository, id);
      await this.kv.batch([{ type: 'del', key: keys.upload(id) }]);
      await this.bytes.sessionRemove(id);
      this.hashers.delete(id);
    });
  }

  async listUploads(): Promise<UploadSession[]> {
    const out: UploadSession[] = [];
    for await (const [, s] of this.kv.entries<UploadSession>(keys.uploadPrefix())) out.push(s);
    return out;
  }

  // ---- manifests, tags, referrers ---------------------------------------------------------------

  async putManifest(input: PutManifestInput, opts: IoOptions = {}): Promise<ManifestRecord> {
    const { repository } = input;
    const info: BlobInfo = { digest: Digest.of(input.bytes).toString(), size: input.bytes.length };
    // Each reference is noted (for sweeps under way, and as in use until the records are written), then checked, under
    // its own lock: a sweep or an eviction either sees the note and keeps it, or removed it before the check and the
    // put fails as it should.
    const missing: string[] = [];
    const refs = [...new Set(input.references ?? [])];
    try {
      for (const ref of refs) {
        await this.digestLocks.run(ref, async () => {
          // In use from now until the records are written: a sweep or an eviction that comes later keeps it.
          this.referenced.set(ref, (this.referenced.get(ref) ?? 0) + 1);
          this.touch([ref]);
          if (!(await this.kv.get(keys.link(repository, ref))) || !(await this.kv.get(keys.blob(ref)))) missing.push(ref);
        });
      }
      return await this.putManifestChecked(input, info, missing, opts);
    } finally {
      for (const ref of refs) {
        const n = (this.referenced.get(ref) ?? 1) - 1;
        if (n <= 0) this.referenced.delete(ref);
        else this.referenced.set(ref, n);
      }
    }
  }

  private async putManifestChecked(input: PutManifestInput, info: BlobInfo, missing: string[], opts: IoOptions): Promise<ManifestRecord> {
    const { repository } = input;
    if (missing.length > 0) {
      throw new InvalidError(
        'MANIFEST_BLOB_UNKNOWN',
        `manifest references ${missing.length} blob(s) or manifest(s) that are not in repository ${repository} (any more); push them again: ${missing.join(', ')}`,
        { digests: missing },
      );
    }
    if (!(await this.statContent(info.digest))) await this.writeBlob(repository, [input.bytes], info, opts);
    return this.digestLocks.run(info.digest, async () => {
      // A delete of the same manifest may have removed the bytes since they were written: write them again.
      if ((await this.bytes.size(info.digest)) === undefined) {
        const file = await this.bytes.ingest();
        try {
          await file.append(input.bytes);
          await file.commit(info.digest);
        } catch (err) {
          await file.discard();
          throw err;
        }
      }
      const record: ManifestRecord = { digest: info.digest, mediaType: input.mediaType, size: info.size, created: Date.now() };
      if (input.subject) record.subject = input.subject;
      if (input.artifactType) record.artifactType = input.artifactType;
      if (input.annotations) record.annotations = input.annotations;
      // A push of the same manifest makes it a pushed one; a fetch never turns a pushed manifest into a cached one.
      if (input.cached) {
        const existing = await this.kv.get<ManifestRecord>(keys.manifest(repository, info.digest));
        if (!existing || existing.cached) record.cached = true;
      }
      const ops = await this.linkOps(repository, info);
      ops.push({ type: 'put', key: keys.manifest(repository, info.digest), value: record });
      if (input.tag) ops.push({ type: 'put', key: keys.tag(repository, input.tag), value: { digest: info.digest, updated: Date.now() } });
      if (input.subject) {
        const ref: ReferrerDescriptor = { mediaType: input.mediaType, digest: info.digest, size: info.size };
        if (input.artifactType) ref.artifactType = input.artifactType;
        if (input.annotations) ref.annotations = input.annotations;
        ops.push({ type: 'put', key: keys.referrer(repository, input.subject, info.digest), value: ref });
      }
      await this.applyLink(ops, info);
      crashPoint('manifest:records');
      return record;
    });
  }

  async getManifest(repository: string, digest: string): Promise<ManifestRecord | undefined> {
    return this.kv.get<ManifestRecord>(keys.manifest(repository, digest));
  }

  async resolveTag(repository: string, tag: string): Promise<string | undefined> {
    return (await this.kv.get<{ digest: string }>(keys.tag(repository, tag)))?.digest;
  }

  async getTag(repository: string, tag: string): Promise<TagRecord | undefined> {
    return this.kv.get<TagRecord>(keys.tag(repository, tag));
  }

  async setTag(repository: string, tag: string, record: TagRecord): Promise<void> {
    await this.digestLocks.run(record.digest, async () => {
      if (!(await this.getManifest(repository, record.digest))) {
        throw new NotFoundError('MANIFEST_UNKNOWN', `manifest ${record.digest} is not in repository ${repository}; it cannot be tagged`, { digest: record.digest });
      }
      this.touch([record.digest]);
      await this.kv.batch([{ type: 'put', key: keys.tag(repository, tag), value: { digest: record.digest, updated: record.updated } }]);
      crashPoint('tag:records');
    });
  }

  async listTags(repository: string): Promise<string[]> {
    const tags: string[] = [];
    for await (const [key] of this.kv.entries(keys.tagPrefix(repository))) tags.push(lastPart(key));
    return tags;
  }

  async deleteManifest(repository: string, digest: string): Promise<void> {
    await this.digestLocks.run(digest, async () => {
      const record = await this.getManifest(repository, digest);
      if (!record) throw new NotFoundError('MANIFEST_UNKNOWN', `manifest ${digest} is not in repository ${repository}`, { digest });
      const ops: KvOp[] = [{ type: 'del', key: keys.manifest(repository, digest) }];
      for await (const [key, value] of this.kv.entries<{ digest: string }>(keys.tagPrefix(repository))) {
        if (value.digest === digest) ops.push({ type: 'del', key });
      }
      if (record.subject) ops.push({ type: 'del', key: keys.referrer(repository, record.subject, digest) });
      // A pin of a deleted manifest would name nothing: the delete, asked for by name, wins.
      ops.push({ type: 'del', key: keys.pin(repository, digest) });
      await this.unlink(repository, digest, ops);
    });
  }

  async deleteTag(repository: string, tag: string): Promise<void> {
    if (!(await this.kv.get(keys.tag(repository, tag)))) {
      throw new NotFoundError('MANIFEST_UNKNOWN', `tag ${tag} is not in repository ${repository}`, { tag });
    }
    await this.kv.batch([{ type: 'del', key: keys.tag(repository, tag) }]);
  }

  async listReferrers(repository: string, subject: string): Promise<ReferrerDescriptor[]> {
    const out: ReferrerDescriptor[] = [];
    for await (const [, d] of this.kv.entries<ReferrerDescriptor>(keys.referrerPrefix(repository, subject))) out.push(d);
    return out;
  }

  async repositoryExists(repository: string): Promise<boolean> {
    return (await this.kv.get(keys.repo(repository))) !== undefined;
  }

  async pinManifest(repository: string, digest: string, reason: string): Promise<void> {
    // Under the digest's lock, so that a delete of the manifest cannot slip between the check and the write.
    await this.digestLocks.run(digest, async () => {
      if (!(await this.getManifest(repository, digest))) {
        throw new NotFoundError('MANIFEST_UNKNOWN', `manifest ${digest} is not in repository ${repository}; it cannot be pinned`, { digest });
      }
      await this.kv.batch([{ type: 'put', key: keys.pin(repository, digest), value: { reason, created: Date.now() } }]);
    });
  }

  async unpinManifest(repository: string, digest: string): Promise<void> {
    await this.kv.batch([{ type: 'del', key: keys.pin(repository, digest) }]);
  }

  async listPins(): Promise<Pin[]> {
    const out: Pin[] = [];
    for await (const [key, value] of this.kv.entries<{ reason: string; created: number }>(keys.pinPrefix())) {
      const rest = key.slice(keys.pinPrefix().length);
      const sep = rest.indexOf('\u0000');
      out.push({ repository: rest.slice(0, sep), digest: rest.slice(sep + 1), reason: value.reason, created: value.created });
    }
    return out;
  }

  async listRepositories(): Promise<string[]> {
    const out: string[] = [];
    for await (const [key] of this.kv.entries(keys.repoPrefix())) out.push(key.slice(keys.repoPrefix().length));
    return out;
  }
}

/** A node's store: LevelDB at `<dir>/db`, blobs under `<dir>/blobs`. */
export async function openDiskStore(dir: string, opts: IoOptions = {}): Promise<KvContentStore> {
  await mkdir(dir, { recursive: true });
  const store = new KvContentStore(new LevelKeyValueStore(join(dir, 'db')), new DiskBlobBytes(dir));
  await store.open({ ...opts, location: dir });
  return store;
}

/** The in-memory twin, for tests. */
export async function openMemoryStore(): Promise<KvContentStore> {
  const store = new KvContentStore(new MemoryKeyValueStore(), new MemoryBlobBytes());
  await store.open();
  return store;
}
