// A data-plane worker: owns some queues and polls them. worker-main.ts runs one per pinned
// thread; a test can construct one in-process and step it (everything it talks to is injected:
// the command port, the init data, optionally the handler factory).
//
// Loop, per pass: pop up to BATCH chains from each running queue and hand them to the device
// handler; let the handler submit its batch and reap completions; publish each queue's used
// entries and signal the call fd when EVENT_IDX (or NO_INTERRUPT) says so. used.idx is also
// published every PUBLISH_EVERY completions (a handler may ask for another interval:
// QueueHandler.publishEvery, net uses 32) and when a queue has nothing more to pop, with a
// call then too if EVENT_IDX says the driver waits for those entries. The mailbox is checked every MAILBOX_EVERY busy passes and on
// every idle one.
//
// Completion order. Used entries go out in the order handlers complete requests, except on a
// queue started with VIRTIO_F_IN_ORDER: there a completion that overtakes an older request waits
// (still in flight) in a preallocated per-slot store and is pushed right after the older ones,
// so the driver sees pop order whatever the device does (DPDK's in-order driver counts used
// entries and never reads their ids). A handler that holds requests for ever (net RX buffers)
// must give them back or complete them when its queue stops, or the completions behind them wait
// too and the stop never drains.
//
// Poll modes:
//   busy       never sleeps; kicks are suppressed (avail_event left stale / NO_NOTIFY set).
//   interrupt  kicks stay enabled; when passes have found nothing for interruptGraceUs (default
//              2 µs, see INTERRUPT_GRACE_US) it re-checks the rings, looks once more without
//              blocking (see below) and sleeps in epoll on the kick fds, the handler's
//              completion fd, its watched fds and the mailbox eventfd.
//   adaptive   spins like busy while work arrives; after idleBudgetUs without work it enables
//              kicks, re-checks (no lost wake-up), sleeps like interrupt, and spins again on wake.
// Fds a handler watches (context.watchFd) sit in the same epoll set: a sleeping worker wakes on
// them, an awake one polls the set without blocking every FD_POLL_PASSES passes or FD_POLL_WORK
// requests, whichever comes first. A ready fd is handed to handler.onFdReady; the worker never
// reads it.
// The worker's own eventfds (kicks, mailbox, completions) are edge-triggered and never read:
// every write is a new edge, so an unread counter (it only grows, 2^64 writes from overflow)
// still wakes the worker on the next write, and a wake-up costs one syscall (epoll_wait) rather
// than one plus a read per ready fd (bench/micro-wake.ts: 0.35–0.55 µs of CPU less per wake-up here).
// Interrupt mode and a driver that refills at once (a closed loop at QD32): a wake-up costs
// ~15 µs of wall time here (bench/micro-wake.ts), far more than a pass, and a worker that
// finishes a whole batch before the driver sees any of it runs in lock-step with it — the driver
// reaps 32, posts 32 and kicks once while the worker sleeps, one wake-up per 32 requests. So
// (0) in interrupt mode the worker stays awake for a short grace (2 µs by default) after its
// last work: a driver that refills within 1–2 µs of seeing its completions is served without a
// sleep (the publishing below alone still left one sleep per ~45 requests at QD32 once the pass
// got faster than the driver), at a cost of at most the grace in CPU per wake-up, none when idle;
// (1) a queue publishes used.idx every PUBLISH_EVERY completions and as soon as it has nothing
// more to pop, not once per pass, so the driver refills while the rest of the batch runs (in
// every mode: a busy worker and a spinning driver take turns the same way), and (2) in interrupt
// mode, after arming and re-checking, the worker looks once more without blocking (epoll_wait with
// timeout 0, then the rings again) before it sleeps: a refill that lands during that syscall is
// served without a wake-up. One look, no time budget: an idle worker still sleeps at once and
// costs no CPU. avail_event is written only when arming, not per pop as libvhost-user's
// vu_queue_pop does: a driver that refills while the worker is awake need not kick (a guest's
// kick is a VM exit), and a per-pop avail_event did not cut sleeps here (the re-check after arming
// already catches what such a kick would announce).
// Nothing in the loop allocates: requests come from a per-queue pool, completions reuse them.
import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { native } from '../native.js';
import { DirtyLog, markWritten } from './dirty-log.js';
import { GuestMemory } from './memory.js';
import { BrokenReason } from './chain.js';
import { createVirtqueue, type Virtqueue } from './queue.js';
import { VirtqRequest } from './request.js';
import { SplitVirtqueue } from './virtqueue.js';
import { InflightQueue } from './inflight.js';
import { QUEUE_STAT_SLOTS, QueueStat } from './stats.js';
import {
  INTERRUPT_GRACE_US,
  Mailbox,
  POLL_MODE_CODE,
  type PollMode,
  type QueueStart,
  type WorkerCommand,
  type WorkerInit,
  type WorkerMessage,
} from './commands.js';
import {
  FdEvent,
  MAX_WATCH_TOKEN,
  type CreateQueueHandler,
  type HandlerContext,
  type LogLevel,
  type QueueHandler,
  type WorkerQueue,
} from './device-api.js';

/** Chains popped per queue per pass: bounds latency for the other queues. */
const BATCH = 64;
/**
 * Completions after which used.idx is published within a pass (with a call if EVENT_IDX says the
 * driver sleeps waiting for them: publishWithinPass). A driver that reaps while polling (a
 * spinning guest, vhost-user-bench) or on its interrupt then refills while this worker goes on
 * with the rest of the batch: the two sides overlap instead of taking turns a whole batch at a
 * time, for one more release store per this many.
 */
const PUBLISH_EVERY = 8;
/** The handler's publishEvery if it is a sane one (1..BATCH), else PUBLISH_EVERY. */
function publishInterval(handler: QueueHandler): number {
  const every = handler.publishEvery;
  return every !== undefined && Number.isInteger(every) && every >= 1 && every <= BATCH ? every : PUBLISH_EVERY;
}

/** Busy passes between mailbox checks. */
const MAILBOX_EVERY = 64;
/**
 * While awake, watched fds are polled (epoll_wait, timeout 0: one syscall, ~0.3–1 µs here,
 * against ~0.1 µs for an idle pass) every this many passes...
 */
const FD_POLL_PASSES = 16;
/** ...or after this many requests (a loaded pass takes up to BATCH per queue), if sooner. */
const FD_POLL_WORK = 256;
const EPOLL_ADD = 1;
const EPOLL_DEL = 2;
/** EPOLLIN | EPOLLET (as a u32: `|` would make it negative). */
const OWN_EVENTFD_EVENTS = FdEvent.READABLE + 0x80000000;
/** epoll data values: queue index (< 2^16) for kick fds, these two, or WATCH_TAG + token. */
const WAKE_MAILBOX = 0x10000;
const WAKE_COMPLETION = 0x10001;
const WATCH_TAG = 0x80000000;
const MAX_EVENTS = 64;

/** Why a queue is winding down (it pops nothing more and finishes when its in-flight requests are done). */
const enum StopRequest {
  /** Running normally. */
  None,
  /** A stop command (GET_VRING_BASE): reply to `stopReplyId` with last_avail_idx. */
  Stop,
  /** A reset command stops every queue; the reset replies once all are gone. */
  Reset,
}

type Log = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void;

class QueueRunner implements WorkerQueue {
  readonly index: number;
  readonly vq: Virtqueue;
  readonly stats: Float64Array;
  kickFd: number;
  callFd: number;
  errFd: number;
  inFlight = 0;
  stopRequest = StopRequest.None;
  /** Command id to answer when stopRequest is Stop. */
  stopReplyId = 0;
  /**
   * Written off (abandon command): no longer in the worker's queue list, its front-end gone.
   * Late completions only reclaim their request; the object (and through its requests the old
   * guest memory mapping, which the kernel may still be writing into) lives until the last one.
   */
  abandoned = false;
  /** Set by the worker once the queue runs: popNow() hands what it pops to it. */
  handler: QueueHandler | null = null;
  /** The dirty log while migrating (null otherwise), and the used ring's address in it (-1: own). */
  dirtyLog: DirtyLog | null = null;
  logGuestAddr: number;
  private readonly pool: VirtqRequest[];
  private free: number;
  private dirty = false;
  /** Completions and their used.len since the last publish(): stored to the shared stats once per pass. */
  private completedCount = 0;
  private completedBytes = 0;
  /** Completions pushed since used.idx was last published. */
  private unpublished = 0;
  private brokenReported = false;
  /** Completions between publishes within a pass: PUBLISH_EVERY unless the handler asks otherwise. */
  publishEvery = PUBLISH_EVERY;
  /** Inside process(): popNow() from this queue's own handle() would recurse. */
  private popping = false;
  // VIRTIO_F_IN_ORDER (virtio 1.2 §2.7.9 / §2.8.? : the device uses buffers in the order they were
  // made available; DPDK's in-order driver trusts the count and never reads used ids on split
  // rings). Each popped request gets the next pop slot (mod size: packed sizes need not be powers
  // of two); a completion that is not the oldest slot's waits in `reorder` (request and used.len)
  // and is pushed once every older one has been. Waiting completions stay in flight.
  /** IN_ORDER negotiated for this queue. */
  readonly inOrder: boolean;
  /** Slots: the queue size. */
  private readonly slots: number;
  /** Next pop slot, and the oldest slot not yet pushed (equal: none outstanding, or all). */
  private popSlot = 0;
  private oldestSlot = 0;
  /** Per slot: a completion waiting for older ones (null: none), and its used.len. */
  private readonly reorder: (VirtqRequest | null)[];
  private readonly reorderLen: Float64Array;
  /** Completions waiting in `reorder` (not yet pushed). */
  private reorderCount = 0;

  get stopping(): boolean {
    return this.stopRequest !== StopRequest.None;
  }

  constructor(
    start: QueueStart,
    memory: GuestMemory,
    stats: Float64Array,
    maxSegments: number,
    private readonly send: (message: WorkerMessage) => void,
    private readonly log: Log,
  ) {
    this.index = start.index;
    this.kickFd = start.kickFd;
    this.callFd = start.callFd;
    this.errFd = start.errFd;
    this.logGuestAddr = start.logGuestAddr ?? -1;
    this.stats = stats;
    this.vq = createVirtqueue({
      memory,
      size: start.size,
      descAddr: start.descUserAddr,
      availAddr: start.availUserAddr,
      usedAddr: start.usedUserAddr,
      addressSpace: 'userspace',
      lastAvailIdx: start.lastAvailIdx,
      eventIdx: start.eventIdx,
      indirectDesc: start.indirectDesc,
      packed: start.packed,
      index: start.index,
    });
    if (this.vq instanceof SplitVirtqueue) {
      if (start.inflight) this.attachInflight(start, this.vq);
      else if (start.resume) this.vq.resumeAtUsedIdx();
    } else if (start.inflight) {
      this.log('warn', 'in-flight tracking is not built for packed rings: a restart resumes at SET_VRING_BASE', {
        queue: this.index,
      });
    }
    if (this.vq.packed && start.resume) {
      // Packed rings have no in-flight tracking here (its packed layout is not built), and
      // SET_VRING_BASE's position is stale after requests ran: stop rather than guess.
      this.vq.markBroken(BrokenReason.PACKED_NO_RESUME);
    }
    // In-flight requests never exceed the queue size (each holds a distinct head).
    this.pool = [];
    for (let i = 0; i < start.size; i++) this.pool.push(new VirtqRequest(maxSegments));
    this.free = start.size;
    // In-flight tracking resubmits the heads the previous back-end left in flight in fetch
    // order, ahead of new ones: with IN_ORDER those are the oldest avail entries not yet used (it
    // pushed in order too), so giving them the first slots keeps the order the driver expects.
    this.inOrder = start.inOrder;
    this.slots = start.size;
    this.reorder = start.inOrder ? new Array<VirtqRequest | null>(start.size).fill(null) : [];
    this.reorderLen = new Float64Array(start.inOrder ? start.size : 0);
  }

  get memory(): GuestMemory {
    return this.vq.memory;
  }

  /**
   * In-flight tracking: recover from the region (resubmitting what the previous back-end left in
   * flight) and kick our own kick fd, as libvhost-user does, so an interrupt-mode worker looks
   * at the ring even though the front-end will not kick for requests it already sent.
   */
  private attachInflight(start: QueueStart, vq: SplitVirtqueue): void {
    let tracker: InflightQueue;
    try {
      tracker = new InflightQueue(start.inflight!, start.size);
    } catch (error) {
      this.vq.markBroken(BrokenReason.INFLIGHT_REGION);
      this.log('error', 'in-flight region unusable; queue stopped', { queue: this.index, error: errorMessage(error) });
      return;
    }
    const recovery = vq.attachInflight(tracker);
    if (recovery === null || recovery.error !== '') return; // broken: reported by the worker
    this.stats[QueueStat.resubmitted] += recovery.resubmit.length;
    if (!recovery.fresh || start.resume) {
      this.log('info', 'queue recovered from the in-flight region', {
        queue: this.index,
        resubmitted: recovery.resubmit.length,
        batchFixedUp: recovery.batchFixedUp,
        lastAvailIdx: recovery.lastAvailIdx,
      });
      if (this.kickFd >= 0) native.eventfdWrite(this.kickFd, 1);
    }
  }

  /** Starts or stops logging this queue's writes (between batches). */
  setDirtyLog(log: DirtyLog | null): void {
    this.dirtyLog = log;
    this.vq.setUsedLog(log, this.logGuestAddr);
  }

  /** Pops and hands out up to `budget` requests; returns how many. */
  process(handler: QueueHandler, budget: number): number {
    if (this.stopRequest !== StopRequest.None || this.popping) return 0;
    this.popping = true;
    let popped = 0;
    while (popped < budget && this.free > 0) {
      const request = this.pool[this.free - 1];
      if (!this.vq.pop(request)) break;
      this.free--;
      this.inFlight++;
      popped++;
      if (this.inOrder) {
        const slot = this.popSlot;
        request.orderSlot = slot;
        this.popSlot = slot + 1 === this.slots ? 0 : slot + 1;
      }
      try {
        handler.handle(this, request);
      } catch (error) {
        // A device bug must not take the worker (and every other queue) down: this queue stops.
        this.failRequest(request, error);
        break;
      }
    }
    this.popping = false;
    // Nothing more to pop: what completed is visible now, not after the handler's submit and reap.
    if (this.unpublished > 0) this.publishWithinPass();
    if (this.vq.broken && !this.brokenReported) this.reportBroken();
    return popped;
  }

  popNow(budget: number): number {
    const handler = this.handler;
    return handler === null ? 0 : this.process(handler, budget);
  }

  giveBack(request: VirtqRequest): boolean {
    if (this.abandoned && this.inFlight > 0) {
      this.reclaim(request);
      return true;
    }
    if (this.inFlight === 0) return false;
    // A completed request waiting for older ones is the driver's already (a handler bug).
    if (this.inOrder && !this.awaitsCompletion(request)) return false;
    if (!this.vq.unpop(request)) return false;
    // unpop took back the chain popped last, which held the newest slot.
    if (this.inOrder) this.popSlot = request.orderSlot;
    this.pool[this.free++] = request;
    this.inFlight--;
    return true;
  }

  complete(request: VirtqRequest, writtenLen: number): void {
    // Written off when the handler failed (handlerFailed): the slot is already free.
    if (this.inFlight === 0) return;
    if (this.abandoned) return this.reclaim(request);
    if (this.inOrder) {
      // The usual case inline: the oldest completes and nothing waits behind it.
      const slot = request.orderSlot;
      if (slot !== this.oldestSlot || this.reorderCount !== 0) return this.completeInOrder(request, writtenLen);
      this.oldestSlot = slot + 1 === this.slots ? 0 : slot + 1;
    }
    this.pushCompleted(request, writtenLen);
  }

  /**
   * IN_ORDER: pushes `request` if it is the oldest outstanding, then every waiting completion
   * right behind it; otherwise it waits in its slot (still in flight). writtenLen -1: recycle
   * the request in its turn without pushing it (failRequest).
   */
  private completeInOrder(request: VirtqRequest, writtenLen: number): void {
    let slot = request.orderSlot;
    const slots = this.slots;
    if (slot !== this.oldestSlot) {
      if (!this.awaitsCompletion(request)) {
        throw new Error(`queue ${this.index}: request completed twice or never popped (IN_ORDER slot ${slot})`);
      }
      this.reorder[slot] = request;
      this.reorderLen[slot] = writtenLen;
      this.reorderCount++;
      return;
    }
    this.retire(request, writtenLen);
    if (++slot === slots) slot = 0;
    if (this.reorderCount > 0) {
      for (;;) {
        const next = this.reorder[slot];
        if (next === null) break;
        this.reorder[slot] = null;
        this.reorderCount--;
        this.retire(next, this.reorderLen[slot]);
        if (++slot === slots) slot = 0;
      }
    }
    this.oldestSlot = slot;
  }

  /**
   * IN_ORDER: whether `request` holds an outstanding slot (the inFlight ones from oldestSlot on)
   * that has not completed yet. False means a device bug: complete() twice, or never popped.
   */
  private awaitsCompletion(request: VirtqRequest): boolean {
    const slot = request.orderSlot;
    if (slot >>> 0 >= this.slots || this.reorder[slot] !== null) return false;
    let ahead = slot - this.oldestSlot;
    if (ahead < 0) ahead += this.slots;
    return ahead < this.inFlight;
  }

  /** IN_ORDER: a completion whose turn came (writtenLen -1: recycled only, see completeInOrder). */
  private retire(request: VirtqRequest, writtenLen: number): void {
    if (writtenLen >= 0) {
      this.pushCompleted(request, writtenLen);
    } else {
      this.pool[this.free++] = request;
      this.inFlight--;
    }
  }

  /**
   * Written off (abandon): completions waiting for older ones will not be called again, so they
   * are reclaimed now; the queue then waits only for requests still in the device.
   */
  dropWaitingCompletions(): void {
    const reorder = this.reorder;
    for (let slot = 0; slot < reorder.length && this.reorderCount > 0; slot++) {
      const request = reorder[slot];
      if (request === null) continue;
      reorder[slot] = null;
      this.reorderCount--;
      this.reclaim(request);
    }
  }

  /** Writes one completion into the used ring and recycles its request. */
  private pushCompleted(request: VirtqRequest, writtenLen: number): void {
    // --- dirty log hook: the device's writes are done; mark them before the driver sees them ---
    if (this.dirtyLog !== null) markWritten(this.dirtyLog, request, writtenLen);
    this.vq.pushUsed(request.head, writtenLen);
    this.pool[this.free++] = request;
    this.inFlight--;
    this.dirty = true;
    this.completedCount++;
    this.completedBytes += writtenLen;
    if (++this.unpublished >= this.publishEvery) this.publishWithinPass();
  }

  /**
   * used.idx now, within a pass; and the call too when EVENT_IDX says the driver sleeps waiting
   * for these entries (its used_event lies among them): a guest that takes interrupts then
   * refills while the rest of the batch runs, as a polling driver does. Once per driver wake-up
   * at most (used_event is behind us afterwards). Without EVENT_IDX every publish would signal:
   * the call stays once per pass there (publish()).
   */
  private publishWithinPass(): void {
    this.unpublished = 0;
    const vq = this.vq;
    vq.flushUsed();
    if (vq.eventIdx && vq.needsCall()) {
      if (this.callFd >= 0) native.eventfdWrite(this.callFd, 1);
      this.stats[QueueStat.calls]++;
    }
  }

  /** A late completion on an abandoned queue: take the request back, touch neither ring nor stats. */
  private reclaim(request: VirtqRequest): void {
    this.pool[this.free++] = request;
    this.inFlight--;
  }

  /** Publishes this pass's used entries with one store and notifies the driver if it asked. */
  publish(): void {
    if (!this.dirty) return;
    this.dirty = false;
    const stats = this.stats;
    stats[QueueStat.requests] += this.completedCount;
    stats[QueueStat.bytes] += this.completedBytes;
    this.completedCount = 0;
    this.completedBytes = 0;
    this.unpublished = 0;
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
    this.vq.markBroken(BrokenReason.DEVICE_ERROR, request.head);
    if (this.inOrder) {
      // Its slot must still pass, or the completions behind it would wait for ever (unless the
      // handler completed it before throwing).
      if (this.awaitsCompletion(request)) this.completeInOrder(request, -1);
    } else {
      this.pool[this.free++] = request;
      this.inFlight--;
    }
    this.log('error', 'device handler failed; queue stopped', { queue: this.index, error: errorMessage(error) });
  }

  reportBroken(): void {
    this.brokenReported = true;
    this.stats[QueueStat.broken] = this.vq.brokenReason;
    if (this.errFd >= 0) native.eventfdWrite(this.errFd, 1);
    this.send({ kind: 'broken', index: this.index, reason: this.vq.brokenReason, description: this.vq.describeBroken() });
  }
}

export interface DataPlaneWorkerOptions {
  /** Builds the handler instead of importing init.handlerModule (in-process tests). */
  createHandler?: CreateQueueHandler;
  /**
   * Longest sleep in epoll, in ms (default -1: until woken). An in-process test sets it so a
   * missing wake-up fails the test instead of hanging its thread.
   */
  maxSleepMs?: number;
}

export class DataPlaneWorker {
  private readonly mailbox: Int32Array;
  private readonly statsView: Float64Array;
  private readonly queues: QueueRunner[] = [];
  private readonly epollFd: number;
  private readonly events = new Uint32Array(2 * MAX_EVENTS);
  /** Watched fd → token (not on the hot path: touched by watchFd / unwatchFd only). */
  private readonly watched = new Map<number, number>();
  private readonly maxSleepMs: number;
  private handler!: QueueHandler;
  private memory: GuestMemory | null = null;
  /** The dirty log while the front-end migrates; every queue of this worker marks it. */
  private dirtyLog: DirtyLog | null = null;
  private mode: PollMode;
  private idleBudgetMs: number;
  private graceMs: number;
  private seenSeq = 0;
  /** Id of the reset command waiting for every queue to stop, or -1. */
  private resetReplyId = -1;
  /** Queues written off with requests still in the device, until their last late completion. */
  private readonly abandonedQueues: QueueRunner[] = [];
  private running = true;
  private passes = 0;
  private idleSince = -1;
  private passesSinceFdPoll = 0;
  private workSinceFdPoll = 0;
  private readonly sendMessage = (message: WorkerMessage): void => this.port.postMessage(message);
  private readonly logMessage: Log = (level, msg, fields) =>
    this.sendMessage({ kind: 'log', level, msg, fields: { worker: this.init.worker, ...fields } });

  private constructor(
    private readonly init: WorkerInit,
    private readonly port: MessagePort,
    options: DataPlaneWorkerOptions,
  ) {
    this.mailbox = new Int32Array(init.mailbox);
    this.statsView = new Float64Array(init.stats);
    this.mode = init.mode;
    this.idleBudgetMs = init.idleBudgetUs / 1000;
    this.graceMs = (init.interruptGraceUs ?? INTERRUPT_GRACE_US) / 1000;
    this.maxSleepMs = options.maxSleepMs ?? -1;
    this.epollFd = native.epollCreate();
  }

  /** Builds a worker and its device handler (imported from init.handlerModule unless injected). */
  static async create(init: WorkerInit, port: MessagePort, options: DataPlaneWorkerOptions = {}): Promise<DataPlaneWorker> {
    const worker = new DataPlaneWorker(init, port, options);
    try {
      await worker.createHandler(options.createHandler);
    } catch (error) {
      native.close(worker.epollFd);
      throw error;
    }
    return worker;
  }

  /** False once a shutdown command was served. */
  get isRunning(): boolean {
    return this.running;
  }

  /** Announces the worker, loops until shut down, then releases the handler and the epoll fd. */
  run(): void {
    this.sendMessage({ kind: 'ready', worker: this.init.worker, tid: native.gettid(), cpus: native.getAffinity() });
    // Commands posted before the loop starts are picked up by its first mailbox check.
    while (this.running) this.step();
    this.close();
  }

  /** One turn of the loop: a pass over the queues, then the mailbox, then maybe a sleep. */
  step(): void {
    const work = this.pass();
    if (this.resetReplyId >= 0 || this.hasPendingStops()) this.finishStops();
    if (this.abandonedQueues.length > 0) this.releaseAbandoned();
    this.passes++;
    if (work > 0) {
      this.idleSince = -1;
      if ((this.passes & (MAILBOX_EVERY - 1)) === 0) this.checkMailbox();
      return;
    }
    if (this.checkMailbox()) return;
    if (this.mode === 'busy' || !this.canSleep()) return;
    // Adaptive: spin up to the idle budget; interrupt: up to the grace (both from the first idle pass).
    const stayAwakeMs = this.mode === 'adaptive' ? this.idleBudgetMs : this.graceMs;
    if (stayAwakeMs > 0) {
      const now = performance.now();
      if (this.idleSince < 0) {
        this.idleSince = now;
        return;
      }
      if (now - this.idleSince < stayAwakeMs) return;
    }
    const handler = this.handler;
    if (handler.inFlight > 0 && handler.completionFd < 0) return; // synchronous handler still busy
    if (this.armAndRecheck()) {
      if (this.mode === 'adaptive') this.setNotifications(false);
      return;
    }
    if (this.mode === 'interrupt' && this.lookOnceMore()) return;
    this.sleep();
    this.idleSince = -1;
    if (this.mode === 'adaptive') this.setNotifications(false);
  }

  close(): void {
    this.handler.close();
    native.close(this.epollFd);
  }

  // ---- set-up --------------------------------------------------------------------------------

  private async createHandler(inject: CreateQueueHandler | undefined): Promise<void> {
    let create = inject;
    if (!create) {
      const module = (await import(this.init.handlerModule)) as { createQueueHandler?: CreateQueueHandler };
      if (typeof module.createQueueHandler !== 'function') {
        throw new Error(`${this.init.handlerModule} does not export createQueueHandler`);
      }
      create = module.createQueueHandler;
    }
    const context: HandlerContext = {
      worker: this.init.worker,
      queueCount: this.init.queueCount,
      log: this.logMessage,
      watchFd: (fd, token, events) => this.watchFd(fd, token, events),
      unwatchFd: (fd) => this.unwatchFd(fd),
      queue: (index) => {
        const position = this.findQueue(index);
        return position < 0 ? null : this.queues[position];
      },
    };
    this.handler = await create(this.init.handlerOptions, context);
    if (this.watched.size > 0 && typeof this.handler.onFdReady !== 'function') {
      throw new Error('the queue handler watches fds but has no onFdReady');
    }
    native.epollCtl(this.epollFd, EPOLL_ADD, this.init.mailboxFd, OWN_EVENTFD_EVENTS, WAKE_MAILBOX);
    const completionFd = this.handler.completionFd;
    if (completionFd >= 0) native.epollCtl(this.epollFd, EPOLL_ADD, completionFd, OWN_EVENTFD_EVENTS, WAKE_COMPLETION);
    Atomics.store(this.mailbox, Mailbox.MODE, POLL_MODE_CODE[this.mode]);
  }

  private watchFd(fd: number, token: number, events: number = FdEvent.READABLE): void {
    if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`watchFd: fd must be a non-negative integer, got ${fd}`);
    if (!Number.isInteger(token) || token < 0 || token > MAX_WATCH_TOKEN) {
      throw new RangeError(`watchFd: token must be an integer in [0, ${MAX_WATCH_TOKEN}], got ${token}`);
    }
    if (!Number.isInteger(events) || (events & ~(FdEvent.READABLE | FdEvent.WRITABLE)) !== 0 || events === 0) {
      throw new RangeError(`watchFd: events must be FdEvent.READABLE and/or FdEvent.WRITABLE, got ${events}`);
    }
    if (this.watched.has(fd)) throw new Error(`watchFd: fd ${fd} is already watched (token ${this.watched.get(fd)})`);
    if (this.handler && typeof this.handler.onFdReady !== 'function') {
      throw new Error('watchFd: the queue handler has no onFdReady to call back');
    }
    // Level-triggered: a ready fd the handler leaves unread is reported again on the next poll.
    native.epollCtl(this.epollFd, EPOLL_ADD, fd, events, WATCH_TAG + token);
    this.watched.set(fd, token);
  }

  private unwatchFd(fd: number): void {
    if (!this.watched.delete(fd)) throw new Error(`unwatchFd: fd ${fd} is not watched`);
    try {
      native.epollCtl(this.epollFd, EPOLL_DEL, fd, 0, 0);
    } catch (error) {
      // Already closed by the handler: the kernel dropped it from the set with its last reference.
      const code = (error as { code?: string }).code;
      if (code !== 'EBADF' && code !== 'ENOENT') throw error;
    }
  }

  // ---- commands ------------------------------------------------------------------------------

  private reply(id: number, value?: number): void {
    this.sendMessage({ kind: 'reply', id, ok: true, value });
  }

  private fail(id: number, error: unknown): void {
    this.sendMessage({ kind: 'reply', id, ok: false, error: errorMessage(error) });
  }

  private findQueue(index: number): number {
    const queues = this.queues;
    for (let i = 0; i < queues.length; i++) if (queues[i].index === index) return i;
    return -1;
  }

  private setNotifications(enabled: boolean): void {
    for (const queue of this.queues) {
      if (enabled) queue.vq.enableNotification();
      else queue.vq.disableNotification();
    }
  }

  private removeQueue(position: number): void {
    const queue = this.queues[position];
    if (queue.kickFd >= 0) native.epollCtl(this.epollFd, EPOLL_DEL, queue.kickFd, 0, 0);
    queue.stats[QueueStat.inFlight] = 0;
    this.queues.splice(position, 1);
  }

  private checkMailbox(): boolean {
    const seq = Atomics.load(this.mailbox, Mailbox.SEQ);
    if (seq === this.seenSeq) return false;
    this.seenSeq = seq;
    for (;;) {
      const received = receiveMessageOnPort(this.port);
      if (!received) break;
      this.runCommand(received.message as WorkerCommand);
    }
    return true;
  }

  private runCommand(command: WorkerCommand): void {
    try {
      switch (command.op) {
        case 'memory': {
          const next = new GuestMemory(command.regions);
          this.memory = next;
          for (const queue of this.queues) queue.vq.setMemory(next);
          this.handler.setMemory(next);
          this.reply(command.id);
          return;
        }
        case 'start': {
          const start = command.queue;
          if (!this.memory) throw new Error(`queue ${start.index}: no memory table`);
          if (this.findQueue(start.index) >= 0) throw new Error(`queue ${start.index} is already running`);
          const stats = this.statsView.subarray(start.index * QUEUE_STAT_SLOTS, (start.index + 1) * QUEUE_STAT_SLOTS);
          const queue = new QueueRunner(start, this.memory, stats, this.init.maxSegments, this.sendMessage, this.logMessage);
          queue.handler = this.handler;
          queue.publishEvery = publishInterval(this.handler);
          if (this.dirtyLog !== null) queue.setDirtyLog(this.dirtyLog);
          this.queues.push(queue);
          if (queue.kickFd >= 0) native.epollCtl(this.epollFd, EPOLL_ADD, queue.kickFd, OWN_EVENTFD_EVENTS, queue.index);
          if (this.mode === 'interrupt') queue.vq.enableNotification();
          else queue.vq.disableNotification();
          // A ring broken from the start (addresses outside memory, bad size) is reported now.
          if (queue.vq.broken) queue.reportBroken();
          this.reply(command.id);
          return;
        }
        case 'stop': {
          const position = this.findQueue(command.index);
          if (position < 0) {
            this.fail(command.id, `queue ${command.index} is not running on worker ${this.init.worker}`);
            return;
          }
          const queue = this.queues[position];
          queue.stopRequest = StopRequest.Stop;
          queue.stopReplyId = command.id;
          this.finishStops();
          return;
        }
        case 'notify-fds': {
          const position = this.findQueue(command.index);
          if (position >= 0) {
            this.queues[position].callFd = command.callFd;
            this.queues[position].errFd = command.errFd;
          }
          this.reply(command.id);
          return;
        }
        case 'dirty-log': {
          const next = command.area === null ? null : new DirtyLog(command.area);
          this.reportDirtyLog();
          this.dirtyLog = next;
          for (const queue of this.queues) queue.setDirtyLog(next);
          this.reply(command.id);
          return;
        }
        case 'ring-log': {
          const position = this.findQueue(command.index);
          if (position >= 0) {
            const queue = this.queues[position];
            queue.logGuestAddr = command.logGuestAddr;
            queue.setDirtyLog(this.dirtyLog);
          }
          this.reply(command.id);
          return;
        }
        case 'mode': {
          this.mode = command.mode;
          this.idleBudgetMs = command.idleBudgetUs / 1000;
          this.graceMs = (command.interruptGraceUs ?? INTERRUPT_GRACE_US) / 1000;
          this.idleSince = -1;
          Atomics.store(this.mailbox, Mailbox.MODE, POLL_MODE_CODE[this.mode]);
          this.setNotifications(this.mode === 'interrupt');
          this.reply(command.id);
          return;
        }
        case 'reset': {
          for (const queue of this.queues) if (queue.stopRequest === StopRequest.None) queue.stopRequest = StopRequest.Reset;
          this.resetReplyId = command.id;
          this.finishStops();
          return;
        }
        case 'abandon': {
          this.abandonQueues();
          // Any earlier reset finishes now (nothing left to wait for), then this one.
          this.finishStops();
          for (const queue of this.queues) if (queue.stopRequest === StopRequest.None) queue.stopRequest = StopRequest.Reset;
          this.resetReplyId = command.id;
          this.finishStops();
          return;
        }
        case 'shutdown': {
          this.running = false;
          this.reply(command.id);
          return;
        }
      }
    } catch (error) {
      this.fail(command.id, error);
    }
  }

  /** Replies to stop / reset commands whose queues have drained. */
  private finishStops(): void {
    const queues = this.queues;
    for (let i = queues.length - 1; i >= 0; i--) {
      const queue = queues[i];
      if (queue.stopRequest === StopRequest.None || queue.inFlight > 0) continue;
      queue.publish();
      const lastAvailIdx = queue.vq.lastAvailIdx;
      this.removeQueue(i);
      if (queue.stopRequest === StopRequest.Stop) this.reply(queue.stopReplyId, lastAvailIdx);
    }
    if (this.resetReplyId >= 0 && queues.length === 0) {
      this.memory = null;
      this.reportDirtyLog();
      this.dirtyLog = null;
      const id = this.resetReplyId;
      this.resetReplyId = -1;
      this.reply(id);
    }
  }

  /**
   * Writes off every queue with requests still in the device: out of the queue list now (the
   * next front-end's queue with the same index starts at once), kept in abandonedQueues until
   * the device answers (never, for a hung one: then at most the queue's size in requests leaks).
   * A stop waiting on it is answered with an error.
   */
  private abandonQueues(): void {
    const queues = this.queues;
    for (let i = queues.length - 1; i >= 0; i--) {
      const queue = queues[i];
      if (queue.inFlight === 0) continue;
      if (queue.stopRequest === StopRequest.Stop)
        this.fail(queue.stopReplyId, `queue ${queue.index} abandoned with requests in flight`);
      queue.stopRequest = StopRequest.Reset;
      queue.abandoned = true;
      queue.stats[QueueStat.abandoned] += queue.inFlight;
      if (queue.inOrder) queue.dropWaitingCompletions();
      this.logMessage('warn', 'queue abandoned with requests still in the device; their late completions will be dropped', {
        queue: queue.index,
        requests: queue.inFlight,
      });
      this.removeQueue(i);
      this.abandonedQueues.push(queue);
    }
  }

  /** Lets go of abandoned queues whose device has answered every request (off the hot path: rare). */
  private releaseAbandoned(): void {
    const abandoned = this.abandonedQueues;
    for (let i = abandoned.length - 1; i >= 0; i--) {
      if (abandoned[i].inFlight > 0) continue;
      this.logMessage('info', 'abandoned queue released: the device answered its last request', { queue: abandoned[i].index });
      abandoned.splice(i, 1);
    }
  }

  /** Logs what the current dirty log received (once, when it is replaced or dropped). */
  private reportDirtyLog(): void {
    const log = this.dirtyLog;
    if (log === null) return;
    this.logMessage(log.dropped > 0 ? 'warn' : 'info', 'dirty log done', {
      pagesMarked: log.pagesMarked,
      pagesOutsideLog: log.dropped,
    });
  }

  private hasPendingStops(): boolean {
    const queues = this.queues;
    for (let i = 0; i < queues.length; i++) if (queues[i].stopRequest !== StopRequest.None) return true;
    return false;
  }

  // ---- the loop ------------------------------------------------------------------------------

  private pass(): number {
    const queues = this.queues;
    const handler = this.handler;
    let work = 0;
    for (let i = 0; i < queues.length; i++) {
      const queue = queues[i];
      const popped = queue.process(handler, BATCH);
      if (popped > 0) queue.stats[QueueStat.busyPasses]++;
      else queue.stats[QueueStat.idlePasses]++;
      work += popped;
    }
    try {
      handler.flush();
      work += handler.poll();
      if (this.watched.size > 0) work += this.pollWatchedFds(work);
    } catch (error) {
      // The handler's own state is suspect now: stop every queue of this worker, keep serving commands.
      this.handlerFailed(error);
    }
    for (let i = 0; i < queues.length; i++) {
      const queue = queues[i];
      queue.publish();
      queue.stats[QueueStat.inFlight] = queue.inFlight;
    }
    return work;
  }

  /** An awake worker's look at its epoll set, rationed; returns the fd callbacks made. */
  private pollWatchedFds(work: number): number {
    this.workSinceFdPoll += work;
    if (++this.passesSinceFdPoll < FD_POLL_PASSES && this.workSinceFdPoll < FD_POLL_WORK) return 0;
    this.passesSinceFdPoll = 0;
    this.workSinceFdPoll = 0;
    return this.dispatch(native.epollWait(this.epollFd, this.events, MAX_EVENTS, 0));
  }

  /**
   * Serves `count` epoll events from this.events: counts kicks (the worker's own eventfds are
   * edge-triggered, nothing to read) and calls the handler back for its watched fds. Returns the
   * callbacks.
   */
  private dispatch(count: number): number {
    const events = this.events;
    let callbacks = 0;
    for (let e = 0; e < count; e++) {
      const data = events[2 * e + 1];
      if (data >= WATCH_TAG) {
        callbacks++;
        this.handler.onFdReady!(data - WATCH_TAG, events[2 * e]);
      } else if (data < WAKE_MAILBOX) {
        const position = this.findQueue(data);
        if (position >= 0) this.queues[position].stats[QueueStat.kicks]++;
      }
    }
    return callbacks;
  }

  private handlerFailed(error: unknown): void {
    this.logMessage('error', "device handler failed while completing requests; stopping this worker's queues", {
      error: errorMessage(error),
    });
    const queues = this.queues;
    for (let i = 0; i < queues.length; i++) {
      const queue = queues[i];
      queue.vq.markBroken(BrokenReason.DEVICE_ERROR);
      // Its in-flight requests will never complete: let stop/reset drain at once.
      queue.inFlight = 0;
    }
    // Their requests will never complete either.
    this.abandonedQueues.length = 0;
    // A ready fd the failed handler no longer reads would wake the worker forever.
    for (const fd of [...this.watched.keys()]) this.unwatchFd(fd);
  }

  /** True when every running queue has a kick fd, so sleeping cannot miss work. */
  private canSleep(): boolean {
    const queues = this.queues;
    for (let i = 0; i < queues.length; i++) if (queues[i].kickFd < 0 && queues[i].stopRequest === StopRequest.None) return false;
    return true;
  }

  /** Enables kicks and re-checks every ring: true if work arrived meanwhile (do not sleep). */
  private armAndRecheck(): boolean {
    const queues = this.queues;
    let work = false;
    for (let i = 0; i < queues.length; i++) {
      const queue = queues[i];
      if (queue.stopRequest === StopRequest.None && queue.vq.enableNotificationAndRecheck()) work = true;
    }
    return work;
  }

  /**
   * Interrupt mode, armed and re-checked: one epoll_wait that does not block, then the rings
   * again (a driver publishes before it kicks). True if it found something: serve it instead
   * of sleeping. Costs one syscall (~0.5 µs here) before a sleep that costs ~15 µs to wake from.
   */
  private lookOnceMore(): boolean {
    const count = native.epollWait(this.epollFd, this.events, MAX_EVENTS, 0);
    let found = count > 0;
    if (found) {
      try {
        this.dispatch(count);
      } catch (error) {
        this.handlerFailed(error);
      }
    } else {
      found = this.armAndRecheck();
    }
    if (found) {
      const queues = this.queues;
      for (let i = 0; i < queues.length; i++) queues[i].stats[QueueStat.sleepsAvoided]++;
    }
    return found;
  }

  private sleep(): void {
    const before = performance.now();
    const count = native.epollWait(this.epollFd, this.events, MAX_EVENTS, this.maxSleepMs);
    const slept = performance.now() - before;
    const queues = this.queues;
    for (let i = 0; i < queues.length; i++) {
      queues[i].stats[QueueStat.sleepMs] += slept;
      queues[i].stats[QueueStat.sleeps]++;
    }
    try {
      this.dispatch(count);
    } catch (error) {
      this.handlerFailed(error);
    }
  }
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
