/**
 * The peer network on loopback: several real nodes (libp2p TCP + Noise keyed by the cluster key + Yamux) with the real
 * distribution registry (`docker-registry`) as their seed, filled and read with real skopeo.
 *
 * - N nodes pulling one uncached image at the same moment cost the seed about one copy (counted by the nodes'
 *   shoal_seed_bytes_total and by a counting TCP proxy in front of the seed);
 * - an image pulled through one node is served by the others from peers once the seed is gone (tag from the
 *   cluster, bytes from peers, identical digests);
 * - a holder killed in the middle of a transfer, a peer that serves corrupt chunks, a node with another cluster
 *   key, a digest nobody has (with and without the seed), and `shoal peers`.
 *
 * Numbers worth knowing (seed bytes vs one copy, throughput, latencies) are printed as test diagnostics (`# ...`).
 */
import { after, before, describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { Registry } from 'prom-client';
import { createLibp2p } from 'libp2p';
import { tcp } from '@libp2p/tcp';
import { yamux } from '@chainsafe/libp2p-yamux';
import { lpStream } from '@libp2p/utils';
import { clusterNoise } from '../../src/p2p/cluster-key.ts';
import { Agent, request } from 'undici';
import { defaultConfig } from '../../src/config/index.ts';
import { createLogger } from '../../src/logger.ts';
import { startNode, type ShoalNode } from '../../src/node.ts';
import { readClusterKey, writeClusterKey } from '../../src/p2p/keys.ts';
import { PeerService } from '../../src/p2p/peer-service.ts';
import { CHUNK_SIZE, type ChunkRequest, type ContentProvider } from '../../src/p2p/types.ts';
import { rendezvousOrder } from '../../src/source/rendezvous.ts';
import { blobPath, buildImageLayout, REF_NAME_ANNOTATION, type FixtureImage, type ImageLayout } from '../fixtures/images.ts';
import { peersOf, startCluster, waitFor, type Cluster, type ClusterNode } from '../helpers/cluster.ts';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.ts';
import { scrape } from '../helpers/metrics.ts';
import { startTestNode } from '../helpers/node.ts';
import { pushBlob, pushGzipImage, startDockerRegistry, type DockerRegistry, type PushedImage } from '../helpers/seed-registry.ts';
import { skopeoIn, type Skopeo } from '../helpers/skopeo.ts';
import { runShoal, ShoalProcesses, type ShoalProcess } from '../helpers/spawn-node.ts';
import { assertLayoutHolds } from '../helpers/layout.ts';

const MiB = 1024 * 1024;
/**
 * An answer that waited on no timeout: the shortest a wrong path would wait is the seed's timeout (10 s) or a peer
 * transfer's deadline; the right path has taken up to 2 s on a loaded machine. Not a speed measure (the notes give
 * the times), only "did not wait".
 */
const NO_WAIT_MS = 5_000;
const BIG_LAYER = 24 * MiB;
const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const sizeOf = (blobs: Array<{ size: number }>): number => blobs.reduce((n, b) => n + b.size, 0);
const mb = (bytes: number): string => `${(bytes / MiB).toFixed(2)} MiB`;
const randomDigest = (): string => sha256(randomBytes(32));

const agent = new Agent({ keepAliveTimeout: 1_000, connections: 32 });
after(() => agent.close());

interface Fetched {
  status: number;
  bytes: Buffer;
  ms: number;
  /** ms until the response headers. */
  headersMs: number;
  body: string;
  error?: unknown;
}

/** GET to the end of the body, timed; `error` is set when the body broke off. */
async function get(url: string, timeoutMs = 60_000): Promise<Fetched> {
  const started = performance.now();
  const res = await request(url, { dispatcher: agent, headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
  const headersMs = performance.now() - started;
  const chunks: Buffer[] = [];
  let error: unknown;
  try {
    for await (const c of res.body) chunks.push(Buffer.from(c as Uint8Array));
  } catch (err) {
    error = err;
  }
  const bytes = Buffer.concat(chunks);
  const ms = performance.now() - started;
  return { status: res.statusCode, bytes, ms, headersMs, body: res.statusCode >= 400 ? bytes.toString('utf8').slice(0, 500) : '', error };
}

function errorCode(f: Fetched): string | undefined {
  try {
    return (JSON.parse(f.body) as { errors?: Array<{ code?: string }> }).errors?.[0]?.code;
  } catch {
    return undefined;
  }
}

/** The value of a metric on a node (summed over matching labels), from GET /metrics. */
async function metric(node: { url: string }, name: string, labels: Record<string, string> = {}): Promise<number> {
  return (await scrape(node.url)).get(name, labels);
}

async function sumMetric(nodes: Array<{ url: string }>, name: string, labels: Record<string, string> = {}): Promise<number[]> {
  return Promise.all(nodes.map((n) => metric(n, name, labels)));
}

/**
 * A random digest whose rendezvous owner, as `viewer` computes it (itself and its connected peers), is `owner`:
 * a digest nobody has goes to that owner first (with a pull hint), so each case is chosen, not left to chance.
 */
function digestOwnedBy(viewer: ClusterNode, owner: string): string {
  const candidates = [viewer.peerId, ...viewer.node.peers!.peers()];
  assert.ok(candidates.includes(owner), 'the owner is among the candidates');
  for (;;) {
    const d = randomDigest();
    if (rendezvousOrder(d, candidates)[0] === owner) return d;
  }
}

function note(t: TestContext, message: string): void {
  t.diagnostic(message);
}

// ------------------------------------------------------------------------------------------------------------

describe('a cluster of 4 nodes on loopback with a docker-registry seed', () => {
  let work: string;
  let layout: ImageLayout;
  let seed: DockerRegistry | undefined;
  let proxy: CountingProxy | undefined;
  let cluster: Cluster | undefined;
  let skopeo: Skopeo;
  let big: PushedImage;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'shoal-p2p-'));
    layout = await buildImageLayout(join(work, 'layout'));
    skopeo = await skopeoIn(join(work, 'skopeo'));
    seed = await startDockerRegistry();
    await skopeo('copy', '--all', '--dest-tls-verify=false', `oci:${layout.dir}:multi`, `docker://${seed.hostPort}/fixtures/app:multi`);
    big = await pushGzipImage(seed.url, 'fixtures/big', 'v1', BIG_LAYER);
    const seedPort = Number(new URL(seed.url).port);
    proxy = await startCountingProxy('127.0.0.1', seedPort);
    cluster = await startCluster({ size: 4, seeds: [proxy.url], config: { tagTimeoutMs: 1_000 } });
    await cluster.waitConnected();
  });

  after(async () => {
    await cluster?.stop();
    await proxy?.close();
    await seed?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('4 nodes pulling the same uncached 24 MiB image at the same moment cost the seed about one copy', async (t) => {
    const nodes = cluster!.running;
    const oneCopy = big.layers[0]!.bytes.length + big.config.bytes.length;
    const seedBefore = await sumMetric(nodes, 'shoal_seed_bytes_total');
    proxy!.reset();
    const started = performance.now();
    await Promise.all(
      nodes.map((n, i) => skopeo('copy', '--src-tls-verify=false', `docker://${n.hostPort}/fixtures/big:v1`, `oci:${join(work, `big-${i}`)}:v1`)),
    );
    const ms = performance.now() - started;
    const seedAfter = await sumMetric(nodes, 'shoal_seed_bytes_total');
    const perNode = seedAfter.map((v, i) => v - seedBefore[i]!);
    const seedBytes = perNode.reduce((a, b) => a + b, 0);
    const wire = proxy!.bytesFromTarget;
    const peerIn = await sumMetric(nodes, 'shoal_pull_bytes_total', { source: 'peer' });
    note(t, `concurrent pull of ${mb(oneCopy)} by ${nodes.length} nodes in ${ms.toFixed(0)} ms`);
    note(t, `seed bytes (sum of shoal_seed_bytes_total) ${seedBytes} = ${(seedBytes / oneCopy).toFixed(3)} x one copy (${oneCopy}); per node ${JSON.stringify(perNode)}`);
    note(t, `seed wire bytes (counting proxy, with headers and manifests) ${wire} = ${(wire / oneCopy).toFixed(3)} x one copy`);
    note(t, `bytes the nodes got from peers: ${JSON.stringify(peerIn)}`);
    for (let i = 0; i < nodes.length; i++) {
      const data = await readFile(blobPath(join(work, `big-${i}`), big.layers[0]!.digest));
      assert.equal(sha256(data), big.layers[0]!.digest, `node ${i} gave its client the right layer`);
    }
    assert.ok(seedBytes >= oneCopy, 'the seed gave at least one copy');
    assert.ok(seedBytes <= oneCopy * 1.25, `the seed sent ${(seedBytes / oneCopy).toFixed(2)} copies of the blobs (per node ${JSON.stringify(perNode)})`);
    assert.ok(wire <= oneCopy * 1.25 + 256 * 1024, `the seed's link carried ${(wire / oneCopy).toFixed(2)} copies`);
  });

  it('node 1 pulls a multi-arch image through; the seed sends exactly one copy of its blobs', async (t) => {
    await cluster!.waitConnected(); // an earlier failure may have cut connections; they come back within 5 s
    const nodes = cluster!.running;
    const before = await sumMetric(nodes, 'shoal_seed_bytes_total');
    const started = performance.now();
    await skopeo('copy', '--all', '--src-tls-verify=false', `docker://${nodes[0]!.hostPort}/fixtures/app:multi`, `oci:${join(work, 'multi-0')}:multi`);
    note(t, `skopeo copy --all of ${mb(sizeOf(layout.multi.blobs))} through node 1: ${(performance.now() - started).toFixed(0)} ms`);
    await assertLayoutHolds(join(work, 'multi-0'), 'multi', layout.multi);
    const afterBytes = await sumMetric(nodes, 'shoal_seed_bytes_total');
    const delta = afterBytes.reduce((a, b) => a + b, 0) - before.reduce((a, b) => a + b, 0);
    note(t, `seed bytes for the multi-arch image: ${delta} (one copy of its blobs: ${sizeOf(layout.multi.blobs)}), per node ${JSON.stringify(afterBytes.map((v, i) => v - before[i]!))}`);
    assert.equal(delta, sizeOf(layout.multi.blobs), 'the seed sent every blob once, over all nodes');
    assert.ok((await metric(nodes[0]!, 'shoal_tag_resolutions_total', { via: 'seed' })) >= 1);
  });

  it('a blob no peer has comes from the seed at once; a digest nobody has is a fast 404 (seed up)', async (t) => {
    await cluster!.waitConnected(); // an earlier failure may have cut connections; they come back within 5 s
    const node = cluster!.running[1]!;
    const fresh = randomBytes(1 * MiB);
    const digest = await pushBlob(seed!.url, 'fixtures/app', fresh);
    const direct = await get(`${seed!.url}/v2/fixtures/app/blobs/${digest}`);
    assert.equal(direct.status, 200);
    const viaNode = await get(`${node.url}/v2/fixtures/app/blobs/${digest}`);
    assert.equal(viaNode.status, 200, viaNode.body);
    assert.equal(sha256(viaNode.bytes), digest);
    note(t, `1 MiB blob only the seed has: ${viaNode.ms.toFixed(0)} ms through a node (first byte ${viaNode.headersMs.toFixed(0)} ms), ${direct.ms.toFixed(0)} ms straight from docker-registry`);
    const other = cluster!.running.find((n) => n !== node)!;
    const cases = { 'owner is the node itself': digestOwnedBy(node, node.peerId), 'owner is a peer': digestOwnedBy(node, other.peerId) };
    for (const [what, digest] of Object.entries(cases)) {
      const unknown = await get(`${node.url}/v2/fixtures/app/blobs/${digest}`);
      note(t, `unknown digest with the seed up, ${what}: HTTP ${unknown.status} ${errorCode(unknown)} in ${unknown.ms.toFixed(0)} ms`);
      assert.equal(unknown.status, 404, unknown.body);
      assert.equal(errorCode(unknown), 'BLOB_UNKNOWN');
      assert.ok(unknown.ms < NO_WAIT_MS, `a digest nobody has (${what}) took ${unknown.ms.toFixed(0)} ms to be refused`);
    }
    assert.ok(viaNode.ms < NO_WAIT_MS, `the seed fallback took ${viaNode.ms.toFixed(0)} ms`);
  });

  it('with the seed gone, nodes 2 and 3 pull the image by tag from peers with identical digests', async (t) => {
    await cluster!.waitConnected(); // an earlier failure may have cut connections; they come back within 5 s
    await proxy!.close();
    await seed!.stop();
    proxy = undefined;
    seed = undefined;
    for (const i of [1, 2]) {
      const node = cluster!.running[i]!;
      const seedBefore = await metric(node, 'shoal_seed_bytes_total');
      const peerBefore = await metric(node, 'shoal_pull_bytes_total', { source: 'peer' });
      const peerTagBefore = await metric(node, 'shoal_tag_resolutions_total', { via: 'peer' });
      const out = join(work, `multi-${i}`);
      const started = performance.now();
      await skopeo('copy', '--all', '--src-tls-verify=false', `docker://${node.hostPort}/fixtures/app:multi`, `oci:${out}:multi`);
      const ms = performance.now() - started;
      await assertLayoutHolds(out, 'multi', layout.multi);
      const peerBytes = (await metric(node, 'shoal_pull_bytes_total', { source: 'peer' })) - peerBefore;
      const peerTags = (await metric(node, 'shoal_tag_resolutions_total', { via: 'peer' })) - peerTagBefore;
      note(t, `node ${i + 1}: pulled from peers in ${ms.toFixed(0)} ms (tagTimeoutMs 1000), ${peerBytes} bytes from peers, ${peerTags} tag resolution(s) from a peer's record`);
      assert.ok(peerBytes > 0, 'bytes came from peers');
      assert.ok(peerTags >= 1, 'the tag was resolved from a peer (shoal_tag_resolutions_total{via="peer"})');
      assert.equal((await metric(node, 'shoal_seed_bytes_total')) - seedBefore, 0, 'nothing came from the seed');
    }
    const a = JSON.parse(await readFile(join(work, 'multi-0', 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
    const b = JSON.parse(await readFile(join(work, 'multi-1', 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
    const c = JSON.parse(await readFile(join(work, 'multi-2', 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
    assert.deepEqual(b.manifests.map((m) => m.digest), a.manifests.map((m) => m.digest));
    assert.deepEqual(c.manifests.map((m) => m.digest), a.manifests.map((m) => m.digest));
  });

  it('a node that joins later gets a 24 MiB layer from its peers alone (loopback throughput)', async (t) => {
    const late = await cluster!.add({ seeds: [] });
    await cluster!.waitConnected();
    await cluster!.waitHolders(late, big.layers[0]!.digest, 4);
    const res = await get(`${late.url}/v2/fixtures/big/blobs/${big.layers[0]!.digest}`);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.error, undefined);
    assert.equal(sha256(res.bytes), big.layers[0]!.digest);
    const perPeer = (await peersOf(late.url)).peers.map((p) => p.bytesIn);
    const mbps = res.bytes.length / MiB / (res.ms / 1000);
    note(t, `late node: ${mb(res.bytes.length)} from ${perPeer.filter((b) => b > 0).length} peers in ${res.ms.toFixed(0)} ms = ${mbps.toFixed(1)} MiB/s over loopback (bytes per peer ${JSON.stringify(perPeer)})`);
    assert.equal(await metric(late, 'shoal_pull_bytes_total', { source: 'peer' }), big.layers[0]!.bytes.length, 'every byte came from peers');
  });

  it('a digest nobody has, with the seed gone, is a fast 404 BLOB_UNKNOWN', async (t) => {
    await cluster!.waitConnected(); // an earlier failure may have cut connections; they come back within 5 s
    // The late node has no seed at all; node 2 still has the (now unreachable) seed configured, as have all but
    // the late node. Each case picks a digest by its rendezvous owner.
    const late = cluster!.running[cluster!.running.length - 1]!;
    const node2 = cluster!.running[1]!;
    const cases: Array<{ what: string; node: ClusterNode; digest: string }> = [
      { what: 'node without a seed, owner itself', node: late, digest: digestOwnedBy(late, late.peerId) },
      { what: 'node without a seed, owner a peer whose seed is down', node: late, digest: digestOwnedBy(late, node2.peerId) },
      { what: 'node whose seed is down, owner itself', node: node2, digest: digestOwnedBy(node2, node2.peerId) },
      { what: 'node whose seed is down, owner a peer whose seed is down', node: node2, digest: digestOwnedBy(node2, cluster!.running[2]!.peerId) },
    ];
    const results = await Promise.all(cases.map(async (c) => ({ ...c, res: await get(`${c.node.url}/v2/fixtures/app/blobs/${c.digest}`) })));
    for (const { what, res } of results) note(t, `unknown digest, ${what}: HTTP ${res.status} ${errorCode(res)} in ${res.ms.toFixed(0)} ms`);
    const wrong = results.filter(({ res }) => res.status !== 404 || errorCode(res) !== 'BLOB_UNKNOWN' || res.ms >= NO_WAIT_MS);
    assert.deepEqual(
      wrong.map(({ what, res }) => `${what}: HTTP ${res.status} ${errorCode(res)} after ${res.ms.toFixed(0)} ms`),
      [],
      'every case is a 404 BLOB_UNKNOWN without waiting on a timeout',
    );
  });

  it('shoal peers --node URL prints the peer table (and --json)', async () => {
    await cluster!.waitConnected(); // an earlier failure may have cut connections; they come back within 5 s
    const node = cluster!.running[0]!;
    const others = cluster!.running.filter((n) => n !== node);
    // A loaded machine can drop a connection for a moment (they come back within 5 s): ask until every peer is in.
    let listed: Awaited<ReturnType<typeof runShoal>> | undefined;
    await waitFor('shoal peers to list every peer', async () => {
      const r = (listed = await runShoal(['peers', '--node', node.url]));
      assert.equal(r.code, 0, r.stderr);
      return others.every((o) => r.stdout.includes(o.peerId)) || r.stdout;
    }, 30_000);
    const table = listed!;
    const lines = table.stdout.split('\n');
    assert.match(lines[0]!, new RegExp(`^self ${node.peerId}$`));
    const header = lines.findIndex((l) => l.startsWith('PEER'));
    assert.ok(header > 0, `a header line in:\n${table.stdout}`);
    for (const col of ['ADDRESS', 'RTT', 'THROUGHPUT', 'RECEIVED', 'SENT', 'BLOBS', 'ZONE', 'STATE']) assert.ok(lines[header]!.includes(col), `column ${col}`);
    const rows = lines.slice(header + 1).filter((l) => l.trim() !== '');
    assert.equal(rows.length, others.length, `one row per peer:\n${table.stdout}`);
    for (const o of others) {
      const row = rows.find((r) => r.startsWith(o.peerId.slice(-12)));
      assert.ok(row, `a row for ${o.peerId}:\n${table.stdout}`);
      assert.match(row, /\/ip4\/127\.0\.0\.1\/tcp\/\d+/);
      assert.match(row, /\bok$/);
    }
    const json = await runShoal(['peers', '--node', node.url, '--json']);
    assert.equal(json.code, 0, json.stderr);
    const body = JSON.parse(json.stdout) as { enabled: boolean; self: string; peers: Array<{ id: string; blobs: number }> };
    assert.equal(body.enabled, true);
    assert.equal(body.self, node.peerId);
    assert.deepEqual(body.peers.map((p) => p.id).sort(), others.map((o) => o.peerId).sort());
    assert.ok(body.peers.every((p) => p.blobs > 0), 'every peer announced what it holds');
  });
});

// ------------------------------------------------------------------------------------------------------------

/** A content provider that claims to hold one blob, gives its correct chunk map, and flips a byte in every chunk. */
class CorruptProvider implements ContentProvider {
  served = 0;
  constructor(
    private readonly digest: string,
    private readonly bytes: Buffer,
    private readonly map: { size: number; chunks: string[] },
  ) {}
  async openRange(req: ChunkRequest): Promise<{ size: number; stream: AsyncIterable<Uint8Array> } | undefined> {
    if (req.digest !== this.digest || req.start >= this.bytes.length) return undefined;
    const piece = Buffer.from(this.bytes.subarray(req.start, Math.min(req.end, this.bytes.length - 1) + 1));
    piece[piece.length >> 1] ^= 0xff;
    this.served++;
    return { size: this.bytes.length, stream: (async function* () { yield piece; })() };
  }
  async chunkMap(digest: string): Promise<{ size: number; chunks: string[] } | undefined> {
    return digest === this.digest ? this.map : undefined;
  }
  async manifest(): Promise<undefined> {
    return undefined;
  }
  async tag(): Promise<undefined> {
    return undefined;
  }
  async inventory(): Promise<string[]> {
    return [this.digest];
  }
  watch(): () => void {
    return () => undefined;
  }
}

function chunkMapOf(bytes: Buffer): { size: number; chunks: string[] } {
  const chunks: string[] = [];
  for (let i = 0; i < bytes.length; i += CHUNK_SIZE) chunks.push(createHash('sha256').update(bytes.subarray(i, i + CHUNK_SIZE)).digest('hex'));
  return { size: bytes.length, chunks };
}

describe('peers that fail: killed mid-transfer, corrupt chunks, another cluster key', () => {
  let work: string;
  let seed: DockerRegistry | undefined;
  let cluster: Cluster | undefined;
  let big: PushedImage;
  let layer: { digest: string; bytes: Buffer };
  let holder2: ClusterNode;
  let spawnedHolder: ShoalProcess | undefined;
  const procs = new ShoalProcesses();
  const stoppers: Array<() => Promise<void>> = [];

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'shoal-p2p-fail-'));
    seed = await startDockerRegistry();
    big = await pushGzipImage(seed.url, 'fixtures/big', 'v1', BIG_LAYER);
    layer = big.layers[0]!;
    // holder 2 serves peers at 12 MB/s, so a transfer from it lasts long enough to kill the other holder in it.
    cluster = await startCluster({ size: 1, seeds: [seed.url], config: { maxPeerUpload: '12M' } });
    holder2 = cluster.running[0]!;
    // holder 1 is a separate process (so it can be SIGKILLed), also capped at 12 MB/s.
    const data = await procs.tempDir('shoal-p2p-holder-');
    spawnedHolder = await procs.serve({
      dataDir: data,
      logLevel: 'info',
      args: ['--p2p-listen', '127.0.0.1:0', '--cluster-key', cluster.clusterKeyFile, '--peer', holder2.p2pAddress, '--seed', seed.url, '--max-peer-upload', '12M'],
    });
    await cluster.waitConnected(15_000, 1);
    // Both holders get the layer (one of them from the seed, the other from it or from the seed).
    for (const url of [spawnedHolder.url, holder2.url]) {
      const res = await get(`${url}/v2/fixtures/big/blobs/${layer.digest}`);
      assert.equal(res.status, 200, res.body);
      assert.equal(sha256(res.bytes), layer.digest);
    }
  });

  after(async () => {
    for (const s of stoppers.reverse()) await s().catch(() => undefined);
    await procs.cleanup();
    await cluster?.stop();
    await seed?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('a holder killed in the middle of a transfer: the pull completes from the other holder or the seed', async (t) => {
    const holder1Line = spawnedHolder!.logs.find((l) => l.msg === 'p2p listening');
    const holder1Id = String(holder1Line?.peerId ?? '');
    assert.ok(holder1Id, 'the spawned holder logged its peer id');
    const puller = await cluster!.add({ maxPeerUpload: '0' }, [(holder1Line!.addresses as string[])[0]!.replace(/^\/ip4\/([\d.]+)\/tcp\/(\d+).*$/, '$1:$2')]);
    await cluster!.waitConnected(15_000, 1);
    await cluster!.waitHolders(puller, layer.digest, 2);
    let finished = false;
    const pulling = get(`${puller.url}/v2/fixtures/big/blobs/${layer.digest}`).finally(() => (finished = true));
    // Kill holder 1 once it has sent the puller at least 1 MiB.
    let fromHolder1 = 0;
    await waitFor('holder 1 to send the puller 1 MiB', () => {
      fromHolder1 = puller.node.peers!.summary().find((p) => p.id === holder1Id)?.bytesIn ?? 0;
      return fromHolder1 >= MiB || finished;
    }, 20_000, 5);
    assert.equal(finished, false, 'the transfer was still running when the holder was killed');
    await spawnedHolder!.kill();
    const killedAt = performance.now();
    const res = await pulling;
    assert.equal(res.status, 200, res.body);
    assert.equal(res.error, undefined, `the body broke off: ${String(res.error)}`);
    assert.equal(res.bytes.length, layer.bytes.length);
    assert.equal(sha256(res.bytes), layer.digest, 'the puller served the right bytes');
    const summary = puller.node.peers!.summary();
    const fromHolder2 = summary.find((p) => p.id === holder2.peerId)?.bytesIn ?? 0;
    const peerBytes = await metric(puller, 'shoal_pull_bytes_total', { source: 'peer' });
    const seedBytes = await metric(puller, 'shoal_pull_bytes_total', { source: 'seed' });
    note(
      t,
      `killed holder 1 after it had sent ${mb(fromHolder1)}; the pull finished ${(performance.now() - killedAt).toFixed(0)} ms later (${res.ms.toFixed(0)} ms in all): ` +
        `${mb(peerBytes)} from peers (holder 2 sent ${mb(fromHolder2)}), ${mb(seedBytes)} from the seed`,
    );
    assert.equal(peerBytes + seedBytes, layer.bytes.length, 'every byte came from a peer or the seed, once');
    assert.ok(fromHolder2 > 0, 'the other holder served part of it');
    assert.equal(await metric(puller, 'shoal_peer_bans_total'), 0, 'a holder that went away is not banned');
  });

  it('a peer that serves corrupt chunks is banned and the node still serves the right bytes', async (t) => {
    // The corrupt peer takes its (correct) chunk map from an honest node, over the chunk-map protocol.
    const puller = await cluster!.add();
    const registry = new Registry();
    let provider: CorruptProvider | undefined;
    const listeners = new Set<(e: { type: 'added' | 'removed'; digest: string }) => void>();
    // Holds nothing until it has the chunk map; then announces the layer like any node that just got it.
    const lazy: ContentProvider = {
      openRange: async (req) => provider?.openRange(req),
      chunkMap: async (d) => provider?.chunkMap(d),
      manifest: async () => undefined,
      tag: async () => undefined,
      inventory: async () => (provider ? provider.inventory() : []),
      watch: (listener) => {
        listeners.add(listener);
        return () => listeners.delete(listener);
      },
    };
    const evil = new PeerService({
      listen: { host: '127.0.0.1', port: 0 },
      clusterKey: await readClusterKey(cluster!.clusterKeyFile),
      identityFile: join(work, 'evil', 'identity.key'),
      bootstrap: [holder2.p2pAddress, puller.p2pAddress],
      mdns: false,
      maxUploadRate: 0,
      maxChunkStreams: 32,
      banMs: 60_000,
      provider: lazy,
      logger: createLogger('silent'),
      metrics: registry,
    });
    stoppers.push(() => evil.stop());
    await evil.start();
    await waitFor('the corrupt peer to connect', () => evil.peers().includes(holder2.peerId) && puller.node.peers!.peers().includes(evil.selfId));
    const map = await evil.fetchChunkMap(holder2.peerId, layer.digest);
    assert.deepEqual(map, chunkMapOf(layer.bytes), 'holder 2 gave the correct chunk map');
    provider = new CorruptProvider(layer.digest, layer.bytes, map!);
    for (const l of listeners) l({ type: 'added', digest: layer.digest });
    await waitFor('the puller to see the corrupt peer hold the layer', () => puller.node.peers!.holders(layer.digest).includes(evil.selfId));
    const bansBefore = await metric(puller, 'shoal_peer_bans_total');
    const res = await get(`${puller.url}/v2/fixtures/big/blobs/${layer.digest}`);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.error, undefined);
    assert.equal(sha256(res.bytes), layer.digest, 'the client got the right bytes');
    const bans = (await metric(puller, 'shoal_peer_bans_total')) - bansBefore;
    const row = (await peersOf(puller.url)).peers.find((p) => p.id === evil.selfId);
    note(t, `corrupt peer served ${provider.served} chunk(s); bans on the puller: ${bans}; seed bytes ${await metric(puller, 'shoal_pull_bytes_total', { source: 'seed' })}, peer bytes ${await metric(puller, 'shoal_pull_bytes_total', { source: 'peer' })}`);
    assert.ok(provider.served >= 1, 'the corrupt peer was asked for a chunk');
    assert.equal(bans, 1, 'the corrupt peer was banned (shoal_peer_bans_total)');
    assert.ok(row?.bannedUntil && row.bannedUntil > Date.now(), `GET /shoal/peers shows the ban: ${JSON.stringify(row)}`);
    assert.ok(!puller.node.peers!.holders(layer.digest).includes(evil.selfId), 'a banned peer is no longer a holder');
  });

  it('a corrupt peer that is the only holder: banned, and the seed gives the blob', async (t) => {
    // A node outside the cluster whose only peer is the corrupt one.
    const provider = new CorruptProvider(layer.digest, layer.bytes, chunkMapOf(layer.bytes));
    const evil = new PeerService({
      listen: { host: '127.0.0.1', port: 0 },
      clusterKey: await readClusterKey(cluster!.clusterKeyFile),
      identityFile: join(work, 'evil2', 'identity.key'),
      bootstrap: [],
      mdns: false,
      maxUploadRate: 0,
      maxChunkStreams: 32,
      banMs: 60_000,
      provider,
      logger: createLogger('silent'),
      metrics: new Registry(),
    });
    stoppers.push(() => evil.stop());
    await evil.start();
    const evilAddr = /\/ip4\/([\d.]+)\/tcp\/(\d+)/.exec(evil.addresses()[0]!)!;
    const dataDir = await procs.tempDir('shoal-p2p-lonely-');
    const lonely = await startTestNode({ dataDir, config: { seeds: [{ url: seed!.url }], p2pListen: '127.0.0.1:0', clusterKeyFile: cluster!.clusterKeyFile, peers: [`${evilAddr[1]}:${evilAddr[2]}`] } });
    stoppers.push(() => lonely.stop());
    await waitFor('the lonely node to see the corrupt peer hold the layer', () => lonely.node.peers!.holders(layer.digest).length === 1);
    const res = await get(`${lonely.url}/v2/fixtures/big/blobs/${layer.digest}`);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.error, undefined);
    assert.equal(sha256(res.bytes), layer.digest);
    const seedBytes = await metric(lonely, 'shoal_pull_bytes_total', { source: 'seed' });
    note(t, `only holder corrupt: ${provider.served} corrupt chunk(s) served, ${mb(seedBytes)} from the seed, shoal_peer_bans_total ${await metric(lonely, 'shoal_peer_bans_total')}`);
    assert.equal(seedBytes, layer.bytes.length, 'the seed gave the whole blob');
    const bans = await metric(lonely, 'shoal_peer_bans_total');
    assert.equal(bans, 1, `one bad peer is one ban in shoal_peer_bans_total, got ${bans} (one per corrupt chunk it had in flight: ${provider.served})`);
    assert.ok(lonely.node.peers!.summary()[0]?.bannedUntil, 'the peer is shown as banned');
  });

  it('a node with a different cluster key cannot connect', async (t) => {
    const otherKey = join(work, 'other.key');
    await writeClusterKey(otherKey);
    const lines: Array<Record<string, unknown>> = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const l of chunk.toString('utf8').split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
        done();
      },
    });
    const dataDir = await procs.tempDir('shoal-p2p-stranger-');
    const started = performance.now();
    const stranger: ShoalNode = await startNode(
      { ...defaultConfig(), dataDir, listen: '127.0.0.1:0', p2pListen: '127.0.0.1:0', clusterKeyFile: otherKey, peers: [holder2.p2pAddress], seeds: [{ url: seed!.url }] },
      { logger: createLogger('debug', sink) },
    );
    stoppers.push(() => stranger.stop());
    const url = `http://127.0.0.1:${stranger.port}`;
    await waitFor('the stranger to log a failed dial', () => lines.some((l) => l.msg === 'peer dial failed'), 8_000);
    const failed = lines.find((l) => l.msg === 'peer dial failed')!;
    note(t, `dial with another cluster key failed after ${(performance.now() - started).toFixed(0)} ms: ${String(failed.err)}`);
    await sleep(2_000);
    assert.deepEqual((await peersOf(url)).peers, [], 'the stranger has no peers');
    assert.ok(!(await peersOf(holder2.url)).peers.some((p) => p.id === stranger.peers!.selfId), 'the cluster node does not list the stranger');
    assert.equal(await metric({ url }, 'shoal_peers_connected'), 0);
    // And nothing leaks: the stranger cannot read the cluster's blobs by peer protocol.
    assert.equal(stranger.peers!.holders(layer.digest).length, 0);
  });
});

// ------------------------------------------------------------------------------------------------------------

describe('the cluster key in the Noise handshake (every peer connection)', () => {
  it('carries 4 x 48 MiB at once between two libp2p nodes, byte for byte, and refuses another key', { timeout: 120_000 }, async () => {
    // @libp2p/pnet's WebAssembly XSalsa20 ran out of memory here after ~30 MiB of traffic and crashed the
    // process; what replaced it must carry far more than that, in parallel, without error.
    const key = randomBytes(32);
    const make = (k: Uint8Array) =>
      createLibp2p({
        addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
        transports: [tcp()],
        connectionEncrypters: [clusterNoise(k)],
        streamMuxers: [yamux()],
      });
    const server = await make(key);
    const client = await make(key);
    const stranger = await make(randomBytes(32));
    try {
      const size = 48 * 1024 * 1024;
      const payload = randomBytes(1024 * 1024);
      await server.handle('/test/bulk/1.0.0', async (stream) => {
        const lp = lpStream(stream);
        for (let sent = 0; sent < size; sent += payload.length) await lp.write(payload);
        await stream.close();
      });
      const addr = server.getMultiaddrs()[0]!;
      const expected = createHash('sha256');
      for (let sent = 0; sent < size; sent += payload.length) expected.update(payload);
      const want = expected.digest('hex');
      const pull = async (): Promise<string> => {
        const stream = await client.dialProtocol(addr, '/test/bulk/1.0.0');
        // yamux gives no receive backpressure: the read buffer must hold a whole window (16 MiB by default).
        const lp = lpStream(stream, { maxBufferSize: 32 * 1024 * 1024 });
        const h = createHash('sha256');
        for (let got = 0; got < size; ) {
          const frame = (await lp.read()).subarray();
          h.update(frame);
          got += frame.length;
        }
        return h.digest('hex');
      };
      const started = performance.now();
      const results = await Promise.all([pull(), pull(), pull(), pull()]);
      const seconds = (performance.now() - started) / 1000;
      process.stdout.write(`# cluster-key noise: 4 x 48 MiB in ${seconds.toFixed(2)} s (${((4 * 48) / seconds).toFixed(0)} MiB/s)\n`);
      assert.deepEqual(results, [want, want, want, want]);
      await assert.rejects(stranger.dial(addr, { signal: AbortSignal.timeout(5_000) }), 'a node with another key cannot connect');
    } finally {
      await Promise.all([server.stop(), client.stop(), stranger.stop()]);
    }
  });
});
