import type { Connection, Libp2p, Stream } from '@libp2p/interface';
import type { Logger } from 'pino';
import { AbortedError, NotFoundError, UnavailableError, type ChunkMap } from '../oci/index.ts';
import type { IoOptions } from '../store/index.ts';
import type { PeerMetrics } from './metrics.ts';
import type { PeerTable } from './peer-table.ts';
import { PROTOCOLS, type ChunkRequest, type PeerTagRecord, type ReportOutcome } from './types.ts';
import { parseChunkHeader, parseChunkMapAnswer, parseManifestHeader, parseReportAnswer, parseTagAnswer } from './validate.ts';
import { carriesClearData } from './clear-data.ts';
import { hostOf, isSealed, openChannel, receiveRange, type ChannelConnection, type ChannelOffer } from './data-channel.ts';
import { DATA_FRAME, framed, MAX_FRAME, ProtocolViolation, readFrame, readJson, violationOf, writeJson, type Framed } from './wire.ts';

/** Opening a stream on a live connection takes one round trip; a peer that cannot do it in this long has gone. */
const STREAM_OPEN_MS = 3_000;
/** Small requests (maps, manifests, tags) get this long in all. */
const REQUEST_MS = 10_000;
/** A holder re-hashes the whole blob before it answers a report. */
const REPORT_MS = 60_000;
/** A peer whose data port could not be reached is not offered the data channel again for this long. */
const CHANNEL_RETRY_MS = 5 * 60_000;

export interface ContentClientOptions {
  node: () => Libp2p | undefined;
  table: PeerTable;
  isBanned(peer: string): boolean;
  metrics: PeerMetrics;
  logger: Logger;
  /** A peer broke the protocol in an answer: it is banned and disconnected. */
  onViolation(peer: string, violation: ProtocolViolation): void;
  /** A peer has no open connection: reconnect in the background (never on a pull's path). */
  redial(peer: string): void;
  /** Ask holders for chunk bytes on their data channel (data-channel.ts). */
  dataChannel?: boolean;
}

/**
 * The asking side of the chunk, chunk map, manifest, tag and report protocols. Streams are opened only on a
 * connection that is already open: a peer that has gone costs a short timeout at most, and its redial happens
 * in the background. Every answer is bounded and validated before it is used.
 */
export class ContentClient {
  private readonly opts: ContentClientOptions;
  /** Peers whose data port could not be reached, until when they are not offered it. */
  private readonly channelDown = new Map<string, number>();

  constructor(opts: ContentClientOptions) {
    this.opts = opts;
  }

  private async open(peer: string, protocol: string, signal?: AbortSignal): Promise<Stream> {
    return (await this.openOn(peer, protocol, signal)).stream;
  }

  private async openOn(peer: string, protocol: string, signal?: AbortSignal): Promise<{ stream: Stream; conn: Connection }> {
    const node = this.opts.node();
    const state = this.opts.table.get(peer);
    // A banned peer is asked nothing; a report of the bad bytes that got it banned still goes out.
    if (!node || !state || (protocol !== PROTOCOLS.report && this.opts.isBanned(peer))) throw new UnavailableError(`peer ${peer} is not connected`);
    const conn = node.getConnections(state.id).find((c) => c.status === 'open');
    if (!conn) {
      this.opts.redial(peer);
      throw new UnavailableError(`peer ${peer} is not connected`);
    }
    const openSignal = signal ? AbortSignal.any([signal, AbortSignal.timeout(STREAM_OPEN_MS)]) : AbortSignal.timeout(STREAM_OPEN_MS);
    try {
      return { stream: await conn.newStream(protocol, { signal: openSignal }), conn };
    } catch (err) {
      if (signal?.aborted) throw new AbortedError();
      throw new UnavailableError(`peer ${peer} did not open ${protocol}: ${(err as Error).message}`);
    }
  }

  /** Turns a failure into the error callers expect, banning a peer that broke the protocol. */
  private failure(peer: string, what: string, err: unknown, signal?: AbortSignal): Error {
    const violation = violationOf(err);
    if (violation) {
      this.opts.onViolation(peer, violation);
      return new UnavailableError(`peer ${peer} broke the ${what} protocol: ${violation.message}`);
    }
    if (signal?.aborted) return new AbortedError();
    if (err instanceof NotFoundError || err instanceof UnavailableError) return err;
    return new UnavailableError(`${what} from peer ${peer} failed: ${(err as Error).message}`);
  }

  /** Until when a peer's data port is left alone because it could not be reached (undefined: it is not). */
  dataPortUnreachableUntil(peer: string): number | undefined {
    const until = this.channelDown.get(peer);
    if (until !== undefined && until <= Date.now()) this.channelDown.delete(peer);
    return until !== undefined && until > Date.now() ? until : undefined;
  }

  async fetchRange(peer: string, req: ChunkRequest, opts: IoOptions = {}): Promise<{ size: number; stream: AsyncIterable<Uint8Array> }> {
    const { stream, conn } = await this.openOn(peer, PROTOCOLS.chunk, opts.signal);
    const state = this.opts.table.get(peer);
    const { metrics, logger } = this.opts;
    const lp = framed(stream, DATA_FRAME);
    const fail = (err: unknown): never => {
      metrics.chunkRequests.inc({ direction: 'out', outcome: err instanceof NotFoundError ? 'not_found' : 'error' });
      stream.abort(err instanceof Error ? err : new Error(String(err)));
      throw this.failure(peer, 'chunk', err, opts.signal);
    };
    let size: number;
    let offer: ChannelOffer | undefined;
    try {
      const wantsChannel = this.opts.dataChannel === true && this.dataPortUnreachableUntil(peer) === undefined;
      // Its connection carries bytes in the clear already (both ends chose --p2p-clear-data): so may the channel.
      const clear = wantsChannel && carriesClearData(conn);
      await writeJson(lp, wantsChannel ? { ...req, channel: true, ...(clear ? { clear: true } : {}) } : req, opts);
      const header = parseChunkHeader(await readJson(lp, opts), { clear });
      if (header.status === 'NOT_FOUND') throw new NotFoundError('BLOB_UNKNOWN', `peer ${peer} does not have ${req.digest}`);
      if (header.status === 'BUSY') throw new UnavailableError(`peer ${peer} is busy (it serves as many chunk streams as it may): ask again shortly`, { busy: true });
      if (header.status !== 'OK') throw new UnavailableError(`peer ${peer} answered ${header.status}${header.status === 'ERROR' ? `: ${header.message}` : ''}`);
      size = header.size;
      offer = header.channel;
      if (req.start >= size) throw new ProtocolViolation('invalid-message', `it offered ${size} bytes for a range from ${req.start}`);
    } catch (err) {
      return fail(err);
    }
    const want = Math.min(req.end, size - 1) - req.start + 1;
    const counted = (n: number): void => {
      if (state) state.bytesIn += n;
      metrics.bytes.inc({ direction: 'in' }, n);
    };
    const signal = opts.signal ?? new AbortController().signal;
    let channel: ChannelConnection | undefined;
    if (offer) {
      try {
        const host = hostOf(conn.remoteAddr);
        if (!host) throw new UnavailableError(`no IP address in ${conn.remoteAddr.toString()}`);
        channel = await openChannel(host, offer, signal);
      } catch (err) {
        if (signal.aborted) return fail(err);
        // Its data port is closed to this node (a firewall, another address): the bytes come on the stream.
        this.channelDown.set(peer, Date.now() + CHANNEL_RETRY_MS);
        metrics.channelFallbacks.inc();
        logger.info({ peer, port: offer.port, err: (err as Error).message }, "the peer's data channel cannot be reached; its chunks come over the peer connection");
        try {
          await writeJson(lp, { use: 'stream' }, opts);
        } catch (e) {
          return fail(e);
        }
      }
    }
    /** The chunk's frames on the stream, each checked against what was asked. */
    async function* frames(): AsyncGenerator<Uint8Array> {
      let received = 0;
      while (received < want) {
        const frame = await readFrame(lp, opts);
        if (frame.length === 0) throw new UnavailableError(`peer ${peer} ended a chunk early`);
        received += frame.length;
        if (received > want) throw new ProtocolViolation('invalid-message', `it sent more bytes than asked (${received} of ${want})`);
        yield frame;
      }
    }
    const sealed = offer ? isSealed(offer) : true;
    if (channel && !sealed) logger.debug({ peer, digest: req.digest, start: req.start, bytes: want }, 'chunk over the data channel unsealed (clear-data connection)');
    const source = channel && offer ? receiveRange(channel, offer, want, signal) : frames();
    async function* counting(): AsyncGenerator<Uint8Array> {
      let received = 0;
      try {
        for await (const piece of source) {
          received += piece.length;
          counted(piece.length);
          yield piece;
        }
        metrics.chunkRequests.inc({ direction: 'out', outcome: 'ok' });
        if (channel) metrics.channelTransfers.inc({ direction: 'in', sealed: String(sealed) });
        await stream.close().catch(() => undefined);
      } catch (err) {
        fail(err);
      } finally {
        // The reader stopped early (a hedged chunk came from elsewhere first): drop the stream (and the channel).
        if (received < want && stream.status === 'open') stream.abort(new Error('chunk no longer wanted'));
      }
    }
    return { size, stream: counting() };
  }

  async fetchChunkMap(peer: string, digest: string, opts: IoOptions & { size?: number } = {}): Promise<ChunkMap | undefined> {
    return this.request(peer, PROTOCOLS.chunkMap, 'chunk map', { digest }, MAX_FRAME, opts, async (lp, signal) => parseChunkMapAnswer(await readJson(lp, { signal }), opts.size));
  }

  async fetchManifest(peer: string, digest: string, opts: IoOptions = {}): Promise<{ bytes: Uint8Array; mediaType: string } | undefined> {
    return this.request(peer, PROTOCOLS.manifest, 'manifest', { digest }, MAX_FRAME, opts, async (lp, signal) => {
      const header = parseManifestHeader(await readJson(lp, { signal }));
      if (!header) return undefined;
      return { bytes: await readFrame(lp, { signal }), mediaType: header.mediaType };
    });
  }

  async queryTag(peers: string[], repository: string, tag: string, opts: IoOptions = {}): Promise<PeerTagRecord[]> {
    const results = await Promise.allSettled(
      peers.map((peer) =>
        this.request(peer, PROTOCOLS.tag, 'tag', { repository, tag }, 4096, opts, async (lp, signal) => {
          const answer = parseTagAnswer(await readJson(lp, { signal }));
          return answer ? { peer, ...answer } : undefined;
        }),
      ),
    );
    return results.flatMap((r) => (r.status === 'fulfilled' && r.value ? [r.value] : []));
  }

  async report(peer: string, digest: string, chunks: number[], opts: IoOptions = {}): Promise<ReportOutcome> {
    return this.request(peer, PROTOCOLS.report, 'report', { digest, chunks }, 4096, opts, async (lp, signal) => parseReportAnswer(await readJson(lp, { signal })), REPORT_MS);
  }

  private async request<T>(
    peer: string,
    protocol: string,
    what: string,
    body: unknown,
    maxFrame: number,
    opts: IoOptions,
    read: (lp: Framed, signal: AbortSignal) => Promise<T>,
    timeoutMs = REQUEST_MS,
  ): Promise<T> {
    const signal = opts.signal ? AbortSignal.any([opts.signal, AbortSignal.timeout(timeoutMs)]) : AbortSignal.timeout(timeoutMs);
    const stream = await this.open(peer, protocol, signal);
    try {
      const lp = framed(stream, maxFrame);
      await writeJson(lp, body, { signal });
      const out = await read(lp, signal);
      await stream.close().catch(() => undefined);
      return out;
    } catch (err) {
      stream.abort(err instanceof Error ? err : new Error(String(err)));
      throw this.failure(peer, what, err, opts.signal);
    }
  }
}
