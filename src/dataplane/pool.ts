// The control thread's side of the data plane: starts one pinned worker per configured CPU,
// maps queues to workers, and turns DataPlane calls into mailbox commands. Implements the
// DataPlane interface the session drives.
//
// A worker thread that dies (an uncaught error, a native call failing where nothing catches it)
// is replaced: a new worker on the same CPU gets the memory table and the queues the dead one
// ran, which resume from their in-flight region (or at used->idx without one). The event is
// logged and counted (workerRestarts). Commands the dead worker had not answered fail.
import { Worker } from 'node:worker_threads';
import { native } from '../native.js';
import { createLogger, type Logger } from '../log.js';
import type { DataPlane, VringConfig } from '../control/backend.js';
import type { MappedRegion } from '../control/memory-table.js';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED, bit } from '../control/protocol.js';
import { Mailbox, type PollMode, type QueueStart, type WorkerCommand, type WorkerInit, type WorkerMessage } from './commands.js';
import type { HandlerSpec } from './device-api.js';
import { brokenReasonName } from './chain.js';
import type { DirtyLogArea } from './dirty-log.js';
import { createStatsBuffer, readQueueStats, resetQueueStats, type QueueStats } from './stats.js';

export interface WorkerDataPlaneOptions {
  /** CPUs to pin one worker each to; [-1] for a single unpinned worker. */
  cpus: number[];
  /** Queues the device exposes (stats slots, and the default queue→worker map). */
  queueCount: number;
  /** Where workers load the device's request handler from. */
  handler: HandlerSpec;
  mode?: PollMode;
  /** Adaptive mode: spin this long without work before sleeping (default 50 µs). */
  idleBudgetUs?: number;
  /** Interrupt mode: stay awake this long after the last work before sleeping (default 2 µs; 0: at once). */
  interruptGraceUs?: number;
  /** Queue index → worker index; default round-robin. */
  queueToWorker?: (queue: number, workers: number) => number;
  /** Largest chain (in segments) one request may have; longer chains break the queue. */
  maxSegments?: number;
  logger?: Logger;
}

interface PendingCommand {
  resolve: (value: number | undefined) => void;
  reject: (error: Error) => void;
}

class WorkerHandle {
  readonly mailbox = new SharedArrayBuffer(Mailbox.SLOTS * 4);
  readonly mailboxWords = new Int32Array(this.mailbox);
  mailboxFd = native.eventfdCreate(0);
  readonly pending = new Map<number, PendingCommand>();
  worker!: Worker;
  tid = 0;
  exited = false;
}

export class WorkerDataPlane implements DataPlane {
  readonly stats: SharedArrayBuffer;
  private readonly log: Logger;
  private readonly workers: WorkerHandle[] = [];
  private nextId = 1;
  private mode: PollMode;
  private idleBudgetUs: number;
  private interruptGraceUs: number | undefined;
  private closed = false;
  /** What the running queues were started with, and the memory table: what a replacement worker needs. */
  private readonly queueConfigs = new Map<number, VringConfig>();
  private memory: WorkerMemoryRegion[] | null = null;
  private restarts = 0;
  /** Per worker, when it was last replaced (a worker that keeps dying is given up on). */
  private readonly recentRestarts = new Map<number, number[]>();

  private constructor(private readonly options: WorkerDataPlaneOptions) {
    this.log = options.logger ?? createLogger('dataplane');
    this.stats = createStatsBuffer(options.queueCount);
    this.mode = options.mode ?? 'busy';
    this.idleBudgetUs = options.idleBudgetUs ?? 50;
    this.interruptGraceUs = options.interruptGraceUs;
  }

  /** Starts the workers and resolves once each is pinned and polling. */
  static async start(options: WorkerDataPlaneOptions): Promise<WorkerDataPlane> {
    if (options.cpus.length === 0) throw new RangeError('at least one worker CPU is needed');
    const plane = new WorkerDataPlane(options);
    try {
      await Promise.all(options.cpus.map((cpu, index) => plane.spawn(index, cpu)));
    } catch (error) {
      await plane.close();
      throw error;
    }
    return plane;
  }

  get pollMode(): PollMode {
    return this.mode;
  }

  /** Thread ids of the workers (for /proc/<pid>/task/<tid> CPU accounting). */
  get workerThreadIds(): number[] {
    return this.workers.map((w) => w.tid);
  }

  workerFor(queue: number): number {
    const map = this.options.queueToWorker ?? ((q, n) => q % n);
    const worker = map(queue, this.workers.length);
    if (!Number.isInteger(worker) || worker < 0 || worker >= this.workers.length) {
      throw new RangeError(`queue ${queue} mapped to worker ${worker}, but there are ${this.workers.length}`);
    }
    return worker;
  }

  queueStats(queue: number): QueueStats {
    return readQueueStats(this.stats, queue);
  }

  /** Workers replaced after they died. */
  get workerRestarts(): number {
    return this.restarts;
  }

  allQueueStats(): QueueStats[] {
    return Array.from({ length: this.options.queueCount }, (_, q) => readQueueStats(this.stats, q));
  }

  async setMemory(regions: readonly MappedRegion[]): Promise<void> {
    const plain = regions.map(({ guestPhysAddr, size, userspaceAddr, buffer, bufferOffset }) => ({
      guestPhysAddr,
      size,
      userspaceAddr,
      buffer,
      bufferOffset,
    }));
    this.memory = plain;
    await Promise.all(this.workers.map((_, w) => this.command(w, { op: 'memory', regions: plain })));
  }

  async startQueue(config: Readonly<VringConfig>): Promise<void> {
    if (config.index >= this.options.queueCount)
      throw new RangeError(`queue ${config.index} is beyond the device's ${this.options.queueCount}`);
    resetQueueStats(this.stats, config.index);
    await this.command(this.workerFor(config.index), { op: 'start', queue: queueStart(config, false) });
    this.queueConfigs.set(config.index, { ...config });
  }

  async stopQueue(index: number): Promise<number> {
    const value = await this.command(this.workerFor(index), { op: 'stop', index });
    this.queueConfigs.delete(index);
    return value ?? 0;
  }

  async setNotifyFds(index: number, callFd: number, errFd: number): Promise<void> {
    await this.command(this.workerFor(index), { op: 'notify-fds', index, callFd, errFd });
    const config = this.queueConfigs.get(index);
    if (config) this.queueConfigs.set(index, { ...config, callFd, errFd });
  }

  async setDirtyLog(area: DirtyLogArea | null): Promise<void> {
    const plain = area === null ? null : { buffer: area.buffer, offset: area.offset, size: area.size };
    await Promise.all(this.workers.map((_, w) => this.command(w, { op: 'dirty-log', area: plain })));
  }

  async setRingLog(index: number, logGuestAddr: number): Promise<void> {
    await this.command(this.workerFor(index), { op: 'ring-log', index, logGuestAddr });
  }

  /** Switch poll mode on every worker, under load if need be. */
  async setMode(mode: PollMode, idleBudgetUs = this.idleBudgetUs, interruptGraceUs = this.interruptGraceUs): Promise<void> {
    this.mode = mode;
    this.idleBudgetUs = idleBudgetUs;
    this.interruptGraceUs = interruptGraceUs;
    await Promise.all(this.workers.map((_, w) => this.command(w, { op: 'mode', mode, idleBudgetUs, interruptGraceUs })));
  }

  async reset(): Promise<void> {
    if (this.closed) return;
    this.queueConfigs.clear();
    this.memory = null;
    await Promise.all(this.workers.map((_, w) => this.command(w, { op: 'reset' })));
  }

  /**
   * Like reset, without waiting for a hung device: queues with requests still in it are written
   * off (late completions dropped, buffers reclaimed when they arrive). Also ends a pending reset.
   */
  async abandon(): Promise<void> {
    if (this.closed) return;
    this.queueConfigs.clear();
    this.memory = null;
    await Promise.all(this.workers.map((_, w) => this.command(w, { op: 'abandon' })));
  }

  /** Stops every worker (draining first) and releases their resources. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled(
      this.workers.map(async (handle, w) => {
        if (!handle.exited) {
          await this.command(w, { op: 'reset' }, true).catch(() => undefined);
          await this.command(w, { op: 'shutdown' }, true).catch(() => undefined);
          await new Promise<void>((resolve) => {
            if (handle.exited) resolve();
            else handle.worker.once('exit', () => resolve());
          });
        }
        if (handle.mailboxFd >= 0) native.close(handle.mailboxFd);
      }),
    );
  }

  private spawn(index: number, cpu: number): Promise<void> {
    const handle = new WorkerHandle();
    this.workers[index] = handle;
    const init: WorkerInit = {
      worker: index,
      cpu,
      mailbox: handle.mailbox,
      mailboxFd: handle.mailboxFd,
      stats: this.stats,
      mode: this.mode,
      idleBudgetUs: this.idleBudgetUs,
      interruptGraceUs: this.interruptGraceUs,
      handlerModule: this.options.handler.module,
      handlerOptions: this.options.handler.options,
      queueCount: this.options.queueCount,
      maxSegments: this.options.maxSegments ?? 256,
    };
    return new Promise((resolve, reject) => {
      const worker = new Worker(new URL('./worker-main.js', import.meta.url), { workerData: init });
      handle.worker = worker;
      let ready = false;
      worker.on('message', (message: WorkerMessage) => {
        if (message.kind === 'ready') {
          ready = true;
          handle.tid = message.tid;
          this.log.info('worker ready', { worker: index, tid: message.tid, cpus: message.cpus });
          resolve();
        } else {
          this.onMessage(handle, index, message);
        }
      });
      worker.on('error', (error) => {
        this.log.error('worker failed', { worker: index, error });
        if (!ready) reject(error);
      });
      worker.on('exit', (code) => {
        handle.exited = true;
        for (const pending of handle.pending.values()) pending.reject(new Error(`worker ${index} exited (code ${code})`));
        handle.pending.clear();
        if (!ready) reject(new Error(`worker ${index} exited during start-up (code ${code})`));
        else if (!this.closed && this.workers[index] === handle) void this.replaceWorker(index, cpu, code, handle);
      });
    });
  }

  /** A worker died: start another on its CPU and hand it the memory table and the dead one's queues. */
  private async replaceWorker(index: number, cpu: number, code: number, dead: WorkerHandle): Promise<void> {
    // Its mailbox eventfd has no reader any more (the replacement gets its own). What the dead
    // thread held natively (its epoll fd, the engine's io_uring) is released only if its
    // isolate's teardown frees it.
    native.close(dead.mailboxFd);
    dead.mailboxFd = -1;
    const now = Date.now();
    const recent = (this.recentRestarts.get(index) ?? []).filter((at) => now - at < RESTART_WINDOW_MS);
    if (recent.length >= MAX_RESTARTS_PER_WINDOW) {
      this.log.error('worker keeps dying; not replacing it again', { worker: index, code, restarts: recent.length });
      return;
    }
    recent.push(now);
    this.recentRestarts.set(index, recent);
    this.restarts++;
    const queues = [...this.queueConfigs.values()].filter((config) => this.workerFor(config.index) === index);
    this.log.error('worker died; replacing it and resuming its queues', {
      worker: index,
      code,
      queues: queues.map((config) => config.index),
      restarts: this.restarts,
    });
    try {
      await this.spawn(index, cpu);
      if (this.closed) return;
      if (this.memory) await this.command(index, { op: 'memory', regions: this.memory });
      for (const config of queues) {
        // Stopped or reset meanwhile: nothing to resume.
        if (this.queueConfigs.get(config.index) !== config) continue;
        await this.command(index, { op: 'start', queue: queueStart(config, true) });
        this.log.info('queue resumed on the replacement worker', {
          worker: index,
          queue: config.index,
          inflight: config.inflight !== undefined,
        });
      }
    } catch (error) {
      this.log.error('cannot replace the dead worker', { worker: index, error });
    }
  }

  private onMessage(handle: WorkerHandle, index: number, message: WorkerMessage): void {
    switch (message.kind) {
      case 'reply': {
        const pending = handle.pending.get(message.id);
        if (!pending) return;
        handle.pending.delete(message.id);
        if (message.ok) pending.resolve(message.value);
        else pending.reject(new Error(message.error));
        return;
      }
      case 'broken':
        this.log.error('virtqueue broken by the driver', {
          worker: index,
          queue: message.index,
          reason: brokenReasonName(message.reason),
          detail: message.description,
        });
        return;
      case 'log':
        this.log[message.level](message.msg, message.fields);
        return;
      case 'ready':
        return;
    }
  }

  private command(
    worker: number,
    command: DistributiveOmit<WorkerCommand, 'id'>,
    evenIfClosed = false,
  ): Promise<number | undefined> {
    const handle = this.workers[worker];
    if (!handle || handle.exited) return Promise.reject(new Error(`worker ${worker} is not running`));
    if (this.closed && !evenIfClosed) return Promise.reject(new Error('data plane is closed'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      handle.pending.set(id, { resolve, reject });
      handle.worker.postMessage({ ...command, id });
      // Wake the worker: a busy one sees the sequence change, a sleeping one the eventfd.
      Atomics.add(handle.mailboxWords, Mailbox.SEQ, 1);
      native.eventfdWrite(handle.mailboxFd, 1);
    });
  }
}

/** A worker replaced this many times within RESTART_WINDOW_MS is left dead (a fault that repeats). */
const MAX_RESTARTS_PER_WINDOW = 5;
const RESTART_WINDOW_MS = 60_000;

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

type WorkerMemoryRegion = Extract<WorkerCommand, { op: 'memory' }>['regions'][number];

function queueStart(config: Readonly<VringConfig>, resume: boolean): QueueStart {
  return {
    ...config,
    eventIdx: (config.features & bit(VIRTIO_F_EVENT_IDX)) !== 0n,
    indirectDesc: (config.features & bit(VIRTIO_F_INDIRECT_DESC)) !== 0n,
    packed: (config.features & bit(VIRTIO_F_RING_PACKED)) !== 0n,
    inOrder: (config.features & bit(VIRTIO_F_IN_ORDER)) !== 0n,
    resume,
  };
}
