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
  /**
   * sha256 hex of every CHUNK_SIZE chunk (the last may be shorter). The hashing thread computes them after it gave the
   * digest, from the file (still in the page cache): what a pull waits for is the digest; the chunk map is for peers,
   * who ask for it later. Rejects when the thread failed, or the job was dropped first.
   */
  chunks: Promise<string[]>;
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
   * The ingest is dropped (or its chunk map no longer wanted): resolves once the thread closed its handle on the
   * file, so that removing the file frees its space at once (an open handle keeps a deleted file's blocks; a full
   * disk needs them back).
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
      return { size, digest: digest.digest('hex'), chunks: Promise.resolve(map.chunks) };
    },
    drop: async () => undefined,
  };
}

// The worker is plain JavaScript given as source, so that it runs the same from the TypeScript sources and from the
// compiled bundle. It reads with a read buffer of its own and never writes. While the ingest is written it computes
// the digest only; on finish it answers the digest, then hashes the chunks no writer vouched for, one chunk per turn
// of its event loop (so that a drop is heard between two), and answers the chunk map.
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const CHUNK = ${CHUNK_SIZE};
const buf = Buffer.allocUnsafe(1024 * 1024);
const jobs = new Map();
function hashRange(fd, from, to, hash) {
  for (let at = from; at < to; ) {
    const n = fs.readSync(fd, buf, 0, Math.min(buf.length, to - at), at);
    if (n === 0) throw new Error('the file holds ' + at + ' bytes, not ' + to);
    hash.update(n === buf.length ? buf : buf.subarray(0, n));
    at += n;
  }
}
function advance(job, upTo) {
  if (upTo <= job.pos) return;
  hashRange(job.fd, job.pos, upTo, job.digest);
  job.pos = upTo;
}
function hashChunk(job, index) {
  const hash = createHash('sha256');
  hashRange(job.fd, index * CHUNK, Math.min(job.pos, (index + 1) * CHUNK), hash);
  return hash.digest('hex');
}
function close(id) {
  const job = jobs.get(id);
  if (!job) return;
  jobs.delete(id);
  if (job.fd !== undefined) try { fs.closeSync(job.fd); } catch {}
}
function chunkPass(id) {
  const job = jobs.get(id);
  if (!job) return;
  const count = Math.ceil(job.pos / CHUNK);
  try {
    while (job.chunks.length < count) {
      const index = job.chunks.length;
      const known = job.known.get(index);
      if (known !== undefined) {
        job.chunks.push(known);
        continue;
      }
      job.chunks.push(hashChunk(job, index));
      if (job.chunks.length < count) { setImmediate(chunkPass, id); return; }
    }
    parentPort.postMessage({ id, kind: 'chunks', chunks: job.chunks });
  } catch (err) {
    parentPort.postMessage({ id, kind: 'chunks', error: String(err && err.message || err) });
  }
  close(id);
}
parentPort.on('message', (m) => {
  try {
    if (m.type === 'open') {
      let fd;
      let failed;
      try { fd = fs.openSync(m.path, 'r'); } catch (err) { failed = String(err && err.message || err); }
      jobs.set(m.id, { fd, pos: 0, digest: createHash('sha256'), chunks: [], known: new Map(), failed });
      return;
    }
    const job = jobs.get(m.id);
    if (m.type === 'drop') {
      if (job && job.finished) parentPort.postMessage({ id: m.id, kind: 'chunks', error: 'the hash job was dropped' });
      close(m.id);
      parentPort.postMessage({ id: m.id, kind: 'dropped' });
      return;
    }
    if (!job) return;
    if (job.failed) {
      if (m.type === 'finish') { parentPort.postMessage({ id: m.id, kind: 'digest', error: job.failed }); close(m.id); }
      return;
    }
    try {
      if (m.type === 'known') job.known.set(m.index, m.hash);
      else if (m.type === 'upto') advance(job, m.size);
      else if (m.type === 'finish') {
        advance(job, m.size);
        job.finished = true;
        parentPort.postMessage({ id: m.id, kind: 'digest', size: job.pos, digest: job.digest.digest('hex') });
        setImmediate(chunkPass, m.id);
      }
    } catch (err) {
      job.failed = String(err && err.message || err);
      if (m.type === 'finish') { parentPort.postMessage({ id: m.id, kind: 'digest', error: job.failed }); close(m.id); }
    }
  } catch (err) {
    parentPort.postMessage({ id: m.id, kind: 'digest', error: String(err && err.message || err) });
  }
});
`;

type Reply =
  | { id: number; kind: 'digest' | 'chunks'; error: string }
  | { id: number; kind: 'digest'; size: number; digest: string }
  | { id: number; kind: 'chunks'; chunks: string[] }
  | { id: number; kind: 'dropped' };

/** The hashing thread of one store: started on first use, ended by close(). */
export class IngestHasher {
  private worker?: Worker;
  private nextId = 1;
  /** Answers awaited, by kind and job id. While there are some, the thread holds the process open. */
  private readonly awaited = new Map<string, { settle(reply: Reply): void; fail(err: Error): void }>();
  private closed = false;

  private start(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(WORKER_SOURCE, { eval: true, name: 'shoal-ingest-hasher' });
    worker.unref();
    worker.on('message', (reply: Reply) => this.answer(reply, worker));
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

  /** Settles whoever awaits this answer. */
  private answer(reply: Reply, worker: Worker): void {
    const key = `${reply.kind}:${reply.id}`;
    const w = this.awaited.get(key);
    if (!w) return;
    this.awaited.delete(key);
    // An idle hashing thread keeps no process alive.
    if (this.awaited.size === 0) worker.unref();
    w.settle(reply);
  }

  /** Waits for the answer of `kind` to job `id`; rejects when the thread is gone. */
  private await(worker: Worker, kind: Reply['kind'], id: number): Promise<Reply> {
    if (this.worker !== worker) return Promise.reject(new Error('the hashing thread has ended'));
    return new Promise<Reply>((resolve, reject) => {
      this.awaited.set(`${kind}:${id}`, { settle: resolve, fail: reject });
      worker.ref();
    });
  }

  /** Follows the ingest file at `path` (empty at this point) as it is written. */
  track(path: string): HashJob {
    if (this.closed) throw new Error('the store is closed');
    const worker = this.start();
    const id = this.nextId++;
    worker.postMessage({ type: 'open', id, path });
    let finished = false;
    let dropped = false;
    const live = (): boolean => this.worker === worker;
    return {
      appended: (bytes, offset, knownHash) => {
        if (finished || dropped || !live()) return;
        const length = byteLength(bytes);
        if (knownHash !== undefined && isWholeChunk(offset, length)) worker.postMessage({ type: 'known', id, index: offset / CHUNK_SIZE, hash: knownHash });
        worker.postMessage({ type: 'upto', id, size: offset + length });
      },
      finish: async (size) => {
        if (finished || dropped || !live()) throw new Error('the hash job has ended, or its thread has');
        finished = true;
        const digest = this.await(worker, 'digest', id);
        const chunks = this.await(worker, 'chunks', id).then((r) => {
          if ('error' in r) throw new Error(`hashing thread: ${r.error}`);
          return (r as { chunks: string[] }).chunks;
        });
        chunks.catch(() => undefined);
        worker.postMessage({ type: 'finish', id, size });
        const r = await digest;
        if ('error' in r) {
          // No chunk pass follows a failed digest.
          this.answer({ id, kind: 'chunks', error: r.error }, worker);
          throw new Error(`hashing thread: ${r.error}`);
        }
        const d = r as { size: number; digest: string };
        return { size: d.size, digest: d.digest, chunks };
      },
      // A thread that ended holds no file open.
      drop: async () => {
        if (dropped || !live()) return;
        dropped = true;
        const answer = this.await(worker, 'dropped', id).catch(() => undefined);
        worker.postMessage({ type: 'drop', id });
        await answer;
      },
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    const worker = this.worker;
    this.worker = undefined;
    if (worker) await worker.terminate();
  }
}
