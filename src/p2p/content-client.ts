import type { Libp2p, Stream } from '@libp2p/interface';
import type { Logger } from 'pino';
import { AbortedError, NotFoundError, UnavailableError, type ChunkMap } from '../oci/index.ts';
import type { IoOptions } from '../store/index.ts';
import type { PeerMetrics } from './metrics.ts';
import type { PeerTable } from './peer-table.ts';
import { PROTOCOLS, type ChunkRequest, type PeerTagRecord, type ReportOutcome } from './types.ts';
import { parseChunkHeader, parseChunkMapAnswer, parseManifestHeader, parseReportAnswer, parseTagAnswer } from './validate.ts';
import { DATA_FRAME, framed, MAX_FRAME, ProtocolViolation, readFrame, readJson, violationOf, writeJson, type Framed } from './wire.ts';

/** Opening a stream on a live connection takes one round trip; a peer that cannot do it in this long has gone. */
const STREAM_OPEN_MS = 3_000;
/** Small requests (maps, manifests, tags) get this long in all. */
const REQUEST_MS = 10_000;
/** A holder re-hashes the whole blob before it answers a report. */
const REPORT_MS = 60_000;

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
}

/**
 * The asking side of the chunk, chunk map, manifest, tag and report protocols. Streams are opened only on a
 * connection that is already open: a peer that has gone costs a short timeout at most, and its redial happens
 * in the background. Every answer is bounded and validated before it is used.
 */
export class ContentClient {
  private readonly opts: ContentClientOptions;

  constructor(opts: ContentClientOptions) {
    this.opts = opts;
  }

  private async open(peer: string, protocol: string, signal?: AbortSignal): Promise<Stream> {
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
      return await conn.newStream(protocol, { signal: openSignal });
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

  async fetchRange(peer: string, req: ChunkRequest, opts: IoOptions = {}): Promise<{ size: number; stream: AsyncIterable<Uint8Array> }> {
    const stream = await this.open(peer, PROTOCOLS.chunk, opts.signal);
    const state = this.opts.table.get(peer);
    const metrics = this.opts.metrics;
    const lp = framed(stream, DATA_FRAME);
    const fail = (err: unknown): never => {
      metrics.chunkRequests.inc({ direction: 'out', outcome: err instanceof NotFoundError ? 'not_found' : 'error' });
      stream.abort(err instanceof Error ? err : new Error(String(err)));
      throw this.failure(peer, 'chunk', err, opts.signal);
    };
    let size: number;
    try {
      await writeJson(lp, req, opts);
      const header = parseChunkHeader(await readJson(lp, opts));
      if (header.status === 'NOT_FOUND') throw new NotFoundError('BLOB_UNKNOWN', `peer ${peer} does not have ${req.digest}`);
      if (header.status !== 'OK') throw new UnavailableError(`peer ${peer} answered ${header.status}${header.status === 'ERROR' ? `: ${header.message}` : ''}`);
      size = header.size;
      if (req.start >= size) throw new ProtocolViolation('invalid-message', `it offered ${size} bytes for a range from ${req.start}`);
    } catch (err) {
      return fail(err);
    }
    const want = Math.min(req.end, size - 1) - req.start + 1;
    async function* frames(): AsyncIterable<Uint8Array> {
      let received = 0;
      try {
        while (received < want) {
          const frame = await readFrame(lp, opts);
          if (frame.length === 0) throw new UnavailableError(`peer ${peer} ended a chunk early`);
          received += frame.length;
          if (received > want) throw new ProtocolViolation('invalid-message', `it sent more bytes than asked (${received} of ${want})`);
          if (state) state.bytesIn += frame.length;
          metrics.bytes.inc({ direction: 'in' }, frame.length);
          yield frame;
        }
        metrics.chunkRequests.inc({ direction: 'out', outcome: 'ok' });
        await stream.close().catch(() => undefined);
      } catch (err) {
        fail(err);
      } finally {
        // The reader stopped early (a hedged chunk came from elsewhere first): drop the stream.
        if (received < want && stream.status === 'open') stream.abort(new Error('chunk no longer wanted'));
      }
    }
    return { size, stream: frames() };
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
