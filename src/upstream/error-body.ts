/**
 * What a registry says when it refuses: the OCI error body (`{"errors":[{"code","message","detail"}]}`), or
 * whatever text it sent instead. One reading for every client of a registry (seeds, bundle sources and targets,
 * the CLI talking to a node).
 */

/** Error bodies are read up to this many bytes; the rest is dropped. */
export const MAX_ERROR_BODY_BYTES = 16 * 1024;

function textOf(body: Buffer | string): string {
  return (typeof body === 'string' ? body : body.toString('utf8')).trim();
}

function firstError(text: string): { code?: unknown; message?: unknown } | undefined {
  try {
    const parsed = JSON.parse(text) as { errors?: unknown };
    const first = Array.isArray(parsed?.errors) ? (parsed.errors[0] as unknown) : undefined;
    return typeof first === 'object' && first !== null ? (first as { code?: unknown; message?: unknown }) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A short message from an error body: `CODE: message` of its first OCI error, or else the start of the text
 * (whitespace folded, at most 200 characters). Empty for an empty body.
 */
export function errorMessageOf(body: Buffer | string): string {
  const text = textOf(body);
  if (!text) return '';
  const first = firstError(text);
  if (first && (typeof first.code === 'string' || typeof first.message === 'string')) {
    return [first.code, first.message].filter((x): x is string => typeof x === 'string' && x !== '').join(': ');
  }
  return text.replace(/\s+/g, ' ').slice(0, 200);
}

/** The OCI error code of an error body's first error, if it has one. */
export function errorCodeOf(body: Buffer | string): string | undefined {
  const code = firstError(textOf(body))?.code;
  return typeof code === 'string' ? code : undefined;
}

/** `; the registry said "..."` for a message, nothing for an empty one. */
export function registrySaid(message: string): string {
  return message ? `; the registry said "${message}"` : '';
}

/** A response body as undici hands it out. */
export interface ErrorBodyStream extends AsyncIterable<unknown> {
  on(event: 'error', listener: (err: Error) => void): unknown;
  destroy(): void;
}

/**
 * Reads at most MAX_ERROR_BODY_BYTES of an error response (dropping the rest) and returns its message as
 * `errorMessageOf` says it. A body that fails while being read gives an empty message.
 */
export async function readErrorMessage(body: ErrorBodyStream): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of body) {
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.from(chunk as Uint8Array);
      chunks.push(buf);
      size += buf.length;
      if (size >= MAX_ERROR_BODY_BYTES) {
        body.on('error', () => undefined);
        body.destroy();
        break;
      }
    }
  } catch {
    return '';
  }
  return errorMessageOf(Buffer.concat(chunks).subarray(0, MAX_ERROR_BODY_BYTES));
}
