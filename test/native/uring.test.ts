// io_uring through request records (layout in native/ring/uring.cc).
import { closeSync, fstatSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker } from 'node:worker_threads';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { native, type Uring } from '../../dist/native.js';
import { thrown } from './preamble.js';

const Op = native.recordLayout.opcode;
const EFAULT = 14;
const EINVAL = 22;
const { sqeWords: SQE_WORDS, iovecWords: IOVEC_WORDS } = native.recordLayout;
const GiB = 2 ** 30;

interface Request {
  op: number;
  fd?: number;
  offset?: number;
  userData: number;
  iovecs?: { region: number; offset: number; length: number }[];
  length?: number;
}

/** Encodes requests the way src/devices/blk/uring-engine.ts does. */
function encode(requests: Request[]) {
  const sqes = new Uint32Array(requests.length * SQE_WORDS);
  const iovecCount = requests.reduce((sum, r) => sum + (r.iovecs?.length ?? 0), 0);
  const iovecs = new Uint32Array(iovecCount * IOVEC_WORDS);
  let nextIovec = 0;
  requests.forEach((request, i) => {
    const offset = request.offset ?? 0;
    sqes.set(
      [
        request.op,
        request.fd ?? 0,
        offset % 2 ** 32,
        Math.floor(offset / 2 ** 32),
        request.userData,
        request.iovecs?.length ?? 0,
        nextIovec,
        request.length ?? 0,
      ],
      i * SQE_WORDS,
    );
    for (const iovec of request.iovecs ?? []) {
      iovecs.set(
        [iovec.region, iovec.offset % 2 ** 32, Math.floor(iovec.offset / 2 ** 32), iovec.length],
        nextIovec++ * IOVEC_WORDS,
      );
    }
  });
  return { sqes, iovecs };
}

function run(ring: Uring, requests: Request[]): Map<number, number> {
  const { sqes, iovecs } = encode(requests);
  expect(ring.submit(sqes, iovecs, requests.length)).toBe(requests.length);
  return reapAll(ring, requests.length);
}

function reapAll(ring: Uring, count: number): Map<number, number> {
  const results = new Map<number, number>();
  const cqes = new Int32Array(64);
  while (results.size < count) {
    ring.wait(count - results.size);
    const reaped = ring.reap(cqes, 32);
    for (let i = 0; i < reaped; i++) results.set(cqes[2 * i] >>> 0, cqes[2 * i + 1]);
  }
  return results;
}

function mapMemfd(name: string, size: number) {
  const fd = native.memfdCreate(name, size);
  const region = native.mmapShared(fd, size, 0, true);
  native.close(fd);
  return region;
}

describe('recordLayout', () => {
  it('is the layout uring.cc documents: 8-word SQE records, 4-word IOVEC records, 1024 iovecs at most', () => {
    expect(native.recordLayout).toEqual({
      sqeWords: 8,
      iovecWords: 4,
      maxIovecs: 1024,
      sqe: { opcode: 0, fd: 1, offsetLow: 2, offsetHigh: 3, userData: 4, iovecCount: 5, firstIovec: 6, length: 7 },
      iovec: { region: 0, offsetLow: 1, offsetHigh: 2, length: 3 },
      opcode: { NOP: 0, READV: 1, WRITEV: 2, FSYNC: 3, FDATASYNC: 4, PUNCH_HOLE: 5, ZERO_RANGE: 6 },
    });
  });
});

describe('Uring', () => {
  let dir: string;
  let rings: Uring[] = [];
  const open = (entries = 8, options?: ConstructorParameters<typeof native.Uring>[1]) => {
    const ring = new native.Uring(entries, options);
    rings.push(ring);
    return ring;
  };
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'ring-uring-'));
  });
  afterEach(() => {
    rings.forEach((ring) => ring.close());
    rings = [];
    rmSync(dir, { recursive: true, force: true });
  });

  it('completes a NOP with its user_data', () => {
    const ring = open();
    expect(run(ring, [{ op: Op.NOP, userData: 0xdeadbeef }])).toEqual(new Map([[0xdeadbeef, 0]]));
  });

  it('writes a file from a region and reads it back into another place', () => {
    const ring = open();
    const region = mapMemfd('ring-uring-io', 1 << 20);
    const bytes = Buffer.from(region);
    for (let i = 0; i < 8192; i++) bytes[4096 + i] = (i * 7) & 0xff;
    ring.setRegions([region]);
    const path = join(dir, 'disk.img');
    writeFileSync(path, Buffer.alloc(1 << 16));
    const fd = openSync(path, 'r+');
    try {
      const written = run(ring, [
        {
          op: Op.WRITEV,
          fd,
          offset: 512,
          userData: 1,
          iovecs: [
            { region: 0, offset: 4096, length: 4096 },
            { region: 0, offset: 8192, length: 4096 },
          ],
        },
      ]);
      expect(written.get(1)).toBe(8192);
      expect(
        run(ring, [
          { op: Op.FSYNC, fd, userData: 2 },
          { op: Op.FDATASYNC, fd, userData: 3 },
        ]),
      ).toEqual(
        new Map([
          [2, 0],
          [3, 0],
        ]),
      );
      const file = readFileSync(path);
      expect(file.subarray(512, 512 + 8192).equals(bytes.subarray(4096, 4096 + 8192))).toBe(true);
      expect(file[511]).toBe(0);

      const read = run(ring, [
        {
          op: Op.READV,
          fd,
          offset: 512 + 100,
          userData: 4,
          iovecs: [
            { region: 0, offset: 65536, length: 100 },
            { region: 0, offset: 70000, length: 50 },
          ],
        },
      ]);
      expect(read.get(4)).toBe(150);
      expect(bytes.subarray(65536, 65636).equals(file.subarray(612, 712))).toBe(true);
      expect(bytes.subarray(70000, 70050).equals(file.subarray(712, 762))).toBe(true);
    } finally {
      closeSync(fd);
    }
  });

  it('reaches region offsets above 4 GiB', () => {
    const ring = open();
    const size = 5 * GiB;
    const region = mapMemfd('ring-uring-5g', size);
    ring.setRegions([new SharedArrayBuffer(16), region]);
    const path = join(dir, 'high.img');
    writeFileSync(path, Buffer.from('high memory'));
    const fd = openSync(path, 'r');
    try {
      const target = size - 4096 + 5;
      expect(run(ring, [{ op: Op.READV, fd, userData: 9, iovecs: [{ region: 1, offset: target, length: 11 }] }])).toEqual(
        new Map([[9, 11]]),
      );
      expect(Buffer.from(region, target, 11).toString()).toBe('high memory');
    } finally {
      closeSync(fd);
    }
  });

  it('punches holes and zeroes ranges', () => {
    const ring = open();
    const path = join(dir, 'sparse.img');
    writeFileSync(path, Buffer.alloc(1 << 16, 0xff));
    const fd = openSync(path, 'r+');
    try {
      const results = run(ring, [
        { op: Op.PUNCH_HOLE, fd, offset: 4096, length: 8192, userData: 1 },
        { op: Op.ZERO_RANGE, fd, offset: 32768, length: 4096, userData: 2 },
      ]);
      expect(results).toEqual(
        new Map([
          [1, 0],
          [2, 0],
        ]),
      );
      const file = readFileSync(path);
      expect(fstatSync(fd).size).toBe(1 << 16); // KEEP_SIZE
      expect(file.subarray(4096, 12288).every((b) => b === 0)).toBe(true);
      expect(file.subarray(32768, 36864).every((b) => b === 0)).toBe(true);
      expect(file[4095]).toBe(0xff);
      expect(file[12288]).toBe(0xff);
    } finally {
      closeSync(fd);
    }
  });

  it('completes bad records with -EFAULT or -EINVAL without the kernel', () => {
    const ring = open();
    ring.setRegions([mapMemfd('ring-uring-bad', 65536)]);
    const requests: Request[] = [
      { op: Op.READV, userData: 1, iovecs: [{ region: 1, offset: 0, length: 1 }] },
      { op: Op.READV, userData: 2, iovecs: [{ region: 0, offset: 65536 - 10, length: 11 }] },
      { op: Op.WRITEV, userData: 3, iovecs: [{ region: 0, offset: 2 ** 40, length: 1 }] },
      { op: 99, userData: 4 },
      { op: Op.READV, userData: 5, iovecs: Array(1025).fill({ region: 0, offset: 0, length: 1 }) },
    ];
    const { sqes, iovecs } = encode(requests);
    // A sixth record whose iovecs lie past the end of the iovec array.
    const withStray = new Uint32Array(sqes.length + SQE_WORDS);
    withStray.set(sqes);
    withStray.set([Op.READV, 0, 0, 0, 6, 2, iovecs.length / IOVEC_WORDS - 1, 0], sqes.length);
    expect(ring.submit(withStray, iovecs, 6)).toBe(6);
    const cqes = new Int32Array(12);
    expect(ring.reap(cqes, 6)).toBe(6); // no wait needed
    expect([...cqes]).toEqual([1, -EFAULT, 2, -EFAULT, 3, -EFAULT, 4, -EINVAL, 5, -EINVAL, 6, -EFAULT]);
  });

  it('fails iovecs when no regions are set', () => {
    const ring = open();
    const results = run(ring, [{ op: Op.READV, userData: 1, iovecs: [{ region: 0, offset: 0, length: 0 }] }]);
    expect(results.get(1)).toBe(-EFAULT);
  });

  it('signals its eventfd when completions are posted', () => {
    const ring = open();
    const eventfd = ring.eventfd();
    expect(ring.eventfd()).toBe(eventfd);
    expect(native.eventfdRead(eventfd)).toBe(0);
    const { sqes, iovecs } = encode([
      { op: Op.NOP, userData: 1 },
      { op: Op.NOP, userData: 2 },
    ]);
    ring.submit(sqes, iovecs, 2);
    ring.wait(2);
    expect(native.eventfdRead(eventfd)).toBeGreaterThan(0);
    expect(ring.reap(new Int32Array(4), 2)).toBe(2);
  });

  it('queues no more than the SQ holds and no more than the CQ can complete', () => {
    const ring = open(4); // 4 SQ entries, 8 CQ entries
    const { sqes, iovecs } = encode(Array.from({ length: 10 }, (_, i) => ({ op: Op.NOP, userData: i })));
    expect(ring.submit(sqes, iovecs, 10)).toBe(4);
    expect(ring.submit(sqes.subarray(4 * SQE_WORDS), iovecs, 6)).toBe(4);
    expect(ring.submit(sqes.subarray(8 * SQE_WORDS), iovecs, 2)).toBe(0); // 8 in flight
    const results = reapAll(ring, 8);
    expect([...results.keys()].sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(ring.submit(sqes.subarray(8 * SQE_WORDS), iovecs, 2)).toBe(2);
    expect(reapAll(ring, 2).size).toBe(2);
  });

  it('reaps no more than asked and never blocks', () => {
    const ring = open();
    const cqes = new Int32Array(16);
    expect(ring.reap(cqes, 8)).toBe(0);
    ring.wait(1); // nothing in flight: returns at once
    const { sqes, iovecs } = encode([1, 2, 3].map((userData) => ({ op: Op.NOP, userData })));
    ring.submit(sqes, iovecs, 3);
    ring.wait(3);
    expect(ring.reap(cqes, 2)).toBe(2);
    expect(ring.reap(cqes, 8)).toBe(1);
  });

  it('works with an SQ polling thread', () => {
    const ring = open(8, { sqpoll: true, sqpollIdleMs: 10, sqpollCpu: 1 });
    expect(run(ring, [{ op: Op.NOP, userData: 5 }])).toEqual(new Map([[5, 0]]));
  });

  it('close() waits for reads in flight', () => {
    const ring = open();
    const region = mapMemfd('ring-uring-close', 1 << 20);
    ring.setRegions([region]);
    const path = join(dir, 'close.img');
    writeFileSync(path, Buffer.alloc(1 << 20, 0x5a));
    const fd = openSync(path, 'r');
    try {
      const requests = Array.from({ length: 8 }, (_, i) => ({
        op: Op.READV,
        fd,
        offset: i << 17,
        userData: i,
        iovecs: [{ region: 0, offset: i << 17, length: 1 << 17 }],
      }));
      const { sqes, iovecs } = encode(requests);
      expect(ring.submit(sqes, iovecs, 8)).toBe(8);
      ring.setRegions([]);
      ring.close();
      expect(new Uint8Array(region).every((b) => b === 0x5a)).toBe(true);
    } finally {
      closeSync(fd);
    }
  });

  it('close() cancels reads that would never complete', () => {
    const ring = open();
    ring.setRegions([mapMemfd('ring-uring-cancel', 4096)]);
    const [a, b] = native.socketPair();
    try {
      const { sqes, iovecs } = encode([{ op: Op.READV, fd: b, userData: 1, iovecs: [{ region: 0, offset: 0, length: 4096 }] }]);
      expect(ring.submit(sqes, iovecs, 1)).toBe(1);
      ring.close();
    } finally {
      native.close(a);
      native.close(b);
    }
  });

  it('closes rings that JS dropped without close()', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const fdCount = () => readdirSync('/proc/self/fd').length;
    const before = fdCount();
    (() => {
      for (let i = 0; i < 16; i++) new native.Uring(4).eventfd();
    })();
    expect(fdCount()).toBe(before + 32);
    for (let i = 0; i < 100 && fdCount() > before; i++) {
      gc();
      await new Promise((done) => setTimeout(done, 10));
    }
    expect(fdCount()).toBe(before);
  });

  it('runs in a worker that exits with requests still in flight', async () => {
    const region = mapMemfd('ring-uring-worker', 1 << 16);
    const worker = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       const native = require(workerData.addon);
       const ring = new native.Uring(8);
       ring.setRegions([workerData.region]);
       const sqes = new Uint32Array(16), iovecs = new Uint32Array(4), cqes = new Int32Array(4);
       sqes.set([0, 0, 0, 0, 1, 0, 0, 0]);
       ring.submit(sqes, iovecs, 1);
       ring.wait(1);
       const reaped = ring.reap(cqes, 2);
       const [a, b] = native.socketPair();
       sqes.set([1, b, 0, 0, 2, 1, 0, 0]); // READV from a socket nobody writes to
       iovecs.set([0, 0, 0, 4096]);
       ring.submit(sqes, iovecs, 1);
       parentPort.postMessage({ reaped, userData: cqes[0], res: cqes[1] });`,
      { eval: true, workerData: { addon: resolve('build/Release/ring.node'), region } },
    );
    const message = await new Promise((done, fail) => worker.once('message', done).once('error', fail));
    expect(message).toEqual({ reaped: 1, userData: 1, res: 0 });
    expect(await new Promise((done) => worker.once('exit', done))).toBe(0);
  });

  it('rejects bad arguments and use after close', () => {
    expect(thrown(() => new native.Uring(0))).toBeInstanceOf(RangeError);
    expect(thrown(() => new native.Uring(8, { sqpoll: 'yes' as never }))).toBeInstanceOf(TypeError);
    expect(thrown(() => new native.Uring(8, { sqpoll: true, sqpollCpu: -1 }))).toBeInstanceOf(RangeError);
    const ring = open();
    expect(thrown(() => ring.setRegions([new ArrayBuffer(8) as never]))).toBeInstanceOf(TypeError);
    expect(thrown(() => ring.submit(new Uint32Array(8), new Uint32Array(0), 2))).toBeInstanceOf(RangeError);
    expect(thrown(() => ring.submit(new Int32Array(8) as never, new Uint32Array(0), 1))).toBeInstanceOf(TypeError);
    expect(thrown(() => ring.reap(new Int32Array(3), 2))).toBeInstanceOf(RangeError);
    ring.close();
    ring.close();
    expect(thrown(() => ring.reap(new Int32Array(2), 1))).toBeInstanceOf(Error);
    expect(thrown(() => ring.submit(new Uint32Array(8), new Uint32Array(0), 1))).toBeInstanceOf(Error);
  });
});
