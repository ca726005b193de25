import { VerifyTarget, describeImport, importBundle, openBundleInput } from '../src/bundle/index.ts';
import { commandProgress, interruptSignal, printResult, reportFailure } from './bundle-options.ts';
import { trustedKeys } from './import.ts';

export interface VerifyFlags {
  trust?: string[];
  repository?: string;
  json?: boolean;
}

/** `shoal verify FILE`: reads the whole bundle and checks it, keeping nothing. */
export async function verifyCommand(file: string, flags: VerifyFlags): Promise<void> {
  const trust = await trustedKeys(flags.trust);
  const input = await openBundleInput(file);
  const interrupt = interruptSignal();
  const progress = commandProgress(flags.json);
  try {
    const result = await importBundle({ input, target: new VerifyTarget(), trust, repository: flags.repository, progress, signal: interrupt.signal });
    printResult(flags.json, [`${input.name}: OK`, ...describeImport(result, true)], { operation: 'verify', ok: true, ...result });
  } catch (err) {
    reportFailure(flags.json, err);
    throw err;
  } finally {
    interrupt.release();
  }
}
