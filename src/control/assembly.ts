// The one way a device becomes a running back-end: per port (one socket each), a daemon serving
// the socket, and one worker data plane running the device's handler for every port. blk (one
// port) and net (one port per socket) both build on it, so start-up order, failure clean-up and
// shutdown order live here once. Ports share the workers (one per CPU): each port is a space of
// the data plane (its own memory table, queues numbered from 0, reset), and queue q of every port
// runs on the same worker, so a frame the switch moves between ports on one worker is copied once.
import type { Logger } from '../log.js';
import type { HandlerSpec } from '../dataplane/device-api.js';
import type { PollMode } from '../dataplane/commands.js';
import type { QueueStats } from '../dataplane/stats.js';
import { WorkerDataPlane, type PortDataPlane } from '../dataplane/pool.js';
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
  /** The port's data plane: the workers themselves, or its face on workers the ports share. */
  plane: WorkerDataPlane | PortDataPlane;
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

type LivePort<D extends VhostUserDevice> = AssembledPort<D>;

export async function startAssembly<D extends VhostUserDevice>(options: AssemblyOptions<D>): Promise<Assembly<D>> {
  const { log, workers } = options;
  const ports: LivePort<D>[] = [];
  // Every port's parts, made first: the workers that serve them all need every port's handler options.
  const parts: PortParts<D>[] = [];
  let plane: WorkerDataPlane | undefined;
  let stopping: Promise<void> | undefined;
  const stopAll = async () => {
    try {
      for (const port of ports.splice(0).reverse()) await port.daemon.stop();
      await plane?.close();
    } finally {
      // The workers are gone (or never used what the ports hold): free it now.
      for (const made of parts.splice(0).reverse()) made.release?.();
      options.release?.();
    }
  };
  const stop = () => (stopping ??= stopAll());
  try {
    for (let index = 0; index < options.ports; index++) parts.push(options.makePort(index));
    const first = parts[0];
    for (const made of parts) {
      if (made.handler.module !== first.handler.module || made.device.numQueues !== first.device.numQueues) {
        throw new Error('ports sharing workers need the same handler module and queue count');
      }
    }
    const shared = parts.length > 1;
    plane = await WorkerDataPlane.start({
      cpus: workers.cpus,
      queueCount: first.device.numQueues,
      handler: shared ? { module: first.handler.module, options: parts.map((made) => made.handler.options) } : first.handler,
      spaces: parts.length,
      mode: workers.poll,
      idleBudgetUs: workers.idleBudgetUs,
      interruptGraceUs: workers.interruptGraceUs,
      queueToWorker: first.queueToWorker,
      maxSegments: first.maxSegments,
      logger: log.child(shared ? 'dataplane' : `${first.name ? `${first.name}.` : ''}dataplane`),
    });
    for (let index = 0; index < parts.length; index++) {
      const made = parts[index];
      const prefix = made.name ? `${made.name}.` : '';
      const portPlane = shared ? plane.port(index) : plane;
      const daemon = new VhostUserDaemon(made.device, {
        ...options.limits,
        socketPath: made.socketPath,
        listenFd: made.listenFd,
        client: options.client,
        dataPlane: portPlane,
        logger: log.child(`${prefix}daemon`),
      });
      ports.push({ socketPath: made.socketPath, device: made.device, plane: portPlane, daemon });
      await daemon.start();
      log.info('serving', {
        socket: made.socketPath ?? `fd ${made.listenFd}`,
        ...made.serving,
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
