/**
 * A 1 GiB bundle through the real CLI: an image with a 1 GiB layer in a real docker-registry, `shoal export`
 * from it and `shoal import` into a stopped node's store, each spawned as a user runs it. Memory must stay
 * flat (the bytes stream; nothing holds a layer): the resident set is sampled from /proc while each command
 * runs. Throughput is printed (and is in the test's diagnostics) for the record.
 *
 * SHOAL_BUNDLE_LARGE_MIB sets the layer size (default 1024).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { startDockerRegistry, pushBlob, pushManifest, type DockerRegistry } from '../helpers/seed-registry.ts';
import { ShoalProcesses, type ShoalProcess } from '../helpers/spawn-node.ts';
import { openDiskStore } from '../../src/store/index.ts';

const LAYER_MIB = Number(process.env.SHOAL_BUNDLE_LARGE_MIB ?? 1024);
const LAYER_BYTES = LAYER_MIB * 1024 * 1024;
/** Resident memory may grow at most this much beyond what the command had when it began moving bytes. */
const MAX_GROWTH_MIB = 96;
/** And the peak of the whole process (Node, tsx and every module loaded) stays below this. */
const MAX_PEAK_MIB = 320;

/** 1 MiB pieces of random bytes, each made unique by a counter: cheap to make, impossible to compress. */
function* layerPieces(total: number): Generator<Buffer> {
  const base = randomBytes(1024 * 1024);
  for (let offset = 0, n = 0; offset < total; offset += base.length, n++) {
    const piece = Buffer.from(base.subarray(0, Math.min(base.length, total - offset)));
    piece.writeUInt32LE(n, 0);
    yield piece;
  }
}

/** Streams a blob into the registry (POST, streamed PATCH, PUT ?digest=) and returns its digest. */
async function pushLargeBlob(registry: DockerRegistry, repository: string, size: number): Promise<string> {
  const start = await request(`${registry.url}/v2/${repository}/blobs/uploads/`, { method: 'POST' });
  await start.body.dump();
  assert.equal(start.statusCode, 202);
  const location = new URL(String(start.headers.location), registry.url);
  const hash = createHash('sha256');
  const body = (async function* () {
    for (const piece of layerPieces(size)) {
      hash.update(piece);
      yield piece;
    }
  })();
  const patch = await request(location, { method: 'PATCH', body: Readable.from(body), headers: { 'content-type': 'application/octet-stream' } });
  await patch.body.dump();
  assert.equal(patch.statusCode, 202);
  const digest = `sha256:${hash.digest('hex')}`;
  const done = new URL(String(patch.headers.location), registry.url);
  done.searchParams.set('digest', digest);
  const put = await request(done, { method: 'PUT' });
  const text = await put.body.text();
  assert.equal(put.statusCode, 201, text);
  return digest;
}

interface Measured {
  seconds: number;
  /** From the command's `start` event (start-up done) to its exit. */
  transferSeconds: number;
  peakMiB: number;
  startMiB: number;
  growthMiB: number;
}

async function memoryOf(pid: number): Promise<{ rss: number; hwm: number } | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0);
    return { rss: kib('VmRSS') * 1024, hwm: kib('VmHWM') * 1024 };
  } catch {
    return undefined;
  }
}

/** Runs a spawned command to the end, sampling its memory; the baseline is taken when bytes start to move. */
async function measure(p: ShoalProcess): Promise<Measured> {
  const started = Date.now();
  let transferStarted: number | undefined;
  let startRss: number | undefined;
  let peak = 0;
  let peakRss = 0;
  while (p.running) {
    const m = await memoryOf(p.pid!);
    if (transferStarted === undefined && p.logs.some((l) => l.event === 'start')) transferStarted = Date.now();
    if (m) {
      peak = Math.max(peak, m.hwm);
      const moving = p.logs.some((l) => l.event === 'progress' && Number(l.bytes) > 0);
      if (moving && startRss === undefined) startRss = m.rss;
      if (startRss !== undefined) peakRss = Math.max(peakRss, m.rss);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  await p.exited;
  assert.equal(p.exit?.code, 0, p.describe());
  const mib = (n: number) => Math.round((n / 1024 / 1024) * 10) / 10;
  startRss ??= peakRss;
  const ended = Date.now();
  return { seconds: (ended - started) / 1000, transferSeconds: (ended - (transferStarted ?? started)) / 1000, peakMiB: mib(peak), startMiB: mib(startRss), growthMiB: mib(peakRss - startRss) };
}

describe(`a ${LAYER_MIB} MiB bundle through the CLI`, () => {
  const procs = new ShoalProcesses();
  let registry: DockerRegistry;
  let work = '';
  let layerDigest = '';
  let manifestDigest = '';

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'shoal-bundle-large-'));
    registry = await startDockerRegistry();
    layerDigest = await pushLargeBlob(registry, 'big/app', LAYER_BYTES);
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [layerDigest] }, config: {} }));
    const configDigest = await pushBlob(registry.url, 'big/app', config);
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size: LAYER_BYTES }],
      }),
    );
    manifestDigest = await pushManifest(registry.url, 'big/app', 'v1', manifest, 'application/vnd.oci.image.manifest.v1+json');
  });

  after(async () => {
    await procs.cleanup();
    await registry?.stop();
    await rm(work, { recursive: true, force: true });
  });

  it('exports and imports with flat memory, and says how fast', async (t) => {
    const bundle = join(work, 'big.tar');
    const exported = await measure(procs.spawn(['export', 'registry.example/big/app:v1', '--from', registry.url, '-o', bundle, '--json']));
    const bundleBytes = (await stat(bundle)).size;
    assert.ok(bundleBytes > LAYER_BYTES);
    const dataDir = join(work, 'node');
    const imported = await measure(procs.spawn(['import', bundle, '--data', dataDir, '--json']));
    const mbps = (s: number) => Math.round(bundleBytes / 1e6 / s);
    const line = (what: string, m: Measured) =>
      `${what} ${m.seconds.toFixed(1)} s wall = ${mbps(m.seconds)} MB/s (${m.transferSeconds.toFixed(1)} s = ${mbps(m.transferSeconds)} MB/s after start-up), ` +
      `peak RSS ${m.peakMiB} MiB, +${m.growthMiB} MiB while streaming`;
    const report = `bundle ${Math.round(bundleBytes / 1024 / 1024)} MiB: ${line('export', exported)}; ${line('import', imported)}`;
    t.diagnostic(report);
    process.stderr.write(`${report}\n`);
    for (const [what, m] of [
      ['export', exported],
      ['import', imported],
    ] as const) {
      assert.ok(m.growthMiB < MAX_GROWTH_MIB, `${what}: resident memory grew by ${m.growthMiB} MiB while streaming (limit ${MAX_GROWTH_MIB})`);
      assert.ok(m.peakMiB < MAX_PEAK_MIB, `${what}: peak resident memory ${m.peakMiB} MiB (limit ${MAX_PEAK_MIB})`);
    }
    const store = await openDiskStore(dataDir);
    try {
      assert.equal(await store.resolveTag('registry.example/big/app', 'v1'), manifestDigest);
      assert.equal((await store.statContent(layerDigest))?.size, LAYER_BYTES);
      assert.deepEqual((await store.listPins()).map((p) => p.digest), [manifestDigest]);
    } finally {
      await store.close();
    }
  });
});
