import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../../dist/dataplane/memory.js';
import { VirtqRequest } from '../../dist/dataplane/request.js';
import { BrokenReason, SplitVirtqueue } from '../../dist/dataplane/virtqueue.js';
import {
  INFLIGHT_VERSION,
  InflightQueue,
  inflightQueueBytes,
  inflightRegionBytes,
  readInflightQueue,
  type InflightSlice,
} from '../../dist/dataplane/inflight.js';
import { VringDriver, splitRingLayout } from '../../dist/frontend/vring-driver.js';

const MiB = 1 << 20;
const DATA = 0x20000;

/** A zeroed region for `queues` queues of `descNum` entries, and queue q's slice. */
function region(queues: number, descNum: number) {
  const buffer = new SharedArrayBuffer(inflightRegionBytes(queues, descNum));
  const slice = (q: number): InflightSlice => ({ buffer, offset: q * inflightQueueBytes(descNum), descNum });
  return { buffer, slice, view: new DataView(buffer) };
}

/** Writes a queue header and entries by hand, as a previous back-end (or a hostile front-end) left them. */
function writeQueue(
  view: DataView,
  base: number,
  header: { version: number; descNum: number; lastBatchHead: number; usedIdx: number },
  entries: Record<number, { inflight: number; next?: number; counter: bigint }>,
): void {
  view.setUint16(base + 8, header.version, true);
  view.setUint16(base + 10, header.descNum, true);
  view.setUint16(base + 12, header.lastBatchHead, true);
  view.setUint16(base + 14, header.usedIdx, true);
  for (const [index, entry] of Object.entries(entries)) {
    const at = base + 16 + 16 * Number(index);
    view.setUint8(at, entry.inflight);
    view.setUint16(at + 6, entry.next ?? 0, true);
    view.setBigUint64(at + 8, entry.counter, true);
  }
}

/** A guest ring in its own memory plus a back-end queue over it, optionally tracked. */
function ring(size: number) {
  const buffer = new SharedArrayBuffer(MiB);
  const memory = new GuestMemory([{ guestPhysAddr: 0, size: MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 }]);
  const layout = splitRingLayout(size);
  const rings = { descAddr: layout.descOffset, availAddr: layout.availOffset, usedAddr: layout.usedOffset };
  const driver = new VringDriver({ memory, size, ...rings, eventIdx: false });
  const backend = (lastAvailIdx: number) => new SplitVirtqueue({ memory, size, ...rings, lastAvailIdx, indirectDesc: false });
  return { driver, backend, memory };
}

/** Posts `count` one-segment writable requests whose tokens are their sequence numbers. */
function post(driver: VringDriver, first: number, count: number): void {
  for (let i = 0; i < count; i++) {
    driver.beginChain();
    driver.addSegment(DATA + 0x100 * ((first + i) % 64), 16, true);
    driver.endChain(first + i);
  }
  driver.publish();
}

describe('in-flight region layout', () => {
  it('sizes each queue as a 16-byte header plus 16 bytes per entry, rounded up to 64', () => {
    expect(inflightQueueBytes(1)).toBe(64);
    expect(inflightQueueBytes(3)).toBe(64);
    expect(inflightQueueBytes(4)).toBe(128); // 16 + 64 = 80 → 128
    expect(inflightQueueBytes(128)).toBe(2112); // 16 + 2048, already a multiple of 64
    expect(inflightQueueBytes(256)).toBe(4160);
    expect(inflightRegionBytes(2, 128)).toBe(2 * 2112);
  });

  it('records a fetch as counter + inflight flag and a completion as a batch link, at the spec offsets', () => {
    const { slice, view } = region(2, 8);
    const q1 = slice(1);
    const tracker = new InflightQueue(q1, 8);
    expect(tracker.recover(0, 0).fresh).toBe(true);
    expect(view.getUint16(q1.offset + 8, true)).toBe(INFLIGHT_VERSION);
    expect(view.getUint16(q1.offset + 10, true)).toBe(8);
    tracker.fetched(3);
    tracker.fetched(5);
    tracker.fetched(1);
    const entry = (i: number) => q1.offset + 16 + 16 * i;
    expect([3, 5, 1].map((i) => view.getUint8(entry(i)))).toEqual([1, 1, 1]);
    expect([3, 5, 1].map((i) => view.getBigUint64(entry(i) + 8, true))).toEqual([0n, 1n, 2n]);
    // Queue 0's part is untouched.
    expect(new Uint8Array(slice(0).buffer, 0, inflightQueueBytes(8)).every((b) => b === 0)).toBe(true);

    tracker.completed(5);
    tracker.completed(3);
    expect(view.getUint16(q1.offset + 12, true)).toBe(3); // last_batch_head
    expect(view.getUint16(entry(3) + 6, true)).toBe(5); // 3 → 5
    // Not yet published: still in flight.
    expect(view.getUint8(entry(5))).toBe(1);
    tracker.published(2);
    expect([3, 5, 1].map((i) => view.getUint8(entry(i)))).toEqual([0, 0, 1]);
    expect(view.getUint16(q1.offset + 14, true)).toBe(2); // used_idx
  });

  it('keeps the 64-bit counter exact across the low word (two u32 halves, no BigInt)', () => {
    const { slice, view } = region(1, 4);
    writeQueue(view, 0, { version: 1, descNum: 4, lastBatchHead: 0, usedIdx: 0 }, { 2: { inflight: 1, counter: 0xfffffffen } });
    const tracker = new InflightQueue(slice(0), 4);
    const recovery = tracker.recover(0, 0);
    expect(Array.from(recovery.resubmit)).toEqual([2]);
    tracker.fetched(0);
    tracker.fetched(1);
    const read = readInflightQueue(slice(0));
    expect(read.entries[0].counter).toBe(0xffffffffn);
    expect(read.entries[1].counter).toBe(0x100000000n);
  });
});

describe('in-flight recovery (vu_check_queue_inflights)', () => {
  it('a fresh region (version 0) is stamped and recovers nothing: the avail ring resumes at SET_VRING_BASE', () => {
    const { slice, view } = region(1, 8);
    view.setUint8(16 + 16 * 3, 1); // a flag left by a front-end in a region never used
    const recovery = new InflightQueue(slice(0), 8).recover(5, 5);
    expect(recovery).toMatchObject({ error: '', fresh: true, lastAvailIdx: 5, batchFixedUp: 0 });
    expect(recovery.resubmit.length).toBe(0);
    const read = readInflightQueue(slice(0));
    expect(read).toMatchObject({ version: 1, descNum: 8, usedIdx: 5 });
    expect(read.entries.every((entry) => entry.inflight === 0)).toBe(true);
  });

  it('resubmits the entries still in flight in ascending counter order, resuming after them', () => {
    const { slice, view } = region(1, 8);
    writeQueue(
      view,
      0,
      { version: 1, descNum: 8, lastBatchHead: 0, usedIdx: 20 },
      {
        6: { inflight: 1, counter: 9n },
        1: { inflight: 1, counter: 0x100000000n }, // high word decides
        4: { inflight: 1, counter: 7n },
        2: { inflight: 0, counter: 8n }, // completed
      },
    );
    // SET_VRING_BASE said 20 (QEMU sets used->idx after a lost back-end); it is ignored.
    const recovery = new InflightQueue(slice(0), 8).recover(20, 20);
    expect(recovery.error).toBe('');
    expect(recovery.fresh).toBe(false);
    expect(Array.from(recovery.resubmit)).toEqual([4, 6, 1]);
    expect(recovery.lastAvailIdx).toBe(23);
  });

  it('fixes up the last batch when used->idx was published but the flags were not cleared', () => {
    const { slice, view } = region(1, 8);
    // Batch of 2 published (used->idx 12, recorded used_idx 10): heads 4 → 6; head 1 still running.
    writeQueue(
      view,
      0,
      { version: 1, descNum: 8, lastBatchHead: 4, usedIdx: 10 },
      { 4: { inflight: 1, next: 6, counter: 3n }, 6: { inflight: 1, next: 0, counter: 2n }, 1: { inflight: 1, counter: 1n } },
    );
    const recovery = new InflightQueue(slice(0), 8).recover(12, 12);
    expect(recovery.error).toBe('');
    expect(recovery.batchFixedUp).toBe(2);
    expect(Array.from(recovery.resubmit)).toEqual([1]);
    expect(recovery.lastAvailIdx).toBe(13);
    const read = readInflightQueue(slice(0));
    expect(read.usedIdx).toBe(12);
    expect([4, 6, 1].map((i) => read.entries[i].inflight)).toEqual([0, 0, 1]);
  });

  it('wraps indexes at 2^16', () => {
    const { slice, view } = region(1, 4);
    writeQueue(
      view,
      0,
      { version: 1, descNum: 4, lastBatchHead: 2, usedIdx: 0xffff },
      {
        2: { inflight: 1, next: 0, counter: 5n },
        3: { inflight: 1, counter: 6n },
      },
    );
    const recovery = new InflightQueue(slice(0), 4).recover(0, 0);
    expect(recovery.batchFixedUp).toBe(1);
    expect(Array.from(recovery.resubmit)).toEqual([3]);
    expect(recovery.lastAvailIdx).toBe(1);
  });

  const hostile: Array<[string, (view: DataView) => void, number, RegExp]> = [
    [
      'an unknown version',
      (v) => writeQueue(v, 0, { version: 7, descNum: 8, lastBatchHead: 0, usedIdx: 0 }, {}),
      8,
      /unknown version 7/,
    ],
    [
      'a desc_num that is not the queue_size',
      (v) => writeQueue(v, 0, { version: 1, descNum: 9, lastBatchHead: 0, usedIdx: 0 }, {}),
      8,
      /9 entries/,
    ],
    [
      'a last batch larger than the ring',
      (v) => writeQueue(v, 0, { version: 1, descNum: 8, lastBatchHead: 0, usedIdx: 0x8000 }, {}),
      8,
      /exceeds the ring size/,
    ],
    [
      'a batch head beyond the ring',
      (v) => writeQueue(v, 0, { version: 1, descNum: 8, lastBatchHead: 0x7777, usedIdx: 99 }, {}),
      8,
      /head 30583/,
    ],
    [
      'a batch link beyond the ring',
      (v) =>
        writeQueue(
          v,
          0,
          { version: 1, descNum: 8, lastBatchHead: 1, usedIdx: 98 },
          { 1: { inflight: 1, next: 200, counter: 0n } },
        ),
      8,
      /head 200/,
    ],
    [
      'a flag that is neither 0 nor 1',
      (v) => writeQueue(v, 0, { version: 1, descNum: 8, lastBatchHead: 0, usedIdx: 100 }, { 3: { inflight: 0xff, counter: 0n } }),
      8,
      /flag 255/,
    ],
    [
      'flags on more descriptors than the ring has (entries beyond the ring size)',
      (v) =>
        writeQueue(
          v,
          0,
          { version: 1, descNum: 8, lastBatchHead: 0, usedIdx: 100 },
          { 0: { inflight: 1, counter: 0n }, 6: { inflight: 1, counter: 1n } },
        ),
      4,
      /entry 6 .* ring has 4/,
    ],
  ];
  for (const [name, scribble, ringSize, message] of hostile) {
    it(`refuses ${name} with a reason, without touching the ring`, () => {
      const { slice, view } = region(1, 8);
      scribble(view);
      const recovery = new InflightQueue(slice(0), ringSize).recover(100, 100);
      expect(recovery.error).toMatch(message);
      expect(recovery.resubmit.length).toBe(0);
    });
  }

  it('a hostile region breaks that queue (INFLIGHT_REGION) with the reason in describeBroken()', () => {
    const { slice, view } = region(1, 8);
    writeQueue(view, 0, { version: 1, descNum: 8, lastBatchHead: 0, usedIdx: 0 }, { 5: { inflight: 3, counter: 0n } });
    const { driver, backend } = ring(8);
    post(driver, 0, 2);
    const queue = backend(0);
    const recovery = queue.attachInflight(new InflightQueue(slice(0), 8));
    expect(recovery?.error).toMatch(/flag 3/);
    expect(queue.broken).toBe(true);
    expect(queue.brokenReason).toBe(BrokenReason.INFLIGHT_REGION);
    expect(queue.describeBroken()).toMatch(/INFLIGHT_REGION: in-flight entry 5 has flag 3/);
    expect(queue.pop(new VirtqRequest(4))).toBe(false);
  });

  it('a ring size above the region’s queue_size is refused before anything is read', () => {
    const { slice } = region(1, 8);
    expect(() => new InflightQueue(slice(0), 16)).toThrow(/does not fit/);
    expect(() => new InflightQueue({ ...slice(0), offset: 4 }, 8)).toThrow(/multiple of 8/);
    expect(() => new InflightQueue({ ...slice(0), offset: 64 }, 8)).toThrow(/exceeds/);
  });
});

describe('restart with out-of-order completions: exactly once', () => {
  it('without tracking, resuming at used->idx runs a completed request again and loses one in flight', () => {
    const { driver, backend } = ring(8);
    post(driver, 0, 4);
    const before = backend(0);
    const reqs = Array.from({ length: 4 }, () => new VirtqRequest(4));
    for (const r of reqs) expect(before.pop(r)).toBe(true);
    // Out of order: the 2nd and 4th complete, then the back-end dies.
    before.pushUsed(reqs[1].head, 0);
    before.pushUsed(reqs[3].head, 0);
    before.flushUsed();
    // QEMU resumes at used->idx = 2: the avail entries 2 and 3 are fetched again.
    const after = backend(2);
    const again = [new VirtqRequest(4), new VirtqRequest(4)];
    expect(after.pop(again[0])).toBe(true);
    expect(after.pop(again[1])).toBe(true);
    // Head of request 3 (already completed) runs twice; requests 0 is never seen again.
    expect(again.map((r) => r.head)).toEqual([reqs[2].head, reqs[3].head]);
  });

  it('with tracking, the restarted queue runs exactly the requests still in flight, oldest first, then new ones', () => {
    const { slice } = region(1, 8);
    const { driver, backend } = ring(8);
    post(driver, 0, 5);
    const before = backend(0);
    before.attachInflight(new InflightQueue(slice(0), 8));
    const reqs = Array.from({ length: 5 }, () => new VirtqRequest(4));
    for (const r of reqs) expect(before.pop(r)).toBe(true);
    const completed = new Set<number>();
    for (const k of [3, 1]) {
      before.pushUsed(reqs[k].head, 0);
      completed.add(reqs[k].head);
    }
    before.flushUsed();
    // A completion pushed but never published: the guest never saw it, so it must run again.
    before.pushUsed(reqs[4].head, 0);
    // Killed here. The guest posts one more request meanwhile.
    post(driver, 5, 1);

    const after = backend(2); // SET_VRING_BASE = used->idx, as QEMU sends it
    const recovery = after.attachInflight(new InflightQueue(slice(0), 8))!;
    expect(recovery.error).toBe('');
    expect(recovery.fresh).toBe(false);
    expect(after.resubmitPending).toBe(3);
    expect(after.enableNotificationAndRecheck()).toBe(true); // resubmits count as work
    const seen: number[] = [];
    const r = new VirtqRequest(4);
    while (after.pop(r)) {
      seen.push(r.head);
      after.pushUsed(r.head, 0);
    }
    after.flushUsed();
    expect(after.broken).toBe(false);
    // 0, 2, 4 (in fetch order), then the new request; never 1 or 3.
    expect(seen.slice(0, 3)).toEqual([reqs[0].head, reqs[2].head, reqs[4].head]);
    expect(seen.length).toBe(4);
    for (const head of seen.slice(0, 3)) expect(completed.has(head)).toBe(false);
    // Every posted request completed exactly once, as the guest sees it.
    const tokens = new Float64Array(16);
    const lens = new Uint32Array(16);
    const got = driver.reapUsed(tokens, lens);
    expect(Array.from(tokens.subarray(0, got)).sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(readInflightQueue(slice(0)).entries.every((e) => e.inflight === 0)).toBe(true);
  });

  it('a restart right after a publish whose flags were not cleared yet resubmits nothing twice', () => {
    const { slice, buffer } = region(1, 8);
    const { driver, backend } = ring(8);
    post(driver, 0, 3);
    const before = backend(0);
    before.attachInflight(new InflightQueue(slice(0), 8));
    const reqs = Array.from({ length: 3 }, () => new VirtqRequest(4));
    for (const req of reqs) before.pop(req);
    before.pushUsed(reqs[2].head, 0);
    before.pushUsed(reqs[0].head, 0);
    before.flushUsed();
    // Undo the flag clearing and used_idx update, as a kill between them would have left it.
    const view = new DataView(buffer);
    view.setUint8(16 + 16 * reqs[2].head, 1);
    view.setUint8(16 + 16 * reqs[0].head, 1);
    view.setUint16(14, 0, true);

    const after = backend(2);
    const recovery = after.attachInflight(new InflightQueue(slice(0), 8))!;
    expect(recovery.batchFixedUp).toBe(2);
    expect(Array.from(recovery.resubmit)).toEqual([reqs[1].head]);
    expect(recovery.lastAvailIdx).toBe(3);
  });
});
