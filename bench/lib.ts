/**
 * What the benchmark scenarios share: timing, pushing and pulling blobs over HTTP, a small HTTP load loop, and
 * writing a scenario's figures (bench/results/<scenario>.json) with a bar chart of them (<scenario>.svg).
 * Nothing here asserts: the figures are printed and stored, never compared with a threshold.
 */
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { availableParallelism, loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Agent, request } from 'undici';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export const MIB = 1024 * 1024;
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const RESULTS_DIR = process.env.BENCH_RESULTS ?? join(ROOT, 'bench/results');

/** Short CI mode: small sizes, one round, figures printed and never asserted. */
export function quick(): boolean {
  return process.env.BENCH_QUICK === '1' || process.argv.includes('--quick');
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
}

/** MB/s (MiB per second) of `fn`, which returns the bytes it moved. */
export async function timed(fn: () => Promise<number>): Promise<number> {
  const t = process.hrtime.bigint();
  const bytes = await fn();
  const s = Number(process.hrtime.bigint() - t) / 1e9;
  return bytes / MIB / s;
}

export function sha256(buf: Uint8Array): string {
  return `sha256:${createHash('sha256').update(buf).digest('hex')}`;
}

/** One load figure to note next to every measurement: the 1-minute load average of this machine. */
export function load(): number {
  return Number(loadavg()[0]!.toFixed(2));
}

export async function push(base: string, repo: string, blob: Buffer, digest: string): Promise<number> {
  const start = await fetch(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  await start.arrayBuffer();
  const url = new URL(start.headers.get('location')!, base);
  url.searchParams.set('digest', digest);
  const res = await fetch(url, { method: 'PUT', body: blob, headers: { 'content-type': 'application/octet-stream' } });
  await res.arrayBuffer();
  if (res.status !== 201) throw new Error(`push to ${base}: HTTP ${res.status}`);
  return blob.length;
}

export async function pushManifest(base: string, repo: string, ref: string, body: Buffer, mediaType: string): Promise<void> {
  const res = await fetch(`${base}/v2/${repo}/manifests/${ref}`, { method: 'PUT', body, headers: { 'content-type': mediaType } });
  await res.arrayBuffer();
  if (res.status !== 201) throw new Error(`manifest push to ${base}: HTTP ${res.status}`);
}

/** Pulls a blob; with `verify`, checks its digest as a client would. Returns the bytes read. */
export async function pull(base: string, repo: string, digest: string, verify = false): Promise<number> {
  const res = await fetch(`${base}/v2/${repo}/blobs/${digest}`);
  if (res.status !== 200 || !res.body) throw new Error(`pull from ${base}: HTTP ${res.status}`);
  const hash = verify ? createHash('sha256') : undefined;
  let n = 0;
  for await (const chunk of res.body) {
    n += chunk.length;
    hash?.update(chunk);
  }
  if (hash && `sha256:${hash.digest('hex')}` !== digest) throw new Error('pulled bytes do not match');
  return n;
}

export async function parallelPull(base: string, repo: string, digest: string, clients: number): Promise<number> {
  const counts = await Promise.all(Array.from({ length: clients }, () => pull(base, repo, digest)));
  return counts.reduce((a, b) => a + b, 0);
}

/**
 * Requests per second of GETs on `path` with `connections` keep-alive connections, each with one request in
 * flight, for `seconds`. Every answer must be 200: an error ends the run.
 */
/** Whether a program is on PATH. */
function has(program: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${program}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Requests per second on separate cores: with `wrk` and `taskset` (and 2 cores or more), the server listening at
 * `base` is pinned to the last core and wrk to the first, so that the load generator does not take the server's
 * CPU (the loop below shares the cores with it, and its figures swing by 5x). Else the in-process loop. Says
 * which it used.
 */
export async function pinnedRequestsPerSecond(
  base: string,
  path: string,
  opts: { connections: number; seconds: number; accept?: string },
): Promise<{ rps: number; how: 'wrk-pinned' | 'loop' }> {
  const cores = availableParallelism();
  if (process.env.BENCH_PIN === '0' || cores < 2 || !has('wrk') || !has('taskset') || !has('ss')) return { rps: await requestsPerSecond(base, path, opts), how: 'loop' };
  const port = new URL(base).port;
  const pid = /pid=(\d+)/.exec(execFileSync('ss', ['-Hltnp', `sport = :${port}`]).toString())?.[1];
  if (!pid) return { rps: await requestsPerSecond(base, path, opts), how: 'loop' };
  execFileSync('taskset', ['-a', '-p', '-c', String(cores - 1), pid], { stdio: 'ignore' });
  const args = ['-c', '0', 'wrk', '-t1', `-c${opts.connections}`, `-d${opts.seconds}s`, '-H', `Accept: ${opts.accept ?? '*/*'}`, new URL(path, base).href];
  const { stdout } = await execFileP('taskset', args);
  const failed = /Non-2xx or 3xx responses: (\d+)/.exec(stdout);
  if (failed) throw new Error(`GET ${path} at ${base}: ${failed[1]} answers were not 200:\n${stdout}`);
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(stdout);
  if (!rps) throw new Error(`wrk printed no rate:\n${stdout}`);
  return { rps: Number(rps[1]), how: 'wrk-pinned' };
}

export async function requestsPerSecond(base: string, path: string, opts: { connections: number; seconds: number; accept?: string }): Promise<number> {
  const dispatcher = new Agent({ connections: opts.connections, pipelining: 1, keepAliveTimeout: 30_000 });
  const url = new URL(path, base);
  const headers = { accept: opts.accept ?? '*/*' };
  let done = 0;
  const until = performance.now() + opts.seconds * 1000;
  const worker = async (): Promise<void> => {
    while (performance.now() < until) {
      const res = await request(url, { dispatcher, headers });
      await res.body.arrayBuffer();
      if (res.statusCode !== 200) throw new Error(`GET ${url.href}: HTTP ${res.statusCode}`);
      done++;
    }
  };
  const t = performance.now();
  try {
    await Promise.all(Array.from({ length: opts.connections }, worker));
  } finally {
    await dispatcher.close();
  }
  return done / ((performance.now() - t) / 1000);
}

/** One bar of a scenario's chart. */
export interface Bar {
  label: string;
  value: number;
  /** Drawn as a dashed line across the bar's row: the target or the anchor. */
  mark?: number;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** A horizontal bar chart as a standalone SVG. */
export function barChart(title: string, unit: string, bars: Bar[]): string {
  const rowH = 28;
  const labelW = 300;
  const barW = 420;
  const top = 40;
  const h = top + bars.length * rowH + 30;
  const w = labelW + barW + 110;
  const max = Math.max(1e-9, ...bars.flatMap((b) => [b.value, b.mark ?? 0]).filter(Number.isFinite));
  const rows = bars.map((b, i) => {
    const y = top + i * rowH;
    const len = Number.isFinite(b.value) ? (b.value / max) * barW : 0;
    const mark = b.mark !== undefined ? `<line x1="${labelW + (b.mark / max) * barW}" x2="${labelW + (b.mark / max) * barW}" y1="${y}" y2="${y + rowH - 8}" stroke="#c00" stroke-dasharray="3,2"/>` : '';
    const value = Number.isFinite(b.value) ? (b.value >= 100 ? b.value.toFixed(0) : b.value.toFixed(2)) : 'n/a';
    return (
      `<text x="${labelW - 8}" y="${y + 15}" text-anchor="end">${esc(b.label)}</text>` +
      `<rect x="${labelW}" y="${y}" width="${len.toFixed(1)}" height="${rowH - 8}" fill="#3a7bd5"/>${mark}` +
      `<text x="${labelW + len + 6}" y="${y + 15}">${value}</text>`
    );
  });
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" font-family="sans-serif" font-size="12">` +
    `<rect width="100%" height="100%" fill="#fff"/>` +
    `<text x="10" y="22" font-size="14" font-weight="bold">${esc(title)}</text>` +
    `<text x="${w - 10}" y="22" text-anchor="end" fill="#555">${esc(unit)}</text>` +
    rows.join('') +
    `<text x="10" y="${h - 10}" fill="#777">dashed red: target or anchor</text>` +
    `</svg>\n`
  );
}

/**
 * Prints a scenario's figures as its one last JSON line and writes bench/results/<scenario>.json and .svg.
 * Every result carries the machine's cores and load before and after the run.
 */
export async function report(scenario: string, figures: Record<string, unknown>, chart: { title: string; unit: string; bars: Bar[] }, loadBefore: number): Promise<void> {
  const out = { scenario, ...figures, cores: availableParallelism(), load_before: loadBefore, load_after: load(), quick: quick(), at: new Date().toISOString() };
  await mkdir(RESULTS_DIR, { recursive: true });
  await writeFile(join(RESULTS_DIR, `${scenario}.json`), JSON.stringify(out, null, 2) + '\n');
  await writeFile(join(RESULTS_DIR, `${scenario}.svg`), barChart(chart.title, chart.unit, chart.bars));
  process.stdout.write(JSON.stringify(out) + '\n');
}

/** Rounds a figure for the JSON line. */
export function r(x: number, digits = 2): number {
  return Number.isFinite(x) ? Number(x.toFixed(digits)) : x;
}

/** Cleanups run on SIGINT/SIGTERM as well as at the end, so an interrupted run leaves nothing behind. */
export class Cleanups {
  private readonly fns: Array<() => Promise<unknown>> = [];
  private readonly onSignal = (sig: NodeJS.Signals): void => {
    process.stderr.write(`\n${sig}: cleaning up\n`);
    void this.run().finally(() => process.exit(130));
  };

  constructor() {
    process.once('SIGINT', this.onSignal);
    process.once('SIGTERM', this.onSignal);
  }

  add(fn: () => Promise<unknown>): void {
    this.fns.push(fn);
  }

  async run(): Promise<void> {
    process.off('SIGINT', this.onSignal);
    process.off('SIGTERM', this.onSignal);
    const fns = this.fns.splice(0).reverse();
    for (const fn of fns) await fn().catch((err: Error) => process.stderr.write(`cleanup: ${err.message}\n`));
  }
}

/** With BENCH_PROFILE=<dir>: the environment that makes a spawned node write a V8 CPU profile there at exit. */
export function profileEnv(): Record<string, string> | undefined {
  const dir = process.env.BENCH_PROFILE;
  if (!dir) return undefined;
  return { BENCH_PROFILE_DIR: dir, NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${join(ROOT, 'bench/cpu-profile.mjs')}`.trim() };
}

/** CPU time (user + system, ms) a process has used so far, from /proc (USER_HZ 100); with `thread`, that thread's. */
export async function cpuMs(pid: number, thread?: number): Promise<number> {
  const stat = await readFile(thread === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${thread}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
}

/** CPU ms of every thread of a process, by thread id, with the thread's name. */
async function threadCpu(pid: number): Promise<Map<string, { name: string; ms: number; user: number; sys: number }>> {
  const out = new Map<string, { name: string; ms: number; user: number; sys: number }>();
  for (const tid of await readdir(`/proc/${pid}/task`)) {
    const stat = await readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8').catch(() => '');
    if (!stat) continue;
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const [user, sys] = [Number(fields[11]) * 10, Number(fields[12]) * 10];
    const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')).replace(/\d+$/, '#');
    out.set(tid, { name: `${tid === String(pid) ? 'main' : name}`, ms: user + sys, user, sys });
  }
  return out;
}

/**
 * Runs `fn` (which returns the bytes it moved) and gives MB/s, the process's CPU ms per MiB, and its main
 * thread's: the JavaScript thread is the one that cannot spread over cores, so 1000 ÷ that is the MB/s the node
 * could reach with a core for it and the rest on others.
 */
export async function cpuPerMiB(pid: number, fn: () => Promise<number>): Promise<{ mbps: number; cpuMsPerMiB: number; mainMsPerMiB: number }> {
  const [c0, m0] = [await cpuMs(pid), await cpuMs(pid, pid)];
  const threads0 = process.env.BENCH_THREADS ? await threadCpu(pid) : undefined;
  const t = process.hrtime.bigint();
  const bytes = await fn();
  const s = Number(process.hrtime.bigint() - t) / 1e9;
  const [c1, m1] = [await cpuMs(pid), await cpuMs(pid, pid)];
  if (threads0) {
    // BENCH_THREADS=1: where the process's CPU went, by thread name, in ms per MiB.
    const mib = bytes / MIB;
    const rows: string[] = [];
    for (const [tid, now] of await threadCpu(pid)) {
      const was = threads0.get(tid) ?? { user: 0, sys: 0 };
      const [user, sys] = [(now.user - was.user) / mib, (now.sys - was.sys) / mib];
      if (user + sys >= 0.05) rows.push(`${now.name}/${tid} user ${user.toFixed(2)} sys ${sys.toFixed(2)}`);
    }
    process.stderr.write(`threads of ${pid}, CPU ms per MiB: ${rows.join('; ')}\n`);
  }
  return { mbps: bytes / MIB / s, cpuMsPerMiB: (c1 - c0) / (bytes / MIB), mainMsPerMiB: (m1 - m0) / (bytes / MIB) };
}
