// Runs a load against a connected FrontendDevice from a separate thread, so the thread that
// owns the control connection (and, in tests, the back-end's control plane) stays responsive.
import { Worker } from 'node:worker_threads';
import type { FrontendDevice } from '../frontend/device.js';
import { splitRingLayout } from '../frontend/vring-driver.js';
import { Histogram } from './histogram.js';
import { Progress, type LoadResult, type LoadSpec, type Workload } from './load-spec.js';
import { netSlotBytes } from './queue-load.js';

export interface LoadOptions {
  workload: Workload;
  queueDepth: number;
  /** Which of the device's queues to drive (default: all). */
  queues?: number[];
  /** Queues to drive each with its own workload and depth (replaces `queues`). */
  perQueue?: { queue: number; workload: Workload; queueDepth: number }[];
  requestsPerQueue?: number;
  seconds?: number;
  warmupSeconds?: number;
  rate?: number;
  wait?: 'spin' | 'event';
  cpu?: number;
}

export interface LoadReport {
  requests: number;
  bytes: number;
  seconds: number;
  iops: number;
  mbPerSecond: number;
  latencyNs: { mean: number; min: number; p50: number; p90: number; p99: number; p999: number; max: number };
  histogram: Histogram;
  cpuSeconds: number;
  kicks: number;
  errors: number;
  firstError: string;
  /** Requests the back-end never completed (still in flight after the end-of-run drain). */
  inFlightAtEnd: number;
  /** Per queue over the window: requests completed and their bytes (net: frames). */
  queues: { index: number; requests: number; bytes: number }[];
}

export interface RunningLoad {
  /** Requests completed so far (all queues). */
  completed(): number;
  /** Whether warm-up is over. */
  measuring(): boolean;
  /** Ask the load to stop early (it drains, then resolves). */
  stop(): void;
  result: Promise<LoadReport>;
}

/**
 * Reserves request buffers in the device's guest memory (once per device: the areas are kept
 * for later runs) and starts the load thread.
 */
export function startLoad(device: FrontendDevice, options: LoadOptions): RunningLoad {
  const plan =
    options.perQueue ??
    (options.queues ?? device.queues.map((q) => q.index)).map((queue) => ({
      queue,
      workload: options.workload,
      queueDepth: options.queueDepth,
    }));
  const depth = options.queueDepth;
  for (const { queueDepth } of [{ queueDepth: depth }, ...plan]) {
    if (!Number.isInteger(queueDepth) || queueDepth < 1)
      throw new RangeError(`queue depth must be a positive integer, got ${queueDepth}`);
  }
  const queues = plan.map(({ queue: index, workload, queueDepth }) => {
    const queue = device.queues[index];
    if (!queue) throw new RangeError(`queue ${index} is not set up (device has ${device.queues.length})`);
    const bufferBytes = slotBytes(workload) * Math.min(queueDepth, queue.driver.size) + 4096;
    const bufferAddr = reserve(device, index, bufferBytes);
    return {
      index,
      size: queue.driver.size,
      descAddr: queue.descAddr,
      availAddr: queue.availAddr,
      usedAddr: queue.usedAddr,
      kickFd: queue.kickFd,
      callFd: queue.callFd,
      eventIdx: queue.driver.eventIdx,
      packed: queue.packed,
      indirect: queue.indirect,
      bufferAddr,
      bufferBytes,
      ...(options.perQueue ? { workload, queueDepth } : {}),
    };
  });
  const progress = new SharedArrayBuffer(Progress.SLOTS * 8);
  const spec: LoadSpec = {
    regions: device.memory.regions.map(({ guestPhysAddr, size, userspaceAddr, buffer, bufferOffset }) => ({
      guestPhysAddr,
      size,
      userspaceAddr,
      buffer,
      bufferOffset,
    })),
    queues,
    workload: options.workload,
    queueDepth: depth,
    requestsPerQueue: options.requestsPerQueue ?? 0,
    seconds: options.seconds ?? 0,
    warmupSeconds: options.warmupSeconds ?? 0,
    rate: options.rate ?? 0,
    wait: options.wait ?? 'spin',
    cpu: options.cpu ?? -1,
    progress,
  };
  return spawnLoad(spec);
}

/** Starts the load thread on a complete spec. */
function spawnLoad(spec: LoadSpec): RunningLoad {
  if (spec.requestsPerQueue <= 0 && spec.seconds <= 0) throw new RangeError('give a request count or a duration');
  const progressView = new Float64Array(spec.progress);
  const worker = new Worker(new URL('./load-worker.js', import.meta.url), { workerData: spec });
  const result = new Promise<LoadReport>((resolve, reject) => {
    worker.once('message', (raw: LoadResult) => resolve(report(raw)));
    worker.once('error', reject);
    worker.once('exit', (code) => {
      if (code !== 0) reject(new Error(`load thread exited with code ${code}`));
    });
  });
  return {
    completed: () => progressView[Progress.COMPLETED],
    measuring: () => progressView[Progress.MEASURING] === 1,
    stop: () => {
      progressView[Progress.STOP] = 1;
    },
    result,
  };
}

export function runLoad(device: FrontendDevice, options: LoadOptions): Promise<LoadReport> {
  return startLoad(device, options).result;
}

export interface LoopbackOptions {
  queueDepth: number;
  seconds: number;
  warmupSeconds?: number;
  cpu?: number;
  /** Bytes per request (default 4096). */
  blockSize?: number;
  queueSize?: number;
}

/**
 * The generator's own ceiling: the same load thread, 4 KiB random reads on one queue, against a
 * loopback device in that thread which completes every request at once. No back-end, no
 * eventfd, no other thread: what the generator costs per request, and so the most it can measure.
 */
export function runLoopbackLoad(options: LoopbackOptions): Promise<LoadReport> {
  const queueSize = options.queueSize ?? 256;
  const depth = Math.min(options.queueDepth, queueSize);
  const workload: Workload = {
    kind: 'blk',
    pattern: 'randread',
    blockSize: options.blockSize ?? 4096,
    capacityBytes: 1 << 30,
    readShare: 1,
    seed: 1,
  };
  const layout = splitRingLayout(queueSize);
  const bufferAddr = Math.ceil(layout.totalBytes / 4096) * 4096;
  const bufferBytes = slotBytes(workload) * depth + 4096;
  const size = Math.ceil((bufferAddr + bufferBytes) / 4096) * 4096;
  const buffer = new SharedArrayBuffer(size);
  return spawnLoad({
    regions: [{ guestPhysAddr: 0, size, userspaceAddr: 0, buffer, bufferOffset: 0 }],
    queues: [
      {
        index: 0,
        size: queueSize,
        descAddr: layout.descOffset,
        availAddr: layout.availOffset,
        usedAddr: layout.usedOffset,
        kickFd: -1,
        callFd: -1,
        eventIdx: false,
        packed: false, // the loopback device reads split rings only
        bufferAddr,
        bufferBytes,
      },
    ],
    workload,
    queueDepth: depth,
    requestsPerQueue: 0,
    seconds: options.seconds,
    warmupSeconds: options.warmupSeconds ?? 0,
    rate: 0,
    wait: 'spin',
    cpu: options.cpu ?? -1,
    progress: new SharedArrayBuffer(Progress.SLOTS * 8),
    loopback: true,
  }).result;
}

function report(raw: LoadResult): LoadReport {
  const histogram = new Histogram();
  histogram.merge(raw.histogram);
  const seconds = raw.seconds > 0 ? raw.seconds : Number.EPSILON;
  return {
    requests: raw.requests,
    bytes: raw.bytes,
    seconds: raw.seconds,
    iops: raw.requests / seconds,
    mbPerSecond: raw.bytes / seconds / 1e6,
    latencyNs: {
      mean: histogram.mean,
      min: histogram.count ? histogram.min : 0,
      p50: histogram.percentile(0.5),
      p90: histogram.percentile(0.9),
      p99: histogram.percentile(0.99),
      p999: histogram.percentile(0.999),
      max: histogram.max,
    },
    histogram,
    cpuSeconds: raw.cpuSeconds,
    kicks: raw.kicks,
    errors: raw.errors,
    firstError: raw.firstError,
    inFlightAtEnd: raw.inFlightAtEnd,
    queues: raw.queues,
  };
}

function slotBytes(workload: Workload): number {
  if (workload.kind === 'echo') return 2 * (Math.ceil(workload.bytes / 64) * 64);
  if (workload.kind === 'net') return Math.ceil(netSlotBytes(workload) / 64) * 64;
  return 16 + Math.ceil(workload.blockSize / 4096) * 4096 + 4096 + 64;
}

const reserved = new WeakMap<FrontendDevice, Map<number, { addr: number; bytes: number }>>();

function reserve(device: FrontendDevice, queue: number, bytes: number): number {
  let areas = reserved.get(device);
  if (!areas) reserved.set(device, (areas = new Map<number, { addr: number; bytes: number }>()));
  const existing = areas.get(queue);
  if (existing && existing.bytes >= bytes) return existing.addr;
  const addr = device.memory.allocate(bytes, 4096);
  areas.set(queue, { addr, bytes });
  return addr;
}
