// The load thread: plays the guest driver on one or more virtqueues as fast as it can (closed
// loop, fixed queue depth) or at a fixed rate (open loop), timing every request into a
// histogram. Everything per request is preallocated: chains are rebuilt from per-slot
// addresses, timestamps live in Float64Arrays, the histogram is fixed-size.
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { parentPort, workerData } from 'node:worker_threads';
import { native } from '../native.js';
import { GuestMemory } from '../dataplane/memory.js';
import { VringDriver } from '../control/frontend/vring-driver.js';
import { Histogram } from './histogram.js';
import { Progress, type LoadQueue, type LoadResult, type LoadSpec } from './load-spec.js';

const spec = workerData as LoadSpec;
const memory = new GuestMemory(spec.regions);
const progress = new Float64Array(spec.progress);
const histogram = new Histogram();
const EPOLLIN = 1;
const BLK_T_IN = 0;
const BLK_T_OUT = 1;
const BLK_HEADER = 16;
/** How long the end-of-run drain waits for requests still in flight (a 4 KiB I/O takes well under this). */
const DRAIN_MS = 2000;

let errors = 0;
let firstError = '';
function noteError(message: string): void {
  if (errors++ === 0) firstError = message;
}

/** xorshift32: repeatable offsets without allocation. */
let randomState = 0x9e3779b9;
function random(): number {
  randomState ^= randomState << 13;
  randomState ^= randomState >>> 17;
  randomState ^= randomState << 5;
  randomState >>>= 0;
  return randomState;
}

class QueueLoad {
  readonly driver: VringDriver;
  readonly queue: LoadQueue;
  readonly depth: number;
  readonly freeSlots: Int32Array;
  freeCount: number;
  readonly started: Float64Array;
  readonly sequence: Uint32Array;
  /** Per slot: guest addresses of the parts of its request. */
  readonly partA: Float64Array;
  readonly partB: Float64Array;
  readonly partC: Float64Array;
  /** Per slot: views used to stamp and check requests (built once). */
  readonly viewA: Uint8Array[] = [];
  readonly viewB: Uint8Array[] = [];
  readonly viewC: Uint8Array[] = [];
  readonly headerView: DataView[] = [];
  readonly tokens: Float64Array;
  readonly lens: Uint32Array;
  issued = 0;
  completed = 0;
  bytes = 0;
  kicks = 0;
  sequentialSector = 0;

  constructor(queue: LoadQueue, depth: number) {
    this.queue = queue;
    this.depth = depth;
    this.driver = new VringDriver({
      memory,
      size: queue.size,
      descAddr: queue.descAddr,
      availAddr: queue.availAddr,
      usedAddr: queue.usedAddr,
      eventIdx: queue.eventIdx,
      indirect: queue.indirect,
    });
    this.freeSlots = new Int32Array(depth);
    for (let i = 0; i < depth; i++) this.freeSlots[i] = depth - 1 - i;
    this.freeCount = depth;
    this.started = new Float64Array(depth);
    this.sequence = new Uint32Array(depth);
    this.partA = new Float64Array(depth);
    this.partB = new Float64Array(depth);
    this.partC = new Float64Array(depth);
    this.tokens = new Float64Array(queue.size);
    this.lens = new Uint32Array(queue.size);
    let next = queue.bufferAddr;
    const take = (bytes: number, align: number): number => {
      next = Math.ceil(next / align) * align;
      const at = next;
      next += bytes;
      if (next > queue.bufferAddr + queue.bufferBytes) throw new RangeError('load buffers do not fit the area reserved for them');
      return at;
    };
    const workload = spec.workload;
    for (let slot = 0; slot < depth; slot++) {
      if (workload.kind === 'echo') {
        this.partA[slot] = take(workload.bytes, 64);
        this.partB[slot] = take(workload.bytes, 64);
        this.viewA.push(view(this.partA[slot]!, workload.bytes));
        this.viewB.push(view(this.partB[slot]!, workload.bytes));
      } else {
        this.partA[slot] = take(BLK_HEADER, 16);
        this.partB[slot] = take(workload.blockSize, 4096);
        this.partC[slot] = take(1, 1);
        const header = view(this.partA[slot]!, BLK_HEADER);
        this.headerView.push(new DataView(header.buffer, header.byteOffset, BLK_HEADER));
        this.viewC.push(view(this.partC[slot]!, 1));
      }
    }
  }

  /** Posts one request in a free slot, timed from `startMs`. False if no slot or ring space. */
  post(startMs: number): boolean {
    if (this.freeCount === 0) return false;
    const slot = this.freeSlots[this.freeCount - 1]!;
    const workload = spec.workload;
    const driver = this.driver;
    if (workload.kind === 'echo') {
      const seq = (this.issued + 1) >>> 0;
      this.sequence[slot] = seq;
      const input = this.viewA[slot]!;
      input[0] = seq & 0xff;
      input[1] = (seq >>> 8) & 0xff;
      input[2] = (seq >>> 16) & 0xff;
      input[3] = seq >>> 24;
      this.viewB[slot]![0] = ~seq & 0xff;
      driver.beginChain(workload.indirect);
      const piece = Math.ceil(workload.bytes / workload.segments);
      for (let part = 0; part < 2; part++) {
        const base = part === 0 ? this.partA[slot]! : this.partB[slot]!;
        for (let offset = 0; offset < workload.bytes; offset += piece) {
          const length = Math.min(piece, workload.bytes - offset);
          driver.addSegment(base + offset, length, part === 1);
        }
      }
    } else {
      const header = this.headerView[slot]!;
      const pattern = workload.pattern;
      const isRead = pattern === 'read' || pattern === 'randread' || (pattern === 'randrw' && random() / 4294967296 < workload.readShare);
      const sectorsPerBlock = workload.blockSize / 512;
      const blocks = Math.floor(workload.capacityBytes / workload.blockSize);
      let sector: number;
      if (pattern === 'read' || pattern === 'write') {
        sector = this.sequentialSector;
        this.sequentialSector += sectorsPerBlock;
        if ((this.sequentialSector + sectorsPerBlock) * 512 > workload.capacityBytes) this.sequentialSector = 0;
      } else {
        sector = (random() % blocks) * sectorsPerBlock;
      }
      header.setUint32(0, isRead ? BLK_T_IN : BLK_T_OUT, true);
      header.setUint32(4, 0, true);
      header.setUint32(8, sector % 4294967296, true);
      header.setUint32(12, Math.floor(sector / 4294967296), true);
      this.viewC[slot]![0] = 0xff;
      driver.beginChain(false);
      driver.addSegment(this.partA[slot]!, BLK_HEADER, false);
      driver.addSegment(this.partB[slot]!, workload.blockSize, isRead);
      driver.addSegment(this.partC[slot]!, 1, true);
    }
    if (driver.endChain(slot) < 0) return false;
    this.freeCount--;
    this.started[slot] = startMs;
    this.issued++;
    return true;
  }

  /** Publishes posted chains; kicks only if the back-end asked for it (EVENT_IDX / NO_NOTIFY). */
  kick(): void {
    this.driver.publish();
    if (this.queue.kickFd >= 0 && this.driver.needsKick()) {
      native.eventfdWrite(this.queue.kickFd, 1);
      this.kicks++;
    }
  }

  /** Reaps completions; returns how many. */
  reap(nowMs: number, recording: boolean): number {
    const count = this.driver.reapUsed(this.tokens, this.lens);
    const workload = spec.workload;
    for (let i = 0; i < count; i++) {
      const slot = this.tokens[i]!;
      if (recording) histogram.record((nowMs - this.started[slot]!) * 1e6);
      if (workload.kind === 'echo') {
        if (workload.verify) {
          const seq = this.sequence[slot]!;
          const output = this.viewB[slot]!;
          const echoed = (output[0]! | (output[1]! << 8) | (output[2]! << 16) | (output[3]! << 24)) >>> 0;
          if (echoed !== seq || this.lens[i] !== workload.bytes) {
            noteError(`queue ${this.queue.index}: request ${seq} came back as ${echoed} with length ${this.lens[i]}`);
          }
        }
        this.bytes += workload.bytes;
      } else {
        const status = this.viewC[slot]![0]!;
        if (status !== 0) noteError(`queue ${this.queue.index}: virtio-blk status ${status}`);
        this.bytes += workload.blockSize;
      }
      this.freeSlots[this.freeCount++] = slot;
      this.completed++;
    }
    return count;
  }
}

function view(gpa: number, length: number): Uint8Array {
  const window = memory.translate(gpa, length);
  if (window < 0) throw new RangeError(`guest range 0x${gpa.toString(16)}+${length} is not mapped`);
  return memory.windowBytesView[window]!.subarray(memory.outWindowOffset, memory.outWindowOffset + length);
}

function threadCpuSeconds(): number {
  // schedstat's first field: nanoseconds this thread ran (precise, unlike utime/stime ticks).
  return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]) / 1e9;
}

function run(): LoadResult {
  if (spec.cpu >= 0) native.setAffinity([spec.cpu]);
  const loads = spec.queues.map((queue) => new QueueLoad(queue, Math.min(spec.queueDepth, queue.size)));
  const eventWait = spec.wait === 'event';
  let epollFd = -1;
  const events = new Uint32Array(2 * Math.max(1, loads.length));
  if (eventWait) {
    epollFd = native.epollCreate();
    for (let q = 0; q < loads.length; q++) native.epollCtl(epollFd, 1, loads[q]!.queue.callFd, EPOLLIN, q);
  } else {
    for (const load of loads) load.driver.disableCallbacks();
  }
  const intervalMs = spec.rate > 0 ? 1000 / spec.rate : 0;
  const byCount = spec.requestsPerQueue > 0;
  let recording = byCount || spec.warmupSeconds <= 0;
  let phaseStart = performance.now();
  let measureStart = recording ? phaseStart : 0;
  let cpuStart = recording ? threadCpuSeconds() : 0;
  let nextIssue = phaseStart;
  let rr = 0;
  if (recording) progress[Progress.MEASURING] = 1;

  for (;;) {
    let now = performance.now();
    // Issue.
    if (intervalMs > 0) {
      // Open loop: requests are due on a fixed schedule and timed from when they were due, so a
      // slow back-end cannot hide its queueing delay (no coordinated omission).
      let posted = 0;
      while (nextIssue <= now && posted < 4096) {
        const load = loads[rr]!;
        if (byCount && load.issued >= spec.requestsPerQueue) break;
        if (!load.post(nextIssue)) break;
        nextIssue += intervalMs;
        rr = rr + 1 === loads.length ? 0 : rr + 1;
        posted++;
      }
      for (let q = 0; q < loads.length; q++) loads[q]!.kick();
    } else {
      for (let q = 0; q < loads.length; q++) {
        const load = loads[q]!;
        while (!(byCount && load.issued >= spec.requestsPerQueue) && load.post(now)) {
          /* fill the queue depth */
        }
        load.kick();
      }
    }
    // Reap.
    now = performance.now();
    let reaped = 0;
    let done = true;
    let broken = false;
    for (let q = 0; q < loads.length; q++) {
      const load = loads[q]!;
      reaped += load.reap(now, recording);
      if (!byCount || load.completed < spec.requestsPerQueue) done = false;
      if (load.driver.broken) broken = true;
    }
    if (reaped > 0) progress[Progress.COMPLETED] += reaped;
    if (byCount && done) break;
    if (broken) {
      // The back-end corrupted a used ring: nothing more can be measured on it.
      for (const load of loads) if (load.driver.broken) noteError(`queue ${load.queue.index}: ${load.driver.brokenReason}`);
      break;
    }
    if (!recording && now - phaseStart >= spec.warmupSeconds * 1000) {
      recording = true;
      for (const load of loads) {
        load.completed = 0;
        load.bytes = 0;
        load.kicks = 0;
      }
      measureStart = now;
      cpuStart = threadCpuSeconds();
      progress[Progress.MEASURING] = 1;
    }
    if (!byCount && recording && now - measureStart >= spec.seconds * 1000) break;
    if (progress[Progress.STOP] !== 0) break;
    if (reaped === 0 && eventWait) {
      let ready = false;
      for (let q = 0; q < loads.length; q++) if (loads[q]!.driver.enableCallbacksAndRecheck()) ready = true;
      // Open loop: never oversleep the schedule. epoll's timeout has millisecond granularity,
      // and a late issue would be charged to the back-end (latency is timed from when a request
      // was due), so the thread only sleeps when the next issue is more than 2 ms away.
      const untilIssue = intervalMs > 0 ? nextIssue - performance.now() : Infinity;
      if (!ready && untilIssue > 2) {
        const timeout = intervalMs > 0 ? Math.floor(untilIssue) - 1 : 100;
        const count = native.epollWait(epollFd, events, loads.length, timeout);
        for (let e = 0; e < count; e++) native.eventfdRead(loads[events[2 * e + 1]!]!.queue.callFd);
      }
    }
  }
  const end = performance.now();
  const cpuSeconds = threadCpuSeconds() - cpuStart;
  // Drain what is still in flight so the back-end can stop the rings cleanly. A request a
  // working back-end has not completed within the drain time is reported as lost (a stall); a
  // stopped run or a broken ring gets a shorter wait.
  const drainDeadline = performance.now() + (progress[Progress.STOP] !== 0 || errors > 0 ? 1000 : DRAIN_MS);
  let inFlightAtEnd = 0;
  for (let q = 0; q < loads.length; q++) {
    const load = loads[q]!;
    while (load.freeCount < load.depth && !load.driver.broken && performance.now() < drainDeadline) load.reap(performance.now(), false);
    inFlightAtEnd += load.depth - load.freeCount;
  }
  if (epollFd >= 0) native.close(epollFd);
  let requests = 0;
  let bytes = 0;
  let kicks = 0;
  for (const load of loads) {
    requests += load.completed;
    bytes += load.bytes;
    kicks += load.kicks;
  }
  return {
    requests,
    bytes,
    seconds: (end - measureStart) / 1000,
    histogram: { counts: histogram.counts, count: histogram.count, min: histogram.min, max: histogram.max, sum: histogram.sum },
    cpuSeconds,
    kicks,
    errors,
    firstError,
    inFlightAtEnd,
  };
}

parentPort!.postMessage(run());
