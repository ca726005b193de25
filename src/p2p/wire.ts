import { lpStream, type LengthPrefixedStream } from '@libp2p/utils';
import type { Stream } from '@libp2p/interface';
import type { IoOptions } from '../store/index.ts';
import type { BanReason } from './types.ts';

/** Largest frame on Shoal protocols: a chunk piece, a manifest (up to 4 MiB) or a chunk map answer. */
export const MAX_FRAME = 5 * 1024 * 1024;
/** Largest request (chunk, chunk map, manifest, tag, report): a few hundred bytes in practice. */
export const MAX_REQUEST = 16 * 1024;
/** Largest inventory message; senders put at most INVENTORY_SLICE digests in one. */
export const MAX_INVENTORY_FRAME = 1024 * 1024;
/** Digests per inventory message (a sha256 digest is 71 characters plus JSON quoting). */
export const INVENTORY_SLICE = 8_000;
/** Data frames carry at most this much of a chunk: fewer, larger yamux frames mean fewer window updates. */
export const DATA_FRAME = 1048576;

export type Framed = LengthPrefixedStream<Stream>;

/**
 * Bytes a stream may hold unread. A peer that keeps to the protocols never gets near it (a chunk is 4 MiB, an
 * inventory message waits for its ack); one that sends more than that unasked is cut off.
 */
export const MAX_UNREAD = 20 * 1024 * 1024;

/** A length-prefixed view of a stream whose frames may not exceed `maxFrame` bytes. */
export function framed(stream: Stream, maxFrame = MAX_FRAME): Framed {
  return lpStream(stream, { maxDataLength: maxFrame, maxBufferSize: Math.max(MAX_UNREAD, 4 * maxFrame) });
}

/** A peer broke the protocol: what it sent is too large or not what the protocol allows. */
export class ProtocolViolation extends Error {
  override readonly name = 'ProtocolViolation';
  readonly reason: BanReason;
  constructor(reason: BanReason, message: string) {
    super(message);
    this.reason = reason;
  }
}

const OVERSIZE = new Set(['InvalidDataLengthError', 'InvalidDataLengthLengthError', 'InvalidMessageLengthError', 'StreamBufferError']);

/** The violation an error from reading a peer's stream stands for, if it is one. */
export function violationOf(err: unknown): ProtocolViolation | undefined {
  if (err instanceof ProtocolViolation) return err;
  const name = (err as Error | undefined)?.name;
  if (name && OVERSIZE.has(name)) return new ProtocolViolation('oversize-message', (err as Error).message);
  return undefined;
}

export async function writeJson(lp: Framed, value: unknown, opts: IoOptions = {}): Promise<void> {
  await lp.write(new TextEncoder().encode(JSON.stringify(value)), opts);
}

/** Reads one JSON frame; anything that is not a JSON object is a violation. */
export async function readJson(lp: Framed, opts: IoOptions = {}): Promise<Record<string, unknown>> {
  const buf = await lp.read(opts);
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray()));
  } catch {
    throw new ProtocolViolation('invalid-message', 'a message is not JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ProtocolViolation('invalid-message', 'a message is not a JSON object');
  return value as Record<string, unknown>;
}

export async function readFrame(lp: Framed, opts: IoOptions = {}): Promise<Uint8Array> {
  return (await lp.read(opts)).subarray();
}
