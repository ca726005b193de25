import { createHash } from 'node:crypto';

/**
 * Rendezvous (highest random weight) hashing: every node computes the same order of candidates for a key
 * without talking to anyone, and when one leaves only its keys move.
 */
export function rendezvousOrder(key: string, candidates: string[]): string[] {
  const weight = (id: string): string => createHash('sha256').update(key).update('\0').update(id).digest('hex');
  return [...candidates].map((id) => ({ id, w: weight(id) })).sort((a, b) => (a.w < b.w ? 1 : a.w > b.w ? -1 : 0)).map((x) => x.id);
}
