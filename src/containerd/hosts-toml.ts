import { mkdir, readFile, rename, rm, rmdir, writeFile } from 'node:fs/promises';
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
