/**
 * The one contract suite every ContentStore implementation passes (docs/ARCHITECTURE.md, "Conventions"). `contentStoreSuite` registers
 * `describe` blocks; each test gets a fresh store from `factory` and disposes of it afterwards, even on failure.
 */
import { afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { AbortedError, DigestMismatchError, InvalidError, MediaType, NotFoundError, ShoalError, type OciErrorCode } from '../../src/oci/index.ts';
import type { ContentStore, StoreStats } from '../../src/store/index.ts';

export interface StoreFixture {
  store: ContentStore;
  /** Closes the store and removes whatever the factory created (temp dirs). */
  dispose(): Promise<void>;
}
export type StoreFactory = () => Promise<StoreFixture>;

// ---- helpers shared with the disk-only tests ------------------------------------------------------

export const sha256 = (data: string | Uint8Array): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;
export const sha512 = (data: string | Uint8Array): string => `sha512:${createHash('sha512').update(data).digest('hex')}`;

export async function toBuffer(stream: Readable): Promise<Buffer> {
  return Buffer.concat(await stream.toArray());
}

export async function readAll(store: ContentStore, digest: string, range?: { start: number; end: number }): Promise<Buffer> {
  return toBuffer(await store.readContent(digest, range));
}

/** An async source that yields the given chunks one by one, like a request body. */
export async function* chunks(...parts: Array<string | Uint8Array>): AsyncGenerator<Uint8Array> {
  for (const p of parts) {
    await Promise.resolve();
    yield typeof p === 'string' ? Buffer.from(p) : p;
  }
}

/** An async source that yields `parts` and then fails, like a client that goes away. */
export async function* failingAfter(err: Error, ...parts: string[]): AsyncGenerator<Uint8Array> {
  for (const p of parts) yield Buffer.from(p);
  throw err;
}

/** Awaits `p`, asserts it rejects with an instance of `cls` carrying `code`, and returns the error. */
export async function rejectsWith<T extends ShoalError>(p: Promise<unknown>, cls: abstract new (...args: never[]) => T, code: OciErrorCode): Promise<T> {
  let caught: unknown;
  try {
    await p;
  } catch (err) {
    caught = err;
  }
  assert.ok(caught !== undefined, `expected ${cls.name} ${code}, but the promise resolved`);
  assert.ok(caught instanceof cls, `expected ${cls.name} ${code}, got ${caught instanceof Error ? `${caught.name}: ${caught.message}` : String(caught)}`);
  assert.equal((caught as ShoalError).code, code);
  return caught as T;
}

/** Deterministic pseudo-random bytes (so large blobs are not all one value). */
export function bytesOf(n: number, seed = 1): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

const OCI_MANIFEST = MediaType.OciManifest;
const manifestBytes = (n: number | string): Buffer => Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, n }));

// ---- the suite ------------------------------------------------------------------------------------

export function contentStoreSuite(name: string, factory: StoreFactory): void {
  describe(`ContentStore contract: ${name}`, () => {
    let fixture: StoreFixture | undefined;
    let store: ContentStore;

    beforeEach(async () => {
      fixture = await factory();
      store = fixture.store;
    });
    afterEach(async () => {
      const f = fixture;
      fixture = undefined;
      await f?.dispose();
    });

    /** Asserts that `digest` is visible nowhere and that the totals are `before`. */
    async function assertNothingVisible(digests: string[], before: StoreStats, repository = 'r'): Promise<void> {
      for (const d of digests) {
        assert.equal(await store.statContent(d), undefined, `${d} is not in the store`);
        assert.equal(await store.statBlob(repository, d), undefined, `${d} is not linked into ${repository}`);
        await rejectsWith(store.readContent(d), NotFoundError, 'BLOB_UNKNOWN');
      }
      assert.deepEqual(await store.stats(), before);
    }

    describe('writeBlob', () => {
      it('stores a blob without expectations and links it into the repository', async () => {
        const info = await store.writeBlob('library/nginx', [Buffer.from('hello')], {});
        assert.deepEqual(info, { digest: sha256('hello'), size: 5 });
        assert.deepEqual(await store.statContent(info.digest), info);
        assert.deepEqual(await store.statBlob('library/nginx', info.digest), info);
        assert.equal((await readAll(store, info.digest)).toString(), 'hello');
        assert.deepEqual(await store.stats(), { blobs: 1, bytes: 5 });
        assert.equal(await store.repositoryExists('library/nginx'), true);
      });

      it('stores a blob streamed in many chunks when digest and size match', async () => {
        const data = 'the quick brown fox jumps over the lazy dog';
        const info = await store.writeBlob('r', chunks(...data.match(/.{1,5}/g)!), { digest: sha256(data), size: data.length });
        assert.deepEqual(info, { digest: sha256(data), size: data.length });
        assert.equal((await readAll(store, info.digest)).toString(), data);
      });

      it('stores an empty blob', async () => {
        const info = await store.writeBlob('r', [], { digest: sha256(''), size: 0 });
        assert.deepEqual(info, { digest: sha256(''), size: 0 });
        assert.equal((await readAll(store, info.digest)).length, 0);
        assert.deepEqual(await store.stats(), { blobs: 1, bytes: 0 });
      });

      it('verifies a sha512 expected digest', async () => {
        const info = await store.writeBlob('r', [Buffer.from('hello')], { digest: sha512('hello') });
        assert.equal(info.digest, sha512('hello'));
        assert.equal((await readAll(store, sha512('hello'))).toString(), 'hello');
      });

      it('refuses a digest mismatch with DigestMismatchError and leaves nothing visible', async () => {
        await store.writeBlob('other', [Buffer.from('existing')], {});
        const before = await store.stats();
        const wrong = sha256('something else');
        const err = await rejectsWith(store.writeBlob('r', chunks('hel', 'lo'), { digest: wrong }), DigestMismatchError, 'DIGEST_INVALID');
        assert.equal(err.expected, wrong);
        assert.equal(err.actual, sha256('hello'));
        await assertNothingVisible([wrong, sha256('hello')], before);
        assert.equal(await store.repositoryExists('r'), false);
        assert.deepEqual(await store.listRepositories(), ['other']);
      });

      it('refuses content larger than the expected size with SIZE_INVALID', async () => {
        const before = await store.stats();
        await rejectsWith(store.writeBlob('r', chunks('hello', ' world'), { size: 5 }), InvalidError, 'SIZE_INVALID');
        await assertNothingVisible([sha256('hello'), sha256('hello world')], before);
      });

      it('refuses content smaller than the expected size with SIZE_INVALID, even when the digest matches', async () => {
        const before = await store.stats();
        await rejectsWith(store.writeBlob('r', [Buffer.from('hello')], { size: 6, digest: sha256('hello') }), InvalidError, 'SIZE_INVALID');
        await assertNothingVisible([sha256('hello')], before);
      });

      it('refuses a malformed expected digest with DIGEST_INVALID', async () => {
        await rejectsWith(store.writeBlob('r', [Buffer.from('hello')], { digest: 'sha256:1234' }), InvalidError, 'DIGEST_INVALID');
        await assertNothingVisible([sha256('hello')], { blobs: 0, bytes: 0 });
      });

      it('leaves nothing visible when the source fails part way', async () => {
        const boom = new Error('client went away');
        await assert.rejects(store.writeBlob('r', failingAfter(boom, 'hel', 'lo'), {}), (err) => err === boom);
        await assertNothingVisible([sha256('hel'), sha256('hello')], { blobs: 0, bytes: 0 });
      });

      it('stops with AbortedError when the signal is aborted', async () => {
        const ac = new AbortController();
        ac.abort();
        await rejectsWith(store.writeBlob('r', chunks('hello'), {}, { signal: ac.signal }), AbortedError, 'UNAVAILABLE');
        await assertNothingVisible([sha256('hello')], { blobs: 0, bytes: 0 });
      });

      it('writing the same bytes again is success and counts once', async () => {
        const a = await store.writeBlob('r', [Buffer.from('same')], {});
        const b = await store.writeBlob('r', [Buffer.from('same')], { digest: sha256('same'), size: 4 });
        const c = await store.writeBlob('r2', [Buffer.from('same')], {});
        assert.deepEqual(a, b);
        assert.deepEqual(a, c);
        assert.deepEqual(await store.stats(), { blobs: 1, bytes: 4 });
        assert.ok(await store.statBlob('r2', a.digest));
      });

      it('50 concurrent writes of the same bytes all succeed and leave one blob', async () => {
        const data = bytesOf(64 * 1024, 7);
        const digest = sha256(data);
        const results = await Promise.all(
          Array.from({ length: 50 }, (_, i) => store.writeBlob(`repo${i % 5}`, chunks(data.subarray(0, 1000), data.subarray(1000)), i % 2 ? { digest, size: data.length } : {})),
        );
        for (const r of results) assert.deepEqual(r, { digest, size: data.length });
        assert.deepEqual(await store.stats(), { blobs: 1, bytes: data.length });
        for (let i = 0; i < 5; i++) assert.deepEqual(await store.statBlob(`repo${i}`, digest), { digest, size: data.length });
        assert.ok((await readAll(store, digest)).equals(data));
        assert.deepEqual(await store.listRepositories(), ['repo0', 'repo1', 'repo2', 'repo3', 'repo4']);
      });
    });

    describe('statBlob, statContent and readContent', () => {
      it('statBlob is per repository: only where the blob was written', async () => {
        const info = await store.writeBlob('a', [Buffer.from('data')], {});
        assert.deepEqual(await store.statBlob('a', info.digest), info);
        assert.equal(await store.statBlob('b', info.digest), undefined);
        assert.equal(await store.statBlob('a/b', info.digest), undefined);
        assert.deepEqual(await store.statContent(info.digest), info);
        assert.equal(await store.statContent(sha256('nope')), undefined);
        assert.equal(await store.repositoryExists('b'), false);
      });

      it('reads inclusive byte ranges', async () => {
        const info = await store.writeBlob('r', [Buffer.from('0123456789')], {});
        assert.equal((await readAll(store, info.digest, { start: 0, end: 9 })).toString(), '0123456789');
        assert.equal((await readAll(store, info.digest, { start: 0, end: 0 })).toString(), '0');
        assert.equal((await readAll(store, info.digest, { start: 2, end: 5 })).toString(), '2345');
        assert.equal((await readAll(store, info.digest, { start: 9, end: 9 })).toString(), '9');
        assert.equal((await readAll(store, info.digest, { start: 7, end: 9 })).toString(), '789');
      });

      it('reads a multi-MiB blob whole and across chunk boundaries', async () => {
        const data = bytesOf(3 * 1024 * 1024 + 123, 3);
        const info = await store.writeBlob('r', chunks(data.subarray(0, 500_000), data.subarray(500_000)), { size: data.length });
        assert.ok((await readAll(store, info.digest)).equals(data));
        const start = 1024 * 1024 - 10;
        const end = 2 * 1024 * 1024 + 10;
        assert.ok((await readAll(store, info.digest, { start, end })).equals(data.subarray(start, end + 1)));
      });

      it('readContent of an unknown digest is NotFoundError BLOB_UNKNOWN (404)', async () => {
        const err = await rejectsWith(store.readContent(sha256('missing')), NotFoundError, 'BLOB_UNKNOWN');
        assert.equal(err.status, 404);
      });
    });

    describe('mountBlob', () => {
      it('links a blob from a repository that has it', async () => {
        const info = await store.writeBlob('src', [Buffer.from('layer')], {});
        assert.deepEqual(await store.mountBlob('dst', info.digest, 'src'), info);
        assert.deepEqual(await store.statBlob('dst', info.digest), info);
        assert.equal(await store.repositoryExists('dst'), true);
        assert.deepEqual(await store.stats(), { blobs: 1, bytes: 5 }, 'a mount copies no bytes');
      });

      it('returns undefined when `from` does not have the blob, and links nothing', async () => {
        const info = await store.writeBlob('src', [Buffer.from('layer')], {});
        assert.equal(await store.mountBlob('dst', info.digest, 'elsewhere'), undefined);
        assert.equal(await store.statBlob('dst', info.digest), undefined);
        assert.equal(await store.repositoryExists('dst'), false);
      });

      it('without `from`, links any blob the store has', async () => {
        const info = await store.writeBlob('src', [Buffer.from('layer')], {});
        assert.deepEqual(await store.mountBlob('dst', info.digest, undefined), info);
        assert.deepEqual(await store.statBlob('dst', info.digest), info);
      });

      it('returns undefined for a digest the store does not have', async () => {
        assert.equal(await store.mountBlob('dst', sha256('nothing'), undefined), undefined);
        assert.equal(await store.mountBlob('dst', sha256('nothing'), 'src'), undefined);
        assert.deepEqual(await store.listRepositories(), []);
      });
    });

    describe('deleteBlob', () => {
      it('an unknown blob is NotFoundError BLOB_UNKNOWN (404)', async () => {
        const err = await rejectsWith(store.deleteBlob('r', sha256('never')), NotFoundError, 'BLOB_UNKNOWN');
        assert.equal(err.status, 404);
      });

      it('a blob of another repository is BLOB_UNKNOWN here and stays there', async () => {
        const info = await store.writeBlob('a', [Buffer.from('mine')], {});
        await rejectsWith(store.deleteBlob('b', info.digest), NotFoundError, 'BLOB_UNKNOWN');
        assert.deepEqual(await store.statBlob('a', info.digest), info);
        assert.equal((await readAll(store, info.digest)).toString(), 'mine');
      });

      it('bytes stay while another repository links them, and go with the last link', async () => {
        const info = await store.writeBlob('a', [Buffer.from('shared')], {});
        await store.mountBlob('b', info.digest, 'a');
        await store.deleteBlob('a', info.digest);
        assert.equal(await store.statBlob('a', info.digest), undefined);
        assert.deepEqual(await store.statBlob('b', info.digest), info);
        assert.equal((await readAll(store, info.digest)).toString(), 'shared');
        assert.deepEqual(await store.stats(), { blobs: 1, bytes: 6 });

        await store.deleteBlob('b', info.digest);
        assert.equal(await store.statBlob('b', info.digest), undefined);
        assert.equal(await store.statContent(info.digest), undefined);
        await rejectsWith(store.readContent(info.digest), NotFoundError, 'BLOB_UNKNOWN');
        assert.deepEqual(await store.stats(), { blobs: 0, bytes: 0 });
        await rejectsWith(store.deleteBlob('b', info.digest), NotFoundError, 'BLOB_UNKNOWN');
      });

      it('a deleted blob can be written again', async () => {
        const info = await store.writeBlob('r', [Buffer.from('again')], {});
        await store.deleteBlob('r', info.digest);
        assert.deepEqual(await store.writeBlob('r', [Buffer.from('again')], {}), info);
        assert.equal((await readAll(store, info.digest)).toString(), 'again');
        assert.deepEqual(await store.stats(), { blobs: 1, bytes: 5 });
      });
    });

    describe('upload sessions', () => {
      it('creates a session at offset 0 that getUpload and listUploads see', async () => {
        const s = await store.createUpload('r');
        assert.equal(s.repository, 'r');
        assert.equal(s.offset, 0);
        assert.match(s.id, /^[a-f0-9-]{36}$/);
        assert.deepEqual(await store.getUpload('r', s.id), s);
        assert.deepEqual((await store.listUploads()).map((u) => u.id), [s.id]);
        const t = await store.createUpload('r');
        assert.notEqual(t.id, s.id);
      });

      it('appends streamed chunks without a length, then commits the blob and drops the session', async () => {
        const s = await store.createUpload('r');
        const a = await store.appendUpload('r', s.id, chunks('hel', 'lo'));
        assert.equal(a.offset, 5);
        assert.equal((await store.getUpload('r', s.id)).offset, 5);
        const b = await store.appendUpload('r', s.id, chunks(' ', 'world'));
        assert.equal(b.offset, 11);
        const info = await store.commitUpload('r', s.id, sha256('hello world'));
        assert.deepEqual(info, { digest: sha256('hello world'), size: 11 });
        assert.deepEqual(await store.statBlob('r', info.digest), info);
        assert.equal((await readAll(store, info.digest)).toString(), 'hello world');
        assert.deepEqual(await store.stats(), { blobs: 1, bytes: 11 });
        await rejectsWith(store.getUpload('r', s.id), NotFoundError, 'BLOB_UPLOAD_UNKNOWN');
        assert.deepEqual(await store.listUploads(), []);
        assert.equal(await store.repositoryExists('r'), true);
      });

      it('appends chunks with start and length', async () => {
        const s = await store.createUpload('r');
        assert.equal((await store.appendUpload('r', s.id, chunks('abc'), { start: 0, length: 3 })).offset, 3);
        assert.equal((await store.appendUpload('r', s.id, chunks('de', 'f'), { start: 3, length: 3 })).offset, 6);
        assert.equal((await store.appendUpload('r', s.id, chunks('g'), { start: 6 })).offset, 7);
        const info = await store.commitUpload('r', s.id, sha256('abcdefg'));
        assert.equal((await readAll(store, info.digest)).toString(), 'abcdefg');
      });

      it('an out-of-order start is RANGE_INVALID (416) and the session stays usable at the same offset', async () => {
        const s = await store.createUpload('r');
        await store.appendUpload('r', s.id, chunks('abc'), { start: 0, length: 3 });
        const err = await rejectsWith(store.appendUpload('r', s.id, chunks('XYZ'), { start: 5, length: 3 }), InvalidError, 'RANGE_INVALID');
        assert.equal(err.status, 416);
        assert.deepEqual(err.detail, { offset: 3 });
        await rejectsWith(store.appendUpload('r', s.id, chunks('XYZ'), { start: 0 }), InvalidError, 'RANGE_INVALID');
        assert.equal((await store.getUpload('r', s.id)).offset, 3);
        assert.equal((await store.appendUpload('r', s.id, chunks('def'), { start: 3, length: 3 })).offset, 6);
        const info = await store.commitUpload('r', s.id, sha256('abcdef'));
        assert.equal((await readAll(store, info.digest)).toString(), 'abcdef');
      });

      it('a declared length longer than the data is SIZE_INVALID and the chunk is rolled back', async () => {
        const s = await store.createUpload('r');
        await store.appendUpload('r', s.id, chunks('abc'), { start: 0, length: 3 });
        await rejectsWith(store.appendUpload('r', s.id, chunks('de'), { start: 3, length: 10 }), InvalidError, 'SIZE_INVALID');
        assert.equal((await store.getUpload('r', s.id)).offset, 3);
        assert.equal((await store.appendUpload('r', s.id, chunks('d', 'e'), { start: 3, length: 2 })).offset, 5);
        const info = await store.commitUpload('r', s.id, sha256('abcde'));
        assert.deepEqual(info, { digest: sha256('abcde'), size: 5 });
        assert.equal((await readAll(store, info.digest)).toString(), 'abcde');
      });

      it('data longer than the declared length is SIZE_INVALID and the chunk is rolled back', async () => {
        const s = await store.createUpload('r');
        await store.appendUpload('r', s.id, chunks('abc'));
        await rejectsWith(store.appendUpload('r', s.id, chunks('de', 'fgh'), { start: 3, length: 2 }), InvalidError, 'SIZE_INVALID');
        assert.equal((await store.getUpload('r', s.id)).offset, 3);
        await store.appendUpload('r', s.id, chunks('de'), { start: 3, length: 2 });
        const info = await store.commitUpload('r', s.id, sha256('abcde'));
        assert.equal((await readAll(store, info.digest)).toString(), 'abcde');
      });

      it('a streamed chunk that fails part way keeps what arrived, so the client can resume', async () => {
        const s = await store.createUpload('r');
        const boom = new Error('client went away');
        await assert.rejects(store.appendUpload('r', s.id, failingAfter(boom, 'ab', 'cd')), (err) => err === boom);
        const offset = (await store.getUpload('r', s.id)).offset;
        assert.equal(offset, 4);
        await store.appendUpload('r', s.id, chunks('ef'), { start: offset });
        const info = await store.commitUpload('r', s.id, sha256('abcdef'));
        assert.equal((await readAll(store, info.digest)).toString(), 'abcdef');
      });

      it('two concurrent chunks for the same offset: one is stored, the other is RANGE_INVALID', async () => {
        const s = await store.createUpload('r');
        const results = await Promise.allSettled([
          store.appendUpload('r', s.id, chunks('aa', 'aa'), { start: 0, length: 4 }),
          store.appendUpload('r', s.id, chunks('bb', 'bb'), { start: 0, length: 4 }),
        ]);
        assert.deepEqual(results.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
        const rejected = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
        assert.equal((rejected.reason as ShoalError).code, 'RANGE_INVALID');
        assert.equal((await store.getUpload('r', s.id)).offset, 4);
        const winner = results[0]!.status === 'fulfilled' ? 'aaaa' : 'bbbb';
        const info = await store.commitUpload('r', s.id, sha256(winner));
        assert.equal((await readAll(store, info.digest)).toString(), winner);
      });

      it('a commit with the wrong digest is DIGEST_INVALID and nothing becomes visible', async () => {
        const s = await store.createUpload('r');
        await store.appendUpload('r', s.id, chunks('hello'));
        const wrong = sha256('goodbye');
        const err = await rejectsWith(store.commitUpload('r', s.id, wrong), DigestMismatchError, 'DIGEST_INVALID');
        assert.equal(err.actual, sha256('hello'));
        await assertNothingVisible([wrong, sha256('hello')], { blobs: 0, bytes: 0 });
        assert.equal(await store.repositoryExists('r'), false);
      });

      it('a commit with a malformed digest is DIGEST_INVALID', async () => {
        const s = await store.createUpload('r');
        await store.appendUpload('r', s.id, chunks('hello'));
        await rejectsWith(store.commitUpload('r', s.id, 'sha256:abc'), InvalidError, 'DIGEST_INVALID');
        await rejectsWith(store.commitUpload('r', s.id, `md5:${'0'.repeat(32)}`), InvalidError, 'DIGEST_INVALID');
        await assertNothingVisible([sha256('hello')], { blobs: 0, bytes: 0 });
      });

      it('commits an empty session', async () => {
        const s = await store.createUpload('r');
        const info = await store.commitUpload('r', s.id, sha256(''));
        assert.deepEqual(info, { digest: sha256(''), size: 0 });
        assert.equal((await readAll(store, info.digest)).length, 0);
      });

      it('commits against a sha512 digest', async () => {
        const s = await store.createUpload('r');
        await store.appendUpload('r', s.id, chunks('hel', 'lo'));
        const info = await store.commitUpload('r', s.id, sha512('hello'));
        assert.deepEqual(info, { digest: sha512('hello'), size: 5 });
        assert.equal((await readAll(store, sha512('hello'))).toString(), 'hello');
        assert.deepEqual(await store.statBlob('r', sha512('hello')), info);
      });

      it('committing bytes the store already has links them and counts them once', async () => {
        const existing = await store.writeBlob('other', [Buffer.from('dup')], {});
        const s = await store.createUpload('r');
        await store.appendUpload('r', s.id, chunks('dup'));
        assert.deepEqual(await store.commitUpload('r', s.id, existing.digest), existing);
        assert.deepEqual(await store.statBlob('r', existing.digest), existing);
        assert.deepEqual(await store.stats(), { blobs: 1, bytes: 3 });
        assert.deepEqual(await store.listUploads(), []);
      });

      it("another repository's session is BLOB_UPLOAD_UNKNOWN there and untouched", async () => {
        const s = await store.createUpload('a');
        await store.appendUpload('a', s.id, chunks('abc'));
        const err = await rejectsWith(store.getUpload('b', s.id), NotFoundError, 'BLOB_UPLOAD_UNKNOWN');
        assert.equal(err.status, 404);
        await rejectsWith(store.appendUpload('b', s.id, chunks('x')), NotFoundError, 'BLOB_UPLOAD_UNKNOWN');
        await rejectsWith(store.commitUpload('b', s.id, sha256('abc')), NotFoundError, 'BLOB_UPLOAD_UNKNOWN');
        await rejectsWith(store.deleteUpload('b', s.id), NotFoundError, 'BLOB_UPLOAD_UNKNOWN');
        assert.equal((await store.getUpload('a', s.id)).offset, 3);
        assert.equal(await store.statContent(sha256('abc')), undefined);
        await store.commitUpload('a', s.id, sha256('abc'));
        assert.equal(await store.statBlob('b', sha256('abc')), undefined);
      });

      it('unknown and malformed session ids are BLOB_UPLOAD_UNKNOWN', async () => {
        await rejectsWith(store.getUpload('r', '00000000-0000-0000-0000-000000000000'), NotFoundError, 'BLOB_UPLOAD_UNKNOWN');
        await rejectsWith(store.getUpload('r', '../../etc/passwd'), NotFoundError, 'BLOB_UPLOAD_UNKNOWN');
        await rejectsWith(store.getUpload('r', ''), NotFoundError, 'BLOB_UPLOAD_UNKNOWN');
        await rejectsWith(store.appendUpload('r', 'nope', chunks('x')), NotFoundError, 'BLOB_UPLOAD_UNKNOWN');
        await rejectsWith(store.commitUpload('r', 'nope', sha256('x')), NotFoundError, 'BLOB_UPLOAD_UNKNOWN');
      });

      it('deleteUpload removes the session; it cannot be used afterwards', async () => {
        const s = await store.createUpload('r');
        const keep = await store.createUpload('r');
        await store.appendUpload('r', s.id, chunks('abc'));
        await store.deleteUpload('r', s.id);
        await rejectsWith(store.getUpload('r', s.id), NotFoundError, 'BLOB_UPLOAD_UNKNOWN');
        await rejectsWith(store.appendUpload('r', s.id, chunks('d')), NotFoundError, 'BLOB_UPLOAD_UNKNOWN');
        await rejectsWith(store.commitUpload('r', s.id, sha256('abc')), NotFoundError, 'BLOB_UPLOAD_UNKNOWN');
        await rejectsWith(store.deleteUpload('r', s.id), NotFoundError, 'BLOB_UPLOAD_UNKNOWN');
        assert.deepEqual((await store.listUploads()).map((u) => u.id), [keep.id]);
        assert.deepEqual(await store.stats(), { blobs: 0, bytes: 0 });
      });
    });

    describe('manifests and tags', () => {
      it('putManifest stores the bytes, the record and the tag', async () => {
        const bytes = manifestBytes(1);
        const rec = await store.putManifest({ repository: 'app', bytes, mediaType: OCI_MANIFEST, tag: 'v1', annotations: { a: 'b' } });
        assert.equal(rec.digest, sha256(bytes));
        assert.equal(rec.size, bytes.length);
        assert.equal(rec.mediaType, OCI_MANIFEST);
        assert.deepEqual(rec.annotations, { a: 'b' });
        assert.equal(typeof rec.created, 'number');
        assert.deepEqual(await store.getManifest('app', rec.digest), rec);
        assert.equal(await store.resolveTag('app', 'v1'), rec.digest);
        assert.ok((await readAll(store, rec.digest)).equals(bytes));
        assert.deepEqual(await store.statBlob('app', rec.digest), { digest: rec.digest, size: bytes.length });
        assert.equal(await store.repositoryExists('app'), true);
        assert.deepEqual(await store.stats(), { blobs: 1, bytes: bytes.length });
      });

      it('putManifest without a tag stores an untagged manifest', async () => {
        const rec = await store.putManifest({ repository: 'app', bytes: manifestBytes(2), mediaType: OCI_MANIFEST });
        assert.deepEqual(await store.getManifest('app', rec.digest), rec);
        assert.deepEqual(await store.listTags('app'), []);
      });

      it('manifests and tags are per repository', async () => {
        const rec = await store.putManifest({ repository: 'a', bytes: manifestBytes(1), mediaType: OCI_MANIFEST, tag: 'v1' });
        assert.equal(await store.getManifest('b', rec.digest), undefined);
        assert.equal(await store.getManifest('a/b', rec.digest), undefined);
        assert.equal(await store.resolveTag('b', 'v1'), undefined);
        assert.equal(await store.resolveTag('a', 'v2'), undefined);
        assert.equal(await store.getManifest('a', sha256('other')), undefined);
      });

      it('listTags is sorted and does not leak between repositories sharing a prefix', async () => {
        const rec = await store.putManifest({ repository: 'a', bytes: manifestBytes(1), mediaType: OCI_MANIFEST, tag: 'v2' });
        for (const tag of ['latest', 'v10', '1.0', 'V1', 'alpha', '_x']) {
          await store.putManifest({ repository: 'a', bytes: manifestBytes(1), mediaType: OCI_MANIFEST, tag });
        }
        await store.putManifest({ repository: 'a/b', bytes: manifestBytes(3), mediaType: OCI_MANIFEST, tag: 'zzz' });
        await store.putManifest({ repository: 'ab', bytes: manifestBytes(4), mediaType: OCI_MANIFEST, tag: 'yyy' });
        assert.deepEqual(await store.listTags('a'), ['1.0', 'V1', '_x', 'alpha', 'latest', 'v10', 'v2']);
        assert.deepEqual(await store.listTags('a/b'), ['zzz']);
        assert.deepEqual(await store.listTags('ab'), ['yyy']);
        assert.deepEqual(await store.listTags('nothing'), []);
        assert.equal(await store.resolveTag('a', 'alpha'), rec.digest);
      });

      it('putting a tag again moves it to the new manifest', async () => {
        const one = await store.putManifest({ repository: 'app', bytes: manifestBytes(1), mediaType: OCI_MANIFEST, tag: 'latest' });
        const two = await store.putManifest({ repository: 'app', bytes: manifestBytes(2), mediaType: OCI_MANIFEST, tag: 'latest' });
        assert.equal(await store.resolveTag('app', 'latest'), two.digest);
        assert.ok(await store.getManifest('app', one.digest), 'the old manifest stays, untagged');
        assert.deepEqual(await store.listTags('app'), ['latest']);
      });

      it('deleteTag removes only the tag; an unknown tag is MANIFEST_UNKNOWN', async () => {
        const rec = await store.putManifest({ repository: 'app', bytes: manifestBytes(1), mediaType: OCI_MANIFEST, tag: 'v1' });
        await store.putManifest({ repository: 'app', bytes: manifestBytes(1), mediaType: OCI_MANIFEST, tag: 'v2' });
        await store.deleteTag('app', 'v1');
        assert.equal(await store.resolveTag('app', 'v1'), undefined);
        assert.equal(await store.resolveTag('app', 'v2'), rec.digest);
        assert.ok(await store.getManifest('app', rec.digest));
        assert.ok((await readAll(store, rec.digest)).length > 0);
        const err = await rejectsWith(store.deleteTag('app', 'v1'), NotFoundError, 'MANIFEST_UNKNOWN');
        assert.equal(err.status, 404);
        await rejectsWith(store.deleteTag('other', 'v2'), NotFoundError, 'MANIFEST_UNKNOWN');
      });

      it('deleteManifest removes the manifest, its bytes and every tag pointing to it, and no other tag', async () => {
        const gone = await store.putManifest({ repository: 'app', bytes: manifestBytes(1), mediaType: OCI_MANIFEST, tag: 'v1' });
        await store.putManifest({ repository: 'app', bytes: manifestBytes(1), mediaType: OCI_MANIFEST, tag: 'stable' });
        const kept = await store.putManifest({ repository: 'app', bytes: manifestBytes(2), mediaType: OCI_MANIFEST, tag: 'v2' });
        await store.deleteManifest('app', gone.digest);
        assert.equal(await store.getManifest('app', gone.digest), undefined);
        assert.equal(await store.resolveTag('app', 'v1'), undefined);
        assert.equal(await store.resolveTag('app', 'stable'), undefined);
        assert.equal(await store.resolveTag('app', 'v2'), kept.digest);
        assert.deepEqual(await store.listTags('app'), ['v2']);
        assert.equal(await store.statContent(gone.digest), undefined);
        assert.deepEqual(await store.stats(), { blobs: 1, bytes: kept.size });
      });

      it('deleteManifest of an unknown manifest is MANIFEST_UNKNOWN', async () => {
        const rec = await store.putManifest({ repository: 'a', bytes: manifestBytes(1), mediaType: OCI_MANIFEST, tag: 't' });
        await rejectsWith(store.deleteManifest('a', sha256('nope')), NotFoundError, 'MANIFEST_UNKNOWN');
        await rejectsWith(store.deleteManifest('b', rec.digest), NotFoundError, 'MANIFEST_UNKNOWN');
        assert.equal(await store.resolveTag('a', 't'), rec.digest);
      });

      it('deleting a manifest in one repository keeps it, its tags and its bytes in another', async () => {
        const bytes = manifestBytes(1);
        const rec = await store.putManifest({ repository: 'a', bytes, mediaType: OCI_MANIFEST, tag: 'v1' });
        await store.putManifest({ repository: 'b', bytes, mediaType: OCI_MANIFEST, tag: 'v1' });
        await store.deleteManifest('a', rec.digest);
        assert.equal(await store.resolveTag('a', 'v1'), undefined);
        assert.equal(await store.resolveTag('b', 'v1'), rec.digest);
        assert.ok(await store.getManifest('b', rec.digest));
        assert.ok((await readAll(store, rec.digest)).equals(bytes));
        assert.deepEqual(await store.stats(), { blobs: 1, bytes: bytes.length });
      });

      it('referrers are listed under their subject and removed when deleted', async () => {
        const subject = await store.putManifest({ repository: 'app', bytes: manifestBytes('subject'), mediaType: OCI_MANIFEST, tag: 'v1' });
        const sig = await store.putManifest({
          repository: 'app',
          bytes: manifestBytes('sig'),
          mediaType: OCI_MANIFEST,
          subject: subject.digest,
          artifactType: 'application/vnd.example.signature',
          annotations: { 'org.example.signer': 'ci' },
        });
        const sbom = await store.putManifest({
          repository: 'app',
          bytes: manifestBytes('sbom'),
          mediaType: MediaType.OciIndex,
          subject: subject.digest,
          artifactType: 'application/spdx+json',
        });
        assert.equal(sig.subject, subject.digest);
        assert.equal(sig.artifactType, 'application/vnd.example.signature');
        const list = await store.listReferrers('app', subject.digest);
        assert.equal(list.length, 2);
        const byDigest = new Map(list.map((d) => [d.digest, d]));
        assert.deepEqual(byDigest.get(sig.digest), {
          mediaType: OCI_MANIFEST,
          digest: sig.digest,
          size: sig.size,
          artifactType: 'application/vnd.example.signature',
          annotations: { 'org.example.signer': 'ci' },
        });
        assert.deepEqual(byDigest.get(sbom.digest), { mediaType: MediaType.OciIndex, digest: sbom.digest, size: sbom.size, artifactType: 'application/spdx+json' });
        assert.deepEqual(await store.listReferrers('other', subject.digest), []);
        assert.deepEqual(await store.listReferrers('app', sig.digest), []);

        await store.deleteManifest('app', sig.digest);
        assert.deepEqual((await store.listReferrers('app', subject.digest)).map((d) => d.digest), [sbom.digest]);
        await store.deleteManifest('app', sbom.digest);
        assert.deepEqual(await store.listReferrers('app', subject.digest), []);
      });

      it('referrers may name a subject the store does not have', async () => {
        const missing = sha256('not pushed yet');
        const ref = await store.putManifest({ repository: 'app', bytes: manifestBytes('r'), mediaType: OCI_MANIFEST, subject: missing });
        assert.deepEqual((await store.listReferrers('app', missing)).map((d) => d.digest), [ref.digest]);
      });

      it('a manifest deleted while it is being put again is never left without its bytes', async () => {
        for (let i = 0; i < 10; i++) {
          const bytes = manifestBytes(`race-${i}`);
          const rec = await store.putManifest({ repository: 'app', bytes, mediaType: OCI_MANIFEST, tag: 't' });
          const [del, put] = await Promise.allSettled([
            store.deleteManifest('app', rec.digest),
            store.putManifest({ repository: 'app', bytes, mediaType: OCI_MANIFEST, tag: 't' }),
          ]);
          assert.equal(del.status, 'fulfilled');
          if (put.status === 'rejected') assert.equal((put.reason as ShoalError).code, 'UNAVAILABLE', 'a lost race is reported as retryable');
          if (await store.getManifest('app', rec.digest)) {
            assert.ok((await readAll(store, rec.digest)).equals(bytes), 'a stored manifest has its bytes');
            assert.deepEqual(await store.statContent(rec.digest), { digest: rec.digest, size: bytes.length });
            await store.deleteManifest('app', rec.digest);
          } else {
            assert.equal(await store.resolveTag('app', 't'), undefined, 'no tag points to a missing manifest');
            assert.equal(await store.statContent(rec.digest), undefined);
          }
          assert.deepEqual(await store.stats(), { blobs: 0, bytes: 0 });
        }
      });
    });

    describe('openIngest', () => {
      it('bytes appended piece by piece can be read back while writing and are invisible until commit', async () => {
        const ingest = await store.openIngest();
        await ingest.append(Buffer.from('hello '));
        await ingest.append(Buffer.from('world'));
        assert.equal(ingest.size, 11);
        assert.equal((await toBuffer(await ingest.read({ start: 0, end: 4 }))).toString(), 'hello');
        assert.equal((await toBuffer(await ingest.read({ start: 6, end: 10 }))).toString(), 'world');
        assert.equal(await store.statContent(sha256('hello world')), undefined);
        assert.deepEqual(await store.stats(), { blobs: 0, bytes: 0 });

        const info = await ingest.commit('r', { digest: sha256('hello world'), size: 11 });
        assert.deepEqual(info, { digest: sha256('hello world'), size: 11 });
        assert.deepEqual(await store.statBlob('r', info.digest), info);
        assert.equal((await readAll(store, info.digest)).toString(), 'hello world');
        assert.deepEqual(await store.stats(), { blobs: 1, bytes: 11 });
        await ingest.abort(); // safe after commit
        assert.equal((await readAll(store, info.digest)).toString(), 'hello world', 'abort after commit keeps the blob');
      });

      it('commit without expectations stores whatever was appended', async () => {
        const ingest = await store.openIngest();
        await ingest.append(Buffer.from('abc'));
        assert.deepEqual(await ingest.commit('r', {}), { digest: sha256('abc'), size: 3 });
      });

      it('a digest mismatch on commit is DIGEST_INVALID, stores nothing and ends the ingest', async () => {
        const ingest = await store.openIngest();
        await ingest.append(Buffer.from('hello'));
        const err = await rejectsWith(ingest.commit('r', { digest: sha256('other') }), DigestMismatchError, 'DIGEST_INVALID');
        assert.equal(err.actual, sha256('hello'));
        await assertNothingVisible([sha256('hello'), sha256('other')], { blobs: 0, bytes: 0 });
        await assert.rejects(ingest.append(Buffer.from('more')), (e) => e instanceof ShoalError);
        await assert.rejects(ingest.commit('r', {}), (e) => e instanceof ShoalError);
        assert.equal(await store.statContent(sha256('hello')), undefined);
      });

      it('sha256 gives the digest of what was appended, ends the writing, and commit checks against the same', async () => {
        const ingest = await store.openIngest();
        await ingest.append(Buffer.from('hello '));
        await ingest.append([Buffer.from('wor'), Buffer.from('ld')]);
        assert.equal(await ingest.sha256(), sha256('hello world'));
        assert.equal(await ingest.sha256(), sha256('hello world'), 'asked again, the same');
        await assert.rejects(ingest.append(Buffer.from('!')), (e) => e instanceof ShoalError, 'no byte after the digest');
        assert.equal(await store.statContent(sha256('hello world')), undefined, 'not visible before commit');
        await rejectsWith(ingest.commit('r', { digest: sha256('hello world!') }), DigestMismatchError, 'DIGEST_INVALID');
        await assertNothingVisible([sha256('hello world')], { blobs: 0, bytes: 0 });
        await assert.rejects(ingest.sha256(), (e) => e instanceof ShoalError, 'no digest of an ended ingest');
        const again = await store.openIngest();
        await again.append(Buffer.from('hello world'));
        assert.equal(await again.sha256(), sha256('hello world'));
        assert.deepEqual(await again.commit('r', { digest: sha256('hello world'), size: 11 }), { digest: sha256('hello world'), size: 11 });
      });

      it('a size mismatch on commit is SIZE_INVALID and stores nothing', async () => {
        const ingest = await store.openIngest();
        await ingest.append(Buffer.from('hello'));
        await rejectsWith(ingest.commit('r', { size: 4, digest: sha256('hello') }), InvalidError, 'SIZE_INVALID');
        await assertNothingVisible([sha256('hello')], { blobs: 0, bytes: 0 });
      });

      it('abort drops the bytes; it is safe twice', async () => {
        const ingest = await store.openIngest();
        await ingest.append(Buffer.from('dropped'));
        await ingest.abort();
        await ingest.abort();
        await assert.rejects(ingest.commit('r', {}), (e) => e instanceof ShoalError);
        await assertNothingVisible([sha256('dropped')], { blobs: 0, bytes: 0 });
      });

      it('commits against a sha512 expected digest', async () => {
        const ingest = await store.openIngest();
        await ingest.append(Buffer.from('hel'));
        await ingest.append(Buffer.from('lo'));
        const info = await ingest.commit('r', { digest: sha512('hello') });
        assert.deepEqual(info, { digest: sha512('hello'), size: 5 });
        assert.equal((await readAll(store, sha512('hello'))).toString(), 'hello');
      });

      it('committing bytes the store already has links them and counts them once', async () => {
        await store.writeBlob('a', [Buffer.from('dup')], {});
        const ingest = await store.openIngest();
        await ingest.append(Buffer.from('dup'));
        await ingest.commit('b', { digest: sha256('dup') });
        assert.ok(await store.statBlob('b', sha256('dup')));
        assert.deepEqual(await store.stats(), { blobs: 1, bytes: 3 });
      });

      it('an aborted signal stops append', async () => {
        const ingest = await store.openIngest();
        const ac = new AbortController();
        ac.abort();
        try {
          await rejectsWith(ingest.append(Buffer.from('x'), { signal: ac.signal }), AbortedError, 'UNAVAILABLE');
        } finally {
          await ingest.abort();
        }
        assert.deepEqual(await store.stats(), { blobs: 0, bytes: 0 });
      });
    });

    describe('repositories and stats', () => {
      it('repositoryExists and listRepositories see every repository that holds content', async () => {
        assert.deepEqual(await store.listRepositories(), []);
        const info = await store.writeBlob('b', [Buffer.from('x')], {});
        await store.putManifest({ repository: 'a/b', bytes: manifestBytes(1), mediaType: OCI_MANIFEST, tag: 't' });
        await store.mountBlob('a', info.digest, 'b');
        await store.createUpload('upload-only');
        assert.deepEqual(await store.listRepositories(), ['a', 'a/b', 'b']);
        assert.equal(await store.repositoryExists('a'), true);
        assert.equal(await store.repositoryExists('a/b'), true);
        assert.equal(await store.repositoryExists('a/'), false);
        assert.equal(await store.repositoryExists('c'), false);
        assert.equal(await store.repositoryExists('upload-only'), false, 'an upload alone does not make a repository');
      });

      it('stats counts distinct blobs and bytes, and stays right through deletes', async () => {
        assert.deepEqual(await store.stats(), { blobs: 0, bytes: 0 });
        const a = await store.writeBlob('r', [Buffer.from('aaaa')], {});
        const b = await store.writeBlob('r', [Buffer.from('bbbbbbbbbb')], {});
        await store.writeBlob('s', [Buffer.from('aaaa')], {});
        const s = await store.createUpload('r');
        await store.appendUpload('r', s.id, chunks('uploaded'));
        assert.deepEqual(await store.stats(), { blobs: 2, bytes: 14 }, 'an open session is not a blob');
        const c = await store.commitUpload('r', s.id, sha256('uploaded'));
        const m = await store.putManifest({ repository: 'r', bytes: manifestBytes(1), mediaType: OCI_MANIFEST });
        assert.deepEqual(await store.stats(), { blobs: 4, bytes: 14 + 8 + m.size });

        await store.deleteBlob('r', a.digest); // still held by s
        assert.deepEqual(await store.stats(), { blobs: 4, bytes: 22 + m.size });
        await store.deleteBlob('s', a.digest);
        assert.deepEqual(await store.stats(), { blobs: 3, bytes: 18 + m.size });
        await store.deleteBlob('r', b.digest);
        await store.deleteBlob('r', c.digest);
        await store.deleteManifest('r', m.digest);
        assert.deepEqual(await store.stats(), { blobs: 0, bytes: 0 });
        await rejectsWith(store.deleteBlob('r', b.digest), NotFoundError, 'BLOB_UNKNOWN');
        assert.deepEqual(await store.stats(), { blobs: 0, bytes: 0 });
      });

      it('stats returns a copy, not live state', async () => {
        const before = await store.stats();
        before.blobs = 99;
        assert.deepEqual(await store.stats(), { blobs: 0, bytes: 0 });
      });
    });
  });
}
