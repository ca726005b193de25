import { loadConfig, type LogLevel } from '../src/config/index.ts';
import { startNode } from '../src/node.ts';

export interface ServeFlags {
  data?: string;
  listen?: string;
  config?: string;
  logLevel?: string;
  seed?: string[];
  p2pListen?: string;
  clusterKey?: string;
  peer?: string[];
  peersDns?: string;
  mdns?: boolean;
  zone?: string;
  maxPeerUpload?: string;
  maxSeedRate?: string;
}

/** `shoal serve`: starts a node and runs until SIGTERM or SIGINT. */
export async function serveCommand(flags: ServeFlags): Promise<void> {
  const config = await loadConfig({
    file: flags.config ?? process.env.SHOAL_CONFIG,
    env: process.env,
    flags: {
      dataDir: flags.data,
      listen: flags.listen,
      logLevel: flags.logLevel as LogLevel | undefined,
      seeds: flags.seed,
      p2pListen: flags.p2pListen,
      clusterKeyFile: flags.clusterKey,
      peers: flags.peer,
      peersDns: flags.peersDns,
      mdns: flags.mdns,
      zone: flags.zone,
      maxPeerUpload: flags.maxPeerUpload,
      maxSeedRate: flags.maxSeedRate,
    },
  });
  const node = await startNode(config);
  await new Promise<void>((resolve) => {
    const onSignal = (signal: string): void => {
      node.logger.info({ signal }, 'signal received');
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      void node.stop().then(resolve, resolve);
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}
