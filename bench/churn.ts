/**
 * Churn under a quota: one node (its own process) with `--max-store`, a seed (the Debian `docker-registry`), and
 * several clients at once pushing new images, pulling through from the seed, pulling what was pushed, retagging,
 * deleting and importing bundles, for a few minutes, while the node's periodic GC and scrub run. Every few seconds it
 * samples the bytes under <data>/blobs and the node's status; at the end it checks that every pinned image is
 * intact (every blob on disk, and a byte-exact pull) and runs `shoal fsck` on the stopped store.
 *
 *   npm run bench:churn
 *   CHURN_SECONDS=600 CHURN_QUOTA=500M CHURN_CLIENTS=6 npm run bench:churn
 *
 * Prints a time series (seconds, MB on disk, MB stored, evictions, GC runs) and a summary. The exit code is 1 when a
 * pin lost content, the store went over its quota by more than one blob per client, or fsck found problems.
 */
import '../src/polyfill.ts';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSize } from '../src/limits/size.ts';
import { bytesOnDisk, hasBlobFile, pin, pullImage, statusOf } from '../test/helpers/lifecycle.ts';
import { scrape } from '../test/helpers/metrics.ts';
import { pushManifest, pushRandomImage, startDockerRegistry, type PushedImage } from '../test/helpers/seed-registry.ts';
import { runShoal, ShoalProcesses } from '../test/helpers/spawn-node.ts';
import { prng } from '../test/helpers/prng.ts';

const seconds = Number(process.env.CHURN_SECONDS ?? 150);
const quota = parseSize(process.env.CHURN_QUOTA ?? '120M');
const clients = Number(process.env.CHURN_CLIENTS ?? 3);
const MB = 1_000_000;
const maxLayer = Math.min(4 * MB, Math.floor(quota / 20));


const mb = (n: number): string => (n / MB).toFixed(1);

async function main(): Promise<void> {
  const seed = Number(process.env.CHURN_SEED ?? Date.now() % 1_000_000);
  const random = prng(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(random() * xs.length)]!;
  const layerSize = (): number => Math.floor(100_000 + random() * (maxLayer - 100_000));
  process.stdout.write(`churn: ${seconds} s, quota ${mb(quota)} MB, ${clients} clients, seed ${seed}\n`);

  const registry = await startDockerRegistry();
  const procs = new ShoalProcesses();
  const work = await mkdtemp(join(tmpdir(), 'shoal-churn-'));
  let failed = false;
  try {
    // What the seed has: images pulled through the node, and the images of a bundle imported again and again.
    const seedImages: PushedImage[] = [];
    for (let i = 0; i < 24; i++) seedImages.push(await pushRandomImage(registry.url, `churn/seeded${i}`, 'v1', { layerSizes: [layerSize(), 50_000] }));
    for (let i = 0; i < 3; i++) await pushRandomImage(registry.url, `churn/bundle${i}`, 'v1', { layerSizes: [layerSize()] });
    const bundle = join(work, 'bundle.tar');
    const exported = await runShoal(['export', ...[0, 1, 2].map((i) => `churn.example/churn/bundle${i}:v1`), '--from', registry.url, '-o', bundle], { timeoutMs: 120_000 });
    if (exported.code !== 0) throw new Error(`shoal export failed: ${exported.stderr}`);

    const dataDir = join(work, 'node');
    const node = await procs.serve({
      dataDir,
      logLevel: 'info',
      args: ['--max-store', String(quota), '--seed', registry.url, '--gc-interval', '20s', '--scrub-rate', '50M'],
      env: { SHOAL_GC_GRACE: '5s', SHOAL_UPLOAD_TIMEOUT: '30s', SHOAL_SCRUB_INTERVAL: '10s' },
    });

    // Pins: about a quarter of the quota, pushed to this node only (nothing could bring them back).
    const pinned: PushedImage[] = [];
    for (let i = 0; i < 4; i++) {
      const img = await pushRandomImage(node.url, `churn/pinned${i}`, 'v1', { layerSizes: [Math.floor(quota / 20), 20_000] });
      await pin(node.url, img.repository, img.manifestDigest);
      pinned.push(img);
    }
    const pinnedBlobs = pinned.flatMap((p) => [p.manifestDigest, p.config.digest, ...p.layers.map((l) => l.digest)]);
    const pinsIntact = async (): Promise<string[]> => {
      const lost: string[] = [];
      for (const d of pinnedBlobs) if (!(await hasBlobFile(dataDir, d))) lost.push(d);
      return lost;
    };

    const ops: Record<string, number> = {};
    const count = (what: string): void => void (ops[what] = (ops[what] ?? 0) + 1);
    const pushed: PushedImage[] = [];
    const deadline = Date.now() + seconds * 1000;
    const samples: Array<{ t: number; disk: number; stored: number; evictions: number; gcRuns: number }> = [];
    const started = Date.now();
    let lostPins: string[] = [];

    const sampler = (async () => {
      while (Date.now() < deadline) {
        const [disk, status, metrics] = await Promise.all([bytesOnDisk(dataDir), statusOf(node.url), scrape(node.url)]);
        samples.push({ t: (Date.now() - started) / 1000, disk, stored: status.store.bytes, evictions: metrics.get('shoal_evictions_total'), gcRuns: metrics.get('shoal_gc_runs_total') });
        const lost = await pinsIntact();
        if (lost.length > 0) lostPins = lost;
        await new Promise((r) => setTimeout(r, 2000));
      }
    })();

    let imports = Promise.resolve();
    let lastImport = 0;
    const client = async (): Promise<void> => {
      while (Date.now() < deadline) {
        const r = random();
        try {
          if (r < 0.3) {
            const img = await pushRandomImage(node.url, `churn/app${Math.floor(random() * 6)}`, `t${Math.floor(random() * 8)}`, { layerSizes: [layerSize(), 30_000] });
            pushed.push(img);
            count('push');
          } else if (r < 0.6) {
            const s = pick(seedImages);
            await pullImage(node.url, s.repository, s.tag);
            count('pull from seed');
          } else if (r < 0.75 && pushed.length > 0) {
            const p = pick(pushed);
            // A pushed image whose layers were evicted is gone for good (the seed never had it): that is the cache.
            await pullImage(node.url, p.repository, p.manifestDigest).then(
              () => count('pull pushed'),
              () => count('pull pushed: evicted'),
            );
          } else if (r < 0.85 && pushed.length > 0) {
            const p = pick(pushed);
            await pushManifest(node.url, p.repository, `retag${Math.floor(random() * 4)}`, p.manifestBytes, p.manifestMediaType).then(
              () => count('retag'),
              () => count('retag: manifest gone'),
            );
          } else if (r < 0.95 && pushed.length > 0) {
            const p = pushed.splice(Math.floor(random() * pushed.length), 1)[0]!;
            const res = await fetch(`${node.url}/v2/${p.repository}/manifests/${random() < 0.5 ? p.tag : p.manifestDigest}`, { method: 'DELETE' });
            await res.arrayBuffer();
            count(res.status === 202 ? 'delete' : 'delete: already gone');
          } else if (Date.now() - lastImport > 15_000) {
            lastImport = Date.now();
            imports = imports.then(async () => {
              const res = await runShoal(['import', bundle, '--node', node.url], { timeoutMs: 120_000 });
              count(res.code === 0 ? 'import' : 'import failed');
            });
            await imports;
          }
        } catch (err) {
          count(`error: ${(err as Error).message.slice(0, 80)}`);
        }
      }
    };
    await Promise.all([...Array.from({ length: clients }, client), sampler]);

    // Settle, collect once more, and check every pin byte for byte.
    await new Promise((r) => setTimeout(r, 1000));
    await fetch(`${node.url}/shoal/gc`, { method: 'POST' }).then((r) => r.arrayBuffer());
    lostPins = [...new Set([...lostPins, ...(await pinsIntact())])];
    for (const p of pinned) {
      try {
        const got = await pullImage(node.url, p.repository, p.tag);
        for (const l of p.layers) if (!got.blobs.get(l.digest)?.equals(l.bytes)) lostPins.push(l.digest);
      } catch (err) {
        lostPins.push(`${p.repository}: ${(err as Error).message}`);
      }
    }
    const final = await statusOf(node.url);
    const metrics = await scrape(node.url);
    await node.terminate();
    const fsck = await runShoal(['fsck', '--data', dataDir, '--json'], { timeoutMs: 300_000 });
    const fsckProblems = fsck.code === 0 ? 0 : ((JSON.parse(fsck.stdout || '{"problems":[0]}') as { problems: unknown[] }).problems.length || 1);

    process.stdout.write(`\n${'s'.padStart(6)} ${'disk MB'.padStart(8)} ${'stored MB'.padStart(9)} ${'evictions'.padStart(9)} ${'gc runs'.padStart(7)}\n`);
    for (const s of samples) {
      process.stdout.write(`${s.t.toFixed(0).padStart(6)} ${mb(s.disk).padStart(8)} ${mb(s.stored).padStart(9)} ${String(s.evictions).padStart(9)} ${String(s.gcRuns).padStart(7)}\n`);
    }
    const worst = Math.max(...samples.map((s) => Math.max(s.disk, s.stored)));
    const bound = quota + clients * maxLayer;
    process.stdout.write(`\noperations: ${Object.entries(ops).map(([k, v]) => `${k} ${v}`).join(', ')}\n`);
    process.stdout.write(`quota ${mb(quota)} MB; most seen on disk ${mb(worst)} MB (bound: quota + one ${mb(maxLayer)} MB blob per client = ${mb(bound)} MB); ${samples.filter((s) => s.disk > quota).length}/${samples.length} samples above the quota\n`);
    process.stdout.write(`evictions ${metrics.get('shoal_evictions_total')} (${mb(metrics.get('shoal_evicted_bytes_total'))} MB); GC runs ${metrics.get('shoal_gc_runs_total')} (${mb(metrics.get('shoal_gc_freed_bytes_total'))} MB freed); scrub ${mb(metrics.get('shoal_scrub_bytes_total'))} MB re-hashed, ${metrics.get('shoal_corrupt_blobs_total')} corrupt\n`);
    process.stdout.write(`pins: ${pinned.length} images, ${mb(final.quota.pinnedBytes)} MB: ${lostPins.length === 0 ? 'every pin intact' : `LOST ${lostPins.join(', ')}`}\n`);
    process.stdout.write(`fsck of the stopped store: ${fsckProblems === 0 ? 'clean' : `${fsckProblems} problem(s)\n${fsck.stdout}${fsck.stderr}`}\n`);
    failed = lostPins.length > 0 || worst > bound || fsckProblems > 0;
  } finally {
    await procs.cleanup();
    await registry.stop();
    await rm(work, { recursive: true, force: true });
  }
  if (failed) process.exitCode = 1;
}

await main();
