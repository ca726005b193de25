/**
 * How the registry answers when the store's disk (or quota) is full, with a real Koa app on port 0 over a store
 * whose writes fail the way a full filesystem makes them fail: ENOSPC and EDQUOT from file writes, LevelDB's
 * "No space left on device" IO error from a record write. Every such failure is a 507 STORAGE_FULL naming the
 * cause, counted in shoal_storage_full_total and reported to onStorageFull; reads go on; a seed transfer that
 * runs out of space mid-way is not retried against the seed.
 *
 * (test/integration/disk-full.test.ts does the same on a real filesystem that fills up, with a node process.)
 */
import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable, Writable } from 'node:stream';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { request } from 'undici';
import { byteLength } from '../../src/oci/index.ts';
import { createRegistryApp } from '../../src/registry/app.ts';
import { RegistryMetrics } from '../../src/registry/metrics.ts';
import { PullMetrics } from '../../src/source/metrics.ts';
import { PullThrough } from '../../src/source/pull-through.ts';
import { MemoryBlobBytes, type IngestFile } from '../../src/store/bytes.ts';
import { KvContentStore } from '../../src/store/content-store.ts';
import { MemoryKeyValueStore, type KvOp } from '../../src/store/kv.ts';
import type { IoOptions } from '../../src/store/index.ts';
import { SeedClient } from '../../src/upstream/index.ts';
import { memoryImage, startMemoryRegistry, type MemoryRegistry } from '../helpers/memory-registry.ts';
import { Metrics } from '../helpers/metrics.ts';

function digestOf(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** What a full filesystem makes a write fail with. */
function diskError(code: 'ENOSPC' | 'EDQUOT'): NodeJS.ErrnoException {
  const text = code === 'ENOSPC' ? 'no space left on device' : 'disk quota exceeded';
  return Object.assign(new Error(`${code}: ${text}, write`), { code, errno: code === 'ENOSPC' ? -28 : -122, syscall: 'write' });
}

/** The disk of the test store: `room` bytes more may be written, then writes fail with `code`. */
class Disk {
  room = Infinity;
  code: 'ENOSPC' | 'EDQUOT' = 'ENOSPC';
  /** Record writes fail as LevelDB's do on a full disk. */
  recordsFail = false;
  take(n: number): void {
    if (n > this.room) {
      this.room = 0;
      throw diskError(this.code);
    }
    this.room -= n;
  }
}

class FullingBytes extends MemoryBlobBytes {
  constructor(private readonly disk: Disk) {
    super();
  }
  override async ingest(): Promise<IngestFile> {
    const file = await super.ingest();
    return { ...file, append: async (chunk) => (this.disk.take(byteLength(chunk)), file.append(chunk)) };
  }
  override async sessionAppend(id: string, offset: number, source: AsyncIterable<Uint8Array>, onChunk: (c: Uint8Array) => void, opts?: IoOptions): Promise<number> {
    const disk = this.disk;
    async function* limited(): AsyncGenerator<Uint8Array> {
      for await (const chunk of source) {
        disk.take(chunk.length);
        yield chunk;
      }
    }
    return super.sessionAppend(id, offset, limited(), onChunk, opts);
  }
}

class FullingKv extends MemoryKeyValueStore {
  constructor(private readonly disk: Disk) {
    super();
  }
  override async batch(ops: KvOp[]): Promise<void> {
    if (this.disk.recordsFail) throw Object.assign(new Error('IO error: /data/db/000005.log: No space left on device'), { code: 'LEVEL_IO_ERROR' });
    return super.batch(ops);
  }
}

interface Reply {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
  /** Set when the body broke off. */
  error?: unknown;
}

async function call(url: string, method = 'GET', opts: { headers?: Record<string, string>; body?: Buffer | Readable } = {}): Promise<Reply> {
  const res = await request(url, { method: method as 'GET', headers: opts.headers, body: opts.body, headersTimeout: 30_000, bodyTimeout: 30_000 });
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : String(v);
  const chunks: Buffer[] = [];
  try {
    for await (const c of res.body) chunks.push(Buffer.from(c as Uint8Array));
  } catch (error) {
    return { status: res.statusCode, headers, body: Buffer.concat(chunks), error };
  }
  return { status: res.statusCode, headers, body: Buffer.concat(chunks) };
}

function ociError(r: Reply): { code: string; message: string; detail?: unknown } {
  const body = JSON.parse(r.body.toString('utf8')) as { errors: Array<{ code: string; message: string; detail?: unknown }> };
  return body.errors[0]!;
}

describe('the registry on a store whose disk is full', { concurrency: 1 }, () => {
  const disk = new Disk();
  const logLines: Array<Record<string, unknown>> = [];
  let hookCalls = 0;
  let hook: () => void = () => void hookCalls++;
  let server: Server;
  let base = '';
  let seed: MemoryRegistry;
  let seedClient: SeedClient;
  let store: KvContentStore;
  let pull: PullThrough;
  const metricsRegistry = new Registry();
  const image = memoryImage([3_000_000]);
  const layer = image.layers[0]!;

  before(async () => {
    seed = await startMemoryRegistry({ repository: 'library/app', tag: 'v1', image });
    const logger = pino(
      { level: 'info' },
      new Writable({
        write(chunk: Buffer, _enc, done) {
          for (const line of chunk.toString('utf8').split('\n')) if (line.trim()) logLines.push(JSON.parse(line) as Record<string, unknown>);
          done();
        },
      }),
    );
    seedClient = new SeedClient({ url: seed.url, retries: 0 });
    store = new KvContentStore(new FullingKv(disk), new FullingBytes(disk));
    await store.open();
    const pullMetrics = new PullMetrics(metricsRegistry);
    pull = new PullThrough({
      store,
      seeds: { seedsFor: (ns) => (ns === 'seed.test' ? { registry: 'seed.test', seeds: [seedClient] } : undefined) },
      metrics: pullMetrics,
      logger,
      tagTimeoutMs: 2_000,
    });
    const app = createRegistryApp({
      deps: {
        store,
        logger,
        metrics: new RegistryMetrics(metricsRegistry, () => store.stats()),
        pullMetrics,
        pull,
        maxManifestBytes: 4 * 1024 * 1024,
        deleteEnabled: true,
        ready: () => true,
        onStorageFull: () => hook(),
      },
      metricsRegistry,
    });
    server = createServer(app.callback());
    await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  after(async () => {
    await pull?.stop();
    server?.closeAllConnections();
    await new Promise<void>((ok) => (server ? server.close(() => ok()) : ok()));
    await seedClient?.close();
    await seed?.close();
    await store?.close();
  });

  beforeEach(() => {
    disk.room = Infinity;
    disk.code = 'ENOSPC';
    disk.recordsFail = false;
    hookCalls = 0;
    hook = () => void hookCalls++;
  });

  async function metrics(): Promise<Metrics> {
    return new Metrics(await metricsRegistry.metrics());
  }

  it('EDQUOT on a monolithic push: 507 that says the quota is exceeded, counted and reported', async () => {
    const before = (await metrics()).get('shoal_storage_full_total', { route: 'upload' });
    const blob = randomBytes(200_000);
    disk.room = 100_000;
    disk.code = 'EDQUOT';
    const r = await call(`${base}/v2/t/app/blobs/uploads/?digest=${digestOf(blob)}`, 'POST', { body: blob });
    assert.equal(r.status, 507);
    assert.deepEqual(ociError(r), {
      code: 'STORAGE_FULL',
      message: "the node's disk is full (disk quota exceeded while writing the blob); free space or lower the quota; nothing was stored",
      detail: { cause: 'EDQUOT' },
    });
    assert.equal(hookCalls, 1);
    assert.equal((await metrics()).get('shoal_storage_full_total', { route: 'upload' }), before + 1);
    assert.ok(logLines.some((l) => l.msg === 'disk full: request refused with 507' && l.path === '/v2/t/app/blobs/uploads/'));
    assert.equal((await call(`${base}/v2/t/app/blobs/${digestOf(blob)}`, 'HEAD')).status, 404, 'nothing was stored');
  });

  it('a streamed PATCH that fills the disk is rolled back to the acknowledged offset; with room the upload completes', async () => {
    const blob = randomBytes(1_000_000);
    const started = await call(`${base}/v2/t/app/blobs/uploads/`, 'POST');
    const location = new URL(started.headers.location!, base).href;
    const first = await call(location, 'PATCH', { body: Readable.from([blob.subarray(0, 100_000)]) });
    assert.equal(first.status, 202);
    assert.equal(first.headers.range, '0-99999');
    disk.room = 300_000;
    const pieces = [];
    for (let i = 100_000; i < blob.length; i += 100_000) pieces.push(blob.subarray(i, i + 100_000));
    const refused = await call(location, 'PATCH', { body: Readable.from(pieces) });
    assert.equal(refused.status, 507);
    assert.equal(ociError(refused).message, "the node's disk is full (no space left on device while writing the blob); free space or lower the quota; nothing was stored");
    assert.equal(hookCalls, 1);
    const status = await call(location, 'GET');
    assert.equal(status.status, 204);
    assert.equal(status.headers.range, '0-99999', 'the three pieces that were written before the disk filled are not kept');

    disk.room = Infinity;
    const rest = await call(location, 'PATCH', { body: Readable.from(pieces) });
    assert.equal(rest.status, 202);
    const done = await call(`${location}?digest=${encodeURIComponent(digestOf(blob))}`, 'PUT');
    assert.equal(done.status, 201, done.body.toString());
    const got = await call(`${base}/v2/t/app/blobs/${digestOf(blob)}`);
    assert.ok(got.body.equals(blob), 'the committed blob is the pushed one, byte for byte');
  });

  it("LevelDB's IO error of a full disk on a manifest put is a 507 too; reads go on while records cannot be written", async () => {
    const config = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
    assert.equal((await call(`${base}/v2/t/img/blobs/uploads/?digest=${digestOf(config)}`, 'POST', { body: config })).status, 201);
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digestOf(config), size: config.length },
        layers: [],
      }),
    );
    disk.recordsFail = true;
    const put = await call(`${base}/v2/t/img/manifests/v1`, 'PUT', { body: manifest, headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' } });
    assert.equal(put.status, 507);
    assert.deepEqual(ociError(put), {
      code: 'STORAGE_FULL',
      message: "the node's disk is full (no space left on device while writing the manifest); free space or lower the quota; nothing was stored",
      detail: { cause: 'ENOSPC' },
    });
    // The first read of a blob records its access time: that write fails, the read does not.
    const read = await call(`${base}/v2/t/img/blobs/${digestOf(config)}`);
    assert.equal(read.status, 200);
    assert.ok(read.body.equals(config));
    disk.recordsFail = false;
    const again = await call(`${base}/v2/t/img/manifests/v1`, 'PUT', { body: manifest, headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' } });
    assert.equal(again.status, 201);
  });

  it('an onStorageFull hook that throws changes nothing for the client, and is logged', async () => {
    hook = () => {
      hookCalls++;
      throw new Error('eviction is broken');
    };
    const blob = randomBytes(10_000);
    disk.room = 0;
    const r = await call(`${base}/v2/t/app/blobs/uploads/?digest=${digestOf(blob)}`, 'POST', { body: blob });
    assert.equal(r.status, 507);
    assert.equal(hookCalls, 1);
    assert.ok(logLines.some((l) => l.msg === 'onStorageFull failed'));
    assert.equal((await call(`${base}/healthz`)).status, 200);
  });

  it('a seed transfer that runs out of space is not resumed or retried at the seed; the blob pulls once there is room', async () => {
    const url = `${base}/v2/library/app/blobs/${layer.digest}?ns=seed.test`;
    disk.room = 1_000_000;
    const refused = await call(url);
    // Which the client sees depends on whether its response had begun: a 507, or a body that breaks off.
    if (refused.status === 507) assert.equal(ociError(refused).code, 'STORAGE_FULL');
    else assert.ok(refused.error !== undefined || refused.body.length < layer.bytes.length, 'the body is not complete');
    assert.equal(seed.blobGets(layer.digest), 1, 'one GET at the seed: a full disk is not a seed failure');
    assert.ok(logLines.some((l) => l.msg === 'blob fetch stopped: the disk is full; its bytes were removed' && l.digest === layer.digest));
    assert.ok(!logLines.some((l) => l.msg === 'seed transfer failed' && l.digest === layer.digest), 'the seed is not blamed');

    disk.room = Infinity;
    const pulled = await call(url);
    assert.equal(pulled.status, 200);
    assert.ok(pulled.body.equals(layer.bytes));
    assert.equal(seed.blobGets(layer.digest), 2);
  });
});
