import { lpStream, type LengthPrefixedStream } from '@libp2p/utils';
import type { Stream } from '@libp2p/interface';
import type { IoOptions } from '../store/index.ts';

/** Largest frame on Shoal protocols: a chunk piece or a JSON message (manifests are up to 4 MiB). */
export const MAX_FRAME = 5 * 1024 * 1024;
/** Data frames carry at most this much of a chunk: fewer, larger yamux frames mean fewer window updates. */
export const DATA_FRAME = 1048576;

export function framed(stream: Stream): LengthPrefixedStream<Stream> {
  return lpStream(stream, { maxDataLength: MAX_FRAME, maxBufferSize: 4 * MAX_FRAME });
}

export async function writeJson(lp: LengthPrefixedStream<Stream>, value: unknown, opts: IoOptions = {}): Promise<void> {
  await lp.write(new TextEncoder().encode(JSON.stringify(value)), opts);
}

export async function readJson<T>(lp: LengthPrefixedStream<Stream>, opts: IoOptions = {}): Promise<T> {
  const buf = await lp.read(opts);
  return JSON.parse(new TextDecoder().decode(buf.subarray())) as T;
}

export async function readFrame(lp: LengthPrefixedStream<Stream>, opts: IoOptions = {}): Promise<Uint8Array> {
  return (await lp.read(opts)).subarray();
}
