/**
 * The OCI Distribution API of one node, endpoint by endpoint: status, headers and bodies, against a real
 * node (Koa + LevelDB in a temp dir) in this process. Malformed input is malformed.test.ts's job.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { startTestNode, type TestNode } from '../helpers/node.ts';
import {
  MediaTypes as MT,
  buildImage,
  descriptorOf,
  makeImage,
  makeIndex,
  pushBlob,
  putManifest,
  randomBlob,
  randomDigest,
  rawRequest,
  request,
  sha256,
  sha512,
  startUpload,
  withDigest,
  type Resp,
} from '../helpers/oci-client.ts';

let t: TestNode;
let base: string;

const req = (method: string, path: string, opts?: Parameters<typeof request>[3]): Promise<Resp> => request(base, method, path, opts);

function assertOciError(res: Resp, status: number, code: string): void {
  assert.equal(res.status, status, `expected ${status} ${code}, got ${res.status}: ${res.text()}`);
  assert.match(res.headers.get('content-type') ?? '', /^application\/json\b/);
  const body = res.json();
  assert.ok(Array.isArray(body.errors) && body.errors.length > 0, res.text());
  assert.equal(body.errors[0].code, code);
  assert.equal(typeof body.errors[0].message, 'string');
}

/** The upload id is the last path segment of a session Location. */
function uploadId(location: string): string {
  return new URL(location, 'http://x').pathname.split('/').pop()!;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

async function patchChunk(location: string, data: Buffer, start: number): Promise<Resp> {
  return req('PATCH', location, {
    headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `${start}-${start + data.length - 1}` },
    body: data,
  });
}

async function getBlobBytes(repo: string, digest: string): Promise<Buffer> {
  const res = await req('GET', `/v2/${repo}/blobs/${digest}`);
  assert.equal(res.status, 200, res.text());
  return res.body;
}

describe('OCI distribution API', () => {
  before(async () => {
    // A short grace: a keep-alive connection whose last response ended just as stop() began holds stop() for
    // the whole grace period (see the shutdown test), which should not cost this file 10 s.
    t = await startTestNode({ config: { shutdownGraceMs: 2000 } });
    base = t.url;
  });
  after(async () => {
    await t?.stop();
  });

  describe('base endpoint', () => {
    it('GET /v2/ -> 200 with the API version header', async () => {
      const res = await req('GET', '/v2/');
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('docker-distribution-api-version'), 'registry/2.0');
      assert.deepEqual(res.json(), {});
    });
    it('HEAD /v2/ -> 200, no body', async () => {
      const res = await req('HEAD', '/v2/');
      assert.equal(res.status, 200);
      assert.equal(res.body.length, 0);
    });
    it('GET /v2 (no trailing slash) -> 200', async () => {
      const res = await req('GET', '/v2');
      assert.equal(res.status, 200);
    });
  });

  describe('blobs', () => {
    const repo = 'api/blobs';
    const data = randomBlob(1000);
    let digest: string;
    before(async () => {
      digest = await pushBlob(base, repo, data);
    });

    it('GET -> 200 with Content-Length, Docker-Content-Digest, Accept-Ranges and the bytes', async () => {
      const res = await req('GET', `/v2/${repo}/blobs/${digest}`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-length'), '1000');
      assert.equal(res.headers.get('docker-content-digest'), digest);
      assert.equal(res.headers.get('accept-ranges'), 'bytes');
      assert.ok(res.body.equals(data));
    });

    it('HEAD -> 200 with the same headers and no body', async () => {
      const res = await req('HEAD', `/v2/${repo}/blobs/${digest}`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-length'), '1000');
      assert.equal(res.headers.get('docker-content-digest'), digest);
      assert.equal(res.headers.get('accept-ranges'), 'bytes');
      assert.equal(res.body.length, 0);
    });

    const ranges: Array<[string, number, number]> = [
      ['bytes=10-19', 10, 19],
      ['bytes=0-0', 0, 0],
      ['bytes=990-', 990, 999],
      ['bytes=0-', 0, 999],
      ['bytes=-10', 990, 999],
      ['bytes=-5000', 0, 999],
      ['bytes=995-2000', 995, 999],
    ];
    for (const [range, start, end] of ranges) {
      it(`Range ${range} -> 206 bytes ${start}-${end}/1000`, async () => {
        const res = await req('GET', `/v2/${repo}/blobs/${digest}`, { headers: { Range: range } });
        assert.equal(res.status, 206);
        assert.equal(res.headers.get('content-range'), `bytes ${start}-${end}/1000`);
        assert.equal(res.headers.get('content-length'), String(end - start + 1));
        assert.equal(res.headers.get('docker-content-digest'), digest);
        assert.ok(res.body.equals(data.subarray(start, end + 1)));
      });
    }

    it('HEAD with Range -> 206 with the range length and no body', async () => {
      const res = await req('HEAD', `/v2/${repo}/blobs/${digest}`, { headers: { Range: 'bytes=100-199' } });
      assert.equal(res.status, 206);
      assert.equal(res.headers.get('content-range'), 'bytes 100-199/1000');
      assert.equal(res.headers.get('content-length'), '100');
      assert.equal(res.body.length, 0);
    });

    for (const range of ['bytes=1000-', 'bytes=5000-6000', 'bytes=-0']) {
      it(`unsatisfiable Range ${range} -> 416 with Content-Range bytes */1000`, async () => {
        const res = await req('GET', `/v2/${repo}/blobs/${digest}`, { headers: { Range: range } });
        assert.equal(res.status, 416);
        assert.equal(res.headers.get('content-range'), 'bytes */1000');
      });
    }

    it('unknown blob -> 404 BLOB_UNKNOWN', async () => {
      assertOciError(await req('GET', `/v2/${repo}/blobs/${randomDigest()}`), 404, 'BLOB_UNKNOWN');
      const head = await req('HEAD', `/v2/${repo}/blobs/${randomDigest()}`);
      assert.equal(head.status, 404);
      assert.equal(head.body.length, 0);
    });

    it('an empty blob can be pushed and read', async () => {
      const d = await pushBlob(base, repo, Buffer.alloc(0));
      assert.equal(d, 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
      const res = await req('GET', `/v2/${repo}/blobs/${d}`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-length'), '0');
      assert.equal(res.body.length, 0);
    });

    it('DELETE blob -> 202, then GET -> 404 BLOB_UNKNOWN', async () => {
      const d = await pushBlob(base, repo, randomBlob(100));
      const del = await req('DELETE', `/v2/${repo}/blobs/${d}`);
      assert.equal(del.status, 202);
      assertOciError(await req('GET', `/v2/${repo}/blobs/${d}`), 404, 'BLOB_UNKNOWN');
      assertOciError(await req('DELETE', `/v2/${repo}/blobs/${d}`), 404, 'BLOB_UNKNOWN');
      // The other blob of the repository is untouched.
      assert.ok((await getBlobBytes(repo, digest)).equals(data));
    });

    it('DELETE of a blob that another repository also holds -> 202, then 404 in this repository (and still 200 in the other)', async () => {
      const shared = randomBlob(321);
      const d = await pushBlob(base, repo, shared);
      await pushBlob(base, 'api/blobs-other', shared);
      const del = await req('DELETE', `/v2/${repo}/blobs/${d}`);
      assert.equal(del.status, 202);
      assertOciError(await req('GET', `/v2/${repo}/blobs/${d}`), 404, 'BLOB_UNKNOWN');
      const head = await req('HEAD', `/v2/${repo}/blobs/${d}`);
      assert.equal(head.status, 404);
      assert.ok((await getBlobBytes('api/blobs-other', d)).equals(shared));
    });
  });

  describe('uploads', () => {
    const repo = 'api/uploads';

    it('POST -> 202 with Location, Range 0-0 and Docker-Upload-UUID', async () => {
      const res = await req('POST', `/v2/${repo}/blobs/uploads/`);
      assert.equal(res.status, 202);
      const location = res.headers.get('location');
      assert.ok(location);
      assert.match(new URL(location, base).pathname, new RegExp(`^/v2/${repo}/blobs/uploads/[^/]+$`));
      assert.equal(res.headers.get('range'), '0-0');
      const uuid = res.headers.get('docker-upload-uuid');
      assert.ok(uuid);
      assert.equal(uploadId(location), uuid);
      assert.equal(res.headers.get('content-length'), '0');
      // GET status: 204 with Range and Location.
      const st = await req('GET', location);
      assert.equal(st.status, 204);
      assert.equal(st.headers.get('range'), '0-0');
      assert.equal(st.headers.get('location'), location);
      assert.equal(st.headers.get('docker-upload-uuid'), uuid);
    });

    it('POST without the trailing slash also starts a session', async () => {
      const res = await req('POST', `/v2/${repo}/blobs/uploads`);
      assert.equal(res.status, 202);
      assert.ok(res.headers.get('location'));
    });

    it('monolithic POST ?digest= -> 201 with Location and Docker-Content-Digest', async () => {
      const data = randomBlob(5000);
      const digest = sha256(data);
      const res = await req('POST', `/v2/${repo}/blobs/uploads/?digest=${digest}`, { headers: { 'Content-Type': 'application/octet-stream' }, body: data });
      assert.equal(res.status, 201, res.text());
      assert.equal(res.headers.get('location'), `/v2/${repo}/blobs/${digest}`);
      assert.equal(res.headers.get('docker-content-digest'), digest);
      assert.ok((await getBlobBytes(repo, digest)).equals(data));
      const loc = await req('GET', res.headers.get('location')!);
      assert.ok(loc.body.equals(data));
    });

    it('monolithic POST ?digest= with a sha512 digest -> 201 and the blob is readable by it', async () => {
      const data = randomBlob(300);
      const digest = sha512(data);
      const res = await req('POST', `/v2/${repo}/blobs/uploads/?digest=${digest}`, { body: data });
      assert.equal(res.status, 201, res.text());
      assert.equal(res.headers.get('docker-content-digest'), digest);
      assert.ok((await getBlobBytes(repo, digest)).equals(data));
    });

    it('POST then PUT ?digest= with the body -> 201; the session is gone afterwards', async () => {
      const data = randomBlob(4096);
      const digest = sha256(data);
      const location = await startUpload(base, repo);
      const res = await req('PUT', withDigest(location, digest), { headers: { 'Content-Type': 'application/octet-stream' }, body: data });
      assert.equal(res.status, 201, res.text());
      assert.equal(res.headers.get('location'), `/v2/${repo}/blobs/${digest}`);
      assert.equal(res.headers.get('docker-content-digest'), digest);
      assert.ok((await getBlobBytes(repo, digest)).equals(data));
      assertOciError(await req('GET', location), 404, 'BLOB_UPLOAD_UNKNOWN');
    });

    it('streamed PATCH (chunked transfer encoding, no Content-Range) -> 202, then PUT ?digest= -> 201', async () => {
      const pieces = [randomBlob(1000), randomBlob(70_000), randomBlob(1)];
      const data = Buffer.concat(pieces);
      const location = await startUpload(base, repo);
      const r = await rawRequest(t.hostPort, {
        method: 'PATCH',
        path: location,
        headers: { 'Content-Type': 'application/octet-stream' },
        body: pieces,
        chunked: true,
      });
      assert.ok(r.response, `no response: ${r.raw.toString()}`);
      assert.equal(r.response.status, 202, r.response.body.toString());
      assert.equal(r.response.headers['range'], `0-${data.length - 1}`);
      assert.ok(r.response.headers['location']);
      const next = r.response.headers['location']!;
      const st = await req('GET', next);
      assert.equal(st.status, 204);
      assert.equal(st.headers.get('range'), `0-${data.length - 1}`);
      const put = await req('PUT', withDigest(next, sha256(data)));
      assert.equal(put.status, 201, put.text());
      assert.ok((await getBlobBytes(repo, sha256(data))).equals(data));
    });

    it('streamed PATCH with a Content-Length and no Content-Range -> 202', async () => {
      const data = randomBlob(2000);
      const location = await startUpload(base, repo);
      const res = await req('PATCH', location, { headers: { 'Content-Type': 'application/octet-stream' }, body: data });
      assert.equal(res.status, 202);
      assert.equal(res.headers.get('range'), '0-1999');
      const put = await req('PUT', withDigest(res.headers.get('location')!, sha256(data)));
      assert.equal(put.status, 201);
    });

    it('chunked PATCHes with Content-Range (3 chunks) -> 202 and Range 0-<end> each; PUT -> 201', async () => {
      const data = randomBlob(3000);
      const chunks = [data.subarray(0, 1000), data.subarray(1000, 2500), data.subarray(2500)];
      let location = await startUpload(base, repo);
      const id = uploadId(location);
      let start = 0;
      for (const c of chunks) {
        const res = await patchChunk(location, c, start);
        assert.equal(res.status, 202, res.text());
        start += c.length;
        assert.equal(res.headers.get('range'), `0-${start - 1}`);
        assert.equal(res.headers.get('docker-upload-uuid'), id);
        location = res.headers.get('location')!;
        assert.ok(location);
        assert.equal(res.headers.get('content-length'), '0');
      }
      const st = await req('GET', location);
      assert.equal(st.status, 204);
      assert.equal(st.headers.get('range'), '0-2999');
      const put = await req('PUT', withDigest(location, sha256(data)));
      assert.equal(put.status, 201, put.text());
      assert.equal(put.headers.get('docker-content-digest'), sha256(data));
      assert.ok((await getBlobBytes(repo, sha256(data))).equals(data));
    });

    it('a RETRIED chunk (same range again) -> 416 with Range; the session stays usable', async () => {
      const data = randomBlob(300);
      const location = await startUpload(base, repo);
      assert.equal((await patchChunk(location, data.subarray(0, 100), 0)).status, 202);
      const again = await patchChunk(location, data.subarray(0, 100), 0);
      assert.equal(again.status, 416, again.text());
      assert.equal(again.headers.get('range'), '0-99');
      assert.ok(again.headers.get('location'));
      const st = await req('GET', location);
      assert.equal(st.status, 204);
      assert.equal(st.headers.get('range'), '0-99');
      const next = await patchChunk(location, data.subarray(100, 200), 100);
      assert.equal(next.status, 202);
      assert.equal(next.headers.get('range'), '0-199');
      // Retrying the second chunk too.
      assert.equal((await patchChunk(location, data.subarray(100, 200), 100)).status, 416);
      const put = await req('PUT', withDigest(location, sha256(data)), {
        headers: { 'Content-Range': '200-299', 'Content-Type': 'application/octet-stream' },
        body: data.subarray(200),
      });
      assert.equal(put.status, 201, put.text());
      assert.ok((await getBlobBytes(repo, sha256(data))).equals(data));
    });

    it('an OUT-OF-ORDER chunk -> 416 with Range and Location; the session stays usable', async () => {
      const data = randomBlob(300);
      const location = await startUpload(base, repo);
      assert.equal((await patchChunk(location, data.subarray(0, 100), 0)).status, 202);
      const skip = await patchChunk(location, data.subarray(200, 300), 200);
      assert.equal(skip.status, 416, skip.text());
      assert.equal(skip.headers.get('range'), '0-99');
      assert.equal(skip.headers.get('location'), location);
      assert.equal(skip.headers.get('docker-upload-uuid'), uploadId(location));
      // Also a chunk that starts too early but overlaps.
      const overlap = await patchChunk(location, data.subarray(50, 150), 50);
      assert.equal(overlap.status, 416);
      assert.equal(overlap.headers.get('range'), '0-99');
      // First chunk not at 0 on a fresh session.
      const fresh = await startUpload(base, repo);
      const late = await patchChunk(fresh, data.subarray(100, 200), 100);
      assert.equal(late.status, 416);
      assert.equal(late.headers.get('range'), '0-0');
      // Continue the first session correctly.
      assert.equal((await patchChunk(location, data.subarray(100, 200), 100)).status, 202);
      assert.equal((await patchChunk(location, data.subarray(200, 300), 200)).status, 202);
      const put = await req('PUT', withDigest(location, sha256(data)));
      assert.equal(put.status, 201, put.text());
      assert.ok((await getBlobBytes(repo, sha256(data))).equals(data));
    });

    it('a chunk whose body is shorter than its Content-Length (client goes away) leaves the offset unchanged', async () => {
      const data = randomBlob(300);
      const location = await startUpload(base, repo);
      assert.equal((await patchChunk(location, data.subarray(0, 100), 0)).status, 202);
      // Declare 100 bytes, send 40 of garbage, then reset the connection.
      const r = await rawRequest(t.hostPort, {
        method: 'PATCH',
        path: location,
        headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': '100-199', 'Content-Length': '100' },
        body: randomBlob(40),
        after: 'destroy',
        destroyAfterMs: 150,
      });
      assert.equal(r.response, undefined);
      const st = await req('GET', location);
      assert.equal(st.status, 204);
      assert.equal(st.headers.get('range'), '0-99');
      // The right chunk is accepted where the session was (the store serialises it after the rollback).
      const next = await patchChunk(location, data.subarray(100, 200), 100);
      assert.equal(next.status, 202, next.text());
      assert.equal(next.headers.get('range'), '0-199');
      assert.equal((await patchChunk(location, data.subarray(200), 200)).status, 202);
      const put = await req('PUT', withDigest(location, sha256(data)));
      assert.equal(put.status, 201, put.text());
      assert.ok((await getBlobBytes(repo, sha256(data))).equals(data));
    });

    it('a chunk whose body is shorter than its Content-Length (client half-closes) -> 400 SIZE_INVALID or a close; offset unchanged', async () => {
      const data = randomBlob(200);
      const location = await startUpload(base, repo);
      assert.equal((await patchChunk(location, data.subarray(0, 100), 0)).status, 202);
      const r = await rawRequest(t.hostPort, {
        method: 'PATCH',
        path: location,
        headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': '100-199', 'Content-Length': '100' },
        body: data.subarray(100, 130),
        after: 'half-close',
      });
      assert.ok(!r.timedOut, 'the server neither answered nor closed');
      if (r.response) {
        assert.ok(r.response.status < 500, `5xx: ${r.raw.toString()}`);
        assert.equal(r.response.status, 400, r.raw.toString());
        if (/json/.test(r.response.headers['content-type'] ?? '')) assert.equal(r.response.json().errors[0].code, 'SIZE_INVALID');
      } else assert.ok(r.closed);
      const st = await req('GET', location);
      assert.equal(st.status, 204);
      assert.equal(st.headers.get('range'), '0-99');
      assert.equal((await patchChunk(location, data.subarray(100), 100)).status, 202);
      const put = await req('PUT', withDigest(location, sha256(data)));
      assert.equal(put.status, 201, put.text());
    });

    it('GET upload status -> 204 with Range after each step', async () => {
      const location = await startUpload(base, repo);
      const a = await req('GET', location);
      assert.equal(a.status, 204);
      assert.equal(a.headers.get('range'), '0-0');
      assert.equal(a.body.length, 0);
      await patchChunk(location, randomBlob(10), 0);
      const b = await req('GET', location);
      assert.equal(b.status, 204);
      assert.equal(b.headers.get('range'), '0-9');
    });

    it('DELETE upload -> 204, then 404 BLOB_UPLOAD_UNKNOWN for GET, PATCH, PUT and DELETE', async () => {
      const location = await startUpload(base, repo);
      await patchChunk(location, randomBlob(10), 0);
      const del = await req('DELETE', location);
      assert.equal(del.status, 204);
      assertOciError(await req('GET', location), 404, 'BLOB_UPLOAD_UNKNOWN');
      assertOciError(await patchChunk(location, randomBlob(10), 0), 404, 'BLOB_UPLOAD_UNKNOWN');
      assertOciError(await req('PUT', withDigest(location, randomDigest())), 404, 'BLOB_UPLOAD_UNKNOWN');
      assertOciError(await req('DELETE', location), 404, 'BLOB_UPLOAD_UNKNOWN');
      const sessions = await t.node.store.listUploads();
      assert.ok(!sessions.some((s) => s.id === uploadId(location)));
    });

    it('PUT with the final chunk (Content-Range) -> 201', async () => {
      const data = randomBlob(500);
      const location = await startUpload(base, repo);
      assert.equal((await patchChunk(location, data.subarray(0, 200), 0)).status, 202);
      const put = await req('PUT', withDigest(location, sha256(data)), {
        headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': '200-499' },
        body: data.subarray(200),
      });
      assert.equal(put.status, 201, put.text());
      assert.equal(put.headers.get('location'), `/v2/${repo}/blobs/${sha256(data)}`);
      assert.ok((await getBlobBytes(repo, sha256(data))).equals(data));
    });

    it('PUT with the final chunk (no Content-Range) after a streamed PATCH -> 201', async () => {
      const data = randomBlob(500);
      const location = await startUpload(base, repo);
      assert.equal((await req('PATCH', location, { body: data.subarray(0, 123) })).status, 202);
      const put = await req('PUT', withDigest(location, sha256(data)), { body: data.subarray(123) });
      assert.equal(put.status, 201, put.text());
      assert.ok((await getBlobBytes(repo, sha256(data))).equals(data));
    });

    it('monolithic POST ?digest= with a chunked body (no Content-Length) -> 201', async () => {
      const pieces = [randomBlob(10_000), randomBlob(3)];
      const data = Buffer.concat(pieces);
      const r = await rawRequest(t.hostPort, {
        method: 'POST',
        path: `/v2/${repo}/blobs/uploads/?digest=${sha256(data)}`,
        headers: { 'Content-Type': 'application/octet-stream' },
        body: pieces,
        chunked: true,
      });
      assert.equal(r.response?.status, 201, r.raw.toString());
      assert.equal(r.response?.headers['docker-content-digest'], sha256(data));
      assert.ok((await getBlobBytes(repo, sha256(data))).equals(data));
    });

    it('the same chunk sent twice at once -> one 202 and one 416; the session holds it once', async () => {
      const data = randomBlob(100_000);
      const location = await startUpload(base, repo);
      const results = await Promise.all([patchChunk(location, data, 0), patchChunk(location, data, 0)]);
      assert.deepEqual(results.map((r) => r.status).sort(), [202, 416]);
      const st = await req('GET', location);
      assert.equal(st.headers.get('range'), `0-${data.length - 1}`);
      const put = await req('PUT', withDigest(location, sha256(data)));
      assert.equal(put.status, 201, put.text());
    });

    it('the same blob pushed twice at once -> 201 both times', async () => {
      const data = randomBlob(200_000);
      const results = await Promise.all([1, 2].map(() => req('POST', `/v2/${repo}/blobs/uploads/?digest=${sha256(data)}`, { body: data })));
      assert.deepEqual(results.map((r) => r.status), [201, 201]);
      assert.ok((await getBlobBytes(repo, sha256(data))).equals(data));
    });

    it('PUT of a blob that already exists -> 201 (idempotent)', async () => {
      const data = randomBlob(64);
      await pushBlob(base, repo, data);
      const location = await startUpload(base, repo);
      const put = await req('PUT', withDigest(location, sha256(data)), { body: data });
      assert.equal(put.status, 201);
      assert.ok((await getBlobBytes(repo, sha256(data))).equals(data));
    });

    describe('cross-repository mount', () => {
      const from = 'api/mount-src';
      const data = randomBlob(777);
      let digest: string;
      before(async () => {
        digest = await pushBlob(base, from, data);
      });

      it('?mount=&from= where the blob is -> 201 with Location and Docker-Content-Digest', async () => {
        const res = await req('POST', `/v2/api/mount-dst/blobs/uploads/?mount=${digest}&from=${from}`);
        assert.equal(res.status, 201, res.text());
        assert.equal(res.headers.get('location'), `/v2/api/mount-dst/blobs/${digest}`);
        assert.equal(res.headers.get('docker-content-digest'), digest);
        assert.ok((await getBlobBytes('api/mount-dst', digest)).equals(data));
      });

      it('?mount= of a blob that is not there -> 202 with a new session', async () => {
        const res = await req('POST', `/v2/api/mount-dst2/blobs/uploads/?mount=${randomDigest()}&from=${from}`);
        assert.equal(res.status, 202, res.text());
        const location = res.headers.get('location')!;
        assert.ok(location);
        assert.match(uploadId(location), UUID);
        assert.equal(res.headers.get('range'), '0-0');
        assert.equal((await req('GET', location)).status, 204);
      });

      it('?mount=&from=<unknown repository> -> 202 with a new session that works', async () => {
        const res = await req('POST', `/v2/api/mount-dst3/blobs/uploads/?mount=${digest}&from=api/never-pushed`);
        assert.equal(res.status, 202, res.text());
        const location = res.headers.get('location')!;
        assert.ok(res.headers.get('docker-upload-uuid'));
        const put = await req('PUT', withDigest(location, digest), { body: data });
        assert.equal(put.status, 201);
        assert.ok((await getBlobBytes('api/mount-dst3', digest)).equals(data));
      });

      it('?mount=&from=<invalid name> -> 202 with a new session', async () => {
        const res = await req('POST', `/v2/api/mount-dst4/blobs/uploads/?mount=${digest}&from=Not..Valid`);
        assert.equal(res.status, 202, res.text());
        assert.ok(res.headers.get('location'));
      });

      it('?mount= without from, blob known to the node -> 201', async () => {
        const res = await req('POST', `/v2/api/mount-dst5/blobs/uploads/?mount=${digest}`);
        assert.equal(res.status, 201, res.text());
        assert.equal(res.headers.get('docker-content-digest'), digest);
        assert.ok((await getBlobBytes('api/mount-dst5', digest)).equals(data));
      });

      it('?mount= without from, blob unknown -> 202 with a new session', async () => {
        const res = await req('POST', `/v2/api/mount-dst6/blobs/uploads/?mount=${randomDigest()}`);
        assert.equal(res.status, 202, res.text());
        assert.ok(res.headers.get('location'));
      });
    });
  });

  describe('manifests', () => {
    const repo = 'api/manifests';

    /** An OCI manifest with unknown fields, odd whitespace and key order: the bytes must come back as sent. */
    async function oddManifest(): Promise<{ bytes: Buffer; digest: string }> {
      const cfg = randomBlob(50);
      const layer = randomBlob(200);
      await pushBlob(base, repo, cfg);
      await pushBlob(base, repo, layer);
      const text =
        `{\n\t"layers" :[ {"size":${layer.length},  "digest":"${sha256(layer)}","mediaType":"${MT.OciLayerGzip}", "x-unknown": [1, 2.50, null]}],\r\n` +
        `  "schemaVersion":   2,"mediaType":"${MT.OciManifest}",\n` +
        `  "config":{"mediaType":"${MT.OciConfig}","digest":"${sha256(cfg)}","size":${cfg.length}},` +
        `  "newUnspecifiedField": {"nested": "\\u00e9t\\u00e9", "n": 1e3}   ,"annotations":{"k":"v"}\n}\n\n`;
      const bytes = Buffer.from(text);
      return { bytes, digest: sha256(bytes) };
    }

    async function assertManifest(ref: string, bytes: Buffer, digest: string, mediaType: string, r = repo): Promise<void> {
      const get = await req('GET', `/v2/${r}/manifests/${ref}`, { headers: { Accept: `${MT.OciManifest}, ${MT.OciIndex}, ${MT.DockerManifest}, ${MT.DockerManifestList}` } });
      assert.equal(get.status, 200, get.text());
      assert.equal(get.headers.get('content-type'), mediaType);
      assert.equal(get.headers.get('docker-content-digest'), digest);
      assert.equal(get.headers.get('content-length'), String(bytes.length));
      assert.ok(get.body.equals(bytes), 'manifest bytes differ from what was put');
      const head = await req('HEAD', `/v2/${r}/manifests/${ref}`);
      assert.equal(head.status, 200);
      assert.equal(head.headers.get('content-type'), mediaType);
      assert.equal(head.headers.get('docker-content-digest'), digest);
      assert.equal(head.headers.get('content-length'), String(bytes.length));
      assert.equal(head.body.length, 0);
    }

    it('PUT by tag -> 201 with Location and Docker-Content-Digest; GET/HEAD by tag and digest give the exact bytes', async () => {
      const { bytes, digest } = await oddManifest();
      const put = await putManifest(base, repo, 'odd', bytes, MT.OciManifest);
      assert.equal(put.status, 201, put.text());
      assert.equal(put.headers.get('location'), `/v2/${repo}/manifests/${digest}`);
      assert.equal(put.headers.get('docker-content-digest'), digest);
      assert.equal(put.headers.get('oci-subject'), null);
      await assertManifest('odd', bytes, digest, MT.OciManifest);
      await assertManifest(digest, bytes, digest, MT.OciManifest);
      const loc = await req('GET', put.headers.get('location')!);
      assert.ok(loc.body.equals(bytes));
    });

    it('PUT with a Content-Type carrying parameters is stored under the bare media type', async () => {
      const img = await buildImage(base, repo);
      const put = await putManifest(base, repo, 'params', img.bytes, `${MT.OciManifest}; charset=utf-8`);
      assert.equal(put.status, 201, put.text());
      await assertManifest('params', img.bytes, img.digest, MT.OciManifest);
    });

    it('PUT by digest -> 201; GET by digest; no tag is created', async () => {
      const img = await buildImage(base, 'api/bydigest');
      const put = await putManifest(base, 'api/bydigest', img.digest, img.bytes, MT.OciManifest);
      assert.equal(put.status, 201, put.text());
      assert.equal(put.headers.get('location'), `/v2/api/bydigest/manifests/${img.digest}`);
      assert.equal(put.headers.get('docker-content-digest'), img.digest);
      await assertManifest(img.digest, img.bytes, img.digest, MT.OciManifest, 'api/bydigest');
      const tags = await req('GET', '/v2/api/bydigest/tags/list');
      assert.equal(tags.status, 200);
      assert.deepEqual(tags.json(), { name: 'api/bydigest', tags: [] });
    });

    it('PUT by a sha512 digest -> either 400 DIGEST_INVALID, or 201 and retrievable by that digest', async () => {
      const img = await buildImage(base, repo);
      const d512 = sha512(img.bytes);
      const put = await putManifest(base, repo, d512, img.bytes, MT.OciManifest);
      if (put.status === 400) {
        assertOciError(put, 400, 'DIGEST_INVALID');
        return;
      }
      assert.equal(put.status, 201, put.text());
      // The spec: Docker-Content-Digest "MUST be equal to the client provided digest".
      assert.equal(put.headers.get('docker-content-digest'), d512);
      await assertManifest(d512, img.bytes, d512, MT.OciManifest);
    });

    it('PUT the same manifest again (same tag) -> 201, idempotent', async () => {
      const img = await makeImage(base, repo, { tag: 'again' });
      const put = await putManifest(base, repo, 'again', img.bytes, MT.OciManifest);
      assert.equal(put.status, 201);
      await assertManifest('again', img.bytes, img.digest, MT.OciManifest);
    });

    it('moving a tag to another manifest', async () => {
      const a = await makeImage(base, repo, { tag: 'moving' });
      const b = await makeImage(base, repo, { tag: 'moving' });
      await assertManifest('moving', b.bytes, b.digest, MT.OciManifest);
      await assertManifest(a.digest, a.bytes, a.digest, MT.OciManifest);
    });

    it('OCI image index with child manifests', async () => {
      const r = 'api/index';
      const amd = await makeImage(base, r);
      const arm = await makeImage(base, r);
      const idx = await makeIndex(base, r, [amd.descriptor, arm.descriptor], { tag: 'multi', annotations: { a: 'b' } });
      await assertManifest('multi', idx.bytes, idx.digest, MT.OciIndex, r);
      await assertManifest(idx.digest, idx.bytes, idx.digest, MT.OciIndex, r);
      await assertManifest(amd.digest, amd.bytes, amd.digest, MT.OciManifest, r);
    });

    it('Docker schema2 manifest and Docker manifest list', async () => {
      const r = 'api/docker';
      const one = await makeImage(base, r, { format: 'docker', tag: 'single' });
      await assertManifest('single', one.bytes, one.digest, MT.DockerManifest, r);
      const two = await makeImage(base, r, { format: 'docker' });
      const list = await makeIndex(base, r, [one.descriptor, two.descriptor], { format: 'docker', tag: 'list' });
      await assertManifest('list', list.bytes, list.digest, MT.DockerManifestList, r);
      await assertManifest(list.digest, list.bytes, list.digest, MT.DockerManifestList, r);
    });

    it('a manifest without mediaType in the body takes the Content-Type', async () => {
      const cfg = randomBlob(20);
      await pushBlob(base, repo, cfg);
      const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, config: descriptorOf(cfg, MT.OciConfig), layers: [] }));
      const put = await putManifest(base, repo, 'nomt', bytes, MT.OciManifest);
      assert.equal(put.status, 201, put.text());
      await assertManifest('nomt', bytes, sha256(bytes), MT.OciManifest);
    });

    it('unknown manifest -> 404 MANIFEST_UNKNOWN (by tag and digest), HEAD 404 without a body', async () => {
      assertOciError(await req('GET', `/v2/${repo}/manifests/nope`), 404, 'MANIFEST_UNKNOWN');
      assertOciError(await req('GET', `/v2/${repo}/manifests/${randomDigest()}`), 404, 'MANIFEST_UNKNOWN');
      const head = await req('HEAD', `/v2/${repo}/manifests/nope`);
      assert.equal(head.status, 404);
      assert.equal(head.body.length, 0);
    });

    it('a 4 MiB manifest (padded with an annotation) is accepted and returned intact', async () => {
      const r = 'api/big';
      const img = await buildImage(base, r);
      const doc = JSON.parse(img.bytes.toString()) as Record<string, unknown>;
      doc.annotations = { pad: '' };
      const overhead = Buffer.byteLength(JSON.stringify(doc));
      (doc.annotations as Record<string, string>).pad = 'x'.repeat(4 * 1024 * 1024 - overhead);
      const bytes = Buffer.from(JSON.stringify(doc));
      assert.equal(bytes.length, 4 * 1024 * 1024);
      const put = await putManifest(base, r, 'big', bytes, MT.OciManifest);
      assert.equal(put.status, 201, put.text());
      await assertManifest('big', bytes, sha256(bytes), MT.OciManifest, r);
    });

    describe('DELETE', () => {
      const r = 'api/delete';

      it('by digest -> 202; GET -> 404 MANIFEST_UNKNOWN; the tags pointing to it are gone, others stay', async () => {
        const img = await makeImage(base, r, { tag: 'del1' });
        assert.equal((await putManifest(base, r, 'del2', img.bytes, MT.OciManifest)).status, 201);
        const keep = await makeImage(base, r, { tag: 'keep' });
        const del = await req('DELETE', `/v2/${r}/manifests/${img.digest}`);
        assert.equal(del.status, 202, del.text());
        assertOciError(await req('GET', `/v2/${r}/manifests/${img.digest}`), 404, 'MANIFEST_UNKNOWN');
        assertOciError(await req('GET', `/v2/${r}/manifests/del1`), 404, 'MANIFEST_UNKNOWN');
        assertOciError(await req('GET', `/v2/${r}/manifests/del2`), 404, 'MANIFEST_UNKNOWN');
        const tags = (await req('GET', `/v2/${r}/tags/list`)).json();
        assert.deepEqual(tags.tags, ['keep']);
        await assertManifest('keep', keep.bytes, keep.digest, MT.OciManifest, r);
        // Layers are blobs of their own: deleting the manifest leaves them.
        assert.equal((await req('HEAD', `/v2/${r}/blobs/${img.layers[0]!.digest}`)).status, 200);
        assertOciError(await req('DELETE', `/v2/${r}/manifests/${img.digest}`), 404, 'MANIFEST_UNKNOWN');
      });

      it('by tag -> 202; removes just the tag', async () => {
        const img = await makeImage(base, r, { tag: 'tagdel' });
        assert.equal((await putManifest(base, r, 'tagkeep', img.bytes, MT.OciManifest)).status, 201);
        const del = await req('DELETE', `/v2/${r}/manifests/tagdel`);
        assert.equal(del.status, 202, del.text());
        assertOciError(await req('GET', `/v2/${r}/manifests/tagdel`), 404, 'MANIFEST_UNKNOWN');
        await assertManifest(img.digest, img.bytes, img.digest, MT.OciManifest, r);
        await assertManifest('tagkeep', img.bytes, img.digest, MT.OciManifest, r);
        const tags = (await req('GET', `/v2/${r}/tags/list`)).json().tags as string[];
        assert.ok(!tags.includes('tagdel'));
        assert.ok(tags.includes('tagkeep'));
      });
    });
  });

  describe('referrers', () => {
    const repo = 'api/referrers';
    let subject: Awaited<ReturnType<typeof makeImage>>;
    let sbom: Awaited<ReturnType<typeof makeImage>>;
    let sig: Awaited<ReturnType<typeof makeImage>>;
    before(async () => {
      subject = await makeImage(base, repo, { tag: 'app' });
    });

    it('PUT of a manifest with subject -> 201 with OCI-Subject', async () => {
      const img = await buildImage(base, repo, {
        layers: 1,
        artifactType: 'application/vnd.example.sbom.v1',
        configMediaType: MT.OciEmpty,
        subject: subject.descriptor,
        annotations: { 'org.example.kind': 'sbom' },
      });
      const put = await putManifest(base, repo, img.digest, img.bytes, MT.OciManifest);
      assert.equal(put.status, 201, put.text());
      assert.equal(put.headers.get('oci-subject'), subject.digest);
      sbom = img;
      // Without artifactType: the config media type stands in.
      sig = await makeImage(base, repo, {
        layers: 1,
        configMediaType: 'application/vnd.example.signature.config.v1+json',
        subject: subject.descriptor,
        annotations: { 'org.example.kind': 'sig' },
      });
    });

    it('GET referrers -> 200 image index listing both with artifactType and annotations', async () => {
      const res = await req('GET', `/v2/${repo}/referrers/${subject.digest}`);
      assert.equal(res.status, 200, res.text());
      assert.equal(res.headers.get('content-type'), MT.OciIndex);
      assert.equal(res.headers.get('oci-filters-applied'), null);
      const body = res.json();
      assert.equal(body.schemaVersion, 2);
      assert.equal(body.mediaType, MT.OciIndex);
      const byDigest = new Map<string, any>(body.manifests.map((m: any) => [m.digest, m]));
      assert.equal(byDigest.size, 2);
      assert.deepEqual(byDigest.get(sbom.digest), {
        mediaType: MT.OciManifest,
        digest: sbom.digest,
        size: sbom.size,
        artifactType: 'application/vnd.example.sbom.v1',
        annotations: { 'org.example.kind': 'sbom' },
      });
      assert.deepEqual(byDigest.get(sig.digest), {
        mediaType: MT.OciManifest,
        digest: sig.digest,
        size: sig.size,
        artifactType: 'application/vnd.example.signature.config.v1+json',
        annotations: { 'org.example.kind': 'sig' },
      });
    });

    it('?artifactType= filters and says OCI-Filters-Applied: artifactType', async () => {
      const res = await req('GET', `/v2/${repo}/referrers/${subject.digest}?artifactType=${encodeURIComponent('application/vnd.example.sbom.v1')}`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('oci-filters-applied'), 'artifactType');
      assert.equal(res.headers.get('content-type'), MT.OciIndex);
      const body = res.json();
      assert.deepEqual(body.manifests.map((m: any) => m.digest), [sbom.digest]);
      const none = await req('GET', `/v2/${repo}/referrers/${subject.digest}?artifactType=application/none`);
      assert.equal(none.status, 200);
      assert.equal(none.headers.get('oci-filters-applied'), 'artifactType');
      assert.deepEqual(none.json().manifests, []);
    });

    it('a digest with no referrers -> 200 and an empty index', async () => {
      const res = await req('GET', `/v2/${repo}/referrers/${randomDigest()}`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-type'), MT.OciIndex);
      assert.deepEqual(res.json(), { schemaVersion: 2, mediaType: MT.OciIndex, manifests: [] });
    });

    it('referrers in a repository the node does not know -> 200 and an empty index (never 404)', async () => {
      const res = await req('GET', `/v2/api/no-such-repo/referrers/${subject.digest}`);
      assert.equal(res.status, 200, res.text());
      assert.equal(res.headers.get('content-type'), MT.OciIndex);
      assert.deepEqual(res.json(), { schemaVersion: 2, mediaType: MT.OciIndex, manifests: [] });
    });

    it('a referrer may be pushed before its subject exists', async () => {
      const ghost = { mediaType: MT.OciManifest, digest: randomDigest(), size: 123 };
      const img = await makeImage(base, repo, { layers: 1, artifactType: 'application/vnd.example.early', subject: ghost });
      const res = await req('GET', `/v2/${repo}/referrers/${ghost.digest}`);
      assert.equal(res.status, 200);
      assert.deepEqual(res.json().manifests.map((m: any) => m.digest), [img.digest]);
    });

    it('an index with a subject is a referrer too', async () => {
      const child = await makeImage(base, repo);
      const doc = { schemaVersion: 2, mediaType: MT.OciIndex, artifactType: 'application/vnd.example.idx', manifests: [child.descriptor], subject: subject.descriptor };
      const bytes = Buffer.from(JSON.stringify(doc));
      const put = await putManifest(base, repo, sha256(bytes), bytes, MT.OciIndex);
      assert.equal(put.status, 201, put.text());
      assert.equal(put.headers.get('oci-subject'), subject.digest);
      const res = await req('GET', `/v2/${repo}/referrers/${subject.digest}?artifactType=application/vnd.example.idx`);
      assert.deepEqual(res.json().manifests, [{ mediaType: MT.OciIndex, digest: sha256(bytes), size: bytes.length, artifactType: 'application/vnd.example.idx' }]);
    });

    it('deleting a referrer removes it from the list', async () => {
      const del = await req('DELETE', `/v2/${repo}/manifests/${sig.digest}`);
      assert.equal(del.status, 202);
      const res = await req('GET', `/v2/${repo}/referrers/${subject.digest}`);
      const digests = res.json().manifests.map((m: any) => m.digest);
      assert.ok(!digests.includes(sig.digest));
      assert.ok(digests.includes(sbom.digest));
    });
  });

  describe('tags and catalog', () => {
    const repo = 'api/tags';
    before(async () => {
      const img = await makeImage(base, repo, { tag: 'c' });
      for (const tag of ['a', 'd', 'b', 'B', '1.0', 'a_b']) {
        const put = await putManifest(base, repo, tag, img.bytes, MT.OciManifest);
        assert.equal(put.status, 201);
      }
    });
    const all = ['1.0', 'B', 'a', 'a_b', 'b', 'c', 'd'];

    it('tags/list -> all tags in lexical order', async () => {
      const res = await req('GET', `/v2/${repo}/tags/list`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
      assert.deepEqual(res.json(), { name: repo, tags: all });
      assert.equal(res.headers.get('link'), null);
    });

    it('?n=2 -> the first two and a Link rel="next"', async () => {
      const res = await req('GET', `/v2/${repo}/tags/list?n=2`);
      assert.equal(res.status, 200);
      assert.deepEqual(res.json(), { name: repo, tags: ['1.0', 'B'] });
      assert.equal(res.headers.get('link'), `</v2/${repo}/tags/list?n=2&last=B>; rel="next"`);
    });

    it('following Link headers pages through every tag exactly once', async () => {
      const seen: string[] = [];
      let next: string | undefined = `/v2/${repo}/tags/list?n=3`;
      for (let i = 0; next && i < 10; i++) {
        const res = await req('GET', next);
        assert.equal(res.status, 200);
        seen.push(...(res.json().tags as string[]));
        const link = res.headers.get('link');
        next = link ? /^<([^>]+)>;\s*rel="next"$/.exec(link)?.[1] : undefined;
        if (link) assert.ok(next, `malformed Link ${link}`);
      }
      assert.deepEqual(seen, all);
    });

    it('?n=2&last=b -> the two after b', async () => {
      const res = await req('GET', `/v2/${repo}/tags/list?n=2&last=b`);
      assert.equal(res.status, 200);
      assert.deepEqual(res.json(), { name: repo, tags: ['c', 'd'] });
      assert.equal(res.headers.get('link'), null);
    });

    it('?last=a_b -> everything after a_b', async () => {
      const res = await req('GET', `/v2/${repo}/tags/list?last=a_b`);
      assert.deepEqual(res.json().tags, ['b', 'c', 'd']);
    });

    it('?n=0 -> an empty list', async () => {
      const res = await req('GET', `/v2/${repo}/tags/list?n=0`);
      assert.equal(res.status, 200);
      assert.deepEqual(res.json(), { name: repo, tags: [] });
    });

    it('?n larger than the list -> everything, no Link', async () => {
      const res = await req('GET', `/v2/${repo}/tags/list?n=100`);
      assert.deepEqual(res.json().tags, all);
      assert.equal(res.headers.get('link'), null);
    });

    it('unknown repository -> 404 NAME_UNKNOWN', async () => {
      assertOciError(await req('GET', '/v2/api/no-such-repo/tags/list'), 404, 'NAME_UNKNOWN');
    });

    it('/v2/_catalog lists repositories in lexical order, with n/last', async () => {
      const res = await req('GET', '/v2/_catalog');
      assert.equal(res.status, 200);
      const repos = res.json().repositories as string[];
      assert.ok(repos.includes(repo));
      assert.ok(repos.includes('api/blobs'));
      assert.deepEqual(repos, [...repos].sort());
      const page = await req('GET', '/v2/_catalog?n=1');
      assert.deepEqual(page.json().repositories, [repos[0]]);
      assert.equal(page.headers.get('link'), `</v2/_catalog?n=1&last=${encodeURIComponent(repos[0]!)}>; rel="next"`);
      const rest = await req('GET', `/v2/_catalog?last=${encodeURIComponent(repos[0]!)}`);
      assert.deepEqual(rest.json().repositories, repos.slice(1));
    });
  });

  describe('names that contain route words', () => {
    it('a repository named x/blobs/manifests works for blobs, manifests and tags', async () => {
      const r = 'api/blobs/manifests';
      const img = await makeImage(base, r, { tag: 'v1' });
      const res = await req('GET', `/v2/${r}/manifests/v1`);
      assert.equal(res.status, 200);
      assert.ok(res.body.equals(img.bytes));
      assert.equal((await req('HEAD', `/v2/${r}/blobs/${img.config.digest}`)).status, 200);
      assert.deepEqual((await req('GET', `/v2/${r}/tags/list`)).json(), { name: r, tags: ['v1'] });
    });
  });

  describe('a node with deletion disabled', () => {
    let ro: TestNode | undefined;
    before(async () => {
      ro = await startTestNode({ config: { deleteEnabled: false, shutdownGraceMs: 2000 } });
    });
    after(async () => {
      await ro?.stop();
    });

    it('DELETE of manifests, tags and blobs -> 405 UNSUPPORTED, nothing removed', async () => {
      const img = await makeImage(ro!.url, 'api/ro', { tag: 'v1' });
      for (const path of [`/v2/api/ro/manifests/${img.digest}`, '/v2/api/ro/manifests/v1', `/v2/api/ro/blobs/${img.layers[0]!.digest}`]) {
        assertOciError(await request(ro!.url, 'DELETE', path), 405, 'UNSUPPORTED');
      }
      assert.equal((await request(ro!.url, 'GET', '/v2/api/ro/manifests/v1')).status, 200);
      assert.equal((await request(ro!.url, 'GET', `/v2/api/ro/blobs/${img.layers[0]!.digest}`)).status, 200);
    });
  });

  describe('shutdown', () => {
    it('stop() returns soon after the last in-flight request finishes (its keep-alive connection does not hold it for the whole grace period)', async () => {
      const node = await startTestNode({ config: { shutdownGraceMs: 3000 } });
      let sock: Socket | undefined;
      try {
        const location = await startUpload(node.url, 'api/shutdown');
        sock = connect({ host: '127.0.0.1', port: node.node.port });
        await new Promise((ok) => sock!.once('connect', ok));
        let got = '';
        sock.on('data', (d: Buffer) => (got += d.toString('latin1')));
        sock.on('error', () => undefined);
        // A streamed PATCH on a keep-alive connection, still sending when stop() begins.
        sock.write(`PATCH ${location} HTTP/1.1\r\nHost: ${node.hostPort}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`);
        await new Promise((ok) => setTimeout(ok, 100));
        const started = Date.now();
        const stopping = node.stop();
        setTimeout(() => sock!.write('0\r\n\r\n'), 200);
        await stopping;
        const took = Date.now() - started;
        assert.match(got, /^HTTP\/1\.1 202 /, 'the request in flight completes');
        assert.ok(took < 1500, `stop() took ${took} ms with nothing left in flight after ~200 ms (grace 3000 ms)`);
      } finally {
        sock?.destroy();
        await node.stop();
      }
    });
  });

  describe('health, readiness, metrics', () => {
    it('/healthz -> 200', async () => {
      const res = await req('GET', '/healthz');
      assert.equal(res.status, 200);
      assert.deepEqual(res.json(), { status: 'ok' });
    });
    it('/readyz -> 200', async () => {
      const res = await req('GET', '/readyz');
      assert.equal(res.status, 200);
      assert.deepEqual(res.json(), { status: 'ready' });
    });
    it('/metrics -> Prometheus text with shoal_http_requests_total and shoal_store_bytes', async () => {
      const res = await req('GET', '/metrics');
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^text\/plain/);
      const text = res.text();
      assert.match(text, /^# TYPE shoal_http_requests_total counter$/m);
      assert.match(text, /^shoal_http_requests_total\{[^}]*route="blob"[^}]*\} \d+/m);
      const m = /^shoal_store_bytes (\d+)$/m.exec(text);
      assert.ok(m, 'shoal_store_bytes missing');
      const stats = await t.node.store.stats();
      assert.equal(Number(m[1]), stats.bytes);
      assert.ok(stats.bytes > 0);
    });
  });
});
