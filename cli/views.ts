/** `shoal ls`, `shoal status --cluster`, `shoal prefetch`: parse flags and delegate to the node (or src/life). */
import { request } from 'undici';
import { formatBytes, openNodeStore } from '../src/bundle/index.ts';
import { listImages, type ImageSummary } from '../src/life/images.ts';
import type { NodeSummary } from '../src/node-control.ts';
import { openRegistryEndpoint } from '../src/upstream/index.ts';
import { errorMessageOf } from '../src/bundle/registry-http.ts';
import { UsageError, ExitStatus } from './errors.ts';
import { nodeRequest } from './lifecycle.ts';
import { checkUrl, interruptSignal, registryAccess, type RegistryAccessFlags } from './bundle-options.ts';

/** A table with a header, columns padded to their widest cell. */
function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [header, ...rows].map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n') + '\n';
}

function ago(ms: number | undefined, now = Date.now()): string {
  if (!ms) return '-';
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export interface LsFlags extends RegistryAccessFlags {
  node?: string;
  data?: string;
  json?: boolean;
}

/** `shoal ls [PREFIX] --node URL|--data DIR [--json]` */
export async function lsCommand(prefix: string | undefined, flags: LsFlags): Promise<void> {
  if (flags.node && flags.data) throw new UsageError('give --node URL (a running node) or --data DIR (a stopped node), not both');
  if (!flags.node && !flags.data) throw new UsageError('say which node: --node URL (a running node, e.g. http://127.0.0.1:5000) or --data DIR (the data directory of a stopped node)');
  let images: ImageSummary[];
  if (flags.node) {
    const query = prefix ? `?prefix=${encodeURIComponent(prefix)}` : '';
    images = ((await nodeRequest(flags.node, `/shoal/images${query}`, 'GET', flags)) as { images: ImageSummary[] }).images;
  } else {
    const interrupt = interruptSignal();
    try {
      const store = await openNodeStore(flags.data!, { create: false, signal: interrupt.signal });
      try {
        images = await listImages(store, { prefix, signal: interrupt.signal });
      } finally {
        await store.close();
      }
    } finally {
      interrupt.release();
    }
  }
  if (flags.json) {
    process.stdout.write(JSON.stringify({ images }, null, 2) + '\n');
    return;
  }
  if (images.length === 0) {
    process.stdout.write(prefix ? `no images under ${prefix}\n` : 'no images\n');
    return;
  }
  const rows = images.map((i) => [
    i.repository,
    i.tags.length ? i.tags.join(',') : '-',
    i.digest.replace(/^sha256:/, '').slice(0, 12),
    formatBytes(i.size),
    i.platforms.length ? i.platforms.join(',') : '-',
    i.pinned ? 'pinned' : '-',
    ago(i.lastPulled),
    i.missingBlobs ? `${i.missingBlobs} missing` : 'whole',
  ]);
  process.stdout.write(table(['REPOSITORY', 'TAGS', 'DIGEST', 'SIZE', 'PLATFORMS', 'PIN', 'LAST PULLED', 'CONTENT'], rows));
}

function uptime(s: number): string {
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

function disk(n: NodeSummary): string {
  const used = formatBytes(n.store.bytes) + (n.maxStore > 0 ? ` of ${formatBytes(n.maxStore)}` : '');
  const free = n.freeBytes !== undefined ? `, ${formatBytes(n.freeBytes)} free` : '';
  return used + free;
}

interface ClusterBody {
  self: NodeSummary;
  peers: Array<{ id: string; address?: string; zone?: string; summary?: NodeSummary; error?: string }>;
}

/** `shoal status --node URL --cluster`: one line per node, this one first, gathered through the peers. */
export async function clusterStatusCommand(flags: { node: string; json?: boolean } & RegistryAccessFlags): Promise<void> {
  const body = (await nodeRequest(flags.node, '/shoal/cluster', 'GET', flags)) as ClusterBody;
  if (flags.json) {
    process.stdout.write(JSON.stringify(body, null, 2) + '\n');
    return;
  }
  const line = (name: string, address: string, n: NodeSummary | undefined, error?: string): string[] =>
    n
      ? [name, address, n.zone ?? '-', n.version, uptime(n.uptimeSeconds), disk(n), String(n.images), String(n.pins), String(n.peers)]
      : [name, address, '-', '-', '-', `no answer: ${error ?? 'unknown'}`, '-', '-', '-'];
  const rows = [line(`${(body.self.id ?? 'this node').slice(-12)} (asked)`, flags.node, body.self), ...body.peers.map((p) => line(p.id.slice(-12), p.address ?? '-', p.summary, p.error))];
  process.stdout.write(table(['NODE', 'ADDRESS', 'ZONE', 'VERSION', 'UP', 'DISK', 'IMAGES', 'PINS', 'PEERS'], rows));
  if (body.peers.length === 0) process.stdout.write('no peers connected\n');
}

export interface PrefetchFlags extends RegistryAccessFlags {
  node: string;
  allNodes?: boolean;
  pin?: boolean;
  json?: boolean;
}

interface NodeResult {
  node: string;
  ok: boolean;
  outcomes?: Array<{ reference: string; ok: boolean; blobs?: number; bytes?: number; fetchedBytes?: number; pinned?: boolean; error?: string }>;
  error?: string;
}

/** `shoal prefetch REF... --node URL [--all-nodes] [--pin]`: progress per node, then a summary; exit 1 when a node failed. */
export async function prefetchCommand(refs: string[], flags: PrefetchFlags): Promise<void> {
  if (refs.length === 0) throw new UsageError('name at least one image, e.g. registry.local:5000/team/app:1.4');
  const endpoint = openRegistryEndpoint({ url: checkUrl(flags.node, '--node'), ...(await registryAccess(flags)) });
  const interrupt = interruptSignal();
  let done: { nodes: NodeResult[] } | undefined;
  let failure: string | undefined;
  const short = (node: unknown): string => (typeof node === 'string' ? node.slice(-12) : '?');
  try {
    let res;
    try {
      res = await request(`${endpoint.url}/shoal/prefetch`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'user-agent': 'shoal-cli', ...(endpoint.basicAuthorization ? { authorization: endpoint.basicAuthorization } : {}) },
        body: JSON.stringify({ refs, allNodes: flags.allNodes === true, pin: flags.pin === true }),
        dispatcher: endpoint.agent,
        signal: interrupt.signal,
        headersTimeout: 0,
        bodyTimeout: 0,
      });
    } catch (err) {
      throw new Error(`cannot reach the node at ${flags.node}: ${(err as Error).message} (is it running? pass --node URL)`);
    }
    if (res.statusCode !== 200) {
      const body = Buffer.from(await res.body.arrayBuffer());
      const hint = res.statusCode === 401 || res.statusCode === 403 ? ' (this needs a user with the admin role: --username, --password)' : '';
      throw new Error(`the node at ${flags.node} answered ${res.statusCode}: ${errorMessageOf(body)}${hint}`);
    }
    let buffered = '';
    const handle = (text: string): void => {
      if (!text.trim()) return;
      const msg = JSON.parse(text) as Record<string, unknown>;
      if (flags.json) process.stdout.write(text + '\n');
      if (msg.event === 'done') done = msg as unknown as { nodes: NodeResult[] };
      else if (msg.event === 'error') failure = String(msg.error);
      else if (!flags.json && msg.event === 'progress') {
        const who = short(msg.node) + (msg.self ? ' (asked)' : '');
        if (msg.type === 'image') process.stderr.write(`${who}: ${msg.reference}: ${msg.blobs} blob(s), ${formatBytes(Number(msg.bytes))}\n`);
        else if (msg.type === 'blob') process.stderr.write(`${who}: ${msg.reference}: ${msg.done}/${msg.total} ${String(msg.digest).slice(7, 19)} ${formatBytes(Number(msg.size))} from ${msg.source}\n`);
        else if (msg.type === 'failed') process.stderr.write(`${who}: ${msg.reference ?? ''} failed: ${msg.error}\n`);
      }
    };
    for await (const chunk of res.body) {
      buffered += (chunk as Buffer).toString('utf8');
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        handle(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 1);
      }
    }
    handle(buffered);
  } finally {
    interrupt.release();
    await endpoint.agent.destroy();
  }
  if (failure) throw new Error(`prefetch failed on the node: ${failure}`);
  if (!done) throw new Error('the node closed the connection before the prefetch finished');
  const result: { nodes: NodeResult[] } = done;
  if (!flags.json) {
    const rows = result.nodes.map((n) => {
      const outs = n.outcomes ?? [];
      const ok = outs.filter((o) => o.ok).length;
      return [
        short(n.node),
        n.ok ? 'ok' : 'FAILED',
        `${ok}/${refs.length}`,
        formatBytes(outs.reduce((s, o) => s + (o.bytes ?? 0), 0)),
        formatBytes(outs.reduce((s, o) => s + (o.fetchedBytes ?? 0), 0)),
        outs.some((o) => o.pinned) ? 'yes' : 'no',
        n.error ?? outs.filter((o) => !o.ok).map((o) => `${o.reference}: ${o.error}`).join('; '),
      ];
    });
    process.stdout.write(table(['NODE', 'RESULT', 'IMAGES', 'SIZE', 'FETCHED', 'PINNED', 'ERROR'], rows));
    const failed = result.nodes.filter((n) => !n.ok).length;
    process.stdout.write(`${result.nodes.length - failed} of ${result.nodes.length} node(s) hold ${refs.length === 1 ? 'the image' : `the ${refs.length} images`}\n`);
  }
  if (result.nodes.some((n) => !n.ok)) throw new ExitStatus(1);
}
