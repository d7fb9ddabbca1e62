// VIRTIO_F_IN_ORDER in the worker (QueueRunner): whatever order a handler completes requests in,
// the used ring of a queue started with inOrder shows them in pop order, with their own lengths,
// on split and packed rings; giveBack steps the order back; a stop still drains. The worker
// runs in-process (as in worker.test.ts): the test plays the control thread and the driver, and
// a handler that holds every request until the test completes it.
import { afterEach, describe, expect, it } from 'vitest';
import type { MessagePort } from 'node:worker_threads';
import { DataPlaneWorker } from '../../dist/dataplane/worker.js';
import type { WorkerMessage } from '../../dist/dataplane/commands.js';
import type { HandlerContext, QueueHandler, WorkerQueue } from '../../dist/dataplane/device-api.js';
import { GuestMemory } from '../../dist/dataplane/memory.js';
import type { VirtqRequest } from '../../dist/dataplane/request.js';
import { readQueueStats } from '../../dist/dataplane/stats.js';
import { VringDriver, splitRingLayout } from '../../dist/frontend/vring-driver.js';
import { PackedVringDriver, packedRingLayout } from '../../dist/frontend/packed-vring-driver.js';
import type { RingDriver } from '../../dist/frontend/ring-driver.js';
import { native } from '../../dist/native.js';
import { closeWorkerRig, inProcessWorkerInit, run, takeReply } from './worker-init.js';

const MiB = 1 << 20;
const SIZE = 32;
const USER_BASE = 0x7f00_0000_0000;
const DATA = 0x10000;

/** Holds every request in pop order; the test completes or gives them back. */
class Keeper implements QueueHandler {
  readonly completionFd = -1;
  readonly inFlight = 0;
  readonly held: VirtqRequest[] = [];
  queue: WorkerQueue | null = null;
  /** At a stop: give back what can go back, newest first, complete the rest with 0 (as net's releaseHeld). */
  releaseOnStop = true;

  constructor(readonly context: HandlerContext) {}

  handle(queue: WorkerQueue, request: VirtqRequest): void {
    this.queue = queue;
    this.held.push(request);
  }
  flush(): void {}
  poll(): number {
    const queue = this.queue;
    if (queue === null || !queue.stopping || !this.releaseOnStop || this.held.length === 0) return 0;
    const count = this.held.length;
    let givingBack = true;
    while (this.held.length > 0) {
      const request = this.held.pop()!;
      if (givingBack && queue.giveBack!(request)) continue;
      givingBack = false;
      queue.complete(request, 0);
    }
    return count;
  }
  /** Completes the held request popped `nth` (0 = oldest still held) with `len`. */
  complete(nth: number, len: number): void {
    const request = this.held.splice(nth, 1)[0];
    this.queue!.complete(request, len);
  }
  setMemory(): void {}
  close(): void {}
}

interface Rig {
  worker: DataPlaneWorker;
  handler: Keeper;
  control: MessagePort;
  workerPort: MessagePort;
  mailbox: Int32Array;
  mailboxFd: number;
  callFd: number;
  stats: SharedArrayBuffer;
  regionBuffer: SharedArrayBuffer;
  driver: RingDriver;
  packed: boolean;
  nextId: number;
  messages: WorkerMessage[];
}

const rigs: Rig[] = [];

afterEach(() => {
  for (const rig of rigs.splice(0)) closeWorkerRig(rig, rig.callFd);
});

async function startRig(packed: boolean, inOrder: boolean): Promise<Rig> {
  const { init, control, workerPort, mailbox, mailboxFd, stats } = inProcessWorkerInit({ interruptGraceUs: 0 });
  let handler!: Keeper;
  const worker = await DataPlaneWorker.create(init, workerPort, {
    createHandler: (_options, context) => (handler = new Keeper(context)),
    maxSleepMs: 5000,
  });
  const regionBuffer = new SharedArrayBuffer(MiB);
  const region = { guestPhysAddr: 0, size: MiB, userspaceAddr: USER_BASE, buffer: regionBuffer, bufferOffset: 0 };
  const memory = new GuestMemory([region]);
  let availOffset: number;
  let usedOffset: number;
  let driver: RingDriver;
  if (packed) {
    const layout = packedRingLayout(SIZE);
    availOffset = layout.driverOffset;
    usedOffset = layout.deviceOffset;
    driver = new PackedVringDriver({
      memory,
      size: SIZE,
      descAddr: 0,
      availAddr: availOffset,
      usedAddr: usedOffset,
      eventIdx: true,
    });
  } else {
    const layout = splitRingLayout(SIZE);
    availOffset = layout.availOffset;
    usedOffset = layout.usedOffset;
    driver = new VringDriver({ memory, size: SIZE, descAddr: 0, availAddr: availOffset, usedAddr: usedOffset, eventIdx: true });
  }
  const rig: Rig = {
    worker,
    handler,
    control,
    workerPort,
    mailbox,
    mailboxFd,
    callFd: native.eventfdCreate(0),
    stats,
    regionBuffer,
    driver,
    packed,
    nextId: 1,
    messages: [],
  };
  rigs.push(rig);
  run(rig, { op: 'memory', regions: [region] });
  // A fresh packed ring starts at position 0 with the wrap counter 1.
  startQueue(rig, inOrder, packed ? 1 << 15 : 0);
  return rig;
}

function startQueue(rig: Rig, inOrder: boolean, lastAvailIdx: number): void {
  const availOffset = rig.packed ? packedRingLayout(SIZE).driverOffset : splitRingLayout(SIZE).availOffset;
  const usedOffset = rig.packed ? packedRingLayout(SIZE).deviceOffset : splitRingLayout(SIZE).usedOffset;
  run(rig, {
    op: 'start',
    queue: {
      index: 0,
      size: SIZE,
      descUserAddr: USER_BASE,
      availUserAddr: USER_BASE + availOffset,
      usedUserAddr: USER_BASE + usedOffset,
      lastAvailIdx,
      kickFd: -1,
      callFd: rig.callFd,
      errFd: -1,
      eventIdx: true,
      indirectDesc: false,
      packed: rig.packed,
      inOrder,
    },
  });
}

/** Posts chains with tokens first, first + 1, ... (two descriptors each: 16 readable, 64 writable). */
function postChains(rig: Rig, first: number, count: number): void {
  for (let i = 0; i < count; i++) {
    const at = DATA + (first + i) * 128;
    rig.driver.beginChain();
    rig.driver.addSegment(at, 16, false);
    rig.driver.addSegment(at + 64, 64, true);
    expect(rig.driver.endChain(first + i)).toBeGreaterThanOrEqual(0);
  }
  rig.driver.publish();
}

function reap(rig: Rig): { tokens: number[]; lens: number[] } {
  const tokens = new Float64Array(SIZE);
  const lens = new Uint32Array(SIZE);
  const n = rig.driver.reapUsed(tokens, lens);
  return { tokens: [...tokens.subarray(0, n)], lens: [...lens.subarray(0, n)] };
}

function stepUntilHeld(rig: Rig, count: number): void {
  for (let step = 0; step < 100 && rig.handler.held.length < count; step++) rig.worker.step();
  expect(rig.handler.held.length).toBe(count);
}

describe.each([
  ['split', false],
  ['packed', true],
] as const)('IN_ORDER in the worker, %s ring', (_name, packed) => {
  it('completions in any order reach the used ring in pop order, each with its own length', async () => {
    const rig = await startRig(packed, true);
    postChains(rig, 0, 6);
    stepUntilHeld(rig, 6);
    // Held (pop order) 0 1 2 3 4 5: complete 3, 5, 1 first: nothing may show before 0 does.
    rig.handler.complete(3, 13); // token 3
    rig.handler.complete(4, 15); // token 5
    rig.handler.complete(1, 11); // token 1
    rig.worker.step();
    expect(reap(rig).tokens).toEqual([]);
    expect(readQueueStats(rig.stats, 0).inFlight).toBe(6);
    // 0 completes: 0 and 1 go out (2 still outstanding holds back 3 and 5).
    rig.handler.complete(0, 10); // token 0
    rig.worker.step();
    expect(reap(rig)).toEqual({ tokens: [0, 1], lens: [10, 11] });
    expect(readQueueStats(rig.stats, 0).inFlight).toBe(4);
    // 4 then 2: everything, in order.
    rig.handler.complete(1, 14); // token 4 (held now: 2, 4)
    rig.handler.complete(0, 12); // token 2
    rig.worker.step();
    expect(reap(rig)).toEqual({ tokens: [2, 3, 4, 5], lens: [12, 13, 14, 15] });
    const stats = readQueueStats(rig.stats, 0);
    expect(stats.inFlight).toBe(0);
    expect(stats.requests).toBe(6);
    expect(stats.bytes).toBe(10 + 11 + 12 + 13 + 14 + 15);
    // The slots wrap with the ring: three more laps of shuffled completions stay in order.
    for (let lap = 0; lap < 3; lap++) {
      const first = 6 + lap * 12;
      postChains(rig, first, 12);
      stepUntilHeld(rig, 12);
      for (const nth of [11, 5, 0, 7, 0, 0, 3, 1, 0, 2, 0, 0]) rig.handler.complete(nth, 1);
      rig.worker.step();
      expect(reap(rig).tokens).toEqual(Array.from({ length: 12 }, (_, i) => first + i));
    }
    // 42 chains of 2 descriptors: packed, position 84 mod 32 = 20 after two laps (wrap back to 1).
    expect(run(rig, { op: 'stop', index: 0 })).toBe(packed ? 20 | (1 << 15) : 42);
  });

  it('without IN_ORDER the used ring keeps the order the handler completed in', async () => {
    const rig = await startRig(packed, false);
    postChains(rig, 0, 3);
    stepUntilHeld(rig, 3);
    rig.handler.complete(2, 2);
    rig.handler.complete(0, 0);
    rig.handler.complete(0, 1);
    rig.worker.step();
    expect(reap(rig).tokens).toEqual([2, 0, 1]);
  });

  it('giveBack of the newest steps the order back; a completion waiting for older ones cannot go back', async () => {
    const rig = await startRig(packed, true);
    const queue = () => rig.handler.queue!;
    postChains(rig, 0, 4);
    stepUntilHeld(rig, 4);
    const [a, b, c, d] = rig.handler.held.splice(0);
    queue().complete(c, 30); // waits behind a and b
    expect(queue().giveBack!(c)).toBe(false);
    expect(queue().giveBack!(d)).toBe(true); // the newest popped: the driver keeps it
    // Popped again, it takes the slot it gave back, behind c.
    stepUntilHeld(rig, 1);
    const d2 = rig.handler.held.pop()!;
    queue().complete(d2, 40);
    queue().complete(b, 20);
    rig.worker.step();
    expect(reap(rig).tokens).toEqual([]);
    queue().complete(a, 10);
    rig.worker.step();
    expect(reap(rig)).toEqual({ tokens: [0, 1, 2, 3], lens: [10, 20, 30, 40] });
    expect(readQueueStats(rig.stats, 0).requests).toBe(4);
  });

  it('a stop drains: held requests older than a waiting completion are completed with 0 and pushed in order', async () => {
    const rig = await startRig(packed, true);
    postChains(rig, 0, 5);
    stepUntilHeld(rig, 5);
    // 0 completes at once; 2 completes while 1, 3 and 4 are held (a refused RX buffer among held ones).
    rig.handler.complete(2, 7);
    rig.handler.complete(0, 5);
    rig.worker.step();
    expect(reap(rig)).toEqual({ tokens: [0], lens: [5] });
    // The stop: 4 and 3 go back to the driver; 1 cannot (2 was popped after it and used), so it
    // is completed with 0, and 2 follows it.
    const next = run(rig, { op: 'stop', index: 0 });
    expect(reap(rig)).toEqual({ tokens: [1, 2], lens: [0, 7] });
    expect(next).toBe(packed ? 6 | (1 << 15) : 3);
    expect(readQueueStats(rig.stats, 0).requests).toBe(3);
  });
});

describe('IN_ORDER and a device bug', () => {
  it('a request completed twice is refused with an error rather than pushed out of order', async () => {
    const rig = await startRig(false, true);
    postChains(rig, 0, 3);
    stepUntilHeld(rig, 3);
    const [, b] = rig.handler.held;
    rig.handler.queue!.complete(b, 1);
    expect(() => rig.handler.queue!.complete(b, 1)).toThrow(/completed twice/);
  });

  it('abandon: completions waiting for older ones are reclaimed at once; the queue is let go after the last late one', async () => {
    const rig = await startRig(false, true);
    postChains(rig, 0, 3);
    stepUntilHeld(rig, 3);
    const [a, b, c] = rig.handler.held.splice(0);
    rig.handler.queue!.complete(b, 1); // waits behind a
    expect(run(rig, { op: 'abandon' })).toBeUndefined();
    expect(readQueueStats(rig.stats, 0).abandoned).toBe(3);
    const released = () => rig.messages.some((m) => m.kind === 'log' && /abandoned queue released/.test(m.msg));
    rig.handler.queue!.complete(c, 1);
    rig.worker.step();
    takeReply(rig, -1);
    expect(released()).toBe(false);
    rig.handler.queue!.complete(a, 1);
    rig.worker.step();
    takeReply(rig, -1);
    expect(released()).toBe(true);
    // Nothing reached the used ring of the written-off queue.
    expect(reap(rig).tokens).toEqual([]);
  });
});
