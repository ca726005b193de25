import { join } from 'node:path';
import { formatAuditLine, parseSince, readAudit, type AuditFilter } from '../src/access/index.ts';
import { ConfigError, loadConfig, parseDuration } from '../src/config/index.ts';
import { UsageError } from './errors.ts';

export interface AuditFlags {
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
  let file = flags.file;
  if (!file) {
    const config = await loadConfig({ file: flags.config ?? process.env.SHOAL_CONFIG, env: process.env, flags: { dataDir: flags.data } });
    file = config.auditLog || join(config.dataDir, 'audit.log');
  }
  const filter: AuditFilter = { user: flags.user, repo: flags.repo, action: flags.action };
  if (flags.since !== undefined) {
    try {
      filter.since = parseSince(flags.since, Date.now(), (v) => parseDuration(v, '--since'));
    } catch (err) {
      throw new UsageError(err instanceof ConfigError ? `--since ${JSON.stringify(flags.since)} is not a duration (90m, 2d) or a date (2026-11-30)` : (err as Error).message);
    }
  }
  for await (const entry of readAudit(file, filter)) {
    process.stdout.write((flags.json ? JSON.stringify(entry) : formatAuditLine(entry)) + '\n');
  }
}
