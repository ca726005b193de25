/**
 * The control protocol (`/shoal/control/1.0.0`): what one node asks another about the node as a whole.
 *   -> {"op":"status"}                                  <- {"done":true,"result":{...the node's summary}}
 *   -> {"op":"prefetch","refs":[...],"pin":bool}        <- {"event":{...}} per step, then {"done":true,"result":{...}}
 * An answer that fails is {"done":true,"error":"..."}. Only members of the cluster (the private-network key) can
 * open it; a request is bounded (refs, their length) and answered with frames of at most MAX_CONTROL_FRAME bytes.
 */
import type { Stream } from '@libp2p/interface';
import type { IoOptions } from '../store/index.ts';
import { framed, readJson, writeJson, ProtocolViolation } from './wire.ts';

/** Largest control frame: a node's summary or one progress event. */
export const MAX_CONTROL_FRAME = 256 * 1024;
import { MAX_PREFETCH_REFS } from './types.ts';

export { MAX_PREFETCH_REFS };
const MAX_REF_LENGTH = 512;

export type ControlRequest = { op: 'status' } | { op: 'prefetch'; refs: string[]; pin: boolean };

export interface ControlHandlers {
  status(opts: IoOptions): Promise<Record<string, unknown>>;
  prefetch(refs: string[], pin: boolean, progress: (event: Record<string, unknown>) => void, opts: IoOptions): Promise<Record<string, unknown>>;
}

/** Checks a request's shape; a ProtocolViolation when it is not one. */
export function parseControlRequest(msg: Record<string, unknown>): ControlRequest {
  if (msg.op === 'status') return { op: 'status' };
  if (msg.op === 'prefetch') {
    const refs = msg.refs;
    if (!Array.isArray(refs) || refs.length === 0 || refs.length > MAX_PREFETCH_REFS || refs.some((r) => typeof r !== 'string' || r.length === 0 || r.length > MAX_REF_LENGTH)) {
      throw new ProtocolViolation('invalid-message', `a prefetch request carries 1 to ${MAX_PREFETCH_REFS} references of at most ${MAX_REF_LENGTH} characters`);
    }
    return { op: 'prefetch', refs: refs as string[], pin: msg.pin === true };
  }
  throw new ProtocolViolation('invalid-message', `unknown control operation ${JSON.stringify(String(msg.op).slice(0, 40))}`);
}

/** Serves one control stream. */
export async function serveControl(stream: Stream, handlers: ControlHandlers, opts: IoOptions = {}): Promise<void> {
  const lp = framed(stream, MAX_CONTROL_FRAME);
  try {
    const request = parseControlRequest(await readJson(lp, { signal: AbortSignal.timeout(10_000) }));
    // Events are written in order; a slow reader holds the next one back, not the work.
    let writing: Promise<void> = Promise.resolve();
    const send = (value: unknown): Promise<void> => (writing = writing.then(() => writeJson(lp, value, opts)).catch(() => undefined));
    let answer: Record<string, unknown>;
    try {
      const result = request.op === 'status' ? await handlers.status(opts) : await handlers.prefetch(request.refs, request.pin, (event) => void send({ event }), opts);
      answer = { done: true, result };
    } catch (err) {
      answer = { done: true, error: (err as Error).message.slice(0, 1000) };
    }
    await writing;
    await writeJson(lp, answer, opts);
    await stream.close().catch(() => undefined);
  } catch (err) {
    stream.abort(err as Error);
  }
}

/** Asks a peer over an open control stream; `onEvent` gets each progress event; resolves with the result. */
export async function askControl(stream: Stream, request: ControlRequest, onEvent: (event: Record<string, unknown>) => void = () => undefined, opts: IoOptions = {}): Promise<Record<string, unknown>> {
  const lp = framed(stream, MAX_CONTROL_FRAME);
  try {
    await writeJson(lp, request, opts);
    for (;;) {
      const msg = await readJson(lp, opts);
      if (msg.done === true) {
        if (typeof msg.error === 'string') throw new Error(msg.error);
        if (typeof msg.result !== 'object' || msg.result === null || Array.isArray(msg.result)) throw new ProtocolViolation('invalid-message', 'a control answer without a result');
        return msg.result as Record<string, unknown>;
      }
      if (typeof msg.event === 'object' && msg.event !== null && !Array.isArray(msg.event)) onEvent(msg.event as Record<string, unknown>);
    }
  } finally {
    await stream.close().catch(() => undefined);
  }
}
