// blockIo: io_uring's request records executed with blocking syscalls (native/ring/blockio.cc),
// including the hostile records a buggy or compromised engine could hand it.
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { native } from '../../dist/native.js';

const Op = native.recordLayout.opcode;
const EBADF = 9;
const EAGAIN = 11;
const EFAULT = 14;
const EINVAL = 22;
const EOPNOTSUPP = 95;
const { sqeWords: SQE_WORDS, iovecWords: IOVEC_WORDS } = native.recordLayout;

interface Record {
  op: number;
  fd?: number;
  offset?: number;
  iovecs?: { region: number; offset: number; length: number }[];
  length?: number;
  /** Overrides the iovec count / first index words (hostile records). */
  iovecCount?: number;
  firstIovec?: number;
}

function encode(records: Record[]) {
  const sqes = new Uint32Array(records.length * SQE_WORDS);
  const iovecs = new Uint32Array(records.reduce((sum, r) => sum + (r.iovecs?.length ?? 0), 0) * IOVEC_WORDS);
  let next = 0;
  records.forEach((r, i) => {
    const offset = r.offset ?? 0;
    sqes.set(
      [
        r.op,
        r.fd ?? 0,
        offset % 2 ** 32,
        Math.floor(offset / 2 ** 32),
        i,
        r.iovecCount ?? r.iovecs?.length ?? 0,
        r.firstIovec ?? next,
        r.length ?? 0,
      ],
      i * SQE_WORDS,
    );
    for (const v of r.iovecs ?? [])
      iovecs.set([v.region, v.offset % 2 ** 32, Math.floor(v.offset / 2 ** 32), v.length], next++ * IOVEC_WORDS);
  });
  return { sqes, iovecs };
}

function run(regions: SharedArrayBuffer[], records: Record[], nowaitReadBytes?: number): number[] {
  const { sqes, iovecs } = encode(records);
  const results = new Int32Array(records.length).fill(12345);
  native.blockIo(regions, sqes, iovecs, records.length, results, nowaitReadBytes);
  return [...results];
}

let dir: string;
let path: string;
let fd: number;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vut-blockio-'));
  path = join(dir, 'disk.img');
  writeFileSync(path, Buffer.alloc(1 << 20));
  fd = openSync(path, 'r+');
});

afterEach(() => {
  closeSync(fd);
  rmSync(dir, { recursive: true, force: true });
});

describe('blockIo', () => {
  it('writes from and reads into region memory through iovecs that span regions', () => {
    const a = new SharedArrayBuffer(8192);
    const b = new SharedArrayBuffer(8192);
    new Uint8Array(a).fill(0xa1, 0, 4096);
    new Uint8Array(b).fill(0xb2, 4096, 8192);
    const write = run(
      [a, b],
      [
        {
          op: Op.WRITEV,
          fd,
          offset: 65536,
          iovecs: [
            { region: 0, offset: 0, length: 4096 },
            { region: 1, offset: 4096, length: 4096 },
          ],
        },
      ],
    );
    expect(write).toEqual([8192]);
    const file = readFileSync(path);
    expect(file.subarray(65536, 65536 + 4096).every((x) => x === 0xa1)).toBe(true);
    expect(file.subarray(65536 + 4096, 65536 + 8192).every((x) => x === 0xb2)).toBe(true);
    const into = new SharedArrayBuffer(8192);
    const read = run([into], [{ op: Op.READV, fd, offset: 65536 + 2048, iovecs: [{ region: 0, offset: 100, length: 4096 }] }]);
    expect(read).toEqual([4096]);
    const bytes = new Uint8Array(into);
    expect(bytes.subarray(100, 100 + 2048).every((x) => x === 0xa1)).toBe(true);
    expect(bytes.subarray(100 + 2048, 100 + 4096).every((x) => x === 0xb2)).toBe(true);
    expect(bytes[99]).toBe(0);
    expect(bytes[100 + 4096]).toBe(0);
  });

  it('reports a short read at the end of the file as it is, and 0 past it', () => {
    const into = new SharedArrayBuffer(8192);
    expect(
      run(
        [into],
        [
          { op: Op.READV, fd, offset: (1 << 20) - 1024, iovecs: [{ region: 0, offset: 0, length: 4096 }] },
          { op: Op.READV, fd, offset: 2 << 20, iovecs: [{ region: 0, offset: 0, length: 4096 }] },
        ],
      ),
    ).toEqual([1024, 0]);
  });

  it('non-blocking mode runs only reads up to its size, from the page cache, and leaves the rest unrun with -EAGAIN', () => {
    writeFileSync(path, Buffer.alloc(1 << 20, 0x5a)); // just written: in the page cache
    const into = new SharedArrayBuffer(4 * 4096);
    new Uint8Array(into).fill(0x11, 3 * 4096);
    const records: Record[] = [
      { op: Op.READV, fd, offset: 4096, iovecs: [{ region: 0, offset: 0, length: 4096 }] },
      { op: Op.READV, fd, offset: 0, iovecs: [{ region: 0, offset: 4096, length: 8192 }] }, // larger than allowed
      { op: Op.WRITEV, fd, offset: 0, iovecs: [{ region: 0, offset: 3 * 4096, length: 4096 }] },
      { op: Op.FDATASYNC, fd },
      { op: Op.NOP },
      { op: Op.READV, fd, offset: 0, iovecs: [{ region: 0, offset: 4 * 4096 - 100, length: 200 }] }, // outside its region
      { op: Op.READV, fd, offset: (1 << 20) - 1024, iovecs: [{ region: 0, offset: 0, length: 4096 }] }, // short at EOF
      { op: Op.READV, fd: 1 << 20, offset: 0, iovecs: [{ region: 0, offset: 0, length: 4096 }] },
    ];
    expect(run([into], records, 4096)).toEqual([4096, -EAGAIN, -EAGAIN, -EAGAIN, -EAGAIN, -EFAULT, 1024, -EBADF]);
    const bytes = new Uint8Array(into);
    expect(bytes.subarray(0, 4096).every((x) => x === 0x5a)).toBe(true);
    expect(bytes.subarray(4096, 3 * 4096).every((x) => x === 0)).toBe(true); // the larger read did not run
    expect(
      readFileSync(path)
        .subarray(0, 4096)
        .every((x) => x === 0x5a),
    ).toBe(true); // nor the write
    // 0 or undefined: blocking mode, every record runs.
    expect(run([into], records.slice(1, 3), 0)).toEqual([8192, 4096]);
    expect(
      readFileSync(path)
        .subarray(0, 4096)
        .every((x) => x === 0x11),
    ).toBe(true);
    const { sqes, iovecs } = encode(records);
    const results = new Int32Array(records.length);
    expect(() => native.blockIo([into], sqes, iovecs, 1, results, -1)).toThrow(RangeError);
    expect(() => native.blockIo([into], sqes, iovecs, 1, results, 0.5)).toThrow(RangeError);
  });

  it('non-blocking mode says EOPNOTSUPP, without reading, where the file system cannot promise not to block (tmpfs)', () => {
    const shm = join('/dev/shm', `vut-blockio-${process.pid}.img`);
    writeFileSync(shm, Buffer.alloc(8192, 0x44));
    const shmFd = openSync(shm, 'r');
    try {
      const into = new SharedArrayBuffer(4096);
      const read = [{ op: Op.READV, fd: shmFd, offset: 0, iovecs: [{ region: 0, offset: 0, length: 4096 }] }];
      expect(run([into], read, 4096)).toEqual([-EOPNOTSUPP]);
      expect(new Uint8Array(into).every((x) => x === 0)).toBe(true);
      expect(run([into], read)).toEqual([4096]);
    } finally {
      closeSync(shmFd);
      rmSync(shm, { force: true });
    }
  });

  it('runs NOP, FSYNC, FDATASYNC, PUNCH_HOLE and ZERO_RANGE, and returns -errno for a bad fd', () => {
    const data = new SharedArrayBuffer(65536);
    new Uint8Array(data).fill(7);
    expect(run([data], [{ op: Op.WRITEV, fd, offset: 0, iovecs: [{ region: 0, offset: 0, length: 65536 }] }])).toEqual([65536]);
    const results = run(
      [],
      [
        { op: Op.NOP },
        { op: Op.FSYNC, fd },
        { op: Op.FDATASYNC, fd },
        { op: Op.PUNCH_HOLE, fd, offset: 0, length: 32768 },
        { op: Op.ZERO_RANGE, fd, offset: 32768, length: 32768 },
        { op: Op.FDATASYNC, fd: 0x7fffffff },
      ],
    );
    expect(results.slice(0, 3)).toEqual([0, 0, 0]);
    // tmpfs punches holes but may refuse ZERO_RANGE: either works or says EOPNOTSUPP.
    expect(results[3]).toBe(0);
    expect([0, -95]).toContain(results[4]);
    expect(results[5]).toBe(-EBADF);
    expect(
      readFileSync(path)
        .subarray(0, 32768)
        .every((x) => x === 0),
    ).toBe(true);
    expect(statSync(path).size).toBe(1 << 20); // KEEP_SIZE
  });

  it('refuses hostile records without running them, and runs the good ones around them', () => {
    const region = new SharedArrayBuffer(4096);
    new Uint8Array(region).fill(0x5a);
    const good = { op: Op.WRITEV, fd, offset: 0, iovecs: [{ region: 0, offset: 0, length: 4096 }] };
    const { sqes, iovecs } = encode([good]);
    const hostile: Record[] = [
      { op: 99 },
      { op: Op.READV, fd, iovecs: [{ region: 1, offset: 0, length: 16 }] }, // unknown region
      { op: Op.READV, fd, iovecs: [{ region: 0, offset: 4000, length: 97 }] }, // past the region's end
      { op: Op.READV, fd, iovecs: [{ region: 0, offset: 2 ** 40, length: 1 }] }, // offset beyond
      { op: Op.READV, fd, iovecCount: 1025, firstIovec: 0 }, // > IOV_MAX
      { op: Op.READV, fd, iovecCount: 1, firstIovec: 1 << 30 }, // iovec index outside the array
      { op: Op.READV, fd, offset: 2 ** 63 + 2 ** 53, iovecs: [{ region: 0, offset: 0, length: 16 }] }, // negative off_t
    ];
    const results = run([region], [...hostile, good]);
    expect(results).toEqual([-EINVAL, -EFAULT, -EFAULT, -EFAULT, -EINVAL, -EFAULT, -EINVAL, 4096]);
    // The region was never written by the refused reads.
    expect(new Uint8Array(region).every((x) => x === 0x5a)).toBe(true);
    // The plain encoding of the good record alone still works (count bounds the records read).
    const one = new Int32Array(1);
    native.blockIo([region], sqes, iovecs, 1, one);
    expect(one[0]).toBe(4096);
  });

  it('checks its arguments: types, count bounds, regions that are not shared buffers', () => {
    const sqes = new Uint32Array(2 * SQE_WORDS);
    const iovecs = new Uint32Array(IOVEC_WORDS);
    const results = new Int32Array(2);
    expect(() => native.blockIo([], sqes, iovecs, 3, results)).toThrow(RangeError);
    expect(() => native.blockIo([], sqes, iovecs, 2, new Int32Array(1))).toThrow(RangeError);
    expect(() => native.blockIo([], sqes, iovecs, -1, results)).toThrow(RangeError);
    expect(() => native.blockIo([new ArrayBuffer(8) as unknown as SharedArrayBuffer], sqes, iovecs, 0, results)).toThrow(
      TypeError,
    );
    expect(() => native.blockIo([], new Int32Array(8) as unknown as Uint32Array, iovecs, 0, results)).toThrow(TypeError);
    expect(() => native.blockIo([], sqes, iovecs, 0, new Uint32Array(2) as unknown as Int32Array)).toThrow(TypeError);
    native.blockIo([], sqes, iovecs, 2, results); // two NOPs
    expect([...results]).toEqual([0, 0]);
  });
});
