// A thread-pool ring: what the io_uring engine asks of native Uring (setRegions, submit, reap,
// wait, eventfd, close), served by blocking syscalls in a piscina pool instead of the kernel's
// io_uring, for hosts that forbid io_uring. The engine above it (uring-engine.ts) is unchanged:
// same records, same short-transfer and write-zeroes logic.
//
// Threads. The polling worker that owns this ring never turns its event loop, and piscina
// dispatches and tracks tasks on the event loop of the thread that owns the pool. So the pool
// belongs to a dispatcher, a small worker thread of its own (thread-dispatcher.ts) whose loop
// runs free; it gives each pool thread one long task (thread-task.ts) that serves a submission
// lane. submit() writes each record into the least busy lane and wakes that lane's thread with
// Atomics.notify only if it said it may sleep; the thread runs the records through native
// blockIo, publishes completions into the completion ring and writes the completion eventfd
// (the engine's completionFd, so interrupt and adaptive workers wake on it). Records and
// completions travel through SharedArrayBuffers (layout: thread-ring-layout.ts): submit() and
// reap() allocate nothing; submit() makes at most one native call (below), reap() none.
//
// Reads served inline. A lane hand-off costs two thread wake-ups (the lane's, then the poller's
// on the completion eventfd); at QD1 on the page cache those are most of a request's time. So
// when `inlineReadBytes` > 0 (a file without O_DIRECT), submit() first runs the batch's small
// reads itself with preadv2(RWF_NOWAIT) in one blockIo call: a read the page cache can serve
// completes at once (reported by the next reap(), as io_uring reports its inline completions),
// one that would wait for the device goes to a lane as before. The polling thread never blocks.
// A file system that cannot promise that (EOPNOTSUPP: tmpfs here) turns inline reads off.
//
// Memory. Region lists travel to each lane as messages tagged with a generation; every record
// carries the generation it was built against, and a lane holds the list it is using, which
// keeps those regions mapped until its records are done. An idle lane catches up with the
// newest list, so an old table's mappings are not kept alive by lanes that had no work.
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { native, type Uring } from '../../native.js';
import {
  CONTROL_WORDS,
  CQ_ENTRY_WORDS,
  Control,
  IOVEC_WORDS,
  LANE_WORDS,
  LaneWord,
  MAX_IOVECS,
  MAX_LANES,
  MESSAGE_HEADER_WORDS,
  Opcode,
  PAD,
  PoolState,
  SQE_WORDS,
  Sqe,
  laneWord,
  type DispatcherInit,
} from './thread-ring-layout.js';

const EAGAIN = 11;
const EFAULT = 14;
const EINVAL = 22;
const EOPNOTSUPP = 95;
/** How long close() and wait() sleep between checks that the pool has not failed. */
const WAIT_SLICE_MS = 200;

export interface ThreadPoolRingOptions {
  /** Pool threads, one submission lane each (each runs one blocking syscall at a time). */
  threads: number;
  /** Records in flight at most (rounded up to a power of two), like io_uring's completion queue. */
  entries: number;
  /** Reads up to this many bytes are first tried inline without blocking (0: never; not for O_DIRECT). */
  inlineReadBytes?: number;
}

export class ThreadPoolRing implements Uring {
  private readonly control: Int32Array;
  private readonly lanes: Uint32Array;
  private readonly laneCount: number;
  private readonly cq: Int32Array;
  private readonly cqMask: number;
  private readonly completionFd: number;
  private readonly regionPorts: MessagePort[];
  private readonly dispatcher: Worker;
  private generation = 0;
  /** The newest region list, for reads run inline. */
  private regions: SharedArrayBuffer[] = [];
  /** 0 once the file system said it cannot read without blocking (EOPNOTSUPP: tmpfs here). */
  private inlineReadBytes: number;
  private readonly inlineResults: Int32Array;
  /**
   * Set by the engine while it reaps: a submit() then (resubmitting a remainder or a next phase)
   * must write the completion eventfd for what it completes at once, or a poller that reaped
   * nothing would sleep on it.
   */
  announceImmediate = false;
  // Per lane: the poller's tail, records handed over (wrapping), and the lane's busy count in one submit().
  private readonly laneTails: Int32Array;
  private readonly laneSubmitted: Int32Array;
  private readonly laneBusy: Int32Array;
  private cqHead = 0;
  private inFlight = 0;
  /** Records handed to the lanes since the start (wraps like the DONE counter). */
  private queuedTotal = 0;
  // Records completed within submit() (refused by the checks, or read inline), reported by the next reap() (FIFO).
  private readonly immediateUserData: Int32Array;
  private readonly immediateResults: Int32Array;
  private immediateHead = 0;
  private immediateCount = 0;
  private closed = false;

  private constructor(init: DispatcherInit, dispatcher: Worker, regionPorts: MessagePort[], inlineReadBytes: number) {
    this.control = new Int32Array(init.control);
    this.lanes = new Uint32Array(init.lanes);
    this.laneCount = init.threads;
    this.cq = new Int32Array(init.cq);
    this.cqMask = init.cqEntries - 1;
    this.completionFd = init.completionFd;
    this.dispatcher = dispatcher;
    this.regionPorts = regionPorts;
    this.laneTails = new Int32Array(init.threads);
    this.laneSubmitted = new Int32Array(init.threads);
    this.laneBusy = new Int32Array(init.threads);
    this.immediateUserData = new Int32Array(init.cqEntries);
    this.immediateResults = new Int32Array(init.cqEntries);
    this.inlineReadBytes = inlineReadBytes;
    this.inlineResults = new Int32Array(init.cqEntries);
  }

  /** Starts the dispatcher and its pool; resolves once the pool's lanes are being served. */
  static async open(options: ThreadPoolRingOptions): Promise<ThreadPoolRing> {
    if (!Number.isInteger(options.threads) || options.threads < 1 || options.threads > MAX_LANES) {
      throw new RangeError(`threads must be an integer in [1, ${MAX_LANES}], got ${options.threads}`);
    }
    const inlineReadBytes = options.inlineReadBytes ?? 0;
    if (!Number.isSafeInteger(inlineReadBytes) || inlineReadBytes < 0) {
      throw new RangeError(`inlineReadBytes must be a non-negative integer, got ${inlineReadBytes}`);
    }
    let cqEntries = 1;
    while (cqEntries < 2 * options.entries) cqEntries *= 2;
    const completionFd = native.eventfdCreate(0);
    const ports = Array.from({ length: options.threads }, () => new MessageChannel());
    const init: DispatcherInit = {
      control: new SharedArrayBuffer(CONTROL_WORDS * 4),
      lanes: new SharedArrayBuffer(options.threads * LANE_WORDS * 4),
      cq: new SharedArrayBuffer(cqEntries * CQ_ENTRY_WORDS * 4),
      cqEntries,
      completionFd,
      threads: options.threads,
      regionPorts: ports.map((channel) => channel.port2),
    };
    const dispatcher = new Worker(new URL('./thread-dispatcher.js', import.meta.url), {
      workerData: init,
      transferList: init.regionPorts,
    });
    try {
      await new Promise<void>((resolve, reject) => {
        dispatcher.once('message', () => resolve());
        dispatcher.once('error', reject);
        dispatcher.once('exit', (code) =>
          reject(new Error(`the threads engine's dispatcher exited (code ${code}) before it was ready`)),
        );
      });
    } catch (error) {
      // The dispatcher owns the eventfd once ready; before that it is ours to close.
      await dispatcher.terminate();
      native.close(completionFd);
      for (const channel of ports) channel.port1.close();
      throw error;
    }
    dispatcher.removeAllListeners();
    // A stuck dispatcher must not keep the worker alive; it ends with its parent.
    dispatcher.unref();
    return new ThreadPoolRing(
      init,
      dispatcher,
      ports.map((channel) => channel.port1),
      inlineReadBytes,
    );
  }

  setRegions(regions: SharedArrayBuffer[]): void {
    this.checkOpen('setRegions');
    for (const region of regions) {
      if (!(region instanceof SharedArrayBuffer)) throw new TypeError('regions must be SharedArrayBuffers');
    }
    // Never PAD (2^32 - 1): a table change per microsecond would take over an hour to get there.
    this.generation++;
    this.regions = [...regions];
    // Sent before any record that names this generation, so every lane finds it; then idle lanes
    // are woken to take it and drop the lists before it (they keep guest memory mapped).
    for (const port of this.regionPorts) port.postMessage({ generation: this.generation, regions: [...regions] });
    Atomics.store(this.control, Control.GENERATION, this.generation);
    for (let lane = 0; lane < this.laneCount; lane++) Atomics.notify(this.control, laneWord(lane, LaneWord.TAIL));
  }

  submit(sqes: Uint32Array, iovecs: Uint32Array, count: number): number {
    this.checkOpen('submit');
    if (!Number.isInteger(count) || count < 0 || count * SQE_WORDS > sqes.length) {
      throw new RangeError(`count must be an integer in [0, ${Math.floor(sqes.length / SQE_WORDS)}], got ${count}`);
    }
    const control = this.control;
    const lanes = this.lanes;
    const laneCount = this.laneCount;
    const iovecRecords = Math.floor(iovecs.length / IOVEC_WORDS);
    const budget = this.cqMask + 1;
    const immediateBefore = this.immediateCount;
    const inline = this.inlineReadBytes > 0 ? this.runInline(sqes, iovecs, count) : 0;
    const inlineResults = this.inlineResults;
    // Each lane's backlog now; records go to the least busy one.
    for (let lane = 0; lane < laneCount; lane++) {
      this.laneBusy[lane] = (this.laneSubmitted[lane] - Atomics.load(control, laneWord(lane, LaneWord.COMPLETED))) | 0;
    }
    let touched = 0;
    let queued = 0;
    for (; queued < count; queued++) {
      if (this.inFlight + this.immediateCount >= budget) break;
      const record = queued * SQE_WORDS;
      if (queued < inline) {
        const result = inlineResults[queued];
        if (result === -EOPNOTSUPP)
          this.inlineReadBytes = 0; // it will not change: stop trying
        else if (result !== -EAGAIN) {
          this.completeNow(sqes[record + Sqe.USER_DATA], result);
          continue;
        }
      }
      const opcode = sqes[record + Sqe.OPCODE];
      let iovecCount = 0;
      if (opcode === Opcode.READV || opcode === Opcode.WRITEV) {
        iovecCount = sqes[record + Sqe.IOVEC_COUNT]!;
        if (iovecCount > MAX_IOVECS) {
          this.completeNow(sqes[record + Sqe.USER_DATA], -EINVAL);
          continue;
        }
        if (sqes[record + Sqe.FIRST_IOVEC] + iovecCount > iovecRecords) {
          this.completeNow(sqes[record + Sqe.USER_DATA], -EFAULT);
          continue;
        }
      }
      let lane = 0;
      for (let other = 1; other < laneCount; other++) if (this.laneBusy[other] < this.laneBusy[lane]) lane = other;
      const words = MESSAGE_HEADER_WORDS + iovecCount * IOVEC_WORDS;
      let tail = this.laneTails[lane];
      let at = tail & (LANE_WORDS - 1);
      const pad = at + words > LANE_WORDS ? LANE_WORDS - at : 0;
      const head = Atomics.load(control, laneWord(lane, LaneWord.HEAD));
      if (LANE_WORDS - ((tail - head) >>> 0) < pad + words) break; // that lane is full: the rest waits
      const base = lane * LANE_WORDS;
      if (pad > 0) {
        lanes[base + at] = PAD;
        tail = (tail + pad) | 0;
        at = 0;
      }
      const to = base + at;
      lanes[to] = this.generation;
      for (let w = 0; w < SQE_WORDS; w++) lanes[to + 1 + w] = sqes[record + w]!;
      // The lane parses messages by this count: it must be what was copied (0 unless READV/WRITEV).
      lanes[to + 1 + Sqe.IOVEC_COUNT] = iovecCount;
      if (iovecCount > 0) {
        const from = sqes[record + Sqe.FIRST_IOVEC] * IOVEC_WORDS;
        const end = iovecCount * IOVEC_WORDS;
        for (let w = 0; w < end; w++) lanes[to + MESSAGE_HEADER_WORDS + w] = iovecs[from + w]!;
      }
      this.laneTails[lane] = (tail + words) | 0;
      this.laneSubmitted[lane] = (this.laneSubmitted[lane] + 1) | 0;
      this.laneBusy[lane]++;
      touched |= 1 << lane;
      this.inFlight++;
      this.queuedTotal = (this.queuedTotal + 1) | 0;
    }
    for (let lane = 0; touched !== 0; lane++, touched >>>= 1) {
      if ((touched & 1) === 0) continue;
      const tailWord = laneWord(lane, LaneWord.TAIL);
      Atomics.store(control, tailWord, this.laneTails[lane]);
      // The lane's thread stores IDLE, then re-reads TAIL before it waits on it: one of us sees the other.
      if (Atomics.compareExchange(control, laneWord(lane, LaneWord.IDLE), 1, 0) === 1) Atomics.notify(control, tailWord);
    }
    if (this.announceImmediate && this.immediateCount !== immediateBefore) native.eventfdWrite(this.completionFd, 1);
    return queued;
  }

  /**
   * Tries the reads among the first records inline (see the top of this file); returns how many
   * records the call covered: those whose inlineResults entry is not -EAGAIN or -EOPNOTSUPP are done. Each
   * record it covers is then accepted by submit(), so it covers only what the completion budget
   * and every lane's free space (a record takes under twice its words, pad included) can take.
   */
  private runInline(sqes: Uint32Array, iovecs: Uint32Array, count: number): number {
    const room = this.cqMask + 1 - this.inFlight - this.immediateCount;
    const limit = count < room ? count : room;
    let covered = 0;
    let words = 0;
    for (let i = 0; i < limit; i++) {
      const record = i * SQE_WORDS;
      const opcode = sqes[record + Sqe.OPCODE];
      if (opcode !== Opcode.READV && opcode !== Opcode.WRITEV) {
        words += MESSAGE_HEADER_WORDS;
        continue;
      }
      const iovecCount = sqes[record + Sqe.IOVEC_COUNT];
      words += MESSAGE_HEADER_WORDS + (iovecCount < MAX_IOVECS ? iovecCount : MAX_IOVECS) * IOVEC_WORDS;
      if (opcode === Opcode.READV) covered = i + 1;
    }
    if (covered === 0) return 0;
    for (let lane = 0; lane < this.laneCount; lane++) {
      const used = (this.laneTails[lane] - Atomics.load(this.control, laneWord(lane, LaneWord.HEAD))) >>> 0;
      if (LANE_WORDS - used < 2 * words) return 0;
    }
    native.blockIo(this.regions, sqes, iovecs, covered, this.inlineResults, this.inlineReadBytes);
    return covered;
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
   * memory), closes the completion eventfd (no lane writes it any more), then lets the lanes
   * end; the dispatcher ends the pool. The polling worker may exit right after: the
   * dispatcher's threads end with it. Idempotent.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    let finished = true;
    while (Atomics.load(this.control, Control.DONE) !== this.queuedTotal) {
      if (Atomics.load(this.control, Control.STATE) === PoolState.FAILED) {
        finished = false; // a lane may still be mid-batch: leave the eventfd to the dispatcher
        break;
      }
      Atomics.wait(this.control, Control.DONE, Atomics.load(this.control, Control.DONE), WAIT_SLICE_MS);
    }
    if (finished) {
      native.close(this.completionFd);
      Atomics.store(this.control, Control.FD_CLOSED, 1);
    }
    for (const port of this.regionPorts) port.close();
    Atomics.store(this.control, Control.EXIT, 1);
    for (let lane = 0; lane < this.laneCount; lane++) Atomics.notify(this.control, laneWord(lane, LaneWord.TAIL));
  }

  /** Reads up to this many bytes are tried inline (0: none, or no longer), for tests. */
  get inlineReadLimit(): number {
    return this.inlineReadBytes;
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

  private completeNow(userData: number, result: number): void {
    const at = (this.immediateHead + this.immediateCount) & this.cqMask;
    this.immediateUserData[at] = userData | 0;
    this.immediateResults[at] = result;
    this.immediateCount++;
  }

  private checkOpen(method: string): void {
    if (this.closed) throw new Error(`ThreadPoolRing.${method}: the ring is closed`);
  }

  private checkDispatcher(): void {
    if (Atomics.load(this.control, Control.STATE) === PoolState.FAILED) {
      throw new Error("the threads engine's pool failed; its requests cannot complete");
    }
  }
}
