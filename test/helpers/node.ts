import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startNode, type ShoalNode } from '../../src/node.ts';
import { defaultConfig, type ShoalConfig } from '../../src/config/index.ts';

export interface TestNode {
  /** e.g. http://127.0.0.1:41234 */
  url: string;
  /** e.g. 127.0.0.1:41234, what skopeo/podman take as a registry host */
  hostPort: string;
  dataDir: string;
  node: ShoalNode;
  /** Stops the node; removes the data dir when this helper created it. */
  stop(): Promise<void>;
}

/** Starts a real node (Koa on 127.0.0.1:0, LevelDB in a temp dir) in this process. */
export async function startTestNode(opts: { dataDir?: string; config?: Partial<ShoalConfig> } = {}): Promise<TestNode> {
  const own = opts.dataDir === undefined;
  const dataDir = opts.dataDir ?? (await mkdtemp(join(tmpdir(), 'shoal-test-')));
  const config: ShoalConfig = { ...defaultConfig(), ...opts.config, dataDir, listen: '127.0.0.1:0', logLevel: 'silent' };
  const node = await startNode(config);
  const hostPort = `127.0.0.1:${node.port}`;
  return {
    url: `http://${hostPort}`,
    hostPort,
    dataDir,
    node,
    async stop() {
      await node.stop();
      if (own) await rm(dataDir, { recursive: true, force: true });
    },
  };
}
