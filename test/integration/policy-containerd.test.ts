/**
 * A real containerd (`ctr --hosts-dir`) pulling through a node that enforces a signature policy: a signed image
 * pulls; an unsigned one is refused by the node. While the upstream registry is reachable, containerd goes on to it
 * after the node's 403 (a mirror's 4xx is not final for containerd); once the upstream is gone (the air-gapped
 * case), the pull fails, and the node's log says why.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildImageLayout, type ImageLayout } from '../fixtures/images.ts';
import { startContainerd, type Containerd } from '../helpers/containerd.ts';
import { generateSigningKey, pushSignature, sigTag, writePublicKey } from '../helpers/cosign.ts';
import { startDockerRegistry, type DockerRegistry } from '../helpers/seed-registry.ts';
import { ShoalProcesses, runShoal, type ShoalProcess } from '../helpers/spawn-node.ts';
import { cleanUp } from '../helpers/cleanup.ts';
import { skopeoIn } from '../helpers/skopeo.ts';

describe('containerd through a node that enforces a signature policy', { concurrency: 1 }, () => {
  const procs = new ShoalProcesses();
  let work = '';
  let layout: ImageLayout;
  let seed: DockerRegistry | undefined;
  let node: ShoalProcess | undefined;
  let containerd: Containerd | undefined;
  let hostsDir = '';

  const ref = (repo: string) => `${seed!.hostPort}/${repo}:v1`;
  const pull = (repo: string) => containerd!.ctr(['images', 'pull', '--hosts-dir', hostsDir, '--platform', 'linux/amd64', '--snapshotter', 'native', ref(repo)], { timeoutMs: 90_000 });
  const forget = async (repo: string) => {
    await containerd!.ctr(['images', 'rm', '--sync', ref(repo)]);
    const leftover = (await containerd!.ctrOk(['content', 'ls', '-q'])).split('\n').map((l) => l.trim()).filter(Boolean);
    if (leftover.length > 0) await containerd!.ctrOk(['content', 'rm', ...leftover]);
  };

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'shoal-policy-ctr-'));
    layout = await buildImageLayout(join(work, 'layout'));
    seed = await startDockerRegistry();
    const skopeo = await skopeoIn(join(work, 'skopeo'));
    for (const repo of ['apps/signed', 'apps/unsigned']) {
      await skopeo('copy', '--all', '--retry-times', '0', '--dest-tls-verify=false', `oci:${layout.dir}:multi`, `docker://${seed.hostPort}/${repo}:v1`);
    }
    const key = generateSigningKey('ecdsa');
    await pushSignature(seed.url, 'apps/signed', sigTag(key, layout.multi.digest, { reference: `${seed.hostPort}/apps/signed` }));
    await writePublicKey(work, 'release.pub', key);
    const policy = join(work, 'policy.json');
    await writeFile(policy, JSON.stringify({ default: [{ type: 'reject' }], transports: { docker: { [seed.hostPort]: [{ type: 'sigstoreSigned', keyPath: 'release.pub' }] } } }));
    node = await procs.serve({ dataDir: await procs.tempDir(), args: ['--seed', seed.url, '--policy', policy] });
    hostsDir = join(work, 'certs.d');
    const cfg = await runShoal(['containerd-config', '--registry', seed.hostPort, '--mirror', node.url, '--out', hostsDir]);
    assert.equal(cfg.code, 0, cfg.stderr);
    await mkdir(join(work, 'c'));
    containerd = await startContainerd(join(work, 'c'));
  });

  after(async () => {
    await cleanUp('policy containerd test', [() => containerd?.stop(), () => procs.cleanup(), () => seed?.stop(), () => (work ? rm(work, { recursive: true, force: true, maxRetries: 3 }) : undefined)]);
  });

  it('pulls the signed image through the node', async () => {
    const r = await pull('apps/signed');
    assert.equal(r.code, 0, r.stderr);
    const served = node!.logs.filter((l) => l.msg === 'request' && typeof l.path === 'string' && l.path.startsWith('/v2/apps/signed/') && l.status === 200);
    assert.ok(served.length >= 3, `the node served containerd the index, the platform manifest and blobs (${served.length} answers)`);
    assert.ok(node!.logs.some((l) => l.msg === 'signature policy: allowed' && l.reason === 'signed'));
  });

  it('while the upstream is reachable, containerd goes past the node\'s 403 to it (the node\'s word is not final)', async () => {
    const r = await pull('apps/unsigned');
    assert.equal(r.code, 0, r.stderr);
    const refused = node!.logs.find((l) => l.msg === 'request' && typeof l.path === 'string' && l.path.startsWith('/v2/apps/unsigned/manifests/v1') && l.status === 403);
    assert.ok(refused, 'the node refused the unsigned image');
  });

  it('with no upstream reachable, the unsigned image does not pull, and the node\'s log says why; the signed one still pulls', async () => {
    await seed!.stop();
    await forget('apps/unsigned');
    const from = node!.logs.length;
    const r = await pull('apps/unsigned');
    assert.notEqual(r.code, 0, 'the pull failed');
    const reason = node!.logs.slice(from).find((l) => typeof l.msg === 'string' && l.msg.startsWith('signature policy: refused:'));
    assert.ok(reason, 'the node logged the refusal');
    assert.match(String(reason.msg), /apps\/unsigned@sha256:[0-9a-f]{64} is refused by rule transports\.docker\[".*"\]: no signature was found/);
    await forget('apps/signed');
    const ok = await pull('apps/signed');
    assert.equal(ok.code, 0, ok.stderr);
  });
});
