/**
 * Sneakernet bundles: `shoal export`, `import`, `verify` and `inventory`. See format.ts for the file format.
 */
import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { UnavailableError, parseReference } from '../oci/index.ts';
import { openDiskStore, type ContentStore } from '../store/index.ts';

export { BundleRefusedError, BUNDLE_REFUSED_EXIT_CODE, type BundleRefusal } from './errors.ts';
export { exportBundle, describeExport, type ExportOptions, type ExportResult } from './export.ts';
export { importBundle, describeImport, type ImportOptions, type ImportResult, type ImportedImage } from './import.ts';
export { openBundleInput, type BundleInput } from './files.ts';
export { takeInventory, saveInventory, StoreInventorySource, RegistryInventorySource } from './inventory.ts';
export { RegistryImageSource, StoreImageSource, type ImageSource } from './sources.ts';
export { StoreTarget, NodeTarget, VerifyTarget, type BundleTarget } from './targets.ts';
export { NodePinClient, type NodePinSelector } from './node-pins.ts';
export { loadSigningKey, loadTrustedKey, type SigningKey, type TrustedKey } from './signing.ts';
export { progressFor, type ProgressReporter } from './progress.ts';
export { parseInventory, parsePlatforms, formatBytes, STAGING_REPOSITORY, type Inventory, type PlatformSelector } from './format.ts';

/** Checks an image reference as `shoal export` takes it; throws a plain Error that says what is wrong. */
export function checkImageReference(text: string): void {
  try {
    parseReference(text);
  } catch (err) {
    throw new Error(`${JSON.stringify(text)} is not an image reference: ${(err as Error).message}`);
  }
}

/**
 * Where to read images from when `--from` is not given: their own registry over HTTPS, when they all name
 * the same one (Docker Hub's API lives elsewhere than its name, so it always needs --from).
 */
export function defaultSourceUrl(references: string[]): string | undefined {
  const hosts = new Set(references.map((r) => parseReference(r).registry));
  if (hosts.size !== 1 || hosts.has('docker.io')) return undefined;
  return `https://${[...hosts][0]}`;
}

/**
 * Opens the store of a stopped node. `create`: a directory that does not exist yet becomes a new, empty
 * store (import into a node that has not run yet). A node running on the directory holds its lock: then the
 * message says to stop it or to go through its API.
 */
export async function openNodeStore(dataDir: string, opts: { create: boolean; signal?: AbortSignal }): Promise<ContentStore> {
  const dir = resolve(dataDir);
  if (!opts.create && !(await stat(join(dir, 'db')).catch(() => undefined))) {
    throw new UnavailableError(`${dir} is not a Shoal data directory (it has no db/); name the --data directory of a node`);
  }
  try {
    return await openDiskStore(dir, { signal: opts.signal });
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause;
    if (cause?.code === 'LEVEL_LOCKED') {
      throw new UnavailableError(`the store in ${dir} is in use: a node is running on it; stop the node, or use --node URL to go through its API`);
    }
    throw err;
  }
}
