/**
 * The policy file: a subset of the `containers-policy.json` format (as podman, CRI-O and skopeo read it).
 *
 * ```json
 * {
 *   "mode": "enforce",
 *   "default": [{ "type": "reject" }],
 *   "transports": {
 *     "docker": {
 *       "registry.local/apps": [{ "type": "sigstoreSigned", "keyPath": "/etc/shoal/release.pub" }],
 *       "registry.local/tools": [{ "type": "insecureAcceptAnything" }],
 *       "docker.io": [{ "type": "reject" }]
 *     }
 *   }
 * }
 * ```
 * A scope is a registry (`registry.local:5000`), a namespace (`registry.local/apps`) or a repository
 * (`registry.local/apps/web`); it matches that name and everything under it, on `/` boundaries, and the most
 * specific (longest) scope that matches wins. Of a scope's requirements, all must hold (as in containers-policy).
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';

export type PolicyMode = 'enforce' | 'warn';

/** One public key a signature may be made with. */
export interface TrustedPublicKey {
  /** Where it came from (a file, or `keyData`), for messages. */
  source: string;
  key: KeyObject;
}

export type Requirement =
  | { type: 'insecureAcceptAnything' }
  | { type: 'reject' }
  | { type: 'sigstoreSigned'; keys: TrustedPublicKey[]; rekorKey?: TrustedPublicKey };

/** A scope and what it requires; `scope` is `default` for the file's default. */
export interface PolicyRule {
  scope: string;
  requirements: Requirement[];
}

export interface Policy {
  mode: PolicyMode;
  /** The file it was read from (or `inline`). */
  source: string;
  default: PolicyRule;
  /** Scopes of `transports.docker`, longest first. */
  scopes: PolicyRule[];
}

/** A policy file that cannot be used, with what is wrong and where. */
export class PolicyError extends Error {
  override readonly name = 'PolicyError';
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The PEM text of `keyData` (base64 of the PEM, as containers-policy.json has it; plain PEM is accepted too). */
function pemOfKeyData(data: string): string {
  if (data.includes('-----BEGIN')) return data;
  return Buffer.from(data, 'base64').toString('utf8');
}

function publicKey(pem: string, source: string, where: string): TrustedPublicKey {
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch (err) {
    throw new PolicyError(`${where}: ${source} is not a PEM public key: ${(err as Error).message}`);
  }
  const type = key.asymmetricKeyType;
  if (type === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    if (curve !== 'prime256v1' && curve !== 'secp384r1') throw new PolicyError(`${where}: ${source} is an EC key on ${curve}; use P-256 (or P-384)`);
  } else if (type !== 'ed25519' && type !== 'rsa' && type !== 'rsa-pss') {
    throw new PolicyError(`${where}: ${source} is a ${type} key; use ECDSA P-256, Ed25519 or RSA`);
  }
  return { source, key };
}

async function readKeyFile(path: string, base: string, where: string): Promise<TrustedPublicKey> {
  if (typeof path !== 'string' || path === '') throw new PolicyError(`${where}: a key path must be a non-empty string`);
  const full = isAbsolute(path) ? path : resolve(base, path);
  let text: string;
  try {
    text = await readFile(full, 'utf8');
  } catch (err) {
    throw new PolicyError(`${where}: cannot read key ${full}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return publicKey(text, full, where);
}

const KNOWN_FIELDS: Record<string, string[]> = {
  insecureAcceptAnything: ['type'],
  reject: ['type'],
  sigstoreSigned: ['type', 'keyPath', 'keyPaths', 'keyData', 'signedIdentity', 'rekorPublicKeyPath', 'rekorPublicKeyData'],
};

async function parseRequirement(raw: unknown, base: string, where: string): Promise<Requirement> {
  if (!isObject(raw)) throw new PolicyError(`${where}: a requirement must be an object with a "type"`);
  const type = raw.type;
  if (typeof type !== 'string' || !(type in KNOWN_FIELDS)) {
    const hint = type === 'signedBy' ? ' (GPG signatures are not supported; use sigstoreSigned)' : '';
    throw new PolicyError(`${where}: unknown requirement type ${JSON.stringify(type)}${hint}; use sigstoreSigned, reject or insecureAcceptAnything`);
  }
  for (const field of Object.keys(raw)) {
    if (!KNOWN_FIELDS[type]!.includes(field)) throw new PolicyError(`${where}: ${type} has no field ${JSON.stringify(field)}`);
  }
  if (type === 'reject') return { type };
  if (type === 'insecureAcceptAnything') return { type };
  if (raw.signedIdentity !== undefined) {
    // Refused rather than ignored: a check the operator asked for must not be skipped silently.
    throw new PolicyError(`${where}: signedIdentity is not supported (the identity a signature names is not compared); leave it out: the signed digest is always checked against the digest served`);
  }
  const given = ['keyPath', 'keyPaths', 'keyData'].filter((f) => raw[f] !== undefined);
  if (given.length !== 1) throw new PolicyError(`${where}: sigstoreSigned needs exactly one of keyPath, keyPaths or keyData${given.length > 1 ? ` (it has ${given.join(' and ')})` : ''}`);
  const keys: TrustedPublicKey[] = [];
  if (raw.keyPath !== undefined) keys.push(await readKeyFile(raw.keyPath as string, base, `${where}.keyPath`));
  if (raw.keyPaths !== undefined) {
    if (!Array.isArray(raw.keyPaths) || raw.keyPaths.length === 0) throw new PolicyError(`${where}.keyPaths must be a non-empty list of files`);
    for (const [i, p] of raw.keyPaths.entries()) keys.push(await readKeyFile(p as string, base, `${where}.keyPaths[${i}]`));
  }
  if (raw.keyData !== undefined) {
    if (typeof raw.keyData !== 'string' || raw.keyData === '') throw new PolicyError(`${where}.keyData must be the base64 of a PEM public key`);
    keys.push(publicKey(pemOfKeyData(raw.keyData), 'keyData', `${where}.keyData`));
  }
  let rekorKey: TrustedPublicKey | undefined;
  if (raw.rekorPublicKeyPath !== undefined) rekorKey = await readKeyFile(raw.rekorPublicKeyPath as string, base, `${where}.rekorPublicKeyPath`);
  else if (raw.rekorPublicKeyData !== undefined) {
    if (typeof raw.rekorPublicKeyData !== 'string') throw new PolicyError(`${where}.rekorPublicKeyData must be the base64 of a PEM public key`);
    rekorKey = publicKey(pemOfKeyData(raw.rekorPublicKeyData), 'rekorPublicKeyData', `${where}.rekorPublicKeyData`);
  }
  return { type: 'sigstoreSigned', keys, rekorKey };
}

async function parseRequirements(raw: unknown, base: string, where: string): Promise<Requirement[]> {
  if (!Array.isArray(raw) || raw.length === 0) throw new PolicyError(`${where} must be a non-empty list of requirements`);
  const out: Requirement[] = [];
  for (const [i, r] of raw.entries()) out.push(await parseRequirement(r, base, `${where}[${i}]`));
  return out;
}

/** A scope as containers-policy writes it: a host (with a dot, a port or `localhost`), optionally a path. */
function checkScope(scope: string, where: string): string {
  const s = scope.toLowerCase();
  if (s.includes('@') || s.includes('*') || /\s/.test(s) || s.endsWith('/') || s.startsWith('/')) {
    throw new PolicyError(`${where}: scope ${JSON.stringify(scope)} is not a registry, namespace or repository (e.g. registry.local, registry.local/apps); tags, digests and wildcards are not supported`);
  }
  const host = s.split('/')[0]!;
  if (!host.includes('.') && !host.includes(':') && host !== 'localhost') {
    throw new PolicyError(`${where}: scope ${JSON.stringify(scope)} must start with a registry host (e.g. docker.io/${scope})`);
  }
  return s;
}

/** Parses the policy text; keys named by relative paths are found beside the file (`base`). */
export async function parsePolicy(text: string, source: string, base: string): Promise<Policy> {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new PolicyError(`${source} is not JSON: ${(err as Error).message}`);
  }
  if (!isObject(json)) throw new PolicyError(`${source} must hold a JSON object`);
  for (const key of Object.keys(json)) {
    if (key !== 'default' && key !== 'transports' && key !== 'mode') throw new PolicyError(`${source}: unknown field ${JSON.stringify(key)}; expected default, transports and mode`);
  }
  const mode = json.mode ?? 'enforce';
  if (mode !== 'enforce' && mode !== 'warn') throw new PolicyError(`${source}: mode ${JSON.stringify(mode)} is neither "enforce" nor "warn"`);
  if (json.default === undefined) throw new PolicyError(`${source}: "default" is missing (e.g. [{"type": "reject"}])`);
  const def: PolicyRule = { scope: 'default', requirements: await parseRequirements(json.default, base, `${source}: default`) };
  const scopes: PolicyRule[] = [];
  if (json.transports !== undefined) {
    if (!isObject(json.transports)) throw new PolicyError(`${source}: transports must be an object`);
    for (const [transport, value] of Object.entries(json.transports)) {
      if (transport !== 'docker') throw new PolicyError(`${source}: transport ${JSON.stringify(transport)} is not supported; a node serves the docker transport only`);
      if (!isObject(value)) throw new PolicyError(`${source}: transports.docker must map scopes to requirements`);
      for (const [scope, reqs] of Object.entries(value)) {
        const where = `${source}: transports.docker[${JSON.stringify(scope)}]`;
        if (scope === '') {
          // The transport's own default, as containers-policy allows.
          scopes.push({ scope: '', requirements: await parseRequirements(reqs, base, where) });
          continue;
        }
        scopes.push({ scope: checkScope(scope, where), requirements: await parseRequirements(reqs, base, where) });
      }
    }
  }
  scopes.sort((a, b) => b.scope.length - a.scope.length);
  return { mode, source, default: def, scopes };
}

/** Reads and parses a policy file. */
export async function readPolicyFile(file: string): Promise<Policy> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new PolicyError(`cannot read policy file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return parsePolicy(text, file, dirname(resolve(file)));
}

/** Whether `scope` covers `name`: equal, or a prefix of it ending on a `/` boundary. */
function covers(scope: string, name: string): boolean {
  if (scope === '') return true;
  return name === scope || name.startsWith(`${scope}/`);
}

/** The rule for an image name (`registry.local/apps/web`): the most specific scope, else the default. */
export function ruleFor(policy: Policy, name: string): PolicyRule {
  const n = name.toLowerCase();
  for (const rule of policy.scopes) if (covers(rule.scope, n)) return rule;
  return policy.default;
}

/** How a rule is named in messages: `transports.docker["registry.local/apps"]` or `default`. */
export function describeRule(rule: PolicyRule): string {
  return rule.scope === 'default' ? 'the default rule' : `rule transports.docker[${JSON.stringify(rule.scope)}]`;
}
