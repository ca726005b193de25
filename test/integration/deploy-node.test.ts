/**
 * The DaemonSet on one node, as far as this machine can run it (no kubelet can run here): each container's exact
 * command from deploy/daemonset.yaml, its volumes as directories (the hostPaths under a temp "host" root, the
 * ConfigMap and the Secret as files with the modes Kubernetes gives them), in a network namespace of its own, so
 * that the node has 127.0.0.1:5000 to itself as on a Kubernetes node. A real containerd in that namespace pulls
 * with the hosts.toml the init container wrote. Then the uninstall DaemonSet's exact command puts the host back.
 *
 * What is not the DaemonSet's own: the seed (distribution, in the namespace on 127.0.0.1:5050, named with
 * SHOAL_SEEDS, as the ConfigMap's docker.io is not reachable here) and the path of the cluster key file
 * (SHOAL_CLUSTER_KEY_FILE: the ConfigMap names /etc/shoal/key/cluster.key, the mount path).
 *
 * Needs root (ip netns, setpriv to run the node as the DaemonSet's user). Fails, saying why, when it cannot.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, chown, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildImageLayout, type ImageLayout } from '../fixtures/images.ts';
import { CONTAINERD_BIN, CTR_BIN, containerdConfig } from '../helpers/containerd.ts';
import { DEPLOY, loadYamlDir, type K8sObject } from '../helpers/deploy.ts';
import { NetnsLab, type NsProcess } from '../helpers/netns.ts';
import { DOCKER_REGISTRY_BIN, dockerRegistryConfig } from '../helpers/seed-registry.ts';
import { skopeoIn } from '../helpers/skopeo.ts';
import { SHOAL_BIN } from '../helpers/spawn-node.ts';
import { writeClusterKey } from '../../src/p2p/keys.ts';

interface Container {
  name: string;
  args?: string[];
  command?: string[];
  volumeMounts?: Array<{ name: string; mountPath: string }>;
  securityContext?: { runAsUser?: number; runAsGroup?: number };
}
interface Volume {
  name: string;
  hostPath?: { path: string };
  configMap?: { name: string };
  secret?: { secretName: string; defaultMode?: number; items?: Array<{ key: string; path: string }> };
  emptyDir?: object;
}
interface PodSpec {
  initContainers?: Container[];
  containers: Container[];
  volumes: Volume[];
  securityContext?: { fsGroup?: number };
}
type DaemonSet = K8sObject & { spec: { template: { spec: PodSpec } } };

const SEED = '127.0.0.1:5050';

/** Every file under `dir` with its bytes (relative path -> text), for before/after comparisons. */
async function tree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    const full = join(e.parentPath, e.name);
    const rel = full.slice(dir.length + 1);
    out[rel] = e.isFile() ? await readFile(full, 'utf8') : '<dir>';
  }
  return out;
}

describe('the DaemonSet on one node: init containers, the node, containerd, then the uninstall', { concurrency: 1 }, () => {
  const lab = new NetnsLab('shdepl');
  let work = '';
  let ns = '';
  let install: DaemonSet;
  let undo: DaemonSet;
  let configMap: K8sObject & { data: Record<string, string> };
  let layout: ImageLayout;
  let node: NsProcess | undefined;
  let containerdSocket = '';
  const procs: NsProcess[] = [];
  let certsBefore: Record<string, string> = {};

  /** Where each volume of a pod is in this test: hostPaths below `<work>/host`, others in `<work>/volumes`. */
  const volumeDir = (v: Volume): string => (v.hostPath ? join(work, 'host', v.hostPath.path) : join(work, 'volumes', v.name));

  /** A container's argv with every path under one of its mounts moved to where that volume is here. */
  function argv(pod: PodSpec, c: Container): string[] {
    const mounts = (c.volumeMounts ?? []).map((m) => [m.mountPath, volumeDir(pod.volumes.find((v) => v.name === m.name)!)] as const).sort((a, b) => b[0].length - a[0].length);
    const map = (a: string): string => {
      for (const [path, dir] of mounts) if (a === path || a.startsWith(`${path}/`)) return dir + a.slice(path.length);
      return a;
    };
    // The image's entry point is `shoal` (node bin/shoal.js); `command` replaces it.
    return c.command ? c.command.map(map) : [process.execPath, SHOAL_BIN, ...(c.args ?? []).map(map)];
  }

  const initContainer = (ds: DaemonSet, name: string): Container => {
    const c = ds.spec.template.spec.initContainers?.find((x) => x.name === name);
    assert.ok(c, `init container ${name}`);
    return c;
  };

  /** Runs a container's command to completion in the namespace, as its user. */
  async function runContainer(ds: DaemonSet, c: Container): Promise<string> {
    const user = c.securityContext?.runAsUser ?? 0;
    const group = c.securityContext?.runAsGroup ?? user;
    const cmd = argv(ds.spec.template.spec, c);
    const r = await lab.exec(ns, 'setpriv', [`--reuid=${user}`, `--regid=${group}`, '--clear-groups', ...cmd], { timeoutMs: 120_000 });
    return r.stdout;
  }

  async function curl(url: string): Promise<{ status: number; body: string }> {
    const { stdout } = await lab.exec(ns, 'curl', ['-sS', '--max-time', '10', '-w', '\n%{http_code}', url]);
    const at = stdout.lastIndexOf('\n');
    return { status: Number(stdout.slice(at + 1)), body: stdout.slice(0, at) };
  }

  // ctr resolves and fetches itself (containerd 1.6): it runs in the namespace too.
  const ctr = (args: string[], timeoutMs = 90_000) => lab.exec(ns, CTR_BIN, ['--address', containerdSocket, ...args], { timeoutMs });

  before(async () => {
    const objects = await loadYamlDir(DEPLOY);
    install = objects.map((s) => s.object).find((o): o is DaemonSet => o.kind === 'DaemonSet')!;
    configMap = objects.map((s) => s.object).find((o) => o.kind === 'ConfigMap') as typeof configMap;
    undo = (await loadYamlDir(join(DEPLOY, 'uninstall'))).map((s) => s.object).find((o): o is DaemonSet => o.kind === 'DaemonSet')!;

    await lab.checkPermitted();
    await lab.removeLeftovers();
    await lab.createBridge();
    ns = await lab.addHost('node', '10.233.12.11/24');

    // Short: containerd's socket path must stay under the unix socket limit. Readable by the node's user.
    work = await mkdtemp(join(tmpdir(), 'shdep-'));
    await chmod(work, 0o755);
    const pod = install.spec.template.spec;
    for (const v of pod.volumes) await mkdir(volumeDir(v), { recursive: true });
    // The ConfigMap's files (0644) and the Secret's (defaultMode, group fsGroup), as the kubelet writes them.
    const config = pod.volumes.find((v) => v.configMap)!;
    for (const [k, text] of Object.entries(configMap.data)) await writeFile(join(volumeDir(config), k), text, { mode: 0o644 });
    const secret = pod.volumes.find((v) => v.secret)!;
    const keyFile = join(volumeDir(secret), secret.secret!.items![0]!.path);
    await writeClusterKey(keyFile);
    await chown(keyFile, 0, pod.securityContext!.fsGroup!);
    await chmod(keyFile, secret.secret!.defaultMode!);
    // An operator's own hosts.toml for docker.io, there before Shoal: kept as a backup, restored on uninstall.
    const certs = volumeDir(pod.volumes.find((v) => v.hostPath?.path === '/etc/containerd/certs.d')!);
    await mkdir(join(certs, 'docker.io'), { recursive: true });
    await writeFile(join(certs, 'docker.io', 'hosts.toml'), 'server = "https://registry-1.docker.io"\n\n[host."https://mirror.example"]\n  capabilities = ["pull"]\n');
    certsBefore = await tree(certs);

    // The seed, in the namespace, with the fixture image.
    layout = await buildImageLayout(join(work, 'layout'));
    const seedDir = join(work, 'seed');
    await mkdir(seedDir);
    await writeFile(join(seedDir, 'config.yml'), dockerRegistryConfig(join(seedDir, 'data'), SEED).join('\n') + '\n');
    procs.push(lab.spawn(ns, DOCKER_REGISTRY_BIN, ['serve', join(seedDir, 'config.yml')]));
    const skopeo = await skopeoIn(join(work, 'skopeo'), { prefix: ['ip', 'netns', 'exec', ns] });
    for (let i = 0; ; i++) {
      try {
        await skopeo('copy', '--all', '--retry-times', '0', '--dest-tls-verify=false', `oci:${layout.dir}:multi`, `docker://${SEED}/library/app:v1`);
        break;
      } catch (err) {
        if (i > 50) throw err;
        await new Promise((ok) => setTimeout(ok, 200));
      }
    }

    // containerd, in the namespace.
    const cdir = join(work, 'c');
    await mkdir(join(cdir, 'root'), { recursive: true });
    await mkdir(join(cdir, 'state'), { recursive: true });
    await writeFile(join(cdir, 'config.toml'), containerdConfig(cdir));
    containerdSocket = join(cdir, 'containerd.sock');
    procs.push(lab.spawn(ns, CONTAINERD_BIN, ['--config', join(cdir, 'config.toml')]));
    for (let i = 0; ; i++) {
      try {
        await ctr(['version'], 5_000);
        break;
      } catch (err) {
        if (i > 200) throw err;
        await new Promise((ok) => setTimeout(ok, 100));
      }
    }
  });

  after(async () => {
    await lab.cleanup();
    if (work) await rm(work, { recursive: true, force: true, maxRetries: 3 });
  });

  it("the containerd-config init container's command writes hosts.toml for the ConfigMap's registries and _default", async () => {
    const out = await runContainer(install, initContainer(install, 'containerd-config'));
    const certs = join(work, 'host', 'etc/containerd/certs.d');
    assert.deepEqual((await readdir(certs)).sort(), ['_default', 'docker.io']);
    assert.match(out, /previous file kept as .*docker\.io\/hosts\.toml\.shoal-backup/);
    const hub = await readFile(join(certs, 'docker.io', 'hosts.toml'), 'utf8');
    assert.match(hub, /^server = "https:\/\/registry-1\.docker\.io"$/m);
    assert.match(hub, /^\[host\."http:\/\/127\.0\.0\.1:5000"\]$/m);
    assert.match(await readFile(join(certs, '_default', 'hosts.toml'), 'utf8'), /^\[host\."http:\/\/127\.0\.0\.1:5000"\]$/m);
  });

  it("the data-owner init container hands the store to the node's user; the node starts as that user, with the ConfigMap", async () => {
    const pod = install.spec.template.spec;
    await runContainer(install, initContainer(install, 'data-owner'));
    const main = pod.containers[0]!;
    const data = join(work, 'host', 'var/lib/shoal');
    assert.equal((await stat(data)).uid, main.securityContext!.runAsUser);
    const keyFile = join(volumeDir(pod.volumes.find((v) => v.secret)!), 'cluster.key');
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: '/nonexistent', SHOAL_SEEDS: `http://${SEED}`, SHOAL_CLUSTER_KEY_FILE: keyFile };
    node = lab.spawn(ns, 'setpriv', [`--reuid=${main.securityContext!.runAsUser}`, `--regid=${main.securityContext!.runAsGroup}`, '--clear-groups', ...argv(pod, main)], env);
    procs.push(node);
    const listening = await node.waitForLog((l) => l.msg === 'listening', 90_000);
    assert.equal(listening.url, 'http://127.0.0.1:5000');
    // The probes' and Prometheus' addresses answer.
    assert.equal((await curl('http://127.0.0.1:5000/readyz')).status, 200);
    assert.equal((await curl('http://127.0.0.1:5000/healthz')).status, 200);
    const metrics = await curl('http://10.233.12.11:5002/metrics');
    assert.equal(metrics.status, 200);
    assert.match(metrics.body, /^shoal_/m);
    // ...and the registry is on loopback only.
    const outside = await lab.exec(ns, 'curl', ['-sS', '--max-time', '5', '-o', '/dev/null', '-w', '%{http_code}', 'http://10.233.12.11:5000/v2/']).catch((err: Error) => ({ stdout: err.message }));
    assert.doesNotMatch(outside.stdout, /^200$/, 'the registry does not answer on the node\'s address');
  });

  it('containerd pulls through the node with those hosts.toml files; the node keeps what it fetched', async () => {
    const certs = join(work, 'host', 'etc/containerd/certs.d');
    await ctr(['images', 'pull', '--hosts-dir', certs, '--platform', 'linux/amd64', '--snapshotter', 'native', `${SEED}/library/app:v1`]);
    assert.ok((await ctr(['images', 'ls'])).stdout.includes(layout.multi.digest));
    const asked = node!.logs.filter((l) => l.msg === 'request' && String(l.path).startsWith('/v2/library/app/') && l.status === 200);
    assert.ok(asked.length >= 3, `containerd asked the node: ${asked.length} requests`);
    const metrics = await curl('http://127.0.0.1:5002/metrics');
    assert.match(metrics.body, /^shoal_pull_bytes_total\{source="seed"\} [1-9]/m, 'the node fetched from its seed');
  });

  it("the uninstall's command puts containerd's hosts dir back as it was; containerd no longer asks the node", async () => {
    const certs = join(work, 'host', 'etc/containerd/certs.d');
    const out = await runContainer(undo, initContainer(undo, 'containerd-restore'));
    assert.match(out, /restored: .*docker\.io\/hosts\.toml/);
    assert.match(out, /removed: .*_default\/hosts\.toml/);
    assert.deepEqual(await tree(certs), certsBefore, 'byte for byte what was there before the install');
    await ctr(['images', 'rm', '--sync', `${SEED}/library/app:v1`]);
    const before = node!.logs.length;
    await ctr(['images', 'pull', '--plain-http', '--hosts-dir', certs, '--platform', 'linux/amd64', '--snapshotter', 'native', `${SEED}/library/app:v1`]);
    assert.deepEqual(node!.logs.slice(before).filter((l) => l.msg === 'request'), [], 'containerd went to the registry itself');
  });
});
