import { userInfo } from 'node:os';
import { basename, join } from 'node:path';
import { appendAuditEntries } from '../src/access/index.ts';
import { NodeTarget, StoreTarget, describeImport, importBundle, loadTrustedKey, openBundleInput, openNodeStore, type BundleTarget } from '../src/bundle/index.ts';
import { UsageError } from './errors.ts';
import { readPolicyFile } from '../src/policy/index.ts';
import { checkUrl, commandProgress, interruptSignal, printResult, registryAccess, reportFailure, type RegistryAccessFlags } from './bundle-options.ts';

export interface ImportFlags extends RegistryAccessFlags {
  node?: string;
  data?: string;
  trust?: string[];
  repository?: string;
  /** False with --no-pin. */
  pin?: boolean;
  json?: boolean;
  /** A signature policy file every image must satisfy. */
  policy?: string;
}

export async function trustedKeys(files: string[] | undefined) {
  try {
    return await Promise.all((files ?? []).map((f) => loadTrustedKey(f)));
  } catch (err) {
    throw new UsageError(`--trust: ${(err as Error).message}`);
  }
}

/** `shoal import FILE`: parses flags and delegates to src/bundle. */
export async function importCommand(file: string, flags: ImportFlags): Promise<void> {
  if (flags.node && flags.data) throw new UsageError('give --node URL (a running node) or --data DIR (a stopped node), not both');
  if (!flags.node && !flags.data) {
    throw new UsageError('say where to import: --node URL (a running node, e.g. http://127.0.0.1:5000) or --data DIR (the data directory of a stopped node)');
  }
  const trust = await trustedKeys(flags.trust);
  const policy = flags.policy ? await readPolicyFile(flags.policy).catch((err: Error) => Promise.reject(new UsageError(`--policy: ${err.message}`))) : undefined;
  const access = await registryAccess(flags);
  const input = await openBundleInput(file);
  const interrupt = interruptSignal();
  let target: BundleTarget;
  if (flags.data) target = new StoreTarget(await openNodeStore(flags.data, { create: true, signal: interrupt.signal }), flags.data);
  else target = new NodeTarget({ url: checkUrl(flags.node!, '--node'), ...access });
  const progress = commandProgress(flags.json);
  try {
    const result = await importBundle({
      input,
      target,
      trust,
      repository: flags.repository,
      progress,
      pin: flags.pin !== false,
      policy,
      pinReason: `bundle ${basename(input.name)} imported ${new Date().toISOString()}`,
      signal: interrupt.signal,
    });
    if (flags.data) {
      // A running node records imports through its API itself; a stopped node's store gets them here.
      const user = localUser();
      const entries = result.images
        .filter((i) => i.action === 'imported')
        .map((i) => ({ user, from: 'local', action: 'import' as const, repository: i.repository, reference: i.tag, digest: i.digest, result: 'ok' as const, detail: `bundle ${basename(input.name)}` }));
      if (entries.length > 0) await appendAuditEntries(join(flags.data, 'audit.log'), entries);
    }
    printResult(flags.json, describeImport(result, false), { operation: 'import', ...result });
  } catch (err) {
    const failure = interrupt.signal.aborted ? new Error('interrupted; what was imported so far is kept: run the same command again to finish (nothing is written twice)') : err;
    reportFailure(flags.json, failure);
    throw failure;
  } finally {
    interrupt.release();
    await target.close();
  }
}

function localUser(): string {
  try {
    return userInfo().username;
  } catch {
    return `uid ${process.getuid?.() ?? '?'}`;
  }
}
