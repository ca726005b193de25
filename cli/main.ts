import { Command, CommanderError, Option } from 'commander';
import { ConfigError, LOG_LEVELS } from '../src/config/index.ts';
import { UsageError } from './errors.ts';
import { serveCommand } from './serve.ts';
import { containerdConfigCommand } from './containerd-config.ts';

/** Builds the `shoal` program; each command only parses its flags and delegates to src/. */
export function buildProgram(): Command {
  const program = new Command();
  program
    .name('shoal')
    .description('Embedded peer-to-peer OCI registry for air-gapped Kubernetes clusters')
    .version('0.1.0')
    .exitOverride()
    .showHelpAfterError('(run with --help for usage)');
  program
    .command('serve')
    .description('run a node: the OCI registry endpoint on this machine')
    .option('--data <dir>', 'data directory (LevelDB and blobs) [default: ./data, env SHOAL_DATA_DIR]')
    .option('--listen <host:port>', 'address of the registry endpoint [default: 127.0.0.1:5000, env SHOAL_LISTEN]')
    .option('-c, --config <file>', 'YAML or JSON config file')
    .option('--seed <url>', 'seed registry to pull through for requests without ?ns= (repeatable) [env SHOAL_SEEDS, comma-separated]', (v: string, prev: string[] = []) => [...prev, v])
    .addOption(new Option('--log-level <level>', 'log level [default: info]').choices(LOG_LEVELS))
    .action(async (opts: { data?: string; listen?: string; config?: string; logLevel?: string; seed?: string[] }) => {
      await serveCommand(opts);
    });
  program
    .command('containerd-config')
    .description("write containerd hosts.toml files that make a Shoal node the registries' mirror (or --restore them)")
    .option('--registry <host[:port][=url]>', 'registry to mirror, e.g. docker.io or registry.local:5000=http://registry.local:5000 (repeatable)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--mirror <url>', 'the Shoal node containerd should ask first, e.g. http://127.0.0.1:5000')
    .requiredOption('--out <dir>', "containerd's hosts dir, e.g. /etc/containerd/certs.d")
    .option('--all', 'also write _default/hosts.toml, for every other registry')
    .option('--dial-timeout <duration>', 'how long containerd waits for the node before going to the registry itself', '1s')
    .option('--restore', 'put back the files that were there before and remove the ones Shoal wrote')
    .action(async (opts: { registry?: string[]; mirror?: string; out: string; all?: boolean; restore?: boolean; dialTimeout?: string }) => {
      await containerdConfigCommand(opts);
    });
  return program;
}

/** Runs the CLI and returns the process exit code. */
export async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    if (err instanceof ConfigError || err instanceof UsageError) {
      process.stderr.write(`shoal: ${err.message}\n`);
      return 2;
    }
    process.stderr.write(`shoal: ${(err as Error).message}\n`);
    return 1;
  }
}
