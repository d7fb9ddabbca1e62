// One structured logger for the whole project: pino JSON lines on stderr, quiet by default.
//
// The threshold is ours, checked before pino is touched, so a level below it costs one comparison
// and `setLogLevel` reaches every logger already created (pino children copy their parent's level
// when made, and most of ours are made at start-up, before the CLI parses --verbose). Fields are only
// converted by callers that log; the data plane never logs per request.
import { pino, type DestinationStream } from 'pino';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
const rank: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

let threshold = rank[(process.env.VHOST_USER_LOG as LogLevel) ?? 'warn'] ?? rank.warn;

// Synchronous stderr writes: a daemon that exits right after logging (a signal, a fatal error)
// must not lose its last lines.
const stderr = pino.destination({ dest: 2, sync: true });
let sink: (line: string) => void = (line) => void stderr.write(line + '\n');

/** pino writes each record as one string ending in a newline; tests and embedders get the line. */
const destination: DestinationStream = {
  write(record: string): void {
    sink(record.endsWith('\n') ? record.slice(0, -1) : record);
  },
};

const root = pino(
  {
    level: 'debug',
    base: undefined,
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  },
  destination,
);

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

/** Errors become their message and BigInts their decimal string: both read well in one JSON line. */
function plainFields(fields: Record<string, unknown>): Record<string, unknown> {
  const plain: Record<string, unknown> = {};
  for (const key of Object.keys(fields)) {
    const value = fields[key];
    plain[key] = value instanceof Error ? value.message : typeof value === 'bigint' ? value.toString() : value;
  }
  return plain;
}

class ComponentLogger implements Logger {
  private readonly pino: pino.Logger;

  constructor(private readonly component: string) {
    this.pino = root.child({ component });
  }

  error(msg: string, fields?: Record<string, unknown>): void {
    if (rank.error <= threshold) this.pino.error(fields ? plainFields(fields) : {}, msg);
  }

  warn(msg: string, fields?: Record<string, unknown>): void {
    if (rank.warn <= threshold) this.pino.warn(fields ? plainFields(fields) : {}, msg);
  }

  info(msg: string, fields?: Record<string, unknown>): void {
    if (rank.info <= threshold) this.pino.info(fields ? plainFields(fields) : {}, msg);
  }

  debug(msg: string, fields?: Record<string, unknown>): void {
    if (rank.debug <= threshold) this.pino.debug(fields ? plainFields(fields) : {}, msg);
  }

  child(component: string): Logger {
    return new ComponentLogger(`${this.component}.${component}`);
  }
}

export function createLogger(component: string): Logger {
  return new ComponentLogger(component);
}
