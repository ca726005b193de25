/**
 * Peers that fail well, on loopback with real nodes and real libp2p (no mocks of the peer protocol):
 *
 * - a rotten holder (a byte flipped in its store while it was stopped): another node pulls the image with the seed
 *   up, and with the seed down and an honest holder; the rotten node stops serving the bad bytes within seconds of
 *   finding out (by its own check when it serves a chunk, or by a peer's report) and fetches the blob again when
 *   it is pinned;
 * - lying peers, built here from the project's own protocol code, that give a chunk map with a wrong size or wrong
 *   hashes: the pull succeeds from the others, the liar is banned, no honest peer is;
 * - a ban survives the banned peer reconnecting, and the banning node's restart;
 * - a peer that floods its inventory past the cap (or sends an oversized message) is cut off, and the node's
 *   memory stays bounded;
 * - a peer that dribbles a chunk over 30 s does not hold a pull much longer than the other sources need.
 */
import { after, before, describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { yamux } from '@chainsafe/libp2p-yamux';
import { tcp } from '@libp2p/tcp';
import { multiaddr } from '@multiformats/multiaddr';
import { createLibp2p, type Libp2p } from 'libp2p';
import { Registry } from 'prom-client';
import { Agent, request } from 'undici';
import { createLogger } from '../../src/logger.ts';
import { CHUNK_SIZE, type ChunkMap } from '../../src/oci/index.ts';
import { clusterNoise } from '../../src/p2p/cluster-key.ts';
import { readClusterKey, writeClusterKey } from '../../src/p2p/keys.ts';
import { PeerService } from '../../src/p2p/peer-service.ts';
import { PROTOCOLS, type ChunkRequest, type ContentProvider } from '../../src/p2p/types.ts';
import { framed, INVENTORY_SLICE, MAX_INVENTORY_FRAME, writeJson } from '../../src/p2p/wire.ts';
import { peersOf, startCluster, waitFor, type Cluster, type ClusterNode } from '../helpers/cluster.ts';
import { scrape } from '../helpers/metrics.ts';
import { freePort, pushBlob, pushGzipImage, pushRandomImage, sha256, startDockerRegistry, type DockerRegistry, type PushedImage } from '../helpers/seed-registry.ts';
import { skopeoIn, type Skopeo } from '../helpers/skopeo.ts';
import { runShoal, ShoalProcesses, type ShoalProcess } from '../helpers/spawn-node.ts';

const MiB = 1024 * 1024;
const agent = new Agent({ keepAliveTimeout: 1_000, connections: 32 });
after(() => agent.close());

interface Fetched {
  status: number;
  bytes: Buffer;
  ms: number;
  body: string;
  error?: unknown;
}

/** GET to the end of the body, timed; `error` is set when the body broke off. */
async function get(url: string, timeoutMs = 60_000): Promise<Fetched> {
  const started = performance.now();
  const res = await request(url, { dispatcher: agent, headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
  const chunks: Buffer[] = [];
  let error: unknown;
  try {
    for await (const c of res.body) chunks.push(Buffer.from(c as Uint8Array));
  } catch (err) {
    error = err;
  }
  const bytes = Buffer.concat(chunks);
  return { status: res.statusCode, bytes, ms: performance.now() - started, body: res.statusCode >= 400 ? bytes.toString('utf8').slice(0, 500) : '', error };
}

async function metric(node: { url: string }, name: string, labels: Record<string, string> = {}): Promise<number> {
  return (await scrape(node.url)).get(name, labels);
}

function chunkMapOf(bytes: Buffer): ChunkMap {
  const chunks: string[] = [];
  for (let i = 0; i < bytes.length; i += CHUNK_SIZE) chunks.push(createHash('sha256').update(bytes.subarray(i, i + CHUNK_SIZE)).digest('hex'));
  return { size: bytes.length, chunks };
}

/** Flips one byte of a stored blob in place (disk rot), at each of `offsets`. */
async function rot(dataDir: string, digest: string, offsets: number[]): Promise<void> {
  const hex = digest.slice('sha256:'.length);
  const file = await open(join(dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex), 'r+');
  try {
    for (const offset of offsets) {
      const b = Buffer.alloc(1);
      await file.read(b, 0, 1, offset);
      b[0]! ^= 0xff;
      await file.write(b, 0, 1, offset);
    }
    await file.sync();
  } finally {
    await file.close();
  }
}

/** One byte in the middle of every chunk of a blob of `size` bytes. */
function everyChunk(size: number): number[] {
  const out: number[] = [];
  for (let start = 0; start < size; start += CHUNK_SIZE) out.push(start + Math.floor(Math.min(CHUNK_SIZE, size - start) / 2));
  return out;
}

function note(t: TestContext, message: string): void {
  t.diagnostic(message);
}

/** What a peer built in a test serves for one blob: its size, chunk map and bytes, true or not. */
interface FakeBlob {
  size: number;
  map: ChunkMap;
  bytes(start: number, end: number, signal: AbortSignal): AsyncIterable<Uint8Array>;
}

/** A content provider for peers built in tests: it holds what it is told to, and serves whatever it is given. */
class FakeHolder implements ContentProvider {
  readonly blobs = new Map<string, FakeBlob>();
  private readonly listeners = new Set<(e: { type: 'added' | 'removed'; digest: string }) => void>();
  /** Aborted when the test ends: slow streams stop. */
  readonly done = new AbortController();
  served = 0;

  hold(digest: string, blob: FakeBlob): void {
    this.blobs.set(digest, blob);
    for (const l of this.listeners) l({ type: 'added', digest });
  }
  async openRange(req: ChunkRequest): Promise<{ size: number; stream: AsyncIterable<Uint8Array> } | undefined> {
    const blob = this.blobs.get(req.digest);
    if (!blob || req.start >= blob.size) return undefined;
    this.served++;
    return { size: blob.size, stream: blob.bytes(req.start, Math.min(req.end, blob.size - 1), this.done.signal) };
  }
  async chunkMap(digest: string): Promise<ChunkMap | undefined> {
    return this.blobs.get(digest)?.map;
  }
  async manifest(): Promise<undefined> {
    return undefined;
  }
  async tag(): Promise<undefined> {
    return undefined;
  }
  async inventory(): Promise<string[]> {
    return [...this.blobs.keys()];
  }
  watch(listener: (e: { type: 'added' | 'removed'; digest: string }) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

/** Bytes `start..end` of `data`, in one piece. */
function slice(data: Buffer): FakeBlob['bytes'] {
  return async function* (start, end) {
    yield data.subarray(start, end + 1);
  };
}

/** A log that keeps its lines, for assertions on what a peer logged. */
function capturedLogger(level = 'debug'): { logger: ReturnType<typeof createLogger>; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString('utf8').split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  return { logger: createLogger(level as 'debug', sink), lines };
}

interface TestPeerOptions {
  dir: string;
  clusterKeyFile: string;
  bootstrap: string[];
  provider: ContentProvider;
  logger?: ReturnType<typeof createLogger>;
  maintenanceIntervalMs?: number;
  zone?: string;
}

/** A peer built from the project's own PeerService, serving what its provider says. */
async function startTestPeer(opts: TestPeerOptions): Promise<PeerService> {
  const peer = new PeerService({
    listen: { host: '127.0.0.1', port: 0 },
    clusterKey: await readClusterKey(opts.clusterKeyFile),
    identityFile: join(opts.dir, 'identity.key'),
    bootstrap: opts.bootstrap,
    mdns: false,
    maxUploadRate: 0,
    maxChunkStreams: 32,
    banMs: 60_000,
    maintenanceIntervalMs: opts.maintenanceIntervalMs,
    zone: opts.zone,
    provider: opts.provider,
    logger: opts.logger ?? createLogger('silent'),
    metrics: new Registry(),
  });
  await peer.start();
  return peer;
}

function banOf(node: ClusterNode, peer: string): { reason: string; until: number } | undefined {
  return node.node.peers!.summary().find((p) => p.id === peer)?.ban;
}

// ------------------------------------------------------------------------------------------------------------

describe('a rotten holder: a byte flipped in its store while it was stopped', () => {
  let work: string;
  let seed: DockerRegistry | undefined;
  let cluster: Cluster | undefined;
  let skopeo: Skopeo;
  let image: PushedImage;
  let layer: { digest: string; bytes: Buffer };
  const stoppers: Array<() => Promise<void>> = [];
  /** Node A: the one whose disk rots. */
  let rotten: ClusterNode;
  /** A peer built from the project's protocol code that tells A what it got wrong. */
  let reporter: PeerService | undefined;

  const node = (i: number): ClusterNode => cluster!.nodes[i]!;

  async function pulledBy(puller: ClusterNode, out: string): Promise<void> {
    await skopeo('copy', '--src-tls-verify=false', `docker://${puller.hostPort}/${image.repository}:${image.tag}`, `oci:${join(work, out)}:v1`);
    const hex = layer.digest.slice('sha256:'.length);
    const got = await readFile(join(work, out, 'blobs', 'sha256', hex));
    assert.equal(sha256(got), layer.digest, `${out}: the client got the right layer`);
  }

  /** Restarts node A with a byte flipped in `offsets` of its copy of the layer. */
  async function rotA(offsets: number[]): Promise<void> {
    assert.ok(await rotten.node.store.statContent(layer.digest), 'node A holds the layer before it rots');
    rotten = await cluster!.restart(rotten, (dir) => rot(dir, layer.digest, offsets));
  }

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'shoal-rot-'));
    skopeo = await skopeoIn(join(work, 'skopeo'));
    seed = await startDockerRegistry();
    // 3 chunks and a bit: a byte can rot in a chunk of its own.
    image = await pushGzipImage(seed.url, 'trust/rot', 'v1', 12 * MiB + 4096);
    layer = image.layers[0]!;
    // A pulls the image while it is alone, so that it is the only holder when B and C join.
    // No background scrub: it would find A's rot on its own (a loaded machine showed it), and these tests are about
    // what A finds when it serves and when it is told.
    cluster = await startCluster({ size: 1, seeds: [seed.url], config: { tagTimeoutMs: 1_000, scrubRate: '0' } });
    rotten = node(0);
    await pulledBy(rotten, 'pull-a');
    await cluster.add();
    await cluster.add();
    await cluster.waitConnected();
  });

  after(async () => {
    for (const s of stoppers.reverse()) await s().catch(() => undefined);
    await cluster?.stop();
    await seed?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('with the seed up, another node pulls the image; node A finds its copy bad, peers drop it, and A serves the right bytes', async (t) => {
    await rotA([CHUNK_SIZE + 12_345]);
    await cluster!.waitConnected();
    const b = node(1);
    await cluster!.waitHolders(b, layer.digest, 1);
    const started = performance.now();
    await pulledBy(b, 'pull-b');
    note(t, `node B pulled the image (A the only holder, A rotten in chunk 1, seed up) in ${(performance.now() - started).toFixed(0)} ms; ` +
      `from peers ${await metric(b, 'shoal_pull_bytes_total', { source: 'peer' })} bytes, from the seed ${await metric(b, 'shoal_pull_bytes_total', { source: 'seed' })}`);
    // A checked the chunk before its last piece went out, found it bad and took the blob out: its removal reaches
    // its peers' inventories at once.
    await waitFor('node B to drop A as a holder of the layer', () => !b.node.peers!.holders(layer.digest).includes(rotten.peerId), 10_000);
    assert.equal(await rotten.node.store.statContent(layer.digest), undefined, 'the bad copy is out of A’s store');
    // The removal reaches B before A's check returns (it still syncs the unlink), and A counts when it returns.
    await waitFor('A to count the corrupt blob', async () => (await metric(rotten, 'shoal_corrupt_blobs_total', { found_by: 'peer-serve' })) >= 1, 10_000);
    // A's own clients get the right bytes (A fetches the blob again), never the rotten ones.
    const fromA = await get(`${rotten.url}/v2/trust/rot/blobs/${layer.digest}`);
    assert.equal(fromA.status, 200, fromA.body);
    assert.equal(fromA.error, undefined);
    assert.equal(sha256(fromA.bytes), layer.digest, 'A serves the right bytes');
    assert.equal(await metric(b, 'shoal_peer_bans_total'), 0, 'no bad byte reached B, so nobody is banned');
  });

  it('with the seed down and an honest holder, another node pulls the image', async (t) => {
    // C holds a good copy; A's copy rots in every chunk; B is stopped; the seed goes away.
    const c = node(2);
    await pulledBy(c, 'pull-c');
    await node(1).stop();
    await rotA(everyChunk(layer.bytes.length));
    await seed!.stop();
    seed = undefined;
    const d = await cluster!.add();
    await cluster!.waitConnected();
    await cluster!.waitHolders(d, layer.digest, 2);
    const started = performance.now();
    await pulledBy(d, 'pull-d');
    note(t, `node D pulled the image by tag with the seed down (holders: A rotten in every chunk, C good) in ${(performance.now() - started).toFixed(0)} ms; ` +
      `tag from a peer ${await metric(d, 'shoal_tag_resolutions_total', { via: 'peer' })}x, A found ${await metric(rotten, 'shoal_corrupt_blobs_total')} corrupt blob(s)`);
    assert.equal(await metric(d, 'shoal_pull_bytes_total', { source: 'seed' }), 0, 'nothing came from the seed');
    assert.ok((await metric(d, 'shoal_tag_resolutions_total', { via: 'peer' })) >= 1, 'the tag came from a peer');
    assert.equal(await metric(d, 'shoal_peer_bans_total'), 0, 'no honest peer is banned');
    // A was asked for some of the chunks (every one of its chunks is bad): it found out, and took its copy out.
    await waitFor('node D to drop A as a holder of the layer', () => !d.node.peers!.holders(layer.digest).includes(rotten.peerId), 10_000);
    await waitFor('A to count the corrupt blob', async () => (await metric(rotten, 'shoal_corrupt_blobs_total', { found_by: 'peer-serve' })) >= 1, 10_000);
  });

  it('told by a peer, the rotten node takes the blob out at once, fetches it again because it is pinned, and serves the right bytes', async (t) => {
    // A gets a good copy again (from its peers; the seed is down), pins the image, then rots.
    const again = await get(`${rotten.url}/v2/trust/rot/blobs/${layer.digest}`);
    assert.equal(again.status, 200, again.body);
    const manifest = await get(`${rotten.url}/v2/trust/rot/manifests/${image.manifestDigest}`);
    assert.equal(manifest.status, 200, manifest.body);
    const pin = await request(`${rotten.url}/shoal/pins/trust/rot@${image.manifestDigest}?reason=test`, { method: 'PUT', dispatcher: agent });
    await pin.body.dump();
    assert.equal(pin.statusCode, 201);
    await rotA([2 * CHUNK_SIZE + 7]);
    await cluster!.waitConnected();
    // A peer built from the project's protocol code reports the bad chunk, as a fetcher that got it would.
    const dir = await mkdtemp(join(work, 'reporter-'));
    const peer = await startTestPeer({ dir, clusterKeyFile: cluster!.clusterKeyFile, bootstrap: [rotten.p2pAddress], provider: new FakeHolder() });
    reporter = peer;
    stoppers.push(() => peer.stop());
    await waitFor('the reporter to connect to A', () => peer.peers().includes(rotten.peerId));
    const before = await metric(rotten, 'shoal_corrupt_blobs_total', { found_by: 'peer-report' });
    const reportedAt = performance.now();
    const outcome = await peer.report(rotten.peerId, layer.digest, [2]);
    note(t, `A answered the report in ${(performance.now() - reportedAt).toFixed(0)} ms: ${outcome}`);
    assert.equal(outcome, 'corrupt', 'A re-checked its copy and found it bad');
    assert.equal((await metric(rotten, 'shoal_corrupt_blobs_total', { found_by: 'peer-report' })) - before, 1, 'A counted it');
    // Nobody asks A for the blob: it comes back because a pin holds it.
    await waitFor(
      'A to fetch the pinned layer again',
      async () => (await rotten.node.store.statContent(layer.digest)) !== undefined && (await rotten.node.store.verifyContent(layer.digest)) === 'ok',
      15_000,
    );
    note(t, `A had the pinned layer back, verified, ${(performance.now() - reportedAt).toFixed(0)} ms after the report`);
    const fromA = await get(`${rotten.url}/v2/trust/rot/blobs/${layer.digest}`);
    assert.equal(fromA.status, 200, fromA.body);
    assert.equal(sha256(fromA.bytes), layer.digest, 'A serves the right bytes');
  });

  it('a client reading a blob when the node finds it corrupt is cut off, not handed the rest of the wrong bytes', async (t) => {
    // 64 MiB, more than the kernel buffers between the node and a client that pauses.
    const big = randomBytes(64 * MiB);
    const digest = await pushBlob(rotten.url, 'trust/rot', big);
    await rot(rotten.dataDir, digest, [60 * MiB]);
    const res = await request(`${rotten.url}/v2/trust/rot/blobs/${digest}`, { dispatcher: agent });
    assert.equal(res.statusCode, 200);
    const body = res.body[Symbol.asyncIterator]();
    let got = ((await body.next()).value as Buffer).length;
    assert.equal(await reporter!.report(rotten.peerId, digest, [15]), 'corrupt', 'A finds out while the client reads');
    let cut: unknown;
    try {
      for (;;) {
        const next = await body.next();
        if (next.done) break;
        got += (next.value as Buffer).length;
      }
    } catch (err) {
      cut = err;
    }
    note(t, `the client got ${got} of ${big.length} bytes, then: ${String((cut as Error)?.message ?? 'the end')}`);
    assert.ok(cut !== undefined && got < big.length, 'the body broke off before the end');
    const after = await get(`${rotten.url}/v2/trust/rot/blobs/${digest}`);
    assert.equal(after.status, 404, 'the bad copy is gone, and no good one exists anywhere');
  });
});

// ------------------------------------------------------------------------------------------------------------

describe('lying peers, and bans that hold', () => {
  let work: string;
  let cluster: Cluster | undefined;
  const stoppers: Array<() => Promise<void>> = [];
  const liars: FakeHolder[] = [];
  /** Honest holders H1, H2 and the puller P; no seed at all. */
  let h1: ClusterNode;
  let h2: ClusterNode;
  let puller: ClusterNode;
  const blobs = new Map<string, { digest: string; bytes: Buffer }>();

  async function holdOn(nodes: ClusterNode[], name: string, size: number): Promise<{ digest: string; bytes: Buffer }> {
    const bytes = randomBytes(size);
    let digest = '';
    for (const n of nodes) digest = await pushBlob(n.url, 'trust/lies', bytes);
    const blob = { digest, bytes };
    blobs.set(name, blob);
    return blob;
  }

  async function liar(
    name: string,
    blob: FakeBlob,
    digest: string,
    opts: { logger?: ReturnType<typeof createLogger>; maintenanceIntervalMs?: number; zone?: string } = {},
  ): Promise<{ peer: PeerService; holder: FakeHolder; dir: string }> {
    const holder = new FakeHolder();
    liars.push(holder);
    const dir = await mkdtemp(join(work, `${name}-`));
    const peer = await startTestPeer({ dir, clusterKeyFile: cluster!.clusterKeyFile, bootstrap: [puller.p2pAddress, h1.p2pAddress], provider: holder, ...opts });
    stoppers.push(() => peer.stop());
    holder.hold(digest, blob);
    await waitFor(`the puller to see ${name} hold the blob`, () => puller.node.peers!.holders(digest).includes(peer.selfId));
    return { peer, holder, dir };
  }

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'shoal-lies-'));
    // The puller is in zone "near"; a liar that says it is there too is the puller's first choice.
    cluster = await startCluster({ size: 3, config: (i) => (i === 2 ? { zone: 'near' } : {}) });
    await cluster.waitConnected();
    [h1, h2, puller] = cluster.nodes as [ClusterNode, ClusterNode, ClusterNode];
    await holdOn([h1, h2], 'x', 10 * MiB + 77);
    await holdOn([h1], 'y', 10 * MiB + 99);
    await holdOn([h1], 'z', 10 * MiB + 11);
  });

  after(async () => {
    for (const l of liars) l.done.abort();
    for (const s of stoppers.reverse()) await s().catch(() => undefined);
    await cluster?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('a peer whose chunk map has the wrong size: the pull succeeds from the others, the liar is banned, no honest peer is', async (t) => {
    const x = blobs.get('x')!;
    const truth = chunkMapOf(x.bytes);
    const size = x.bytes.length + CHUNK_SIZE;
    const padded = Buffer.concat([x.bytes, Buffer.alloc(CHUNK_SIZE)]);
    const { peer } = await liar('liar-size', { size, map: chunkMapOf(padded), bytes: slice(padded) }, x.digest);
    await cluster!.waitHolders(puller, x.digest, 3);
    assert.notDeepEqual(chunkMapOf(padded), truth);
    const res = await get(`${puller.url}/v2/trust/lies/blobs/${x.digest}`);
    note(t, `liar with a map of ${size} bytes (the blob has ${x.bytes.length}): HTTP ${res.status} in ${res.ms.toFixed(0)} ms`);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.error, undefined);
    assert.equal(sha256(res.bytes), x.digest, 'the right bytes');
    assert.equal(banOf(puller, peer.selfId)?.reason, 'bad-map', 'the liar is banned for its map');
    assert.equal(banOf(puller, h1.peerId), undefined, 'H1 is not banned');
    assert.equal(banOf(puller, h2.peerId), undefined, 'H2 is not banned');
    assert.equal(await metric(puller, 'shoal_peer_bans_total', { reason: 'bad-map' }), 1);
    assert.equal(await metric(puller, 'shoal_peer_bans_total'), 1, 'one ban in all');
    assert.ok(!puller.node.peers!.holders(x.digest).includes(peer.selfId), 'a banned peer is no holder');
  });

  it('a peer whose chunk map has wrong hashes, and bytes to match, against one honest holder: the pull succeeds, only the liar is banned', async (t) => {
    const y = blobs.get('y')!;
    // The liar's copy differs in chunk 1, and its map is of that copy: its bytes pass its own map.
    const forged = Buffer.from(y.bytes);
    forged[CHUNK_SIZE + 100]! ^= 0x01;
    // In the puller's zone, so that its map is tried first: its bytes pass it, and only the whole digest fails.
    const { peer, holder } = await liar('liar-hashes', { size: forged.length, map: chunkMapOf(forged), bytes: slice(forged) }, y.digest, { zone: 'near' });
    await cluster!.waitHolders(puller, y.digest, 2);
    const bansBefore = await metric(puller, 'shoal_peer_bans_total');
    const res = await get(`${puller.url}/v2/trust/lies/blobs/${y.digest}`);
    note(t, `liar with forged chunk 1 and a map to match, one honest holder: HTTP ${res.status} in ${res.ms.toFixed(0)} ms; the liar served ${holder.served} chunk(s)`);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.error, undefined);
    assert.equal(sha256(res.bytes), y.digest, 'the right bytes');
    assert.ok(holder.served >= 1, 'the liar’s map was tried first, and its bytes were taken until the digest failed');
    assert.equal(banOf(puller, peer.selfId)?.reason, 'bad-map', 'the liar is banned');
    assert.equal(banOf(puller, h1.peerId), undefined, 'the honest holder is not banned');
    assert.equal((await metric(puller, 'shoal_peer_bans_total')) - bansBefore, 1, 'one more ban');
  });

  it('a ban survives the banned peer reconnecting, and the banning node’s restart; shoal peers shows it', async (t) => {
    const z = blobs.get('z')!;
    const zmap = chunkMapOf(z.bytes);
    // The right map, but a byte flipped in every chunk it sends.
    const bad: FakeBlob = {
      size: z.bytes.length,
      map: zmap,
      bytes: async function* (start, end) {
        const piece = Buffer.from(z.bytes.subarray(start, end + 1));
        piece[piece.length >> 1]! ^= 0xff;
        yield piece;
      },
    };
    const log = capturedLogger();
    const { peer, dir } = await liar('corrupt', bad, z.digest, { logger: log.logger, maintenanceIntervalMs: 300 });
    const badId = peer.selfId;
    const res = await get(`${puller.url}/v2/trust/lies/blobs/${z.digest}`);
    assert.equal(res.status, 200, res.body);
    assert.equal(sha256(res.bytes), z.digest);
    assert.equal(banOf(puller, badId)?.reason, 'bad-bytes', 'the peer that sent bad bytes is banned');
    const until = banOf(puller, badId)!.until;
    assert.equal(banOf(puller, h1.peerId), undefined, 'the honest holder is not banned');
    const bansAfter = await metric(puller, 'shoal_peer_bans_total', { reason: 'bad-bytes' });
    assert.equal(bansAfter, 1);

    // It comes back with the same identity (a new port) and dials the puller, over and over.
    await peer.stop();
    const comeBack = async (): Promise<PeerService> => {
      const from = log.lines.length;
      const back = await startTestPeer({ dir, clusterKeyFile: cluster!.clusterKeyFile, bootstrap: [puller.p2pAddress], provider: new FakeHolder(), logger: log.logger, maintenanceIntervalMs: 300 });
      stoppers.push(() => back.stop());
      assert.equal(back.selfId, badId, 'same peer id');
      // Its dials get as far as the handshake, where the puller's connection gate, having learnt who it is, hangs up.
      const attempts = (): number => log.lines.slice(from).filter((l) => l.msg === 'peer dial failed' || l.msg === 'peer disconnected').length;
      await waitFor('the banned peer to try to reconnect three times', () => attempts() >= 3, 15_000);
      assert.ok(!back.peers().includes(puller.peerId), 'the banned peer is not connected');
      assert.ok(!puller.node.peers!.peers().includes(badId), 'the puller does not list it as a peer');
      return back;
    };
    const back = await comeBack();
    assert.equal(banOf(puller, badId)?.reason, 'bad-bytes', 'the ban keeps its reason');
    assert.equal(banOf(puller, badId)?.until, until, 'the ban keeps its end');
    assert.equal(await metric(puller, 'shoal_peer_bans_total', { reason: 'bad-bytes' }), bansAfter, 'reconnect attempts are not new bans');

    const table = await runShoal(['peers', '--node', puller.url]);
    assert.equal(table.code, 0, table.stderr);
    note(t, `shoal peers on the puller:\n${table.stdout}`);
    assert.ok(table.stdout.includes(`banned (bad-bytes) until ${new Date(until).toISOString()}`), 'the peer table shows the ban, its reason and its end');
    assert.match(table.stdout, new RegExp(`${badId}\\s+bad-bytes\\s+until `), 'the bans section names the peer, its reason and its end');

    // The puller restarts: the ban is read back from <data>/p2p/bans.json, and the peer is refused again.
    await back.stop();
    puller = await cluster!.restart(puller);
    await cluster!.waitConnected(15_000);
    assert.equal(banOf(puller, badId)?.until, until, 'the same ban, to the same end, after the restart');
    await comeBack();
    assert.equal((await peersOf(puller.url)).peers.find((p) => p.id === badId)?.bannedUntil, until, 'GET /shoal/peers shows it');
    assert.equal(await metric(puller, 'shoal_peer_bans_total'), 0, 'no new ban was needed after the restart');
  });
});

// ------------------------------------------------------------------------------------------------------------

describe('bounded peer state: a peer that floods its inventory, or sends an oversized message', () => {
  const procs = new ShoalProcesses();
  const flooders: Libp2p[] = [];
  let keyFile: string;
  let node: ShoalProcess;
  let address: string;
  const CAP = 50_000;

  /** Resident memory of the node's process, in bytes. */
  async function rss(): Promise<number> {
    const status = await readFile(`/proc/${node.pid}/status`, 'utf8');
    return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) * 1024;
  }

  async function flooder(): Promise<Libp2p> {
    const f = await createLibp2p({
      addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
      transports: [tcp()],
      connectionEncrypters: [clusterNoise(await readClusterKey(keyFile))],
      streamMuxers: [yamux()],
    });
    flooders.push(f);
    return f;
  }

  before(async () => {
    const dir = await procs.tempDir('shoal-flood-');
    keyFile = join(dir, 'cluster.key');
    await writeClusterKey(keyFile);
    node = await procs.serve({
      dataDir: join(dir, 'data'),
      args: ['--p2p-listen', '127.0.0.1:0', '--cluster-key', keyFile],
      env: { SHOAL_MAX_PEER_INVENTORY: String(CAP) },
    });
    const line = await node.waitForLog((l) => l.msg === 'p2p listening');
    address = (line.addresses as string[]).find((a) => a.startsWith('/ip4/127.0.0.1/'))!;
  });

  after(async () => {
    await Promise.allSettled(flooders.map((f) => f.stop()));
    await procs.cleanup();
  });

  it('a peer that announces more blobs than the cap is cut off and banned; the node’s memory stays bounded', async (t) => {
    const f = await flooder();
    await sleep(500);
    const before = await rss();
    let peak = before;
    const sampling = setInterval(() => void rss().then((r) => (peak = Math.max(peak, r)), () => undefined), 100);
    let sent = 0;
    let cutOff: unknown;
    try {
      const stream = await f.dialProtocol(multiaddr(address), PROTOCOLS.inventory, { signal: AbortSignal.timeout(10_000) });
      const lp = framed(stream, MAX_INVENTORY_FRAME);
      // Up to 2 million digests: some 150 MiB of inventory if the node kept them all.
      while (sent < 2_000_000) {
        const digests = Array.from({ length: INVENTORY_SLICE }, () => `sha256:${randomBytes(32).toString('hex')}`);
        // It keeps to the protocol (each message waits for its acknowledgement), only it never stops.
        await writeJson(lp, { type: sent === 0 ? 'snapshot' : 'add', digests }, { signal: AbortSignal.timeout(10_000) });
        await lp.read({ signal: AbortSignal.timeout(10_000) });
        sent += digests.length;
      }
    } catch (err) {
      cutOff = err;
    } finally {
      clearInterval(sampling);
    }
    peak = Math.max(peak, await rss());
    note(t, `the flooder sent ${sent} digests before it was cut off (${String((cutOff as Error)?.message ?? cutOff)}); node RSS ${(before / MiB).toFixed(0)} MiB before, ${(peak / MiB).toFixed(0)} MiB at most`);
    assert.ok(cutOff, 'the flooder was cut off');
    assert.ok(sent < 2_000_000, `cut off before the end (sent ${sent})`);
    const url = { url: node.url };
    assert.equal(await metric(url, 'shoal_peer_bans_total', { reason: 'inventory-cap' }), 1, 'banned for the cap');
    assert.ok((await metric(url, 'shoal_peer_inventory_entries')) <= CAP, 'no more entries kept than the cap');
    assert.ok(peak - before < 64 * MiB, `memory grew by ${((peak - before) / MiB).toFixed(0)} MiB`);
    await assert.rejects(f.dialProtocol(multiaddr(address), PROTOCOLS.inventory, { signal: AbortSignal.timeout(5_000) }), 'the banned peer cannot connect again');
    const view = await peersOf(node.url);
    const row = view.peers.find((p) => p.id === f.peerId.toString()) as { ban?: { reason: string } } | undefined;
    assert.equal(row?.ban?.reason, 'inventory-cap', 'GET /shoal/peers shows the ban and its reason');
  });

  it('a peer that sends a message larger than the protocol allows is cut off and banned', async () => {
    const f = await flooder();
    const stream = await f.dialProtocol(multiaddr(address), PROTOCOLS.inventory, { signal: AbortSignal.timeout(10_000) });
    const lp = framed(stream, 64 * MiB);
    await lp.write(Buffer.alloc(MAX_INVENTORY_FRAME + 1, 0x20)).catch(() => undefined);
    const url = { url: node.url };
    await waitFor('the node to ban the peer that sent an oversized message', async () => (await metric(url, 'shoal_peer_bans_total', { reason: 'oversize-message' })) === 1, 10_000);
    await waitFor('the connection to close', () => f.getConnections().length === 0, 10_000);
    await assert.rejects(f.dialProtocol(multiaddr(address), PROTOCOLS.inventory, { signal: AbortSignal.timeout(5_000) }), 'the banned peer cannot connect again');
  });
});

// ------------------------------------------------------------------------------------------------------------

describe('slow and dead peers', () => {
  let work: string;
  let cluster: Cluster | undefined;
  const procs = new ShoalProcesses();
  const stoppers: Array<() => Promise<void>> = [];
  const holders: FakeHolder[] = [];
  const DRIBBLE_MS = 30_000;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'shoal-slow-'));
    cluster = await startCluster({ size: 2 });
    await cluster.waitConnected();
  });

  after(async () => {
    for (const h of holders) h.done.abort();
    for (const s of stoppers.reverse()) await s().catch(() => undefined);
    await procs.cleanup();
    await cluster?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('a peer that dribbles a chunk over 30 s does not hold a pull much longer than the other sources need', async (t) => {
    const [honest, puller] = cluster!.nodes as [ClusterNode, ClusterNode];
    const bytes = randomBytes(16 * MiB + 5);
    const digest = await pushBlob(honest.url, 'trust/slow', bytes);
    let started = 0;
    let completed = 0;
    const dribbler = new FakeHolder();
    holders.push(dribbler);
    // Right bytes, right map, 64 KiB at a time: a whole chunk takes 30 s.
    const pieces = CHUNK_SIZE / (64 * 1024);
    dribbler.hold(digest, {
      size: bytes.length,
      map: chunkMapOf(bytes),
      bytes: async function* (start, end, signal) {
        started++;
        for (let at = start; at <= end; at += 64 * 1024) {
          await sleep(DRIBBLE_MS / pieces, undefined, { signal });
          yield bytes.subarray(at, Math.min(end + 1, at + 64 * 1024));
        }
        completed++;
      },
    });
    const dir = await mkdtemp(join(work, 'dribbler-'));
    const peer = await startTestPeer({ dir, clusterKeyFile: cluster!.clusterKeyFile, bootstrap: [puller.p2pAddress], provider: dribbler });
    stoppers.push(() => peer.stop());
    await cluster!.waitHolders(puller, digest, 2);
    const res = await get(`${puller.url}/v2/trust/slow/blobs/${digest}`);
    const hedges = await metric(puller, 'shoal_peer_chunk_hedges_total');
    note(t, `16 MiB from an honest holder and a dribbler (30 s a chunk): ${res.ms.toFixed(0)} ms; the dribbler was asked for ${started} chunk(s) and finished ${completed}; ${hedges} hedged chunk(s)`);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.error, undefined);
    assert.equal(sha256(res.bytes), digest);
    assert.ok(started >= 1, 'the dribbler was asked for a chunk');
    assert.equal(completed, 0, 'the pull did not wait for the dribbler to finish a chunk');
    assert.ok(hedges >= 1, 'its chunk was asked again elsewhere (shoal_peer_chunk_hedges_total)');
    assert.ok(res.ms < DRIBBLE_MS, 'the pull took less than one dribbled chunk');
    assert.equal(banOf(puller, peer.selfId), undefined, 'slow is not banned');
  });

  it('a holder that froze (its connection open, nothing answering) costs a pull a short timeout, not the chunk deadline', async (t) => {
    const [honest, puller] = cluster!.nodes as [ClusterNode, ClusterNode];
    const bytes = randomBytes(12 * MiB + 3);
    const digest = await pushBlob(honest.url, 'trust/frozen', bytes);
    // A holder in a process of its own, which is then stopped: the kernel keeps its connections open.
    const frozen = await procs.serve({
      dataDir: await procs.tempDir('shoal-frozen-'),
      args: ['--p2p-listen', '127.0.0.1:0', '--cluster-key', cluster!.clusterKeyFile, '--peer', honest.p2pAddress, '--peer', puller.p2pAddress],
    });
    // It answers 404 until its first peer connection is up (it has no seed): ask until it has the blob.
    let got = await get(`${frozen.url}/v2/trust/frozen/blobs/${digest}`);
    for (const deadline = Date.now() + 30_000; got.status !== 200 && Date.now() < deadline; ) {
      await sleep(250);
      got = await get(`${frozen.url}/v2/trust/frozen/blobs/${digest}`);
    }
    assert.equal(got.status, 200, got.body);
    assert.equal(sha256(got.bytes), digest, 'the holder-to-be got the blob');
    await cluster!.waitHolders(puller, digest, 2);
    frozen.signal('SIGSTOP');
    const res = await get(`${puller.url}/v2/trust/frozen/blobs/${digest}`);
    note(t, `12 MiB with one of two holders frozen: ${res.ms.toFixed(0)} ms (a chunk request may take 60 s; opening a stream 3 s)`);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.error, undefined);
    assert.equal(sha256(res.bytes), digest);
    assert.ok(res.ms < 30_000, 'the frozen holder did not hold the pull for a chunk deadline');
    frozen.signal('SIGCONT');
  });
});

// ------------------------------------------------------------------------------------------------------------

describe('tags from peers: a fallback when the seed cannot be reached', () => {
  let cluster: Cluster | undefined;
  const procs = new ShoalProcesses();
  let deadSeed: string;

  before(async () => {
    // A seed that refuses connections: it cannot be reached.
    deadSeed = `http://127.0.0.1:${await freePort()}`;
    cluster = await startCluster({ size: 2, seeds: [deadSeed], config: { tagTimeoutMs: 1_000 } });
    await cluster.waitConnected();
  });

  after(async () => {
    await procs.cleanup();
    await cluster?.stop();
  });

  async function tagged(node: { url: string }, tag: string): Promise<{ status: number; digest?: string; body: string }> {
    const res = await request(`${node.url}/v2/trust/tags/manifests/${tag}`, { dispatcher: agent, headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
    const body = await res.body.text();
    return { status: res.statusCode, digest: res.headers['docker-content-digest'] as string | undefined, body: body.slice(0, 300) };
  }

  it('a peer’s record answers when this node has none, or an older one; a newer record of this node’s stands', async () => {
    const [n1, n2] = cluster!.nodes as [ClusterNode, ClusterNode];
    const first = await pushRandomImage(n1.url, 'trust/tags', 'v1', { layerSizes: [1000] });
    const viaPeer = await metric(n2, 'shoal_tag_resolutions_total', { via: 'peer' });
    let r = await tagged(n2, 'v1');
    assert.equal(r.status, 200, r.body);
    assert.equal(r.digest, first.manifestDigest, 'no record here: the peer’s answers');
    assert.equal((await metric(n2, 'shoal_tag_resolutions_total', { via: 'peer' })) - viaPeer, 1, 'and says so: via="peer"');
    // This node's own newer record (a push) stands against the peer's older one.
    await sleep(5);
    const mine = await pushRandomImage(n2.url, 'trust/tags', 'v1', { layerSizes: [1001] });
    const viaCache = await metric(n2, 'shoal_tag_resolutions_total', { via: 'cache' });
    r = await tagged(n2, 'v1');
    assert.equal(r.digest, mine.manifestDigest, 'the newer local record answers');
    assert.equal((await metric(n2, 'shoal_tag_resolutions_total', { via: 'cache' })) - viaCache, 1);
    assert.equal((await n2.node.store.getTag('trust/tags', 'v1'))?.digest, mine.manifestDigest, 'and is not overwritten');
    // The peer moves the tag later still: now the peer's is the newer record, and this node keeps it.
    await sleep(5);
    const newest = await pushRandomImage(n1.url, 'trust/tags', 'v1', { layerSizes: [1002] });
    r = await tagged(n2, 'v1');
    assert.equal(r.digest, newest.manifestDigest, 'a newer record of a peer’s answers');
    assert.equal((await n2.node.store.getTag('trust/tags', 'v1'))?.digest, newest.manifestDigest);
  });

  it('with --peer-tags=false a node takes tags only from seeds and bundles (digests still come from peers)', async () => {
    const [n1] = cluster!.nodes as [ClusterNode];
    const image = await pushRandomImage(n1.url, 'trust/tags', 'v2', { layerSizes: [1003] });
    const dataDir = await procs.tempDir('shoal-peertags-');
    const strict = await procs.serve({
      dataDir,
      args: ['--p2p-listen', '127.0.0.1:0', '--cluster-key', cluster!.clusterKeyFile, '--peer', n1.p2pAddress, '--seed', deadSeed, '--peer-tags=false'],
    });
    await waitFor('the node to connect to its peer', async () => (await peersOf(strict.url)).peers.some((p) => p.id === n1.peerId));
    const r = await tagged(strict, 'v2');
    assert.equal(r.status, 404, r.body);
    assert.match(r.body, /MANIFEST_UNKNOWN/);
    const byDigest = await tagged(strict, image.manifestDigest);
    assert.equal(byDigest.status, 200, byDigest.body);
    assert.equal(await metric(strict, 'shoal_tag_resolutions_total', { via: 'peer' }), 0);
    const bad = await runShoal(['serve', '--data', dataDir, '--peer-tags=maybe']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /peerTags/);
  });
});
