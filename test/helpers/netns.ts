/**
 * Network namespaces for tests that need real links between nodes (shaped with tc), created and removed by the
 * test itself. Everything lives inside namespaces this helper creates, named `<prefix><pid>-<name>`: a bridge
 * namespace holding `br0`, and one namespace per host with a veth `eth0` whose other end is on the bridge. Nothing
 * is added to the root namespace (veth pairs are created directly inside their namespaces).
 *
 *   const lab = new NetnsLab('shp2p');
 *   after(() => lab.cleanup());
 *   await lab.removeLeftovers();                         // namespaces of earlier runs whose process is gone
 *   await lab.createBridge();
 *   const ns1 = await lab.addHost('n1', '10.233.7.11/24', { rate: '200mbit' });
 *   const p = lab.spawn(ns1, 'node', ['bin/shoal.js', 'serve', ...]);
 *   await lab.exec(ns1, 'curl', ['-sS', 'http://10.233.7.12:5000/healthz']);
 */
import { eachLine } from './spawn-node.ts';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export interface ExecResult {
  stdout: string;
  stderr: string;
}

/** Runs a command (no shell); a failure names the command and carries its stderr. */
export async function sh(cmd: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<ExecResult> {
  try {
    const r = await execFileP(cmd, args, { timeout: opts.timeoutMs ?? 30_000, killSignal: 'SIGKILL', maxBuffer: 64 << 20, env: opts.env });
    return { stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { stderr?: string; killed?: boolean; code?: unknown };
    throw new Error(`${cmd} ${args.join(' ')}: ${e.killed ? 'killed after its timeout' : `exit ${String(e.code)}`}: ${(e.stderr ?? '').trim()}`, { cause: err });
  }
}

/** A process running inside a namespace, its stdout split into lines (JSON lines parsed when they are JSON). */
export class NsProcess {
  readonly child: ChildProcess;
  readonly lines: string[] = [];
  readonly logs: Array<Record<string, unknown>> = [];
  stderr = '';
  exit?: { code: number | null; signal: NodeJS.Signals | null };
  readonly exited: Promise<void>;
  private readonly waiters = new Set<() => void>();

  constructor(
    readonly ns: string,
    readonly argv: string[],
    env: NodeJS.ProcessEnv,
  ) {
    // `ip netns exec` enters the namespace and execs the command: the child's pid is the command's.
    this.child = spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'], env });
    eachLine(this.child.stdout!, (line) => {
      this.lines.push(line);
      if (line.startsWith('{')) {
        try {
          this.logs.push(JSON.parse(line) as Record<string, unknown>);
        } catch {
          // not JSON
        }
      }
      this.notify();
    });
    this.child.stderr!.setEncoding('utf8');
    this.child.stderr!.on('data', (chunk: string) => {
      this.stderr += chunk;
      if (this.stderr.length > 64_000) this.stderr = this.stderr.slice(-32_000);
      this.notify();
    });
    this.exited = new Promise((ok) => {
      this.child.once('close', (code, signal) => {
        this.exit = { code, signal };
        this.notify();
        ok();
      });
      this.child.once('error', (err) => {
        this.stderr += `spawn error: ${err.message}\n`;
        this.exit ??= { code: null, signal: null };
        this.notify();
        ok();
      });
    });
  }

  get running(): boolean {
    return this.exit === undefined;
  }

  private notify(): void {
    for (const w of [...this.waiters]) w();
  }

  describe(): string {
    return `[${this.ns}] ${this.argv.join(' ')}\n--- stdout (last 20 lines) ---\n${this.lines.slice(-20).join('\n')}\n--- stderr ---\n${this.stderr.slice(-3000)}`;
  }

  /** The first JSON log line that matches; fails when the process exits first or after `timeoutMs`. */
  waitForLog(match: (l: Record<string, unknown>) => boolean, timeoutMs = 30_000): Promise<Record<string, unknown>> {
    return new Promise((ok, fail) => {
      const check = (): void => {
        const found = this.logs.find(match);
        if (found) {
          done();
          ok(found);
        } else if (this.exit) {
          done();
          fail(new Error(`process exited (${JSON.stringify(this.exit)}) before the expected log line\n${this.describe()}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        fail(new Error(`timed out after ${timeoutMs} ms waiting for a log line\n${this.describe()}`));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  /** SIGKILL (or `signal`) and wait for the exit. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (!this.running) return;
    this.child.kill(signal);
    await this.exited;
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async terminate(graceMs = 5_000): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

export interface LinkShape {
  /** tbf rate, e.g. `200mbit`. */
  rate: string;
  burst?: string;
  latency?: string;
}

export class NetnsLab {
  /** e.g. `shp2p12345-`: every namespace of this run starts with it. */
  readonly prefix: string;
  readonly namespaces: string[] = [];
  readonly processes: NsProcess[] = [];
  private readonly base: string;
  private bridgeNs?: string;
  private hosts = 0;

  constructor(base: string) {
    this.base = base;
    this.prefix = `${base}${process.pid}-`;
  }

  /** Fails with a precise message when this sandbox does not allow network namespaces. */
  async checkPermitted(): Promise<void> {
    const probe = `${this.prefix}probe`;
    try {
      await sh('ip', ['netns', 'add', probe]);
    } catch (err) {
      throw new Error(
        `network namespaces are not available here: \`ip netns add ${probe}\` failed (${(err as Error).message}). ` +
          'This test needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), iproute2, and a kernel with veth, bridge and sch_tbf.',
      );
    }
    await sh('ip', ['netns', 'del', probe]);
  }

  /**
   * Removes namespaces left by earlier runs of this test (same base prefix) whose test process is gone: kills
   * the processes still inside them (by pid), then deletes them.
   */
  async removeLeftovers(): Promise<string[]> {
    const { stdout } = await sh('ip', ['netns', 'list']);
    const removed: string[] = [];
    for (const line of stdout.split('\n')) {
      const name = line.trim().split(/\s+/)[0];
      if (!name) continue;
      const m = new RegExp(`^${this.base}(\\d+)-`).exec(name);
      if (!m) continue;
      const owner = Number(m[1]);
      if (owner !== process.pid && isAlive(owner)) continue; // another run, still going
      await killInside(name);
      await sh('ip', ['netns', 'del', name]).catch(() => undefined);
      removed.push(name);
    }
    return removed;
  }

  private async addNs(name: string): Promise<string> {
    const ns = `${this.prefix}${name}`;
    await sh('ip', ['netns', 'add', ns]);
    this.namespaces.push(ns);
    await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    return ns;
  }

  /** The namespace that holds the bridge every host is plugged into. */
  async createBridge(): Promise<string> {
    const ns = await this.addNs('br');
    await sh('ip', ['-n', ns, 'link', 'add', 'br0', 'type', 'bridge']);
    await sh('ip', ['-n', ns, 'link', 'set', 'br0', 'up']);
    this.bridgeNs = ns;
    return ns;
  }

  /**
   * A host: its own namespace with `eth0` (address `cidr`) plugged into the bridge. With `shape`, both directions
   * of the link are shaped with tbf (egress of eth0, and egress of the bridge port towards the host).
   */
  async addHost(name: string, cidr: string, shape?: LinkShape): Promise<string> {
    if (!this.bridgeNs) throw new Error('createBridge() first');
    const ns = await this.addNs(name);
    const port = `p${++this.hosts}`;
    await sh('ip', ['link', 'add', 'eth0', 'netns', ns, 'type', 'veth', 'peer', 'name', port, 'netns', this.bridgeNs]);
    await sh('ip', ['-n', this.bridgeNs, 'link', 'set', port, 'master', 'br0']);
    await sh('ip', ['-n', this.bridgeNs, 'link', 'set', port, 'up']);
    await sh('ip', ['-n', ns, 'addr', 'add', cidr, 'dev', 'eth0']);
    await sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
    if (shape) {
      const tbf = ['root', 'tbf', 'rate', shape.rate, 'burst', shape.burst ?? '256kb', 'latency', shape.latency ?? '50ms'];
      await sh('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', 'eth0', ...tbf]);
      await sh('ip', ['netns', 'exec', this.bridgeNs, 'tc', 'qdisc', 'add', 'dev', port, ...tbf]);
    }
    return ns;
  }

  /** Runs a command inside a namespace to completion. */
  exec(ns: string, cmd: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<ExecResult> {
    return sh('ip', ['netns', 'exec', ns, cmd, ...args], opts);
  }

  /** Starts a long-running command inside a namespace; `cleanup()` kills it. */
  spawn(ns: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): NsProcess {
    const p = new NsProcess(ns, [cmd, ...args], env);
    this.processes.push(p);
    return p;
  }

  /** Kills every process this lab started (and any left inside its namespaces), then deletes the namespaces. */
  async cleanup(): Promise<void> {
    await Promise.allSettled(this.processes.map((p) => p.kill()));
    for (const ns of [...this.namespaces].reverse()) {
      await killInside(ns).catch(() => undefined);
      await sh('ip', ['netns', 'del', ns]).catch(() => undefined);
    }
    this.namespaces.length = 0;
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** SIGKILLs, by pid, the processes still inside a namespace of ours, and waits a moment for them to go. */
async function killInside(ns: string): Promise<void> {
  const { stdout } = await sh('ip', ['netns', 'pids', ns]).catch(() => ({ stdout: '' }));
  const pids = stdout.split('\n').map((l) => Number(l.trim())).filter((n) => Number.isInteger(n) && n > 1 && n !== process.pid);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  for (let i = 0; i < 50 && pids.some(isAlive); i++) await new Promise((r) => setTimeout(r, 20));
}
