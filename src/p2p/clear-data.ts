import type { ConnectionEncrypter, MessageStream, PeerId, SecureConnectionOptions, SecuredConnection, StreamMuxerFactory } from '@libp2p/interface';
import { publicKeyFromProtobuf } from '@libp2p/crypto/keys';
import { peerIdFromPublicKey } from '@libp2p/peer-id';
import { lpStream } from '@libp2p/utils';
import { clusterNoise } from './cluster-key.ts';

/**
 * The connection security of `p2pClearData`: the same Noise XX handshake as the default (cluster key as its
 * prologue, each side proving its peer id), after which the connection carries its bytes as they are, without the
 * per-message ChaCha20-Poly1305 layer. A node without the cluster key still fails the handshake and opens nothing;
 * what changes is that the bytes between nodes can be read, and, by someone able to inject into a TCP connection
 * on the path, altered. Blobs and manifests stay safe from alteration (every byte is checked against its digest);
 * answers that carry no digest of their own (tags, inventories) do not. Offered before Noise: two nodes that both
 * enable it use it; a node that does not, negotiates Noise as usual. On such a connection the data channel's bytes
 * go unsealed too (data-channel.ts).
 */
export const CLEAR_DATA_PROTOCOL = '/shoal/noise-handshake-clear-data/1';

/** Whether a connection carries its bytes in the clear (both ends chose `p2pClearData`): its data channel may too. */
export function carriesClearData(conn: { encryption?: string }): boolean {
  return conn.encryption === CLEAR_DATA_PROTOCOL;
}

/** Largest Noise handshake message (the Noise spec's limit). */
const NOISE_MAX = 65535;

function uint16BEEncode(value: number): Uint8Array {
  return Uint8Array.of(value >> 8, value & 0xff);
}
uint16BEEncode.bytes = 2;

function uint16BEDecode(data: Uint8Array | { getUint16(i: number): number; length: number }): number {
  if (data.length < 2) throw new RangeError('Could not decode int16BE');
  return data instanceof Uint8Array ? (data[0]! << 8) + data[1]! : data.getUint16(0);
}
uint16BEDecode.bytes = 2;

/** The parts of the Noise encrypter used here (its handshake, run exactly as for an encrypted connection). */
interface NoiseHandshaker {
  performHandshakeInitiator(conn: unknown, privateKey: unknown, log: unknown, remoteKey: unknown, options?: SecureConnectionOptions): Promise<Handshake>;
  performHandshakeResponder(conn: unknown, privateKey: unknown, log: unknown, remoteKey: unknown, options?: SecureConnectionOptions): Promise<Handshake>;
  getStreamMuxer(protocols?: string[]): StreamMuxerFactory | undefined;
}
interface Handshake {
  payload: { identityKey: Uint8Array; extensions?: { streamMuxers?: string[] } };
}
interface Components {
  privateKey: unknown;
  logger: { forComponent(name: string): unknown };
}

export function clusterClearData(clusterKey: Uint8Array): (components: Components) => ConnectionEncrypter {
  const makeNoise = clusterNoise(clusterKey) as unknown as (components: Components) => NoiseHandshaker;
  return (components) => {
    const noise = makeNoise(components);
    const log = components.logger.forComponent('shoal:clear-data') as { newScope(n: string): unknown };
    const secure = async (connection: MessageStream, initiator: boolean, options?: SecureConnectionOptions): Promise<SecuredConnection> => {
      const wrapped = lpStream(connection, { lengthEncoder: uint16BEEncode, lengthDecoder: uint16BEDecode, maxDataLength: NOISE_MAX });
      const remoteKey = (options?.remotePeer as (PeerId & { publicKey?: unknown }) | undefined)?.publicKey;
      const handshake = initiator
        ? await noise.performHandshakeInitiator(wrapped, components.privateKey, log, remoteKey, options)
        : await noise.performHandshakeResponder(wrapped, components.privateKey, log, remoteKey, options);
      const remotePeer = peerIdFromPublicKey(publicKeyFromProtobuf(handshake.payload.identityKey));
      return {
        connection: wrapped.unwrap(),
        remoteExtensions: handshake.payload.extensions,
        remotePeer,
        streamMuxer: options?.skipStreamMuxerNegotiation === true ? undefined : noise.getStreamMuxer(handshake.payload.extensions?.streamMuxers),
      };
    };
    return {
      protocol: CLEAR_DATA_PROTOCOL,
      secureOutbound: (connection, options) => secure(connection, true, options),
      secureInbound: (connection, options) => secure(connection, false, options),
    };
  };
}
