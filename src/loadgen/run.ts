// Running one load-generator measurement against a vhost-user-blk back-end and reporting it:
// the library behind `vhost-user-bench blk`, also used by `npm run bench:blk` and `bench:tuning`.
import { readFileSync } from 'node:fs';
import { cpus, hostname } from 'node:os';
import { FrontendDevice } from '../frontend/device.js';
import { featureHex } from '../frontend/features.js';
import { packageVersion } from '../version.js';
import { startLoad, type LoadReport } from './load.js';
import type { BlkPattern } from './load-spec.js';
import { LOADGEN_BLK_CONFIG_BYTES, LOADGEN_BLK_FEATURES, blkLimits, blkWorkloadProblem } from './blk-features.js';

/** What one measurement runs (the CLI's options, parsed). */
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
  /** Drive packed virtqueues (the back-end must offer VIRTIO_F_RING_PACKED). Default false. */
  packed?: boolean;
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

export async function runBench(
  args: BenchArgs,
  onProgress?: (completed: number, measuring: boolean) => void,
): Promise<BenchResult> {
  const device = await FrontendDevice.connect({
    socketPath: args.socketPath,
    queues: args.queues,
    queueSize: args.queueSize,
    memory: [{ guestPhysAddr: 0, size: args.memoryBytes }],
    deviceFeatures: LOADGEN_BLK_FEATURES,
    packed: args.packed,
    connectTimeoutMs: 2000,
  });
  try {
    if (device.queues.length < args.queues) {
      throw new Error(`the back-end offers ${device.queues.length} queue(s), fewer than --queues ${args.queues}`);
    }
    const limits = blkLimits(await device.getConfig(0, LOADGEN_BLK_CONFIG_BYTES), device.features);
    const problem = blkWorkloadProblem(
      limits,
      { pattern: args.pattern, blockSize: args.blockSize, queues: args.queues },
      device.features,
    );
    if (problem) throw new Error(problem);
    const capacityBytes = limits.capacityBytes;
    const backendStart = args.backendPid ? processCpuSeconds(args.backendPid) : 0;
    const load = startLoad(device, {
      workload: {
        kind: 'blk',
        pattern: args.pattern,
        blockSize: args.blockSize,
        capacityBytes,
        readShare: args.readShare,
        seed: 1,
      },
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
  if (r.in_flight_at_end > 0)
    failures.push(`${r.in_flight_at_end} request(s) never completed (the back-end stalled or lost them)`);
  // The load thread measures at least the asked window unless the run was cut short.
  if (r.seconds < args.seconds) {
    failures.push(
      `the measured window was ${r.seconds} s, shorter than the ${args.seconds} s asked${r.disconnected ? ` (${r.disconnected})` : ''}`,
    );
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
