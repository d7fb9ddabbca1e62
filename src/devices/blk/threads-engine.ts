// The threads engine: the io_uring engine's logic (staging, short transfers, write-zeroes
// fallbacks, write-through) over a thread-pool ring that runs the same records with blocking
// syscalls in a piscina pool (thread-ring.ts). For hosts where io_uring is forbidden, as QEMU's
// aio=threads is.
import { ThreadPoolRing } from './thread-ring.js';
import { UringEngine, type UringEngineOptions } from './uring-engine.js';

export interface ThreadsEngineOptions extends Omit<UringEngineOptions, 'sqpoll' | 'sqpollIdleMs'> {
  /** Pool threads (default 4). */
  threads: number;
}

export class ThreadsEngine extends UringEngine {
  private constructor(options: ThreadsEngineOptions, ring: ThreadPoolRing) {
    super({ ...options, sqpoll: false }, () => ring);
  }

  /** Starts the pool (asynchronous: its threads must be up), then opens the image. */
  static async open(options: ThreadsEngineOptions): Promise<ThreadsEngine> {
    const ring = await ThreadPoolRing.open({ threads: options.threads, entries: options.ringEntries });
    try {
      return new ThreadsEngine(options, ring);
    } catch (error) {
      ring.close(); // idempotent: the engine may have closed it already
      throw error;
    }
  }
}
