/**
 * deploy/ as data, for the tests that check it: its Kubernetes objects (parsed from the YAML files), their
 * validation against Kubernetes' OpenAPI schemas (kubernetes-models), and the kustomization rendered by
 * `kubectl kustomize`.
 */
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { writeClusterKey } from '../../src/p2p/keys.ts';

const execFileP = promisify(execFile);

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const DEPLOY = join(ROOT, 'deploy');

/** A Kubernetes object as written (only what the tests read is typed). */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
}

export interface Sourced {
  file: string;
  object: K8sObject;
}

/** Every YAML document of the .yaml files in `dir` (not recursive), with the file it came from. */
export async function loadYamlDir(dir: string): Promise<Sourced[]> {
  const out: Sourced[] = [];
  for (const name of (await readdir(dir)).filter((n) => n.endsWith('.yaml')).sort()) {
    out.push(...parseYamlStream(await readFile(join(dir, name), 'utf8'), join(dir, name)));
  }
  return out;
}

/** The documents of a YAML stream; a syntax error names the file. */
export function parseYamlStream(text: string, file: string): Sourced[] {
  const out: Sourced[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join('; ')}`);
    const object = doc.toJS() as K8sObject | null;
    if (object) out.push({ file, object });
  }
  return out;
}

/** The kubernetes-models module of an object: `kubernetes-models/apps/v1/DaemonSet`, `kubernetes-models/v1/Service`. */
export function modelModule(apiVersion: string, kind: string): string {
  return `kubernetes-models/${apiVersion}/${kind}`;
}

/** Checks an object against its Kubernetes OpenAPI schema; throws with the schema's complaints. */
export async function validateObject(object: K8sObject): Promise<void> {
  // kubernetes-models declares Node >= 22 but loads on Node 20 as an ES module, imported dynamically.
  const mod = (await import(modelModule(object.apiVersion, object.kind))) as Record<string, new (data: unknown) => { validate(): void }>;
  const Model = mod[object.kind];
  if (!Model) throw new Error(`kubernetes-models has no ${object.kind} in ${object.apiVersion}`);
  new Model(object).validate();
}

/** The TypeScript interface kubernetes-models declares for a kind: `IDaemonSet`. */
export function modelInterface(kind: string): string {
  return `I${kind}`;
}

/**
 * `kubectl kustomize` of a copy of `dir` (with a fresh cluster key when it generates the Secret from
 * cluster.key, as the README says to make one); the rendered objects and the key file's text.
 */
export async function renderKustomization(dir: string): Promise<{ objects: K8sObject[]; clusterKey: string }> {
  const work = await mkdtemp(join(tmpdir(), 'shoal-kustomize-'));
  try {
    // The uninstall kustomization sits below deploy/: copy the tree, so relative paths stay what they are.
    await cp(DEPLOY, join(work, 'deploy'), { recursive: true });
    const copy = join(work, 'deploy', dir.slice(DEPLOY.length));
    const keyFile = join(work, 'deploy', 'cluster.key');
    await rm(keyFile, { force: true });
    await writeClusterKey(keyFile);
    const { stdout } = await execFileP('kubectl', ['kustomize', copy], { timeout: 60_000, maxBuffer: 16 << 20 });
    return { objects: parseYamlStream(stdout, `kubectl kustomize ${dir}`).map((s) => s.object), clusterKey: await readFile(keyFile, 'utf8') };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

