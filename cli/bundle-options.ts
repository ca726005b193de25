/** Flag handling the bundle commands (export, import, verify, inventory) share. Parsing only. */
import { UsageError } from './errors.ts';
import { BundleRefusedError, progressFor, type ProgressReporter } from '../src/bundle/index.ts';

/** Registry access flags, the same options a seed takes. */
export interface RegistryAccessFlags {
  username?: string;
  password?: string;
  passwordStdin?: boolean;
  caFile?: string;
  insecureSkipVerify?: boolean;
}

export interface RegistryAccess {
  username?: string;
  password?: string;
  caFile?: string;
  insecureSkipVerify?: boolean;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
}

export async function registryAccess(flags: RegistryAccessFlags): Promise<RegistryAccess> {
  if (flags.password !== undefined && flags.passwordStdin) throw new UsageError('give --password or --password-stdin, not both');
  const password = flags.passwordStdin ? await readStdin() : flags.password;
  if (password !== undefined && flags.username === undefined) throw new UsageError('a password needs --username');
  return { username: flags.username, password, caFile: flags.caFile, insecureSkipVerify: flags.insecureSkipVerify };
}

export function checkUrl(value: string, flag: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new UsageError(`${flag} ${JSON.stringify(value)} is not a URL (e.g. http://127.0.0.1:5000)`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UsageError(`${flag} must be an http:// or https:// URL`);
  return value.replace(/\/+$/, '');
}

/** Progress on stderr (a bar on a terminal, lines otherwise), or JSON lines on stdout with --json. */
export function commandProgress(json: boolean | undefined): ProgressReporter {
  return progressFor({ json, stdout: process.stdout, stderr: process.stderr });
}

/** Prints the result: lines for people, or one JSON object for programs. */
export function printResult(json: boolean | undefined, lines: string[], result: Record<string, unknown>): void {
  if (json) process.stdout.write(JSON.stringify({ event: 'done', ...result }) + '\n');
  else process.stdout.write(lines.join('\n') + '\n');
}

/** With --json, a failure is also a JSON line on stdout (the exit code and stderr say it too). */
export function reportFailure(json: boolean | undefined, err: unknown): void {
  if (!json) return;
  const e = err as Error;
  process.stdout.write(JSON.stringify({ event: 'error', reason: err instanceof BundleRefusedError ? err.reason : undefined, message: e.message }) + '\n');
}

/** An AbortSignal that SIGINT and SIGTERM fire; `release()` removes the handlers. */
export function interruptSignal(): { signal: AbortSignal; release(): void } {
  const controller = new AbortController();
  const onSignal = (): void => controller.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return {
    signal: controller.signal,
    release() {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}
