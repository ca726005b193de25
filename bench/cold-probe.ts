// Ad-hoc: one cold pull through a node in front of distribution, the node profiled (BENCH_PROFILE).
import '../src/polyfill.ts';
import { randomBytes } from 'node:crypto';
import { startDockerRegistry } from '../test/helpers/seed-registry.ts';
import { ShoalProcesses } from '../test/helpers/spawn-node.ts';
import { load, MIB, profileEnv, pull, push, sha256, timed } from './lib.ts';
const blob = randomBytes(Number(process.env.BENCH_MIB ?? 256) * MIB);
const digest = sha256(blob);
const dist = await startDockerRegistry();
const procs = new ShoalProcesses();
try {
  await push(dist.url, 'bench/cold', blob, digest);
  const d = await timed(() => pull(dist.url, 'bench/cold', digest, true));
  const m = await procs.serve({ dataDir: await procs.tempDir(), logLevel: 'info', args: ['--seed', dist.url], env: profileEnv() });
  const s = await timed(() => pull(m.url, 'bench/cold', digest, true));
  await m.terminate();
  console.log(JSON.stringify({ direct: d, cold: s, ratio: s / d, load: load() }));
} finally {
  await procs.cleanup();
  await dist.stop();
}
