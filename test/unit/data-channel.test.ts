/**
 * The data channel's own rules, on real sockets: only a connection that presents an offered ticket gets bytes, a
 * ticket serves once, the bytes are sealed (a changed byte, a missing or an extra one fails), and the asking side
 * gets a clear error when the port does not answer. Unsealed (both ends on a clear-data connection): the same
 * tickets, the range as it is, a missing or an extra byte fails, and an unsealed offer nobody asked for is refused.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';
import pino from 'pino';
import { DataChannelServer, openChannel, receiveRange, sendRange, type ChannelOffer, type SealedOffer } from '../../src/p2p/data-channel.ts';
import { parseChunkHeader, parseChunkRequest } from '../../src/p2p/validate.ts';
import { dataPortOf, ConfigError } from '../../src/config/index.ts';
import { recordingRelay } from '../helpers/relay.ts';

const logger = pino({ level: 'silent' });

async function* pieces(bytes: Buffer, size = 65536): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}

async function collect(it: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const p of it) parts.push(p);
  return Buffer.concat(parts);
}

/** Everything a raw connection to `port` receives after sending `hello`, until it closes. */
async function rawExchange(port: number, hello: Buffer): Promise<Buffer> {
  const socket = connect(port, '127.0.0.1');
  await once(socket, 'connect');
  socket.write(hello);
  const got: Buffer[] = [];
  for await (const d of socket) got.push(d as Buffer);
  return Buffer.concat(got);
}

describe('data channel', () => {
  const server = new DataChannelServer({ host: '127.0.0.1', port: 0, logger });
  before(() => server.start());
  after(() => server.stop());
  const never = new AbortController().signal;

  it('carries a range sealed, and the receiver gets exactly the bytes', async () => {
    const bytes = randomBytes(3 * 1024 * 1024 + 17);
    const ticket = server.offer();
    const socketP = openChannel('127.0.0.1', ticket.offer, never);
    const claimed = await ticket.claimed;
    assert.ok(claimed, 'the connection with the ticket claims it');
    const counted: number[] = [];
    const sent = sendRange(claimed, ticket.offer, pieces(bytes), async (p) => void counted.push(p.length), never);
    const got = await collect(receiveRange(await socketP, ticket.offer, bytes.length, never));
    assert.equal(await sent, bytes.length);
    assert.ok(got.equals(bytes));
    assert.equal(counted.reduce((a, b) => a + b, 0), bytes.length);
  });

  it('a connection without a valid ticket gets nothing and is closed', async () => {
    const hello = Buffer.from('shoal-data/1\n');
    assert.equal((await rawExchange(server.port, Buffer.concat([hello, randomBytes(16)]))).length, 0);
    assert.equal((await rawExchange(server.port, Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'))).length, 0);
  });

  it('a ticket serves one connection only, and a withdrawn one none', async () => {
    const ticket = server.offer();
    const hello = Buffer.concat([Buffer.from('shoal-data/1\n'), Buffer.from(ticket.offer.ticket, 'base64')]);
    const first = connect(server.port, '127.0.0.1');
    first.write(hello);
    const claimed = await ticket.claimed;
    assert.ok(claimed);
    assert.equal((await rawExchange(server.port, hello)).length, 0, 'the same ticket again gets nothing');
    claimed.destroy();
    first.destroy();
    const withdrawn = server.offer();
    withdrawn.withdraw();
    assert.equal(await withdrawn.claimed, undefined);
    const again = Buffer.concat([Buffer.from('shoal-data/1\n'), Buffer.from(withdrawn.offer.ticket, 'base64')]);
    assert.equal((await rawExchange(server.port, again)).length, 0);
  });

  /** A fake holder that sends `wire(ciphertext, tag)` for `bytes` sealed under `offer` (unsealed: `wire(bytes, no tag)`). */
  async function receiveFrom(bytes: Buffer, wire: (sealed: Buffer, tag: Buffer) => Buffer, want = bytes.length, unsealed = false): Promise<Buffer> {
    const { createCipheriv } = await import('node:crypto');
    const sealedOffer: SealedOffer = { port: 0, ticket: randomBytes(16).toString('base64'), key: randomBytes(32).toString('base64'), nonce: randomBytes(12).toString('base64') };
    const offer: ChannelOffer = unsealed ? { port: 0, ticket: sealedOffer.ticket, sealed: false } : sealedOffer;
    const cipher = createCipheriv('aes-256-gcm', Buffer.from(sealedOffer.key, 'base64'), Buffer.from(sealedOffer.nonce, 'base64'));
    const sealed = unsealed ? bytes : Buffer.concat([cipher.update(bytes), cipher.final()]);
    const tag = unsealed ? Buffer.alloc(0) : cipher.getAuthTag();
    const fake = createServer((s: Socket) => {
      s.once('data', () => s.end(wire(sealed, tag)));
    });
    fake.listen(0, '127.0.0.1');
    await once(fake, 'listening');
    try {
      offer.port = (fake.address() as { port: number }).port;
      const socket = await openChannel('127.0.0.1', offer, never);
      return await collect(receiveRange(socket, offer, want, never));
    } finally {
      fake.close();
    }
  }

  it('a changed byte fails the tag; a short answer and a long one fail', async () => {
    const bytes = randomBytes(200_000);
    assert.ok((await receiveFrom(bytes, (s, t) => Buffer.concat([s, t]))).equals(bytes), 'the fake holder itself is right');
    await assert.rejects(
      receiveFrom(bytes, (s, t) => {
        const changed = Buffer.from(s);
        changed[1234] = changed[1234]! ^ 1;
        return Buffer.concat([changed, t]);
      }),
      /authentication tag/,
    );
    await assert.rejects(
      receiveFrom(bytes, (s, t) => Buffer.concat([s.subarray(0, 1000), t])),
      /ended after/,
    );
    await assert.rejects(
      receiveFrom(bytes, (s, t) => Buffer.concat([s, t, Buffer.from('more')])),
      (err: Error) => err.name === 'ProtocolViolation' && /more than 200000 bytes/.test(err.message),
    );
  });

  it('unsealed: carries a range as it is, the receiver gets exactly the bytes, and the sender recycles each piece once written', async () => {
    const bytes = randomBytes(5 * 1024 * 1024 + 321);
    const ticket = server.offer({ sealed: false });
    assert.deepEqual(Object.keys(ticket.offer).sort(), ['port', 'sealed', 'ticket'], 'no key, no nonce');
    // The receiver reaches the data port through a relay that records what crosses the wire.
    const relay = await recordingRelay(server.port);
    try {
      const socketP = openChannel('127.0.0.1', { ...ticket.offer, port: relay.port }, never);
      const claimed = await ticket.claimed;
      assert.ok(claimed, 'the connection with the ticket claims it');
      const piece = 256 * 1024;
      const recycled: Uint8Array[] = [];
      const counted: number[] = [];
      const sent = sendRange(claimed, ticket.offer, pieces(bytes, piece), async (p) => void counted.push(p.length), never, (p) => void recycled.push(p));
      const got = await collect(receiveRange(await socketP, ticket.offer, bytes.length, never));
      assert.equal(await sent, bytes.length);
      assert.ok(got.equals(bytes));
      assert.equal(counted.reduce((x, y) => x + y, 0), bytes.length);
      assert.equal(recycled.length, Math.ceil(bytes.length / piece), 'every piece was handed back once written');
      const hello = Buffer.concat([Buffer.from('shoal-data/1\n'), Buffer.from(ticket.offer.ticket, 'base64')]);
      assert.ok(relay.seen().equals(Buffer.concat([hello, bytes])), 'on the wire: the ticket, then the range as it is, nothing more');
    } finally {
      await relay.close();
    }
  });

  it('unsealed: a ticket that was not offered gets nothing, and the offered one still serves once', async () => {
    const ticket = server.offer({ sealed: false });
    const hello = Buffer.from('shoal-data/1\n');
    assert.equal((await rawExchange(server.port, Buffer.concat([hello, randomBytes(16)]))).length, 0, 'a wrong ticket gets nothing');
    const bytes = randomBytes(70_000);
    const socketP = openChannel('127.0.0.1', ticket.offer, never);
    const claimed = await ticket.claimed;
    assert.ok(claimed);
    const sent = sendRange(claimed, ticket.offer, pieces(bytes), async () => undefined, never);
    assert.ok((await collect(receiveRange(await socketP, ticket.offer, bytes.length, never))).equals(bytes));
    await sent;
    assert.equal((await rawExchange(server.port, Buffer.concat([hello, Buffer.from(ticket.offer.ticket, 'base64')]))).length, 0, 'the same ticket again gets nothing');
  });

  it('unsealed: a short answer and a long one fail', async () => {
    const bytes = randomBytes(200_000);
    assert.ok((await receiveFrom(bytes, (b) => b, bytes.length, true)).equals(bytes), 'the fake holder itself is right');
    await assert.rejects(
      receiveFrom(bytes, (b) => b.subarray(0, 150_000), bytes.length, true),
      (err: Error) => err.name === 'UnavailableError' && /ended after 150000 of 200000/.test(err.message),
    );
    // One small write, so that the extra bytes arrive with the range.
    const small = randomBytes(1000);
    await assert.rejects(
      receiveFrom(small, (b) => Buffer.concat([b, Buffer.from('more')]), small.length, true),
      (err: Error) => err.name === 'ProtocolViolation' && /more than 1000 bytes/.test(err.message),
    );
    // A holder that sends a tag after unsealed bytes sends too many.
    await assert.rejects(
      receiveFrom(small, (b) => Buffer.concat([b, randomBytes(16)]), small.length, true),
      (err: Error) => err.name === 'ProtocolViolation' && /more than 1000 bytes/.test(err.message),
    );
  });

  it('a closed data port is a clear error for the asking side', async () => {
    const probe = createServer();
    probe.listen(0, '127.0.0.1');
    await once(probe, 'listening');
    const port = (probe.address() as { port: number }).port;
    await new Promise((ok) => probe.close(ok));
    const offer: ChannelOffer = { port, ticket: randomBytes(16).toString('base64'), key: randomBytes(32).toString('base64'), nonce: randomBytes(12).toString('base64') };
    await assert.rejects(openChannel('127.0.0.1', offer, never), (err: Error) => err.name === 'UnavailableError' && err.message.includes(`127.0.0.1:${port}`));
  });
});

describe('data channel port', () => {
  it('a default port that is taken gives way to a free one; a port set by hand that is taken fails the start', async () => {
    const holder = createServer();
    holder.listen(0, '127.0.0.1');
    await once(holder, 'listening');
    const taken = (holder.address() as { port: number }).port;
    const warnings: string[] = [];
    const log = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(line) });
    const byDefault = new DataChannelServer({ host: '127.0.0.1', port: taken, portIsDefault: true, logger: log });
    const bySetting = new DataChannelServer({ host: '127.0.0.1', port: taken, logger });
    try {
      await byDefault.start();
      assert.ok(byDefault.port > 0 && byDefault.port !== taken, 'it listens on another port');
      assert.ok(warnings.some((w) => w.includes('p2pDataPort')), 'and says so');
      await assert.rejects(bySetting.start(), /EADDRINUSE/);
    } finally {
      await byDefault.stop();
      await bySetting.stop();
      holder.close();
    }
  });
});

describe('data channel messages and settings', () => {
  it('a chunk request asks for the channel only with channel: true', () => {
    const digest = `sha256:${'a'.repeat(64)}`;
    assert.equal(parseChunkRequest({ digest, start: 0, end: 9, channel: true }).channel, true);
    assert.equal(parseChunkRequest({ digest, start: 0, end: 9, channel: 'yes' }).channel, undefined);
  });

  it('an offer in a chunk answer is checked for shape', () => {
    const ok = { port: 4002, ticket: randomBytes(16).toString('base64'), key: randomBytes(32).toString('base64'), nonce: randomBytes(12).toString('base64') };
    assert.deepEqual(parseChunkHeader({ status: 'OK', size: 10, channel: ok }), { status: 'OK', size: 10, channel: ok });
    assert.deepEqual(parseChunkHeader({ status: 'OK', size: 10 }), { status: 'OK', size: 10 });
    for (const bad of [{ ...ok, port: 0 }, { ...ok, port: 70000 }, { ...ok, key: randomBytes(16).toString('base64') }, { ...ok, ticket: 'not base64!' }, { ...ok, nonce: 5 }, 'x']) {
      assert.throws(() => parseChunkHeader({ status: 'OK', size: 10, channel: bad }), (err: Error) => err.name === 'ProtocolViolation');
    }
  });

  it('a chunk request asks for the channel unsealed only with channel: true and clear: true', () => {
    const digest = `sha256:${'a'.repeat(64)}`;
    assert.equal(parseChunkRequest({ digest, start: 0, end: 9, channel: true, clear: true }).clear, true);
    assert.equal(parseChunkRequest({ digest, start: 0, end: 9, clear: true }).clear, undefined, 'not without the channel');
    assert.equal(parseChunkRequest({ digest, start: 0, end: 9, channel: true, clear: 'yes' }).clear, undefined);
    assert.equal(parseChunkRequest({ digest, start: 0, end: 9, channel: true }).clear, undefined, 'an older peer asks for it sealed');
  });

  it('an unsealed offer is taken only when it was asked for; one that was not is a violation', () => {
    const ticket = randomBytes(16).toString('base64');
    const clear = { port: 4002, ticket, sealed: false };
    const sealed = { port: 4002, ticket, key: randomBytes(32).toString('base64'), nonce: randomBytes(12).toString('base64') };
    assert.deepEqual(parseChunkHeader({ status: 'OK', size: 10, channel: clear }, { clear: true }), { status: 'OK', size: 10, channel: clear });
    assert.throws(
      () => parseChunkHeader({ status: 'OK', size: 10, channel: clear }),
      (err: Error) => err.name === 'ProtocolViolation' && /not asked for/.test(err.message),
    );
    assert.throws(() => parseChunkHeader({ status: 'OK', size: 10, channel: clear }, { clear: false }), (err: Error) => err.name === 'ProtocolViolation');
    // Asked for unsealed, a holder may still seal (an older one does not know the request's clear).
    assert.deepEqual(parseChunkHeader({ status: 'OK', size: 10, channel: sealed }, { clear: true }), { status: 'OK', size: 10, channel: sealed });
    for (const bad of [{ ...clear, key: sealed.key }, { ...clear, nonce: sealed.nonce }, { ...clear, ticket: 'x' }, { ...clear, port: 0 }, { port: 4002, ticket, sealed: 'no' }, { port: 4002, ticket }]) {
      assert.throws(() => parseChunkHeader({ status: 'OK', size: 10, channel: bad }, { clear: true }), (err: Error) => err.name === 'ProtocolViolation', JSON.stringify(bad));
    }
  });

  it('p2pDataPort: the first free port after the p2p port by default, any port beside port 0, off, or a port of its own', () => {
    assert.equal(dataPortOf({ p2pListen: '0.0.0.0:5001', p2pDataPort: '' }), 5002);
    assert.equal(dataPortOf({ p2pListen: '127.0.0.1:0', p2pDataPort: '' }), 0);
    assert.equal(dataPortOf({ p2pListen: '0.0.0.0:65535', p2pDataPort: '' }), 0);
    assert.equal(dataPortOf({ p2pListen: '0.0.0.0:5001', p2pDataPort: '', listen: '127.0.0.1:5002', metricsListen: '0.0.0.0:5003' }), 5004, 'the first port no other listener uses');
    assert.throws(() => dataPortOf({ p2pListen: '0.0.0.0:5001', p2pDataPort: '5000', listen: '127.0.0.1:5000' }), (err: Error) => err instanceof ConfigError && /another listener/.test(err.message));
    assert.equal(dataPortOf({ p2pListen: '0.0.0.0:5001', p2pDataPort: 'off' }), undefined);
    assert.equal(dataPortOf({ p2pListen: '0.0.0.0:5001', p2pDataPort: '6000' }), 6000);
    assert.throws(() => dataPortOf({ p2pListen: '0.0.0.0:5001', p2pDataPort: '5001' }), (err: Error) => err instanceof ConfigError && /another listener/.test(err.message));
    assert.throws(() => dataPortOf({ p2pListen: '0.0.0.0:5001', p2pDataPort: 'fast' }), (err: Error) => err instanceof ConfigError && /not a port number/.test(err.message));
    assert.throws(() => dataPortOf({ p2pListen: '0.0.0.0:5001', p2pDataPort: '70000' }), ConfigError);
  });
});
