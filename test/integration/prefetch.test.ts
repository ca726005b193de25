/**
 * Prefetching an image through the pull path (what `shoal prefetch` and `warmImages` run): a real LevelDB store in a
 * temp dir, a seed in a node:http server. Each fetched blob is awaited until it is committed, without its bytes
 * being read back from the store.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { storeRepositoryName } from '../../src/oci/index.ts';
import { PullMetrics } from '../../src/source/metrics.ts';
import { prefetchImages, type PrefetchEvent } from '../../src/source/prefetch.ts';
import { PullThrough } from '../../src/source/pull-through.ts';
import { openDiskStore, type KvContentStore } from '../../src/store/index.ts';
import { SeedClient } from '../../src/upstream/index.ts';
import { memoryImage, startMemoryRegistry, type MemoryRegistry } from '../helpers/memory-registry.ts';

describe('prefetch through the pull path', { concurrency: 1 }, () => {
  const image = memoryImage([700_000, 1_500_000, 40_000]);
  let dir = '';
  let seed: MemoryRegistry | undefined;
  let seedClient: SeedClient | undefined;
  let store: KvContentStore | undefined;
  let pull: PullThrough | undefined;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-prefetch-'));
    seed = await startMemoryRegistry({ repository: 'library/app', tag: 'v1', image });
    seedClient = new SeedClient({ url: seed.url, retries: 0 });
    store = await openDiskStore(dir);
    const client = seedClient;
    pull = new PullThrough({
      store,
      seeds: { seedsFor: (ns) => (ns === 'seed.test' ? { registry: 'seed.test', seeds: [client] } : undefined) },
      metrics: new PullMetrics(new Registry()),
      logger: pino({ level: 'silent' }),
      tagTimeoutMs: 5_000,
    });
  });

  after(async () => {
    await pull?.stop();
    await seedClient?.close();
    await seed?.close();
    await store?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('waits for each fetched blob to be committed without reading its bytes back', async () => {
    // Every blob response the prefetch gets is watched: a fetch must be awaited through `stored`, never opened.
    const real = pull!.blob.bind(pull!);
    let fetches = 0;
    let opened = 0;
    let awaited = 0;
    pull!.blob = async (...args) => {
      const info = await real(...args);
      if (info.source === 'fetch') {
        fetches++;
        const open = info.open.bind(info);
        info.open = (range, o) => {
          opened++;
          return open(range, o);
        };
        const stored = info.stored;
        if (stored) {
          info.stored = (o) => {
            awaited++;
            return stored(o);
          };
        }
      }
      return info;
    };
    const events: PrefetchEvent[] = [];
    const [outcome] = await prefetchImages(pull!, store!, ['seed.test/library/app:v1'], { onEvent: (e) => events.push(e) });
    const blobs = [image.config, ...image.layers];
    const total = blobs.reduce((n, b) => n + b.bytes.length, 0);
    assert.equal(outcome?.ok, true, outcome?.error);
    assert.equal(outcome?.repository, storeRepositoryName('seed.test', 'library/app'));
    assert.equal(outcome?.digest, image.manifestDigest);
    assert.equal(outcome?.blobs, blobs.length);
    assert.equal(outcome?.fetchedBytes, total);
    assert.equal(fetches, blobs.length);
    assert.equal(opened, 0, 'a fetched blob was read back to wait for it');
    assert.equal(awaited, blobs.length);
    // When the prefetch returns, every blob is committed, and the seed sent each once.
    for (const b of blobs) {
      assert.equal((await store!.statContent(b.digest))?.size, b.bytes.length, `${b.digest} is not stored`);
      assert.equal(seed!.blobGets(b.digest), 1);
    }
    assert.deepEqual(
      events.filter((e) => e.type === 'blob').map((e) => (e.type === 'blob' ? e.source : '')),
      blobs.map(() => 'seed'),
    );
  });
});
