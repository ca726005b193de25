/**
 * What stopped a new user in the first hour with Shoal, each checked the way that user met it: real nodes (in
 * this process, or the CLI spawned), the real distribution registry as seed, real HTTP.
 *
 * - `shoal serve --seed http://R` serves containerd's `?ns=R` requests (it answered 404 before, so containerd
 *   went to R itself and nothing was cached);
 * - a seed that refuses the node's credentials reaches the client as 403 DENIED, never as a 401 without a
 *   `WWW-Authenticate` challenge;
 * - `shoal inventory --node` lists everything the node holds, untagged images and lone blobs too, as `--data` does;
 * - a tag of a pushed repository (no seed, by design) resolves without a warning on every GET; a seed that does
 *   not answer still gets one;
 * - a cluster key file of 64 hex characters works like the private-network format.
 * (The 404 for a GET of `.INVALID_MANIFEST_NAME` is in malformed.test.ts; mDNS without a multicast route in
 * mdns-route.test.ts; containerd-config's schemes in containerd-seed.test.ts and test/e2e/containerd-config.test.ts.)
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTestNode, type TestNode } from '../helpers/node.ts';
import { startDockerRegistry, freePort, type DockerRegistry } from '../helpers/seed-registry.ts';
import { MediaTypes, descriptorOf, makeImage, pushBlob, randomBlob, request, startUpload, withDigest, type Descriptor } from '../helpers/oci-client.ts';
import { ShoalProcesses, runShoal, type ShoalProcess } from '../helpers/spawn-node.ts';
import { peersOf, waitFor } from '../helpers/cluster.ts';
import { writeClusterKey } from '../../src/p2p/keys.ts';

/** bcrypt (cost 5) of HTPASSWD_PASSWORD, as in pull-through.test.ts. */
const HTPASSWD_USER = 'alice';
const HTPASSWD_PASSWORD = 'shoal-seed-secret';
const HTPASSWD_BCRYPT = '$2b$05$3qFb4wh6tsZzhjQr5ZRsweU31WscZHxJuF/5KvpHSZID3NAsu47eK';

const ACCEPT = [MediaTypes.OciManifest, MediaTypes.OciIndex, MediaTypes.DockerManifest, MediaTypes.DockerManifestList].join(', ');

/** An image pushed to distribution (which takes blobs as POST, then PUT ?digest=): two layers and a config. */
async function pushToDistribution(base: string, repo: string, tag: string): Promise<{ digest: string; config: Descriptor; layers: Descriptor[] }> {
  const put = async (data: Buffer, mediaType: string): Promise<Descriptor> => {
    const d = descriptorOf(data, mediaType);
    const res = await request(base, 'PUT', withDigest(await startUpload(base, repo), d.digest), { headers: { 'content-type': 'application/octet-stream' }, body: data });
    assert.equal(res.status, 201, `blob push to ${base}: ${res.status} ${res.text()}`);
    return d;
  };
  const layers = [await put(randomBlob(20_000), MediaTypes.OciLayerGzip), await put(randomBlob(30_000), MediaTypes.OciLayerGzip)];
  const config = await put(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } })), MediaTypes.OciConfig);
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.OciManifest, config, layers }));
  const res = await request(base, 'PUT', `/v2/${repo}/manifests/${tag}`, { headers: { 'content-type': MediaTypes.OciManifest }, body: manifest });
  assert.equal(res.status, 201, `manifest push to ${base}: ${res.status} ${res.text()}`);
  return { digest: descriptorOf(manifest, MediaTypes.OciManifest).digest, config, layers };
}

describe('shoal serve --seed http://R serves containerd\'s ?ns=R', { concurrency: 1 }, () => {
  let seed: DockerRegistry | undefined;
  let node: TestNode | undefined;
  let image: Awaited<ReturnType<typeof pushToDistribution>>;

  before(async () => {
    seed = await startDockerRegistry();
    image = await pushToDistribution(seed.url, 'library/app', 'v1');
    // Only `seeds` (what --seed sets), no `registries`: as a user starts a node from the README.
    node = await startTestNode({ config: { seeds: [{ url: seed.url }], tagTimeoutMs: 1_000 } });
  });

  after(async () => {
    await node?.stop();
    await seed?.stop();
  });

  it('answers the tag, manifest and blobs asked with ?ns=<host of the seed>, from the seed', async () => {
    const ns = `?ns=${encodeURIComponent(seed!.hostPort)}`;
    const m = await request(node!.url, 'GET', `/v2/library/app/manifests/v1${ns}`, { headers: { accept: ACCEPT } });
    assert.equal(m.status, 200, `manifest by tag with ${ns}: ${m.status} ${m.text()}`);
    assert.equal(m.headers.get('docker-content-digest'), image.digest);
    for (const d of [image.config, ...image.layers]) {
      const b = await request(node!.url, 'GET', `/v2/library/app/blobs/${d.digest}${ns}`);
      assert.equal(b.status, 200, `blob ${d.digest}: ${b.status}`);
      assert.equal(b.body.length, d.size);
    }
  });

  it('keeps serving them once the seed is gone: they were cached under the registry\'s name', async () => {
    await seed!.stop();
    const ns = `?ns=${encodeURIComponent(seed!.hostPort)}`;
    const m = await request(node!.url, 'GET', `/v2/library/app/manifests/v1${ns}`, { headers: { accept: ACCEPT } });
    assert.equal(m.status, 200, `${m.status} ${m.text()}`);
    assert.equal(m.headers.get('docker-content-digest'), image.digest);
    for (const d of image.layers) assert.equal((await request(node!.url, 'GET', `/v2/library/app/blobs/${d.digest}${ns}`)).status, 200);
    const stored = `${seed!.hostPort.replace(':', '-')}/library/app`;
    assert.equal(await node!.node.store.resolveTag(stored, 'v1'), image.digest, `kept under ${stored}, as containerd's pulls are`);
  });

  it('still answers 404 for a registry it has no seed for', async () => {
    const r = await request(node!.url, 'GET', '/v2/library/app/manifests/v1?ns=elsewhere.example', { headers: { accept: ACCEPT } });
    assert.equal(r.status, 404);
  });
});

describe('a seed that refuses the node\'s credentials', { concurrency: 1 }, () => {
  let seed: DockerRegistry | undefined;
  let node: TestNode | undefined;

  before(async () => {
    seed = await startDockerRegistry({ users: [{ username: HTPASSWD_USER, bcryptHash: HTPASSWD_BCRYPT }] });
    node = await startTestNode({
      config: { registries: { 'wrong.example': [{ url: seed.url, username: HTPASSWD_USER, password: 'not-the-password' }], 'anonymous.example': [{ url: seed.url }] } },
    });
  });

  after(async () => {
    await node?.stop();
    await seed?.stop();
  });

  it('is a 403 DENIED for the client that names the seed\'s credentials; no 401 goes out without a challenge', async () => {
    for (const ns of ['wrong.example', 'anonymous.example']) {
      for (const [method, path] of [
        ['GET', '/v2/team/app/manifests/v1'],
        ['HEAD', '/v2/team/app/manifests/v1'],
        ['GET', `/v2/team/app/blobs/sha256:${'a'.repeat(64)}`],
      ] as const) {
        const res = await fetch(`${node!.url}${path}?ns=${ns}`, { method, headers: { accept: ACCEPT }, signal: AbortSignal.timeout(15_000) });
        const text = await res.text();
        if (res.status === 401) assert.ok(res.headers.get('www-authenticate'), `${method} ${path}?ns=${ns}: a 401 must carry WWW-Authenticate`);
        assert.equal(res.status, 403, `${method} ${path}?ns=${ns}: ${res.status} ${text.slice(0, 300)}`);
        if (method === 'GET') {
          const err = (JSON.parse(text) as { errors: Array<{ code: string; message: string }> }).errors[0]!;
          assert.equal(err.code, 'DENIED');
          assert.match(err.message, new RegExp(`seed registry ${seed!.url.replace(/[.]/g, '\\.')}`), 'names the seed');
          assert.match(err.message, /username and password|configure a username/, `says what to fix: ${err.message}`);
        }
      }
    }
  });
});

describe("GET /shoal/status names the node's seeds (what containerd-config takes schemes from)", () => {
  it('by URL, without credentials', async () => {
    const node = await startTestNode({ config: { seeds: [{ url: 'http://127.0.0.1:1' }], registries: { 'r.example': [{ url: 'https://r.example:8443', username: 'bob', password: 'secret' }] } } });
    try {
      const res = await request(node.url, 'GET', '/shoal/status');
      assert.deepEqual(res.json<{ seeds: unknown }>().seeds, { default: ['http://127.0.0.1:1'], registries: { 'r.example': ['https://r.example:8443'] } });
      assert.doesNotMatch(res.text(), /secret|bob/);
    } finally {
      await node.stop();
    }
  });
});

describe('shoal inventory --node lists everything the node holds', { concurrency: 1 }, () => {
  let node: TestNode | undefined;
  let work = '';
  const held: { tagged?: Awaited<ReturnType<typeof makeImage>>; untagged?: Awaited<ReturnType<typeof makeImage>>; lone?: string } = {};

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'shoal-inventory-'));
    node = await startTestNode({ dataDir: join(work, 'data') });
    held.tagged = await makeImage(node.url, 'team/app', { tag: 'v1' });
    // Pulled or pushed by digest: no tag names it.
    held.untagged = await makeImage(node.url, 'team/app', { layers: 3 });
    held.lone = await pushBlob(node.url, 'team/blobs', randomBlob(5_000));
  });

  after(async () => {
    await node?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  /** Runs `shoal inventory` with the given source flags; returns the file's blobs and images. */
  async function inventory(args: string[], file: string): Promise<{ blobs: Set<string>; images: Record<string, string> }> {
    const r = await runShoal(['inventory', ...args, '-o', file]);
    assert.equal(r.code, 0, `exit ${r.code}: ${r.stderr}`);
    const inv = JSON.parse(await readFile(file, 'utf8')) as { blobs: Array<{ digest: string }>; images: Record<string, string> };
    return { blobs: new Set(inv.blobs.map((b) => b.digest)), images: inv.images };
  }

  it('with --node: the tagged image, the untagged one and a blob pushed alone', async () => {
    const { blobs, images } = await inventory(['--node', node!.url], join(work, 'node.json'));
    for (const img of [held.tagged!, held.untagged!]) for (const d of [img.config, ...img.layers]) assert.ok(blobs.has(d.digest), `lists ${d.digest}`);
    assert.ok(blobs.has(held.lone!), 'lists the blob pushed alone');
    assert.equal(images['team/app:v1'], held.tagged!.digest);
    assert.equal(images[`team/app@${held.untagged!.digest}`], held.untagged!.digest, `names the untagged image: ${JSON.stringify(images)}`);
    assert.ok(!blobs.has(held.tagged!.digest) && !blobs.has(held.untagged!.digest), 'manifests are not listed as blobs');
  });

  it('with --data on the stopped node: the same', async () => {
    const viaNode = await inventory(['--node', node!.url], join(work, 'node2.json'));
    await node!.stop();
    const viaData = await inventory(['--data', join(work, 'data')], join(work, 'data.json'));
    node = undefined;
    assert.deepEqual([...viaData.blobs].sort(), [...viaNode.blobs].sort());
    assert.deepEqual(viaData.images, viaNode.images);
  });
});

describe('tag warnings', { concurrency: 1 }, () => {
  const procs = new ShoalProcesses();
  let node: ShoalProcess | undefined;
  let seedless: ShoalProcess | undefined;

  before(async () => {
    node = await procs.serve({ dataDir: await procs.tempDir(), logLevel: 'info' });
    // A node whose seed never answers: a real fallback.
    const deadSeed = `http://127.0.0.1:${await freePort()}`;
    seedless = await procs.serve({ dataDir: await procs.tempDir(), logLevel: 'info', args: ['--seed', deadSeed] });
  });

  after(() => procs.cleanup());

  it('a tag of a pushed repository (no seed by design) resolves 50 times without one warning', async () => {
    const img = await makeImage(node!.url, 'team/app', { tag: 'v1' });
    const from = node!.logs.length;
    for (let i = 0; i < 50; i++) {
      const r = await request(node!.url, 'GET', '/v2/team/app/manifests/v1', { headers: { accept: ACCEPT } });
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('docker-content-digest'), img.digest);
    }
    // Each request's log line is written when its response ends: wait for all 50 GETs (the push's PUT of the same
    // path can reach the log after `from` was taken).
    const logged = (): number => node!.logs.slice(from).filter((l) => l.msg === 'request' && l.method === 'GET' && l.path === '/v2/team/app/manifests/v1').length;
    await waitFor('the 50 request log lines', () => logged() === 50 || `${logged()} so far`);
    const warnings = node!.logs.slice(from).filter((l) => (l.level ?? 0) >= 40);
    assert.deepEqual(warnings, [], 'no warning for the normal path');
  });

  it('a seed that does not answer is still a warning (a real fallback)', async () => {
    const img = await makeImage(seedless!.url, 'team/app', { tag: 'v1' });
    const from = seedless!.logs.length;
    const r = await request(seedless!.url, 'GET', '/v2/team/app/manifests/v1', { headers: { accept: ACCEPT } });
    assert.equal(r.status, 200, r.text());
    assert.equal(r.headers.get('docker-content-digest'), img.digest);
    const warn = await seedless!.waitForLog((l) => (l.level ?? 0) === 40 && l.tag === 'v1' && l.seed === 'unreachable', { from });
    assert.match(String(warn.msg), /seed unreachable/);
  });
});

describe('a cluster key of 64 hex characters', { concurrency: 1 }, () => {
  let work = '';
  const nodes: TestNode[] = [];

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'shoal-hexkey-'));
  });

  after(async () => {
    await Promise.allSettled(nodes.map((n) => n.stop()));
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('joins the cluster of a node whose key file has the same key in the private-network format', async () => {
    const pskFile = join(work, 'cluster.key');
    await writeClusterKey(pskFile);
    const hex = (await readFile(pskFile, 'utf8')).trim().split('\n')[2]!;
    const hexFile = join(work, 'pasted.key');
    await writeFile(hexFile, `${hex}\n`); // what a user pastes into a Secret
    const portA = await freePort();
    nodes.push(await startTestNode({ config: { p2pListen: `127.0.0.1:${portA}`, clusterKeyFile: pskFile } }));
    nodes.push(await startTestNode({ config: { p2pListen: `127.0.0.1:${await freePort()}`, clusterKeyFile: hexFile, peers: [`127.0.0.1:${portA}`] } }));
    await waitFor('the two nodes to connect', async () => (await peersOf(nodes[0]!.url)).peers.length === 1 && (await peersOf(nodes[1]!.url)).peers.length === 1, 30_000);
  });

  it('a key in neither form is refused with a message that shows both', async () => {
    const bad = join(work, 'bad.key');
    await writeFile(bad, 'not-a-key\n');
    await assert.rejects(startTestNode({ config: { p2pListen: `127.0.0.1:${await freePort()}`, clusterKeyFile: bad } }), (err: Error) => {
      assert.match(err.message, /private-network key/);
      assert.match(err.message, /64 hex characters/);
      assert.match(err.message, /shoal cluster-key --out/);
      return true;
    });
  });
});
