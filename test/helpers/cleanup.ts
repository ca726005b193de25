/**
 * Runs every clean-up step of a test, in order, even when an earlier one fails, and then throws all the failures
 * together: one stuck process must not leave the others (or a temp dir) behind.
 */
export async function cleanUp(what: string, steps: Array<() => unknown>): Promise<void> {
  const errors: unknown[] = [];
  for (const step of steps) {
    try {
      await step();
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length) throw new AggregateError(errors, `${what} cleanup failed`);
}
