import { createSocket } from 'node:dgram';

/** The mDNS group and port (RFC 6762). */
export const MDNS_GROUP = '224.0.0.251';
export const MDNS_PORT = 5353;

/**
 * Whether this host can send to the mDNS group: a UDP socket is connected to it, which asks the kernel for a
 * route and sends nothing. Returns the error code when there is no route (ENETUNREACH: no default route and no
 * 224.0.0.0/4 route, as in a fresh network namespace), undefined when there is one. mDNS without a route is
 * silent: it neither finds peers nor says why.
 */
export async function multicastRouteProblem(opts: { signal?: AbortSignal } = {}): Promise<string | undefined> {
  const socket = createSocket({ type: 'udp4', reuseAddr: true });
  try {
    return await new Promise<string | undefined>((resolve) => {
      const onAbort = (): void => resolve(undefined);
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
      socket.connect(MDNS_PORT, MDNS_GROUP, (err?: Error) => {
        opts.signal?.removeEventListener('abort', onAbort);
        resolve(err ? ((err as NodeJS.ErrnoException).code ?? err.message) : undefined);
      });
    });
  } finally {
    socket.close();
  }
}
