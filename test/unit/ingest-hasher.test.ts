/**
 * The hashing thread of the store: what it computes for an ingest file is exactly what hashing the bytes on the
 * writer's thread gives (digest and chunk map, whole and partial chunks); a chunk hash the writer already knows is
 * taken, not recomputed; a file it cannot read, or a thread that ended, is an error the store falls back from, and
 * a store whose blobs are hashed there commits the same blobs.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { appendFile, mkdtemp, readdir, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CHUNK_SIZE, ChunkHasher } from '../../src/oci/index.ts';
import { IngestHasher } from '../../src/store/ingest-hasher.ts';
import { openDiskStore } from '../../src/store/index.ts';

const hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** Handles this process holds on `path`. */
async function handlesOn(path: string): Promise<number> {
  let n = 0;
  for (const fd of await readdir('/proc/self/fd')) if ((await readlink(`/proc/self/fd/${fd}`).catch(() => '')) === path) n++;
  return n;
}

/** Waits (up to 10 s) until `check` holds. */
async function waitUntil(check: () => Promise<boolean>): Promise<void> {
  for (const deadline = Date.now() + 10_000; !(await check()); ) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((ok) => setTimeout(ok, 20));
  }
}

describe('ingest hashing thread', () => {
  const hasher = new IngestHasher();
  const dirs: string[] = [];
  after(async () => {
    await hasher.close();
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });
  const tempFile = async (): Promise<string> => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-hash-'));
    dirs.push(dir);
    const path = join(dir, 'ingest');
    await writeFile(path, Buffer.alloc(0));
    return path;
  };

  it('gives the digest and chunk map of what was written, in pieces of any size', async () => {
    for (const size of [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, 2 * CHUNK_SIZE + 12345]) {
      const bytes = randomBytes(size);
      const path = await tempFile();
      const job = hasher.track(path);
      let written = 0;
      for (const piece of [7, 65536, CHUNK_SIZE, 1 << 20]) {
        if (written >= size) break;
        const part = bytes.subarray(written, written + piece);
        await appendFile(path, part);
        job.appended(part, written);
        written += part.length;
      }
      await appendFile(path, bytes.subarray(written));
      const got = await job.finish(size);
      const chunks = new ChunkHasher();
      chunks.update(bytes);
      assert.deepEqual({ ...got, chunks: await got.chunks }, { size, digest: hex(bytes), chunks: chunks.map().chunks }, `size ${size}`);
    }
  });

  it('takes a whole chunk hash the writer knows instead of hashing that chunk', async () => {
    const bytes = randomBytes(2 * CHUNK_SIZE + 10);
    const path = await tempFile();
    const job = hasher.track(path);
    await appendFile(path, bytes.subarray(0, CHUNK_SIZE));
    job.appended(bytes.subarray(0, CHUNK_SIZE), 0);
    // A stand-in value shows that the given hash is what the map holds (callers give hashes they checked).
    const stand = 'f'.repeat(64);
    await appendFile(path, bytes.subarray(CHUNK_SIZE));
    job.appended(bytes.subarray(CHUNK_SIZE, 2 * CHUNK_SIZE), CHUNK_SIZE, stand);
    job.appended(bytes.subarray(2 * CHUNK_SIZE), 2 * CHUNK_SIZE, 'e'.repeat(64));
    const got = await job.finish(bytes.length);
    assert.equal(got.digest, hex(bytes), 'the digest is still computed from every byte');
    assert.deepEqual(await got.chunks, [hex(bytes.subarray(0, CHUNK_SIZE)), stand, hex(bytes.subarray(2 * CHUNK_SIZE))]);
  });

  it('gives the digest first, then the chunk map; a drop in between stops the chunk pass and leaves no handle', async () => {
    const bytes = randomBytes(6 * CHUNK_SIZE);
    const path = await tempFile();
    await appendFile(path, bytes);
    const job = hasher.track(path);
    job.appended(bytes, 0);
    const got = await job.finish(bytes.length);
    assert.equal(got.digest, hex(bytes));
    await job.drop();
    assert.equal(await handlesOn(path), 0, 'no handle once drop() resolved');
    // The drop came between two chunks (the pass stopped), or after the last one (the map is whole and right).
    const map = await got.chunks.then(
      (c) => c,
      (err: Error) => (assert.match(err.message, /dropped/), undefined),
    );
    if (map) assert.deepEqual(map, Array.from({ length: 6 }, (_, i) => hex(bytes.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE))));
    // Undisturbed, the same file gives its whole map, and the handle goes once it has.
    const again = hasher.track(path);
    again.appended(bytes, 0);
    const whole = await again.finish(bytes.length);
    assert.equal((await whole.chunks).length, 6);
    await waitUntil(async () => (await handlesOn(path)) === 0);
  });

  it('a file it cannot read, or fewer bytes than said, is an error', async () => {
    const missing = hasher.track(join(tmpdir(), `shoal-no-such-${process.pid}`, 'x'));
    await assert.rejects(missing.finish(0), /hashing thread: .*ENOENT/);
    const path = await tempFile();
    await appendFile(path, Buffer.from('abc'));
    const short = hasher.track(path);
    await assert.rejects(short.finish(10), /holds 3 bytes, not 10/);
  });

  it('a dropped ingest: once drop() resolves, no handle on the file is left (a full disk gets its blocks back)', async () => {
    const path = await tempFile();
    await appendFile(path, randomBytes(3 * CHUNK_SIZE));
    const job = hasher.track(path);
    job.appended(Buffer.alloc(3 * CHUNK_SIZE), 0);
    await job.drop();
    assert.equal(await handlesOn(path), 0);
    await job.drop();
  });

  it('after close, jobs end with an error', async () => {
    const other = new IngestHasher();
    const path = await tempFile();
    const job = other.track(path);
    await other.close();
    await assert.rejects(job.finish(0), /ended/);
    assert.throws(() => other.track(path), /closed/);
  });
});

describe('a store on disk hashes ingests on that thread', () => {
  it('commits blobs under the digest of their bytes and keeps their chunk maps', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-hash-store-'));
    const store = await openDiskStore(dir);
    // Watch the thread's answers: the digest must come from it, not from the store's fallback.
    const thread = (store as unknown as { ingestHasher: IngestHasher }).ingestHasher;
    const answers: string[] = [];
    const track = thread.track.bind(thread);
    thread.track = (path) => {
      const job = track(path);
      return { ...job, finish: async (size) => (await job.finish(size).then((h) => (answers.push(h.digest), h))) };
    };
    try {
      const bytes = randomBytes(CHUNK_SIZE + 999);
      const ingest = await store.openIngest();
      for (let i = 0; i < bytes.length; i += 300_000) await ingest.append(bytes.subarray(i, i + 300_000));
      const info = await ingest.commit('hash/app', { digest: `sha256:${hex(bytes)}` });
      assert.deepEqual(info, { digest: `sha256:${hex(bytes)}`, size: bytes.length });
      assert.deepEqual(answers, [hex(bytes)], 'the hashing thread gave the digest');
      assert.deepEqual(await store.chunkMap(info.digest), { size: bytes.length, chunks: [hex(bytes.subarray(0, CHUNK_SIZE)), hex(bytes.subarray(CHUNK_SIZE))] });
      const wrong = await store.openIngest();
      await wrong.append(bytes.subarray(0, 100));
      await assert.rejects(wrong.commit('hash/app', { digest: `sha256:${hex(bytes)}` }), (err: Error) => err.name === 'DigestMismatchError');
    } finally {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('when the hashing thread is gone, the store hashes the file itself and commits the same', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-hash-store-'));
    const store = await openDiskStore(dir);
    try {
      const bytes = randomBytes(CHUNK_SIZE + 5);
      const ingest = await store.openIngest();
      await ingest.append(bytes.subarray(0, 1000));
      // The thread ends in the middle of the ingest (as if it had crashed).
      await (store as unknown as { ingestHasher: IngestHasher }).ingestHasher.close();
      await ingest.append(bytes.subarray(1000));
      const info = await ingest.commit('hash/app', { digest: `sha256:${hex(bytes)}` });
      assert.equal(info.digest, `sha256:${hex(bytes)}`);
      assert.deepEqual((await store.chunkMap(info.digest))?.chunks, [hex(bytes.subarray(0, CHUNK_SIZE)), hex(bytes.subarray(CHUNK_SIZE))]);
    } finally {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
