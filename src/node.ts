import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { resolve } from 'node:path';
import type { Logger } from 'pino';
import { Registry } from 'prom-client';
import { parseListen, type ShoalConfig } from './config/index.ts';
import { createLogger } from './logger.ts';
import { createRegistryApp } from './registry/app.ts';
import { RegistryMetrics } from './registry/metrics.ts';
import { openDiskStore, type ContentStore } from './store/index.ts';

/** A running node: the composition root owns every service and stops them in order. */
export interface ShoalNode {
  readonly port: number;
  readonly url: string;
  readonly store: ContentStore;
  readonly metrics: Registry;
  readonly logger: Logger;
  stop(): Promise<void>;
}

export interface StartOptions {
  logger?: Logger;
  signal?: AbortSignal;
}

export async function startNode(config: ShoalConfig, opts: StartOptions = {}): Promise<ShoalNode> {
  const logger = opts.logger ?? createLogger(config.logLevel);
  const dataDir = resolve(config.dataDir);
  const store = await openDiskStore(dataDir, { signal: opts.signal });
  const metricsRegistry = new Registry();
  const metrics = new RegistryMetrics(metricsRegistry, () => store.stats());
  let accepting = true;
  const app = createRegistryApp({
    deps: {
      store,
      logger,
      metrics,
      maxManifestBytes: config.maxManifestBytes,
      deleteEnabled: config.deleteEnabled,
      ready: () => accepting,
    },
    metricsRegistry,
  });
  const handle = app.callback();
  // Requests whose handlers are still running; the store closes only after the last one settles.
  let active = 0;
  let onIdle: (() => void) | undefined;
  const server: Server = createServer({ requestTimeout: 0, keepAliveTimeout: 65_000 }, (req, res) => {
    active++;
    void handle(req, res).finally(() => {
      active--;
      if (active === 0) onIdle?.();
    });
  });
  const sockets = new Set<Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  const { host, port } = parseListen(config.listen);
  try {
    await new Promise<void>((ok, fail) => {
      server.once('error', fail);
      server.listen(port, host, () => {
        server.off('error', fail);
        ok();
      });
    });
  } catch (err) {
    await store.close();
    throw err;
  }
  const bound = (server.address() as AddressInfo).port;
  const shownHost = host.includes(':') ? `[${host}]` : host === '0.0.0.0' ? '127.0.0.1' : host;
  const url = `http://${shownHost}:${bound}`;
  logger.info({ url, listen: `${host}:${bound}`, dataDir }, 'listening');

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      accepting = false;
      logger.info({ graceMs: config.shutdownGraceMs }, 'stopping: no new connections; waiting for requests in flight');
      const closed = new Promise<void>((ok) => server.close(() => ok()));
      server.closeIdleConnections();
      const grace = new Promise<void>((ok) => setTimeout(ok, config.shutdownGraceMs).unref());
      await Promise.race([closed, grace]);
      // Requests still running (slow uploads) are cut: their sessions keep what was durable, or roll back.
      for (const s of sockets) s.destroy();
      await closed;
      // Handlers see their sockets close and finish their store work (commit, roll back or keep the session).
      if (active > 0) await new Promise<void>((ok) => (onIdle = ok));
      await store.close();
      logger.info('stopped');
      logger.flush?.();
    })();
    return stopping;
  };
  return { port: bound, url, store, metrics: metricsRegistry, logger, stop };
}
