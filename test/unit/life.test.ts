/**
 * The store's lifecycle logic on the in-memory store: retention rules, reachability (pins hold an index, every
 * platform, configs, layers and referrers), collection (retention, pins, grace, dry run against the real run, a
 * manifest put racing a sweep), and eviction (least recently used first, never pinned, manifests or blobs in use).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { lifecycleSettings, loadConfig } from '../../src/config/index.ts';
import { collectGarbage, type GcItem } from '../../src/life/gc.ts';
import { LifecycleMetrics } from '../../src/life/metrics.ts';
import { StoreQuota } from '../../src/life/quota.ts';
import { Scrubber } from '../../src/life/scrub.ts';
import { pinnedDigests, ReachabilityWalk } from '../../src/life/reachability.ts';
import { listImages } from '../../src/life/images.ts';
import { expiredTags, parseRetentionRules, ruleFor, type RetentionRule } from '../../src/life/retention.ts';
import { fsckDataDir, openDiskStore, openMemoryStore, STAGING_REPOSITORY, type KvContentStore, type TagEntry } from '../../src/store/index.ts';

const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const DAY = 86_400_000;
const MT = {
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  index: 'application/vnd.oci.image.index.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layer: 'application/vnd.oci.image.layer.v1.tar+gzip',
  empty: 'application/vnd.oci.empty.v1+json',
};

interface Desc {
  mediaType: string;
  digest: string;
  size: number;
}

async function putBlob(store: KvContentStore, repo: string, data: Buffer, mediaType = MT.layer): Promise<Desc> {
  const info = await store.writeBlob(repo, [data], { digest: sha256(data) });
  return { mediaType, digest: info.digest, size: info.size };
}

interface Img {
  desc: Desc;
  digest: string;
  /** config and layers */
  blobs: string[];
}

async function putImage(store: KvContentStore, repo: string, opts: { tag?: string; layers?: number; layerSize?: number; subject?: Desc; artifactType?: string } = {}): Promise<Img> {
  const config = await putBlob(store, repo, Buffer.from(JSON.stringify({ os: 'linux', nonce: randomBytes(8).toString('hex') })), opts.artifactType ? MT.empty : MT.config);
  const layers: Desc[] = [];
  for (let i = 0; i < (opts.layers ?? 2); i++) layers.push(await putBlob(store, repo, randomBytes(opts.layerSize ?? 1000)));
  const doc: Record<string, unknown> = { schemaVersion: 2, mediaType: MT.manifest, config, layers };
  if (opts.artifactType) doc.artifactType = opts.artifactType;
  if (opts.subject) doc.subject = opts.subject;
  const bytes = Buffer.from(JSON.stringify(doc));
  const rec = await store.putManifest({
    repository: repo,
    bytes,
    mediaType: MT.manifest,
    tag: opts.tag,
    references: [config.digest, ...layers.map((l) => l.digest)],
    subject: opts.subject?.digest,
    artifactType: opts.artifactType,
  });
  return { desc: { mediaType: MT.manifest, digest: rec.digest, size: rec.size }, digest: rec.digest, blobs: [config.digest, ...layers.map((l) => l.digest)] };
}

async function putIndex(store: KvContentStore, repo: string, children: Desc[], tag?: string): Promise<Desc> {
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT.index, manifests: children.map((c, i) => ({ ...c, platform: { os: 'linux', architecture: i ? 'arm64' : 'amd64' } })) }));
  const rec = await store.putManifest({ repository: repo, bytes, mediaType: MT.index, tag, references: children.map((c) => c.digest) });
  return { mediaType: MT.index, digest: rec.digest, size: rec.size };
}

function tag(repository: string, name: string, ageDays: number, now: number, digest = `sha256:${name.padEnd(64, '0').slice(0, 64)}`): TagEntry {
  return { repository, tag: name, digest, updated: now - ageDays * DAY };
}

const silent = pino({ level: 'silent' });

describe('retention rules', () => {
  it('parses rules from the config and says what is wrong with bad ones', () => {
    assert.deepEqual(parseRetentionRules([{ prefix: 'docker.io/', keepLast: 5 }, { prefix: '', keepDays: 30, protect: ['v*'] }], 'retention'), [
      { prefix: 'docker.io/', keepLast: 5, keepDays: undefined, protect: undefined },
      { prefix: '', keepLast: undefined, keepDays: 30, protect: ['v*'] },
    ]);
    const bad: Array<[unknown, RegExp]> = [
      [{ prefix: 'a' }, /expected a list of rules/],
      [[{ prefix: 'a' }], /retention\[0\]: give keepLast, keepDays or both/],
      [[{ keepLast: 1 }], /retention\[0\]\.prefix: expected a string/],
      [[{ prefix: 'a', keepLast: -1 }], /retention\[0\]\.keepLast: expected a non-negative number/],
      [[{ prefix: 'a', keepDays: 'ten' }], /retention\[0\]\.keepDays: expected a non-negative number/],
      [[{ prefix: 'a', keepLast: 1, protect: 'latest' }], /retention\[0\]\.protect: expected a list of tag patterns/],
      [[{ prefix: 'a', keepLast: 1, keep: 3 }], /retention\[0\]: unknown key "keep"/],
      [['a'], /retention\[0\]: expected \{prefix, keepLast, keepDays, protect\}/],
    ];
    for (const [value, message] of bad) assert.throws(() => parseRetentionRules(value, 'retention'), message);
  });

  it('applies the rule with the longest matching prefix', () => {
    const rules: RetentionRule[] = [
      { prefix: '', keepLast: 10 },
      { prefix: 'docker.io/', keepLast: 3 },
      { prefix: 'docker.io/library/', keepDays: 7 },
    ];
    assert.equal(ruleFor(rules, 'docker.io/library/nginx'), rules[2]);
    assert.equal(ruleFor(rules, 'docker.io/team/app'), rules[1]);
    assert.equal(ruleFor(rules, 'ghcr.io/x/y'), rules[0]);
    assert.equal(ruleFor(rules.slice(1), 'ghcr.io/x/y'), undefined);
  });

  it('keepLast keeps the newest N tags of each repository, by when they were set', () => {
    const now = Date.now();
    const tags = [tag('a/app', 'v1', 5, now), tag('a/app', 'v2', 4, now), tag('a/app', 'v3', 3, now), tag('a/app', 'v4', 2, now), tag('b/app', 'old', 100, now)];
    const out = expiredTags([{ prefix: 'a/', keepLast: 2 }], tags, new Set(), now);
    assert.deepEqual(out.map((t) => t.tag).sort(), ['v1', 'v2']);
    assert.match(out[0]!.reason, /retention rule for "a\/": not among the newest 2/);
    assert.deepEqual(expiredTags([{ prefix: 'a/', keepLast: 0 }], tags, new Set(), now).map((t) => t.tag).sort(), ['v1', 'v2', 'v3', 'v4']);
    assert.deepEqual(expiredTags([], tags, new Set(), now), []);
  });

  it('keepDays keeps tags set within D days; with keepLast too, a tag stays when either keeps it', () => {
    const now = Date.now();
    const tags = [tag('r', 'today', 0, now), tag('r', 'six', 6, now), tag('r', 'eight', 8, now), tag('r', 'old', 40, now), tag('r', 'older', 50, now)];
    assert.deepEqual(expiredTags([{ prefix: 'r', keepDays: 7 }], tags, new Set(), now).map((t) => t.tag).sort(), ['eight', 'old', 'older']);
    // The newest 4 include 'old', although it is older than 7 days.
    const both = expiredTags([{ prefix: 'r', keepDays: 7, keepLast: 4 }], tags, new Set(), now);
    assert.deepEqual(both.map((t) => t.tag), ['older']);
    assert.match(both[0]!.reason, /not among the newest 4 and older than 7 days/);
  });

  it('protected patterns and pinned manifests always stay', () => {
    const now = Date.now();
    const pinned = 'sha256:' + 'p'.repeat(64);
    const tags = [
      tag('r', 'release-1.0', 100, now),
      tag('r', 'release-1x0', 100, now),
      tag('r', 'v1.0', 100, now),
      tag('r', 'v1x0', 100, now),
      tag('r', 'latest', 100, now),
      tag('r', 'keep-me', 100, now, pinned),
      tag('r', 'other', 100, now),
    ];
    const out = expiredTags([{ prefix: '', keepDays: 1, protect: ['release-*', 'v1.0', 'latest'] }], tags, new Set([pinned]), now);
    // `*` matches any run of characters; every other character, `.` included, matches itself.
    assert.deepEqual(out.map((t) => t.tag).sort(), ['other', 'v1x0']);
  });
});

describe('reachability', () => {
  it('a closure reaches every platform of an index, configs, layers, and referrers (of referrers too), across repositories', async () => {
    const store = await openMemoryStore();
    const amd = await putImage(store, 'app', { layers: 2 });
    const arm = await putImage(store, 'app', { layers: 1 });
    const idx = await putIndex(store, 'app', [amd.desc, arm.desc], 'v1');
    const sbom = await putImage(store, 'app', { layers: 1, subject: idx, artifactType: 'application/vnd.example.sbom' });
    const sig = await putImage(store, 'app', { layers: 1, subject: sbom.desc, artifactType: 'application/vnd.example.sig' });
    const elsewhere = await putImage(store, 'sigs/app', { layers: 1, subject: amd.desc, artifactType: 'application/vnd.example.sig' });
    const unrelated = await putImage(store, 'app', { layers: 1, tag: 'other' });
    const walk = new ReachabilityWalk(store, await store.listManifests());
    const reached = await walk.closure([idx.digest]);
    const want = [idx.digest, amd.digest, ...amd.blobs, arm.digest, ...arm.blobs, sbom.digest, ...sbom.blobs, sig.digest, ...sig.blobs, elsewhere.digest, ...elsewhere.blobs];
    assert.deepEqual([...reached].sort(), [...new Set(want)].sort());
    for (const d of [...unrelated.blobs, unrelated.digest]) assert.ok(!reached.has(d));
    for (const d of [idx.digest, amd.digest, arm.digest, sbom.digest, sig.digest, elsewhere.digest]) assert.ok(walk.manifestDigests.has(d), `${d} is a manifest`);
    for (const d of amd.blobs) assert.ok(!walk.manifestDigests.has(d), `${d} is a blob`);
    // From a platform manifest: its blobs and its referrers, not its siblings.
    const fromAmd = await new ReachabilityWalk(store, await store.listManifests()).closure([amd.digest]);
    assert.deepEqual([...fromAmd].sort(), [amd.digest, ...amd.blobs, elsewhere.digest, ...elsewhere.blobs].sort());
    await store.close();
  });

  it('missing content is skipped, not an error', async () => {
    const store = await openMemoryStore();
    const amd = await putImage(store, 'app', { layers: 1 });
    const ghost = { mediaType: MT.manifest, digest: sha256(Buffer.from('not stored')), size: 10 };
    // An index whose second child is not stored (by digest, in a mirror that fetches children lazily).
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT.index, manifests: [amd.desc, ghost] }));
    const rec = await store.putManifest({ repository: 'app', bytes, mediaType: MT.index, references: [amd.digest] });
    const walk = new ReachabilityWalk(store, await store.listManifests());
    assert.deepEqual([...(await walk.closure([rec.digest]))].sort(), [rec.digest, amd.digest, ...amd.blobs, ghost.digest].sort());
    assert.equal(await walk.linksOf(ghost.digest, {}), null);
    // A blob given as a root: itself only.
    assert.deepEqual([...(await walk.closure([amd.blobs[1]!]))], [amd.blobs[1]]);
    await store.close();
  });

  it('pinnedDigests: what the pins hold, nothing without pins', async () => {
    const store = await openMemoryStore();
    const a = await putImage(store, 'app', { layers: 1 });
    const b = await putImage(store, 'app', { layers: 1 });
    const idx = await putIndex(store, 'app', [a.desc]);
    assert.equal((await pinnedDigests(store)).size, 0);
    await store.pinManifest('app', idx.digest, 'test');
    assert.deepEqual([...(await pinnedDigests(store))].sort(), [idx.digest, a.digest, ...a.blobs].sort());
    await store.pinManifest('app', b.digest, 'test');
    assert.equal((await pinnedDigests(store)).size, 1 + 3 + 3);
    await store.close();
  });
});

describe('listImages', () => {
  it('reads a manifest shared by several images once per listing, and sums each image as before', async () => {
    const store = await openMemoryStore();
    const amd = await putImage(store, 'app', { layers: 2, layerSize: 500 });
    const arm = await putImage(store, 'app', { layers: 1, layerSize: 700 });
    const both = await putIndex(store, 'app', [amd.desc, arm.desc], 'v1');
    const amdOnly = await putIndex(store, 'app', [amd.desc], 'v2');
    // The platform manifest tagged on its own too, and in a second repository.
    const amdBytes = Buffer.from(await new Response(await store.readContent(amd.digest)).arrayBuffer());
    await store.putManifest({ repository: 'app', bytes: amdBytes, mediaType: MT.manifest, tag: 'amd', references: amd.blobs });
    for (const b of amd.blobs) await store.mountBlob('mirror/app', b, 'app');
    await store.putManifest({ repository: 'mirror/app', bytes: amdBytes, mediaType: MT.manifest, tag: 'amd', references: amd.blobs });
    const reads = new Map<string, number>();
    const readContent = store.readContent.bind(store);
    store.readContent = (digest, range, opts) => {
      reads.set(digest, (reads.get(digest) ?? 0) + 1);
      return readContent(digest, range, opts);
    };
    const images = await listImages(store);
    const sizeOf = async (digests: string[]): Promise<number> => {
      let n = 0;
      for (const d of new Set(digests)) n += (await store.statContent(d))!.size;
      return n;
    };
    assert.deepEqual(
      images.map((i) => ({ repository: i.repository, tags: i.tags, digest: i.digest, platforms: i.platforms, missingBlobs: i.missingBlobs })),
      [
        { repository: 'app', tags: ['amd'], digest: amd.digest, platforms: [], missingBlobs: 0 },
        { repository: 'app', tags: ['v1'], digest: both.digest, platforms: ['linux/amd64', 'linux/arm64'], missingBlobs: 0 },
        { repository: 'app', tags: ['v2'], digest: amdOnly.digest, platforms: ['linux/amd64'], missingBlobs: 0 },
        { repository: 'mirror/app', tags: ['amd'], digest: amd.digest, platforms: [], missingBlobs: 0 },
      ],
    );
    assert.equal(images[0]!.size, await sizeOf([amd.digest, ...amd.blobs]));
    assert.equal(images[1]!.size, await sizeOf([both.digest, amd.digest, arm.digest, ...amd.blobs, ...arm.blobs]));
    assert.equal(images[2]!.size, await sizeOf([amdOnly.digest, amd.digest, ...amd.blobs]));
    assert.equal(images[3]!.size, await sizeOf([amd.digest, ...amd.blobs]));
    // The platform manifest that two indexes and two tags share, and its config, are each read once.
    assert.equal(reads.get(amd.digest), 1, `the shared manifest was read ${reads.get(amd.digest)} times`);
    assert.equal(reads.get(amd.blobs[0]!), 1, 'the shared config was read more than once');
    for (const [digest, n] of reads) assert.equal(n, 1, `${digest} was read ${n} times`);
    await store.close();
  });
});

const sortItems = (items: GcItem[]): string[] => items.map((i) => JSON.stringify(i)).sort();

describe('garbage collection on the in-memory store', () => {
  it('retention, pins, referrers and the grace period decide; the dry run lists exactly what the real run removes', async () => {
    const store = await openMemoryStore();
    const now = Date.now();
    const imgs: Record<string, Img> = {};
    for (const t of ['v1', 'v2', 'v3', 'v4']) imgs[t] = await putImage(store, 'team/app', { tag: t });
    imgs.pinned = await putImage(store, 'team/app', { tag: 'pinned' });
    await store.pinManifest('team/app', imgs.pinned.digest, 'test');
    const sig = await putImage(store, 'team/app', { subject: imgs.v4!.desc, artifactType: 'application/vnd.example.sig', layers: 1 });
    const untagged = await putImage(store, 'team/app', {});
    const orphan = await putBlob(store, 'team/app', randomBytes(3000));
    const staged = await putBlob(store, STAGING_REPOSITORY, randomBytes(4000));
    const session = await store.createUpload('team/app');
    await store.appendUpload('team/app', session.id, (async function* () {
      yield randomBytes(500);
    })());
    // v1 oldest ... v4 newest, the pinned tag the oldest of all.
    for (const [i, t] of ['pinned', 'v1', 'v2', 'v3', 'v4'].entries()) await store.setTag('team/app', t, { digest: imgs[t]!.digest, updated: now - (10 - i) * DAY });
    const retention: RetentionRule[] = [{ prefix: 'team/', keepLast: 2 }];

    // Inside the grace period nothing but retention's tags goes.
    const young = await collectGarbage(store, { graceMs: 3_600_000, uploadTimeoutMs: 86_400_000, retention, dryRun: true, now });
    assert.deepEqual(young.items.map((i) => `${i.kind} ${i.kind === 'tag' ? i.tag : ''}`).sort(), ['tag v1', 'tag v2']);

    const later = now + 2 * 86_400_000;
    const opts = { graceMs: 3_600_000, uploadTimeoutMs: 86_400_000, retention, now: later };
    const planned = await collectGarbage(store, { ...opts, dryRun: true });
    const stats = await store.stats();
    const done = await collectGarbage(store, opts);
    assert.deepEqual(sortItems(done.items), sortItems(planned.items));
    assert.equal(done.bytesFreed, planned.bytesFreed);
    assert.equal(stats.bytes - (await store.stats()).bytes + 500, done.bytesFreed, 'bytes freed: blob bytes plus the session');

    const gone = (kind: string): string[] => done.items.filter((i) => i.kind === kind).map((i) => ('digest' in i ? i.digest : i.kind === 'upload' ? i.id : ''));
    assert.deepEqual(done.items.filter((i) => i.kind === 'tag').map((i) => (i.kind === 'tag' ? i.tag : '')).sort(), ['v1', 'v2']);
    assert.deepEqual(gone('manifest').sort(), [imgs.v1!.digest, imgs.v2!.digest, untagged.digest].sort());
    assert.deepEqual(gone('blob').sort(), [...imgs.v1!.blobs, ...imgs.v2!.blobs, ...untagged.blobs, orphan.digest, staged.digest].sort());
    assert.deepEqual(gone('upload'), [session.id]);
    // What stays: v3, v4 (newest two), the pinned image (its tag is the oldest), v4's signature.
    for (const img of [imgs.v3!, imgs.v4!, imgs.pinned!, sig]) {
      for (const d of [img.digest, ...img.blobs]) assert.ok(await store.statBlob('team/app', d), `${d} stays`);
    }
    assert.deepEqual((await store.listTags('team/app')).sort(), ['pinned', 'v3', 'v4']);
    assert.deepEqual((await collectGarbage(store, opts)).items, [], 'a second run finds nothing');
    await store.close();
  });

  it('a staged import blob waits as long as an upload session would', async () => {
    const store = await openMemoryStore();
    const staged = await putBlob(store, STAGING_REPOSITORY, randomBytes(100));
    const now = Date.now() + 2 * 3_600_000;
    assert.deepEqual((await collectGarbage(store, { graceMs: 3_600_000, uploadTimeoutMs: 24 * 3_600_000, now })).items, []);
    const r = await collectGarbage(store, { graceMs: 3_600_000, uploadTimeoutMs: 3_600_000, now });
    assert.deepEqual(r.items.map((i) => i.kind === 'blob' && i.digest), [staged.digest]);
    assert.match(r.items[0]!.reason, /staged by an import/);
    await store.close();
  });

  it('a manifest put racing a sweep of the blobs it names: stored with all of them, or refused with MANIFEST_BLOB_UNKNOWN', async () => {
    const outcomes = { stored: 0, refused: 0 };
    for (let round = 0; round < 160; round++) {
      const store = await openMemoryStore();
      const config = await putBlob(store, 'race', Buffer.from(`{"round":${round}}`), MT.config);
      const layer = await putBlob(store, 'race', randomBytes(100));
      const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT.manifest, config, layers: [layer] }));
      // One starts, the other a varying number of microtask turns later (the in-memory store never waits for I/O, so
      // this walks the sweep across every step of the put), in both orders.
      const turns = async (): Promise<void> => {
        for (let i = 0; i < round >> 1; i++) await Promise.resolve();
      };
      const startPut = () => store.putManifest({ repository: 'race', bytes, mediaType: MT.manifest, tag: 'v1', references: [config.digest, layer.digest] });
      const startGc = () => collectGarbage(store, { graceMs: 0, uploadTimeoutMs: DAY, now: Date.now() + 1 });
      const [put, gc] = round % 2 === 0 ? [startPut(), turns().then(startGc)] : [turns().then(startPut), startGc()];
      const [p] = await Promise.allSettled([put, gc]);
      if (p.status === 'fulfilled') {
        outcomes.stored++;
        for (const d of [config.digest, layer.digest, p.value.digest]) assert.ok(await store.statBlob('race', d), `round ${round}: ${d} stays`);
        assert.equal(await store.resolveTag('race', 'v1'), p.value.digest);
        // And a later collection keeps it all: it is tagged.
        assert.deepEqual((await collectGarbage(store, { graceMs: 0, uploadTimeoutMs: DAY, now: Date.now() + 1 })).items, []);
      } else {
        outcomes.refused++;
        assert.equal((p.reason as { code?: string }).code, 'MANIFEST_BLOB_UNKNOWN', String(p.reason));
        assert.equal(await store.getManifest('race', sha256(bytes)), undefined);
        assert.deepEqual(await store.listTags('race'), []);
      }
      await store.close();
    }
    assert.ok(outcomes.stored > 0 && outcomes.refused > 0, `both outcomes happen: ${JSON.stringify(outcomes)}`);
  });
});

describe('eviction (StoreQuota) on the in-memory store', () => {
  const quotaOf = (store: KvContentStore, maxStore: number): { quota: StoreQuota; metrics: LifecycleMetrics } => {
    const metrics = new LifecycleMetrics(new Registry());
    return { quota: new StoreQuota({ store, dataDir: tmpdir(), maxStore, logger: silent, metrics, intervalMs: 3_600_000 }), metrics };
  };

  it('evicts least recently used blobs down to 90% of the quota; never pinned content, manifests, or a blob being read', async () => {
    const store = await openMemoryStore();
    const pinned = await putImage(store, 'app', { layers: 1, layerSize: 10_000, tag: 'pinned' });
    await store.pinManifest('app', pinned.digest, 'test');
    const plain: Img[] = [];
    for (let i = 0; i < 6; i++) {
      plain.push(await putImage(store, 'app', { layers: 1, layerSize: 10_000, tag: `p${i}` }));
      await new Promise((r) => setTimeout(r, 3));
    }
    // p0 was read last, p1's layer is being read now: both are the least evictable of the plain ones.
    (await store.readContent(plain[0]!.blobs[1]!)).resume();
    const reading = await store.readContent(plain[1]!.blobs[1]!);
    const total = (await store.stats()).bytes;
    const { quota, metrics } = quotaOf(store, total - 25_000);
    quota.start();
    await quota.settled();
    await quota.stop();
    const after = (await store.stats()).bytes;
    assert.ok(after <= Math.floor((total - 25_000) * 0.9), `${after} bytes left, quota ${total - 25_000}`);
    const held = async (d: string): Promise<boolean> => (await store.statContent(d)) !== undefined;
    for (const d of [pinned.digest, ...pinned.blobs]) assert.ok(await held(d), 'pinned content stays');
    for (const img of plain) assert.ok(await held(img.digest), 'manifests stay');
    assert.ok(await held(plain[1]!.blobs[1]!), 'a blob being read stays');
    // The oldest unread layers went first.
    assert.equal(await held(plain[2]!.blobs[1]!), false);
    assert.equal(await held(plain[3]!.blobs[1]!), false);
    assert.equal(await held(plain[5]!.blobs[1]!), true, 'the newest layer stays');
    assert.ok((await metrics.evictions.get()).values[0]!.value >= 2);
    reading.destroy();
    const status = await quota.status();
    assert.equal(status.pinsOverQuota, false);
    assert.ok(status.lastEviction && status.lastEviction.blobs >= 2);
    await store.close();
  });

  it('status counts pinned bytes while the store is under its quota', async () => {
    const store = await openMemoryStore();
    const pinned = await putImage(store, 'app', { layers: 2, layerSize: 20_000, tag: 'v1' });
    await putImage(store, 'app', { layers: 1, layerSize: 50_000, tag: 'v2' });
    const { quota, metrics } = quotaOf(store, 10_000_000);
    assert.equal((await quota.status()).pinnedBytes, 0);
    await store.pinManifest('app', pinned.digest, 'test');
    const bytes = (await Promise.all([pinned.digest, ...pinned.blobs].map((d) => store.statContent(d)))).reduce((n, i) => n + i!.size, 0);
    const status = await quota.status();
    assert.equal(status.pinnedBytes, bytes);
    assert.equal(status.pinsOverQuota, false);
    assert.equal((await metrics.pinnedBytes.get()).values[0]!.value, bytes);
    await store.close();
  });

  it('says so when pinned content alone does not fit, and evicts nothing pinned', async () => {
    const store = await openMemoryStore();
    const pinned = await putImage(store, 'app', { layers: 2, layerSize: 20_000, tag: 'v1' });
    await store.pinManifest('app', pinned.digest, 'test');
    const { quota, metrics } = quotaOf(store, 10_000);
    quota.start();
    await quota.settled();
    await quota.stop();
    for (const d of [pinned.digest, ...pinned.blobs]) assert.ok(await store.statContent(d));
    const status = await quota.status();
    assert.equal(status.pinsOverQuota, true);
    assert.ok(status.pinnedBytes >= 40_000);
    assert.equal((await metrics.pinsOverQuota.get()).values[0]!.value, 1);
    await store.close();
  });
});

describe('scrub and lifecycle removals at once', () => {
  it('a blob evicted while it is being verified is missing, not corrupt', async () => {
    for (let round = 0; round < 80; round++) {
      const store = await openMemoryStore();
      const blob = await putBlob(store, 'app', randomBytes(2000));
      const turns = async (): Promise<void> => {
        for (let i = 0; i < round >> 1; i++) await Promise.resolve();
      };
      const verify = () => store.verifyContent(blob.digest);
      const evict = () => store.removeContent(blob.digest, 'evicted');
      const [verified, evicted] = await Promise.all(round % 2 === 0 ? [verify(), turns().then(evict)] : [turns().then(verify), evict()]);
      assert.equal(evicted, true);
      assert.ok(verified === 'ok' || verified === 'missing', `round ${round}: an evicted blob was reported ${verified}`);
      await store.close();
    }
  });
});

describe('records about a blob never outlive it', () => {
  it('the scrub and eviction of the same blobs at once leave no stale record behind (fsck of the store is clean)', { timeout: 60_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-life-'));
    try {
      const store = await openDiskStore(dir);
      // Pushed through upload sessions, the blobs have no chunk map yet: the scrub's verification records one.
      const digests: string[] = [];
      for (let i = 0; i < 16; i++) {
        const bytes = randomBytes(1_500_000);
        const session = await store.createUpload('app');
        await store.appendUpload('app', session.id, (async function* () {
          yield bytes;
        })());
        digests.push((await store.commitUpload('app', session.id, sha256(bytes))).digest);
      }
      // Each verification re-hashes a blob; the eviction comes at a different moment of it each time.
      for (const [i, digest] of digests.entries()) {
        const verified = store.verifyContent(digest);
        await new Promise((r) => setTimeout(r, i % 8));
        assert.equal(await store.removeContent(digest, 'evicted'), true);
        assert.ok(['ok', 'missing'].includes(await verified));
      }
      // And reads that record an access time, racing the removal of what they read.
      const more: Desc[] = [];
      for (let i = 0; i < 6; i++) more.push(await putBlob(store, 'app', randomBytes(1000)));
      await Promise.all(more.map(async (b) => Promise.all([store.readContent(b.digest).then((s) => s.resume()), store.deleteBlob('app', b.digest)])));
      await store.close();
      const report = await fsckDataDir(dir);
      assert.deepEqual(report.problems, []);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('scrub service', () => {
  it('stops at once, also when stopped while its first pass over an empty store is finishing', { timeout: 20_000 }, async () => {
    const store = await openMemoryStore();
    const scrub = new Scrubber({ store, rate: 1_000_000, pauseMs: 3_600_000, logger: silent, metrics: new LifecycleMetrics(new Registry()) });
    scrub.start();
    await scrub.stop();
    await store.close();
  });
});

describe('lifecycle settings', () => {
  it('reads sizes, durations and rules from file, environment and flags, and refuses what makes no sense', async () => {
    const s = lifecycleSettings(
      await loadConfig({ env: { SHOAL_MAX_STORE: '40M', SHOAL_MIN_FREE: '10%', SHOAL_GC_GRACE: '0', SHOAL_SCRUB_INTERVAL: '2s', SHOAL_RETENTION: '[{"prefix":"a/","keepLast":2}]' }, flags: { gcInterval: '30m', scrubRate: '0' } }),
    );
    assert.equal(s.maxStore, 40_000_000);
    assert.deepEqual(s.minFree, { kind: 'percent', percent: 10 });
    assert.equal(s.gcGraceMs, 0);
    assert.equal(s.gcIntervalMs, 30 * 60_000);
    assert.equal(s.scrubRate, 0);
    assert.equal(s.scrubIntervalMs, 2000);
    const d = lifecycleSettings(await loadConfig({ env: {} }));
    assert.deepEqual([d.maxStore, d.minFree, d.gcIntervalMs, d.gcGraceMs, d.uploadTimeoutMs, d.scrubIntervalMs], [0, undefined, 6 * 3_600_000, 3_600_000, 24 * 3_600_000, 3_600_000]);
    await assert.rejects(loadConfig({ env: { SHOAL_SCRUB_INTERVAL: '10ms' } }), /scrubInterval: "10ms" is too short; the scrub rests at least 1s between passes/);
    await assert.rejects(loadConfig({ env: { SHOAL_GC_GRACE: 'soon' } }), /gcGrace: "soon" is not a duration/);
    await assert.rejects(loadConfig({ env: { SHOAL_RETENTION: '[{"prefix":"a/"}]' } }), /retention .*give keepLast, keepDays or both/);
  });
});
