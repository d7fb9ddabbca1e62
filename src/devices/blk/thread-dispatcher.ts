// The threads engine's dispatcher: a worker thread whose event loop runs free (unlike the
// polling worker that started it), so it can own a piscina pool. It sleeps on the submit
// eventfd, drains the submission ring into batches and runs them as pool tasks (thread-task.ts).
// Allocation per batch is fine here; the polling worker allocates nothing per request.
//
// A batch larger than SPLIT_BELOW records is split across the pool's threads, so a deep queue
// is served by several blocking syscalls at once, as QEMU's aio=threads pool does.
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { native } from '../../native.js';
import {
  Control,
  DispatcherState,
  IOVEC_WORDS,
  MESSAGE_HEADER_WORDS,
  PAD,
  SQE_WORDS,
  SQ_WORDS,
  Sqe,
  publishCompletions,
  type BlockIoTask,
  type DispatcherInit,
  type TaskInit,
} from './thread-ring-layout.js';

/** Batches of at most this many records go to one pool thread. */
const SPLIT_BELOW = 4;
const EIO = 5;

const init = workerData as DispatcherInit;
const control = new Int32Array(init.control);
const sq = new Uint32Array(init.sq);
const cq = new Int32Array(init.cq);
const taskInit: TaskInit = { control: init.control, cq: init.cq, cqEntries: init.cqEntries, completionFd: init.completionFd };
const pool = new Piscina<BlockIoTask, number>({
  filename: new URL('./thread-task.js', import.meta.url).href,
  minThreads: init.threads,
  maxThreads: init.threads,
  idleTimeout: Number.MAX_SAFE_INTEGER,
  concurrentTasksPerWorker: 1,
  workerData: taskInit,
});

let head = 0;
let generation = 0;
let regions: SharedArrayBuffer[] = [];
let exiting = false;
// One batch being gathered: records and their iovecs, re-indexed.
let batchSqes: Uint32Array<ArrayBuffer> = new Uint32Array(256 * SQE_WORDS);
let batchIovecs: Uint32Array<ArrayBuffer> = new Uint32Array(1024 * IOVEC_WORDS);
let batchCount = 0;
let batchIovecCount = 0;

const watcher = new native.FdWatcher(init.submitFd, onSubmitted);

function onSubmitted(status: number): void {
  if (status < 0) return fail();
  native.eventfdRead(init.submitFd);
  if (Atomics.load(control, Control.EXIT) === 1) {
    void exit();
    return;
  }
  drain();
}

function drain(): void {
  for (;;) {
    let tail = Atomics.load(control, Control.SQ_TAIL);
    if (tail === head) {
      // About to sleep: say so, then look once more (the poller stores SQ_TAIL, then reads IDLE).
      Atomics.store(control, Control.IDLE, 1);
      tail = Atomics.load(control, Control.SQ_TAIL);
      if (tail === head) return;
      // Work after all: take IDLE back unless the poller already did (then an extra wake-up comes).
      Atomics.compareExchange(control, Control.IDLE, 1, 0);
    }
    while (head !== tail) {
      const at = head & (SQ_WORDS - 1);
      if (sq[at] === PAD) {
        head = (head + (SQ_WORDS - at)) | 0;
        continue;
      }
      const recordGeneration = sq[at]!;
      if (recordGeneration !== generation) {
        runBatch();
        takeRegions(recordGeneration);
      }
      const iovecCount = sq[at + 1 + Sqe.IOVEC_COUNT]!;
      append(at, iovecCount);
      head = (head + MESSAGE_HEADER_WORDS + iovecCount * IOVEC_WORDS) | 0;
    }
    runBatch();
    // The records are copied out: the poller may reuse their words.
    Atomics.store(control, Control.SQ_HEAD, head);
  }
}

function append(at: number, iovecCount: number): void {
  if ((batchCount + 1) * SQE_WORDS > batchSqes.length) batchSqes = grown(batchSqes, (batchCount + 1) * SQE_WORDS);
  const iovecWords = iovecCount * IOVEC_WORDS;
  if ((batchIovecCount * IOVEC_WORDS) + iovecWords > batchIovecs.length) batchIovecs = grown(batchIovecs, batchIovecCount * IOVEC_WORDS + iovecWords);
  const record = batchCount * SQE_WORDS;
  for (let w = 0; w < SQE_WORDS; w++) batchSqes[record + w] = sq[at + 1 + w]!;
  batchSqes[record + Sqe.FIRST_IOVEC] = batchIovecCount;
  const to = batchIovecCount * IOVEC_WORDS;
  for (let w = 0; w < iovecWords; w++) batchIovecs[to + w] = sq[at + MESSAGE_HEADER_WORDS + w]!;
  batchCount++;
  batchIovecCount += iovecCount;
}

/** Runs the gathered batch as one task per pool thread at most. */
function runBatch(): void {
  const count = batchCount;
  if (count === 0) return;
  const chunks = count < SPLIT_BELOW ? 1 : Math.min(init.threads, Math.ceil(count / SPLIT_BELOW));
  const perChunk = Math.ceil(count / chunks);
  for (let first = 0; first < count; first += perChunk) {
    const end = Math.min(count, first + perChunk);
    const sqes = batchSqes.slice(first * SQE_WORDS, end * SQE_WORDS);
    const firstIovec = batchSqes[first * SQE_WORDS + Sqe.FIRST_IOVEC]!;
    const endIovec = end < count ? batchSqes[end * SQE_WORDS + Sqe.FIRST_IOVEC]! : batchIovecCount;
    for (let r = 0; r < end - first; r++) sqes[r * SQE_WORDS + Sqe.FIRST_IOVEC]! -= firstIovec;
    const task: BlockIoTask = { regions, sqes, iovecs: batchIovecs.slice(firstIovec * IOVEC_WORDS, endIovec * IOVEC_WORDS), count: end - first };
    pool.run(task).catch(() => failTask(task));
  }
  batchCount = 0;
  batchIovecCount = 0;
}

/** A task that threw never published its completions: they complete with EIO. */
function failTask(task: BlockIoTask): void {
  const results = new Int32Array(task.count).fill(-EIO);
  publishCompletions(control, cq, init.cqEntries, task.sqes, results, task.count, init.completionFd, native.eventfdWrite);
}

/** Region lists are posted before the records that use them: take messages up to `wanted`. */
function takeRegions(wanted: number): void {
  for (;;) {
    const received = receiveMessageOnPort(init.regionPort);
    if (received === undefined) {
      // Cannot happen (the poller posts first); fail the records rather than guess their memory.
      regions = [];
      generation = wanted;
      return;
    }
    const message = received.message as { generation: number; regions: SharedArrayBuffer[] };
    regions = message.regions;
    generation = message.generation;
    if (generation === wanted) return;
  }
}

function grown(array: Uint32Array, atLeast: number): Uint32Array<ArrayBuffer> {
  const next = new Uint32Array(Math.max(atLeast, 2 * array.length));
  next.set(array);
  return next;
}

function fail(): void {
  Atomics.store(control, Control.STATE, DispatcherState.FAILED);
  Atomics.notify(control, Control.DONE);
}

async function exit(): Promise<void> {
  if (exiting) return;
  exiting = true;
  watcher.close();
  init.regionPort.close();
  // The poller waited for every record to finish: no task is running.
  await pool.destroy();
  native.close(init.submitFd);
  native.close(init.completionFd);
}

process.on('uncaughtException', fail);
watcher.start(true, false);
Atomics.store(control, Control.STATE, DispatcherState.READY);
parentPort!.postMessage('ready');
