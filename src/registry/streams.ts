import type { ServerResponse } from 'node:http';
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

/**
 * Reports the body bytes of a response as they are written to its socket: each chunk once its write is done (the
 * kernel took all of it), never a chunk the response only buffered, or that was still being written when the client
 * went away. A complete response reports exactly its body; one cut short reports what reached the socket. A report
 * that fails is ignored; nothing may throw out of it. With `recycle`, each chunk written out is handed to it, so that
 * its buffer can be read into again.
 */
export function countWritten(res: ServerResponse, report: (n: number) => void, recycle?: (chunk: Uint8Array) => void): void {
  const write = res.write;
  const socket = res.socket;
  const counted = function (this: ServerResponse, chunk: unknown, encoding?: unknown, callback?: unknown): boolean {
    const cb = typeof encoding === 'function' ? encoding : callback;
    const enc = typeof encoding === 'function' ? undefined : encoding;
    const n = typeof chunk === 'string' ? Buffer.byteLength(chunk, (enc as BufferEncoding | undefined) ?? 'utf8') : ((chunk as { length?: number } | null)?.length ?? 0);
    return write.call(this, chunk, enc as BufferEncoding, (err?: Error | null) => {
      // A write still under way when the socket is destroyed is called back without an error: not written.
      if (!err && n > 0 && !socket?.destroyed) {
        try {
          report(n);
        } catch {
          // metrics are not worth a response
        }
        // Written out: the buffer may serve the next read (a chunk still queued when the socket went is not reused).
        if (recycle && chunk instanceof Uint8Array) recycle(chunk);
      }
      if (typeof cb === 'function') (cb as (err?: Error | null) => void)(err);
    });
  };
  res.write = counted as typeof res.write;
}
