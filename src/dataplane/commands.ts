// What the control thread asks of a worker, and what workers report back. Commands travel over
// a MessagePort (they carry SharedArrayBuffers), but a busy-polling worker never returns to its
// event loop, so the control thread also bumps a sequence number in a shared Int32Array and
// writes the worker's mailbox eventfd: the worker checks the sequence every few loop passes (or
// wakes from epoll on the eventfd) and takes the messages with receiveMessageOnPort.
import type { VringConfig } from '../control/backend.js';
import type { DirtyLogArea } from './dirty-log.js';
import type { MemoryRegion } from './memory.js';

export type PollMode = 'busy' | 'interrupt' | 'adaptive';

/**
 * Interrupt mode: µs a worker stays awake after its last work, re-checking the rings, before it
 * arms the kicks and sleeps. A sleep costs ~15 µs of wall time to wake from on this VM
 * (bench/micro-wake.ts) while a driver in a closed loop refills within 1–2 µs of seeing its
 * completions; without the grace, a back-end faster than its driver sleeps once per round trip
 * and the two run in lock-step (measured at QD32: one sleep per ~45 requests, 1.7 M IOPS; with
 * 2 µs, one per ~40 K). It costs at most this much CPU per wake-up and nothing when idle.
 */
export const INTERRUPT_GRACE_US = 2;

/** A ring as the worker starts it: the session's VringConfig with the features it needs decoded. */
export type QueueStart = Omit<VringConfig, 'features'> & {
  eventIdx: boolean;
  indirectDesc: boolean;
  /** VIRTIO_F_RING_PACKED negotiated: a packed ring (packed-virtqueue.ts). */
  packed: boolean;
  /**
   * VIRTIO_F_IN_ORDER negotiated: the worker pushes used entries in the order the chains were
   * popped, holding back completions that overtake an older one (worker.ts QueueRunner).
   */
  inOrder: boolean;
  /**
   * The queue ran on a worker that died: resume it where the guest sees it. With an in-flight
   * region that is recovery as after a restart; without one, at used->idx (what QEMU does after
   * losing a back-end; requests completed out of order may run twice).
   */
  resume?: boolean;
};

export type WorkerCommand =
  | { id: number; op: 'memory'; regions: MemoryRegion[] }
  | { id: number; op: 'start'; queue: QueueStart }
  /** Stop popping, wait for in-flight requests, reply with last_avail_idx. */
  | { id: number; op: 'stop'; index: number }
  | { id: number; op: 'notify-fds'; index: number; callFd: number; errFd: number }
  /** Start (area) or stop (null) dirty-page logging on every queue of the worker (live migration). */
  | { id: number; op: 'dirty-log'; area: DirtyLogArea | null }
  /** A running ring's used-ring log address changed (SET_VRING_ADDR; -1: the ring's own). */
  | { id: number; op: 'ring-log'; index: number; logGuestAddr: number }
  | { id: number; op: 'mode'; mode: PollMode; idleBudgetUs: number; interruptGraceUs?: number }
  /** Stop every queue (draining) and forget the memory table. */
  | { id: number; op: 'reset' }
  /**
   * Like reset, but without waiting: queues with requests still in the device are written off
   * at once (their late completions are dropped, their buffers reclaimed when those arrive).
   */
  | { id: number; op: 'abandon' }
  | { id: number; op: 'shutdown' };

export type WorkerMessage =
  | { kind: 'ready'; worker: number; tid: number; cpus: number[] }
  | { kind: 'reply'; id: number; ok: true; value?: number }
  | { kind: 'reply'; id: number; ok: false; error: string }
  | { kind: 'broken'; index: number; reason: number; description: string }
  | { kind: 'log'; level: 'error' | 'warn' | 'info' | 'debug'; msg: string; fields?: Record<string, unknown> };

/** Int32 slots of the mailbox SharedArrayBuffer. */
export const Mailbox = {
  /** Bumped by the control thread after posting commands. */
  SEQ: 0,
  /** The poll mode currently in force (0 busy, 1 interrupt, 2 adaptive), for observers. */
  MODE: 1,
  SLOTS: 4,
} as const;

export const POLL_MODE_CODE: Record<PollMode, number> = { busy: 0, interrupt: 1, adaptive: 2 };

/** Worker start-up data (workerData). */
export interface WorkerInit {
  worker: number;
  /** CPU to pin to, or -1 to leave the thread unpinned. */
  cpu: number;
  mailbox: SharedArrayBuffer;
  mailboxFd: number;
  stats: SharedArrayBuffer;
  mode: PollMode;
  idleBudgetUs: number;
  /** Interrupt mode: stay awake this long after the last work before arming (default INTERRUPT_GRACE_US). */
  interruptGraceUs?: number;
  /** Module URL exporting createQueueHandler (see device-api.ts). */
  handlerModule: string;
  handlerOptions: unknown;
  /** Queues the device has in all (stats slots). */
  queueCount: number;
  /** Largest chain a request may hold (segments). */
  maxSegments: number;
}
