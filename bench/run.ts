/**
 * Benchmarks, side by side in one run: Shoal against the registry it replaces (CNCF distribution, the Debian
 * `docker-registry`), and the peer path against a plain TCP socket. Every server is its own process, as in
 * production. Results are ratios; nothing here asserts.
 *
 *   npm run bench                 # defaults: 256 MiB blob, 3 rounds
 *   BENCH_MIB=64 BENCH_ROUNDS=1 npm run bench
 *   BENCH_ONLY=startup npm run bench   # only start-up time, idle memory and CLI latency (bench/startup.ts)
 */
import '../src/polyfill.ts';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDockerRegistry, freePort } from '../test/helpers/seed-registry.ts';
import { ShoalProcesses, type ShoalProcess } from '../test/helpers/spawn-node.ts';
import { writeClusterKey } from '../src/p2p/keys.ts';
import { startupBench } from './startup.ts';

const MIB = 1024 * 1024;
const size = Number(process.env.BENCH_MIB ?? 256) * MIB;
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function timed(fn: () => Promise<number>): Promise<number> {
  const t = process.hrtime.bigint();
  const bytes = await fn();
  const s = Number(process.hrtime.bigint() - t) / 1e9;
  return bytes / MIB / s;
}

async function push(base: string, repo: string, blob: Buffer, digest: string): Promise<number> {
  const start = await fetch(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  await start.arrayBuffer();
  const url = new URL(start.headers.get('location')!, base);
  url.searchParams.set('digest', digest);
  const res = await fetch(url, { method: 'PUT', body: blob, headers: { 'content-type': 'application/octet-stream' } });
  await res.arrayBuffer();
  if (res.status !== 201) throw new Error(`push to ${base}: HTTP ${res.status}`);
  return blob.length;
}

async function pull(base: string, repo: string, digest: string, verify = false): Promise<number> {
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

async function parallelPull(base: string, repo: string, digest: string, clients: number): Promise<number> {
  const counts = await Promise.all(Array.from({ length: clients }, () => pull(base, repo, digest)));
  return counts.reduce((a, b) => a + b, 0);
}

/** Plain TCP over loopback: the ceiling for any protocol on this machine. */
async function plainTcp(bytes: number): Promise<number> {
  const server = createServer((sock) => {
    const buf = Buffer.alloc(MIB);
    let sent = 0;
    const write = (): void => {
      while (sent < bytes) {
        sent += buf.length;
        if (!sock.write(buf)) return void sock.once('drain', write);
      }
      sock.end();
    };
    write();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  const mbps = await timed(async () => {
    const sock = connect(port, '127.0.0.1');
    let n = 0;
    for await (const c of sock) n += (c as Buffer).length;
    return n;
  });
  server.close();
  return mbps;
}

interface Row {
  what: string;
  anchor: string;
  anchorMBs: number;
  shoalMBs: number;
}

async function main(): Promise<void> {
  const blob = randomBytes(size);
  const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}`;
  const rows: Row[] = [];
  const dist = await startDockerRegistry();
  const procs = new ShoalProcesses();
  const keyDir = await mkdtemp(join(tmpdir(), 'shoal-bench-'));
  const node = async (args: string[] = []): Promise<ShoalProcess> =>
    procs.serve({ dataDir: await procs.tempDir('shoal-bench-node-'), logLevel: 'info', args });
  try {
    const local = await node();
    const pushD: number[] = [];
    const pushS: number[] = [];
    const pullD: number[] = [];
    const pullS: number[] = [];
    for (let r = 0; r < rounds; r++) {
      pushD.push(await timed(() => push(dist.url, `bench/push${r}`, blob, digest)));
      pushS.push(await timed(() => push(local.url, `bench/push${r}`, blob, digest)));
      pullD.push(await timed(() => pull(dist.url, `bench/push${r}`, digest)));
      pullS.push(await timed(() => pull(local.url, `bench/push${r}`, digest)));
    }
    rows.push({ what: `push ${size / MIB} MiB blob (monolithic PUT)`, anchor: 'distribution', anchorMBs: median(pushD), shoalMBs: median(pushS) });
    rows.push({ what: `pull ${size / MIB} MiB blob (GET)`, anchor: 'distribution', anchorMBs: median(pullD), shoalMBs: median(pullS) });
    const par = 20;
    const parD = await timed(() => parallelPull(dist.url, 'bench/push0', digest, par));
    const parS = await timed(() => parallelPull(local.url, 'bench/push0', digest, par));
    rows.push({ what: `${par} clients pulling the same blob (aggregate)`, anchor: 'distribution', anchorMBs: parD, shoalMBs: parS });

    // Pull-through: a cold node in front of distribution, against asking distribution directly.
    const mirrorD: number[] = [];
    const mirrorS: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const mirror = await node(['--seed', dist.url]);
      mirrorD.push(await timed(() => pull(dist.url, 'bench/push0', digest)));
      mirrorS.push(await timed(() => pull(mirror.url, 'bench/push0', digest, true)));
      await mirror.kill();
    }
    rows.push({ what: 'cold pull through a node from the seed (verified)', anchor: 'distribution direct', anchorMBs: median(mirrorD), shoalMBs: median(mirrorS) });

    // Peers: node B pulls from node A over libp2p (cluster key + Noise + Yamux), against plain TCP and HTTP from A.
    const keyFile = join(keyDir, 'cluster.key');
    await writeClusterKey(keyFile);
    const peerS: number[] = [];
    const tcp: number[] = [];
    const httpA: number[] = [];
    const portA = await freePort();
    const a = await node(['--p2p-listen', `127.0.0.1:${portA}`, '--cluster-key', keyFile]);
    await push(a.url, 'bench/p2p', blob, digest);
    for (let r = 0; r < rounds; r++) {
      const b = await node(['--p2p-listen', `127.0.0.1:${await freePort()}`, '--cluster-key', keyFile, '--peer', `127.0.0.1:${portA}`]);
      // Wait until B knows that A holds the blob (its inventory arrived).
      for (let i = 0; i < 200; i++) {
        const peers = (await (await fetch(`${b.url}/shoal/peers`)).json()) as { peers: Array<{ blobs: number }> };
        if (peers.peers.some((p) => p.blobs > 0)) break;
        await new Promise((ok) => setTimeout(ok, 50));
      }
      peerS.push(await timed(() => pull(b.url, 'bench/p2p', digest, true)));
      await b.kill();
      tcp.push(await plainTcp(size));
      httpA.push(await timed(() => pull(a.url, 'bench/p2p', digest)));
    }
    rows.push({ what: 'blob from a peer (libp2p chunks, verified)', anchor: 'plain TCP socket', anchorMBs: median(tcp), shoalMBs: median(peerS) });
    rows.push({ what: 'blob from a peer (libp2p chunks, verified)', anchor: 'HTTP GET from that peer', anchorMBs: median(httpA), shoalMBs: median(peerS) });
  } finally {
    await procs.cleanup();
    await dist.stop();
    await rm(keyDir, { recursive: true, force: true });
  }
  const out = rows.map((r) => ({ ...r, ratio: r.shoalMBs / r.anchorMBs }));
  const w = Math.max(...out.map((r) => r.what.length));
  process.stdout.write(`\n${'benchmark'.padEnd(w)}  ${'anchor'.padEnd(24)} ${'anchor MB/s'.padStart(11)} ${'shoal MB/s'.padStart(11)} ${'ratio'.padStart(6)}\n`);
  for (const r of out) {
    process.stdout.write(`${r.what.padEnd(w)}  ${r.anchor.padEnd(24)} ${r.anchorMBs.toFixed(0).padStart(11)} ${r.shoalMBs.toFixed(0).padStart(11)} ${r.ratio.toFixed(2).padStart(6)}\n`);
  }
  if (process.env.BENCH_JSON) await writeFile(process.env.BENCH_JSON, JSON.stringify({ size, rounds, rows: out }, null, 2));
}

// Start-up first, while nothing else of the benchmark runs.
await startupBench();
if (process.env.BENCH_ONLY !== 'startup') await main();
