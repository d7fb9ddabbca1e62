// Assembles a vhost-user-net back-end: per socket (one port each), the device's control-plane
// face and the net handler, handed to the generic assembly (a data plane and a daemon per
// port, each port with its own workers on the CPUs given). Frames cross ports only in the
// switch back-end, through the frame rings and MAC table of a SwitchFabric made before any
// port starts (and closed after they all stopped). The tap back-end serves one port: its tap is opened before
// the workers start and closed after they stopped.
import { createLogger, type Logger } from '../../log.js';
import type { VhostUserDaemon, DaemonLimits } from '../../control/daemon.js';
import { startAssembly } from '../../control/assembly.js';
import type { WorkerDataPlane } from '../../dataplane/pool.js';
import type { PollMode } from '../../dataplane/commands.js';
import type { QueueStats } from '../../dataplane/stats.js';
import { NetDevice } from './device.js';
import { SwitchFabric, switchRingBytes } from './switch-fabric.js';
import { TapDevice } from './tap.js';
import type { NetBackendName, NetQueueStats } from './options.js';
import { formatMac } from './virtio-net.js';

export interface NetBackendOptions {
  /** One port per socket. */
  socketPaths: string[];
  client: boolean;
  backend: NetBackendName;
  queuePairs: number;
  queueSize: number;
  cpus: number[];
  poll: PollMode;
  idleBudgetUs: number;
  /** Interrupt mode's stay-awake time after work, µs (default INTERRUPT_GRACE_US). */
  interruptGraceUs?: number;
  /** Port p gets this MAC with p added to its last byte. */
  mac: Uint8Array;
  mtu: number;
  /** Bounds and policies of each port's daemon (the daemon's defaults where undefined). */
  limits?: DaemonLimits;
  /** source: bytes per generated frame. */
  frameBytes: number;
  /** tap: the interface name (created if missing). */
  tapName?: string;
}

export interface NetPort {
  socketPath: string;
  device: NetDevice;
  plane: WorkerDataPlane;
  daemon: VhostUserDaemon;
  tap: TapDevice | null;
}

/** One queue's counters: the data plane's (kicks, calls, passes) and the net ones (frames, drops). */
export type NetPortQueueStats = NetQueueStats & {
  port: number;
  direction: 'rx' | 'tx';
  kicks: number;
  calls: number;
  /** Poll passes that found work on this queue, and those that found none (batch size = packets / busyPasses). */
  busyPasses: number;
  idlePasses: number;
  /** Times the worker slept (interrupt / adaptive) while this queue ran. */
  sleeps: number;
  broken: number;
};

export interface NetBackend {
  ports: NetPort[];
  /** switch: the rings and MAC table the ports share; null for the other back-ends. */
  fabric: SwitchFabric | null;
  queueStats(): NetPortQueueStats[];
  /** Settles when the first port's daemon ends: resolves if it stopped, rejects if it failed. */
  wait(): Promise<void>;
  stop(): Promise<void>;
}

export async function startNetBackend(options: NetBackendOptions, logger?: Logger): Promise<NetBackend> {
  const log = logger ?? createLogger('vhost-user-net');
  if (options.socketPaths.length === 0) throw new Error('at least one socket is needed');
  if (options.backend === 'tap' && (options.tapName === undefined || options.socketPaths.length !== 1)) {
    throw new Error('the tap back-end serves one port (one socket) and needs a tap name');
  }
  const fabric =
    options.backend === 'switch'
      ? new SwitchFabric(options.socketPaths.length, options.cpus.length, options.queuePairs, switchRingBytes(options.mtu))
      : null;
  const taps: (TapDevice | null)[] = [];
  let assembly;
  try {
    assembly = await startAssembly({
      ports: options.socketPaths.length,
      makePort: (p) => {
        const tap = options.backend === 'tap' ? TapDevice.open(options.tapName!, options.queuePairs, options.mtu) : null;
        try {
          if (tap)
            log.info(tap.created ? 'tap created' : 'tap attached', { port: p, tap: tap.name, queuePairs: options.queuePairs });
          const mac = Uint8Array.from(options.mac);
          mac[5] = (mac[5] + p) & 0xff;
          const device = new NetDevice({
            queuePairs: options.queuePairs,
            maxQueueSize: options.queueSize,
            mac,
            mtu: options.mtu,
            onHeaderBytes: tap ? (bytes) => tap.setHeaderBytes(bytes) : undefined,
            // tap carries the header through IFF_VNET_HDR; loopback and the switch pass it from
            // TX to RX (or finish the checksum, handler.ts / switch.ts); sink and source have
            // no receiver for it.
            offloads: tap !== null || options.backend === 'loopback' || options.backend === 'switch',
            ...(tap && { onOffloads: (bits: number) => tap.setOffloads(bits) }),
            // loopback, sink and source offer no SEND_RARP: a RARP would only come back to the
            // guest that is being announced (loopback), or reach nobody (sink, source).
            sendRarp: fabric ? (rarpMac) => fabric.sendRarp(p, rarpMac) : tap ? (rarpMac) => tap.sendRarp(rarpMac) : undefined,
          });
          const handler = fabric
            ? fabric.handlerSpec(p, device)
            : device.handlerSpec(options.backend, options.frameBytes, tap?.fds ?? []);
          taps.push(tap);
          return {
            device,
            handler,
            socketPath: options.socketPaths[p],
            queueToWorker: NetDevice.queueToWorker,
            maxSegments: device.maxSegments,
            name: `port${p}`,
            serving: { port: p, mac: formatMac(mac), backend: options.backend, tap: tap?.name, queuePairs: options.queuePairs },
            // A tap we created disappears here, once the workers no longer use its fds.
            release: tap ? () => tap.close() : undefined,
          };
        } catch (error) {
          tap?.close();
          throw error;
        }
      },
      workers: options,
      client: options.client,
      limits: options.limits,
      release: () => fabric?.close(),
      log,
    });
  } catch (error) {
    // Closing twice is harmless: the assembly closes it too once it built a port.
    fabric?.close();
    throw error;
  }
  const ports = assembly.ports.map((port, p) => ({ ...port, socketPath: options.socketPaths[p], tap: taps[p] }));
  return {
    ports,
    fabric,
    queueStats: () => ports.flatMap((port, p) => mergeStats(p, port.device.netStats(), port.plane.allQueueStats())),
    wait: assembly.wait,
    stop: assembly.stop,
  };
}

function mergeStats(port: number, net: NetQueueStats[], plane: QueueStats[]): NetPortQueueStats[] {
  return net.map((stats) => {
    const dataPlane = plane[stats.queue];
    return {
      port,
      direction: stats.queue % 2 === 0 ? 'rx' : 'tx',
      ...stats,
      kicks: dataPlane?.kicks ?? 0,
      calls: dataPlane?.calls ?? 0,
      busyPasses: dataPlane?.busyPasses ?? 0,
      idlePasses: dataPlane?.idlePasses ?? 0,
      sleeps: dataPlane?.sleeps ?? 0,
      broken: dataPlane?.broken ?? 0,
    };
  });
}
