// The echo test device's request handler (runs in the workers): copies each request's readable
// bytes into its writable buffers and completes it. With `reorder` > 1 it holds completions and
// releases them in reverse order, so tests exercise out-of-order used entries. With `releaseFd`
// it holds every completion until that eventfd is written (the worker event API: it watches the
// fd and reads it itself), so tests decide when the device gives requests back. With `holdEvery`
// it parks every n-th request until its queue stops, so a back-end killed meanwhile leaves
// completions out of order (restart tests). It measures the
// framework itself: no I/O, no allocation per request.
import { native } from '../../native.js';
import type { CreateQueueHandler, HandlerContext, QueueHandler, WorkerQueue } from '../../dataplane/device-api.js';
import type { GuestMemory } from '../../dataplane/memory.js';
import type { VirtqRequest } from '../../dataplane/request.js';

export interface EchoHandlerOptions {
  /** Complete in batches of this many, newest first (1 = in order, immediately). */
  reorder?: number;
  /** Fault injection for tests: throw once, from handle(), on this request (1-based). */
  throwOnRequest?: number;
  /**
   * An eventfd to watch: completions are held (up to `reorder`, default 1024, then released
   * anyway) until it is readable; the handler then reads its counter and releases them.
   */
  releaseFd?: number;
  /** With releaseFd: a SharedArrayBuffer of EchoReleaseCount.SLOTS doubles the handler counts into. */
  releaseCounts?: SharedArrayBuffer;
  /**
   * Park every n-th request (n, 2n, ... counted from 1) until its queue stops; the others follow
   * the rules above. A back-end killed meanwhile has completed requests out of order. 0: none.
   */
  holdEvery?: number;
  /**
   * Fault injection for tests: the worker thread exits (process.exit in a worker ends the
   * thread) on this request (1-based), once per flag: `exitOnce` is an Int32Array's buffer
   * shared by every worker and its replacements, so a replacement does not die again.
   */
  exitOnRequest?: number;
  exitOnce?: SharedArrayBuffer;
}

/** Float64 slots of EchoHandlerOptions.releaseCounts. */
export const EchoReleaseCount = {
  /** onFdReady calls. */
  callbacks: 0,
  /** Sum of the eventfd counter values the handler read (what the writers added, if nobody else read). */
  valueRead: 1,
  SLOTS: 2,
} as const;

const RELEASE_TOKEN = 1;

const SCRATCH_BYTES = 64 * 1024;

class EchoHandler implements QueueHandler {
  readonly completionFd = -1;
  private readonly scratch = new Uint8Array(SCRATCH_BYTES);
  private readonly reorder: number;
  private readonly heldQueues: (WorkerQueue | null)[];
  private readonly heldRequests: (VirtqRequest | null)[];
  private readonly heldLengths: Uint32Array;
  private held = 0;
  private handledSincePoll = 0;
  private handled = 0;
  private readonly throwOnRequest: number;
  private readonly releaseFd: number;
  private readonly releaseCounts: Float64Array | null;
  private readonly holdEvery: number;
  private readonly exitOnRequest: number;
  private readonly exitOnce: Int32Array | null;
  private readonly parkedQueues: (WorkerQueue | null)[];
  private readonly parkedRequests: (VirtqRequest | null)[];
  private readonly parkedLengths = new Uint32Array(1024);
  private parked = 0;

  constructor(options: EchoHandlerOptions, context: HandlerContext) {
    this.throwOnRequest = options.throwOnRequest ?? 0;
    this.releaseFd = options.releaseFd ?? -1;
    this.releaseCounts = options.releaseCounts ? new Float64Array(options.releaseCounts, 0, EchoReleaseCount.SLOTS) : null;
    this.holdEvery = Math.max(0, Math.floor(options.holdEvery ?? 0));
    this.exitOnRequest = options.exitOnRequest ?? 0;
    this.exitOnce = options.exitOnce ? new Int32Array(options.exitOnce, 0, 1) : null;
    this.parkedQueues = new Array<WorkerQueue | null>(1024).fill(null);
    this.parkedRequests = new Array<VirtqRequest | null>(1024).fill(null);
    const holdDefault = this.releaseFd >= 0 ? 1024 : 1;
    this.reorder = Math.max(1, Math.min(1024, Math.floor(options.reorder ?? holdDefault)));
    if (this.releaseFd >= 0) context.watchFd(this.releaseFd, RELEASE_TOKEN);
    this.heldQueues = new Array<WorkerQueue | null>(this.reorder).fill(null);
    this.heldRequests = new Array<VirtqRequest | null>(this.reorder).fill(null);
    this.heldLengths = new Uint32Array(this.reorder);
  }

  get inFlight(): number {
    return this.held + this.parked;
  }

  handle(queue: WorkerQueue, request: VirtqRequest): void {
    if (++this.handled === this.throwOnRequest) throw new Error(`injected fault on request ${this.handled}`);
    if (this.handled === this.exitOnRequest && this.exitOnce && Atomics.compareExchange(this.exitOnce, 0, 0, 1) === 0) {
      process.exit(70);
    }
    const total = request.readableBytes < request.writableBytes ? request.readableBytes : request.writableBytes;
    let copied = 0;
    while (copied < total) {
      const chunk = total - copied < SCRATCH_BYTES ? total - copied : SCRATCH_BYTES;
      request.gather(this.scratch, 0, copied, chunk);
      request.scatter(this.scratch, 0, copied, chunk);
      copied += chunk;
    }
    this.handledSincePoll++;
    if (this.holdEvery > 0 && this.handled % this.holdEvery === 0 && this.parked < this.parkedLengths.length) {
      this.parkedQueues[this.parked] = queue;
      this.parkedRequests[this.parked] = request;
      this.parkedLengths[this.parked] = total;
      this.parked++;
      return;
    }
    if (this.reorder === 1 && this.releaseFd < 0) {
      queue.complete(request, total);
      return;
    }
    this.heldQueues[this.held] = queue;
    this.heldRequests[this.held] = request;
    this.heldLengths[this.held] = total;
    this.held++;
    if (this.held === this.reorder) this.release();
  }

  flush(): void {}

  poll(): number {
    // Nothing new arrived since the last pass: release what is held so the queue can drain.
    const released = this.handledSincePoll === 0 && this.releaseFd < 0 ? this.release() : 0;
    this.handledSincePoll = 0;
    return released + (this.parked > 0 ? this.releaseParkedOfStoppingQueues() : 0);
  }

  onFdReady(token: number): void {
    if (token !== RELEASE_TOKEN) return;
    const value = native.eventfdRead(this.releaseFd);
    const counts = this.releaseCounts;
    if (counts) {
      counts[EchoReleaseCount.callbacks]++;
      counts[EchoReleaseCount.valueRead] += value;
    }
    this.release();
  }

  setMemory(_memory: GuestMemory): void {}

  close(): void {}

  /** Completes the parked requests whose queue is stopping (a drain waits for them). */
  private releaseParkedOfStoppingQueues(): number {
    let kept = 0;
    let released = 0;
    for (let i = 0; i < this.parked; i++) {
      const queue = this.parkedQueues[i]!;
      const request = this.parkedRequests[i]!;
      if (queue.stopping) {
        queue.complete(request, this.parkedLengths[i]);
        released++;
      } else {
        this.parkedQueues[kept] = queue;
        this.parkedRequests[kept] = request;
        this.parkedLengths[kept] = this.parkedLengths[i];
        kept++;
      }
    }
    for (let i = kept; i < this.parked; i++) {
      this.parkedQueues[i] = null;
      this.parkedRequests[i] = null;
    }
    this.parked = kept;
    return released;
  }

  private release(): number {
    const count = this.held;
    for (let i = count - 1; i >= 0; i--) {
      this.heldQueues[i]!.complete(this.heldRequests[i]!, this.heldLengths[i]);
      this.heldQueues[i] = null;
      this.heldRequests[i] = null;
    }
    this.held = 0;
    return count;
  }
}

export const createQueueHandler: CreateQueueHandler = (options, context) => new EchoHandler(options ?? {}, context);
