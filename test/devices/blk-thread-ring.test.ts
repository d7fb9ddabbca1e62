// The thread-pool ring on its own (src/devices/blk/thread-ring.ts): the Uring contract the
// io_uring engine relies on, records the ring refuses before any thread sees them, the in-flight
// budget, memory lists that change between records, and a close that ends its threads and fds.
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { native } from '../../dist/native.js';
import { ThreadPoolRing } from '../../dist/devices/blk/thread-ring.js';
import { BlkRig, S, mismatch, pattern } from './blk-rig.js';

const Op = { NOP: 0, READV: 1, WRITEV: 2, FDATASYNC: 4 };
const EFAULT = 14;
const EINVAL = 22;

let dir: string;
let path: string;
let fd: number;
let ring: ThreadPoolRing | null = null;

const openFds = () => readdirSync('/proc/self/fd').length;
const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The fd count once threads that ended have finished tearing down (their loop fds go last). */
async function settledFds(): Promise<number> {
  let count = openFds();
  for (let i = 0; i < 40; i++) {
    await pause(50);
    const now = openFds();
    if (now === count) return now;
    count = now;
  }
  return count;
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vut-thread-ring-'));
  path = join(dir, 'disk.img');
  writeFileSync(path, Buffer.alloc(1 << 20));
  fd = openSync(path, 'r+');
});

afterEach(async () => {
  if (ring) {
    const exited = once(ring.dispatcherThread, 'exit');
    ring.close();
    await exited;
  }
  ring = null;
  closeSync(fd);
  rmSync(dir, { recursive: true, force: true });
});

function record(
  sqes: Uint32Array,
  i: number,
  op: number,
  offset: number,
  userData: number,
  iovecCount: number,
  firstIovec: number,
): void {
  sqes.set([op, fd, offset, 0, userData, iovecCount, firstIovec, 0], i * 8);
}

/** Reaps until `count` completions arrived: Map user_data → res. */
function reapAll(r: ThreadPoolRing, count: number): Map<number, number> {
  const cqes = new Int32Array(2 * 64);
  const done = new Map<number, number>();
  while (done.size < count) {
    r.wait(1);
    const n = r.reap(cqes, 64);
    for (let i = 0; i < n; i++) done.set(cqes[2 * i], cqes[2 * i + 1]);
  }
  return done;
}

describe('ThreadPoolRing', () => {
  it('runs records through the pool and reports each by its user_data; refuses bad records itself', async () => {
    ring = await ThreadPoolRing.open({ threads: 2, entries: 16 });
    const memory = new SharedArrayBuffer(65536);
    new Uint8Array(memory).fill(0x3c, 0, 8192);
    ring.setRegions([memory]);
    const sqes = new Uint32Array(6 * 8);
    const iovecs = new Uint32Array(2 * 4);
    iovecs.set([0, 0, 0, 8192], 0); // region 0, offset 0, 8 KiB
    iovecs.set([0, 16384, 0, 8192], 4); // region 0 at 16 KiB
    record(sqes, 0, Op.WRITEV, 4096, 101, 1, 0);
    record(sqes, 1, Op.FDATASYNC, 0, 102, 0, 0);
    record(sqes, 2, Op.READV, 4096, 103, 1, 1);
    record(sqes, 3, Op.READV, 0, 104, 1025, 0); // more than IOV_MAX
    record(sqes, 4, Op.READV, 0, 105, 2, 1); // iovecs beyond the array
    record(sqes, 5, 77, 0, 106, 3, 0); // unknown opcode (its iovec words ignored): the pool's blockIo says EINVAL
    expect(ring.submit(sqes, iovecs, 2)).toBe(2);
    expect(reapAll(ring, 2)).toEqual(
      new Map([
        [101, 8192],
        [102, 0],
      ]),
    );
    expect(ring.submit(sqes.subarray(16), iovecs, 4)).toBe(4);
    expect(reapAll(ring, 4)).toEqual(
      new Map([
        [103, 8192],
        [104, -EINVAL],
        [105, -EFAULT],
        [106, -EINVAL],
      ]),
    );
    // A NOP that claims iovecs, then a write on the same lane: the lane still parses the write.
    record(sqes, 0, Op.NOP, 0, 107, 2, 0);
    record(sqes, 1, Op.WRITEV, 65536, 108, 1, 0);
    expect(ring.submit(sqes, iovecs, 2)).toBe(2);
    expect(reapAll(ring, 2)).toEqual(
      new Map([
        [107, 0],
        [108, 8192],
      ]),
    );
    expect(
      readFileSync(path)
        .subarray(65536, 65536 + 8192)
        .every((x) => x === 0x3c),
    ).toBe(true);
    expect(new Uint8Array(memory, 16384, 8192).every((x) => x === 0x3c)).toBe(true);
    expect(
      readFileSync(path)
        .subarray(4096, 4096 + 8192)
        .every((x) => x === 0x3c),
    ).toBe(true);
    expect(() => ring!.submit(sqes, iovecs, 7)).toThrow(RangeError);
    expect(() => ring!.reap(new Int32Array(2), 2)).toThrow(RangeError);
  });

  it('with inlineReadBytes, runs small cached reads in submit() itself; the rest goes to the pool', async () => {
    writeFileSync(path, Buffer.alloc(1 << 20, 0x42)); // just written: in the page cache
    ring = await ThreadPoolRing.open({ threads: 2, entries: 16, inlineReadBytes: 4096 });
    const memory = new SharedArrayBuffer(65536);
    new Uint8Array(memory).fill(0x17, 32768, 36864);
    ring.setRegions([memory]);
    const completionFd = ring.eventfd();
    native.eventfdRead(completionFd);
    const sqes = new Uint32Array(4 * 8);
    const iovecs = new Uint32Array(3 * 4);
    iovecs.set([0, 0, 0, 4096], 0);
    iovecs.set([0, 8192, 0, 8192], 4);
    iovecs.set([0, 32768, 0, 4096], 8);
    record(sqes, 0, Op.READV, 4096, 1, 1, 0);
    record(sqes, 1, Op.READV, 8192, 2, 1, 1); // larger than inlineReadBytes
    record(sqes, 2, Op.WRITEV, 65536, 3, 1, 2);
    record(sqes, 3, Op.READV, (1 << 20) - 1024, 4, 1, 0); // short at EOF, inline too
    // Inline reads alone: done when submit() returns, reaped at once, no pool thread involved.
    expect(ring.submit(sqes, iovecs, 1)).toBe(1);
    expect(new Uint8Array(memory, 0, 4096).every((x) => x === 0x42)).toBe(true);
    const cqes = new Int32Array(2 * 8);
    expect(ring.reap(cqes, 8)).toBe(1);
    expect([...cqes.subarray(0, 2)]).toEqual([1, 4096]);
    expect(native.eventfdRead(completionFd)).toBe(0); // nobody was woken
    // Mixed: the pool serves what does not run inline; every record is reported once.
    expect(ring.submit(sqes, iovecs, 4)).toBe(4);
    expect(reapAll(ring, 4)).toEqual(
      new Map([
        [1, 4096],
        [2, 8192],
        [3, 4096],
        [4, 1024],
      ]),
    );
    expect(ring.reap(cqes, 8)).toBe(0);
    expect(new Uint8Array(memory, 8192, 8192).every((x) => x === 0x42)).toBe(true);
    expect(
      readFileSync(path)
        .subarray(65536, 65536 + 4096)
        .every((x) => x === 0x17),
    ).toBe(true);
    // While the engine reaps (its resubmits), what completes inline is announced on the eventfd.
    native.eventfdRead(completionFd);
    ring.announceImmediate = true;
    expect(ring.submit(sqes, iovecs, 1)).toBe(1);
    ring.announceImmediate = false;
    expect(native.eventfdRead(completionFd)).toBe(1);
    expect(ring.reap(cqes, 8)).toBe(1);
    expect([...cqes.subarray(0, 2)]).toEqual([1, 4096]);
  });

  it('hands reads to the pool, and stops trying them inline, where the file system cannot read without blocking (tmpfs)', async () => {
    const shm = join('/dev/shm', `vut-thread-ring-${process.pid}.img`);
    writeFileSync(shm, Buffer.alloc(65536, 0x33));
    const shmFd = openSync(shm, 'r');
    try {
      ring = await ThreadPoolRing.open({ threads: 1, entries: 16, inlineReadBytes: 4096 });
      const memory = new SharedArrayBuffer(8192);
      ring.setRegions([memory]);
      const sqes = Uint32Array.of(Op.READV, shmFd, 0, 0, 1, 1, 0, 0);
      const iovecs = Uint32Array.of(0, 0, 0, 4096);
      const completionFd = ring.eventfd();
      expect(ring.inlineReadLimit).toBe(4096);
      for (let round = 0; round < 3; round++) {
        native.eventfdRead(completionFd);
        sqes[4] = round;
        expect(ring.submit(sqes, iovecs, 1)).toBe(1);
        expect(reapAll(ring, 1)).toEqual(new Map([[round, 4096]]));
        expect(native.eventfdRead(completionFd)).toBe(1); // served by a pool thread every time
        expect(ring.inlineReadLimit).toBe(0);
      }
      expect(new Uint8Array(memory, 0, 4096).every((x) => x === 0x33)).toBe(true);
    } finally {
      closeSync(shmFd);
      rmSync(shm, { force: true });
    }
  });

  it('runs inline no more reads than its in-flight budget takes', async () => {
    writeFileSync(path, Buffer.alloc(1 << 20, 0x42));
    ring = await ThreadPoolRing.open({ threads: 1, entries: 2, inlineReadBytes: 4096 }); // budget 4
    const memory = new SharedArrayBuffer(10 * 4096);
    ring.setRegions([memory]);
    const sqes = new Uint32Array(10 * 8);
    const iovecs = new Uint32Array(10 * 4);
    for (let i = 0; i < 10; i++) {
      iovecs.set([0, i * 4096, 0, 4096], i * 4);
      record(sqes, i, Op.READV, 0, i, 1, i);
    }
    expect(ring.submit(sqes, iovecs, 10)).toBe(4);
    // The reads the budget refused did not run.
    expect(new Uint8Array(memory, 4 * 4096).every((x) => x === 0)).toBe(true);
    expect([...reapAll(ring, 4).keys()].sort()).toEqual([0, 1, 2, 3]);
    expect(ring.submit(sqes.subarray(4 * 8), iovecs, 6)).toBe(4);
    expect([...reapAll(ring, 4).keys()].sort()).toEqual([4, 5, 6, 7]);
    await expect(ThreadPoolRing.open({ threads: 1, entries: 2, inlineReadBytes: -1 })).rejects.toThrow(RangeError);
  });

  it('takes no more records than its in-flight budget, and more once completions are reaped', async () => {
    ring = await ThreadPoolRing.open({ threads: 1, entries: 2 }); // budget 4
    ring.setRegions([]);
    const sqes = new Uint32Array(10 * 8);
    for (let i = 0; i < 10; i++) record(sqes, i, Op.NOP, 0, i, 0, 0);
    expect(ring.submit(sqes, new Uint32Array(0), 10)).toBe(4);
    const first = reapAll(ring, 4);
    expect([...first.keys()].sort()).toEqual([0, 1, 2, 3]);
    expect(ring.submit(sqes.subarray(4 * 8), new Uint32Array(0), 6)).toBe(4);
    expect([...reapAll(ring, 4).keys()].sort()).toEqual([4, 5, 6, 7]);
  });

  it('a record uses the region list in force when it was submitted', async () => {
    ring = await ThreadPoolRing.open({ threads: 2, entries: 64 });
    const a = new SharedArrayBuffer(4096);
    const b = new SharedArrayBuffer(4096);
    new Uint8Array(a).fill(0xaa);
    new Uint8Array(b).fill(0xbb);
    const sqes = new Uint32Array(8);
    const iovecs = Uint32Array.of(0, 0, 0, 4096);
    ring.setRegions([a]);
    record(sqes, 0, Op.WRITEV, 0, 1, 1, 0);
    expect(ring.submit(sqes, iovecs, 1)).toBe(1);
    ring.setRegions([b]);
    record(sqes, 0, Op.WRITEV, 4096, 2, 1, 0);
    expect(ring.submit(sqes, iovecs, 1)).toBe(1);
    ring.setRegions([]);
    record(sqes, 0, Op.WRITEV, 8192, 3, 1, 0);
    expect(ring.submit(sqes, iovecs, 1)).toBe(1);
    expect(reapAll(ring, 3)).toEqual(
      new Map([
        [1, 4096],
        [2, 4096],
        [3, -EFAULT],
      ]),
    );
    const file = readFileSync(path);
    expect(file.subarray(0, 4096).every((x) => x === 0xaa)).toBe(true);
    expect(file.subarray(4096, 8192).every((x) => x === 0xbb)).toBe(true);
    expect(file.subarray(8192, 12288).every((x) => x === 0)).toBe(true);
  });

  it('close waits for records in flight, ends the dispatcher and its pool, and closes its fds', async () => {
    writeFileSync(path, Buffer.alloc(1 << 20, 0x77));
    const baseline = await settledFds();
    const r = await ThreadPoolRing.open({ threads: 3, entries: 64 });
    expect(openFds()).toBeGreaterThan(baseline);
    const memory = new SharedArrayBuffer(1 << 20);
    r.setRegions([memory]);
    const sqes = new Uint32Array(64 * 8);
    const iovecs = new Uint32Array(64 * 4);
    for (let i = 0; i < 64; i++) {
      iovecs.set([0, i * 16384, 0, 16384], i * 4);
      record(sqes, i, Op.READV, 0, i, 1, i);
    }
    const exited = new Promise<number>((resolve) => r.dispatcherThread.once('exit', resolve));
    expect(r.submit(sqes, iovecs, 64)).toBe(64);
    r.close();
    // Every read had finished when close() returned, though none was reaped.
    expect(new Uint8Array(memory).every((x) => x === 0x77)).toBe(true);
    r.close(); // idempotent
    expect(() => r.submit(sqes, iovecs, 1)).toThrow(/closed/);
    expect(await exited).toBe(0);
    expect(await settledFds()).toBe(baseline);
  });

  it('a data plane on the threads engine leaves no fd behind once stopped (worker, dispatcher and pool gone)', async () => {
    const baseline = await settledFds();
    const rig = await BlkRig.start(
      { engine: { engine: 'threads', path, threads: 3 }, capacityBytes: 1 << 20, mode: 'interrupt' },
      dir,
    );
    const guest = await rig.connect();
    const data = pattern(65536, 51);
    expect((await guest.write(0, data)).status).toBe(S.OK);
    expect(mismatch((await guest.read(0, data.length)).data, data)).toBe(-1);
    guest.close();
    await rig.stop(false);
    expect(await settledFds()).toBe(baseline);
  });
});
