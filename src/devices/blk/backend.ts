// Assembles a vhost-user-blk back-end: the disk (opened, created sparse, or a RAM disk) and the
// device's control-plane face, handed with the blk request handler to the generic assembly
// (data plane + daemon, one port). Used by the CLI, the demo and tests.
import { closeSync, existsSync, fstatSync, openSync, readFileSync, statSync, ftruncateSync } from 'node:fs';
import { createLogger, type Logger } from '../../log.js';
import type { VhostUserDaemon, DaemonLimits } from '../../control/daemon.js';
import { startAssembly } from '../../control/assembly.js';
import type { WorkerDataPlane } from '../../dataplane/pool.js';
import type { PollMode } from '../../dataplane/commands.js';
import type { QueueStats } from '../../dataplane/stats.js';
import { BlkDevice } from './device.js';
import { resolveEngine } from './engine-select.js';
import type { BlkEngineChoice, BlkEngineName } from './options.js';
export type { BlkEngineChoice, BlkEngineName } from './options.js';

export interface BlkBackendOptions {
  /** Socket path to bind (or connect to, with client); or listenFd. */
  socketPath?: string;
  /** An inherited listening socket to serve instead of binding socketPath (see DaemonOptions). */
  listenFd?: number;
  client: boolean;
  /** Bounds and policies of the daemon (the daemon's defaults where undefined). */
  limits?: DaemonLimits;
  engine: BlkEngineChoice;
  diskPath?: string;
  /** Disk size; required to create a missing image, and for memory/null (default 64 MiB). */
  sizeBytes?: number;
  direct: boolean;
  readOnly: boolean;
  /** 512 (default) or 4096. */
  logicalBlockSize?: number;
  /** GET_ID answer (≤ 20 bytes). */
  serial?: string;
  queues: number;
  queueSize: number;
  cpus: number[];
  poll: PollMode;
  idleBudgetUs: number;
  /** Interrupt mode's stay-awake time after work, µs (default INTERRUPT_GRACE_US). */
  interruptGraceUs?: number;
}

export interface BlkBackend {
  daemon: VhostUserDaemon;
  plane: WorkerDataPlane;
  device: BlkDevice;
  /** The engine serving the disk (`auto` resolved to io_uring or threads). */
  engine: BlkEngineName;
  capacityBytes: number;
  queueStats(): QueueStats[];
  /** Settles when the daemon ends: resolves if it stopped, rejects if it failed. */
  wait(): Promise<void>;
  stop(): Promise<void>;
}

const DEFAULT_RAM_DISK = 64 << 20;

export async function startBlkBackend(options: BlkBackendOptions, logger?: Logger): Promise<BlkBackend> {
  const log = logger ?? createLogger('vhost-user-blk');
  const engine = resolveEngine(options.engine, log);
  const capacityBytes =
    engine === 'io_uring' || engine === 'threads' ? prepareImage(options, log) : (options.sizeBytes ?? DEFAULT_RAM_DISK);
  if (capacityBytes % 512 !== 0 || capacityBytes === 0) {
    throw new Error(`disk size ${capacityBytes} is not a positive multiple of 512 bytes`);
  }
  const device = new BlkDevice({
    capacityBytes,
    numQueues: options.queues,
    maxQueueSize: options.queueSize,
    readOnly: options.readOnly,
    logicalBlockSize: options.logicalBlockSize,
    serial: options.serial,
    supportsDiscard: engine !== 'null',
    supportsFlush: true,
  });
  const assembly = await startAssembly({
    ports: 1,
    makePort: () => ({
      device,
      handler: device.handlerSpec({ engine, path: options.diskPath, direct: options.direct }),
      socketPath: options.socketPath,
      listenFd: options.listenFd,
      maxSegments: device.maxSegments,
      serving: { engine, disk: options.diskPath, bytes: capacityBytes, queues: options.queues },
    }),
    workers: options,
    client: options.client,
    limits: options.limits,
    log,
  });
  const [{ daemon, plane }] = assembly.ports;
  return {
    daemon,
    plane,
    device,
    engine,
    capacityBytes,
    queueStats: () => plane.allQueueStats(),
    wait: assembly.wait,
    stop: assembly.stop,
  };
}

/** Opens (or creates sparse) the image and returns its size in bytes. */
function prepareImage(options: BlkBackendOptions, log: Logger): number {
  const path = options.diskPath!;
  if (!existsSync(path)) {
    if (options.sizeBytes === undefined) throw new Error(`${path} does not exist; give --size to create it`);
    if (options.readOnly) throw new Error(`${path} does not exist and --read-only cannot create it`);
    const fd = openSync(path, 'wx', 0o600);
    try {
      ftruncateSync(fd, options.sizeBytes);
    } finally {
      closeSync(fd);
    }
    log.info('created sparse image', { path, bytes: options.sizeBytes });
    return options.sizeBytes;
  }
  const stat = statSync(path);
  let size: number;
  if (stat.isBlockDevice()) {
    // fstat reports 0 for block devices; sysfs has the size in 512-byte sectors.
    const major = Math.floor(stat.rdev / 256) & 0xfff;
    const minor = (stat.rdev & 0xff) | ((Math.floor(stat.rdev / 0x100000) & 0xfff) << 8);
    size = Number(readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim()) * 512;
  } else if (stat.isFile()) {
    const fd = openSync(path, 'r');
    try {
      size = fstatSync(fd).size;
    } finally {
      closeSync(fd);
    }
  } else {
    throw new Error(`${path} is neither a regular file nor a block device`);
  }
  if (options.sizeBytes !== undefined && options.sizeBytes !== size) {
    throw new Error(`${path} is ${size} bytes, but --size says ${options.sizeBytes}; resize the image or drop --size`);
  }
  return size - (size % 512);
}
