export * from './errors.ts';
export * from './digest.ts';
export * from './media-types.ts';
export * from './names.ts';
export * from './manifest.ts';
export * from './reference.ts';
export * from './chunks.ts';
export * from './io.ts';
