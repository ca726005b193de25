/**
 * Shared pieces of the crash-safety tests: images made of random bytes, the path of a blob file in a data
 * directory, and `shoal fsck --data DIR --json` run as a user runs it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { FsckProblem, FsckReport } from '../../src/store/index.ts';
import { runShoal } from './spawn-node.ts';

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip';

export const sha256 = (b: Uint8Array | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/**
 * What `kill -9` may leave behind and the node's start-up recovery repairs: files that no record names (a write
 * cut before its records, or a removal cut after them), temporary ingest files, and upload session files whose
 * record was not written yet or already moved into place. Records that name nothing are never among them.
 */
export const CRASH_RESIDUE: ReadonlySet<string> = new Set(['file-without-record', 'ingest-leftover', 'session-file-without-record', 'session-without-file']);

/** An OCI image of random bytes, not pushed: its manifest, and every blob by digest. */
export interface TestImage {
  manifest: Buffer;
  digest: string;
  /** Config and layers. */
  blobs: Map<string, Buffer>;
}

export function randomImage(layerSizes: number[]): TestImage {
  const layers = layerSizes.map((n) => randomBytes(n));
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map((l) => sha256(l)) }, nonce: randomBytes(8).toString('hex') }));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: OCI_CONFIG, digest: sha256(config), size: config.length },
      layers: layers.map((l) => ({ mediaType: OCI_LAYER, digest: sha256(l), size: l.length })),
    }),
  );
  return { manifest, digest: sha256(manifest), blobs: new Map([config, ...layers].map((b) => [sha256(b), b])) };
}

/** `<data>/blobs/sha256/<2 hex>/<hex>`. */
export function blobFile(dataDir: string, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return join(dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex);
}

export async function fileExists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined)) !== undefined;
}

/** `shoal fsck --data DIR --json` on a stopped node: its exit code and report. */
export async function fsck(dataDir: string): Promise<{ code: number | null; report: FsckReport; stderr: string }> {
  const run = await runShoal(['fsck', '--data', dataDir, '--json']);
  let report: FsckReport;
  try {
    report = JSON.parse(run.stdout) as FsckReport;
  } catch {
    throw new Error(`shoal fsck printed no report (exit ${run.code}): ${run.stdout.slice(0, 2000)} ${run.stderr.slice(0, 2000)}`);
  }
  return { code: run.code, report, stderr: run.stderr };
}

/** Problems as `kind subject` lines, sorted: what an assertion message shows. */
export function describeProblems(problems: FsckProblem[]): string[] {
  return problems.map((p) => `${p.kind} ${p.subject}`).sort();
}
