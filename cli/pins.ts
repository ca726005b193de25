/** `shoal pin`, `shoal unpin`, `shoal pins`: parse flags and delegate to src/life/pins.ts. */
import { NodePinClient, openNodeStore } from '../src/bundle/index.ts';
import { StorePins, MAX_PIN_REASON_LENGTH, describePinOutcomes, formatPinTable, listPins, parsePinReference, pinImages, unpinImages, type PinBackend, type PinOutcome, type PinReference } from '../src/life/pins.ts';
import { UsageError } from './errors.ts';
import { checkUrl, interruptSignal, registryAccess, type RegistryAccessFlags } from './bundle-options.ts';

export interface PinFlags extends RegistryAccessFlags {
  node?: string;
  data?: string;
  reason?: string;
  json?: boolean;
}

function checkTarget(flags: PinFlags): void {
  if (flags.node && flags.data) throw new UsageError('give --node URL (a running node) or --data DIR (a stopped node), not both');
  if (!flags.node && !flags.data) throw new UsageError('say which node: --node URL (a running node, e.g. http://127.0.0.1:5000) or --data DIR (the data directory of a stopped node)');
}

function references(texts: string[]): PinReference[] {
  if (texts.length === 0) throw new UsageError('name at least one image, e.g. registry.local:5000/team/app:1.4 or nginx@sha256:...');
  return texts.map((t) => {
    try {
      return parsePinReference(t);
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  });
}

async function withBackend<T>(flags: PinFlags, run: (backend: PinBackend, signal: AbortSignal) => Promise<T>): Promise<T> {
  const access = await registryAccess(flags);
  const interrupt = interruptSignal();
  try {
    const backend: PinBackend = flags.data
      ? new StorePins(await openNodeStore(flags.data, { create: false, signal: interrupt.signal }), flags.data)
      : new NodePinClient({ url: checkUrl(flags.node!, '--node'), ...access });
    try {
      return await run(backend, interrupt.signal);
    } finally {
      await backend.close();
    }
  } finally {
    interrupt.release();
  }
}

function report(verb: 'pinned' | 'unpinned', outcomes: PinOutcome[], json: boolean | undefined): void {
  if (json) process.stdout.write(JSON.stringify({ [verb]: outcomes.filter((o) => o.ok).map((o) => o.pin), failed: outcomes.filter((o) => !o.ok) }) + '\n');
  const lines = describePinOutcomes(verb, outcomes);
  if (!json && lines.out.length) process.stdout.write(lines.out.join('\n') + '\n');
  for (const e of lines.err) process.stderr.write(`shoal: ${e}\n`);
  const failed = outcomes.filter((o) => !o.ok).length;
  if (failed > 0) {
    const err = new Error(`${failed} of ${outcomes.length} image(s) not ${verb}`);
    throw err;
  }
}

/** `shoal pin REF...` */
export async function pinCommand(texts: string[], flags: PinFlags): Promise<void> {
  checkTarget(flags);
  const refs = references(texts);
  if (flags.reason !== undefined && (flags.reason.trim() === '' || flags.reason.length > MAX_PIN_REASON_LENGTH)) {
    throw new UsageError(`--reason takes 1 to ${MAX_PIN_REASON_LENGTH} characters`);
  }
  const outcomes = await withBackend(flags, (backend, signal) => pinImages(backend, refs, { reason: flags.reason, signal }));
  report('pinned', outcomes, flags.json);
}

/** `shoal unpin REF...` */
export async function unpinCommand(texts: string[], flags: PinFlags): Promise<void> {
  checkTarget(flags);
  const refs = references(texts);
  const outcomes = await withBackend(flags, (backend, signal) => unpinImages(backend, refs, { signal }));
  report('unpinned', outcomes, flags.json);
}

/** `shoal pins` */
export async function pinsCommand(flags: PinFlags): Promise<void> {
  checkTarget(flags);
  const pins = await withBackend(flags, (backend, signal) => listPins(backend, { signal }));
  if (flags.json) process.stdout.write(JSON.stringify({ pins }, null, 2) + '\n');
  else process.stdout.write(formatPinTable(pins).join('\n') + '\n');
}
