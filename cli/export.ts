import { readFile } from 'node:fs/promises';
import {
  RegistryImageSource,
  StoreImageSource,
  checkImageReference,
  defaultSourceUrl,
  describeExport,
  exportBundle,
  loadSigningKey,
  openNodeStore,
  parseInventory,
  parsePlatforms,
  type ImageSource,
} from '../src/bundle/index.ts';
import { parseSize } from '../src/limits/size.ts';
import { UsageError } from './errors.ts';
import { checkUrl, commandProgress, interruptSignal, printResult, registryAccess, reportFailure, type RegistryAccessFlags } from './bundle-options.ts';

export interface ExportFlags extends RegistryAccessFlags {
  output: string;
  imagesFile?: string;
  from?: string;
  data?: string;
  platform?: string;
  have?: string;
  sign?: string;
  split?: string;
  referrers?: boolean;
  json?: boolean;
}

/** `shoal export REF... -o FILE`: parses flags and delegates to src/bundle. */
export async function exportCommand(refs: string[], flags: ExportFlags): Promise<void> {
  const references = [...refs];
  if (flags.imagesFile) {
    let text: string;
    try {
      text = await readFile(flags.imagesFile, 'utf8');
    } catch (err) {
      throw new UsageError(`cannot read --images-file ${flags.imagesFile}: ${(err as Error).message}`);
    }
    for (const line of text.split('\n')) {
      const ref = line.replace(/#.*$/, '').trim();
      if (ref) references.push(ref);
    }
  }
  if (references.length === 0) throw new UsageError('name the images to export (shoal export REF... -o FILE, or --images-file FILE)');
  for (const r of references) {
    try {
      checkImageReference(r);
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  }
  if (flags.from && flags.data) throw new UsageError('give --from URL (a registry) or --data DIR (a stopped node), not both');
  const from = flags.from ?? (flags.data ? undefined : defaultSourceUrl(references));
  if (!from && !flags.data) {
    throw new UsageError('give --from URL (the registry to read the images from) or --data DIR (the data directory of a stopped node)');
  }
  let platforms;
  let splitSize;
  try {
    platforms = flags.platform ? parsePlatforms(flags.platform) : undefined;
    splitSize = flags.split ? parseSize(flags.split) : undefined;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (splitSize !== undefined && splitSize < 1_000_000) throw new UsageError('--split must be at least 1M (1000000 bytes)');
  let have;
  if (flags.have) {
    try {
      have = parseInventory(await readFile(flags.have), flags.have);
    } catch (err) {
      throw new UsageError(`--have: ${(err as Error).message}`);
    }
  }
  let signingKey;
  try {
    signingKey = flags.sign ? await loadSigningKey(flags.sign) : undefined;
  } catch (err) {
    throw new UsageError(`--sign: ${(err as Error).message}`);
  }
  const access = await registryAccess(flags);
  const interrupt = interruptSignal();
  let source: ImageSource;
  if (flags.data) source = new StoreImageSource(await openNodeStore(flags.data, { create: false, signal: interrupt.signal }), flags.data);
  else source = new RegistryImageSource({ url: checkUrl(from!, '--from'), ...access });
  const progress = commandProgress(flags.json);
  try {
    const result = await exportBundle({
      references,
      source,
      output: flags.output,
      platforms,
      have,
      signingKey,
      splitSize,
      referrers: flags.referrers,
      progress,
      signal: interrupt.signal,
    });
    printResult(flags.json, describeExport(result), { operation: 'export', ...result });
  } catch (err) {
    const failure = interrupt.signal.aborted ? new Error(`interrupted; no bundle was written (${flags.output} is as it was)`) : err;
    reportFailure(flags.json, failure);
    throw failure;
  } finally {
    interrupt.release();
    await source.close();
  }
}
