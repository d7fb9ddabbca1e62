// The shared memory of a thread-pool ring (thread-ring.ts), read and written by the polling
// worker that owns the ring (it produces submissions and consumes completions) and the pool
// threads (thread-task.ts: each consumes its own lane of submissions and produces completions).
//
// Control words (Int32Array; words written by different threads sit on separate 64-byte lines):
//   CQ_RESERVED  completion entries reserved by pool threads (Atomics.add)
//   DONE     records finished: completions published and the completion eventfd written (the
//            poller waits on it in wait() and close())
//   STATE    pool state (PoolState)                 EXIT  the poller asks the lanes to end
//   GENERATION  the newest region list's generation, stored after it was posted to every lane
//   FD_CLOSED  1 once the poller closed the completion eventfd itself (else the dispatcher does)
//   per lane (laneWord(lane, LaneWord.X)):
//     TAIL      submission words written (poller; pool threads Atomics.wait on it)
//     HEAD      submission words consumed (the lane's thread)
//     IDLE      1 while the lane's thread may sleep: the poller then notifies TAIL
//     COMPLETED records the lane finished (the poller sends new records to the least busy lane)
//
// Submission lanes (Uint32Array, LANE_WORDS words per lane): one message per record,
//   [region generation][the 8 SQE words of native/ring/uring.cc][iovec count × 4 IOVEC words],
// word 6 of the SQE (first iovec) meaning nothing here: the iovecs follow the SQE. A message
// never wraps: when it does not fit before the end, the producer writes PAD and starts over.
//
// Completion ring (Int32Array of cqEntries × CQ_ENTRY_WORDS): entry p % cqEntries holds
// [sequence p + 1, user_data, res]; a pool thread fills it and then stores the sequence, so the
// poller reads entries in order once their sequence matches. The poller keeps at most
// cqEntries records in flight, so a producer never laps it.
import type { MessagePort } from 'node:worker_threads';
import { native } from '../../native.js';

export const Control = {
  CQ_RESERVED: 0,
  DONE: 16,
  STATE: 32,
  EXIT: 48,
  GENERATION: 56,
  FD_CLOSED: 60,
} as const;
export const LaneWord = { TAIL: 0, HEAD: 16, IDLE: 32, COMPLETED: 48 } as const;
const LANES_BASE = 64;
const LANE_STRIDE = 64;
export const MAX_LANES = 32;
export const CONTROL_WORDS = LANES_BASE + MAX_LANES * LANE_STRIDE;

export function laneWord(lane: number, word: number): number {
  return LANES_BASE + lane * LANE_STRIDE + word;
}

export const PoolState = { RUNNING: 0, FAILED: 1 } as const;

/** Submission words per lane: room for many messages of the largest kind (9 + 4 × 1024 words). */
export const LANE_WORDS = 1 << 14;
/** Words before the iovecs of a message: the generation and the SQE. */
export const MESSAGE_HEADER_WORDS = 9;
export const PAD = 0xffffffff;
export const CQ_ENTRY_WORDS = 4;

export { IOVEC_WORDS, MAX_IOVECS, Opcode, SQE_WORDS, Sqe } from './records.js';
import { SQE_WORDS, Sqe } from './records.js';

/** The shared buffers and fds of one ring. */
export interface RingShared {
  control: SharedArrayBuffer;
  lanes: SharedArrayBuffer;
  cq: SharedArrayBuffer;
  cqEntries: number;
  completionFd: number;
}

/** What the dispatcher is started with (structured-cloned; the buffers are shared). */
export interface DispatcherInit extends RingShared {
  threads: number;
  /** One per lane: region lists arrive as { generation, regions } before any record that uses them. */
  regionPorts: MessagePort[];
}

/** The one long task each pool thread runs: serve lane `lane` until EXIT. */
export interface LaneTask {
  lane: number;
  regionPort: MessagePort;
}

/** Publishes `count` completions (user_data from the records, results) and signals the poller. */
export function publishCompletions(
  control: Int32Array,
  cq: Int32Array,
  cqEntries: number,
  lane: number,
  sqes: Uint32Array,
  results: Int32Array,
  count: number,
  completionFd: number,
): void {
  const first = Atomics.add(control, Control.CQ_RESERVED, count);
  const mask = cqEntries - 1;
  for (let i = 0; i < count; i++) {
    const position = (first + i) | 0;
    const entry = (position & mask) * CQ_ENTRY_WORDS;
    cq[entry + 1] = sqes[i * SQE_WORDS + Sqe.USER_DATA] | 0;
    cq[entry + 2] = results[i]!;
    Atomics.store(cq, entry, (position + 1) | 0);
  }
  Atomics.add(control, laneWord(lane, LaneWord.COMPLETED), count);
  native.eventfdWrite(completionFd, 1);
  // After the eventfd write: close() waits for DONE, so the fd is never written once closed.
  Atomics.add(control, Control.DONE, count);
  Atomics.notify(control, Control.DONE);
}
