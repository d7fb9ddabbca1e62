// vhost-user-net: serve virtio-net ports (one per socket) to vhost-user front-ends such as QEMU's
// virtio-net-pci (-netdev vhost-user) or DPDK's virtio-user, with a loopback, sink, source,
// switch or tap back-end behind them.
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
  stopSignal,
} from './common.js';
import { serveBackends } from './serve.js';
import { startNetBackend, type NetBackendOptions, type NetPortQueueStats } from '../devices/net/backend.js';
import { MAX_MTU, MIN_MTU } from '../devices/net/device.js';
import { SOURCE_MIN_FRAME } from '../devices/net/frame.js';
import { NET_BACKENDS, type NetBackendName } from '../devices/net/options.js';
import { checkTapName } from '../devices/net/tap.js';
import { ETH_HEADER_BYTES, parseMac } from '../devices/net/virtio-net.js';

const DEFAULT_MAC = '52:54:00:12:34:56';

const HELP = `Usage: vhost-user-net --socket PATH [--socket PATH ...] [options]

Serve virtio-net devices over the vhost-user protocol, one port per socket.

Back-end:
  --backend NAME         where frames go (default loopback):
                           loopback  every frame a port transmits comes back on its own RX
                           sink      count and drop every frame (guest -> back-end)
                           source    fill every RX buffer with generated frames (back-end -> guest)
                           switch    a learning L2 switch between the ports (two or more --socket):
                                     unknown, broadcast and multicast destinations are flooded;
                                     answers SEND_RARP (after a migration) by flooding a RARP
                           tap:NAME  a Linux tap device in our network namespace, created if
                                     missing (and then removed at exit); one --socket; needs
                                     CAP_NET_ADMIN. Configure it (address, up) yourself.
                                     Answers SEND_RARP by writing a RARP into the tap.
                         loopback, switch and tap offer checksum/TSO offloads (the virtio-net
                         header is passed on; loopback and switch finish the checksum for a
                         guest that did not ack GUEST_CSUM and cut GSO frames into TCP segments
                         for one without GUEST_TSO (gso-segmented; not TCP: gso-refused))
  --frame-size N         source: bytes per frame, Ethernet header onwards, no FCS (default 64;
                         ${SOURCE_MIN_FRAME} to MTU + 18)

Device:
  --queues N             queue pairs (RX + TX) per port (default 1; more offers VIRTIO_NET_F_MQ)
  --queue-size N         largest queue size accepted (default 1024)
  --mac ADDR             the guest's MAC address (default ${DEFAULT_MAC}; port p adds p to the last byte)
  --mtu N                MTU offered with VIRTIO_NET_F_MTU; longer TX frames are dropped (default 1500)

Data plane:
  --cpus LIST            CPUs for the worker threads, one worker each (default 1; e.g. 0-1).
                         Both queues of a pair run on one worker; pairs go round-robin.
                         Each port (socket) has its own workers on these CPUs.
  --poll MODE            busy | interrupt | adaptive (default adaptive)
  --idle-budget-us N     adaptive mode: spin this long without work before sleeping (default 50)
  --interrupt-grace-us N interrupt mode: stay awake this long after the last request before
                         sleeping (default 2; 0 sleeps at once, like QEMU's poll-max-ns=0)

Connection:
  --socket PATH          Unix socket to listen on (or connect to, with --client); repeat for ports
  --client               connect to a listening front-end (QEMU server=on, DPDK server=1), reconnecting

${DAEMON_LIMITS_HELP}
Other:
  --stats-interval SEC   log per-queue frame, byte and drop counters every SEC seconds
  --verbose              log protocol and lifecycle details (JSON lines on stderr)
  --help                 show this help
  --version              show the version

Counters are printed at exit (one line per queue: port, queue, direction, packets, bytes, drops).
Exit codes: 0 stopped by a signal, 1 runtime failure, 2 bad usage.

Examples:
  vhost-user-net --socket /tmp/vhost-net.sock --backend loopback
  vhost-user-net --socket /tmp/vhost-net.sock --backend tap:vut0 --poll interrupt
  dpdk-testpmd --no-huge -m 1024 --no-pci --single-file-segments \\
    --vdev 'virtio_user0,path=/tmp/vhost-net.sock,queues=1' -- --forward-mode=io --tx-first
  qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \\
    -chardev socket,id=c0,path=/tmp/vhost-net.sock -netdev vhost-user,id=n0,chardev=c0 \\
    -device virtio-net-pci,netdev=n0,mac=${DEFAULT_MAC}
`;

export interface ParsedNetArgs {
  help: boolean;
  version: boolean;
  verbose: boolean;
  statsIntervalSec: number;
  backend: NetBackendOptions;
}

export function parseNetArgs(argv: string[]): ParsedNetArgs {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        socket: { type: 'string', multiple: true },
        backend: { type: 'string' },
        'frame-size': { type: 'string' },
        mac: { type: 'string' },
        mtu: { type: 'string' },
        ...DATA_PLANE_OPTIONS,
        ...DAEMON_LIMIT_OPTIONS,
      },
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const v = parsed.values;
  const base = { help: v.help, version: v.version, verbose: v.verbose, statsIntervalSec: 0 };
  if (v.help || v.version) return { ...base, backend: undefined as unknown as NetBackendOptions };
  const sockets = v.socket ?? [];
  if (sockets.length === 0) throw new UsageError('--socket PATH is required');
  if (new Set(sockets).size !== sockets.length) throw new UsageError('each --socket must be a different path');
  const backendText = v.backend ?? 'loopback';
  if (backendText === 'switch' && sockets.length < 2) {
    throw new UsageError('--backend switch connects ports: give at least two --socket paths');
  }
  let tapName: string | undefined;
  let backend = backendText as NetBackendName;
  if (backendText === 'tap' || backendText.startsWith('tap:')) {
    backend = 'tap';
    tapName = backendText.slice(4);
    const problem = checkTapName(tapName);
    if (problem) throw new UsageError(`--backend tap:NAME: ${problem}`);
    if (sockets.length !== 1) throw new UsageError('--backend tap:NAME serves one port: give one --socket');
  } else if (backend === 'tap' || !NET_BACKENDS.includes(backend)) {
    throw new UsageError(`--backend must be one of loopback, sink, source, switch, tap:NAME, not "${v.backend}"`);
  }
  const dataPlane = parseDataPlaneOptions(v, { queueSize: 1024, maxQueues: 128 });
  const mtu = v.mtu === undefined ? 1500 : parseInteger(v.mtu, '--mtu', MIN_MTU, MAX_MTU);
  const maxFrame = mtu + ETH_HEADER_BYTES + 4;
  const frameBytes =
    v['frame-size'] === undefined ? 64 : parseInteger(v['frame-size'], '--frame-size', SOURCE_MIN_FRAME, maxFrame);
  if (v['frame-size'] !== undefined && backend !== 'source')
    throw new UsageError('--frame-size only applies to --backend source');
  let mac: Uint8Array;
  try {
    mac = parseMac(v.mac ?? DEFAULT_MAC);
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if ((mac[0] & 1) !== 0) throw new UsageError(`--mac ${v.mac} is a multicast address (lowest bit of the first byte set)`);
  return {
    ...base,
    statsIntervalSec: dataPlane.statsIntervalSec,
    backend: {
      socketPaths: sockets,
      client: v.client,
      backend,
      queuePairs: dataPlane.queues,
      queueSize: dataPlane.queueSize,
      cpus: dataPlane.cpus,
      poll: dataPlane.poll,
      idleBudgetUs: dataPlane.idleBudgetUs,
      interruptGraceUs: dataPlane.interruptGraceUs,
      mac,
      mtu,
      frameBytes,
      limits: parseDaemonLimits(v),
      tapName,
    },
  };
}

/** One line per queue, for the exit summary. */
export function formatNetStats(stats: NetPortQueueStats[]): string {
  const header =
    'port  queue  dir      packets           bytes     drops  no-buffer  too-big  bad-chain  bad-buffers  backend-errors  gso-refused  gso-segmented\n';
  return (
    header +
    stats
      .map((s) =>
        [
          String(s.port).padStart(4),
          String(s.queue).padStart(6),
          s.direction.padStart(4),
          String(s.packets).padStart(12),
          String(s.bytes).padStart(15),
          String(s.drops).padStart(9),
          String(s.noBuffer).padStart(10),
          String(s.tooBig).padStart(8),
          String(s.badChain).padStart(10),
          String(s.badBuffers).padStart(12),
          String(s.backendErrors).padStart(15),
          String(s.gsoRefused).padStart(12),
          String(s.gsoSegmented).padStart(14),
        ].join(' '),
      )
      .join('\n') +
    '\n'
  );
}

export async function main(argv: string[]): Promise<number> {
  // First of all: a manager may signal while we start (see stopSignal).
  const log = createLogger('vhost-user-net');
  const stop = stopSignal((signal, count) => log.info('already stopping; signal absorbed', { signal, count }));
  const args = parseCommandLine('vhost-user-net', () => parseNetArgs(argv), HELP);
  if (typeof args === 'number') return args;
  setLogLevel(args.verbose ? 'debug' : 'info');
  return serveBackends<NetPortQueueStats>({
    tool: 'vhost-user-net',
    start: [() => startNetBackend(args.backend, log)],
    stop,
    log,
    statsIntervalSec: args.statsIntervalSec,
    atExit: (stats) => process.stdout.write(formatNetStats(stats)),
  });
}
