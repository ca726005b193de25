/**
 * Fault injection for crash-safety tests: with `SHOAL_CRASH_AT=<step>` in its environment, the process kills
 * itself (SIGKILL, as a power cut would stop it) right after that step of a store change. Steps:
 *   commit:file       a new blob's file is durable and in place, its records not yet written
 *   commit:records    its records are written, the client not yet answered
 *   manifest:records  a manifest put (and its tag) is written, the client not yet answered
 *   tag:records       a tag move is written
 *   <reason>:records  a removal's records are gone, the file not yet (reason: deleted, evicted, collected, corrupt)
 *   <reason>:unlinked the file is gone too
 * Unset (always, outside tests) it does nothing.
 */
export function crashPoint(step: string): void {
  if (process.env.SHOAL_CRASH_AT === step) process.kill(process.pid, 'SIGKILL');
}
