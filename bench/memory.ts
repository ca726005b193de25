/**
 * memory: the resident memory of one node, idle and at its peak while 50 clients pull the same 512 MiB blob at
 * once (sampled from /proc every 20 ms). The clients run in this process, not in the node.
 *
 *   npm run bench -- memory          # BENCH_MEM_MIB (default 512), BENCH_MEM_CLIENTS (default 50)
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { ShoalProcesses } from '../test/helpers/spawn-node.ts';
import { Cleanups, load, MIB, parallelPull, profileEnv, push, quick, r, report, sha256 } from './lib.ts';

async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]) / 1024;
}

export async function memoryBench(): Promise<void> {
  const loadBefore = load();
  const size = Number(process.env.BENCH_MEM_MIB ?? (quick() ? 64 : 512)) * MIB;
  const clients = Number(process.env.BENCH_MEM_CLIENTS ?? 50);
  const idleS = quick() ? 2 : 5;
  const procs = new ShoalProcesses();
  const cleanups = new Cleanups();
  cleanups.add(() => procs.cleanup());
  let idle = 0;
  let afterPush = 0;
  let peak = 0;
  let mbps = 0;
  try {
    const node = await procs.serve({ dataDir: await procs.tempDir('shoal-bench-mem-'), logLevel: 'info', env: profileEnv() });
    const pid = node.child.pid!;
    await new Promise((ok) => setTimeout(ok, idleS * 1000));
    idle = await rssMiB(pid);
    const blob = randomBytes(size);
    const digest = sha256(blob);
    await push(node.url, 'bench/mem', blob, digest);
    afterPush = await rssMiB(pid);
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        peak = Math.max(peak, await rssMiB(pid).catch(() => 0));
        await new Promise((ok) => setTimeout(ok, 20));
      }
    })();
    const t = performance.now();
    const bytes = await parallelPull(node.url, 'bench/mem', digest, clients);
    mbps = bytes / MIB / ((performance.now() - t) / 1000);
    sampling = false;
    await sampler;
    await node.terminate();
  } finally {
    await cleanups.run();
  }
  const figures = { blob_mib: size / MIB, clients, idle_rss_mib: r(idle, 0), after_push_rss_mib: r(afterPush, 0), peak_rss_mib: r(peak, 0), aggregate_mbps: r(mbps, 0) };
  await report(
    'memory',
    figures,
    {
      title: `memory: ${clients} pulls of a ${size / MIB} MiB blob (load ${loadBefore})`,
      unit: 'RSS MiB (red: 256 MiB target)',
      bars: [
        { label: 'idle', value: figures.idle_rss_mib },
        { label: 'after the push', value: figures.after_push_rss_mib },
        { label: `peak, ${clients} concurrent pulls`, value: figures.peak_rss_mib, mark: 256 },
      ],
    },
    loadBefore,
  );
}
