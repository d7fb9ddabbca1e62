// Per-queue statistics in shared memory: written only by the worker that owns the queue (plain
// stores of doubles, exact up to 2^53), read by the control thread at any time without stopping
// anyone. A reader may see one counter a pass newer than another; never a torn value on the
// 64-bit platforms we run on (aligned 8-byte stores).

export const QueueStat = {
  /** Requests completed (used elements pushed). */
  requests: 0,
  /** Bytes the device wrote into guest buffers (used.len sum). */
  bytes: 1,
  /** Kick eventfd reads that found the counter non-zero (the driver notified us). */
  kicks: 2,
  /** Call eventfd writes (we notified the driver). */
  calls: 3,
  /** Used-ring publishes where EVENT_IDX / NO_INTERRUPT said no call was needed. */
  callsSuppressed: 4,
  /** Poll passes over this queue that found work. */
  busyPasses: 5,
  /** Poll passes that found nothing. */
  idlePasses: 6,
  /** Milliseconds the owning worker spent asleep in epoll while this queue was running. */
  sleepMs: 7,
  /** Requests in flight in the device right now. */
  inFlight: 8,
  /** BrokenReason code, 0 while healthy. */
  broken: 9,
  /** Requests recovered from the in-flight region at the queue's start and run again. */
  resubmitted: 10,
  /** Requests written off when the queue was abandoned (a drain that outlived its timeout). */
  abandoned: 11,
  /** Times the owning worker blocked in epoll (interrupt / adaptive) while this queue was running. */
  sleeps: 12,
  /** Interrupt mode: sleeps avoided because the one look without blocking before them found work. */
  sleepsAvoided: 13,
} as const;

export const QUEUE_STAT_SLOTS = 16;

export type QueueStats = { -readonly [K in keyof typeof QueueStat]: number } & { queue: number };

/** Shared stats area for `queues` queues. */
export function createStatsBuffer(queues: number): SharedArrayBuffer {
  return new SharedArrayBuffer(Math.max(1, queues) * QUEUE_STAT_SLOTS * 8);
}

/** A snapshot of one queue's counters (allocates: for the control thread, not the hot path). */
export function readQueueStats(buffer: SharedArrayBuffer, queue: number): QueueStats {
  const view = new Float64Array(buffer, queue * QUEUE_STAT_SLOTS * 8, QUEUE_STAT_SLOTS);
  const stats = { queue } as QueueStats;
  for (const [name, slot] of Object.entries(QueueStat)) stats[name as keyof typeof QueueStat] = view[slot]!;
  return stats;
}

export function resetQueueStats(buffer: SharedArrayBuffer, queue: number): void {
  new Float64Array(buffer, queue * QUEUE_STAT_SLOTS * 8, QUEUE_STAT_SLOTS).fill(0);
}
