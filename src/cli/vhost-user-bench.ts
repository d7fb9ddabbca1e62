// vhost-user-bench: a front-end load generator that drives any vhost-user back-end over its
// socket, without a VM, and reports what it measured: IOPS or frames per second, bandwidth,
// latency percentiles, its own CPU time and (with --backend-pid) the back-end's.
import { parseArgs } from 'node:util';
import cliProgress from 'cli-progress';
import { setLogLevel } from '../log.js';
import { ExitCode, UsageError, packageVersion, parseInteger, parseSize } from './common.js';
import type { BlkPattern } from '../loadgen/load-spec.js';
import { formatBench, runBench, type BenchArgs, type BenchResult } from '../loadgen/run.js';
import {
  NET_BENCH_MAX_FRAME,
  NET_BENCH_MIN_FRAME,
  NET_BENCH_MODES,
  formatNetBench,
  runNetBench,
  type NetBenchArgs,
  type NetBenchMode,
  type NetBenchResult,
} from '../loadgen/net-run.js';

const HELP = `Usage: vhost-user-bench blk --socket PATH [options]
       vhost-user-bench net --socket PATH --mode tx|rx|loopback [options]

Drive a vhost-user-blk back-end (ours, qemu-storage-daemon, SPDK, ...) with virtio-blk requests
from this process, as a guest driver would, and measure it.

  --socket PATH        the back-end's vhost-user socket
  --rw PATTERN         read | write | randread | randwrite | randrw (default randread)
  --rwmix-read PCT     randrw: percentage of reads (default 50)
  --bs SIZE            block size (default 4K; a multiple of 512)
  --qd N               requests in flight per queue (default 1)
  --queues N           queues to drive (default 1)
  --queue-size N       virtqueue size (default 256)
  --seconds N          measured duration (default 10)
  --warmup N           seconds of load before measuring (default 1)
  --rate IOPS          open loop: issue at this rate (latency is timed from when each request
                       was due, so queueing in the back-end shows); default closed loop
  --wait MODE          spin | event: how this tool waits for completions (default spin)
  --cpu N              pin the load thread to CPU N
  --backend-pid PID    also report the back-end process's CPU time (from /proc)
  --memory SIZE        guest memory to share (default 256M)
  --packed             drive packed virtqueues (VIRTIO_F_RING_PACKED; refused if not offered)
  --json               print one JSON object on stdout instead of the table
  --verbose, --help, --version
It acks only the features it implements: split rings (packed with --packed), VERSION_1, EVENT_IDX, INDIRECT_DESC and the
virtio-blk bits SIZE_MAX, SEG_MAX, BLK_SIZE, RO, MQ (protocol: MQ, REPLY_ACK, CONFIG,
CONFIGURE_MEM_SLOTS). The report (and --json) gives what was offered and what was negotiated.

net: drive a vhost-user-net back-end (ours, DPDK's vhost PMD, ...) as a virtio-net guest driver
on queue pair 0 (RX queue 0, TX queue 1), with Ethernet/IPv4/UDP frames.
  --mode MODE          tx: frames to the back-end (guest → back-end; e.g. against --backend sink)
                       rx: RX buffers for the back-end to fill (back-end → guest; --backend source)
                       loopback: frames out on TX, timed until they come back on RX (round trip;
                       --backend loopback)
  --frame-size N       Ethernet bytes per frame, ${NET_BENCH_MIN_FRAME} to ${NET_BENCH_MAX_FRAME} (default 64; 1514 for a
                       full 1500-byte MTU frame). RX buffers hold the frame or 1518 bytes.
  --qd N               TX frames in flight (default: the queue size for tx, 1 for loopback;
                       with --rate, the cap on them, default half the queue size for loopback)
  --rate FRAMES/S      tx, loopback: open loop: post TX frames at this rate (latency is timed
                       from when each frame was due, so queueing in the back-end shows);
                       default closed loop
  --queue-size, --seconds, --warmup, --wait, --cpu, --backend-pid, --memory, --json as for blk
It acks VERSION_1, EVENT_IDX and INDIRECT_DESC only (no MRG_RXBUF, no offloads).

Exit codes:
  0  measured: requests completed, none failed, over the whole window asked for
  1  could not run: no connection, negotiation refused, the disk cannot take this workload
  2  bad usage
  3  the measurement is not valid (the report is still printed, the reasons go to stderr):
     no request completed in the window, requests failed (a status other than OK), requests
     never completed (a stalled back-end), or the window was cut short (the back-end closed
     the connection or broke its used ring); net: no frame moved in the measured direction,
     RX buffers came back malformed, or TX frames were never taken
`;

/** Exit code for a run that finished but measured nothing trustworthy (see HELP). */
export const EXIT_INVALID_MEASUREMENT = 3;

export type BenchCommand = { device: 'blk'; args: BenchArgs } | { device: 'net'; args: NetBenchArgs } | 'help' | 'version';

export function parseBenchCommand(argv: string[]): BenchCommand {
  const [command, ...rest] = argv;
  if (command === '--help' || command === '-h') return 'help';
  if (command === '--version') return 'version';
  if (command === 'net') {
    const args = parseNetBenchArgs(rest);
    return typeof args === 'string' ? args : { device: 'net', args };
  }
  const args = parseBenchArgs(argv);
  return typeof args === 'string' ? args : { device: 'blk', args };
}

export function parseNetBenchArgs(rest: string[]): NetBenchArgs | 'help' | 'version' {
  let values;
  try {
    values = parseArgs({
      args: rest,
      strict: true,
      options: {
        socket: { type: 'string' },
        mode: { type: 'string' },
        'frame-size': { type: 'string' },
        qd: { type: 'string' },
        rate: { type: 'string' },
        'queue-size': { type: 'string' },
        seconds: { type: 'string' },
        warmup: { type: 'string' },
        wait: { type: 'string' },
        cpu: { type: 'string' },
        'backend-pid': { type: 'string' },
        memory: { type: 'string' },
        json: { type: 'boolean', default: false },
        verbose: { type: 'boolean', default: false },
        help: { type: 'boolean', default: false },
        version: { type: 'boolean', default: false },
      },
    }).values;
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (values.help) return 'help';
  if (values.version) return 'version';
  if (!values.socket) throw new UsageError('--socket PATH is required');
  if (!values.mode) throw new UsageError('--mode is required: tx, rx or loopback');
  const mode = values.mode as NetBenchMode;
  if (!NET_BENCH_MODES.includes(mode)) throw new UsageError(`--mode "${values.mode}" is not one of tx, rx, loopback`);
  const wait = (values.wait ?? 'spin') as 'spin' | 'event';
  if (wait !== 'spin' && wait !== 'event') throw new UsageError('--wait must be spin or event');
  const queueSize = values['queue-size'] === undefined ? 256 : parseInteger(values['queue-size'], '--queue-size', 2, 32768);
  if ((queueSize & (queueSize - 1)) !== 0) throw new UsageError('--queue-size must be a power of two');
  const rate = values.rate === undefined ? 0 : parseInteger(values.rate, '--rate', 1, 100_000_000);
  if (rate > 0 && mode === 'rx') throw new UsageError('--rate paces TX frames: tx or loopback mode only');
  // Open-loop loopback: room for bursts, while the RX ring (the queue size) keeps a buffer for every frame in flight.
  const defaultDepth = mode === 'loopback' ? (rate > 0 ? queueSize / 2 : 1) : queueSize;
  return {
    socketPath: values.socket,
    mode,
    frameBytes:
      values['frame-size'] === undefined
        ? 64
        : parseInteger(values['frame-size'], '--frame-size', NET_BENCH_MIN_FRAME, NET_BENCH_MAX_FRAME),
    queueDepth: values.qd === undefined ? defaultDepth : parseInteger(values.qd, '--qd', 1, queueSize),
    rate,
    queueSize,
    seconds: values.seconds === undefined ? 10 : parseInteger(values.seconds, '--seconds', 1, 86400),
    warmup: values.warmup === undefined ? 1 : parseInteger(values.warmup, '--warmup', 0, 3600),
    wait,
    cpu: values.cpu === undefined ? -1 : parseInteger(values.cpu, '--cpu', 0, 4095),
    backendPid: values['backend-pid'] === undefined ? 0 : parseInteger(values['backend-pid'], '--backend-pid', 1, 2 ** 22),
    memoryBytes: parseSize(values.memory ?? '64M', '--memory'),
    json: values.json,
    verbose: values.verbose,
  };
}

export function parseBenchArgs(argv: string[]): BenchArgs | 'help' | 'version' {
  const [command, ...rest] = argv;
  if (command === '--help' || command === '-h') return 'help';
  if (command === '--version') return 'version';
  if (command !== 'blk')
    throw new UsageError(command ? `unknown device "${command}" (blk or net)` : 'name a device: vhost-user-bench blk|net ...');
  let values;
  try {
    values = parseArgs({
      args: rest,
      strict: true,
      options: {
        socket: { type: 'string' },
        rw: { type: 'string' },
        'rwmix-read': { type: 'string' },
        bs: { type: 'string' },
        qd: { type: 'string' },
        queues: { type: 'string' },
        'queue-size': { type: 'string' },
        seconds: { type: 'string' },
        warmup: { type: 'string' },
        rate: { type: 'string' },
        wait: { type: 'string' },
        cpu: { type: 'string' },
        'backend-pid': { type: 'string' },
        memory: { type: 'string' },
        packed: { type: 'boolean', default: false },
        json: { type: 'boolean', default: false },
        verbose: { type: 'boolean', default: false },
        help: { type: 'boolean', default: false },
        version: { type: 'boolean', default: false },
      },
    }).values;
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (values.help) return 'help';
  if (values.version) return 'version';
  if (!values.socket) throw new UsageError('--socket PATH is required');
  const pattern = (values.rw ?? 'randread') as BlkPattern;
  if (!['read', 'write', 'randread', 'randwrite', 'randrw'].includes(pattern))
    throw new UsageError(`--rw "${values.rw}" is not a pattern`);
  const blockSize = parseSize(values.bs ?? '4K', '--bs');
  if (blockSize === 0 || blockSize % 512 !== 0 || blockSize > 16 << 20)
    throw new UsageError('--bs must be a multiple of 512 up to 16M');
  const wait = (values.wait ?? 'spin') as 'spin' | 'event';
  if (wait !== 'spin' && wait !== 'event') throw new UsageError('--wait must be spin or event');
  return {
    socketPath: values.socket,
    pattern,
    readShare: values['rwmix-read'] === undefined ? 0.5 : parseInteger(values['rwmix-read'], '--rwmix-read', 0, 100) / 100,
    blockSize,
    queueDepth: values.qd === undefined ? 1 : parseInteger(values.qd, '--qd', 1, 32768),
    queues: values.queues === undefined ? 1 : parseInteger(values.queues, '--queues', 1, 64),
    queueSize: values['queue-size'] === undefined ? 256 : parseInteger(values['queue-size'], '--queue-size', 2, 32768),
    seconds: values.seconds === undefined ? 10 : parseInteger(values.seconds, '--seconds', 1, 86400),
    warmup: values.warmup === undefined ? 1 : parseInteger(values.warmup, '--warmup', 0, 3600),
    rate: values.rate === undefined ? 0 : parseInteger(values.rate, '--rate', 1, 100_000_000),
    wait,
    cpu: values.cpu === undefined ? -1 : parseInteger(values.cpu, '--cpu', 0, 4095),
    backendPid: values['backend-pid'] === undefined ? 0 : parseInteger(values['backend-pid'], '--backend-pid', 1, 2 ** 22),
    memoryBytes: parseSize(values.memory ?? '256M', '--memory'),
    json: values.json,
    verbose: values.verbose,
    packed: values.packed,
  };
}

export async function main(argv: string[]): Promise<number> {
  let command;
  try {
    command = parseBenchCommand(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`vhost-user-bench: ${error.message}\nTry 'vhost-user-bench --help'.\n`);
    return ExitCode.USAGE;
  }
  if (command === 'help') {
    process.stdout.write(HELP);
    return ExitCode.OK;
  }
  if (command === 'version') {
    process.stdout.write(`vhost-user-bench (vhost-user-ts) ${packageVersion()}\n`);
    return ExitCode.OK;
  }
  const args = command.args;
  const unit = command.device === 'blk' ? 'IOPS' : 'completions/s';
  setLogLevel(args.verbose ? 'debug' : 'warn');
  const total = args.warmup + args.seconds;
  const bar =
    process.stderr.isTTY && !args.json
      ? new cliProgress.SingleBar(
          {
            format: ` {bar} {percentage}% | {phase} | {iops} ${unit} | {requests} completions`,
            stream: process.stderr,
            hideCursor: true,
          },
          cliProgress.Presets.shades_classic,
        )
      : undefined;
  bar?.start(total, 0, { phase: 'warm-up', iops: 0, requests: 0 });
  const started = Date.now();
  let lastCount = 0;
  let lastTime = started;
  let result: BenchResult | NetBenchResult;
  const progress = (completed: number, measuring: boolean) => {
    const now = Date.now();
    const iops = Math.round(((completed - lastCount) * 1000) / Math.max(1, now - lastTime));
    lastCount = completed;
    lastTime = now;
    bar?.update(Math.min(total, (now - started) / 1000), {
      phase: measuring ? 'measuring' : 'warm-up',
      iops,
      requests: completed,
    });
  };
  try {
    result = command.device === 'blk' ? await runBench(command.args, progress) : await runNetBench(command.args, progress);
  } catch (error) {
    bar?.stop();
    process.stderr.write(`vhost-user-bench: ${(error as Error).message}\n`);
    return ExitCode.FAILURE;
  }
  bar?.update(total);
  bar?.stop();
  const text = result.device === 'blk' ? formatBench(result) : formatNetBench(result);
  process.stdout.write(args.json ? JSON.stringify(result) + '\n' : text);
  if (result.failures.length === 0) return ExitCode.OK;
  for (const failure of result.failures) process.stderr.write(`vhost-user-bench: not a valid measurement: ${failure}\n`);
  return EXIT_INVALID_MEASUREMENT;
}
