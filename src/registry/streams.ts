import { Transform, type Readable } from 'node:stream';

/**
 * Passes a stream through, reporting the bytes that flow (for metrics). A report that fails is ignored (the
 * bytes still flow); the handlers below run outside any request's promise, so nothing may throw out of them.
 */
export function countBytes(source: Readable, report: (n: number) => void): Readable {
  const counter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      try {
        report(chunk.length);
      } catch {
        // metrics are not worth a response
      }
      done(null, chunk);
    },
  });
  source.on('error', (err) => counter.destroy(err));
  counter.on('close', () => {
    if (!source.destroyed) source.destroy();
  });
  return source.pipe(counter);
}

/** Wraps a request body so that the bytes it yields are counted. */
export async function* countIterable(source: AsyncIterable<Uint8Array>, report: (n: number) => void): AsyncIterable<Uint8Array> {
  for await (const chunk of source) {
    report(chunk.length);
    yield chunk;
  }
}
