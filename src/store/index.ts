export * from './types.ts';
export { KvContentStore, openDiskStore, openMemoryStore } from './content-store.ts';
export { SCHEMA_VERSION } from './keys.ts';
