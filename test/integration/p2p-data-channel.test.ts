/**
 * The data channel: chunk bytes between nodes on a TCP connection beside the peer connection, sealed with
 * AES-256-GCM under a key the holder gives in its (Noise-secured) chunk answer. Real node processes. The holder
 * listens on 127.0.0.2 and the puller reaches it through recording relays on 127.0.0.1 (one for the p2p port, one
 * for the data port), so the test sees what a listener on the wire would see.
 *
 * - default settings: the blob arrives verified over the data channel, and none of its bytes are readable on the
 *   wire while the sealed bytes are there;
 * - the data port cannot be reached: the puller says so on the chunk stream and gets the bytes there, does not
 *   try the data port again for the next blob, and `shoal peers` shows it;
 * - a holder with the data channel off: the bytes come on the peer connection;
 * - both nodes with --p2p-clear-data: the data channel carries the blob's bytes as they are (unsealed), and the
 *   metrics say so; only the holder with it: sealed as by default.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { writeClusterKey } from '../../src/p2p/keys.ts';
import { scrape } from '../helpers/metrics.ts';
import { pushBlob } from '../helpers/oci-client.ts';
import { recordingRelay, type RecordingRelay } from '../helpers/relay.ts';
import { freePort } from '../helpers/seed-registry.ts';
import { runShoal, ShoalProcesses, type ShoalProcess } from '../helpers/spawn-node.ts';
import { waitFor } from '../helpers/cluster.ts';

const MiB = 1024 * 1024;
const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const HOLDER_HOST = '127.0.0.2';

async function getBlob(node: ShoalProcess, repo: string, digest: string): Promise<{ status: number; bytes: Buffer }> {
  const res = await fetch(`${node.url}/v2/${repo}/blobs/${digest}`);
  return { status: res.status, bytes: Buffer.from(await res.arrayBuffer()) };
}

async function holderKnown(node: ShoalProcess, blobs: number): Promise<void> {
  await waitFor(
    `a peer holding ${blobs} blobs`,
    async () => {
      const view = (await (await fetch(`${node.url}/shoal/peers`)).json()) as { peers: Array<{ blobs: number }> };
      return view.peers.some((p) => p.blobs >= blobs);
    },
    30_000,
  );
}

describe('the data channel between peers', () => {
  const procs = new ShoalProcesses();
  const relays: RecordingRelay[] = [];
  after(async () => {
    for (const r of relays) await r.close();
    await procs.cleanup();
  });

  /** A holder on 127.0.0.2 with two blobs, and a relay on 127.0.0.1 to its p2p port (and its data port when asked). */
  async function setup(opts: { holderArgs?: string[]; relayData: boolean }): Promise<{ keyFile: string; blobs: Buffer[]; digests: string[]; p2p: RecordingRelay; data?: RecordingRelay; holder: ShoalProcess }> {
    const keyFile = join(await procs.tempDir('shoal-dc-key-'), 'cluster.key');
    await writeClusterKey(keyFile);
    // The relays listen on the holder's own port numbers on 127.0.0.1, so the data port it offers leads to the relay.
    let p2pPort = 0;
    let p2p: RecordingRelay | undefined;
    for (let attempt = 0; !p2p && attempt < 20; attempt++) {
      p2pPort = await freePort();
      p2p = await recordingRelay(p2pPort, { targetHost: HOLDER_HOST, listenPort: p2pPort }).catch(() => undefined);
      if (p2p && opts.relayData) {
        const data = await recordingRelay(p2pPort + 1, { targetHost: HOLDER_HOST, listenPort: p2pPort + 1 }).catch(() => undefined);
        if (!data) {
          await p2p.close();
          p2p = undefined;
        } else relays.push(data);
      }
    }
    assert.ok(p2p, 'two free ports in a row for the relays');
    relays.push(p2p);
    const data = opts.relayData ? relays.at(-2) : undefined;
    const holder = await procs.serve({
      dataDir: await procs.tempDir('shoal-dc-'),
      logLevel: 'info',
      args: ['--p2p-listen', `${HOLDER_HOST}:${p2pPort}`, '--cluster-key', keyFile, ...(opts.holderArgs ?? [])],
    });
    const blobs = [randomBytes(9 * MiB + 12345), randomBytes(5 * MiB)];
    const digests = [];
    for (const blob of blobs) digests.push(await pushBlob(holder.url, 'dc/app', blob));
    return { keyFile, blobs, digests, p2p, data, holder };
  }

  async function puller(keyFile: string, p2pRelay: RecordingRelay, args: string[] = []): Promise<ShoalProcess> {
    const node = await procs.serve({ dataDir: await procs.tempDir('shoal-dc-'), logLevel: 'info', args: ['--p2p-listen', '127.0.0.1:0', '--cluster-key', keyFile, '--peer', `127.0.0.1:${p2pRelay.port}`, ...args] });
    await holderKnown(node, 2);
    return node;
  }

  /** Pulls `blob` through `b`: it arrives verified, no piece of it is readable on either relay, and the data port carried it all. */
  async function pullSealed(b: ShoalProcess, blob: Buffer, digest: string, p2p: RecordingRelay, data: RecordingRelay): Promise<void> {
    const got = await getBlob(b, 'dc/app', digest);
    assert.equal(got.status, 200);
    assert.equal(sha256(got.bytes), digest);
    const onWire = Buffer.concat([p2p.seen(), data.seen()]);
    for (const at of [0, 4 * MiB, 9 * MiB]) assert.ok(!onWire.includes(blob.subarray(at, at + 64)), `the bytes at ${at} are not on the wire`);
    assert.ok(data.seen().length >= blob.length, `the data port carried ${data.seen().length} bytes`);
  }

  it('carries chunk bytes sealed: the blob arrives verified and no piece of it is readable on the wire', { timeout: 120_000 }, async () => {
    const { keyFile, blobs, digests, p2p, data, holder } = await setup({ relayData: true });
    const b = await puller(keyFile, p2p);
    // The sealed bytes went over the data port: the whole blob, plus a tag per chunk and a ticket per connection.
    await pullSealed(b, blobs[0]!, digests[0]!, p2p, data!);
    assert.ok(p2p.seen().length < 1 * MiB, `the peer connection carried only requests and answers (${p2p.seen().length} bytes)`);
    const mb = await scrape(b.url);
    const mh = await scrape(holder.url);
    assert.equal(mb.get('shoal_peer_data_channel_transfers_total', { direction: 'in' }), 3, 'three chunks came over the data channel');
    assert.equal(mh.get('shoal_peer_data_channel_transfers_total', { direction: 'out' }), 3);
    assert.equal(mb.get('shoal_peer_data_channel_fallbacks_total'), 0);
    assert.equal(mb.get('shoal_peer_bytes_total', { direction: 'in' }), blobs[0]!.length);
  });

  it('a data port it cannot reach: the bytes come on the peer connection, and the port is not tried for the next blob', { timeout: 120_000 }, async () => {
    const { keyFile, blobs, digests, p2p } = await setup({ relayData: false });
    const b = await puller(keyFile, p2p);
    const first = await getBlob(b, 'dc/app', digests[0]!);
    assert.equal(first.status, 200);
    assert.equal(sha256(first.bytes), digests[0]);
    assert.ok(p2p.seen().length > blobs[0]!.length, 'the blob crossed the peer connection');
    const fallbacks = (await scrape(b.url)).get('shoal_peer_data_channel_fallbacks_total');
    assert.ok(fallbacks >= 1, 'the puller fell back');
    const second = await getBlob(b, 'dc/app', digests[1]!);
    assert.equal(sha256(second.bytes), digests[1]);
    const m = await scrape(b.url);
    assert.equal(m.get('shoal_peer_data_channel_fallbacks_total'), fallbacks, 'no new attempt at the data port');
    assert.equal(m.get('shoal_peer_data_channel_transfers_total', { direction: 'in' }), 0);
    assert.match(b.stdoutLines.join('\n'), /data channel cannot be reached/);
    // The operator sees it: in /shoal/peers, and in `shoal peers`.
    const view = (await (await fetch(`${b.url}/shoal/peers`)).json()) as { peers: Array<{ blobs: number; dataPortUnreachableUntil?: number }> };
    const holderRow = view.peers.find((p) => p.blobs > 0);
    assert.ok(holderRow?.dataPortUnreachableUntil && holderRow.dataPortUnreachableUntil > Date.now(), 'the holder is listed with its data port unreachable');
    const listed = await runShoal(['peers', '--node', b.url]);
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /data port is unreachable, chunks over the peer connection until/);
  });

  it('a holder with --p2p-data-port off serves on the peer connection', { timeout: 120_000 }, async () => {
    const { keyFile, digests, p2p, holder } = await setup({ relayData: false, holderArgs: ['--p2p-data-port', 'off'] });
    const b = await puller(keyFile, p2p);
    const got = await getBlob(b, 'dc/app', digests[1]!);
    assert.equal(sha256(got.bytes), digests[1]);
    const m = await scrape(b.url);
    assert.equal(m.get('shoal_peer_data_channel_fallbacks_total'), 0, 'nothing was offered, so nothing fell back');
    assert.equal(m.get('shoal_peer_data_channel_transfers_total', { direction: 'in' }), 0);
    assert.equal((await scrape(holder.url)).get('shoal_peer_data_channel_transfers_total', { direction: 'out' }), 0);
  });

  it('both nodes with --p2p-clear-data: the data channel carries the blob as it is, unsealed, and the blob arrives verified', { timeout: 120_000 }, async () => {
    const { keyFile, blobs, digests, p2p, data, holder } = await setup({ relayData: true, holderArgs: ['--p2p-clear-data'] });
    const b = await puller(keyFile, p2p, ['--p2p-clear-data']);
    const got = await getBlob(b, 'dc/app', digests[0]!);
    assert.equal(got.status, 200);
    assert.equal(sha256(got.bytes), digests[0]);
    for (const at of [0, 4 * MiB, 9 * MiB]) assert.ok(data!.seen().includes(blobs[0]!.subarray(at, at + 64)), `the bytes at ${at} cross the data port as they are`);
    assert.ok(p2p.seen().length < 1 * MiB, `the peer connection carried only requests and answers (${p2p.seen().length} bytes)`);
    const mb = await scrape(b.url);
    const mh = await scrape(holder.url);
    assert.equal(mb.get('shoal_peer_data_channel_transfers_total', { direction: 'in', sealed: 'false' }), 3, 'three chunks came unsealed');
    assert.equal(mb.get('shoal_peer_data_channel_transfers_total', { direction: 'in', sealed: 'true' }), 0);
    assert.equal(mh.get('shoal_peer_data_channel_transfers_total', { direction: 'out', sealed: 'false' }), 3);
    assert.equal(mb.get('shoal_peer_data_channel_fallbacks_total'), 0);
    assert.equal(mb.get('shoal_peer_bytes_total', { direction: 'in' }), blobs[0]!.length);
  });

  it('only the holder with --p2p-clear-data: the peer connection is Noise, and the data channel stays sealed', { timeout: 120_000 }, async () => {
    const { keyFile, blobs, digests, p2p, data, holder } = await setup({ relayData: true, holderArgs: ['--p2p-clear-data'] });
    const b = await puller(keyFile, p2p);
    await pullSealed(b, blobs[0]!, digests[0]!, p2p, data!);
    const mb = await scrape(b.url);
    const mh = await scrape(holder.url);
    assert.equal(mb.get('shoal_peer_data_channel_transfers_total', { direction: 'in', sealed: 'true' }), 3, 'three chunks came sealed');
    assert.equal(mb.get('shoal_peer_data_channel_transfers_total', { direction: 'in', sealed: 'false' }), 0);
    assert.equal(mh.get('shoal_peer_data_channel_transfers_total', { direction: 'out', sealed: 'false' }), 0);
  });
});
