import { UsageError } from './errors.ts';
import { parseRegistryTarget, restoreHostsConfig, writeHostsConfig, type RegistryTarget } from '../src/containerd/hosts-toml.ts';

export interface ContainerdConfigFlags {
  registry?: string[];
  mirror?: string;
  out: string;
  all?: boolean;
  restore?: boolean;
  dialTimeout?: string;
}

/** `shoal containerd-config`: writes (or restores) containerd hosts.toml files that make a node the mirror. */
export async function containerdConfigCommand(flags: ContainerdConfigFlags): Promise<void> {
  const targets: RegistryTarget[] = (flags.registry ?? []).map(parseRegistryTarget);
  if (flags.all) targets.push({ host: '_default' });
  if (targets.length === 0) throw new UsageError('name at least one --registry HOST (or --all for every registry)');
  if (flags.restore) {
    for (const r of await restoreHostsConfig(flags.out, targets.map((t) => t.host))) process.stdout.write(`${r.action}: ${r.path}\n`);
    return;
  }
  if (!flags.mirror) throw new UsageError('--mirror URL is required (the Shoal node, e.g. http://127.0.0.1:5000)');
  let mirror: URL;
  try {
    mirror = new URL(flags.mirror);
  } catch {
    throw new UsageError(`--mirror ${JSON.stringify(flags.mirror)} is not a URL (e.g. http://127.0.0.1:5000)`);
  }
  if (mirror.protocol !== 'http:' && mirror.protocol !== 'https:') throw new UsageError('--mirror must be an http:// or https:// URL');
  if (flags.dialTimeout !== undefined && !/^\d+(ms|s|m)$/.test(flags.dialTimeout)) throw new UsageError('--dial-timeout takes a duration such as 500ms or 2s');
  const written = await writeHostsConfig({ dir: flags.out, registries: targets, mirror: mirror.origin, dialTimeout: flags.dialTimeout });
  for (const w of written) process.stdout.write(`wrote ${w.path}${w.backup ? ` (previous file kept as ${w.backup})` : ''}\n`);
}
