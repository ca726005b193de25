export * from './file.ts';
export * from './formats.ts';
export * from './verify.ts';
export * from './engine.ts';
