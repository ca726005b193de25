import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { mkdir } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { AbortedError, Digest, DigestHasher, DigestMismatchError, InvalidError, NotFoundError, ShoalError, diskFullCode } from '../oci/index.ts';
import { DiskBlobBytes, MemoryBlobBytes, type BlobBytes } from './bytes.ts';
import { keys, lastPart, SCHEMA_VERSION } from './keys.ts';
import { LevelKeyValueStore, MemoryKeyValueStore, type KeyValueStore, type KvOp } from './kv.ts';
import { KeyedMutex } from './lock.ts';
import type {
  AppendOptions,
  BlobInfo,
  ByteRange,
  ContentEvent,
  ContentStore,
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

/** How often a blob's access time is rewritten at most. */
const ATIME_RESOLUTION_MS = 60_000;

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
  private opened = false;

  constructor(kv: KeyValueStore, bytes: BlobBytes) {
    this.kv = kv;
    this.bytes = bytes;
  }

  async open(opts: IoOptions = {}): Promise<void> {
    await this.kv.open();
    await this.bytes.init(opts);
    const schema = await this.kv.get<string>(keys.schema());
    if (schema === undefined) await this.kv.batch([{ type: 'put', key: keys.schema(), value: SCHEMA_VERSION }]);
    else if (schema !== SCHEMA_VERSION) {
      await this.kv.close();
      throw new ShoalError('INTERNAL', `store schema version ${schema} is not supported by this Shoal (expects ${SCHEMA_VERSION})`);
    }
    await this.recover(opts);
    this.opened = true;
  }

  async close(): Promise<void> {
    if (!this.opened) return;
    this.opened = false;
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
    // Blob files are renamed into place only after verification, so a file without a record is complete:
    // record it. A record whose file vanished is dropped.
    const files = new Map((await this.bytes.list()).map((b) => [b.digest, b.size]));
    const ops: KvOp[] = [];
    let blobs = 0;
    let bytes = 0;
    for await (const [key, rec] of this.kv.entries<BlobRecord>(keys.blobPrefix())) {
      const digest = key.slice(keys.blobPrefix().length);
      const size = files.get(digest);
      if (size === undefined) ops.push({ type: 'del', key });
      else {
        files.delete(digest);
        blobs++;
        bytes += rec.size;
      }
    }
    for (const [digest, size] of files) {
      ops.push({ type: 'put', key: keys.blob(digest), value: { size, created: Date.now() } satisfies BlobRecord });
      blobs++;
      bytes += size;
    }
    await this.kv.batch(ops);
    this.totals = { blobs, bytes };
  }

  async stats(): Promise<StoreStats> {
    return { ...this.totals };
  }

  async listContent(): Promise<BlobInfo[]> {
    const out: BlobInfo[] = [];
    for await (const [key, rec] of this.kv.entries<BlobRecord>(keys.blobPrefix())) out.push({ digest: key.slice(keys.blobPrefix().length), size: rec.size });
    return out;
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

  async readContent(digest: string, range?: ByteRange): Promise<Readable> {
    // Callers have just looked the blob up; the bytes say NOT_FOUND themselves, so the hot path reads no record.
    const stream = await this.bytes.read(digest, range);
    const now = Date.now();
    if (now - (this.atimes.get(digest) ?? 0) > ATIME_RESOLUTION_MS) {
      this.atimes.set(digest, now);
      // A full disk must not stop reads: the access time is a hint and waits for the next read.
      await this.kv.batch([{ type: 'put', key: keys.atime(digest), value: now }]).catch((err: unknown) => {
        if (!diskFullCode(err)) throw err;
      });
    }
    return stream;
  }

  /** Records for a blob that now has bytes in place, linked into `repository`. */
  private async linkOps(repository: string, info: BlobInfo): Promise<KvOp[]> {
    const ops: KvOp[] = [];
    if (!(await this.kv.get(keys.blob(info.digest)))) {
      ops.push({ type: 'put', key: keys.blob(info.digest), value: { size: info.size, created: Date.now() } satisfies BlobRecord });
    }
    if (!(await this.kv.get(keys.repo(repository)))) ops.push({ type: 'put', key: keys.repo(repository), value: { created: Date.now() } });
    ops.push({ type: 'put', key: keys.link(repository, info.digest), value: { size: info.size } });
    ops.push({ type: 'put', key: keys.holder(info.digest, repository), value: 1 });
    return ops;
  }

  private async applyLink(ops: KvOp[], info: BlobInfo): Promise<void> {
    const isNew = ops.some((o) => o.type === 'put' && o.key === keys.blob(info.digest));
    await this.kv.batch(ops);
    if (isNew) {
      this.totals.blobs++;
      this.totals.bytes += info.size;
      this.emit({ type: 'added', digest: info.digest, size: info.size });
    }
  }

  async openIngest(): Promise<Ingest> {
    const file = await this.bytes.ingest();
    let hasher: DigestHasher | undefined = new DigestHasher('sha256');
    let done = false;
    const finish = async (): Promise<void> => {
      if (done) return;
      done = true;
      await file.discard();
    };
    const ingest: Ingest = {
      get size() {
        return hasher?.size ?? 0;
      },
      append: async (chunk, opts = {}) => {
        checkAbort(opts.signal);
        if (done || !hasher) throw new ShoalError('INTERNAL', 'write to a blob that is already committed or aborted');
        await file.append(chunk);
        hasher.update(chunk);
      },
      read: (range) => file.read(range),
      commit: async (repository, expect, opts = {}) => {
        checkAbort(opts.signal);
        if (done || !hasher) throw new ShoalError('INTERNAL', 'commit of a blob that is already committed or aborted');
        const size = hasher.size;
        let actual = hasher.digest().toString();
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
        hasher = undefined;
        done = true;
        return this.digestLocks.run(info.digest, async () => {
          try {
            if ((await this.bytes.size(info.digest)) === undefined) await file.commit(info.digest);
            else await file.discard();
          } catch (err) {
            await file.discard();
            throw err;
          }
          await this.applyLink(await this.linkOps(repository, info), info);
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
      await this.unlink(repository, digest);
    });
  }

  /** Removes a repository's link; removes the bytes when nothing links them. Caller holds the digest lock. */
  private async unlink(repository: string, digest: string, extra: KvOp[] = []): Promise<void> {
    const ops: KvOp[] = [...extra, { type: 'del', key: keys.link(repository, digest) }, { type: 'del', key: keys.holder(digest, repository) }];
    let others = 0;
    for await (const [key] of this.kv.entries(keys.holderPrefix(digest))) if (lastPart(key) !== repository) others++;
    const rec = await this.kv.get<BlobRecord>(keys.blob(digest));
    const removeBytes = others === 0 && rec !== undefined;
    if (removeBytes) ops.push({ type: 'del', key: keys.blob(digest) }, { type: 'del', key: keys.atime(digest) });
    await this.kv.batch(ops);
    if (removeBytes && rec) {
      await this.bytes.remove(digest);
      this.totals.blobs--;
      this.totals.bytes -= rec.size;
      this.atimes.delete(digest);
      this.emit({ type: 'removed', digest, size: rec.size });
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
        if ((await this.bytes.size(actual)) === undefined) await this.bytes.sessionCommit(id, actual, session.offset);
        else await this.bytes.sessionRemove(id);
        await this.applyLink(ops, info);
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
      await this.kv.batch([{ type: 'put', key: keys.tag(repository, tag), value: { digest: record.digest, updated: record.updated } }]);
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
    if (!(await this.getManifest(repository, digest))) {
      throw new NotFoundError('MANIFEST_UNKNOWN', `manifest ${digest} is not in repository ${repository}; it cannot be pinned`, { digest });
    }
    await this.kv.batch([{ type: 'put', key: keys.pin(repository, digest), value: { reason, created: Date.now() } }]);
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
  await store.open(opts);
  return store;
}

/** The in-memory twin, for tests. */
export async function openMemoryStore(): Promise<KvContentStore> {
  const store = new KvContentStore(new MemoryKeyValueStore(), new MemoryBlobBytes());
  await store.open();
  return store;
}
