/**
 * The peer network over real (shaped) links: three `shoal serve` processes, each in its own network namespace,
 * and the docker-registry seed in a fourth, all plugged into a bridge in a fifth namespace; every link is shaped
 * with `tc ... tbf rate 200mbit` in both directions. Addresses are 10.233.7.0/24, only inside these namespaces.
 *
 * Node 1 pulls a multi-arch image through from the seed (skopeo inside node 1's namespace); the seed is stopped;
 * node 2 pulls the same image by tag from its peers. Digests, metrics and throughputs are checked and printed.
 *
 * Needs root (ip netns, veth, bridge, tc). When namespaces are not permitted the test fails and says so.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeClusterKey } from '../../src/p2p/keys.ts';
import { blobPath, buildImageLayout, REF_NAME_ANNOTATION, type FixtureImage, type ImageLayout } from '../fixtures/images.ts';
import { Metrics } from '../helpers/metrics.ts';
import { NetnsLab, type NsProcess } from '../helpers/netns.ts';
import { DOCKER_REGISTRY_BIN, dockerRegistryConfig } from '../helpers/seed-registry.ts';
import { skopeoIn } from '../helpers/skopeo.ts';
import { SHOAL_BIN } from '../helpers/spawn-node.ts';
import { assertLayoutHolds } from '../helpers/layout.ts';
import { waitFor } from '../helpers/cluster.ts';

const MiB = 1024 * 1024;
const SUBNET = '10.233.7';
const RATE = '200mbit';
const RATE_BYTES = 200_000_000 / 8;
const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const sizeOf = (blobs: Array<{ size: number }>): number => blobs.reduce((n, b) => n + b.size, 0);
const mibps = (bytes: number, ms: number): string => `${(bytes / MiB / (ms / 1000)).toFixed(1)} MiB/s`;

interface Host {
  name: string;
  ns: string;
  ip: string;
  url: string;
  dataDir: string;
  proc?: NsProcess;
}

/** The environment of a spawned node: ours without SHOAL_* (and the test runner's context), plus `extra`. */
function nodeEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('SHOAL_') && k !== 'NODE_TEST_CONTEXT') env[k] = v;
  return { ...env, ...extra };
}

describe('three nodes in network namespaces over 200 mbit links, seed in a fourth', () => {
  const lab = new NetnsLab('shp2p');
  let work: string | undefined;
  let layout: ImageLayout;
  let seedNs: string;
  let seedProc: NsProcess | undefined;
  const seedUrl = `http://${SUBNET}.20:5000`;
  const hosts: Host[] = [];
  let directMs = 0;
  let directBytes = 0;

  /** curl inside a namespace: status, body and timings. */
  async function curl(ns: string, url: string, opts: { out?: string; timeoutMs?: number } = {}): Promise<{ status: number; body: string; size: number; seconds: number }> {
    const marker = '\n@@curl@@';
    const args = ['-sS', '--max-time', String(Math.ceil((opts.timeoutMs ?? 60_000) / 1000)), '-o', opts.out ?? '-', '-w', `${marker}%{http_code} %{size_download} %{time_total}`, url];
    const { stdout } = await lab.exec(ns, 'curl', args, { timeoutMs: (opts.timeoutMs ?? 60_000) + 5_000 });
    const at = stdout.lastIndexOf(marker);
    const [status, size, seconds] = stdout.slice(at + marker.length).trim().split(' ');
    return { status: Number(status), body: stdout.slice(0, at), size: Number(size), seconds: Number(seconds) };
  }

  async function metrics(h: Host): Promise<Metrics> {
    const r = await curl(h.ns, `${h.url}/metrics`, { timeoutMs: 10_000 });
    assert.equal(r.status, 200, `GET ${h.url}/metrics`);
    return new Metrics(r.body);
  }


  before(async () => {
    await lab.checkPermitted();
    await lab.removeLeftovers();
    work = await mkdtemp(join(tmpdir(), 'shoal-netns-'));
    const keyFile = join(work, 'cluster.key');
    await writeClusterKey(keyFile);
    // Fixture with 6 MiB layers: 5 distinct layers (~30 MiB) in the multi-arch image.
    const building = buildImageLayout(join(work, 'layout'), { layerSize: 6 * MiB });

    await lab.createBridge();
    for (const [i, name] of ['n1', 'n2', 'n3'].entries()) {
      const ip = `${SUBNET}.${11 + i}`;
      const ns = await lab.addHost(name, `${ip}/24`, { rate: RATE });
      hosts.push({ name, ns, ip, url: `http://${ip}:5000`, dataDir: join(work, name) });
    }
    seedNs = await lab.addHost('seed', `${SUBNET}.20/24`, { rate: RATE });

    // The seed: docker-registry listening on its namespace address.
    const seedDir = join(work, 'seed');
    await mkdir(seedDir, { recursive: true });
    const config = dockerRegistryConfig(join(seedDir, 'data'), `${SUBNET}.20:5000`).join('\n');
    await writeFile(join(seedDir, 'config.yml'), config + '\n');
    seedProc = lab.spawn(seedNs, DOCKER_REGISTRY_BIN, ['serve', join(seedDir, 'config.yml')]);
    await waitFor('the seed to answer /v2/ from node 1', async () => (await curl(hosts[0]!.ns, `${seedUrl}/v2/`, { timeoutMs: 2_000 })).status === 200, 15_000).catch((err: Error) => {
      throw new Error(`${err.message}\n${seedProc!.describe()}`);
    });

    // The nodes, each in its namespace, every one with the two others as static peers.
    for (const h of hosts) {
      const peers = hosts.filter((o) => o !== h).flatMap((o) => ['--peer', `${o.ip}:4001`]);
      h.proc = lab.spawn(
        h.ns,
        process.execPath,
        [SHOAL_BIN, 'serve', '--data', h.dataDir, '--listen', `${h.ip}:5000`, '--p2p-listen', `${h.ip}:4001`, '--cluster-key', keyFile, ...peers, '--seed', seedUrl, '--log-level', 'info'],
        nodeEnv({ SHOAL_TAG_TIMEOUT_MS: '1000' }),
      );
    }
    layout = await building;
    await Promise.all(hosts.map((h) => h.proc!.waitForLog((l) => l.msg === 'listening', 60_000)));
    await waitFor(
      'every node to see its 2 peers',
      async () => {
        const views = await Promise.all(hosts.map(async (h) => JSON.parse((await curl(h.ns, `${h.url}/shoal/peers`, { timeoutMs: 5_000 })).body) as { peers: unknown[] }));
        return views.every((v) => v.peers.length === 2);
      },
      20_000,
    );
  });

  after(async () => {
    await lab.cleanup();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('node 1 pulls through from the seed; with the seed stopped node 2 pulls from peers over the shaped links', async (t) => {
    const [n1, n2, n3] = hosts as [Host, Host, Host];
    const oneCopy = sizeOf(layout.multi.blobs);

    // Fill the seed from node 1's namespace (the push crosses the bridge too).
    const sk1 = await skopeoIn(join(work!, 'sk1'), { prefix: ['ip', 'netns', 'exec', n1.ns] });
    await sk1('copy', '--all', '--dest-tls-verify=false', `oci:${layout.dir}:multi`, `docker://${SUBNET}.20:5000/fixtures/app:multi`);

    // Node 1 pulls through.
    let started = performance.now();
    await sk1('copy', '--all', '--src-tls-verify=false', `docker://${n1.ip}:5000/fixtures/app:multi`, `oci:${join(work!, 'out1')}:multi`);
    const pull1Ms = performance.now() - started;
    await assertLayoutHolds(join(work!, 'out1'), 'multi', layout.multi);
    const seedBytes = await Promise.all(hosts.map(async (h) => (await metrics(h)).get('shoal_seed_bytes_total')));
    t.diagnostic(`node 1 pulled ${(oneCopy / MiB).toFixed(1)} MiB through in ${pull1Ms.toFixed(0)} ms (${mibps(oneCopy, pull1Ms)}); seed bytes per node ${JSON.stringify(seedBytes)}`);
    assert.equal(seedBytes.reduce((a, b) => a + b, 0), oneCopy, 'the seed sent one copy of the blobs, over all nodes');

    // The links are really shaped: one layer straight from the seed into node 3's namespace.
    const biggest = [...layout.multi.blobs].sort((a, b) => b.size - a.size)[0]!;
    const direct = await curl(n3.ns, `${seedUrl}/v2/fixtures/app/blobs/${biggest.digest}`, { out: '/dev/null' });
    assert.equal(direct.status, 200);
    directMs = direct.seconds * 1000;
    directBytes = direct.size;
    t.diagnostic(`one ${(direct.size / MiB).toFixed(1)} MiB layer straight from the seed over a shaped link: ${mibps(direct.size, directMs)} (tbf ${RATE} = ${(RATE_BYTES / MiB).toFixed(1)} MiB/s)`);
    assert.ok(direct.size / (directMs / 1000) < RATE_BYTES * 1.2, 'the seed link is shaped to about 200 mbit/s');

    // The seed goes away.
    await seedProc!.kill();
    const refused = await curl(n2.ns, `${seedUrl}/v2/`, { timeoutMs: 3_000 }).catch((err: Error) => err);
    assert.ok(refused instanceof Error || refused.status === 0, 'the seed no longer answers');

    // Node 2 pulls the same image by tag, from peers only.
    const before2 = await metrics(n2);
    const held2 = await heldBlobs(n2, layout.multi);
    const sk2 = await skopeoIn(join(work!, 'sk2'), { prefix: ['ip', 'netns', 'exec', n2.ns] });
    started = performance.now();
    await sk2('copy', '--all', '--src-tls-verify=false', `docker://${n2.ip}:5000/fixtures/app:multi`, `oci:${join(work!, 'out2')}:multi`);
    const pull2Ms = performance.now() - started;
    await assertLayoutHolds(join(work!, 'out2'), 'multi', layout.multi);
    const after2 = await metrics(n2);
    const peerBytes = after2.get('shoal_pull_bytes_total', { source: 'peer' }) - before2.get('shoal_pull_bytes_total', { source: 'peer' });
    // From this node's own record (cache) or a peer's (peer): either way, from the cluster.
    const cache = ['cache', 'peer'].reduce((n, via) => n + after2.get('shoal_tag_resolutions_total', { via }) - before2.get('shoal_tag_resolutions_total', { via }), 0);
    const peerIn = after2.get('shoal_peer_bytes_total', { direction: 'in' }) - before2.get('shoal_peer_bytes_total', { direction: 'in' });
    t.diagnostic(
      `node 2 pulled by tag with the seed down in ${pull2Ms.toFixed(0)} ms (tag timeout 1000 ms): it held ${(held2 / MiB).toFixed(1)} MiB already (as rendezvous owner), ` +
        `${(peerBytes / MiB).toFixed(1)} MiB came from peers (${mibps(peerBytes, pull2Ms)} over the whole pull), tag resolved from the cluster ${cache}x`,
    );
    assert.ok(cache >= 1, 'the tag was resolved from the cluster');
    assert.ok(peerBytes >= oneCopy - held2, `bytes from peers (${peerBytes}) cover what node 2 did not hold (${oneCopy - held2})`);
    assert.ok(peerIn > 0, 'shoal_peer_bytes_total{direction="in"} grew');
    assert.equal(after2.get('shoal_seed_bytes_total'), before2.get('shoal_seed_bytes_total'), 'nothing from the seed');
    const idx1 = await readFile(join(work!, 'out1', 'index.json'), 'utf8');
    const idx2 = await readFile(join(work!, 'out2', 'index.json'), 'utf8');
    assert.deepEqual(
      (JSON.parse(idx2) as { manifests: Array<{ digest: string }> }).manifests.map((m) => m.digest),
      (JSON.parse(idx1) as { manifests: Array<{ digest: string }> }).manifests.map((m) => m.digest),
      'identical digests on both nodes',
    );

    // Peer throughput over the shaped links: a layer node 3 does not hold yet, from the two others.
    const missing3: typeof layout.multi.blobs = [];
    for (const b of layout.multi.blobs) if (!(await holds(n3, b.digest))) missing3.push(b);
    const target = missing3.sort((a, b) => b.size - a.size)[0];
    if (!target) {
      t.diagnostic('node 3 already held every layer (it was the rendezvous owner of all of them): no peer-throughput sample');
    } else {
      const fromPeers = await curl(n3.ns, `${n3.url}/v2/fixtures/app/blobs/${target.digest}`, { out: '/dev/null' });
      assert.equal(fromPeers.status, 200);
      assert.equal(fromPeers.size, target.size);
      assert.equal(sha256(await readFile(join(n3.dataDir, 'blobs', 'sha256', target.digest.slice(7, 9), target.digest.slice(7)))), target.digest, 'node 3 stored the right bytes');
      const peers3 = JSON.parse((await curl(n3.ns, `${n3.url}/shoal/peers`)).body) as { peers: Array<{ bytesIn: number }> };
      t.diagnostic(
        `node 3: one ${(target.size / MiB).toFixed(1)} MiB layer from peers over shaped links in ${(fromPeers.seconds * 1000).toFixed(0)} ms = ${mibps(target.size, fromPeers.seconds * 1000)} ` +
          `(bytes from each peer so far ${JSON.stringify(peers3.peers.map((p) => p.bytesIn))}; straight from the seed it was ${mibps(directBytes, directMs)})`,
      );
    }
  });

  /** Whether a node's store holds a digest (the nodes' data dirs are on the shared filesystem). */
  async function holds(h: Host, digest: string): Promise<boolean> {
    const hex = digest.slice('sha256:'.length);
    return (await stat(join(h.dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex)).catch(() => undefined)) !== undefined;
  }

  async function heldBlobs(h: Host, img: FixtureImage): Promise<number> {
    let n = 0;
    for (const b of img.blobs) if (await holds(h, b.digest)) n += b.size;
    return n;
  }
});
