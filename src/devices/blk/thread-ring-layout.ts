// The shared memory of a thread-pool ring (thread-ring.ts), read and written by three kinds of
// thread: the polling worker that owns the ring (it produces submissions and consumes
// completions), the dispatcher (thread-dispatcher.ts: consumes submissions, runs pool tasks)
// and the pool threads (thread-task.ts: produce completions).
//
// Control words (Int32Array; producer and consumer words on separate 64-byte lines):
//   SQ_TAIL  submission words written (poller)      SQ_HEAD  submission words consumed (dispatcher)
//   IDLE     1 while the dispatcher may sleep: the poller then writes the submit eventfd
//   CQ_RESERVED  completion entries reserved by pool threads (Atomics.add)
//   DONE     records finished: completions published and the completion eventfd written (the
//            poller waits on it in wait() and close())
//   STATE    dispatcher state (DispatcherState)      EXIT  the poller asks the dispatcher to end
//
// Submission ring (Uint32Array of SQ_WORDS words): one message per record,
//   [region generation][the 8 SQE words of native/ring/uring.cc][iovec count × 4 IOVEC words],
// word 6 of the SQE (first iovec) meaning nothing here: the iovecs follow the SQE. A message
// never wraps: when it does not fit before the end, the producer writes PAD and starts over.
//
// Completion ring (Int32Array of CQ_ENTRIES × CQ_ENTRY_WORDS): entry p % CQ_ENTRIES holds
// [sequence p + 1, user_data, res]; a pool thread fills it and then stores the sequence, so the
// poller reads entries in order once their sequence matches. The poller keeps at most
// CQ_ENTRIES records in flight, so a producer never laps it.
import type { MessagePort } from 'node:worker_threads';

export const CONTROL_WORDS = 16 * 8;
export const Control = {
  SQ_TAIL: 0,
  SQ_HEAD: 16,
  IDLE: 32,
  CQ_RESERVED: 48,
  DONE: 64,
  STATE: 80,
  EXIT: 96,
} as const;

export const DispatcherState = { STARTING: 0, READY: 1, FAILED: 2 } as const;

export const SQ_WORDS = 1 << 16;
/** Words before the iovecs of a message: the generation and the SQE. */
export const MESSAGE_HEADER_WORDS = 9;
export const PAD = 0xffffffff;
export const CQ_ENTRY_WORDS = 4;

export const SQE_WORDS = 8;
export const IOVEC_WORDS = 4;
export const Sqe = { OPCODE: 0, USER_DATA: 4, IOVEC_COUNT: 5, FIRST_IOVEC: 6 } as const;
export const Opcode = { READV: 1, WRITEV: 2 } as const;
/** IOV_MAX: the most iovecs a record may have (as the io_uring ring checks). */
export const MAX_IOVECS = 1024;

/** What the dispatcher is started with (structured-cloned; the buffers are shared). */
export interface DispatcherInit {
  control: SharedArrayBuffer;
  sq: SharedArrayBuffer;
  cq: SharedArrayBuffer;
  cqEntries: number;
  submitFd: number;
  completionFd: number;
  threads: number;
  /** Region lists arrive here as { generation, regions }, before any record that uses them. */
  regionPort: MessagePort;
}

/** What each pool thread is started with. */
export interface TaskInit {
  control: SharedArrayBuffer;
  cq: SharedArrayBuffer;
  cqEntries: number;
  completionFd: number;
}

/** One batch of records for one pool task (the iovec indexes point into `iovecs`). */
export interface BlockIoTask {
  regions: SharedArrayBuffer[];
  sqes: Uint32Array;
  iovecs: Uint32Array;
  count: number;
}

/** Publishes `count` completions (user_data from the records, results) and signals the poller. */
export function publishCompletions(
  control: Int32Array,
  cq: Int32Array,
  cqEntries: number,
  sqes: Uint32Array,
  results: Int32Array,
  count: number,
  completionFd: number,
  eventfdWrite: (fd: number, value: number) => boolean,
): void {
  const first = Atomics.add(control, Control.CQ_RESERVED, count);
  const mask = cqEntries - 1;
  for (let i = 0; i < count; i++) {
    const position = (first + i) | 0;
    const entry = (position & mask) * CQ_ENTRY_WORDS;
    cq[entry + 1] = sqes[i * SQE_WORDS + Sqe.USER_DATA]! | 0;
    cq[entry + 2] = results[i]!;
    Atomics.store(cq, entry, (position + 1) | 0);
  }
  eventfdWrite(completionFd, 1);
  // After the eventfd write: close() waits for DONE, so the fd is never written once closed.
  Atomics.add(control, Control.DONE, count);
  Atomics.notify(control, Control.DONE);
}
