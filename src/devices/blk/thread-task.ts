// The task each pool thread of the threads engine runs (in a piscina thread, where blocking is
// allowed): serve one submission lane until the ring closes. It sleeps in Atomics.wait on the
// lane's tail, takes up to BATCH records at a time, runs them through native blockIo, publishes
// their completions (thread-ring-layout.ts) and writes the completion eventfd once per batch.
//
// Why one long task per thread rather than one task per batch: a piscina task is dispatched and
// acknowledged through the event loop of the thread that owns the pool, which cannot be the
// polling worker. That relay cost about 10 times a direct thread wake-up here (a NOP round trip
// of 270-330 µs against 10-36 µs for an Atomics ping-pong, measured under load), so the poller
// wakes the pool thread directly and piscina keeps what it is good at: starting, owning and
// ending the threads, and reporting a task that fails.
import { receiveMessageOnPort } from 'node:worker_threads';
import { workerData } from 'piscina';
import { native } from '../../native.js';
import {
  Control,
  IOVEC_WORDS,
  LANE_WORDS,
  LaneWord,
  MESSAGE_HEADER_WORDS,
  PAD,
  SQE_WORDS,
  Sqe,
  laneWord,
  publishCompletions,
  type LaneTask,
  type RingShared,
} from './thread-ring-layout.js';

/** Records per blockIo call (each blocks this thread in turn). */
const BATCH = 16;
const EIO = 5;
/** A sleeping lane re-checks EXIT this often even without a notify. */
const SLEEP_MS = 1000;

const shared = workerData as RingShared;
const control = new Int32Array(shared.control);
const cq = new Int32Array(shared.cq);

export default function serveLane(task: LaneTask): number {
  const lane = task.lane;
  const sq = new Uint32Array(shared.lanes, lane * LANE_WORDS * 4, LANE_WORDS);
  const tailWord = laneWord(lane, LaneWord.TAIL);
  const headWord = laneWord(lane, LaneWord.HEAD);
  const idleWord = laneWord(lane, LaneWord.IDLE);
  const sqes = new Uint32Array(BATCH * SQE_WORDS);
  let iovecs = new Uint32Array(BATCH * 16 * IOVEC_WORDS);
  const results = new Int32Array(BATCH);
  let regions: SharedArrayBuffer[] = [];
  let generation = 0;
  let head = Atomics.load(control, headWord);
  let served = 0;
  for (;;) {
    // Read before TAIL: a record that is not in the lane yet is built against this list or a newer one.
    const newest = Atomics.load(control, Control.GENERATION);
    let tail = Atomics.load(control, tailWord);
    if (tail === head) {
      if (Atomics.load(control, Control.EXIT) === 1) return served;
      if (newest !== generation) {
        // Nothing queued here needs an older list: drop it (it keeps an old table mapped).
        regions = regionsFor(task, newest);
        generation = newest;
      }
      // Say we may sleep, then look again: the poller stores TAIL, then reads IDLE.
      Atomics.store(control, idleWord, 1);
      tail = Atomics.load(control, tailWord);
      if (tail === head) Atomics.wait(control, tailWord, tail, SLEEP_MS);
      Atomics.store(control, idleWord, 0);
      continue;
    }
    // Gather a batch of records of one region generation.
    let count = 0;
    let iovecCount = 0;
    while (head !== tail && count < BATCH) {
      const at = head & (LANE_WORDS - 1);
      if (sq[at] === PAD) {
        head = (head + (LANE_WORDS - at)) | 0;
        continue;
      }
      if (sq[at] !== generation) {
        if (count > 0) break;
        generation = sq[at]!;
        regions = regionsFor(task, generation);
      }
      const n = sq[at + 1 + Sqe.IOVEC_COUNT];
      if ((iovecCount + n) * IOVEC_WORDS > iovecs.length) {
        if (count > 0) break;
        iovecs = new Uint32Array(Math.max(2 * iovecs.length, n * IOVEC_WORDS));
      }
      const record = count * SQE_WORDS;
      for (let w = 0; w < SQE_WORDS; w++) sqes[record + w] = sq[at + 1 + w]!;
      sqes[record + Sqe.FIRST_IOVEC] = iovecCount;
      const to = iovecCount * IOVEC_WORDS;
      const words = n * IOVEC_WORDS;
      for (let w = 0; w < words; w++) iovecs[to + w] = sq[at + MESSAGE_HEADER_WORDS + w]!;
      iovecCount += n;
      count++;
      head = (head + MESSAGE_HEADER_WORDS + words) | 0;
    }
    // Copied out: the poller may reuse those words.
    Atomics.store(control, headWord, head);
    if (count === 0) continue;
    try {
      native.blockIo(regions, sqes, iovecs, count, results);
    } catch {
      results.fill(-EIO, 0, count); // cannot happen with the ring's own arrays; fail the batch, not the lane
    }
    publishCompletions(control, cq, shared.cqEntries, lane, sqes, results, count, shared.completionFd);
    served += count;
  }
}

/** Region lists are posted before the records that use them: take messages up to `wanted`. */
function regionsFor(task: LaneTask, wanted: number): SharedArrayBuffer[] {
  for (;;) {
    const received = receiveMessageOnPort(task.regionPort);
    // Cannot happen (the poller posts first): an empty list fails the records with EFAULT.
    if (received === undefined) return [];
    const message = received.message as { generation: number; regions: SharedArrayBuffer[] };
    if (message.generation === wanted) return message.regions;
  }
}
