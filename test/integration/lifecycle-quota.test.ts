/**
 * A node with a 40 MB quota (`--max-store 40M`), pushed to and pulled through well past it, as real processes: the
 * real distribution registry (`docker-registry`) as seed, and a second node as its peer (libp2p with a cluster key).
 *
 * - after every push and pull, the bytes under <data>/blobs and `GET /shoal/status` stay under the quota plus at
 *   most the blob just written;
 * - pinned images (pushed to the node only, so nothing else could bring them back) survive and pull byte-exact;
 * - evicted images pull again, byte-exact: from the seed, and from the peer;
 * - the peer's view of the node's inventory follows the evictions (removals reach it), so it does not ask the node
 *   for blobs it no longer has.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeClusterKey } from '../../src/p2p/keys.ts';
import { peersOf, waitFor } from '../helpers/cluster.ts';
import { bytesOnDisk, hasBlobFile, pin, pullImage, statusOf } from '../helpers/lifecycle.ts';
import { scrape } from '../helpers/metrics.ts';
import { pushRandomImage, startDockerRegistry, type DockerRegistry, type PushedImage } from '../helpers/seed-registry.ts';
import { runShoal, ShoalProcesses, type ShoalProcess } from '../helpers/spawn-node.ts';

const QUOTA = 40_000_000;
const LAYER = 3_500_000;

function p2pAddress(addresses: string[] | undefined): string {
  const m = (addresses ?? []).map((a) => /\/ip4\/([\d.]+)\/tcp\/(\d+)/.exec(a)).find((x) => x !== null);
  if (!m) throw new Error(`no TCP address among ${JSON.stringify(addresses)}`);
  return `${m[1]}:${m[2]}`;
}

describe('quota and LRU eviction (real node processes, docker-registry seed, a peer)', () => {
  const procs = new ShoalProcesses();
  let seed: DockerRegistry | undefined;
  let a: ShoalProcess;
  let b: ShoalProcess;
  let dataA: string;
  let dataB: string;
  /** Images in the seed only. */
  const seedImages: PushedImage[] = [];

  let key: string;

  before(async () => {
    seed = await startDockerRegistry();
    for (let i = 0; i < 16; i++) seedImages.push(await pushRandomImage(seed.url, `seeded/app${i}`, 'v1', { layerSizes: [LAYER] }));
    const dir = await procs.tempDir('shoal-quota-');
    key = join(dir, 'cluster.key');
    await writeClusterKey(key);
    dataA = join(dir, 'a');
    dataB = join(dir, 'b');
    a = await procs.serve({
      dataDir: dataA,
      args: ['--max-store', '40M', '--seed', seed.url, '--p2p-listen', '127.0.0.1:0', '--cluster-key', key, '--scrub-rate', '0', '--gc-interval', '0'],
    });
  });

  after(async () => {
    await procs.cleanup();
    await seed?.stop();
  });

  it('stays under 40 MB while far more goes through; pins survive; evicted images come back from the seed and from the peer', { timeout: 150_000 }, async (t) => {
    const largest = 4_000_000;
    let worst = 0;
    const checkUnderQuota = async (what: string): Promise<void> => {
      const onDisk = await bytesOnDisk(dataA);
      const status = await statusOf(a.url);
      worst = Math.max(worst, onDisk, status.quota.storedBytes);
      assert.ok(onDisk <= QUOTA + largest, `after ${what}: ${onDisk} bytes on disk, over the quota of ${QUOTA} plus one blob (${largest})`);
      assert.ok(status.quota.storedBytes <= QUOTA + largest, `after ${what}: /shoal/status says ${status.quota.storedBytes} bytes stored`);
      assert.equal(status.quota.maxStore, QUOTA);
    };

    /** Until B's view of A's inventory counts what A holds. */
    const inventorySynced = (): Promise<void> =>
      waitFor('B to see exactly what A holds', async () => {
        const holds = (await statusOf(a.url)).store.blobs;
        const seen = (await peersOf(b.url)).peers[0]?.blobs;
        return seen === holds ? true : `A holds ${holds} blobs, B thinks ${seen}`;
      });

    // Pinned images: pushed to A only, then pinned through the API. Nothing could bring them back if evicted.
    const pinned: PushedImage[] = [];
    for (let i = 0; i < 2; i++) {
      const img = await pushRandomImage(a.url, `pinned/app${i}`, 'v1', { layerSizes: [largest] });
      await pin(a.url, img.repository, img.manifestDigest);
      pinned.push(img);
      await checkUnderQuota(`push of pinned image ${i}`);
    }
    const total = { bytes: 2 * largest };
    const pullFromSeed = async (img: PushedImage): Promise<void> => {
      const pulled = await pullImage(a.url, img.repository, img.tag);
      assert.equal(pulled.manifestDigest, img.manifestDigest);
      assert.deepEqual(pulled.blobs.get(img.layers[0]!.digest), img.layers[0]!.bytes);
      total.bytes += LAYER;
      await checkUnderQuota(`pull of ${img.repository}`);
    };
    // First A alone: 12 images through from the seed, so that only the seed holds them when A evicts them (with a
    // peer, the cluster's owner of a blob fetches it from the seed and keeps a copy).
    for (const img of seedImages.slice(0, 12)) await pullFromSeed(img);

    // Then the peer B joins.
    b = await procs.serve({
      dataDir: dataB,
      args: ['--seed', seed!.url, '--p2p-listen', '127.0.0.1:0', '--cluster-key', key, '--peer', p2pAddress((await peersOf(a.url)).addresses), '--scrub-rate', '0', '--gc-interval', '0'],
    });
    await waitFor('the two nodes to connect', async () => (await peersOf(a.url)).peers.length === 1 && (await peersOf(b.url)).peers.length === 1);
    // Images pushed to B, that A pulls through (by digest: the seed does not know them), and images pushed to A (not
    // pinned) of which B takes a copy, so that B holds them when A evicts them.
    const onPeer: PushedImage[] = [];
    for (let i = 0; i < 4; i++) onPeer.push(await pushRandomImage(b.url, `peer/app${i}`, 'v1', { layerSizes: [LAYER] }));
    const pushed: PushedImage[] = [];
    for (let i = 0; i < 4; i++) {
      await pullFromSeed(seedImages[12 + i]!);
      const q = onPeer[i]!;
      const fromPeer = await pullImage(a.url, q.repository, q.manifestDigest);
      assert.deepEqual(fromPeer.blobs.get(q.layers[0]!.digest), q.layers[0]!.bytes);
      total.bytes += LAYER;
      await checkUnderQuota(`pull of ${q.repository} from the peer`);
      const u = await pushRandomImage(a.url, `pushed/app${i}`, 'v1', { layerSizes: [LAYER, 200_000] });
      pushed.push(u);
      total.bytes += LAYER + 200_000;
      await checkUnderQuota(`push of ${u.repository}`);
      // B takes a copy from A (through the peer network) while A still has it, once A's announcement reached B. The
      // counts can agree before B heard of this image (A made room first: B may have seen the evictions, not yet the
      // additions), and the seed does not know it: until B heard, it answers 404, so B asks again.
      await inventorySynced();
      let copy: Awaited<ReturnType<typeof pullImage>> | undefined;
      await waitFor(`B to get ${u.repository} from A`, async () => {
        try {
          copy = await pullImage(b.url, u.repository, u.manifestDigest);
          return true;
        } catch (err) {
          if (/MANIFEST_UNKNOWN|BLOB_UNKNOWN/.test((err as Error).message)) return (err as Error).message;
          throw err;
        }
      });
      assert.deepEqual(copy!.blobs.get(u.layers[0]!.digest), u.layers[0]!.bytes);
    }
    assert.ok(total.bytes > 2 * QUOTA, `the workload moved ${total.bytes} bytes through A, more than twice its quota`);

    // Eviction happened, and the store settles under the quota.
    await waitFor('A to settle under its quota', async () => (await statusOf(a.url)).quota.storedBytes <= QUOTA);
    await checkUnderQuota('the workload');
    const metricsA = await scrape(a.url);
    assert.ok(metricsA.get('shoal_evictions_total') > 0, 'A evicted blobs');
    assert.equal(metricsA.get('shoal_store_quota_bytes'), QUOTA);
    assert.ok(metricsA.get('shoal_store_pinned_bytes') >= 2 * largest, `pinned bytes ${metricsA.get('shoal_store_pinned_bytes')}`);
    const status = await statusOf(a.url);
    assert.equal(status.pins, 2);
    assert.equal(status.quota.pinsOverQuota, false);
    assert.ok(status.quota.lastEviction && status.quota.lastEviction.blobs > 0);

    // Pins survived: every blob is still in A's store, and the images pull byte-exact (from A itself: nobody else has them).
    for (const p of pinned) {
      for (const d of [p.config.digest, ...p.layers.map((l) => l.digest), p.manifestDigest]) assert.ok(await hasBlobFile(dataA, d), `pinned ${p.repository} lost ${d}`);
      const got = await pullImage(a.url, p.repository, p.tag);
      assert.equal(got.manifestDigest, p.manifestDigest);
      assert.deepEqual(got.blobs.get(p.layers[0]!.digest), p.layers[0]!.bytes);
      assert.deepEqual(got.blobs.get(p.config.digest), p.config.bytes);
    }

    // Evicted seed images pull again from the seed (through A, or through B if B is the layer's owner now).
    const evictedFromSeed: PushedImage[] = [];
    let evictedSeedImages = 0;
    for (const s of seedImages) {
      if (await hasBlobFile(dataA, s.layers[0]!.digest)) continue;
      evictedSeedImages++;
      if (!(await hasBlobFile(dataB, s.layers[0]!.digest))) evictedFromSeed.push(s);
    }
    assert.ok(evictedSeedImages >= 3, `only ${evictedSeedImages} seed images were evicted`);
    assert.ok(evictedFromSeed.length >= 1, 'an evicted seed image that only the seed holds');
    // From the seed: through A, or through B when B is the blob's owner in the cluster (then A streams it from B).
    const seedBytes = async (): Promise<number> => (await scrape(a.url)).get('shoal_seed_bytes_total') + (await scrape(b.url)).get('shoal_seed_bytes_total');
    const seedBytesBefore = await seedBytes();
    const again = evictedFromSeed[0]!;
    const pulledAgain = await pullImage(a.url, again.repository, again.tag);
    assert.deepEqual(pulledAgain.blobs.get(again.layers[0]!.digest), again.layers[0]!.bytes);
    assert.ok((await seedBytes()) >= seedBytesBefore + LAYER, 'the evicted layer came from the seed again');
    await checkUnderQuota('pulling an evicted image again');

    // Evicted images that B holds pull again from the peer (the seed does not have them).
    const evictedOnPeer = [...pushed, ...onPeer];
    const candidates: PushedImage[] = [];
    for (const u of evictedOnPeer) if (!(await hasBlobFile(dataA, u.layers[0]!.digest))) candidates.push(u);
    assert.ok(candidates.length >= 1, 'an image that the peer holds was evicted from A');
    const peerBytesBefore = (await scrape(a.url)).get('shoal_pull_bytes_total', { source: 'peer' });
    const back = candidates[0]!;
    const fromPeer = await pullImage(a.url, back.repository, back.manifestDigest);
    assert.deepEqual(fromPeer.blobs.get(back.layers[0]!.digest), back.layers[0]!.bytes);
    assert.ok((await scrape(a.url)).get('shoal_pull_bytes_total', { source: 'peer' }) >= peerBytesBefore + LAYER, 'the evicted layer came from the peer');
    await checkUnderQuota('pulling an image again from the peer');

    // The peer's view of A's inventory follows A's store: evictions were announced as removals.
    await inventorySynced();
    const everStored = 2 * 3 + seedImages.length * 3 + onPeer.length * 3 + pushed.length * 4;
    assert.ok((await statusOf(a.url)).store.blobs < everStored - 10, 'A holds far fewer blobs than it ever stored');
    // `shoal status` says it in words.
    const text = await runShoal(['status', '--node', a.url]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /of a 38\.1 MiB quota/);
    assert.match(text.stdout, /pins\s+2 pin\(s\) holding 7\.\d MiB\n/);
    assert.match(text.stdout, /eviction\s+last \S+: \d+ blob\(s\)/);
    t.diagnostic(`${total.bytes} bytes through a ${QUOTA}-byte quota; at most ${worst} bytes seen stored; ${metricsA.get('shoal_evictions_total')} evictions`);
  });
});
