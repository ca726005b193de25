import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { byteLength, CHUNK_SIZE, ChunkHasher, isWholeChunk, pieces, type Bytes } from '../oci/index.ts';

/**
 * Hashes blobs being written on a thread of their own. A blob's sha256 and its chunk map cost one pass each over
 * every byte, about 1 ms per MiB each on these machines: on the thread that also receives, decrypts and serves the
 * bytes, they were a third of its work (docs/BENCHMARKS.md). The worker reads each ingest file back behind the
 * writer (the bytes are still in the page cache) and hashes what was written, so the digest a blob is committed
 * under is the digest of the bytes on disk. Nothing is trusted from it that the store would not compute itself:
 * it is the same computation, elsewhere; if the worker fails, the store hashes the file on its own thread.
 */

/** What the worker found for one ingest. */
export interface IngestHash {
  size: number;
  /** sha256 hex of the whole. */
  digest: string;
  /** sha256 hex of every CHUNK_SIZE chunk (the last may be shorter). */
  chunks: string[];
}

/** How an ingest's bytes are hashed: on the hashing thread (IngestHasher.track) or on this one (inlineHashJob). */
export interface HashJob {
  /**
   * `bytes` were appended at `offset` (and are in the file). `knownHash` is the sha256 hex of exactly these bytes
   * when the writer already checked them: a whole chunk is then not hashed again for the chunk map.
   */
  appended(bytes: Bytes, offset: number, knownHash?: string): void;
  /** The hash of the first `size` bytes; rejects when the hashing thread failed. */
  finish(size: number): Promise<IngestHash>;
  /**
   * The ingest is dropped: resolves once the thread closed its handle on the file, so that removing the file frees
   * its space at once (an open handle keeps a deleted file's blocks; a full disk needs them back).
   */
  drop(): Promise<void>;
}

/** Hashing on the calling thread: for bytes that are not in a file, and for a file the hashing thread failed on. */
export function inlineHashJob(): HashJob {
  const digest = createHash('sha256');
  const chunks = new ChunkHasher();
  return {
    appended: (bytes, _offset, knownHash) => {
      for (const piece of pieces(bytes)) digest.update(piece);
      chunks.update(bytes, knownHash);
    },
    finish: async (size) => {
      const map = chunks.map();
      if (map.size !== size) throw new Error(`${map.size} bytes were hashed, not ${size}`);
      return { size, digest: digest.digest('hex'), chunks: map.chunks };
    },
    drop: async () => undefined,
  };
}

// The worker is plain JavaScript given as source, so that it runs the same from the TypeScript sources and from the
// compiled bundle. It reads with a read buffer of its own and never writes.
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const CHUNK = ${CHUNK_SIZE};
const buf = Buffer.allocUnsafe(1024 * 1024);
const jobs = new Map();
function endChunk(job) {
  const index = job.chunks.length;
  if (job.skip) job.chunks.push(job.known.get(index));
  else {
    job.chunks.push(job.chunk.digest('hex'));
    job.chunk = createHash('sha256');
  }
  job.known.delete(index);
  job.inChunk = 0;
}
function advance(job, upTo) {
  while (job.pos < upTo) {
    if (job.inChunk === 0) job.skip = job.known.has(job.chunks.length);
    const want = Math.min(buf.length, upTo - job.pos, CHUNK - job.inChunk);
    const n = fs.readSync(job.fd, buf, 0, want, job.pos);
    if (n === 0) throw new Error('the file holds ' + job.pos + ' bytes, not ' + upTo);
    const piece = n === buf.length ? buf : buf.subarray(0, n);
    job.digest.update(piece);
    if (!job.skip) job.chunk.update(piece);
    job.pos += n;
    job.inChunk += n;
    if (job.inChunk === CHUNK) endChunk(job);
  }
}
function close(id) {
  const job = jobs.get(id);
  if (!job) return;
  jobs.delete(id);
  if (job.fd !== undefined) try { fs.closeSync(job.fd); } catch {}
}
parentPort.on('message', (m) => {
  try {
    if (m.type === 'open') {
      let fd;
      let failed;
      try { fd = fs.openSync(m.path, 'r'); } catch (err) { failed = String(err && err.message || err); }
      jobs.set(m.id, { fd, pos: 0, digest: createHash('sha256'), chunk: createHash('sha256'), inChunk: 0, chunks: [], known: new Map(), skip: false, failed });
      return;
    }
    const job = jobs.get(m.id);
    if (!job) {
      if (m.type === 'drop') parentPort.postMessage({ id: m.id, dropped: true });
      return;
    }
    if (m.type === 'drop') {
      close(m.id);
      parentPort.postMessage({ id: m.id, dropped: true });
      return;
    }
    if (job.failed) {
      if (m.type === 'finish') { parentPort.postMessage({ id: m.id, error: job.failed }); close(m.id); }
      return;
    }
    try {
      if (m.type === 'known') job.known.set(m.index, m.hash);
      else if (m.type === 'upto') advance(job, m.size);
      else if (m.type === 'finish') {
        advance(job, m.size);
        if (job.inChunk > 0) endChunk(job);
        parentPort.postMessage({ id: m.id, size: job.pos, digest: job.digest.digest('hex'), chunks: job.chunks });
        close(m.id);
      }
    } catch (err) {
      job.failed = String(err && err.message || err);
      if (m.type === 'finish') { parentPort.postMessage({ id: m.id, error: job.failed }); close(m.id); }
    }
  } catch (err) {
    parentPort.postMessage({ id: m.id, error: String(err && err.message || err) });
  }
});
`;

type Reply = { id: number; error: string } | { id: number; dropped: true } | ({ id: number } & IngestHash);

/** The hashing thread of one store: started on first use, ended by close(). */
export class IngestHasher {
  private worker?: Worker;
  private nextId = 1;
  /** Answers awaited (a finish or a drop), by job id. While there are some, the thread holds the process open. */
  private readonly awaited = new Map<number, { settle(reply: Reply): void; fail(err: Error): void }>();
  private closed = false;

  private start(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(WORKER_SOURCE, { eval: true, name: 'shoal-ingest-hasher' });
    worker.unref();
    worker.on('message', (reply: Reply) => {
      const w = this.awaited.get(reply.id);
      if (!w) return;
      this.awaited.delete(reply.id);
      // An idle hashing thread keeps no process alive.
      if (this.awaited.size === 0) worker.unref();
      w.settle(reply);
    });
    const failAll = (err: Error): void => {
      if (this.worker === worker) this.worker = undefined;
      for (const w of this.awaited.values()) w.fail(err);
      this.awaited.clear();
    };
    worker.on('error', (err) => failAll(err));
    worker.on('exit', (code) => failAll(new Error(`hashing thread ended (exit ${code})`)));
    this.worker = worker;
    return worker;
  }

  /** Sends a job's last message and waits for its answer. */
  private ask(worker: Worker, id: number, message: object, settle: (reply: Reply) => void, fail: (err: Error) => void): void {
    this.awaited.set(id, { settle, fail });
    worker.ref();
    worker.postMessage(message);
  }

  /** Follows the ingest file at `path` (empty at this point) as it is written. */
  track(path: string): HashJob {
    if (this.closed) throw new Error('the store is closed');
    const worker = this.start();
    const id = this.nextId++;
    worker.postMessage({ type: 'open', id, path });
    let ended = false;
    /** The job's last message, once: false when it already had one or the thread is gone. */
    const last = (): boolean => {
      const live = !ended && this.worker === worker;
      ended = true;
      return live;
    };
    return {
      appended: (bytes, offset, knownHash) => {
        if (ended) return;
        const length = byteLength(bytes);
        if (knownHash !== undefined && isWholeChunk(offset, length)) worker.postMessage({ type: 'known', id, index: offset / CHUNK_SIZE, hash: knownHash });
        worker.postMessage({ type: 'upto', id, size: offset + length });
      },
      finish: (size) =>
        last()
          ? new Promise<IngestHash>((resolve, reject) =>
              this.ask(worker, id, { type: 'finish', id, size }, (r) => ('error' in r ? reject(new Error(`hashing thread: ${r.error}`)) : 'dropped' in r ? reject(new Error('the hash job was dropped')) : resolve({ size: r.size, digest: r.digest, chunks: r.chunks })), reject),
            )
          : Promise.reject(new Error('the hash job has ended, or its thread has')),
      // A thread that ended holds no file open.
      drop: () => (last() ? new Promise<void>((resolve) => this.ask(worker, id, { type: 'drop', id }, () => resolve(), () => resolve())) : Promise.resolve()),
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    const worker = this.worker;
    this.worker = undefined;
    if (worker) await worker.terminate();
  }
}
