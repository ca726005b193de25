import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import type { PrivateKey } from '@libp2p/interface';
import { randomBytes } from 'node:crypto';

/** The node's peer identity: an Ed25519 key kept in the data dir, so the peer id survives restarts. */
export async function loadOrCreateIdentity(path: string): Promise<PrivateKey> {
  const existing = await readFile(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (existing) {
    try {
      return privateKeyFromProtobuf(existing);
    } catch (err) {
      throw new Error(`peer identity ${path} is not a valid libp2p private key (${(err as Error).message}); move it away to create a new identity`);
    }
  }
  const key = await generateKeyPair('Ed25519');
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.tmp`;
  await writeFile(tmp, privateKeyToProtobuf(key), { mode: 0o600 });
  await chmod(tmp, 0o600);
  await rename(tmp, path);
  return key;
}

const PSK_HEADER = '/key/swarm/psk/1.0.0/';

/**
 * Reads a cluster key file: 32 bytes. Two forms are accepted, both as `shoal cluster-key` and libp2p write
 * them and as people paste them: the private-network format (three lines: `/key/swarm/psk/1.0.0/`, `/base16/`,
 * 64 hex characters), or the 64 hex characters alone (e.g. a Secret made with `kubectl create secret generic
 * --from-literal=cluster.key=<hex>`).
 */
export async function readClusterKey(path: string): Promise<Uint8Array> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read the cluster key ${path}: ${(err as Error).message}`);
  }
  const key = parseClusterKey(text);
  if (!key) {
    throw new Error(
      `cluster key ${path} is neither a private-network key (three lines: ${PSK_HEADER}, /base16/, 64 hex characters) nor 64 hex characters; ` +
        `create one with: shoal cluster-key --out ${path}`,
    );
  }
  return key;
}

/** The 32 key bytes of a cluster key file's text (either form), or undefined when it is neither. */
export function parseClusterKey(text: string): Uint8Array | undefined {
  const lines = text.trim().split(/\r?\n/).map((l) => l.trim());
  const HEX = /^[0-9a-fA-F]{64}$/;
  if (lines.length === 3 && lines[0] === PSK_HEADER && lines[1] === '/base16/' && HEX.test(lines[2]!)) return Buffer.from(lines[2]!, 'hex');
  if (lines.length === 1 && HEX.test(lines[0]!)) return Buffer.from(lines[0]!, 'hex');
  return undefined;
}

/** Writes a new random cluster key; every node of a cluster needs the same file. */
export async function writeClusterKey(path: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, `${PSK_HEADER}\n/base16/\n${randomBytes(32).toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
}
