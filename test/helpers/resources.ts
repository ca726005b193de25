/** Clients and servers a suite created, released in `after` (newest first) even when a test failed. */
export class Resources {
  private readonly closers: Array<() => Promise<unknown>> = [];

  /** Takes `thing` to close (or stop) at release; returns it. */
  add<T extends { close?: () => Promise<unknown>; stop?: () => Promise<unknown> }>(thing: T): T {
    this.closers.push(() => (thing.close ? thing.close() : thing.stop!()));
    return thing;
  }

  async release(): Promise<void> {
    for (const close of this.closers.reverse()) await close().catch(() => undefined);
  }
}
