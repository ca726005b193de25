/**
 * Runs the `shoal` CLI as a user would (`node bin/shoal.js ...`) in a child process.
 *
 *   const procs = new ShoalProcesses();
 *   after(() => procs.cleanup());                       // kills what is still running, removes temp dirs
 *   const dir = await procs.tempDir();
 *   const node = await procs.serve({ dataDir: dir });    // waits for the `"msg":"listening"` line
 *   await fetch(node.url + '/v2/');
 *   await node.waitForLog((l) => l.msg === 'request');
 *   const exit = await node.terminate();                 // SIGTERM, then wait (SIGKILL after a deadline)
 *
 * `runShoal(args)` runs a short command (e.g. `--help`) to completion and returns its exit code and output.
 * SHOAL_* variables of the test's own environment are not passed on unless given in `env`.
 */
import { createInterface } from 'node:readline';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Calls `onLine` for every line a stream yields, the last one too when it has no newline. */
export function eachLine(stream: NodeJS.ReadableStream, onLine: (line: string) => void): void {
  createInterface({ input: stream, crlfDelay: Infinity }).on('line', onLine);
}

/** bin/shoal.js of this checkout. */
export const SHOAL_BIN = resolve(dirname(fileURLToPath(import.meta.url)), '../../bin/shoal.js');

/** One parsed JSON log line (pino): `msg`, `level` and whatever fields the line has. */
export type LogLine = Record<string, unknown> & { msg?: string; level?: number };

export interface ProcessExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface SpawnOptions {
  /** Extra environment; merged over the test's environment minus SHOAL_* and NODE_TEST_CONTEXT. */
  env?: Record<string, string | undefined>;
  cwd?: string;
}

function childEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('SHOAL_') || k === 'NODE_TEST_CONTEXT') continue;
    env[k] = v;
  }
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

/** A spawned `shoal` process with its output collected line by line. */
export class ShoalProcess {
  readonly child: ChildProcess;
  /** Every stdout line, raw. */
  readonly stdoutLines: string[] = [];
  /** Stdout lines that parsed as JSON objects (the log). */
  readonly logs: LogLine[] = [];
  stderr = '';
  /** Settles when the process has exited (never rejects). */
  readonly exited: Promise<ProcessExit>;
  exit: ProcessExit | undefined;
  /** Set by `serve()` from the listening line. */
  url = '';
  port = 0;
  private readonly waiters = new Set<() => void>();

  constructor(args: string[], opts: SpawnOptions = {}) {
    this.child = spawn(process.execPath, [SHOAL_BIN, ...args], {
      cwd: opts.cwd,
      env: childEnv(opts.env),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    eachLine(this.child.stdout!, (line) => {
      this.addLine(line);
      this.notify();
    });
    this.child.stderr!.setEncoding('utf8');
    this.child.stderr!.on('data', (chunk: string) => {
      this.stderr += chunk;
      this.notify();
    });
    this.exited = new Promise<ProcessExit>((ok) => {
      // 'close' comes after the streams have ended, so every line is in by then.
      this.child.once('close', (code, signal) => {
        this.exit = { code, signal };
        this.notify();
        ok(this.exit);
      });
      this.child.once('error', (err) => {
        this.stderr += `spawn error: ${err.message}\n`;
        this.exit ??= { code: null, signal: null };
        this.notify();
        ok(this.exit);
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.exit === undefined;
  }

  private addLine(line: string): void {
    this.stdoutLines.push(line);
    const t = line.trim();
    if (!t.startsWith('{')) return;
    try {
      const v = JSON.parse(t) as unknown;
      if (v && typeof v === 'object' && !Array.isArray(v)) this.logs.push(v as LogLine);
    } catch {
      // not a log line
    }
  }

  private notify(): void {
    for (const w of [...this.waiters]) w();
  }

  /** Waits until `check()` returns something other than undefined; fails after `timeoutMs` or when the process exits first. */
  private async until<T>(what: string, check: () => T | undefined, timeoutMs: number): Promise<T> {
    const first = check();
    if (first !== undefined) return first;
    return new Promise<T>((ok, fail) => {
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(poll);
      };
      const poll = (): void => {
        const v = check();
        if (v !== undefined) {
          done();
          ok(v);
        } else if (this.exit) {
          done();
          fail(new Error(`shoal exited (${JSON.stringify(this.exit)}) before ${what}\n${this.describe()}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        fail(new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${this.describe()}`));
      }, timeoutMs);
      this.waiters.add(poll);
      poll();
    });
  }

  /** The first log line (from index `from` on) that matches. */
  waitForLog(match: (l: LogLine) => boolean, opts: { timeoutMs?: number; from?: number } = {}): Promise<LogLine> {
    const from = opts.from ?? 0;
    return this.until('a matching log line', () => this.logs.slice(from).find(match), opts.timeoutMs ?? 20_000);
  }

  /** Waits for the `listening` line and sets `url` and `port` from it. */
  async waitListening(timeoutMs = 60_000): Promise<this> {
    const line = await this.waitForLog((l) => l.msg === 'listening' && typeof l.url === 'string', { timeoutMs });
    this.url = String(line.url);
    this.port = Number(new URL(this.url).port);
    return this;
  }

  /** Resolves with the exit, or rejects after `timeoutMs` (the process keeps running). */
  waitExit(timeoutMs = 30_000): Promise<ProcessExit> {
    return this.until('the process to exit', () => this.exit, timeoutMs);
  }

  /** Sends a signal (no-op once exited). */
  signal(sig: NodeJS.Signals): void {
    if (this.running) this.child.kill(sig);
  }

  /** SIGKILL and wait for the exit. */
  async kill(): Promise<ProcessExit> {
    this.signal('SIGKILL');
    return this.exited;
  }

  /** SIGTERM and wait; SIGKILL if it has not exited after `timeoutMs` (then the result has signal SIGKILL). */
  async terminate(timeoutMs = 15_000): Promise<ProcessExit> {
    if (!this.running) return this.exit!;
    this.signal('SIGTERM');
    try {
      return await this.waitExit(timeoutMs);
    } catch {
      return this.kill();
    }
  }

  /** Stdout and stderr for failure messages. */
  describe(): string {
    const out = this.stdoutLines.slice(-30).join('\n');
    return `--- stdout (last 30 lines) ---\n${out}\n--- stderr ---\n${this.stderr.slice(-4000)}`;
  }
}

export interface ServeOptions extends SpawnOptions {
  dataDir?: string;
  /** Default `127.0.0.1:0`; `null` leaves the flag out (so env or the config file decide). */
  listen?: string | null;
  config?: string;
  logLevel?: string;
  /** More arguments after `serve`. */
  args?: string[];
  timeoutMs?: number;
}

/** Everything a test spawned, so that `cleanup()` in `after` can take it all down. */
export class ShoalProcesses {
  private readonly procs = new Set<ShoalProcess>();
  private readonly dirs = new Set<string>();

  /** Spawns `shoal <args>` without waiting for anything. */
  spawn(args: string[], opts: SpawnOptions = {}): ShoalProcess {
    const p = new ShoalProcess(args, opts);
    this.procs.add(p);
    return p;
  }

  /** `shoal serve ...`, resolved once it logs `listening` (killed and rejected if it does not). */
  async serve(opts: ServeOptions = {}): Promise<ShoalProcess> {
    const args = ['serve'];
    if (opts.dataDir !== undefined) args.push('--data', opts.dataDir);
    if (opts.listen !== null) args.push('--listen', opts.listen ?? '127.0.0.1:0');
    if (opts.config !== undefined) args.push('-c', opts.config);
    if (opts.logLevel !== undefined) args.push('--log-level', opts.logLevel);
    args.push(...(opts.args ?? []));
    const p = this.spawn(args, opts);
    try {
      return await p.waitListening(opts.timeoutMs);
    } catch (err) {
      await p.kill();
      throw err;
    }
  }

  /** A temp dir removed by `cleanup()`. */
  async tempDir(prefix = 'shoal-e2e-'): Promise<string> {
    const d = await mkdtemp(join(tmpdir(), prefix));
    this.dirs.add(d);
    return d;
  }

  /** SIGKILLs every process still running, waits for them, removes the temp dirs. Safe to call twice. */
  async cleanup(): Promise<void> {
    const procs = [...this.procs];
    this.procs.clear();
    await Promise.all(procs.map((p) => p.kill()));
    const dirs = [...this.dirs];
    this.dirs.clear();
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true, maxRetries: 3 })));
  }
}

export interface RunResult extends ProcessExit {
  stdout: string;
  stderr: string;
}

/** Runs `shoal <args>` to completion (SIGKILL after `timeoutMs`, default 60 s: a loaded CI machine starts tsx slowly). */
export async function runShoal(args: string[], opts: SpawnOptions & { timeoutMs?: number } = {}): Promise<RunResult> {
  const p = new ShoalProcess(args, opts);
  let exit: ProcessExit;
  try {
    exit = await p.waitExit(opts.timeoutMs ?? 60_000);
  } catch (err) {
    await p.kill();
    throw err;
  }
  return { ...exit, stdout: p.stdoutLines.join('\n'), stderr: p.stderr };
}
