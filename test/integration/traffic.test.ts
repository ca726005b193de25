/**
 * The traffic record of a blob pull (GET /shoal/traffic) counts the bytes written to the client's socket, not the
 * bytes read for it: a real node (in this process, LevelDB in a temp dir) and a raw TCP client that reads a part of
 * a large blob, stops, and goes away. What the kernel took from the node is measured with `ss` (bytes the client
 * read, bytes waiting in its receive queue, bytes in the node's send queue): the record may not claim more.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { startTestNode, type TestNode } from '../helpers/node.ts';
import { makeImage, type PushedImage } from '../helpers/oci-client.ts';

const execFileP = promisify(execFile);
const SIZE = 32 * 1024 * 1024;

interface PullRow {
  digest: string;
  bytes: number;
  complete: boolean;
  source: string;
}

/** The receive queue of the client's end and the send queue of the node's end of one loopback connection. */
async function queues(clientPort: number): Promise<{ clientRecvQ: number; nodeSendQ: number }> {
  const { stdout } = await execFileP('ss', ['-tnH', 'state', 'established', `( sport = :${clientPort} or dport = :${clientPort} )`]);
  let clientRecvQ: number | undefined;
  let nodeSendQ: number | undefined;
  for (const line of stdout.trim().split('\n')) {
    const [recvQ, sendQ, local, peer] = line.trim().split(/\s+/);
    if (local?.endsWith(`:${clientPort}`)) clientRecvQ = Number(recvQ);
    else if (peer?.endsWith(`:${clientPort}`)) nodeSendQ = Number(sendQ);
  }
  assert.ok(clientRecvQ !== undefined && nodeSendQ !== undefined, `both ends of the connection in ss:\n${stdout}`);
  return { clientRecvQ, nodeSendQ };
}

describe('traffic record of a pull the client cut short', () => {
  let t: TestNode | undefined;
  let image: PushedImage;
  const sockets: Socket[] = [];

  before(async () => {
    t = await startTestNode();
    image = await makeImage(t.url, 'team/big', { tag: 'v1', layers: 1, layerSize: SIZE });
  });

  after(async () => {
    for (const s of sockets) s.destroy();
    await t?.stop();
  });

  async function pulls(): Promise<PullRow[]> {
    const res = await fetch(`${t!.url}/shoal/traffic`);
    assert.equal(res.status, 200);
    return ((await res.json()) as { recentPulls: PullRow[] }).recentPulls;
  }

  it('claims no more than the socket took, not the whole blob', async () => {
    const digest = image.layers[0]!.digest;
    assert.equal(image.layers[0]!.size, SIZE);
    const sock = connect(t!.node.port, '127.0.0.1');
    sockets.push(sock);
    let got = 0;
    // Reads the response (headers and some of the body), then stops reading.
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.once('connect', () => sock.write(`GET /v2/team/big/blobs/${digest} HTTP/1.1\r\nHost: shoal\r\n\r\n`));
      const onData = (d: Buffer): void => {
        got += d.length;
        if (got < 256 * 1024) return;
        sock.off('data', onData);
        sock.pause();
        resolve();
      };
      sock.on('data', onData);
    });
    // Once nothing moves any more, every byte the node's kernel took is somewhere on the client's side or queued.
    let last = '';
    let taken = 0;
    for (let i = 0; i < 100; i++) {
      await sleep(100);
      const q = await queues(sock.localPort!);
      const now = `${q.clientRecvQ}/${q.nodeSendQ}/${sock.readableLength}`;
      taken = got + sock.readableLength + q.clientRecvQ + q.nodeSendQ;
      if (now === last) break;
      last = now;
    }
    assert.ok(taken < SIZE, `the kernel took ${taken} bytes of ${SIZE}: the blob is too small for this test`);
    sock.destroy();
    let record: PullRow | undefined;
    for (let i = 0; i < 100 && !record; i++) {
      record = (await pulls()).find((p) => p.digest === digest);
      if (!record) await sleep(50);
    }
    assert.ok(record, 'the cut pull is recorded');
    assert.equal(record.complete, false);
    assert.equal(record.source, 'local');
    assert.ok(record.bytes < SIZE, `the record claims ${record.bytes} bytes of a ${SIZE}-byte blob the client cut`);
    // `taken` includes the response headers: the record (body bytes) stays below it.
    assert.ok(record.bytes <= taken, `the record claims ${record.bytes} bytes; the socket took ${taken} (the client read ${got})`);
  });

  it('a whole pull is recorded with every byte', async () => {
    const digest = image.layers[0]!.digest;
    const before = (await pulls()).length;
    const res = await fetch(`${t!.url}/v2/team/big/blobs/${digest}`);
    assert.equal(res.status, 200);
    assert.equal((await res.arrayBuffer()).byteLength, SIZE);
    let rows: PullRow[] = [];
    for (let i = 0; i < 100; i++) {
      rows = await pulls();
      if (rows.length > before) break;
      await sleep(50);
    }
    assert.deepEqual({ ...rows[0], at: undefined, repository: undefined }, { at: undefined, repository: undefined, digest, bytes: SIZE, complete: true, source: 'local' });
  });
});
