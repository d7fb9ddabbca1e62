// The dirty-page log of live migration: bit arithmetic against a reference, bounds, addresses
// above 4 GiB, and what a real queue marks (used ring, device-written data, nothing else) —
// through SplitVirtqueue directly and through an in-process worker running the echo device.
import { afterEach, describe, expect, it } from 'vitest';
import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { DirtyLog, LOG_PAGE_BYTES, markWritten, requiredLogBytes } from '../../dist/dataplane/dirty-log.js';
import { GuestMemory } from '../../dist/dataplane/memory.js';
import { VirtqRequest } from '../../dist/dataplane/request.js';
import { SplitVirtqueue } from '../../dist/dataplane/virtqueue.js';
import { PackedVirtqueue } from '../../dist/dataplane/packed-virtqueue.js';
import { PackedVringDriver, packedRingLayout } from '../../dist/frontend/packed-vring-driver.js';
import { DataPlaneWorker } from '../../dist/dataplane/worker.js';
import { Mailbox, type WorkerMessage } from '../../dist/dataplane/commands.js';
import { VringDriver, splitRingLayout } from '../../dist/frontend/vring-driver.js';
import { native } from '../../dist/native.js';
import { closeWorkerRig, inProcessWorkerInit, run } from './worker-init.js';

const KiB = 1024;
const MiB = 1 << 20;
const GiB = 2 ** 30;

/** A log of `size` bytes inside a larger buffer with guard bytes on both sides. */
function guardedLog(size: number, guard = 64) {
  const buffer = new SharedArrayBuffer(guard + size + guard);
  const log = new DirtyLog({ buffer, offset: guard, size });
  const bytes = new Uint8Array(buffer);
  const bits = bytes.subarray(guard, guard + size);
  const guardsClean = () => bytes.subarray(0, guard).every((b) => b === 0) && bytes.subarray(guard + size).every((b) => b === 0);
  return { log, bits, guardsClean };
}

/** Pages whose bit is set. */
function markedPages(bits: Uint8Array): number[] {
  const pages: number[] = [];
  for (let byte = 0; byte < bits.length; byte++) {
    for (let bit = 0; bit < 8; bit++) if ((bits[byte] >> bit) & 1) pages.push(byte * 8 + bit);
  }
  return pages;
}

/** The pages [gpa, gpa + len) touches, computed the slow way. */
function pagesOf(gpa: number, len: number): number[] {
  const pages: number[] = [];
  for (let page = Math.floor(gpa / LOG_PAGE_BYTES); page * LOG_PAGE_BYTES < gpa + len; page++) pages.push(page);
  return pages;
}

describe('dirty log: sizes and bits', () => {
  it('the size needed for a memory table is one bit per 4 KiB page, within what QEMU allocates', () => {
    expect(requiredLogBytes(0)).toBe(0);
    expect(requiredLogBytes(1)).toBe(1);
    expect(requiredLogBytes(8 * LOG_PAGE_BYTES)).toBe(1);
    expect(requiredLogBytes(8 * LOG_PAGE_BYTES + 1)).toBe(2);
    expect(requiredLogBytes(512 * MiB)).toBe(16 * KiB);
    // QEMU (vhost_get_log_size): (last byte / 256 KiB + 1) u64 words; never less than ours.
    for (const end of [4096, 512 * MiB, 512 * MiB + 4096, 6 * GiB + 12345]) {
      const qemuBytes = (Math.floor((end - 1) / (256 * KiB)) + 1) * 8;
      expect(qemuBytes).toBeGreaterThanOrEqual(requiredLogBytes(end));
    }
  });

  it('a log of N bytes (the payload size) covers exactly 8·N pages: the last one is marked, the next is dropped', () => {
    const { log, bits, guardsClean } = guardedLog(16);
    expect(log.coveredBytes).toBe(16 * 8 * LOG_PAGE_BYTES);
    log.markPage(127 * LOG_PAGE_BYTES + 5);
    expect(markedPages(bits)).toEqual([127]);
    log.markPage(128 * LOG_PAGE_BYTES);
    log.markRange(126 * LOG_PAGE_BYTES, 4 * LOG_PAGE_BYTES); // pages 126..129: two inside, two beyond
    expect(markedPages(bits)).toEqual([126, 127]);
    expect(log.dropped).toBe(3);
    expect(log.pagesMarked).toBe(3);
    log.markRange(10 * GiB, 1);
    expect(log.dropped).toBe(4);
    expect(guardsClean()).toBe(true);
  });

  it('a range spanning two pages sets both bits, also across a bitmap byte', () => {
    const { log, bits } = guardedLog(8);
    log.markRange(2 * LOG_PAGE_BYTES - 1, 2); // last byte of page 1, first of page 2
    expect(markedPages(bits)).toEqual([1, 2]);
    log.markRange(8 * LOG_PAGE_BYTES - 8, 16); // pages 7 and 8: bit 7 of byte 0, bit 0 of byte 1
    expect(markedPages(bits)).toEqual([1, 2, 7, 8]);
    expect(Array.from(bits.subarray(0, 2))).toEqual([0b1000_0110, 0b0000_0001]);
  });

  it('matches a page-by-page reference on random ranges, never writing outside the log', () => {
    const { log, bits, guardsClean } = guardedLog(64);
    const expected = new Set<number>();
    let seed = 12345;
    const random = (n: number) => {
      seed = (seed * 48271) % 2147483647;
      return seed % n;
    };
    for (let i = 0; i < 2000; i++) {
      const gpa = random(600 * LOG_PAGE_BYTES);
      const len = 1 + random(i % 10 === 0 ? 80 * LOG_PAGE_BYTES : 3 * LOG_PAGE_BYTES);
      log.markRange(gpa, len);
      for (const page of pagesOf(gpa, len)) if (page < 512) expected.add(page);
    }
    expect(markedPages(bits)).toEqual([...expected].sort((a, b) => a - b));
    expect(guardsClean()).toBe(true);
  });

  it('marks pages above 4 GiB at their own bit (no 32-bit wrap-around)', () => {
    const size = requiredLogBytes(8 * GiB);
    const { log, bits } = guardedLog(size);
    const gpa = 5 * GiB + 3 * LOG_PAGE_BYTES + 100;
    log.markRange(gpa, 2 * LOG_PAGE_BYTES);
    const page = (5 * GiB) / LOG_PAGE_BYTES + 3;
    expect(markedPages(bits)).toEqual([page, page + 1, page + 2]);
    // The same offset below 4 GiB stays clean.
    expect(bits[Math.floor((page - (4 * GiB) / LOG_PAGE_BYTES) / 8)]).toBe(0);
  });

  it('refuses an area that does not fit its buffer or is empty', () => {
    const buffer = new SharedArrayBuffer(4096);
    expect(() => new DirtyLog({ buffer, offset: 100, size: 4000 })).toThrow(/exceeds its mapping/);
    expect(() => new DirtyLog({ buffer, offset: 0, size: 0 })).toThrow(/out of range/);
  });

  it('markWritten marks a request written in a region above 4 GiB, up to used.len, plus a trailing status byte', () => {
    const base = 4 * GiB + 64 * MiB;
    const buffer = new SharedArrayBuffer(MiB);
    const memory = new GuestMemory([
      { guestPhysAddr: base, size: MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 },
    ]);
    const layout = splitRingLayout(8);
    const rings = { descAddr: base, availAddr: base + layout.availOffset, usedAddr: base + layout.usedOffset };
    const driver = new VringDriver({ memory, size: 8, ...rings, eventIdx: false });
    const queue = new SplitVirtqueue({ memory, size: 8, ...rings });
    const header = base + 0x10000;
    const data = base + 0x20000 + 0xf00; // 3 pages' worth of data starting near a page end
    const status = base + 0x40000;
    driver.beginChain();
    driver.addSegment(header, 16, false);
    driver.addSegment(data, 3 * 4096, true);
    driver.addSegment(status, 1, true);
    driver.endChain(1);
    driver.publish();
    const request = new VirtqRequest(8);
    expect(queue.pop(request)).toBe(true);

    const full = guardedLog(requiredLogBytes(base + MiB));
    markWritten(full.log, request, 3 * 4096 + 1);
    const dataPages = pagesOf(data, 3 * 4096);
    expect(markedPages(full.bits)).toEqual([...dataPages, status / LOG_PAGE_BYTES]);

    // A refused read (virtio-blk: used.len 1, status in the last byte): the first data byte and the status.
    const refused = guardedLog(requiredLogBytes(base + MiB));
    markWritten(refused.log, request, 1);
    expect(markedPages(refused.bits)).toEqual([data / LOG_PAGE_BYTES, status / LOG_PAGE_BYTES].map(Math.floor));
    // Given back untouched: nothing.
    const untouched = guardedLog(requiredLogBytes(base + MiB));
    markWritten(untouched.log, request, 0);
    expect(markedPages(untouched.bits)).toEqual([]);
  });
});

describe('dirty log: the used ring of a SplitVirtqueue', () => {
  function ring(size: number, logGuestAddr = -1) {
    const buffer = new SharedArrayBuffer(MiB);
    const memory = new GuestMemory([{ guestPhysAddr: 0, size: MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 }]);
    const layout = splitRingLayout(size, 4096);
    const rings = { descAddr: 0x8000, availAddr: 0x8000 + layout.availOffset, usedAddr: 0x8000 + layout.usedOffset };
    const driver = new VringDriver({ memory, size, ...rings, eventIdx: true });
    const queue = new SplitVirtqueue({ memory, size, ...rings, eventIdx: true });
    const { log, bits } = guardedLog(requiredLogBytes(MiB));
    return { driver, queue, log, bits, usedGpa: rings.usedAddr, logGuestAddr };
  }

  function roundTrip(r: ReturnType<typeof ring>, count: number): void {
    for (let i = 0; i < count; i++) {
      r.driver.beginChain();
      r.driver.addSegment(0x40000 + i * 16, 16, false);
      r.driver.endChain(i);
    }
    r.driver.publish();
    const request = new VirtqRequest(4);
    for (let i = 0; i < count; i++) {
      expect(r.queue.pop(request)).toBe(true);
      r.queue.pushUsed(request.head, 0);
    }
    r.queue.flushUsed();
    // The driver takes them back, freeing its descriptors.
    expect(r.driver.reapUsed(new Float64Array(count), new Uint32Array(count))).toBe(count);
  }

  it('marks nothing without a log, and every page of used elements and used.idx with one', () => {
    const r = ring(1024); // used ring: 4 + 8·1024 + 2 bytes = three pages
    roundTrip(r, 3);
    expect(markedPages(r.bits)).toEqual([]);
    r.queue.setUsedLog(r.log);
    // Starting to log marks the whole used ring once.
    expect(markedPages(r.bits)).toEqual(pagesOf(r.usedGpa, 4 + 8 * 1024 + 2));
    r.bits.fill(0);
    roundTrip(r, 2); // elements 3, 4 and used.idx: the first used page only
    expect(markedPages(r.bits)).toEqual([r.usedGpa / LOG_PAGE_BYTES]);
    r.bits.fill(0);
    roundTrip(r, 600); // elements 5..604 reach into the second page
    expect(markedPages(r.bits)).toEqual(pagesOf(r.usedGpa, 4 + 8 * 605));
    r.queue.setUsedLog(null);
    r.bits.fill(0);
    roundTrip(r, 5);
    expect(markedPages(r.bits)).toEqual([]);
  });

  it('marks at log_guest_addr when the front-end gives one, and wraps around the ring', () => {
    const r = ring(8);
    const logAt = 0x70000;
    r.queue.setUsedLog(r.log, logAt);
    r.bits.fill(0);
    roundTrip(r, 6);
    roundTrip(r, 6); // elements 6, 7, 0..3: wraps
    expect(markedPages(r.bits)).toEqual([logAt / LOG_PAGE_BYTES]);
    expect(r.log.pagesMarked).toBeGreaterThan(0);
  });
});

describe('dirty log: the descriptor ring of a PackedVirtqueue', () => {
  function ring(size: number) {
    const buffer = new SharedArrayBuffer(MiB);
    const memory = new GuestMemory([{ guestPhysAddr: 0, size: MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 }]);
    const layout = packedRingLayout(size);
    const ringGpa = 0x8000;
    const rings = { descAddr: ringGpa, availAddr: ringGpa + layout.driverOffset, usedAddr: ringGpa + layout.deviceOffset };
    const driver = new PackedVringDriver({ memory, size, ...rings, eventIdx: true });
    const queue = new PackedVirtqueue({ memory, size, ...rings, eventIdx: true, lastAvailIdx: 0x8000 });
    const { log, bits } = guardedLog(requiredLogBytes(MiB));
    return { driver, queue, log, bits, ringGpa, deviceGpa: rings.usedAddr };
  }

  function roundTrip(r: ReturnType<typeof ring>, count: number): void {
    for (let i = 0; i < count; i++) {
      r.driver.beginChain();
      r.driver.addSegment(0x40000 + i * 16, 16, false);
      expect(r.driver.endChain(i)).toBeGreaterThanOrEqual(0);
    }
    r.driver.publish();
    const request = new VirtqRequest(4);
    for (let i = 0; i < count; i++) {
      expect(r.queue.pop(request)).toBe(true);
      r.queue.pushUsed(request.head, 0);
    }
    r.queue.flushUsed();
    expect(r.driver.reapUsed(new Float64Array(count), new Uint32Array(count))).toBe(count);
  }

  it('marks nothing without a log; with one, the whole ring and device area at start, then the used descriptors written', () => {
    const r = ring(512); // descriptor ring: 16 · 512 bytes = two pages
    roundTrip(r, 3);
    expect(markedPages(r.bits)).toEqual([]);
    r.queue.setUsedLog(r.log, r.deviceGpa);
    expect(markedPages(r.bits)).toEqual(pagesOf(r.ringGpa, 16 * 512 + 8));
    r.bits.fill(0);
    roundTrip(r, 2); // positions 3, 4: the first ring page only
    expect(markedPages(r.bits)).toEqual([r.ringGpa / LOG_PAGE_BYTES]);
    r.bits.fill(0);
    roundTrip(r, 300); // positions 5..304 reach into the second page
    expect(markedPages(r.bits)).toEqual(pagesOf(r.ringGpa, 16 * 305));
    r.bits.fill(0);
    r.queue.enableNotification(); // the device event area is written: marked
    expect(markedPages(r.bits)).toEqual(pagesOf(r.deviceGpa, 4));
    r.queue.setUsedLog(null);
    r.bits.fill(0);
    roundTrip(r, 5);
    r.queue.disableNotification();
    expect(markedPages(r.bits)).toEqual([]);
  });
});

// ---- through a worker ----------------------------------------------------------------------------

const SIZE = 64;
const USER_BASE = 0x7f00_0000_0000;
const RING_GPA = 0x3000;

interface Rig {
  worker: DataPlaneWorker;
  control: MessagePort;
  workerPort: MessagePort;
  mailbox: Int32Array;
  mailboxFd: number;
  regionBuffer: SharedArrayBuffer;
  driver: VringDriver;
  messages: WorkerMessage[];
  nextId: number;
}
const rigs: Rig[] = [];

afterEach(() => {
  for (const rig of rigs.splice(0)) closeWorkerRig(rig);
});

async function startEchoWorker(handlerOptions: object = {}): Promise<Rig> {
  const { init, control, workerPort, mailbox, mailboxFd } = inProcessWorkerInit({ handlerOptions });
  const worker = await DataPlaneWorker.create(init, workerPort, { maxSleepMs: 5000 });
  const regionBuffer = new SharedArrayBuffer(MiB);
  const memory = new GuestMemory([
    { guestPhysAddr: 0, size: MiB, userspaceAddr: USER_BASE, buffer: regionBuffer, bufferOffset: 0 },
  ]);
  const layout = splitRingLayout(SIZE, 4096);
  const driver = new VringDriver({
    memory,
    size: SIZE,
    descAddr: RING_GPA,
    availAddr: RING_GPA + layout.availOffset,
    usedAddr: RING_GPA + layout.usedOffset,
    eventIdx: true,
  });
  const rig: Rig = {
    worker,
    control,
    workerPort,
    mailbox,
    mailboxFd,
    regionBuffer,
    driver,
    messages: [],
    nextId: 1,
  };
  rigs.push(rig);
  run(rig, {
    op: 'memory',
    regions: [{ guestPhysAddr: 0, size: MiB, userspaceAddr: USER_BASE, buffer: regionBuffer, bufferOffset: 0 }],
  });
  run(rig, {
    op: 'start',
    queue: {
      index: 0,
      size: SIZE,
      descUserAddr: USER_BASE + RING_GPA,
      availUserAddr: USER_BASE + RING_GPA + layout.availOffset,
      usedUserAddr: USER_BASE + RING_GPA + layout.usedOffset,
      lastAvailIdx: 0,
      kickFd: -1,
      callFd: -1,
      errFd: -1,
      eventIdx: true,
      indirectDesc: false,
      packed: false,
      inOrder: false,
    },
  });
  return rig;
}

/** Posts echo chains: 64 readable bytes at 0x20000 + i·4 KiB, 64 writable bytes straddling a page end. */
function post(rig: Rig, first: number, count: number): { readable: number[]; writable: number[] } {
  const readable: number[] = [];
  const writable: number[] = [];
  for (let i = first; i < first + count; i++) {
    const from = 0x20000 + i * 4096;
    const to = 0x60000 + i * 8192 + 4096 - 32;
    readable.push(from);
    writable.push(to);
    rig.driver.beginChain();
    rig.driver.addSegment(from, 64, false);
    rig.driver.addSegment(to, 64, true);
    rig.driver.endChain(i);
  }
  rig.driver.publish();
  return { readable, writable };
}

/** Posts echo chains and steps the worker until all of them are used. */
function echo(rig: Rig, first: number, count: number): { readable: number[]; writable: number[] } {
  const { readable, writable } = post(rig, first, count);
  const tokens = new Float64Array(count);
  const lens = new Uint32Array(count);
  let reaped = 0;
  for (let step = 0; step < 1000 && reaped < count; step++) {
    rig.worker.step();
    reaped += rig.driver.reapUsed(tokens.subarray(reaped), lens.subarray(reaped));
  }
  expect(reaped).toBe(count);
  expect([...lens]).toEqual(new Array(count).fill(64));
  return { readable, writable };
}

describe('dirty log: through a worker and a device', () => {
  it('marks the used ring and every page the device wrote, never what it only read; stops when the log is removed', async () => {
    const rig = await startEchoWorker();
    const layout = splitRingLayout(SIZE, 4096);
    const usedPage = (RING_GPA + layout.usedOffset) / LOG_PAGE_BYTES;
    echo(rig, 0, 4); // before logging: nothing to mark anywhere
    const logBuffer = new SharedArrayBuffer(requiredLogBytes(MiB));
    const bits = new Uint8Array(logBuffer);
    run(rig, { op: 'dirty-log', area: { buffer: logBuffer, offset: 0, size: logBuffer.byteLength } });
    expect(markedPages(bits)).toEqual([usedPage]); // the whole used ring, once, when logging starts
    bits.fill(0);

    const { writable } = echo(rig, 4, 8);
    const expected = new Set<number>([usedPage]);
    for (const gpa of writable) for (const page of pagesOf(gpa, 64)) expected.add(page);
    expect(markedPages(bits)).toEqual([...expected].sort((a, b) => a - b));

    // SET_VRING_ADDR with a log address: used-ring writes are marked there from now on.
    run(rig, { op: 'ring-log', index: 0, logGuestAddr: 0xf0000 });
    bits.fill(0);
    echo(rig, 12, 1);
    expect(markedPages(bits)).toContain(0xf0000 / LOG_PAGE_BYTES);
    expect(markedPages(bits)).not.toContain(usedPage);

    run(rig, { op: 'dirty-log', area: null });
    const done = rig.messages.find((m) => m.kind === 'log' && m.msg === 'dirty log done');
    expect(done && done.kind === 'log' ? done.fields?.pagesMarked : 0).toBeGreaterThan(0);
    bits.fill(0);
    echo(rig, 13, 4);
    expect(markedPages(bits)).toEqual([]);
    // GET_VRING_BASE after all that: every request came back.
    expect(run(rig, { op: 'stop', index: 0 })).toBe(17);
  });
});

describe('dirty log: stopping a ring (end of migration)', () => {
  it('GET_VRING_BASE answers only after the requests in flight completed and were marked', async () => {
    const releaseFd = native.eventfdCreate(0);
    try {
      const rig = await startEchoWorker({ releaseFd });
      const logBuffer = new SharedArrayBuffer(requiredLogBytes(MiB));
      const bits = new Uint8Array(logBuffer);
      run(rig, { op: 'dirty-log', area: { buffer: logBuffer, offset: 0, size: logBuffer.byteLength } });
      bits.fill(0);
      const { writable } = post(rig, 0, 6);
      for (let step = 0; step < 20; step++) rig.worker.step(); // popped and held by the device
      expect(markedPages(bits)).toEqual([]);
      // The stop is pending while the device holds them.
      const id = rig.nextId++;
      rig.control.postMessage({ op: 'stop', index: 0, id });
      Atomics.add(rig.mailbox, Mailbox.SEQ, 1);
      native.eventfdWrite(rig.mailboxFd, 1);
      const replied = () => {
        for (let m = receiveMessageOnPort(rig.control); m; m = receiveMessageOnPort(rig.control))
          rig.messages.push(m.message as WorkerMessage);
        return rig.messages.find((m) => m.kind === 'reply' && m.id === id);
      };
      for (let step = 0; step < 20; step++) rig.worker.step();
      expect(replied()).toBeUndefined();
      native.eventfdWrite(releaseFd, 1);
      let reply: WorkerMessage | undefined;
      for (let step = 0; step < 1000 && !(reply = replied()); step++) rig.worker.step();
      expect(reply).toMatchObject({ kind: 'reply', ok: true, value: 6 });
      // By the reply, every written page and the used ring are marked.
      const layout = splitRingLayout(SIZE, 4096);
      const expected = new Set<number>([(RING_GPA + layout.usedOffset) / LOG_PAGE_BYTES]);
      for (const gpa of writable) for (const page of pagesOf(gpa, 64)) expected.add(page);
      expect(markedPages(bits)).toEqual([...expected].sort((a, b) => a - b));
    } finally {
      native.close(releaseFd);
    }
  });
});
