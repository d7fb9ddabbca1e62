// The threads engine: the io_uring engine's logic (staging, short transfers, write-zeroes
// fallbacks, write-through) over a thread-pool ring that runs the same records with blocking
// syscalls in a piscina pool (thread-ring.ts). For hosts where io_uring is forbidden, as QEMU's
// aio=threads is. Small reads of a file without O_DIRECT are first tried inline, without
// blocking, on the page cache (thread-ring.ts says why).
import { ThreadPoolRing } from './thread-ring.js';
import { UringEngine, type UringEngineOptions } from './uring-engine.js';

export interface ThreadsEngineOptions extends Omit<UringEngineOptions, 'sqpoll' | 'sqpollIdleMs'> {
  /** Pool threads (default 4). */
  threads: number;
}

/** Reads up to this size are first tried inline on the page cache (thread-ring.ts). */
export const INLINE_READ_BYTES = 64 * 1024;

export class ThreadsEngine extends UringEngine {
  private readonly pool: ThreadPoolRing;

  private constructor(options: ThreadsEngineOptions, ring: ThreadPoolRing) {
    super({ ...options, sqpoll: false }, () => ring);
    this.pool = ring;
  }

  /**
   * Reaps. What the resubmits at its end (a remainder, a next phase) complete inline is
   * announced on the completion eventfd: the worker may have nothing else to wake it.
   */
  override reap(slots: Int32Array, results: Int32Array): number {
    this.pool.announceImmediate = true;
    try {
      return super.reap(slots, results);
    } finally {
      this.pool.announceImmediate = false;
    }
  }

  /** Starts the pool (asynchronous: its threads must be up), then opens the image. */
  static async open(options: ThreadsEngineOptions): Promise<ThreadsEngine> {
    const ring = await ThreadPoolRing.open({
      threads: options.threads,
      entries: options.ringEntries,
      // RWF_NOWAIT does not keep an O_DIRECT read from waiting for the device.
      inlineReadBytes: options.direct ? 0 : INLINE_READ_BYTES,
    });
    try {
      return new ThreadsEngine(options, ring);
    } catch (error) {
      ring.close(); // idempotent: the engine may have closed it already
      throw error;
    }
  }
}
