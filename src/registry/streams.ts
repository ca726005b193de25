import { Transform, type Readable } from 'node:stream';

/** Passes a stream through, reporting the bytes that flow (for metrics). */
export function countBytes(source: Readable, report: (n: number) => void): Readable {
  const counter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      report(chunk.length);
      done(null, chunk);
    },
  });
  source.on('error', (err) => counter.destroy(err));
  counter.on('close', () => source.destroy());
  return source.pipe(counter);
}

/** Wraps a request body so that the bytes it yields are counted. */
export async function* countIterable(source: AsyncIterable<Uint8Array>, report: (n: number) => void): AsyncIterable<Uint8Array> {
  for await (const chunk of source) {
    report(chunk.length);
    yield chunk;
  }
}
