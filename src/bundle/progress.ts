import { formatBytes } from './format.ts';
/**
 * Progress of an export, import or verify: a bar on a terminal, a plain line every few seconds otherwise, or
 * one JSON object per line (`--json`). Bytes only ever go up: what is shown never goes backwards.
 */

export type BundleOperation = 'export' | 'import' | 'verify';

/** Things that happen along the way, besides bytes moving. */
export type BundleEvent =
  | { event: 'blob'; digest: string; size: number; action: 'written' | 'present' | 'verified' }
  | { event: 'image'; reference: string; digest: string; action: 'exported' | 'imported' | 'unchanged' | 'verified' }
  | { event: 'warning'; message: string };

export interface ProgressReporter {
  /** Starts the clock; `total` bytes when known. */
  start(operation: BundleOperation, total?: number): void;
  /** `bytes` more were moved. */
  advance(bytes: number): void;
  event(e: BundleEvent): void;
  /** Stops timers and draws the last state (`failed`: the operation stopped short). Safe to call twice. */
  finish(failed?: boolean): void;
}

export type Clock = () => number;

export interface ProgressSnapshot {
  bytes: number;
  total?: number;
  /** Bytes per second over the last few seconds (0 until there is a measurement). */
  rate: number;
  /** Seconds left at `rate`, when the total is known and the rate is not 0. */
  etaSeconds?: number;
  elapsedSeconds: number;
  /** 0..100, when the total is known. */
  percent?: number;
}

/** Counts bytes and measures the rate over a sliding window. Never reports fewer bytes than before. */
export class TransferMeter {
  private bytes = 0;
  private total?: number;
  private readonly startedAt: number;
  private readonly samples: Array<{ t: number; bytes: number }> = [];
  private readonly clock: Clock;
  private readonly windowMs: number;
  private lastPercent = 0;

  constructor(total: number | undefined, clock: Clock = Date.now, windowMs = 5_000) {
    this.total = total;
    this.clock = clock;
    this.windowMs = windowMs;
    this.startedAt = clock();
    this.samples.push({ t: this.startedAt, bytes: 0 });
  }

  add(n: number): void {
    if (!(n > 0)) return;
    this.bytes += n;
    // A total that turns out too small grows with the bytes, so the bar ends at 100 % rather than past it.
    if (this.total !== undefined && this.bytes > this.total) this.total = this.bytes;
  }

  snapshot(): ProgressSnapshot {
    const now = this.clock();
    this.samples.push({ t: now, bytes: this.bytes });
    while (this.samples.length > 2 && now - this.samples[1]!.t >= this.windowMs) this.samples.shift();
    const first = this.samples[0]!;
    const span = (now - first.t) / 1000;
    const rate = span > 0 ? (this.bytes - first.bytes) / span : 0;
    const snap: ProgressSnapshot = { bytes: this.bytes, rate, elapsedSeconds: (now - this.startedAt) / 1000 };
    if (this.total !== undefined) {
      snap.total = this.total;
      const percent = this.total === 0 ? 100 : Math.min(100, (this.bytes / this.total) * 100);
      this.lastPercent = Math.max(this.lastPercent, percent);
      snap.percent = this.lastPercent;
      if (rate > 0) snap.etaSeconds = Math.max(0, (this.total - this.bytes) / rate);
    }
    return snap;
  }
}

export function formatRate(bytesPerSecond: number): string {
  return `${formatBytes(bytesPerSecond)}/s`;
}


/** `1:02:03`, `4:05`, `0:07`. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
}

/** One line of text for a snapshot: `45% 450 MiB of 1.0 GiB, 120 MiB/s, ETA 0:05`. */
export function describeSnapshot(s: ProgressSnapshot): string {
  const amount = s.total !== undefined ? `${formatBytes(s.bytes)} of ${formatBytes(s.total)}` : formatBytes(s.bytes);
  const percent = s.percent !== undefined ? `${Math.floor(s.percent)}% ` : '';
  const eta = s.etaSeconds !== undefined ? `, ETA ${formatDuration(s.etaSeconds)}` : '';
  return `${percent}${amount}, ${formatRate(s.rate)}${eta}`;
}

/** A terminal bar: `import [#########.........] 45% 450 MiB of 1.0 GiB, 120 MiB/s, ETA 0:05`. */
export function renderBar(operation: string, s: ProgressSnapshot, width: number): string {
  const text = describeSnapshot(s);
  if (s.percent === undefined) return `${operation} ${text}`;
  const barWidth = Math.max(10, Math.min(40, width - text.length - operation.length - 5));
  const filled = Math.floor((s.percent / 100) * barWidth);
  return `${operation} [${'#'.repeat(filled)}${'.'.repeat(barWidth - filled)}] ${text}`;
}

interface Output {
  write(text: string): unknown;
  columns?: number;
}

abstract class TimedReporter implements ProgressReporter {
  protected meter?: TransferMeter;
  protected operation: BundleOperation = 'import';
  private timer?: NodeJS.Timeout;
  private finished = false;
  protected readonly clock: Clock;
  private readonly intervalMs: number;

  constructor(intervalMs: number, clock: Clock) {
    this.intervalMs = intervalMs;
    this.clock = clock;
  }

  start(operation: BundleOperation, total?: number): void {
    this.operation = operation;
    this.meter = new TransferMeter(total, this.clock);
    this.onStart(total);
    this.timer = setInterval(() => this.tick(), this.intervalMs);
    this.timer.unref();
  }

  advance(bytes: number): void {
    this.meter?.add(bytes);
  }

  abstract event(e: BundleEvent): void;
  protected abstract onStart(total?: number): void;
  protected abstract draw(s: ProgressSnapshot, final: boolean, failed?: boolean): void;

  private tick(): void {
    if (this.meter) this.draw(this.meter.snapshot(), false);
  }

  finish(failed = false): void {
    if (this.finished) return;
    this.finished = true;
    if (this.timer) clearInterval(this.timer);
    if (this.meter) this.draw(this.meter.snapshot(), true, failed);
  }
}

/** A bar redrawn in place (carriage return) about ten times a second. */
export class TerminalProgress extends TimedReporter {
  private readonly out: Output;
  private drawn = false;
  constructor(out: Output, clock: Clock = Date.now, intervalMs = 100) {
    super(intervalMs, clock);
    this.out = out;
  }
  protected onStart(): void {}
  protected draw(s: ProgressSnapshot, final: boolean): void {
    const line = renderBar(this.operation, s, this.out.columns || 80);
    this.out.write(`\r\x1b[2K${line}${final ? '\n' : ''}`);
    this.drawn = !final;
  }
  event(e: BundleEvent): void {
    if (e.event !== 'warning') return;
    // The warning gets its own line; the bar comes back on the next tick.
    this.out.write(`${this.drawn ? '\r\x1b[2K' : ''}warning: ${e.message}\n`);
    this.drawn = false;
  }
}

/** A plain line every few seconds (logs, CI, `| tee`). */
export class LineProgress extends TimedReporter {
  private readonly out: Output;
  constructor(out: Output, clock: Clock = Date.now, intervalMs = 5_000) {
    super(intervalMs, clock);
    this.out = out;
  }
  protected onStart(total?: number): void {
    this.out.write(`${this.operation}: started${total !== undefined ? `, ${formatBytes(total)} to go` : ''}\n`);
  }
  protected draw(s: ProgressSnapshot, final: boolean, failed?: boolean): void {
    this.out.write(`${this.operation}: ${final ? (failed ? 'stopped at ' : 'finished ') : ''}${describeSnapshot(s)}\n`);
  }
  event(e: BundleEvent): void {
    if (e.event === 'warning') this.out.write(`warning: ${e.message}\n`);
  }
}

/** Machine-readable progress: one JSON object per line, every event and a progress object twice a second. */
export class JsonProgress extends TimedReporter {
  private readonly out: Output;
  constructor(out: Output, clock: Clock = Date.now, intervalMs = 500) {
    super(intervalMs, clock);
    this.out = out;
  }
  private emit(obj: Record<string, unknown>): void {
    this.out.write(JSON.stringify(obj) + '\n');
  }
  protected onStart(total?: number): void {
    this.emit({ event: 'start', operation: this.operation, total: total ?? null });
  }
  protected draw(s: ProgressSnapshot): void {
    this.emit({
      event: 'progress',
      operation: this.operation,
      bytes: s.bytes,
      total: s.total ?? null,
      percent: s.percent !== undefined ? Math.round(s.percent * 10) / 10 : null,
      bytesPerSecond: Math.round(s.rate),
      etaSeconds: s.etaSeconds !== undefined ? Math.round(s.etaSeconds) : null,
    });
  }
  event(e: BundleEvent): void {
    this.emit({ ...e, operation: this.operation });
  }
}

/** Reports nothing (library use, tests). */
export class SilentProgress implements ProgressReporter {
  start(): void {}
  advance(): void {}
  event(): void {}
  finish(): void {}
}

/** Picks the reporter a command line wants: JSON on stdout, a bar on a terminal's stderr, else lines on stderr. */
export function progressFor(opts: { json?: boolean; quiet?: boolean; stdout: Output; stderr: Output & { isTTY?: boolean } }): ProgressReporter {
  if (opts.json) return new JsonProgress(opts.stdout);
  if (opts.quiet) return new SilentProgress();
  if (opts.stderr.isTTY) return new TerminalProgress(opts.stderr);
  return new LineProgress(opts.stderr);
}
