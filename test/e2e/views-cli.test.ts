/**
 * `shoal ls`, `shoal status --cluster` and `shoal prefetch` spawned as an operator runs them:
 *   - a spawned node with a pushed image: `ls --node` (table and JSON, with a prefix), then the node stopped and
 *     `ls --data` on its store; GET /shoal/traffic records the pull of a blob with its source;
 *   - three nodes and a docker-registry seed behind a proxy that logs every request: `prefetch --all-nodes --pin`
 *     of a two-platform index leaves the whole image, pinned, on every node, while the seed sent each blob once;
 *     `status --cluster` gives one line per node with its images, gathered through the peers.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request as httpRequest, type Server } from 'node:http';
import { once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startDockerRegistry, pushRandomImage, pushManifest, type DockerRegistry, type PushedImage } from '../helpers/seed-registry.ts';
import { ShoalProcesses, runShoal, type RunResult, type ShoalProcess } from '../helpers/spawn-node.ts';
import { startCluster, type Cluster } from '../helpers/cluster.ts';
import type { AuditEntry } from '../../src/access/index.ts';

function ok(r: RunResult): RunResult {
  assert.equal(r.code, 0, `exit ${r.code}\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`);
  return r;
}

interface ImageRow {
  repository: string;
  tags: string[];
  digest: string;
  size: number;
  platforms: string[];
  missingBlobs: number;
  pinned: boolean;
  lastPulled?: number;
}

/** An HTTP proxy in front of the seed that adds up, per blob digest, the body bytes the seed sent for it. */
async function startBlobLog(target: string): Promise<{ url: string; hostPort: string; blobBytes: Map<string, number>; requests: string[]; close(): Promise<void> }> {
  const blobBytes = new Map<string, number>();
  const requests: string[] = [];
  const t = new URL(target);
  const server: Server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    const m = /\/blobs\/(sha256:[0-9a-f]{64})/.exec(req.url ?? '');
    const up = httpRequest({ host: t.hostname, port: t.port, method: req.method, path: req.url, headers: { ...req.headers, host: t.host } }, (upRes) => {
      res.writeHead(upRes.statusCode ?? 502, upRes.headers);
      upRes.on('data', (d: Buffer) => {
        if (m && req.method === 'GET') blobBytes.set(m[1]!, (blobBytes.get(m[1]!) ?? 0) + d.length);
      });
      upRes.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    hostPort: `127.0.0.1:${port}`,
    blobBytes,
    requests,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

describe('shoal ls (spawned node)', () => {
  const procs = new ShoalProcesses();
  let node: ShoalProcess | undefined;
  let dataDir = '';
  let image: PushedImage;

  before(async () => {
    dataDir = await procs.tempDir();
    node = await procs.serve({ dataDir });
    image = await pushRandomImage(node.url!, 'team/app', '1.0', { layerSizes: [10_000, 20_000] });
    await pushRandomImage(node.url!, 'other/tool', 'v2', { layerSizes: [5_000] });
  });
  after(() => procs.cleanup());

  it('lists images of a running node as a table and as JSON, with a prefix', async () => {
    const table = ok(await runShoal(['ls', '--node', node!.url])).stdout;
    assert.match(table, /^REPOSITORY\s+TAGS\s+DIGEST\s+SIZE\s+PLATFORMS\s+PIN\s+LAST PULLED/m);
    assert.match(table, /team\/app\s+1\.0\s+[0-9a-f]{12}\s+\S+.*linux\/amd64/);
    assert.match(table, /other\/tool\s+v2/);
    const json = JSON.parse(ok(await runShoal(['ls', 'team/', '--node', node!.url, '--json'])).stdout) as { images: ImageRow[] };
    assert.equal(json.images.length, 1);
    const row = json.images[0]!;
    assert.equal(row.repository, 'team/app');
    assert.deepEqual(row.tags, ['1.0']);
    assert.equal(row.digest, image.manifestDigest);
    assert.equal(row.size, image.manifestBytes.length + image.config.bytes.length + 30_000);
    assert.deepEqual(row.platforms, ['linux/amd64']);
    assert.equal(row.missingBlobs, 0);
    assert.equal(row.pinned, false);
  });

  it('records a pull with its source in GET /shoal/traffic', async () => {
    const layer = image.layers[0]!;
    const res = await fetch(`${node!.url}/v2/team/app/blobs/${layer.digest}`);
    assert.equal(Buffer.from(await res.arrayBuffer()).length, layer.bytes.length);
    let traffic: { recentPulls: Array<{ digest: string; source: string; bytes: number; complete: boolean }>; minutes: unknown[] } | undefined;
    for (let i = 0; i < 50; i++) {
      traffic = (await (await fetch(`${node!.url}/shoal/traffic`)).json()) as typeof traffic;
      if (traffic!.recentPulls.some((p) => p.digest === layer.digest)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const pull = traffic!.recentPulls.find((p) => p.digest === layer.digest);
    assert.ok(pull, JSON.stringify(traffic!.recentPulls));
    assert.equal(pull.source, 'local');
    assert.equal(pull.bytes, layer.bytes.length);
    assert.equal(pull.complete, true);
    assert.equal(traffic!.minutes.length, 60);
  });

  it('answers bad requests to the view endpoints with OCI errors', async () => {
    const call = async (method: string, path: string, body?: string): Promise<{ status: number; code?: string }> => {
      const res = await fetch(`${node!.url}${path}`, { method, body });
      const text = await res.text();
      return { status: res.status, code: text ? (JSON.parse(text) as { errors?: Array<{ code: string }> }).errors?.[0]?.code : undefined };
    };
    assert.deepEqual(await call('POST', '/shoal/prefetch', 'not json'), { status: 400, code: 'NAME_INVALID' });
    assert.deepEqual(await call('POST', '/shoal/prefetch', '{"refs":[]}'), { status: 400, code: 'NAME_INVALID' });
    assert.deepEqual(await call('POST', '/shoal/prefetch', JSON.stringify({ refs: ['x'.repeat(70_000)] })), { status: 400, code: 'SIZE_INVALID' });
    assert.equal((await call('GET', '/shoal/prefetch')).code, 'UNSUPPORTED');
    // Every reference is checked before any work starts: one bad reference among good ones refuses the request.
    assert.deepEqual(await call('POST', '/shoal/prefetch', JSON.stringify({ refs: ['team/app:1.0', 'Not A Ref'] })), { status: 400, code: 'NAME_INVALID' });
    assert.deepEqual(await call('POST', '/shoal/prefetch', JSON.stringify({ refs: ['team/app:1.0', 7] })), { status: 400, code: 'NAME_INVALID' });
    assert.deepEqual(await call('POST', '/shoal/prefetch', JSON.stringify({ refs: Array(101).fill('team/app:1.0') })), { status: 400, code: 'NAME_INVALID' });
    assert.equal((await call('DELETE', '/shoal/images')).code, 'UNSUPPORTED');
    assert.deepEqual(await call('GET', '/ui/..%2fpackage.json'), { status: 404, code: 'NAME_UNKNOWN' });
    assert.deepEqual(await call('GET', '/ui/nothing.js'), { status: 404, code: 'NAME_UNKNOWN' });
    const page = await fetch(`${node!.url}/`, { redirect: 'manual' });
    assert.equal(page.status, 302);
    assert.equal(page.headers.get('location'), '/ui/');
  });

  it('lists the images of a stopped node from its data directory', async () => {
    await node!.terminate();
    node = undefined;
    const json = JSON.parse(ok(await runShoal(['ls', '--data', dataDir, '--json'])).stdout) as { images: ImageRow[] };
    assert.deepEqual(json.images.map((i) => `${i.repository}:${i.tags.join(',')}`), ['other/tool:v2', 'team/app:1.0']);
    const usage = await runShoal(['ls', '--node', 'http://127.0.0.1:1', '--data', dataDir]);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /not both/);
  });
});

describe('shoal prefetch --all-nodes and status --cluster (3 nodes, docker-registry seed)', () => {
  let seed: DockerRegistry;
  let proxy: Awaited<ReturnType<typeof startBlobLog>>;
  let cluster: Cluster | undefined;
  let amd: PushedImage;
  let arm: PushedImage;
  let indexDigest = '';
  const repo = 'team/multi';

  before(async () => {
    seed = await startDockerRegistry();
    proxy = await startBlobLog(seed.url);
    amd = await pushRandomImage(seed.url, repo, 'amd64', { layerSizes: [300_000, 1_200_000] });
    arm = await pushRandomImage(seed.url, repo, 'arm64', { layerSizes: [250_000, 900_000] });
    const mt = 'application/vnd.oci.image.index.v1+json';
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: mt,
        manifests: [
          { mediaType: amd.manifestMediaType, digest: amd.manifestDigest, size: amd.manifestBytes.length, platform: { os: 'linux', architecture: 'amd64' } },
          { mediaType: arm.manifestMediaType, digest: arm.manifestDigest, size: arm.manifestBytes.length, platform: { os: 'linux', architecture: 'arm64' } },
        ],
      }),
    );
    indexDigest = await pushManifest(seed.url, repo, '1.0', index, mt);
    cluster = await startCluster({ size: 3, seeds: [proxy.url] });
    await cluster.waitConnected();
  });
  after(async () => {
    await cluster?.stop();
    await proxy?.close();
    await seed?.stop();
  });

  it('warms a two-platform image on every node; the seed sends each blob once', async () => {
    const [n0] = cluster!.nodes;
    const ref = `${proxy.hostPort}/${repo}:1.0`;
    const r = ok(await runShoal(['prefetch', ref, '--node', n0!.url, '--all-nodes', '--pin'], { timeoutMs: 120_000 }));
    assert.match(r.stdout, /3 of 3 node\(s\) hold the image/);
    assert.match(r.stderr, /from (seed|peer)/);
    const blobs = [amd, arm].flatMap((i) => [i.config, ...i.layers]);
    const ns = `${proxy.hostPort.replace(':', '-')}/${repo}`;
    for (const n of cluster!.nodes) {
      const { images } = JSON.parse(ok(await runShoal(['ls', '--node', n.url, '--json'])).stdout) as { images: ImageRow[] };
      const row = images.find((i) => i.digest === indexDigest);
      assert.ok(row, `node ${n.index} lacks the image: ${JSON.stringify(images)}`);
      assert.equal(row.repository, ns);
      assert.deepEqual(row.tags, ['1.0']);
      assert.deepEqual(row.platforms.sort(), ['linux/amd64', 'linux/arm64']);
      assert.equal(row.missingBlobs, 0, `node ${n.index} misses blobs`);
      assert.equal(row.pinned, true);
      for (const b of blobs) assert.ok(await n.node.store.statContent(b.digest), `node ${n.index} lacks ${b.digest}`);
    }
    for (const b of blobs) assert.equal(proxy.blobBytes.get(b.digest), b.bytes.length, `the seed sent ${proxy.blobBytes.get(b.digest) ?? 0} bytes of ${b.digest} (${b.bytes.length} long)`);
    assert.equal(proxy.blobBytes.size, blobs.length, `blobs asked of the seed: ${[...proxy.blobBytes.keys()].join(', ')}`);

    // Again: everything is already there, nothing more comes from the seed.
    const before = proxy.requests.filter((q) => q.includes('/blobs/')).length;
    const again = JSON.parse(ok(await runShoal(['prefetch', ref, '--node', n0!.url, '--all-nodes', '--json'])).stdout.trim().split('\n').pop()!) as { nodes: Array<{ ok: boolean; outcomes: Array<{ fetchedBytes: number }> }> };
    assert.equal(again.nodes.length, 3);
    assert.ok(again.nodes.every((n) => n.ok && n.outcomes[0]!.fetchedBytes === 0), JSON.stringify(again));
    assert.equal(proxy.requests.filter((q) => q.includes('/blobs/')).length, before);

    // A reference that is none is refused before any work, with exit code 1 and the node's words.
    const bad = await runShoal(['prefetch', 'Not A Ref', '--node', n0!.url]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /answered 400: NAME_INVALID/);
    // The audit log of the node asked says who warmed what, and where.
    const audit = JSON.parse(ok(await runShoal(['audit', '--node', n0!.url, '--action', 'prefetch', '--json'])).stdout.trim().split('\n')[0]!) as AuditEntry;
    assert.equal(audit.result, 'ok');
    assert.equal(audit.from, '127.0.0.1');
    assert.equal(audit.detail, `${ref} on every node, pinned`);
  });

  it('a node keeps the warmImages of its config: fetched at start-up and pinned', async () => {
    const procs = new ShoalProcesses();
    try {
      const dir = await procs.tempDir();
      const config = join(dir, 'shoal.yaml');
      await writeFile(config, `seeds: [${JSON.stringify(proxy.url)}]\nwarmImages: [${JSON.stringify(`${proxy.hostPort}/${repo}:1.0`)}]\nwarmPin: true\nwarmInterval: 1h\n`);
      const node = await procs.serve({ dataDir: join(dir, 'data'), config });
      await node.waitForLog((l) => l.msg === 'warm images are on this node', { timeoutMs: 60_000 });
      const { images } = JSON.parse(ok(await runShoal(['ls', '--node', node.url, '--json'])).stdout) as { images: ImageRow[] };
      const row = images.find((i) => i.digest === indexDigest);
      assert.ok(row, JSON.stringify(images));
      assert.equal(row.missingBlobs, 0);
      assert.equal(row.pinned, true);
      const { pins } = JSON.parse(ok(await runShoal(['pins', '--node', node.url, '--json'])).stdout) as { pins: Array<{ reason: string }> };
      assert.deepEqual(pins.map((p) => p.reason), ['warmImages']);
    } finally {
      await procs.cleanup();
    }
  });

  it('status --cluster lists every node, with its images, through the peers', async () => {
    const [n0, n1, n2] = cluster!.nodes;
    const body = JSON.parse(ok(await runShoal(['status', '--node', n0!.url, '--cluster', '--json'])).stdout) as {
      self: { id: string; images: number; version: string };
      peers: Array<{ id: string; summary?: { id: string; images: number; version: string; store: { bytes: number } } }>;
    };
    assert.equal(body.self.id, n0!.peerId);
    assert.deepEqual(body.peers.map((p) => p.id).sort(), [n1!.peerId, n2!.peerId].sort());
    for (const p of body.peers) {
      assert.equal(p.summary?.id, p.id);
      assert.equal(p.summary?.version, '0.1.0');
      assert.ok((p.summary?.images ?? 0) >= 1);
      assert.ok((p.summary?.store.bytes ?? 0) > 0);
    }
    const table = ok(await runShoal(['status', '--node', n0!.url, '--cluster'])).stdout;
    assert.match(table, /^NODE\s+ADDRESS\s+ZONE\s+VERSION\s+UP\s+DISK\s+IMAGES/m);
    for (const n of cluster!.nodes) assert.ok(table.includes(n.peerId.slice(-12)), `no line for node ${n.index}:\n${table}`);
  });
});
