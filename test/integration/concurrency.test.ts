/**
 * Many clients at once against one in-process node (real Koa on port 0, real LevelDB and blob files):
 * parallel pushes of the same blob, parallel pulls and Range reads, parallel manifest PUTs to one tag, and
 * deletes racing pushes of the same blob.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { startTestNode, type TestNode } from '../helpers/node.ts';
import { httpClient, type Reply } from '../helpers/http.ts';

const MiB = 1024 * 1024;
const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

// Enough connections that 50 requests really are in flight at the same time.
const agent = new Agent({ connections: 128, pipelining: 1, keepAliveTimeout: 2_000 });

const http = httpClient(agent, 30_000);

/** POST a session, PATCH the whole blob as one chunk, PUT ?digest=. Returns the closing PUT's reply (or the first failure). */
async function sessionPush(base: string, repo: string, data: Buffer): Promise<Reply> {
  const post = await http(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  if (post.status !== 202) return post;
  const location = new URL(post.headers.location!, base);
  const patch = await http(location.toString(), {
    method: 'PATCH',
    body: data,
    headers: { 'content-type': 'application/octet-stream', 'content-range': `0-${data.length - 1}` },
  });
  if (patch.status !== 202) return patch;
  const put = new URL(patch.headers.location!, base);
  put.searchParams.set('digest', sha256(data));
  return http(put.toString(), { method: 'PUT' });
}

async function monolithicPush(base: string, repo: string, data: Buffer): Promise<Reply> {
  return http(`${base}/v2/${repo}/blobs/uploads/?digest=${sha256(data)}`, {
    method: 'POST',
    body: data,
    headers: { 'content-type': 'application/octet-stream' },
  });
}

function blobFile(dataDir: string, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return join(dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex);
}

async function blobFiles(dataDir: string): Promise<string[]> {
  const out: string[] = [];
  const root = join(dataDir, 'blobs', 'sha256');
  for (const prefix of await readdir(root).catch(() => [] as string[])) {
    for (const hex of await readdir(join(root, prefix))) out.push(`sha256:${hex}`);
  }
  return out.sort();
}

function count<T>(values: T[]): Map<T, number> {
  const m = new Map<T, number>();
  for (const v of values) m.set(v, (m.get(v) ?? 0) + 1);
  return m;
}

const MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json';

describe('concurrency against one node', () => {
  let t: TestNode;
  before(async () => {
    t = await startTestNode();
  });
  after(async () => {
    await t?.stop();
    await agent.close();
  });

  it('50 parallel session pushes (POST, PATCH, PUT) of the same blob: all 201, one copy stored', async () => {
    const repo = 'conc/sessions';
    const blob = randomBytes(MiB + 123);
    const digest = sha256(blob);
    const initial = await t.node.store.stats();
    const replies = await Promise.all(Array.from({ length: 50 }, () => sessionPush(t.url, repo, blob)));
    assert.deepEqual(
      [...count(replies.map((r) => r.status))],
      [[201, 50]],
      replies.filter((r) => r.status !== 201).map((r) => r.body.toString()).join('\n'),
    );
    for (const r of replies) assert.equal(r.headers['docker-content-digest'], digest);
    const after = await t.node.store.stats();
    assert.deepEqual(after, { blobs: initial.blobs + 1, bytes: initial.bytes + blob.length });
    assert.equal((await stat(blobFile(t.dataDir, digest))).size, blob.length);
    assert.deepEqual(await readdir(join(t.dataDir, 'uploads')), [], 'no session file is left');
    assert.deepEqual(await readdir(join(t.dataDir, 'ingest')), [], 'no ingest file is left');
    const got = await http(`${t.url}/v2/${repo}/blobs/${digest}`);
    assert.equal(got.status, 200);
    assert.ok(got.body.equals(blob));
  });

  it('50 parallel monolithic POST ?digest= of the same blob: all 201, one copy stored', async () => {
    const repo = 'conc/monolithic';
    const blob = randomBytes(2 * MiB + 7);
    const digest = sha256(blob);
    const initial = await t.node.store.stats();
    const replies = await Promise.all(Array.from({ length: 50 }, () => monolithicPush(t.url, repo, blob)));
    assert.deepEqual(
      [...count(replies.map((r) => r.status))],
      [[201, 50]],
      replies.filter((r) => r.status !== 201).map((r) => r.body.toString()).join('\n'),
    );
    const after = await t.node.store.stats();
    assert.deepEqual(after, { blobs: initial.blobs + 1, bytes: initial.bytes + blob.length });
    assert.equal((await stat(blobFile(t.dataDir, digest))).size, blob.length);
    assert.deepEqual(await readdir(join(t.dataDir, 'ingest')), [], 'no ingest file is left');
    assert.equal(sha256((await http(`${t.url}/v2/${repo}/blobs/${digest}`)).body), digest);
  });

  it('50 parallel pushes of the same blob into 50 repositories: one copy, linked in each', async () => {
    const blob = randomBytes(300_000);
    const digest = sha256(blob);
    const initial = await t.node.store.stats();
    const replies = await Promise.all(Array.from({ length: 50 }, (_, i) => (i % 2 ? sessionPush : monolithicPush)(t.url, `conc/many-${i}`, blob)));
    assert.ok(replies.every((r) => r.status === 201), replies.map((r) => r.status).join(','));
    assert.deepEqual(await t.node.store.stats(), { blobs: initial.blobs + 1, bytes: initial.bytes + blob.length });
    const heads = await Promise.all(Array.from({ length: 50 }, (_, i) => http(`${t.url}/v2/conc/many-${i}/blobs/${digest}`, { method: 'HEAD' })));
    assert.ok(heads.every((r) => r.status === 200 && r.headers['content-length'] === String(blob.length)));
  });

  describe('parallel reads of one 8 MiB blob', () => {
    const repo = 'conc/pull';
    const blob = randomBytes(8 * MiB);
    const digest = sha256(blob);
    before(async () => {
      assert.equal((await monolithicPush(t.url, repo, blob)).status, 201);
    });

    it('50 parallel pulls all get identical, complete bytes', async () => {
      const replies = await Promise.all(Array.from({ length: 50 }, () => http(`${t.url}/v2/${repo}/blobs/${digest}`)));
      for (const r of replies) {
        assert.equal(r.status, 200);
        assert.equal(r.headers['content-length'], String(blob.length));
        assert.equal(r.body.length, blob.length);
        assert.equal(sha256(r.body), digest);
      }
    });

    it('50 parallel Range reads each get exactly their range', async () => {
      const ranges = Array.from({ length: 50 }, (_, i) => {
        if (i === 0) return { start: 0, end: 0 };
        if (i === 1) return { start: blob.length - 1, end: blob.length - 1 };
        const start = Math.floor(Math.random() * (blob.length - 1));
        const end = Math.min(blob.length - 1, start + Math.floor(Math.random() * 2 * MiB));
        return { start, end };
      });
      const replies = await Promise.all(ranges.map((r) => http(`${t.url}/v2/${repo}/blobs/${digest}`, { headers: { range: `bytes=${r.start}-${r.end}` } })));
      replies.forEach((r, i) => {
        const { start, end } = ranges[i]!;
        assert.equal(r.status, 206, `range ${start}-${end}`);
        assert.equal(r.headers['content-range'], `bytes ${start}-${end}/${blob.length}`);
        assert.equal(r.headers['content-length'], String(end - start + 1));
        assert.ok(r.body.equals(blob.subarray(start, end + 1)), `bytes of range ${start}-${end}`);
      });
    });

    it('pulls and Range reads mixed, 50 at once', async () => {
      const jobs = Array.from({ length: 50 }, (_, i) =>
        i % 2
          ? http(`${t.url}/v2/${repo}/blobs/${digest}`).then((r) => sha256(r.body) === digest && r.status === 200)
          : http(`${t.url}/v2/${repo}/blobs/${digest}`, { headers: { range: `bytes=${i * 1000}-` } }).then(
              (r) => r.status === 206 && r.body.equals(blob.subarray(i * 1000)),
            ),
      );
      assert.ok((await Promise.all(jobs)).every(Boolean));
    });
  });

  it('20 parallel manifest PUTs to one tag: the tag ends on one of them, every one retrievable by digest', async () => {
    const repo = 'conc/tags';
    const layer = randomBytes(4096);
    assert.equal((await monolithicPush(t.url, repo, layer)).status, 201);
    const manifests: Buffer[] = [];
    for (let i = 0; i < 20; i++) {
      const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', n: i }));
      assert.equal((await monolithicPush(t.url, repo, config)).status, 201);
      manifests.push(
        Buffer.from(
          JSON.stringify({
            schemaVersion: 2,
            mediaType: MANIFEST_TYPE,
            config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
            layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256(layer), size: layer.length }],
            annotations: { n: String(i) },
          }),
        ),
      );
    }
    const digests = manifests.map(sha256);
    const replies = await Promise.all(
      manifests.map((m) => http(`${t.url}/v2/${repo}/manifests/latest`, { method: 'PUT', body: m, headers: { 'content-type': MANIFEST_TYPE } })),
    );
    replies.forEach((r, i) => {
      assert.equal(r.status, 201, r.body.toString());
      assert.equal(r.headers['docker-content-digest'], digests[i]);
    });
    const tagged = await http(`${t.url}/v2/${repo}/manifests/latest`, { headers: { accept: MANIFEST_TYPE } });
    assert.equal(tagged.status, 200);
    const at = digests.indexOf(tagged.headers['docker-content-digest']!);
    assert.ok(at >= 0, `the tag points to ${tagged.headers['docker-content-digest']}, none of the pushed manifests`);
    assert.ok(tagged.body.equals(manifests[at]!), 'the tag serves the bytes of the manifest it names');
    const byDigest = await Promise.all(digests.map((d) => http(`${t.url}/v2/${repo}/manifests/${d}`, { headers: { accept: MANIFEST_TYPE } })));
    byDigest.forEach((r, i) => {
      assert.equal(r.status, 200);
      assert.ok(r.body.equals(manifests[i]!));
    });
    const tags = JSON.parse((await http(`${t.url}/v2/${repo}/tags/list`)).body.toString()) as { tags: string[] };
    assert.deepEqual(tags.tags, ['latest']);
  });

  it('deletes racing pushes of the same blob never leave a record without its file', async (ctx) => {
    const repo = 'conc/churn';
    const blob = randomBytes(512 * 1024 + 3);
    const digest = sha256(blob);
    const statuses: string[] = [];
    for (let round = 0; round < 10; round++) {
      if (round % 2 === 0) assert.equal((await monolithicPush(t.url, repo, blob)).status, 201);
      const jobs: Promise<string>[] = [];
      for (let i = 0; i < 30; i++) {
        const kind = i % 3;
        if (kind === 0) jobs.push(http(`${t.url}/v2/${repo}/blobs/${digest}`, { method: 'DELETE' }).then((r) => `delete ${r.status}`));
        else if (kind === 1) jobs.push(monolithicPush(t.url, repo, blob).then((r) => `monolithic ${r.status}`));
        else jobs.push(sessionPush(t.url, repo, blob).then((r) => `session ${r.status}`));
      }
      // Readers in the middle of it: a reply is a 404 or the whole, right blob (or a cut stream, never wrong bytes).
      const reads = Array.from({ length: 10 }, () =>
        http(`${t.url}/v2/${repo}/blobs/${digest}`).then(
          (r) => {
            assert.ok(r.status === 404 || (r.status === 200 && sha256(r.body) === digest), `read during churn: ${r.status}, ${r.body.length} bytes`);
          },
          () => undefined,
        ),
      );
      statuses.push(...(await Promise.all(jobs)));
      await Promise.all(reads);

      // The dust has settled: what the API says agrees with the files.
      const head = await http(`${t.url}/v2/${repo}/blobs/${digest}`, { method: 'HEAD' });
      const get = await http(`${t.url}/v2/${repo}/blobs/${digest}`);
      assert.equal(get.status, head.status, `round ${round}: HEAD ${head.status} but GET ${get.status}`);
      if (get.status === 200) assert.ok(get.body.equals(blob), `round ${round}: GET 200 with wrong bytes`);
      else assert.equal(get.status, 404, `round ${round}: GET ${get.status} ${get.body.toString()}`);
      const record = await t.node.store.statContent(digest);
      const file = await stat(blobFile(t.dataDir, digest)).catch(() => undefined);
      if (record) assert.equal(file?.size, blob.length, `round ${round}: a blob record without its file`);
      if (get.status === 200) assert.ok(record && file);
    }
    const tally = count(statuses);
    ctx.diagnostic(`replies: ${[...tally].map(([s, n]) => `${s} x${n}`).join(', ')}`);
    const allowed = new Set(['delete 202', 'delete 404', 'monolithic 201', 'session 201', 'monolithic 503', 'session 503']);
    for (const [s, n] of tally) assert.ok(allowed.has(s), `unexpected reply ${s} (${n} times)`);
    assert.ok((tally.get('monolithic 201') ?? 0) + (tally.get('session 201') ?? 0) > 0);
    assert.ok((tally.get('delete 202') ?? 0) > 0);

    // Finally push once more: it must be there, whole, and counted once.
    assert.equal((await sessionPush(t.url, repo, blob)).status, 201);
    assert.ok((await http(`${t.url}/v2/${repo}/blobs/${digest}`)).body.equals(blob));
    assert.deepEqual(await readdir(join(t.dataDir, 'ingest')), []);
    assert.deepEqual(await readdir(join(t.dataDir, 'uploads')), []);
  });

  it('deletes racing PUTs of the same manifest never leave a tag or record without the manifest bytes', async (ctx) => {
    const repo = 'conc/manifest-churn';
    const config = Buffer.from('{"architecture":"amd64","os":"linux"}');
    assert.equal((await monolithicPush(t.url, repo, config)).status, 201);
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MANIFEST_TYPE,
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
        layers: [],
      }),
    );
    const digest = sha256(manifest);
    const statuses: string[] = [];
    const problems: string[] = [];
    for (let round = 0; round < 20; round++) {
      const jobs: Promise<string>[] = [];
      for (let i = 0; i < 30; i++) {
        const kind = i % 3;
        if (kind === 0) jobs.push(http(`${t.url}/v2/${repo}/manifests/${digest}`, { method: 'DELETE' }).then((r) => `delete ${r.status}`));
        else {
          const ref = kind === 1 ? 'latest' : digest;
          jobs.push(http(`${t.url}/v2/${repo}/manifests/${ref}`, { method: 'PUT', body: manifest, headers: { 'content-type': MANIFEST_TYPE } }).then((r) => `put ${r.status}`));
        }
      }
      statuses.push(...(await Promise.all(jobs)));

      // Settled: every way of asking agrees, and whatever is served is the whole manifest.
      for (const ref of ['latest', digest]) {
        const head = await http(`${t.url}/v2/${repo}/manifests/${ref}`, { method: 'HEAD', headers: { accept: MANIFEST_TYPE } });
        const get = await http(`${t.url}/v2/${repo}/manifests/${ref}`, { headers: { accept: MANIFEST_TYPE } });
        if (head.status !== get.status) problems.push(`round ${round}: ${ref}: HEAD ${head.status} but GET ${get.status} ${get.body.toString()}`);
        if (get.status === 200 && !get.body.equals(manifest)) problems.push(`round ${round}: ${ref}: GET 200 with other bytes`);
        if (get.status !== 200 && get.status !== 404) problems.push(`round ${round}: ${ref}: GET ${get.status}`);
      }
      const record = await t.node.store.getManifest(repo, digest);
      const file = await stat(blobFile(t.dataDir, digest)).catch(() => undefined);
      if (record && !file) problems.push(`round ${round}: a manifest record without its bytes`);
      const tagged = await t.node.store.resolveTag(repo, 'latest');
      if (tagged && !(await t.node.store.getManifest(repo, tagged))) problems.push(`round ${round}: tag latest points to a missing manifest`);
    }
    ctx.diagnostic(`replies: ${[...count(statuses)].map(([s, n]) => `${s} x${n}`).join(', ')}`);
    assert.deepEqual(problems, []);
    for (const s of count(statuses).keys()) assert.ok(['delete 202', 'delete 404', 'put 201', 'put 503'].includes(s), `unexpected reply ${s}`);
  });

  it('parallel PATCHes of the same chunk to one session: one is taken, the others get 416, the upload completes', async () => {
    const repo = 'conc/same-chunk';
    const blob = randomBytes(MiB);
    const post = await http(`${t.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    assert.equal(post.status, 202);
    const url = new URL(post.headers.location!, t.url).toString();
    const first = blob.subarray(0, MiB / 2);
    const replies = await Promise.all(
      Array.from({ length: 10 }, () =>
        http(url, { method: 'PATCH', body: first, headers: { 'content-type': 'application/octet-stream', 'content-range': `0-${first.length - 1}` } }),
      ),
    );
    const tally = count(replies.map((r) => r.status));
    assert.deepEqual([...tally].sort(), [[202, 1], [416, 9]]);
    for (const r of replies.filter((x) => x.status === 416)) assert.equal(r.headers.range, `0-${first.length - 1}`, 'a 416 says where the session is');
    const status = await http(url);
    assert.equal(status.headers.range, `0-${first.length - 1}`);
    const put = new URL(url);
    put.searchParams.set('digest', sha256(blob));
    const done = await http(put.toString(), {
      method: 'PUT',
      body: blob.subarray(first.length),
      headers: { 'content-type': 'application/octet-stream', 'content-range': `${first.length}-${blob.length - 1}` },
    });
    assert.equal(done.status, 201, done.body.toString());
    assert.ok((await http(`${t.url}/v2/${repo}/blobs/${sha256(blob)}`)).body.equals(blob));
  });

  it('parallel closing PUTs of one session: one 201, the others find the session gone', async () => {
    const repo = 'conc/double-commit';
    const blob = randomBytes(200_000);
    const digest = sha256(blob);
    const post = await http(`${t.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    const url = new URL(post.headers.location!, t.url);
    const patch = await http(url.toString(), { method: 'PATCH', body: blob, headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(patch.status, 202);
    url.searchParams.set('digest', digest);
    const initial = await t.node.store.stats();
    const replies = await Promise.all(Array.from({ length: 10 }, () => http(url.toString(), { method: 'PUT' })));
    const tally = count(replies.map((r) => r.status));
    assert.equal(tally.get(201), 1, `statuses: ${[...tally]}`);
    assert.equal(tally.get(404), 9, `statuses: ${[...tally]}`);
    assert.deepEqual(await t.node.store.stats(), { blobs: initial.blobs + 1, bytes: initial.bytes + blob.length });
    assert.ok((await http(`${t.url}/v2/${repo}/blobs/${digest}`)).body.equals(blob));
  });

  it('the store totals agree with the blob files after all of the above', async () => {
    const files = await blobFiles(t.dataDir);
    let bytes = 0;
    let blobs = 0;
    for (const d of files) {
      const rec = await t.node.store.statContent(d);
      if (!rec) continue; // bytes without a record are invisible; they are not counted
      blobs++;
      bytes += rec.size;
      assert.equal((await stat(blobFile(t.dataDir, d))).size, rec.size);
    }
    assert.deepEqual(await t.node.store.stats(), { blobs, bytes });
  });
});
