import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** What the operations address serves: the registry's own handlers for these paths, nothing else. */
export const OPS_PATHS: readonly string[] = ['/metrics', '/healthz', '/readyz'];

export interface OpsServer {
  /** e.g. http://10.0.0.5:5002 */
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

/**
 * A second listening address for `/metrics`, `/healthz` and `/readyz` only (`metricsListen`): Prometheus and
 * probes reach it on the node's address while the registry itself listens on loopback. Requests are handled
 * by the registry app (`handle`), so logs and metrics are the same; any other path is a 404.
 */
export async function startOpsServer(
  listen: { host: string; port: number },
  handle: (req: IncomingMessage, res: ServerResponse) => Promise<void>,
): Promise<OpsServer> {
  const server = createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
    const path = (req.url ?? '').split('?')[0]!;
    if (!OPS_PATHS.includes(path) || (req.method !== 'GET' && req.method !== 'HEAD')) {
      const body = JSON.stringify({ errors: [{ code: 'NAME_UNKNOWN', message: `this address serves only GET ${OPS_PATHS.join(', ')}; the registry listens elsewhere` }] });
      res.writeHead(404, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    void handle(req, res);
  });
  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen(listen.port, listen.host, () => {
      server.off('error', fail);
      ok();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const host = listen.host.includes(':') ? `[${listen.host}]` : listen.host === '0.0.0.0' ? '127.0.0.1' : listen.host;
  return {
    url: `http://${host}:${port}`,
    port,
    close: () =>
      new Promise<void>((ok) => {
        server.close(() => ok());
        server.closeAllConnections();
      }),
  };
}
