import { formatBytes, openNodeStore } from '../src/bundle/index.ts';
import { loadConfig, lifecycleSettings } from '../src/config/index.ts';
import { collectGarbage } from '../src/life/gc.ts';
import type { GcReport } from '../src/life/gc.ts';
import { fsckDataDir, FsckRefusedError, type FsckReport } from '../src/store/index.ts';
import { UsageError } from './errors.ts';
import { RegistryHttp, errorMessageOf, type HttpAnswer } from '../src/bundle/registry-http.ts';
import { checkUrl, registryAccess, type RegistryAccessFlags } from './bundle-options.ts';

/** Exit code of `shoal fsck` when problems remain. */
export const FSCK_PROBLEMS_EXIT_CODE = 1;

/** An admin call to a running node, with the credentials and CA the flags give (the node may need an admin user). */
export async function nodeRequest(node: string, path: string, method: 'GET' | 'POST' = 'GET', flags: RegistryAccessFlags = {}): Promise<unknown> {
  const url = checkUrl(node, '--node');
  const http = new RegistryHttp({ url, ...(await registryAccess(flags)), timeoutMs: 10 * 60_000 });
  let answer: HttpAnswer;
  try {
    answer = await http.send({ method, path });
  } catch (err) {
    const message = (err as Error).message;
    // The client's own words may already ask whether it runs (a refused connection): say it once.
    throw new Error(`cannot reach the node at ${node}: ${message}${/is it running/.test(message) ? '' : ' (is it running? pass --node URL)'}`);
  } finally {
    await http.close();
  }
  if (answer.status < 200 || answer.status >= 300) {
    const hint = answer.status === 401 || answer.status === 403 ? ' (this needs a user with the admin role: --username, --password)' : '';
    throw new Error(`the node at ${node} answered ${answer.status}: ${errorMessageOf(answer.body)}${hint}`);
  }
  return JSON.parse(answer.body.toString('utf8'));
}

function printGc(report: GcReport, json: boolean | undefined): void {
  if (json) {
    process.stdout.write(JSON.stringify(report, null, 2) + '\n');
    return;
  }
  for (const item of report.items) {
    const what = item.kind === 'tag' ? `${item.repository}:${item.tag}` : item.kind === 'upload' ? `${item.repository} upload ${item.id}` : `${item.repository}@${item.digest}`;
    const size = 'size' in item ? ` (${formatBytes(item.size)})` : '';
    process.stdout.write(`${report.dryRun ? 'would remove' : 'removed'} ${item.kind} ${what}${size}: ${item.reason}\n`);
  }
  process.stdout.write(
    `${report.dryRun ? 'dry run: would remove' : 'removed'} ${report.tags} tag(s), ${report.manifests} manifest(s), ${report.blobs} blob link(s), ${report.uploads} upload session(s); ${formatBytes(report.bytesFreed)} ${report.dryRun ? 'would be' : ''} freed\n`.replace('  ', ' '),
  );
}

/** `shoal gc [--dry-run] --node URL|--data DIR` */
export async function gcCommand(flags: { node?: string; data?: string; dryRun?: boolean; json?: boolean; config?: string } & RegistryAccessFlags): Promise<void> {
  if (flags.node && flags.data) throw new UsageError('give --node URL (a running node) or --data DIR (a stopped node), not both');
  if (!flags.node && !flags.data) throw new UsageError('say which store to collect: --node URL (a running node) or --data DIR (the data directory of a stopped node)');
  if (flags.node) {
    const report = (await nodeRequest(flags.node, `/shoal/gc?dryRun=${flags.dryRun ? 'true' : 'false'}`, 'POST', flags)) as GcReport;
    printGc(report, flags.json);
    return;
  }
  // A stopped node: its config file (if given) sets the grace periods and retention, as it would for the node.
  const config = await loadConfig({ file: flags.config ?? process.env.SHOAL_CONFIG, env: process.env });
  const settings = lifecycleSettings(config);
  const store = await openNodeStore(flags.data!, { create: false });
  let report: GcReport;
  try {
    report = await collectGarbage(store, { graceMs: settings.gcGraceMs, uploadTimeoutMs: settings.uploadTimeoutMs, retention: config.retention, dryRun: flags.dryRun });
  } finally {
    await store.close();
  }
  printGc(report, flags.json);
}

interface StatusBody {
  version: string;
  uptimeSeconds: number;
  dataDir: string;
  store: { blobs: number; bytes: number };
  quota: { storedBytes: number; maxStore: number; freeBytes?: number; totalBytes?: number; minFreeBytes?: number; pinnedBytes: number; pinsOverQuota: boolean; lastEviction?: { at: string; blobs: number; bytes: number; reason: string } };
  pins: number;
  scrub: { enabled: boolean; rate: number; passes: number; corruptFound: number; current?: { blobs: number; totalBlobs: number }; lastPass?: { finished: string; blobs: number; corrupt: number } };
  lastGc?: { at: string; dryRun: boolean; tags: number; manifests: number; blobs: number; uploads: number; bytesFreed: number; error?: string };
  peers: { enabled: boolean; connected: number };
}

/** `shoal status --node URL` */
export async function statusCommand(flags: { node: string; json?: boolean } & RegistryAccessFlags): Promise<void> {
  const s = (await nodeRequest(flags.node, '/shoal/status', 'GET', flags)) as StatusBody;
  if (flags.json) {
    process.stdout.write(JSON.stringify(s, null, 2) + '\n');
    return;
  }
  const q = s.quota;
  const lines = [
    `node      ${flags.node}  version ${s.version}, up ${Math.floor(s.uptimeSeconds / 3600)}h${String(Math.floor((s.uptimeSeconds % 3600) / 60)).padStart(2, '0')}m`,
    `store     ${formatBytes(s.store.bytes)} in ${s.store.blobs} blob(s)` + (q.maxStore > 0 ? ` of a ${formatBytes(q.maxStore)} quota (${Math.round((s.store.bytes / q.maxStore) * 100)}%)` : ', no quota'),
    `disk      ` + (q.freeBytes !== undefined && q.totalBytes ? `${formatBytes(q.freeBytes)} free of ${formatBytes(q.totalBytes)}` : 'unknown') + (q.minFreeBytes !== undefined ? `, keeps ${formatBytes(q.minFreeBytes)} free` : ''),
    `pins      ${s.pins} pin(s) holding ${formatBytes(q.pinnedBytes)}` + (q.pinsOverQuota ? '  WARNING: pinned content alone does not fit under the quota; raise it or unpin images' : ''),
    `eviction  ` + (q.lastEviction ? `last ${q.lastEviction.at}: ${q.lastEviction.blobs} blob(s), ${formatBytes(q.lastEviction.bytes)} (${q.lastEviction.reason})` : 'none since start'),
    `gc        ` + (s.lastGc ? `last ${s.lastGc.at}${s.lastGc.dryRun ? ' (dry run)' : ''}: ${s.lastGc.error ? `failed: ${s.lastGc.error}` : `${s.lastGc.manifests} manifest(s), ${s.lastGc.blobs} blob link(s), ${s.lastGc.uploads} upload(s), ${formatBytes(s.lastGc.bytesFreed)} freed`}` : 'not run since start'),
    `scrub     ` +
      (s.scrub.enabled
        ? `${formatBytes(s.scrub.rate)}/s, ${s.scrub.passes} pass(es) done` +
          (s.scrub.current ? `, at ${s.scrub.current.blobs}/${s.scrub.current.totalBlobs}` : '') +
          `, ${s.scrub.corruptFound} corrupt blob(s) found`
        : 'off'),
    `peers     ` + (s.peers.enabled ? `${s.peers.connected} connected` : 'off'),
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

/** `shoal fsck --data DIR [--repair]`: exit code 0 when the store is sound (or was repaired), 1 when problems remain. */
export async function fsckCommand(flags: { data: string; repair?: boolean; fast?: boolean; json?: boolean }): Promise<number> {
  let report: FsckReport;
  try {
    report = await fsckDataDir(flags.data, { repair: flags.repair, fast: flags.fast });
  } catch (err) {
    if (err instanceof FsckRefusedError) throw new UsageError(err.message);
    throw err;
  }
  if (flags.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  else {
    for (const p of report.problems) process.stdout.write(`${p.kind} ${p.subject}: ${p.detail}${p.action ? ` -> ${p.action}` : ''}\n`);
    const summary = `${report.blobs} blob(s), ${formatBytes(report.bytesHashed)} hashed: ${report.problems.length} problem(s)`;
    if (report.problems.length === 0) process.stdout.write(`${summary}; the store is sound\n`);
    else if (report.repaired) process.stdout.write(`${summary}, all repaired\n`);
    else process.stdout.write(`${summary}; run again with --repair to fix them (the node must stay stopped)\n`);
  }
  return report.remaining > 0 ? FSCK_PROBLEMS_EXIT_CODE : 0;
}
