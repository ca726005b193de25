import { createCipheriv, createDecipheriv, createHmac, randomBytes, type Cipher, type Decipher } from 'node:crypto';
import type { AbortOptions, ConnectionProtector, MessageStream, MultiaddrConnection } from '@libp2p/interface';
import { AbstractMultiaddrConnection, byteStream } from '@libp2p/utils';

/** Bytes of the random nonce each side sends before anything else. */
const NONCE_LENGTH = 16;

/**
 * The cluster's private network: every byte of a connection is encrypted with AES-256-CTR under a key derived
 * from the cluster key, each direction with the nonce its sender chose. A node without the key cannot get past
 * the Noise handshake that follows, so it cannot join. (Node's native cipher: the WebAssembly XSalsa20 of
 * @libp2p/pnet was measured here to exhaust its memory under load and crash the process.)
 */
export class ClusterKeyProtector implements ConnectionProtector {
  private readonly key: Buffer;
  private readonly timeoutMs: number;

  constructor(clusterKey: Uint8Array, timeoutMs = 5_000) {
    if (clusterKey.length !== 32) throw new Error('a cluster key has 32 bytes');
    // Domain separation: the same file never keys anything else the same way.
    this.key = createHmac('sha256', clusterKey).update('shoal private network v1').digest();
    this.timeoutMs = timeoutMs;
  }

  async protect(connection: MessageStream, options?: AbortOptions): Promise<MessageStream> {
    const signal = options?.signal ?? AbortSignal.timeout(this.timeoutMs);
    const bytes = byteStream(connection);
    const localNonce = randomBytes(NONCE_LENGTH);
    const [remote] = await Promise.all([bytes.read({ bytes: NONCE_LENGTH, signal }), bytes.write(localNonce, { signal })]);
    if (!remote || remote.byteLength !== NONCE_LENGTH) throw new Error('the peer closed the connection during the private-network handshake');
    const maConn = bytes.unwrap() as MultiaddrConnection;
    return new EncryptedConnection(
      maConn,
      createCipheriv('aes-256-ctr', this.key, localNonce),
      createDecipheriv('aes-256-ctr', this.key, Buffer.from(remote.subarray())),
    );
  }
}

/** A connection whose bytes pass through a stream cipher each way. */
class EncryptedConnection extends AbstractMultiaddrConnection {
  private readonly inner: MultiaddrConnection;
  private readonly outbound: Cipher;

  constructor(inner: MultiaddrConnection, outbound: Cipher, inbound: Decipher) {
    super({ remoteAddr: inner.remoteAddr, direction: inner.direction, log: inner.log.newScope('cluster-key') });
    this.inner = inner;
    this.outbound = outbound;
    inner.addEventListener('message', (evt) => {
      const data = evt.data;
      if (data instanceof Uint8Array) this.onData(inbound.update(data));
      else for (const piece of data) this.onData(inbound.update(piece));
    });
    inner.addEventListener('drain', () => this.onMuxerDrain());
    inner.addEventListener('close', (evt) => {
      if (evt.error == null) this.onTransportClosed();
      else if (evt.local) this.abort(evt.error);
      else this.onRemoteReset();
    });
  }

  async sendClose(options?: AbortOptions): Promise<void> {
    await this.inner.close(options);
  }

  sendData(data: Parameters<AbstractMultiaddrConnection['sendData']>[0]): ReturnType<AbstractMultiaddrConnection['sendData']> {
    let canSendMore = true;
    for (const piece of data) canSendMore = this.inner.send(this.outbound.update(piece));
    return { sentBytes: data.byteLength, canSendMore };
  }

  sendReset(err: Error): void {
    this.inner.abort(err);
  }

  sendPause(): void {
    this.inner.pause();
  }

  sendResume(): void {
    this.inner.resume();
  }
}

/** A connection protector factory, as libp2p's `connectionProtector` option takes it. */
export function clusterKeyProtector(clusterKey: Uint8Array): () => ConnectionProtector {
  return () => new ClusterKeyProtector(clusterKey);
}
