// The compiled `shoal` (dist/), as bin/shoal.js runs it once the build is fresh, without its look at the
// sources: bench/startup.ts measures the build it made, even if a source changes while it runs.
const { main } = await import('../dist/shoal.js');
process.exitCode = await main(process.argv);
