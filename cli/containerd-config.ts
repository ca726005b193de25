import { UsageError } from './errors.ts';
import { loadConfig } from '../src/config/index.ts';
import {
  fetchNodeSeeds,
  hostsWritten,
  inferServers,
  nodeSeedsOf,
  parseRegistryTarget,
  restoreHostsConfig,
  writeHostsConfig,
  type NodeSeeds,
  type RegistryTarget,
} from '../src/containerd/hosts-toml.ts';

export interface ContainerdConfigFlags {
  registry?: string[];
  mirror?: string;
  out: string;
  all?: boolean;
  restore?: boolean;
  dialTimeout?: string;
  config?: string;
  seed?: string[];
}

/** `shoal containerd-config`: writes (or restores) containerd hosts.toml files that make a node the mirror. */
export async function containerdConfigCommand(flags: ContainerdConfigFlags): Promise<void> {
  const targets: Array<RegistryTarget & { given?: boolean }> = (flags.registry ?? []).map((v) => ({ ...parseRegistryTarget(v), given: v.includes('=') }));
  // The node's seeds, from its config file or --seed: they tell each registry's scheme, and every registry they
  // name gets a hosts.toml.
  let seeds: NodeSeeds | undefined;
  let seedsFrom = '';
  if (flags.config !== undefined || flags.seed !== undefined) {
    seeds = nodeSeedsOf(await loadConfig({ file: flags.config, env: process.env, flags: { seeds: flags.seed } }));
    seedsFrom = flags.config !== undefined ? `the config file ${flags.config}` : '--seed';
    const hosts = [...Object.keys(seeds.registries), ...seeds.default.map((url) => new URL(url).host.toLowerCase())];
    for (const host of hosts) if (!targets.some((t) => t.host === host)) targets.push({ ...parseRegistryTarget(host), given: false });
  }
  if (flags.all) targets.push({ host: '_default' });
  if (flags.restore) {
    // Without a registry named: everything Shoal wrote under --out (what an uninstall wants).
    const hosts = targets.length > 0 ? targets.map((t) => t.host) : await hostsWritten(flags.out);
    for (const r of await restoreHostsConfig(flags.out, hosts)) process.stdout.write(`${r.action}: ${r.path}\n`);
    if (hosts.length === 0) process.stdout.write(`nothing to restore under ${flags.out}\n`);
    return;
  }
  if (targets.length === 0) throw new UsageError('name at least one --registry HOST (or --all for every registry, or --config FILE for the registries of a node config)');
  if (!flags.mirror) throw new UsageError('--mirror URL is required (the Shoal node, e.g. http://127.0.0.1:5000)');
  let mirror: URL;
  try {
    mirror = new URL(flags.mirror);
  } catch {
    throw new UsageError(`--mirror ${JSON.stringify(flags.mirror)} is not a URL (e.g. http://127.0.0.1:5000)`);
  }
  if (mirror.protocol !== 'http:' && mirror.protocol !== 'https:') throw new UsageError('--mirror must be an http:// or https:// URL');
  if (flags.dialTimeout !== undefined && !/^\d+(ms|s|m)$/.test(flags.dialTimeout)) throw new UsageError('--dial-timeout takes a duration such as 500ms or 2s');
  // A registry given without its URL: the running node's seeds tell its scheme, when no config said.
  const guessing = targets.some((t) => !t.given && t.host !== '_default' && t.host !== 'docker.io');
  if (guessing && !seeds) {
    seeds = await fetchNodeSeeds(mirror.origin);
    seedsFrom = seeds ? `the node at ${mirror.origin}` : `the node at ${mirror.origin} did not say; give --config FILE or --seed URL`;
  }
  for (const warning of inferServers(targets, seeds, seedsFrom)) process.stderr.write(`shoal: warning: ${warning}\n`);
  const written = await writeHostsConfig({ dir: flags.out, registries: targets, mirror: mirror.origin, dialTimeout: flags.dialTimeout });
  for (const w of written) process.stdout.write(`wrote ${w.path}${w.backup ? ` (previous file kept as ${w.backup})` : ''}\n`);
}
