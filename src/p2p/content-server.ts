import type { Socket } from 'node:net';
import type { Connection, Stream } from '@libp2p/interface';
import type { Logger } from 'pino';
import type { TokenBucket } from '../limits/token-bucket.ts';
import { carriesClearData } from './clear-data.ts';
import { sendRange, type DataChannelServer, type OfferedTicket } from './data-channel.ts';
import type { PeerMetrics } from './metrics.ts';
import type { PeerTable } from './peer-table.ts';
import type { ReportDesk } from './reports.ts';
import type { ContentProvider, PeerRange } from './types.ts';
import { parseChunkRequest, parseDigestRequest, parseReportRequest, parseTagRequest, type ChunkHeader } from './validate.ts';
import { DATA_FRAME, framed, MAX_REQUEST, ProtocolViolation, readJson, violationOf, writeJson, type Framed } from './wire.ts';

export interface ContentServerOptions {
  provider: ContentProvider;
  table: PeerTable;
  upload: TokenBucket;
  /** Chunk streams served at once; more get BUSY. */
  maxChunkStreams: number;
  reports: ReportDesk;
  isBanned(peer: string): boolean;
  metrics: PeerMetrics;
  logger: Logger;
  /** A peer broke the protocol in a request: it is banned and disconnected. */
  onViolation(peer: string, violation: ProtocolViolation): void;
  /** Where chunk bytes go when the asking node can take them beside the stream (none: always on the stream). */
  dataChannel?: DataChannelServer;
}

/** Lets go of a range's bytes that will not be read (its file is closed). */
function release(stream: AsyncIterable<Uint8Array>): void {
  const s = stream as { destroy?: () => void; return?: () => unknown };
  if (typeof s.destroy === 'function') s.destroy();
  else if (typeof s.return === 'function') void Promise.resolve(s.return()).catch(() => undefined);
}

/**
 * The serving side of the chunk, chunk map, manifest, tag and report protocols. Requests are bounded and
 * validated; a banned peer gets nothing; what is served comes from the provider, which serves only what this node
 * can vouch for.
 */
export class ContentServer {
  private readonly opts: ContentServerOptions;
  private activeChunkStreams = 0;

  constructor(opts: ContentServerOptions) {
    this.opts = opts;
  }

  private refuse(stream: Stream, peer: string): boolean {
    if (!this.opts.isBanned(peer)) return false;
    stream.abort(new Error('banned'));
    return true;
  }

  private violated(peer: string, stream: Stream, err: unknown): void {
    const violation = violationOf(err);
    stream.abort(err instanceof Error ? err : new Error(String(err)));
    if (violation) this.opts.onViolation(peer, violation);
  }

  async serveChunk(stream: Stream, conn: Connection): Promise<void> {
    const peer = conn.remotePeer.toString();
    if (this.refuse(stream, peer)) return;
    const { metrics, provider, logger, upload } = this.opts;
    const lp = framed(stream, MAX_REQUEST);
    const signal = AbortSignal.timeout(10 * 60_000);
    if (this.activeChunkStreams >= this.opts.maxChunkStreams) {
      await writeJson(lp, { status: 'BUSY' } satisfies ChunkHeader).catch(() => undefined);
      await stream.close().catch(() => undefined);
      metrics.chunkRequests.inc({ direction: 'in', outcome: 'busy' });
      return;
    }
    this.activeChunkStreams++;
    let opened: PeerRange | undefined;
    try {
      const req = parseChunkRequest(await readJson(lp, { signal: AbortSignal.timeout(10_000) }));
      opened = await provider.openRange(req, { signal }).catch((err: Error) => {
        logger.debug({ peer, digest: req.digest, err: err.message }, 'chunk request could not be served');
        return undefined;
      });
      if (!opened) {
        await writeJson(lp, { status: 'NOT_FOUND' } satisfies ChunkHeader);
        metrics.chunkRequests.inc({ direction: 'in', outcome: 'not_found' });
        await stream.close().catch(() => undefined);
        return;
      }
      const state = this.opts.table.get(peer);
      const before = async (piece: Uint8Array): Promise<void> => {
        await upload.take(piece.length, signal);
        if (state) state.bytesOut += piece.length;
        metrics.bytes.inc({ direction: 'out' }, piece.length);
      };
      // Unsealed only when asked for and this connection carries bytes in the clear already (both ends chose it).
      const sealed = !(req.clear === true && carriesClearData(conn));
      const ticket = req.channel && this.opts.dataChannel?.port ? this.opts.dataChannel.offer({ sealed }) : undefined;
      await writeJson(lp, { status: 'OK', size: opened.size, ...(ticket ? { channel: ticket.offer } : {}) } satisfies ChunkHeader);
      const socket = ticket ? await this.claimed(ticket, lp, signal) : 'stream';
      if (socket === 'stream') {
        for await (const chunk of opened.stream) {
          for (let i = 0; i < chunk.length; i += DATA_FRAME) {
            const piece = chunk.subarray(i, i + DATA_FRAME);
            await before(piece);
            await lp.write(piece, { signal });
          }
        }
      } else {
        await sendRange(socket, ticket!.offer, opened.stream, before, signal, opened.recycle);
        metrics.channelTransfers.inc({ direction: 'out', sealed: String(sealed) });
        if (!sealed) logger.debug({ peer, digest: req.digest, start: req.start, bytes: opened.size }, 'chunk served over the data channel unsealed (clear-data connection)');
      }
      metrics.chunkRequests.inc({ direction: 'in', outcome: 'ok' });
      await stream.close();
    } catch (err) {
      metrics.chunkRequests.inc({ direction: 'in', outcome: 'error' });
      this.violated(peer, stream, err);
    } finally {
      this.activeChunkStreams--;
      if (opened) release(opened.stream);
    }
  }

  /**
   * Waits for the asking node to take an offered data channel: its connection with the ticket, or a message on
   * the chunk stream saying that it takes the bytes there (it could not reach the data port).
   */
  private async claimed(ticket: OfferedTicket, lp: Framed, signal: AbortSignal): Promise<Socket | 'stream'> {
    const onStream = readJson(lp, { signal }).then(
      (msg) => {
        if (msg.use !== 'stream') throw new ProtocolViolation('invalid-message', 'the answer to a data channel offer is not {use: "stream"}');
        return 'stream' as const;
      },
      (err: unknown) => {
        throw violationOf(err) ?? new Error('the chunk stream closed before the data channel was taken');
      },
    );
    onStream.catch(() => undefined);
    const socket = await Promise.race([ticket.claimed, onStream]).finally(() => ticket.withdraw());
    if (socket === undefined) throw new Error('the data channel was not taken in time');
    return socket;
  }

  async serveChunkMap(stream: Stream, conn: Connection): Promise<void> {
    await this.serveSmall(stream, conn, async (lp, signal) => {
      const { digest } = parseDigestRequest(await readJson(lp, { signal }));
      const map = await this.opts.provider.chunkMap(digest, { signal });
      await writeJson(lp, map ? { found: true, size: map.size, chunks: map.chunks } : { found: false }, { signal });
    });
  }

  async serveManifest(stream: Stream, conn: Connection): Promise<void> {
    await this.serveSmall(stream, conn, async (lp, signal) => {
      const { digest } = parseDigestRequest(await readJson(lp, { signal }));
      const m = await this.opts.provider.manifest(digest, { signal });
      if (!m) return writeJson(lp, { found: false }, { signal });
      await writeJson(lp, { found: true, mediaType: m.mediaType }, { signal });
      await lp.write(m.bytes, { signal });
    });
  }

  async serveTag(stream: Stream, conn: Connection): Promise<void> {
    await this.serveSmall(stream, conn, async (lp, signal) => {
      const { repository, tag } = parseTagRequest(await readJson(lp, { signal }));
      const rec = await this.opts.provider.tag(repository, tag, { signal });
      await writeJson(lp, rec ? { found: true, digest: rec.digest, updated: rec.updated } : { found: false }, { signal });
    });
  }

  async serveReport(stream: Stream, conn: Connection): Promise<void> {
    const peer = conn.remotePeer.toString();
    await this.serveSmall(
      stream,
      conn,
      async (lp, signal) => {
        const { digest, chunks } = parseReportRequest(await readJson(lp, { signal }));
        const outcome = await this.opts.reports.handle(peer, digest, chunks, { signal });
        await writeJson(lp, { outcome }, { signal });
      },
      120_000,
    );
  }

  private async serveSmall(stream: Stream, conn: Connection, fn: (lp: Framed, signal: AbortSignal) => Promise<void>, timeoutMs = 30_000): Promise<void> {
    const peer = conn.remotePeer.toString();
    if (this.refuse(stream, peer)) return;
    const signal = AbortSignal.timeout(timeoutMs);
    try {
      await fn(framed(stream, MAX_REQUEST), signal);
      await stream.close();
    } catch (err) {
      this.violated(peer, stream, err);
    }
  }
}
