/**
 * The README's first steps with containerd, as a new user takes them: `shoal serve --seed http://R` (a plain-HTTP
 * registry, no `registries` setting), then `shoal containerd-config --registry R` without a URL. The node must
 * serve containerd's `?ns=R` requests from that seed, and containerd-config must take R's scheme (http) from the
 * node's seeds. Both failed before: containerd got a 404 from the node and went to `https://R` itself, so the
 * pull failed, and nothing was cached for when R is gone.
 *
 * Real containerd (isolated in a temp dir, test/helpers/containerd.ts), the real distribution registry as R, the
 * node and the CLI spawned as a user runs them.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { buildImageLayout, type ImageLayout } from '../fixtures/images.ts';
import { startContainerd, type Containerd } from '../helpers/containerd.ts';
import { startDockerRegistry, type DockerRegistry } from '../helpers/seed-registry.ts';
import { ShoalProcesses, runShoal, type ShoalProcess } from '../helpers/spawn-node.ts';
import { cleanUp } from '../helpers/cleanup.ts';

const execFileP = promisify(execFile);

describe('containerd through `shoal serve --seed http://R` and `shoal containerd-config --registry R`', { concurrency: 1 }, () => {
  const procs = new ShoalProcesses();
  let work = '';
  let layout: ImageLayout;
  let seed: DockerRegistry | undefined;
  let node: ShoalProcess | undefined;
  let containerd: Containerd | undefined;
  let hostsDir = '';
  let ref = '';

  const amd64 = () => layout.multi.manifests.find((m) => m.platform?.architecture === 'amd64')!;
  const pull = () => containerd!.ctrOk(['images', 'pull', '--hosts-dir', hostsDir, '--platform', 'linux/amd64', '--snapshotter', 'native', ref], { timeoutMs: 60_000 });

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'shoal-ctrs-'));
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
    node = await procs.serve({ dataDir: await procs.tempDir(), args: ['--seed', seed.url] });
    ref = `${seed.hostPort}/library/app:v1`;
    hostsDir = join(work, 'certs.d');
    await mkdir(join(work, 'c'));
    containerd = await startContainerd(join(work, 'c'));
  });

  after(async () => {
    await cleanUp('containerd seed test', [() => containerd?.stop(), () => procs.cleanup(), () => seed?.stop(), () => (work ? rm(work, { recursive: true, force: true, maxRetries: 3 }) : undefined)]);
  });

  it('containerd-config takes http:// for R from the running node\'s seeds, without a warning', async () => {
    const r = await runShoal(['containerd-config', '--registry', seed!.hostPort, '--mirror', node!.url, '--out', hostsDir]);
    assert.equal(r.code, 0, `exit ${r.code}: ${r.stderr}`);
    assert.doesNotMatch(r.stderr, /warning/, r.stderr);
    const text = await readFile(join(hostsDir, seed!.hostPort, 'hosts.toml'), 'utf8');
    assert.match(text, new RegExp(`^server = "${seed!.url}"$`, 'm'), text);
  });

  it('ctr pulls through the node, which fetches from its --seed for ?ns=R', async () => {
    await pull();
    assert.ok((await containerd!.ctrOk(['images', 'ls'])).includes(layout.multi.digest));
    const served = node!.logs.filter((l) => l.msg === 'request' && typeof l.path === 'string' && l.path.startsWith('/v2/library/app/') && l.status === 200);
    assert.ok(served.length >= 2 + amd64().layers.length, `the node answered containerd: ${served.length} requests with 200`);
  });

  it('with R stopped and containerd\'s copy removed, ctr pulls again, from the node', async () => {
    await seed!.stop();
    await containerd!.ctrOk(['images', 'rm', '--sync', ref]);
    const leftover = (await containerd!.ctrOk(['content', 'ls', '-q'])).split('\n').map((l) => l.trim()).filter(Boolean);
    if (leftover.length > 0) await containerd!.ctrOk(['content', 'rm', ...leftover]);
    await pull();
    const content = await containerd!.ctrOk(['content', 'ls', '-q']);
    for (const b of [amd64().config, ...amd64().layers]) assert.ok(content.includes(b.digest), `containerd has ${b.digest} again`);
  });
});
