// A data-plane worker thread: pinned to one CPU, it owns some queues and polls them.
//
// Loop, per pass: pop up to BATCH chains from each running queue and hand them to the device
// handler; let the handler submit its batch and reap completions; publish each queue's used
// entries once and signal the call fd when EVENT_IDX (or NO_INTERRUPT) says so. The mailbox is
// checked every MAILBOX_EVERY busy passes and on every idle one.
//
// Poll modes:
//   busy       never sleeps; kicks are suppressed (avail_event left stale / NO_NOTIFY set).
//   interrupt  kicks stay enabled; when a pass finds nothing it re-checks the rings and sleeps
//              in epoll on the kick fds, the handler's completion fd and the mailbox eventfd.
//   adaptive   spins like busy while work arrives; after idleBudgetUs without work it enables
//              kicks, re-checks (no lost wake-up), sleeps like interrupt, and spins again on wake.
// Nothing in the loop allocates: requests come from a per-queue pool, completions reuse them.
import { parentPort, receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { native } from '../native.js';
import { GuestMemory } from './memory.js';
import { BrokenReason, SplitVirtqueue } from './virtqueue.js';
import { VirtqRequest } from './request.js';
import { QUEUE_STAT_SLOTS, QueueStat } from './stats.js';
import { Mailbox, POLL_MODE_CODE, type PollMode, type QueueStart, type WorkerCommand, type WorkerInit, type WorkerMessage } from './commands.js';
import type { CreateQueueHandler, HandlerContext, QueueHandler, WorkerQueue } from './device-api.js';

/** Chains popped per queue per pass: bounds latency for the other queues. */
const BATCH = 64;
/** Busy passes between mailbox checks. */
const MAILBOX_EVERY = 64;
const EPOLLIN = 1;
const EPOLL_ADD = 1;
const EPOLL_DEL = 2;
const WAKE_MAILBOX = 0x10000;
const WAKE_COMPLETION = 0x10001;
const MAX_EVENTS = 64;

const init = workerData as WorkerInit;
const port = parentPort as MessagePort;

class QueueRunner implements WorkerQueue {
  readonly index: number;
  readonly vq: SplitVirtqueue;
  readonly stats: Float64Array;
  kickFd: number;
  callFd: number;
  errFd: number;
  inFlight = 0;
  /** Set by a stop command: pop nothing more; reply when in-flight requests are done. */
  stopCommand = -1;
  private readonly pool: VirtqRequest[];
  private free: number;
  private dirty = false;
  private brokenReported = false;

  constructor(start: QueueStart, memory: GuestMemory, stats: Float64Array, maxSegments: number) {
    this.index = start.index;
    this.kickFd = start.kickFd;
    this.callFd = start.callFd;
    this.errFd = start.errFd;
    this.stats = stats;
    this.vq = new SplitVirtqueue({
      memory,
      size: start.size,
      descAddr: start.descUserAddr,
      availAddr: start.availUserAddr,
      usedAddr: start.usedUserAddr,
      addressSpace: 'userspace',
      lastAvailIdx: start.lastAvailIdx,
      eventIdx: start.eventIdx,
      indirectDesc: start.indirectDesc,
      index: start.index,
    });
    // In-flight requests never exceed the queue size (each holds a distinct head).
    this.pool = [];
    for (let i = 0; i < start.size; i++) this.pool.push(new VirtqRequest(maxSegments));
    this.free = start.size;
  }

  get memory(): GuestMemory {
    return this.vq.memory;
  }

  /** Pops and hands out up to `budget` requests; returns how many. */
  process(handler: QueueHandler, budget: number): number {
    if (this.stopCommand >= 0) return 0;
    let popped = 0;
    while (popped < budget && this.free > 0) {
      const request = this.pool[this.free - 1]!;
      if (!this.vq.pop(request)) break;
      this.free--;
      this.inFlight++;
      popped++;
      try {
        handler.handle(this, request);
      } catch (error) {
        // A device bug must not take the worker (and every other queue) down: this queue stops.
        this.failRequest(request, error);
        break;
      }
    }
    if (this.vq.broken && !this.brokenReported) this.reportBroken();
    return popped;
  }

  complete(request: VirtqRequest, writtenLen: number): void {
    // Written off when the handler failed (handlerFailed): the slot is already free.
    if (this.inFlight === 0) return;
    this.vq.pushUsed(request.head, writtenLen);
    this.pool[this.free++] = request;
    this.inFlight--;
    this.dirty = true;
    const stats = this.stats;
    stats[QueueStat.requests]++;
    stats[QueueStat.bytes] += writtenLen;
  }

  /** Publishes this pass's used entries with one store and notifies the driver if it asked. */
  publish(): void {
    if (!this.dirty) return;
    this.dirty = false;
    this.vq.flushUsed();
    if (this.vq.needsCall()) {
      if (this.callFd >= 0) native.eventfdWrite(this.callFd, 1);
      this.stats[QueueStat.calls]++;
    } else {
      this.stats[QueueStat.callsSuppressed]++;
    }
  }

  /** The handler threw for `request`: give the slot back and break the queue. */
  failRequest(request: VirtqRequest, error: unknown): void {
    this.pool[this.free++] = request;
    this.inFlight--;
    this.vq.markBroken(BrokenReason.DEVICE_ERROR, request.head);
    log('error', 'device handler failed; queue stopped', {
      queue: this.index,
      error: error instanceof Error ? error.message : String(error),
    });
  }

  reportBroken(): void {
    this.brokenReported = true;
    this.stats[QueueStat.broken] = this.vq.brokenReason;
    if (this.errFd >= 0) native.eventfdWrite(this.errFd, 1);
    send({ kind: 'broken', index: this.index, reason: this.vq.brokenReason, description: this.vq.describeBroken() });
  }
}

// ---- worker state ----------------------------------------------------------------------------

const mailbox = new Int32Array(init.mailbox);
const statsView = new Float64Array(init.stats);
const queues: QueueRunner[] = [];
let memory: GuestMemory | null = null;
let handler: QueueHandler;
let mode: PollMode = init.mode;
let idleBudgetMs = init.idleBudgetUs / 1000;
let seenSeq = 0;
let resetCommand = -1;
let running = true;
const epollFd = native.epollCreate();
const events = new Uint32Array(2 * MAX_EVENTS);

function send(message: WorkerMessage): void {
  port.postMessage(message);
}

function log(level: 'error' | 'warn' | 'info' | 'debug', msg: string, fields?: Record<string, unknown>): void {
  send({ kind: 'log', level, msg, fields: { worker: init.worker, ...fields } });
}

function reply(id: number, value?: number): void {
  send({ kind: 'reply', id, ok: true, value });
}

function fail(id: number, error: unknown): void {
  send({ kind: 'reply', id, ok: false, error: error instanceof Error ? error.message : String(error) });
}

function findQueue(index: number): number {
  for (let i = 0; i < queues.length; i++) if (queues[i]!.index === index) return i;
  return -1;
}

function setNotifications(enabled: boolean): void {
  for (const queue of queues) {
    if (enabled) queue.vq.enableNotification();
    else queue.vq.disableNotification();
  }
}

function removeQueue(position: number): void {
  const queue = queues[position]!;
  if (queue.kickFd >= 0) native.epollCtl(epollFd, EPOLL_DEL, queue.kickFd, 0, 0);
  queue.stats[QueueStat.inFlight] = 0;
  queues.splice(position, 1);
}

// ---- commands --------------------------------------------------------------------------------

function checkMailbox(): boolean {
  const seq = Atomics.load(mailbox, Mailbox.SEQ);
  if (seq === seenSeq) return false;
  seenSeq = seq;
  for (;;) {
    const received = receiveMessageOnPort(port);
    if (!received) break;
    runCommand(received.message as WorkerCommand);
  }
  return true;
}

function runCommand(command: WorkerCommand): void {
  try {
    switch (command.op) {
      case 'memory': {
        const next = new GuestMemory(command.regions);
        memory = next;
        for (const queue of queues) {
          queue.vq.setMemory(next);
        }
        handler.setMemory(next);
        reply(command.id);
        return;
      }
      case 'start': {
        if (!memory) throw new Error(`queue ${command.queue.index}: no memory table`);
        if (findQueue(command.queue.index) >= 0) throw new Error(`queue ${command.queue.index} is already running`);
        const stats = statsView.subarray(command.queue.index * QUEUE_STAT_SLOTS, (command.queue.index + 1) * QUEUE_STAT_SLOTS);
        const queue = new QueueRunner(command.queue, memory, stats, init.maxSegments);
        queues.push(queue);
        if (queue.kickFd >= 0) native.epollCtl(epollFd, EPOLL_ADD, queue.kickFd, EPOLLIN, queue.index);
        if (mode === 'interrupt') queue.vq.enableNotification();
        else queue.vq.disableNotification();
        // A ring broken from the start (addresses outside memory, bad size) is reported now.
        if (queue.vq.broken) queue.reportBroken();
        reply(command.id);
        return;
      }
      case 'stop': {
        const position = findQueue(command.index);
        if (position < 0) {
          fail(command.id, `queue ${command.index} is not running on worker ${init.worker}`);
          return;
        }
        queues[position]!.stopCommand = command.id;
        finishStops();
        return;
      }
      case 'notify-fds': {
        const position = findQueue(command.index);
        if (position >= 0) {
          queues[position]!.callFd = command.callFd;
          queues[position]!.errFd = command.errFd;
        }
        reply(command.id);
        return;
      }
      case 'mode': {
        mode = command.mode;
        idleBudgetMs = command.idleBudgetUs / 1000;
        Atomics.store(mailbox, Mailbox.MODE, POLL_MODE_CODE[mode]);
        setNotifications(mode === 'interrupt');
        reply(command.id);
        return;
      }
      case 'reset': {
        for (const queue of queues) if (queue.stopCommand < 0) queue.stopCommand = -2;
        resetCommand = command.id;
        finishStops();
        return;
      }
      case 'shutdown': {
        running = false;
        reply(command.id);
        return;
      }
    }
  } catch (error) {
    fail(command.id, error);
  }
}

/** Replies to stop / reset commands whose queues have drained. */
function finishStops(): void {
  for (let i = queues.length - 1; i >= 0; i--) {
    const queue = queues[i]!;
    if (queue.stopCommand === -1 || queue.inFlight > 0) continue;
    queue.publish();
    const id = queue.stopCommand;
    const lastAvailIdx = queue.vq.lastAvailIdx;
    removeQueue(i);
    if (id >= 0) reply(id, lastAvailIdx);
  }
  if (resetCommand >= 0 && queues.length === 0) {
    memory = null;
    const id = resetCommand;
    resetCommand = -1;
    reply(id);
  }
}

// ---- the loop --------------------------------------------------------------------------------

function pass(): number {
  let work = 0;
  for (let i = 0; i < queues.length; i++) {
    const queue = queues[i]!;
    const popped = queue.process(handler, BATCH);
    if (popped > 0) queue.stats[QueueStat.busyPasses]++;
    else queue.stats[QueueStat.idlePasses]++;
    work += popped;
  }
  try {
    handler.flush();
    work += handler.poll();
  } catch (error) {
    // The handler's own state is suspect now: stop every queue of this worker, keep serving commands.
    handlerFailed(error);
  }
  for (let i = 0; i < queues.length; i++) {
    const queue = queues[i]!;
    queue.publish();
    queue.stats[QueueStat.inFlight] = queue.inFlight;
  }
  return work;
}

function handlerFailed(error: unknown): void {
  log('error', 'device handler failed while completing requests; stopping this worker\'s queues', {
    error: error instanceof Error ? error.message : String(error),
  });
  for (let i = 0; i < queues.length; i++) {
    const queue = queues[i]!;
    queue.vq.markBroken(BrokenReason.DEVICE_ERROR);
    // Its in-flight requests will never complete: let stop/reset drain at once.
    queue.inFlight = 0;
  }
}

/** True when every running queue has a kick fd, so sleeping cannot miss work. */
function canSleep(): boolean {
  for (let i = 0; i < queues.length; i++) if (queues[i]!.kickFd < 0 && queues[i]!.stopCommand === -1) return false;
  return true;
}

/** Enables kicks and re-checks every ring: true if work arrived meanwhile (do not sleep). */
function armAndRecheck(): boolean {
  let work = false;
  for (let i = 0; i < queues.length; i++) {
    const queue = queues[i]!;
    if (queue.stopCommand === -1 && queue.vq.enableNotificationAndRecheck()) work = true;
  }
  return work;
}

function sleep(): void {
  const before = performance.now();
  const count = native.epollWait(epollFd, events, MAX_EVENTS, -1);
  const slept = performance.now() - before;
  for (let i = 0; i < queues.length; i++) queues[i]!.stats[QueueStat.sleepMs] += slept;
  for (let e = 0; e < count; e++) {
    const data = events[2 * e + 1]!;
    if (data === WAKE_MAILBOX) {
      native.eventfdRead(init.mailboxFd);
    } else if (data === WAKE_COMPLETION) {
      native.eventfdRead(handler.completionFd);
    } else {
      const position = findQueue(data);
      if (position >= 0) {
        const queue = queues[position]!;
        if (native.eventfdRead(queue.kickFd) > 0) queue.stats[QueueStat.kicks]++;
      }
    }
  }
}

function loop(): void {
  let passes = 0;
  let idleSince = -1;
  while (running) {
    const work = pass();
    if (resetCommand >= 0 || hasPendingStops()) finishStops();
    passes++;
    if (work > 0) {
      idleSince = -1;
      if ((passes & (MAILBOX_EVERY - 1)) === 0) checkMailbox();
      continue;
    }
    if (checkMailbox()) continue;
    if (mode === 'busy' || !canSleep()) continue;
    if (mode === 'adaptive') {
      const now = performance.now();
      if (idleSince < 0) {
        idleSince = now;
        continue;
      }
      if (now - idleSince < idleBudgetMs) continue;
    }
    if (handler.inFlight > 0 && handler.completionFd < 0) continue; // synchronous handler still busy
    if (armAndRecheck()) {
      if (mode === 'adaptive') setNotifications(false);
      continue;
    }
    sleep();
    if (mode === 'adaptive') {
      setNotifications(false);
      idleSince = -1;
    }
  }
}

function hasPendingStops(): boolean {
  for (let i = 0; i < queues.length; i++) if (queues[i]!.stopCommand !== -1) return true;
  return false;
}

async function main(): Promise<void> {
  if (init.cpu >= 0) native.setAffinity([init.cpu]);
  const module = (await import(init.handlerModule)) as { createQueueHandler?: CreateQueueHandler };
  if (typeof module.createQueueHandler !== 'function') {
    throw new Error(`${init.handlerModule} does not export createQueueHandler`);
  }
  const context: HandlerContext = { worker: init.worker, queueCount: init.queueCount, log };
  handler = await module.createQueueHandler(init.handlerOptions, context);
  native.epollCtl(epollFd, EPOLL_ADD, init.mailboxFd, EPOLLIN, WAKE_MAILBOX);
  if (handler.completionFd >= 0) native.epollCtl(epollFd, EPOLL_ADD, handler.completionFd, EPOLLIN, WAKE_COMPLETION);
  Atomics.store(mailbox, Mailbox.MODE, POLL_MODE_CODE[mode]);
  send({ kind: 'ready', worker: init.worker, tid: native.gettid(), cpus: native.getAffinity() });
  // Commands posted before the loop starts are picked up by its first mailbox check.
  loop();
  handler.close();
  native.close(epollFd);
  port.close();
}

main().catch((error: unknown) => {
  log('error', 'worker failed', { error: error instanceof Error ? error.message : String(error) });
  port.close();
  throw error;
});
