import { stat } from 'node:fs/promises';

/** How often watched files (htpasswd, tokens, TLS certificate and key) are checked for changes. */
export const FILE_CHECK_INTERVAL_MS = 2_000;

function fingerprint(s: { mtimeMs: number; size: number; ino: number; ctimeMs: number }): string {
  return `${s.mtimeMs}:${s.ctimeMs}:${s.size}:${s.ino}`;
}

/**
 * Calls `onChange` when any of `files` changes (modification time, size or inode: an edit in place, a rename over
 * it, or a Kubernetes Secret's symlink swap). Polls, because file system events miss renames of the directory a
 * mounted Secret lives in. A file that is missing for a moment is not a change; its return is.
 */
export class FileWatch {
  private readonly files: string[];
  private readonly onChange: () => Promise<void>;
  private readonly intervalMs: number;
  private last = new Map<string, string>();
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;

  constructor(files: string[], onChange: () => Promise<void>, intervalMs = FILE_CHECK_INTERVAL_MS) {
    this.files = files;
    this.onChange = onChange;
    this.intervalMs = intervalMs;
  }

  /** Remembers how the files look now, then checks every interval. */
  async start(): Promise<void> {
    this.last = await this.snapshot();
    this.timer = setInterval(() => {
      this.running ??= this.check().finally(() => (this.running = undefined));
    }, this.intervalMs);
    this.timer.unref();
  }

  private async snapshot(): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    for (const f of this.files) {
      try {
        out.set(f, fingerprint(await stat(f)));
      } catch {
        // missing: compared as absent
      }
    }
    return out;
  }

  private async check(): Promise<void> {
    const now = await this.snapshot();
    let changed = false;
    for (const f of this.files) {
      const n = now.get(f);
      if (n !== undefined && n !== this.last.get(f)) changed = true;
    }
    // A file gone for a moment (mid-replace) keeps its old fingerprint until it is back.
    for (const [f, v] of now) this.last.set(f, v);
    if (changed) await this.onChange();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.running;
  }
}
