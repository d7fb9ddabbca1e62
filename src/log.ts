// One structured logger for the whole project: JSON lines on stderr, quiet by default.
// Levels below the threshold cost one comparison; fields are only built by callers that log.

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
const rank: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

let threshold = rank[(process.env.VHOST_USER_LOG as LogLevel) ?? 'warn'] ?? rank.warn;
let sink: (line: string) => void = (line) => process.stderr.write(line + '\n');

/** Set the global threshold (`--verbose` sets 'debug'). */
export function setLogLevel(level: LogLevel): void {
  threshold = rank[level];
}

export function logLevelEnabled(level: LogLevel): boolean {
  return rank[level] <= threshold;
}

/** Redirect log lines (tests capture them). Returns the previous sink. */
export function setLogSink(next: (line: string) => void): (line: string) => void {
  const previous = sink;
  sink = next;
  return previous;
}

export interface Logger {
  error(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  debug(msg: string, fields?: Record<string, unknown>): void;
  child(component: string): Logger;
}

export function createLogger(component: string): Logger {
  const emit = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => {
    if (rank[level] > threshold) return;
    const record: Record<string, unknown> = { time: new Date().toISOString(), level, component, msg };
    if (fields) {
      for (const key of Object.keys(fields)) {
        const value = fields[key];
        record[key] = value instanceof Error ? value.message : typeof value === 'bigint' ? value.toString() : value;
      }
    }
    sink(JSON.stringify(record));
  };
  return {
    error: (msg, fields) => emit('error', msg, fields),
    warn: (msg, fields) => emit('warn', msg, fields),
    info: (msg, fields) => emit('info', msg, fields),
    debug: (msg, fields) => emit('debug', msg, fields),
    child: (sub) => createLogger(`${component}.${sub}`),
  };
}
