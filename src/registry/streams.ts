import type { Readable } from 'node:stream';

/**
 * Reports the bytes a stream yields (for metrics) as they are read, and returns the same stream: no stage in
 * between, so a response holds no buffer beyond the stream's own (50 clients of one blob used to hold a pass-through
 * stage's chunk each, about a third of the node's memory under that load). A complete response counts exactly its
 * bytes; one cut short counts at most the chunk that was read and not sent. A report that fails is ignored (the
 * bytes still flow); it runs outside any request's promise, so nothing may throw out of it.
 */
export function countBytes(source: Readable, report: (n: number) => void): Readable {
  const push = source.push.bind(source);
  source.push = (chunk: unknown, encoding?: BufferEncoding): boolean => {
    if (chunk !== null && chunk !== undefined) {
      try {
        report((chunk as { length: number }).length);
      } catch {
        // metrics are not worth a response
      }
    }
    return push(chunk, encoding);
  };
  return source;
}

/** Wraps a request body so that the bytes it yields are counted. */
export async function* countIterable(source: AsyncIterable<Uint8Array>, report: (n: number) => void): AsyncIterable<Uint8Array> {
  for await (const chunk of source) {
    report(chunk.length);
    yield chunk;
  }
}
