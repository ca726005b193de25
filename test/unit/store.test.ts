import { afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, mkdir, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import { DigestMismatchError, InvalidError, MediaType, NotFoundError, UnsupportedError } from '../../src/oci/index.ts';
import { fsckDataDir, KvContentStore, openDiskStore, openMemoryStore } from '../../src/store/index.ts';
import { DiskBlobBytes } from '../../src/store/bytes.ts';
import { LevelKeyValueStore } from '../../src/store/kv.ts';
import type { ByteRange } from '../../src/store/types.ts';
import { chunks, contentStoreSuite, readAll, rejectsWith, sha256 } from './store-suite.ts';

async function makeTempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'shoal-store-test-'));
}

contentStoreSuite('memory', async () => {
  const store = await openMemoryStore();
  return { store, dispose: () => store.close() };
});

contentStoreSuite('disk', async () => {
  const dir = await makeTempDir();
  try {
    const store = await openDiskStore(dir);
    return {
      store,
      async dispose() {
        try {
          await store.close();
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      },
    };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
});

/** Path of a blob file in the documented disk layout. */
function blobPath(dir: string, digest: string): string {
  const [algorithm, hex] = digest.split(':') as [string, string];
  return join(dir, 'blobs', algorithm, hex.slice(0, 2), hex);
}

async function* failingSource(): AsyncGenerator<Uint8Array> {
  yield Buffer.from('hel');
  throw new Error('client went away');
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

describe('ContentStore on disk: layout, restart and recovery', () => {
  let dir: string;
  let store: KvContentStore | undefined;

  /** Closes the current store (if open) and opens the same directory again. */
  async function reopen(): Promise<KvContentStore> {
    const old = store;
    store = undefined;
    await old?.close();
    store = await openDiskStore(dir);
    return store;
  }
  async function closeStore(): Promise<void> {
    const old = store;
    store = undefined;
    await old?.close();
  }

  beforeEach(async () => {
    dir = await makeTempDir();
    store = await openDiskStore(dir);
  });
  afterEach(async () => {
    try {
      await closeStore();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('keeps blob bytes at blobs/<algorithm>/<2 hex>/<hex> and leaves no ingest file behind', async () => {
    const info = await store!.writeBlob('r', chunks('hello'), {});
    assert.equal((await readFile(blobPath(dir, info.digest))).toString(), 'hello');
    assert.deepEqual(await readdir(join(dir, 'ingest')), []);
  });

  it('readSmallContent: the bytes from memory once read; removed content is gone from memory too; reads still count as uses', async () => {
    const info = await store!.writeBlob('r', chunks('{"small":"manifest"}'), {});
    assert.equal((await store!.readSmallContent(info.digest)).toString(), '{"small":"manifest"}');
    // The file is gone behind the store's back: the second read comes from memory, without opening it.
    await rm(blobPath(dir, info.digest));
    assert.equal((await store!.readSmallContent(info.digest)).toString(), '{"small":"manifest"}');
    const used = (await store!.listEntries()).find((e) => e.digest === info.digest)!;
    assert.ok(used.accessed !== undefined && used.accessed > 0, 'the read is recorded as a use, which eviction goes by');
    // Taken out of the store (as eviction, GC or a corrupt find would): it is not served from memory either.
    const again = await store!.writeBlob('r', chunks('another small one'), {});
    await store!.readSmallContent(again.digest);
    assert.equal(await store!.removeContent(again.digest, 'evicted'), true);
    await assert.rejects(store!.readSmallContent(again.digest), (err: Error & { code?: string }) => err.code === 'BLOB_UNKNOWN');
  });

  it('readSmallContent: a read from memory counts as a use, so eviction (least recently used first) keeps what it serves', async () => {
    const a = await store!.writeBlob('r', chunks('{"small":"a"}'), {});
    const b = await store!.writeBlob('r', chunks('{"small":"b"}'), {});
    const accessed = async (digest: string): Promise<number> => (await store!.listEntries()).find((e) => e.digest === digest)!.accessed!;
    /** Waits until the clock has moved past `t`, so that a later use has a later time. */
    const after = async (t: number): Promise<void> => {
      while (Date.now() <= t) await new Promise((r) => setTimeout(r, 2));
    };
    await store!.readSmallContent(a.digest);
    await after(await accessed(a.digest));
    await store!.readSmallContent(b.digest);
    const aFirst = await accessed(a.digest);
    const bRead = await accessed(b.digest);
    assert.ok(bRead > aFirst, 'b was read after a');
    // a's file is gone behind the store's back: the next read can only come from memory.
    await rm(blobPath(dir, a.digest));
    await after(bRead);
    assert.equal((await store!.readSmallContent(a.digest)).toString(), '{"small":"a"}');
    const aCached = await accessed(a.digest);
    assert.ok(aCached > aFirst, `the read from memory was not recorded as a use (accessed stayed ${aFirst})`);
    assert.ok(aCached > bRead, 'a, read from memory last, is now the more recently used');
    const lru = (await store!.listEntries()).filter((e) => e.digest === a.digest || e.digest === b.digest).sort((x, y) => x.accessed! - y.accessed!);
    assert.deepEqual(
      lru.map((e) => e.digest),
      [b.digest, a.digest],
      'eviction would take b first',
    );
  });

  it('a failed write leaves no file in ingest/ or blobs/', async () => {
    await rejectsWith(store!.writeBlob('r', chunks('hello'), { digest: sha256('other') }), DigestMismatchError, 'DIGEST_INVALID');
    await rejectsWith(store!.writeBlob('r', chunks('hello'), { size: 2 }), InvalidError, 'SIZE_INVALID');
    await assert.rejects(store!.writeBlob('r', failingSource(), {}), /client went away/);
    assert.deepEqual(await readdir(join(dir, 'ingest')), []);
    assert.equal(await exists(blobPath(dir, sha256('hello'))), false);
  });

  it('an open ingest is a file in ingest/ until it is committed or aborted', async () => {
    const a = await store!.openIngest();
    const b = await store!.openIngest();
    await a.append(Buffer.from('kept'));
    await b.append(Buffer.from('dropped'));
    assert.equal((await readdir(join(dir, 'ingest'))).length, 2);
    await a.commit('r', { digest: sha256('kept') });
    await b.abort();
    assert.deepEqual(await readdir(join(dir, 'ingest')), []);
    assert.equal((await readFile(blobPath(dir, sha256('kept')))).toString(), 'kept');
    assert.equal(await exists(blobPath(dir, sha256('dropped'))), false);
  });

  it('an ingest left open when the store closes is gone after reopening', async () => {
    const ingest = await store!.openIngest();
    await ingest.append(Buffer.from('interrupted'));
    const s = await reopen();
    assert.deepEqual(await readdir(join(dir, 'ingest')), []);
    assert.equal(await s.statContent(sha256('interrupted')), undefined);
    assert.deepEqual(await s.stats(), { blobs: 0, bytes: 0 });
    await ingest.abort();
  });

  it('deleting the last link removes the blob file', async () => {
    const info = await store!.writeBlob('r', chunks('bye'), {});
    await store!.deleteBlob('r', info.digest);
    assert.equal(await exists(blobPath(dir, info.digest)), false);
  });

  it('reopening the same directory keeps blobs, manifests, tags, referrers, sessions and stats', async () => {
    const s1 = store!;
    const blob = await s1.writeBlob('app', chunks('layer-bytes'), {});
    await s1.mountBlob('other', blob.digest, 'app');
    const subject = await s1.putManifest({ repository: 'app', bytes: Buffer.from('{"m":"subject"}'), mediaType: MediaType.OciManifest, tag: 'v1' });
    const ref = await s1.putManifest({
      repository: 'app',
      bytes: Buffer.from('{"m":"ref"}'),
      mediaType: MediaType.OciManifest,
      subject: subject.digest,
      artifactType: 'application/vnd.example',
    });
    const session = await s1.createUpload('app');
    await s1.appendUpload('app', session.id, chunks('partial '));
    const stats = await s1.stats();

    const s2 = await reopen();
    assert.deepEqual(await s2.stats(), stats);
    assert.deepEqual(await s2.statBlob('app', blob.digest), blob);
    assert.deepEqual(await s2.statBlob('other', blob.digest), blob);
    assert.equal((await readAll(s2, blob.digest)).toString(), 'layer-bytes');
    assert.deepEqual(await s2.getManifest('app', subject.digest), subject);
    assert.equal(await s2.resolveTag('app', 'v1'), subject.digest);
    assert.deepEqual(await s2.listTags('app'), ['v1']);
    assert.deepEqual((await s2.listReferrers('app', subject.digest)).map((d) => d.digest), [ref.digest]);
    assert.deepEqual(await s2.listRepositories(), ['app', 'other']);
    assert.equal((await s2.getUpload('app', session.id)).offset, 8);

    // The session's hash is rebuilt from its bytes after the restart.
    await s2.appendUpload('app', session.id, chunks('upload'), { start: 8, length: 6 });
    const info = await s2.commitUpload('app', session.id, sha256('partial upload'));
    assert.equal((await readAll(s2, info.digest)).toString(), 'partial upload');
    // Deletes after a restart still keep the totals right.
    await s2.deleteBlob('app', blob.digest);
    await s2.deleteBlob('other', blob.digest);
    assert.deepEqual(await s2.stats(), { blobs: stats.blobs, bytes: stats.bytes - blob.size + info.size });
  });

  it('recovery: an upload file with bytes beyond the recorded offset is truncated to it', async () => {
    const session = await store!.createUpload('r');
    await store!.appendUpload('r', session.id, chunks('hello'));
    await closeStore();
    const file = join(dir, 'uploads', session.id);
    await appendFile(file, 'GARBAGE-FROM-A-CRASH');

    const s = await reopen();
    assert.equal((await stat(file)).size, 5);
    assert.equal((await s.getUpload('r', session.id)).offset, 5);
    await s.appendUpload('r', session.id, chunks(' world'), { start: 5, length: 6 });
    const info = await s.commitUpload('r', session.id, sha256('hello world'));
    assert.equal((await readAll(s, info.digest)).toString(), 'hello world');
  });

  it('recovery: an upload file shorter than the recorded offset shortens the session', async () => {
    const session = await store!.createUpload('r');
    await store!.appendUpload('r', session.id, chunks('hello world'));
    await closeStore();
    await truncate(join(dir, 'uploads', session.id), 5);

    const s = await reopen();
    assert.equal((await s.getUpload('r', session.id)).offset, 5);
    await s.appendUpload('r', session.id, chunks('!'), { start: 5 });
    const info = await s.commitUpload('r', session.id, sha256('hello!'));
    assert.equal(info.size, 6);
  });

  it('recovery: an upload record whose file is gone is dropped', async () => {
    const session = await store!.createUpload('r');
    await closeStore();
    await rm(join(dir, 'uploads', session.id));
    const s = await reopen();
    await rejectsWith(s.getUpload('r', session.id), NotFoundError, 'BLOB_UPLOAD_UNKNOWN');
    assert.deepEqual(await s.listUploads(), []);
  });

  it('recovery: session files without a record are removed', async () => {
    const live = await store!.createUpload('r');
    await closeStore();
    const orphan = randomUUID();
    await writeFile(join(dir, 'uploads', orphan), 'orphaned bytes');
    const s = await reopen();
    assert.deepEqual((await readdir(join(dir, 'uploads'))).sort(), [live.id]);
    await rejectsWith(s.getUpload('r', orphan), NotFoundError, 'BLOB_UPLOAD_UNKNOWN');
    assert.deepEqual((await s.listUploads()).map((u) => u.id), [live.id]);
  });

  it('recovery: leftover files in ingest/ are removed on open', async () => {
    await closeStore();
    await writeFile(join(dir, 'ingest', randomUUID()), 'half a layer');
    await mkdir(join(dir, 'ingest', 'nested'), { recursive: true });
    await writeFile(join(dir, 'ingest', 'nested', 'x'), 'x');
    const s = await reopen();
    assert.deepEqual(await readdir(join(dir, 'ingest')), []);
    assert.deepEqual(await s.stats(), { blobs: 0, bytes: 0 });
  });

  it('recovery: a blob file without a record is deleted on open (its write was never acknowledged, or its removal was)', async () => {
    await store!.writeBlob('r', chunks('known'), {});
    await closeStore();
    const data = Buffer.from('bytes a crash left behind');
    const digest = sha256(data);
    await mkdir(join(blobPath(dir, digest), '..'), { recursive: true });
    await writeFile(blobPath(dir, digest), data);
    // Files that are not digests are ignored.
    await mkdir(join(dir, 'blobs', 'sha256', 'zz'), { recursive: true });
    await writeFile(join(dir, 'blobs', 'sha256', 'zz', 'not-a-digest'), 'x');

    const s = await reopen();
    assert.equal(await s.statContent(digest), undefined);
    await assert.rejects(stat(blobPath(dir, digest)), /ENOENT/);
    assert.deepEqual(await s.stats(), { blobs: 1, bytes: 5 });
    assert.equal(await s.mountBlob('r', digest, undefined), undefined, 'a deleted blob does not come back');
  });

  it('recovery: a manifest whose file is gone takes its tags, links and referrer entries with it', async () => {
    const layer = await store!.writeBlob('r', chunks('layer bytes'), {});
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', layers: [{ digest: layer.digest }] }));
    const m = await store!.putManifest({ repository: 'r', bytes, mediaType: 'application/vnd.oci.image.manifest.v1+json', tag: 'v1', references: [layer.digest] });
    await closeStore();
    await rm(blobPath(dir, m.digest));
    const s = await reopen();
    assert.equal(await s.getManifest('r', m.digest), undefined);
    assert.equal(await s.resolveTag('r', 'v1'), undefined);
    assert.equal(await s.statBlob('r', m.digest), undefined);
    assert.deepEqual(await s.statBlob('r', layer.digest), layer, 'the layer stays');
  });

  it('recovery: a blob file whose size differs from its record is dropped with its links', async () => {
    const info = await store!.writeBlob('r', chunks('twelve bytes'), {});
    await closeStore();
    await truncate(blobPath(dir, info.digest), 3);
    const s = await reopen();
    assert.equal(await s.statBlob('r', info.digest), undefined);
    assert.deepEqual(await s.listLinks(), []);
    await assert.rejects(stat(blobPath(dir, info.digest)), /ENOENT/);
  });

  it('recovery: a blob record whose file is gone is dropped from the totals', async () => {
    const info = await store!.writeBlob('r', chunks('vanishing'), {});
    await store!.writeBlob('r', chunks('staying'), {});
    await closeStore();
    await rm(blobPath(dir, info.digest));
    const s = await reopen();
    assert.equal(await s.statContent(info.digest), undefined);
    assert.deepEqual(await s.stats(), { blobs: 1, bytes: 7 });
  });
});

/** Blob bytes on disk whose reads, once the file is open, wait until the test lets them go on. */
class GatedBlobBytes extends DiskBlobBytes {
  gate?: { opened: () => void; release: Promise<void> };
  override async read(digest: string, range?: ByteRange): Promise<Readable> {
    const stream = await super.read(digest, range);
    const gate = this.gate;
    if (gate) {
      this.gate = undefined;
      gate.opened();
      await gate.release;
    }
    return stream;
  }
  /** The next read stops after opening its file; `opened` resolves then, and the read goes on after `release()`. */
  hold(): { opened: Promise<void>; release: () => void } {
    let opened!: () => void;
    let release!: () => void;
    const o = new Promise<void>((r) => (opened = r));
    const r = new Promise<void>((res) => (release = res));
    this.gate = { opened, release: r };
    return { opened: o, release };
  }
}

describe('ContentStore on disk: every operation leaves a store that fsck finds sound', () => {
  let dir: string;
  let bytes: GatedBlobBytes;
  let store: KvContentStore | undefined;

  beforeEach(async () => {
    dir = await makeTempDir();
    bytes = new GatedBlobBytes(dir);
    store = new KvContentStore(new LevelKeyValueStore(join(dir, 'db')), bytes);
    await store.open();
  });
  afterEach(async () => {
    try {
      await store?.close();
    } finally {
      store = undefined;
      await rm(dir, { recursive: true, force: true });
    }
  });

  /** Closes the store and checks it as `shoal fsck --data` does. */
  async function assertSound(): Promise<void> {
    await store!.close();
    store = undefined;
    const report = await fsckDataDir(dir);
    assert.deepEqual(report.problems.map((p) => `${p.kind} ${p.subject}`), []);
  }

  async function pushedThroughSession(repository: string, data: string): Promise<string> {
    const session = await store!.createUpload(repository);
    await store!.appendUpload(repository, session.id, chunks(data));
    return (await store!.commitUpload(repository, session.id, sha256(data))).digest;
  }

  it('a read that opened a blob just before it was collected leaves no access time behind', async () => {
    const digest = await pushedThroughSession('r', 'read while swept');
    const held = bytes.hold();
    const reading = store!.readContent(digest);
    await held.opened;
    const guard = store!.openSweepGuard();
    assert.equal(await store!.sweepLink('r', digest, guard), true, 'not in use yet: the sweep takes it');
    guard.close();
    held.release();
    const stream = await reading;
    assert.equal(Buffer.concat((await stream.toArray()) as Buffer[]).toString(), 'read while swept', 'the open file still reads');
    await assertSound();
  });

  it('a scrub or a chunk map that hashed a blob while it was evicted leaves no chunk map behind', async () => {
    for (const check of ['verifyContent', 'chunkMap'] as const) {
      const digest = await pushedThroughSession('r', `hashed while evicted by ${check}`);
      const held = bytes.hold();
      const hashing = check === 'verifyContent' ? store!.verifyContent(digest) : store!.chunkMap(digest);
      await held.opened;
      assert.equal(await store!.removeContent(digest, 'evicted'), true);
      held.release();
      await hashing;
      assert.equal(await store!.statContent(digest), undefined);
    }
    await assertSound();
  });

  it('a DELETE of a manifest\'s digest through the blob endpoint is refused: the manifest and its tag stay', async () => {
    const layer = await store!.writeBlob('r', chunks('a layer'), {});
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciManifest, layers: [{ digest: layer.digest }] }));
    const m = await store!.putManifest({ repository: 'r', bytes, mediaType: MediaType.OciManifest, tag: 'v1', references: [layer.digest] });
    const err = await rejectsWith(store!.deleteBlob('r', m.digest), UnsupportedError, 'UNSUPPORTED');
    assert.match(err.message, /DELETE \/v2\/r\/manifests\//);
    assert.equal(await store!.resolveTag('r', 'v1'), m.digest);
    assert.deepEqual(await readAll(store!, m.digest), bytes);
    // Its layer is a blob: that one goes.
    await store!.deleteBlob('r', layer.digest);
    await assertSound();
  });

  it('deleting a pinned manifest takes its pin with it', async () => {
    const m = await store!.putManifest({ repository: 'r', bytes: Buffer.from('{"pinned":true}'), mediaType: MediaType.OciManifest, tag: 'v1' });
    await store!.pinManifest('r', m.digest, 'test');
    await store!.deleteManifest('r', m.digest);
    assert.deepEqual(await store!.listPins(), []);
    await assertSound();
  });

  it('a pin and a delete of the same manifest at once: either the pin fails or it goes with the manifest', async () => {
    for (let i = 0; i < 20; i++) {
      const m = await store!.putManifest({ repository: 'r', bytes: Buffer.from(`{"n":${i}}`), mediaType: MediaType.OciManifest });
      const [pin] = await Promise.allSettled([store!.pinManifest('r', m.digest, 'race'), store!.deleteManifest('r', m.digest)]);
      if (pin.status === 'rejected') assert.ok(pin.reason instanceof NotFoundError);
    }
    assert.deepEqual(await store!.listPins(), []);
    await assertSound();
  });
});
