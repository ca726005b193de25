export * from './types.ts';
export { KvContentStore, openDiskStore, openMemoryStore, SMALL_CONTENT_MAX } from './content-store.ts';
export { SCHEMA_VERSION } from './keys.ts';
export { fsckDataDir, FsckRefusedError, type FsckReport, type FsckProblem } from './fsck.ts';
export { RECYCLE, recyclerOf, type Recycling } from './bytes.ts';
