/**
 * Online garbage collection against real node processes:
 *
 * - GC racing pushes of the same blobs (grace 0, a collection running all the time): the push wins. Either the
 *   manifest put answers 201 and everything it names stays, or it answers 400 MANIFEST_BLOB_UNKNOWN (the client
 *   pushes the blobs again); never a stored manifest naming a missing blob. fsck of the stopped store is clean.
 * - Retention rules on tags of different ages (keepLast, keepDays, protected patterns, pins), end to end.
 * - `shoal gc --dry-run` reports exactly the items and bytes that the real run then frees, through a running node
 *   (`--node`) and on a stopped one (`--data`).
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { openDiskStore } from '../../src/store/index.ts';
import { bytesOnDisk, hasBlobFile, pin, pullImage, sha256, statusOf } from '../helpers/lifecycle.ts';
import { scrape } from '../helpers/metrics.ts';
import { MediaTypes, pushBlob, putManifest, request } from '../helpers/oci-client.ts';
import { runShoal, ShoalProcesses, type ShoalProcess } from '../helpers/spawn-node.ts';

interface GcItem {
  kind: string;
  repository: string;
  digest?: string;
  tag?: string;
  id?: string;
  size?: number;
  reason: string;
}
interface GcReport {
  dryRun: boolean;
  tags: number;
  manifests: number;
  blobs: number;
  uploads: number;
  bytesFreed: number;
  items: GcItem[];
}

async function gcThroughApi(url: string, dryRun: boolean): Promise<GcReport> {
  const res = await request(url, 'POST', `/shoal/gc?dryRun=${dryRun}`);
  assert.equal(res.status, 200, res.text());
  return res.json<GcReport>();
}

/** An image manifest over given blobs (config first). */
function manifestOf(config: Buffer, layers: Buffer[]): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.OciManifest,
      config: { mediaType: MediaTypes.OciConfig, digest: sha256(config), size: config.length },
      layers: layers.map((l) => ({ mediaType: MediaTypes.OciLayerGzip, digest: sha256(l), size: l.length })),
    }),
  );
}

function configBlob(label: string): Buffer {
  return Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, label }));
}

/** Pushes config and layers, then the manifest under `tag`; returns the manifest digest. */
async function pushImage(url: string, repo: string, tag: string, blobs: Buffer[]): Promise<string> {
  for (const b of blobs) await pushBlob(url, repo, b);
  const m = manifestOf(blobs[0]!, blobs.slice(1));
  const res = await putManifest(url, repo, tag, m, MediaTypes.OciManifest);
  assert.equal(res.status, 201, res.text());
  return sha256(m);
}

const sortItems = (items: GcItem[]): string[] => items.map((i) => JSON.stringify([i.kind, i.repository, i.digest ?? i.tag ?? i.id, i.size ?? 0, i.reason])).sort();

describe('garbage collection (real node processes)', () => {
  const procs = new ShoalProcesses();
  after(() => procs.cleanup());

  it('a push racing a collection of the same blobs wins: 201 with everything kept, or 400 MANIFEST_BLOB_UNKNOWN', { timeout: 90_000 }, async (t) => {
    const dataDir = await procs.tempDir('shoal-gc-race-');
    const node = await procs.serve({ dataDir, args: ['--gc-interval', '0', '--scrub-rate', '0'], env: { SHOAL_GC_GRACE: '0' } });
    const repo = 'race/app';
    // The same layer goes in every round: each round's collection wants to sweep what the next round pushes again.
    const shared = randomBytes(64 * 1024);
    let runs = 0;
    let swept = 0;
    const collect = async (): Promise<void> => {
      const r = await gcThroughApi(node.url, false);
      runs++;
      swept += r.blobs + r.manifests;
    };
    const kept = new Map<string, { digest: string; blobs: Buffer[] }>();
    let created = 0;
    let refused = 0;
    for (let round = 0; round < 30; round++) {
      const blobs = [configBlob(`round ${round}`), shared, randomBytes(2048 + round)];
      const manifest = manifestOf(blobs[0]!, blobs.slice(1));
      const tag = `r${round}`;
      let stored = false;
      for (let attempt = 0; attempt < 20 && !stored; attempt++) {
        for (const b of blobs) await pushBlob(node.url, repo, b);
        // A collection and the manifest put at once, one of them a few ms later than the other: the sweep meets the
        // put at every stage (before its check, during it, after its records).
        const offset = ((round * 7 + attempt * 5) % 17) - 8;
        const [, res] = await Promise.all([
          sleep(Math.max(0, offset)).then(collect),
          sleep(Math.max(0, -offset)).then(() => putManifest(node.url, repo, tag, manifest, MediaTypes.OciManifest)),
        ]);
        if (res.status === 201) {
          stored = true;
          created++;
          break;
        }
        assert.equal(res.status, 400, `manifest put answered ${res.status}: ${res.text()}`);
        assert.equal(res.json().errors[0].code, 'MANIFEST_BLOB_UNKNOWN', res.text());
        refused++;
        // Nothing of a refused put is visible.
        const get = await request(node.url, 'GET', `/v2/${repo}/manifests/${sha256(manifest)}`);
        assert.equal(get.status, 404, `a refused manifest is not stored (round ${round})`);
      }
      assert.ok(stored, `round ${round}: the manifest went in within 20 attempts`);
      // Everything it names is there, even after another collection.
      await collect();
      const pulled = await pullImage(node.url, repo, tag);
      assert.equal(pulled.manifestDigest, sha256(manifest));
      if (round % 2 === 0) kept.set(tag, { digest: sha256(manifest), blobs });
      else {
        // Untagged, it becomes garbage: the next rounds push its blobs again while a collection sweeps them.
        const del = await request(node.url, 'DELETE', `/v2/${repo}/manifests/${tag}`);
        assert.equal(del.status, 202, del.text());
      }
    }
    // Two more collections with nothing racing: what is tagged is whole, byte for byte.
    await gcThroughApi(node.url, false);
    await gcThroughApi(node.url, false);
    for (const [tag, img] of kept) {
      const pulled = await pullImage(node.url, repo, tag);
      assert.equal(pulled.manifestDigest, img.digest);
      for (const b of img.blobs) assert.deepEqual(pulled.blobs.get(sha256(b)), b, `${tag}: blob ${sha256(b)}`);
    }
    const tags = (await request(node.url, 'GET', `/v2/${repo}/tags/list`)).json<{ tags: string[] }>().tags;
    assert.deepEqual(new Set(tags), new Set(kept.keys()));
    assert.ok(swept > 0, 'the collections removed garbage while the pushes ran');
    t.diagnostic(`${runs} collections removed ${swept} items; ${created} manifest puts went in, ${refused} were refused with MANIFEST_BLOB_UNKNOWN`);

    // The stopped store is consistent.
    assert.equal((await node.terminate()).code, 0);
    const fsck = await runShoal(['fsck', '--data', dataDir, '--json']);
    assert.equal(fsck.code, 0, fsck.stdout + fsck.stderr);
    assert.deepEqual(JSON.parse(fsck.stdout).problems, []);
  });
  it('retention rules: keepLast, keepDays on tags of different ages, protected patterns, pins; the dry run frees exactly what the real run does', { timeout: 60_000 }, async (t) => {
    const dataDir = await procs.tempDir('shoal-retention-');
    let node = await procs.serve({ dataDir, args: ['--gc-interval', '0', '--scrub-rate', '0'] });
    const day = 86_400_000;
    const now = Date.now();
    // repository -> tag -> age in days
    const plan: Record<string, Record<string, number>> = {
      'ret/last/app': { v0: 50, v1: 40, v2: 30, v3: 20, v4: 10, 'stable-1': 60 },
      'ret/days/app': { fresh: 1, week: 6, old: 10, ancient: 40, 'release-1': 40, pinned: 40 },
      'ret/misc/app': { x: 0 },
      'other/app': { old: 100 },
    };
    const images = new Map<string, { digest: string; blobs: Buffer[] }>();
    for (const [repo, tags] of Object.entries(plan)) {
      for (const tag of Object.keys(tags)) {
        const blobs = [configBlob(`${repo}:${tag}`), randomBytes(20_000), randomBytes(5_000)];
        images.set(`${repo}:${tag}`, { digest: await pushImage(node.url, repo, tag, blobs), blobs });
      }
    }
    await pin(node.url, 'ret/days/app', images.get('ret/days/app:pinned')!.digest);
    assert.equal((await node.terminate()).code, 0);

    // Tag records carry when they were set: age them in the stopped store, as if they had been pushed long ago.
    const store = await openDiskStore(dataDir);
    try {
      for (const [repo, tags] of Object.entries(plan)) {
        for (const [tag, age] of Object.entries(tags)) await store.setTag(repo, tag, { digest: images.get(`${repo}:${tag}`)!.digest, updated: now - age * day });
      }
    } finally {
      await store.close();
    }
    const config = join(dataDir, '..', `${dataDir.split('/').pop()}.yaml`);
    await writeFile(
      config,
      [
        'gcGrace: "0"',
        'gcInterval: "0"',
        'scrubRate: "0"',
        'retention:',
        '  - { prefix: "ret/", keepLast: 0 }',
        '  - { prefix: "ret/last/", keepLast: 2, protect: ["stable-*"] }',
        '  - { prefix: "ret/days/", keepDays: 7, protect: ["release-*"] }',
      ].join('\n') + '\n',
    );
    node = await procs.serve({ dataDir, config });

    const before = { disk: await bytesOnDisk(dataDir), stored: (await statusOf(node.url)).store.bytes };
    const dry = await runShoal(['gc', '--dry-run', '--node', node.url, '--json']);
    assert.equal(dry.code, 0, dry.stderr);
    const planned = JSON.parse(dry.stdout) as GcReport;
    assert.equal(planned.dryRun, true);
    assert.equal(await bytesOnDisk(dataDir), before.disk, 'a dry run changes nothing');
    const real = await runShoal(['gc', '--node', node.url, '--json']);
    assert.equal(real.code, 0, real.stderr);
    const done = JSON.parse(real.stdout) as GcReport;
    assert.equal(done.dryRun, false);
    assert.deepEqual(sortItems(done.items), sortItems(planned.items), 'the dry run lists exactly what the real run removes');
    assert.equal(done.bytesFreed, planned.bytesFreed);
    for (const k of ['tags', 'manifests', 'blobs', 'uploads'] as const) assert.equal(done[k], planned[k], k);
    const afterRun = { disk: await bytesOnDisk(dataDir), stored: (await statusOf(node.url)).store.bytes };
    assert.equal(before.stored - afterRun.stored, done.bytesFreed, 'the bytes reported are the bytes the store no longer holds');
    assert.equal(before.disk - afterRun.disk, done.bytesFreed, 'and the bytes that left the disk');

    const expired = ['ret/last/app:v0', 'ret/last/app:v1', 'ret/last/app:v2', 'ret/days/app:old', 'ret/days/app:ancient', 'ret/misc/app:x'];
    const expiredTags = done.items.filter((i) => i.kind === 'tag').map((i) => `${i.repository}:${i.tag}`);
    assert.deepEqual(expiredTags.sort(), [...expired].sort());
    for (const i of done.items.filter((x) => x.kind === 'tag')) assert.match(i.reason, /retention rule for "ret\/(last|days)?\/?"/);
    for (const [key, img] of images) {
      const [repo, tag] = key.split(':') as [string, string];
      if (expired.includes(key)) {
        assert.equal((await request(node.url, 'GET', `/v2/${repo}/manifests/${tag}`)).status, 404, `${key} expired`);
        assert.equal((await request(node.url, 'GET', `/v2/${repo}/manifests/${img.digest}`)).status, 404, `${key}: its manifest went too`);
        for (const b of img.blobs) assert.equal(await hasBlobFile(dataDir, sha256(b)), false, `${key}: blob ${sha256(b)} went too`);
      } else {
        const pulled = await pullImage(node.url, repo, tag);
        assert.equal(pulled.manifestDigest, img.digest, `${key} stays`);
        for (const b of img.blobs) assert.deepEqual(pulled.blobs.get(sha256(b)), b);
      }
    }
    const again = await gcThroughApi(node.url, false);
    assert.deepEqual(again.items, [], 'a second run finds nothing');
    const m = await scrape(node.url);
    assert.equal(m.get('shoal_gc_runs_total', { result: 'ok' }), 2);
    assert.equal(m.get('shoal_gc_freed_bytes_total'), done.bytesFreed);
    t.diagnostic(`retention removed ${done.tags} tags, ${done.manifests} manifests, ${done.blobs} blob links, ${done.bytesFreed} bytes`);
  });

  it('shoal gc --data on a stopped node: the dry run matches the real run (untagged manifests, orphan blobs, abandoned uploads)', { timeout: 60_000 }, async () => {
    const dataDir = await procs.tempDir('shoal-gc-offline-');
    const node = await procs.serve({ dataDir, args: ['--gc-interval', '0', '--scrub-rate', '0'] });
    const keep = [configBlob('keep'), randomBytes(30_000)];
    const keepDigest = await pushImage(node.url, 'off/app', 'v1', keep);
    // An image pushed by digest only (never tagged), one whose tag was deleted, blobs no manifest names, and an
    // upload session left with some bytes in it.
    const untagged = [configBlob('untagged'), randomBytes(40_000)];
    for (const b of untagged) await pushBlob(node.url, 'off/app', b);
    const um = manifestOf(untagged[0]!, untagged.slice(1));
    assert.equal((await putManifest(node.url, 'off/app', sha256(um), um, MediaTypes.OciManifest)).status, 201);
    const dropped = [configBlob('dropped'), randomBytes(50_000)];
    await pushImage(node.url, 'off/other', 'gone', dropped);
    assert.equal((await request(node.url, 'DELETE', '/v2/off/other/manifests/gone')).status, 202);
    const orphan = randomBytes(60_000);
    await pushBlob(node.url, 'off/orphans', orphan);
    // A blob of the kept image, linked into another repository too: its bytes are live, so its links stay.
    await pushBlob(node.url, 'off/orphans', keep[1]!);
    const session = await request(node.url, 'POST', '/v2/off/app/blobs/uploads/');
    assert.equal(session.status, 202);
    const patch = await request(node.url, 'PATCH', session.headers.get('location')!, { headers: { 'content-type': 'application/octet-stream' }, body: randomBytes(70_000) });
    assert.equal(patch.status, 202, patch.text());
    assert.equal((await node.terminate()).code, 0);

    const config = join(dataDir, 'gc.yaml');
    await writeFile(config, 'gcGrace: "0"\nuploadTimeout: "0"\n');
    const before = await bytesOnDisk(dataDir);
    const dry = await runShoal(['gc', '--data', dataDir, '-c', config, '--dry-run', '--json']);
    assert.equal(dry.code, 0, dry.stderr);
    const planned = JSON.parse(dry.stdout) as GcReport;
    assert.equal(await bytesOnDisk(dataDir), before, 'a dry run changes nothing');
    const real = await runShoal(['gc', '--data', dataDir, '-c', config, '--json']);
    assert.equal(real.code, 0, real.stderr);
    const done = JSON.parse(real.stdout) as GcReport;
    assert.deepEqual(sortItems(done.items), sortItems(planned.items));
    assert.equal(done.bytesFreed, planned.bytesFreed);
    // What goes: the untagged manifest and its two blobs, the untagged image of off/other (manifest and blobs), the
    // orphan blob, the upload session (its 70000 bytes).
    assert.equal(done.manifests, 2);
    assert.equal(done.blobs, 2 + 2 + 1);
    assert.equal(done.uploads, 1);
    const freedBlobBytes = [...untagged, um, ...dropped, orphan].reduce((n, b) => n + b.length, 0) + manifestOf(dropped[0]!, dropped.slice(1)).length;
    assert.equal(done.bytesFreed, freedBlobBytes + 70_000);
    assert.equal(before - (await bytesOnDisk(dataDir)), freedBlobBytes, 'blob bytes that left the disk');
    // Text output names each item with its reason.
    const again = await runShoal(['gc', '--data', dataDir, '-c', config, '--dry-run']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /would remove 0 tag\(s\), 0 manifest\(s\), 0 blob link\(s\), 0 upload session\(s\)/);
    const fsck = await runShoal(['fsck', '--data', dataDir, '--json']);
    assert.equal(fsck.code, 0, fsck.stdout + fsck.stderr);
    const restarted = await procs.serve({ dataDir, args: ['--gc-interval', '0', '--scrub-rate', '0'] });
    const pulled = await pullImage(restarted.url, 'off/app', 'v1');
    assert.equal(pulled.manifestDigest, keepDigest);
    for (const b of keep) assert.deepEqual(pulled.blobs.get(sha256(b)), b);
    assert.equal((await request(restarted.url, 'HEAD', `/v2/off/orphans/blobs/${sha256(keep[1]!)}`)).status, 200);
    assert.equal((await request(restarted.url, 'HEAD', `/v2/off/orphans/blobs/${sha256(orphan)}`)).status, 404);
    assert.equal((await request(restarted.url, 'GET', `/v2/off/app/manifests/${sha256(um)}`)).status, 404);
  });
});
