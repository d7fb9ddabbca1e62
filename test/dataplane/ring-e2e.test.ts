// End to end in one process: a VringDriver (the guest's side) and a SplitVirtqueue (ours) over the
// same SharedArrayBuffer-backed guest memory, exchanging 100 000s of requests with verified data.
// Both sides "sleep" like real peers: a sleeping device only wakes on a kick, a sleeping driver
// only on a call, so a lost wakeup in the notification protocol shows up as a stall.
import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../../dist/dataplane/memory.js';
import { VirtqRequest } from '../../dist/dataplane/request.js';
import { SplitVirtqueue } from '../../dist/dataplane/virtqueue.js';
import { VringDriver, indirectTablesBytes, splitRingLayout } from '../../dist/frontend/vring-driver.js';

const MiB = 1 << 20;
const RING_REGION = 0x10_0000;
const DATA_REGION = 2 ** 32 + 0x20_0000; // above 4 GiB: descriptors use the address high word
const SLOT_BYTES = 16 * 1024;
const SLOT_BASE = DATA_REGION + 1000; // slots straddle the 1 MiB window strides
const MAX_SEGMENTS = 5;

interface RunOptions {
  requests: number;
  size: number;
  eventIdx: boolean;
  /** 'polling': neither side ever sleeps (kicks/calls suppressed); 'interrupt': both sleep when idle. */
  mode: 'polling' | 'interrupt';
  outOfOrder: boolean;
  seed: number;
}

interface RunResult {
  completed: number;
  kicks: number;
  calls: number;
  indirect: number;
  deviceSleeps: number;
  driverSleeps: number;
}

function rng(seed: number): () => number {
  let state = seed | 0;
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return (t ^ (t >>> 14)) >>> 0;
  };
}

function fnv(hash: number, byte: number): number {
  return Math.imul(hash ^ byte, 16777619) >>> 0;
}

function run(options: RunOptions): RunResult {
  const { size, requests } = options;
  const rand = rng(options.seed);
  const ringBuffer = new SharedArrayBuffer(MiB);
  const dataBuffer = new SharedArrayBuffer(8 * MiB);
  const memory = new GuestMemory(
    [
      { guestPhysAddr: RING_REGION, size: MiB, userspaceAddr: 0x7f00_0000_0000, buffer: ringBuffer, bufferOffset: 0 },
      {
        guestPhysAddr: DATA_REGION,
        size: 8 * MiB - 4096,
        userspaceAddr: 0x7f00_4000_0000,
        buffer: dataBuffer,
        bufferOffset: 4096,
      },
    ],
    { windowBytes: 2 * MiB }, // several windows over the data region
  );
  const layout = splitRingLayout(size);
  const tableAddr = RING_REGION + 0x8_0000;
  expect(indirectTablesBytes(size, 8)).toBeLessThan(0x8_0000);
  const rings = { descAddr: RING_REGION, availAddr: RING_REGION + layout.availOffset, usedAddr: RING_REGION + layout.usedOffset };
  const driver = new VringDriver({ memory, size, ...rings, eventIdx: options.eventIdx, indirect: { tableAddr, maxEntries: 8 } });
  const queue = new SplitVirtqueue({ memory, size, ...rings, eventIdx: options.eventIdx, indirectDesc: true });
  const data = new Uint8Array(dataBuffer, 4096);
  const dataOffset = (gpa: number) => gpa - DATA_REGION;

  // What the driver posted, per slot (slot = the data area a request uses while in flight).
  const freeSlots: number[] = Array.from({ length: size }, (_, i) => size - 1 - i);
  const slotToken = new Float64Array(size);
  const slotHash = new Uint32Array(size);
  const slotReadable = new Uint32Array(size);
  const slotWritableBytes = new Uint32Array(size);
  const slotDescriptors = new Uint8Array(size);
  const slotWritable: Array<Array<[number, number]>> = Array.from({ length: size }, () => []);
  const headSlot = new Int32Array(size).fill(-1);

  const result: RunResult = { completed: 0, kicks: 0, calls: 0, indirect: 0, deviceSleeps: 0, driverSleeps: 0 };
  let posted = 0;
  // Each side: awake (notifications off while busy), about to sleep (found no work; the other
  // side runs before it arms notifications: the race window), or asleep until its eventfd fires.
  let deviceAsleep = false;
  let deviceAboutToSleep = false;
  let kickEventfd = 0;
  let driverAsleep = false;
  let driverAboutToSleep = false;
  let callEventfd = 0;
  const requestsPool = Array.from({ length: size }, () => new VirtqRequest(MAX_SEGMENTS));
  const freeRequests = requestsPool.slice();
  const pending: VirtqRequest[] = [];
  const scratch = new Uint8Array(MAX_SEGMENTS * 512);
  const tokens = new Float64Array(size);
  const lens = new Uint32Array(size);
  const heads = new Uint32Array(size);
  const mismatches: string[] = [];

  queue.disableNotification();
  driver.disableCallbacks();

  function postSome(): number {
    let count = 0;
    // Sleeping peers: the guest submits in bursts, with pauses (burst 0) that let the device run dry.
    const burst = options.mode === 'interrupt' ? rand() % 8 : size;
    while (count < burst && posted < requests && freeSlots.length > 0) {
      const slot = freeSlots.pop()!;
      const token = posted;
      const readable = 1 + (rand() % 3);
      const writable = 1 + (rand() % 2);
      const indirect = rand() % 10 < 3;
      driver.beginChain(indirect);
      let gpa = SLOT_BASE + slot * SLOT_BYTES + (rand() % 64);
      let hash = 2166136261;
      let writableBytes = 0;
      slotWritable[slot].length = 0;
      for (let s = 0; s < readable + writable; s++) {
        const len = 1 + (rand() % 512);
        if (s < readable) {
          const base = dataOffset(gpa);
          for (let i = 0; i < len; i++) {
            const byte = (token * 31 + s * 7 + i) & 0xff;
            data[base + i] = byte;
            hash = fnv(hash, byte);
          }
        } else {
          slotWritable[slot].push([gpa, len]);
          writableBytes += len;
        }
        driver.addSegment(gpa, len, s >= readable);
        gpa += len + (rand() % 32);
      }
      const head = driver.endChain(token);
      if (head < 0) {
        freeSlots.push(slot);
        break;
      }
      if (indirect) result.indirect++;
      headSlot[head] = slot;
      slotToken[slot] = token;
      slotHash[slot] = hash;
      slotReadable[slot] = readable;
      slotWritableBytes[slot] = writableBytes;
      slotDescriptors[slot] = readable + writable;
      posted++;
      count++;
    }
    if (count > 0) {
      driver.publish();
      if (driver.needsKick()) {
        result.kicks++;
        kickEventfd++;
      }
    }
    return count;
  }

  function deviceStep(): number {
    if (deviceAsleep) {
      if (kickEventfd === 0) return 0;
      kickEventfd = 0; // epoll woke us; read the eventfd
      deviceAsleep = false;
      queue.disableNotification(); // busy: no kicks needed until we sleep again
    } else if (deviceAboutToSleep) {
      deviceAboutToSleep = false;
      if (!queue.enableNotificationAndRecheck()) {
        deviceAsleep = true;
        result.deviceSleeps++;
        return 0;
      }
      queue.disableNotification();
    }
    let work = 0;
    for (;;) {
      const req = freeRequests.pop();
      if (!req) break;
      if (!queue.pop(req)) {
        freeRequests.push(req);
        break;
      }
      const slot = headSlot[req.head];
      if (req.readableCount !== slotReadable[slot] || req.descriptorCount !== slotDescriptors[slot]) {
        mismatches.push(`head ${req.head}: ${req.readableCount}/${req.descriptorCount} segments`);
      }
      const n = req.gather(scratch, 0, 0, req.readableBytes);
      let hash = 2166136261;
      for (let i = 0; i < n; i++) hash = fnv(hash, scratch[i]);
      for (let i = 0; i < req.writableBytes; i++) scratch[i] = (hash + i) & 0xff;
      req.scatter(scratch, 0, 0, req.writableBytes);
      pending.push(req);
      work++;
    }
    if (queue.broken) mismatches.push(queue.describeBroken());
    if (pending.length > 0) {
      let count = pending.length;
      if (options.outOfOrder) {
        for (let i = pending.length - 1; i > 0; i--) {
          const j = rand() % (i + 1);
          const t = pending[i];
          pending[i] = pending[j];
          pending[j] = t;
        }
        count = rand() % (pending.length + 1); // hold the rest for later (possibly all of them)
      }
      for (let i = 0; i < count; i++) {
        const req = pending.shift()!;
        if (!queue.pushUsed(req.head, req.writableBytes)) mismatches.push(`pushUsed ${req.head}`);
        freeRequests.push(req);
      }
      queue.flushUsed();
      if (count > 0 && queue.needsCall()) {
        result.calls++;
        callEventfd++;
      }
      work += count;
    }
    if (work === 0 && pending.length === 0 && options.mode === 'interrupt') deviceAboutToSleep = true;
    return work;
  }

  function reapSome(): number {
    if (driverAsleep) {
      if (callEventfd === 0) return 0;
      callEventfd = 0;
      driverAsleep = false;
      driver.disableCallbacks();
    } else if (driverAboutToSleep) {
      driverAboutToSleep = false;
      if (!driver.enableCallbacksAndRecheck()) {
        driverAsleep = true;
        result.driverSleeps++;
        return 0;
      }
      driver.disableCallbacks();
    }
    const count = driver.reapUsed(tokens, lens, heads);
    for (let k = 0; k < count; k++) {
      const slot = headSlot[heads[k]];
      headSlot[heads[k]] = -1;
      if (tokens[k] !== slotToken[slot]) mismatches.push(`token ${tokens[k]} != ${slotToken[slot]}`);
      if (lens[k] !== slotWritableBytes[slot]) mismatches.push(`len ${lens[k]} != ${slotWritableBytes[slot]}`);
      let position = 0;
      for (const [gpa, len] of slotWritable[slot]) {
        const base = dataOffset(gpa);
        for (let i = 0; i < len; i++, position++) {
          if (data[base + i] !== ((slotHash[slot] + position) & 0xff)) {
            mismatches.push(`token ${tokens[k]}: byte ${position}`);
            break;
          }
        }
      }
      freeSlots.push(slot);
      result.completed++;
    }
    if (count === 0 && options.mode === 'interrupt' && driver.inFlight > 0) driverAboutToSleep = true;
    return count;
  }

  let idle = 0;
  while (result.completed < requests) {
    const progress = postSome() + deviceStep() + reapSome();
    // The no-lost-wakeup invariant, checked after every step: a sleeping side with work waiting
    // must have its eventfd signalled.
    if (deviceAsleep && kickEventfd === 0 && queue.availableCount() > 0) mismatches.push('device asleep on work, no kick');
    if (driverAsleep && callEventfd === 0 && driver.hasUsed()) mismatches.push('driver asleep on completions, no call');
    if (mismatches.length > 0) break;
    idle = progress === 0 ? idle + 1 : 0;
    if (idle > 64) throw new Error(`stalled: a lost wakeup (deviceAsleep=${deviceAsleep}, driverAsleep=${driverAsleep})`);
  }
  expect(mismatches.slice(0, 5)).toEqual([]);
  expect(queue.broken).toBe(false);
  expect(driver.broken).toBe(false);
  expect(queue.inFlight).toBe(0);
  expect(driver.inFlight).toBe(0);
  expect(driver.freeDescriptors).toBe(size);
  return result;
}

describe('driver ↔ virtqueue end to end', () => {
  it('100 000 requests, polling both sides, EVENT_IDX, in order: kicks and calls ≪ requests', { timeout: 60_000 }, () => {
    const r = run({ requests: 100_000, size: 256, eventIdx: true, mode: 'polling', outOfOrder: false, seed: 1 });
    expect(r.completed).toBe(100_000);
    expect(r.indirect).toBeGreaterThan(20_000);
    // Stale avail_event / used_event: at most one notification per 2^16 indices, plus the first call.
    expect(r.kicks).toBeLessThanOrEqual(3);
    expect(r.calls).toBeLessThanOrEqual(3);
  });

  it('100 000 requests, both sides sleeping, EVENT_IDX, out of order: no lost wakeups', { timeout: 60_000 }, () => {
    const r = run({ requests: 100_000, size: 128, eventIdx: true, mode: 'interrupt', outOfOrder: true, seed: 2 });
    console.log(r);
    expect(r.completed).toBe(100_000);
    expect(r.deviceSleeps).toBeGreaterThan(0);
    expect(r.driverSleeps).toBeGreaterThan(0);
    expect(r.kicks).toBeLessThan(r.completed / 4);
    expect(r.calls).toBeLessThan(r.completed / 2);
  });

  it('20 000 requests, both sides sleeping, without EVENT_IDX (ring flags), out of order', { timeout: 60_000 }, () => {
    const r = run({ requests: 20_000, size: 64, eventIdx: false, mode: 'interrupt', outOfOrder: true, seed: 3 });
    console.log(r);
    expect(r.completed).toBe(20_000);
    expect(r.kicks).toBeLessThan(r.completed);
  });

  it('20 000 requests, polling without EVENT_IDX: NO_NOTIFY / NO_INTERRUPT silence both sides', { timeout: 60_000 }, () => {
    const r = run({ requests: 20_000, size: 32, eventIdx: false, mode: 'polling', outOfOrder: true, seed: 4 });
    expect(r.completed).toBe(20_000);
    expect(r.kicks).toBe(0);
    expect(r.calls).toBe(0);
  });
});
