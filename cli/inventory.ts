import { RegistryInventorySource, StoreInventorySource, formatBytes, openNodeStore, saveInventory, takeInventory } from '../src/bundle/index.ts';
import { UsageError } from './errors.ts';
import { checkUrl, interruptSignal, registryAccess, type RegistryAccessFlags } from './bundle-options.ts';

export interface InventoryFlags extends RegistryAccessFlags {
  node?: string;
  data?: string;
  output: string;
  json?: boolean;
}

/** `shoal inventory -o FILE`: what this site has, for `shoal export --have FILE` on the connected side. */
export async function inventoryCommand(flags: InventoryFlags): Promise<void> {
  if (flags.node && flags.data) throw new UsageError('give --node URL (a running node) or --data DIR (a stopped node), not both');
  if (!flags.node && !flags.data) throw new UsageError('say what to take stock of: --node URL (a running node) or --data DIR (the data directory of a stopped node)');
  const access = await registryAccess(flags);
  const interrupt = interruptSignal();
  const source = flags.data
    ? new StoreInventorySource(await openNodeStore(flags.data, { create: false, signal: interrupt.signal }), flags.data)
    : new RegistryInventorySource({ url: checkUrl(flags.node!, '--node'), ...access });
  try {
    const inventory = await takeInventory(source, { signal: interrupt.signal });
    const size = await saveInventory(inventory, flags.output);
    const bytes = inventory.blobs.reduce((n, b) => n + b.size, 0);
    if (flags.json) process.stdout.write(JSON.stringify({ event: 'done', operation: 'inventory', output: flags.output, images: Object.keys(inventory.images).length, blobs: inventory.blobs.length, bytes }) + '\n');
    else process.stdout.write(`${Object.keys(inventory.images).length} image(s), ${inventory.blobs.length} blob(s) (${formatBytes(bytes)}) on ${source.description}\nwrote ${flags.output} (${formatBytes(size)}); carry it to the connected side and run: shoal export ... --have ${flags.output}\n`);
  } finally {
    interrupt.release();
    await source.close();
  }
}
