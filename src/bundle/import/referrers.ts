/**
 * Which manifests of a bundle refer to which (signatures, SBOMs, attestations: manifests with a `subject`),
 * parsed once per import and looked up by subject.
 */
import { effectiveArtifactType, parseManifest, type ParsedManifest } from '../../oci/index.ts';

export interface BundledReferrer {
  digest: string;
  mediaType: string;
  size: number;
  artifactType?: string;
  subject: string;
  /** Where the manifest stands among the bundle's manifests. */
  position: number;
}

export class ReferrerIndex {
  private readonly bySubject = new Map<string, BundledReferrer[]>();
  private readonly byPosition: BundledReferrer[] = [];

  /** `manifests`: the bundle's manifests by digest, in bundle order; one that does not parse refers to nothing. */
  constructor(manifests: ReadonlyMap<string, Buffer>) {
    let position = 0;
    for (const [digest, bytes] of manifests) {
      const at = position++;
      let parsed: ParsedManifest;
      try {
        parsed = parseManifest(bytes, undefined);
      } catch {
        continue;
      }
      if (!parsed.subject) continue;
      const entry: BundledReferrer = { digest, mediaType: parsed.mediaType, size: bytes.length, artifactType: effectiveArtifactType(parsed), subject: parsed.subject.digest, position: at };
      this.byPosition[at] = entry;
      const list = this.bySubject.get(entry.subject);
      if (list) list.push(entry);
      else this.bySubject.set(entry.subject, [entry]);
    }
  }

  /** The manifests whose subject is `digest`, in bundle order. */
  of(digest: string): readonly BundledReferrer[] {
    return this.bySubject.get(digest) ?? [];
  }

  /**
   * Grows `members` (the digests of an image's manifests) by every referrer of a member, and theirs. `take` is
   * given each referrer found and returns the digests it brought in (itself, and child manifests of its own).
   * Referrers come in the order of a scan of the bundle's manifests in bundle order, repeated until a scan finds
   * nothing more: a referrer standing before its subject is found by the next scan.
   */
  walk(members: Set<string>, take: (referrer: BundledReferrer) => Iterable<string>): void {
    let scan: number[] = [];
    let nextScan: number[] = [];
    let cursor = -1;
    /** A new member's referrers: found later in this scan when they stand after the cursor, else by the next. */
    const reach = (digest: string): void => {
      for (const r of this.of(digest)) {
        if (members.has(r.digest)) continue;
        if (r.position > cursor) insertSorted(scan, r.position);
        else nextScan.push(r.position);
      }
    };
    const join = (digest: string): void => {
      if (members.has(digest)) return;
      members.add(digest);
      reach(digest);
    };
    for (const digest of members) reach(digest);
    while (scan.length > 0) {
      for (let next = scan.shift(); next !== undefined; next = scan.shift()) {
        cursor = next;
        const referrer = this.byPosition[next]!;
        if (members.has(referrer.digest)) continue;
        for (const digest of take(referrer)) join(digest);
        join(referrer.digest);
      }
      scan = nextScan.sort((a, b) => a - b);
      nextScan = [];
      cursor = -1;
    }
  }
}

function insertSorted(list: number[], value: number): void {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (list[mid]! < value) lo = mid + 1;
    else hi = mid;
  }
  list.splice(lo, 0, value);
}
