/**
 * Benchmarks, side by side in one run: Shoal against the registry it replaces (CNCF distribution, the Debian
 * `docker-registry`), the peer path against a plain TCP socket and an HTTP GET, fan-out against the physical
 * bound. Every server is its own process, as in production. Each scenario ends with one JSON line of its figures
 * and writes bench/results/<scenario>.json and <scenario>.svg. Nothing here asserts.
 *
 *   npm run bench                          # every scenario
 *   npm run bench -- single p2p            # some of them: single | p2p | fanout | memory | startup
 *   npm run bench -- --quick               # short CI mode (small sizes, one round; fanout only as root)
 *   BENCH_MIB=64 BENCH_ROUNDS=1 npm run bench -- single
 */
import '../src/polyfill.ts';
import { quick } from './lib.ts';

const SCENARIOS = ['startup', 'single', 'p2p', 'memory', 'fanout'] as const;
type Scenario = (typeof SCENARIOS)[number];

async function runScenario(s: Scenario): Promise<void> {
  switch (s) {
    case 'startup':
      return (await import('./startup.ts')).startupBench();
    case 'single':
      return (await import('./single.ts')).singleBench();
    case 'p2p':
      return (await import('./p2p.ts')).p2pBench();
    case 'memory':
      return (await import('./memory.ts')).memoryBench();
    case 'fanout':
      return (await import('./fanout.ts')).fanoutBench();
  }
}

const args = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const unknown = args.filter((a) => !(SCENARIOS as readonly string[]).includes(a));
if (unknown.length) {
  process.stderr.write(`unknown scenario ${unknown.join(', ')}: choose from ${SCENARIOS.join(', ')}\n`);
  process.exit(2);
}
let chosen = (args.length ? args : [...SCENARIOS]) as Scenario[];
// Fan-out needs root (network namespaces): the all-scenario run leaves it out elsewhere and says so.
if (!args.length && process.getuid?.() !== 0) {
  process.stderr.write('fanout skipped: it needs root (network namespaces)\n');
  chosen = chosen.filter((s) => s !== 'fanout');
}
if (quick()) process.env.BENCH_QUICK = '1';
for (const s of chosen) {
  process.stdout.write(`\n== ${s}${quick() ? ' (quick)' : ''}\n`);
  await runScenario(s);
}
