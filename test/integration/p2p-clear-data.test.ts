/**
 * `--p2p-clear-data`: peer connections keep the Noise handshake keyed by the cluster key but carry their bytes
 * unencrypted, when both ends enable it. Real node processes; the puller reaches the holder through a TCP relay
 * in this test that records every byte crossing it, so the test sees what a listener on the wire would see.
 *
 * - both ends enabled: the blob arrives whole and verified, and its bytes are readable on the wire;
 * - only the holder enabled: the two fall back to Noise; the blob arrives and its bytes are not on the wire;
 * - a node with another cluster key, enabled too, gets no connection and no bytes.
 *
 * The holder's data channel is off, so that chunk bytes travel on the peer connection this test is about
 * (p2p-data-channel.test.ts covers the channel).
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { writeClusterKey } from '../../src/p2p/keys.ts';
import { recordingRelay } from '../helpers/relay.ts';
import { freePort } from '../helpers/seed-registry.ts';
import { ShoalProcesses, type ShoalProcess } from '../helpers/spawn-node.ts';

const MiB = 1024 * 1024;
const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function waitForHolder(node: ShoalProcess, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const view = (await (await fetch(`${node.url}/shoal/peers`)).json()) as { peers: Array<{ blobs: number }> };
    if (view.peers.some((p) => p.blobs > 0)) return;
    await new Promise((ok) => setTimeout(ok, 100));
  }
  throw new Error(`${node.url} saw no peer holding blobs within ${timeoutMs} ms`);
}

async function getBlob(node: ShoalProcess, repo: string, digest: string): Promise<{ status: number; bytes: Buffer }> {
  const res = await fetch(`${node.url}/v2/${repo}/blobs/${digest}`);
  return { status: res.status, bytes: Buffer.from(await res.arrayBuffer()) };
}

async function pushBlob(node: ShoalProcess, repo: string, blob: Buffer): Promise<string> {
  const digest = sha256(blob);
  const start = await fetch(`${node.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  await start.arrayBuffer();
  const url = new URL(start.headers.get('location')!, node.url);
  url.searchParams.set('digest', digest);
  const res = await fetch(url, { method: 'PUT', body: blob, headers: { 'content-type': 'application/octet-stream' } });
  await res.arrayBuffer();
  assert.equal(res.status, 201);
  return digest;
}

describe('peer connections with --p2p-clear-data', () => {
  const procs = new ShoalProcesses();
  const relays: Array<{ close: () => Promise<void> }> = [];
  after(async () => {
    for (const r of relays) await r.close();
    await procs.cleanup();
  });

  async function setup(holderArgs: string[]): Promise<{ holder: ShoalProcess; keyFile: string; blob: Buffer; digest: string; p2pPort: number }> {
    const keyDir = await procs.tempDir('shoal-clear-key-');
    const keyFile = join(keyDir, 'cluster.key');
    await writeClusterKey(keyFile);
    const p2pPort = await freePort();
    const holder = await procs.serve({ dataDir: await procs.tempDir('shoal-clear-'), logLevel: 'info', args: ['--p2p-listen', `127.0.0.1:${p2pPort}`, '--cluster-key', keyFile, '--p2p-data-port', 'off', ...holderArgs] });
    const blob = randomBytes(6 * MiB);
    const digest = await pushBlob(holder, 'clear/app', blob);
    return { holder, keyFile, blob, digest, p2pPort };
  }

  async function puller(keyFile: string, relayPort: number, args: string[], logLevel = 'info'): Promise<ShoalProcess> {
    return procs.serve({ dataDir: await procs.tempDir('shoal-clear-'), logLevel, args: ['--p2p-listen', '127.0.0.1:0', '--cluster-key', keyFile, '--peer', `127.0.0.1:${relayPort}`, ...args] });
  }

  it('both ends enabled: the blob arrives verified, and its bytes cross the wire as they are', { timeout: 90_000 }, async () => {
    const { keyFile, blob, digest, p2pPort } = await setup(['--p2p-clear-data']);
    const relay = await recordingRelay(p2pPort);
    relays.push(relay);
    const b = await puller(keyFile, relay.port, ['--p2p-clear-data']);
    await waitForHolder(b);
    const got = await getBlob(b, 'clear/app', digest);
    assert.equal(got.status, 200);
    assert.equal(sha256(got.bytes), digest);
    const probe = blob.subarray(3 * MiB, 3 * MiB + 64);
    assert.ok(relay.seen().includes(probe), 'a piece of the blob is readable on the wire');
  });

  /** One end offers clear data and the other does not take it: Noise as usual, and the blob is not readable on the wire. */
  async function noiseAsUsual(holderArgs: string[], pullerArgs: string[]): Promise<void> {
    const { keyFile, blob, digest, p2pPort } = await setup(holderArgs);
    const relay = await recordingRelay(p2pPort);
    relays.push(relay);
    const b = await puller(keyFile, relay.port, pullerArgs);
    await waitForHolder(b);
    const got = await getBlob(b, 'clear/app', digest);
    assert.equal(got.status, 200);
    assert.equal(sha256(got.bytes), digest);
    assert.ok(relay.seen().length > blob.length, 'the blob crossed the relay');
    assert.equal(relay.seen().includes(blob.subarray(3 * MiB, 3 * MiB + 64)), false, 'no piece of the blob is readable on the wire');
  }

  it('only the holder enabled: Noise as usual, the blob arrives, and its bytes are not on the wire', { timeout: 90_000 }, () => noiseAsUsual(['--p2p-clear-data'], []));

  it('only the dialing puller enabled: it offers clear data, the holder does not take it, Noise as usual', { timeout: 90_000 }, () => noiseAsUsual([], ['--p2p-clear-data']));

  it('another cluster key: no connection and no bytes, even with clear data on both ends', { timeout: 90_000 }, async () => {
    const { digest, p2pPort } = await setup(['--p2p-clear-data']);
    const relay = await recordingRelay(p2pPort);
    relays.push(relay);
    const otherDir = await procs.tempDir('shoal-clear-key-');
    const otherKey = join(otherDir, 'other.key');
    await writeClusterKey(otherKey);
    const stranger = await puller(otherKey, relay.port, ['--p2p-clear-data'], 'debug');
    await stranger.waitForLog((l) => l.msg === 'peer dial failed', { timeoutMs: 20_000 });
    const view = (await (await fetch(`${stranger.url}/shoal/peers`)).json()) as { peers: unknown[] };
    assert.equal(view.peers.length, 0);
    const got = await getBlob(stranger, 'clear/app', digest);
    assert.equal(got.status, 404);
  });
});
