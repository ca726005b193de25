/**
 * The registry endpoint's TLS certificate and key, read from PEM files and read again when they change (a renewed
 * certificate is served to new connections without a restart). A pair that does not load (a key written before
 * its certificate, a typo) leaves the previous one in force until the files are right.
 */
import { readFile } from 'node:fs/promises';
import { createSecureContext, type SecureContextOptions } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { FileWatch } from './watch.ts';

export interface TlsLog {
  info(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface TlsPair {
  cert: Buffer;
  key: Buffer;
  /** Subject, SANs and expiry of the first certificate, for the log. */
  summary: { subject: string; altNames?: string; validTo: string };
}

/** Reads and checks a certificate and key pair; throws with what is wrong. */
export async function loadTlsPair(certFile: string, keyFile: string): Promise<TlsPair> {
  const read = async (f: string, what: string): Promise<Buffer> => {
    try {
      return await readFile(f);
    } catch (err) {
      throw new Error(`cannot read the TLS ${what} ${f}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  };
  const cert = await read(certFile, 'certificate');
  const key = await read(keyFile, 'key');
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    throw new Error(`${certFile} is not a PEM certificate: ${(err as Error).message}`);
  }
  try {
    // Fails when the key is not PEM or does not belong to the certificate.
    createSecureContext({ cert, key });
  } catch (err) {
    throw new Error(`the TLS key ${keyFile} does not load with the certificate ${certFile}: ${(err as Error).message}`);
  }
  return { cert, key, summary: { subject: x509.subject.replace(/\n/g, ', '), altNames: x509.subjectAltName, validTo: x509.validTo } };
}

/** A certificate pair kept up to date; `onChange` gets the new options to hand to `server.setSecureContext`. */
export class TlsFiles {
  private pair: TlsPair;
  private readonly watch: FileWatch;

  private constructor(
    readonly certFile: string,
    readonly keyFile: string,
    pair: TlsPair,
    log: TlsLog,
    onChange: (options: SecureContextOptions) => void,
    intervalMs?: number,
  ) {
    this.pair = pair;
    this.watch = new FileWatch(
      [certFile, keyFile],
      async () => {
        try {
          this.pair = await loadTlsPair(certFile, keyFile);
          onChange(this.options());
          log.info({ certificate: certFile, ...this.pair.summary }, 'TLS certificate reloaded');
        } catch (err) {
          log.error({ err: (err as Error).message }, 'TLS certificate not reloaded; the previous one stays in force');
        }
      },
      intervalMs,
    );
  }

  static async open(certFile: string, keyFile: string, log: TlsLog, onChange: (options: SecureContextOptions) => void, intervalMs?: number): Promise<TlsFiles> {
    const files = new TlsFiles(certFile, keyFile, await loadTlsPair(certFile, keyFile), log, onChange, intervalMs);
    await files.watch.start();
    return files;
  }

  options(): SecureContextOptions {
    return { cert: this.pair.cert, key: this.pair.key };
  }

  get summary(): TlsPair['summary'] {
    return this.pair.summary;
  }

  async close(): Promise<void> {
    await this.watch.stop();
  }
}
