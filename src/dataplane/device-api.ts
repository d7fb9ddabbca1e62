// The device side of the data plane: what a device (virtio-blk, virtio-net, the echo test
// device) implements to process requests inside a worker thread. A handler is created once per
// worker from a module the worker imports (worker threads cannot receive functions), receives
// each popped request, and completes it now or later through its queue — without allocating.
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
  /** The memory table changed; requests already in flight keep the old one alive. */
  setMemory(memory: GuestMemory): void;
  close(): void;
}

export interface HandlerContext {
  /** Worker number (0-based). */
  worker: number;
  /** Queues the device has in all. */
  queueCount: number;
  /** Structured logging through the control thread's logger. */
  log(level: 'error' | 'warn' | 'info' | 'debug', msg: string, fields?: Record<string, unknown>): void;
}

/** What a handler module exports. */
export type CreateQueueHandler = (options: unknown, context: HandlerContext) => QueueHandler | Promise<QueueHandler>;

/** Where the worker finds a device's handler, and the plain-data options it is created with. */
export interface HandlerSpec {
  /** URL of an ES module exporting `createQueueHandler`. */
  module: string;
  options: unknown;
}
