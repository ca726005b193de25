/**
 * A cluster of in-process nodes on loopback that share one cluster key (libp2p private network).
 *
 *   const cluster = await startCluster({ size: 3, seeds: [seed.url] });
 *   after(() => cluster.stop());
 *   await cluster.waitConnected();                 // every node lists size-1 peers in GET /shoal/peers
 *   const late = await cluster.add();              // joins later; dials every running node
 *
 * Nodes listen for peers on 127.0.0.1 port 0 and are started one after another: each new node gets the real
 * peer addresses of the nodes before it as its static `peers`, so the mesh is complete without guessing ports.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ShoalConfig } from '../../src/config/index.ts';
import { writeClusterKey } from '../../src/p2p/keys.ts';
import { startTestNode, type TestNode } from './node.ts';

export interface ClusterNode extends TestNode {
  /** Index in the cluster (0-based), for messages. */
  index: number;
  /** HOST:PORT other nodes dial. */
  p2pAddress: string;
  /** This node's libp2p peer id. */
  peerId: string;
  stopped: boolean;
  /** The settings it was started with (a restart keeps them). */
  config: Partial<ShoalConfig>;
}

export interface PeersView {
  enabled: boolean;
  self?: string;
  addresses?: string[];
  /** Connected peers, and banned ones (`connected: false`) while their ban lasts. */
  peers: Array<{ id: string; addresses: string[]; connected?: boolean; blobs: number; bytesIn: number; bytesOut: number; bannedUntil?: number; throughput?: number }>;
}

/** `GET /shoal/peers` of a node. */
export async function peersOf(nodeUrl: string): Promise<PeersView> {
  const res = await fetch(`${nodeUrl}/shoal/peers`, { signal: AbortSignal.timeout(5_000) });
  if (res.status !== 200) throw new Error(`GET ${nodeUrl}/shoal/peers: HTTP ${res.status}`);
  return (await res.json()) as PeersView;
}

/** Polls until `check` returns true; fails with `what` (and the last detail) after `timeoutMs`. */
export async function waitFor(what: string, check: () => Promise<boolean | string> | boolean | string, timeoutMs = 15_000, everyMs = 50): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const r = await check();
      if (r === true) return;
      last = r;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last === false || last === undefined ? '' : `: ${last instanceof Error ? last.message : String(last)}`}`);
    await sleep(everyMs);
  }
}

export interface ClusterOptions {
  size: number;
  /** Seed URLs for every node (none: peers only). */
  seeds?: string[];
  /** Extra config for every node, or per node by index. */
  config?: Partial<ShoalConfig> | ((index: number) => Partial<ShoalConfig>);
  /** Use this key file instead of writing a new one. */
  clusterKeyFile?: string;
}

export class Cluster {
  readonly nodes: ClusterNode[] = [];
  readonly clusterKeyFile: string;
  private readonly dir: string;
  private readonly opts: ClusterOptions;

  private constructor(dir: string, keyFile: string, opts: ClusterOptions) {
    this.dir = dir;
    this.clusterKeyFile = keyFile;
    this.opts = opts;
  }

  static async create(opts: ClusterOptions): Promise<Cluster> {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-cluster-'));
    let keyFile = opts.clusterKeyFile;
    if (!keyFile) {
      keyFile = join(dir, 'cluster.key');
      await writeClusterKey(keyFile);
    }
    return new Cluster(dir, keyFile, opts);
  }

  get running(): ClusterNode[] {
    return this.nodes.filter((n) => !n.stopped);
  }

  /** P2P addresses of the running nodes, to dial. */
  addresses(): string[] {
    return this.running.map((n) => n.p2pAddress);
  }

  /** Starts one more node that dials every running node (and `extraPeers`). */
  async add(config: Partial<ShoalConfig> = {}, extraPeers: string[] = []): Promise<ClusterNode> {
    const index = this.nodes.length;
    const base = typeof this.opts.config === 'function' ? this.opts.config(index) : (this.opts.config ?? {});
    const settings: Partial<ShoalConfig> = {
      seeds: (this.opts.seeds ?? []).map((url) => ({ url })),
      p2pListen: '127.0.0.1:0',
      clusterKeyFile: this.clusterKeyFile,
      ...base,
      ...config,
    };
    const test = await startTestNode({ config: { ...settings, peers: [...this.addresses(), ...extraPeers, ...(settings.peers ?? [])] } });
    const node = await this.wrap(test, index, settings, async () => test.stop());
    this.nodes.push(node);
    return node;
  }

  /**
   * Stops a node (its data stays), runs `whileStopped` on its data dir (e.g. to flip a byte of a blob), and starts
   * it again with the same settings and identity; it dials every running node. Returns the new handle, which takes
   * the old one's place.
   */
  async restart(node: ClusterNode, whileStopped?: (dataDir: string) => Promise<void>): Promise<ClusterNode> {
    if (!node.stopped) {
      node.stopped = true;
      await node.node.stop();
    }
    const dataDir = node.dataDir;
    let test: TestNode;
    try {
      await whileStopped?.(dataDir);
      test = await startTestNode({ dataDir, config: { ...node.config, peers: [...this.addresses(), ...(node.config.peers ?? [])] } });
    } catch (err) {
      await rm(dataDir, { recursive: true, force: true });
      throw err;
    }
    const restarted = await this.wrap(test, node.index, node.config, async () => {
      await test.stop();
      await rm(dataDir, { recursive: true, force: true });
    });
    this.nodes[this.nodes.indexOf(node)] = restarted;
    return restarted;
  }

  private async wrap(test: TestNode, index: number, config: Partial<ShoalConfig>, stop: () => Promise<void>): Promise<ClusterNode> {
    const peers = test.node.peers;
    if (!peers) {
      await stop();
      throw new Error('the node started without its peer network (p2pListen not set?)');
    }
    const tcp = peers.addresses().map((a) => /\/ip4\/([\d.]+)\/tcp\/(\d+)/.exec(a)).find((m) => m !== null);
    if (!tcp) {
      await stop();
      throw new Error(`no TCP address among ${peers.addresses().join(', ')}`);
    }
    const node: ClusterNode = { ...test, index, p2pAddress: `${tcp[1]}:${tcp[2]}`, peerId: peers.selfId, stopped: false, config };
    node.stop = async () => {
      if (node.stopped) return;
      node.stopped = true;
      await stop();
    };
    return node;
  }

  /** Waits until every running node lists every other running node (and `extra` more) in GET /shoal/peers. */
  async waitConnected(timeoutMs = 15_000, extra = 0): Promise<void> {
    const nodes = this.running;
    await waitFor(
      `${nodes.length} nodes to see each other`,
      async () => {
        const views = await Promise.all(nodes.map((n) => peersOf(n.url)));
        const missing = views.flatMap((v, i) => {
          const connected = v.peers.filter((p) => p.connected !== false);
          const seen = new Set(connected.map((p) => p.id));
          const want = nodes.filter((_, j) => j !== i).map((n) => n.peerId);
          const lacking = want.filter((id) => !seen.has(id));
          return lacking.length > 0 || connected.length < want.length + extra ? [`node ${nodes[i]!.index} sees ${connected.length} (lacks ${lacking.length})`] : [];
        });
        return missing.length === 0 ? true : missing.join('; ');
      },
      timeoutMs,
    );
  }

  /**
   * Waits until `node` knows from its peers' inventories that `count` of them hold `digest` (this asks
   * PeerService.holders(), which counts in shoal_peer_lookups_total).
   */
  async waitHolders(node: ClusterNode, digest: string, count: number, timeoutMs = 10_000): Promise<void> {
    await waitFor(`${count} peers of node ${node.index} to announce ${digest}`, () => {
      const n = node.node.peers!.holders(digest).length;
      return n >= count ? true : `${n} hold it`;
    }, timeoutMs);
  }

  async stop(): Promise<void> {
    await Promise.allSettled(this.nodes.map((n) => n.stop()));
    await rm(this.dir, { recursive: true, force: true });
  }
}

export async function startCluster(opts: ClusterOptions): Promise<Cluster> {
  const cluster = await Cluster.create(opts);
  try {
    for (let i = 0; i < opts.size; i++) await cluster.add();
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return cluster;
}
