// The load thread: plays the guest driver on one or more virtqueues as fast as it can (closed
// loop, fixed queue depth) or at a fixed rate (open loop), timing every request into a
// histogram. Everything per request is preallocated: chains are rebuilt from per-slot
// addresses, timestamps live in Float64Arrays, the histogram is fixed-size.
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { parentPort, workerData } from 'node:worker_threads';
import { native } from '../native.js';
import { GuestMemory } from '../dataplane/memory.js';
import { ErrorLog, QueueLoad, Xorshift32, type LoadContext } from './queue-load.js';
import { LoopbackDevice } from './loopback.js';
import { Histogram } from './histogram.js';
import { Progress, type LoadResult, type LoadSpec } from './load-spec.js';

const spec = workerData as LoadSpec;
const memory = new GuestMemory(spec.regions);
const progress = new Float64Array(spec.progress);
const histogram = new Histogram();
const errorLog = new ErrorLog();
const context: LoadContext = { memory, workload: spec.workload, histogram, errors: errorLog, random: new Xorshift32() };
const EPOLLIN = 1;
/** How long the end-of-run drain waits for requests still in flight (a 4 KiB I/O takes well under this). */
const DRAIN_MS = 2000;

function threadCpuSeconds(): number {
  // schedstat's first field: nanoseconds this thread ran (precise, unlike utime/stime ticks).
  return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]) / 1e9;
}

function run(): LoadResult {
  if (spec.cpu >= 0) native.setAffinity([spec.cpu]);
  const loads = spec.queues.map(
    (queue) =>
      new QueueLoad(
        queue,
        Math.min(queue.queueDepth ?? spec.queueDepth, queue.size),
        queue.workload ? { ...context, workload: queue.workload } : context,
      ),
  );
  const loopbacks = spec.loopback ? loads.map((load) => new LoopbackDevice(spec.regions, load.queue)) : null;
  const eventWait = spec.wait === 'event';
  let epollFd = -1;
  const events = new Uint32Array(2 * Math.max(1, loads.length));
  if (eventWait) {
    epollFd = native.epollCreate();
    for (let q = 0; q < loads.length; q++) native.epollCtl(epollFd, 1, loads[q].queue.callFd, EPOLLIN, q);
  } else {
    for (const load of loads) load.driver.disableCallbacks();
  }
  // Open loop paces the queues that issue requests; a net RX queue only offers buffers for the
  // device to fill, so it is kept full whatever the rate (net loopback paces TX alone).
  const paced: QueueLoad[] = [];
  const keptFull: QueueLoad[] = [];
  for (const load of loads) {
    const workload = load.queue.workload ?? spec.workload;
    (workload.kind === 'net' && workload.role === 'rx' ? keptFull : paced).push(load);
  }
  const intervalMs = spec.rate > 0 && paced.length > 0 ? 1000 / spec.rate : 0;
  const byCount = spec.requestsPerQueue > 0;
  let recording = byCount || spec.warmupSeconds <= 0;
  const phaseStart = performance.now();
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
        const load = paced[rr];
        if (byCount && load.issued >= spec.requestsPerQueue) break;
        if (!load.post(nextIssue)) break;
        nextIssue += intervalMs;
        rr = rr + 1 === paced.length ? 0 : rr + 1;
        posted++;
      }
      for (let q = 0; q < keptFull.length; q++) {
        const load = keptFull[q];
        while (!(byCount && load.issued >= spec.requestsPerQueue) && load.post(now)) {
          /* offer every free buffer */
        }
      }
      for (let q = 0; q < loads.length; q++) loads[q].kick();
    } else {
      for (let q = 0; q < loads.length; q++) {
        const load = loads[q];
        while (!(byCount && load.issued >= spec.requestsPerQueue) && load.post(now)) {
          /* fill the queue depth */
        }
        load.kick();
      }
    }
    // Reap.
    if (loopbacks !== null) for (let q = 0; q < loopbacks.length; q++) loopbacks[q].complete();
    now = performance.now();
    let reaped = 0;
    let done = true;
    let broken = false;
    for (let q = 0; q < loads.length; q++) {
      const load = loads[q];
      reaped += load.reap(now, recording);
      if (!byCount || load.completed < spec.requestsPerQueue) done = false;
      if (load.driver.broken) broken = true;
    }
    if (reaped > 0) progress[Progress.COMPLETED] += reaped;
    if (byCount && done) break;
    if (broken) {
      // The back-end corrupted a used ring: nothing more can be measured on it.
      for (const load of loads) if (load.driver.broken) errorLog.note(`queue ${load.queue.index}: ${load.driver.brokenReason}`);
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
      for (let q = 0; q < loads.length; q++) if (loads[q].driver.enableCallbacksAndRecheck()) ready = true;
      // Open loop: never oversleep the schedule. epoll's timeout has millisecond granularity,
      // and a late issue would be charged to the back-end (latency is timed from when a request
      // was due), so the thread only sleeps when the next issue is more than 2 ms away.
      const untilIssue = intervalMs > 0 ? nextIssue - performance.now() : Infinity;
      if (!ready && untilIssue > 2) {
        const timeout = intervalMs > 0 ? Math.floor(untilIssue) - 1 : 100;
        const count = native.epollWait(epollFd, events, loads.length, timeout);
        for (let e = 0; e < count; e++) native.eventfdRead(loads[events[2 * e + 1]].queue.callFd);
      }
    }
  }
  const end = performance.now();
  // What the window measured: taken before the drain (its completions are not the window's); a
  // run stopped during warm-up measured nothing.
  const cpuSeconds = recording ? threadCpuSeconds() - cpuStart : 0;
  let requests = 0;
  let bytes = 0;
  let kicks = 0;
  if (recording) {
    for (const load of loads) {
      requests += load.completed;
      bytes += load.bytes;
      kicks += load.kicks;
    }
  }
  // Drain what is still in flight so the back-end can stop the rings cleanly. A request a
  // working back-end has not completed within the drain time is reported as lost (a stall); a
  // stopped run or a broken ring gets a shorter wait.
  const drainDeadline = performance.now() + (progress[Progress.STOP] !== 0 || errorLog.count > 0 ? 1000 : DRAIN_MS);
  let inFlightAtEnd = 0;
  const queues = loads.map((load) => ({
    index: load.queue.index,
    requests: recording ? load.completed : 0,
    bytes: recording ? load.bytes : 0,
  }));
  for (let q = 0; q < loads.length; q++) {
    const load = loads[q];
    if (load.holdsAtEnd) continue;
    while (load.freeCount < load.depth && !load.driver.broken && performance.now() < drainDeadline) {
      loopbacks?.[q]!.complete();
      load.reap(performance.now(), false);
    }
    inFlightAtEnd += load.depth - load.freeCount;
  }
  if (epollFd >= 0) native.close(epollFd);
  return {
    requests,
    bytes,
    seconds: recording ? (end - measureStart) / 1000 : 0,
    histogram: { counts: histogram.counts, count: histogram.count, min: histogram.min, max: histogram.max, sum: histogram.sum },
    cpuSeconds,
    kicks,
    errors: errorLog.count,
    firstError: errorLog.first,
    inFlightAtEnd,
    queues,
  };
}

parentPort!.postMessage(run());
