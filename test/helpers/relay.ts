/**
 * A TCP relay that keeps every byte crossing it, in both directions: what a listener on the wire would see.
 */
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';

export interface RecordingRelay {
  port: number;
  /** Everything that crossed the relay so far, both directions. */
  seen(): Buffer;
  close(): Promise<void>;
}

/** Listens on `listenHost:listenPort` (0: any free port) and relays to `targetHost:targetPort`. */
export async function recordingRelay(targetPort: number, opts: { targetHost?: string; listenHost?: string; listenPort?: number } = {}): Promise<RecordingRelay> {
  const chunks: Buffer[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = connect(targetPort, opts.targetHost ?? '127.0.0.1');
    sockets.add(client).add(upstream);
    for (const [from, to] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      from.on('data', (d: Buffer) => {
        chunks.push(d);
        if (!to.write(d)) {
          from.pause();
          to.once('drain', () => from.resume());
        }
      });
      from.on('end', () => to.end());
      from.on('error', () => to.destroy());
      from.on('close', () => {
        sockets.delete(from);
        to.destroy();
      });
    }
  });
  server.listen(opts.listenPort ?? 0, opts.listenHost ?? '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as { port: number }).port,
    seen: () => Buffer.concat(chunks),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((ok) => server.close(() => ok(undefined)));
    },
  };
}
