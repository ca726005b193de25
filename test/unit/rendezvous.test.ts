/**
 * Rendezvous (highest random weight) ordering, src/source/rendezvous.ts: every node must compute the same order
 * for a digest without talking to anyone, the owners must spread over the candidates, and a candidate that leaves
 * must move only the keys it owned.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { rendezvousOrder } from '../../src/source/rendezvous.ts';

/** Peer-id-like strings (the real ones are base58 multihashes; the order must not depend on their shape). */
function peerIds(n: number, label = 'peer'): string[] {
  return Array.from({ length: n }, (_, i) => `12D3KooW${createHash('sha256').update(`${label}-${i}`).digest('base64url').slice(0, 44)}`);
}

function digests(n: number, label = 'blob'): string[] {
  return Array.from({ length: n }, (_, i) => `sha256:${createHash('sha256').update(`${label}-${i}`).digest('hex')}`);
}

/** Deterministic Fisher-Yates shuffle (a small LCG), so a failure can be reproduced. */
function shuffled<T>(items: T[], seed: number): T[] {
  const out = [...items];
  let s = seed >>> 0;
  for (let i = out.length - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

describe('rendezvousOrder', () => {
  it('gives the same order for a key whatever the order of the candidates', () => {
    const candidates = peerIds(7);
    for (const key of digests(200)) {
      const reference = rendezvousOrder(key, candidates);
      assert.equal(reference.length, candidates.length, 'every candidate appears once');
      assert.deepEqual([...reference].sort(), [...candidates].sort(), 'the order is a permutation of the candidates');
      for (let seed = 1; seed <= 5; seed++) {
        assert.deepEqual(rendezvousOrder(key, shuffled(candidates, seed * 7919 + key.length)), reference, `order of ${key} with shuffle ${seed}`);
      }
    }
  });

  it('does not change its input and handles 0 and 1 candidates', () => {
    const candidates = peerIds(4);
    const copy = [...candidates];
    rendezvousOrder(digests(1)[0]!, candidates);
    assert.deepEqual(candidates, copy, 'the candidates array is not reordered in place');
    assert.deepEqual(rendezvousOrder('sha256:00', []), []);
    assert.deepEqual(rendezvousOrder('sha256:00', ['only']), ['only']);
  });

  it('orders differently for different keys (not a fixed ranking of peers)', () => {
    const candidates = peerIds(5);
    const firstOrders = new Set(digests(100).map((k) => rendezvousOrder(k, candidates).join(',')));
    assert.ok(firstOrders.size > 20, `100 keys over 5 candidates gave only ${firstOrders.size} distinct orders`);
  });

  it('spreads the owners (first place) roughly evenly over the candidates', () => {
    const candidates = peerIds(8);
    const keys = digests(8_000);
    const owned = new Map(candidates.map((c) => [c, 0]));
    for (const key of keys) {
      const owner = rendezvousOrder(key, candidates)[0]!;
      owned.set(owner, owned.get(owner)! + 1);
    }
    const expected = keys.length / candidates.length; // 1000
    // Binomial(8000, 1/8): sd ~ 29.6; +-20 % is ~6.7 sd, never hit by chance but catches a skewed weight.
    for (const [peer, n] of owned) {
      assert.ok(Math.abs(n - expected) < expected * 0.2, `candidate ${peer.slice(-6)} owns ${n} of ${keys.length} keys (expected about ${expected}): ${JSON.stringify([...owned.values()])}`);
    }
  });

  it('spreads second places evenly too (the takeover order is fair as well)', () => {
    const candidates = peerIds(4);
    const keys = digests(4_000, 'second');
    const counts = new Map(candidates.map((c) => [c, 0]));
    for (const key of keys) {
      const second = rendezvousOrder(key, candidates)[1]!;
      counts.set(second, counts.get(second)! + 1);
    }
    for (const n of counts.values()) assert.ok(Math.abs(n - 1_000) < 200, `second places: ${JSON.stringify([...counts.values()])}`);
  });

  it('moves only the keys of a candidate that leaves, and keeps the relative order of the rest', () => {
    const candidates = peerIds(6);
    const leaving = candidates[2]!;
    const rest = candidates.filter((c) => c !== leaving);
    let moved = 0;
    const keys = digests(3_000, 'leave');
    for (const key of keys) {
      const before = rendezvousOrder(key, candidates);
      const after = rendezvousOrder(key, rest);
      assert.deepEqual(after, before.filter((c) => c !== leaving), `order of ${key} after ${leaving.slice(-6)} left is the old order without it`);
      if (before[0] === leaving) {
        moved++;
        assert.equal(after[0], before[1], 'a key of the leaving candidate goes to its next candidate');
      } else assert.equal(after[0], before[0], 'a key of another candidate stays put');
    }
    // About 1/6 of the keys were the leaver's (500 expected).
    assert.ok(moved > 350 && moved < 650, `${moved} of ${keys.length} keys moved`);
  });

  it('moves only keys to a candidate that joins', () => {
    const candidates = peerIds(5);
    const joining = peerIds(1, 'newcomer')[0]!;
    let taken = 0;
    const keys = digests(3_000, 'join');
    for (const key of keys) {
      const before = rendezvousOrder(key, candidates)[0];
      const after = rendezvousOrder(key, [...candidates, joining])[0];
      if (after !== before) {
        assert.equal(after, joining, 'a key changes owner only to the newcomer');
        taken++;
      }
    }
    assert.ok(taken > 350 && taken < 650, `the newcomer took ${taken} of ${keys.length} keys (about 1/6 expected)`);
  });

  it('is a pure function of the key and the candidate set (every node computes the same owner)', () => {
    // Three "nodes" see the same connected set in their own orders (self first, then peers by RTT).
    const ids = peerIds(3);
    const views = [
      [ids[0]!, ids[1]!, ids[2]!],
      [ids[1]!, ids[2]!, ids[0]!],
      [ids[2]!, ids[0]!, ids[1]!],
    ];
    for (const key of digests(300, 'agree')) {
      const owners = new Set(views.map((v) => rendezvousOrder(key, v)[0]));
      assert.equal(owners.size, 1, `nodes disagree on the owner of ${key}`);
    }
  });
});
