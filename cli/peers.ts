import { writeClusterKey } from '../src/p2p/keys.ts';
import { UsageError } from './errors.ts';
import { nodeRequest } from './lifecycle.ts';
import type { RegistryAccessFlags } from './bundle-options.ts';
import type { PeerSummary } from '../src/p2p/types.ts';
import { formatBytes } from '../src/bundle/format.ts';

/** `shoal cluster-key --out FILE` */
export async function clusterKeyCommand(flags: { out: string }): Promise<void> {
  try {
    await writeClusterKey(flags.out);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new UsageError(`${flags.out} exists; refusing to overwrite a cluster key (every node must keep the same one)`);
    throw err;
  }
  process.stdout.write(`wrote ${flags.out}; give this file to every node (--cluster-key ${flags.out})\n`);
}

type PeerRow = PeerSummary;

/** `4m 10s`, `2h 5m`: how long until `until`. */
function remaining(until: number, now = Date.now()): string {
  const s = Math.max(0, Math.round((until - now) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

/** `shoal peers`: asks a running node for its peer table. */
export async function peersCommand(flags: { node: string; json?: boolean } & RegistryAccessFlags): Promise<void> {
  const body = (await nodeRequest(flags.node, '/shoal/peers', 'GET', flags)) as { enabled: boolean; self?: string; addresses?: string[]; peers: PeerRow[] };
  if (flags.json) {
    process.stdout.write(JSON.stringify(body, null, 2) + '\n');
    return;
  }
  if (!body.enabled) {
    process.stdout.write('this node runs without peers (start it with --p2p-listen and --cluster-key)\n');
    return;
  }
  process.stdout.write(`self ${body.self}\n  ${(body.addresses ?? []).join('\n  ')}\n`);
  if (body.peers.length === 0) {
    process.stdout.write('no peers connected\n');
    return;
  }
  const rows = body.peers.map((p) => [
    p.id.slice(-12),
    p.addresses[0] ?? '-',
    p.rttMs === undefined ? '-' : `${p.rttMs} ms`,
    p.throughput === undefined ? '-' : `${formatBytes(p.throughput)}/s`,
    formatBytes(p.bytesIn),
    formatBytes(p.bytesOut),
    String(p.blobs),
    p.zone ?? '-',
    p.bannedUntil
      ? `banned (${p.ban?.reason ?? 'ban'}) until ${new Date(p.bannedUntil).toISOString()}`
      : p.dataPortUnreachableUntil
        ? `ok; its data port is unreachable, chunks over the peer connection until ${new Date(p.dataPortUnreachableUntil).toISOString()}`
        : 'ok',
  ]);
  const header = ['PEER', 'ADDRESS', 'RTT', 'THROUGHPUT', 'RECEIVED', 'SENT', 'BLOBS', 'ZONE', 'STATE'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  for (const r of [header, ...rows]) process.stdout.write(r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd() + '\n');
  const bans = body.peers.filter((p) => p.ban);
  if (bans.length > 0) {
    process.stdout.write(`\nbans (a banned peer is not dialed, asked or served until its ban ends):\n`);
    for (const p of bans) {
      const ban = p.ban!;
      process.stdout.write(`  ${p.id}  ${ban.reason}  until ${new Date(ban.until).toISOString()} (${remaining(ban.until)} left)  ${ban.detail}\n`);
    }
  }
}
