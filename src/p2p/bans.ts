import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { BAN_REASONS, type BanReason, type BanSummary } from './types.ts';

export interface Ban extends BanSummary {
  peer: string;
  /** Where the peer was connected from, HOST:PORT of its listen addresses: not dialed while banned. */
  addresses: string[];
}

export interface BanListOptions {
  /** How long a ban lasts, in ms. */
  banMs: number;
  /** Where bans are kept across restarts; none: in memory only. */
  file?: string;
  logger: Logger;
}

/**
 * Bans keyed by peer id: a ban lasts its full time however often the peer reconnects, and, with a file, across
 * this node's restarts. A banned peer is not dialed, not asked and not served (the connection gate refuses it).
 */
export class BanList {
  private readonly opts: BanListOptions;
  private readonly bans = new Map<string, Ban>();
  private writing: Promise<void> = Promise.resolve();
  private dirty = false;

  constructor(opts: BanListOptions) {
    this.opts = opts;
  }

  /** Reads the bans kept by an earlier run (expired ones are dropped; an unreadable file is logged and ignored). */
  async load(): Promise<void> {
    if (!this.opts.file) return;
    let text: string;
    try {
      text = await readFile(this.opts.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.opts.logger.warn({ file: this.opts.file, err: (err as Error).message }, 'cannot read the peer ban list; starting without it');
      return;
    }
    try {
      const now = Date.now();
      const list = JSON.parse(text) as unknown;
      if (!Array.isArray(list)) throw new Error('not a list');
      for (const b of list as Partial<Ban>[]) {
        if (typeof b.peer !== 'string' || typeof b.until !== 'number' || b.until <= now) continue;
        const reason = BAN_REASONS.includes(b.reason as BanReason) ? (b.reason as BanReason) : 'invalid-message';
        this.bans.set(b.peer, {
          peer: b.peer,
          reason,
          detail: typeof b.detail === 'string' ? b.detail : '',
          since: typeof b.since === 'number' ? b.since : now,
          until: b.until,
          addresses: Array.isArray(b.addresses) ? b.addresses.filter((a): a is string => typeof a === 'string') : [],
        });
      }
      if (this.bans.size > 0) this.opts.logger.info({ bans: this.bans.size }, 'peer bans kept from the last run');
    } catch (err) {
      this.opts.logger.warn({ file: this.opts.file, err: (err as Error).message }, 'the peer ban list is not valid; starting without it');
    }
  }

  /** Bans `peer`; undefined when it is banned already (a ban is counted once however many chunks report it). */
  add(peer: string, reason: BanReason, detail: string, addresses: string[]): Ban | undefined {
    if (this.get(peer)) return undefined;
    const now = Date.now();
    const ban: Ban = { peer, reason, detail: detail.slice(0, 500), since: now, until: now + this.opts.banMs, addresses };
    this.bans.set(peer, ban);
    this.save();
    return ban;
  }

  /** The peer's ban while it lasts. */
  get(peer: string): Ban | undefined {
    const ban = this.bans.get(peer);
    if (ban && ban.until <= Date.now()) {
      this.bans.delete(peer);
      this.save();
      return undefined;
    }
    return ban;
  }

  /** Ends a ban early. */
  lift(peer: string): void {
    if (this.bans.delete(peer)) this.save();
  }

  isBanned(peer: string): boolean {
    return this.get(peer) !== undefined;
  }

  /** True when HOST:PORT is where a banned peer listens: dialing it would only be refused. */
  isBannedAddress(hostPort: string): boolean {
    return this.list().some((b) => b.addresses.includes(hostPort));
  }

  /** Bans in force. */
  list(): Ban[] {
    return [...this.bans.keys()].map((p) => this.get(p)).filter((b): b is Ban => b !== undefined);
  }

  private save(): void {
    const file = this.opts.file;
    if (!file || this.dirty) return;
    this.dirty = true;
    this.writing = this.writing.then(async () => {
      this.dirty = false;
      const tmp = `${file}.tmp`;
      try {
        await mkdir(dirname(file), { recursive: true });
        await writeFile(tmp, JSON.stringify([...this.bans.values()], null, 1), { mode: 0o600 });
        await rename(tmp, file);
      } catch (err) {
        this.opts.logger.warn({ file, err: (err as Error).message }, 'cannot write the peer ban list');
      }
    });
  }

  /** Waits for the last write of the list. */
  async flush(): Promise<void> {
    await this.writing;
  }
}
