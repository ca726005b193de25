export * from './types.ts';
export { KvContentStore, openDiskStore, openMemoryStore } from './content-store.ts';
export { SCHEMA_VERSION } from './keys.ts';
export { fsckDataDir, FsckRefusedError, type FsckReport, type FsckProblem } from './fsck.ts';
