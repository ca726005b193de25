import { Command, CommanderError, Option } from 'commander';
import { ConfigError, LOG_LEVELS } from '../src/config/index.ts';
import { SIZE_HELP } from '../src/limits/size.ts';
import { ExitStatus, UsageError } from './errors.ts';
import type { ServeFlags } from './serve.ts';
import { containerdConfigCommand, type ContainerdConfigFlags } from './containerd-config.ts';
import { BUNDLE_REFUSED_EXIT_CODE, BundleRefusedError } from '../src/bundle/errors.ts';
import type { ExportFlags } from './export.ts';
import type { ImportFlags } from './import.ts';
import type { VerifyFlags } from './verify.ts';
import type { InventoryFlags } from './inventory.ts';
import type { PinFlags } from './pins.ts';
import type { AuditFlags } from './audit.ts';
import type { LsFlags, PrefetchFlags } from './views.ts';

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
    .option('--metrics-listen <host:port>', 'another address for /metrics, /healthz and /readyz only, e.g. 0.0.0.0:5002 [env SHOAL_METRICS_LISTEN]')
    .option('-c, --config <file>', 'YAML or JSON config file')
    .option('--seed <url>', 'seed registry to pull through for requests without ?ns= (repeatable) [env SHOAL_SEEDS, comma-separated]', (v: string, prev: string[] = []) => [...prev, v])
    .addOption(new Option('--log-level <level>', 'log level [default: info]').choices(LOG_LEVELS))
    .option('--p2p-listen <host:port>', 'address for the peer network (off when not given) [env SHOAL_P2P_LISTEN]')
    .option('--cluster-key <file>', 'private-network key shared by every node (shoal cluster-key makes one) [env SHOAL_CLUSTER_KEY_FILE]')
    .option('--peer <host:port>', 'a peer to dial, its id need not be known (repeatable) [env SHOAL_PEERS, comma-separated]', (v: string, prev: string[] = []) => [...prev, v])
    .option('--peers-dns <name>', 'DNS name whose addresses are peers, e.g. a headless Service [env SHOAL_PEERS_DNS]')
    .option('--mdns', 'find peers by mDNS on a flat LAN')
    .option('--p2p-clear-data', 'peer connections: authenticated handshake, unencrypted bytes (a trusted LAN; both ends must enable it)')
    .option('--p2p-data-port <port|off>', 'port of the data channel for chunk bytes between nodes, AES-GCM keyed per transfer; off: bytes stay on the peer connection [default: the first free port after the p2p port, env SHOAL_P2P_DATA_PORT]')
    .option('--zone <label>', 'topology label; peers with the same label are preferred [env SHOAL_ZONE]')
    .option('--max-peer-upload <rate>', 'cap on serving peers, bytes or bits per second, e.g. 50M, 20Mi or 400Mbit [default: none]')
    .option('--max-seed-rate <rate>', 'cap on the seed link, bytes or bits per second, e.g. 10M, 8Mi or 80Mbit [default: none]')
    .option('--max-store <size>', 'quota of stored content, e.g. 40Gi; least recently used unpinned blobs are evicted above it [env SHOAL_MAX_STORE]')
    .option('--min-free <size|pct>', 'free space to keep on the data file system, e.g. 10% or 5Gi [env SHOAL_MIN_FREE]')
    .option('--gc-interval <duration>', 'how often garbage collection runs, e.g. 6h; 0: only on demand [default: 6h, env SHOAL_GC_INTERVAL]')
    .option('--scrub-rate <rate>', 'bytes per second the background scrub re-hashes, e.g. 10M; 0: off [default: 10M, env SHOAL_SCRUB_RATE]')
    .option('--peer-tags <true|false>', "when no seed answers, a peer's newer tag record may answer; false: tags only from seeds and bundles [default: true, env SHOAL_PEER_TAGS]")
    .option('--htpasswd <file>', 'users: an htpasswd file with bcrypt entries (htpasswd -B); reloaded when it changes [env SHOAL_HTPASSWD_FILE]')
    .option('--tokens <file>', 'static tokens: NAME:TOKEN (or NAME:sha256:<hex>) per line; reloaded when it changes [env SHOAL_TOKENS_FILE]')
    .option('--grant <user:roles[:prefix]>', 'roles of a user or token on repositories under a prefix, e.g. ci:push:apps/ or ops:admin (repeatable) [env SHOAL_GRANTS, JSON]', (v: string, prev: string[] = []) => [...prev, v])
    .option('--anonymous <roles>', 'roles of callers without credentials: pull, none, or a list such as pull,push [default: pull, env SHOAL_ANONYMOUS]')
    .option('--immutable-tags <prefix>', 'tags of repositories under this prefix cannot be moved or deleted (repeatable) [env SHOAL_IMMUTABLE_TAGS]', (v: string, prev: string[] = []) => [...prev, v])
    .option('--tls-cert <file>', 'PEM certificate of the endpoint (HTTPS); reloaded when it changes [env SHOAL_TLS_CERT]')
    .option('--tls-key <file>', 'PEM key of the endpoint; reloaded when it changes [env SHOAL_TLS_KEY]')
    .option('--audit-log <file>', 'the audit log [default: <data>/audit.log, env SHOAL_AUDIT_LOG]')
    .option('--webhook <url>', 'tell this URL about every push and delete (repeatable) [env SHOAL_WEBHOOKS]', (v: string, prev: string[] = []) => [...prev, v])
    .option('--policy <file>', 'signature policy (a containers-policy.json subset): only images it allows are served; reloaded when it changes [env SHOAL_POLICY_FILE]')
    .addHelpText('after', `\n${SIZE_HELP}`)
    .action(async (opts: ServeFlags) => {
      const { serveCommand } = await import('./serve.ts');
      await serveCommand(opts);
    });
  program
    .command('cluster-key')
    .description('create a private-network key file; give the same file to every node of the cluster')
    .requiredOption('--out <file>', 'where to write the key (refuses to overwrite)')
    .action(async (opts: { out: string }) => {
      const { clusterKeyCommand } = await import('./peers.ts');
      await clusterKeyCommand(opts);
    });
  withRegistryAccess(
    program
      .command('peers')
      .description("list a running node's peers: address, RTT, throughput and bytes exchanged")
      .option('--node <url>', 'the node to ask', 'http://127.0.0.1:5000')
      .option('--json', 'print JSON'),
    'the node (a user with the admin role)',
  ).action(async (opts: { node: string; json?: boolean }) => {
      const { peersCommand } = await import('./peers.ts');
      await peersCommand(opts);
    });
  program
    .command('containerd-config')
    .description("write containerd hosts.toml files that make a Shoal node the registries' mirror (or --restore them)")
    .option('--registry <host[:port][=url]>', 'registry to mirror, e.g. docker.io or registry.local:5000=http://registry.local:5000 (repeatable)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--mirror <url>', 'the Shoal node containerd should ask first, e.g. http://127.0.0.1:5000')
    .requiredOption('--out <dir>', "containerd's hosts dir, e.g. /etc/containerd/certs.d")
    .option('--all', 'also write _default/hosts.toml, for every other registry')
    .option('--dial-timeout <duration>', 'how long containerd waits for the node before going to the registry itself', '1s')
    .option('--restore', 'put back the files that were there before and remove the ones Shoal wrote (all of them when no registry is named)')
    .option('-c, --config <file>', "the node's config file: every registry it has seeds for gets a hosts.toml, with the scheme its seeds use")
    .option('--seed <url>', 'a seed of the node, as for serve (repeatable): its registry gets a hosts.toml with its scheme', (v: string, prev: string[] = []) => [...prev, v])
    .addHelpText('after', '\nA registry given without its URL gets the scheme its seeds on the node use (from --config, --seed, or the running --mirror node); when none says, https, with a warning.')
    .action(async (opts: ContainerdConfigFlags) => {
      await containerdConfigCommand(opts);
    });
  addBundleCommands(program);
  addLifecycleCommands(program);
  addPinCommands(program);
  addViewCommands(program);
  withRegistryAccess(
    program
      .command('audit')
      .description("print a node's audit log (push, delete, tag moves, imports, pins, GC, refusals and failed logins), oldest first")
      .option('--node <url>', 'a running node, asked over its API (GET /shoal/audit: a user with the admin role)')
      .option('--limit <n>', 'with --node: at most the last N entries that match [default: 1000]')
      .option('--data <dir>', "the node's data directory, where audit.log is [default: ./data, env SHOAL_DATA_DIR]")
      .option('-c, --config <file>', "the node's config file (its auditLog and dataDir settings)")
      .option('--file <file>', 'the audit log file itself')
      .option('--since <when>', 'only entries since a duration ago (90m, 2d) or a date (2026-11-30, 2026-11-30T08:00:00Z)')
      .option('--user <name>', 'only entries of this user or token (anonymous for callers without credentials)')
      .option('--repo <prefix>', 'only entries of repositories starting with this prefix')
      .option('--action <action>', 'only this action: push, tag-move, upload, delete, import, pin, unpin, gc, prefetch, pull, admin, login')
      .option('--json', 'print the entries as JSON lines'),
    'the node (with --node: a user with the admin role)',
  ).action(async (opts: AuditFlags) => {
      await (await import('./audit.ts')).auditCommand(opts);
    });
  return program;
}

const repeatable = (v: string, prev: string[] = []): string[] => [...prev, v];

/** Registry access options, the same as a seed's. */
function withRegistryAccess(cmd: Command, what: string): Command {
  return cmd
    .option('--username <user>', `username for ${what}`)
    .option('--password <password>', `password for ${what} (or --password-stdin)`)
    .option('--password-stdin', 'read the password from standard input')
    .option('--ca-file <pem>', `CA certificate to trust for ${what}`)
    .option('--insecure-skip-verify', `accept any TLS certificate from ${what} (test setups only)`);
}

/** export, import, verify, inventory: sneakernet bundles (src/bundle), loaded only when one of them runs. */
function addBundleCommands(program: Command): void {
  withRegistryAccess(
    program
      .command('export')
      .description('write images into one bundle file (an OCI image layout tar) to carry to an air-gapped site')
      .argument('[ref...]', 'images, e.g. registry.local/team/app:1.2 or nginx:1.27')
      .requiredOption('-o, --output <file>', 'the bundle file to write')
      .option('--images-file <file>', 'more images, one reference per line (# comments allowed)')
      .option('--from <url>', 'registry to read the images from (default: https://<registry of the images>)')
      .option('--data <dir>', 'read from the data directory of a stopped node instead')
      .option('--platform <os/arch,...>', 'only these platforms of multi-platform images, e.g. linux/amd64,linux/arm64')
      .option('--have <inventory>', 'leave out the blobs listed in this file (from `shoal inventory` on the site)')
      .option('--sign <key.pem>', 'sign the bundle with this ed25519 private key')
      .option('--split <size>', 'write parts of at most this size (e.g. 4G = 4000000000 bytes, 700Mi) plus FILE.parts.json')
      .option('--no-referrers', 'leave out signatures, SBOMs and other referrers')
      .option('--json', 'print progress and the result as JSON lines on stdout')
      .addHelpText('after', `\n${SIZE_HELP}`),
    'the --from registry',
  ).action(async (refs: string[], opts: ExportFlags) => {
    await (await import('./export.ts')).exportCommand(refs, opts);
  });
  withRegistryAccess(
    program
      .command('import')
      .description('put the images of a bundle (or of a docker save / skopeo oci-archive tar) into a node')
      .argument('<file>', 'the bundle: FILE, or FILE.parts.json of a split bundle')
      .option('--node <url>', 'a running node, e.g. http://127.0.0.1:5000')
      .option('--data <dir>', 'the data directory of a stopped node (created if missing)')
      .option('--trust <pubkey.pem>', 'refuse the bundle unless this ed25519 key signed it (repeatable)', repeatable)
      .option('--repository <registry/repository>', 'for tars that name images by a bare tag or not at all: the repository to put them in')
      .option('--no-pin', 'do not pin the imported images (by default each image and its referrers are pinned)')
      .option('--policy <file>', 'signature policy every image must satisfy (as serve --policy); one refused image refuses the whole bundle')
      .option('--json', 'print progress and the result as JSON lines on stdout'),
    'the node',
  ).action(async (file: string, opts: ImportFlags) => {
    await (await import('./import.ts')).importCommand(file, opts);
  });
  program
    .command('verify')
    .description('check a bundle completely (every file, digest and the signature) without importing it')
    .argument('<file>', 'the bundle: FILE, or FILE.parts.json of a split bundle')
    .option('--trust <pubkey.pem>', 'require a signature by this ed25519 key (repeatable)', repeatable)
    .option('--repository <registry/repository>', 'as for import, for tars with bare tags')
    .option('--json', 'print progress and the result as JSON lines on stdout')
    .action(async (file: string, opts: VerifyFlags) => {
      await (await import('./verify.ts')).verifyCommand(file, opts);
    });
  withRegistryAccess(
    program
      .command('inventory')
      .description('write what a site already has (blob digests) for `shoal export --have` on the connected side')
      .requiredOption('-o, --output <file>', 'the inventory file to write')
      .option('--node <url>', 'a running node, e.g. http://127.0.0.1:5000')
      .option('--data <dir>', 'the data directory of a stopped node')
      .option('--json', 'print the result as JSON on stdout'),
    'the node',
  ).action(async (opts: InventoryFlags) => {
    await (await import('./inventory.ts')).inventoryCommand(opts);
  });
}

/** gc, status, fsck: the store's lifecycle. */
function addLifecycleCommands(program: Command): void {
  withRegistryAccess(
    program
      .command('gc')
      .description('collect garbage: untagged manifests, unreferenced blobs, abandoned uploads and staged imports (prints each with its reason)')
      .option('--node <url>', 'a running node, e.g. http://127.0.0.1:5000')
      .option('--data <dir>', 'the data directory of a stopped node')
      .option('-c, --config <file>', "with --data: the node's config file (grace periods, retention rules)")
      .option('--dry-run', 'only report what would be removed')
      .option('--json', 'print the report as JSON'),
    'the node (a user with the admin role)',
  ).action(async (opts: { node?: string; data?: string; dryRun?: boolean; json?: boolean; config?: string }) => {
      await (await import('./lifecycle.ts')).gcCommand(opts);
    });
  withRegistryAccess(
    program
      .command('verify-image')
      .description("a node's verdict on one image under its signature policy: the rule, each signature found and why it counts or not")
      .argument('<ref>', 'the image as containerd names it, e.g. registry.local/apps/web:1.0 or docker.io/library/nginx@sha256:...')
      .option('--node <url>', 'the node to ask', 'http://127.0.0.1:5000')
      .option('--json', 'print JSON'),
    'the node (a user with the admin role)',
  ).action(async (ref: string, opts: { node: string; json?: boolean }) => {
      await (await import('./verify-image.ts')).verifyImageCommand(ref, opts);
    });
  withRegistryAccess(
    program
      .command('status')
      .description("a running node's disk use against its quota and free-space mark, pins, last GC and scrub, peers")
      .option('--node <url>', 'the node to ask', 'http://127.0.0.1:5000')
      .option('--cluster', 'one line per node of the cluster (disk, images, version), gathered through the peers')
      .option('--json', 'print JSON'),
    'the node (a user with the admin role)',
  ).action(async (opts: { node: string; json?: boolean; cluster?: boolean }) => {
      if (opts.cluster) await (await import('./views.ts')).clusterStatusCommand(opts);
      else await (await import('./lifecycle.ts')).statusCommand(opts);
    });
  program
    .command('fsck')
    .description("check a stopped node's store: blob bytes against digests, records against files, links, tags, pins, sessions")
    .requiredOption('--data <dir>', 'the data directory of a stopped node')
    .option('--repair', 'fix what is found: remove bad blobs and dangling records (each action is printed)')
    .option('--fast', 'do not re-hash blob bytes (records, files and sizes only)')
    .option('--json', 'print the report as JSON')
    .action(async (opts: { data: string; repair?: boolean; fast?: boolean; json?: boolean }) => {
      const code = await (await import('./lifecycle.ts')).fsckCommand(opts);
      if (code !== 0) throw new ExitStatus(code);
    });
}

/** pin, unpin, pins: images a node keeps whatever eviction and GC would take (src/life/pins.ts). */
function addPinCommands(program: Command): void {
  const target = (cmd: Command): Command =>
    withRegistryAccess(
      cmd
        .option('--node <url>', 'a running node, e.g. http://127.0.0.1:5000')
        .option('--data <dir>', 'the data directory of a stopped node')
        .option('--json', 'print the result as JSON'),
      'the node',
    );
  target(
    program
      .command('pin')
      .description('pin images on a node by digest (a tag is resolved to the digest it points at there)')
      .argument('<ref...>', 'images, e.g. registry.local:5000/team/app:1.4, nginx:1.27 or nginx@sha256:...')
      .option('--reason <text>', 'why the image is kept (shown by shoal pins)'),
  ).action(async (refs: string[], opts: PinFlags) => {
    await (await import('./pins.ts')).pinCommand(refs, opts);
  });
  target(
    program
      .command('unpin')
      .description('remove pins (by tag: the pin of the digest the tag points at)')
      .argument('<ref...>', 'images, as for pin'),
  ).action(async (refs: string[], opts: PinFlags) => {
    await (await import('./pins.ts')).unpinCommand(refs, opts);
  });
  target(program.command('pins').description("list a node's pins: repository, digest, reason, created")).action(async (opts: PinFlags) => {
    await (await import('./pins.ts')).pinsCommand(opts);
  });
}

/** ls, prefetch: what nodes hold, and warming images on them (cli/views.ts). */
function addViewCommands(program: Command): void {
  withRegistryAccess(
    program
      .command('ls')
      .description("list a node's images: repository, tags, digest, size, platforms, pin, last pulled")
      .argument('[prefix]', 'only repositories starting with this, e.g. registry.local-5000/team/')
      .option('--node <url>', 'a running node, e.g. http://127.0.0.1:5000')
      .option('--data <dir>', 'the data directory of a stopped node')
      .option('--json', 'print JSON'),
    'the node (a user with the admin role)',
  ).action(async (prefix: string | undefined, opts: LsFlags) => {
    await (await import('./views.ts')).lsCommand(prefix, opts);
  });
  withRegistryAccess(
    program
      .command('prefetch')
      .description('warm images on a node, or on every node (--all-nodes): each platform of an index, each layer from the seed once')
      .argument('<ref...>', 'images, e.g. registry.local:5000/team/app:1.4 or nginx@sha256:...')
      .option('--node <url>', 'the node to ask', 'http://127.0.0.1:5000')
      .option('--all-nodes', "also every peer of the node, at once")
      .option('--pin', 'pin the images where they were fetched')
      .option('--json', 'print progress and the result as JSON lines'),
    'the node (a user with the admin role)',
  ).action(async (refs: string[], opts: PrefetchFlags) => {
    await (await import('./views.ts')).prefetchCommand(refs, opts);
  });
}

/** Runs the CLI and returns the process exit code. */
export async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    if (err instanceof ExitStatus) return err.code;
    if (err instanceof BundleRefusedError) {
      process.stderr.write(`shoal: bundle refused: ${err.message}\n`);
      return BUNDLE_REFUSED_EXIT_CODE;
    }
    if (err instanceof ConfigError || err instanceof UsageError) {
      process.stderr.write(`shoal: ${err.message}\n`);
      return 2;
    }
    process.stderr.write(`shoal: ${(err as Error).message}\n`);
    return 1;
  }
}
