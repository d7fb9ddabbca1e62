// A thread-pool ring: what the io_uring engine asks of native Uring (setRegions, submit, reap,
// wait, eventfd, close), served by blocking syscalls in a piscina pool instead of the kernel's
// io_uring, for hosts that forbid io_uring. The engine above it (uring-engine.ts) is unchanged:
// same records, same short-transfer and write-zeroes logic.
//
// Threads. The polling worker that owns this ring never turns its event loop, and piscina
// dispatches and tracks tasks on the event loop of the thread that owns the pool. So the pool
// belongs to a dispatcher, a small worker thread of its own (thread-dispatcher.ts) whose loop
// runs free: it sleeps on the submit eventfd, drains the submission ring and runs one pool task
// per batch; the task (thread-task.ts) calls native blockIo, publishes completions into the
// completion ring and writes the completion eventfd (the engine's completionFd, so interrupt and
// adaptive workers wake on it). Records and completions travel through SharedArrayBuffers
// (layout: thread-ring-layout.ts): submit() and reap() allocate nothing and make at most one
// native call (an eventfd write, only when the dispatcher said it may sleep).
//
// Memory. The region list travels to the dispatcher as a message tagged with a generation;
// every record carries the generation it was built against, and each task carries its list,
// which keeps the regions mapped until the task is done.
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { native, type Uring } from '../../native.js';
import {
  CONTROL_WORDS,
  CQ_ENTRY_WORDS,
  Control,
  DispatcherState,
  IOVEC_WORDS,
  MAX_IOVECS,
  MESSAGE_HEADER_WORDS,
  Opcode,
  PAD,
  SQE_WORDS,
  SQ_WORDS,
  Sqe,
  type DispatcherInit,
} from './thread-ring-layout.js';

const EFAULT = 14;
const EINVAL = 22;
/** How long close() and wait() sleep between checks that the dispatcher is still alive. */
const WAIT_SLICE_MS = 200;

export interface ThreadPoolRingOptions {
  /** Pool threads (each runs one batch of blocking syscalls at a time). */
  threads: number;
  /** Records in flight at most (rounded up to a power of two), like io_uring's completion queue. */
  entries: number;
}

export class ThreadPoolRing implements Uring {
  private readonly control: Int32Array;
  private readonly sq: Uint32Array;
  private readonly cq: Int32Array;
  private readonly cqMask: number;
  private readonly submitFd: number;
  private readonly completionFd: number;
  private readonly regionPort: MessagePort;
  private readonly dispatcher: Worker;
  private generation = 1;
  private sqTail = 0;
  private cqHead = 0;
  private inFlight = 0;
  /** Records handed to the dispatcher since the start (wraps like the DONE counter). */
  private queuedTotal = 0;
  // Records refused by the checks, reported by the next reap() (FIFO).
  private readonly immediateUserData: Int32Array;
  private readonly immediateResults: Int32Array;
  private immediateHead = 0;
  private immediateCount = 0;
  private closed = false;

  private constructor(init: DispatcherInit, dispatcher: Worker, regionPort: MessagePort) {
    this.control = new Int32Array(init.control);
    this.sq = new Uint32Array(init.sq);
    this.cq = new Int32Array(init.cq);
    this.cqMask = init.cqEntries - 1;
    this.submitFd = init.submitFd;
    this.completionFd = init.completionFd;
    this.dispatcher = dispatcher;
    this.regionPort = regionPort;
    this.immediateUserData = new Int32Array(init.cqEntries);
    this.immediateResults = new Int32Array(init.cqEntries);
  }

  /** Starts the dispatcher and its pool; resolves once they are ready to take records. */
  static async open(options: ThreadPoolRingOptions): Promise<ThreadPoolRing> {
    if (!Number.isInteger(options.threads) || options.threads < 1 || options.threads > 64) {
      throw new RangeError(`threads must be an integer in [1, 64], got ${options.threads}`);
    }
    let cqEntries = 1;
    while (cqEntries < 2 * options.entries) cqEntries *= 2;
    const submitFd = native.eventfdCreate(0);
    let completionFd = -1;
    try {
      completionFd = native.eventfdCreate(0);
    } catch (error) {
      native.close(submitFd);
      throw error;
    }
    const { port1, port2 } = new MessageChannel();
    const init: DispatcherInit = {
      control: new SharedArrayBuffer(CONTROL_WORDS * 4),
      sq: new SharedArrayBuffer(SQ_WORDS * 4),
      cq: new SharedArrayBuffer(cqEntries * CQ_ENTRY_WORDS * 4),
      cqEntries,
      submitFd,
      completionFd,
      threads: options.threads,
      regionPort: port2,
    };
    Atomics.store(new Int32Array(init.control), Control.IDLE, 1);
    const dispatcher = new Worker(new URL('./thread-dispatcher.js', import.meta.url), { workerData: init, transferList: [port2] });
    try {
      await new Promise<void>((resolve, reject) => {
        dispatcher.once('message', () => resolve());
        dispatcher.once('error', reject);
        dispatcher.once('exit', (code) => reject(new Error(`the threads engine's dispatcher exited (code ${code}) before it was ready`)));
      });
    } catch (error) {
      // The dispatcher owns the fds once ready; before that they are ours to close.
      await dispatcher.terminate();
      native.close(submitFd);
      native.close(completionFd);
      port1.close();
      throw error;
    }
    dispatcher.removeAllListeners();
    // A stuck dispatcher must not keep the worker alive; it ends with its parent.
    dispatcher.unref();
    return new ThreadPoolRing(init, dispatcher, port1);
  }

  setRegions(regions: SharedArrayBuffer[]): void {
    this.checkOpen('setRegions');
    for (const region of regions) {
      if (!(region instanceof SharedArrayBuffer)) throw new TypeError('regions must be SharedArrayBuffers');
    }
    this.generation = this.generation === 0x7fffffff ? 1 : this.generation + 1;
    // Sent before any record that names this generation, so the dispatcher always finds it.
    this.regionPort.postMessage({ generation: this.generation, regions: [...regions] });
  }

  submit(sqes: Uint32Array, iovecs: Uint32Array, count: number): number {
    this.checkOpen('submit');
    if (!Number.isInteger(count) || count < 0 || count * SQE_WORDS > sqes.length) {
      throw new RangeError(`count must be an integer in [0, ${Math.floor(sqes.length / SQE_WORDS)}], got ${count}`);
    }
    const sq = this.sq;
    const iovecRecords = Math.floor(iovecs.length / IOVEC_WORDS);
    const budget = this.cqMask + 1;
    let head = Atomics.load(this.control, Control.SQ_HEAD);
    let tail = this.sqTail;
    let queued = 0;
    for (; queued < count; queued++) {
      if (this.inFlight + this.immediateCount >= budget) break;
      const record = queued * SQE_WORDS;
      const opcode = sqes[record + Sqe.OPCODE]!;
      let iovecCount = 0;
      if (opcode === Opcode.READV || opcode === Opcode.WRITEV) {
        iovecCount = sqes[record + Sqe.IOVEC_COUNT]!;
        const first = sqes[record + Sqe.FIRST_IOVEC]!;
        if (iovecCount > MAX_IOVECS) {
          this.refuse(sqes[record + Sqe.USER_DATA]!, -EINVAL);
          continue;
        }
        if (first + iovecCount > iovecRecords) {
          this.refuse(sqes[record + Sqe.USER_DATA]!, -EFAULT);
          continue;
        }
      }
      const words = MESSAGE_HEADER_WORDS + iovecCount * IOVEC_WORDS;
      let at = tail & (SQ_WORDS - 1);
      const pad = at + words > SQ_WORDS ? SQ_WORDS - at : 0;
      if (SQ_WORDS - ((tail - head) >>> 0) < pad + words) {
        head = Atomics.load(this.control, Control.SQ_HEAD);
        if (SQ_WORDS - ((tail - head) >>> 0) < pad + words) break;
      }
      if (pad > 0) {
        sq[at] = PAD;
        tail = (tail + pad) | 0;
        at = 0;
      }
      sq[at] = this.generation;
      for (let w = 0; w < SQE_WORDS; w++) sq[at + 1 + w] = sqes[record + w]!;
      if (iovecCount > 0) {
        const from = sqes[record + Sqe.FIRST_IOVEC]! * IOVEC_WORDS;
        const end = iovecCount * IOVEC_WORDS;
        for (let w = 0; w < end; w++) sq[at + MESSAGE_HEADER_WORDS + w] = iovecs[from + w]!;
      }
      tail = (tail + words) | 0;
      this.inFlight++;
      this.queuedTotal = (this.queuedTotal + 1) | 0;
    }
    if (tail !== this.sqTail) {
      this.sqTail = tail;
      Atomics.store(this.control, Control.SQ_TAIL, tail);
      // Dekker with the dispatcher (it stores IDLE, then re-reads SQ_TAIL): one of us sees the other.
      if (Atomics.compareExchange(this.control, Control.IDLE, 1, 0) === 1) native.eventfdWrite(this.submitFd, 1);
    }
    return queued;
  }

  reap(cqes: Int32Array, max: number): number {
    this.checkOpen('reap');
    if (!Number.isInteger(max) || max < 0 || 2 * max > cqes.length) {
      throw new RangeError(`max must be an integer in [0, ${Math.floor(cqes.length / 2)}], got ${max}`);
    }
    let reaped = 0;
    while (this.immediateCount > 0 && reaped < max) {
      cqes[2 * reaped] = this.immediateUserData[this.immediateHead]!;
      cqes[2 * reaped + 1] = this.immediateResults[this.immediateHead]!;
      this.immediateHead = (this.immediateHead + 1) & this.cqMask;
      this.immediateCount--;
      reaped++;
    }
    const cq = this.cq;
    let head = this.cqHead;
    while (reaped < max) {
      const entry = (head & this.cqMask) * CQ_ENTRY_WORDS;
      const next = (head + 1) | 0;
      if (Atomics.load(cq, entry) !== next) break;
      cqes[2 * reaped] = cq[entry + 1]!;
      cqes[2 * reaped + 1] = cq[entry + 2]!;
      head = next;
      reaped++;
      this.inFlight--;
    }
    this.cqHead = head;
    return reaped;
  }

  wait(minComplete: number): void {
    this.checkOpen('wait');
    const wanted = Math.min(minComplete, this.immediateCount + this.inFlight);
    while (this.immediateCount + this.readyCount(wanted) < wanted) {
      const done = Atomics.load(this.control, Control.DONE);
      if (this.immediateCount + this.readyCount(wanted) >= wanted) return;
      this.checkDispatcher();
      Atomics.wait(this.control, Control.DONE, done, WAIT_SLICE_MS);
    }
  }

  eventfd(): number {
    this.checkOpen('eventfd');
    return this.completionFd;
  }

  /**
   * Waits for every record handed over to finish (a read still running writes into guest
   * memory), then lets the dispatcher end; it closes both eventfds once its pool is gone.
   * Idempotent.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    while (Atomics.load(this.control, Control.DONE) !== this.queuedTotal) {
      if (Atomics.load(this.control, Control.STATE) === DispatcherState.FAILED) break;
      Atomics.wait(this.control, Control.DONE, Atomics.load(this.control, Control.DONE), WAIT_SLICE_MS);
    }
    this.regionPort.close();
    Atomics.store(this.control, Control.EXIT, 1);
    native.eventfdWrite(this.submitFd, 1);
  }

  /** The dispatcher thread, for tests (e.g. to check it ends after close()). */
  get dispatcherThread(): Worker {
    return this.dispatcher;
  }

  private readyCount(limit: number): number {
    let ready = 0;
    let head = this.cqHead;
    while (ready < limit) {
      const next = (head + 1) | 0;
      if (Atomics.load(this.cq, (head & this.cqMask) * CQ_ENTRY_WORDS) !== next) break;
      head = next;
      ready++;
    }
    return ready;
  }

  private refuse(userData: number, result: number): void {
    const at = (this.immediateHead + this.immediateCount) & this.cqMask;
    this.immediateUserData[at] = userData | 0;
    this.immediateResults[at] = result;
    this.immediateCount++;
  }

  private checkOpen(method: string): void {
    if (this.closed) throw new Error(`ThreadPoolRing.${method}: the ring is closed`);
  }

  private checkDispatcher(): void {
    if (Atomics.load(this.control, Control.STATE) === DispatcherState.FAILED) {
      throw new Error("the threads engine's dispatcher failed; its requests cannot complete");
    }
  }
}
