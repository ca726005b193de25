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
    for (let round = 0; round < 60; round++) {
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
});
