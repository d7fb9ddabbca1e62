// The one way a device becomes a running back-end: per port (one socket each), a worker data
// plane running the device's handler and a daemon serving the socket. blk (one port) and net
// (one port per socket) both build on it, so start-up order, failure clean-up and shutdown
// order live here once. Each port has its own workers because a worker holds one guest memory
// table and the session numbers queues from 0.
import type { Logger } from '../log.js';
import type { HandlerSpec } from '../dataplane/device-api.js';
import type { PollMode } from '../dataplane/commands.js';
import type { QueueStats } from '../dataplane/stats.js';
import { WorkerDataPlane } from '../dataplane/pool.js';
import type { VhostUserDevice } from './backend.js';
import { VhostUserDaemon, type DaemonLimits } from './daemon.js';

/** Where and how the workers of every port run. */
export interface WorkerOptions {
  cpus: number[];
  poll: PollMode;
  idleBudgetUs: number;
  /** Interrupt mode's stay-awake time after work (default: the data plane's). */
  interruptGraceUs?: number;
}

/** What one port is made of; the assembly starts it and stops it. */
export interface PortParts<D extends VhostUserDevice> {
  device: D;
  handler: HandlerSpec;
  /** Socket path to bind (or connect to, with client); or listenFd (see DaemonOptions). */
  socketPath?: string;
  listenFd?: number;
  /** Default: the data plane's (queues spread round-robin). */
  queueToWorker?: (queue: number, workers: number) => number;
  /** The device's longest descriptor chain (default: the data plane's). */
  maxSegments?: number;
  /** Names the port's loggers (`port0` gives port0.dataplane, port0.daemon); none: dataplane, daemon. */
  name?: string;
  /** Logged with 'serving' once the port's daemon listens (or connects). */
  serving?: Record<string, unknown>;
  /** Frees what the port holds beyond its plane and daemon (a tap), once both stopped. */
  release?: () => void;
}

export interface AssemblyOptions<D extends VhostUserDevice> {
  ports: number;
  /** Builds port `index`; if it throws, what it opened is its own to free. */
  makePort: (index: number) => PortParts<D>;
  workers: WorkerOptions;
  client: boolean;
  /** Bounds and policies of every daemon (the daemon's defaults where undefined). */
  limits?: DaemonLimits;
  /** Frees what the ports share (a switch fabric), after every port stopped. */
  release?: () => void;
  log: Logger;
}

export interface AssembledPort<D extends VhostUserDevice> {
  socketPath?: string;
  device: D;
  plane: WorkerDataPlane;
  daemon: VhostUserDaemon;
}

export interface Assembly<D extends VhostUserDevice> {
  ports: AssembledPort<D>[];
  /** Each port's data-plane counters, port by port. */
  planeStats: () => QueueStats[][];
  /** Settles when the first daemon ends: resolves if it stopped, rejects if it failed. */
  wait: () => Promise<void>;
  /** Stops every port (last started first), then frees what they shared. */
  stop: () => Promise<void>;
}

interface LivePort<D extends VhostUserDevice> extends AssembledPort<D> {
  release?: () => void;
}

export async function startAssembly<D extends VhostUserDevice>(options: AssemblyOptions<D>): Promise<Assembly<D>> {
  const { log, workers } = options;
  const ports: LivePort<D>[] = [];
  let stopping: Promise<void> | undefined;
  const stopAll = async () => {
    for (const port of ports.splice(0).reverse()) {
      try {
        await port.daemon.stop();
        await port.plane.close();
      } finally {
        // The workers are gone (or never used what the port holds): free it now.
        port.release?.();
      }
    }
    options.release?.();
  };
  const stop = () => (stopping ??= stopAll());
  try {
    for (let index = 0; index < options.ports; index++) {
      const parts = options.makePort(index);
      const prefix = parts.name ? `${parts.name}.` : '';
      let plane: WorkerDataPlane;
      try {
        plane = await WorkerDataPlane.start({
          cpus: workers.cpus,
          queueCount: parts.device.numQueues,
          handler: parts.handler,
          mode: workers.poll,
          idleBudgetUs: workers.idleBudgetUs,
          interruptGraceUs: workers.interruptGraceUs,
          queueToWorker: parts.queueToWorker,
          maxSegments: parts.maxSegments,
          logger: log.child(`${prefix}dataplane`),
        });
      } catch (error) {
        parts.release?.();
        throw error;
      }
      const daemon = new VhostUserDaemon(parts.device, {
        ...options.limits,
        socketPath: parts.socketPath,
        listenFd: parts.listenFd,
        client: options.client,
        dataPlane: plane,
        logger: log.child(`${prefix}daemon`),
      });
      ports.push({ socketPath: parts.socketPath, device: parts.device, plane, daemon, release: parts.release });
      await daemon.start();
      log.info('serving', {
        socket: parts.socketPath ?? `fd ${parts.listenFd}`,
        ...parts.serving,
        cpus: workers.cpus,
        poll: workers.poll,
      });
    }
  } catch (error) {
    await stop();
    throw error;
  }
  // A copy: stop empties `ports`, and the counters stay readable after it.
  const started = ports.map(({ socketPath, device, plane, daemon }) => ({ socketPath, device, plane, daemon }));
  return {
    ports: started,
    planeStats: () => started.map((port) => port.plane.allQueueStats()),
    wait: () => Promise.race(started.map((port) => port.daemon.wait())),
    stop,
  };
}
