/** A command line that cannot be carried out as written: exit code 2, message on stderr. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}
