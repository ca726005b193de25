/**
 * skopeo with its own policy, registries.conf, auth file and TMPDIR under a work dir, so the host's container
 * configuration never matters. `prefix` runs it through another command, e.g. `['ip', 'netns', 'exec', NS]`.
 *
 *   const skopeo = await skopeoIn(dir);
 *   await skopeo('copy', '--all', '--src-tls-verify=false', 'docker://127.0.0.1:5000/a:b', `oci:${out}:b`);
 */
import { execFile } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export type Skopeo = (...args: string[]) => Promise<string>;

export async function skopeoIn(work: string, opts: { prefix?: string[]; timeoutMs?: number } = {}): Promise<Skopeo> {
  await mkdir(join(work, 'tmp'), { recursive: true });
  const policy = join(work, 'policy.json');
  await writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  await writeFile(join(work, 'registries.conf'), 'unqualified-search-registries = []\n');
  await writeFile(join(work, 'auth.json'), '{"auths":{}}\n');
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: work,
    TMPDIR: join(work, 'tmp'),
    REGISTRY_AUTH_FILE: join(work, 'auth.json'),
    CONTAINERS_REGISTRIES_CONF: join(work, 'registries.conf'),
  };
  const timeout = opts.timeoutMs ?? 60_000;
  const prefix = opts.prefix ?? [];
  return async (...args: string[]) => {
    const argv = [...prefix, 'skopeo', '--policy', policy, ...args];
    try {
      const r = await execFileP(argv[0]!, argv.slice(1), { env, timeout, killSignal: 'SIGKILL', maxBuffer: 16 << 20 });
      return r.stdout;
    } catch (err) {
      const e = err as { stderr?: string; killed?: boolean; code?: unknown };
      throw new Error(`${argv.join(' ')}: ${e.killed ? `killed after ${timeout} ms` : `exit ${String(e.code)}`}\n${e.stderr ?? ''}`, { cause: err });
    }
  };
}
