import { mkdir, readFile, readdir, rename, rm, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ConfigError } from '../config/index.ts';
import { isValidRegistryHost } from '../oci/index.ts';

/** First line of every file Shoal writes, so a restore knows which files are its own. */
export const GENERATED_MARK = '# Written by shoal containerd-config.';
export const BACKUP_SUFFIX = '.shoal-backup';

export interface RegistryTarget {
  /** Directory name under the hosts dir: `docker.io`, `registry.local:5000`, or `_default`. */
  host: string;
  /** The registry's real endpoint (`server`); omitted for `_default`. */
  server?: string;
}

export interface HostsConfigOptions {
  /** containerd's hosts dir, e.g. /etc/containerd/certs.d */
  dir: string;
  registries: RegistryTarget[];
  /** The Shoal node's URL, e.g. http://127.0.0.1:5000 */
  mirror: string;
  /** How long containerd waits to connect to the mirror before it goes to the registry itself. */
  dialTimeout?: string;
}

/** `docker.io` -> https://registry-1.docker.io; `host[:port]` -> https://host[:port]. */
export function defaultServer(host: string): string {
  if (host === 'docker.io') return 'https://registry-1.docker.io';
  return `https://${host}`;
}

/**
 * Parses `--registry` values: `HOST[:PORT]` or `HOST[:PORT]=URL` (URL being the registry's real endpoint,
 * e.g. `registry.local:5000=http://registry.local:5000` for a plain-HTTP one).
 */
export function parseRegistryTarget(value: string): RegistryTarget {
  const eq = value.indexOf('=');
  const host = (eq >= 0 ? value.slice(0, eq) : value).trim().toLowerCase();
  if (!isValidRegistryHost(host)) {
    throw new ConfigError(`--registry ${JSON.stringify(value)}: expected HOST[:PORT] or HOST[:PORT]=URL, e.g. docker.io or registry.local:5000=http://registry.local:5000`);
  }
  let server = defaultServer(host);
  if (eq >= 0) {
    const url = value.slice(eq + 1).trim();
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new ConfigError(`--registry ${JSON.stringify(value)}: ${JSON.stringify(url)} is not a URL`);
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new ConfigError(`--registry ${JSON.stringify(value)}: the URL must be http:// or https://`);
    server = url.replace(/\/+$/, '');
  }
  return { host, server };
}

/** The URLs of a node's seeds (no credentials), as `GET /shoal/status` reports them under `seeds`. */
export interface NodeSeeds {
  /** Seeds for requests without `?ns=` (`--seed`). */
  default: string[];
  /** Seeds by registry host (`registries`). */
  registries: Record<string, string[]>;
}

/** The seeds a node configuration names. */
export function nodeSeedsOf(config: { seeds: Array<{ url: string }>; registries: Record<string, Array<{ url: string }>> }): NodeSeeds {
  return {
    default: config.seeds.map((s) => s.url),
    registries: Object.fromEntries(Object.entries(config.registries).map(([host, seeds]) => [host.toLowerCase(), seeds.map((s) => s.url)])),
  };
}

/**
 * The registry's own endpoint as the node's seeds show it: the origin of a seed URL whose host is the registry
 * (e.g. `--seed http://registry.local:5000` for `registry.local:5000`); else, when every seed configured for the
 * registry uses one scheme, that scheme with the registry's host. Undefined when the seeds do not tell.
 */
export function serverFromSeeds(host: string, seeds: NodeSeeds): string | undefined {
  const own = seeds.registries[host] ?? [];
  for (const url of [...own, ...seeds.default]) {
    const u = new URL(url);
    if (u.host.toLowerCase() === host) return u.origin;
  }
  const schemes = new Set(own.map((url) => new URL(url).protocol));
  if (schemes.size === 1) return `${[...schemes][0]}//${host}`;
  return undefined;
}

/**
 * Fills in the `server` of targets given without a URL from the node's seeds. Returns a warning for each whose
 * scheme stays unknown (it keeps `https://HOST`). docker.io is known and never warned about.
 */
export function inferServers(targets: Array<RegistryTarget & { given?: boolean }>, seeds: NodeSeeds | undefined, seedsFrom: string): string[] {
  const warnings: string[] = [];
  for (const t of targets) {
    if (t.given || t.host === '_default' || t.host === 'docker.io') continue;
    const server = seeds ? serverFromSeeds(t.host, seeds) : undefined;
    if (server) t.server = server;
    else {
      warnings.push(
        `registry ${t.host}: ${seeds ? `no seed in ${seedsFrom} names it` : `the node's seeds are unknown (${seedsFrom})`}, so its scheme is a guess: ` +
          `wrote server = "${t.server}". If ${t.host} serves plain HTTP, run again with --registry ${t.host}=http://${t.host}`,
      );
    }
  }
  return warnings;
}

/** The seeds of a running node, from its `GET /shoal/status` (undefined when it does not answer in time). */
export async function fetchNodeSeeds(nodeUrl: string, opts: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<NodeSeeds | undefined> {
  const timeout = AbortSignal.timeout(opts.timeoutMs ?? 2_000);
  try {
    const res = await fetch(new URL('/shoal/status', nodeUrl), { signal: opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout });
    if (res.status !== 200) {
      await res.body?.cancel();
      return undefined;
    }
    const body = (await res.json()) as { seeds?: { default?: unknown; registries?: unknown } };
    const seeds = body.seeds;
    if (!seeds || !Array.isArray(seeds.default) || typeof seeds.registries !== 'object' || seeds.registries === null) return undefined;
    const strings = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string' && URL.canParse(x)) : []);
    return {
      default: strings(seeds.default),
      registries: Object.fromEntries(Object.entries(seeds.registries as Record<string, unknown>).map(([h, v]) => [h.toLowerCase(), strings(v)])),
    };
  } catch {
    return undefined;
  }
}

function quote(s: string): string {
  return JSON.stringify(s);
}

/** The hosts.toml text for one registry. */
export function renderHostsToml(target: RegistryTarget, mirror: string, dialTimeout = '1s'): string {
  const lines = [
    GENERATED_MARK,
    `# containerd asks the Shoal node first and goes to the registry itself when the node does not answer.`,
    `# Undo with: shoal containerd-config --restore --out <this directory's parent> --registry ${target.host === '_default' ? '... --all' : target.host}`,
  ];
  if (target.server) lines.push(`server = ${quote(target.server)}`);
  lines.push('', `[host.${quote(mirror.replace(/\/+$/, ''))}]`, `  capabilities = ["pull", "resolve"]`, `  dial_timeout = ${quote(dialTimeout)}`);
  return lines.join('\n') + '\n';
}

export interface WrittenFile {
  path: string;
  /** Where the file that was there before now is, if there was one that Shoal did not write. */
  backup?: string;
}

/** Writes `<dir>/<host>/hosts.toml` for each registry, keeping a backup of any file it replaces. */
export async function writeHostsConfig(opts: HostsConfigOptions): Promise<WrittenFile[]> {
  const written: WrittenFile[] = [];
  for (const target of opts.registries) {
    const hostDir = join(opts.dir, target.host);
    const path = join(hostDir, 'hosts.toml');
    await mkdir(hostDir, { recursive: true });
    const existing = await readFile(path, 'utf8').catch(() => undefined);
    let backup: string | undefined;
    // Back up a foreign file once; a file Shoal wrote earlier is simply replaced.
    if (existing !== undefined && !existing.startsWith(GENERATED_MARK)) {
      backup = path + BACKUP_SUFFIX;
      if ((await readFile(backup).catch(() => undefined)) !== undefined) {
        // Someone replaced Shoal's file after an earlier backup: keeping one would lose the other.
        throw new ConfigError(
          `${path} was changed by hand after shoal wrote it, and ${backup} still holds the file from before; move one of them away, then run again`,
        );
      }
      await rename(path, backup);
    }
    const tmp = `${path}.tmp-${process.pid}`;
    await writeFile(tmp, renderHostsToml(target, opts.mirror, opts.dialTimeout));
    await rename(tmp, path);
    written.push({ path, backup });
  }
  return written;
}

export interface RestoredFile {
  path: string;
  action: 'restored' | 'removed' | 'untouched';
}

/** Every host directory under `dir` holding a hosts.toml Shoal wrote, or a backup Shoal made. */
export async function hostsWritten(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [];
    throw err;
  });
  const hosts: string[] = [];
  for (const e of entries) {
    if (!e.isDirectory()) continue;
    const path = join(dir, e.name, 'hosts.toml');
    const current = await readFile(path, 'utf8').catch(() => undefined);
    const backup = await readFile(path + BACKUP_SUFFIX).catch(() => undefined);
    if (backup !== undefined || current?.startsWith(GENERATED_MARK)) hosts.push(e.name);
  }
  return hosts.sort();
}

/** Undoes writeHostsConfig: puts backups back, removes files Shoal wrote, leaves foreign files alone. */
export async function restoreHostsConfig(dir: string, hosts: string[]): Promise<RestoredFile[]> {
  const out: RestoredFile[] = [];
  for (const host of hosts) {
    const hostDir = join(dir, host);
    const path = join(hostDir, 'hosts.toml');
    const backup = path + BACKUP_SUFFIX;
    const current = await readFile(path, 'utf8').catch(() => undefined);
    const hasBackup = (await readFile(backup).catch(() => undefined)) !== undefined;
    if (hasBackup) {
      await rename(backup, path);
      out.push({ path, action: 'restored' });
    } else if (current !== undefined && current.startsWith(GENERATED_MARK)) {
      await rm(path);
      await rmdir(hostDir).catch(() => undefined);
      out.push({ path, action: 'removed' });
    } else {
      out.push({ path, action: 'untouched' });
    }
  }
  return out;
}
