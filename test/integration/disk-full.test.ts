/**
 * A node whose data directory sits on a small filesystem (a 48 MiB tmpfs the test mounts; tests run as root):
 * pushes, a manifest put and a pull-through from a real docker-registry seed that do not fit get 507
 * STORAGE_FULL with a message that names the cause; the node stays up and serves what it had, byte for byte;
 * no bytes of a failed request are left in <data>/ingest or <data>/uploads; after content is deleted, the same
 * pushes and pulls succeed.
 *
 * Each step builds on the disk the step before left, so the steps run in order.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { request } from 'undici';
import { scrape } from '../helpers/metrics.ts';
import { pushBlob as pushBlobToSeed, startDockerRegistry, type DockerRegistry } from '../helpers/seed-registry.ts';
import { ShoalProcesses, type ShoalProcess } from '../helpers/spawn-node.ts';

const execFileP = promisify(execFile);

const FS_SIZE = '48m';
const REPO = 't/app';
const NS = 'seed.local';
const FULL_WHILE_WRITING_BLOB = "the node's disk is full (no space left on device while writing the blob); free space or lower the quota; nothing was stored";
const FULL_WHILE_WRITING_MANIFEST = "the node's disk is full (no space left on device while writing the manifest); free space or lower the quota; nothing was stored";

function digestOf(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

interface Reply {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

/** One request, body read whole. `body` may be an async iterable: then it goes out chunked (a streamed PATCH). */
async function call(url: string, method: string, opts: { headers?: Record<string, string>; body?: Buffer | AsyncIterable<Buffer> } = {}): Promise<Reply> {
  const body = opts.body === undefined || Buffer.isBuffer(opts.body) ? opts.body : Readable.from(opts.body);
  const res = await request(url, { method: method as 'GET', headers: opts.headers, body, headersTimeout: 60_000, bodyTimeout: 60_000 });
  const received = Buffer.from(await res.body.arrayBuffer());
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : String(v);
  return { status: res.statusCode, headers, body: received };
}

/** The OCI error of a reply that must be one. */
function ociError(r: Reply): { code: string; message: string; detail?: unknown } {
  assert.match(r.headers['content-type'] ?? '', /application\/json/, `error is JSON: ${r.body.toString().slice(0, 300)}`);
  const body = JSON.parse(r.body.toString('utf8')) as { errors: Array<{ code: string; message: string; detail?: unknown }> };
  assert.equal(body.errors.length, 1);
  return body.errors[0]!;
}

/** Pieces of `bytes` as a streamed body (no Content-Length). */
async function* pieces(bytes: Buffer, size = 256 * 1024): AsyncGenerator<Buffer> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}

async function freeBytes(dir: string): Promise<number> {
  const s = await statfs(dir);
  return s.bavail * s.bsize;
}

async function listDir(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [] as string[])).sort();
}

/** Writes `path` until the filesystem refuses another byte. */
async function fillUp(path: string): Promise<void> {
  const fh = await open(path, 'w');
  try {
    for (const size of [1024 * 1024, 4096, 1]) {
      const block = Buffer.alloc(size, 0x5a);
      for (;;) {
        try {
          await fh.write(block);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
          break;
        }
      }
    }
  } finally {
    await fh.close();
  }
}

describe(`a node on a ${FS_SIZE} filesystem that fills up`, { concurrency: 1, timeout: 300_000 }, () => {
  const procs = new ShoalProcesses();
  let work = '';
  let mnt = '';
  let mounted = false;
  let data = '';
  let seed: DockerRegistry | undefined;
  let node: ShoalProcess;
  let base = '';
  // The blobs of the steps: A and B fit, C does not until A is deleted; D is on the seed.
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  const A = randomBytes(16_000_000);
  const B = randomBytes(16_000_000);
  const C = randomBytes(20_000_000);
  const D = randomBytes(20_000_000);
  let refusals = 0;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'shoal-disk-full-'));
    mnt = join(work, 'mnt');
    await mkdir(mnt);
    await execFileP('mount', ['-t', 'tmpfs', '-o', `size=${FS_SIZE}`, 'tmpfs', mnt]);
    mounted = true;
    data = join(mnt, 'data');
    seed = await startDockerRegistry();
    await pushBlobToSeed(seed.url, 'big/app', D);
    await writeFile(join(work, 'config.json'), JSON.stringify({ registries: { [NS]: [{ url: seed.url }] } }));
    node = await procs.serve({ dataDir: data, config: join(work, 'config.json'), logLevel: 'info' });
    base = node.url;
  });

  after(async () => {
    await procs.cleanup();
    await seed?.stop();
    if (mounted) {
      await execFileP('umount', [mnt]).catch(() => execFileP('umount', ['-l', mnt]));
    }
    if (work) await rm(work, { recursive: true, force: true });
  });

  /** The node is up, answers, and left no ingest file behind. */
  async function assertAliveAndClean(): Promise<void> {
    assert.ok(node.running, `the node is still running\n${node.describe()}`);
    const health = await call(`${base}/healthz`, 'GET');
    assert.equal(health.status, 200);
    assert.deepEqual(await listDir(join(data, 'ingest')), [], 'no ingest file is left');
  }

  async function assertServes(bytes: Buffer, repo = REPO, query = ''): Promise<void> {
    const r = await call(`${base}/v2/${repo}/blobs/${digestOf(bytes)}${query}`, 'GET');
    assert.equal(r.status, 200, r.body.toString().slice(0, 300));
    assert.equal(r.body.length, bytes.length);
    assert.ok(r.body.equals(bytes), 'the blob comes back byte for byte');
  }

  async function uploadSessionSizes(): Promise<number[]> {
    const dir = join(data, 'uploads');
    return Promise.all((await listDir(dir)).map(async (f) => (await stat(join(dir, f))).size));
  }

  it('stores what fits; a push that does not fit gets 507 STORAGE_FULL, monolithic, closing PUT or chunk alike', async () => {
    const pushedConfig = await call(`${base}/v2/${REPO}/blobs/uploads/?digest=${digestOf(config)}`, 'POST', { body: config });
    assert.equal(pushedConfig.status, 201);
    for (const blob of [A, B]) {
      const r = await call(`${base}/v2/${REPO}/blobs/uploads/?digest=${digestOf(blob)}`, 'POST', { body: blob });
      assert.equal(r.status, 201, r.body.toString());
    }
    const free = await freeBytes(mnt);
    assert.ok(free < C.length, `C (${C.length} bytes) must not fit in the ${free} bytes left`);

    // Monolithic: POST ?digest= with the body.
    const mono = await call(`${base}/v2/${REPO}/blobs/uploads/?digest=${digestOf(C)}`, 'POST', { body: C });
    assert.equal(mono.status, 507);
    assert.deepEqual(ociError(mono), { code: 'STORAGE_FULL', message: FULL_WHILE_WRITING_BLOB, detail: { cause: 'ENOSPC' } });
    refusals++;
    await assertAliveAndClean();

    // A session closed by a PUT that carries the whole body.
    const started = await call(`${base}/v2/${REPO}/blobs/uploads/`, 'POST');
    assert.equal(started.status, 202);
    const location = new URL(started.headers.location!, base);
    const closing = await call(`${location.href}?digest=${encodeURIComponent(digestOf(C))}`, 'PUT', { body: C, headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(closing.status, 507);
    assert.equal(ociError(closing).message, FULL_WHILE_WRITING_BLOB);
    refusals++;

    // A chunk with Content-Range and Content-Length into the same session.
    const chunk = await call(location.href, 'PATCH', { body: C, headers: { 'content-type': 'application/octet-stream', 'content-range': `0-${C.length - 1}` } });
    assert.equal(chunk.status, 507);
    assert.equal(ociError(chunk).code, 'STORAGE_FULL');
    refusals++;

    // The session is still there (a client may resume once there is room), with none of the refused bytes.
    const status = await call(location.href, 'GET');
    assert.equal(status.status, 204);
    assert.equal(status.headers.range, '0-0');
    assert.deepEqual(await uploadSessionSizes(), [0], 'the session file holds none of the refused bytes');
    assert.ok((await freeBytes(mnt)) >= free - 64 * 1024, 'the refused bytes were freed');
    const cancelled = await call(location.href, 'DELETE');
    assert.equal(cancelled.status, 204);
    assert.deepEqual(await listDir(join(data, 'uploads')), []);

    await assertAliveAndClean();
    await assertServes(A);
    await assertServes(B);
    const metrics = await scrape(base);
    assert.equal(metrics.get('shoal_storage_full_total', { route: 'upload' }), refusals);
  });

  it('a streamed PATCH that runs out of space mid-body keeps only what was acknowledged before it', async () => {
    const started = await call(`${base}/v2/${REPO}/blobs/uploads/`, 'POST');
    const location = new URL(started.headers.location!, base).href;
    const first = await call(location, 'PATCH', { body: pieces(C.subarray(0, 1_000_000)), headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(first.status, 202);
    assert.equal(first.headers.range, '0-999999');
    const free = await freeBytes(mnt);
    assert.ok(free < C.length - 1_000_000, 'the rest of C does not fit');

    const rest = await call(location, 'PATCH', { body: pieces(C.subarray(1_000_000)), headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(rest.status, 507, rest.body.toString());
    assert.deepEqual(ociError(rest), { code: 'STORAGE_FULL', message: FULL_WHILE_WRITING_BLOB, detail: { cause: 'ENOSPC' } });
    refusals++;
    const status = await call(location, 'GET');
    assert.equal(status.headers.range, '0-999999', 'the session still ends where the acknowledged bytes end');
    assert.deepEqual(await uploadSessionSizes(), [1_000_000], 'no half-written tail is left in the session file');
    assert.ok((await freeBytes(mnt)) >= free - 64 * 1024, 'the bytes of the refused PATCH were freed');
    await assertAliveAndClean();
    await assertServes(A);

    // Deleting content makes room: the same session takes the rest and commits.
    const deleted = await call(`${base}/v2/${REPO}/blobs/${digestOf(A)}`, 'DELETE');
    assert.equal(deleted.status, 202);
    const resumed = await call(location, 'PATCH', { body: pieces(C.subarray(1_000_000)), headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(resumed.status, 202, resumed.body.toString());
    assert.equal(resumed.headers.range, `0-${C.length - 1}`);
    const committed = await call(`${location}?digest=${encodeURIComponent(digestOf(C))}`, 'PUT');
    assert.equal(committed.status, 201, committed.body.toString());
    await assertServes(C);
    await assertServes(B);
    assert.deepEqual(await listDir(join(data, 'uploads')), []);
  });

  it('a manifest put on a full disk gets 507; reads go on; once there is room the put succeeds', async () => {
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digestOf(config), size: config.length },
        layers: [B, C].map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: digestOf(l), size: l.length })),
      }),
    );
    const filler = join(mnt, 'filler');
    await fillUp(filler);
    try {
      assert.equal(await freeBytes(mnt), 0);
      const put = await call(`${base}/v2/${REPO}/manifests/v1`, 'PUT', { body: manifest, headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' } });
      assert.equal(put.status, 507, put.body.toString());
      assert.deepEqual(ociError(put), { code: 'STORAGE_FULL', message: FULL_WHILE_WRITING_MANIFEST, detail: { cause: 'ENOSPC' } });
      refusals++;
      const missing = await call(`${base}/v2/${REPO}/manifests/v1`, 'GET');
      assert.equal(missing.status, 404, 'nothing of the refused manifest was stored');
      // Reads on a disk with not one byte free.
      await assertServes(B);
      await assertServes(C);
      await assertAliveAndClean();
    } finally {
      await rm(filler, { force: true });
    }
    const put = await call(`${base}/v2/${REPO}/manifests/v1`, 'PUT', { body: manifest, headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' } });
    assert.equal(put.status, 201, put.body.toString());
    const got = await call(`${base}/v2/${REPO}/manifests/v1`, 'GET', { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
    assert.equal(got.status, 200);
    assert.ok(got.body.equals(manifest));
    const metrics = await scrape(base);
    assert.equal(metrics.get('shoal_storage_full_total', { route: 'manifest' }), 1);
  });

  it('a pull-through whose blob does not fit even after eviction gets 507 before any byte; once unpinned, LRU eviction makes room', async () => {
    // Everything stored is pinned (the image v1 holds B, C and the config): eviction cannot make room.
    const head = await call(`${base}/v2/${REPO}/manifests/v1`, 'HEAD', { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
    const pinPath = `${base}/shoal/pins/${REPO}@${head.headers['docker-content-digest']}`;
    assert.equal((await call(pinPath, 'PUT')).status, 201);
    const free = await freeBytes(mnt);
    assert.ok(free < D.length, `D (${D.length} bytes) must not fit in the ${free} bytes left`);
    const url = `${base}/v2/big/app/blobs/${digestOf(D)}?ns=${NS}`;
    const refused = await call(url, 'GET');
    assert.equal(refused.status, 507, refused.body.toString().slice(0, 300));
    const error = ociError(refused);
    assert.equal(error.code, 'STORAGE_FULL');
    assert.match(
      error.message,
      new RegExp(`^the node's disk is full \\(blob ${digestOf(D)} from seed ${seed!.url.replace(/\./g, '\\.')} needs 19\\.1 MiB, the data filesystem has [\\d.]+ [KM]iB free\\); free space or lower the quota; nothing was stored$`),
    );
    refusals++;
    await assertAliveAndClean();
    await assertServes(B);

    // Unpinned, the least recently used blobs make room for the fetch: no delete needed.
    assert.equal((await call(pinPath, 'DELETE')).status, 202);
    await assertServes(D, 'big/app', `?ns=${NS}`);
    await assertAliveAndClean();
    const again = await call(url, 'HEAD');
    assert.equal(again.status, 200);
    assert.equal(again.headers['content-length'], String(D.length));
    const metrics = await scrape(base);
    assert.equal(metrics.get('shoal_storage_full_total'), refusals, 'every 507 was counted');
    assert.equal(metrics.get('shoal_storage_full_total', { route: 'blob' }), 1);
    assert.ok((metrics.get('shoal_evictions_total') ?? 0) >= 1, 'the room was made by evicting');
    // Every refusal says so in the log.
    assert.equal(node.logs.filter((l) => l.msg === 'disk full: request refused with 507').length, refusals);
  });
});
