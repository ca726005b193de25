/**
 * deploy/ validates and renders, and its pieces agree with each other and with the program:
 * - every object of deploy/ and deploy/uninstall/ passes Kubernetes' OpenAPI schema (kubernetes-models);
 * - no object has a field the schema does not know: the OpenAPI schemas allow unknown properties, so a misspelt
 *   `readinesProbe` would pass them; the objects are type-checked against kubernetes-models' TypeScript types
 *   instead, whose excess-property check refuses it (a deliberately misspelt copy proves the check bites);
 * - both kustomizations render with `kubectl kustomize` (Debian's kubectl 1.20 and 1.32 were both checked to
 *   render them the same), with their namespace, and the Secret made from cluster.key;
 * - the ConfigMap is a valid node configuration; ports, names, paths, flags and users line up.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { promisify } from 'node:util';
import { DEPLOY, ROOT, loadYamlDir, modelInterface, modelModule, renderKustomization, validateObject, type K8sObject, type Sourced } from '../helpers/deploy.ts';
import { buildProgram } from '../../cli/main.ts';
import { dataPortOf, loadConfig, parseListen, type ShoalConfig } from '../../src/config/index.ts';

const execFileP = promisify(execFile);

interface Container {
  name: string;
  image: string;
  args?: string[];
  command?: string[];
  ports?: Array<{ name: string; containerPort: number }>;
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
  securityContext?: { runAsUser?: number; runAsGroup?: number; runAsNonRoot?: boolean };
  readinessProbe?: { httpGet: { path: string; port: number; host?: string } };
  livenessProbe?: { httpGet: { path: string; port: number; host?: string } };
  startupProbe?: { httpGet: { path: string; port: number; host?: string } };
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
}
interface PodSpec {
  initContainers?: Container[];
  containers: Container[];
  volumes: Array<{ name: string; hostPath?: { path: string }; configMap?: { name: string; optional?: boolean }; secret?: { secretName: string; items?: Array<{ key: string; path: string }> } }>;
  hostNetwork?: boolean;
  serviceAccountName?: string;
  tolerations?: unknown[];
  securityContext?: { fsGroup?: number };
}
type Workload = K8sObject & { spec: { template: { metadata: { annotations?: Record<string, string> }; spec: PodSpec }; updateStrategy?: { type: string } } };

const find = <T extends K8sObject>(objects: K8sObject[], kind: string, name?: string): T => {
  const o = objects.find((x) => x.kind === kind && (name === undefined || x.metadata.name === name));
  assert.ok(o, `a ${kind}${name ? ` named ${name}` : ''}`);
  return o as T;
};

describe('deploy/: schemas, rendering, consistency', () => {
  let install: Sourced[] = [];
  let uninstall: Sourced[] = [];
  let scratch = '';

  before(async () => {
    install = await loadYamlDir(DEPLOY);
    uninstall = await loadYamlDir(join(DEPLOY, 'uninstall'));
    // Inside the checkout, so that the generated file resolves kubernetes-models from node_modules.
    scratch = await mkdtemp(join(ROOT, '.scratch-deploy-'));
  });

  after(async () => {
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  const objects = (list: Sourced[]): Sourced[] => list.filter((s) => s.object.kind !== 'Kustomization');

  it('every object passes its OpenAPI schema', async () => {
    const all = objects([...install, ...uninstall]);
    assert.deepEqual(
      [...new Set(objects(install).map((s) => s.object.kind))].sort(),
      ['ConfigMap', 'DaemonSet', 'Namespace', 'Service', 'ServiceAccount'],
      'deploy/ has what an operator expects (the Secret comes from the kustomization)',
    );
    for (const { file, object } of all) {
      await assert.doesNotReject(validateObject(object), `${file}: ${object.kind} ${object.metadata?.name}`);
    }
  });

  it('the schema check refuses what is wrong (so the pass above means something)', async () => {
    const ds = structuredClone(find<Workload>(install.map((s) => s.object), 'DaemonSet'));
    (ds.spec.template.spec.containers[0] as unknown as Record<string, unknown>).ports = [{ name: 'registry', containerPort: 'five thousand' }];
    await assert.rejects(validateObject(ds));
    const noSelector = structuredClone(ds) as unknown as { spec: Record<string, unknown> };
    delete noSelector.spec.selector;
    await assert.rejects(validateObject(noSelector as unknown as K8sObject));
  });

  it('no object has a field its schema does not know (a type check against the models\' types)', async () => {
    const tsc = createRequire(join(ROOT, 'package.json')).resolve('typescript/bin/tsc');
    const check = async (list: Array<{ label: string; object: K8sObject }>): Promise<string> => {
      const imports = new Set<string>();
      const lines: string[] = [];
      list.forEach(({ label, object }, i) => {
        imports.add(`import type { ${modelInterface(object.kind)} as T${object.kind} } from '${modelModule(object.apiVersion, object.kind)}';`);
        lines.push(`// ${label}`, `export const o${i}: T${object.kind} = ${JSON.stringify(object, null, 1)};`);
      });
      await writeFile(join(scratch, 'objects.ts'), [...imports, ...lines].join('\n') + '\n');
      await writeFile(
        join(scratch, 'tsconfig.json'),
        JSON.stringify({ compilerOptions: { strict: true, noEmit: true, module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', skipLibCheck: true, types: [] }, files: ['objects.ts'] }),
      );
      try {
        await execFileP(process.execPath, [tsc, '-p', join(scratch, 'tsconfig.json')], { timeout: 180_000, maxBuffer: 16 << 20 });
        return '';
      } catch (err) {
        const e = err as { stdout?: string; stderr?: string; message: string };
        return `${e.stdout ?? ''}${e.stderr ?? ''}` || e.message;
      }
    };
    const all = objects([...install, ...uninstall]).map(({ file, object }) => ({ label: `${file} ${object.kind}`, object }));
    assert.equal(await check(all), '', 'tsc found fields the schemas do not know');
    // A misspelt field is caught.
    const ds = structuredClone(find<Workload>(install.map((s) => s.object), 'DaemonSet'));
    const c = ds.spec.template.spec.containers[0] as unknown as Record<string, unknown>;
    c.readinesProbe = c.readinessProbe;
    delete c.readinessProbe;
    assert.match(await check([{ label: 'misspelt', object: ds }]), /readinesProbe/);
  });

  it('deploy/ renders with kubectl kustomize: every object in shoal-system, the Secret from cluster.key', async () => {
    const { objects: rendered, clusterKey } = await renderKustomization(DEPLOY);
    assert.deepEqual(rendered.map((o) => `${o.kind}/${o.metadata.name}`).sort(), [
      'ConfigMap/shoal-config',
      'DaemonSet/shoal',
      'Namespace/shoal-system',
      'Secret/shoal-cluster-key',
      'Service/shoal-peers',
      'ServiceAccount/shoal',
    ]);
    for (const o of rendered) if (o.kind !== 'Namespace') assert.equal(o.metadata.namespace, 'shoal-system', `${o.kind} ${o.metadata.name}`);
    const secret = find<K8sObject & { data: Record<string, string> }>(rendered, 'Secret');
    // Newer kustomize folds long base64 values over lines, which the API server's decoder skips; the schema's
    // "byte" format does not, so the value is unfolded before the check.
    for (const k of Object.keys(secret.data)) secret.data[k] = secret.data[k]!.replace(/\s+/g, '');
    assert.equal(Buffer.from(secret.data['cluster.key']!, 'base64').toString('utf8'), clusterKey, 'the Secret holds the key file, under the name the DaemonSet mounts');
    for (const o of rendered) await assert.doesNotReject(validateObject(o), `rendered ${o.kind} ${o.metadata.name}`);
  });

  it('deploy/uninstall/ renders: its own namespace and DaemonSet', async () => {
    const { objects: rendered } = await renderKustomization(join(DEPLOY, 'uninstall'));
    assert.deepEqual(rendered.map((o) => `${o.kind}/${o.metadata.name}`).sort(), ['DaemonSet/shoal-uninstall', 'Namespace/shoal-uninstall']);
    for (const o of rendered) await assert.doesNotReject(validateObject(o));
  });

  it('the pieces agree: config, ports, probes, DNS name, mounts, flags, users', async () => {
    const all = install.map((s) => s.object);
    const cm = find<K8sObject & { data: Record<string, string> }>(all, 'ConfigMap', 'shoal-config');
    const ds = find<Workload>(all, 'DaemonSet', 'shoal');
    const svc = find<K8sObject & { spec: { clusterIP?: string; ports: Array<{ name: string; port: number; targetPort: number }>; selector: Record<string, string> } }>(all, 'Service', 'shoal-peers');
    const ns = find<K8sObject>(all, 'Namespace').metadata.name;
    const pod = ds.spec.template.spec;
    const [node] = pod.containers;
    assert.ok(node);

    // The ConfigMap is a node configuration the node accepts.
    const cfgFile = join(scratch, 'shoal.yaml');
    await writeFile(cfgFile, cm.data['shoal.yaml']!);
    const config: ShoalConfig = await loadConfig({ file: cfgFile });
    const listen = parseListen(config.listen);
    assert.equal(listen.host, '127.0.0.1', 'the registry endpoint is on the node\'s loopback');
    const metrics = parseListen(config.metricsListen, 'metricsListen');
    const p2p = parseListen(config.p2pListen, 'p2pListen');

    // Probes ask the registry's own address; Prometheus the metrics address; the Service carries the p2p port.
    for (const probe of [node.readinessProbe, node.livenessProbe, node.startupProbe]) {
      assert.ok(probe);
      assert.equal(probe.httpGet.port, listen.port);
      assert.equal(probe.httpGet.host, '127.0.0.1');
    }
    assert.equal(node.readinessProbe!.httpGet.path, '/readyz');
    assert.equal(node.livenessProbe!.httpGet.path, '/healthz');
    const ann = ds.spec.template.metadata.annotations ?? {};
    assert.equal(ann['prometheus.io/scrape'], 'true');
    assert.equal(Number(ann['prometheus.io/port']), metrics.port);
    assert.equal(ann['prometheus.io/path'], '/metrics');
    const dataPort = dataPortOf(config);
    assert.ok(dataPort, 'the data channel is on, on a port of its own');
    assert.equal(new Set([listen.port, metrics.port, p2p.port, dataPort]).size, 4, 'no two listeners share a port');
    assert.deepEqual(Object.fromEntries((node.ports ?? []).map((p) => [p.name, p.containerPort])), { registry: listen.port, p2p: p2p.port, 'p2p-data': dataPort, metrics: metrics.port });
    assert.equal(svc.spec.clusterIP, 'None', 'headless');
    assert.equal(svc.spec.ports.find((p) => p.name === 'p2p')?.targetPort, p2p.port);
    assert.equal(svc.spec.ports.find((p) => p.name === 'p2p-data')?.targetPort, dataPort);
    assert.deepEqual(svc.spec.selector, find<Workload>(all, 'DaemonSet').spec.template.metadata && (ds as unknown as { spec: { selector: { matchLabels: Record<string, string> } } }).spec.selector.matchLabels);
    assert.equal(config.peersDns, `${svc.metadata.name}.${ns}.svc.cluster.local`, 'peersDns is the headless Service');
    assert.ok(pod.hostNetwork, 'containerd reaches 127.0.0.1:5000 of the node');
    assert.equal(pod.serviceAccountName, find<K8sObject>(all, 'ServiceAccount').metadata.name);
    assert.ok(pod.tolerations && pod.tolerations.length > 0);
    assert.equal(ds.spec.updateStrategy?.type, 'RollingUpdate');

    // Paths the programs use are where the volumes are mounted.
    const mountOf = (c: Container, volume: string): string => {
      const m = c.volumeMounts?.find((v) => v.name === volume);
      assert.ok(m, `${c.name} mounts ${volume}`);
      return m.mountPath;
    };
    const volume = (name: string) => pod.volumes.find((v) => v.name === name)!;
    assert.equal(volume('config').configMap?.name, cm.metadata.name);
    assert.ok(config.clusterKeyFile.startsWith(mountOf(node, 'cluster-key') + '/'));
    assert.equal(volume('cluster-key').secret?.secretName, 'shoal-cluster-key');
    assert.deepEqual(volume('cluster-key').secret?.items?.map((i) => i.path), [config.clusterKeyFile.split('/').pop()]);
    assert.equal(volume('data').hostPath?.path, '/var/lib/shoal');
    assert.equal(volume('containerd-certs').hostPath?.path, '/etc/containerd/certs.d');
    // The signature policy's ConfigMap is optional (a site without one starts), and the path the ConfigMap's
    // commented policyFile names is in its mount.
    assert.deepEqual(volume('policy').configMap, { name: 'shoal-policy', optional: true });
    const policyFile = /#\s*policyFile:\s*(\S+)/.exec(cm.data['shoal.yaml']!)?.[1];
    assert.ok(policyFile?.startsWith(mountOf(node, 'policy') + '/'), `policyFile ${policyFile} is under the policy mount`);
    const init = Object.fromEntries((pod.initContainers ?? []).map((c) => [c.name, c]));
    const ctrCfg = init['containerd-config'];
    assert.ok(ctrCfg);
    const arg = (c: Container, flag: string): string => c.args![c.args!.indexOf(flag) + 1]!;
    assert.equal(arg(ctrCfg, '--out'), mountOf(ctrCfg, 'containerd-certs'));
    assert.ok(arg(ctrCfg, '--config').startsWith(mountOf(ctrCfg, 'config') + '/'));
    assert.equal(new URL(arg(ctrCfg, '--mirror')).port, String(listen.port));
    assert.equal(arg(node, '--data'), mountOf(node, 'data'));
    assert.ok(arg(node, '--config').startsWith(mountOf(node, 'config') + '/'));

    // Every flag given to shoal is one its command takes.
    const program = buildProgram();
    const containers: Container[] = [node, ctrCfg, ...uninstall.map((s) => s.object).filter((o): o is Workload => o.kind === 'DaemonSet').flatMap((d) => d.spec.template.spec.initContainers ?? [])];
    for (const c of containers) {
      assert.ok(c.args && !c.command, `${c.name} runs the image's entry point (shoal)`);
      const cmd = program.commands.find((x) => x.name() === c.args![0]);
      assert.ok(cmd, `${c.name}: shoal ${c.args![0]}`);
      const known = new Set(cmd.options.flatMap((o) => [o.long, o.short].filter(Boolean)));
      for (const a of c.args!.slice(1).filter((x) => x.startsWith('-'))) assert.ok(known.has(a), `${c.name}: shoal ${c.args![0]} takes ${a}`);
    }

    // Users: the node runs as the user the data directory is handed to, in the group the files are readable by.
    const owner = init['data-owner'];
    assert.ok(owner);
    assert.deepEqual(owner.command, ['chown', '-R', `${node.securityContext?.runAsUser}:${node.securityContext?.runAsGroup}`, mountOf(owner, 'data')]);
    assert.equal(node.securityContext?.runAsNonRoot, true);
    assert.equal(pod.securityContext?.fsGroup, node.securityContext?.runAsGroup);

    // One image everywhere; requests below limits.
    const images = new Set([...containers, ...pod.containers, ...(pod.initContainers ?? [])].map((c) => c.image));
    assert.equal(images.size, 1, [...images].join(', '));
    assert.ok(node.resources?.requests?.memory && node.resources.limits?.memory);

    // The uninstall restores the same host directory the install writes.
    const undo = uninstall.map((s) => s.object).find((o): o is Workload => o.kind === 'DaemonSet')!;
    const restore = undo.spec.template.spec.initContainers![0]!;
    assert.deepEqual(restore.args!.slice(0, 2), ['containerd-config', '--restore']);
    assert.equal(undo.spec.template.spec.volumes.find((v) => v.name === restore.volumeMounts![0]!.name)?.hostPath?.path, '/etc/containerd/certs.d');
    assert.equal(arg(restore, '--out'), restore.volumeMounts![0]!.mountPath);
  });
});
