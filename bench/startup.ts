/**
 * What a node costs before it does any work: the time from `shoal serve` to `/v2/` answering, the resident
 * memory of an idle node, and the latency of a short CLI call. Each is measured for the compiled program
 * (dist/, as bin/shoal.js runs it) and, for comparison, for the TypeScript sources run through tsx. The DaemonSet's
 * requests and limits (deploy/daemonset.yaml) are sized from these numbers. Nothing here asserts.
 *
 *   npm run bench                         # this, then the other scenarios of bench/run.ts
 *   npm run bench -- startup              # only this
 *   BENCH_STARTS=5 BENCH_IDLE_S=10        # starts per row (median), seconds idle before RSS is read
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../test/helpers/seed-registry.ts';
import { writeClusterKey } from '../src/p2p/keys.ts';
import { load, quick, r, report, type Bar } from './lib.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const starts = Number(process.env.BENCH_STARTS ?? (quick() ? 2 : 5));
const idleSeconds = Number(process.env.BENCH_IDLE_S ?? (quick() ? 2 : 10));

/** How each variant is started: the compiled program, or the sources through tsx. */
const VARIANTS = {
  compiled: [join(root, 'bench/compiled-entry.js')],
  'sources (tsx)': ['--import', 'tsx', join(root, 'bench/source-entry.ts')],
} as const;
type Variant = keyof typeof VARIANTS;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** CPU time (user + system, ms) a process has used so far, from /proc. */
async function cpuMs(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // USER_HZ is 100 on Linux
}

async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]) / 1024;
}

/** Runs a short CLI call to completion; wall time in ms. */
function cliCall(variant: Variant, args: string[]): number {
  const t = performance.now();
  const res = spawnSync(process.execPath, [...VARIANTS[variant], ...args], { cwd: root, stdio: 'ignore' });
  if (res.status !== 0) throw new Error(`shoal ${args.join(' ')} exited ${res.status}`);
  return performance.now() - t;
}

interface Start {
  readyMs: number;
  cpuMs: number;
  idleRssMiB?: number;
}

/** `shoal serve` until `/v2/` answers 200 (polled every 5 ms); optionally idle, then its RSS. */
async function serveOnce(variant: Variant, extra: string[], idle: boolean): Promise<Start> {
  const dir = await mkdtemp(join(tmpdir(), 'shoal-bench-start-'));
  const port = await freePort();
  const t = performance.now();
  const child = spawn(process.execPath, [...VARIANTS[variant], 'serve', '--data', dir, '--listen', `127.0.0.1:${port}`, '--log-level', 'warn', ...extra], {
    cwd: root,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const exited = new Promise<void>((ok) => child.once('exit', () => ok()));
  try {
    for (;;) {
      if (child.exitCode !== null) throw new Error(`shoal serve exited ${child.exitCode}: ${stderr}`);
      try {
        const res = await fetch(`http://127.0.0.1:${port}/v2/`);
        await res.arrayBuffer();
        if (res.status === 200) break;
      } catch {
        // not listening yet
      }
      await new Promise((ok) => setTimeout(ok, 5));
    }
    const readyMs = performance.now() - t;
    const start: Start = { readyMs, cpuMs: await cpuMs(child.pid!) };
    if (idle) {
      await new Promise((ok) => setTimeout(ok, idleSeconds * 1000));
      start.idleRssMiB = await rssMiB(child.pid!);
    }
    return start;
  } finally {
    child.kill('SIGKILL');
    await exited;
    await rm(dir, { recursive: true, force: true });
  }
}

/** Measures both variants; prints one table, then the JSON line (`ready_ms`: the compiled program, without peers). */
export async function startupBench(): Promise<void> {
  const loadBefore = load();
  const figures: Record<string, number> = {};
  const bars: Bar[] = [];
  // The compiled row must run the current sources: build first when they changed (bin/shoal.js would use tsx).
  const build = spawnSync(process.execPath, [join(root, 'scripts/build.mjs'), '--if-stale'], { cwd: root, stdio: 'inherit' });
  if (build.status !== 0) throw new Error('npm run build failed');
  const keyDir = await mkdtemp(join(tmpdir(), 'shoal-bench-key-'));
  const key = join(keyDir, 'cluster.key');
  await writeClusterKey(key);
  const context = `${availableParallelism()} cores, load average ${loadavg()[0]!.toFixed(1)} before the run; one shoal process at a time`;
  const lines: string[] = [];
  try {
    for (const variant of Object.keys(VARIANTS) as Variant[]) {
      cliCall(variant, ['--help']); // warm the page cache
      const help = median(Array.from({ length: starts }, () => cliCall(variant, ['--help'])));
      const rows: Array<[string, Start[]]> = [];
      for (const [label, extra] of [
        ['serve', []],
        ['serve with peers (p2p on)', ['--p2p-listen', '127.0.0.1:0', '--cluster-key', key]],
      ] as const) {
        const runs: Start[] = [];
        for (let i = 0; i < starts; i++) runs.push(await serveOnce(variant, [...extra], i === 0));
        rows.push([label, runs]);
      }
      lines.push(`${variant}: shoal --help ${help.toFixed(0)} ms`);
      const tag = variant === 'compiled' ? '' : '_tsx';
      figures[`help_ms${tag}`] = r(help, 0);
      for (const [label, runs] of rows) {
        const key = label === 'serve' ? 'ready_ms' : 'ready_p2p_ms';
        figures[`${key}${tag}`] = r(median(runs.map((x) => x.readyMs)), 0);
        figures[`idle_rss_mib${label === 'serve' ? '' : '_p2p'}${tag}`] = r(runs[0]!.idleRssMiB!, 0);
        bars.push({ label: `${variant}: ${label}`, value: median(runs.map((x) => x.readyMs)) });
      }
      for (const [label, runs] of rows) {
        lines.push(
          `${variant}: ${label}: start to ready ${median(runs.map((r) => r.readyMs)).toFixed(0)} ms ` +
            `(CPU ${median(runs.map((r) => r.cpuMs)).toFixed(0)} ms), idle RSS after ${idleSeconds} s ${runs[0]!.idleRssMiB!.toFixed(0)} MiB`,
        );
      }
    }
  } finally {
    await rm(keyDir, { recursive: true, force: true });
  }
  process.stdout.write(`\nstart-up and idle cost (median of ${starts}; ${context})\n${lines.map((l) => `  ${l}`).join('\n')}\n`);
  await report('startup', { starts, ...figures }, { title: `start-up: shoal serve to /v2/ answering (load ${loadBefore})`, unit: 'ms, median', bars }, loadBefore);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await startupBench();
