// Shared pieces of the command-line tools: size parsing, exit codes, version, fatal errors.
import { UsageError } from '../control/errors.js';
import type { DaemonLimits } from '../control/daemon.js';
import { packageVersion } from '../version.js';
import { INTERRUPT_GRACE_US, type PollMode } from '../dataplane/commands.js';

/** Exit codes: 0 success, 1 runtime failure, 2 bad usage (sysexits-like, kept small). */
export const ExitCode = { OK: 0, FAILURE: 1, USAGE: 2 } as const;

export { UsageError };

const SIZE_SUFFIXES: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/** Parses "4096", "64M", "1G", "2T" (binary units; an optional trailing B or iB is accepted). */
export function parseSize(text: string, what = 'size'): number {
  const match = /^(\d+)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!match) throw new UsageError(`${what} "${text}" is not a size (use bytes or a K/M/G/T suffix, e.g. 64M)`);
  const value = Number(match[1]) * SIZE_SUFFIXES[match[2].toUpperCase()];
  if (!Number.isSafeInteger(value)) throw new UsageError(`${what} "${text}" is too large`);
  return value;
}

/** Parses "0", "0-1", "0,2-3" into CPU numbers. */
export function parseCpuList(text: string): number[] {
  const cpus: number[] = [];
  for (const part of text.split(',')) {
    const match = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!match) throw new UsageError(`CPU list "${text}" is not valid (examples: 1, 0-1, 0,2)`);
    const first = Number(match[1]);
    const last = match[2] === undefined ? first : Number(match[2]);
    if (last < first) throw new UsageError(`CPU range "${part}" is reversed`);
    for (let cpu = first; cpu <= last; cpu++) if (!cpus.includes(cpu)) cpus.push(cpu);
  }
  return cpus;
}

export function parseInteger(text: string, what: string, min: number, max: number): number {
  if (!/^\d+$/.test(text.trim())) throw new UsageError(`${what} "${text}" is not a whole number`);
  const value = Number(text);
  if (value < min || value > max) throw new UsageError(`${what} must be between ${min} and ${max}, got ${value}`);
  return value;
}

export { packageVersion };

/**
 * parseArgs options every back-end CLI takes: where its data plane runs and how it polls, the
 * queue shape, statistics and logging, --help/--version (each CLI adds its device's options).
 */
export const DATA_PLANE_OPTIONS = {
  queues: { type: 'string' },
  'queue-size': { type: 'string' },
  cpus: { type: 'string' },
  poll: { type: 'string' },
  'idle-budget-us': { type: 'string' },
  'interrupt-grace-us': { type: 'string' },
  client: { type: 'boolean', default: false },
  'stats-interval': { type: 'string' },
  verbose: { type: 'boolean', default: false },
  help: { type: 'boolean', default: false },
  version: { type: 'boolean', default: false },
} as const;

export interface DataPlaneValues {
  queues?: string;
  'queue-size'?: string;
  cpus?: string;
  poll?: string;
  'idle-budget-us'?: string;
  'interrupt-grace-us'?: string;
  'stats-interval'?: string;
}

export interface DataPlaneChoices {
  /** --queues: queues (blk) or queue pairs (net). */
  queues: number;
  queueSize: number;
  cpus: number[];
  poll: PollMode;
  idleBudgetUs: number;
  interruptGraceUs: number;
  statsIntervalSec: number;
}

/** Checks DATA_PLANE_OPTIONS' values; `defaults` is what differs between devices. */
export function parseDataPlaneOptions(v: DataPlaneValues, defaults: { queueSize: number; maxQueues: number }): DataPlaneChoices {
  const poll = (v.poll ?? 'adaptive') as PollMode;
  if (!['busy', 'interrupt', 'adaptive'].includes(poll))
    throw new UsageError(`--poll must be busy, interrupt or adaptive, not "${v.poll}"`);
  const queueSize = v['queue-size'] === undefined ? defaults.queueSize : parseInteger(v['queue-size'], '--queue-size', 2, 32768);
  if ((queueSize & (queueSize - 1)) !== 0) throw new UsageError(`--queue-size must be a power of two, got ${queueSize}`);
  return {
    queues: v.queues === undefined ? 1 : parseInteger(v.queues, '--queues', 1, defaults.maxQueues),
    queueSize,
    cpus: v.cpus === undefined ? [1] : parseCpuList(v.cpus),
    poll,
    idleBudgetUs: v['idle-budget-us'] === undefined ? 50 : parseInteger(v['idle-budget-us'], '--idle-budget-us', 0, 10_000_000),
    interruptGraceUs:
      v['interrupt-grace-us'] === undefined
        ? INTERRUPT_GRACE_US
        : parseInteger(v['interrupt-grace-us'], '--interrupt-grace-us', 0, 1_000),
    statsIntervalSec: v['stats-interval'] === undefined ? 0 : parseInteger(v['stats-interval'], '--stats-interval', 1, 86400),
  };
}

/** parseArgs options for the daemon's limits, shared by every CLI that runs a daemon. */
export const DAEMON_LIMIT_OPTIONS = {
  'max-queued-reply-bytes': { type: 'string' },
  'partial-message-timeout-ms': { type: 'string' },
  'first-message-timeout-ms': { type: 'string' },
  'listen-backlog': { type: 'string' },
  'drain-timeout-ms': { type: 'string' },
  'require-sealed-memory': { type: 'boolean', default: false },
} as const;

/** The --help lines of DAEMON_LIMIT_OPTIONS. */
export const DAEMON_LIMITS_HELP = `Limits (README "Reliability"):
  --max-queued-reply-bytes SIZE
                         stop reading a front-end's requests while this many reply bytes
                         wait unread (default 64K)
  --partial-message-timeout-ms N
                         drop a front-end that sends part of a message and then nothing for
                         N ms (default 5000)
  --first-message-timeout-ms N
                         drop a front-end that connects and sends no complete message for
                         N ms (default 10000)
  --listen-backlog N     front-ends that may wait to be served while one is (default 256;
                         the kernel caps it at net.core.somaxconn)
  --drain-timeout-ms N   disconnect a front-end whose GET_VRING_BASE waits more than N ms for
                         in-flight requests (a hung device), abandoning them (default: wait)
  --require-sealed-memory
                         refuse guest memory not sealed against shrinking (F_SEAL_SHRINK, as
                         QEMU's memory-backend-memfd seals it); default: accept it with a
                         warning (a front-end that shrinks it would crash the daemon)
`;

/** The values parseArgs gave for DAEMON_LIMIT_OPTIONS. */
export interface DaemonLimitValues {
  'max-queued-reply-bytes'?: string;
  'partial-message-timeout-ms'?: string;
  'first-message-timeout-ms'?: string;
  'listen-backlog'?: string;
  'drain-timeout-ms'?: string;
  'require-sealed-memory'?: boolean;
}

/** Daemon limits from the command line; options not given stay undefined (the daemon's defaults). */
export function parseDaemonLimits(v: DaemonLimitValues): DaemonLimits {
  const optional = (text: string | undefined, parse: (text: string) => number) => (text === undefined ? undefined : parse(text));
  return {
    maxQueuedReplyBytes: optional(v['max-queued-reply-bytes'], (text) => {
      const bytes = parseSize(text, '--max-queued-reply-bytes');
      if (bytes < 4096 || bytes > 2 ** 30)
        throw new UsageError(`--max-queued-reply-bytes must be between 4K and 1G, got ${bytes}`);
      return bytes;
    }),
    partialMessageTimeoutMs: optional(v['partial-message-timeout-ms'], (text) =>
      parseInteger(text, '--partial-message-timeout-ms', 1, 3_600_000),
    ),
    firstMessageTimeoutMs: optional(v['first-message-timeout-ms'], (text) =>
      parseInteger(text, '--first-message-timeout-ms', 1, 3_600_000),
    ),
    listenBacklog: optional(v['listen-backlog'], (text) => parseInteger(text, '--listen-backlog', 1, 65535)),
    drainTimeoutMs: optional(v['drain-timeout-ms'], (text) => parseInteger(text, '--drain-timeout-ms', 1, 3_600_000)),
    requireSealedMemory: v['require-sealed-memory'] ?? false,
  };
}

/** The first fd systemd passes (SD_LISTEN_FDS_START). */
export const SD_LISTEN_FDS_START = 3;

/**
 * systemd socket activation (sd_listen_fds(3)): LISTEN_PID names this process and LISTEN_FDS
 * counts the sockets passed from fd 3 on. Returns fd 3, or undefined when the variables are
 * absent or meant for another process (a parent that did not clear them). The variables are
 * removed either way, as sd_listen_fds(unset_environment=1) does, so children do not adopt them.
 */
export function systemdListenFd(env: NodeJS.ProcessEnv = process.env, pid = process.pid): number | undefined {
  const fds = env.LISTEN_FDS;
  const listenPid = env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDNAMES;
  if (fds === undefined || listenPid === undefined) return undefined;
  if (!/^\d+$/.test(listenPid) || Number(listenPid) !== pid) return undefined;
  if (!/^\d+$/.test(fds) || Number(fds) === 0) return undefined;
  if (Number(fds) !== 1)
    throw new UsageError(
      `systemd passed ${fds} sockets (LISTEN_FDS); vhost-user-blk serves one: give its .socket unit one ListenStream=`,
    );
  return SD_LISTEN_FDS_START;
}

/**
 * SIGTERM and SIGINT stop the process cleanly, exit 0. Installed before anything slow starts
 * (a manager may signal during start-up) and never removed: every signal after the first is
 * absorbed while shutdown runs, where the default action would kill the process with 143
 * and leave the socket file behind. Node's signal handles do not keep the process alive.
 */
export function stopSignal(onRepeat: (signal: NodeJS.Signals, count: number) => void): Promise<NodeJS.Signals> {
  let count = 0;
  return new Promise((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      count++;
      if (count === 1) resolve(signal);
      else onRepeat(signal, count);
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}

/** What every CLI's parsed arguments say about --help and --version. */
export interface HelpVersionFlags {
  help: boolean;
  version: boolean;
}

/**
 * The front door every CLI shares: parse, then answer --help / --version. Returns the parsed
 * arguments to go on with, or the exit code to leave with (a usage error printed as
 * `tool: message` plus where to find help, exit 2; help or version printed, exit 0).
 */
export function parseCommandLine<T extends HelpVersionFlags>(
  tool: string,
  parse: () => T,
  help: string,
  versionSuffix = '',
): T | number {
  let args: T;
  try {
    args = parse();
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`${tool}: ${error.message}\nTry '${tool} --help'.\n`);
    return ExitCode.USAGE;
  }
  if (args.help) {
    process.stdout.write(help);
    return ExitCode.OK;
  }
  if (args.version) {
    process.stdout.write(`${tool.split(' ')[0]} (vhost-user-ts) ${packageVersion()}${versionSuffix}\n`);
    return ExitCode.OK;
  }
  return args;
}
