import { pino, type Logger } from 'pino';
import type { LogLevel } from './config/index.ts';

/** JSON logs to stdout (or a given destination), one object per line. */
export function createLogger(level: LogLevel, destination?: NodeJS.WritableStream): Logger {
  return pino({ level, base: { service: 'shoal' }, timestamp: pino.stdTimeFunctions.isoTime }, destination ?? pino.destination({ sync: false }));
}
