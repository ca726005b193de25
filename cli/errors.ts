/** A command line that cannot be carried out as written: exit code 2, message on stderr. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** A command that finished and wants a non-zero exit code without an error message (it printed its report). */
export class ExitStatus extends Error {
  override readonly name = 'ExitStatus';
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}
