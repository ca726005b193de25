import { loadConfig, type LogLevel } from '../src/config/index.ts';
import { startNode } from '../src/node.ts';

export interface ServeFlags {
  data?: string;
  listen?: string;
  metricsListen?: string;
  config?: string;
  logLevel?: string;
  seed?: string[];
  p2pListen?: string;
  clusterKey?: string;
  peer?: string[];
  peersDns?: string;
  mdns?: boolean;
  p2pClearData?: boolean;
  p2pDataPort?: string;
  zone?: string;
  maxPeerUpload?: string;
  maxSeedRate?: string;
  maxStore?: string;
  minFree?: string;
  gcInterval?: string;
  scrubRate?: string;
  peerTags?: string;
  htpasswd?: string;
  tokens?: string;
  grant?: string[];
  anonymous?: string;
  immutableTags?: string[];
  tlsCert?: string;
  tlsKey?: string;
  auditLog?: string;
  webhook?: string[];
  policy?: string;
}

/** `shoal serve`: starts a node and runs until SIGTERM or SIGINT. */
export async function serveCommand(flags: ServeFlags): Promise<void> {
  const config = await loadConfig({
    file: flags.config ?? process.env.SHOAL_CONFIG,
    env: process.env,
    flags: {
      dataDir: flags.data,
      listen: flags.listen,
      metricsListen: flags.metricsListen,
      logLevel: flags.logLevel as LogLevel | undefined,
      seeds: flags.seed,
      p2pListen: flags.p2pListen,
      clusterKeyFile: flags.clusterKey,
      peers: flags.peer,
      peersDns: flags.peersDns,
      mdns: flags.mdns,
      p2pClearData: flags.p2pClearData,
      p2pDataPort: flags.p2pDataPort,
      zone: flags.zone,
      maxPeerUpload: flags.maxPeerUpload,
      maxSeedRate: flags.maxSeedRate,
      maxStore: flags.maxStore,
      minFree: flags.minFree,
      gcInterval: flags.gcInterval,
      scrubRate: flags.scrubRate,
      peerTags: flags.peerTags,
      htpasswdFile: flags.htpasswd,
      tokensFile: flags.tokens,
      grants: flags.grant,
      anonymous: flags.anonymous,
      immutableTags: flags.immutableTags,
      tlsCert: flags.tlsCert,
      tlsKey: flags.tlsKey,
      auditLog: flags.auditLog,
      webhooks: flags.webhook,
      policyFile: flags.policy,
    },
  });
  // Signals are handled from the start: one that arrives while the node starts stops it as soon as it is up.
  const startup = new AbortController();
  let received: string | undefined;
  let onSignalled: (() => void) | undefined;
  const onSignal = (signal: string): void => {
    received ??= signal;
    startup.abort(new Error(`${signal} during startup`));
    onSignalled?.();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    const node = await startNode(config, { signal: startup.signal });
    if (!received) await new Promise<void>((resolve) => (onSignalled = resolve));
    node.logger.info({ signal: received }, 'signal received');
    await node.stop();
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
}
