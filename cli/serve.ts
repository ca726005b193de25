import { loadConfig, type LogLevel } from '../src/config/index.ts';
import { startNode } from '../src/node.ts';

export interface ServeFlags {
  data?: string;
  listen?: string;
  config?: string;
  logLevel?: string;
  seed?: string[];
}

/** `shoal serve`: starts a node and runs until SIGTERM or SIGINT. */
export async function serveCommand(flags: ServeFlags): Promise<void> {
  const config = await loadConfig({
    file: flags.config ?? process.env.SHOAL_CONFIG,
    env: process.env,
    flags: { dataDir: flags.data, listen: flags.listen, logLevel: flags.logLevel as LogLevel | undefined, seeds: flags.seed },
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
