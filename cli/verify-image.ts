import { parseReference } from '../src/oci/index.ts';
import { ExitStatus, UsageError } from './errors.ts';
import type { RegistryAccessFlags } from './bundle-options.ts';
import { nodeRequest } from './lifecycle.ts';

/** What `GET /shoal/policy/verify` answers. */
interface PolicyVerdict {
  policy: boolean;
  image: string;
  digest?: string;
  mode?: string;
  result?: string;
  served: boolean;
  rule?: string;
  reason?: string;
  message: string;
  policyFile?: string;
  signatures?: Array<{ format: string; artifact: string; outcome: string; key?: string; detail: string }>;
}

/** Exit code of `shoal verify-image` when the node refuses the image. */
export const IMAGE_REFUSED_EXIT_CODE = 1;

/** `shoal verify-image REF --node URL`: the node's verdict on one image under its signature policy, explained. */
export async function verifyImageCommand(ref: string, flags: { node: string; json?: boolean } & RegistryAccessFlags): Promise<void> {
  let parsed;
  try {
    parsed = parseReference(ref);
  } catch (err) {
    throw new UsageError(`${JSON.stringify(ref)} is not an image reference: ${(err as Error).message}`);
  }
  const reference = parsed.digest ?? parsed.tag ?? 'latest';
  const query = new URLSearchParams({ repository: parsed.repository, reference, ns: parsed.registry });
  const v = (await nodeRequest(flags.node, `/shoal/policy/verify?${query}`, 'GET', flags)) as PolicyVerdict;
  if (flags.json) process.stdout.write(JSON.stringify(v, null, 2) + '\n');
  else {
    // The sentence first: containerd's image verifier shows the first line as its reason.
    const lines = [v.message, `image: ${v.image}${v.digest ? `@${v.digest}` : ''}`];
    if (v.policy) {
      lines.push(`policy: ${v.policyFile} (mode ${v.mode})`, `rule: ${v.rule}`, `verdict: ${v.result} (${v.reason})${v.served ? '' : ': not served'}`);
      for (const s of v.signatures ?? []) lines.push(`  ${s.format} ${s.artifact}: ${s.outcome}: ${s.detail}`);
      if ((v.signatures ?? []).length === 0 && v.reason !== 'rejected' && v.reason !== 'accept-anything') lines.push('  no signature found');
    }
    process.stdout.write(lines.join('\n') + '\n');
  }
  if (!v.served) throw new ExitStatus(IMAGE_REFUSED_EXIT_CODE);
}
