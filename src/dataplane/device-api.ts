// The device side of the data plane: what a device (virtio-blk, virtio-net, the echo test
// device) implements to process requests inside a worker thread. A handler is created once per
// worker from a module the worker imports (worker threads cannot receive functions), receives
// each popped request, and completes it now or later through its queue — without allocating.
// A handler that also serves other fds (a tap device, a timerfd, an eventfd from another
// thread) asks the worker to watch them and is called back when one is ready, in every poll mode.
import type { GuestMemory } from './memory.js';
import type { VirtqRequest } from './request.js';

/** A running queue as a handler sees it. */
export interface WorkerQueue {
  /** Virtqueue number (0-based, as in SET_VRING_*). */
  readonly index: number;
  /** The memory table the queue's requests are translated against. */
  readonly memory: GuestMemory;
  /**
   * Gives a request back to the driver: `writtenLen` bytes were written into its device-writable
   * segments (used.len). Call exactly once per request, from the worker thread, at any time
   * after handle() — immediately or from poll(). The request object is reused afterwards.
   */
  complete(request: VirtqRequest, writtenLen: number): void;
  /**
   * A stop (GET_VRING_BASE) or reset is pending: the worker pops nothing more from this queue and
   * answers once every request handed out is completed. A handler holding requests that wait on
   * the guest or an outside event (net RX buffers waiting for frames) completes them now.
   */
  readonly stopping: boolean;
  /**
   * The worker wrote this queue off (a drain that outlived its timeout): its front-end is gone
   * and its memory is no longer the guest's. A late completion must not write into the request's
   * buffers (status byte included); complete() then only reclaims the request. Optional for fakes.
   */
  readonly abandoned?: boolean;
  /**
   * Pops up to `budget` available chains now and hands each to handler.handle() before
   * returning (re-entrant: for use from handle() of another queue, e.g. a frame arriving for an
   * RX queue whose new buffers this pass has not popped yet). Returns how many; 0 while
   * stopping or when called from this queue's own handle(). Optional so that test fakes need
   * not provide it; the worker's queues always do.
   */
  popNow?(budget: number): number;
  /**
   * Takes back a request the handler never used, as if it had not been popped (the driver keeps
   * the buffer: GET_VRING_BASE reports it as still available). Only the newest popped request
   * still held can go back, so give several back newest first. False when `request` is not that
   * one: complete it instead. Optional like popNow.
   */
  giveBack?(request: VirtqRequest): boolean;
}

export interface QueueHandler {
  /** A request popped from `queue`: start it, and complete it now or later. */
  handle(queue: WorkerQueue, request: VirtqRequest): void;
  /**
   * Called once per loop pass after the pass's requests were handled: submit what was batched
   * (one native call per batch, e.g. io_uring_submit).
   */
  flush(): void;
  /** Reaps asynchronous completions and completes their requests; returns how many. */
  poll(): number;
  /** Requests handed to handle() and not yet completed (the worker sleeps only on completionFd then). */
  readonly inFlight: number;
  /** An fd that becomes readable when poll() has work (an eventfd the worker reads), or -1. */
  readonly completionFd: number;
  /**
   * Completions after which the worker publishes used.idx within a pass (1..64; default 8, see
   * PUBLISH_EVERY in worker.ts). Each publish is a sequentially consistent store to a line the
   * driver polls; a device whose driver works in fixed bursts (virtio-net PMDs: 32) does better
   * publishing once per burst.
   */
  readonly publishEvery?: number;
  /** The memory table changed; requests already in flight keep the old one alive. */
  setMemory(memory: GuestMemory): void;
  /**
   * A watched fd (HandlerContext.watchFd) is ready: `token` is the one it was watched with,
   * `events` the FdEvent bits seen. The worker has not read the fd: the handler reads or drains
   * it here or later. Watches are level-triggered, so an fd left ready is reported again (an
   * awake worker re-polls it within a few passes; a sleeping one does not sleep). Requests
   * completed from here are published by the next pass. Required once the handler watches an fd.
   */
  onFdReady?(token: number, events: number): void;
  close(): void;
}

/** Readiness bits for watchFd and onFdReady (the epoll values). */
export const FdEvent = {
  READABLE: 0x1,
  WRITABLE: 0x4,
  /** Reported whether asked for or not: the fd is in error. */
  ERROR: 0x8,
  /** Reported whether asked for or not: the peer hung up (unwatch before closing). */
  HANGUP: 0x10,
} as const;

/** Largest token watchFd accepts. */
export const MAX_WATCH_TOKEN = 0x7fffffff;

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

export interface HandlerContext {
  /** Worker number (0-based). */
  worker: number;
  /** Queues the device has in all. */
  queueCount: number;
  /** Structured logging through the control thread's logger. */
  log: (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void;
  /**
   * Wake this worker when `fd` is ready (FdEvent.READABLE by default, or WRITABLE, or both) and
   * call handler.onFdReady(token, events): in interrupt and adaptive mode the fd joins the set
   * the worker sleeps on; while awake (every mode) the worker polls the set without blocking
   * every few passes. The worker never reads the fd and does not own it. Callable while creating
   * the handler or later from its methods. Throws for a bad fd, a token outside
   * [0, MAX_WATCH_TOKEN] or an fd already watched.
   */
  watchFd(fd: number, token: number, events?: number): void;
  /** Stop watching `fd` (do it before closing the fd). Throws if it is not watched. */
  unwatchFd(fd: number): void;
  /**
   * The queue with this index if it runs on this worker (null otherwise): a handler reaches a
   * queue it has not been handed a request for yet (to popNow on it). Not for every request:
   * it searches. Optional so that test fakes need not provide it; the worker always does.
   */
  queue?(index: number): WorkerQueue | null;
}

/** What a handler module exports. */
export type CreateQueueHandler = (options: unknown, context: HandlerContext) => QueueHandler | Promise<QueueHandler>;

/** Where the worker finds a device's handler, and the plain-data options it is created with. */
export interface HandlerSpec {
  /** URL of an ES module exporting `createQueueHandler`. */
  module: string;
  options: unknown;
}
