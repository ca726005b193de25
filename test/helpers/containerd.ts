/**
 * A real containerd daemon for tests, isolated in a temp dir: its own config, root, state, opt dir and gRPC
 * socket; the CRI plugin off (it wants a CNI setup and would only slow the start). `ctr()` runs the client
 * against that socket. Nothing outside the dir is written.
 *
 * When containerd cannot run here, `startContainerd` throws an error that says why (its exit status and the
 * last lines of its log, or what it was waiting for), so a test fails with something to act on.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { access, mkdir, stat } from 'node:fs/promises';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export const CONTAINERD_BIN = process.env.SHOAL_CONTAINERD ?? '/usr/bin/containerd';
export const CTR_BIN = process.env.SHOAL_CTR ?? '/usr/bin/ctr';

export interface CtrResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface Containerd {
  /** The gRPC socket, for `ctr --address`. */
  socket: string;
  /** containerd's own output so far. */
  logs(): string;
  /** Runs `ctr --address <socket> <args>`; never throws for a non-zero exit (see `code`). */
  ctr(args: string[], opts?: { timeoutMs?: number }): Promise<CtrResult>;
  /** Like ctr(), but throws (with stderr and the daemon's log tail) unless the exit is 0. */
  ctrOk(args: string[], opts?: { timeoutMs?: number }): Promise<string>;
  /** SIGTERM, then SIGKILL after 5 s; waits for the exit. Safe to call twice. */
  stop(): Promise<void>;
}

function tail(text: string, lines = 30): string {
  return text.trim().split('\n').slice(-lines).join('\n');
}

/** The smallest config that runs containerd unprivileged-friendly and self-contained under `dir`. */
export function containerdConfig(dir: string): string {
  const q = JSON.stringify;
  return [
    'version = 2',
    `root = ${q(join(dir, 'root'))}`,
    `state = ${q(join(dir, 'state'))}`,
    // CRI needs CNI and much more; aufs/btrfs/zfs/devmapper are skipped or fail on their own anyway.
    'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]',
    '',
    '[grpc]',
    `  address = ${q(join(dir, 'containerd.sock'))}`,
    '',
    '[ttrpc]',
    `  address = ${q(join(dir, 'containerd.sock.ttrpc'))}`,
    '',
    '[debug]',
    '  address = ""',
    '  level = "info"',
    '',
    '[metrics]',
    '  address = ""',
    '',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${q(join(dir, 'opt'))}`,
    '',
  ].join('\n');
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}

/** Starts containerd with everything under `dir` (which must exist); resolves once `ctr version` answers. */
export async function startContainerd(dir: string, opts: { timeoutMs?: number } = {}): Promise<Containerd> {
  for (const bin of [CONTAINERD_BIN, CTR_BIN]) {
    try {
      await access(bin);
    } catch {
      throw new Error(`${bin} is missing: install Debian's containerd package (apt-get install containerd), or point SHOAL_CONTAINERD/SHOAL_CTR at the binaries`);
    }
  }
  await mkdir(join(dir, 'root'), { recursive: true });
  await mkdir(join(dir, 'state'), { recursive: true });
  const configPath = join(dir, 'config.toml');
  await writeFile(configPath, containerdConfig(dir));
  const socket = join(dir, 'containerd.sock');
  if (Buffer.byteLength(socket) > 100) throw new Error(`socket path ${socket} is too long for a unix socket (max ~107 bytes); use a shorter temp dir`);

  const child = spawn(CONTAINERD_BIN, ['--config', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  let spawnError: Error | undefined;
  child.once('error', (err) => (spawnError = err));

  const ctr = async (args: string[], o: { timeoutMs?: number } = {}): Promise<CtrResult> => {
    try {
      const r = await execFileP(CTR_BIN, ['--address', socket, ...args], { timeout: o.timeoutMs ?? 60_000, killSignal: 'SIGKILL', maxBuffer: 16 << 20 });
      return { code: 0, stdout: r.stdout, stderr: r.stderr };
    } catch (err) {
      const e = err as { code?: unknown; stdout?: string; stderr?: string; killed?: boolean };
      return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: (e.killed ? `killed after ${o.timeoutMs ?? 60_000} ms\n` : '') + (e.stderr ?? String(err)) };
    }
  };
  const handle: Containerd = {
    socket,
    logs: () => output,
    ctr,
    async ctrOk(args, o) {
      const r = await ctr(args, o);
      if (r.code !== 0) {
        throw new Error(`ctr ${args.join(' ')}: exit ${r.code}\n${r.stderr.trim()}\n--- containerd log (tail) ---\n${tail(output)}`);
      }
      return r.stdout;
    },
    stop: () => stopProcess(child),
  };

  const deadline = Date.now() + (opts.timeoutMs ?? 20_000);
  try {
    for (;;) {
      if (spawnError) throw new Error(`cannot start ${CONTAINERD_BIN}: ${spawnError.message}`);
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`containerd exited (${child.exitCode ?? child.signalCode}) before it served ${socket}:\n${tail(output)}`);
      }
      const ready = await stat(socket).then(
        (s) => s.isSocket(),
        () => false,
      );
      if (ready) {
        const v = await ctr(['version'], { timeoutMs: 5_000 });
        if (v.code === 0) return handle;
        if (Date.now() > deadline) throw new Error(`containerd serves ${socket} but \`ctr version\` fails: ${v.stderr.trim()}\n${tail(output)}`);
      }
      if (Date.now() > deadline) throw new Error(`containerd did not create ${socket} within ${opts.timeoutMs ?? 20_000} ms:\n${tail(output)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  } catch (err) {
    await stopProcess(child);
    throw err;
  }
}
