// The `shoal` CLI run from its TypeScript sources (node --import tsx bench/source-entry.ts ...): what bin/shoal.js
// did before the program was compiled, kept so that bench/startup.ts can compare the two.
import { main } from '../cli/main.ts';

process.exitCode = await main(process.argv);
