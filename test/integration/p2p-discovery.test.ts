/**
 * Peer discovery without static peers.
 *
 * - `peersDns`: node A listens for peers on 127.0.0.1:P, node B on 127.0.0.2:P (same port, another loopback
 *   address: Linux routes all of 127/8 to lo) with `peersDns: 'localhost'` and no `peers`. B resolves the name
 *   (every record) and dials each address at its own p2p port, so it finds A; both then list each other, and a blob
 *   pushed to A is pulled from B (bytes from the peer). A node whose `peersDns` name does not resolve stays healthy
 *   with no peers.
 * - `mdns`: two spawned `shoal serve --mdns` processes, each in its own network namespace on a bridge (addresses
 *   10.233.8.0/24, only inside the namespaces), with a shared cluster key and no `--peer`, find each other through
 *   multicast DNS (224.0.0.251:5353). A namespace's eth0 is multicast-capable, but without a route covering
 *   224.0.0.0/4 (there is no default route) sending to the group fails with ENETUNREACH: the setup adds
 *   `224.0.0.0/4 dev eth0` in each host namespace. Needs root (ip netns, veth, bridge).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { writeClusterKey } from '../../src/p2p/keys.ts';
import { peersOf, waitFor, type PeersView } from '../helpers/cluster.ts';
import { scrape } from '../helpers/metrics.ts';
import { NetnsLab, type NsProcess } from '../helpers/netns.ts';
import { startTestNode, type TestNode } from '../helpers/node.ts';
import { SHOAL_BIN } from '../helpers/spawn-node.ts';

const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Resolves when `host:port` can be bound (and releases it again). */
function canBind(host: string, port: number): Promise<boolean> {
  return new Promise((ok) => {
    const s = createServer();
    s.once('error', () => ok(false));
    s.listen({ host, port, exclusive: true }, () => s.close(() => ok(true)));
  });
}

/** A port free on 127.0.0.1, 127.0.0.2 and 127.0.0.3 alike. */
async function freeLoopbackPort(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await new Promise<number>((ok, fail) => {
      const s = createServer();
      s.once('error', fail);
      s.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => ok(p));
      });
    });
    if ((await canBind('127.0.0.2', port)) && (await canBind('127.0.0.3', port))) return port;
  }
  throw new Error('no port free on 127.0.0.1, 127.0.0.2 and 127.0.0.3');
}

const lists = (view: PeersView, id: string): boolean => view.peers.some((p) => p.id === id);

describe('peer discovery by DNS (peersDns) on loopback', () => {
  let work: string | undefined;
  const nodes: TestNode[] = [];

  after(async () => {
    await Promise.allSettled(nodes.map((n) => n.stop()));
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('B finds A through peersDns=localhost at its own p2p port, and pulls a blob pushed to A from it', async (t) => {
    work = await mkdtemp(join(tmpdir(), 'shoal-discovery-'));
    const keyFile = join(work, 'cluster.key');
    await writeClusterKey(keyFile);
    const port = await freeLoopbackPort();
    t.diagnostic(`p2p port ${port}: A on 127.0.0.1, B on 127.0.0.2 (peersDns localhost), C on 127.0.0.3 (peersDns no-such-host.invalid)`);

    const started = performance.now();
    const a = await startTestNode({ config: { p2pListen: `127.0.0.1:${port}`, clusterKeyFile: keyFile } });
    nodes.push(a);
    const b = await startTestNode({ config: { p2pListen: `127.0.0.2:${port}`, clusterKeyFile: keyFile, peersDns: 'localhost', peers: [] } });
    nodes.push(b);

    const [viewA0, viewB0] = await Promise.all([peersOf(a.url), peersOf(b.url)]);
    assert.equal(viewA0.enabled, true, 'A runs the peer network');
    assert.equal(viewB0.enabled, true, 'B runs the peer network');
    const idA = viewA0.self!;
    const idB = viewB0.self!;
    assert.ok(idA && idB && idA !== idB, `distinct peer ids (A ${idA}, B ${idB})`);

    await waitFor(
      'A and B to list each other in /shoal/peers',
      async () => {
        const [va, vb] = await Promise.all([peersOf(a.url), peersOf(b.url)]);
        return (lists(va, idB) && lists(vb, idA)) || `A lists [${va.peers.map((p) => p.id).join(', ')}], B lists [${vb.peers.map((p) => p.id).join(', ')}]`;
      },
      12_000,
      100,
    );
    const connectedMs = performance.now() - started;
    t.diagnostic(`A and B connected ${connectedMs.toFixed(0)} ms after A started`);
    const vb = await peersOf(b.url);
    const aFromB = vb.peers.find((p) => p.id === idA)!;
    assert.ok(
      aFromB.addresses.some((addr) => addr.startsWith(`/ip4/127.0.0.1/tcp/${port}`)),
      `B dialed A at the address localhost resolved to, at B's own p2p port, 127.0.0.1:${port} (addresses ${JSON.stringify(aFromB.addresses)})`,
    );
    assert.equal(vb.peers.length, 1, `B lists exactly one peer (A): ${JSON.stringify(vb.peers.map((p) => p.id))}`);

    // A blob pushed to A (monolithic upload) and pulled from B: B has no seed, so the bytes come from A.
    const repo = 'discovery/dns';
    const blob = randomBytes(2 * 1024 * 1024 + 12345);
    const digest = sha256(blob);
    const push = await fetch(`${a.url}/v2/${repo}/blobs/uploads/?digest=${digest}`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream' },
      body: blob,
      signal: AbortSignal.timeout(10_000),
    });
    assert.equal(push.status, 201, `push to A: HTTP ${push.status} ${await push.text()}`);
    // B learns A's inventory from A's announcement (batched for 50 ms).
    await waitFor(
      "B to learn A's inventory",
      async () => {
        const p = (await peersOf(b.url)).peers.find((x) => x.id === idA);
        return (p !== undefined && p.blobs >= 1) || `A's entry at B: ${JSON.stringify(p)}`;
      },
      5_000,
      50,
    );
    const before = await scrape(b.url);
    const res = await fetch(`${b.url}/v2/${repo}/blobs/${digest}`, { signal: AbortSignal.timeout(15_000) });
    const body = Buffer.from(await res.arrayBuffer());
    assert.equal(res.status, 200, `GET B /v2/${repo}/blobs/${digest}: HTTP ${res.status} ${body.subarray(0, 300).toString()}`);
    assert.equal(body.length, blob.length, 'B returns the whole blob');
    assert.equal(sha256(body), digest, "B's bytes match the digest");
    const afterPull = await scrape(b.url);
    const peerBytes = afterPull.get('shoal_pull_bytes_total', { source: 'peer' }) - before.get('shoal_pull_bytes_total', { source: 'peer' });
    t.diagnostic(`B: shoal_pull_bytes_total{source="peer"} +${peerBytes} for a ${blob.length}-byte blob`);
    assert.ok(peerBytes > 0, `B counted bytes from peers (shoal_pull_bytes_total{source="peer"} +${peerBytes})`);
    assert.equal(afterPull.get('shoal_pull_bytes_total', { source: 'seed' }), 0, 'B has no seed and used none');
  });

  it('a peersDns name that does not resolve leaves the node healthy, with no peers', async (t) => {
    work ??= await mkdtemp(join(tmpdir(), 'shoal-discovery-'));
    const keyFile = join(work, 'cluster-c.key');
    await writeClusterKey(keyFile);
    const port = await freeLoopbackPort();
    const started = performance.now();
    const c = await startTestNode({ config: { p2pListen: `127.0.0.3:${port}`, clusterKeyFile: keyFile, peersDns: 'no-such-host.invalid', peers: [] } });
    nodes.push(c);
    t.diagnostic(`node with an unresolvable peersDns started in ${(performance.now() - started).toFixed(0)} ms`);
    // Through at least one more discovery round (every 5 s) after the one at start.
    const checkUntil = performance.now() + 6_000;
    for (;;) {
      const health = await fetch(`${c.url}/healthz`, { signal: AbortSignal.timeout(5_000) });
      assert.equal(health.status, 200, `/healthz: HTTP ${health.status}`);
      await health.arrayBuffer();
      const view = await peersOf(c.url);
      assert.equal(view.enabled, true);
      assert.deepEqual(view.peers, [], 'no peers');
      if (performance.now() > checkUntil) break;
      await sleep(1_000);
    }
  });
});

describe('peer discovery by mDNS between network namespaces', () => {
  const SUBNET = '10.233.8';
  const lab = new NetnsLab('shmdns');
  let work: string | undefined;
  const hosts: Array<{ name: string; ns: string; ip: string; url: string; proc?: NsProcess }> = [];

  after(async () => {
    await lab.cleanup();
    if (work) await rm(work, { recursive: true, force: true });
  });

  /** GET inside a namespace: status and body. */
  async function curl(ns: string, url: string): Promise<{ status: number; body: string }> {
    const marker = '\n@@status@@';
    const { stdout } = await lab.exec(ns, 'curl', ['-sS', '--max-time', '5', '-w', `${marker}%{http_code}`, url], { timeoutMs: 8_000 });
    const at = stdout.lastIndexOf(marker);
    return { status: Number(stdout.slice(at + marker.length).trim()), body: stdout.slice(0, at) };
  }

  async function peersIn(h: (typeof hosts)[number]): Promise<PeersView> {
    const r = await curl(h.ns, `${h.url}/shoal/peers`);
    if (r.status !== 200) throw new Error(`GET ${h.url}/shoal/peers in ${h.ns}: HTTP ${r.status}`);
    return JSON.parse(r.body) as PeersView;
  }

  /** A plain multicast exchange between the first two namespaces (224.0.0.251:5353), for failure messages. */
  async function multicastProbe(): Promise<string> {
    const script = (role: string): string => `
      const d = require('node:dgram'), os = require('node:os');
      const s = d.createSocket({ type: 'udp4', reuseAddr: true });
      const got = new Set();
      s.on('message', (m) => got.add(m.toString()));
      s.on('error', (e) => { console.log('socket error ' + e.message); process.exit(0); });
      s.bind(5353, () => {
        for (const a of Object.values(os.networkInterfaces()).flat()) if (a.family === 'IPv4') try { s.addMembership('224.0.0.251', a.address); } catch (e) { console.log('join ' + a.address + ': ' + e.message); }
        s.setMulticastInterface('0.0.0.0');
        let n = 0;
        const t = setInterval(() => { s.send('probe-${role}', 5353, '224.0.0.251', (e) => e && console.log('send: ' + e.message)); if (++n === 6) { clearInterval(t); setTimeout(() => { console.log('received ' + JSON.stringify([...got])); s.close(); }, 500); } }, 300);
      });`;
    const [r1, r2] = await Promise.allSettled([lab.exec(hosts[0]!.ns, process.execPath, ['-e', script('n1')]), lab.exec(hosts[1]!.ns, process.execPath, ['-e', script('n2')])]);
    const show = (r: PromiseSettledResult<{ stdout: string }>): string => (r.status === 'fulfilled' ? r.value.stdout.trim() : (r.reason as Error).message);
    return `plain multicast probe: n1: ${show(r1)} | n2: ${show(r2)}`;
  }

  before(async () => {
    await lab.checkPermitted();
    await lab.removeLeftovers();
    work = await mkdtemp(join(tmpdir(), 'shoal-mdns-'));
    const keyFile = join(work, 'cluster.key');
    await writeClusterKey(keyFile);
    await lab.createBridge();
    for (const [i, name] of ['n1', 'n2'].entries()) {
      const ip = `${SUBNET}.${11 + i}`;
      const ns = await lab.addHost(name, `${ip}/24`);
      // mDNS needs: a multicast-capable link (veth is), and a route for the multicast range, since a namespace has no
      // default route (sendto 224.0.0.251 fails with ENETUNREACH otherwise).
      await lab.exec(ns, 'ip', ['link', 'set', 'dev', 'eth0', 'multicast', 'on']);
      await lab.exec(ns, 'ip', ['route', 'add', '224.0.0.0/4', 'dev', 'eth0']);
      hosts.push({ name, ns, ip, url: `http://${ip}:5000` });
    }
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('SHOAL_') && k !== 'NODE_TEST_CONTEXT') env[k] = v;
    for (const h of hosts) {
      h.proc = lab.spawn(
        h.ns,
        process.execPath,
        [SHOAL_BIN, 'serve', '--data', join(work, h.name), '--listen', `${h.ip}:5000`, '--p2p-listen', `${h.ip}:4001`, '--cluster-key', keyFile, '--mdns', '--log-level', 'info'],
        env,
      );
    }
    await Promise.all(hosts.map((h) => h.proc!.waitForLog((l) => l.msg === 'listening', 30_000)));
  });

  it('two --mdns nodes without --peer find each other', async (t) => {
    const started = performance.now();
    const [v1, v2] = await Promise.all(hosts.map((h) => peersIn(h)));
    assert.equal(v1!.enabled, true);
    assert.equal(v2!.enabled, true);
    const id1 = v1!.self!;
    const id2 = v2!.self!;
    try {
      await waitFor(
        'each --mdns node to list the other in /shoal/peers',
        async () => {
          const [a, b] = await Promise.all(hosts.map((h) => peersIn(h)));
          return (lists(a!, id2) && lists(b!, id1)) || `n1 lists [${a!.peers.map((p) => p.id).join(', ')}], n2 lists [${b!.peers.map((p) => p.id).join(', ')}]`;
        },
        20_000,
        250,
      );
    } catch (err) {
      const probe = await multicastProbe().catch((e: Error) => `probe failed: ${e.message}`);
      throw new Error(`${(err as Error).message}\n${probe}\n${hosts.map((h) => h.proc!.describe()).join('\n')}`, { cause: err });
    }
    t.diagnostic(`mDNS: both nodes listed each other ${(performance.now() - started).toFixed(0)} ms after both were listening`);
    const [a, b] = await Promise.all(hosts.map((h) => peersIn(h)));
    assert.ok(
      a!.peers.find((p) => p.id === id2)!.addresses.some((x) => x.includes(`/ip4/${hosts[1]!.ip}/`)) ||
        b!.peers.find((p) => p.id === id1)!.addresses.some((x) => x.includes(`/ip4/${hosts[0]!.ip}/`)),
      `the connection runs over the namespace addresses: n1 ${JSON.stringify(a!.peers)} n2 ${JSON.stringify(b!.peers)}`,
    );
    for (const h of hosts) assert.ok(h.proc!.running, `${h.name} still running\n${h.proc!.describe()}`);
  });
});
