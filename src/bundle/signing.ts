/**
 * ed25519 signatures of the bundle manifest. Keys are PEM files as OpenSSL writes them:
 *
 *   openssl genpkey -algorithm ed25519 -out bundle-key.pem
 *   openssl pkey -in bundle-key.pem -pubout -out bundle-key.pub.pem
 *
 * The signature file (`shoal-bundle.sig`) is JSON: the algorithm, the key id (first 16 hex of the sha256 of
 * the public key's DER), the public key (so a reader can say who signed even without trusting it) and the
 * base64 signature of the exact bytes of shoal-bundle.json.
 */
import { createHash, createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { BundleRefusedError } from './errors.ts';
import { BUNDLE_SIGNATURE_FILE } from './format.ts';

export interface BundleSignature {
  algorithm: 'ed25519';
  keyId: string;
  /** base64 of the public key's SPKI DER. */
  publicKey: string;
  /** base64 of the signature over the bytes of shoal-bundle.json. */
  signature: string;
}

export interface SigningKey {
  privateKey: KeyObject;
  publicKey: KeyObject;
  keyId: string;
}

export interface TrustedKey {
  publicKey: KeyObject;
  keyId: string;
  /** Where it came from, for messages. */
  file: string;
}

/** First 16 hex of sha256(SPKI DER): short enough to read out over the phone. */
export function keyIdOf(publicKey: KeyObject): string {
  return createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('hex').slice(0, 16);
}

/** Reads an ed25519 private key (PEM, PKCS#8). Throws a plain Error that says what the file should be. */
export async function loadSigningKey(file: string): Promise<SigningKey> {
  let text: Buffer;
  try {
    text = await readFile(file);
  } catch (err) {
    throw new Error(`cannot read signing key ${file}: ${(err as Error).message}`);
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(text);
  } catch {
    throw new Error(`${file} is not a PEM private key; make one with: openssl genpkey -algorithm ed25519 -out ${file}`);
  }
  if (privateKey.asymmetricKeyType !== 'ed25519') throw new Error(`${file} is a ${privateKey.asymmetricKeyType} key; bundles are signed with ed25519 keys`);
  const publicKey = createPublicKey(privateKey);
  return { privateKey, publicKey, keyId: keyIdOf(publicKey) };
}

/** Reads an ed25519 public key (PEM, SPKI); a private key file is accepted too (its public half is used). */
export async function loadTrustedKey(file: string): Promise<TrustedKey> {
  let text: Buffer;
  try {
    text = await readFile(file);
  } catch (err) {
    throw new Error(`cannot read trusted key ${file}: ${(err as Error).message}`);
  }
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey(text);
  } catch {
    throw new Error(`${file} is not a PEM public key; make it from the signing key with: openssl pkey -in KEY.pem -pubout -out ${file}`);
  }
  if (publicKey.asymmetricKeyType !== 'ed25519') throw new Error(`${file} is a ${publicKey.asymmetricKeyType} key; bundles are signed with ed25519 keys`);
  return { publicKey, keyId: keyIdOf(publicKey), file };
}

/** The signature file's bytes for a bundle manifest. */
export function signBundleManifest(manifestBytes: Uint8Array, key: SigningKey): Buffer {
  const sig: BundleSignature = {
    algorithm: 'ed25519',
    keyId: key.keyId,
    publicKey: key.publicKey.export({ type: 'spki', format: 'der' }).toString('base64'),
    signature: sign(null, manifestBytes, key.privateKey).toString('base64'),
  };
  return Buffer.from(JSON.stringify(sig, null, 2) + '\n');
}

export interface SignatureCheck {
  /** Key id of the signer as the signature names it. */
  keyId: string;
  /** True when it verified with one of the trusted keys (false when no keys were given). */
  trusted: boolean;
  /** True when the signature is valid for the public key it carries (says nothing about trust). */
  valid: boolean;
}

/**
 * Checks a signature file against the manifest bytes. With trusted keys: refuses unless one of them made
 * the signature. Without: reports who signed, and whether the signature is intact.
 */
export function checkBundleSignature(sigBytes: Uint8Array, manifestBytes: Uint8Array, trusted: TrustedKey[]): SignatureCheck {
  let sig: Partial<BundleSignature>;
  try {
    sig = JSON.parse(Buffer.from(sigBytes).toString('utf8')) as Partial<BundleSignature>;
  } catch {
    throw new BundleRefusedError('signature', `${BUNDLE_SIGNATURE_FILE} is not valid JSON: the signature is damaged`);
  }
  if (sig.algorithm !== 'ed25519' || typeof sig.signature !== 'string' || typeof sig.publicKey !== 'string') {
    throw new BundleRefusedError('signature', `${BUNDLE_SIGNATURE_FILE} is not an ed25519 signature Shoal understands`);
  }
  const signature = Buffer.from(sig.signature, 'base64');
  let carried: KeyObject | undefined;
  try {
    carried = createPublicKey({ key: Buffer.from(sig.publicKey, 'base64'), format: 'der', type: 'spki' });
  } catch {
    carried = undefined;
  }
  const keyId = carried ? keyIdOf(carried) : String(sig.keyId ?? 'unknown');
  const valid = carried !== undefined && carried.asymmetricKeyType === 'ed25519' && verify(null, manifestBytes, carried, signature);
  if (trusted.length === 0) return { keyId, trusted: false, valid };
  const by = trusted.find((k) => verify(null, manifestBytes, k.publicKey, signature));
  if (!by) {
    const names = trusted.map((k) => `${k.keyId} (${k.file})`).join(', ');
    throw new BundleRefusedError(
      'signature',
      valid
        ? `the bundle is signed by key ${keyId}, which is not trusted (trusted: ${names}); nothing was imported`
        : `the bundle's signature does not verify with any trusted key (${names}): the bundle was altered or signed by someone else; nothing was imported`,
      { keyId },
    );
  }
  return { keyId: by.keyId, trusted: true, valid: true };
}
