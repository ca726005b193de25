import { createReadStream, type Stats } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { AbortedError, Digest, InvalidError, NotFoundError, pieces, skipBytes, type Bytes } from '../oci/index.ts';
import type { BlobInfo, ByteRange, IoOptions } from './types.ts';

/** Read buffer for blob streams: 1 MiB is ~3x faster than Node's 64 KiB default when serving. */
export const READ_CHUNK = 1024 * 1024;
/**
 * With this many blob reads open at once, further reads use SHARED_READ_CHUNK: large reads make one client fast
 * (a 64 KiB read was about 3x slower than 1 MiB for a single stream), but each open read holds about two of them,
 * and under 50 clients the 1 MiB reads alone held some 100 MiB. Measured (bench single and memory): 8 cost 20
 * clients about half their aggregate; 24 keeps 20 clients at full speed and 50 clients of a 512 MiB blob near
 * 210 MiB RSS. Small reads cost little when that many streams share the cores anyway.
 */
export const LARGE_READS = 24;
export const SHARED_READ_CHUNK = 256 * 1024;
/** An ingest file is flushed to disk behind its writer every this many bytes (see BlobBytes.ingest). */
const SYNC_EVERY = 32 * 1024 * 1024;

/**
 * Where blob bytes live. The disk version keeps one file per digest, written through a temporary file and
 * renamed into place only after the bytes are verified; the memory version is its twin for tests.
 */
/** Bytes on their way into the store. */
export interface IngestFile {
  readonly id: string;
  /** The file the bytes go to, when they go to one (another thread may read it). */
  readonly path?: string;
  append(chunk: Bytes): Promise<void>;
  /** Bytes appended so far, inclusive range. */
  read(range: ByteRange): Promise<Readable>;
  /** Makes the bytes durable and moves them into place as `digest`. */
  commit(digest: string): Promise<void>;
  discard(): Promise<void>;
}

export interface BlobBytes {
  init(opts?: IoOptions): Promise<void>;
  size(digest: string): Promise<number | undefined>;
  read(digest: string, range?: ByteRange): Promise<Readable>;
  /** A new temporary file that becomes a blob only through commit(); invisible until then. */
  ingest(): Promise<IngestFile>;
  remove(digest: string): Promise<void>;
  /** Every digest that has committed bytes. */
  list(): Promise<BlobInfo[]>;

  sessionCreate(id: string): Promise<void>;
  sessionSize(id: string): Promise<number | undefined>;
  /** Appends at `offset`, feeding each chunk to `onChunk`; returns bytes written (partial on error: see rollback). */
  sessionAppend(id: string, offset: number, source: AsyncIterable<Uint8Array>, onChunk: (c: Uint8Array) => void, opts?: IoOptions): Promise<number>;
  sessionTruncate(id: string, size: number): Promise<void>;
  sessionRead(id: string, size: number): Promise<Readable>;
  /** Cuts the session to `size` verified bytes and moves it into place as `digest`. */
  sessionCommit(id: string, digest: string, size: number): Promise<void>;
  sessionRemove(id: string): Promise<void>;
  sessionList(): Promise<string[]>;
}

function checkRange(range: ByteRange | undefined): void {
  if (range && (!Number.isSafeInteger(range.start) || !Number.isSafeInteger(range.end) || range.start < 0 || range.end < range.start)) {
    throw new InvalidError('RANGE_INVALID', `invalid byte range ${range.start}-${range.end}`);
  }
}

function checkAbort(signal?: AbortSignal): void {
  if (signal?.aborted) throw new AbortedError();
}

/** Makes a directory's entries (a rename or an unlink in it) durable. */
async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Creates `dir` (and what is missing above it) durably: each new directory's entry in its parent is synced, so that
 * a power cut cannot take away a directory that holds files already reported durable.
 */
async function mkdirDurably(dir: string): Promise<void> {
  try {
    await stat(dir);
    return;
  } catch {
    // created below
  }
  // Undefined when another write created it meanwhile: its entry is synced here too, as that write may not be done.
  const first = (await mkdir(dir, { recursive: true })) ?? dir;
  for (let d = dir; ; d = dirname(d)) {
    await fsyncDir(dirname(d));
    if (d === first || dirname(d) === d) break;
  }
}

/** Moves a verified file into place durably: the file is synced first; then the new entry, and new directories'. */
async function renameDurably(from: string, dest: string): Promise<void> {
  const dir = dirname(dest);
  await mkdirDurably(dir);
  await rename(from, dest);
  await fsyncDir(dir);
}

/** Writes all of `chunk` (its pieces with one writev when there are several) at `position`; returns its length. */
async function writeAll(fh: FileHandle, chunk: Bytes, position: number): Promise<number> {
  let left = [...pieces(chunk)].filter((p) => p.length > 0);
  let done = 0;
  while (left.length > 0) {
    const { bytesWritten } = left.length === 1 ? await fh.write(left[0]!, 0, left[0]!.length, position + done) : await fh.writev(left, position + done);
    done += bytesWritten;
    left = skipBytes(left, bytesWritten);
  }
  return done;
}

/**
 * Read buffers given back once a response wrote them, so that serving many clients does not allocate a fresh
 * buffer for every read: each such buffer is memory outside the JavaScript heap, and allocating them at the rate
 * bytes are served made the engine run a full collection every few dozen MiB (their cost showed on every core).
 * Bounded: what is not taken back is left to the collector.
 */
export class ReadBufferPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  private readonly max: number;

  constructor(maxPerSize = 32) {
    this.max = maxPerSize;
  }

  take(size: number): Buffer {
    const ab = this.free.get(size)?.pop();
    return ab ? Buffer.from(ab, 0, size) : Buffer.allocUnsafeSlow(size);
  }

  /** Gives back the buffer `chunk` was read into; only a buffer that came from take() is kept. */
  give(chunk: Uint8Array, size: number): void {
    const ab = chunk.buffer;
    if (!(ab instanceof ArrayBuffer) || ab.byteLength !== size || chunk.byteOffset !== 0) return;
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    if (list.length < this.max) list.push(ab);
  }
}

/** The method of a stream whose chunks may go back to the buffers they were read into, once written out. */
export const RECYCLE = Symbol('shoal.recycle');

/** A stream with a RECYCLE method: it takes back the chunks it gave (and only those), once nothing refers to them. */
export interface Recycling {
  [RECYCLE](chunk: Uint8Array): void;
}

/** What hands a stream's chunks back to its pool once they are written out; undefined for a stream without one. */
export function recyclerOf(stream: unknown): ((chunk: Uint8Array) => void) | undefined {
  const recycle = (stream as Partial<Recycling> | undefined)?.[RECYCLE];
  return typeof recycle === 'function' ? (chunk) => recycle.call(stream, chunk) : undefined;
}

/**
 * A stored blob's bytes (inclusive range) read into pooled buffers. Whoever has written a chunk out and no longer
 * refers to it may hand it back with `recycle(chunk)`; one never handed back is simply collected.
 */
export class PooledFileReader extends Readable implements Recycling {
  private position: number;
  private readonly end: number;
  private readonly fh: FileHandle;
  private readonly pool: ReadBufferPool;
  private readonly size: number;
  /** The handle is someone else's (an ingest's writer): it stays open when this stream ends. */
  private readonly borrowed: boolean;
  private reading = false;
  /** The chunks this stream pushed: only those exact objects come back to the pool (never a slice of one). */
  private readonly pushed = new WeakSet<Uint8Array>();

  constructor(fh: FileHandle, range: { start: number; end: number }, pool: ReadBufferPool, size: number, opts: { borrowed?: boolean } = {}) {
    super({ highWaterMark: size });
    this.fh = fh;
    this.borrowed = opts.borrowed === true;
    this.position = range.start;
    this.end = range.end;
    this.pool = pool;
    this.size = size;
  }

  /** Hands back a chunk this stream gave, once nothing refers to it any more (its write is done). */
  [RECYCLE](chunk: Uint8Array): void {
    if (!this.pushed.delete(chunk)) return;
    this.pool.give(chunk, this.size);
  }

  override _read(): void {
    if (this.reading) return;
    if (this.position > this.end) {
      this.push(null);
      return;
    }
    this.reading = true;
    const length = Math.min(this.size, this.end - this.position + 1);
    const buf = this.pool.take(this.size);
    this.fh.read(buf, 0, length, this.position).then(
      ({ bytesRead }) => {
        this.reading = false;
        if (bytesRead === 0) {
          this.pool.give(buf, this.size);
          this.push(null);
          return;
        }
        this.position += bytesRead;
        const chunk = buf.subarray(0, bytesRead);
        this.pushed.add(chunk);
        if (this.push(chunk) && this.position <= this.end) this._read();
      },
      (err: Error) => {
        this.reading = false;
        this.destroy(err);
      },
    );
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    if (this.borrowed) {
      callback(err);
      return;
    }
    this.fh.close().then(
      () => callback(err),
      (closeErr: Error) => callback(err ?? closeErr),
    );
  }
}

export class DiskBlobBytes implements BlobBytes {
  private readonly blobsDir: string;
  private readonly ingestDir: string;
  private readonly uploadsDir: string;
  /** Blob reads open now (see LARGE_READS). */
  private openReads = 0;
  private readonly readBuffers = new ReadBufferPool();
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
    await mkdirDurably(this.blobsDir);
    await mkdirDurably(this.uploadsDir);
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
    checkRange(range);
    const path = this.path(digest);
    const fh = await open(path, 'r').catch(() => {
      throw new NotFoundError('BLOB_UNKNOWN', `blob ${digest} is not in this store`, { digest });
    });
    try {
      const highWaterMark = this.openReads >= LARGE_READS ? SHARED_READ_CHUNK : READ_CHUNK;
      // Without a range it reads to the end of the file (a read that returns nothing ends it).
      const stream = new PooledFileReader(fh, { start: range?.start ?? 0, end: range?.end ?? Number.POSITIVE_INFINITY }, this.readBuffers, highWaterMark);
      this.openReads++;
      stream.once('close', () => this.openReads--);
      return stream;
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  async ingest(): Promise<IngestFile> {
    const id = randomUUID();
    const tmp = join(this.ingestDir, id);
    const fh = await open(tmp, 'wx+');
    let position = 0;
    let closed = false;
    // The file is made durable as it grows, a flush every SYNC_EVERY bytes behind the writer, so that the commit's
    // fsync has only the last bytes left to write: the commit is what the last byte of a pull waits for.
    let synced = 0;
    let syncing: Promise<void> | undefined;
    const close = async (): Promise<void> => {
      if (closed) return;
      closed = true;
      await syncing;
      await fh.close();
    };
    return {
      id,
      path: tmp,
      append: async (chunk) => {
        position += await writeAll(fh, chunk, position);
        if (!syncing && position - synced >= SYNC_EVERY) {
          const upTo = position;
          syncing = fh.datasync().then(
            () => {
              synced = upTo;
              syncing = undefined;
            },
            // A flush that fails leaves the work to the commit's fsync, which reports the error.
            () => {
              syncing = undefined;
            },
          );
        }
      },
      // Reads go through the handle the writer holds: a fetch followed by many clients reads small ranges often.
      read: async (range) => {
        if (range.end < range.start) return Readable.from([]);
        if (closed) throw Object.assign(new Error('the ingest was committed or discarded'), { code: 'ENOENT' });
        // Clients that follow a fetch read what arrived since their last read, often less than a megabyte.
        const size = range.end - range.start + 1 >= READ_CHUNK ? READ_CHUNK : SHARED_READ_CHUNK;
        return new PooledFileReader(fh, range, this.readBuffers, size, { borrowed: true });
      },
      commit: async (digest) => {
        await syncing;
        await fh.sync();
        await close();
        await renameDurably(tmp, this.path(digest));
      },
      discard: async () => {
        await close().catch(() => undefined);
        await unlink(tmp).catch(() => undefined);
      },
    };
  }

  async remove(digest: string): Promise<void> {
    const path = this.path(digest);
    await rm(path, { force: true });
    await fsyncDir(dirname(path)).catch(() => undefined);
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
    await fsyncDir(this.uploadsDir);
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

  async sessionCommit(id: string, digest: string, size: number): Promise<void> {
    await this.sessionTruncate(id, size);
    await renameDurably(this.sessionPath(id), this.path(digest));
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
    checkRange(range);
    const b = this.blobs.get(digest);
    if (!b) throw new NotFoundError('BLOB_UNKNOWN', `blob ${digest} is not in this store`, { digest });
    return Readable.from([range ? b.subarray(range.start, range.end + 1) : b]);
  }
  async ingest(): Promise<IngestFile> {
    let data = Buffer.alloc(0);
    return {
      id: randomUUID(),
      append: async (chunk) => void (data = Buffer.concat([data, ...pieces(chunk)])),
      read: async (range) => Readable.from([data.subarray(range.start, range.end + 1)]),
      commit: async (digest) => void this.blobs.set(digest, data),
      discard: async () => void (data = Buffer.alloc(0)),
    };
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
  async sessionCommit(id: string, digest: string, size: number): Promise<void> {
    this.blobs.set(digest, this.session(id).subarray(0, size));
    this.sessions.delete(id);
  }
  async sessionRemove(id: string): Promise<void> {
    this.sessions.delete(id);
  }
  async sessionList(): Promise<string[]> {
    return [...this.sessions.keys()];
  }
}
