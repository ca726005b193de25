/**
 * A node as a pull-through mirror of its seeds, end to end: the real distribution registry (`docker-registry`)
 * as seed, anonymous and with htpasswd, filled and read with real skopeo; a bearer-token seed; 100 clients
 * at once on one uncached blob; and seeds that corrupt, hang or fail.
 *
 * What the node does is read from its /metrics and its store; what the seed saw is counted at the seed.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Worker } from 'node:worker_threads';
import { Agent, request } from 'undici';
import { buildImageLayout, blobPath, REF_NAME_ANNOTATION, type FixtureImage, type ImageLayout } from '../fixtures/images.ts';
import { startTestNode, type TestNode } from '../helpers/node.ts';
import { memoryImage, sha256, startMemoryRegistry, startTokenService, type MemoryImage, type MemoryRegistry, type TokenService } from '../helpers/memory-registry.ts';
import { scrape, type Metrics } from '../helpers/metrics.ts';
import { startDockerRegistry, type DockerRegistry } from '../helpers/seed-registry.ts';
import { startTestServer, type TestServer } from '../helpers/seed-servers.ts';
import { ShoalProcesses, type ShoalProcess } from '../helpers/spawn-node.ts';
import { assertLayoutHolds } from '../helpers/layout.ts';
import { skopeoIn } from '../helpers/skopeo.ts';

const execFileP = promisify(execFile);
const EXEC_TIMEOUT_MS = 60_000;

/** bcrypt (cost 5) of HTPASSWD_PASSWORD (the constant test/integration/upstream.test.ts uses). */
const HTPASSWD_USER = 'alice';
const HTPASSWD_PASSWORD = 'shoal-seed-secret';
const HTPASSWD_BCRYPT = '$2b$05$3qFb4wh6tsZzhjQr5ZRsweU31WscZHxJuF/5KvpHSZID3NAsu47eK';

const MANIFEST_ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

const sizeOf = (blobs: Array<{ size: number }>): number => blobs.reduce((n, b) => n + b.size, 0);

interface OciErrorResponse {
  status: number;
  code: string;
  message: string;
  ms: number;
}

/** A request that must end in an OCI error JSON; returns its status, first code and message, and how long it took. */
async function ociError(url: string, opts: { method?: string; timeoutMs?: number } = {}): Promise<OciErrorResponse> {
  const started = Date.now();
  const res = await fetch(url, { method: opts.method ?? 'GET', headers: { accept: MANIFEST_ACCEPT }, signal: AbortSignal.timeout(opts.timeoutMs ?? 30_000) });
  const text = await res.text();
  const ms = Date.now() - started;
  assert.ok(res.status >= 400, `${url}: expected an error status, got ${res.status} ${text.slice(0, 200)}`);
  if ((opts.method ?? 'GET') === 'HEAD') return { status: res.status, code: '', message: '', ms };
  assert.match(res.headers.get('content-type') ?? '', /application\/json/, `${url}: error is JSON`);
  const body = JSON.parse(text) as { errors?: Array<{ code?: unknown; message?: unknown }> };
  const first = body.errors?.[0];
  assert.ok(first && typeof first.code === 'string' && typeof first.message === 'string', `${url}: OCI error body, got ${text.slice(0, 300)}`);
  return { status: res.status, code: first.code as string, message: first.message as string, ms };
}

/** GET with a body read to the end; `error` is set when the body broke off. */
async function getFully(url: string, opts: { dispatcher?: Agent; timeoutMs?: number } = {}): Promise<{ status: number; bytes: Buffer; error?: unknown; headers: Record<string, unknown> }> {
  const res = await request(url, { dispatcher: opts.dispatcher, headersTimeout: opts.timeoutMs ?? 30_000, bodyTimeout: opts.timeoutMs ?? 30_000, headers: { accept: MANIFEST_ACCEPT } });
  const chunks: Buffer[] = [];
  try {
    for await (const c of res.body) chunks.push(Buffer.from(c as Uint8Array));
  } catch (error) {
    return { status: res.statusCode, bytes: Buffer.concat(chunks), error, headers: res.headers };
  }
  return { status: res.statusCode, bytes: Buffer.concat(chunks), headers: res.headers };
}

async function healthy(nodeUrl: string): Promise<void> {
  const res = await fetch(`${nodeUrl}/healthz`, { signal: AbortSignal.timeout(10_000) });
  await res.arrayBuffer();
  assert.equal(res.status, 200, '/healthz answers 200');
}

const delta = (before: Metrics, afterwards: Metrics, name: string, labels: Record<string, string> = {}): number => afterwards.get(name, labels) - before.get(name, labels);

// ---------------------------------------------------------------------------------------------------------

function anonymousSeed(): void {
  describe('pull-through from a real docker-registry seed (anonymous)', { concurrency: 1 }, () => {
    let work = '';
    let layout: ImageLayout;
    let seed: DockerRegistry | undefined;
    let node: TestNode | undefined;
    let skopeo: (...args: string[]) => Promise<string>;
    const NS = 'registry.example:5000';

    before(async () => {
      work = await mkdtemp(join(tmpdir(), 'shoal-pull-through-'));
      skopeo = await skopeoIn(work, { timeoutMs: EXEC_TIMEOUT_MS });
      layout = await buildImageLayout(join(work, 'layout'));
      seed = await startDockerRegistry();
      await skopeo('copy', '--all', '--retry-times', '0', '--dest-tls-verify=false', `oci:${layout.dir}:multi`, `docker://${seed.hostPort}/library/app:v1`);
      await skopeo('copy', '--all', '--retry-times', '0', '--dest-tls-verify=false', `oci:${layout.dir}:single`, `docker://${seed.hostPort}/library/other:v1`);
      node = await startTestNode({ config: { seeds: [{ url: seed.url }], registries: { [NS]: [{ url: seed.url }] }, tagTimeoutMs: 1_000 } });
    });

    after(async () => {
      await node?.stop();
      await seed?.stop();
      if (work) await rm(work, { recursive: true, force: true });
    });

    it('skopeo pulls a multi-arch image through the node with identical digests; the seed sends every blob once', async () => {
      const before = await scrape(node!.url);
      await skopeo('copy', '--all', '--retry-times', '0', '--src-tls-verify=false', `docker://${node!.hostPort}/library/app:v1`, `oci:${join(work, 'out1')}:v1`);
      await assertLayoutHolds(join(work, 'out1'), 'v1', layout.multi);
      const afterwards = await scrape(node!.url);
      const blobBytes = sizeOf(layout.multi.blobs);
      assert.equal(delta(before, afterwards, 'shoal_seed_bytes_total', { registry: 'default' }), blobBytes, 'seed bytes == the sum of the blob sizes');
      assert.equal(delta(before, afterwards, 'shoal_pull_bytes_total', { source: 'seed' }), blobBytes, 'pull bytes from the seed: each blob once');
      assert.ok(delta(before, afterwards, 'shoal_tag_resolutions_total', { via: 'seed' }) >= 1);
      assert.equal(delta(before, afterwards, 'shoal_seed_requests_total', { outcome: 'error' }), 0);
      // The node now holds the image under the same repository and tag.
      assert.equal(await node!.node.store.resolveTag('library/app', 'v1'), layout.multi.digest);
      for (const b of layout.multi.blobs) assert.equal((await node!.node.store.statContent(b.digest))?.size, b.size);
    });

    it('a second pull is served from the node: the seed sends no more bytes', async () => {
      const before = await scrape(node!.url);
      await skopeo('copy', '--all', '--retry-times', '0', '--src-tls-verify=false', `docker://${node!.hostPort}/library/app:v1`, `oci:${join(work, 'out2')}:v1`);
      await assertLayoutHolds(join(work, 'out2'), 'v1', layout.multi);
      const afterwards = await scrape(node!.url);
      assert.equal(delta(before, afterwards, 'shoal_seed_bytes_total'), 0);
      assert.equal(delta(before, afterwards, 'shoal_pull_bytes_total', { source: 'seed' }), 0);
      assert.ok(delta(before, afterwards, 'shoal_pull_bytes_total', { source: 'local' }) >= sizeOf(layout.multi.blobs), 'local pull bytes grow by at least the image');
    });

    it(`?ns=${NS} pulls from that registry's seed and stores under its own repository`, async () => {
      const before = await scrape(node!.url);
      const img = layout.single;
      const q = `?ns=${encodeURIComponent(NS)}`;
      const m = await getFully(`${node!.url}/v2/library/other/manifests/v1${q}`);
      assert.equal(m.status, 200);
      assert.equal(m.headers['docker-content-digest'], img.digest);
      assert.deepEqual(m.bytes, img.bytes);
      for (const b of img.blobs) {
        const got = await getFully(`${node!.url}/v2/library/other/blobs/${b.digest}${q}`);
        assert.equal(got.status, 200);
        assert.equal(sha256(got.bytes), b.digest);
      }
      const afterwards = await scrape(node!.url);
      assert.equal(delta(before, afterwards, 'shoal_seed_bytes_total', { registry: NS }), sizeOf(img.blobs), 'the blobs came from the seed of that registry');
      assert.equal(delta(before, afterwards, 'shoal_seed_bytes_total', { registry: 'default' }), 0);
      assert.ok(delta(before, afterwards, 'shoal_seed_requests_total', { registry: NS, outcome: 'ok' }) >= 1 + img.blobs.length);

      const store = node!.node.store;
      assert.equal(await store.resolveTag('registry.example-5000/library/other', 'v1'), img.digest, 'stored as <host with - for :>/<name>');
      assert.equal(await store.resolveTag('library/other', 'v1'), undefined, 'not under the un-namespaced name');
      assert.equal(await store.repositoryExists('library/other'), false);

      // The same name with and without ns are two repositories; content already held is not fetched again.
      const app = await getFully(`${node!.url}/v2/library/app/manifests/v1${q}`);
      assert.equal(app.status, 200);
      assert.equal(app.headers['docker-content-digest'], layout.multi.digest);
      const layer = layout.multi.blobs.at(-1)!;
      const blob = await getFully(`${node!.url}/v2/library/app/blobs/${layer.digest}${q}`);
      assert.equal(sha256(blob.bytes), layer.digest);
      assert.equal(await store.resolveTag('registry.example-5000/library/app', 'v1'), layout.multi.digest);
      assert.equal(await store.resolveTag('library/app', 'v1'), layout.multi.digest);
      assert.equal((await scrape(node!.url)).get('shoal_seed_bytes_total', { registry: NS }), afterwards.get('shoal_seed_bytes_total', { registry: NS }));

      const catalog = (await (await fetch(`${node!.url}/v2/_catalog`)).json()) as { repositories: string[] };
      for (const r of ['library/app', 'registry.example-5000/library/app', 'registry.example-5000/library/other']) assert.ok(catalog.repositories.includes(r), `${r} in ${catalog.repositories.join(', ')}`);
    });

    it('a registry without seeds, or a name the seed lacks, is a 404 OCI error, never 5xx', async () => {
      const unknown = `?ns=unknown.example`;
      const layer = layout.multi.blobs[0]!.digest;
      const cases: Array<[string, string[]]> = [
        [`/v2/library/app/manifests/v1${unknown}`, ['NAME_UNKNOWN', 'MANIFEST_UNKNOWN']],
        [`/v2/library/app/manifests/${layout.multi.digest}${unknown}`, ['NAME_UNKNOWN', 'MANIFEST_UNKNOWN']],
        [`/v2/library/app/blobs/${layer}${unknown}`, ['NAME_UNKNOWN', 'BLOB_UNKNOWN']],
        [`/v2/library/app/manifests/no-such-tag`, ['MANIFEST_UNKNOWN']],
        [`/v2/library/absent/manifests/v1`, ['NAME_UNKNOWN', 'MANIFEST_UNKNOWN']],
        [`/v2/library/app/manifests/${sha256(randomBytes(8))}`, ['MANIFEST_UNKNOWN']],
        [`/v2/library/app/blobs/${sha256(randomBytes(8))}`, ['BLOB_UNKNOWN']],
        [`/v2/library/app/blobs/${sha256(randomBytes(8))}?ns=${encodeURIComponent(NS)}`, ['BLOB_UNKNOWN']],
      ];
      for (const [path, codes] of cases) {
        const err = await ociError(`${node!.url}${path}`);
        assert.equal(err.status, 404, `${path}: ${err.status} ${err.code} ${err.message}`);
        assert.ok(codes.includes(err.code), `${path}: ${err.code}`);
        const head = await ociError(`${node!.url}${path}`, { method: 'HEAD' });
        assert.equal(head.status, 404, `HEAD ${path}`);
      }
      await healthy(node!.url);
    });

    it('with the seed stopped, a pull by tag is served from the last known digest', async () => {
      await seed!.stop();
      const before = await scrape(node!.url);
      const started = Date.now();
      await skopeo('copy', '--all', '--retry-times', '0', '--src-tls-verify=false', `docker://${node!.hostPort}/library/app:v1`, `oci:${join(work, 'out3')}:v1`);
      const ms = Date.now() - started;
      await assertLayoutHolds(join(work, 'out3'), 'v1', layout.multi);
      const afterwards = await scrape(node!.url);
      assert.ok(delta(before, afterwards, 'shoal_tag_resolutions_total', { via: 'cache' }) >= 1, 'the tag was answered from the cache');
      assert.ok(delta(before, afterwards, 'shoal_seed_requests_total', { registry: 'default', outcome: 'error' }) >= 1);
      assert.equal(delta(before, afterwards, 'shoal_seed_bytes_total'), 0);
      // The namespaced repository has its own last known digest.
      const m = await getFully(`${node!.url}/v2/library/other/manifests/v1?ns=${encodeURIComponent(NS)}`);
      assert.equal(m.status, 200);
      assert.equal(m.headers['docker-content-digest'], layout.single.digest);
      // Something the node never had is a 404 even now, and the node stays healthy.
      const missing = await ociError(`${node!.url}/v2/library/never/manifests/v1`);
      assert.equal(missing.status, 404);
      await healthy(node!.url);
      process.stdout.write(`# skopeo pull by tag with the seed stopped took ${ms} ms (tagTimeoutMs 1000)\n`);
    });
  });
}

// ---------------------------------------------------------------------------------------------------------

function basicAuthSeed(): void {
  describe('pull-through from a docker-registry seed with htpasswd (basic auth)', { concurrency: 1 }, () => {
    let work = '';
    let layout: ImageLayout;
    let seed: DockerRegistry | undefined;
    let node: TestNode | undefined;
    let skopeo: (...args: string[]) => Promise<string>;

    before(async () => {
      work = await mkdtemp(join(tmpdir(), 'shoal-pull-basic-'));
      skopeo = await skopeoIn(work, { timeoutMs: EXEC_TIMEOUT_MS });
      layout = await buildImageLayout(join(work, 'layout'), { seed: 2, layerSize: 64 * 1024 });
      seed = await startDockerRegistry({ users: [{ username: HTPASSWD_USER, bcryptHash: HTPASSWD_BCRYPT }] });
      await skopeo('copy', '--retry-times', '0', '--dest-tls-verify=false', '--dest-creds', `${HTPASSWD_USER}:${HTPASSWD_PASSWORD}`, `oci:${layout.dir}:single`, `docker://${seed.hostPort}/private/app:v1`);
      node = await startTestNode({
        config: {
          seeds: [{ url: seed.url, username: HTPASSWD_USER, password: HTPASSWD_PASSWORD }],
          registries: {
            'wrong.example': [{ url: seed.url, username: HTPASSWD_USER, password: 'not-the-password' }],
            'anonymous.example': [{ url: seed.url }],
          },
          tagTimeoutMs: 2_000,
        },
      });
    });

    after(async () => {
      await node?.stop();
      await seed?.stop();
      if (work) await rm(work, { recursive: true, force: true });
    });

    // First, while nothing is local: a blob the node holds would be served whatever the namespace.
    it('a wrong password or none gives the client an OCI error naming the credentials, promptly; the node stays healthy', async () => {
      const img = layout.single;
      for (const ns of ['wrong.example', 'anonymous.example']) {
        for (const path of [`/v2/private/app/manifests/${img.digest}`, `/v2/private/app/blobs/${img.blobs[0]!.digest}`]) {
          const err = await ociError(`${node!.url}${path}?ns=${ns}`, { timeoutMs: 15_000 });
          assert.ok(err.status >= 400 && err.status < 600, `${ns} ${path}: ${err.status}`);
          assert.ok(['UNAUTHORIZED', 'DENIED'].includes(err.code), `${ns} ${path}: ${err.code} ${err.message}`);
          assert.match(err.message, /password/, `${ns} ${path}: the message says what to fix: ${err.message}`);
          assert.ok(err.ms < 10_000, `${ns} ${path}: answered in ${err.ms} ms`);
        }
      }
      await healthy(node!.url);
      const store = node!.node.store;
      assert.equal(await store.getManifest('wrong.example/private/app', img.digest), undefined);
    });

    it('pulls through with the configured username and password', async () => {
      await skopeo('copy', '--retry-times', '0', '--src-tls-verify=false', `docker://${node!.hostPort}/private/app:v1`, `oci:${join(work, 'out')}:v1`);
      await assertLayoutHolds(join(work, 'out'), 'v1', layout.single);
      assert.equal((await scrape(node!.url)).get('shoal_seed_bytes_total', { registry: 'default' }), sizeOf(layout.single.blobs));
    });
  });
}

// ---------------------------------------------------------------------------------------------------------

function bearerTokenSeed(): void {
  describe('pull-through from a bearer-token seed', { concurrency: 1 }, () => {
    let tokens: TokenService | undefined;
    let seed: MemoryRegistry | undefined;
    let node: TestNode | undefined;
    const image = memoryImage([300_000, 20_000]);

    before(async () => {
      tokens = await startTokenService({ username: 'bob', password: 'hunter2' });
      seed = await startMemoryRegistry({ repository: 'team/app', tag: 'v1', image, authorize: tokens.authorize });
      node = await startTestNode({
        config: {
          seeds: [{ url: seed.url, username: 'bob', password: 'hunter2' }],
          registries: { 'badtoken.example': [{ url: seed.url, username: 'bob', password: 'wrong' }] },
        },
      });
    });

    after(async () => {
      await node?.stop();
      await seed?.close();
      await tokens?.close();
    });

    it('gets a token for the pull scope and pulls manifest and blobs through the node', async () => {
      const m = await getFully(`${node!.url}/v2/team/app/manifests/v1`);
      assert.equal(m.status, 200);
      assert.deepEqual(m.bytes, image.manifest);
      assert.equal(m.headers['docker-content-digest'], image.manifestDigest);
      for (const [digest, bytes] of image.blobs) {
        const b = await getFully(`${node!.url}/v2/team/app/blobs/${digest}`);
        assert.equal(b.status, 200);
        assert.ok(b.bytes.equals(bytes));
      }
      assert.ok(tokens!.tokenRequests.some((t) => t.accepted && t.scope === 'repository:team/app:pull'), JSON.stringify(tokens!.tokenRequests));
      assert.ok(tokens!.tokenRequests.length <= 3, `tokens are reused: ${tokens!.tokenRequests.length} token requests`);
      // Every request that reached the registry's content carried a bearer token once the challenge was answered.
      const content = seed!.requests.filter((r) => /\/(manifests|blobs)\//.test(r.url) && r.headers.authorization);
      assert.ok(content.length >= 1 + image.blobs.size && content.every((r) => r.headers.authorization!.startsWith('Bearer ')));
    });

    it('a token service that refuses the password is a clear OCI error, not a hang', async () => {
      const err = await ociError(`${node!.url}/v2/team/app/manifests/${image.manifestDigest}?ns=badtoken.example`, { timeoutMs: 15_000 });
      // The seed refused the node's credentials, not the client's: 403 DENIED (a 401 would ask the client for some).
      assert.equal(err.code, 'DENIED', err.message);
      assert.equal(err.status, 403);
      assert.ok(err.message.includes(tokens!.realm), `names the token service: ${err.message}`);
      assert.ok(err.ms < 10_000);
      assert.ok(tokens!.tokenRequests.some((t) => !t.accepted));
      await healthy(node!.url);
    });
  });
}

// ---------------------------------------------------------------------------------------------------------

/**
 * The 100 clients, in a worker thread: node:http GETs, each body hashed as it arrives. Off the main thread so
 * that hashing 5 GiB does not stall this thread's event loop, where the other suites' seeds and clients run.
 * Posts {type: 'headers'} once every client has its response headers, then {type: 'done', results}.
 */
const CLIENTS_WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const http = require('node:http');
const { createHash } = require('node:crypto');
const { url, clients } = workerData;
const agent = new http.Agent({ maxSockets: clients * 2 });
let withHeaders = 0;
const one = () => new Promise((resolve, reject) => {
  const req = http.get(url, { agent }, (res) => {
    if (++withHeaders === clients) parentPort.postMessage({ type: 'headers' });
    const hash = createHash('sha256');
    let size = 0;
    res.on('data', (chunk) => { hash.update(chunk); size += chunk.length; });
    res.on('end', () => resolve({ status: res.statusCode, size, digest: 'sha256:' + hash.digest('hex') }));
    res.on('error', reject);
  });
  req.setTimeout(60000, () => req.destroy(new Error('no data for 60 s')));
  req.on('error', reject);
});
Promise.all(Array.from({ length: clients }, one)).then(
  (results) => parentPort.postMessage({ type: 'done', results, withHeaders }),
  (err) => parentPort.postMessage({ type: 'error', message: String(err && err.stack || err), withHeaders }),
);
`;

interface ClientResult {
  status: number;
  size: number;
  digest: string;
}

function manyClients(): void {
  describe('100 clients at once on one uncached 50 MiB blob', { concurrency: 1 }, () => {
    const procs = new ShoalProcesses();
    let seed: MemoryRegistry | undefined;
    let node: ShoalProcess | undefined;
    let worker: Worker | undefined;
    const SIZE = 50 * 1024 * 1024;
    const CLIENTS = 100;
    const FIRST_PIECE = 1024 * 1024;
    let image: MemoryImage;
    let release: () => void = () => undefined;
    const released = new Promise<void>((resolve) => (release = resolve));
    let gateTimedOut = false;

    before(async () => {
      image = memoryImage([SIZE]);
      const layer = image.layers[0]!;
      // The seed sends the headers and the first MiB, then holds the rest until every client has its response
      // headers: so all of them are certainly waiting on the one fetch in flight (or it was not single-flight).
      seed = await startMemoryRegistry({
        repository: 'big/app',
        tag: 'v1',
        image,
        intercept: async ({ req, res, kind, reference }) => {
          if (kind !== 'blobs' || req.method !== 'GET' || reference !== layer.digest) return false;
          res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': SIZE });
          res.write(layer.bytes.subarray(0, FIRST_PIECE));
          const gate = setTimeout(() => {
            gateTimedOut = true;
            release();
          }, 20_000);
          await released;
          clearTimeout(gate);
          res.end(layer.bytes.subarray(FIRST_PIECE));
          return true;
        },
      });
      const dir = await procs.tempDir('shoal-pull-many-');
      await writeFile(join(dir, 'config.json'), JSON.stringify({ seeds: [seed.url] }));
      // A node in a process of its own: 5 GiB go out of it while the worker hashes them.
      node = await procs.serve({ dataDir: join(dir, 'data'), config: join(dir, 'config.json'), logLevel: 'info' });
    });

    after(async () => {
      release();
      await worker?.terminate();
      await procs.cleanup();
      await seed?.close();
    });

    it('the seed sends the blob once; every client gets the same, complete, verified bytes', { timeout: 120_000 }, async () => {
      const layer = image.layers[0]!;
      const started = Date.now();
      worker = new Worker(CLIENTS_WORKER, { eval: true, workerData: { url: `${node!.url}/v2/big/app/blobs/${layer.digest}`, clients: CLIENTS } });
      const results = await new Promise<ClientResult[]>((resolve, reject) => {
        worker!.on('message', (m: { type: string; results?: ClientResult[]; message?: string; withHeaders?: number }) => {
          if (m.type === 'headers') release();
          else if (m.type === 'done') resolve(m.results!);
          else reject(new Error(`clients failed (${m.withHeaders} of ${CLIENTS} had headers): ${m.message}`));
        });
        worker!.once('error', reject);
        worker!.once('exit', (code) => reject(new Error(`client worker exited with ${code}`)));
      });
      const ms = Date.now() - started;
      assert.equal(gateTimedOut, false, `not every client had its response headers 20 s after the seed sent its first MiB`);
      assert.equal(seed!.blobGets(layer.digest), 1, 'exactly one GET of the blob at the seed');
      assert.equal(results.length, CLIENTS);
      assert.deepEqual(new Set(results.map((r) => `${r.status} ${r.size} ${r.digest}`)), new Set([`200 ${SIZE} ${layer.digest}`]));
      const m = await scrape(node!.url);
      assert.equal(m.get('shoal_seed_bytes_total'), SIZE, 'seed bytes == one copy of the blob');
      assert.equal(m.get('shoal_seed_requests_total'), 1, 'one request to the seed in all');
      assert.equal(m.get('shoal_pull_bytes_total', { source: 'seed' }), SIZE);
      assert.equal(m.get('shoal_pull_bytes_total', { source: 'local' }), 0, 'every client was served from the fetch in flight');
      assert.equal(m.get('shoal_served_bytes_total', { kind: 'blob' }), CLIENTS * SIZE);
      // One more client: from the store now.
      const late = await getFully(`${node!.url}/v2/big/app/blobs/${layer.digest}`);
      assert.equal(late.status, 200);
      assert.equal(sha256(late.bytes), layer.digest);
      assert.equal(seed!.blobGets(layer.digest), 1);
      assert.equal((await scrape(node!.url)).get('shoal_pull_bytes_total', { source: 'local' }), SIZE);
      process.stdout.write(`# ${CLIENTS} clients x 50 MiB through one seed fetch in ${ms} ms\n`);
    });
  });
}

// ---------------------------------------------------------------------------------------------------------

function misbehavingSeeds(): void {
  // The tests are independent (each seed serves its own image; a fetch of a digest is shared by every
  // registry, so no two tests may use the same one unless they mean to), so they run side by side: the
  // longest waits on a seed that never answers.
  describe('seeds that misbehave', { concurrency: true }, () => {
    const TAG_TIMEOUT_MS = 1_000;
    const images = {
      corrupt: memoryImage([400_000, 30_000]),
      failing: memoryImage([50_000]),
      hanging: memoryImage([50_000]),
      refusing: memoryImage([20_000]),
      shared: memoryImage([60_000]),
    };
    const servers: Array<{ close(): Promise<void> }> = [];
    let corrupt: MemoryRegistry | undefined;
    let hanging: TestServer | undefined;
    let mirror: MemoryRegistry | undefined;
    let node: TestNode | undefined;

    const statusJson = (status: number, headers: Record<string, string>, code: string, message: string) => (_req: unknown, res: import('node:http').ServerResponse) => {
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(JSON.stringify({ errors: [{ code, message }] }));
    };

    before(async () => {
      const layer = images.corrupt.layers[0]!;
      // Serves the manifest and config as they are, the first layer with one byte flipped (same length).
      corrupt = await startMemoryRegistry({
        repository: 'library/app',
        tag: 'v1',
        image: images.corrupt,
        intercept: ({ req, res, kind, reference }) => {
          if (kind !== 'blobs' || reference !== layer.digest || req.method !== 'GET') return false;
          const bad = Buffer.from(layer.bytes);
          bad[bad.length >> 1]! ^= 0xff;
          res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bad.length });
          res.end(bad);
          return true;
        },
      });
      const failing = await startTestServer(statusJson(500, {}, 'UNKNOWN', 'storage backend exploded'));
      // Accepts connections, reads requests, never answers.
      hanging = await startTestServer(() => undefined);
      // Refuses every request: the node's credentials for it are wrong.
      const denying = await startTestServer(statusJson(401, { 'www-authenticate': 'Basic realm="seed"' }, 'UNAUTHORIZED', 'authentication required'));
      // Answers the tag, refuses everything by digest with 401 (as a registry whose credentials just changed).
      const refusing = await startMemoryRegistry({
        repository: 'library/app',
        tag: 'v1',
        image: images.refusing,
        authorize: (req, res) => {
          if (new URL(req.url!, 'http://x').pathname.endsWith('/manifests/v1')) return true;
          statusJson(401, { 'www-authenticate': 'Basic realm="seed"' }, 'UNAUTHORIZED', 'authentication required')(req, res);
          return false;
        },
      });
      // A healthy seed of another registry that has `shared`, which the hanging seed is also asked for.
      mirror = await startMemoryRegistry({ repository: 'library/app', tag: 'v1', image: images.shared });
      servers.push(hanging, corrupt, failing, denying, refusing, mirror);
      node = await startTestNode({
        config: {
          registries: {
            'corrupt.example': [{ url: corrupt.url }],
            'failing.example': [{ url: failing.url }],
            'hanging.example': [{ url: hanging.url }],
            'refusing.example': [{ url: refusing.url }],
            'denying.example': [{ url: denying.url, username: 'carol', password: 'outdated' }],
            'mirror.example': [{ url: mirror.url }],
          },
          tagTimeoutMs: TAG_TIMEOUT_MS,
        },
      });
    });

    after(async () => {
      // Seeds first: a fetch still waiting on the hanging seed then fails within seconds instead of holding
      // node.stop() for minutes (see the hanging-seed test).
      for (const server of servers) await server.close();
      await node?.stop();
    });

    it('a corrupted blob: the client never gets a complete 200, nothing is stored, the next GET goes to the seed again', async () => {
      const image = images.corrupt;
      const layer = image.layers[0]!;
      const url = `${node!.url}/v2/library/app/blobs/${layer.digest}?ns=corrupt.example`;
      const before = await scrape(node!.url);
      for (let round = 1; round <= 2; round++) {
        const got = await getFully(url, { timeoutMs: 15_000 });
        const complete = got.status === 200 && !got.error && got.bytes.length === layer.bytes.length;
        assert.ok(!complete, `round ${round}: the client got a complete 200 of corrupt content`);
        if (got.status === 200) {
          assert.ok(got.error, 'the body broke off');
          assert.ok(got.bytes.length < layer.bytes.length, `round ${round}: ${got.bytes.length} of ${layer.bytes.length} bytes reached the client`);
        }
        assert.equal(corrupt!.blobGets(layer.digest), round, `round ${round}: the node asked the seed again (nothing was kept)`);
        assert.equal(await node!.node.store.statContent(layer.digest), undefined);
        assert.equal(await node!.node.store.statBlob('corrupt.example/library/app', layer.digest), undefined);
      }
      const afterwards = await scrape(node!.url);
      assert.equal(delta(before, afterwards, 'shoal_seed_requests_total', { registry: 'corrupt.example', outcome: 'corrupt' }), 2);
      await healthy(node!.url);
      // The intact blob of the same seed still comes through.
      const config = await getFully(`${node!.url}/v2/library/app/blobs/${image.config.digest}?ns=corrupt.example`);
      assert.equal(config.status, 200);
      assert.ok(config.bytes.equals(image.config.bytes));
    });

    it('a seed that answers 500: a clear OCI error, nothing stored, the node healthy', async () => {
      const image = images.failing;
      for (const path of [`/v2/library/app/manifests/${image.manifestDigest}`, `/v2/library/app/blobs/${image.layers[0]!.digest}`]) {
        const err = await ociError(`${node!.url}${path}?ns=failing.example`, { timeoutMs: 30_000 });
        assert.ok(err.status >= 500, `${path}: ${err.status} ${err.code}`);
        assert.equal(err.code, 'UNAVAILABLE');
        assert.match(err.message, /HTTP 500/);
        assert.match(err.message, /storage backend exploded/, 'passes on what the seed said');
        process.stdout.write(`# 500 seed: ${path.split('/')[4]} error after ${err.ms} ms\n`);
      }
      assert.equal(await node!.node.store.getManifest('failing.example/library/app', image.manifestDigest), undefined);
      assert.equal(await node!.node.store.statContent(image.layers[0]!.digest), undefined);
      assert.equal(await node!.node.store.repositoryExists('failing.example/library/app'), false);
      await healthy(node!.url);
    });

    it('a seed that never answers: tag, manifest and blob each end in an error in bounded time; the node stays healthy', { timeout: 90_000 }, async () => {
      const image = images.hanging;
      const CAP_MS = 35_000;
      const timed = async (path: string): Promise<{ what: string; ms: number; status?: number; code?: string; gaveUp?: boolean }> => {
        const what = path.split('/').slice(4).join('/').slice(0, 20);
        const started = Date.now();
        try {
          const err = await ociError(`${node!.url}${path}?ns=hanging.example`, { timeoutMs: CAP_MS });
          return { what, ms: Date.now() - started, status: err.status, code: err.code };
        } catch (e) {
          if ((e as Error).name === 'TimeoutError' || (e as Error).name === 'AbortError') return { what, ms: Date.now() - started, gaveUp: true };
          throw e;
        }
      };
      const pending = Promise.all([
        timed(`/v2/library/app/manifests/v1`),
        timed(`/v2/library/app/manifests/${image.manifestDigest}`),
        timed(`/v2/library/app/blobs/${image.layers[0]!.digest}`),
      ]);
      await new Promise((r) => setTimeout(r, 500));
      await healthy(node!.url);
      const [tag, manifest, blob] = await pending;
      process.stdout.write(`# hanging seed: ${JSON.stringify([tag, manifest, blob])}\n`);
      assert.ok(!tag!.gaveUp && tag!.ms < TAG_TIMEOUT_MS + 3_000, `tag: answered after ${tag!.ms} ms (tagTimeoutMs ${TAG_TIMEOUT_MS})`);
      assert.ok(!manifest!.gaveUp && manifest!.status! >= 500, `manifest by digest: ${JSON.stringify(manifest)}`);
      assert.ok(!blob!.gaveUp, `blob: no answer within ${CAP_MS} ms from a node whose seed never answers`);
      assert.ok(blob!.status! >= 500, `blob: ${JSON.stringify(blob)}`);
      await healthy(node!.url);
      assert.equal(await node!.node.store.statContent(image.layers[0]!.digest), undefined);
    });

    it("a blob that one registry's seed is stuck on still comes promptly from another registry's healthy seed", async () => {
      const layer = images.shared.layers[0]!;
      // Some client asks the hanging registry for the blob first (and waits)...
      const stuck = fetch(`${node!.url}/v2/library/app/blobs/${layer.digest}?ns=hanging.example`, { signal: AbortSignal.timeout(10_000) }).then(
        (r) => r.arrayBuffer(),
        () => undefined,
      );
      // (once the node has asked that seed)...
      for (let waited = 0; !hanging!.requests.some((r) => r.url.includes(`/blobs/${layer.digest}`)); waited += 20) {
        assert.ok(waited < 10_000, 'the node never asked the hanging seed for the blob');
        await new Promise((r) => setTimeout(r, 20));
      }
      // ...then a client of a registry whose seed has it.
      const started = Date.now();
      let got: Awaited<ReturnType<typeof getFully>> | undefined;
      let failure: unknown;
      try {
        got = await getFully(`${node!.url}/v2/library/app/blobs/${layer.digest}?ns=mirror.example`, { timeoutMs: 8_000 });
      } catch (err) {
        failure = err;
      }
      const ms = Date.now() - started;
      await stuck;
      assert.equal(failure, undefined, `the mirror.example client got nothing for ${ms} ms: it waits on the fetch from hanging.example's seed (${String(failure)})`);
      assert.equal(got!.status, 200);
      assert.equal(sha256(got!.bytes), layer.digest);
      assert.ok(mirror!.blobGets(layer.digest) >= 1, "mirror.example's seed was asked");
    });

    it('a tag that every seed fails to resolve (no 404 there), with no digest known, is reported as the seed failure, not MANIFEST_UNKNOWN', async () => {
      const expected: Record<string, string[]> = {
        'failing.example': ['UNAVAILABLE'],
        'hanging.example': ['UNAVAILABLE'],
        'denying.example': ['UNAUTHORIZED', 'DENIED', 'UNAVAILABLE'],
      };
      const seen: string[] = [];
      for (const ns of Object.keys(expected)) {
        const err = await ociError(`${node!.url}/v2/other/app/manifests/v1?ns=${ns}`, { timeoutMs: 30_000 });
        seen.push(`${ns}: ${err.status} ${err.code} "${err.message}" after ${err.ms} ms`);
        assert.ok(err.ms < TAG_TIMEOUT_MS + 5_000, `${ns}: ${err.ms} ms`);
      }
      process.stdout.write(`# tag lookups with failing seeds: ${JSON.stringify(seen)}\n`);
      for (const [i, [ns, codes]] of Object.entries(expected).entries()) {
        assert.ok(
          codes.some((c) => seen[i]!.includes(` ${c} `)),
          `${ns}: the seed failed (it did not say the tag is unknown), yet the client is told ${seen[i]}; expected ${codes.join(' or ')}`,
        );
      }
      await healthy(node!.url);
    });

    it('a manifest the seed refuses by digest after resolving its tag: an auth error, nothing half-stored', async () => {
      const image = images.refusing;
      const err = await ociError(`${node!.url}/v2/library/app/manifests/v1?ns=refusing.example`, { timeoutMs: 30_000 });
      assert.ok(['UNAUTHORIZED', 'DENIED', 'UNAVAILABLE'].includes(err.code), `${err.status} ${err.code} ${err.message}`);
      assert.match(err.message, /username and password/);
      assert.equal(await node!.node.store.resolveTag('refusing.example/library/app', 'v1'), undefined);
      assert.equal(await node!.node.store.getManifest('refusing.example/library/app', image.manifestDigest), undefined);
      await healthy(node!.url);
    });
  });
}

// ---------------------------------------------------------------------------------------------------------

// The 100-client suite is CPU-bound (5 GiB through loopback) while the misbehaving seeds mostly wait on
// timeouts; the two groups run side by side so that the file takes about a minute, not two.
describe('pull-through', { concurrency: true }, () => {
  describe('seeds that misbehave, distribution (anonymous, htpasswd), bearer token', { concurrency: 1 }, () => {
    misbehavingSeeds();
    anonymousSeed();
    basicAuthSeed();
    bearerTokenSeed();
  });
  manyClients();
});
