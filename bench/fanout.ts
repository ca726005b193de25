/**
 * fanout: N nodes (default 6) each pull the same image at the same moment, with the seed behind its own link shaped
 * by `tc tbf` (default 100 Mbit/s). First every node pulls straight from the seed, then every node pulls through
 * Shoal (the nodes are peers of each other). The physical bound is image bytes ÷ seed rate: no scheme can finish
 * sooner, because every byte leaves the seed at least once. Needs root (network namespaces, veth, bridge, tc).
 *
 *   sudo npm run bench -- fanout     # BENCH_NODES (6), BENCH_IMAGE_MIB (64), BENCH_SEED_RATE (100mbit)
 *
 * Every namespace, process and temp dir is removed at the end, on failure, and on SIGINT/SIGTERM.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeClusterKey } from '../src/p2p/keys.ts';
import { Metrics } from '../test/helpers/metrics.ts';
import { NetnsLab, type NsProcess } from '../test/helpers/netns.ts';
import { DOCKER_REGISTRY_BIN, dockerRegistryConfig, freePort, pushRandomImage } from '../test/helpers/seed-registry.ts';
import { SHOAL_BIN } from '../test/helpers/spawn-node.ts';
import { Cleanups, load, MIB, profileEnv, quick, r, report } from './lib.ts';
import { waitFor } from '../test/helpers/cluster.ts';

const SUBNET = '10.233.9';
const SEED_IP = `${SUBNET}.250`;

/** Parses a tbf rate such as `100mbit` into bytes per second. */
function rateBytes(rate: string): number {
  const m = /^(\d+(?:\.\d+)?)(k|m|g)?bit$/i.exec(rate);
  if (!m) throw new Error(`BENCH_SEED_RATE ${rate}: expected e.g. 100mbit`);
  const mult = { k: 1e3, m: 1e6, g: 1e9 }[(m[2] ?? '').toLowerCase() as 'k' | 'm' | 'g'] ?? 1;
  return (Number(m[1]) * mult) / 8;
}

function nodeEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('SHOAL_') && k !== 'NODE_TEST_CONTEXT') env[k] = v;
  return { ...env, ...(profileEnv() ?? {}), ...extra };
}


/** Fills a docker-registry data dir with one image through a registry on loopback (stopped afterwards). */
async function fillSeed(dataDir: string, layerSizes: number[]): Promise<{ blobs: Array<{ digest: string; size: number }>; manifest: string; bytes: number }> {
  const port = await freePort();
  const dir = await mkdtemp(join(tmpdir(), 'shoal-bench-fill-'));
  const config = join(dir, 'config.yml');
  await writeFile(config, dockerRegistryConfig(dataDir, `127.0.0.1:${port}`).join('\n') + '\n');
  const child = spawn(DOCKER_REGISTRY_BIN, ['serve', config], { stdio: 'ignore' });
  try {
    await waitFor('the filling registry', async () => (await fetch(`http://127.0.0.1:${port}/v2/`)).status === 200, 15_000);
    const image = await pushRandomImage(`http://127.0.0.1:${port}`, 'bench/fanout', 'v1', { layerSizes });
    const blobs = [...image.layers.map((l) => ({ digest: l.digest, size: l.bytes.length })), { digest: image.config.digest, size: image.config.bytes.length }];
    return { blobs, manifest: image.manifestDigest, bytes: blobs.reduce((n, b) => n + b.size, 0) + image.manifestBytes.length };
  } finally {
    child.kill('SIGTERM');
    await new Promise((ok) => child.once('exit', ok));
    await rm(dir, { recursive: true, force: true });
  }
}

export async function fanoutBench(): Promise<void> {
  const loadBefore = load();
  const nodes = Number(process.env.BENCH_NODES ?? (quick() ? 3 : 6));
  const imageMiB = Number(process.env.BENCH_IMAGE_MIB ?? (quick() ? 8 : 64));
  const seedRate = process.env.BENCH_SEED_RATE ?? '100mbit';
  const rate = rateBytes(seedRate);
  const layers = 4;
  const layerSizes = Array.from({ length: layers }, () => Math.floor((imageMiB * MIB) / layers));
  const lab = new NetnsLab('shbench');
  const cleanups = new Cleanups();
  let work: string | undefined;
  cleanups.add(async () => {
    await lab.cleanup();
    if (work) await rm(work, { recursive: true, force: true });
  });
  let figures: Record<string, unknown> = {};
  try {
    await lab.checkPermitted();
    await lab.removeLeftovers();
    work = await mkdtemp(join(tmpdir(), 'shoal-bench-fanout-'));
    const seedData = join(work, 'seed-data');
    await mkdir(seedData, { recursive: true });
    const image = await fillSeed(seedData, layerSizes);
    const keyFile = join(work, 'cluster.key');
    await writeClusterKey(keyFile);

    await lab.createBridge();
    const seedNs = await lab.addHost('seed', `${SEED_IP}/24`, { rate: seedRate });
    const hosts: Array<{ ns: string; ip: string; url: string; proc?: NsProcess }> = [];
    for (let i = 0; i < nodes; i++) {
      const ip = `${SUBNET}.${11 + i}`;
      hosts.push({ ns: await lab.addHost(`n${i + 1}`, `${ip}/24`), ip, url: `http://${ip}:5000` });
    }
    const seedConfig = join(work, 'seed.yml');
    await writeFile(seedConfig, dockerRegistryConfig(seedData, `${SEED_IP}:5000`).join('\n') + '\n');
    const seed = lab.spawn(seedNs, DOCKER_REGISTRY_BIN, ['serve', seedConfig]);
    const seedUrl = `http://${SEED_IP}:5000`;
    await waitFor('the seed', async () => (await lab.exec(hosts[0]!.ns, 'curl', ['-sf', '-o', '/dev/null', `${seedUrl}/v2/`])).stderr === '', 15_000).catch((err: Error) => {
      throw new Error(`${err.message}\n${seed.describe()}`);
    });
    const seedTx = async (): Promise<number> => Number((await lab.exec(seedNs, 'cat', ['/sys/class/net/eth0/statistics/tx_bytes'])).stdout.trim());

    /** Every host fetches the manifest and all blobs from `base(host)`, blobs in parallel; seconds until all are done. */
    const allPull = async (base: (h: (typeof hosts)[number]) => string): Promise<number> => {
      const t = performance.now();
      await Promise.all(
        hosts.map((h) => {
          const b = base(h);
          const args = ['-sSf', '--parallel', '--parallel-max', '4', '-H', 'Accept: application/vnd.oci.image.manifest.v1+json', '-o', '/dev/null', `${b}/v2/bench/fanout/manifests/v1`];
          for (const blob of image.blobs) args.push('-o', '/dev/null', `${b}/v2/bench/fanout/blobs/${blob.digest}`);
          return lab.exec(h.ns, 'curl', args, { timeoutMs: 30 * 60_000 });
        }),
      );
      return (performance.now() - t) / 1000;
    };

    // 1. Every node straight from the seed.
    let tx0 = await seedTx();
    const directS = await allPull(() => seedUrl);
    const directTx = (await seedTx()) - tx0;

    // 2. Through Shoal: one node per namespace, every other node a static peer.
    for (const h of hosts) {
      const peers = hosts.filter((o) => o !== h).flatMap((o) => ['--peer', `${o.ip}:4001`]);
      h.proc = lab.spawn(
        h.ns,
        process.execPath,
        [SHOAL_BIN, 'serve', '--data', join(work, `data-${h.ip}`), '--listen', `${h.ip}:5000`, '--p2p-listen', `${h.ip}:4001`, '--cluster-key', keyFile, ...peers, '--seed', seedUrl, '--log-level', 'info', ...(process.env.BENCH_FANOUT_ARGS ?? '').split(' ').filter(Boolean)],
        nodeEnv(),
      );
    }
    await Promise.all(hosts.map((h) => h.proc!.waitForLog((l) => l.msg === 'listening', 120_000)));
    await waitFor(
      `every node to see its ${nodes - 1} peers`,
      async () => {
        const views = await Promise.all(hosts.map(async (h) => JSON.parse((await lab.exec(h.ns, 'curl', ['-sSf', `${h.url}/shoal/peers`])).stdout) as { peers: unknown[] }));
        return views.every((v) => v.peers.length === nodes - 1);
      },
      60_000,
    );
    tx0 = await seedTx();
    const shoalS = await allPull((h) => h.url);
    const shoalTx = (await seedTx()) - tx0;
    let seedBytes = 0;
    let peerBytes = 0;
    for (const h of hosts) {
      const m = new Metrics((await lab.exec(h.ns, 'curl', ['-sSf', `${h.url}/metrics`])).stdout);
      seedBytes += m.get('shoal_seed_bytes_total');
      peerBytes += m.get('shoal_pull_bytes_total', { source: 'peer' });
    }
    await Promise.all(hosts.map((h) => h.proc!.terminate()));
    if (process.env.BENCH_FANOUT_LOGS) {
      for (const h of hosts) await writeFile(join(process.env.BENCH_FANOUT_LOGS, `node-${h.ip}.log`), h.proc!.lines.join('\n'));
    }
    const bound = image.bytes / rate;
    figures = {
      nodes,
      image_bytes: image.bytes,
      seed_rate: seedRate,
      lower_bound_s: r(bound),
      shoal_all_done_s: r(shoalS),
      direct_all_done_s: r(directS),
      ratio_to_bound: r(shoalS / bound),
      direct_ratio_to_bound: r(directS / bound),
      seed_egress_bytes: seedBytes,
      egress_ratio: r(seedBytes / image.bytes, 3),
      seed_link_tx_bytes: shoalTx,
      seed_link_tx_bytes_direct: directTx,
      peer_bytes: peerBytes,
      processes_sharing_cores: nodes + 2,
    };
  } finally {
    await cleanups.run();
  }
  await report(
    'fanout',
    figures,
    {
      title: `fan-out: ${figures.nodes} nodes, ${imageMiB} MiB image, seed at ${seedRate} (load ${loadBefore})`,
      unit: 'seconds until the last node is done',
      bars: [
        { label: 'physical bound (image ÷ seed rate)', value: figures.lower_bound_s as number },
        { label: 'through Shoal', value: figures.shoal_all_done_s as number, mark: 1.1 * (figures.lower_bound_s as number) },
        { label: 'every node straight from the seed', value: figures.direct_all_done_s as number },
      ],
    },
    loadBefore,
  );
}
