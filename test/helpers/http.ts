import { request, type Agent } from 'undici';

/** A whole HTTP reply: status, headers (multi-valued ones joined) and body. */
export interface Reply {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

export interface HttpOptions {
  method?: string;
  headers?: Record<string, string>;
  body?: Buffer | string;
  signal?: AbortSignal;
}

/** An HTTP function over `agent` that reads every reply whole, with header and body timeouts. */
export function httpClient(agent: Agent, timeoutMs: number): (url: string, opts?: HttpOptions) => Promise<Reply> {
  return async (url, opts = {}) => {
    const res = await request(url, {
      method: (opts.method ?? 'GET') as 'GET',
      headers: opts.headers,
      body: opts.body,
      dispatcher: agent,
      signal: opts.signal,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
    });
    const body = Buffer.from(await res.body.arrayBuffer());
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : v;
    return { status: res.statusCode, headers, body };
  };
}
