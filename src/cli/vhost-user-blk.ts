// vhost-user-blk: serve a disk image (io_uring), a RAM disk or a null device to a vhost-user
// front-end such as QEMU's vhost-user-blk-pci.
import { parseArgs } from 'node:util';
import { createLogger, setLogLevel } from '../log.js';
import {
  DAEMON_LIMITS_HELP,
  DAEMON_LIMIT_OPTIONS,
  DATA_PLANE_OPTIONS,
  parseDataPlaneOptions,
  UsageError,
  parseCommandLine,
  parseDaemonLimits,
  parseInteger,
  parseSize,
  stopSignal,
  systemdListenFd,
} from './common.js';
import type { BlkBackendOptions, BlkEngineChoice } from '../devices/blk/backend.js';
import { serveBlkBackends } from './blk-service.js';
import { qsdCompatMain } from './qsd-compat.js';

const HELP = `Usage: vhost-user-blk (--socket PATH | --socket-fd N) [options]
       vhost-user-blk --qsd-compat [--poll MODE] [--cpus LIST] <qemu-storage-daemon arguments>

Serve a virtio-blk device over the vhost-user protocol.

Storage:
  --disk FILE            disk image or block device (created sparse with --size if missing)
  --size SIZE            disk size: bytes or K/M/G/T suffix (default: the file's size; 64M
                         for the memory and null engines)
  --engine NAME          auto (default with --disk: io_uring, or threads where io_uring is
                         forbidden) | io_uring | threads (blocking I/O in a thread pool) |
                         memory (default without --disk) | null
  --direct               open the image with O_DIRECT (bypass the host page cache)
  --read-only            refuse writes; advertise VIRTIO_BLK_F_RO
  --logical-block-size N 512 (default) or 4096
  --serial TEXT          GET_ID answer, at most 20 bytes (default: none)

Device:
  --queues N             virtqueues (default 1)
  --queue-size N         largest queue size accepted (default 256)

Data plane:
  --cpus LIST            CPUs for the worker threads, one worker each (default 1; e.g. 0-1)
  --poll MODE            busy | interrupt | adaptive (default adaptive)
  --idle-budget-us N     adaptive mode: spin this long without work before sleeping (default 50)
  --interrupt-grace-us N interrupt mode: stay awake this long after the last request before
                         sleeping (default 2; 0 sleeps at once, like QEMU's poll-max-ns=0)

Connection:
  --socket PATH          Unix socket to listen on (or connect to, with --client)
  --socket-fd N          serve an inherited, already listening Unix socket (fd N); its file
                         is left in place on exit (whoever bound it removes it)
  --client               connect to a listening front-end (QEMU server=on), reconnecting
  Under systemd socket activation (LISTEN_FDS=1, LISTEN_PID = this process) neither option
  is needed: fd 3 is served.

${DAEMON_LIMITS_HELP}
Compatibility:
  --qsd-compat ARGS...   take qemu-storage-daemon's --blockdev/--export arguments instead
                         (must come first; --qsd-compat --help lists what maps)

Other:
  --stats-interval SEC   log per-queue statistics every SEC seconds
  --verbose              log protocol and lifecycle details (JSON lines on stderr)
  --help                 show this help
  --version              show the version

Exit codes: 0 stopped by SIGTERM/SIGINT (repeated signals are absorbed), 1 runtime failure,
2 bad usage.

QEMU example (guest RAM must be shared):
  qemu-system-x86_64 -m 512M \\
    -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \\
    -chardev socket,id=vu0,path=/tmp/vhost-blk.sock \\
    -device vhost-user-blk-pci,chardev=vu0,num-queues=1 ...
`;

export interface ParsedBlkArgs {
  help: boolean;
  version: boolean;
  verbose: boolean;
  statsIntervalSec: number;
  backend: BlkBackendOptions;
}

/** `inheritedFd`: the socket systemd activation passed (systemdListenFd), used without --socket/--socket-fd. */
export function parseBlkArgs(argv: string[], inheritedFd?: number): ParsedBlkArgs {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        socket: { type: 'string' },
        'socket-fd': { type: 'string' },
        disk: { type: 'string' },
        size: { type: 'string' },
        engine: { type: 'string' },
        direct: { type: 'boolean', default: false },
        'read-only': { type: 'boolean', default: false },
        'logical-block-size': { type: 'string' },
        serial: { type: 'string' },
        ...DATA_PLANE_OPTIONS,
        ...DAEMON_LIMIT_OPTIONS,
      },
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const v = parsed.values;
  const base = { help: v.help, version: v.version, verbose: v.verbose, statsIntervalSec: 0 };
  if (v.help || v.version) return { ...base, backend: undefined as unknown as BlkBackendOptions };
  if (v.socket !== undefined && v['socket-fd'] !== undefined)
    throw new UsageError('give --socket PATH or --socket-fd N, not both');
  if (v.client && v.socket === undefined) throw new UsageError("--client needs --socket PATH (the front-end's listening socket)");
  const listenFd =
    v['socket-fd'] !== undefined
      ? parseInteger(v['socket-fd'], '--socket-fd', 0, 2 ** 31 - 1)
      : v.socket === undefined
        ? inheritedFd
        : undefined;
  if (v.socket === undefined && listenFd === undefined) {
    throw new UsageError('--socket PATH or --socket-fd N is required (or start under systemd socket activation)');
  }
  const engine = (v.engine ?? (v.disk ? 'auto' : 'memory')) as BlkEngineChoice;
  if (!['auto', 'io_uring', 'threads', 'memory', 'null'].includes(engine))
    throw new UsageError(`--engine must be auto, io_uring, threads, memory or null, not "${v.engine}"`);
  const diskEngine = engine === 'auto' || engine === 'io_uring' || engine === 'threads';
  if (diskEngine && !v.disk) throw new UsageError(`--engine ${engine} needs --disk FILE`);
  if (!diskEngine && v.disk) throw new UsageError(`--disk is only used by the auto, io_uring and threads engines, not ${engine}`);
  if (v.direct && !diskEngine) throw new UsageError('--direct only applies to the auto, io_uring and threads engines');
  const dataPlane = parseDataPlaneOptions(v, { queueSize: 256, maxQueues: 64 });
  const size = v.size === undefined ? undefined : parseSize(v.size, '--size');
  if (size !== undefined && (size === 0 || size % 512 !== 0))
    throw new UsageError(`--size must be a positive multiple of 512 bytes, got ${size}`);
  const logicalBlockSize = v['logical-block-size'] === undefined ? 512 : Number(v['logical-block-size']);
  if (logicalBlockSize !== 512 && logicalBlockSize !== 4096) throw new UsageError('--logical-block-size must be 512 or 4096');
  if (v.serial !== undefined && Buffer.byteLength(v.serial) > 20) throw new UsageError('--serial must be at most 20 bytes');
  return {
    ...base,
    statsIntervalSec: dataPlane.statsIntervalSec,
    backend: {
      socketPath: v.socket,
      listenFd,
      client: v.client,
      engine,
      diskPath: v.disk,
      sizeBytes: size,
      direct: v.direct,
      readOnly: v['read-only'],
      logicalBlockSize,
      serial: v.serial,
      queues: dataPlane.queues,
      queueSize: dataPlane.queueSize,
      cpus: dataPlane.cpus,
      poll: dataPlane.poll,
      idleBudgetUs: dataPlane.idleBudgetUs,
      interruptGraceUs: dataPlane.interruptGraceUs,
      limits: parseDaemonLimits(v),
    },
  };
}

export async function main(argv: string[]): Promise<number> {
  // First of all: a manager may signal while we start (see stopSignal).
  const log = createLogger('vhost-user-blk');
  const stop = stopSignal((signal, count) => log.info('already stopping; signal absorbed', { signal, count }));
  if (argv[0] === '--qsd-compat') return qsdCompatMain(argv.slice(1), stop);
  const args = parseCommandLine('vhost-user-blk', () => parseBlkArgs(argv, systemdListenFd()), HELP);
  if (typeof args === 'number') return args;
  setLogLevel(args.verbose ? 'debug' : 'info');
  return serveBlkBackends({ backends: [args.backend], stop, log, statsIntervalSec: args.statsIntervalSec });
}
