import { createReadStream, type Stats } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { AbortedError, Digest, DigestHasher, DigestMismatchError, InvalidError, NotFoundError } from '../oci/index.ts';
import type { BlobInfo, ByteRange, IoOptions, WriteExpectation } from './types.ts';

/** Read buffer for blob streams: 1 MiB is ~3x faster than Node's 64 KiB default when serving. */
export const READ_CHUNK = 1024 * 1024;

/**
 * Where blob bytes live. The disk version keeps one file per digest, written through a temporary file and
 * renamed into place only after the bytes are verified; the memory version is its twin for tests.
 */
export interface BlobBytes {
  init(opts?: IoOptions): Promise<void>;
  size(digest: string): Promise<number | undefined>;
  read(digest: string, range?: ByteRange): Promise<Readable>;
  /** Writes and verifies a whole blob; returns what it verified. Nothing is visible unless it matches. */
  write(source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, expect: WriteExpectation, opts?: IoOptions): Promise<BlobInfo>;
  remove(digest: string): Promise<void>;
  /** Every digest that has committed bytes. */
  list(): Promise<BlobInfo[]>;

  sessionCreate(id: string): Promise<void>;
  sessionSize(id: string): Promise<number | undefined>;
  /** Appends at `offset`, feeding each chunk to `onChunk`; returns bytes written (partial on error: see rollback). */
  sessionAppend(id: string, offset: number, source: AsyncIterable<Uint8Array>, onChunk: (c: Uint8Array) => void, opts?: IoOptions): Promise<number>;
  sessionTruncate(id: string, size: number): Promise<void>;
  sessionRead(id: string, size: number): Promise<Readable>;
  /** Moves a verified session into place as `digest`. */
  sessionCommit(id: string, digest: string): Promise<void>;
  sessionRemove(id: string): Promise<void>;
  sessionList(): Promise<string[]>;
}

function checkAbort(signal?: AbortSignal): void {
  if (signal?.aborted) throw new AbortedError();
}

/** Hashes `source` while handing each chunk to `sink`; verifies against `expect` at the end. */
async function verifiedCopy(
  source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  expect: WriteExpectation,
  sink: (chunk: Uint8Array) => Promise<void> | void,
  signal?: AbortSignal,
): Promise<BlobInfo> {
  const algorithm = expect.digest ? Digest.parse(expect.digest).algorithm : 'sha256';
  const hasher = new DigestHasher(algorithm);
  for await (const chunk of source) {
    checkAbort(signal);
    hasher.update(chunk);
    if (expect.size !== undefined && hasher.size > expect.size) {
      throw new InvalidError('SIZE_INVALID', `content is larger than the expected ${expect.size} bytes`);
    }
    await sink(chunk);
  }
  if (expect.size !== undefined && hasher.size !== expect.size) {
    throw new InvalidError('SIZE_INVALID', `content is ${hasher.size} bytes, expected ${expect.size}`);
  }
  const actual = hasher.digest().toString();
  if (expect.digest && actual !== expect.digest) throw new DigestMismatchError(expect.digest, actual);
  return { digest: actual, size: hasher.size };
}

async function writeAll(fh: FileHandle, chunk: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < chunk.length) {
    const { bytesWritten } = await fh.write(chunk, done, chunk.length - done, position + done);
    done += bytesWritten;
  }
}

export class DiskBlobBytes implements BlobBytes {
  private readonly blobsDir: string;
  private readonly ingestDir: string;
  private readonly uploadsDir: string;
  constructor(root: string) {
    this.blobsDir = join(root, 'blobs');
    this.ingestDir = join(root, 'ingest');
    this.uploadsDir = join(root, 'uploads');
  }

  private path(digest: string): string {
    const d = Digest.parse(digest);
    return join(this.blobsDir, d.algorithm, d.hex.slice(0, 2), d.hex);
  }
  private sessionPath(id: string): string {
    if (!/^[a-f0-9-]{36}$/.test(id)) throw new NotFoundError('BLOB_UPLOAD_UNKNOWN', 'unknown upload session');
    return join(this.uploadsDir, id);
  }

  async init(): Promise<void> {
    await mkdir(this.blobsDir, { recursive: true });
    await mkdir(this.uploadsDir, { recursive: true });
    // Leftover ingest files are writes a crash interrupted: never visible, never resumable. Remove them.
    await rm(this.ingestDir, { recursive: true, force: true });
    await mkdir(this.ingestDir, { recursive: true });
  }

  async size(digest: string): Promise<number | undefined> {
    let st: Stats;
    try {
      st = await stat(this.path(digest));
    } catch {
      return undefined;
    }
    return st.size;
  }

  async read(digest: string, range?: ByteRange): Promise<Readable> {
    const path = this.path(digest);
    const fh = await open(path, 'r').catch(() => {
      throw new NotFoundError('BLOB_UNKNOWN', `blob ${digest} is not in this store`, { digest });
    });
    return fh.createReadStream({ start: range?.start, end: range?.end, highWaterMark: READ_CHUNK, autoClose: true });
  }

  async write(source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, expect: WriteExpectation, opts: IoOptions = {}): Promise<BlobInfo> {
    const tmp = join(this.ingestDir, randomUUID());
    const fh = await open(tmp, 'wx');
    let position = 0;
    try {
      const info = await verifiedCopy(
        source,
        expect,
        async (chunk) => {
          await writeAll(fh, chunk, position);
          position += chunk.length;
        },
        opts.signal,
      );
      await fh.sync();
      await fh.close();
      const dest = this.path(info.digest);
      await mkdir(join(dest, '..'), { recursive: true });
      await rename(tmp, dest);
      return info;
    } catch (err) {
      await fh.close().catch(() => undefined);
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
  }

  async remove(digest: string): Promise<void> {
    await rm(this.path(digest), { force: true });
  }

  async list(): Promise<BlobInfo[]> {
    const out: BlobInfo[] = [];
    for (const algorithm of await readdir(this.blobsDir).catch(() => [] as string[])) {
      for (const prefix of await readdir(join(this.blobsDir, algorithm)).catch(() => [] as string[])) {
        for (const hex of await readdir(join(this.blobsDir, algorithm, prefix)).catch(() => [] as string[])) {
          const digest = `${algorithm}:${hex}`;
          if (!Digest.isValid(digest)) continue;
          const st = await stat(join(this.blobsDir, algorithm, prefix, hex)).catch(() => undefined);
          if (st?.isFile()) out.push({ digest, size: st.size });
        }
      }
    }
    return out;
  }

  async sessionCreate(id: string): Promise<void> {
    const fh = await open(this.sessionPath(id), 'wx');
    await fh.close();
  }

  async sessionSize(id: string): Promise<number | undefined> {
    const st = await stat(this.sessionPath(id)).catch(() => undefined);
    return st?.size;
  }

  async sessionAppend(id: string, offset: number, source: AsyncIterable<Uint8Array>, onChunk: (c: Uint8Array) => void, opts: IoOptions = {}): Promise<number> {
    const fh = await open(this.sessionPath(id), 'r+');
    let written = 0;
    try {
      for await (const chunk of source) {
        checkAbort(opts.signal);
        await writeAll(fh, chunk, offset + written);
        written += chunk.length;
        onChunk(chunk);
      }
    } finally {
      // Whatever was written is made durable before the session's offset says so.
      await fh.sync().catch(() => undefined);
      await fh.close();
    }
    return written;
  }

  async sessionTruncate(id: string, size: number): Promise<void> {
    const fh = await open(this.sessionPath(id), 'r+');
    try {
      await fh.truncate(size);
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  async sessionRead(id: string, size: number): Promise<Readable> {
    if (size === 0) return Readable.from([]);
    return createReadStream(this.sessionPath(id), { start: 0, end: size - 1, highWaterMark: READ_CHUNK });
  }

  async sessionCommit(id: string, digest: string): Promise<void> {
    const dest = this.path(digest);
    await mkdir(join(dest, '..'), { recursive: true });
    await rename(this.sessionPath(id), dest);
  }

  async sessionRemove(id: string): Promise<void> {
    await rm(this.sessionPath(id), { force: true });
  }

  async sessionList(): Promise<string[]> {
    return (await readdir(this.uploadsDir).catch(() => [] as string[])).filter((n) => /^[a-f0-9-]{36}$/.test(n));
  }
}

/** In-memory twin of DiskBlobBytes. */
export class MemoryBlobBytes implements BlobBytes {
  private readonly blobs = new Map<string, Buffer>();
  private readonly sessions = new Map<string, Buffer>();

  async init(): Promise<void> {}
  async size(digest: string): Promise<number | undefined> {
    return this.blobs.get(Digest.parse(digest).toString())?.length;
  }
  async read(digest: string, range?: ByteRange): Promise<Readable> {
    const b = this.blobs.get(digest);
    if (!b) throw new NotFoundError('BLOB_UNKNOWN', `blob ${digest} is not in this store`, { digest });
    return Readable.from([range ? b.subarray(range.start, range.end + 1) : b]);
  }
  async write(source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, expect: WriteExpectation, opts: IoOptions = {}): Promise<BlobInfo> {
    const parts: Uint8Array[] = [];
    const info = await verifiedCopy(source, expect, (c) => void parts.push(c), opts.signal);
    this.blobs.set(info.digest, Buffer.concat(parts));
    return info;
  }
  async remove(digest: string): Promise<void> {
    this.blobs.delete(digest);
  }
  async list(): Promise<BlobInfo[]> {
    return [...this.blobs].map(([digest, b]) => ({ digest, size: b.length }));
  }
  private session(id: string): Buffer {
    const s = this.sessions.get(id);
    if (!s) throw new NotFoundError('BLOB_UPLOAD_UNKNOWN', 'unknown upload session');
    return s;
  }
  async sessionCreate(id: string): Promise<void> {
    this.sessions.set(id, Buffer.alloc(0));
  }
  async sessionSize(id: string): Promise<number | undefined> {
    return this.sessions.get(id)?.length;
  }
  async sessionAppend(id: string, offset: number, source: AsyncIterable<Uint8Array>, onChunk: (c: Uint8Array) => void, opts: IoOptions = {}): Promise<number> {
    let written = 0;
    try {
      for await (const chunk of source) {
        checkAbort(opts.signal);
        this.sessions.set(id, Buffer.concat([this.session(id).subarray(0, offset + written), chunk]));
        written += chunk.length;
        onChunk(chunk);
      }
    } finally {
      // nothing to flush in memory
    }
    return written;
  }
  async sessionTruncate(id: string, size: number): Promise<void> {
    this.sessions.set(id, this.session(id).subarray(0, size));
  }
  async sessionRead(id: string, size: number): Promise<Readable> {
    return Readable.from([this.session(id).subarray(0, size)]);
  }
  async sessionCommit(id: string, digest: string): Promise<void> {
    this.blobs.set(digest, this.session(id));
    this.sessions.delete(id);
  }
  async sessionRemove(id: string): Promise<void> {
    this.sessions.delete(id);
  }
  async sessionList(): Promise<string[]> {
    return [...this.sessions.keys()];
  }
}
