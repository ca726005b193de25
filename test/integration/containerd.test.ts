/**
 * containerd pulls through a Shoal node, configured the way an operator would: `shoal containerd-config`
 * writes hosts.toml for the registry, and `ctr images pull --hosts-dir` (containerd 1.6's resolver, the same
 * one the CRI plugin uses) sends its requests to the node with `?ns=<registry>`. The seed is the real
 * distribution registry; after it is stopped and containerd's own copy removed, containerd pulls again, from
 * the node's store.
 *
 * The daemon runs isolated in a temp dir (test/helpers/containerd.ts). If containerd cannot run here, the
 * suite fails with containerd's own words; it is never skipped.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { buildImageLayout, type ImageLayout } from '../fixtures/images.ts';
import { startContainerd, type Containerd } from '../helpers/containerd.ts';
import { scrape, type Metrics } from '../helpers/metrics.ts';
import { startTestNode, type TestNode } from '../helpers/node.ts';
import { startDockerRegistry, type DockerRegistry } from '../helpers/seed-registry.ts';
import { runShoal } from '../helpers/spawn-node.ts';
import { cleanUp } from '../helpers/cleanup.ts';

const execFileP = promisify(execFile);

const delta = (before: Metrics, afterwards: Metrics, name: string, labels: Record<string, string> = {}): number => afterwards.get(name, labels) - before.get(name, labels);

describe('containerd pulls through a Shoal node configured by `shoal containerd-config`', { concurrency: 1 }, () => {
  let work = '';
  let layout: ImageLayout;
  let seed: DockerRegistry | undefined;
  let node: TestNode | undefined;
  let containerd: Containerd | undefined;
  let hostsDir = '';
  let ref = '';
  let storeRepository = '';

  /** The linux/amd64 image of the fixture's multi-arch index: what containerd fetches with --platform linux/amd64. */
  const amd64 = () => layout.multi.manifests.find((m) => m.platform?.architecture === 'amd64')!;
  const amd64Blobs = () => [amd64().config, ...amd64().layers];

  const pull = () => containerd!.ctrOk(['images', 'pull', '--hosts-dir', hostsDir, '--platform', 'linux/amd64', '--snapshotter', 'native', ref], { timeoutMs: 60_000 });

  /** Digests in containerd's content store. */
  async function contentDigests(): Promise<Set<string>> {
    const out = await containerd!.ctrOk(['content', 'ls', '-q']);
    return new Set(out.split('\n').map((l) => l.trim()).filter(Boolean));
  }

  before(async () => {
    // Short: containerd's socket path must stay under the unix socket limit.
    work = await mkdtemp(join(tmpdir(), 'shoal-ctrd-'));
    layout = await buildImageLayout(join(work, 'layout'));
    seed = await startDockerRegistry();
    const policy = join(work, 'policy.json');
    await writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
    await mkdir(join(work, 'tmp'));
    await execFileP(
      'skopeo',
      ['--policy', policy, 'copy', '--all', '--retry-times', '0', '--dest-tls-verify=false', `oci:${layout.dir}:multi`, `docker://${seed.hostPort}/library/app:v1`],
      { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: work, TMPDIR: join(work, 'tmp') }, timeout: 60_000 },
    );
    // The node mirrors the seed's registry under its own name, as containerd will ask for it with ?ns=.
    node = await startTestNode({ config: { registries: { [seed.hostPort]: [{ url: seed.url }] }, tagTimeoutMs: 1_000 } });
    storeRepository = `${seed.hostPort.replace(':', '-')}/library/app`;
    ref = `${seed.hostPort}/library/app:v1`;
    hostsDir = join(work, 'certs.d');
    await mkdir(join(work, 'c'));
    containerd = await startContainerd(join(work, 'c'));
  });

  after(async () => {
    await cleanUp('containerd test', [() => containerd?.stop(), () => node?.stop(), () => seed?.stop(), () => (work ? rm(work, { recursive: true, force: true, maxRetries: 3 }) : undefined)]);
  });

  it('`shoal containerd-config` writes hosts.toml for the registry with the node as its mirror', async () => {
    const r = await runShoal(['containerd-config', '--registry', `${seed!.hostPort}=${seed!.url}`, '--mirror', node!.url, '--out', hostsDir]);
    assert.equal(r.code, 0, `exit ${r.code}: ${r.stderr}`);
    const file = join(hostsDir, seed!.hostPort, 'hosts.toml');
    assert.match(r.stdout, new RegExp(`wrote ${file.replace(/[.]/g, '\\.')}`));
    const text = await readFile(file, 'utf8');
    assert.match(text, new RegExp(`^server = "${seed!.url}"$`, 'm'));
    assert.match(text, new RegExp(`^\\[host\\."${node!.url}"\\]$`, 'm'));
  });

  it('ctr pulls the image through the node: containerd asks with ?ns=, the node fetches from the seed', async () => {
    const before = await scrape(node!.url);
    await pull();
    const afterwards = await scrape(node!.url);

    // containerd has the image, by the index digest the seed has.
    const images = await containerd!.ctrOk(['images', 'ls']);
    const line = images.split('\n').find((l) => l.startsWith(ref + ' '));
    assert.ok(line, `${ref} in\n${images}`);
    assert.ok(line.includes(layout.multi.digest), `the image is ${layout.multi.digest}: ${line}`);
    const content = await contentDigests();
    for (const b of amd64Blobs()) assert.ok(content.has(b.digest), `containerd has ${b.digest}`);

    // Everything came through the node: manifests and blobs asked of it, the blobs fetched from the seed once.
    assert.ok(delta(before, afterwards, 'shoal_http_requests_total', { route: 'manifest', status: '200' }) >= 3, 'index (HEAD and GET) and the amd64 manifest');
    assert.ok(delta(before, afterwards, 'shoal_http_requests_total', { route: 'blob', status: '200' }) >= amd64Blobs().length);
    assert.ok(delta(before, afterwards, 'shoal_pull_bytes_total', { source: 'seed' }) > 0);
    const blobBytes = amd64Blobs().reduce((n, b) => n + b.size, 0);
    assert.equal(delta(before, afterwards, 'shoal_seed_bytes_total', { registry: seed!.hostPort }), blobBytes, 'the seed sent each amd64 blob once, for the ns= registry');
    assert.ok(delta(before, afterwards, 'shoal_served_bytes_total', { kind: 'blob' }) >= blobBytes);
    // ...and the node keeps them under the namespaced repository.
    assert.equal(await node!.node.store.resolveTag(storeRepository, 'v1'), layout.multi.digest);
    for (const b of amd64Blobs()) assert.ok(await node!.node.store.statBlob(storeRepository, b.digest), `node holds ${b.digest}`);
  });

  it('with the seed stopped and containerd\'s copy removed, ctr pulls again, from the node\'s store', async () => {
    await seed!.stop();
    await containerd!.ctrOk(['images', 'rm', '--sync', ref]);
    // Whatever gc left (nothing, normally) goes too: containerd must fetch every byte again.
    const leftover = [...(await contentDigests())];
    if (leftover.length > 0) await containerd!.ctrOk(['content', 'rm', ...leftover]);
    assert.equal((await contentDigests()).size, 0, 'containerd holds no content');
    assert.equal((await containerd!.ctrOk(['images', 'ls', '-q'])).trim(), '');

    const before = await scrape(node!.url);
    const started = Date.now();
    await pull();
    const ms = Date.now() - started;
    const afterwards = await scrape(node!.url);

    const content = await contentDigests();
    for (const b of amd64Blobs()) assert.ok(content.has(b.digest), `containerd has ${b.digest} again`);
    assert.ok((await containerd!.ctrOk(['images', 'ls'])).includes(layout.multi.digest));
    // The seed is gone: only the node can have answered, from its store, with the tag from its cache.
    assert.equal(delta(before, afterwards, 'shoal_seed_bytes_total'), 0);
    assert.equal(delta(before, afterwards, 'shoal_pull_bytes_total', { source: 'seed' }), 0);
    assert.ok(delta(before, afterwards, 'shoal_pull_bytes_total', { source: 'local' }) >= amd64Blobs().reduce((n, b) => n + b.size, 0));
    assert.ok(delta(before, afterwards, 'shoal_tag_resolutions_total', { via: 'cache' }) >= 1);
    process.stdout.write(`# second ctr pull with the seed stopped took ${ms} ms\n`);
  });

  it('`shoal containerd-config --restore` removes the file it wrote', async () => {
    const file = join(hostsDir, seed!.hostPort, 'hosts.toml');
    const r = await runShoal(['containerd-config', '--restore', '--registry', seed!.hostPort, '--out', hostsDir]);
    assert.equal(r.code, 0, `exit ${r.code}: ${r.stderr}`);
    assert.match(r.stdout, /^removed: /m);
    await assert.rejects(stat(file), { code: 'ENOENT' });
    await assert.rejects(stat(join(hostsDir, seed!.hostPort)), { code: 'ENOENT' }, 'the empty host directory is gone too');
    // Without its hosts.toml, containerd goes to the registry itself (stopped now): the mirror is really out of the way.
    await containerd!.ctrOk(['images', 'rm', '--sync', ref]);
    const again = await containerd!.ctr(['images', 'pull', '--hosts-dir', hostsDir, '--platform', 'linux/amd64', '--snapshotter', 'native', ref], { timeoutMs: 30_000 });
    assert.notEqual(again.code, 0, 'containerd no longer pulls through the node');
  });
});
