// vhost-user-bench: a front-end load generator that drives any vhost-user back-end over its
// socket, without a VM, and reports what it measured: IOPS, bandwidth, latency percentiles, its
// own CPU time and (with --backend-pid) the back-end's.
import { readFileSync } from 'node:fs';
import { cpus, hostname } from 'node:os';
import { parseArgs } from 'node:util';
import cliProgress from 'cli-progress';
import { setLogLevel } from '../log.js';
import { ExitCode, UsageError, packageVersion, parseInteger, parseSize } from './common.js';
import { FrontendDevice } from '../control/frontend/device.js';
import { featureHex } from '../control/frontend/features.js';
import { startLoad, type LoadReport } from '../bench/load.js';
import type { BlkPattern } from '../bench/load-spec.js';
import { LOADGEN_BLK_CONFIG_BYTES, LOADGEN_BLK_FEATURES, blkLimits, blkWorkloadProblem } from '../bench/blk-features.js';

const HELP = `Usage: vhost-user-bench blk --socket PATH [options]

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
  --json               print one JSON object on stdout instead of the table
  --verbose, --help, --version
It acks only the features it implements: split rings, VERSION_1, EVENT_IDX, INDIRECT_DESC and the
virtio-blk bits SIZE_MAX, SEG_MAX, BLK_SIZE, RO, MQ (protocol: MQ, REPLY_ACK, CONFIG,
CONFIGURE_MEM_SLOTS). The report (and --json) gives what was offered and what was negotiated.

Exit codes:
  0  measured: requests completed, none failed, over the whole window asked for
  1  could not run: no connection, negotiation refused, the disk cannot take this workload
  2  bad usage
  3  the measurement is not valid (the report is still printed, the reasons go to stderr):
     no request completed in the window, requests failed (a status other than OK), requests
     never completed (a stalled back-end), or the window was cut short (the back-end closed
     the connection or broke its used ring)
`;

/** Exit code for a run that finished but measured nothing trustworthy (see HELP). */
export const EXIT_INVALID_MEASUREMENT = 3;

export interface BenchArgs {
  socketPath: string;
  pattern: BlkPattern;
  readShare: number;
  blockSize: number;
  queueDepth: number;
  queues: number;
  queueSize: number;
  seconds: number;
  warmup: number;
  rate: number;
  wait: 'spin' | 'event';
  cpu: number;
  backendPid: number;
  memoryBytes: number;
  json: boolean;
  verbose: boolean;
}

export function parseBenchArgs(argv: string[]): BenchArgs | 'help' | 'version' {
  const [command, ...rest] = argv;
  if (command === '--help' || command === '-h') return 'help';
  if (command === '--version') return 'version';
  if (command !== 'blk') throw new UsageError(command ? `unknown device "${command}" (only "blk" so far)` : 'name a device: vhost-user-bench blk ...');
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
  if (!['read', 'write', 'randread', 'randwrite', 'randrw'].includes(pattern)) throw new UsageError(`--rw "${values.rw}" is not a pattern`);
  const blockSize = parseSize(values.bs ?? '4K', '--bs');
  if (blockSize === 0 || blockSize % 512 !== 0 || blockSize > 16 << 20) throw new UsageError('--bs must be a multiple of 512 up to 16M');
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
    json: values.json!,
    verbose: values.verbose!,
  };
}

/** The comparison point the benchmarks share: 4 KiB random reads on one 256-entry queue, closed loop. */
export function randRead4k(socketPath: string, overrides: Partial<BenchArgs>): BenchArgs {
  return {
    socketPath,
    pattern: 'randread',
    readShare: 1,
    blockSize: 4096,
    queueDepth: 1,
    queues: 1,
    queueSize: 256,
    seconds: 10,
    warmup: 1,
    rate: 0,
    wait: 'spin',
    cpu: -1,
    backendPid: 0,
    memoryBytes: 256 << 20,
    json: true,
    verbose: false,
    ...overrides,
  };
}

/** CPU seconds (user + system) a process has used, from /proc/<pid>/stat. */
export function processCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 14 and 15 (utime, stime) in clock ticks; Linux's USER_HZ is 100.
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

export interface BenchResult {
  tool: string;
  device: 'blk';
  machine: { host: string; cpu: string; cpus: number; node: string };
  date: string;
  settings: Omit<BenchArgs, 'json' | 'verbose' | 'socketPath'> & { socket: string; capacityBytes: number };
  iops: number;
  bw_mbps: number;
  lat_us: { mean: number; min: number; p50: number; p90: number; p99: number; 'p99.9': number; max: number };
  requests: number;
  seconds: number;
  errors: number;
  loadgen_cpu_s: number;
  backend_cpu_s: number | null;
  kicks: number;
  /** Negotiated and offered virtio features and protocol features, as hex. */
  features: string;
  protocol_features: string;
  offered_features: string;
  offered_protocol_features: string;
  /** Requests the back-end never completed (still in flight after the end-of-run drain). */
  in_flight_at_end: number;
  first_error?: string;
  /** Why the back-end's connection closed during the run, if it did. */
  disconnected?: string;
  /** Why this measurement is not valid (empty when it is): see benchFailures(). */
  failures: string[];
}

export async function runBench(args: BenchArgs, onProgress?: (completed: number, measuring: boolean) => void): Promise<BenchResult> {
  const device = await FrontendDevice.connect({
    socketPath: args.socketPath,
    queues: args.queues,
    queueSize: args.queueSize,
    memory: [{ guestPhysAddr: 0, size: args.memoryBytes }],
    deviceFeatures: LOADGEN_BLK_FEATURES,
    connectTimeoutMs: 2000,
  });
  try {
    if (device.queues.length < args.queues) {
      throw new Error(`the back-end offers ${device.queues.length} queue(s), fewer than --queues ${args.queues}`);
    }
    const limits = blkLimits(await device.getConfig(0, LOADGEN_BLK_CONFIG_BYTES), device.features);
    const problem = blkWorkloadProblem(limits, { pattern: args.pattern, blockSize: args.blockSize, queues: args.queues }, device.features);
    if (problem) throw new Error(problem);
    const capacityBytes = limits.capacityBytes;
    const backendStart = args.backendPid ? processCpuSeconds(args.backendPid) : 0;
    const load = startLoad(device, {
      workload: { kind: 'blk', pattern: args.pattern, blockSize: args.blockSize, capacityBytes, readShare: args.readShare, seed: 1 },
      queueDepth: args.queueDepth,
      seconds: args.seconds,
      warmupSeconds: args.warmup,
      rate: args.rate,
      wait: args.wait,
      cpu: args.cpu,
    });
    // A back-end that goes away mid-run ends the run at once (and the report says so).
    let disconnected: string | undefined;
    void device.client.closed().then((error) => {
      disconnected = error?.message ?? 'the back-end closed the connection';
      load.stop();
    });
    let backendMeasureStart = backendStart;
    let sawMeasuring = args.warmup === 0;
    const timer = setInterval(() => {
      if (!sawMeasuring && load.measuring()) {
        sawMeasuring = true;
        if (args.backendPid) backendMeasureStart = processCpuSeconds(args.backendPid);
      }
      onProgress?.(load.completed(), load.measuring());
    }, 200);
    let report: LoadReport;
    try {
      report = await load.result;
    } finally {
      clearInterval(timer);
    }
    const backendCpu = args.backendPid ? processCpuSeconds(args.backendPid) - backendMeasureStart : null;
    const us = (ns: number) => Math.round(ns / 10) / 100;
    const { json: _json, verbose: _verbose, socketPath, ...settings } = args;
    const result: BenchResult = {
      tool: `vhost-user-bench ${packageVersion()}`,
      device: 'blk',
      machine: { host: hostname(), cpu: cpus()[0]?.model ?? 'unknown', cpus: cpus().length, node: process.version },
      date: new Date().toISOString(),
      settings: { ...settings, socket: socketPath, capacityBytes },
      iops: Math.round(report.iops),
      bw_mbps: Math.round(report.mbPerSecond * 100) / 100,
      lat_us: {
        mean: us(report.latencyNs.mean),
        min: us(report.latencyNs.min),
        p50: us(report.latencyNs.p50),
        p90: us(report.latencyNs.p90),
        p99: us(report.latencyNs.p99),
        'p99.9': us(report.latencyNs.p999),
        max: us(report.latencyNs.max),
      },
      requests: report.requests,
      seconds: Math.round(report.seconds * 1000) / 1000,
      errors: report.errors,
      loadgen_cpu_s: Math.round(report.cpuSeconds * 1000) / 1000,
      backend_cpu_s: backendCpu === null ? null : Math.round(backendCpu * 100) / 100,
      kicks: report.kicks,
      features: featureHex(device.features),
      protocol_features: featureHex(device.protocolFeatures),
      offered_features: featureHex(device.offeredFeatures),
      offered_protocol_features: featureHex(device.offeredProtocolFeatures),
      in_flight_at_end: report.inFlightAtEnd,
      ...(report.errors ? { first_error: report.firstError } : {}),
      ...(disconnected ? { disconnected } : {}),
      failures: [],
    };
    result.failures = benchFailures(result, args);
    return result;
  } finally {
    device.close();
  }
}

/**
 * Why a finished run is not a measurement (empty if it is): a bench that reports 0 IOPS with exit
 * 0 hides a broken negotiation or a dead back-end behind a number.
 */
export function benchFailures(r: Omit<BenchResult, 'failures'>, args: Pick<BenchArgs, 'seconds'>): string[] {
  const failures: string[] = [];
  if (r.requests === 0) failures.push(`no request completed in the ${r.seconds} s measured window`);
  if (r.errors > 0) failures.push(`${r.errors} request(s) failed; first: ${r.first_error ?? 'unknown'}`);
  if (r.in_flight_at_end > 0) failures.push(`${r.in_flight_at_end} request(s) never completed (the back-end stalled or lost them)`);
  // The load thread measures at least the asked window unless the run was cut short.
  if (r.seconds < args.seconds) {
    failures.push(`the measured window was ${r.seconds} s, shorter than the ${args.seconds} s asked${r.disconnected ? ` (${r.disconnected})` : ''}`);
  } else if (r.disconnected) {
    failures.push(`the back-end closed the connection during the run: ${r.disconnected}`);
  }
  return failures;
}

export function formatBench(r: BenchResult): string {
  const s = r.settings;
  const lines = [
    `vhost-user-bench blk: ${s.pattern} bs=${s.blockSize} qd=${s.queueDepth} queues=${s.queues}${s.rate ? ` rate=${s.rate}/s` : ''} wait=${s.wait} on ${s.socket}`,
    `machine: ${r.machine.cpu}, ${r.machine.cpus} CPUs, Node ${r.machine.node}; ${r.date}`,
    `  IOPS ${r.iops}   ${r.bw_mbps} MB/s   ${r.requests} requests in ${r.seconds} s   errors ${r.errors}`,
    `  latency us: mean ${r.lat_us.mean}  min ${r.lat_us.min}  p50 ${r.lat_us.p50}  p90 ${r.lat_us.p90}  p99 ${r.lat_us.p99}  p99.9 ${r.lat_us['p99.9']}  max ${r.lat_us.max}`,
    `  CPU: load generator ${r.loadgen_cpu_s} s${r.backend_cpu_s === null ? '' : `, back-end ${r.backend_cpu_s} s`} over ${r.seconds} s`,
    `  features ${r.features} of ${r.offered_features} offered; protocol features ${r.protocol_features} of ${r.offered_protocol_features}`,
  ];
  return lines.join('\n') + '\n';
}

export async function main(argv: string[]): Promise<number> {
  let args;
  try {
    args = parseBenchArgs(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`vhost-user-bench: ${error.message}\nTry 'vhost-user-bench --help'.\n`);
    return ExitCode.USAGE;
  }
  if (args === 'help') {
    process.stdout.write(HELP);
    return ExitCode.OK;
  }
  if (args === 'version') {
    process.stdout.write(`vhost-user-bench (vhost-user-ts) ${packageVersion()}\n`);
    return ExitCode.OK;
  }
  setLogLevel(args.verbose ? 'debug' : 'warn');
  const total = args.warmup + args.seconds;
  const bar =
    process.stderr.isTTY && !args.json
      ? new cliProgress.SingleBar(
          { format: ' {bar} {percentage}% | {phase} | {iops} IOPS | {requests} requests', stream: process.stderr, hideCursor: true },
          cliProgress.Presets.shades_classic,
        )
      : undefined;
  bar?.start(total, 0, { phase: 'warm-up', iops: 0, requests: 0 });
  const started = Date.now();
  let lastCount = 0;
  let lastTime = started;
  let result: BenchResult;
  try {
    result = await runBench(args, (completed, measuring) => {
      const now = Date.now();
      const iops = Math.round(((completed - lastCount) * 1000) / Math.max(1, now - lastTime));
      lastCount = completed;
      lastTime = now;
      bar?.update(Math.min(total, (now - started) / 1000), { phase: measuring ? 'measuring' : 'warm-up', iops, requests: completed });
    });
  } catch (error) {
    bar?.stop();
    process.stderr.write(`vhost-user-bench: ${(error as Error).message}\n`);
    return ExitCode.FAILURE;
  }
  bar?.update(total);
  bar?.stop();
  process.stdout.write(args.json ? JSON.stringify(result) + '\n' : formatBench(result));
  if (result.failures.length === 0) return ExitCode.OK;
  for (const failure of result.failures) process.stderr.write(`vhost-user-bench: not a valid measurement: ${failure}\n`);
  return EXIT_INVALID_MEASUREMENT;
}
