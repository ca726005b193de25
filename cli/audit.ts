import { join } from 'node:path';
import { formatAuditLine, parseSince, readAudit, type AuditEntry, type AuditFilter } from '../src/access/index.ts';
import { ConfigError, loadConfig, parseDuration } from '../src/config/index.ts';
import type { RegistryAccessFlags } from './bundle-options.ts';
import { UsageError } from './errors.ts';

export interface AuditFlags extends RegistryAccessFlags {
  node?: string;
  limit?: string;
  data?: string;
  file?: string;
  config?: string;
  since?: string;
  user?: string;
  repo?: string;
  action?: string;
  json?: boolean;
}

/** `shoal audit`: prints the entries of a node's audit log (and its rotated files) that match the filters. */
export async function auditCommand(flags: AuditFlags): Promise<void> {
  if (flags.node && (flags.data || flags.file || flags.config)) throw new UsageError('give --node URL (a running node) or --data/--file/--config (its files), not both');
  const filter: AuditFilter = { user: flags.user, repo: flags.repo, action: flags.action };
  if (flags.since !== undefined) {
    try {
      filter.since = parseSince(flags.since, Date.now(), (v) => parseDuration(v, '--since'));
    } catch (err) {
      throw new UsageError(err instanceof ConfigError ? `--since ${JSON.stringify(flags.since)} is not a duration (90m, 2d) or a date (2026-11-30)` : (err as Error).message);
    }
  }
  const print = (entry: AuditEntry): void => void process.stdout.write((flags.json ? JSON.stringify(entry) : formatAuditLine(entry)) + '\n');
  if (flags.node) {
    if (flags.limit !== undefined && !/^\d+$/.test(flags.limit)) throw new UsageError(`--limit ${JSON.stringify(flags.limit)} is not a number`);
    const query = new URLSearchParams();
    if (filter.since !== undefined) query.set('since', new Date(filter.since).toISOString());
    for (const key of ['user', 'repo', 'action'] as const) if (filter[key] !== undefined) query.set(key, filter[key]!);
    if (flags.limit !== undefined) query.set('limit', flags.limit);
    const { nodeRequest } = await import('./lifecycle.ts');
    const answer = (await nodeRequest(flags.node, `/shoal/audit?${query}`, 'GET', flags)) as { entries: AuditEntry[]; truncated: boolean };
    for (const entry of answer.entries) print(entry);
    if (answer.truncated) process.stderr.write(`(only the last ${answer.entries.length} entries that match; --limit N or --since to see others)\n`);
    return;
  }
  let file = flags.file;
  if (!file) {
    const config = await loadConfig({ file: flags.config ?? process.env.SHOAL_CONFIG, env: process.env, flags: { dataDir: flags.data } });
    file = config.auditLog || join(config.dataDir, 'audit.log');
  }
  for await (const entry of readAudit(file, filter)) print(entry);
}
