/**
 * p2p: a blob from one peer, and from several at once, against an HTTP GET from that peer and a plain TCP socket
 * on loopback. Every node is its own process (two or three share the cores with the benchmark itself).
 *
 *   npm run bench -- p2p            # 256 MiB blob, 3 rounds (BENCH_MIB, BENCH_ROUNDS)
 *   BENCH_PROFILE=/tmp/prof npm run bench -- p2p   # a V8 CPU profile of every node into that directory
 *
 * "From one peer" uses the default settings, so the bytes take the data channel (sealed with AES-GCM); beside it
 * are the same with `--p2p-clear-data` on both ends (the data channel unsealed: `peer_mbps_clear_data`), and the
 * peer connection alone (`--p2p-data-port off`), plain and with `--p2p-clear-data` (`clear_data_peer_mbps`).
 *
 * Besides MB/s it reports the receiving node's CPU milliseconds per MiB (from /proc), which other work on the
 * machine disturbs far less, and 1000 ÷ that: the MB/s the receiver could reach on one free core.
 */
import { randomBytes } from 'node:crypto';
import { createServer, connect } from 'node:net';
import { once } from 'node:events';
import { join } from 'node:path';
import { freePort } from '../test/helpers/seed-registry.ts';
import { ShoalProcesses, type ShoalProcess } from '../test/helpers/spawn-node.ts';
import { writeClusterKey } from '../src/p2p/keys.ts';
import { scrape } from '../test/helpers/metrics.ts';
import { Cleanups, cpuPerMiB, load, profileEnv, median, MIB, pull, push, quick, r, report, sha256, timed } from './lib.ts';

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
  try {
    return await timed(async () => {
      const sock = connect(port, '127.0.0.1');
      let n = 0;
      for await (const c of sock) n += (c as Buffer).length;
      return n;
    });
  } finally {
    server.close();
  }
}

/** Waits until `node` knows `holders` peers that hold blobs (their inventory arrived). */
async function waitForInventory(node: ShoalProcess, holders: number): Promise<void> {
  for (let i = 0; i < 400; i++) {
    const peers = (await (await fetch(`${node.url}/shoal/peers`)).json()) as { peers: Array<{ blobs: number }> };
    if (peers.peers.filter((p) => p.blobs > 0).length >= holders) return;
    await new Promise((ok) => setTimeout(ok, 50));
  }
  throw new Error(`no inventory from ${holders} peers after 20 s`);
}

export async function p2pBench(): Promise<void> {
  const loadBefore = load();
  const size = Number(process.env.BENCH_MIB ?? (quick() ? 32 : 256)) * MIB;
  const rounds = Number(process.env.BENCH_ROUNDS ?? (quick() ? 1 : 3));
  const extra = (process.env.BENCH_P2P_ARGS ?? '').split(' ').filter(Boolean);
  const blob = randomBytes(size);
  const digest = sha256(blob);
  const procs = new ShoalProcesses();
  const cleanups = new Cleanups();
  cleanups.add(() => procs.cleanup());
  const env = profileEnv();
  const node = async (args: string[]): Promise<ShoalProcess> =>
    procs.serve({ dataDir: await procs.tempDir('shoal-bench-p2p-'), logLevel: 'info', args: [...args, ...extra], env });
  const peerS: number[] = [];
  const peerCpu: number[] = [];
  const peerMain: number[] = [];
  const streamMain: number[] = [];
  const channelChunks: number[] = [];
  const streamS: number[] = [];
  const streamCpu: number[] = [];
  const clearS: number[] = [];
  const clearCpu: number[] = [];
  const unsealedS: number[] = [];
  const unsealedCpu: number[] = [];
  const unsealedChunks: number[] = [];
  const multiS: number[] = [];
  const tcp: number[] = [];
  const httpA: number[] = [];
  try {
    const keyDir = await procs.tempDir('shoal-bench-key-');
    const keyFile = join(keyDir, 'cluster.key');
    await writeClusterKey(keyFile);
    const portA = await freePort();
    const portA2 = await freePort();
    const portC = await freePort();
    const portS = await freePort();
    const portU = await freePort();
    /** A holder on `port` and a node that pulls the blob from it, both with `args`: the puller's figures, and the chunks it took unsealed. */
    const pairPull = async (port: number, args: string[]): Promise<Awaited<ReturnType<typeof cpuPerMiB>> & { unsealedChunks: number }> => {
      const holder = await node(['--p2p-listen', `127.0.0.1:${port}`, '--cluster-key', keyFile, ...args]);
      await push(holder.url, 'bench/p2p', blob, digest);
      const puller = await node(['--p2p-listen', `127.0.0.1:${await freePort()}`, '--cluster-key', keyFile, '--peer', `127.0.0.1:${port}`, ...args]);
      await waitForInventory(puller, 1);
      const figures = await cpuPerMiB(puller.child.pid!, () => pull(puller.url, 'bench/p2p', digest, true));
      const unsealed = (await scrape(puller.url)).get('shoal_peer_data_channel_transfers_total', { direction: 'in', sealed: 'false' });
      await Promise.all([puller.terminate(), holder.terminate()]);
      return { ...figures, unsealedChunks: unsealed };
    };
    const a = await node(['--p2p-listen', `127.0.0.1:${portA}`, '--cluster-key', keyFile]);
    const a2 = await node(['--p2p-listen', `127.0.0.1:${portA2}`, '--cluster-key', keyFile]);
    await push(a.url, 'bench/p2p', blob, digest);
    await push(a2.url, 'bench/p2p', blob, digest);
    for (let i = 0; i < rounds; i++) {
      const b = await node(['--p2p-listen', `127.0.0.1:${await freePort()}`, '--cluster-key', keyFile, '--peer', `127.0.0.1:${portA}`]);
      await waitForInventory(b, 1);
      const one = await cpuPerMiB(b.child.pid!, () => pull(b.url, 'bench/p2p', digest, true));
      peerS.push(one.mbps);
      peerCpu.push(one.cpuMsPerMiB);
      peerMain.push(one.mainMsPerMiB);
      channelChunks.push((await scrape(b.url)).get('shoal_peer_data_channel_transfers_total', { direction: 'in' }));
      await b.terminate();
      // The bytes on the peer connection (Noise, Yamux), the data channel off on both ends; BENCH_P2P_STREAM=0: not.
      if (process.env.BENCH_P2P_STREAM !== '0') {
        const viaStream = await pairPull(portS, ['--p2p-data-port', 'off']);
        streamS.push(viaStream.mbps);
        streamCpu.push(viaStream.cpuMsPerMiB);
        streamMain.push(viaStream.mainMsPerMiB);
      }
      // The same with --p2p-clear-data on both ends (Noise handshake, unencrypted bytes); BENCH_P2P_CLEAR=0: not.
      if (process.env.BENCH_P2P_CLEAR !== '0') {
        const clear = await pairPull(portC, ['--p2p-clear-data', '--p2p-data-port', 'off']);
        clearS.push(clear.mbps);
        clearCpu.push(clear.cpuMsPerMiB);
        // --p2p-clear-data on both ends with the data channel on: its bytes go unsealed (no AES-GCM).
        const unsealed = await pairPull(portU, ['--p2p-clear-data']);
        unsealedS.push(unsealed.mbps);
        unsealedCpu.push(unsealed.cpuMsPerMiB);
        unsealedChunks.push(unsealed.unsealedChunks);
      }
      const c = await node(['--p2p-listen', `127.0.0.1:${await freePort()}`, '--cluster-key', keyFile, '--peer', `127.0.0.1:${portA}`, '--peer', `127.0.0.1:${portA2}`]);
      await waitForInventory(c, 2);
      multiS.push(await timed(() => pull(c.url, 'bench/p2p', digest, true)));
      await c.terminate();
      tcp.push(await plainTcp(size));
      httpA.push(await timed(() => pull(a.url, 'bench/p2p', digest, true)));
    }
    // SIGTERM so that --cpu-prof writes its profiles.
    await Promise.all([a.terminate(), a2.terminate()]);
  } finally {
    await cleanups.run();
  }
  const peer = median(peerS);
  const figures = {
    blob_mib: size / MIB,
    rounds,
    extra_args: extra.join(' '),
    peer_mbps: r(peer, 1),
    http_mbps: r(median(httpA), 1),
    tcp_mbps: r(median(tcp), 1),
    peer_vs_http: r(peer / median(httpA)),
    peer_vs_tcp: r(peer / median(tcp)),
    multi_peer_mbps: r(median(multiS), 1),
    receiver_cpu_ms_per_mib: r(median(peerCpu)),
    receiver_cpu_bound_mbps: r(1000 / median(peerCpu), 0),
    receiver_main_thread_ms_per_mib: r(median(peerMain)),
    receiver_main_thread_bound_mbps: r(1000 / median(peerMain), 0),
    data_channel_chunks: median(channelChunks),
    peer_connection_mbps: r(median(streamS), 1),
    peer_connection_receiver_cpu_ms_per_mib: r(median(streamCpu)),
    peer_connection_receiver_main_thread_ms_per_mib: r(median(streamMain)),
    clear_data_peer_mbps: r(median(clearS), 1),
    clear_data_receiver_cpu_ms_per_mib: r(median(clearCpu)),
    clear_data_receiver_cpu_bound_mbps: r(1000 / median(clearCpu), 0),
    peer_mbps_clear_data: r(median(unsealedS), 1),
    receiver_cpu_ms_per_mib_clear_data: r(median(unsealedCpu)),
    receiver_cpu_bound_mbps_clear_data: r(1000 / median(unsealedCpu), 0),
    data_channel_unsealed_chunks_clear_data: median(unsealedChunks),
    runs: { peer: peerS.map((x) => r(x, 1)), peer_clear_data: unsealedS.map((x) => r(x, 1)), peer_connection: streamS.map((x) => r(x, 1)), clear: clearS.map((x) => r(x, 1)), multi: multiS.map((x) => r(x, 1)), http: httpA.map((x) => r(x, 1)), tcp: tcp.map((x) => r(x, 1)) },
  };
  await report(
    'p2p',
    figures,
    {
      title: `p2p: ${size / MIB} MiB blob, loopback (load ${loadBefore})`,
      unit: 'MB/s (MiB/s), verified by the client',
      bars: [
        { label: 'plain TCP socket', value: figures.tcp_mbps },
        { label: 'HTTP GET from the holder', value: figures.http_mbps },
        { label: 'from one peer', value: figures.peer_mbps, mark: 300 },
        { label: 'the same, --p2p-clear-data (data channel unsealed)', value: figures.peer_mbps_clear_data, mark: 300 },
        { label: 'from two peers at once', value: figures.multi_peer_mbps },
        { label: 'from one peer, on the peer connection (data channel off)', value: figures.peer_connection_mbps },
        { label: 'the same, --p2p-clear-data (peer connection unencrypted)', value: figures.clear_data_peer_mbps },
        { label: 'receiver CPU-bound ceiling (1 core)', value: figures.receiver_cpu_bound_mbps, mark: 300 },
        { label: 'the same, --p2p-clear-data (data channel unsealed)', value: figures.receiver_cpu_bound_mbps_clear_data, mark: 300 },
        { label: 'receiver main-thread ceiling (a core for it)', value: figures.receiver_main_thread_bound_mbps, mark: 300 },
        { label: 'receiver CPU-bound ceiling, --p2p-clear-data on the peer connection', value: figures.clear_data_receiver_cpu_bound_mbps, mark: 300 },
      ],
    },
    loadBefore,
  );
}
