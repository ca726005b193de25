import { createHmac } from 'node:crypto';
import { noise } from '@chainsafe/libp2p-noise';

/**
 * The cluster's private network, enforced inside the Noise handshake: both sides mix a value derived from the
 * cluster key into the handshake as its prologue, so a node without the same key fails the handshake before it
 * learns the other's identity or can open a stream, and no extra cipher pass costs throughput. (The separate
 * pre-shared-key layer of @libp2p/pnet was measured here: its WebAssembly XSalsa20 crashed the process under
 * load, and an AES layer in its place cost about a third of the peer throughput.)
 */
export function clusterNoise(clusterKey: Uint8Array): ReturnType<typeof noise> {
  if (clusterKey.length !== 32) throw new Error('a cluster key has 32 bytes');
  const prologue = createHmac('sha256', clusterKey).update('shoal private network v1').digest();
  return noise({ prologueBytes: prologue });
}
