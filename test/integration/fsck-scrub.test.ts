/**
 * `shoal fsck` on a stopped node's store damaged in every way it detects, and the background scrub of a running
 * node, as real processes with the real distribution registry (`docker-registry`) as seed.
 *
 * - one store with every kind of damage at once (flipped byte, truncated file, record without file, file without
 *   record, link/manifest/tag/referrer/pin pointing at nothing, reverse index out of step, stale records, leftover
 *   ingest file, upload sessions without file, without record, shorter than recorded, stale): fsck names each and
 *   exits 1; `--fast` finds all but the flipped byte; `--repair` fixes them and a second run is clean (exit 0); the
 *   node then starts on it and fetches the pinned layer fsck removed again from the seed;
 * - fsck of a running node's store is refused with a clear message;
 * - the scrub (high rate, short rest) finds bytes flipped under the running node's feet: removes the blobs, counts
 *   them in shoal_corrupt_blobs_total{found_by="scrub"}, fetches the pinned one again from the seed.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { keys } from '../../src/store/keys.ts';
import { LevelKeyValueStore } from '../../src/store/kv.ts';
import { waitFor } from '../helpers/cluster.ts';
import { blobFile, hasBlobFile, pin, pullImage, sha256, statusOf } from '../helpers/lifecycle.ts';
import { scrape } from '../helpers/metrics.ts';
import { request } from '../helpers/oci-client.ts';
import { pushRandomImage, startDockerRegistry, type DockerRegistry, type PushedImage } from '../helpers/seed-registry.ts';
import { runShoal, ShoalProcesses } from '../helpers/spawn-node.ts';

interface FsckProblem {
  kind: string;
  subject: string;
  detail: string;
  action?: string;
}
interface FsckReport {
  blobs: number;
  problems: FsckProblem[];
  repaired: boolean;
  remaining: number;
}

/** Flips one byte of a file in place. */
async function flipByte(path: string, at: number): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0] = b[0]! ^ 0xff;
    await fh.write(b, 0, 1, at);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Starts an upload session and sends `size` bytes; returns its id. */
async function openSession(url: string, repo: string, size: number): Promise<string> {
  const start = await request(url, 'POST', `/v2/${repo}/blobs/uploads/`);
  assert.equal(start.status, 202, start.text());
  const location = start.headers.get('location')!;
  const patch = await request(url, 'PATCH', location, { headers: { 'content-type': 'application/octet-stream' }, body: randomBytes(size) });
  assert.equal(patch.status, 202, patch.text());
  return /\/uploads\/([0-9a-f-]{36})/.exec(location)![1]!;
}

const randomDigest = (): string => sha256(randomBytes(16));

describe('fsck and scrub (real node processes, docker-registry seed)', () => {
  const procs = new ShoalProcesses();
  let seed: DockerRegistry | undefined;
  before(async () => {
    seed = await startDockerRegistry();
  });
  after(async () => {
    await procs.cleanup();
    await seed?.stop();
  });

  it('fsck finds every kind of damage, --repair fixes it, a second run is clean, and the node restores the pin', { timeout: 90_000 }, async (t) => {
    const dataDir = await procs.tempDir('shoal-fsck-');
    const pinnedImage = await pushRandomImage(seed!.url, 'fsck/pinned', 'v1', { layerSizes: [300_000, 40_000] });
    let node = await procs.serve({ dataDir, args: ['--seed', seed!.url, '--scrub-rate', '0', '--gc-interval', '0'] });
    await pullImage(node.url, pinnedImage.repository, pinnedImage.tag);
    await pin(node.url, pinnedImage.repository, pinnedImage.manifestDigest);
    const b = await pushRandomImage(node.url, 'fsck/b', 'v1', { layerSizes: [50_000] });
    const c = await pushRandomImage(node.url, 'fsck/c', 'v1', { layerSizes: [60_000] });
    const sessions = [await openSession(node.url, 'fsck/b', 10_000), await openSession(node.url, 'fsck/b', 20_000), await openSession(node.url, 'fsck/c', 30_000)];

    // A running node's store is refused.
    const refused = await runShoal(['fsck', '--data', dataDir]);
    assert.equal(refused.code, 2, refused.stdout + refused.stderr);
    assert.match(refused.stderr, /in use by a running node; stop the node first/);
    assert.equal((await node.terminate()).code, 0);

    const clean = await runShoal(['fsck', '--data', dataDir, '--json']);
    assert.equal(clean.code, 0, clean.stdout + clean.stderr);
    assert.deepEqual((JSON.parse(clean.stdout) as FsckReport).problems, [], 'the store is sound before the damage');

    // The damage, one of each kind.
    const corrupt = pinnedImage.layers[0]!.digest;
    await flipByte(blobFile(dataDir, corrupt), 1000);
    const truncated = b.layers[0]!.digest;
    await truncate(blobFile(dataDir, truncated), 10_000);
    const lostFile = c.layers[0]!.digest;
    await rm(blobFile(dataDir, lostFile));
    const strayBytes = randomBytes(5_000);
    const stray = sha256(strayBytes);
    await mkdir(dirname(blobFile(dataDir, stray)), { recursive: true });
    await writeFile(blobFile(dataDir, stray), strayBytes);
    await mkdir(join(dataDir, 'ingest'), { recursive: true });
    await writeFile(join(dataDir, 'ingest', 'interrupted-write'), randomBytes(1000));
    await rm(join(dataDir, 'uploads', sessions[0]!));
    const straySession = randomUUID();
    await writeFile(join(dataDir, 'uploads', straySession), randomBytes(100));
    await truncate(join(dataDir, 'uploads', sessions[1]!), 5_000);
    const dangling = { link: randomDigest(), manifest: randomDigest(), tag: randomDigest(), referrer: randomDigest(), pin: randomDigest(), atime: randomDigest() };
    const kv = new LevelKeyValueStore(join(dataDir, 'db'));
    await kv.open();
    try {
      const stale = (await kv.get<{ updated: number }>(keys.upload(sessions[2]!)))!;
      await kv.batch([
        { type: 'put', key: keys.link('fsck/b', dangling.link), value: { size: 10, created: Date.now() } },
        { type: 'put', key: keys.holder(dangling.link, 'fsck/b'), value: 1 },
        { type: 'del', key: keys.holder(c.config.digest, 'fsck/c') },
        { type: 'put', key: keys.holder(b.config.digest, 'fsck/ghost'), value: 1 },
        { type: 'put', key: keys.manifest('fsck/b', dangling.manifest), value: { digest: dangling.manifest, mediaType: 'application/vnd.oci.image.manifest.v1+json', size: 10, created: Date.now() } },
        { type: 'put', key: keys.tag('fsck/b', 'dangling'), value: { digest: dangling.tag, updated: Date.now() } },
        { type: 'put', key: keys.referrer('fsck/pinned', pinnedImage.manifestDigest, dangling.referrer), value: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: dangling.referrer, size: 10 } },
        { type: 'put', key: keys.pin('fsck/b', dangling.pin), value: { reason: 'test', created: Date.now() } },
        { type: 'put', key: keys.atime(dangling.atime), value: Date.now() },
        { type: 'put', key: keys.upload(sessions[2]!), value: { ...stale, updated: Date.now() - 2 * 86_400_000 } },
      ]);
    } finally {
      await kv.close();
    }
    const expected: Array<[string, string]> = [
      ['corrupt-blob', corrupt],
      ['link-without-blob', `fsck/pinned@${corrupt}`],
      ['blob-size-mismatch', truncated],
      ['link-without-blob', `fsck/b@${truncated}`],
      ['record-without-file', lostFile],
      ['link-without-blob', `fsck/c@${lostFile}`],
      ['file-without-record', stray],
      ['link-without-blob', `fsck/b@${dangling.link}`],
      ['link-without-holder', `fsck/c@${c.config.digest}`],
      ['holder-without-link', `fsck/ghost@${b.config.digest}`],
      ['manifest-without-content', `fsck/b@${dangling.manifest}`],
      ['tag-without-manifest', 'fsck/b:dangling'],
      ['referrer-without-manifest', `fsck/pinned@${dangling.referrer}`],
      ['pin-without-manifest', `fsck/b@${dangling.pin}`],
      ['stale-record', keys.atime(dangling.atime)],
      ['ingest-leftover', join('ingest', 'interrupted-write')],
      ['session-without-file', sessions[0]!],
      ['session-file-without-record', join('uploads', straySession)],
      ['session-shorter-than-recorded', sessions[1]!],
      ['stale-session', sessions[2]!],
    ];
    const asPairs = (r: FsckReport): string[] => r.problems.map((p) => `${p.kind} ${p.subject}`).sort();
    const want = expected.map(([k, s]) => `${k} ${s}`).sort();

    const found = await runShoal(['fsck', '--data', dataDir, '--json']);
    assert.equal(found.code, 1, found.stderr);
    const report = JSON.parse(found.stdout) as FsckReport;
    assert.deepEqual(asPairs(report), want);
    assert.equal(report.remaining, expected.length);
    for (const p of report.problems) assert.equal(p.action, undefined, 'nothing is done without --repair');

    // --fast compares records, files and sizes only: all but the flipped byte.
    const fast = await runShoal(['fsck', '--data', dataDir, '--fast', '--json']);
    assert.equal(fast.code, 1);
    assert.deepEqual(asPairs(JSON.parse(fast.stdout) as FsckReport), want.filter((w) => !w.includes(corrupt)));

    // The text report names each problem and says what to do.
    const text = await runShoal(['fsck', '--data', dataDir]);
    assert.equal(text.code, 1);
    assert.match(text.stdout, /corrupt-blob sha256:[0-9a-f]{64}: the bytes hash to sha256:/);
    assert.match(text.stdout, /20 problem\(s\); run again with --repair/);

    const repaired = await runShoal(['fsck', '--data', dataDir, '--repair', '--json']);
    assert.equal(repaired.code, 0, repaired.stdout + repaired.stderr);
    const repairReport = JSON.parse(repaired.stdout) as FsckReport;
    assert.deepEqual(asPairs(repairReport), want);
    assert.equal(repairReport.remaining, 0);
    for (const p of repairReport.problems) assert.ok(p.action, `${p.kind} ${p.subject}: the repair says what it did`);

    const second = await runShoal(['fsck', '--data', dataDir, '--json']);
    assert.equal(second.code, 0, second.stdout);
    assert.deepEqual((JSON.parse(second.stdout) as FsckReport).problems, []);
    assert.equal(await hasBlobFile(dataDir, stray), false);
    assert.equal(await hasBlobFile(dataDir, corrupt), false);

    // The node starts on the repaired store, and fetches the pinned layer fsck removed again from the seed.
    node = await procs.serve({ dataDir, args: ['--seed', seed!.url, '--scrub-rate', '0', '--gc-interval', '0'] });
    await waitFor('the pinned layer to be fetched again', async () => (await scrape(node.url)).get('shoal_pinned_refetches_total', { result: 'ok' }) >= 1);
    assert.equal(sha256(await readFile(blobFile(dataDir, corrupt))), corrupt);
    const pulled = await pullImage(node.url, pinnedImage.repository, pinnedImage.tag);
    assert.deepEqual(pulled.blobs.get(corrupt), pinnedImage.layers[0]!.bytes);
    // Untouched content is intact; what fsck removed is gone (it was pushed to this node only).
    const bConfig = await request(node.url, 'GET', `/v2/fsck/b/blobs/${b.config.digest}`);
    assert.deepEqual(bConfig.body, b.config.bytes);
    assert.equal((await request(node.url, 'GET', `/v2/fsck/c/blobs/${lostFile}`)).status, 404);
    assert.equal((await request(node.url, 'GET', '/v2/fsck/b/manifests/dangling')).status, 404);
    assert.equal((await node.terminate()).code, 0);
    const last = await runShoal(['fsck', '--data', dataDir, '--json']);
    assert.equal(last.code, 0, last.stdout);
    t.diagnostic(`${expected.length} problems of ${new Set(expected.map(([k]) => k)).size} kinds found and repaired`);
  });

  it('the scrub finds bytes flipped under a running node, takes them out, counts them, fetches the pinned one again', { timeout: 60_000 }, async () => {
    const dataDir = await procs.tempDir('shoal-scrub-');
    const pinned = await pushRandomImage(seed!.url, 'scrub/pinned', 'v1', { layerSizes: [500_000] });
    const unpinned = await pushRandomImage(seed!.url, 'scrub/plain', 'v1', { layerSizes: [400_000] });
    const node = await procs.serve({
      dataDir,
      args: ['--seed', seed!.url, '--scrub-rate', '500M', '--gc-interval', '0'],
      env: { SHOAL_SCRUB_INTERVAL: '1s' },
    });
    for (const img of [pinned, unpinned]) await pullImage(node.url, img.repository, img.tag);
    await pin(node.url, pinned.repository, pinned.manifestDigest);
    const scrubbed = (await scrape(node.url)).get('shoal_scrub_blobs_total');

    const flip = async (img: PushedImage): Promise<string> => {
      const d = img.layers[0]!.digest;
      await flipByte(blobFile(dataDir, d), 123);
      return d;
    };
    const pinnedLayer = await flip(pinned);
    const plainLayer = await flip(unpinned);
    await waitFor(
      'the scrub to find both flipped blobs and fetch the pinned one again',
      async () => {
        const m = await scrape(node.url);
        const corrupt = m.get('shoal_corrupt_blobs_total', { found_by: 'scrub' });
        const refetched = m.get('shoal_pinned_refetches_total', { result: 'ok' });
        return corrupt >= 2 && refetched >= 1 ? true : `${corrupt} corrupt found, ${refetched} refetched`;
      },
      30_000,
    );
    const m = await scrape(node.url);
    assert.equal(m.get('shoal_corrupt_blobs_total', { found_by: 'scrub' }), 2);
    assert.ok(m.get('shoal_scrub_blobs_total') > scrubbed, 'the scrub went on re-hashing');
    const status = await statusOf(node.url);
    assert.equal(status.scrub.enabled, true);
    assert.equal(status.scrub.corruptFound, 2);
    // The pinned layer is back with the right bytes; the other one is out of the store until someone pulls it.
    assert.equal(sha256(await readFile(blobFile(dataDir, pinnedLayer))), pinnedLayer);
    assert.equal(await hasBlobFile(dataDir, plainLayer), false);
    for (const img of [pinned, unpinned]) {
      const pulled = await pullImage(node.url, img.repository, img.tag);
      assert.deepEqual(pulled.blobs.get(img.layers[0]!.digest), img.layers[0]!.bytes);
    }
  });
});
