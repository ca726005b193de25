import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Multiaddr } from '@multiformats/multiaddr';
import { AbortedError, UnavailableError } from '../oci/index.ts';
import { ProtocolViolation } from './wire.ts';

/**
 * The data channel: chunk bytes between two nodes over a plain TCP connection beside the peer connection, instead
 * of through its Noise and Yamux layers, whose per-message JavaScript costs several times what the bytes' checks
 * cost (docs/BENCHMARKS.md).
 *
 * Nothing about it is trusted by itself. The holder offers it in its answer on the chunk stream, which is
 * authenticated by the cluster key: a one-use ticket (16 random bytes) and a fresh AES-256-GCM key and nonce for
 * this transfer. The asking node connects to the holder's data port, presents the ticket, and receives the range
 * sealed with that key: a stranger who sees the ticket on the wire gets bytes it cannot read, and bytes altered on
 * the way fail the GCM tag (and the chunk's own hash after it). A ticket that is not claimed within CLAIM_MS is
 * dropped; when the asking node cannot reach the data port it says so on the chunk stream and gets the bytes there.
 *
 * Unsealed: when the peer connection itself carries bytes in the clear (`p2pClearData` on both ends, clear-data.ts)
 * and the asking node asked for it, the offer holds only the ticket, and the range goes as it is (no cipher, no
 * tag). The ticket still comes over the Noise-authenticated connection and serves once; the bytes are checked
 * against the chunk map's hash as always, so what is given up is only their confidentiality on the wire, which
 * that connection has given up already.
 */

/** What a holder puts in its chunk answer for sealed bytes. Key, nonce and ticket are base64. */
export interface SealedOffer {
  port: number;
  ticket: string;
  key: string;
  nonce: string;
}

/** What a holder puts in its chunk answer for bytes sent as they are (only ever asked for on a clear-data connection). */
export interface ClearOffer {
  port: number;
  ticket: string;
  sealed: false;
}

export type ChannelOffer = SealedOffer | ClearOffer;

export function isSealed(offer: ChannelOffer): offer is SealedOffer {
  return !('sealed' in offer && offer.sealed === false);
}

/** Sent first on a data connection, before the ticket. */
const HELLO = Buffer.from('shoal-data/1\n');
export const TICKET_BYTES = 16;
export const KEY_BYTES = 32;
export const NONCE_BYTES = 12;
const TAG_BYTES = 16;
/** An offered ticket waits this long for its connection. */
const CLAIM_MS = 10_000;
/** A connection that has not presented a ticket after this long is closed. */
const HELLO_MS = 5_000;
/** Connections at once that have not yet presented a ticket; more are closed on arrival. */
const MAX_UNCLAIMED = 256;
/** How long the asking side waits for the data port to accept. */
const CONNECT_MS = 3_000;

interface PendingTicket {
  resolve(socket: Socket | undefined): void;
  timer: NodeJS.Timeout;
}

export interface DataChannelServerOptions {
  host: string;
  /** 0: any free port. */
  port: number;
  /** The port is only the default one: when it is taken, listen on any free port instead (peers learn it from the offer). */
  portIsDefault?: boolean;
  logger: Logger;
}

/** A ticket offered for one transfer, and the connection that claims it. */
export interface OfferedTicket<O extends ChannelOffer = ChannelOffer> {
  offer: O;
  /** The connection that presented the ticket; undefined when none came within CLAIM_MS or it was withdrawn. */
  claimed: Promise<Socket | undefined>;
  /** Takes the offer back (the asking side chose the chunk stream). */
  withdraw(): void;
}

/** The holder's side: the data port, and the tickets it has offered. */
export class DataChannelServer {
  private readonly opts: DataChannelServerOptions;
  private server?: Server;
  private readonly tickets = new Map<string, PendingTicket>();
  private readonly unclaimed = new Set<Socket>();
  private boundPort = 0;

  constructor(opts: DataChannelServerOptions) {
    this.opts = opts;
  }

  /** The port the data channel listens on (after start). */
  get port(): number {
    return this.boundPort;
  }

  async start(): Promise<void> {
    const listen = async (port: number): Promise<Server> => {
      const server = createServer({ noDelay: true }, (socket) => this.accept(socket));
      server.listen({ host: this.opts.host, port });
      await Promise.race([once(server, 'listening'), once(server, 'error').then(([err]) => Promise.reject(err as Error))]);
      return server;
    };
    let server: Server;
    try {
      server = await listen(this.opts.port);
    } catch (err) {
      if (!this.opts.portIsDefault || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
      server = await listen(0);
      const port = (server.address() as { port: number }).port;
      this.opts.logger.warn({ wanted: this.opts.port, port }, 'the data channel\'s default port is in use; it listens on another (set p2pDataPort to choose one)');
    }
    this.server = server;
    const addr = server.address();
    this.boundPort = typeof addr === 'object' && addr ? addr.port : 0;
    this.opts.logger.info({ host: this.opts.host, port: this.boundPort }, 'p2p data channel listening');
  }

  async stop(): Promise<void> {
    for (const t of this.tickets.values()) {
      clearTimeout(t.timer);
      t.resolve(undefined);
    }
    this.tickets.clear();
    for (const s of this.unclaimed) s.destroy();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** A fresh ticket, and key unless the bytes go unsealed, for one transfer. */
  offer(): OfferedTicket<SealedOffer>;
  offer(opts: { sealed: false }): OfferedTicket<ClearOffer>;
  offer(opts: { sealed: boolean }): OfferedTicket;
  offer(opts: { sealed: boolean } = { sealed: true }): OfferedTicket {
    const ticket = randomBytes(TICKET_BYTES).toString('base64');
    const offer: ChannelOffer = opts.sealed
      ? { port: this.boundPort, ticket, key: randomBytes(KEY_BYTES).toString('base64'), nonce: randomBytes(NONCE_BYTES).toString('base64') }
      : { port: this.boundPort, ticket, sealed: false };
    let settle!: (s: Socket | undefined) => void;
    const claimed = new Promise<Socket | undefined>((resolve) => (settle = resolve));
    const done = (socket: Socket | undefined): void => {
      const pending = this.tickets.get(ticket);
      if (!pending) return;
      clearTimeout(pending.timer);
      this.tickets.delete(ticket);
      settle(socket);
    };
    const timer = setTimeout(() => done(undefined), CLAIM_MS);
    timer.unref();
    this.tickets.set(ticket, { resolve: done, timer });
    return { offer, claimed, withdraw: () => done(undefined) };
  }

  private accept(socket: Socket): void {
    if (this.unclaimed.size >= MAX_UNCLAIMED) {
      socket.destroy();
      return;
    }
    this.unclaimed.add(socket);
    socket.on('error', () => undefined);
    const want = HELLO.length + TICKET_BYTES;
    let got = Buffer.alloc(0);
    const timer = setTimeout(() => socket.destroy(), HELLO_MS);
    timer.unref();
    const end = (): void => {
      clearTimeout(timer);
      this.unclaimed.delete(socket);
      socket.off('data', onData);
      socket.off('close', end);
    };
    const onData = (data: Buffer): void => {
      got = Buffer.concat([got, data]);
      if (got.length < want) return;
      end();
      socket.pause();
      const pending = got.length === want && got.subarray(0, HELLO.length).equals(HELLO) ? this.tickets.get(got.subarray(HELLO.length).toString('base64')) : undefined;
      if (!pending) {
        // Nothing is said to a connection without a valid ticket.
        socket.destroy();
        return;
      }
      pending.resolve(socket);
    };
    socket.on('data', onData);
    socket.on('close', end);
  }
}

/** Where a peer connection's other end is, as a host to open a data connection to. */
export function hostOf(addr: Multiaddr): string | undefined {
  for (const c of addr.getComponents()) {
    if ((c.name === 'ip4' || c.name === 'ip6') && c.value) return c.value;
  }
  return undefined;
}

function abortError(signal: AbortSignal | undefined): Error {
  return signal?.reason instanceof Error && signal.reason.name !== 'AbortError' && signal.reason.name !== 'TimeoutError' ? signal.reason : new AbortedError();
}

/**
 * Sends a range on the connection that claimed the offer's ticket: sealed with its key (the ciphertext, then the
 * GCM tag), or as it is for an unsealed offer. `before` runs before each piece is sent (the upload cap, byte
 * counts); `recycle` gets each piece once nothing refers to it any more (encrypted into a copy, or written out to
 * the connection).
 */
export async function sendRange(
  socket: Socket,
  offer: ChannelOffer,
  pieces: AsyncIterable<Uint8Array>,
  before: (piece: Uint8Array) => Promise<void>,
  signal: AbortSignal,
  recycle?: (piece: Uint8Array) => void,
): Promise<number> {
  const cipher = isSealed(offer) ? createCipheriv('aes-256-gcm', Buffer.from(offer.key, 'base64'), Buffer.from(offer.nonce, 'base64')) : undefined;
  let closed: Error | undefined;
  const onClose = (): void => {
    closed ??= new UnavailableError('the data connection closed');
  };
  socket.on('close', onClose);
  const onAbort = (): void => {
    socket.destroy();
  };
  signal.addEventListener('abort', onAbort, { once: true });
  let sent = 0;
  try {
    for await (const piece of pieces) {
      if (signal.aborted) throw abortError(signal);
      if (closed) throw closed;
      await before(piece);
      sent += piece.length;
      let flowing: boolean;
      if (cipher) {
        const sealed = cipher.update(piece);
        // The piece is copied out (encrypted): its buffer may serve the next read.
        recycle?.(piece);
        flowing = socket.write(sealed);
      } else {
        // The piece itself is written: its buffer goes back only once the connection has taken it (never after a failed write).
        flowing = socket.write(piece, recycle ? (err) => void (err ? undefined : recycle(piece)) : undefined);
      }
      if (!flowing) await Promise.race([once(socket, 'drain', { signal }), once(socket, 'close')]);
    }
    if (cipher) {
      cipher.final();
      socket.end(cipher.getAuthTag());
    } else socket.end();
    await Promise.race([once(socket, 'finish', { signal }), once(socket, 'close')]);
    if (closed && !socket.writableFinished) throw closed;
    return sent;
  } catch (err) {
    socket.destroy();
    if (signal.aborted) throw abortError(signal);
    throw err;
  } finally {
    socket.off('close', onClose);
    signal.removeEventListener('abort', onAbort);
  }
}

/** Reads on a data connection land in one buffer of this size, reused (no allocation per read). */
const READ_BUFFER = 256 * 1024;
/** Decrypted bytes waiting for the reader past this pause the connection; below LOW_WATER it reads again. */
const HIGH_WATER = 2 * 1024 * 1024;
const LOW_WATER = 512 * 1024;

/** A connection to a holder's data port. */
export interface ChannelConnection {
  readonly socket: Socket;
  /** Takes each read (valid only during the call); false pauses the connection. */
  sink?: (data: Uint8Array) => boolean;
  /** Reads that came before there was a sink (copied); the connection waits paused until one is set. */
  early: Buffer[];
}

/** Connects to a holder's data port and presents the ticket. */
export async function openChannel(host: string, offer: ChannelOffer, signal: AbortSignal): Promise<ChannelConnection> {
  const connectSignal = AbortSignal.any([signal, AbortSignal.timeout(CONNECT_MS)]);
  const early: Buffer[] = [];
  const conn: { socket?: Socket; sink?: (data: Uint8Array) => boolean; early: Buffer[] } = { early };
  const socket = connect({
    host,
    port: offer.port,
    noDelay: true,
    onread: {
      buffer: Buffer.allocUnsafe(READ_BUFFER),
      callback: (n, buf) => {
        if (conn.sink) return conn.sink(buf.subarray(0, n));
        early.push(Buffer.from(buf.subarray(0, n)));
        return false;
      },
    },
  });
  conn.socket = socket;
  socket.on('error', () => undefined);
  const onAbort = (): void => {
    socket.destroy();
  };
  connectSignal.addEventListener('abort', onAbort, { once: true });
  try {
    await Promise.race([
      once(socket, 'connect'),
      once(socket, 'close').then(() => Promise.reject(new UnavailableError(`the data port ${host}:${offer.port} did not accept`))),
    ]);
  } catch (err) {
    socket.destroy();
    if (signal.aborted) throw abortError(signal);
    if (connectSignal.aborted) throw new UnavailableError(`the data port ${host}:${offer.port} did not answer within ${CONNECT_MS} ms`);
    throw err instanceof UnavailableError ? err : new UnavailableError(`the data port ${host}:${offer.port} did not accept: ${(err as Error).message}`);
  } finally {
    connectSignal.removeEventListener('abort', onAbort);
  }
  socket.write(Buffer.concat([HELLO, Buffer.from(offer.ticket, 'base64')]));
  return conn as ChannelConnection;
}

/** Unsealed bytes are copied out of the read buffer into blocks of at most this size, handed on as views of them. */
const CLEAR_BLOCK = 4 * 1024 * 1024;

/**
 * Reads exactly `want` bytes from a data connection: sealed with the offer's key, or as they are for an unsealed
 * offer. Pieces are handed on as they arrive (decrypted); for sealed bytes the GCM tag is checked after the last
 * one. A bad tag, a short or a long answer throws before the iteration ends, so a caller uses the bytes only once
 * it ended normally.
 */
export async function* receiveRange(conn: ChannelConnection, offer: ChannelOffer, want: number, signal: AbortSignal): AsyncGenerator<Uint8Array> {
  const { socket } = conn;
  const decipher = isSealed(offer) ? createDecipheriv('aes-256-gcm', Buffer.from(offer.key, 'base64'), Buffer.from(offer.nonce, 'base64')) : undefined;
  /** What follows the range: the tag, or nothing. */
  const trailerBytes = decipher ? TAG_BYTES : 0;
  const queue: Buffer[] = [];
  let queued = 0;
  let received = 0;
  const tag: Buffer[] = [];
  let tagLength = 0;
  let failure: Error | undefined;
  let ended = false;
  let paused = false;
  let wake: (() => void) | undefined;
  /** Unsealed: the block the bytes are copied into (the read buffer is reused), and how far it is filled. */
  let block: Buffer | undefined;
  let filled = 0;
  const copyOut = (body: Uint8Array): void => {
    for (let at = 0; at < body.length; ) {
      if (!block || filled === block.length) {
        block = Buffer.allocUnsafe(Math.min(CLEAR_BLOCK, want - received - at));
        filled = 0;
      }
      const n = Math.min(block.length - filled, body.length - at);
      block.set(body.subarray(at, at + n), filled);
      queue.push(block.subarray(filled, filled + n));
      queued += n;
      filled += n;
      at += n;
    }
  };
  const take = (data: Uint8Array): boolean => {
    if (failure) return false;
    let body = data;
    if (received + body.length > want) {
      const cut = want - received;
      tag.push(Buffer.from(body.subarray(cut)));
      tagLength += body.length - cut;
      body = body.subarray(0, cut);
      if (tagLength > trailerBytes) {
        failure = new ProtocolViolation('invalid-message', `it sent more than ${want} bytes on the data channel`);
        socket.destroy();
      }
    }
    if (body.length) {
      if (decipher) {
        const out = decipher.update(body);
        queue.push(out);
        queued += out.length;
      } else copyOut(body);
      received += body.length;
    }
    // Everything asked for and the tag are here: the answer is complete whether or not the holder closes.
    if (received === want && tagLength === trailerBytes) ended = true;
    wake?.();
    paused = queued >= HIGH_WATER;
    return !paused && !ended;
  };
  const onEnd = (): void => {
    ended = true;
    wake?.();
  };
  socket.on('end', onEnd);
  socket.on('close', onEnd);
  const onAbort = (): void => {
    socket.destroy();
  };
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    for (const piece of conn.early.splice(0)) take(piece);
    conn.sink = take;
    if (!paused) socket.resume();
    for (;;) {
      const out = queue.shift();
      if (out) {
        queued -= out.length;
        if (paused && queued < LOW_WATER) {
          paused = false;
          socket.resume();
        }
        yield out;
        continue;
      }
      if (failure) throw failure;
      if (ended) break;
      await new Promise<void>((resolve) => (wake = resolve));
      wake = undefined;
    }
    if (signal.aborted) throw abortError(signal);
    if (received < want || tagLength < trailerBytes) throw new UnavailableError(`the data channel ended after ${received} of ${want} bytes`);
    if (decipher) {
      decipher.setAuthTag(Buffer.concat(tag));
      try {
        decipher.final();
      } catch {
        throw new UnavailableError('bytes on the data channel failed their authentication tag');
      }
    }
  } catch (err) {
    if (signal.aborted) throw abortError(signal);
    throw err;
  } finally {
    conn.sink = undefined;
    socket.off('end', onEnd);
    socket.off('close', onEnd);
    signal.removeEventListener('abort', onAbort);
    socket.destroy();
  }
}
