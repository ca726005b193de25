/**
 * Stored blobs are read into pooled buffers: the bytes are exactly the file's (whole, a range, a range past the
 * end), a chunk handed back after it was written serves a later read, and only the exact chunk the reader gave is
 * taken back (a slice of it, or a foreign buffer, never is).
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { DiskBlobBytes, PooledFileReader, ReadBufferPool, recyclerOf } from '../../src/store/bytes.ts';

describe('pooled blob reads', () => {
  const dirs: string[] = [];
  after(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });
  const bytes = randomBytes(1_000_003);
  async function file(): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-pool-'));
    dirs.push(dir);
    const path = join(dir, 'blob');
    await writeFile(path, bytes);
    return path;
  }
  async function readAll(reader: PooledFileReader): Promise<Buffer[]> {
    const out: Buffer[] = [];
    for await (const c of reader) out.push(c as Buffer);
    return out;
  }

  it('reads the whole file, a range, and a range past the end', async () => {
    const path = await file();
    const pool = new ReadBufferPool();
    for (const [start, end] of [
      [0, bytes.length - 1],
      [5, 70_000],
      [999_000, 2_000_000],
      [10, 10],
    ] as const) {
      const chunks = await readAll(new PooledFileReader(await open(path, 'r'), { start, end }, pool, 65536));
      assert.ok(Buffer.concat(chunks).equals(bytes.subarray(start, end + 1)), `range ${start}-${end}`);
    }
  });

  it('a recycled chunk serves the next read; a slice or a foreign buffer is not taken back', async () => {
    const path = await file();
    const pool = new ReadBufferPool();
    const first = new PooledFileReader(await open(path, 'r'), { start: 0, end: 65535 }, pool, 65536);
    const [chunk] = await readAll(first);
    assert.ok(chunk);
    const recycle = recyclerOf(first)!;
    assert.equal(typeof recycle, 'function');
    assert.equal(recyclerOf(Readable.from([chunk])), undefined, 'a plain stream has no recycler');
    recycle(chunk.subarray(0, 100));
    recycle(Buffer.allocUnsafeSlow(65536));
    const fresh = pool.take(65536);
    assert.notEqual(fresh.buffer, chunk.buffer, 'nothing was taken back yet');
    recycle(chunk);
    recycle(chunk);
    const reused = pool.take(65536);
    assert.equal(reused.buffer, chunk.buffer, 'the written chunk serves the next read');
    assert.notEqual(pool.take(65536).buffer, chunk.buffer, 'and it was taken back once');
    const second = new PooledFileReader(await open(path, 'r'), { start: 65536, end: 131071 }, pool, 65536);
    pool.give(reused, 65536);
    const [next] = await readAll(second);
    assert.equal(next!.buffer, chunk.buffer, 'a later reader reads into it');
    assert.ok(next!.equals(bytes.subarray(65536, 131072)));
  });

  it('reads of an ingest under way come in pooled buffers: a chunk written out and recycled serves the next read', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-pool-ingest-'));
    dirs.push(dir);
    const store = new DiskBlobBytes(dir);
    await store.init();
    const ingest = await store.ingest();
    try {
      await ingest.append(bytes);
      const first = await ingest.read({ start: 0, end: 99 });
      const recycle = recyclerOf(first);
      assert.equal(typeof recycle, 'function', 'an ingest read can take its chunks back');
      const [chunk] = (await first.toArray()) as Buffer[];
      assert.ok(chunk!.equals(bytes.subarray(0, 100)));
      recycle!(chunk!);
      const [next] = (await (await ingest.read({ start: 100, end: 199 })).toArray()) as Buffer[];
      assert.equal(next!.buffer, chunk!.buffer, 'the next read reads into the recycled buffer');
      assert.ok(next!.equals(bytes.subarray(100, 200)));
      // The reads borrowed the writer's handle: it still writes.
      await ingest.append(Buffer.from('more'));
      const [tail] = (await (await ingest.read({ start: bytes.length, end: bytes.length + 3 })).toArray()) as Buffer[];
      assert.equal(tail!.toString(), 'more');
    } finally {
      await ingest.discard();
    }
  });

  it("a reader on a borrowed handle (an ingest's writer) leaves it open when it ends or is destroyed", async () => {
    const path = await file();
    const fh = await open(path, 'r');
    try {
      const pool = new ReadBufferPool();
      const whole = await readAll(new PooledFileReader(fh, { start: 0, end: 99 }, pool, 65536, { borrowed: true }));
      assert.ok(Buffer.concat(whole).equals(bytes.subarray(0, 100)));
      const cut = new PooledFileReader(fh, { start: 0, end: bytes.length - 1 }, pool, 65536, { borrowed: true });
      await new Promise<void>((resolve) => cut.once('readable', () => resolve()));
      cut.destroy();
      await new Promise((resolve) => cut.once('close', resolve));
      const again = Buffer.alloc(10);
      await fh.read(again, 0, 10, 200);
      assert.ok(again.equals(bytes.subarray(200, 210)), 'the handle still reads');
    } finally {
      await fh.close();
    }
  });
});
