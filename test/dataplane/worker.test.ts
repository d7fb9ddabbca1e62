// The data-plane worker built in-process: the test plays the control thread (a MessageChannel
// and the mailbox), the driver (a VringDriver on the same memory) and the clock (it steps the
// loop). Nothing here depends on thread scheduling.
import { afterEach, describe, expect, it } from 'vitest';
import type { MessagePort } from 'node:worker_threads';
import { DataPlaneWorker } from '../../dist/dataplane/worker.js';
import type { PollMode, WorkerMessage } from '../../dist/dataplane/commands.js';
import {
  FdEvent,
  type CreateQueueHandler,
  type HandlerContext,
  type QueueHandler,
  type WorkerQueue,
} from '../../dist/dataplane/device-api.js';
import { GuestMemory } from '../../dist/dataplane/memory.js';
import type { VirtqRequest } from '../../dist/dataplane/request.js';
import { BrokenReason } from '../../dist/dataplane/chain.js';
import { readQueueStats } from '../../dist/dataplane/stats.js';
import { VringDriver, splitRingLayout } from '../../dist/frontend/vring-driver.js';
import { native } from '../../dist/native.js';
import { closeWorkerRig, drain, inProcessWorkerInit, post, run, takeReply } from './worker-init.js';

const MiB = 1 << 20;
const SIZE = 64;
const USER_BASE = 0x7f00_0000_0000;
const DATA = 0x10000;
/** Safety net: a missing wake-up makes a step return after this long instead of hanging the test. */
const MAX_SLEEP_MS = 5000;

interface Rig {
  worker: DataPlaneWorker;
  control: MessagePort;
  workerPort: MessagePort;
  mailbox: Int32Array;
  mailboxFd: number;
  stats: SharedArrayBuffer;
  memory: GuestMemory;
  regionBuffer: SharedArrayBuffer;
  driver: VringDriver;
  kickFd: number;
  callFd: number;
  messages: WorkerMessage[];
  nextId: number;
}

const rigs: Rig[] = [];
const fds: number[] = [];

afterEach(() => {
  for (const rig of rigs.splice(0)) closeWorkerRig(rig, rig.kickFd, rig.callFd);
  for (const fd of fds.splice(0)) native.close(fd);
});

async function startWorker(
  mode: PollMode,
  createHandler?: CreateQueueHandler,
  handlerOptions: unknown = {},
  maxSleepMs = MAX_SLEEP_MS,
  interruptGraceUs = 0,
): Promise<Rig> {
  const { init, control, workerPort, mailbox, mailboxFd, stats } = inProcessWorkerInit({
    mode,
    // 0: an idle interrupt-mode step arms and sleeps at once (the grace has its own test).
    interruptGraceUs,
    handlerOptions,
  });
  const worker = await DataPlaneWorker.create(init, workerPort, { createHandler, maxSleepMs });
  const regionBuffer = new SharedArrayBuffer(MiB);
  const region = { guestPhysAddr: 0, size: MiB, userspaceAddr: USER_BASE, buffer: regionBuffer, bufferOffset: 0 };
  const memory = new GuestMemory([region]);
  const layout = splitRingLayout(SIZE);
  const driver = new VringDriver({
    memory,
    size: SIZE,
    descAddr: 0,
    availAddr: layout.availOffset,
    usedAddr: layout.usedOffset,
    eventIdx: true,
  });
  const rig: Rig = {
    worker,
    control,
    workerPort,
    mailbox,
    mailboxFd,
    stats,
    memory,
    regionBuffer,
    driver,
    kickFd: native.eventfdCreate(0),
    callFd: native.eventfdCreate(0),
    messages: [],
    nextId: 1,
  };
  rigs.push(rig);
  return rig;
}

/** Steps the worker until `done` holds; fails after `maxSteps`. Returns the steps taken. */
function stepUntil(rig: Rig, done: () => boolean, maxSteps = 10_000): number {
  for (let steps = 1; steps <= maxSteps; steps++) {
    rig.worker.step();
    if (done()) return steps;
  }
  throw new Error(`condition not reached in ${maxSteps} steps`);
}

function startQueue(rig: Rig, kickFd: number, lastAvailIdx = 0): void {
  const region = { guestPhysAddr: 0, size: MiB, userspaceAddr: USER_BASE, buffer: rig.regionBuffer, bufferOffset: 0 };
  run(rig, { op: 'memory', regions: [region] });
  const layout = splitRingLayout(SIZE);
  run(rig, {
    op: 'start',
    queue: {
      index: 0,
      size: SIZE,
      descUserAddr: USER_BASE,
      availUserAddr: USER_BASE + layout.availOffset,
      usedUserAddr: USER_BASE + layout.usedOffset,
      lastAvailIdx,
      kickFd,
      callFd: rig.callFd,
      errFd: -1,
      eventIdx: true,
      indirectDesc: false,
      packed: false,
      inOrder: false,
    },
  });
}

/** Posts `count` chains (64 readable bytes of a pattern, 64 writable) and publishes them. */
function postEchoChains(rig: Rig, count: number): void {
  const bytes = new Uint8Array(rig.regionBuffer);
  for (let i = 0; i < count; i++) {
    const out = DATA + i * 256;
    for (let b = 0; b < 64; b++) bytes[out + b] = (i * 7 + b) & 0xff;
    bytes.fill(0, out + 128, out + 192);
    rig.driver.beginChain();
    rig.driver.addSegment(out, 64, false);
    rig.driver.addSegment(out + 128, 64, true);
    expect(rig.driver.endChain(i)).toBeGreaterThanOrEqual(0);
  }
  rig.driver.publish();
}

function reap(rig: Rig, tokens: Float64Array, lens: Uint32Array): number {
  return rig.driver.reapUsed(tokens, lens);
}

describe('DataPlaneWorker in-process', () => {
  it('busy mode: pops, echoes and completes a queue, then GET_VRING_BASE answers last_avail_idx', async () => {
    const rig = await startWorker('busy');
    startQueue(rig, rig.kickFd);
    postEchoChains(rig, 8);
    const tokens = new Float64Array(8);
    const lens = new Uint32Array(8);
    let reaped = 0;
    stepUntil(rig, () => (reaped += reap(rig, tokens.subarray(reaped), lens.subarray(reaped))) === 8, 100);
    expect([...lens]).toEqual(new Array(8).fill(64));
    const bytes = new Uint8Array(rig.regionBuffer);
    for (let i = 0; i < 8; i++) {
      const echoed = bytes.subarray(DATA + i * 256 + 128, DATA + i * 256 + 192);
      expect(echoed, `request ${i}`).toEqual(bytes.subarray(DATA + i * 256, DATA + i * 256 + 64));
    }
    expect(readQueueStats(rig.stats, 0).requests).toBe(8);
    expect(run(rig, { op: 'stop', index: 0 })).toBe(8);
    // A stopped queue is gone: a second stop is refused with a clear message.
    expect(() => run(rig, { op: 'stop', index: 0 })).toThrow(/queue 0 is not running on worker 0/);
  });

  it('interrupt mode: arms kicks before sleeping, sleeps when idle, sees a kick in epoll, signals the call fd', async () => {
    const shortSleepMs = 200;
    const rig = await startWorker('interrupt', undefined, {}, shortSleepMs);
    startQueue(rig, rig.kickFd);
    // Idle: this step arms notifications; its look without blocking takes the start command's
    // mailbox edge, so it does not sleep.
    rig.worker.step();
    expect(readQueueStats(rig.stats, 0).sleeps).toBe(0);
    // Idle, nothing pending: it sleeps until the safety timeout (nobody kicks).
    let before = performance.now();
    rig.worker.step();
    expect(performance.now() - before).toBeGreaterThanOrEqual(shortSleepMs - 20);
    expect(readQueueStats(rig.stats, 0).sleeps).toBe(1);
    before = performance.now();
    postEchoChains(rig, 4);
    expect(rig.driver.needsKick()).toBe(true);
    native.eventfdWrite(rig.kickFd, 1);
    const tokens = new Float64Array(4);
    const lens = new Uint32Array(4);
    let reaped = 0;
    stepUntil(
      rig,
      () =>
        (reaped += reap(rig, tokens.subarray(reaped), lens.subarray(reaped))) === 4 && readQueueStats(rig.stats, 0).kicks === 1,
      100,
    );
    // Served through the kick's edge, without waiting for the safety timeout.
    expect(performance.now() - before).toBeLessThan(shortSleepMs / 2);
    expect(native.eventfdRead(rig.callFd)).toBeGreaterThan(0);
    expect(readQueueStats(rig.stats, 0).requests).toBe(4);
    expect(readQueueStats(rig.stats, 0).sleepMs).toBeGreaterThan(0);
    // Kick fds are edge-triggered and never read (one syscall per wake-up): the counter is left.
    expect(native.eventfdRead(rig.kickFd)).toBe(1);
  });

  it('interrupt mode: a kick on top of an unread kick counter still wakes the sleeping worker', async () => {
    const rig = await startWorker('interrupt');
    startQueue(rig, rig.kickFd);
    const before = performance.now();
    const tokens = new Float64Array(4);
    const lens = new Uint32Array(4);
    // Idle: arms kicks and sleeps; the mailbox edge (the start command) ends it at once.
    rig.worker.step();
    for (let round = 1; round <= 3; round++) {
      // Round 1 kicks an armed, idle worker; later rounds kick while the counter is still
      // unread, and the worker only sees the kick through epoll after serving the chains.
      postEchoChains(rig, 2);
      expect(rig.driver.needsKick(), `round ${round}`).toBe(true);
      native.eventfdWrite(rig.kickFd, 1);
      let reaped = 0;
      stepUntil(
        rig,
        () =>
          (reaped += reap(rig, tokens.subarray(reaped), lens.subarray(reaped))) === 2 &&
          readQueueStats(rig.stats, 0).kicks === round,
        100,
      );
    }
    // Each wake-up came from a kick edge, none from the safety timeout, though nobody read the counter.
    expect(performance.now() - before).toBeLessThan(MAX_SLEEP_MS);
    expect(readQueueStats(rig.stats, 0).requests).toBe(6);
    expect(native.eventfdRead(rig.kickFd)).toBe(3);
  });

  it('a stop waits for requests the device still holds; a reset stops every queue', async () => {
    // The echo handler holds every completion until its release eventfd is written.
    const releaseFd = native.eventfdCreate(0);
    fds.push(releaseFd);
    const rig = await startWorker('busy', undefined, { releaseFd });
    startQueue(rig, rig.kickFd);
    postEchoChains(rig, 3);
    stepUntil(rig, () => readQueueStats(rig.stats, 0).inFlight === 3, 100);
    const stopId = post(rig, { op: 'stop', index: 0 });
    for (let i = 0; i < 200; i++) rig.worker.step();
    expect(takeReply(rig, stopId)).toBeUndefined();
    expect(readQueueStats(rig.stats, 0).requests).toBe(0);
    native.eventfdWrite(releaseFd, 1);
    let reply: ReturnType<typeof takeReply>;
    stepUntil(rig, () => (reply = takeReply(rig, stopId)) !== undefined, 1000);
    expect(reply!).toMatchObject({ ok: true, value: 3 });
    expect(readQueueStats(rig.stats, 0).requests).toBe(3);
    expect(rig.driver.reapUsed(new Float64Array(3), new Uint32Array(3))).toBe(3);
    // Started again where it stopped (SET_VRING_BASE 3), a reset stops it and answers.
    startQueue(rig, rig.kickFd, 3);
    expect(run(rig, { op: 'reset' })).toBeUndefined();
    expect(() => run(rig, { op: 'stop', index: 0 })).toThrow(/not running/);
  });
});

/**
 * A test handler that holds every request (like net RX buffers waiting for frames): handle()
 * may pop more on demand, and at a stop it gives them all back, newest first.
 */
class Holder implements QueueHandler {
  readonly completionFd = -1;
  readonly inFlight = 0;
  readonly held: VirtqRequest[] = [];
  /** popNow's answers from inside handle() (re-entry into the same queue must give 0). */
  readonly reentrantPops: number[] = [];
  givenBack = 0;
  completed = 0;

  constructor(readonly context: HandlerContext) {}

  handle(queue: WorkerQueue, request: VirtqRequest): void {
    this.held.push(request);
    if (this.held.length === 1) this.reentrantPops.push(queue.popNow!(64));
  }
  flush(): void {}
  poll(): number {
    const queue = this.context.queue!(0);
    if (queue === null || !queue.stopping) return 0;
    const count = this.held.length;
    while (this.held.length > 0) {
      const request = this.held.pop()!;
      if (queue.giveBack!(request)) this.givenBack++;
      else {
        queue.complete(request, 0);
        this.completed++;
      }
    }
    return count;
  }
  setMemory(): void {}
  close(): void {}
}

describe('interrupt mode without lock-step (a driver that refills at once), in-process', () => {
  it.each(['interrupt', 'busy', 'adaptive'] as const)(
    '%s mode: synchronous completions reach the used ring every 8 within one pass',
    async (mode) => {
      let handler!: UsedIdxRecorder;
      const rig = await startWorker(mode, () => (handler = new UsedIdxRecorder(() => Atomics.load(used, 1))));
      const used = new Uint16Array(rig.regionBuffer, splitRingLayout(SIZE).usedOffset, 2);
      startQueue(rig, rig.kickFd);
      postEchoChains(rig, 25);
      stepUntil(rig, () => handler.seen.length === 25, 10);
      // The driver can reap the first 8 while the pass still runs.
      expect(handler.seen).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 16, 24]);
      expect(rig.driver.reapUsed(new Float64Array(32), new Uint32Array(32))).toBe(25);
    },
  );

  it('a kick that lands while the worker is awake costs no sleep; the next idle step sleeps', async () => {
    const shortSleepMs = 300;
    const rig = await startWorker('interrupt', undefined, {}, shortSleepMs);
    startQueue(rig, rig.kickFd);
    rig.worker.step(); // idle: arms and sleeps; the start command's mailbox edge ends the sleep
    const tokens = new Float64Array(8);
    const lens = new Uint32Array(8);
    postEchoChains(rig, 2);
    native.eventfdWrite(rig.kickFd, 1);
    stepUntil(rig, () => reap(rig, tokens, lens) === 2, 10);
    const sleeps = readQueueStats(rig.stats, 0).sleeps;
    // The driver refills and kicks while the worker is awake (after its last arming): the pass
    // serves the chains, and the kick's edge, still pending, is taken by the look without
    // blocking instead of ending a sleep at once.
    postEchoChains(rig, 2);
    expect(rig.driver.needsKick()).toBe(true);
    native.eventfdWrite(rig.kickFd, 1);
    rig.worker.step(); // serves the 2 chains
    const avoided = readQueueStats(rig.stats, 0).sleepsAvoided;
    const before = performance.now();
    rig.worker.step(); // ring empty, armed: the look finds the kick edge → no sleep
    expect(performance.now() - before).toBeLessThan(shortSleepMs / 2);
    expect(readQueueStats(rig.stats, 0).sleeps).toBe(sleeps);
    expect(readQueueStats(rig.stats, 0).sleepsAvoided).toBe(avoided + 1);
    expect(reap(rig, tokens, lens)).toBe(2);
    // Nothing left anywhere: this step sleeps, until the safety timeout (nobody kicks): no spin.
    const idle = performance.now();
    rig.worker.step();
    expect(readQueueStats(rig.stats, 0).sleeps).toBe(sleeps + 1);
    expect(performance.now() - idle).toBeGreaterThanOrEqual(shortSleepMs - 20);
  });

  it('the grace: after work an idle worker stays awake (serving a refill that does not kick) for the grace, then sleeps', async () => {
    const shortSleepMs = 300;
    const graceMs = 60;
    const rig = await startWorker('interrupt', undefined, {}, shortSleepMs, graceMs * 1000);
    startQueue(rig, rig.kickFd);
    const tokens = new Float64Array(8);
    const lens = new Uint32Array(8);
    postEchoChains(rig, 2);
    expect(rig.driver.needsKick()).toBe(true);
    native.eventfdWrite(rig.kickFd, 1);
    stepUntil(rig, () => reap(rig, tokens, lens) === 2, 10);
    const sleeps = readQueueStats(rig.stats, 0).sleeps;
    // Idle steps within the grace return at once, without arming or sleeping...
    const idleFrom = performance.now();
    for (let i = 0; i < 5; i++) rig.worker.step();
    expect(readQueueStats(rig.stats, 0).sleeps).toBe(sleeps);
    expect(performance.now() - idleFrom).toBeLessThan(graceMs);
    // ...so a refill the driver does not kick for (avail_event was not moved while awake) is served.
    postEchoChains(rig, 2);
    expect(rig.driver.needsKick()).toBe(false);
    stepUntil(rig, () => reap(rig, tokens, lens) === 2, 10);
    expect(readQueueStats(rig.stats, 0).sleeps).toBe(sleeps);
    // Then, with nothing more, it sleeps once the grace has passed since its last work: steps
    // return at once until then, and the sleep that follows lasts until the safety timeout.
    const lastWork = performance.now();
    let steps = 0;
    while (readQueueStats(rig.stats, 0).sleeps === sleeps) {
      rig.worker.step();
      steps++;
    }
    const asleepAfter = performance.now() - lastWork;
    expect(steps).toBeGreaterThan(1);
    expect(asleepAfter).toBeGreaterThanOrEqual(graceMs + shortSleepMs - 20);
    expect(asleepAfter).toBeLessThan(graceMs + shortSleepMs + 500);
  });
});

describe('popNow, giveBack and context.queue, in-process', () => {
  it('popNow pops what a pass has not, refuses re-entry; held requests given back rewind the stop index', async () => {
    let handler!: Holder;
    const rig = await startWorker('busy', (_options, context) => (handler = new Holder(context)));
    startQueue(rig, rig.kickFd);
    expect(handler.context.queue!(0)).not.toBeNull();
    expect(handler.context.queue!(1)).toBeNull();
    // The queue's own popNow from inside its pass pops nothing (no recursion)...
    postEchoChains(rig, 3);
    stepUntil(rig, () => handler.held.length === 3, 100);
    expect(handler.reentrantPops).toEqual([0]);
    // ...while popNow from outside the pass hands new chains to the handler at once.
    postEchoChains(rig, 2);
    expect(handler.context.queue!(0)!.popNow!(64)).toBe(2);
    expect(handler.held.length).toBe(5);
    // The stop gives all 5 back: last_avail_idx returns to 0 and nothing reaches the used ring.
    expect(run(rig, { op: 'stop', index: 0 })).toBe(0);
    expect(handler.givenBack).toBe(5);
    expect(handler.completed).toBe(0);
    expect(rig.driver.reapUsed(new Float64Array(8), new Uint32Array(8))).toBe(0);
    expect(readQueueStats(rig.stats, 0).requests).toBe(0);
    // Restarted from 0, the same 5 chains are popped again.
    startQueue(rig, rig.kickFd, 0);
    stepUntil(rig, () => handler.held.length === 5, 100);
  });
});

/** A test handler: no requests, one watched eventfd; records every callback, reads the fd only if told. */
class FdWatcher implements QueueHandler {
  readonly completionFd = -1;
  readonly inFlight = 0;
  readonly tokens: number[] = [];
  readonly events: number[] = [];
  readonly values: number[] = [];
  readFd = true;
  throwOnReady = false;

  constructor(
    readonly context: HandlerContext,
    readonly fd: number,
    readonly token: number,
  ) {
    context.watchFd(fd, token);
  }

  handle(queue: WorkerQueue, request: VirtqRequest): void {
    queue.complete(request, 0);
  }
  flush(): void {}
  poll(): number {
    return 0;
  }
  onFdReady(token: number, events: number): void {
    this.tokens.push(token);
    this.events.push(events);
    if (this.throwOnReady) throw new Error('injected onFdReady fault');
    if (this.readFd) this.values.push(native.eventfdRead(this.fd));
  }
  setMemory(): void {}
  close(): void {}
}

async function startWatcher(mode: PollMode): Promise<{ rig: Rig; handler: FdWatcher; fd: number }> {
  const fd = native.eventfdCreate(0);
  fds.push(fd);
  let handler!: FdWatcher;
  const rig = await startWorker(mode, (_options, context) => (handler = new FdWatcher(context, fd, 7)));
  return { rig, handler, fd };
}

describe('watched fds (worker event API), in-process', () => {
  it('busy mode polls a watched fd without sleeping and leaves reading it to the handler', async () => {
    const { rig, handler, fd } = await startWatcher('busy');
    for (let i = 0; i < 100; i++) rig.worker.step();
    expect(handler.tokens).toEqual([]);
    native.eventfdWrite(fd, 3);
    // Never asleep in busy mode: the worker finds it by polling its epoll set every few passes.
    stepUntil(rig, () => handler.tokens.length > 0, 1000);
    expect(handler.tokens).toEqual([7]);
    expect(handler.events[0] & FdEvent.READABLE).toBe(FdEvent.READABLE);
    // The handler found the whole counter: the worker did not read it.
    expect(handler.values).toEqual([3]);
  });

  it.each(['interrupt', 'adaptive'] as const)('%s mode sleeps on a watched fd and is woken by it', async (mode) => {
    const { rig, handler, fd } = await startWatcher(mode);
    native.eventfdWrite(fd, 5);
    const before = performance.now();
    stepUntil(rig, () => handler.tokens.length > 0, 1000);
    // Woken by the fd, not by the safety timeout.
    expect(performance.now() - before).toBeLessThan(MAX_SLEEP_MS);
    expect(handler.tokens).toEqual([7]);
    expect(handler.values).toEqual([5]);
  });

  it('an fd the handler leaves unread is reported again; after unwatchFd it is not', async () => {
    const { rig, handler, fd } = await startWatcher('busy');
    handler.readFd = false;
    native.eventfdWrite(fd, 1);
    stepUntil(rig, () => handler.tokens.length >= 3, 1000);
    expect(native.eventfdRead(fd)).toBe(1); // still unread by anyone but us
    native.eventfdWrite(fd, 1);
    handler.context.unwatchFd(fd);
    const seen = handler.tokens.length;
    for (let i = 0; i < 1000; i++) rig.worker.step();
    expect(handler.tokens.length).toBe(seen);
    expect(() => handler.context.unwatchFd(fd)).toThrow(/not watched/);
  });

  it('refuses bad watches with clear errors', async () => {
    const { handler, fd } = await startWatcher('busy');
    const { context } = handler;
    expect(() => context.watchFd(fd, 1)).toThrow(/already watched/);
    expect(() => context.watchFd(-1, 1)).toThrow(RangeError);
    expect(() => context.watchFd(1.5, 1)).toThrow(RangeError);
    const other = native.eventfdCreate(0);
    fds.push(other);
    expect(() => context.watchFd(other, -1)).toThrow(/token/);
    expect(() => context.watchFd(other, 2 ** 31)).toThrow(/token/);
    expect(() => context.watchFd(other, 1, 0x20)).toThrow(/events/);
    // Not an fd epoll can watch: the syscall's error, not a crash.
    expect(() => context.watchFd(9999, 1)).toThrow(/EBADF|epoll_ctl/);
    context.watchFd(other, 1, FdEvent.READABLE | FdEvent.WRITABLE);
  });

  it('a handler that watches fds without onFdReady is refused at creation', async () => {
    const fd = native.eventfdCreate(0);
    fds.push(fd);
    const create: CreateQueueHandler = (_options, context) => {
      context.watchFd(fd, 1);
      return { completionFd: -1, inFlight: 0, handle() {}, flush() {}, poll: () => 0, setMemory() {}, close() {} };
    };
    await expect(startWorker('busy', create)).rejects.toThrow(/no onFdReady/);
  });

  it('onFdReady that throws stops the queues and the watches; the worker keeps serving commands', async () => {
    const { rig, handler, fd } = await startWatcher('interrupt');
    startQueue(rig, rig.kickFd);
    handler.throwOnReady = true;
    native.eventfdWrite(fd, 1);
    stepUntil(rig, () => handler.tokens.length > 0, 100);
    expect(() => handler.context.unwatchFd(fd)).toThrow(/not watched/);
    drain(rig);
    expect(rig.messages.some((m) => m.kind === 'log' && m.level === 'error' && /device handler failed/.test(m.msg))).toBe(true);
    postEchoChains(rig, 1);
    native.eventfdWrite(rig.kickFd, 1);
    stepUntil(rig, () => readQueueStats(rig.stats, 0).broken !== 0, 100);
    expect(readQueueStats(rig.stats, 0).broken).toBe(BrokenReason.DEVICE_ERROR);
    expect(typeof run(rig, { op: 'stop', index: 0 })).toBe('number');
  });
});

/**
 * A device that hangs: while `hang` holds, every request is kept (never completed) until
 * releaseLate(). Otherwise it fills the writable bytes with FILL and completes at once. A late
 * completion honours the contract of WorkerQueue.abandoned (no write into an abandoned queue's
 * buffers), as the blk handler does.
 */
class Hanger implements QueueHandler {
  static readonly FILL = 0x5a;
  static readonly LATE = 0xee;
  readonly completionFd = -1;
  hang = true;
  readonly held: { queue: WorkerQueue; request: VirtqRequest }[] = [];
  private readonly fill = new Uint8Array(64).fill(Hanger.FILL);
  private readonly late = new Uint8Array(64).fill(Hanger.LATE);

  get inFlight(): number {
    return this.held.length;
  }

  handle(queue: WorkerQueue, request: VirtqRequest): void {
    if (this.hang) {
      this.held.push({ queue, request });
      return;
    }
    request.scatter(this.fill, 0, 0, request.writableBytes);
    queue.complete(request, request.writableBytes);
  }
  /** The device answers everything it held, long after. */
  releaseLate(): void {
    for (const { queue, request } of this.held.splice(0)) {
      if (queue.abandoned !== true) request.scatter(this.late, 0, 0, request.writableBytes);
      queue.complete(request, request.writableBytes);
    }
  }
  flush(): void {}
  poll(): number {
    return 0;
  }
  setMemory(): void {}
  close(): void {}
}

describe('abandon (a hung device never blocks the next front-end), in-process', () => {
  it('writes off a hung queue at once; the next ring runs; late completions reach neither memory', async () => {
    let hanger!: Hanger;
    const rig = await startWorker('busy', () => (hanger = new Hanger()));
    startQueue(rig, rig.kickFd);
    postEchoChains(rig, 3);
    stepUntil(rig, () => readQueueStats(rig.stats, 0).inFlight === 3, 100);
    // GET_VRING_BASE: never answered while the device hangs.
    const stopId = post(rig, { op: 'stop', index: 0 });
    for (let i = 0; i < 100; i++) rig.worker.step();
    expect(takeReply(rig, stopId)).toBeUndefined();
    // The drain timed out: abandon answers at once, and so does the stop (as a failure).
    expect(run(rig, { op: 'abandon' })).toBeUndefined();
    const stopReply = takeReply(rig, stopId);
    expect(stopReply?.ok).toBe(false);
    expect(stopReply?.ok === false && stopReply.error).toMatch(/queue 0 abandoned with requests in flight/);
    expect(readQueueStats(rig.stats, 0).abandoned).toBe(3);
    expect(rig.messages.some((m) => m.kind === 'log' && /queue abandoned/.test(m.msg))).toBe(true);

    // The next front-end: its own memory at the same addresses, a canary where the old requests' buffers were.
    const nextBuffer = new SharedArrayBuffer(MiB);
    const next = new Uint8Array(nextBuffer);
    const canaryStart = DATA;
    const canaryEnd = DATA + 3 * 256;
    next.fill(0xa5, canaryStart, canaryEnd);
    const region = { guestPhysAddr: 0, size: MiB, userspaceAddr: USER_BASE, buffer: nextBuffer, bufferOffset: 0 };
    const layout = splitRingLayout(SIZE);
    const driver = new VringDriver({
      memory: new GuestMemory([region]),
      size: SIZE,
      descAddr: 0,
      availAddr: layout.availOffset,
      usedAddr: layout.usedOffset,
      eventIdx: true,
    });
    run(rig, { op: 'memory', regions: [region] });
    run(rig, {
      op: 'start',
      queue: {
        index: 0,
        size: SIZE,
        descUserAddr: USER_BASE,
        availUserAddr: USER_BASE + layout.availOffset,
        usedUserAddr: USER_BASE + layout.usedOffset,
        lastAvailIdx: 0,
        kickFd: rig.kickFd,
        callFd: rig.callFd,
        errFd: -1,
        eventIdx: true,
        indirectDesc: false,
        packed: false,
        inOrder: false,
      },
    });
    hanger.hang = false;
    const out = DATA + 0x8000;
    for (let i = 0; i < 2; i++) {
      driver.beginChain();
      driver.addSegment(out + i * 128, 64, true);
      expect(driver.endChain(i)).toBeGreaterThanOrEqual(0);
    }
    driver.publish();
    const tokens = new Float64Array(8);
    const lens = new Uint32Array(8);
    let reaped = 0;
    stepUntil(rig, () => (reaped += driver.reapUsed(tokens.subarray(reaped), lens.subarray(reaped))) === 2, 100);
    expect([...next.subarray(out, out + 64)]).toEqual(new Array(64).fill(Hanger.FILL));

    // The hung device answers at last: the completions are dropped and the requests reclaimed.
    hanger.releaseLate();
    stepUntil(rig, () => (drain(rig), rig.messages).some((m) => m.kind === 'log' && /abandoned queue released/.test(m.msg)), 100);
    for (let i = 0; i < 20; i++) rig.worker.step();
    expect(driver.reapUsed(tokens, lens)).toBe(0); // nothing extra in the new used ring
    expect([...new Set(next.subarray(canaryStart, canaryEnd))]).toEqual([0xa5]);
    expect(rig.driver.reapUsed(tokens, lens)).toBe(0); // nor in the old one
    const old = new Uint8Array(rig.regionBuffer);
    for (let i = 0; i < 3; i++)
      expect(old.subarray(DATA + i * 256 + 128, DATA + i * 256 + 192).includes(Hanger.LATE)).toBe(false);
    expect(readQueueStats(rig.stats, 0).requests).toBe(2);
    // The new ring is unaffected: it still stops cleanly at its own index.
    expect(run(rig, { op: 'stop', index: 0 })).toBe(2);
  });
});

/** Completes each request at once and records used.idx as the driver would see it at that moment. */
class UsedIdxRecorder implements QueueHandler {
  readonly completionFd = -1;
  readonly inFlight = 0;
  /** used.idx seen at each handle(), before that request is completed. */
  readonly seen: number[] = [];
  /** used.idx seen in flush(), after the pops and before the pass's publish(). */
  readonly seenAtFlush: number[] = [];

  constructor(
    readonly usedIdx: () => number,
    readonly publishEvery?: number,
  ) {}

  handle(queue: WorkerQueue, request: VirtqRequest): void {
    this.seen.push(this.usedIdx());
    queue.complete(request, 0);
  }
  flush(): void {
    this.seenAtFlush.push(this.usedIdx());
  }
  poll(): number {
    return 0;
  }
  setMemory(): void {}
  close(): void {}
}

describe('used.idx publication within a pass, in-process', () => {
  it('a polling driver sees completions every 8 requests and all of them once nothing is left to pop', async () => {
    let handler!: UsedIdxRecorder;
    const rig = await startWorker('busy', () => (handler = new UsedIdxRecorder(() => Atomics.load(used, 1))));
    const used = new Uint16Array(rig.regionBuffer, splitRingLayout(SIZE).usedOffset, 2);
    startQueue(rig, rig.kickFd);
    postEchoChains(rig, 20);
    stepUntil(rig, () => handler.seen.length === 20, 100);
    // Published after completions 8 and 16 while the batch went on, not only at the end of the pass.
    expect(handler.seen).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8, 16, 16, 16, 16]);
    // The last 4 are visible before the handler's submit/reap step of the same pass.
    expect(handler.seenAtFlush.at(-1)).toBe(20);
    expect(readQueueStats(rig.stats, 0).requests).toBe(20);
  });

  it.each([
    // More than the 20 the (64-descriptor) ring holds: nothing within the pass, all at its end.
    [32, new Array<number>(20).fill(0)],
    [16, [...new Array<number>(16).fill(0), ...new Array<number>(4).fill(16)]],
    [5, Array.from({ length: 20 }, (_, i) => i - (i % 5))],
    // Out of range (1..64): the default, every 8.
    [0, Array.from({ length: 20 }, (_, i) => i - (i % 8))],
    [65, Array.from({ length: 20 }, (_, i) => i - (i % 8))],
  ])('a handler asking to publish every %d completions gets that (net asks for 32)', async (every, expected) => {
    let handler!: UsedIdxRecorder;
    const rig = await startWorker('busy', () => (handler = new UsedIdxRecorder(() => Atomics.load(used, 1), every)));
    const used = new Uint16Array(rig.regionBuffer, splitRingLayout(SIZE).usedOffset, 2);
    startQueue(rig, rig.kickFd);
    postEchoChains(rig, 20);
    stepUntil(rig, () => handler.seen.length === 20, 100);
    expect(handler.seen).toEqual(expected);
    // Whatever the interval, all of them once nothing is left to pop.
    expect(handler.seenAtFlush.at(-1)).toBe(20);
  });

  it('a driver waiting for an interrupt (EVENT_IDX used_event armed) is called at the first publish within the pass, once', async () => {
    let handler!: UsedIdxRecorder;
    const rig = await startWorker('busy', () => (handler = new UsedIdxRecorder(() => readQueueStats(rig.stats, 0).calls)));
    startQueue(rig, rig.kickFd);
    const tokens = new Float64Array(32);
    const lens = new Uint32Array(32);
    // The first signal after a start is unconditional: get it out of the way.
    postEchoChains(rig, 1);
    stepUntil(rig, () => reap(rig, tokens, lens) === 1, 100);
    const calls = readQueueStats(rig.stats, 0).calls;
    native.eventfdRead(rig.callFd);
    // The driver sleeps waiting for the next used entry (used_event = its last seen), like a guest.
    rig.driver.enableCallbacks();
    postEchoChains(rig, 20);
    handler.seen.length = 0;
    stepUntil(rig, () => handler.seen.length === 20, 100);
    // Called when the first 8 were published, while the batch went on; no more after that (the
    // driver has not re-armed), so one call for the 20.
    expect(handler.seen).toEqual([...new Array<number>(8).fill(calls), ...new Array<number>(12).fill(calls + 1)]);
    expect(readQueueStats(rig.stats, 0).calls).toBe(calls + 1);
    expect(native.eventfdRead(rig.callFd)).toBe(1);
    // A driver that turned callbacks off (used_event left where its last reap put it, as
    // Linux's disable_cb does) gets the one call that used_event still asks for, then none.
    expect(reap(rig, tokens, lens)).toBe(20);
    rig.driver.disableCallbacks();
    for (let round = 0; round < 2; round++) {
      postEchoChains(rig, 20);
      handler.seen.length = 0;
      stepUntil(rig, () => handler.seen.length === 20, 100);
      expect(reap(rig, tokens, lens)).toBe(20);
    }
    expect(readQueueStats(rig.stats, 0).calls).toBe(calls + 2);
  });
});
