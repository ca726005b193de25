/**
 * single: one node against CNCF distribution (the Debian `docker-registry`), side by side in one run: push and
 * pull of one blob, 20 and 100 clients pulling the same blob at once, a cold pull through a node in front of
 * distribution against a direct pull from it, and manifest requests per second by tag and by digest with 50
 * connections. Ratios are Shoal's MB/s (or requests/s) ÷ the anchor's: above 1 Shoal is faster.
 *
 *   npm run bench -- single          # 256 MiB blob, 3 rounds (BENCH_MIB, BENCH_ROUNDS, BENCH_RPS_S seconds per run)
 *                                    # concurrent clients pull a 32 MiB blob (BENCH_CONC_MIB)
 */
import { randomBytes } from 'node:crypto';
import { startDockerRegistry } from '../test/helpers/seed-registry.ts';
import { ShoalProcesses, type ShoalProcess } from '../test/helpers/spawn-node.ts';
import { Cleanups, cpuPerMiB, load, median, MIB, parallelPull, pinnedRequestsPerSecond, profileEnv, pull, push, pushManifest, quick, r, report, sha256, timed } from './lib.ts';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

/** A small image (a config and `layer`) pushed as `bench/manifest:v1`; returns the manifest's digest. */
async function pushSmallImage(base: string, layer: Buffer): Promise<string> {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  await push(base, 'bench/manifest', config, sha256(config));
  await push(base, 'bench/manifest', layer, sha256(layer));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256(layer), size: layer.length }],
    }),
  );
  await pushManifest(base, 'bench/manifest', 'v1', manifest, OCI_MANIFEST);
  return sha256(manifest);
}

export async function singleBench(): Promise<void> {
  const loadBefore = load();
  const size = Number(process.env.BENCH_MIB ?? (quick() ? 32 : 256)) * MIB;
  const rounds = Number(process.env.BENCH_ROUNDS ?? (quick() ? 1 : 3));
  const rpsSeconds = Number(process.env.BENCH_RPS_S ?? (quick() ? 2 : 5));
  const rpsRuns = quick() ? 1 : 3;
  const clientsMany = quick() ? 20 : 100;
  const blob = randomBytes(size);
  const digest = sha256(blob);
  // 100 clients of the big blob would take minutes per run: the concurrent runs use a smaller one.
  const concBlob = randomBytes(Number(process.env.BENCH_CONC_MIB ?? (quick() ? 8 : 32)) * MIB);
  const concDigest = sha256(concBlob);
  const procs = new ShoalProcesses();
  const cleanups = new Cleanups();
  cleanups.add(() => procs.cleanup());
  const node = async (args: string[] = []): Promise<ShoalProcess> =>
    procs.serve({ dataDir: await procs.tempDir('shoal-bench-single-'), logLevel: 'info', args, env: profileEnv() });
  const f: Record<string, number> = {};
  const runs: Record<string, number[]> = {};
  try {
    // distribution as it ships its config: blob descriptors cached in memory.
    const dist = await startDockerRegistry({ blobDescriptorCache: true });
    cleanups.add(() => dist.stop());
    const local = await node();
    const pushD: number[] = [];
    const pushS: number[] = [];
    const pullD: number[] = [];
    const pullS: number[] = [];
    for (let i = 0; i < rounds; i++) {
      pushD.push(await timed(() => push(dist.url, `bench/push${i}`, blob, digest)));
      pushS.push(await timed(() => push(local.url, `bench/push${i}`, blob, digest)));
      pullD.push(await timed(() => pull(dist.url, `bench/push${i}`, digest)));
      pullS.push(await timed(() => pull(local.url, `bench/push${i}`, digest)));
    }
    Object.assign(runs, { pushD, pushS, pullD, pullS });
    f.push_ratio = median(pushS) / median(pushD);
    f.pull_ratio = median(pullS) / median(pullD);
    f.push_mbps = median(pushS);
    f.pull_mbps = median(pullS);
    await push(dist.url, 'bench/conc', concBlob, concDigest);
    await push(local.url, 'bench/conc', concBlob, concDigest);
    for (const clients of [20, clientsMany]) {
      // Alternating which goes first, so that neither always meets a warmer page cache.
      const d = await timed(() => parallelPull(dist.url, 'bench/conc', concDigest, clients));
      const s = await timed(() => parallelPull(local.url, 'bench/conc', concDigest, clients));
      const s2 = await timed(() => parallelPull(local.url, 'bench/conc', concDigest, clients));
      const d2 = await timed(() => parallelPull(dist.url, 'bench/conc', concDigest, clients));
      runs[`clients${clients}`] = [d, s, s2, d2];
      f[`concurrent_ratio_${clients}`] = (s + s2) / (d + d2);
      f[`concurrent_mbps_${clients}`] = (s + s2) / 2;
    }
    f.concurrent_ratio = f.concurrent_ratio_20!;

    // Cold pull through a node in front of distribution, verified by the client, against distribution direct.
    const coldD: number[] = [];
    const coldS: number[] = [];
    const coldCpu: number[] = [];
    const coldMain: number[] = [];
    for (let i = 0; i < rounds; i++) {
      const mirror = await node(['--seed', dist.url]);
      coldD.push(await timed(() => pull(dist.url, 'bench/push0', digest, true)));
      const cold = await cpuPerMiB(mirror.child.pid!, () => pull(mirror.url, 'bench/push0', digest, true));
      coldS.push(cold.mbps);
      coldCpu.push(cold.cpuMsPerMiB);
      coldMain.push(cold.mainMsPerMiB);
      await mirror.terminate();
    }
    Object.assign(runs, { coldD, coldS });
    f.cold_pull_ratio = median(coldS) / median(coldD);
    f.cold_pull_mbps = median(coldS);
    f.cold_pull_node_cpu_ms_per_mib = median(coldCpu);
    f.cold_pull_node_main_thread_ms_per_mib = median(coldMain);

    // Manifests under load: 50 connections, by tag and by digest, medians of alternating runs.
    const layer = randomBytes(MIB);
    const mdD = await pushSmallImage(dist.url, layer);
    const mdS = await pushSmallImage(local.url, layer);
    if (mdD !== mdS) throw new Error('the two registries hold different manifests');
    const rps = { tagD: [] as number[], tagS: [] as number[], digD: [] as number[], digS: [] as number[] };
    let how = '';
    const measure = async (into: number[], base: string, path: string): Promise<void> => {
      const m = await pinnedRequestsPerSecond(base, path, { connections: 50, seconds: rpsSeconds, accept: OCI_MANIFEST });
      into.push(m.rps);
      how = m.how;
    };
    for (let i = 0; i < rpsRuns; i++) {
      await measure(rps.tagD, dist.url, '/v2/bench/manifest/manifests/v1');
      await measure(rps.tagS, local.url, '/v2/bench/manifest/manifests/v1');
      await measure(rps.digS, local.url, `/v2/bench/manifest/manifests/${mdS}`);
      await measure(rps.digD, dist.url, `/v2/bench/manifest/manifests/${mdD}`);
    }
    Object.assign(runs, rps);
    f.manifest_rps_tag = median(rps.tagS);
    f.manifest_rps_tag_distribution = median(rps.tagD);
    f.manifest_rps_digest = median(rps.digS);
    f.manifest_rps_digest_distribution = median(rps.digD);
    f.manifest_tag_ratio = f.manifest_rps_tag / f.manifest_rps_tag_distribution;
    f.manifest_digest_ratio = f.manifest_rps_digest / f.manifest_rps_digest_distribution;
    // 1: wrk on the first core, each registry pinned to the last; 0: the in-process loop on shared cores.
    f.manifest_load_pinned = how === 'wrk-pinned' ? 1 : 0;
    await local.terminate();
  } finally {
    await cleanups.run();
  }
  const figures: Record<string, unknown> = { blob_mib: size / MIB, concurrent_blob_mib: concBlob.length / MIB, rounds, clients_many: clientsMany, ratio_is: "shoal's MB/s (or requests/s) / distribution's" };
  for (const [k, v] of Object.entries(f)) figures[k] = r(v, k.includes('ratio') || k.includes('per_mib') ? 2 : 0);
  figures.runs = Object.fromEntries(Object.entries(runs).map(([k, v]) => [k, v.map((x) => r(x, 0))]));
  await report(
    'single',
    figures,
    {
      title: `single node vs distribution, ${size / MIB} MiB blob (load ${loadBefore})`,
      unit: "ratio: shoal ÷ distribution (red: 1.0)",
      bars: [
        { label: 'push', value: f.push_ratio!, mark: 1 },
        { label: 'pull', value: f.pull_ratio!, mark: 1 },
        { label: '20 clients, aggregate', value: f.concurrent_ratio_20!, mark: 1 },
        { label: `${clientsMany} clients, aggregate`, value: f[`concurrent_ratio_${clientsMany}`]!, mark: 1 },
        { label: 'cold pull through a node (vs direct)', value: f.cold_pull_ratio!, mark: 0.5 },
        { label: 'manifests/s by tag (50 conns)', value: f.manifest_tag_ratio!, mark: 1 },
        { label: 'manifests/s by digest (50 conns)', value: f.manifest_digest_ratio!, mark: 1 },
      ],
    },
    loadBefore,
  );
}
