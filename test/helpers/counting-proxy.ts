/**
 * A TCP proxy that counts the bytes going each way: put it in front of a seed registry to measure what the seed
 * really sent (headers and manifests included), independent of the nodes' own metrics.
 *
 *   const proxy = await startCountingProxy('127.0.0.1', seedPort);
 *   ... nodes use proxy.url as their seed ...
 *   proxy.bytesFromTarget   // bytes the seed sent
 *   await proxy.close();    // stops listening and cuts every connection: the seed is now unreachable
 */
import { once } from 'node:events';
import { createConnection, createServer, type Socket } from 'node:net';

export interface CountingProxy {
  url: string;
  port: number;
  /** Bytes from the target (the seed) to clients. */
  readonly bytesFromTarget: number;
  /** Bytes from clients to the target. */
  readonly bytesToTarget: number;
  /** Connections accepted so far. */
  readonly connections: number;
  reset(): void;
  close(): Promise<void>;
}

export async function startCountingProxy(targetHost: string, targetPort: number): Promise<CountingProxy> {
  let fromTarget = 0;
  let toTarget = 0;
  let connections = 0;
  const sockets = new Set<Socket>();
  const track = (s: Socket): void => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  };
  const server = createServer((client) => {
    connections++;
    track(client);
    const upstream = createConnection({ host: targetHost, port: targetPort });
    track(upstream);
    client.on('data', (d: Buffer) => (toTarget += d.length));
    upstream.on('data', (d: Buffer) => (fromTarget += d.length));
    client.pipe(upstream);
    upstream.pipe(client);
    const end = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    get bytesFromTarget() {
      return fromTarget;
    },
    get bytesToTarget() {
      return toTarget;
    },
    get connections() {
      return connections;
    },
    reset() {
      fromTarget = 0;
      toTarget = 0;
    },
    async close() {
      const closed = new Promise<void>((ok) => server.close(() => ok()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}
