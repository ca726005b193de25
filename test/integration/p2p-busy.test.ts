/**
 * A holder that serves as many chunk streams as it may answers BUSY: the asking node asks it again shortly instead
 * of giving up on it. With no seed to fall back on, the pull completes only if BUSY is treated as "later", not as
 * "not here"; with a seed, the seed is not asked for what the busy holder has.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { startCluster, type Cluster } from '../helpers/cluster.ts';
import { scrape } from '../helpers/metrics.ts';
import { pushBlob } from '../helpers/oci-client.ts';

const MiB = 1024 * 1024;
const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

describe('a busy holder', () => {
  let cluster: Cluster | undefined;
  before(async () => {
    // Node 0 holds the blob and serves one chunk stream at a time; no node has a seed.
    cluster = await startCluster({ size: 1, config: { maxChunkStreams: 1 } });
  });
  after(async () => {
    await cluster?.stop();
  });

  it('is asked again: a node that fetches four chunks at once from it gets the whole blob, with no seed', { timeout: 120_000 }, async () => {
    const holder = cluster!.running[0]!;
    const blob = randomBytes(24 * MiB + 12345);
    const digest = await pushBlob(holder.url, 'busy/app', blob);
    assert.equal(digest, sha256(blob));
    const puller = await cluster!.add({ parallelChunks: 4 });
    await cluster!.waitConnected();
    await cluster!.waitHolders(puller, digest, 1);
    const res = await fetch(`${puller.url}/v2/busy/app/blobs/${digest}`);
    assert.equal(res.status, 200, await res.clone().text().catch(() => ''));
    const got = Buffer.from(await res.arrayBuffer());
    assert.equal(got.length, blob.length);
    assert.equal(sha256(got), digest);
    const served = await scrape(holder.url);
    assert.ok(served.get('shoal_peer_chunk_requests_total', { direction: 'in', outcome: 'busy' }) > 0, 'the holder answered BUSY at least once');
    assert.ok(served.get('shoal_peer_chunk_requests_total', { direction: 'in', outcome: 'ok' }) >= 7, 'and then served every chunk');
    const pulled = await scrape(puller.url);
    assert.equal(pulled.get('shoal_pull_bytes_total', { source: 'peer' }), blob.length, 'every byte came from the busy holder');
  });
});
